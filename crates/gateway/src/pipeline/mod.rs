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

use portcullis_core::forwarded::TrustedProxies;
use std::net::{IpAddr, SocketAddr};
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

/// Headers by which a proxy says whom it relays a request for.
const FORWARDING_HEADERS: [&str; 3] = ["x-forwarded-for", "forwarded", "x-real-ip"];

/// Who a request is from: the connection's peer and, behind a trusted proxy
/// (`--trusted-proxies`), the client its `X-Forwarded-For` names. The client's
/// address drives login throttling, the audit log and the upstream's
/// `X-Forwarded-For`; only the connection decides what is on loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    tcp: SocketAddr,
    ip: IpAddr,
    /// The peer is a trusted proxy: its headers are believed.
    relayed: bool,
    /// It relayed the request for someone else (it sent `X-Forwarded-For`).
    on_behalf: bool,
}

impl ClientAddr {
    /// A client connected directly (not through a trusted proxy).
    pub fn direct(tcp: SocketAddr) -> Self {
        Self {
            tcp,
            ip: tcp.ip(),
            relayed: false,
            on_behalf: false,
        }
    }

    /// The client of a request from `tcp` with these headers.
    pub fn of(trusted: &TrustedProxies, tcp: SocketAddr, headers: &http::HeaderMap) -> Self {
        // Any forwarding header, from anyone, says the request was relayed for
        // someone else: it can only take locality away, so it is read from all.
        let on_behalf = FORWARDING_HEADERS
            .iter()
            .any(|name| headers.contains_key(*name));
        if !trusted.contains(tcp.ip()) {
            return Self {
                on_behalf,
                ..Self::direct(tcp)
            };
        }
        // Read as bytes: a value with a stray non-ASCII byte must not be dropped
        // whole, or the address the proxy appended to it would be lost with it.
        let values: Vec<std::borrow::Cow<'_, str>> = headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()))
            .collect();
        let client = trusted.client(tcp.ip(), values.iter().map(AsRef::as_ref));
        Self {
            tcp,
            ip: client.ip,
            relayed: true,
            on_behalf,
        }
    }

    /// The client's address (the peer's, unless a trusted proxy named another).
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The connection's peer.
    pub fn tcp(&self) -> SocketAddr {
        self.tcp
    }

    /// The request came through a trusted proxy, whose headers are believed.
    pub fn relayed(&self) -> bool {
        self.relayed
    }

    /// Made on the gateway's own host: the connection comes from loopback and
    /// no proxy relayed it for someone else. An address a proxy forwarded (even
    /// `127.0.0.1`) never makes a request local.
    pub fn is_local(&self) -> bool {
        !self.on_behalf && self.tcp.ip().to_canonical().is_loopback()
    }
}

