//! OpenID Connect rules, pure (SPEC 5): PKCE, and the validation of ID tokens and
//! Back-Channel Logout tokens against a provider's keys. Fetching discovery
//! documents and key sets is the gateway's job; this module decides.
//!
//! Signatures are checked by `jsonwebtoken`, which also refuses a key of the wrong
//! family for the algorithm (no `HS256` signed with an RSA public key). The
//! algorithm allow-list is checked here first, on the raw header, so `none` and
//! every `HS*` are refused by name.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
pub use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::Jwk;
pub use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::secret::{Entropy, EntropyError, SecretString, ct_eq};

/// Signing algorithms accepted when a provider names none.
pub const DEFAULT_ALGORITHMS: &[&str] = &["RS256", "ES256", "EdDSA"];
/// Scopes requested when a provider names none.
pub const DEFAULT_SCOPES: &[&str] = &["openid", "email", "profile"];

/// `list`, or the defaults when it is absent (for scopes and algorithms).
pub fn or_defaults(list: Option<Vec<String>>, defaults: &[&str]) -> Vec<String> {
    list.unwrap_or_else(|| defaults.iter().map(|s| s.to_string()).collect())
}

/// The `events` member a logout token must carry.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// Clock skew tolerated on `iat` and `exp`.
pub const MAX_SKEW_S: i64 = 120;
/// Logout tokens older than this (by `iat`) are refused, bounding the replay store.
pub const LOGOUT_TOKEN_MAX_AGE_S: i64 = 600;

/// Parses an algorithm allow-list. `none` and every `HS*` are refused: a provider's
/// keys are public, and an HMAC "signed" with public material proves nothing.
pub fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, String> {
    if names.is_empty() {
        return Err("at least one signing algorithm is required".into());
    }
    names
        .iter()
        .map(|name| {
            let alg: Algorithm = name
                .parse()
                .map_err(|_| format!("{name:?} is not a supported signing algorithm"))?;
            if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                return Err(format!("{name} is refused: HMAC needs a shared secret, and a provider's keys are public"));
            }
            Ok(alg)
        })
        .collect()
}

/// A PKCE pair (RFC 7636, S256).
#[derive(Debug, Clone)]
pub struct Pkce {
    pub verifier: SecretString,
    pub challenge: String,
}

pub fn pkce(entropy: &dyn Entropy) -> Result<Pkce, EntropyError> {
    let verifier = random_token(entropy)?;
    let challenge = pkce_challenge(verifier.expose());
    Ok(Pkce {
        verifier,
        challenge,
    })
}

pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// 32 random bytes, base64url: for `state`, `nonce` and PKCE verifiers.
pub fn random_token(entropy: &dyn Entropy) -> Result<SecretString, EntropyError> {
    let mut raw = [0u8; 32];
    entropy.fill(&mut raw)?;
    Ok(SecretString::new(URL_SAFE_NO_PAD.encode(raw)))
}

/// Why a token was refused. The client sees one uniform message; the audit log
/// keeps [`TokenError::reason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("algorithm {0} is not allowed")]
    Algorithm(String),
    #[error("no key with this kid")]
    UnknownKey,
    #[error("signature invalid")]
    Signature,
    #[error("wrong issuer")]
    Issuer,
    #[error("wrong audience")]
    Audience,
    #[error("wrong authorized party (azp)")]
    AuthorizedParty,
    #[error("expired")]
    Expired,
    #[error("issued in the future")]
    IssuedInFuture,
    #[error("issued too long ago")]
    TooOld,
    #[error("nonce mismatch")]
    Nonce,
    #[error("missing claim {0}")]
    Missing(&'static str),
    #[error("logout token carries a nonce")]
    NoncePresent,
    #[error("logout token lacks the back-channel logout event")]
    Events,
    #[error("UserInfo is about another subject")]
    UserinfoSubject,
}

