//! Sign-in through a provider: `GET {prefix}/oidc/login` (a pre-login row, its
//! signed cookie, PKCE S256, `state` and `nonce`) and `GET {prefix}/oidc/callback`
//! (the row consumed once, the code exchanged, the ID token validated, groups
//! mapped, a session minted).

use portcullis_core::audit::AuditAction;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use portcullis_core::cookie::PRE_LOGIN_PREFIX;
use portcullis_core::oidc::{self as rules, Expectations, PENDING_TTL_MS, PendingLogin};
use portcullis_core::redirect::safe_next;
use portcullis_core::secret::{SecretString, ct_eq, random_id};
use serde::Deserialize;

use crate::config::GatewayConfig;
use crate::cookies::{self, PENDING_COOKIE};
use crate::error::GatewayError;
use crate::pipeline::ClientAddr;
use crate::state::Gateway;

use crate::oidc::*;

pub(super) fn now_s(gw: &Gateway) -> i64 {
    gw.now() / 1000
}

fn redirect_uri(gw: &Gateway) -> String {
    format!(
        "{}{}/oidc/callback",
        gw.config().public_url.origin(),
        gw.config().auth_prefix
    )
}

/// `Set-Cookie` for the pre-login cookie. Over https it is
/// `__Host-portcullis_oidc_pending` at `Path=/`: a `__Host-` cookie is the only
/// kind a sibling subdomain cannot plant, and planting one's own pending login is
/// how a login CSRF through the callback would start. Over http (no prefix
/// possible) it stays scoped to `{prefix}/oidc/`.
fn pending_cookie(config: &GatewayConfig, value: &str, max_age: i64) -> Option<HeaderValue> {
    let cookie = if config.public_url.is_https() {
        format!(
            "{}={value}; Path=/; Max-Age={max_age}; SameSite=Lax; HttpOnly; Secure",
            cookies::name(config, PENDING_COOKIE)
        )
    } else {
        format!(
            "{PENDING_COOKIE}={value}; Path={}/oidc/; Max-Age={max_age}; SameSite=Lax; HttpOnly",
            config.auth_prefix
        )
    };
    HeaderValue::from_str(&cookie).ok()
}

/// The pre-login cookie's value, under the one name it is set with: over https
/// an unprefixed one (which anyone on a sibling subdomain can plant) is ignored.
fn pending_value<'h>(config: &GatewayConfig, headers: &'h HeaderMap) -> Option<&'h str> {
    cookies::read(headers, &cookies::name(config, PENDING_COOKIE))
}

pub(super) fn form_encode(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    provider: Option<String>,
    next: Option<String>,
    /// `login`: authenticate again even with a session at the provider (step-up).
    prompt: Option<String>,
    /// Space-separated `acr` values to ask the provider for (step-up).
    acr_values: Option<String>,
}

/// What a sign-in asks of the provider beyond identifying the user.
#[derive(Debug, Default)]
struct Ask<'a> {
    prompt_login: bool,
    acr_values: Option<&'a str>,
}

impl<'a> Ask<'a> {
    /// Only `prompt=login` and a few well-formed `acr` values are passed on.
    fn from_query(query: &'a LoginQuery) -> Result<Self, Failure> {
        let prompt_login = match query.prompt.as_deref() {
            None => false,
            Some("login") => true,
            Some(_) => return Err(Failure::new("bad_prompt")),
        };
        let acr_values = match query.acr_values.as_deref() {
            None => None,
            Some(values) => {
                let count = values.split(' ').count();
                let valid = count <= 8
                    && values
                        .split(' ')
                        .all(portcullis_core::session::Assurance::is_value);
                if !valid {
                    return Err(Failure::new("bad_acr_values"));
                }
                Some(values)
            }
        };
        Ok(Self {
            prompt_login,
            acr_values,
        })
    }
}

