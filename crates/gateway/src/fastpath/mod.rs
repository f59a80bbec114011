//! The proxy's HTTP/1.1 fast path: the common request (no body, no upgrade,
//! signed in with the session cookie) is parsed, authenticated, rewritten and
//! relayed on the connection's own task, with no per-request allocation of header
//! maps and no hand-off to a client connection task. nginx's shape, in the same
//! number of system calls (one read and one write on each side).
//!
//! Anything else is not handled here: the connection is handed, with the bytes
//! already read, to the hyper server ([`Handoff::Hyper`]), which answers every
//! request from then on (login pages, uploads, WebSockets, refusals, malformed
//! requests). The fast path therefore never answers a client error itself; it only
//! answers requests that are well formed and authenticated, and 502/504 when the
//! upstream fails them.
//!
//! Every request passes the phases of [`crate::pipeline`]: the carrier table picks
//! the cookie, [`authenticate_session_cookie`] and [`authorize_upstream`] decide,
//! and the one upstream rewrite renders the head as bytes
//! ([`rewrite::render_head`], [`UpstreamRewrite::render_tail`]). A request the
//! cookie does not authenticate is handed to hyper with the outcome already
//! decided ([`Primed`]), so it is never authenticated twice.

mod client_stream;
mod handoff;
mod response;

use response::{response_head, write_response};

use std::borrow::Cow;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use memchr::memmem;
use portcullis_core::routes::{Decision, RouteRequest, canonical_path};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

pub use client_stream::ClientStream;
pub use handoff::Prefixed;

use crate::carrier::{self, Carrier};
use crate::config::GatewayConfig;
use crate::cookies;
use crate::error::GatewayError;
use crate::pipeline::authenticate::{Primed, authenticate_session_cookie};
use crate::pipeline::authorize::{
    UpstreamAccess, authorize_upstream, is_method_override, query_may_override,
};
use crate::pipeline::{Authenticated, ClientAddr, PathKind, RequestContext, RequestId};
use crate::state::Gateway;
use crate::upstream::raw::Framing;
use crate::upstream::rewrite::{self, UpstreamRewrite};
use crate::upstream::{UpstreamClient, UpstreamError};

/// Headers read per request head (more: hyper answers).
pub const MAX_HEADERS: usize = 128;
/// Up to this size, a response's head and the body read with it go out in one write.
const INLINE_BODY: usize = 16 * 1024;

/// Limits on client request heads (shared with the hyper server).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub header_read_timeout: Duration,
}

/// What became of a client connection.
#[derive(Debug)]
pub enum Handoff {
    /// Finished: closed by either side, timed out, failed, or shut down.
    Closed,
    /// The request at the start of the buffer is not for the fast path: hyper
    /// serves the connection from here on, with the outcome of that request's
    /// authentication when the fast path already tried it.
    Hyper(Option<Primed>),
}

