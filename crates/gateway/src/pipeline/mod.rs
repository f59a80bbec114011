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
pub mod carrier;

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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

/// A request id: unique across processes and requests without a system call per
/// request (a random prefix per process, then the event loop's own counter).
/// Not a secret, never an authority: it only ties log lines together.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestId {
    bytes: [u8; MAX_REQUEST_ID],
    len: u8,
}

/// Longest request id accepted from a trusted proxy.
const MAX_REQUEST_ID: usize = 64;

impl RequestId {
    /// The next id of this thread.
    pub fn next() -> Self {
        thread_local! {
            static NEXT: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
        }
        let (thread, count) = NEXT.with(|next| {
            let (mut thread, count) = next.get();
            if thread == 0 {
                thread = thread_number();
            }
            next.set((thread, count + 1));
            (thread, count)
        });
        let mut bytes = [0u8; MAX_REQUEST_ID];
        let hex = |n: u64, out: &mut [u8]| {
            let len = out.len();
            for (i, b) in out.iter_mut().enumerate() {
                let nibble = (n >> (4 * (len - 1 - i))) & 0xf;
                *b = b"0123456789abcdef"[nibble as usize];
            }
        };
        hex(process_prefix(), &mut bytes[..8]);
        hex(thread, &mut bytes[8..12]);
        hex(count, &mut bytes[12..24]);
        Self { bytes, len: 24 }
    }

    /// The id a trusted proxy sent, if it is one: 1 to 64 characters of
    /// `[A-Za-z0-9._:-]` (nothing that could split a log line or a header).
    pub fn from_proxy(value: &[u8]) -> Option<Self> {
        let ok = !value.is_empty()
            && value.len() <= MAX_REQUEST_ID
            && value
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if !ok {
            return None;
        }
        let mut bytes = [0u8; MAX_REQUEST_ID];
        bytes[..value.len()].copy_from_slice(value);
        Some(Self {
            bytes,
            len: value.len() as u8,
        })
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// 32 bits per process: from the OS entropy source, or (should that fail; an id
/// is no secret) from the time and the process id.
fn process_prefix() -> u64 {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    *PREFIX.get_or_init(|| {
        use portcullis_core::secret::{Entropy, OsEntropy};
        let mut raw = [0u8; 4];
        match OsEntropy.fill(&mut raw) {
            Ok(()) => u64::from(u32::from_be_bytes(raw)),
            Err(_) => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                u64::from(nanos ^ std::process::id().rotate_left(16))
            }
        }
    })
}

/// A number per thread (16 bits), never 0.
fn thread_number() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static THREADS: AtomicU64 = AtomicU64::new(0);
    (THREADS.fetch_add(1, Ordering::Relaxed) % 0xffff) + 1
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
    fn request_ids_are_distinct_hex_of_one_length() {
        let a = RequestId::next();
        let b = RequestId::next();
        let other = std::thread::spawn(RequestId::next).join().unwrap();
        assert_ne!(a, b);
        assert_ne!(a, other);
        assert_ne!(b, other);
        for id in [&a, &b, &other] {
            assert_eq!(id.as_str().len(), 24);
            assert!(id.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        }
        assert_eq!(a.as_str()[..8], other.as_str()[..8], "one process prefix");
    }

    #[test]
    fn ids_from_proxies_are_checked() {
        // (value, accepted)
        let rows: &[(&[u8], bool)] = &[
            (b"abc-123", true),
            (b"0f1e.2d:3c_4b", true),
            (b"", false),
            (b"a b", false),
            (b"a\r\nx-forwarded-user: root", false),
            (b"caf\xc3\xa9", false),
            (&[b'a'; 64], true),
            (&[b'a'; 65], false),
        ];
        for (value, accepted) in rows {
            let id = RequestId::from_proxy(value);
            assert_eq!(
                id.is_some(),
                *accepted,
                "{:?}",
                String::from_utf8_lossy(value)
            );
            if let Some(id) = id {
                assert_eq!(id.as_str().as_bytes(), *value);
            }
        }
    }

    #[test]
    fn no_peer_is_trusted_without_configuration() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-request-id", http::HeaderValue::from_static("forged-id"));
        let ctx =
            RequestContext::for_request("127.0.0.1:1".parse().unwrap(), PathKind::Proxy, &headers);
        assert_ne!(ctx.id.as_str(), "forged-id");
    }
}
