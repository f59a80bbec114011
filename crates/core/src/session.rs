//! Server-side sessions: what a session row holds, when it stops being valid, and
//! the CSRF token derived from it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::clock::Millis;
use crate::cookie::SESSION_PREFIX;
use crate::identity::Identity;
use crate::secret::{Entropy, EntropyError, Key32, ct_eq, random_id};

/// A session as stored in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// `ses-` + base64url(16 random bytes).
    pub id: String,
    pub identity: Identity,
    pub created_ms: Millis,
    pub last_seen_ms: Millis,
    /// Absolute expiry; never extended.
    pub expires_ms: Millis,
    /// Inactivity after which the session ends, if configured.
    pub idle_timeout_ms: Option<Millis>,
    pub revoked_ms: Option<Millis>,
    /// The IdP session id (`sid`) for back-channel logout.
    pub oidc_sid: Option<String>,
    /// The IdP's `sub`, for back-channel logout by subject (the session's own
    /// subject is the forwarded user name, which may come from another claim).
    pub oidc_sub: Option<String>,
    /// The magic-link access token the session came from.
    pub access_token_id: Option<String>,
    /// A client session's path scope (read with the session from its client, so
    /// it is never stale by more than the session cache's life).
    pub scope: Option<crate::client::Scope>,
    /// The device it was signed in from, for people reviewing their sessions.
    pub device: Device,
    /// How the identity provider authenticated the user (OpenID sessions).
    pub assurance: Assurance,
    /// A basic sign-in's password hash, as a fingerprint
    /// ([`crate::basic::credential_fingerprint`]): a changed hash ends exactly
    /// the sessions of the older one.
    pub credential: Option<String>,
}

/// How strongly a sign-in was authenticated, as the OpenID provider stated it in
/// the ID token: `acr` (Authentication Context Class Reference) and `amr`
/// (Authentication Methods References, RFC 8176, e.g. `pwd`, `mfa`, `hwk`).
/// Route rules may require them (step-up).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assurance {
    pub acr: Option<String>,
    pub amr: Vec<String>,
}

impl Assurance {
    /// Values kept from an ID token: at most 16 methods, each 1 to 64 bytes of
    /// printable ASCII without commas (they are stored comma-joined).
    pub const MAX_METHODS: usize = 16;

    pub fn is_value(value: &str) -> bool {
        // No comma (stored comma-joined), no quote or backslash (quoted in the
        // step-up challenge header).
        (1..=64).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b',' | b'"' | b'\\'))
    }

    pub fn is_empty(&self) -> bool {
        self.acr.is_none() && self.amr.is_empty()
    }
}

/// Where a session was signed in from: shown to its owner, never trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Device {
    /// The `User-Agent` at sign-in, at most [`Device::MAX_USER_AGENT`] bytes.
    pub user_agent: Option<String>,
    pub ip: Option<String>,
}

impl Device {
    pub const MAX_USER_AGENT: usize = 256;

    /// A device from a `User-Agent` value (cut at a character boundary) and an IP.
    pub fn new(user_agent: Option<&str>, ip: Option<String>) -> Self {
        let user_agent = user_agent.map(|ua| {
            let mut end = ua.len().min(Self::MAX_USER_AGENT);
            while !ua.is_char_boundary(end) {
                end -= 1;
            }
            ua[..end].to_owned()
        });
        Self { user_agent, ip }
    }
}

/// Why a session no longer authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionEnd {
    #[error("session revoked")]
    Revoked,
    #[error("session expired")]
    Expired,
    #[error("session idle too long")]
    Idle,
}

impl Session {
    /// Whether the session still authenticates at `now`, given the latest known
    /// activity (which may be newer than the stored `last_seen_ms`).
    pub fn check(&self, now: Millis, last_seen: Millis) -> Result<(), SessionEnd> {
        if self.revoked_ms.is_some() {
            return Err(SessionEnd::Revoked);
        }
        if now >= self.expires_ms {
            return Err(SessionEnd::Expired);
        }
        if let Some(idle) = self.idle_timeout_ms
            && now.saturating_sub(last_seen.max(self.last_seen_ms)) >= idle
        {
            return Err(SessionEnd::Idle);
        }
        Ok(())
    }
}

