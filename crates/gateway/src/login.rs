//! The gateway's own endpoints under the auth prefix: sign-in, sign-out, identity,
//! forward auth, health.

use std::net::SocketAddr;
use std::time::{Duration, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use portcullis_core::identity::Identity;
use portcullis_core::redirect::safe_next;
use portcullis_core::secret::SecretString;
use portcullis_core::session::new_session;
use serde::Deserialize;
use serde_json::json;

use crate::cookies::{self, CSRF_COOKIE, SESSION_COOKIE};
use crate::error::GatewayError;
use crate::pages;
use crate::pipeline::authenticate::authenticate_endpoint;
use crate::pipeline::authorize::{EndpointAccess, authorize_endpoint};
use crate::pipeline::carrier::{self, Carrier};
use crate::state::Gateway;

/// Longest username or password considered; longer input is refused before any
/// hashing so argon2 never sees megabytes.
const MAX_USERNAME: usize = 256;
const MAX_PASSWORD: usize = 1024;

/// Whether the client is a browser navigation that should get HTML and redirects.
pub fn wants_html(method: &Method, headers: &HeaderMap) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/html"))
}

fn wants_json_response(headers: &HeaderMap) -> bool {
    let is = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .is_some_and(|v| v.contains("application/json"))
    };
    is(header::CONTENT_TYPE) || is(header::ACCEPT)
}

/// `{prefix}/login?next=…` for a path the user was trying to reach.
pub fn login_url(gw: &Gateway, next: &str) -> String {
    let next = safe_next(next).unwrap_or("/");
    format!(
        "{}/login?next={}",
        gw.config().auth_prefix,
        utf8_percent_encode(next, NON_ALPHANUMERIC)
    )
}

/// What an unauthenticated request gets: browsers are sent to sign in, everything
/// else gets 401 JSON.
pub fn unauthenticated(
    gw: &Gateway,
    method: &Method,
    headers: &HeaderMap,
    path_and_query: &str,
) -> Response {
    if wants_html(method, headers) {
        let mut response = Redirect::to(&login_url(gw, path_and_query)).into_response();
        *response.status_mut() = StatusCode::FOUND;
        response
    } else {
        GatewayError::Unauthenticated.into_response()
    }
}

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

pub async fn login_page(State(gw): State<Gateway>, Query(q): Query<NextQuery>) -> Response {
    let next = q.next.as_deref().and_then(safe_next).unwrap_or("/");
    render_login(&gw, next, None, StatusCode::OK)
}

fn render_login(gw: &Gateway, next: &str, error: Option<&str>, status: StatusCode) -> Response {
    let prefix = &gw.config().auth_prefix;
    let action = format!("{prefix}/login");
    let buttons: Vec<(String, String)> =
        gw.0.oidc
            .buttons()
            .into_iter()
            .map(|(id, name)| {
                let href = format!(
                    "{prefix}/oidc/login?provider={}&next={}",
                    utf8_percent_encode(&id, NON_ALPHANUMERIC),
                    utf8_percent_encode(next, NON_ALPHANUMERIC)
                );
                (href, name)
            })
            .collect();
    let page = pages::login_page(
        &action,
        next,
        error,
        !gw.config().basic_users.is_empty(),
        &buttons,
    );
    let mut response = (status, page).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[derive(Deserialize)]
struct LoginInput {
    username: String,
    password: String,
    #[serde(default)]
    next: Option<String>,
}

/// Refuses a cross-site login POST. Browsers always send `Origin` on POST; a
/// request with neither `Origin` nor `Referer` comes from a non-browser client,
/// which cannot be the victim of login CSRF, and is allowed.
fn check_origin(gw: &Gateway, headers: &HeaderMap) -> Result<(), GatewayError> {
    let origin = gw.config().public_url.origin();
    if let Some(value) = headers.get(header::ORIGIN) {
        return if value.as_bytes() == origin.as_bytes() {
            Ok(())
        } else {
            Err(GatewayError::OriginNotAllowed)
        };
    }
    if let Some(referer) = headers.get(header::REFERER) {
        let referer = referer
            .to_str()
            .map_err(|_| GatewayError::OriginNotAllowed)?;
        let same = referer == origin
            || referer
                .strip_prefix(origin.as_str())
                .is_some_and(|rest| rest.starts_with('/'));
        return if same {
            Ok(())
        } else {
            Err(GatewayError::OriginNotAllowed)
        };
    }
    Ok(())
}

fn parse_login(headers: &HeaderMap, body: &Bytes) -> Result<(LoginInput, bool), GatewayError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type.starts_with("application/json") {
        serde_json::from_slice(body)
            .map(|input| (input, true))
            .map_err(|_| GatewayError::BadRequest("expected JSON {\"username\", \"password\"}"))
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        serde_urlencoded::from_bytes(body)
            .map(|input| (input, false))
            .map_err(|_| GatewayError::BadRequest("expected form fields username and password"))
    } else {
        Err(GatewayError::BadRequest(
            "Content-Type must be application/x-www-form-urlencoded or application/json",
        ))
    }
}

