//! One row per ID-token and logout-token rule, with tokens signed by test keys
//! generated for this suite (`testdata/`: RSA 2048 and P-256, and an unrelated RSA
//! key that shares a `kid`).

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

use super::*;

const RSA: &str = include_str!("testdata/rsa.pem");
const RSA_OTHER: &str = include_str!("testdata/rsa-other.pem");
const RSA_PUBLIC: &str = include_str!("testdata/rsa-public.pem");
const EC: &str = include_str!("testdata/ec.pem");
const JWKS: &str = include_str!("testdata/jwks.json");

const ISSUER: &str = "https://id.example.com";
const CLIENT: &str = "portcullis";
const NOW: i64 = 1_800_000_000;
const NONCE: &str = "n-0S6_WzA2Mj";

fn keys() -> JwkSet {
    serde_json::from_str(JWKS).unwrap()
}

fn sign(claims: &Value, alg: Algorithm, kid: Option<&str>, pem: &str) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        Algorithm::HS256 => EncodingKey::from_secret(pem.as_bytes()),
        _ => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
    };
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn rs(claims: &Value) -> String {
    sign(claims, Algorithm::RS256, Some("rsa-1"), RSA)
}

fn unsigned(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"rsa-1"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{body}.")
}

fn expect(algorithms: &[Algorithm]) -> Expectations<'_> {
    Expectations {
        issuer: ISSUER,
        client_id: CLIENT,
        algorithms,
        now_s: NOW,
    }
}