impl TokenError {
    /// A short machine-readable reason for the audit log.
    pub fn reason(&self) -> String {
        match self {
            Self::Malformed => "malformed".into(),
            Self::Algorithm(alg) => format!("algorithm_not_allowed:{alg}"),
            Self::UnknownKey => "unknown_kid".into(),
            Self::Signature => "bad_signature".into(),
            Self::Issuer => "wrong_issuer".into(),
            Self::Audience => "wrong_audience".into(),
            Self::AuthorizedParty => "wrong_azp".into(),
            Self::Expired => "expired".into(),
            Self::IssuedInFuture => "iat_in_future".into(),
            Self::TooOld => "iat_too_old".into(),
            Self::Nonce => "nonce_mismatch".into(),
            Self::Missing(claim) => format!("missing_{claim}"),
            Self::NoncePresent => "nonce_present".into(),
            Self::Events => "missing_event".into(),
            Self::UserinfoSubject => "userinfo_sub_mismatch".into(),
        }
    }
}

/// What a token is checked against.
#[derive(Debug, Clone)]
pub struct Expectations<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub algorithms: &'a [Algorithm],
    /// Seconds since the epoch.
    pub now_s: i64,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
}

/// Verifies the signature and returns the claims as JSON. Checks the algorithm
/// allow-list by name before anything else, and finds the key by `kid` (or the
/// only key of the right family when the token names none).
fn verify_signature(
    token: &str,
    keys: &JwkSet,
    algorithms: &[Algorithm],
) -> Result<Value, TokenError> {
    let header_b64 = token.split('.').next().ok_or(TokenError::Malformed)?;
    let header: RawHeader = URL_SAFE_NO_PAD
        .decode(header_b64)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or(TokenError::Malformed)?;
    let alg_name = header.alg.ok_or(TokenError::Malformed)?;
    let alg = alg_name
        .parse::<Algorithm>()
        .ok()
        .filter(|alg| algorithms.contains(alg))
        .ok_or(TokenError::Algorithm(alg_name))?;
    let key = find_key(keys, header.kid.as_deref(), alg).ok_or(TokenError::UnknownKey)?;
    let decoding = DecodingKey::from_jwk(key).map_err(|_| TokenError::UnknownKey)?;
    let mut validation = Validation::new(alg);
    // Claims are checked below, with our own rules and reasons.
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    match jsonwebtoken::decode::<Value>(token, &decoding, &validation) {
        Ok(data) => Ok(data.claims),
        Err(e) => Err(match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature
            | jsonwebtoken::errors::ErrorKind::InvalidAlgorithm
            | jsonwebtoken::errors::ErrorKind::InvalidKeyFormat => TokenError::Signature,
            _ => TokenError::Malformed,
        }),
    }
}

fn find_key<'a>(keys: &'a JwkSet, kid: Option<&str>, alg: Algorithm) -> Option<&'a Jwk> {
    let family_matches = |jwk: &Jwk| {
        let family = match &jwk.algorithm {
            jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => jsonwebtoken::AlgorithmFamily::Rsa,
            jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => {
                jsonwebtoken::AlgorithmFamily::Ec
            }
            jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => {
                jsonwebtoken::AlgorithmFamily::Ed
            }
            _ => return false,
        };
        family == alg.family()
    };
    match kid {
        Some(kid) => keys.find(kid).filter(|jwk| family_matches(jwk)),
        None => {
            let mut candidates = keys.keys.iter().filter(|jwk| family_matches(jwk));
            match (candidates.next(), candidates.next()) {
                (Some(only), None) => Some(only),
                _ => None,
            }
        }
    }
}

fn string_claim<'a>(claims: &'a Value, name: &str) -> Option<&'a str> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn time_claim(claims: &Value, name: &str) -> Option<i64> {
    claims.get(name).and_then(Value::as_i64)
}

fn check_issuer_audience(claims: &Value, expect: &Expectations<'_>) -> Result<(), TokenError> {
    if string_claim(claims, "iss") != Some(expect.issuer) {
        return Err(TokenError::Issuer);
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == expect.client_id,
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(expect.client_id)),
        _ => false,
    };
    if !audience_ok {
        return Err(TokenError::Audience);
    }
    if let Some(azp) = claims.get("azp")
        && azp.as_str() != Some(expect.client_id)
    {
        return Err(TokenError::AuthorizedParty);
    }
    Ok(())
}

