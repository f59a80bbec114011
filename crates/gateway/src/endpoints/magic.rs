//! `GET {prefix}/magic/{secret}`: signing a client in by link (SPEC 7). The link's
//! secret is checked against stored hashes only; the answer is a 303 to the
//! client's pages, so the secret leaves the address bar and history at once, with
//! `Referrer-Policy: no-referrer` (the next page cannot leak it) and `no-store`.
//! Every refusal looks the same (the reason is audited), and attempts are
//! throttled per address like sign-ins.

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_core::audit::AuditAction;
use portcullis_core::redirect::safe_next;
use portcullis_store::TokenRef;
use serde::Deserialize;

use crate::cookies::SESSION_COOKIE;
use crate::error::GatewayError;
use crate::pipeline::ClientAddr;
use crate::pipeline::authenticate::cookie_value;
use crate::state::Gateway;

use super::{device_of, establish_client_session};

#[derive(Debug, Deserialize)]
pub struct MagicQuery {
    next: Option<String>,
}

/// `GET {prefix}/magic/{secret}`. A browser already signed in as a person is
/// asked first (a link from someone else must not silently make it act as their
/// client: login CSRF); the answer is a same-origin `POST` to the same address.
pub async fn magic_link(
    State(gw): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<ClientAddr>,
    Path(secret): Path<String>,
    Query(query): Query<MagicQuery>,
    headers: HeaderMap,
) -> Response {
    let person = match cookie_value(&gw, &headers, SESSION_COOKIE) {
        Some(value) => crate::pipeline::authenticate::authenticate_session_cookie(&gw, value)
            .await
            .ok()
            .and_then(Result::ok),
        None => None,
    };
    if let Some(person) = person {
        let page = crate::pages::confirm_link_page(crate::identity::IdentityFields::name(&*person));
        let mut response = page.into_response();
        crate::pages::protect(response.headers_mut());
        return no_store(response);
    }
    follow_link(&gw, peer, &secret, query.next.as_deref(), &headers).await
}

/// `POST {prefix}/magic/{secret}`: the confirmation of a signed-in browser, from
/// the gateway's own page (its origin is checked like a sign-in form's).
pub async fn confirm_link(
    State(gw): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<ClientAddr>,
    Path(secret): Path<String>,
    Query(query): Query<MagicQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(error) = super::signin::check_origin(&gw, &headers) {
        return no_store(error.into_response_for(true));
    }
    follow_link(&gw, peer, &secret, query.next.as_deref(), &headers).await
}

async fn follow_link(
    gw: &Gateway,
    peer: ClientAddr,
    secret: &str,
    next: Option<&str>,
    headers: &HeaderMap,
) -> Response {
    let result = sign_in(gw, peer, secret, next, headers).await;
    crate::metrics::login(
        portcullis_core::identity::IdentityProvider::Magic.as_str(),
        crate::metrics::LoginOutcome::of(result.as_ref().err()),
    );
    let response = match result {
        Ok(response) => response,
        Err(error) => error.into_response_for(super::wants_html(&axum::http::Method::GET, headers)),
    };
    no_store(response)
}

/// Neither cached nor leaking its address (which holds the secret) as `Referer`.
fn no_store(mut response: Response) -> Response {
    let out = response.headers_mut();
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    out.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

async fn sign_in(
    gw: &Gateway,
    peer: ClientAddr,
    secret: &str,
    next: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, GatewayError> {
    // Never the secret, not even a part of it: the token id once known.
    let mut event = gw.audit_event("anonymous", AuditAction::MagicLink, "failure");
    event.ip = Some(peer.ip().to_string());
    if let Err(throttled) = gw.throttle().check_address(peer.ip()) {
        event.reason = Some("throttled".into());
        gw.audit_throttled(event).await;
        return Err(throttled);
    }
    let Some(hash) = portcullis_core::client::hash_presented(secret) else {
        event.reason = Some("malformed".into());
        gw.audit(event).await;
        return Err(GatewayError::LinkRefused);
    };
    let device = device_of(headers, Some(peer.ip().to_string()));
    // A browser that also holds a session (an operator) keeps its CSRF token.
    let with_csrf = cookie_value(gw, headers, SESSION_COOKIE).is_none();
    let replaced = super::client_session_of(gw, headers).await;
    let (session, set_cookies) =
        match establish_client_session(gw, TokenRef::Hash(&hash), device, with_csrf).await? {
            Ok(signed_in) => signed_in,
            Err(refusal) => {
                event.reason = Some(refusal.reason().into());
                gw.audit(event).await;
                return Err(GatewayError::LinkRefused);
            }
        };
    super::end_replaced_client_session(gw, replaced, &session.id).await;
    if !gw.identity_exists(
        session.identity.provider.as_str(),
        &session.identity.subject,
    ) {
        // Its slug names a basic user: it would reach the upstream as them.
        if let Err(error) = gw.revoke_session(&session.id, "gateway").await {
            tracing::error!(%error, "could not end a link's session that named a basic user");
        }
        event.reason = Some("slug_names_a_basic_user".into());
        gw.audit(event).await;
        return Err(GatewayError::LinkRefused);
    }
    event.outcome = "success".into();
    event.actor = session.identity.subject.clone();
    event.target = session.access_token_id.clone();
    event.reason = Some(format!("session {}", session.id));
    gw.audit(event).await;
    let scope = session.scope.as_ref();
    let location = next
        .and_then(safe_next)
        .filter(|next| scope.is_some_and(|scope| scope.contains_raw(next)))
        .or_else(|| scope.map(portcullis_core::client::Scope::home))
        .unwrap_or("/");
    let mut response = StatusCode::SEE_OTHER.into_response();
    let out = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(location) {
        out.insert(header::LOCATION, location);
    }
    for value in set_cookies {
        out.append(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// An access-log path with a link's secret replaced, so no log line holds one:
/// whatever follows `magic/` in any path (`//.auth/magic/…` and other spellings
/// that never reach this endpoint hold the secret all the same).
pub fn loggable_path(path: &str) -> std::borrow::Cow<'_, str> {
    let lower = path.to_ascii_lowercase();
    match lower.find("magic/").or_else(|| lower.find("magic%2f")) {
        Some(at) => std::borrow::Cow::Owned(format!("{}magic/[redacted]", &path[..at])),
        None => std::borrow::Cow::Borrowed(path),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn no_spelling_of_a_link_reaches_the_access_log() {
        let secret = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_AbCdE";
        for path in [
            format!("/.auth/magic/{secret}"),
            format!("//.auth/magic/{secret}"),
            format!("/.auth/./magic/{secret}"),
            format!("/.auth/MAGIC/{secret}"),
            format!("/.auth/magic%2F{secret}"),
        ] {
            let logged = super::loggable_path(&path);
            assert!(!logged.contains(&secret[..8]), "{path} -> {logged}");
        }
        assert_eq!(super::loggable_path("/portal/x"), "/portal/x");
    }
}
