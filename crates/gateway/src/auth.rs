//! The authentication phase: the one place that decides who a request is. Every
//! proxied request, forward-auth check and gateway API call goes through
//! [`authenticate`].

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderMap;
use portcullis_core::cookie::{CookieError, SESSION_PREFIX};
use portcullis_core::identity::{Identity, PrincipalKind};
use portcullis_core::internal;

use crate::cookies::{self, SESSION_COOKIE};
use crate::error::GatewayError;
use crate::session_cache::{CachedSession, LookupError};
use crate::state::Gateway;

/// A request that proved who it is.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub session: Arc<CachedSession>,
    /// Authenticated by the session cookie, the one ambient credential: only such
    /// requests need CSRF tokens and (for WebSockets) an allowed `Origin`.
    pub via_cookie: bool,
}

impl Authenticated {
    pub fn identity(&self) -> &Identity {
        &self.session.session.identity
    }

    pub fn session_id(&self) -> &str {
        &self.session.session.id
    }
}

/// Who the request is: `Ok(None)` when it carries no valid credential. Errors only
/// when the answer cannot be known (database unreachable): the caller must then
/// refuse, never pass the request (fail closed).
pub async fn authenticate(
    gw: &Gateway,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Option<Authenticated>, GatewayError> {
    Ok(match authenticate_outcome(gw, headers, peer).await? {
        Outcome::Authenticated(auth) => Some(auth),
        Outcome::NoCredential | Outcome::Rejected => None,
    })
}

/// The result of authentication, distinguishing "nothing presented" from
/// "presented and refused" for callers that answer them differently (WebSockets).
#[derive(Debug)]
pub enum Outcome {
    Authenticated(Authenticated),
    NoCredential,
    Rejected,
}

/// Like [`authenticate`], with the reason a request is not authenticated.
pub async fn authenticate_outcome(
    gw: &Gateway,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Outcome, GatewayError> {
    if let Some(bearer) = portcullis_bearer(headers) {
        return authenticate_bearer_value(gw, bearer, peer).await;
    }
    let Some(value) = cookies::read(headers, SESSION_COOKIE) else {
        return Ok(Outcome::NoCredential);
    };
    authenticate_session_cookie(gw, value).await
}

/// Authenticates the value of the session cookie: signature, then the session.
pub async fn authenticate_session_cookie(
    gw: &Gateway,
    value: &str,
) -> Result<Outcome, GatewayError> {
    let inner = &gw.0;
    let ring = inner.keyring.current();
    let id = match ring.verify(value, SESSION_PREFIX) {
        Ok(id) => id,
        Err(CookieError::UnknownKey) => {
            // Possibly a key rotated in by another process: reload (rate limited) and retry.
            let reloaded = inner
                .keyring
                .reload_if_due(&inner.store)
                .await
                .map_err(|e| GatewayError::StoreUnavailable(e.to_string()))?;
            if !reloaded {
                return Ok(Outcome::Rejected);
            }
            match inner.keyring.current().verify(value, SESSION_PREFIX) {
                Ok(id) => id,
                Err(reason) => {
                    tracing::debug!(%reason, "session cookie refused");
                    return Ok(Outcome::Rejected);
                }
            }
        }
        Err(reason) => {
            tracing::debug!(%reason, "session cookie refused");
            return Ok(Outcome::Rejected);
        }
    };
    match inner
        .sessions
        .lookup(&inner.store, id, inner.clock.now_ms())
        .await
    {
        Ok(session) => Ok(Outcome::Authenticated(Authenticated {
            session,
            via_cookie: true,
        })),
        Err(LookupError::Unknown | LookupError::Ended(_)) => Ok(Outcome::Rejected),
        Err(LookupError::Store(e)) => Err(e.into()),
    }
}

/// Authenticates a WebSocket ticket: consumed atomically (a replay finds nothing),
/// then the minting session must still be valid. Refusals are audited with at most
/// the first eight characters of the ticket.
pub async fn authenticate_ticket(
    gw: &Gateway,
    presented: &str,
    peer: SocketAddr,
) -> Result<Outcome, GatewayError> {
    let inner = &gw.0;
    let now = inner.clock.now_ms();
    let session_id = match portcullis_core::ticket::hash_presented(presented) {
        Some(hash) => inner.store.consume_ticket(&hash, now).await?,
        None => None,
    };
    let reason = match session_id {
        // Minted with an API token: the ticket carries that token's identity.
        Some(id) if PrincipalKind::of(&id) == PrincipalKind::ApiToken => {
            match inner.sessions.lookup_token_id(&inner.store, &id).await {
                Ok(session) => {
                    return Ok(Outcome::Authenticated(Authenticated {
                        session,
                        via_cookie: false,
                    }));
                }
                Err(LookupError::Store(e)) => return Err(e.into()),
                Err(_) => "token_revoked",
            }
        }
        Some(id) => match inner.sessions.lookup(&inner.store, &id, now).await {
            Ok(session) => {
                return Ok(Outcome::Authenticated(Authenticated {
                    session,
                    via_cookie: false,
                }));
            }
            Err(LookupError::Store(e)) => return Err(e.into()),
            Err(_) => "session_ended",
        },
        None => "unknown_used_or_expired",
    };
    let mut event = gw.audit_event("anonymous", "auth.ws_ticket", "failure");
    event.reason = Some(reason.into());
    event.target = Some(portcullis_core::secret::truncate_secret(presented));
    event.ip = Some(peer.ip().to_string());
    gw.audit(event).await;
    Ok(Outcome::Rejected)
}

/// Whether a bearer value is one of ours (an API token `pct_…` or the internal
/// credential `pci_…`) rather than the upstream's.
pub fn is_portcullis_bearer(token: &str) -> bool {
    token.starts_with(portcullis_core::ticket::API_TOKEN_PREFIX)
        || token.starts_with(internal::PREFIX)
}

/// The `Authorization: Bearer` value if it is one of ours. Other bearer values
/// belong to the upstream and pass through untouched.
pub fn portcullis_bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && is_portcullis_bearer(token)).then_some(token)
}