/// Serves requests from `client` while they suit the fast path. `buf` holds bytes
/// read from the client and not yet answered; on [`Handoff::Hyper`] it starts with
/// the request hyper must read.
pub async fn serve(
    gw: &Gateway,
    upstream: &UpstreamClient,
    peer: SocketAddr,
    limits: Limits,
    client: &mut ClientStream,
    buf: &mut BytesMut,
    stopping: &mut watch::Receiver<bool>,
) -> Handoff {
    // A trusted proxy's requests carry the client's address in their headers,
    // which the fast path does not read: the general path serves them.
    if gw.config().trusted_proxies.contains(peer.ip()) {
        return Handoff::Hyper(None);
    }
    let mut out = Vec::with_capacity(1024);
    let mut back = Vec::with_capacity(4096);
    let proto = gw.forwarded_proto();
    let forwarded = rewrite::forwarded_lines(peer.ip(), proto);
    let mut timer = Timer::new(limits.header_read_timeout);
    // Registered once per connection, not once per wait.
    let mut stop = std::pin::pin!(stopping.changed());
    loop {
        let arrived = Instant::now();
        let deadline = arrived + limits.header_read_timeout;
        timer.arm(deadline);
        let plan = loop {
            out.clear();
            match plan_request(gw.config(), &forwarded, buf, &mut out) {
                Plan::Incomplete if buf.len() >= limits.max_head_bytes => {
                    return Handoff::Hyper(None);
                }
                Plan::Incomplete => {}
                Plan::Hyper => return Handoff::Hyper(None),
                Plan::Malformed => {
                    // A head another server could read differently: refused,
                    // and the connection closed (its framing is not to be trusted).
                    let _ = client.write_all(MALFORMED_HEAD).await;
                    let _ = client.shutdown().await;
                    return Handoff::Closed;
                }
                Plan::Forward(plan) => break plan,
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(8 * 1024);
            }
            tokio::select! {
                biased;
                read = client.read_buf(buf) => match read {
                    Ok(0) | Err(_) => return Handoff::Closed,
                    Ok(_) => {}
                },
                () = timer.expired(deadline) => return Handoff::Closed,
                _ = &mut stop => return Handoff::Closed,
            }
        };
        let mut ctx = RequestContext::started_at(
            ClientAddr::direct(peer),
            PathKind::FastPath,
            arrived.into_std(),
        );
        let Ok(cookie) = std::str::from_utf8(&buf[plan.cookie.clone()]) else {
            return Handoff::Hyper(None);
        };
        // authenticate
        let session = match authenticate_session_cookie(gw, cookie).await {
            Ok(Ok(session)) => session,
            // Refusals and store errors are answered by the one general path,
            // which is told the outcome instead of asking again.
            outcome => {
                return Handoff::Hyper(Some(Primed::new(cookie, outcome)));
            }
        };
        let auth = Authenticated {
            session,
            carrier: Carrier::Cookie,
        };
        // authorize: refusals are answered by the general path too.
        let path = std::str::from_utf8(&buf[plan.path.clone()]).unwrap_or("/");
        let access = UpstreamAccess {
            method: &plan.method,
            host: None,
            path,
            // A refusal is answered by the general path, which has the query.
            query: None,
            method_overrides: &[],
            origin: None,
            upgrade: false,
        };
        if authorize_upstream(gw, &auth, &access, &plan.decision).is_err() {
            return Handoff::Hyper(Some(Primed::new(cookie, Ok(Ok(auth.session)))));
        }
        // Counted here only once authorized: a hand-off is counted by the
        // general path, which takes the outcome.
        crate::metrics::authentication(Some(Carrier::Cookie), crate::metrics::AuthResult::Ok);
        // rewrite (the principal's part)
        UpstreamRewrite {
            identity: Some(auth.identity()),
            client_ip: peer.ip(),
            proto,
            request_id: &ctx.id,
        }
        .render_tail(&mut out);
        ctx.principal = Some(auth);
        let logged_path = crate::pipeline::access_log_enabled().then(|| path.to_owned());
        buf.advance(plan.head_len);
        // Let every other connection whose request arrived in this turn of the
        // event loop read and authenticate its own first: the upstream then
        // receives the turn's requests back to back and is woken once for them,
        // not once each. Waking a sleeping process is the dearest part of a
        // loopback send (docs/PERFORMANCE.md).
        tokio::task::yield_now().await;

        // relay
        let relayed = relay(
            upstream, client, &plan, &ctx.id, &out, &mut back, &mut timer,
        )
        .await;
        let (keep_open, status) = match relayed {
            Ok(Relayed {
                close,
                status,
                upstream_time,
            }) => {
                ctx.upstream_time = upstream_time;
                (!close && !plan.close, status)
            }
            Err(Failure::Client) => (false, 0),
            Err(Failure::Upstream(error)) => {
                let error = GatewayError::Upstream(error);
                let status = error.status().as_u16();
                let brand = gw.config().brand_name.clone();
                let respond = crate::error::CURRENT_REQUEST.sync_scope(ctx.id.clone(), || {
                    crate::pages::BRAND.sync_scope(brand, || error.into_response_for(plan.html))
                });
                if write_response(client, respond, &ctx.id, plan.close)
                    .await
                    .is_err()
                {
                    // Counted all the same: the client left before the answer.
                    ctx.finish(
                        plan.method.as_str(),
                        logged_path.as_deref().unwrap_or_default(),
                        0,
                    );
                    return Handoff::Closed;
                }
                (!plan.close, status)
            }
        };
        // log
        ctx.finish(
            plan.method.as_str(),
            logged_path.as_deref().unwrap_or_default(),
            status,
        );
        // A rare huge head must not leave its buffer behind on an idle connection.
        for buffer in [&mut out, &mut back] {
            if buffer.capacity() > 2 * INLINE_BODY {
                *buffer = Vec::with_capacity(4096);
            }
        }
        let stopping = futures_util::FutureExt::now_or_never(&mut stop).is_some();
        if !keep_open || stopping {
            let _ = client.shutdown().await;
            return Handoff::Closed;
        }
    }
}

