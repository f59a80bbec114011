//! The signed-cookie wire format shared by every Portcullis cookie:
//! `v1.<id>.<key-id>.<mac>`.
//!
//! `<id>` is a prefixed random identifier (`ses-…` for sessions, `pl-…` for OIDC
//! pre-login state), `<key-id>` names the signing key (`sk-…`), and `<mac>` is
//! base64url-no-pad HMAC-SHA256 over the *length-prefixed* fields `v1`, id, key-id, so
//! no two ways of splitting the same bytes into fields produce the same MAC input.
//!
//! Parsing is strict and allocation-light: every field has a fixed alphabet and a
//! bounded length, and anything else is refused before a MAC is computed. Callers name
//! the id prefix they accept, so a `pl-` cookie can never pass as a session.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The only wire version.
pub const VERSION: &str = "v1";
/// Prefix of session ids.
pub const SESSION_PREFIX: &str = "ses-";
/// Prefix of OIDC pre-login ids.
pub const PRE_LOGIN_PREFIX: &str = "pl-";
/// Prefix of signing key ids.
pub const KEY_PREFIX: &str = "sk-";
/// Random part of every id: base64url of 16 bytes.
const RANDOM_LEN: usize = 22;
/// base64url-no-pad of a 32-byte HMAC-SHA256.
const MAC_LEN: usize = 43;
/// Longest value worth parsing; real cookies are about 100 bytes.
pub const MAX_COOKIE_LEN: usize = 160;

/// Why a cookie value was refused. The variants exist for the audit log and tests;
/// clients only ever learn "unauthenticated".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    #[error("cookie value is too long")]
    TooLong,
    #[error("cookie value is not four dot-separated fields")]
    Shape,
    #[error("unsupported cookie version")]
    Version,
    #[error("cookie id has the wrong prefix")]
    IdPrefix,
    #[error("cookie id is malformed")]
    Id,
    #[error("cookie key id is malformed")]
    KeyId,
    #[error("cookie MAC is malformed")]
    MacEncoding,
    #[error("cookie signing key is unknown")]
    UnknownKey,
    #[error("cookie MAC does not verify")]
    BadMac,
}

/// A cookie value that has the right shape but whose MAC is not yet verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnverifiedCookie<'a> {
    pub id: &'a str,
    pub key_id: &'a str,
    pub mac: [u8; 32],
}

fn is_b64url(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks `prefix` + 22 base64url characters.
pub fn is_well_formed_id(value: &str, prefix: &str) -> bool {
    value
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.len() == RANDOM_LEN && is_b64url(rest))
}

/// Splits and syntax-checks a cookie value, requiring ids to start with `id_prefix`.
pub fn parse<'a>(value: &'a str, id_prefix: &str) -> Result<UnverifiedCookie<'a>, CookieError> {
    if value.len() > MAX_COOKIE_LEN {
        return Err(CookieError::TooLong);
    }
    let mut parts = value.split('.');
    let (Some(version), Some(id), Some(key_id), Some(mac), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(CookieError::Shape);
    };
    if version != VERSION {
        return Err(CookieError::Version);
    }
    if !id.starts_with(id_prefix) {
        return Err(CookieError::IdPrefix);
    }
    if !is_well_formed_id(id, id_prefix) {
        return Err(CookieError::Id);
    }
    if !is_well_formed_id(key_id, KEY_PREFIX) {
        return Err(CookieError::KeyId);
    }
    if mac.len() != MAC_LEN || !is_b64url(mac) {
        return Err(CookieError::MacEncoding);
    }
    let mut raw = [0u8; 32];
    match URL_SAFE_NO_PAD.decode_slice(mac, &mut raw) {
        Ok(32) => {}
        _ => return Err(CookieError::MacEncoding),
    }
    Ok(UnverifiedCookie {
        id,
        key_id,
        mac: raw,
    })
}

/// A keyed MAC ready to sign or verify cookies. Holding the initialised HMAC state
/// (inner and outer pads already absorbed) and cloning it per use keeps the hot
/// path to two SHA-256 compressions of the short input.
#[derive(Clone)]
pub struct CookieMac(Hmac<Sha256>);

impl std::fmt::Debug for CookieMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieMac([redacted])")
    }
}

impl CookieMac {
    pub fn new(key: &[u8; 32]) -> Self {
        // HMAC accepts keys of any length; 32 bytes can never fail.
        match Hmac::<Sha256>::new_from_slice(key) {
            Ok(mac) => Self(mac),
            Err(_) => unreachable!("HMAC-SHA256 accepts 32-byte keys"),
        }
    }

