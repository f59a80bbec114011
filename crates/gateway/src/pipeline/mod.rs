//! One request pipeline for every request the gateway relays or answers for a
//! principal, in named phases over one [`RequestContext`] (pingora's `ProxyHttp`):
//!
//! | phase | fast path | general path | WebSocket upgrade |
//! |---|---|---|---|
//! | authenticate | [`authenticate::authenticate_session_cookie`] once [`carrier::select`] picked the cookie | [`authenticate::authenticate`] | [`authenticate::authenticate`] with the subprotocol offer |
//! | authorize | [`authorize::authorize_upstream`] | [`authorize::authorize_upstream`] | [`authorize::authorize_upstream`] |
//! | rewrite upstream request | [`crate::upstream::rewrite::render_head`] + `render_tail` | [`crate::upstream::rewrite::UpstreamRewrite::apply`] | `UpstreamRewrite::apply` |
//! | relay | `fastpath::relay` (raw pool) | `proxy::handle` (pooled client) | `ws::relay` |
//! | log | [`RequestContext::finish`] | [`RequestContext::finish`] | [`RequestContext::finish`] when the socket ends |
//!
//! Gateway endpoints (`{prefix}/…`) authenticate with the same function and
//! authorize with [`authorize::authorize_endpoint`].

pub mod authenticate;
pub mod authorize;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use crate::request_id::RequestId;
pub use authenticate::{Authenticated, Outcome, authenticate};

/// Which way a request went through the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    FastPath,
    Proxy,
    Upgrade,
    Endpoint,
}

impl PathKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::FastPath => "fast",
            PathKind::Proxy => "proxy",
            PathKind::Upgrade => "upgrade",
            PathKind::Endpoint => "endpoint",
        }
    }
}

/// Whether access events are wanted (so the fast path copies what it logs only
/// then).
pub fn access_log_enabled() -> bool {
    tracing::enabled!(target: "portcullis::access", tracing::Level::INFO)
}

/// Whether a peer's forwarding headers (and its `X-Request-Id`) are believed. No
/// peer is trusted until trusted proxies can be configured: every client's claims
/// are replaced by what the gateway saw.
pub fn trusted_peer(_peer: SocketAddr) -> bool {
    false
}

/// What the pipeline knows about one request, from its arrival to its log line.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub id: RequestId,
    pub peer: SocketAddr,
    pub kind: PathKind,
    started: Instant,
    /// Who the request proved to be, once authenticated.
    pub principal: Option<Authenticated>,
    /// Time from sending the request upstream to its response head.
    pub upstream_time: Option<Duration>,
    /// A relayed WebSocket: its access event is written when it ends, not when
    /// the response is sent.
    pub relayed: bool,
}

impl RequestContext {
    pub fn new(peer: SocketAddr, kind: PathKind) -> Self {
        Self::started_at(peer, kind, Instant::now())
    }

    /// A context for a request whose head is parsed: a trusted proxy's
    /// `X-Request-Id` is kept, anyone else's replaced.
    pub fn for_request(peer: SocketAddr, kind: PathKind, headers: &http::HeaderMap) -> Self {
        let mut ctx = Self::new(peer, kind);
        if trusted_peer(peer)
            && let Some(id) = headers
                .get("x-request-id")
                .and_then(|v| RequestId::from_proxy(v.as_bytes()))
        {
            ctx.id = id;
        }
        ctx
    }

    pub fn started_at(peer: SocketAddr, kind: PathKind, started: Instant) -> Self {
        Self {
            id: RequestId::next(),
            peer,
            kind,
            started,
            principal: None,
            upstream_time: None,
            relayed: false,
        }
    }

    /// The log phase: one access event (target `portcullis::access`). The path is
    /// logged without its query string (it may hold credentials); the principal
    /// by id, never by a secret.
    pub fn finish(&self, method: &str, path: &str, status: u16) {
        if !access_log_enabled() {
            return;
        }
        let total_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let upstream_ms = self.upstream_time.map(|t| t.as_secs_f64() * 1000.0);
        let (principal, carrier) = match &self.principal {
            Some(auth) => (auth.session_id(), auth.carrier.scheme()),
            None => ("-", "-"),
        };
        tracing::info!(
            target: "portcullis::access",
            request_id = %self.id,
            peer = %self.peer.ip(),
            path_kind = self.kind.as_str(),
            method,
            path,
            status,
            principal,
            carrier,
            upstream_ms,
            total_ms,
            "request"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_peer_is_trusted_without_configuration() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-request-id", http::HeaderValue::from_static("forged-id"));
        let ctx =
            RequestContext::for_request("127.0.0.1:1".parse().unwrap(), PathKind::Proxy, &headers);
        assert_ne!(ctx.id.as_str(), "forged-id");
    }
}
