//! Secret values and the random source that creates them.
//!
//! Every secret lives in a type whose `Debug` prints `[redacted]` and whose memory is
//! zeroed on drop. Comparisons of secrets go through [`ct_eq`] (constant time), and
//! anything that must appear in an error message goes through [`truncate_secret`].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A source of cryptographically secure random bytes.
pub trait Entropy: Send + Sync + std::fmt::Debug {
    /// Fills `buf` with random bytes. An operating system that cannot provide
    /// randomness is not a state the gateway can continue from safely.
    fn fill(&self, buf: &mut [u8]) -> Result<(), EntropyError>;
}

#[derive(Debug, thiserror::Error)]
#[error("the operating system random source failed")]
pub struct EntropyError;

/// The operating system's random source.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&self, buf: &mut [u8]) -> Result<(), EntropyError> {
        getrandom::fill(buf).map_err(|_| EntropyError)
    }
}

/// `prefix` followed by base64url (no padding) of 16 random bytes: the shape of every
/// public identifier (`ses-…`, `pl-…`, `sk-…`). 128 bits make guessing hopeless.
pub fn random_id(entropy: &dyn Entropy, prefix: &str) -> Result<String, EntropyError> {
    let mut raw = [0u8; 16];
    entropy.fill(&mut raw)?;
    let mut id = String::with_capacity(prefix.len() + 22);
    id.push_str(prefix);
    URL_SAFE_NO_PAD.encode_string(raw, &mut id);
    Ok(id)
}

/// A string secret (a password, a token) that never prints itself.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call sites are few and easy to audit.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Secrets can be read from configuration files; they still never print.
impl<'de> serde::Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// 32 bytes of key material that never prints itself.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Key32([u8; 32]);

impl Key32 {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn generate(entropy: &dyn Entropy) -> Result<Self, EntropyError> {
        let mut bytes = [0u8; 32];
        entropy.fill(&mut bytes)?;
        Ok(Self(bytes))
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for Key32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Constant-time equality of two byte strings. Lengths are not secret here (every
/// secret of one kind has one length), so a length mismatch returns early.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// At most the first 8 characters of a secret followed by an ellipsis, for error
/// messages and logs that must say *which* value was refused without repeating it.
pub fn truncate_secret(value: &str) -> String {
    let head: String = value.chars().take(8).collect();
    format!("{head}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", SecretString::new("hunter2")), "[redacted]");
        assert_eq!(format!("{:?}", Key32::from_bytes([7; 32])), "[redacted]");
    }

    #[test]
    fn truncation_keeps_at_most_eight_characters() {
        for (input, expected) in [
            ("", "…"),
            ("abc", "abc…"),
            ("abcdefgh", "abcdefgh…"),
            ("abcdefghijklmnop", "abcdefgh…"),
            ("ééééééééé", "éééééééé…"),
        ] {
            assert_eq!(truncate_secret(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn random_ids_have_the_documented_shape() {
        let id = random_id(&OsEntropy, "ses-").unwrap();
        assert!(id.starts_with("ses-"));
        assert_eq!(id.len(), 4 + 22);
        assert_ne!(id, random_id(&OsEntropy, "ses-").unwrap());
    }

    #[test]
    fn ct_eq_compares_content_and_length() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
    }
}
