//! The internal credential (SPEC 6.3): one secret per gateway process (or per
//! deployment, shared through the database), for processes the operator's own system
//! spawns, such as an embedded terminal that re-attaches to a WebSocket forever. It
//! is multi-use and never expires, so it never appears in HTML or REST output: it
//! leaves the gateway only through a supervised child's environment or a 0600 file.
//!
//! On the wire it is `pci_` followed by 32 random bytes in base64url, so the gateway
//! recognises it as its own bearer without a lookup and secret scanners can too.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::identity::Identity;
use crate::secret::{Entropy, EntropyError, SecretString, ct_eq};

/// Prefix of the internal credential on the wire.
pub const PREFIX: &str = "pci_";
/// The identity (subject, name and provider) of requests carrying the credential.
pub const SUBJECT: &str = "server-internal";
/// Prefix of the public id naming one minted credential, in the WebSocket registry
/// and the revocation log (a fingerprint: it reveals nothing of the secret).
pub const ID_PREFIX: &str = "int-";
/// Length of the credential on the wire.
pub const LEN: usize = PREFIX.len() + 43;
/// Name of the environment variable that hands the credential to a child process.
pub const ENV_VAR: &str = "PORTCULLIS_INTERNAL_CREDENTIAL";

/// A minted internal credential.
#[derive(Debug, Clone)]
pub struct InternalCredential {
    secret: SecretString,
    id: String,
}

impl InternalCredential {
    /// Mints a fresh credential from 32 random bytes.
    pub fn mint(entropy: &dyn Entropy) -> Result<Self, EntropyError> {
        let mut raw = [0u8; 32];
        entropy.fill(&mut raw)?;
        Ok(Self::from_secret(SecretString::new(format!(
            "{PREFIX}{}",
            URL_SAFE_NO_PAD.encode(raw)
        ))))
    }

    /// Rebuilds a credential kept elsewhere (sealed in the database), or `None` if
    /// the value does not have the credential's shape.
    pub fn restore(secret: SecretString) -> Option<Self> {
        looks_like(secret.expose()).then(|| Self::from_secret(secret))
    }

    fn from_secret(secret: SecretString) -> Self {
        let id = fingerprint(secret.expose());
        Self { secret, id }
    }

    /// The secret; handed only to a child's environment or the credential file.
    pub fn secret(&self) -> &SecretString {
        &self.secret
    }

    /// The public id of this credential (a fingerprint of the secret).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether `presented` is this credential, compared in constant time. An empty
    /// value never matches.
    pub fn matches(&self, presented: &str) -> bool {
        !presented.is_empty() && ct_eq(presented.as_bytes(), self.secret.expose().as_bytes())
    }
}

/// What names a presented value in the audit log without revealing any of it:
/// `int-` and 16 characters of its SHA-256, which for the real credential is its
/// id (so a refusal of the real one, from the wrong peer, can be recognised).
pub fn fingerprint(presented: &str) -> String {
    let digest = Sha256::digest(presented.as_bytes());
    format!("{ID_PREFIX}{}", &URL_SAFE_NO_PAD.encode(digest)[..16])
}

/// Whether `value` has the shape of an internal credential (prefix, length,
/// alphabet). Says nothing about whether it is valid.
pub fn looks_like(value: &str) -> bool {
    value.len() == LEN
        && value.starts_with(PREFIX)
        && value[PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Verifies `presented` against the current credential, if one was minted: no
/// credential minted, an empty value or a wrong value are all refusals.
pub fn verify<'a>(
    current: Option<&'a InternalCredential>,
    presented: &str,
) -> Option<&'a InternalCredential> {
    current.filter(|c| c.matches(presented))
}

/// The identity of a request authenticated by the internal credential.
pub fn identity() -> Identity {
    Identity {
        subject: SUBJECT.into(),
        name: SUBJECT.into(),
        email: None,
        provider: crate::identity::IdentityProvider::Internal,
        roles: vec!["internal".into()],
    }
}

/// Whether a peer may present the internal credential: loopback addresses only
/// (IPv4-mapped IPv6 loopback included), unless the operator allowed remote peers.
pub fn peer_allowed(peer: std::net::IpAddr, allow_remote: bool) -> bool {
    allow_remote || peer.to_canonical().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::OsEntropy;

    #[test]
    fn minted_credentials_have_the_documented_shape_and_differ() {
        let a = InternalCredential::mint(&OsEntropy).unwrap();
        let b = InternalCredential::mint(&OsEntropy).unwrap();
        assert_eq!(a.secret().expose().len(), LEN);
        assert!(looks_like(a.secret().expose()));
        assert_ne!(a.secret(), b.secret());
        assert_ne!(a.id(), b.id());
        assert!(a.id().starts_with(ID_PREFIX));
        assert!(
            !a.id()
                .contains(&a.secret().expose()[PREFIX.len()..PREFIX.len() + 8])
        );
    }

    #[test]
    fn verification_rows() {
        let minted = InternalCredential::mint(&OsEntropy).unwrap();
        let good = minted.secret().expose().to_owned();
        let other = InternalCredential::mint(&OsEntropy).unwrap();
        let mut flipped = good.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        let rows: &[(&str, Option<&InternalCredential>, &str, bool)] = &[
            ("the credential, multi-use (1)", Some(&minted), &good, true),
            ("the credential, multi-use (2)", Some(&minted), &good, true),
            ("nothing minted yet", None, &good, false),
            ("nothing minted, empty value", None, "", false),
            ("empty value", Some(&minted), "", false),
            ("prefix only", Some(&minted), PREFIX, false),
            (
                "another credential",
                Some(&minted),
                other.secret().expose(),
                false,
            ),
            ("last character changed", Some(&minted), &flipped, false),
            ("truncated", Some(&minted), &good[..good.len() - 1], false),
            ("extended", Some(&minted), &format!("{good}A"), false),
            (
                "without prefix",
                Some(&minted),
                &good[PREFIX.len()..],
                false,
            ),
        ];
        for (name, current, presented, ok) in rows {
            assert_eq!(verify(*current, presented).is_some(), *ok, "{name}");
        }
    }

    #[test]
    fn restore_accepts_only_the_credential_shape() {
        let minted = InternalCredential::mint(&OsEntropy).unwrap();
        let restored = InternalCredential::restore(minted.secret().clone()).unwrap();
        assert_eq!(restored.id(), minted.id());
        assert!(restored.matches(minted.secret().expose()));
        for bad in [
            "",
            "pci_",
            "pct_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(
                InternalCredential::restore(SecretString::new(bad)).is_none(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn peers_rows() {
        use std::net::IpAddr;
        let rows: &[(&str, bool, bool)] = &[
            ("127.0.0.1", false, true),
            ("127.1.2.3", false, true),
            ("::1", false, true),
            ("::ffff:127.0.0.1", false, true),
            ("10.0.0.5", false, false),
            ("192.168.1.1", false, false),
            ("::ffff:10.0.0.5", false, false),
            ("2001:db8::1", false, false),
            ("10.0.0.5", true, true),
        ];
        for (ip, allow_remote, ok) in rows {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(
                peer_allowed(ip, *allow_remote),
                *ok,
                "{ip} remote={allow_remote}"
            );
        }
    }
}