/// One timer per connection for each of its deadlines in turn (the next request
/// head, the upstream's answer). It is re-armed lazily, when it fires before the
/// deadline at hand, so a request costs a clock read instead of a timer insertion
/// and removal.
struct Timer {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Timer {
    fn new(after: Duration) -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep(after)),
        }
    }

    /// Makes sure the timer fires no later than `deadline`.
    fn arm(&mut self, deadline: Instant) {
        if self.sleep.deadline() > deadline {
            self.sleep.as_mut().reset(deadline);
        }
    }

    /// Resolves once `deadline` (armed before) has passed.
    async fn expired(&mut self, deadline: Instant) {
        loop {
            (&mut self.sleep).await;
            if Instant::now() >= deadline {
                return;
            }
            self.sleep.as_mut().reset(deadline);
        }
    }
}

/// A request the fast path takes.
#[derive(Debug)]
struct Forward<'g> {
    head_len: usize,
    /// What the route rules require (the request is not anonymous).
    decision: Decision<'g>,
    method: http::Method,
    /// The path (without the query), within the buffer.
    path: Range<usize>,
    /// The session cookie's value, within the buffer.
    cookie: Range<usize>,
    /// The client asked to close after this response.
    close: bool,
    head: bool,
    idempotent: bool,
    html: bool,
}

#[derive(Debug)]
enum Plan<'g> {
    Incomplete,
    Hyper,
    /// A head with bare-LF line endings.
    Malformed,
    Forward(Forward<'g>),
}

/// The answer to a malformed request head.
const MALFORMED_HEAD: &[u8] = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\
    Content-Type: text/plain\r\nContent-Length: 40\r\n\r\n\
    request head lines must end with CRLF.\r\n";

/// Whether a request head has a line ending in a bare LF: httparse (and hyper)
/// accept them, but a proxy in front that does not could be desynchronised from
/// the gateway, so the gateway refuses them.
fn has_bare_lf(head: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r')
}

