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
//! Header rules are those of [`crate::proxy`]: hop-by-hop and gateway-owned headers
//! are dropped, the gateway's cookies removed, identity and `X-Forwarded-*` headers
//! set from the session and the connection.

use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use memchr::memmem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::auth::{Outcome, authenticate_session_cookie, is_portcullis_bearer};
use crate::cookies::{self, SESSION_COOKIE};
use crate::error::GatewayError;
use crate::proxy::{UpstreamClient, is_gateway_owned, is_hop_by_hop};
use crate::state::Gateway;

/// Headers read per request or response head (more: hyper answers, or 502).
pub const MAX_HEADERS: usize = 128;
/// Largest upstream response head accepted.
const MAX_RESPONSE_HEAD: usize = 256 * 1024;
/// Largest trailer section of a chunked upstream response.
const MAX_TRAILERS: usize = 64 * 1024;
/// Upstream reads are at most this large; bodies stream through in such pieces.
const READ_CHUNK: usize = 64 * 1024;
/// Up to this size, a response's head and the body read with it go out in one write.
const INLINE_BODY: usize = 16 * 1024;
/// Idle upstream connections kept per event loop, and for how long.
const MAX_IDLE: usize = 1024;
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Limits on client request heads (shared with the hyper server).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub header_read_timeout: Duration,
}

/// What became of a client connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Handoff {
    /// Finished: closed by either side, timed out, failed, or shut down.
    Closed,
    /// The request at the start of the buffer is not for the fast path: hyper
    /// serves the connection from here on.
    Hyper,
}

