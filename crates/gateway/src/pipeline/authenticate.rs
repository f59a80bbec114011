//! The authenticate phase: the one place that decides who a request is. Every
//! proxied request, WebSocket upgrade, forward-auth check and gateway API call goes
//! through [`authenticate`], which examines the first credential present in the
//! carrier order of [`crate::carrier::CARRIERS`]; the fast path calls
//! [`authenticate_session_cookie`] once that table has picked the cookie.

use portcullis_core::audit::AuditAction;
use std::sync::Arc;

use http::{HeaderMap, Uri};
use portcullis_core::cookie::{CookieError, SESSION_PREFIX};
use portcullis_core::identity::PrincipalKind;
use portcullis_core::internal;
use portcullis_core::subprotocol::Offer;

use crate::carrier::{self, Carrier};
use crate::cookies::Audience;
use crate::error::GatewayError;
use crate::identity::IdentityFields;
use crate::metrics::{self, AuthResult};
use crate::pipeline::ClientAddr;
use crate::session_cache::{CachedSession, LookupError};
use crate::state::Gateway;

/// A request that proved who it is, and how.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub session: Arc<CachedSession>,
    /// What carried the credential: decides CSRF, the `Origin` rule of upgrades
    /// and which credential the upstream rewrite removes.
    pub carrier: Carrier,
}

impl Authenticated {
    /// Who the principal is.
    pub fn identity(&self) -> &CachedSession {
        &self.session
    }

    pub fn session_id(&self) -> &str {
        self.session.id()
    }
}

/// The result of authentication, distinguishing "nothing presented" from
/// "presented and refused" for callers that answer them differently (WebSockets).
#[derive(Debug)]
pub enum Outcome {
    Authenticated(Authenticated),
    NoCredential,
    Rejected,
}

impl Outcome {
    pub fn authenticated(self) -> Option<Authenticated> {
        match self {
            Outcome::Authenticated(auth) => Some(auth),
            Outcome::NoCredential | Outcome::Rejected => None,
        }
    }
}

/// A credential's session, or why it was refused.
pub type Verified = Result<Arc<CachedSession>, Refusal>;

/// Why a presented credential was refused (the audit log's reason, and the
/// `result` label of `portcullis_authentications_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A session cookie whose format or signature does not verify.
    InvalidCookie,
    /// The session is unknown, ended or revoked.
    SessionEnded,
    /// Its user or provider no longer exists.
    IdentityRemoved,
    /// A ticket unknown, already used or expired.
    UnknownTicket,
    /// A ticket minted with an API token since revoked.
    TokenRevoked,
    /// An API token malformed, unknown, revoked or expired.
    UnknownToken,
    /// The internal credential from a peer not allowed to use it.
    RemotePeer,
    /// The internal credential presented before any was minted.
    NotMinted,
    /// Not the internal credential.
    Mismatch,
}

impl Refusal {
    /// Every refusal, in declaration order (`refusal as usize` indexes it).
    pub const ALL: [Refusal; 9] = [
        Refusal::InvalidCookie,
        Refusal::SessionEnded,
        Refusal::IdentityRemoved,
        Refusal::UnknownTicket,
        Refusal::TokenRevoked,
        Refusal::UnknownToken,
        Refusal::RemotePeer,
        Refusal::NotMinted,
        Refusal::Mismatch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::InvalidCookie => "invalid_cookie",
            Refusal::SessionEnded => "session_ended",
            Refusal::IdentityRemoved => "identity_removed",
            Refusal::UnknownTicket => "unknown_used_or_expired",
            Refusal::TokenRevoked => "token_revoked",
            Refusal::UnknownToken => "unknown_token",
            Refusal::RemotePeer => "remote_peer",
            Refusal::NotMinted => "not_minted",
            Refusal::Mismatch => "mismatch",
        }
    }
}

/// The outcome of a session cookie the fast path already authenticated, handed to
/// the general path with its connection, so that a refused cookie is not
/// authenticated twice (two database reads during an outage before the 503).
/// Used once, and only for a request carrying that very cookie.
#[derive(Clone)]
pub struct Primed {
    cookie: Arc<str>,
    outcome: Arc<std::sync::Mutex<Option<Result<Verified, GatewayError>>>>,
}