/// Parses the request at the start of `buf` and, if the fast path takes it, writes
/// its upstream head into `out` (all but the identity headers and the final blank
/// line, which need the session).
/// `forwarded` holds the connection's `X-Forwarded-For` and `-Proto` lines.
fn plan_request<'g>(
    config: &'g GatewayConfig,
    forwarded: &[u8],
    buf: &[u8],
    out: &mut Vec<u8>,
) -> Plan<'g> {
    let mut headers = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let head_len = match request.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) if has_bare_lf(&buf[..len]) => return Plan::Malformed,
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Plan::Incomplete,
        Err(_) => return Plan::Hyper,
    };
    let (Some(method), Some(target), Some(1)) = (request.method, request.path, request.version)
    else {
        return Plan::Hyper;
    };
    // Origin-form targets that `http::Uri` accepts, outside the gateway's own paths.
    if !target.starts_with('/')
        || method == "CONNECT"
        || http::uri::PathAndQuery::try_from(target).is_err()
        || crate::host::is_own_path(&config.auth_prefix, target.split('?').next().unwrap_or(""))
    {
        return Plan::Hyper;
    }
    let mut host: Option<&[u8]> = None;
    let mut close = false;
    let mut html = false;
    let mut bearer = false;
    for h in request.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return Plan::Hyper;
            }
            host = Some(h.value);
        } else if name.eq_ignore_ascii_case("content-length") {
            if h.value != b"0" {
                return Plan::Hyper;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
        {
            return Plan::Hyper;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
                    // Headers named in Connection are dropped; hyper does that.
                    return Plan::Hyper;
                }
            }
        } else if name.eq_ignore_ascii_case("authorization") {
            bearer |= std::str::from_utf8(h.value)
                .ok()
                .and_then(carrier::bearer_value)
                .is_some();
        } else if name.eq_ignore_ascii_case("accept") {
            html = memmem::find(h.value, b"text/html").is_some();
        } else if is_method_override(name) {
            // Route rules read these; the general path decides.
            return Plan::Hyper;
        }
    }
    let Some(host) = host
        .and_then(|h| std::str::from_utf8(h).ok())
        .filter(|h| crate::host::host_allowed(config, h))
    else {
        return Plan::Hyper;
    };
    let cookie_values = || {
        request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
            .map(|h| h.value)
    };
    // A credential cookie with several values (tossed cookies) is settled by
    // signature on the general path.
    let Ok((client, session)) = cookies::credential_pair(cookie_values()) else {
        return Plan::Hyper;
    };
    let cookie = cookies::pick(client, session, cookies::Audience::Upstream);
    // The carrier table decides; the fast path takes only what the cookie carries.
    let chosen = carrier::select(config, false, |c| match c {
        Carrier::Bearer => bearer,
        Carrier::Cookie => cookie.is_some(),
        _ => false,
    });
    let (Some(Carrier::Cookie), Some(cookie)) = (chosen, cookie) else {
        return Plan::Hyper;
    };
    let start = cookie.as_ptr() as usize - buf.as_ptr() as usize;
    let cookie = start..start + cookie.len();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if query_may_override(query) {
        // `_method=…`: the route rules read it; the general path decides.
        return Plan::Hyper;
    }
    let path_start = path.as_ptr() as usize - buf.as_ptr() as usize;
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
        return Plan::Hyper;
    };
    // The upstream receives the canonical path; the fast path forwards the target
    // as it is, so it takes only paths already in that form.
    if !matches!(canonical_path(path), Ok(Cow::Borrowed(_))) {
        return Plan::Hyper;
    }
    let decision = config.routes.decide(&RouteRequest {
        host: Some(host),
        method: method.as_str(),
        method_overrides: &[],
        path,
    });
    if decision.is_anonymous() {
        // Forwarded without the cookie's identity: the general path's job.
        return Plan::Hyper;
    }
    rewrite::render_head(
        out,
        method.as_str(),
        target,
        request.headers,
        forwarded,
        host.as_bytes(),
    );
    Plan::Forward(Forward {
        head_len,
        decision,
        path: path_start..path_start + path.len(),
        cookie,
        close,
        head: method == http::Method::HEAD,
        idempotent: method.is_idempotent(),
        html: html && (method == http::Method::GET || method == http::Method::HEAD),
        method,
    })
}

/// The planner's invariants on one request head, for the fuzz target: never a
/// panic; a request it takes has its head, path and cookie inside the buffer, and
/// its upstream head is well formed and carries none of the gateway's headers or
/// credentials, in any spelling.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_plan(config: &GatewayConfig, buf: &[u8]) {
    const FORWARDED: &[u8] = b"x-forwarded-for: 192.0.2.1\r\nx-forwarded-proto: http\r\n";
    let mut out = Vec::new();
    let Plan::Forward(plan) = plan_request(config, FORWARDED, buf, &mut out) else {
        return;
    };
    assert!(plan.head_len <= buf.len());
    assert!(plan.path.end <= plan.head_len && plan.cookie.end <= plan.head_len);
    assert!(!has_bare_lf(&buf[..plan.head_len]));
    out.extend_from_slice(b"x-forwarded-user: fuzz\r\n\r\n");
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS + 8];
    let mut request = httparse::Request::new(&mut headers);
    let parsed = request.parse(&out);
    assert!(
        matches!(parsed, Ok(httparse::Status::Complete(n)) if n == out.len()),
        "the upstream head does not parse: {parsed:?}"
    );
    let mut own = 0;
    for h in request.headers.iter() {
        let name = rewrite::NormalName::new(h.name);
        if rewrite::is_gateway_owned(name.as_str()) {
            own += 1;
        }
        let value = std::str::from_utf8(h.value).unwrap_or_default();
        if name.as_str() == "authorization" {
            assert!(
                carrier::bearer_value(value).is_none(),
                "a gateway bearer passed"
            );
        }
        if name.as_str() == "cookie" {
            let pairs = cookies::foreign_pairs(std::iter::once(h.value));
            assert_eq!(
                pairs.count(),
                value.split(';').count(),
                "a gateway cookie passed"
            );
        }
    }
    // The gateway's own lines: X-Forwarded-For, -Proto, -Host, -User.
    assert_eq!(own, 4, "a client's spelling of a gateway header passed");
}