pub async fn login_submit(
    State(gw): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let html_flow = !wants_json_response(&headers);
    match login(&gw, peer, &headers, &body).await {
        Ok(response) => response,
        Err((error, next))
            if html_flow
                && matches!(
                    error,
                    GatewayError::InvalidCredentials | GatewayError::Throttled { .. }
                ) =>
        {
            let mut response =
                render_login(&gw, &next, Some(&error.public_message()), error.status());
            if let GatewayError::Throttled { retry_after_secs } = error {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            response
        }
        Err((error, _)) => error.into_response(),
    }
}

async fn login(
    gw: &Gateway,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, (GatewayError, String)> {
    let fail = |e| (e, "/".to_owned());
    check_origin(gw, headers).map_err(fail)?;
    let (input, json_body) = parse_login(headers, body).map_err(fail)?;
    let next = input
        .next
        .as_deref()
        .and_then(safe_next)
        .unwrap_or("/")
        .to_owned();
    let fail = |e| (e, next.clone());
    let username = input.username.trim().to_owned();
    let password = SecretString::new(input.password);
    if username.is_empty()
        || username.len() > MAX_USERNAME
        || password.expose().len() > MAX_PASSWORD
    {
        return Err(fail(GatewayError::InvalidCredentials));
    }
    let inner = &gw.0;
    // The actor is unproven until the password verifies; the typed name is the target.
    let mut event = gw.audit_event("anonymous", "auth.login", "failure");
    event.ip = Some(peer.ip().to_string());
    event.target = Some(username.clone());

    if let Err(throttled) = inner.throttle.check(peer.ip(), &username) {
        event.reason = Some("throttled".into());
        gw.audit(event).await;
        return Err(fail(throttled));
    }

    // Unknown users are verified against a dummy hash: same work, same answer.
    let stored = inner.config.basic_users.hash_of(&username);
    let hash = stored.unwrap_or(&inner.dummy_hash).to_owned();
    let matched = inner.passwords.verify(hash, password).await.map_err(fail)?;
    if stored.is_none() || !matched {
        event.reason = Some(
            if stored.is_none() {
                "unknown_user"
            } else {
                "bad_password"
            }
            .into(),
        );
        gw.audit(event).await;
        return Err(fail(GatewayError::InvalidCredentials));
    }

    let identity = inner.config.basic_users.identity(&username);
    let (session, cookies) = establish_session(gw, identity, None).await.map_err(fail)?;
    event.outcome = "success".into();
    event.actor = username.clone();
    event.target = Some(session.id.clone());
    gw.audit(event).await;

    let mut response = if json_body {
        let csrf = inner.csrf.token(&session.id);
        Json(json!({ "user": identity_json(&session.identity), "csrf_token": csrf }))
            .into_response()
    } else {
        Redirect::to(&next).into_response()
    };
    let headers = response.headers_mut();
    for value in cookies {
        headers.append(header::SET_COOKIE, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Mints a session for `identity`, commits it (a crash after this loses nothing),
/// caches it, and returns it with its `Set-Cookie` values (session and CSRF).
/// Shared by every way of signing in.
pub(crate) async fn establish_session(
    gw: &Gateway,
    identity: Identity,
    oidc_sid: Option<String>,
) -> Result<(portcullis_core::session::Session, Vec<HeaderValue>), GatewayError> {
    let inner = &gw.0;
    let mut session = new_session(
        identity,
        inner.config.session,
        inner.clock.now_ms(),
        inner.entropy.as_ref(),
    )
    .map_err(|e| GatewayError::Internal(e.to_string()))?;
    session.oidc_sid = oidc_sid;
    inner.store.insert_session(&session).await?;
    inner.sessions.insert_new(session.clone());
    let cookie = inner
        .keyring
        .current()
        .sign(&session.id)
        .map_err(|e| GatewayError::Internal(e.to_string()))?;
    let max_age = (session.expires_ms - session.created_ms) / 1000;
    let csrf = inner.csrf.token(&session.id);
    let cookies = [
        cookies::set(&inner.config, SESSION_COOKIE, &cookie, max_age, true),
        cookies::set(&inner.config, CSRF_COOKIE, &csrf, max_age, false),
    ]
    .iter()
    .filter_map(|v| HeaderValue::from_str(v).ok())
    .collect();
    Ok((session, cookies))
}

fn identity_json(identity: &Identity) -> serde_json::Value {
    json!({
        "sub": identity.subject,
        "name": identity.name,
        "email": identity.email,
        "provider": identity.provider,
        "roles": identity.roles,
    })
}

/// RFC 3339 time, or `None` for "never" (API tokens do not expire).
fn rfc3339(ms: i64) -> Option<String> {
    let time = UNIX_EPOCH.checked_add(Duration::from_millis(u64::try_from(ms).ok()?))?;
    (ms < i64::MAX).then(|| humantime::format_rfc3339_seconds(time).to_string())
}

pub async fn logout(
    State(gw): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json_flow = wants_json_response(&headers);
    let auth = match authenticate_endpoint(&gw, &headers, peer).await {
        Ok(auth) => auth,
        Err(e) => return e.into_response(),
    };
    // Only a cookie session is ended here; API tokens are revoked by id.
    let mut end_session_url = None;
    if let Some(auth) = auth.as_ref().filter(|a| a.carrier == Carrier::Cookie) {
        let access = EndpointAccess {
            headers: &headers,
            body: &body,
            mutating: true,
            permission: None,
            mints_ticket: false,
            peer,
        };
        if let Err(e) = authorize_endpoint(&gw, auth, &access).await {
            return e.into_response();
        }
        let inner = &gw.0;
        let id = auth.session_id().to_owned();
        let subject = auth.identity().subject.clone();
        match inner
            .store
            .revoke_session(&id, &subject, inner.clock.now_ms())
            .await
        {
            Ok(_) => {}
            Err(e) => return GatewayError::from(e).into_response(),
        }
        inner.sessions.invalidate(&id);
        inner
            .bus
            .publish_local(portcullis_store::BusEvent::Revoked(id.clone()));
        let mut event = gw.audit_event(&subject, "auth.logout", "success");
        event.target = Some(id);
        event.ip = Some(peer.ip().to_string());
        gw.audit(event).await;
        // Signed in through a provider that can end its own session: offer that too.
        end_session_url = crate::oidc::end_session_url(&gw, auth).await;
    }
    let mut response = match (json_flow, end_session_url) {
        (true, None) => StatusCode::NO_CONTENT.into_response(),
        (true, Some(url)) => Json(json!({ "end_session_url": url })).into_response(),
        (false, Some(url)) => Redirect::to(&url).into_response(),
        (false, None) => {
            Redirect::to(&format!("{}/login", gw.config().auth_prefix)).into_response()
        }
    };
    for name in [SESSION_COOKIE, CSRF_COOKIE] {
        if let Ok(value) = HeaderValue::from_str(&cookies::clear(gw.config(), name)) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

pub async fn me(
    State(gw): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    match authenticate_endpoint(&gw, &headers, peer).await {
        Ok(Some(auth)) => {
            let mut body = identity_json(auth.identity());
            body["session_id"] = json!(auth.session_id());
            body["expires_at"] = json!(rfc3339(auth.session.session.expires_ms));
            let mut response = Json(body).into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Ok(None) => GatewayError::Unauthenticated.into_response(),
        Err(e) => e.into_response(),
    }
}

/// Forward auth for nginx `auth_request`, Traefik `forwardAuth`, Caddy
/// `forward_auth`: 200 with identity headers, or 401 naming the login URL.
pub async fn verify(
    State(gw): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    match authenticate_endpoint(&gw, &headers, peer).await {
        Ok(Some(auth)) => {
            let mut response = StatusCode::OK.into_response();
            crate::upstream::rewrite::set_identity_headers(response.headers_mut(), auth.identity());
            response
        }
        Ok(None) => {
            let original = ["x-original-uri", "x-forwarded-uri"]
                .iter()
                .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
                .unwrap_or("/");
            let url = format!(
                "{}{}",
                gw.config().public_url.origin(),
                login_url(&gw, original)
            );
            let mut response = GatewayError::Unauthenticated.into_response();
            if let Ok(value) = HeaderValue::from_str(&url) {
                response.headers_mut().insert("x-auth-login-url", value);
            }
            response
        }
        Err(e) => e.into_response(),
    }
}

/// `POST {prefix}/ws-ticket`: a single-use ticket for one WebSocket upgrade, for
/// the calling session (cookie plus `X-CSRF-Token`).
pub async fn ws_ticket(
    State(gw): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let auth = match authenticate_endpoint(&gw, &headers, peer).await {
        Ok(Some(auth)) => auth,
        Ok(None) => return GatewayError::Unauthenticated.into_response(),
        Err(e) => return e.into_response(),
    };
    let access = EndpointAccess {
        headers: &headers,
        body: &body,
        mutating: true,
        permission: None,
        mints_ticket: true,
        peer,
    };
    if let Err(e) = authorize_endpoint(&gw, &auth, &access).await {
        return e.into_response();
    }
    let inner = &gw.0;
    let ticket = match portcullis_core::ticket::mint(inner.entropy.as_ref()) {
        Ok(ticket) => ticket,
        Err(e) => return GatewayError::Entropy(e).into_response(),
    };
    let now = inner.clock.now_ms();
    let ttl = inner.config.ws_ticket_ttl_ms;
    if let Err(e) = inner
        .store
        .insert_ticket(&ticket.hash, auth.session_id(), now, now + ttl)
        .await
    {
        return GatewayError::from(e).into_response();
    }
    let mut response = Json(json!({
        "ticket": ticket.secret.expose(),
        "expires_in": ttl / 1000,
    }))
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET {prefix}/capabilities`: which WebSocket credentials this gateway accepts,
/// so clients need no trial and error. Unauthenticated; reveals no secret.
pub async fn capabilities(State(gw): State<Gateway>) -> Response {
    let config = gw.config();
    let schemes: Vec<&str> = carrier::carriers(config, true)
        .map(Carrier::scheme)
        .collect();
    Json(json!({
        "websocket": {
            "schemes": schemes,
            "ticket_endpoint": format!("{}/ws-ticket", config.auth_prefix),
            "ticket_ttl_seconds": config.ws_ticket_ttl_ms / 1000,
            "subprotocol": portcullis_core::subprotocol::JEP121_MARKER,
            "cookie_origin": config.public_url.origin(),
            "reject": match config.ws_reject {
                crate::config::WsReject::Status => "status",
                crate::config::WsReject::Close => "close",
            },
            "close_codes": {"session_ended": crate::error::CLOSE_SESSION_ENDED, "rejected": crate::error::CLOSE_REJECTED},
        }
    }))
    .into_response()
}

pub async fn healthz() -> Response {
    (StatusCode::OK, Json(json!({"status": "ok"}))).into_response()
}

pub async fn readyz(State(gw): State<Gateway>) -> Response {
    match gw.store().ping().await {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready"}))).into_response(),
        Err(e) => GatewayError::from(e).into_response(),
    }
}

pub async fn not_found() -> Response {
    GatewayError::NotFound.into_response()
}