    fn compute(&self, id: &str, key_id: &str) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        for field in [VERSION, id, key_id] {
            // Fields are bounded by MAX_COOKIE_LEN, so the length always fits a u32.
            let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
            mac.update(&len.to_be_bytes());
            mac.update(field.as_bytes());
        }
        mac
    }

    /// The full cookie value for `id` signed under `key_id`.
    pub fn sign(&self, id: &str, key_id: &str) -> String {
        let tag = self.compute(id, key_id).finalize().into_bytes();
        let mut out = String::with_capacity(4 + id.len() + key_id.len() + MAC_LEN);
        out.push_str(VERSION);
        out.push('.');
        out.push_str(id);
        out.push('.');
        out.push_str(key_id);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(tag, &mut out);
        out
    }

    /// Constant-time check of a parsed cookie's MAC.
    pub fn verify(&self, cookie: &UnverifiedCookie<'_>) -> Result<(), CookieError> {
        self.compute(cookie.id, cookie.key_id)
            .verify_slice(&cookie.mac)
            .map_err(|_| CookieError::BadMac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "ses-AAAAAAAAAAAAAAAAAAAAAA";
    const PL: &str = "pl-AAAAAAAAAAAAAAAAAAAAAA";
    const KEY: &str = "sk-BBBBBBBBBBBBBBBBBBBBBB";

    fn signer() -> CookieMac {
        CookieMac::new(&[42; 32])
    }

    #[test]
    fn round_trip() {
        let value = signer().sign(ID, KEY);
        let parsed = parse(&value, SESSION_PREFIX).unwrap();
        assert_eq!(parsed.id, ID);
        assert_eq!(parsed.key_id, KEY);
        signer().verify(&parsed).unwrap();
    }

    #[test]
    fn malformed_values_are_refused() {
        let good = signer().sign(ID, KEY);
        let mac = good.rsplit('.').next().unwrap().to_string();
        let mut flipped = mac.clone().into_bytes();
        flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        let pl_signed = signer().sign(PL, KEY);
        let rows: Vec<(&str, String, CookieError)> = vec![
            ("empty", String::new(), CookieError::Shape),
            (
                "missing fields",
                format!("v1.{ID}.{KEY}"),
                CookieError::Shape,
            ),
            ("extra dots", format!("{good}.x"), CookieError::Shape),
            ("trailing dot", format!("{good}."), CookieError::Shape),
            (
                "wrong version",
                format!("v2.{ID}.{KEY}.{mac}"),
                CookieError::Version,
            ),
            ("pre-login id as session", pl_signed, CookieError::IdPrefix),
            (
                "id too short",
                format!("v1.ses-AAAA.{KEY}.{mac}"),
                CookieError::Id,
            ),
            (
                "id bad alphabet",
                format!("v1.ses-AAAAAAAAAAAAAAAAAAAAA+.{KEY}.{mac}"),
                CookieError::Id,
            ),
            (
                "key id prefix",
                format!("v1.{ID}.kk-BBBBBBBBBBBBBBBBBBBBBB.{mac}"),
                CookieError::KeyId,
            ),
            (
                "bad base64 mac",
                format!("v1.{ID}.{KEY}.{}", "!".repeat(43)),
                CookieError::MacEncoding,
            ),
            (
                "short mac",
                format!("v1.{ID}.{KEY}.{}", &mac[..40]),
                CookieError::MacEncoding,
            ),
            (
                "padded mac",
                format!("v1.{ID}.{KEY}.{mac}="),
                CookieError::MacEncoding,
            ),
            (
                "oversized",
                format!("v1.{ID}.{KEY}.{}", "A".repeat(400)),
                CookieError::TooLong,
            ),
        ];
        for (name, value, expected) in rows {
            assert_eq!(parse(&value, SESSION_PREFIX), Err(expected), "row {name}");
        }
        // Well-formed but forged or tampered values fail at the MAC.
        let tampered = format!("v1.{ID}.{KEY}.{flipped}");
        let parsed = parse(&tampered, SESSION_PREFIX).unwrap();
        assert_eq!(signer().verify(&parsed), Err(CookieError::BadMac));
        let other_id = format!("v1.ses-CCCCCCCCCCCCCCCCCCCCCC.{KEY}.{mac}");
        let parsed = parse(&other_id, SESSION_PREFIX).unwrap();
        assert_eq!(signer().verify(&parsed), Err(CookieError::BadMac));
        let other_key = CookieMac::new(&[43; 32]);
        let parsed = parse(&good, SESSION_PREFIX).unwrap();
        assert_eq!(other_key.verify(&parsed), Err(CookieError::BadMac));
    }

    #[test]
    fn session_cookie_is_refused_where_pre_login_is_expected() {
        let value = signer().sign(ID, KEY);
        assert_eq!(parse(&value, PRE_LOGIN_PREFIX), Err(CookieError::IdPrefix));
    }

    #[test]
    fn field_boundaries_are_part_of_the_mac() {
        // Same concatenated bytes, different split: must differ thanks to the prefixes.
        let a = signer().compute("ab", "c").finalize().into_bytes();
        let b = signer().compute("a", "bc").finalize().into_bytes();
        assert_ne!(a, b);
    }
}
