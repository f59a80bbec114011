//! Single-use WebSocket tickets (SPEC 6.1): 32 random bytes, base64url (43
//! characters), valid for a short time, consumed once. Only a SHA-256 hash is
//! stored, so a database dump yields no usable ticket.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::secret::{Entropy, EntropyError, SecretString};

/// 30 s: long enough for a page to mint a ticket and open its socket over a slow
/// link, short enough that a ticket leaked through a URL log is dead on arrival.
pub const DEFAULT_TTL_MS: i64 = 30_000;
/// Length of a ticket on the wire.
pub const TICKET_LEN: usize = 43;

/// A freshly minted ticket; shown to its owner once.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub secret: SecretString,
    pub hash: String,
}

pub fn mint(entropy: &dyn Entropy) -> Result<Ticket, EntropyError> {
    let mut raw = [0u8; 32];
    entropy.fill(&mut raw)?;
    let secret = URL_SAFE_NO_PAD.encode(raw);
    let hash = hash(&secret);
    Ok(Ticket {
        secret: SecretString::new(secret),
        hash,
    })
}

/// The stored form of a presented ticket, or `None` if it cannot be one (wrong
/// length or alphabet), so malformed input never reaches the database.
pub fn hash_presented(presented: &str) -> Option<String> {
    let well_formed = presented.len() == TICKET_LEN
        && presented
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    well_formed.then(|| hash(presented))
}

fn hash(secret: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::OsEntropy;

    #[test]
    fn tickets_hash_consistently_and_malformed_ones_are_refused() {
        let t = mint(&OsEntropy).unwrap();
        assert_eq!(t.secret.expose().len(), TICKET_LEN);
        assert_eq!(
            hash_presented(t.secret.expose()).as_deref(),
            Some(t.hash.as_str())
        );
        assert_ne!(t.hash, t.secret.expose());
        for bad in [
            "",
            "short",
            &"a".repeat(44),
            &format!("{}=", &"a".repeat(42)),
            &"é".repeat(22),
        ] {
            assert_eq!(hash_presented(bad), None, "{bad:?}");
        }
    }
}

/// Prefix of API token secrets: recognisable by secret scanners, and tells the
/// gateway a bearer value is its own rather than the upstream's.
pub const API_TOKEN_PREFIX: &str = "pct_";
/// Prefix of API token ids (public, listable, revocable).
pub const API_TOKEN_ID_PREFIX: &str = "tok-";

/// A freshly minted API token; the secret is shown once.
#[derive(Debug, Clone)]
pub struct ApiToken {
    pub id: String,
    pub secret: SecretString,
    pub hash: String,
}

pub fn mint_api_token(entropy: &dyn Entropy) -> Result<ApiToken, EntropyError> {
    let mut raw = [0u8; 32];
    entropy.fill(&mut raw)?;
    let secret = format!("{API_TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw));
    Ok(ApiToken {
        id: crate::secret::random_id(entropy, API_TOKEN_ID_PREFIX)?,
        hash: hash(&secret),
        secret: SecretString::new(secret),
    })
}

/// The stored form of a presented API token, or `None` if it is not one.
pub fn hash_presented_api_token(presented: &str) -> Option<String> {
    let body = presented.strip_prefix(API_TOKEN_PREFIX)?;
    hash_presented(body).map(|_| hash(presented))
}

#[cfg(test)]
mod api_token_tests {
    use super::*;
    use crate::secret::OsEntropy;

    #[test]
    fn api_tokens_round_trip_and_others_are_not_ours() {
        let t = mint_api_token(&OsEntropy).unwrap();
        assert!(t.secret.expose().starts_with("pct_"));
        assert!(t.id.starts_with("tok-"));
        assert_eq!(
            hash_presented_api_token(t.secret.expose()).as_deref(),
            Some(t.hash.as_str())
        );
        for other in [
            "",
            "pct_",
            "pct_short",
            "jupyter-token-abc",
            &t.secret.expose()[4..],
        ] {
            assert_eq!(hash_presented_api_token(other), None, "{other:?}");
        }
    }
}