/// The claims of a valid ID token that Portcullis uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdClaims {
    pub subject: String,
    pub sid: Option<String>,
    pub email: Option<String>,
    /// The provider's `email_verified` for that address (`false` when absent).
    pub email_verified: bool,
    pub name: Option<String>,
    /// Every top-level string claim (at most [`MAX_STRING_CLAIMS`], each at most
    /// 1024 bytes), for the provider's user claim and `preferred_username`.
    pub strings: std::collections::BTreeMap<String, String>,
    pub groups: Vec<String>,
    pub expires_s: i64,
    /// `acr` and `amr`, when the provider states them (values that could not be
    /// stored faithfully are dropped, so they can only weaken the assurance).
    pub assurance: crate::session::Assurance,
}

/// Validates an ID token (OIDC Core 3.1.3.7): signature and algorithm, `iss`,
/// `aud`, `azp` when present, `exp`, `iat` within the skew, and `nonce`.
pub fn verify_id_token(
    token: &str,
    keys: &JwkSet,
    expect: &Expectations<'_>,
    nonce: &str,
    groups_claim: &str,
) -> Result<IdClaims, TokenError> {
    let claims = verify_signature(token, keys, expect.algorithms)?;
    check_issuer_audience(&claims, expect)?;
    let exp = time_claim(&claims, "exp").ok_or(TokenError::Missing("exp"))?;
    if exp + MAX_SKEW_S <= expect.now_s {
        return Err(TokenError::Expired);
    }
    let iat = time_claim(&claims, "iat").ok_or(TokenError::Missing("iat"))?;
    if iat > expect.now_s + MAX_SKEW_S {
        return Err(TokenError::IssuedInFuture);
    }
    match string_claim(&claims, "nonce") {
        Some(n) if ct_eq(n.as_bytes(), nonce.as_bytes()) => {}
        _ => return Err(TokenError::Nonce),
    }
    let subject = string_claim(&claims, "sub").ok_or(TokenError::Missing("sub"))?;
    let groups = groups_of(&claims, groups_claim);
    Ok(IdClaims {
        subject: subject.to_owned(),
        sid: string_claim(&claims, "sid").map(str::to_owned),
        email: string_claim(&claims, "email").map(str::to_owned),
        email_verified: verified_claim(&claims),
        strings: strings_of(&claims),
        name: string_claim(&claims, "name")
            .or_else(|| string_claim(&claims, "preferred_username"))
            .map(str::to_owned),
        groups,
        expires_s: exp,
        assurance: assurance_of(&claims),
    })
}

/// Most string claims kept from one token or UserInfo answer.
pub const MAX_STRING_CLAIMS: usize = 64;

fn strings_of(claims: &Value) -> std::collections::BTreeMap<String, String> {
    claims
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(claim, value)| Some((claim, value.as_str()?)))
        .filter(|(claim, value)| claim.len() <= 128 && value.len() <= 1024)
        .take(MAX_STRING_CLAIMS)
        .map(|(claim, value)| (claim.clone(), value.to_owned()))
        .collect()
}

/// `email_verified`: `true`, or the string `"true"` some providers send; anything
/// else (absent included) is not verified.
fn verified_claim(claims: &Value) -> bool {
    match claims.get("email_verified") {
        Some(Value::Bool(verified)) => *verified,
        Some(Value::String(verified)) => verified == "true",
        _ => false,
    }
}

fn assurance_of(claims: &Value) -> crate::session::Assurance {
    use crate::session::Assurance;
    let acr = string_claim(claims, "acr")
        .filter(|v| Assurance::is_value(v))
        .map(str::to_owned);
    let amr = match claims.get("amr") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .filter(|v| Assurance::is_value(v))
            .take(Assurance::MAX_METHODS)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    Assurance { acr, amr }
}

