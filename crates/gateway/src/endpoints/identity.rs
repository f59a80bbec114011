//! Who the caller is: `GET {prefix}/me` (JSON) and `GET {prefix}/verify` (forward
//! auth: identity headers, or 401 naming the sign-in URL).

use std::time::{Duration, UNIX_EPOCH};

use axum::Json;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::cookies::Audience;
use crate::error::GatewayError;
use crate::pipeline::ClientAddr;
use crate::pipeline::authenticate::authenticate_endpoint;
use crate::pipeline::authorize::{UpstreamAccess, authorize_upstream, method_overrides, route};
use crate::state::Gateway;

use super::*;
use crate::identity::IdentityFields;

pub(super) fn identity_json(identity: &dyn IdentityFields) -> serde_json::Value {
    json!({
        "sub": identity.subject(),
        "name": identity.name(),
        "email": identity.email(),
        "provider": identity.provider_name(),
        "roles": identity.roles().collect::<Vec<_>>(),
    })
}

/// RFC 3339 time, or `None` for "never" (API tokens do not expire).
pub(crate) fn rfc3339(ms: i64) -> Option<String> {
    let time = UNIX_EPOCH.checked_add(Duration::from_millis(u64::try_from(ms).ok()?))?;
    (ms < i64::MAX).then(|| humantime::format_rfc3339_seconds(time).to_string())
}

