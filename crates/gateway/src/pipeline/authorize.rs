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
//! - a request for the upstream passes the route rules (SPEC 8), decided by
//!   [`route`] before authentication (an anonymous route needs no credential) on
//!   the host, method and canonical path the upstream receives.
//!
//! - a client session (magic link) reaches only its scope ([`authorize_upstream`])
//!   and calls no permission-guarded endpoint, whatever its roles
//!   ([`authorize_endpoint`]).

use std::borrow::Cow;

use http::{HeaderMap, Method};
use portcullis_core::identity::{IdentityProvider, Permission, PrincipalKind};
use portcullis_core::routes::{Decision, RouteRequest, RouteRule, StepUp};
use serde::Deserialize;

use super::authenticate::Authenticated;
use crate::carrier::Carrier;
use crate::error::GatewayError;
use crate::identity::IdentityFields;
use crate::pipeline::ClientAddr;
use crate::state::Gateway;
use crate::upstream::rewrite::NormalName;

/// A request for the upstream, as the upstream will see it: route rules and
/// client path scopes decide on its host, method and canonical path.
#[derive(Debug)]
pub struct UpstreamAccess<'a> {
    pub method: &'a Method,
    /// The `Host` it was made for.
    pub host: Option<&'a str>,
    /// The canonical path the upstream receives (without the query), from
    /// [`portcullis_core::routes::canonical_path`].
    pub path: &'a str,
    /// The query, for the way back after a step-up sign-in.
    pub query: Option<&'a str>,
    /// Values of method-override headers, which some frameworks obey.
    pub method_overrides: &'a [&'a str],
    /// The `Origin` header, if any.
    pub origin: Option<&'a [u8]>,
    pub upgrade: bool,
}

/// Header names some frameworks read as the request's real method.
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Whether a header name, in any spelling a server may fold it to (case, `_`
/// for `-`), is a method-override header.
pub fn is_method_override(name: &str) -> bool {
    // Cheap first: only three lengths can match.
    matches!(name.len(), 13 | 17 | 22)
        && METHOD_OVERRIDE_HEADERS.contains(&NormalName::new(name).as_str())
}

/// The query parameter Rails, Laravel, Symfony and Express's method-override
/// read as the real method.
const METHOD_OVERRIDE_PARAM: &str = "_method";

/// The method-override values of a request: its override headers in any
/// spelling, and `_method` in the query (a `_method` form field in a body is not
/// seen: a rule on such a method should also name POST).
pub fn method_overrides<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Vec<Cow<'a, str>> {
    let mut found: Vec<Cow<'a, str>> = headers
        .iter()
        .filter(|(name, _)| is_method_override(name.as_str()))
        .filter_map(|(_, value)| value.to_str().ok().map(Cow::Borrowed))
        .collect();
    found.extend(query_overrides(query.unwrap_or("")));
    found
}

/// `_method` values in a query, its key in any percent-encoding.
fn query_overrides(query: &str) -> impl Iterator<Item = Cow<'_, str>> {
    query.split(['&', ';']).filter_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let named = key == METHOD_OVERRIDE_PARAM
            || (key.contains('%')
                && percent_encoding::percent_decode_str(key).decode_utf8_lossy()
                    == METHOD_OVERRIDE_PARAM);
        named.then(|| percent_encoding::percent_decode_str(value).decode_utf8_lossy())
    })
}

/// Whether a query carries a method override (the fast path then declines).
pub fn query_may_override(query: &str) -> bool {
    query_overrides(query).next().is_some()
}

/// What the route rules require of a request for the upstream, decided before
/// anyone is authenticated: an anonymous route needs (and forwards) no credential.
pub fn route<'g>(gw: &'g Gateway, access: &UpstreamAccess<'_>) -> Decision<'g> {
    gw.config().routes.decide(&RouteRequest {
        host: access.host,
        method: access.method.as_str(),
        method_overrides: access.method_overrides,
        path: access.path,
    })
}