/// Completes ID-token claims from the UserInfo response (OIDC Core 5.3): providers
/// may leave `email`, `name` and groups out of the ID token. The UserInfo `sub`
/// must be the ID token's, else the response is refused. ID-token values win.
pub fn merge_userinfo(
    claims: &mut IdClaims,
    userinfo: &Value,
    groups_claim: &str,
) -> Result<(), TokenError> {
    if string_claim(userinfo, "sub") != Some(claims.subject.as_str()) {
        return Err(TokenError::UserinfoSubject);
    }
    if claims.email.is_none() {
        claims.email = string_claim(userinfo, "email").map(str::to_owned);
        claims.email_verified = verified_claim(userinfo);
    }
    if claims.name.is_none() {
        claims.name = string_claim(userinfo, "name")
            .or_else(|| string_claim(userinfo, "preferred_username"))
            .map(str::to_owned);
    }
    if claims.groups.is_empty() {
        claims.groups = groups_of(userinfo, groups_claim);
    }
    for (claim, value) in strings_of(userinfo) {
        if claims.strings.len() >= MAX_STRING_CLAIMS {
            break;
        }
        claims.strings.entry(claim).or_insert(value);
    }
    Ok(())
}

fn groups_of(claims: &Value, groups_claim: &str) -> Vec<String> {
    match claims.get(groups_claim) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    }
}

/// The claims of a valid logout token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutClaims {
    pub subject: Option<String>,
    pub sid: Option<String>,
    pub jti: String,
    /// Until when the `jti` must be remembered (seconds since the epoch).
    pub remember_until_s: i64,
}

/// Validates a Back-Channel Logout token (OIDC Back-Channel Logout 1.0, 2.6):
/// signature and algorithm, `iss`, `aud`, `iat` (bounded skew and age), `jti`,
/// the logout event, `sub` and/or `sid`, no `nonce`, `exp` when present.
pub fn verify_logout_token(
    token: &str,
    keys: &JwkSet,
    expect: &Expectations<'_>,
) -> Result<LogoutClaims, TokenError> {
    let claims = verify_signature(token, keys, expect.algorithms)?;
    check_issuer_audience(&claims, expect)?;
    let iat = time_claim(&claims, "iat").ok_or(TokenError::Missing("iat"))?;
    if iat > expect.now_s + MAX_SKEW_S {
        return Err(TokenError::IssuedInFuture);
    }
    if iat + LOGOUT_TOKEN_MAX_AGE_S < expect.now_s {
        return Err(TokenError::TooOld);
    }
    if let Some(exp) = claims.get("exp") {
        match exp.as_i64() {
            Some(exp) if exp + MAX_SKEW_S > expect.now_s => {}
            Some(_) => return Err(TokenError::Expired),
            None => return Err(TokenError::Malformed),
        }
    }
    let jti = string_claim(&claims, "jti").ok_or(TokenError::Missing("jti"))?;
    let has_event = claims
        .get("events")
        .and_then(Value::as_object)
        .and_then(|events| events.get(BACKCHANNEL_LOGOUT_EVENT))
        .is_some_and(Value::is_object);
    if !has_event {
        return Err(TokenError::Events);
    }
    if claims.get("nonce").is_some() {
        return Err(TokenError::NoncePresent);
    }
    let subject = string_claim(&claims, "sub").map(str::to_owned);
    let sid = string_claim(&claims, "sid").map(str::to_owned);
    if subject.is_none() && sid.is_none() {
        return Err(TokenError::Missing("sub_or_sid"));
    }
    let exp = time_claim(&claims, "exp").unwrap_or(0);
    Ok(LogoutClaims {
        subject,
        sid,
        jti: jti.to_owned(),
        remember_until_s: exp.max(iat + LOGOUT_TOKEN_MAX_AGE_S) + MAX_SKEW_S,
    })
}

/// How long a pre-login row (and its cookie) lives.
pub const PENDING_TTL_MS: i64 = 600_000;