/// `GET {prefix}/oidc/login?provider=ID&next=`: a pre-login row, its cookie, and a
/// redirect to the provider with PKCE S256, `state` and `nonce`.
pub async fn login(
    State(gw): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<ClientAddr>,
    Query(query): Query<LoginQuery>,
) -> Response {
    let id = query.provider.clone().unwrap_or_default();
    let started = match Ask::from_query(&query) {
        Ok(ask) => start_login(&gw, &id, query.next.as_deref(), &ask).await,
        Err(failure) => Err(failure),
    };
    match started {
        Ok(response) => response,
        Err(failure) => {
            let mut event = gw.audit_event("anonymous", AuditAction::OidcLogin, "failure");
            event.target = Some(id);
            event.reason = Some(failure.reason.clone());
            event.ip = Some(peer.ip().to_string());
            gw.audit(event).await;
            failure.into_response()
        }
    }
}

async fn start_login(
    gw: &Gateway,
    id: &str,
    next: Option<&str>,
    ask: &Ask<'_>,
) -> Result<Response, Failure> {
    let provider = gw
        .oidc()
        .provider(id)
        .ok_or_else(|| Failure::new("unknown_provider"))?;
    let metadata = gw.oidc().metadata(&provider).await?;
    let entropy = gw.entropy();
    let entropy_failed = |e: portcullis_core::secret::EntropyError| Failure::new(e.to_string());
    let pkce = rules::pkce(entropy).map_err(entropy_failed)?;
    let now = gw.now();
    let pending = PendingLogin {
        id: random_id(entropy, PRE_LOGIN_PREFIX).map_err(entropy_failed)?,
        provider_id: provider.record.id.clone(),
        state: rules::random_token(entropy).map_err(entropy_failed)?,
        nonce: rules::random_token(entropy).map_err(entropy_failed)?,
        pkce_verifier: pkce.verifier,
        next: next.and_then(safe_next).unwrap_or("/").to_owned(),
        created_ms: now,
        expires_ms: now + PENDING_TTL_MS,
    };
    gw.store().insert_pending_login(&pending).await?;
    let cookie = gw
        .keyring()
        .current()
        .sign(&pending.id)
        .map_err(|e| Failure::new(e.to_string()))?;
    let scopes = provider.record.scopes.join(" ");
    let redirect = redirect_uri(gw);
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", provider.record.client_id.as_str()),
        ("redirect_uri", &redirect),
        ("scope", &scopes),
        ("state", pending.state.expose()),
        ("nonce", pending.nonce.expose()),
        ("code_challenge", &pkce.challenge),
        ("code_challenge_method", "S256"),
    ];
    if ask.prompt_login {
        params.push(("prompt", "login"));
    }
    if let Some(acr_values) = ask.acr_values {
        params.push(("acr_values", acr_values));
    }
    let query = form_encode(&params);
    let separator = if metadata.authorization_endpoint.contains('?') {
        '&'
    } else {
        '?'
    };
    let location = format!("{}{separator}{query}", metadata.authorization_endpoint);
    let mut response = Redirect::to(&location).into_response();
    let headers = response.headers_mut();
    if let Some(value) = pending_cookie(gw.config(), &cookie, PENDING_TTL_MS / 1000) {
        headers.append(header::SET_COOKIE, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `GET {prefix}/oidc/callback`: consume the pre-login row (once), exchange the
/// code, validate the ID token, map groups, mint a session, 302 to `next`.
pub async fn callback(
    State(gw): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> Response {
    let mut event = gw.audit_event("anonymous", AuditAction::OidcLogin, "failure");
    event.ip = Some(peer.ip().to_string());
    let outcome = finish_login(&gw, &headers, &query, &mut event).await;
    if let Err(failed) = &outcome {
        // The provider, once the pending login named it.
        let provider = event.target.as_deref().unwrap_or("unknown");
        // The database could not answer: nothing was refused.
        let undecided = matches!(failed, Callback::Failed(Failure { store: Some(_), .. }));
        let outcome = if undecided {
            crate::metrics::LoginOutcome::Error
        } else {
            crate::metrics::LoginOutcome::Failure
        };
        crate::metrics::login(provider, outcome);
    }
    let mut response = match outcome {
        Ok(response) => response,
        Err(Callback::Failed(failure)) => {
            event.reason = Some(failure.reason.clone());
            gw.audit(event).await;
            failure.into_response()
        }
        Err(Callback::Refused(reason)) => {
            event.reason = Some(reason);
            gw.audit(event).await;
            GatewayError::Forbidden.into_response_for(true)
        }
    };
    // The pending cookie is single use whatever happened.
    if let Some(value) = pending_cookie(gw.config(), "", 0) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

enum Callback {
    Failed(Failure),
    /// Authenticated, but not allowed in (no mapped group on a refusing provider).
    Refused(String),
}

impl<E: Into<Failure>> From<E> for Callback {
    fn from(e: E) -> Self {
        Callback::Failed(e.into())
    }
}

async fn finish_login(
    gw: &Gateway,
    headers: &HeaderMap,
    query: &CallbackQuery,
    event: &mut portcullis_store::AuditEvent,
) -> Result<Response, Callback> {
    let cookie = pending_value(gw.config(), headers)
        .ok_or_else(|| Failure::new("missing_pending_cookie"))?;
    let pending_id = gw
        .keyring()
        .current()
        .verify(cookie, PRE_LOGIN_PREFIX)
        .map_err(|e| {
            Failure::new(format!(
                "pending_cookie_{}",
                e.to_string().replace(' ', "_")
            ))
        })?
        .to_owned();
    let pending = gw
        .store()
        .consume_pending_login(&pending_id)
        .await?
        .ok_or_else(|| Failure::new("pending_row_missing_or_replayed"))?;
    event.target = Some(pending.provider_id.clone());
    if pending.expires_ms <= gw.now() {
        return Err(Failure::new("pending_row_expired").into());
    }
    let state = query.state.as_deref().unwrap_or_default();
    if !ct_eq(state.as_bytes(), pending.state.expose().as_bytes()) {
        return Err(Failure::new("state_mismatch").into());
    }
    if let Some(error) = &query.error {
        let code: String = error
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        return Err(Failure::new(format!("idp_error:{code}")).into());
    }
    let code = query
        .code
        .as_deref()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| Failure::new("missing_code"))?;
    let provider = gw
        .oidc()
        .provider(&pending.provider_id)
        .ok_or_else(|| Failure::new("unknown_provider"))?;
    let metadata = gw.oidc().metadata(&provider).await?;
    let tokens = exchange_code(gw, &provider, &metadata, code, &pending).await?;
    let id_token = tokens.id_token;
    let expect = Expectations {
        issuer: &provider.record.issuer,
        client_id: &provider.record.client_id,
        algorithms: &provider.algorithms,
        now_s: now_s(gw),
    };
    let mut claims = gw
        .oidc()
        .with_keys(&provider, &metadata, |keys| {
            rules::verify_id_token(
                &id_token,
                keys,
                &expect,
                pending.nonce.expose(),
                &provider.record.groups_claim,
            )
        })
        .await?;
    event.actor = claims.subject.clone();
    if let (Some(endpoint), Some(access_token)) =
        (&metadata.userinfo_endpoint, &tokens.access_token)
    {
        let response = gw
            .oidc()
            .http
            .get(endpoint)
            .bearer_auth(access_token.expose())
            .header(header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| Failure::new(format!("userinfo: {e}")))?;
        let userinfo: serde_json::Value = read_json(response, "userinfo endpoint").await?;
        rules::merge_userinfo(&mut claims, &userinfo, &provider.record.groups_claim)?;
    }

    let mut dropped_email = false;
    let mappings = gw.store().group_mappings().await?;
    let mut roles: Vec<String> = mappings
        .iter()
        .filter(|m| m.provider_id == provider.record.id && claims.groups.contains(&m.idp_group))
        .map(|m| m.role.clone())
        .collect();
    roles.sort();
    roles.dedup();
    if roles.is_empty() {
        if provider.record.refuse_unmapped {
            return Err(Callback::Refused("no_mapped_group".into()));
        }
        roles.push(portcullis_core::identity::ROLE_USER.into());
    }
    // An address the provider has not verified could be anyone's: it is not
    // forwarded unless the operator accepts unverified ones from this provider.
    let email = match &claims.email {
        Some(_) if !claims.email_verified && !provider.record.accept_unverified_email => {
            dropped_email = true;
            None
        }
        email => email.clone(),
    };
    // The forwarded user name: the provider's prefix and its user claim, so no
    // two providers (nor a provider and a basic user) name one user by accident.
    // An unverified address names no one: as the user name it could be anyone's.
    if provider.record.user_claim == "email"
        && !claims.email_verified
        && !provider.record.accept_unverified_email
    {
        return Err(Callback::Refused("email_unverified:user_claim".into()));
    }
    let Some(subject) = provider.record.user_name(&claims) else {
        return Err(Callback::Refused(format!(
            "missing_user_claim:{}",
            provider.record.user_claim
        )));
    };
    // `X-Forwarded-Preferred-Username` is the provider's `preferred_username`
    // (else the user claim's value), never the display name.
    let preferred = claims
        .strings
        .get("preferred_username")
        .or_else(|| claims.strings.get(&provider.record.user_claim))
        .cloned()
        .unwrap_or_else(|| claims.subject.clone());
    let identity = portcullis_core::identity::Identity {
        name: preferred,
        subject,
        email,
        provider: portcullis_core::identity::IdentityProvider::Oidc(provider.record.id.clone()),
        roles,
    };
    let device = crate::endpoints::device_of(headers, event.ip.clone());
    let signed_in = crate::endpoints::SignIn {
        identity,
        oidc_sid: claims.sid.clone(),
        oidc_sub: Some(claims.subject.clone()),
        device,
        assurance: claims.assurance.clone(),
        credential: None,
    };
    let (session, cookies) = crate::endpoints::establish_session(gw, signed_in)
        .await
        .map_err(|e| match e {
            GatewayError::Store(e) => Failure::from(e),
            other => Failure::new(other.to_string()),
        })?;
    if metadata.end_session_endpoint.is_some() {
        // Kept server-side only, sealed, for `id_token_hint` at RP-initiated logout.
        let sealed = gw
            .oidc()
            .seal_id_token(&session.id, &id_token, gw.entropy())
            .map_err(|e| Failure::new(format!("sealing the ID token: {e}")))?;
        gw.store()
            .set_session_id_token(&session.id, &sealed)
            .await?;
    }
    crate::metrics::login(&provider.record.id, crate::metrics::LoginOutcome::Success);
    event.outcome = "success".into();
    event.target = Some(session.id.clone());
    event.reason = Some(if dropped_email {
        format!(
            "provider:{}; email_unverified: the address was not forwarded",
            provider.record.id
        )
    } else {
        format!("provider:{}", provider.record.id)
    });
    gw.audit(event.clone()).await;
    // A step-up the provider could not satisfy: say so here rather than send the
    // browser back to a route that would send it to the provider again.
    let mut response = match unmet_at(gw, &pending.next, &session.assurance) {
        Some(missing) => {
            let mut refused = gw.audit_event(
                &session.identity.subject,
                AuditAction::OidcStepUp,
                "failure",
            );
            refused.target = Some(pending.next.clone());
            refused.reason = Some(missing);
            refused.ip = event.ip.clone();
            gw.audit(refused).await;
            GatewayError::Forbidden.into_response_for(true)
        }
        None => Redirect::to(&pending.next).into_response(),
    };
    let headers = response.headers_mut();
    for value in cookies {
        headers.append(header::SET_COOKIE, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// What the route rules still require of `assurance` at `next` (a same-origin
/// path), described for the audit log; `None` when it passes.
fn unmet_at(
    gw: &Gateway,
    next: &str,
    assurance: &portcullis_core::session::Assurance,
) -> Option<String> {
    let routes = &gw.config().routes;
    if routes.is_empty() {
        return None;
    }
    let path = next.split(['?', '#']).next().unwrap_or("/");
    let path = portcullis_core::routes::canonical_path(path).ok()?;
    let host = gw.config().public_url.authority.as_str().to_owned();
    let decision = routes.decide(&portcullis_core::routes::RouteRequest {
        host: Some(&host),
        method: "GET",
        method_overrides: &[],
        path: &path,
    });
    decision.unmet_assurance(assurance).map(|step| {
        format!(
            "provider gave acr {:?} amr {:?}; needed acr one of {:?}, amr {:?}",
            assurance.acr, assurance.amr, step.acr_values, step.amr
        )
    })
}

/// What the token endpoint returned that Portcullis uses (nothing is stored but
/// the ID token, for `id_token_hint`; refresh tokens are never kept).
struct Tokens {
    id_token: String,
    access_token: Option<SecretString>,
}

/// Exchanges the authorization code (with the PKCE verifier) for the ID token,
/// authenticating as the discovery document allows: `client_secret_basic`
/// preferred, else `client_secret_post`; public clients send only their id.
async fn exchange_code(
    gw: &Gateway,
    provider: &Provider,
    metadata: &Metadata,
    code: &str,
    pending: &PendingLogin,
) -> Result<Tokens, Failure> {
    let redirect = redirect_uri(gw);
    let mut form = vec![
        ("grant_type", "authorization_code".to_owned()),
        ("code", code.to_owned()),
        ("redirect_uri", redirect),
        ("code_verifier", pending.pkce_verifier.expose().to_owned()),
        ("client_id", provider.record.client_id.clone()),
    ];
    let methods = metadata
        .token_endpoint_auth_methods_supported
        .clone()
        .unwrap_or_else(|| vec!["client_secret_basic".into()]);
    let mut request = gw.oidc().http.post(&metadata.token_endpoint);
    if let Some(secret) = &provider.client_secret {
        if methods.iter().any(|m| m == "client_secret_basic") {
            // RFC 6749 2.3.1: both parts form-urlencoded before Basic encoding.
            let user = form_encode(&[("", provider.record.client_id.as_str())]);
            let pass = form_encode(&[("", secret.expose())]);
            let pair = format!(
                "{}:{}",
                user.trim_start_matches('='),
                pass.trim_start_matches('=')
            );
            let basic = base64::engine::general_purpose::STANDARD.encode(pair);
            request = request.header(header::AUTHORIZATION, format!("Basic {basic}"));
        } else if methods.iter().any(|m| m == "client_secret_post") {
            form.push(("client_secret", secret.expose().to_owned()));
        } else {
            return Err(Failure::new("no_supported_client_auth_method"));
        }
    }
    let response = request
        .header(header::ACCEPT, "application/json")
        .form(&form)
        .send()
        .await
        .map_err(|e| Failure::new(format!("token request: {e}")))?;
    #[derive(Deserialize)]
    struct TokenResponse {
        id_token: Option<String>,
        access_token: Option<String>,
    }
    let tokens: TokenResponse = read_json(response, "token endpoint").await?;
    Ok(Tokens {
        id_token: tokens.id_token.ok_or_else(|| Failure::new("no_id_token"))?,
        access_token: tokens.access_token.map(SecretString::new),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PublicUrl;

    fn config(public: &str) -> GatewayConfig {
        let mut config = GatewayConfig::for_tests();
        config.public_url = PublicUrl::parse(public).unwrap_or_else(|e| unreachable!("{e}"));
        config
    }

    #[test]
    fn the_pending_cookie_cannot_be_planted_over_https() {
        let https = config("https://dash.example.com");
        let set = pending_cookie(&https, "v1.pl-x", 600).unwrap_or_else(|| unreachable!());
        assert_eq!(
            set,
            "__Host-portcullis_oidc_pending=v1.pl-x; Path=/; Max-Age=600; SameSite=Lax; \
             HttpOnly; Secure"
        );
        let http = config("http://127.0.0.1:4180");
        let set = pending_cookie(&http, "v1.pl-x", 600).unwrap_or_else(|| unreachable!());
        assert_eq!(
            set,
            "portcullis_oidc_pending=v1.pl-x; Path=/.auth/oidc/; Max-Age=600; SameSite=Lax; HttpOnly"
        );

        // (public URL, Cookie header, the value the callback uses)
        let rows: &[(&GatewayConfig, &str, Option<&str>)] = &[
            (&https, "__Host-portcullis_oidc_pending=real", Some("real")),
            (&https, "portcullis_oidc_pending=planted", None),
            (
                &https,
                "portcullis_oidc_pending=planted; __Host-portcullis_oidc_pending=real",
                Some("real"),
            ),
            (&http, "portcullis_oidc_pending=real", Some("real")),
            (&http, "__Host-portcullis_oidc_pending=odd", None),
        ];
        for (config, cookie, expected) in rows {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::COOKIE,
                HeaderValue::from_str(cookie).unwrap_or_else(|e| unreachable!("{e}")),
            );
            assert_eq!(pending_value(config, &headers), *expected, "{cookie}");
        }
    }
}
