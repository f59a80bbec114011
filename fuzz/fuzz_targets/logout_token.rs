//! Back-channel logout tokens: raw token text (first byte even), or claims the
//! fuzzer writes, signed with a key the verifier trusts (first byte odd). A token
//! that verifies satisfies every rule of OpenID Back-Channel Logout 1.0, 2.6.
#![no_main]

use std::sync::LazyLock;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis_core::oidc::{BACKCHANNEL_LOGOUT_EVENT, Expectations, JwkSet, verify_logout_token};
use serde_json::Value;

const ISSUER: &str = "https://op.test";
const CLIENT_ID: &str = "portcullis";
const NOW_S: i64 = 1_800_000_000;

static KEYS: LazyLock<JwkSet> = LazyLock::new(|| {
    serde_json::from_str(include_str!(
        "../../crates/core/src/oidc/testdata/jwks.json"
    ))
    .unwrap_or_else(|e| unreachable!("test JWKS: {e}"))
});
static SIGNER: LazyLock<EncodingKey> = LazyLock::new(|| {
    EncodingKey::from_ec_pem(include_bytes!("../../crates/core/src/oidc/testdata/ec.pem"))
        .unwrap_or_else(|e| unreachable!("test key: {e}"))
});

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let signed;
    let token = if mode & 1 == 0 {
        match std::str::from_utf8(rest) {
            Ok(token) => token,
            Err(_) => return,
        }
    } else {
        let Ok(claims) = serde_json::from_slice::<Value>(rest) else {
            return;
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("ec-1".to_owned());
        let Ok(token) = jsonwebtoken::encode(&header, &claims, &SIGNER) else {
            return;
        };
        signed = token;
        &signed
    };
    let expect = Expectations {
        issuer: ISSUER,
        client_id: CLIENT_ID,
        algorithms: &[Algorithm::RS256, Algorithm::ES256],
        now_s: NOW_S,
    };
    let Ok(valid) = verify_logout_token(token, &KEYS, &expect) else {
        return;
    };
    assert!(!valid.jti.is_empty());
    assert!(valid.subject.is_some() || valid.sid.is_some());
    // Read the claims back without the verifier and check its rules held.
    let payload = token.split('.').nth(1).unwrap_or_default();
    let claims: Value = base64_claims(payload);
    assert_eq!(claims["iss"], ISSUER);
    let aud_ok = match &claims["aud"] {
        Value::String(aud) => aud == CLIENT_ID,
        Value::Array(auds) => auds.iter().any(|a| a == CLIENT_ID),
        _ => false,
    };
    assert!(aud_ok, "audience");
    assert!(claims.get("nonce").is_none(), "nonce accepted");
    assert!(
        claims["events"].get(BACKCHANNEL_LOGOUT_EVENT).is_some(),
        "no logout event"
    );
});

fn base64_claims(payload: &str) -> Value {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null)
}