impl std::fmt::Debug for Primed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The cookie is a credential: never printed.
        f.debug_struct("Primed")
            .field("cookie", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl Primed {
    pub fn new(cookie: &str, outcome: Result<Verified, GatewayError>) -> Self {
        Self {
            cookie: cookie.into(),
            outcome: Arc::new(std::sync::Mutex::new(Some(outcome))),
        }
    }

    fn take_for(&self, cookie: &str) -> Option<Result<Verified, GatewayError>> {
        if *self.cookie != *cookie {
            return None;
        }
        self.outcome
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// Who the request is. `offer` is the parsed `Sec-WebSocket-Protocol` of an
/// upgrade and `None` for any other request (which may use only the carriers not
/// reserved to upgrades). Errors only when the answer cannot be known (database
/// unreachable): the caller must then refuse, never pass the request (fail closed).
pub async fn authenticate(
    gw: &Gateway,
    headers: &HeaderMap,
    uri: &Uri,
    offer: Option<&Offer>,
    peer: ClientAddr,
) -> Result<Outcome, GatewayError> {
    authenticate_primed(gw, headers, uri, offer, peer, None).await
}

/// The audience of [`authenticate`] and [`authenticate_primed`]: requests for the
/// upstream.
const UPSTREAM: Audience = Audience::Upstream;

/// Who calls one of the gateway's own endpoints (plain requests: the bearer, then
/// the cookie); `None` when no credential is valid. `audience` is
/// [`Audience::Upstream`] for endpoints that act for the upstream (forward auth,
/// WebSocket tickets).
pub async fn authenticate_endpoint(
    gw: &Gateway,
    headers: &HeaderMap,
    peer: ClientAddr,
    audience: Audience,
) -> Result<Option<Authenticated>, GatewayError> {
    let no_target = Uri::from_static("/");
    Ok(
        authenticate_as(gw, headers, &no_target, None, peer, None, audience)
            .await?
            .authenticated(),
    )
}

/// [`authenticate`], with the fast path's outcome for the request's cookie.
pub async fn authenticate_primed(
    gw: &Gateway,
    headers: &HeaderMap,
    uri: &Uri,
    offer: Option<&Offer>,
    peer: ClientAddr,
    primed: Option<Primed>,
) -> Result<Outcome, GatewayError> {
    authenticate_as(gw, headers, uri, offer, peer, primed, UPSTREAM).await
}

async fn authenticate_as(
    gw: &Gateway,
    headers: &HeaderMap,
    uri: &Uri,
    offer: Option<&Offer>,
    peer: ClientAddr,
    primed: Option<Primed>,
    audience: Audience,
) -> Result<Outcome, GatewayError> {
    let verifies = |value: &str| signed(gw, value);
    let Some(presented) = carrier::find(gw.config(), headers, uri, offer, audience, &verifies)
    else {
        metrics::authentication(None, AuthResult::NoCredential);
        return Ok(Outcome::NoCredential);
    };
    let verified = match presented.carrier {
        Carrier::Cookie => {
            let verified = match primed.and_then(|p| p.take_for(&presented.value)) {
                Some(outcome) => outcome,
                None => authenticate_session_cookie(gw, &presented.value).await,
            };
            match verified {
                // A client cookie that no longer authenticates (a preview or link
                // ended, or one planted) does not hide the session beside it.
                Ok(Err(refusal))
                    if audience == Audience::Upstream
                        && cookie_value(gw, headers, crate::cookies::CLIENT_COOKIE)
                            == Some(presented.value.as_ref()) =>
                {
                    match cookie_value(gw, headers, crate::cookies::SESSION_COOKIE) {
                        Some(session) if session != presented.value => {
                            authenticate_session_cookie(gw, session).await
                        }
                        _ => Ok(Err(refusal)),
                    }
                }
                verified => verified,
            }
        }
        Carrier::Ticket => authenticate_ticket(gw, &presented.value, peer).await,
        Carrier::Subprotocol | Carrier::Bearer | Carrier::QueryToken => {
            authenticate_bearer_value(gw, &presented.value, peer).await
        }
    };
    let result = match &verified {
        Ok(Ok(_)) => AuthResult::Ok,
        Ok(Err(refusal)) => AuthResult::Refused(*refusal),
        Err(_) => AuthResult::Unavailable,
    };
    metrics::authentication(Some(presented.carrier), result);
    Ok(match verified? {
        Ok(session) => Outcome::Authenticated(Authenticated {
            session,
            carrier: presented.carrier,
        }),
        Err(_) => Outcome::Rejected,
    })
}

/// The value of credential cookie `base` (the session or the client cookie, under
/// either name) to authenticate with: when several are present, the only one
/// whose signature verifies, else none (cookie tossing).
pub fn cookie_value<'a>(gw: &Gateway, headers: &'a HeaderMap, base: &str) -> Option<&'a str> {
    crate::cookies::held(headers, base).resolve(|value| signed(gw, value))
}

/// Whether a cookie value carries a valid session signature (no database).
pub fn signed(gw: &Gateway, value: &str) -> bool {
    gw.keyring().current().verify(value, SESSION_PREFIX).is_ok()
}

/// Authenticates the value of the session cookie: signature, then the session.
pub async fn authenticate_session_cookie(
    gw: &Gateway,
    value: &str,
) -> Result<Verified, GatewayError> {
    let ring = gw.keyring().current();
    let id = match ring.verify(value, SESSION_PREFIX) {
        Ok(id) => id,
        Err(CookieError::UnknownKey) => {
            // Possibly a key rotated in by another process: reload (rate limited) and retry.
            let reloaded = gw.keyring().reload_if_due(gw.store()).await?;
            if !reloaded {
                return Ok(Err(Refusal::InvalidCookie));
            }
            match gw.keyring().current().verify(value, SESSION_PREFIX) {
                Ok(id) => id,
                Err(reason) => {
                    tracing::debug!(%reason, "session cookie refused");
                    return Ok(Err(Refusal::InvalidCookie));
                }
            }
        }
        Err(reason) => {
            tracing::debug!(%reason, "session cookie refused");
            return Ok(Err(Refusal::InvalidCookie));
        }
    };
    match gw.session_cache().lookup(gw.store(), id, gw.now()).await {
        Ok(session) => Ok(still_exists(gw, session)),
        Err(LookupError::Unknown | LookupError::Ended(_)) => Ok(Err(Refusal::SessionEnded)),
        Err(LookupError::Store(e)) => Err(e.into()),
    }
}

/// A session whose identity was removed (a basic user no longer configured, an
/// OpenID provider no longer known) authenticates no more.
fn still_exists(gw: &Gateway, session: Arc<CachedSession>) -> Verified {
    if gw.identity_exists(session.provider_name(), session.subject()) {
        Ok(session)
    } else {
        tracing::info!(
            session = session.id(),
            provider = session.provider_name(),
            "session refused: its identity no longer exists"
        );
        Err(Refusal::IdentityRemoved)
    }
}

/// Records a refused credential: the reason, and `target`, which names what was
/// presented without revealing it (a single-use ticket's first eight characters,
/// a fingerprint of anything else).
async fn audit_refusal(
    gw: &Gateway,
    actor: &str,
    action: AuditAction,
    reason: &str,
    target: &str,
    peer: ClientAddr,
) {
    let mut event = gw.audit_event(actor, action, "failure");
    event.reason = Some(reason.into());
    event.target = Some(target.to_owned());
    event.ip = Some(peer.ip().to_string());
    gw.audit(event).await;
}

/// Authenticates a WebSocket ticket: consumed atomically (a replay finds nothing),
/// then the minting session must still be valid. Refusals are audited with at most
/// the first eight characters of the ticket.
async fn authenticate_ticket(
    gw: &Gateway,
    presented: &str,
    peer: ClientAddr,
) -> Result<Verified, GatewayError> {
    let now = gw.now();
    let session_id = match portcullis_core::ticket::hash_presented(presented) {
        Some(hash) => gw.store().consume_ticket(&hash, now).await?,
        None => None,
    };
    let refusal = match session_id {
        // Minted with an API token: the ticket carries that token's identity.
        Some(id) if PrincipalKind::of(&id) == PrincipalKind::ApiToken => {
            let exists = |provider: &str, subject: &str| gw.identity_exists(provider, subject);
            match gw
                .session_cache()
                .lookup_token_id(gw.store(), &id, now, &exists)
                .await
            {
                Ok(session) => {
                    return Ok(Ok(session));
                }
                Err(LookupError::Store(e)) => return Err(e.into()),
                Err(_) => Refusal::TokenRevoked,
            }
        }
        Some(id) => match gw.session_cache().lookup(gw.store(), &id, now).await {
            Ok(session) => match still_exists(gw, session) {
                Ok(session) => return Ok(Ok(session)),
                Err(refusal) => refusal,
            },
            Err(LookupError::Store(e)) => return Err(e.into()),
            Err(_) => Refusal::SessionEnded,
        },
        None => Refusal::UnknownTicket,
    };
    audit_refusal(
        gw,
        "anonymous",
        AuditAction::WsTicket,
        refusal.as_str(),
        &portcullis_core::secret::truncate_secret(presented),
        peer,
    )
    .await;
    Ok(Err(refusal))
}

/// The internal credential (SPEC 6.3): loopback peers only unless configured
/// otherwise; refusals are audited with at most eight characters of the value.
async fn authenticate_internal(
    gw: &Gateway,
    presented: &str,
    peer: ClientAddr,
) -> Result<Verified, GatewayError> {
    // Loopback means the connection's own peer, never an address a proxy forwarded
    // (nor a request a trusted proxy relayed).
    let remote = gw.config().internal_credential_remote;
    let refusal = if !(remote || peer.is_local()) {
        Refusal::RemotePeer
    } else {
        match gw.internal().verify(gw.store(), presented, gw.now()).await {
            Ok(Some(minted)) => {
                return Ok(Ok(minted.session.clone()));
            }
            Ok(None) if gw.internal().current().is_none() => Refusal::NotMinted,
            Ok(None) => Refusal::Mismatch,
            Err(e) => return Err(e.into()),
        }
    };
    audit_refusal(
        gw,
        internal::SUBJECT,
        AuditAction::InternalCredentialUse,
        refusal.as_str(),
        // Not even a part of it: one refused only for its peer is the real one.
        &internal::fingerprint(presented),
        peer,
    )
    .await;
    Ok(Err(refusal))
}

async fn authenticate_api_token(gw: &Gateway, presented: &str) -> Result<Verified, GatewayError> {
    let Some(hash) = portcullis_core::ticket::hash_presented_api_token(presented) else {
        return Ok(Err(Refusal::UnknownToken));
    };
    let exists = |provider: &str, subject: &str| gw.identity_exists(provider, subject);
    match gw
        .session_cache()
        .lookup_token(gw.store(), &hash, gw.now(), &exists)
        .await
    {
        Ok(session) => Ok(Ok(session)),
        Err(LookupError::Store(e)) => Err(e.into()),
        Err(_) => Ok(Err(Refusal::UnknownToken)),
    }
}

/// A bearer value from any carrier (header, subprotocol, query): an API token
/// (`pct_…`), the internal credential (`pci_…`) or a WebSocket ticket.
async fn authenticate_bearer_value(
    gw: &Gateway,
    value: &str,
    peer: ClientAddr,
) -> Result<Verified, GatewayError> {
    if value.starts_with(portcullis_core::ticket::API_TOKEN_PREFIX) {
        authenticate_api_token(gw, value).await
    } else if value.starts_with(internal::PREFIX) {
        authenticate_internal(gw, value, peer).await
    } else {
        authenticate_ticket(gw, value, peer).await
    }
}
