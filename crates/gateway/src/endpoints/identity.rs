//! Who the caller is: `GET {prefix}/me` (JSON) and `GET {prefix}/verify` (forward
//! auth: identity headers, or 401 naming the sign-in URL).

use std::time::{Duration, UNIX_EPOCH};

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::GatewayError;
use crate::pipeline::ClientAddr;
use crate::pipeline::authenticate::authenticate_endpoint;
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
    match authenticate_endpoint(&gw, &headers, peer).await {
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

/// Forward auth for nginx `auth_request`, Traefik `forwardAuth`, Caddy
/// `forward_auth`: 200 with identity headers, or 401 naming the login URL.
pub async fn verify(
    State(gw): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<ClientAddr>,
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