/// Decides whether `auth` may reach the upstream with this request, which the
/// route rules decided as `decision`.
pub fn authorize_upstream(
    gw: &Gateway,
    auth: &Authenticated,
    access: &UpstreamAccess<'_>,
    decision: &Decision<'_>,
) -> Result<(), GatewayError> {
    // Tickets (minted by a CSRF-checked POST) and bearer tokens are never sent by
    // a browser on its own; a cookie rides along with any cross-site request, so
    // only cookie upgrades must come from the public origin.
    if access.upgrade && auth.carrier.is_ambient() && !origin_allowed(gw, access.origin) {
        return Err(GatewayError::OriginNotAllowed);
    }
    // A client (magic link) reaches its scope only, under every reading of the path.
    if let Some(scope) = auth.session.scope()
        && !scope.contains(access.path)
    {
        tracing::info!(
            client = auth.identity().subject(),
            method = %access.method,
            path = access.path,
            "refused: outside the client's scope"
        );
        return Err(GatewayError::OutsideScope);
    }
    // Route rules, for plain requests and upgrades alike.
    if !decision.permits(|role| auth.identity().roles().any(|r| r == role)) {
        tracing::info!(
            subject = auth.identity().subject(),
            method = %access.method,
            path = access.path,
            rules = ?decision.rules().map(RouteRule::path_prefix).collect::<Vec<_>>(),
            "refused by a route rule"
        );
        return Err(GatewayError::Forbidden);
    }
    if let Some(step) = decision.unmet_assurance(auth.session.assurance()) {
        return Err(step_up(gw, auth, access, &step));
    }
    Ok(())
}

/// The answer to a session whose sign-in is not strong enough for a route: an
/// OpenID session signs in at its provider again (`prompt=login`, with the
/// rule's `acr_values`) and comes back to the same address; nothing else can
/// step up, so anything else is refused.
fn step_up(
    gw: &Gateway,
    auth: &Authenticated,
    access: &UpstreamAccess<'_>,
    step: &StepUp<'_>,
) -> GatewayError {
    let provider = auth.identity().provider_name();
    let is_oidc = IdentityProvider::is_oidc_name(provider);
    tracing::info!(
        subject = auth.identity().subject(),
        path = access.path,
        acr_values = ?step.acr_values,
        amr = ?step.amr,
        "step-up required by a route rule"
    );
    if !is_oidc || PrincipalKind::of(auth.session_id()) != PrincipalKind::Session {
        return GatewayError::Forbidden;
    }
    let acr_values = step.acr_values.join(" ");
    // The way back, without any credential of ours the address carried.
    let next = crate::upstream::rewrite::with_query(access.path, access.query);
    let next =
        crate::upstream::rewrite::upstream_target(&next, Some(crate::carrier::Carrier::Ticket));
    let mut pairs = vec![("provider", provider), ("next", &next), ("prompt", "login")];
    if !acr_values.is_empty() {
        pairs.push(("acr_values", &acr_values));
    }
    let login_url = format!(
        "{}/oidc/login?{}",
        gw.config().auth_prefix,
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    );
    GatewayError::StepUp {
        login_url,
        acr_values,
    }
}

/// Cookies are a browser credential, and browsers always send `Origin` on a
/// WebSocket handshake, so a cookie-authenticated upgrade must carry the public
/// origin. A missing `Origin` is refused too: a non-browser client should present a
/// bearer credential, and refusing closes the cross-site hijacking hole for good.
fn origin_allowed(gw: &Gateway, origin: Option<&[u8]>) -> bool {
    let allowed = origin.is_some_and(|o| crate::host::origin_allowed(gw, o));
    if !allowed && let Some(origin) = origin {
        crate::host::log_refusal("origin", &String::from_utf8_lossy(origin));
    }
    allowed
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
    pub peer: ClientAddr,
}

/// Decides whether `auth` may make this call.
pub async fn authorize_endpoint(
    gw: &Gateway,
    auth: &Authenticated,
    access: &EndpointAccess<'_>,
) -> Result<(), GatewayError> {
    // A client (magic link) administers nothing, whatever its roles grant: its
    // roles are for the upstream's route rules inside its scope.
    let client = auth.session.scope().is_some();
    if let Some(permission) = access.permission
        && (client || !gw.grants(auth.identity().roles(), permission))
    {
        let mut event = gw.audit_event(
            auth.identity().subject(),
            portcullis_core::audit::AuditAction::PermissionDenied,
            "failure",
        );
        event.reason = Some(permission.name().into());
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
        return Ok(());
    }
    // A client session beside the browser's own session (an operator's preview):
    // the page holds the CSRF token of the browser's session, which proves the
    // same origin as well.
    if auth.session.scope().is_some()
        && let Some(value) =
            super::authenticate::cookie_value(gw, headers, crate::cookies::SESSION_COOKIE)
        && let Ok(id) = gw
            .keyring()
            .current()
            .verify(value, portcullis_core::cookie::SESSION_PREFIX)
        && gw.csrf_valid(id, presented)
    {
        return Ok(());
    }
    Err(GatewayError::Csrf)
}