pub async fn me(
    State(gw): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
) -> Response {
    match authenticate_endpoint(&gw, &headers, peer, Audience::Gateway).await {
        Ok(Some(auth)) => {
            let mut body = identity_json(auth.identity());
            body["session_id"] = json!(auth.session_id());
            body["expires_at"] = json!(rfc3339(auth.session.expires_ms()));
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

/// `?mode=redirect`: answer browsers with the sign-in redirect itself (Traefik
/// `forwardAuth`, Caddy `forward_auth` pass a non-2xx answer to the client).
#[derive(Debug, Default, serde::Deserialize)]
pub struct VerifyQuery {
    mode: Option<String>,
}

/// The header carrying the original request's `Cookie` without the gateway's
/// own cookies, for a proxy to forward instead of the original.
pub const AUTH_COOKIE_HEADER: &str = "x-auth-cookie";

/// The header carrying the original request's `Authorization` unless it holds one
/// of the gateway's bearers (empty then), for a proxy to forward instead of the
/// original: the application keeps its own credentials and never sees ours.
pub const AUTH_AUTHORIZATION_HEADER: &str = "x-auth-authorization";

/// The request a forward-auth call is about. Its method, host and address are
/// read from `X-Forwarded-Method`, `X-Forwarded-Host` and `X-Forwarded-Uri` /
/// `X-Original-URI` only when a trusted proxy sent them; the address is also used,
/// from anyone, as the (validated) way back after signing in.
struct Original {
    method: Method,
    host: Option<String>,
    /// Path and query, as the client asked.
    target: String,
    /// A trusted proxy named the address (a relayed call without one is refused:
    /// deciding on a guess could pass what the rules refuse).
    named: bool,
}

impl Original {
    fn of(peer: ClientAddr, headers: &HeaderMap) -> Self {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let named = header("x-forwarded-uri").or_else(|| header("x-original-uri"));
        let target = named.unwrap_or("/").to_owned();
        if !peer.relayed() {
            return Self {
                method: Method::GET,
                host: header("host").map(str::to_owned),
                target,
                named: false,
            };
        }
        Self {
            method: header("x-forwarded-method")
                .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
                .unwrap_or(Method::GET),
            host: header("x-forwarded-host")
                .or_else(|| header("host"))
                .map(str::to_owned),
            target,
            named: named.is_some(),
        }
    }
}

/// Forward auth for nginx `auth_request`, Traefik `forwardAuth` and Caddy
/// `forward_auth`: the original request passes the route rules and the
/// authenticate phase, and is answered with 200 and every identity header
/// (empty when unknown, so no client-supplied copy survives), or 401 naming the
/// sign-in URL in `X-Auth-Login-Url` (`?mode=redirect`: a 302 there for
/// browsers), or 403.
pub async fn verify(
    State(gw): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<ClientAddr>,
    Query(query): Query<VerifyQuery>,
    headers: HeaderMap,
) -> Response {
    let original = Original::of(peer, &headers);
    let redirect = query.mode.as_deref() == Some("redirect");
    let html = wants_html(&original.method, &headers);
    // Inside a client's scope a browser is sent to the access-required page,
    // not to the sign-in form (nginx's recipe redirects to this header's value).
    let login = if crate::endpoints::in_client_scope(&gw, &original.target) {
        format!(
            "{}{}/access-required",
            gw.config().public_url.origin(),
            gw.config().auth_prefix
        )
    } else {
        format!(
            "{}{}",
            gw.config().public_url.origin(),
            login_url(&gw, &original.target)
        )
    };
    // A refusal: 401 names the sign-in page (a step-up's own, through the
    // provider) in `X-Auth-Login-Url`, or in redirect mode sends a browser there.
    let refuse = |error: GatewayError| -> Response {
        let login_url = match &error {
            GatewayError::StepUp { login_url, .. } => {
                format!("{}{login_url}", gw.config().public_url.origin())
            }
            _ => login.clone(),
        };
        let unauthorized = error.status() == StatusCode::UNAUTHORIZED;
        let mut response = if redirect
            && html
            && matches!(error, GatewayError::Unauthenticated)
            && crate::endpoints::in_client_scope(&gw, &original.target)
        {
            // Inside a client's scope: ask for a new link, not the sign-in form.
            GatewayError::AccessRequired.into_response_for(true)
        } else if redirect && html && unauthorized {
            GatewayError::unauthenticated(true, &login_url)
        } else {
            error.into_response_for(redirect && html)
        };
        if unauthorized && let Ok(value) = HeaderValue::from_str(&login_url) {
            response.headers_mut().insert("x-auth-login-url", value);
        }
        response
    };
    // Route rules need the original address, which only a trusted proxy can give.
    if !gw.config().routes.is_empty() && !peer.relayed() {
        tracing::warn!(
            peer = %peer.ip(),
            "forward auth refused: route rules are configured but the caller is not in \
             --trusted-proxies, so its X-Forwarded-Uri cannot be believed"
        );
        return refuse(GatewayError::Forbidden);
    }
    if peer.relayed() {
        if !original.named {
            return refuse(GatewayError::BadRequest(
                "X-Forwarded-Uri or X-Original-URI is missing",
            ));
        }
        if !original
            .host
            .as_deref()
            .is_some_and(|h| crate::host::host_allowed(gw.config(), h))
        {
            crate::host::log_refusal("host", original.host.as_deref().unwrap_or(""));
            return refuse(GatewayError::HostNotAllowed);
        }
    }
    let (path, query_part) = original
        .target
        .split_once('?')
        .map_or((original.target.as_str(), None), |(p, q)| (p, Some(q)));
    let Some(path) = crate::proxy::upstream_path(&gw, path) else {
        return refuse(GatewayError::BadRequest("original request path"));
    };
    // The proxy passes the client's headers along: the same method overrides and
    // WebSocket handshake the proxy path reads.
    let overrides = method_overrides(&headers, query_part);
    let overrides: Vec<&str> = overrides.iter().map(AsRef::as_ref).collect();
    let access = UpstreamAccess {
        method: &original.method,
        host: original.host.as_deref(),
        path: &path,
        query: query_part,
        method_overrides: &overrides,
        origin: headers.get(header::ORIGIN).map(HeaderValue::as_bytes),
        upgrade: headers.contains_key(header::SEC_WEBSOCKET_KEY),
    };
    let decision = route(&gw, &access);
    let auth = if decision.is_anonymous() {
        None
    } else {
        match authenticate_endpoint(&gw, &headers, peer, Audience::Upstream).await {
            Ok(Some(auth)) => {
                // A client's scope is decided on the original path, which only a
                // trusted proxy can name.
                if auth.session.scope().is_some() && !peer.relayed() {
                    tracing::warn!(
                        peer = %peer.ip(),
                        "forward auth refused a client session: the caller is not in \
                         --trusted-proxies, so the path it names cannot be believed"
                    );
                    return refuse(GatewayError::Forbidden);
                }
                if let Err(e) = authorize_upstream(&gw, &auth, &access, &decision) {
                    return refuse(e);
                }
                Some(auth)
            }
            Ok(None) => return refuse(GatewayError::Unauthenticated),
            Err(e) => return refuse(e),
        }
    };
    let mut response = StatusCode::OK.into_response();
    let out = response.headers_mut();
    crate::upstream::rewrite::set_forward_auth_headers(
        out,
        auth.as_ref().map(|a| a.identity() as &dyn IdentityFields),
    );
    let cookie: Vec<&str> = crate::cookies::foreign_pairs(
        headers
            .get_all(header::COOKIE)
            .iter()
            .map(HeaderValue::as_bytes),
    )
    .collect();
    if let Ok(value) = HeaderValue::from_str(&cookie.join("; ")) {
        // Also as `Cookie`, for proxies that copy response headers by their name
        // only (Traefik's authResponseHeaders).
        out.insert(header::COOKIE, value.clone());
        out.insert(AUTH_COOKIE_HEADER, value);
    }
    // The application's own `Authorization` (the first that is not one of the
    // gateway's bearers), also as `Authorization` for proxies that copy by name
    // (Traefik removes the original when the answer has none).
    let authorization = headers.get_all(header::AUTHORIZATION).iter().find(|v| {
        v.to_str()
            .is_ok_and(|v| crate::carrier::bearer_value(v).is_none())
    });
    match authorization {
        Some(value) => {
            out.insert(header::AUTHORIZATION, value.clone());
            out.insert(AUTH_AUTHORIZATION_HEADER, value.clone());
        }
        None => {
            out.insert(AUTH_AUTHORIZATION_HEADER, HeaderValue::from_static(""));
        }
    }
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