/// What the pipeline knows about one request, from its arrival to its log line.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub id: RequestId,
    pub peer: ClientAddr,
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
    pub fn new(peer: ClientAddr, kind: PathKind) -> Self {
        Self::started_at(peer, kind, Instant::now())
    }

    /// A context for a request whose head is parsed: a trusted proxy's
    /// `X-Request-Id` is kept, anyone else's replaced.
    pub fn for_request(peer: ClientAddr, kind: PathKind, headers: &http::HeaderMap) -> Self {
        let mut ctx = Self::new(peer, kind);
        if peer.relayed()
            && let Some(id) = headers
                .get("x-request-id")
                .and_then(|v| RequestId::from_proxy(v.as_bytes()))
        {
            ctx.id = id;
        }
        ctx
    }

    pub fn started_at(peer: ClientAddr, kind: PathKind, started: Instant) -> Self {
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

    /// The log phase: the request's metrics, and one access event (target
    /// `portcullis::access`) when that log is enabled. The path is logged
    /// without its query string (it may hold credentials); the principal by id,
    /// never by a secret. Status 0: the client went away before an answer.
    pub fn finish(&self, method: &str, path: &str, status: u16) {
        let took = self.started.elapsed();
        crate::metrics::request(self.kind, status, took, self.upstream_time);
        if !access_log_enabled() {
            return;
        }
        let total_ms = took.as_secs_f64() * 1000.0;
        let upstream_ms = self.upstream_time.map(|t| t.as_secs_f64() * 1000.0);
        let (principal, carrier) = match &self.principal {
            Some(auth) => (auth.session_id(), auth.carrier.scheme()),
            None => ("-", "-"),
        };
        tracing::info!(
            target: "portcullis::access",
            request_id = %self.id,
            peer = %self.peer.ip(),
            proxy = self.peer.relayed().then(|| self.peer.tcp().ip()).map(tracing::field::display),
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

/// A general-path request's context, counted even when the request is
/// abandoned: a client that leaves mid-request makes hyper drop the request's
/// future, and dropping this records the request with status 0 (unless it was
/// finished, or is a relayed WebSocket, whose own copy finishes when it ends).
#[derive(Debug)]
pub struct Finishing {
    ctx: RequestContext,
    /// The method and loggable path, when the access log is on.
    logged: Option<(http::Method, String)>,
    finished: bool,
}

impl Finishing {
    pub fn new(ctx: RequestContext, logged: Option<(http::Method, String)>) -> Self {
        Self {
            ctx,
            logged,
            finished: false,
        }
    }

    /// [`RequestContext::finish`], once.
    pub fn finish(&mut self, status: u16) {
        self.finished = true;
        let (method, path) = self
            .logged
            .as_ref()
            .map_or(("", ""), |(method, path)| (method.as_str(), path.as_str()));
        self.ctx.finish(method, path, status);
    }
}

impl std::ops::Deref for Finishing {
    type Target = RequestContext;

    fn deref(&self) -> &RequestContext {
        &self.ctx
    }
}

impl std::ops::DerefMut for Finishing {
    fn deref_mut(&mut self) -> &mut RequestContext {
        &mut self.ctx
    }
}

impl Drop for Finishing {
    fn drop(&mut self) {
        if !self.finished && !self.ctx.relayed {
            self.finish(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                *name,
                http::HeaderValue::from_bytes(value.as_bytes()).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn a_request_is_counted_once_finished_or_abandoned() {
        let peer = ClientAddr::direct("127.0.0.1:1".parse().unwrap());
        let count = |class| crate::metrics::counted_here(PathKind::Endpoint, class);
        let (ok, none) = (count(2), count(0));
        let mut finished = Finishing::new(RequestContext::new(peer, PathKind::Endpoint), None);
        finished.finish(200);
        drop(finished);
        assert_eq!(
            (count(2), count(0)),
            (ok + 1, none),
            "finished: counted once"
        );
        // Dropped unanswered (the client left): counted as `none`.
        drop(Finishing::new(
            RequestContext::new(peer, PathKind::Endpoint),
            None,
        ));
        assert_eq!((count(2), count(0)), (ok + 1, none + 1));
        // A relayed WebSocket is counted by its own copy, when it ends.
        let mut relayed = Finishing::new(RequestContext::new(peer, PathKind::Endpoint), None);
        relayed.relayed = true;
        drop(relayed);
        assert_eq!((count(2), count(0)), (ok + 1, none + 1));
    }

    #[test]
    fn no_peer_is_trusted_without_configuration() {
        let headers = headers(&[
            ("x-request-id", "forged-id"),
            ("x-forwarded-for", "1.2.3.4"),
        ]);
        let client = ClientAddr::of(
            &TrustedProxies::default(),
            "127.0.0.1:1".parse().unwrap(),
            &headers,
        );
        assert_eq!(client.ip(), "127.0.0.1".parse::<IpAddr>().unwrap());
        assert!(!client.relayed());
        // It says it relays for someone else: believed only as far as that goes.
        assert!(!client.is_local());
        let ctx = RequestContext::for_request(client, PathKind::Proxy, &headers);
        assert_ne!(ctx.id.as_str(), "forged-id");
    }

    #[test]
    fn trusted_proxies_name_the_client_never_a_local_one() {
        let trusted = TrustedProxies::parse(["127.0.0.1", "10.0.0.0/8"]).unwrap();
        // (peer, headers, client ip, relayed, local)
        type Row = (
            &'static str,
            Vec<(&'static str, &'static str)>,
            &'static str,
            bool,
            bool,
        );
        let rows: Vec<Row> = vec![
            ("127.0.0.1:9", vec![], "127.0.0.1", true, true),
            (
                "127.0.0.1:9",
                vec![("x-forwarded-for", "198.51.100.7")],
                "198.51.100.7",
                true,
                false,
            ),
            // A forwarded loopback address is never local.
            (
                "10.0.0.5:9",
                vec![("x-forwarded-for", "127.0.0.1")],
                "127.0.0.1",
                true,
                false,
            ),
            (
                "127.0.0.1:9",
                vec![("x-forwarded-for", "127.0.0.1")],
                "127.0.0.1",
                true,
                false,
            ),
            (
                "127.0.0.1:9",
                vec![("x-forwarded-for", "garbage")],
                "127.0.0.1",
                true,
                false,
            ),
            // Untrusted peers: headers ignored (but a forwarding header still
            // means the request is relayed, never local).
            (
                "192.0.2.1:9",
                vec![("x-forwarded-for", "127.0.0.1")],
                "192.0.2.1",
                false,
                false,
            ),
            (
                "[::1]:9",
                vec![("x-forwarded-for", "198.51.100.7")],
                "::1",
                false,
                false,
            ),
            (
                "[::1]:9",
                vec![("forwarded", "for=198.51.100.7")],
                "::1",
                false,
                false,
            ),
            (
                "[::1]:9",
                vec![("x-real-ip", "198.51.100.7")],
                "::1",
                false,
                false,
            ),
            ("[::1]:9", vec![], "::1", false, true),
            // A stray non-ASCII byte does not hide the address the proxy appended.
            (
                "127.0.0.1:9",
                vec![("x-forwarded-for", "caf\u{e9}, 198.51.100.8")],
                "198.51.100.8",
                true,
                false,
            ),
        ];
        for (peer, pairs, ip, relayed, local) in rows {
            let client = ClientAddr::of(&trusted, peer.parse().unwrap(), &headers(&pairs));
            assert_eq!(client.ip().to_string(), ip, "{peer} {pairs:?}");
            assert_eq!(client.relayed(), relayed, "{peer} {pairs:?}");
            assert_eq!(client.is_local(), local, "{peer} {pairs:?}");
        }
        // A trusted proxy's request id is kept.
        let relayed = ClientAddr::of(
            &trusted,
            "127.0.0.1:9".parse().unwrap(),
            &headers(&[("x-request-id", "edge-42")]),
        );
        let ctx = RequestContext::for_request(
            relayed,
            PathKind::Proxy,
            &headers(&[("x-request-id", "edge-42")]),
        );
        assert_eq!(ctx.id.as_str(), "edge-42");
    }
}