/// Serves requests from `client` while they suit the fast path. `buf` holds bytes
/// read from the client and not yet answered; on [`Handoff::Hyper`] it starts with
/// the request hyper must read.
pub async fn serve(
    gw: &Gateway,
    upstream: &UpstreamClient,
    peer: SocketAddr,
    limits: Limits,
    client: &mut TcpStream,
    buf: &mut BytesMut,
    stopping: &mut watch::Receiver<bool>,
) -> Handoff {
    let mut out = Vec::with_capacity(1024);
    let mut back = Vec::with_capacity(4096);
    let forwarded = forwarded_lines(gw, peer);
    let mut timer = Timer::new(limits.header_read_timeout);
    // Registered once per connection, not once per wait.
    let mut stop = std::pin::pin!(stopping.changed());
    loop {
        let deadline = Instant::now() + limits.header_read_timeout;
        timer.arm(deadline);
        let plan = loop {
            out.clear();
            match plan_request(gw, &forwarded, buf, &mut out) {
                Plan::Incomplete if buf.len() >= limits.max_head_bytes => return Handoff::Hyper,
                Plan::Incomplete => {}
                Plan::Hyper => return Handoff::Hyper,
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
        let Ok(cookie) = std::str::from_utf8(&buf[plan.cookie.clone()]) else {
            return Handoff::Hyper;
        };
        let session = match authenticate_session_cookie(gw, cookie).await {
            Ok(Outcome::Authenticated(auth)) => auth.session,
            // Refusals and store errors are answered by the one general path.
            _ => return Handoff::Hyper,
        };
        out.extend_from_slice(session.identity_lines());
        out.extend_from_slice(b"\r\n");
        buf.advance(plan.head_len);
        // Let every other connection whose request arrived in this turn of the
        // event loop read and authenticate its own first: the upstream then
        // receives the turn's requests back to back and is woken once for them,
        // not once each. Waking a sleeping process is the dearest part of a
        // loopback send (docs/PERFORMANCE.md).
        tokio::task::yield_now().await;

        let keep_open = match relay(upstream, client, &plan, &out, &mut back, &mut timer).await {
            Ok(Relayed { close }) => !close && !plan.close,
            Err(Failure::Client) => false,
            Err(Failure::Upstream(error)) => {
                let respond = error.into_response_for(plan.html);
                if write_response(client, respond, plan.close).await.is_err() {
                    return Handoff::Closed;
                }
                !plan.close
            }
        };
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
struct Forward {
    head_len: usize,
    /// The session cookie's value, within the buffer.
    cookie: Range<usize>,
    /// The client asked to close after this response.
    close: bool,
    head: bool,
    idempotent: bool,
    html: bool,
}

#[derive(Debug)]
enum Plan {
    Incomplete,
    Hyper,
    Forward(Forward),
}

/// Parses the request at the start of `buf` and, if the fast path takes it, writes
/// its upstream head into `out` (all but the identity headers and the final blank
/// line, which need the session).
/// `forwarded` holds the connection's `X-Forwarded-For` and `-Proto` lines.
fn plan_request(gw: &Gateway, forwarded: &[u8], buf: &[u8], out: &mut Vec<u8>) -> Plan {
    let mut headers = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let head_len = match request.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Plan::Incomplete,
        Err(_) => return Plan::Hyper,
    };
    let (Some(method), Some(target), Some(1)) = (request.method, request.path, request.version)
    else {
        return Plan::Hyper;
    };
    // Origin-form targets that `http::Uri` accepts, outside the gateway's own paths.
    let config = gw.config();
    if !target.starts_with('/')
        || method == "CONNECT"
        || http::uri::PathAndQuery::try_from(target).is_err()
        || crate::server::is_own_path(&config.auth_prefix, target.split('?').next().unwrap_or(""))
    {
        return Plan::Hyper;
    }
    let mut host: Option<&[u8]> = None;
    let mut close = false;
    let mut html = false;
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
            // The gateway's own bearer credentials are answered by the general path.
            if let Some((scheme, token)) = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.split_once(' '))
                && scheme.eq_ignore_ascii_case("bearer")
                && is_portcullis_bearer(token.trim())
            {
                return Plan::Hyper;
            }
        } else if name.eq_ignore_ascii_case("accept") {
            html = memmem::find(h.value, b"text/html").is_some();
        }
    }
    let Some(host) = host
        .and_then(|h| std::str::from_utf8(h).ok())
        .filter(|h| crate::server::host_allowed(gw, h))
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
    let Some(cookie) = cookies::read_from(cookie_values(), SESSION_COOKIE) else {
        return Plan::Hyper;
    };
    let start = cookie.as_ptr() as usize - buf.as_ptr() as usize;
    let cookie = start..start + cookie.len();

    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut cookies_written = false;
    for h in request.headers.iter() {
        let lower = Lowercase::new(h.name);
        let name = lower.as_str();
        if is_hop_by_hop(name) || is_gateway_owned(name) {
            continue;
        }
        if name == "cookie" {
            // The session cookie is always among them (the fast path needs it): all
            // Cookie headers become one, without the gateway's cookies.
            if !cookies_written {
                let mut pairs = cookies::foreign_pairs(cookie_values());
                if let Some(first) = pairs.next() {
                    out.extend_from_slice(b"cookie: ");
                    out.extend_from_slice(first.as_bytes());
                    for pair in pairs {
                        out.extend_from_slice(b"; ");
                        out.extend_from_slice(pair.as_bytes());
                    }
                    out.extend_from_slice(b"\r\n");
                }
            }
            cookies_written = true;
            continue;
        }
        push_header(out, h.name.as_bytes(), h.value);
    }
    out.extend_from_slice(forwarded);
    push_header(out, b"x-forwarded-host", host.as_bytes());
    Plan::Forward(Forward {
        head_len,
        cookie,
        close,
        head: method == "HEAD",
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
        ),
        html: html && (method == "GET" || method == "HEAD"),
    })
}

