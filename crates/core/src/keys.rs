//! Cookie-signing keys and the deployment secret key that protects them at rest.
//!
//! The *secret key* (32 bytes, from a file or the environment) never signs anything
//! itself. It seals signing keys and other stored secrets with XChaCha20-Poly1305
//! (random 192-bit nonces are safe to generate at random), and derives the CSRF key.
//! Signing keys rotate: one is active for new cookies, older ones keep verifying
//! until retired, so rotation logs nobody out.

use std::collections::HashMap;

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::cookie::{self, CookieError, CookieMac, UnverifiedCookie};
use crate::secret::{Entropy, EntropyError, Key32, random_id};

const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Entropy(#[from] EntropyError),
    #[error("sealed key material is corrupt or was sealed under another secret key")]
    Unseal,
    #[error("no active signing key")]
    NoActiveKey,
}

/// The deployment's root secret. Every replica must hold the same one.
#[derive(Clone, Debug)]
pub struct SecretKey(Key32);

impl SecretKey {
    pub fn new(key: Key32) -> Self {
        Self(key)
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.0.expose().into())
    }

    /// Encrypts `plaintext`, binding it to `context` (for example the key id) so a
    /// sealed value cannot be moved to another row. Output: nonce ‖ ciphertext.
    pub fn seal(
        &self,
        entropy: &dyn Entropy,
        context: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        entropy.fill(&mut nonce)?;
        let sealed = self
            .cipher()
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| KeyError::Unseal)?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Reverses [`SecretKey::seal`]; fails if the data or context was altered.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
        if sealed.len() < NONCE_LEN {
            return Err(KeyError::Unseal);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| KeyError::Unseal)?;
        self.cipher()
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: body,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| KeyError::Unseal)
    }

    /// A subkey for one purpose, so no two uses ever share key material.
    pub fn derive(&self, purpose: &str) -> Key32 {
        let mut mac = match <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(self.0.expose()) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC-SHA256 accepts 32-byte keys"),
        };
        mac.update(purpose.as_bytes());
        Key32::from_bytes(mac.finalize().into_bytes().into())
    }
}

/// A signing key as stored: id, sealed material, whether it signs new cookies.
#[derive(Debug, Clone)]
pub struct StoredSigningKey {
    pub id: String,
    pub sealed: Vec<u8>,
    pub active: bool,
    pub created_ms: i64,
}

/// Creates a fresh signing key sealed under `secret`.
pub fn new_signing_key(
    secret: &SecretKey,
    entropy: &dyn Entropy,
    now_ms: i64,
) -> Result<StoredSigningKey, KeyError> {
    let id = random_id(entropy, cookie::KEY_PREFIX)?;
    let material = Key32::generate(entropy)?;
    let sealed = secret.seal(entropy, &id, material.expose())?;
    Ok(StoredSigningKey {
        id,
        sealed,
        active: true,
        created_ms: now_ms,
    })
}

/// The unsealed signing keys of a deployment, ready to sign and verify.
#[derive(Debug, Clone)]
pub struct Keyring {
    active_id: String,
    keys: HashMap<String, CookieMac>,
}

impl Keyring {
    /// Unseals stored keys. The newest active key signs; all verify.
    pub fn unseal(secret: &SecretKey, stored: &[StoredSigningKey]) -> Result<Self, KeyError> {
        let mut keys = HashMap::with_capacity(stored.len());
        for key in stored {
            let material = secret.open(&key.id, &key.sealed)?;
            let material: [u8; 32] = material.try_into().map_err(|_| KeyError::Unseal)?;
            let material = Key32::from_bytes(material);
            keys.insert(key.id.clone(), CookieMac::new(material.expose()));
        }
        let active_id = stored
            .iter()
            .filter(|k| k.active)
            .max_by_key(|k| k.created_ms)
            .map(|k| k.id.clone())
            .ok_or(KeyError::NoActiveKey)?;
        Ok(Self { active_id, keys })
    }

    pub fn active_id(&self) -> &str {
        &self.active_id
    }

    pub fn contains(&self, key_id: &str) -> bool {
        self.keys.contains_key(key_id)
    }

    /// Signs `id` under the active key.
    pub fn sign(&self, id: &str) -> Result<String, KeyError> {
        let mac = self
            .keys
            .get(&self.active_id)
            .ok_or(KeyError::NoActiveKey)?;
        Ok(mac.sign(id, &self.active_id))
    }

    /// Parses and verifies a cookie value whose id must start with `id_prefix`.
    pub fn verify<'a>(&self, value: &'a str, id_prefix: &str) -> Result<&'a str, CookieError> {
        let parsed: UnverifiedCookie<'a> = cookie::parse(value, id_prefix)?;
        let mac = self
            .keys
            .get(parsed.key_id)
            .ok_or(CookieError::UnknownKey)?;
        mac.verify(&parsed)?;
        Ok(parsed.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::OsEntropy;

    fn secret() -> SecretKey {
        SecretKey::new(Key32::from_bytes([9; 32]))
    }

    #[test]
    fn seal_round_trips_and_binds_context() {
        let sealed = secret().seal(&OsEntropy, "sk-a", b"material").unwrap();
        assert_eq!(secret().open("sk-a", &sealed).unwrap(), b"material");
        assert!(secret().open("sk-b", &sealed).is_err());
        let other = SecretKey::new(Key32::from_bytes([8; 32]));
        assert!(other.open("sk-a", &sealed).is_err());
        assert!(secret().open("sk-a", &sealed[..10]).is_err());
    }

    #[test]
    fn rotation_keeps_old_cookies_valid() {
        let s = secret();
        let mut first = new_signing_key(&s, &OsEntropy, 1).unwrap();
        let ring = Keyring::unseal(&s, std::slice::from_ref(&first)).unwrap();
        let id = "ses-AAAAAAAAAAAAAAAAAAAAAA";
        let old_cookie = ring.sign(id).unwrap();

        first.active = false;
        let second = new_signing_key(&s, &OsEntropy, 2).unwrap();
        let ring = Keyring::unseal(&s, &[first.clone(), second.clone()]).unwrap();
        assert_eq!(ring.active_id(), second.id);
        assert_eq!(ring.verify(&old_cookie, "ses-").unwrap(), id);
        let new_cookie = ring.sign(id).unwrap();
        assert!(new_cookie.contains(&second.id));

        // Retiring the old key makes its cookies fail as unknown.
        let ring = Keyring::unseal(&s, &[second]).unwrap();
        assert_eq!(
            ring.verify(&old_cookie, "ses-"),
            Err(CookieError::UnknownKey)
        );
        assert_eq!(ring.verify(&new_cookie, "ses-").unwrap(), id);
    }

    #[test]
    fn derived_keys_differ_by_purpose() {
        let s = secret();
        assert_ne!(s.derive("csrf").expose(), s.derive("other").expose());
        assert_eq!(s.derive("csrf").expose(), s.derive("csrf").expose());
    }
}