/// A provider as stored. The client secret is sealed under the secret key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRecord {
    pub id: String,
    pub display_name: String,
    pub issuer: String,
    pub client_id: String,
    pub client_secret_sealed: Option<Vec<u8>>,
    pub scopes: Vec<String>,
    pub algorithms: Vec<String>,
    pub groups_claim: String,
    /// Refuse users none of whose groups is mapped (instead of role `user`).
    pub refuse_unmapped: bool,
    /// Forward an e-mail the provider does not mark verified (off: it is dropped).
    pub accept_unverified_email: bool,
    /// The claim whose value names the user (`sub` by default; `email`,
    /// `preferred_username`, …).
    pub user_claim: String,
    /// Put before that value in `X-Forwarded-User`; `None`: the provider's id and
    /// `:` (so no two providers, and no provider and a basic user, can name the
    /// same user by accident); `""`: the operator declares the namespaces disjoint.
    pub user_prefix: Option<String>,
    /// `config` (declared in the config file) or `api` (admin API or CLI).
    pub source: String,
    /// What the provider's keys and algorithms were at the last accepted
    /// discovery, for downgrade detection.
    pub key_baseline: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

impl ProviderRecord {
    /// The user name this provider's sign-in forwards, from `claims`: the prefix
    /// and the user claim's value; `None` when the claim is missing or cannot be a
    /// user name (empty, over 256 bytes, a control character or a comma).
    pub fn user_name(&self, claims: &IdClaims) -> Option<String> {
        let value = claims.strings.get(&self.user_claim)?;
        // Upstreams trim what they read: a name with outer whitespace could pass
        // for another one.
        let usable = !value.is_empty()
            && value.len() <= MAX_USER_NAME
            && value.trim() == value
            && !value.chars().any(|c| c.is_control() || c == ',');
        usable.then(|| format!("{}{value}", self.prefix()))
    }

    /// The prefix of this provider's user names.
    pub fn prefix(&self) -> String {
        self.user_prefix
            .clone()
            .unwrap_or_else(|| format!("{}:", self.id))
    }
}

/// Longest user-claim value used as a user name.
pub const MAX_USER_NAME: usize = 256;

/// Checks a provider's user claim and prefix.
pub fn check_user_naming(user_claim: &str, user_prefix: Option<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    let token = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/'))
    };
    if user_claim.is_empty() || user_claim.len() > 128 || !token(user_claim) {
        problems.push(format!(
            "user_claim {user_claim:?} is not a claim name (e.g. sub, email, preferred_username)"
        ));
    }
    if let Some(prefix) = user_prefix
        && (prefix.len() > 64 || prefix.chars().any(|c| c.is_control() || c == ','))
    {
        problems.push(format!(
            "user_prefix {prefix:?}: at most 64 characters, no commas or control characters"
        ));
    }
    problems
}

/// Pairs of providers whose user names could coincide: one's prefix begins the
/// other's (equal ones included), so a user of one could reach the upstream with
/// the name of a user of the other. `providers` holds (id, prefix) with each
/// prefix as [`ProviderRecord::prefix`] gives it. Two providers without a prefix
/// clash too; one alone is [`unprefixed_overlaps`]' concern.
pub fn namespace_clashes(providers: &[(&str, &str)]) -> Vec<String> {
    let mut clashes = Vec::new();
    for (i, (a, pa)) in providers.iter().enumerate() {
        for (b, pb) in &providers[i + 1..] {
            let related = if pa.is_empty() || pb.is_empty() {
                pa.is_empty() && pb.is_empty()
            } else {
                pa.starts_with(pb) || pb.starts_with(pa)
            };
            if related {
                clashes.push(format!(
                    "providers {a:?} and {b:?} name users with overlapping prefixes \
                     ({pa:?} and {pb:?}): a user of one could carry the name of a user \
                     of the other; give each a user_prefix that does not begin the other's"
                ));
            }
        }
    }
    clashes
}