/// The `X-Forwarded-For` and `X-Forwarded-Proto` lines of a connection: what the
/// gateway saw, never what the client claimed.
fn forwarded_lines(gw: &Gateway, peer: SocketAddr) -> Vec<u8> {
    let proto = if gw.config().public_url.is_https() {
        "https"
    } else {
        "http"
    };
    format!(
        "x-forwarded-for: {}\r\nx-forwarded-proto: {proto}\r\n",
        peer.ip()
    )
    .into_bytes()
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn write_display(out: &mut Vec<u8>, value: impl std::fmt::Display) {
    use std::io::Write;
    let _ = write!(out, "{value}");
}

/// A header name in lower case, on the stack when short (nearly always).
struct Lowercase {
    bytes: [u8; 32],
    len: usize,
    long: Option<String>,
}

impl Lowercase {
    fn new(name: &str) -> Self {
        let mut bytes = [0u8; 32];
        if name.len() <= bytes.len() {
            for (to, from) in bytes.iter_mut().zip(name.bytes()) {
                *to = from.to_ascii_lowercase();
            }
            Self {
                bytes,
                len: name.len(),
                long: None,
            }
        } else {
            Self {
                bytes,
                len: 0,
                long: Some(name.to_ascii_lowercase()),
            }
        }
    }

    fn as_str(&self) -> &str {
        match &self.long {
            Some(long) => long,
            // Header names are ASCII tokens (httparse checks), so this never fails.
            None => std::str::from_utf8(&self.bytes[..self.len]).unwrap_or(""),
        }
    }
}

/// Why a relayed exchange failed.
enum Failure {
    /// Before any byte of a response reached the client: answer 502/504.
    Upstream(GatewayError),
    /// The client went away, or the response broke off after its head was sent:
    /// only closing the connection is left.
    Client,
}

struct Relayed {
    /// The client connection must close (the response was delimited by closing).
    close: bool,
}

/// How an upstream response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Sends the request head in `out` upstream and relays the response to `client`.
async fn relay(
    upstream: &UpstreamClient,
    client: &mut TcpStream,
    plan: &Forward,
    request: &[u8],
    out: &mut Vec<u8>,
    timer: &mut Timer,
) -> Result<Relayed, Failure> {
    let pool = upstream.raw();
    // The one clock reading of the exchange: its deadline and the pool's idle ages.
    let now = Instant::now();
    let exchange = async {
        let mut conn = pool.checkout(now).await?;
        match conn.send_and_read_head(request, plan, out).await {
            Ok(head) => Ok((conn, head)),
            // A pooled connection the upstream closed in the meantime: once more on
            // a new one, if the request may be repeated.
            Err(_) if conn.reused && plan.idempotent && conn.buf.is_empty() => {
                let mut fresh = pool.connect().await?;
                let head = fresh.send_and_read_head(request, plan, out).await?;
                Ok((fresh, head))
            }
            Err(e) => Err(e),
        }
    };
    let deadline = now + upstream.timeout();
    timer.arm(deadline);
    let (mut conn, (framing, mut reusable)) = tokio::select! {
        biased;
        exchanged = exchange => {
            exchanged.map_err(|e| Failure::Upstream(GatewayError::UpstreamUnavailable(e)))?
        }
        () = timer.expired(deadline) => return Err(Failure::Upstream(GatewayError::UpstreamTimeout)),
    };
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
                .map_err(|e| Failure::Upstream(GatewayError::UpstreamUnavailable(e.into())))?;
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
    Ok(Relayed { close })
}

/// Writes the client-facing head of the upstream response in `buf` to `out`:
/// status line, end-to-end headers, framing, `Date` if missing. Returns how the
/// body is delimited and whether the upstream connection may be reused.
fn response_head(
    response: &httparse::Response<'_, '_>,
    plan: &Forward,
    out: &mut Vec<u8>,
) -> Result<(Framing, bool), &'static str> {
    let (Some(version), Some(code)) = (response.version, response.code) else {
        return Err("malformed response head");
    };
    let mut reusable = version == 1;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut has_date = false;
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let digits = h.value.trim_ascii();
            let value = (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(digits).ok()?.parse::<u64>().ok())
                .flatten()
                .ok_or("invalid content-length")?;
            if length.is_some_and(|l| l != value) {
                return Err("conflicting content-length");
            }
            length = Some(value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err("unsupported transfer-encoding");
            }
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    reusable = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                    reusable = true;
                }
            }
        } else if h.name.eq_ignore_ascii_case("date") {
            has_date = true;
        }
    }
    if chunked && length.is_some() {
        // Both framings at once is how responses are smuggled; refuse it.
        return Err("both content-length and transfer-encoding");
    }
    let no_body = plan.head || code == 204 || code == 304;
    let framing = match (no_body, chunked, length) {
        (true, _, _) => Framing::Empty,
        (false, true, _) => Framing::Chunked,
        (false, false, Some(n)) => Framing::Length(n),
        (false, false, None) => Framing::UntilClose,
    };
    out.extend_from_slice(b"HTTP/1.1 ");
    // httparse reads exactly three digits.
    out.extend_from_slice(&[
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ]);
    out.push(b' ');
    out.extend_from_slice(response.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let named_in_connection = |name: &str| {
        response
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| h.value.split(|b| *b == b','))
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
    };
    for h in response.headers.iter() {
        let lower = Lowercase::new(h.name);
        let name = lower.as_str();
        if is_hop_by_hop(name)
            || (code == 204 && name == "content-length")
            || named_in_connection(name)
        {
            continue;
        }
        push_header(out, h.name.as_bytes(), h.value);
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !has_date {
        push_date(out);
    }
    // Delimited by the upstream closing, so by closing towards the client too; and
    // a client that asked to close is told the connection ends here.
    if framing == Framing::UntilClose || plan.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok((framing, reusable))
}