fn id_claims() -> Value {
    json!({
        "iss": ISSUER, "aud": CLIENT, "sub": "user-42", "sid": "idp-session-1",
        "email": "ada@example.com", "name": "Ada", "groups": ["eng", "ops"],
        "iat": NOW - 5, "exp": NOW + 300, "nonce": NONCE,
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

#[test]
fn id_token_rows() {
    let defaults = parse_algorithms(
        &DEFAULT_ALGORITHMS
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let only_rs = [Algorithm::RS256];
    let ok = id_claims();
    type Row<'a> = (&'a str, String, &'a [Algorithm], Result<(), TokenError>);
    let rows: Vec<Row> = vec![
        ("RS256, valid", rs(&ok), &defaults, Ok(())),
        (
            "ES256, valid",
            sign(&ok, Algorithm::ES256, Some("ec-1"), EC),
            &defaults,
            Ok(()),
        ),
        (
            "no kid, one key of the family",
            sign(&ok, Algorithm::ES256, None, EC),
            &defaults,
            Ok(()),
        ),
        (
            "aud as an array holding us",
            rs(&with(ok.clone(), "aud", json!(["other", CLIENT]))),
            &defaults,
            Ok(()),
        ),
        (
            "azp is us",
            rs(&with(ok.clone(), "azp", json!(CLIENT))),
            &defaults,
            Ok(()),
        ),
        (
            "ES256 not in this provider's allow-list",
            sign(&ok, Algorithm::ES256, Some("ec-1"), EC),
            &only_rs,
            Err(TokenError::Algorithm("ES256".into())),
        ),
        (
            "alg none",
            unsigned(&ok),
            &defaults,
            Err(TokenError::Algorithm("none".into())),
        ),
        (
            "HS256 signed with the provider's public key",
            sign(&ok, Algorithm::HS256, Some("rsa-1"), RSA_PUBLIC),
            &defaults,
            Err(TokenError::Algorithm("HS256".into())),
        ),
        (
            "unknown kid",
            sign(&ok, Algorithm::RS256, Some("rotated-away"), RSA),
            &defaults,
            Err(TokenError::UnknownKey),
        ),
        (
            "signed by another key under a known kid",
            sign(&ok, Algorithm::RS256, Some("rsa-1"), RSA_OTHER),
            &defaults,
            Err(TokenError::Signature),
        ),
        (
            "kid of a key of another family",
            sign(&ok, Algorithm::RS256, Some("ec-1"), RSA),
            &defaults,
            Err(TokenError::UnknownKey),
        ),
        (
            "wrong issuer",
            rs(&with(ok.clone(), "iss", json!("https://evil.example.com"))),
            &defaults,
            Err(TokenError::Issuer),
        ),
        (
            "missing issuer",
            rs(&without(ok.clone(), "iss")),
            &defaults,
            Err(TokenError::Issuer),
        ),
        (
            "wrong audience",
            rs(&with(ok.clone(), "aud", json!("someone-else"))),
            &defaults,
            Err(TokenError::Audience),
        ),
        (
            "audience array without us",
            rs(&with(ok.clone(), "aud", json!(["a", "b"]))),
            &defaults,
            Err(TokenError::Audience),
        ),
        (
            "wrong azp",
            rs(&with(ok.clone(), "azp", json!("someone-else"))),
            &defaults,
            Err(TokenError::AuthorizedParty),
        ),
        (
            "expired",
            rs(&with(ok.clone(), "exp", json!(NOW - MAX_SKEW_S - 1))),
            &defaults,
            Err(TokenError::Expired),
        ),
        (
            "missing exp",
            rs(&without(ok.clone(), "exp")),
            &defaults,
            Err(TokenError::Missing("exp")),
        ),
        (
            "issued in the future",
            rs(&with(ok.clone(), "iat", json!(NOW + MAX_SKEW_S + 60))),
            &defaults,
            Err(TokenError::IssuedInFuture),
        ),
        (
            "wrong nonce",
            rs(&with(ok.clone(), "nonce", json!("replayed"))),
            &defaults,
            Err(TokenError::Nonce),
        ),
        (
            "missing nonce",
            rs(&without(ok.clone(), "nonce")),
            &defaults,
            Err(TokenError::Nonce),
        ),
        (
            "missing sub",
            rs(&without(ok.clone(), "sub")),
            &defaults,
            Err(TokenError::Missing("sub")),
        ),
        (
            "not a JWT",
            "abc".into(),
            &defaults,
            Err(TokenError::Malformed),
        ),
        (
            "empty",
            String::new(),
            &defaults,
            Err(TokenError::Malformed),
        ),
        (
            "tampered payload",
            {
                let token = rs(&ok);
                let parts: Vec<&str> = token.split('.').collect();
                let evil =
                    URL_SAFE_NO_PAD.encode(with(ok.clone(), "sub", json!("admin")).to_string());
                format!("{}.{evil}.{}", parts[0], parts[2])
            },
            &defaults,
            Err(TokenError::Signature),
        ),
    ];
    let keys = keys();
    for (name, token, algorithms, outcome) in rows {
        let got = verify_id_token(&token, &keys, &expect(algorithms), NONCE, "groups");
        assert_eq!(
            got.as_ref().map(|_| ()),
            outcome.as_ref().map(|_| ()),
            "row: {name}"
        );
        if let Ok(claims) = got {
            assert_eq!(claims.subject, "user-42", "{name}");
            assert_eq!(claims.sid.as_deref(), Some("idp-session-1"));
            assert_eq!(claims.groups, vec!["eng", "ops"]);
        }
    }
}

fn logout_claims() -> Value {
    json!({
        "iss": ISSUER, "aud": CLIENT, "sub": "user-42", "sid": "idp-session-1",
        "iat": NOW - 2, "jti": "jti-1",
        "events": { BACKCHANNEL_LOGOUT_EVENT: {} },
    })
}

#[test]
fn logout_token_rows() {
    let algs = [Algorithm::RS256, Algorithm::ES256];
    let ok = logout_claims();
    let rows: Vec<(&str, String, Result<(), TokenError>)> = vec![
        ("valid, sub and sid", rs(&ok), Ok(())),
        ("valid, sid only", rs(&without(ok.clone(), "sub")), Ok(())),
        ("valid, sub only", rs(&without(ok.clone(), "sid")), Ok(())),
        (
            "valid, ES256 with exp",
            sign(
                &with(ok.clone(), "exp", json!(NOW + 60)),
                Algorithm::ES256,
                Some("ec-1"),
                EC,
            ),
            Ok(()),
        ),
        (
            "missing events claim",
            rs(&without(ok.clone(), "events")),
            Err(TokenError::Events),
        ),
        (
            "events without the logout event",
            rs(&with(
                ok.clone(),
                "events",
                json!({"http://example.com/other": {}}),
            )),
            Err(TokenError::Events),
        ),
        (
            "logout event not an object",
            rs(&with(
                ok.clone(),
                "events",
                json!({ BACKCHANNEL_LOGOUT_EVENT: "yes" }),
            )),
            Err(TokenError::Events),
        ),
        (
            "nonce present",
            rs(&with(ok.clone(), "nonce", json!("n"))),
            Err(TokenError::NoncePresent),
        ),
        (
            "signed by an unknown key",
            sign(&ok, Algorithm::RS256, Some("unknown"), RSA_OTHER),
            Err(TokenError::UnknownKey),
        ),
        (
            "signed by another key under a known kid",
            sign(&ok, Algorithm::RS256, Some("rsa-1"), RSA_OTHER),
            Err(TokenError::Signature),
        ),
        (
            "alg none",
            unsigned(&ok),
            Err(TokenError::Algorithm("none".into())),
        ),
        (
            "HS256 with the public key",
            sign(&ok, Algorithm::HS256, Some("rsa-1"), RSA_PUBLIC),
            Err(TokenError::Algorithm("HS256".into())),
        ),
        (
            "neither sub nor sid",
            rs(&without(without(ok.clone(), "sub"), "sid")),
            Err(TokenError::Missing("sub_or_sid")),
        ),
        (
            "missing jti",
            rs(&without(ok.clone(), "jti")),
            Err(TokenError::Missing("jti")),
        ),
        (
            "missing iat",
            rs(&without(ok.clone(), "iat")),
            Err(TokenError::Missing("iat")),
        ),
        (
            "iat in the future",
            rs(&with(ok.clone(), "iat", json!(NOW + MAX_SKEW_S + 5))),
            Err(TokenError::IssuedInFuture),
        ),
        (
            "iat too old",
            rs(&with(
                ok.clone(),
                "iat",
                json!(NOW - LOGOUT_TOKEN_MAX_AGE_S - 5),
            )),
            Err(TokenError::TooOld),
        ),
        (
            "expired exp",
            rs(&with(ok.clone(), "exp", json!(NOW - MAX_SKEW_S - 5))),
            Err(TokenError::Expired),
        ),
        (
            "wrong issuer",
            rs(&with(ok.clone(), "iss", json!("https://other"))),
            Err(TokenError::Issuer),
        ),
        (
            "wrong audience",
            rs(&with(ok.clone(), "aud", json!("other"))),
            Err(TokenError::Audience),
        ),
    ];
    let keys = keys();
    for (name, token, outcome) in rows {
        let got = verify_logout_token(&token, &keys, &expect(&algs));
        assert_eq!(
            got.as_ref().map(|_| ()),
            outcome.as_ref().map(|_| ()),
            "row: {name}"
        );
        if let Ok(claims) = got {
            assert_eq!(claims.jti, "jti-1");
            assert!(claims.remember_until_s >= NOW + LOGOUT_TOKEN_MAX_AGE_S - 2);
        }
    }
}

#[test]
fn algorithm_allow_lists() {
    let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(parse_algorithms(&names(&["RS256", "ES256", "EdDSA"])).is_ok());
    for bad in [
        &["none"][..],
        &["HS256"],
        &["RS256", "HS512"],
        &["rs256x"],
        &[],
    ] {
        assert!(parse_algorithms(&names(bad)).is_err(), "{bad:?}");
    }
}

#[test]
fn pkce_is_s256_of_the_verifier() {
    // RFC 7636 appendix B.
    assert_eq!(
        pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    );
    let pair = pkce(&crate::secret::OsEntropy).unwrap();
    assert_eq!(pair.verifier.expose().len(), 43);
    assert_eq!(pair.challenge, pkce_challenge(pair.verifier.expose()));
}

#[test]
fn issuer_rows() {
    for (issuer, ok) in [
        ("https://id.example.com", true),
        ("https://id.example.com/realms/corp", true),
        ("http://127.0.0.1:9000", true),
        ("http://localhost:9000/oidc", true),
        ("http://[::1]:9000", true),
        ("http://id.example.com", false),
        ("http://10.0.0.1", false),
        ("ftp://id.example.com", false),
        ("https://id.example.com?x=1", false),
        ("https://id.example.com#frag", false),
        ("https://", false),
        ("id.example.com", false),
        ("http://user@127.0.0.1", false),
    ] {
        assert_eq!(validate_issuer(issuer).is_ok(), ok, "{issuer}");
    }
    for (id, ok) in [
        ("corp", true),
        ("corp-sso_2", true),
        ("", false),
        ("Corp", false),
        ("-x", false),
        ("a/b", false),
        // The built-in providers' names: a provider called `basic` could revoke
        // local users' sessions by back-channel logout.
        ("basic", false),
        ("magic", false),
        ("api-token", false),
        ("server-internal", false),
        ("basic2", true),
    ] {
        assert_eq!(validate_provider_id(id).is_ok(), ok, "{id}");
    }
}

#[test]
fn userinfo_completes_but_never_overrides_or_switches_subject() {
    let base = IdClaims {
        subject: "user-42".into(),
        sid: None,
        email: None,
        email_verified: false,
        name: Some("From ID token".into()),
        strings: [("sub".to_owned(), "user-42".to_owned())].into(),
        groups: Vec::new(),
        expires_s: NOW,
        assurance: Default::default(),
    };
    let mut claims = base.clone();
    merge_userinfo(
        &mut claims,
        &json!({"sub": "user-42", "email": "a@example.com", "name": "Other", "groups": ["eng"]}),
        "groups",
    )
    .unwrap();
    assert_eq!(claims.email.as_deref(), Some("a@example.com"));
    assert!(
        !claims.email_verified,
        "UserInfo did not say it was verified"
    );
    assert_eq!(claims.name.as_deref(), Some("From ID token"));
    // `email_verified` comes with the address it is about, as a boolean or the
    // string some providers send.
    for (verified, expected) in [
        (json!(true), true),
        (json!("true"), true),
        (json!(false), false),
        (json!("false"), false),
        (json!(1), false),
        (json!(null), false),
    ] {
        let mut claims = base.clone();
        merge_userinfo(
            &mut claims,
            &json!({"sub": "user-42", "email": "a@example.com", "email_verified": verified}),
            "groups",
        )
        .unwrap();
        assert_eq!(claims.email_verified, expected, "{verified}");
    }
    assert_eq!(claims.groups, vec!["eng"]);
    for other in [
        json!({"sub": "someone-else"}),
        json!({"email": "x"}),
        json!({"sub": ""}),
    ] {
        let mut claims = base.clone();
        assert_eq!(
            merge_userinfo(&mut claims, &other, "groups"),
            Err(TokenError::UserinfoSubject),
            "{other}"
        );
    }
}

#[test]
fn downgrade_rows() {
    let allowed = parse_algorithms(&["RS256".into(), "ES256".into(), "EdDSA".into()]).unwrap();
    let base = key_baseline(
        &["RS256".into(), "ES256".into(), "HS256".into()],
        &allowed,
        &keys(),
    );
    assert_eq!(
        base.algorithms,
        vec!["ES256", "RS256"],
        "HS256 is never ours"
    );
    assert_eq!(base.keys, vec!["EC-P256", "RSA-2048"]);
    let b = |algs: &[&str], keys: &[&str]| KeyBaseline {
        algorithms: algs.iter().map(|s| s.to_string()).collect(),
        keys: keys.iter().map(|s| s.to_string()).collect(),
    };
    let rows = [
        (
            "same",
            b(&["ES256", "RS256"], &["EC-P256", "RSA-2048"]),
            false,
        ),
        ("rotated keys, same shape", base.clone(), false),
        (
            "more algorithms and keys",
            b(
                &["ES256", "EdDSA", "RS256"],
                &["EC-P256", "OKP-Ed25519", "RSA-2048", "RSA-4096"],
            ),
            false,
        ),
        (
            "stronger RSA",
            b(&["ES256", "RS256"], &["EC-P256", "RSA-4096"]),
            false,
        ),
        (
            "algorithm dropped",
            b(&["RS256"], &["EC-P256", "RSA-2048"]),
            true,
        ),
        (
            "key type gone",
            b(&["ES256", "RS256"], &["RSA-2048", "RSA-2048"]),
            true,
        ),
        (
            "weaker RSA",
            b(&["ES256", "RS256"], &["EC-P256", "RSA-1024"]),
            true,
        ),
        ("fewer keys", b(&["ES256", "RS256"], &["EC-P256"]), true),
    ];
    for (name, new, is_downgrade) in rows {
        assert_eq!(downgrade(&base, &new).is_some(), is_downgrade, "{name}");
    }
}

#[test]
fn assurance_rows() {
    use crate::session::Assurance;
    let long = "x".repeat(65);
    let many: Vec<String> = (0..20).map(|n| format!("m{n}")).collect();
    // (claims, acr, amr)
    let rows: Vec<(serde_json::Value, Option<&str>, Vec<&str>)> = vec![
        (serde_json::json!({}), None, vec![]),
        (
            serde_json::json!({"acr": "urn:gold", "amr": ["pwd", "mfa"]}),
            Some("urn:gold"),
            vec!["pwd", "mfa"],
        ),
        // Values that could not be stored faithfully only weaken the assurance.
        (
            serde_json::json!({"acr": "a,b", "amr": ["mfa,hwk", "", 7, "otp", long]}),
            None,
            vec!["otp"],
        ),
        (serde_json::json!({"acr": 3, "amr": "mfa"}), None, vec![]),
        (serde_json::json!({"amr": many}), None, vec![]),
    ];
    for (claims, acr, amr) in rows {
        let got: Assurance = super::assurance_of(&claims);
        assert_eq!(got.acr.as_deref(), acr, "{claims}");
        if claims
            .get("amr")
            .and_then(|a| a.as_array())
            .is_some_and(|a| a.len() == 20)
        {
            assert_eq!(got.amr.len(), Assurance::MAX_METHODS);
        } else {
            assert_eq!(got.amr, amr, "{claims}");
        }
    }
}

#[test]
fn provider_user_names_live_in_the_providers_namespace() {
    let mut record = ProviderRecord {
        id: "corp".into(),
        display_name: "Corp".into(),
        issuer: "https://id.example.com".into(),
        client_id: "c".into(),
        client_secret_sealed: None,
        scopes: Vec::new(),
        algorithms: Vec::new(),
        groups_claim: "groups".into(),
        refuse_unmapped: false,
        accept_unverified_email: false,
        user_claim: "sub".into(),
        user_prefix: None,
        source: "api".into(),
        key_baseline: None,
        created_ms: 0,
        updated_ms: 0,
    };
    let claims = |pairs: &[(&str, &str)]| IdClaims {
        subject: "s".into(),
        sid: None,
        email: None,
        email_verified: false,
        name: None,
        strings: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        groups: Vec::new(),
        expires_s: NOW,
        assurance: Default::default(),
    };
    let alice = claims(&[("sub", "alice"), ("email", "a@corp.example")]);
    assert_eq!(record.user_name(&alice).as_deref(), Some("corp:alice"));
    record.user_claim = "email".into();
    assert_eq!(
        record.user_name(&alice).as_deref(),
        Some("corp:a@corp.example")
    );
    record.user_prefix = Some(String::new());
    assert_eq!(record.user_name(&alice).as_deref(), Some("a@corp.example"));
    for bad in [
        claims(&[("sub", "alice")]),
        claims(&[("email", "")]),
        claims(&[("email", "a,b@x")]),
        claims(&[("email", "a\nb")]),
        claims(&[("email", "admin ")]),
        claims(&[("email", " admin")]),
    ] {
        assert_eq!(record.user_name(&bad), None, "{:?}", bad.strings);
    }
    assert!(check_user_naming("sub", None).is_empty());
    assert!(check_user_naming("preferred_username", Some("")).is_empty());
    assert_eq!(check_user_naming("a b", Some("x,")).len(), 2);
    assert_eq!(check_user_naming("", None).len(), 1);
}

#[test]
fn namespace_clash_rows() {
    // (providers as (id, prefix), clashes expected)
    let rows: &[(&[(&str, &str)], usize)] = &[
        (&[("google", "google:"), ("okta", "okta:")], 0),
        (&[("a", "corp:"), ("b", "corp:")], 1),
        (&[("a", "corp:"), ("b", "corp:eu:")], 1),
        (&[("a", "corp:eu:"), ("b", "corp:")], 1),
        (&[("a", ""), ("b", "b:")], 0),
        (&[("a", ""), ("b", "")], 1),
        (&[("a", "x:"), ("b", "y:"), ("c", "x:")], 1),
        (&[("only", "")], 0),
    ];
    for (providers, expected) in rows {
        assert_eq!(
            namespace_clashes(providers).len(),
            *expected,
            "{providers:?}"
        );
    }
    let names = ["alice", "corp:bob"];
    let warnings = unprefixed_overlaps(&[("a", "corp:"), ("b", "")], &names);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("\"corp:bob\"") && warnings[1].contains("without a prefix"));
    assert!(unprefixed_overlaps(&[("a", "a:")], &names).is_empty());
}
