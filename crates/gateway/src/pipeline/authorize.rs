//! The authorize phase: what an authenticated request may do. Every rule that
//! depends on who asks and how they proved it lives here, decided on the
//! [`Authenticated`] principal and its [`Carrier`]:
//!
//! - a cookie-authenticated WebSocket upgrade must come from the public origin
//!   (cross-site WebSocket hijacking);
//! - a cookie-authenticated mutation of a gateway endpoint must echo the CSRF token;
//! - the internal credential mints no WebSocket ticket (a ticket would carry it off
//!   loopback, where it is not accepted);
//! - an admin API route requires its permission (refusals are audited).
//!
//! Route rules and a client's path scope plug into [`authorize_upstream`], which
//! already receives the method and path the upstream will see.

use std::net::SocketAddr;

use http::{HeaderMap, Method};
use portcullis_core::identity::{Permission, PrincipalKind};
use serde::Deserialize;

use super::authenticate::Authenticated;
use crate::carrier::Carrier;
use crate::error::GatewayError;
use crate::identity::IdentityFields;
use crate::state::Gateway;

/// A request for the upstream, as the upstream will see it. Its method and path
/// are what route rules and client path scopes will decide on.
#[derive(Debug)]
#[allow(dead_code, reason = "method and path are the seam of route rules")]
pub struct UpstreamAccess<'a> {
    pub method: &'a Method,
    /// The path as the upstream receives it (without the query).
    pub path: &'a str,
    /// The `Origin` header, if any.
    pub origin: Option<&'a [u8]>,
    pub upgrade: bool,
}

/// Decides whether `auth` may reach the upstream with this request.
pub fn authorize_upstream(
    gw: &Gateway,
    auth: &Authenticated,
    access: &UpstreamAccess<'_>,
) -> Result<(), GatewayError> {
    // Tickets (minted by a CSRF-checked POST) and bearer tokens are never sent by
    // a browser on its own; a cookie rides along with any cross-site request, so
    // only cookie upgrades must come from the public origin.
    if access.upgrade && auth.carrier.is_ambient() && !origin_allowed(gw, access.origin) {
        return Err(GatewayError::OriginNotAllowed);
    }
    // Route rules and client path scopes are decided here, on `access.method` and
    // `access.path`, for plain requests and upgrades alike.
    Ok(())
}

/// Cookies are a browser credential, and browsers always send `Origin` on a
/// WebSocket handshake, so a cookie-authenticated upgrade must carry the public
/// origin. A missing `Origin` is refused too: a non-browser client should present a
/// bearer credential, and refusing closes the cross-site hijacking hole for good.
fn origin_allowed(gw: &Gateway, origin: Option<&[u8]>) -> bool {
    origin.is_some_and(|o| o == gw.config().public_url.origin().as_bytes())
}

/// A call of one of the gateway's own endpoints that acts for the principal. No
/// `Debug`: its headers and body carry credentials (cookies, client secrets).
pub struct EndpointAccess<'a> {
    pub headers: &'a HeaderMap,
    /// The request body, for the `csrf_token` field of no-JavaScript forms.
    pub body: &'a [u8],
    /// Anything but a read: with the cookie, it needs the CSRF token.
    pub mutating: bool,
    /// The admin API permission the route requires.
    pub permission: Option<Permission>,
    /// The call mints a WebSocket ticket for the principal.
    pub mints_ticket: bool,
    pub peer: SocketAddr,
}

/// Decides whether `auth` may make this call.
pub async fn authorize_endpoint(
    gw: &Gateway,
    auth: &Authenticated,
    access: &EndpointAccess<'_>,
) -> Result<(), GatewayError> {
    if let Some(permission) = access.permission
        && !auth.identity().has_permission(permission)
    {
        let mut event = gw.audit_event(auth.identity().subject(), permission.name(), "failure");
        event.reason = Some("forbidden".into());
        event.ip = Some(access.peer.ip().to_string());
        gw.audit(event).await;
        return Err(GatewayError::Forbidden);
    }
    if access.mutating && auth.carrier == Carrier::Cookie {
        check_csrf(gw, auth, access.headers, access.body)?;
    }
    if access.mints_ticket && PrincipalKind::of(auth.session_id()) == PrincipalKind::Internal {
        return Err(GatewayError::Forbidden);
    }
    Ok(())
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf_token: Option<String>,
}

/// The CSRF token of a cookie-authenticated mutation: the `X-CSRF-Token` header, or
/// a `csrf_token` form field for no-JavaScript forms.
fn check_csrf(
    gw: &Gateway,
    auth: &Authenticated,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), GatewayError> {
    let from_header = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
    let from_form = serde_urlencoded::from_bytes::<CsrfForm>(body)
        .ok()
        .and_then(|f| f.csrf_token);
    let presented = from_header
        .or(from_form.as_deref())
        .ok_or(GatewayError::Csrf)?;
    if gw.csrf_valid(auth.session_id(), presented) {
        Ok(())
    } else {
        Err(GatewayError::Csrf)
    }
}