/// `date: <IMF-fixdate>\r\n`, formatted at most once a second per thread.
fn push_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs || text.is_empty() {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        push_header(out, b"date", text.as_bytes());
    });
}

/// Writes a response the gateway made (502/504) to the client.
async fn write_response(
    client: &mut TcpStream,
    response: axum::response::Response,
    close: bool,
) -> std::io::Result<()> {
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name != http::header::CONTENT_LENGTH {
            push_header(&mut out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    out.extend_from_slice(b"content-length: ");
    write_display(&mut out, body.len());
    out.extend_from_slice(b"\r\n");
    push_date(&mut out);
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    client.write_all(&out).await
}

/// A connection to the upstream, with its read buffer.
pub struct UpstreamConn {
    stream: TcpStream,
    buf: BytesMut,
    /// It came from the pool (so the upstream may have closed it meanwhile).
    reused: bool,
    head_len: usize,
    remaining: u64,
    chunked: Chunked,
}

impl UpstreamConn {
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            reused: false,
            head_len: 0,
            remaining: 0,
            chunked: Chunked::default(),
        }
    }

    /// Sends `request` and reads until a final (non-1xx) response head is complete.
    /// Sends `request`, reads the final response head and writes its client-facing
    /// version to `back` (see [`response_head`]).
    async fn send_and_read_head(
        &mut self,
        request: &[u8],
        plan: &Forward,
        back: &mut Vec<u8>,
    ) -> Result<(Framing, bool), String> {
        self.buf.clear();
        self.chunked = Chunked::default();
        self.stream
            .write_all(request)
            .await
            .map_err(|e| format!("sending the request: {e}"))?;
        loop {
            let mut headers = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut []);
            let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut response,
                &self.buf,
                &mut headers,
            );
            match parsed {
                Ok(httparse::Status::Complete(len)) => match response.code {
                    // Interim responses (100, 102, 103) are not forwarded.
                    Some(code) if (100..200).contains(&code) && code != 101 => {
                        self.buf.advance(len);
                        continue;
                    }
                    Some(101) => return Err("unexpected 101 Switching Protocols".into()),
                    _ => {
                        self.head_len = len;
                        back.clear();
                        return response_head(&response, plan, back).map_err(String::from);
                    }
                },
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(format!("malformed response head: {e}")),
            }
            if self.buf.len() >= MAX_RESPONSE_HEAD {
                return Err("response head too large".into());
            }
            self.buf
                .reserve(READ_CHUNK.min(MAX_RESPONSE_HEAD - self.buf.len()));
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) => return Err("connection closed before a response".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("reading the response: {e}")),
            }
        }
    }

    /// Relays the rest of the body (what was not in the first write) to `client`.
    async fn stream_body(&mut self, framing: Framing, client: &mut TcpStream) -> Result<(), ()> {
        loop {
            self.buf.clear();
            self.buf.reserve(READ_CHUNK);
            let read = self.stream.read_buf(&mut self.buf).await.map_err(drop)?;
            match framing {
                Framing::Empty => return Ok(()),
                Framing::Length(_) => {
                    if read == 0 {
                        return Err(());
                    }
                    let now = (read as u64).min(self.remaining) as usize;
                    client.write_all(&self.buf[..now]).await.map_err(drop)?;
                    self.remaining -= now as u64;
                    self.buf.advance(now);
                    if self.remaining == 0 {
                        return Ok(());
                    }
                }
                Framing::Chunked => {
                    if read == 0 {
                        return Err(());
                    }
                    let n = self.chunked.scan(&self.buf).map_err(drop)?;
                    client.write_all(&self.buf[..n]).await.map_err(drop)?;
                    self.buf.advance(n);
                    if self.chunked.done() {
                        return Ok(());
                    }
                }
                Framing::UntilClose => {
                    if read == 0 {
                        return Ok(());
                    }
                    client.write_all(&self.buf).await.map_err(drop)?;
                }
            }
        }
    }
}