/// Lifetimes applied to new sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionPolicy {
    pub ttl_ms: Millis,
    pub idle_timeout_ms: Option<Millis>,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        // Eight hours: a working day, after which a fresh sign-in is reasonable.
        Self {
            ttl_ms: 8 * 3600 * 1000,
            idle_timeout_ms: None,
        }
    }
}

/// Mints a new session for `identity`.
pub fn new_session(
    identity: Identity,
    policy: SessionPolicy,
    now: Millis,
    entropy: &dyn Entropy,
) -> Result<Session, EntropyError> {
    Ok(Session {
        id: random_id(entropy, SESSION_PREFIX)?,
        identity,
        created_ms: now,
        last_seen_ms: now,
        expires_ms: now.saturating_add(policy.ttl_ms),
        idle_timeout_ms: policy.idle_timeout_ms,
        revoked_ms: None,
        oidc_sid: None,
        oidc_sub: None,
        access_token_id: None,
        scope: None,
        device: Device::default(),
        assurance: Assurance::default(),
        credential: None,
    })
}

/// Derives CSRF tokens from session ids. The token is an HMAC of the id under a key
/// only the gateway holds, so an attacker cannot plant a matching cookie/header pair,
/// and every replica derives the same token without storing it.
#[derive(Clone)]
pub struct CsrfKey(Hmac<Sha256>);

impl std::fmt::Debug for CsrfKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CsrfKey([redacted])")
    }
}

impl CsrfKey {
    pub fn new(key: &Key32) -> Self {
        match Hmac::<Sha256>::new_from_slice(key.expose()) {
            Ok(mac) => Self(mac),
            Err(_) => unreachable!("HMAC-SHA256 accepts 32-byte keys"),
        }
    }

    pub fn token(&self, session_id: &str) -> String {
        let mut mac = self.0.clone();
        mac.update(b"portcullis-csrf-v1\0");
        mac.update(session_id.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// Constant-time check of a presented token.
    pub fn verify(&self, session_id: &str, presented: &str) -> bool {
        ct_eq(self.token(session_id).as_bytes(), presented.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::OsEntropy;

    fn session(now: Millis, idle: Option<Millis>) -> Session {
        let identity = Identity {
            subject: "alice".into(),
            name: "alice".into(),
            email: None,
            provider: crate::identity::IdentityProvider::Basic,
            roles: vec!["user".into()],
        };
        new_session(
            identity,
            SessionPolicy {
                ttl_ms: 1000,
                idle_timeout_ms: idle,
            },
            now,
            &OsEntropy,
        )
        .unwrap()
    }

    #[test]
    fn validity_rules() {
        let s = session(0, Some(100));
        let mut revoked = s.clone();
        revoked.revoked_ms = Some(5);
        type Row<'a> = (&'a str, &'a Session, Millis, Millis, Result<(), SessionEnd>);
        let rows: Vec<Row> = vec![
            ("fresh", &s, 10, 0, Ok(())),
            ("active within idle window", &s, 500, 450, Ok(())),
            ("idle", &s, 500, 0, Err(SessionEnd::Idle)),
            (
                "expiry beats activity",
                &s,
                1000,
                999,
                Err(SessionEnd::Expired),
            ),
            ("revoked", &revoked, 10, 10, Err(SessionEnd::Revoked)),
        ];
        for (name, session, now, last_seen, expected) in rows {
            assert_eq!(session.check(now, last_seen), expected, "row {name}");
        }
        let no_idle = session(0, None);
        assert_eq!(no_idle.check(999, 0), Ok(()));
    }

    #[test]
    fn csrf_tokens_are_bound_to_session_and_key() {
        let key = CsrfKey::new(&Key32::from_bytes([1; 32]));
        let token = key.token("ses-a");
        assert!(key.verify("ses-a", &token));
        assert!(!key.verify("ses-b", &token));
        assert!(!key.verify("ses-a", ""));
        let other = CsrfKey::new(&Key32::from_bytes([2; 32]));
        assert!(!other.verify("ses-a", &token));
    }
}