/// The internal credential (SPEC 6.3): loopback peers only unless configured
/// otherwise; refusals are audited with at most eight characters of the value.
async fn authenticate_internal(
    gw: &Gateway,
    presented: &str,
    peer: SocketAddr,
) -> Result<Outcome, GatewayError> {
    let inner = &gw.0;
    let reason = if !internal::peer_allowed(peer.ip(), inner.config.internal_credential_remote) {
        "remote_peer"
    } else {
        match inner
            .internal
            .verify(&inner.store, presented, inner.clock.now_ms())
            .await
        {
            Ok(Some(minted)) => {
                return Ok(Outcome::Authenticated(Authenticated {
                    session: minted.session.clone(),
                    via_cookie: false,
                }));
            }
            Ok(None) if inner.internal.current().is_none() => "not_minted",
            Ok(None) => "mismatch",
            Err(e) => return Err(GatewayError::StoreUnavailable(e.to_string())),
        }
    };
    let mut event = gw.audit_event(internal::SUBJECT, "auth.internal_credential", "failure");
    event.reason = Some(reason.into());
    event.target = Some(portcullis_core::secret::truncate_secret(presented));
    event.ip = Some(peer.ip().to_string());
    gw.audit(event).await;
    Ok(Outcome::Rejected)
}

async fn authenticate_api_token(gw: &Gateway, presented: &str) -> Result<Outcome, GatewayError> {
    let Some(hash) = portcullis_core::ticket::hash_presented_api_token(presented) else {
        return Ok(Outcome::Rejected);
    };
    let inner = &gw.0;
    match inner.sessions.lookup_token(&inner.store, &hash).await {
        Ok(session) => Ok(Outcome::Authenticated(Authenticated {
            session,
            via_cookie: false,
        })),
        Err(LookupError::Store(e)) => Err(e.into()),
        Err(_) => Ok(Outcome::Rejected),
    }
}

/// A bearer value from any carrier (header, subprotocol, query): an API token
/// (`pct_…`), the internal credential (`pci_…`) or a WebSocket ticket.
pub async fn authenticate_bearer_value(
    gw: &Gateway,
    value: &str,
    peer: SocketAddr,
) -> Result<Outcome, GatewayError> {
    if value.starts_with(portcullis_core::ticket::API_TOKEN_PREFIX) {
        authenticate_api_token(gw, value).await
    } else if value.starts_with(internal::PREFIX) {
        authenticate_internal(gw, value, peer).await
    } else {
        authenticate_ticket(gw, value, peer).await
    }
}