/// Idle keep-alive connections to the upstream, one pool per event loop.
#[derive(Debug)]
pub struct RawPool {
    addr: String,
    idle: Mutex<VecDeque<(UpstreamConn, Instant)>>,
}

impl std::fmt::Debug for UpstreamConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConn")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl RawPool {
    pub fn new(authority: &http::uri::Authority) -> Self {
        let port = authority.port_u16().unwrap_or(80);
        Self {
            addr: format!("{}:{port}", authority.host()),
            idle: Mutex::new(VecDeque::new()),
        }
    }

    /// The most recently used idle connection that is still open, or a new one.
    async fn checkout(&self, now: Instant) -> Result<UpstreamConn, String> {
        loop {
            let next = self
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_back();
            let Some((mut conn, since)) = next else { break };
            if now.saturating_duration_since(since) > IDLE_TIMEOUT {
                continue;
            }
            // An idle connection must have nothing to read: data or EOF means the
            // upstream closed it (or broke the protocol). No system call when the
            // reactor has seen nothing.
            let mut probe = [0u8; 1];
            match conn.stream.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    conn.reused = true;
                    return Ok(conn);
                }
                _ => continue,
            }
        }
        self.connect().await
    }

    async fn connect(&self) -> Result<UpstreamConn, String> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        Ok(UpstreamConn::new(stream))
    }

    /// Returns `conn`, last used at `now`; connections idle too long leave the
    /// other end (the oldest).
    fn checkin(&self, conn: UpstreamConn, now: Instant) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while idle
            .front()
            .is_some_and(|(_, since)| now.saturating_duration_since(*since) > IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        if idle.len() < MAX_IDLE {
            idle.push_back((conn, now));
        }
    }
}

/// Incremental checker of a chunked body (RFC 9112 section 7.1), strict: sizes of
/// at most 16 hex digits, CRLF line ends, visible ASCII in extensions and
/// trailers, a bounded trailer section. The bytes are forwarded as they are.
#[derive(Debug, Default, Clone)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
    trailer_bytes: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// A chunked body that is not well formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError(&'static str);

impl From<ChunkError> for String {
    fn from(e: ChunkError) -> Self {
        format!("malformed chunked body: {}", e.0)
    }
}

