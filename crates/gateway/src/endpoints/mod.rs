//! The gateway's own endpoints under the auth prefix, one module per concern:
//! `signin` (the sign-in page and form, sign-out, minting a session), `identity`
//! (`/me` and forward auth), `websocket` (tickets and capabilities), `health`.
//! Shared here: how an unauthenticated request is answered.

use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use portcullis_core::redirect::safe_next;

use crate::error::GatewayError;
use crate::state::Gateway;

mod health;
pub(crate) mod identity;
mod magic;
pub mod openid;
mod signin;
mod websocket;

pub use health::{healthz, readyz};
pub use identity::{me, verify};
pub use magic::{confirm_link, loggable_path, magic_link};
pub(crate) use signin::{
    SignIn, client_session_of, device_of, end_replaced_client_session, establish_client_session,
    establish_session,
};
pub use signin::{login_page, login_submit, logout, logout_page};
pub use websocket::{capabilities, ws_ticket};

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

/// What an unauthenticated request gets: browsers are sent to sign in (or, inside
/// a client's scope, told to ask for a new link), everything else gets 401 JSON.
pub fn unauthenticated(
    gw: &Gateway,
    method: &Method,
    headers: &HeaderMap,
    path_and_query: &str,
) -> Response {
    let browser = wants_html(method, headers);
    if browser && in_client_scope(gw, path_and_query) {
        return GatewayError::AccessRequired.into_response_for(true);
    }
    GatewayError::unauthenticated(browser, &login_url(gw, path_and_query))
}

/// Whether a request target lies inside an active client's scope.
pub fn in_client_scope(gw: &Gateway, path_and_query: &str) -> bool {
    let path = path_and_query.split(['?', '#']).next().unwrap_or("");
    portcullis_core::routes::canonical_path(path).is_ok_and(|path| gw.clients().covers(&path))
}

/// `GET {prefix}/access-required`: the page a browser without a session is sent
/// to inside a client's scope (forward auth's `X-Auth-Login-Url` there).
pub async fn access_required(method: Method, headers: HeaderMap) -> Response {
    GatewayError::AccessRequired.into_response_for(wants_html(&method, &headers))
}

pub async fn not_found() -> Response {
    GatewayError::NotFound.into_response()
}

/// A gateway path asked with a method it does not take: a page for browsers.
pub async fn method_not_allowed(method: Method, headers: HeaderMap) -> Response {
    GatewayError::MethodNotAllowed.into_response_for(wants_html(&method, &headers))
}