/// [`namespace_clashes`] among stored providers.
pub fn record_clashes<'a>(records: impl IntoIterator<Item = &'a ProviderRecord>) -> Vec<String> {
    let prefixes: Vec<(&str, String)> = records
        .into_iter()
        .map(|p| (p.id.as_str(), p.prefix()))
        .collect();
    let namespaces: Vec<(&str, &str)> = prefixes.iter().map(|(id, p)| (*id, p.as_str())).collect();
    namespace_clashes(&namespaces)
}

/// The first clash between `record` and the providers in `existing` (a stored
/// version of `record` itself is skipped).
pub fn clash_with(record: &ProviderRecord, existing: &[ProviderRecord]) -> Option<String> {
    let others = existing.iter().filter(|p| p.id != record.id);
    record_clashes(others.chain(std::iter::once(record)))
        .into_iter()
        .next()
}

/// Where a provider's names meet other names: a provider without a prefix shares
/// the namespace of basic users (the operator declared them disjoint; said once,
/// as a warning), and a basic user named inside a provider's prefix could be
/// that provider's user.
pub fn unprefixed_overlaps(providers: &[(&str, &str)], basic_users: &[&str]) -> Vec<String> {
    let mut warnings = Vec::new();
    for (id, prefix) in providers {
        if prefix.is_empty() {
            warnings.push(format!(
                "provider {id:?} names users without a prefix: a user it names like a \
                 basic user, a client or another provider's user (`corp:alice`) is that one \
                 to the upstream; keep the names disjoint"
            ));
            continue;
        }
        for user in basic_users.iter().filter(|u| u.starts_with(prefix)) {
            warnings.push(format!(
                "basic user {user:?} is named inside provider {id:?}'s prefix {prefix:?}: \
                 the provider could sign someone in under the same name"
            ));
        }
    }
    warnings
}

/// A login in flight: the pre-login row (SPEC 5).
#[derive(Debug, Clone)]
pub struct PendingLogin {
    /// `pl-` + base64url(16 random bytes); rides in the signed pending cookie.
    pub id: String,
    pub provider_id: String,
    pub state: SecretString,
    pub nonce: SecretString,
    pub pkce_verifier: SecretString,
    pub next: String,
    pub created_ms: i64,
    pub expires_ms: i64,
}

/// Context under which a provider's client secret is sealed (binds it to its row).
pub fn client_secret_context(provider_id: &str) -> String {
    format!("portcullis oidc client secret v1:{provider_id}")
}

/// Sealing context of the ID token kept for a session's RP-initiated logout: bound
/// to the session, so a sealed token moved to another session's row does not open.
pub fn id_token_context(session_id: &str) -> String {
    format!("portcullis oidc id token v1:{session_id}")
}

/// A provider id: 1 to 64 of `a-z 0-9 - _`, starting with a letter or digit, and
/// not the name of a built-in provider.
pub fn validate_provider_id(id: &str) -> Result<(), String> {
    if crate::identity::RESERVED_PROVIDER_IDS.contains(&id) {
        return Err(format!(
            "{id:?} is reserved for a built-in sign-in method; choose another provider id"
        ));
    }
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && id.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not a provider id: use 1 to 64 of a-z, 0-9, - and _"
        ))
    }
}

/// An issuer URL: `https`, or `http` on a loopback host (local development and
/// tests); no query or fragment.
pub fn validate_issuer(issuer: &str) -> Result<(), String> {
    let (scheme, rest) = issuer
        .split_once("://")
        .ok_or_else(|| format!("{issuer:?} is not a URL"))?;
    if issuer.contains(['?', '#']) || rest.is_empty() {
        return Err(format!("{issuer:?}: an issuer has no query or fragment"));
    }
    let host_port = rest.split('/').next().unwrap_or_default();
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.rsplit_once(':').map_or(host_port, |(h, _)| h),
    };
    if host.is_empty() || host.contains('@') {
        return Err(format!("{issuer:?}: missing or invalid host"));
    }
    match scheme {
        "https" => Ok(()),
        "http"
            if host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback()) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "{issuer:?}: issuers must use https (http is accepted for loopback hosts only)"
        )),
    }
}