impl Chunked {
    /// Checks `input`, the next bytes of the body; returns how many belong to it
    /// (fewer than all only when the body ends inside `input`).
    pub fn scan(&mut self, input: &[u8]) -> Result<usize, ChunkError> {
        use ChunkState::*;
        let mut i = 0;
        while i < input.len() {
            match self.state {
                Done => return Ok(i),
                Data => {
                    let take = self.size.min((input.len() - i) as u64);
                    i += take as usize;
                    self.size -= take;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                _ => {}
            }
            let b = input[i];
            i += 1;
            let text = b == b'\t' || (0x20..0x7f).contains(&b);
            self.state = match (self.state, b) {
                (Size, b) if b.is_ascii_hexdigit() => {
                    if self.digits == 16 {
                        return Err(ChunkError("chunk size too large"));
                    }
                    self.digits += 1;
                    self.size = (self.size << 4) | u64::from(hex_value(b));
                    Size
                }
                (Size, b';' | b' ' | b'\t') if self.digits > 0 => Extension,
                (Size, b'\r') if self.digits > 0 => SizeLf,
                (Extension, b'\r') => SizeLf,
                (Extension, _) if text => Extension,
                (SizeLf, b'\n') => {
                    self.digits = 0;
                    if self.size == 0 { TrailerStart } else { Data }
                }
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => Size,
                (TrailerStart, b'\r') => EndLf,
                (TrailerStart | Trailer, _) if text => {
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err(ChunkError("trailers too large"));
                    }
                    Trailer
                }
                (Trailer, b'\r') => TrailerLf,
                (TrailerLf, b'\n') => TrailerStart,
                (EndLf, b'\n') => Done,
                _ => return Err(ChunkError("unexpected byte")),
            };
        }
        Ok(i)
    }

    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// Reads as one stream: first the bytes the fast path had read, then the socket.
/// What hyper serves after a hand-off.
#[derive(Debug)]
pub struct Prefixed {
    prefix: bytes::Bytes,
    inner: TcpStream,
}

impl Prefixed {
    pub fn new(prefix: bytes::Bytes, inner: TcpStream) -> Self {
        Self { prefix, inner }
    }
}

impl tokio::io::AsyncRead for Prefixed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Free the fast path's read buffer rather than keep it for the
                // connection's life (a WebSocket's can be long).
                self.prefix = bytes::Bytes::new();
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl tokio::io::AsyncWrite for Prefixed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_delimited_exactly() {
        // (name, body, bytes that belong to it, complete)
        let rows: &[(&str, &[u8], usize, bool)] = &[
            ("one chunk", b"5\r\nhello\r\n0\r\n\r\n", 15, true),
            ("extension", b"5;a=b\r\nhello\r\n0\r\n\r\n", 19, true),
            ("trailer", b"1\r\nx\r\n0\r\nx-t: 1\r\n\r\n", 19, true),
            ("bytes after the end", b"0\r\n\r\nGET / HTTP/1.1", 5, true),
            ("upper-case hex", b"A\r\n0123456789\r\n0\r\n\r\n", 20, true),
            ("cut in the data", b"5\r\nhel", 6, false),
            ("cut in the size line", b"5", 1, false),
        ];
        for (name, body, belongs, complete) in rows {
            let mut scan = Chunked::default();
            assert_eq!(scan.scan(body), Ok(*belongs), "{name}");
            assert_eq!(scan.done(), *complete, "{name}");
        }
    }

    #[test]
    fn any_split_gives_the_same_result() {
        let body = b"3;x\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nt: v\r\n\r\n";
        for split in 0..body.len() {
            let mut scan = Chunked::default();
            let first = scan.scan(&body[..split]).unwrap();
            assert_eq!(first, split);
            assert_eq!(scan.scan(&body[split..]), Ok(body.len() - split));
            assert!(scan.done(), "split at {split}");
        }
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        let rows: &[(&str, &[u8])] = &[
            ("no size", b"\r\nhello\r\n"),
            ("not hex", b"g\r\n"),
            ("size too large", b"11111111111111111\r\n"),
            ("bare LF after size", b"5\nhello\r\n"),
            ("data longer than size", b"2\r\nabc\r\n"),
            ("control byte in extension", b"1;\x01\r\nx\r\n"),
            ("bare LF ends", b"0\r\n\n"),
            ("negative size", b"-1\r\n"),
        ];
        for (name, body) in rows {
            assert!(Chunked::default().scan(body).is_err(), "{name}");
        }
        let mut scan = Chunked::default();
        scan.scan(b"0\r\n").unwrap();
        let huge = vec![b'a'; MAX_TRAILERS + 1];
        assert!(scan.scan(&huge).is_err(), "trailers over the limit");
    }
}