/// Why a relayed exchange failed.
enum Failure {
    /// Before any byte of a response reached the client: answer 502/504.
    Upstream(UpstreamError),
    /// The client went away, or the response broke off after its head was sent:
    /// only closing the connection is left.
    Client,
}

struct Relayed {
    /// The client connection must close (the response was delimited by closing).
    close: bool,
    status: u16,
    /// From sending the request to the response head.
    upstream_time: Option<Duration>,
}

/// Sends the request head in `out` upstream and relays the response to `client`.
async fn relay(
    upstream: &UpstreamClient,
    client: &mut ClientStream,
    plan: &Forward<'_>,
    request_id: &RequestId,
    request: &[u8],
    out: &mut Vec<u8>,
    timer: &mut Timer,
) -> Result<Relayed, Failure> {
    let pool = upstream.raw();
    // The exchange's clock reading: its deadline, the pool's idle ages and the
    // upstream time (read again once the response head is in).
    let now = Instant::now();
    let mut status = 0;
    let mut head = |response: &httparse::Response<'_, '_>| {
        out.clear();
        status = response.code.unwrap_or(0);
        response_head(response, plan, request_id, out)
    };
    let exchange = async {
        let mut conn = pool.checkout(now).await?;
        match conn.send_and_read_head(request, &mut head).await {
            Ok(framing) => Ok((conn, framing)),
            // A pooled connection the upstream closed in the meantime: once more on
            // a new one, if the request may be repeated.
            Err(_) if conn.reused && plan.idempotent && conn.buf.is_empty() => {
                let mut fresh = pool.connect().await?;
                let framing = fresh.send_and_read_head(request, &mut head).await?;
                Ok((fresh, framing))
            }
            Err(e) => Err(e),
        }
    };
    let deadline = now + upstream.timeout();
    timer.arm(deadline);
    let (mut conn, (framing, mut reusable)) = tokio::select! {
        biased;
        exchanged = exchange => exchanged.map_err(Failure::Upstream)?,
        () = timer.expired(deadline) => return Err(Failure::Upstream(UpstreamError::Timeout)),
    };
    let upstream_time = Some(now.elapsed());
    let head_len = conn.head_len;
    conn.buf.advance(head_len);
    let close = framing == Framing::UntilClose;

    // How much of the body came with the head, and whether that is all of it.
    let (arrived, complete) = match framing {
        Framing::Empty => (0, true),
        Framing::Length(length) => {
            let arrived = (conn.buf.len() as u64).min(length) as usize;
            conn.remaining = length - arrived as u64;
            (arrived, conn.remaining == 0)
        }
        Framing::Chunked => {
            let arrived = conn
                .chunked
                .scan(&conn.buf)
                .map_err(|e| Failure::Upstream(UpstreamError::Malformed(e.reason())))?;
            (arrived, conn.chunked.done())
        }
        Framing::UntilClose => (conn.buf.len(), false),
    };
    // A small answer leaves in one write, head and body; a large one's body is
    // written from where it was read, so no per-connection buffer grows with it.
    if out.len() + arrived <= INLINE_BODY {
        out.extend_from_slice(&conn.buf[..arrived]);
        client.write_all(out).await.map_err(|_| Failure::Client)?;
    } else {
        client.write_all(out).await.map_err(|_| Failure::Client)?;
        client
            .write_all(&conn.buf[..arrived])
            .await
            .map_err(|_| Failure::Client)?;
    }
    conn.buf.advance(arrived);
    reusable &= conn.buf.is_empty() && framing != Framing::UntilClose;
    if !complete {
        // The rest of the body streams through; a break now can only end the connection.
        conn.stream_body(framing, client)
            .await
            .map_err(|_| Failure::Client)?;
        reusable &= conn.buf.is_empty();
    }
    if reusable && framing != Framing::UntilClose {
        pool.checkin(conn, now);
    }
    Ok(Relayed {
        close,
        status,
        upstream_time,
    })
}