/// Every problem with a provider's fields (shared by the config file, the admin
/// API and the CLI, so all three accept exactly the same providers).
pub fn check_provider_fields(
    id: &str,
    issuer: &str,
    client_id: &str,
    scopes: &[String],
    algorithms: &[String],
) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = validate_provider_id(id) {
        problems.push(format!("id: {e}"));
    }
    if let Err(e) = validate_issuer(issuer) {
        problems.push(format!("issuer: {e}"));
    }
    if client_id.trim().is_empty() {
        problems.push("client_id is empty".into());
    }
    if let Err(e) = parse_algorithms(algorithms) {
        problems.push(format!("algorithms: {e}"));
    }
    if !scopes.iter().any(|s| s == "openid") {
        problems.push("scopes must include \"openid\"".into());
    }
    if scopes
        .iter()
        .any(|s| s.is_empty() || s.contains(char::is_whitespace))
    {
        problems.push("scopes must be single words".into());
    }
    problems
}

/// What a provider offered at its last accepted discovery: signing algorithms
/// (those we allow) and keys (type and strength). A refresh that offers less is a
/// downgrade and needs `force`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct KeyBaseline {
    pub algorithms: Vec<String>,
    /// `RSA-<bits>`, `EC-<curve>` or `OKP-<curve>`, sorted.
    pub keys: Vec<String>,
}

pub fn key_baseline(advertised: &[String], allowed: &[Algorithm], keys: &JwkSet) -> KeyBaseline {
    let mut algorithms: Vec<String> = advertised
        .iter()
        .filter(|a| {
            a.parse::<Algorithm>()
                .is_ok_and(|alg| allowed.contains(&alg))
        })
        .cloned()
        .collect();
    algorithms.sort();
    algorithms.dedup();
    let mut described: Vec<String> = keys
        .keys
        .iter()
        .filter_map(|jwk| match &jwk.algorithm {
            jsonwebtoken::jwk::AlgorithmParameters::RSA(rsa) => {
                let bytes = URL_SAFE_NO_PAD.decode(rsa.n.trim_end_matches('=')).ok()?;
                let leading = bytes.iter().take_while(|b| **b == 0).count();
                Some(format!("RSA-{}", (bytes.len() - leading) * 8))
            }
            jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(ec) => {
                Some(format!("EC-{:?}", ec.curve))
            }
            jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(okp) => {
                Some(format!("OKP-{:?}", okp.curve))
            }
            _ => None,
        })
        .collect();
    described.sort();
    KeyBaseline {
        algorithms,
        keys: described,
    }
}

/// Why `new` offers less than `old`, if it does: an algorithm dropped, a key type
/// gone, RSA keys shorter than before, or fewer keys.
pub fn downgrade(old: &KeyBaseline, new: &KeyBaseline) -> Option<String> {
    if let Some(lost) = old.algorithms.iter().find(|a| !new.algorithms.contains(a)) {
        return Some(format!("algorithm {lost} is no longer offered"));
    }
    let kind = |k: &String| k.split('-').next().unwrap_or_default().to_owned();
    for old_kind in old.keys.iter().map(kind) {
        if !new.keys.iter().any(|k| kind(k) == old_kind) {
            return Some(format!("no {old_kind} key any more"));
        }
    }
    let rsa_min = |b: &KeyBaseline| {
        b.keys
            .iter()
            .filter_map(|k| k.strip_prefix("RSA-")?.parse::<u32>().ok())
            .min()
    };
    if let (Some(before), Some(after)) = (rsa_min(old), rsa_min(new))
        && after < before
    {
        return Some(format!("RSA keys shrank from {before} to {after} bits"));
    }
    if new.keys.len() < old.keys.len() {
        return Some(format!(
            "fewer keys than before ({} → {})",
            old.keys.len(),
            new.keys.len()
        ));
    }
    None
}

#[cfg(test)]
mod tests;
