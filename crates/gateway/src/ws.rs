//! WebSocket upgrades: authenticated by the same phase as every request, then
//! relayed as bytes, verbatim, while the relay tracks frame headers
//! (`ws_frames`) so the gateway can still end a connection with a close
//! code of its own (4401) between two frames when the session dies. An opaque byte
//! pipe could only drop the TCP connection, which browsers report as an
//! uninformative 1006.
//!
//! `Sec-WebSocket-Extensions` is not forwarded: no extension may be negotiated end
//! to end (the relay refuses frames with reserved bits), so frames stay readable.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use futures_util::StreamExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use crate::auth::{
    Authenticated, Outcome, authenticate_bearer_value, authenticate_outcome, authenticate_ticket,
    portcullis_bearer,
};
use crate::config::WsReject;
use crate::error::GatewayError;
use crate::live::{EndReason, REASON_EXPIRED, Registration};
use crate::proxy::{UpstreamClient, upstream_headers};
use crate::state::Gateway;
use crate::ws_frames::{self, FrameTracker};
use base64::Engine as _;
use portcullis_core::identity::PrincipalKind;
use portcullis_core::subprotocol::{Offer, answer, parse_offer};

/// Close code for "your session ended; sign in again" (SPEC 6.4, 6.5).
pub const CLOSE_SESSION_ENDED: u16 = 4401;
/// Close code for "the credential presented was refused" (SPEC 6.5).
pub const CLOSE_REJECTED: u16 = 4403;
/// The upstream refused or failed the WebSocket. 1011 ("unexpected condition")
/// rather than the later-registered 1014 ("bad gateway"), which strict clients
/// still treat as reserved and answer with a protocol error.
pub const CLOSE_UPSTREAM_FAILED: u16 = 1011;
/// How often a live connection re-checks its session's absolute expiry.
const EXPIRY_CHECK: Duration = Duration::from_secs(1);
/// How long a closing connection waits for the other side's close reply.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Message and frame limits: generous for dashboards (kernel outputs, terminal
/// bursts) while bounding what one message can make the gateway hold.
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(16 << 20))
}

/// Whether the request asks to become a WebSocket.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    let has_token = |name, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has_token(header::UPGRADE, "websocket") && has_token(header::CONNECTION, "upgrade")
}

/// The first value of query parameter `name`, percent-decoded.
pub fn query_param(uri: &http::Uri, name: &str) -> Option<String> {
    uri.query()?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| {
            percent_encoding::percent_decode_str(value)
                .decode_utf8_lossy()
                .into_owned()
        })
}

/// `path?query` with every `name=` parameter removed: gateway credentials in the
/// URL are never forwarded upstream.
pub fn without_query_param(uri: &http::Uri, name: &str) -> String {
    let path = uri.path();
    let Some(query) = uri.query() else {
        return path.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| pair.split('=').next() != Some(name))
        .collect();
    if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

/// Authenticates an upgrade with the first credential present, in the precedence
/// of SPEC 6: `?ticket=`, the JEP 121 subprotocol token, `Authorization: Bearer`,
/// `?token=` (when enabled), the session cookie. Also returns the parsed subprotocol
/// offer the relay forwards (without the JEP 121 entries).
pub async fn authenticate_upgrade(
    gw: &Gateway,
    parts: &http::request::Parts,
    peer: SocketAddr,
) -> (Result<Outcome, GatewayError>, Offer) {
    let offer = parse_offer(
        parts
            .headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let offer = match offer {
        Ok(offer) => offer,
        Err(error) => {
            tracing::debug!(%error, "malformed subprotocol token");
            return (Ok(Outcome::Rejected), Offer::default());
        }
    };
    let outcome = if let Some(ticket) = query_param(&parts.uri, "ticket") {
        authenticate_ticket(gw, &ticket, peer).await
    } else if let Some(token) = &offer.token {
        authenticate_bearer_value(gw, token, peer).await
    } else if portcullis_bearer(&parts.headers).is_some() {
        authenticate_outcome(gw, &parts.headers, peer).await
    } else if let Some(token) = query_token(gw, &parts.uri) {
        authenticate_bearer_value(gw, &token, peer).await
    } else {
        authenticate_outcome(gw, &parts.headers, peer).await
    };
    if let Ok(Outcome::Authenticated(auth)) = &outcome
        && PrincipalKind::of(auth.session_id()) == PrincipalKind::Internal
    {
        // Long-lived connections of spawned processes: each one is on record.
        let mut event = gw.audit_event(
            portcullis_core::internal::SUBJECT,
            "auth.internal_credential",
            "success",
        );
        event.target = Some(parts.uri.path().to_owned());
        event.ip = Some(peer.ip().to_string());
        gw.audit(event).await;
    }
    (outcome, offer)
}

/// `?token=` when enabled and holding one of our credentials; anything else in
/// `token` is the upstream's own (Jupyter uses that name too).
fn query_token(gw: &Gateway, uri: &http::Uri) -> Option<String> {
    if !gw.config().ws_query_token {
        return None;
    }
    query_param(uri, "token").filter(|t| crate::auth::is_portcullis_bearer(t))
}

/// Cookies are a browser credential, and browsers always send `Origin` on a
/// WebSocket handshake, so a cookie-authenticated upgrade must carry the public
/// origin. A missing `Origin` is refused too: a non-browser client should present a
/// bearer credential, and refusing closes the cross-site hijacking hole for good.
pub fn origin_allowed(gw: &Gateway, headers: &HeaderMap) -> bool {
    headers
        .get(header::ORIGIN)
        .is_some_and(|o| o.as_bytes() == gw.config().public_url.origin().as_bytes())
}

/// Why an upgrade is refused.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    /// No credential at all: 401 or close 4401.
    NoCredential,
    /// A credential was presented and refused: 403 or close 4403.
    Rejected(&'static str),
}

fn accept_key(headers: &HeaderMap) -> Option<String> {
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?;
    version_ok.then(|| derive_accept_key(key.as_bytes()))
}

fn switching_protocols(accept: &str, protocol: Option<HeaderValue>) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(protocol) = protocol {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    response
}

/// Completes the handshake and immediately closes with `code` and `reason`: the one
/// way a browser's script can learn why it was turned away.
fn accept_then_close(
    mut request: Request<Incoming>,
    accept: &str,
    code: u16,
    reason: &'static str,
) -> Response<Body> {
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config()))
                .await;
        let _ = socket.close(Some(close_frame(code, reason))).await;
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while socket.next().await.is_some() {}
        })
        .await;
    });
    switching_protocols(accept, None)
}

fn close_frame(code: u16, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }
}

/// Turns an upgrade away, by status code (default) or by close code
/// (`--ws-reject=close`).
pub fn refuse(gw: &Gateway, request: Request<Incoming>, refusal: Refusal) -> Response<Body> {
    let (status_error, code, reason) = match refusal {
        Refusal::NoCredential => (
            GatewayError::Unauthenticated,
            CLOSE_SESSION_ENDED,
            "authentication required",
        ),
        Refusal::Rejected(why) => (GatewayError::Forbidden, CLOSE_REJECTED, why),
    };
    match (gw.config().ws_reject, accept_key(request.headers())) {
        (WsReject::Close, Some(accept)) => accept_then_close(request, &accept, code, reason),
        _ => status_error.into_response(),
    }
}

/// The upstream side of a relayed connection, after its handshake.
type Upstream = hyper::upgrade::Upgraded;

/// Connects to the upstream WebSocket with the request's (rewritten) headers: a
/// plain HTTP/1.1 upgrade through hyper, whose upgraded stream keeps any bytes the
/// upstream sent right after its 101 (a greeting frame is never lost).
async fn connect_upstream(
    gw: &Gateway,
    client: &UpstreamClient,
    peer: SocketAddr,
    auth: &Authenticated,
    offer: &Offer,
    request: &Request<Incoming>,
) -> Result<(Upstream, Option<HeaderValue>), String> {
    let mut path = without_query_param(request.uri(), "ticket");
    if query_token(gw, request.uri()).is_some() {
        let uri: http::Uri = path
            .parse()
            .map_err(|e: http::uri::InvalidUri| e.to_string())?;
        path = without_query_param(&uri, "token");
    }
    let mut headers = request.headers().clone();
    upstream_headers(
        &mut headers,
        auth.session.identity_headers(),
        peer,
        gw.config().public_url.scheme.as_str(),
    );
    if !auth.via_cookie {
        // A bearer credential was ours; the upstream never sees it.
        headers.remove(header::AUTHORIZATION);
    }
    // The upstream handshake gets its own key and version; no extension may be
    // negotiated (the relay refuses compressed frames).
    for name in [
        header::SEC_WEBSOCKET_KEY,
        header::SEC_WEBSOCKET_VERSION,
        header::SEC_WEBSOCKET_EXTENSIONS,
        header::SEC_WEBSOCKET_ACCEPT,
        header::SEC_WEBSOCKET_PROTOCOL,
    ] {
        headers.remove(name);
    }
    // The offer minus the JEP 121 entries: the token never reaches the upstream.
    if !offer.forwarded.is_empty()
        && let Ok(value) = HeaderValue::from_str(&offer.forwarded.join(", "))
    {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
    }
    let mut key_bytes = [0u8; 16];
    gw.0.entropy
        .fill(&mut key_bytes)
        .map_err(|e| e.to_string())?;
    let key = base64::engine::general_purpose::STANDARD.encode(key_bytes);
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    );
    headers.insert(
        header::SEC_WEBSOCKET_KEY,
        HeaderValue::from_str(&key).map_err(|e| e.to_string())?,
    );
    if !headers.contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(client.authority().as_str())
    {
        headers.insert(header::HOST, host);
    }
    let mut upstream_request = Request::new(http_body_util::Empty::<bytes::Bytes>::new());
    *upstream_request.uri_mut() = path
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    *upstream_request.headers_mut() = headers;

    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(client.authority().as_str())
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection.with_upgrades());
        let response = sender
            .send_request(upstream_request)
            .await
            .map_err(|e| e.to_string())?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(format!("upstream answered {}", response.status()));
        }
        let accepted = response
            .headers()
            .get(header::SEC_WEBSOCKET_ACCEPT)
            .is_some_and(|v| v.as_bytes() == derive_accept_key(key.as_bytes()).as_bytes());
        if !accepted {
            return Err("upstream sent a wrong Sec-WebSocket-Accept".into());
        }
        if response
            .headers()
            .contains_key(header::SEC_WEBSOCKET_EXTENSIONS)
        {
            return Err("upstream negotiated an extension that was not offered".into());
        }
        let selected = response
            .headers()
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let upgraded = hyper::upgrade::on(response)
            .await
            .map_err(|e| e.to_string())?;
        Ok((upgraded, selected))
    };
    match tokio::time::timeout(client.timeout(), handshake).await {
        Ok(Ok((upgraded, selected))) => {
            let protocol =
                answer(offer, selected.as_deref()).and_then(|p| HeaderValue::from_str(p).ok());
            Ok((upgraded, protocol))
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err("upstream handshake timed out".into()),
    }
}

/// Relays an authenticated upgrade to the upstream.
pub async fn relay(
    gw: &Gateway,
    client: &UpstreamClient,
    peer: SocketAddr,
    auth: Authenticated,
    offer: Offer,
    mut request: Request<Incoming>,
) -> Response<Body> {
    let Some(accept) = accept_key(request.headers()) else {
        return GatewayError::BadRequest(
            "WebSocket handshake needs Sec-WebSocket-Key and version 13",
        )
        .into_response();
    };
    let (upstream, protocol) =
        match connect_upstream(gw, client, peer, &auth, &offer, &request).await {
            Ok(pair) => pair,
            Err(detail) => {
                tracing::warn!(%detail, "upstream WebSocket failed");
                return accept_then_close(
                    request,
                    &accept,
                    CLOSE_UPSTREAM_FAILED,
                    "upstream unavailable",
                );
            }
        };
    let registration = gw.0.live.register(auth.session_id());
    let upgrade = hyper::upgrade::on(&mut request);
    let gw = gw.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        pump(&gw, &auth, registration, upgraded, upstream).await;
    });
    switching_protocols(&accept, protocol)
}

/// Why a relay stopped.
enum Stop {
    /// Both sides finished on their own (close handshake, then end of stream).
    Finished,
    /// A side broke the protocol or the connection failed.
    Failed,
    Ended(EndReason),
    Lifetime,
}

/// Resolves when the session ends: revoked (pushed by the registry) or past its
/// absolute expiry (checked every [`EXPIRY_CHECK`] against the gateway's clock).
async fn session_over(gw: &Gateway, registration: &mut Registration, expires_ms: i64) -> EndReason {
    loop {
        tokio::select! {
            reason = registration.ended() => return reason,
            () = tokio::time::sleep(EXPIRY_CHECK) => {
                if gw.0.clock.now_ms() >= expires_ms {
                    return REASON_EXPIRED;
                }
            }
        }
    }
}

/// Read buffer per direction while data flows: large enough for a burst of
/// terminal output in one system call.
const RELAY_BUFFER: usize = 64 * 1024;
/// Read buffer per direction of a quiet connection (most of them, most of the
/// time: idle terminals and kernels), so that many open WebSockets cost little.
const QUIET_BUFFER: usize = 4 * 1024;
/// Consecutive small reads after which a large buffer is given back.
const QUIET_READS: u32 = 32;

/// A read buffer that grows when a read fills it and shrinks back after a run of
/// small reads.
struct ReadBuffer {
    bytes: Vec<u8>,
    small_reads: u32,
}

impl ReadBuffer {
    fn new() -> Self {
        Self {
            bytes: vec![0u8; QUIET_BUFFER],
            small_reads: 0,
        }
    }

    /// Adjusts the size after a read of `n` bytes.
    fn after_read(&mut self, n: usize) {
        if n == self.bytes.len() && self.bytes.len() < RELAY_BUFFER {
            self.bytes = vec![0u8; RELAY_BUFFER];
            self.small_reads = 0;
        } else if self.bytes.len() > QUIET_BUFFER && n <= QUIET_BUFFER {
            self.small_reads += 1;
            if self.small_reads >= QUIET_READS {
                self.bytes = vec![0u8; QUIET_BUFFER];
                self.small_reads = 0;
            }
        } else {
            self.small_reads = 0;
        }
    }
}

/// One direction of the relay: bytes pass verbatim; only frame headers are read.
struct Direction<R, W> {
    reader: R,
    writer: W,
    tracker: FrameTracker,
    /// A write was interrupted: the peer has part of a frame, nothing may be
    /// injected any more.
    torn: bool,
    /// Sent to the receiver when the sender vanishes without a close frame.
    on_vanish: Vec<u8>,
}

/// How one direction ended.
enum DirectionEnd {
    /// The sender closed its stream.
    Eof,
    Failed,
    /// Told to stop.
    Stopped,
}

impl<R, W> Direction<R, W>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    /// Copies until the sender ends, something fails, or `stop` fires. Each write
    /// completes before the next read: backpressure, not buffering.
    async fn run(&mut self, stop: &mut tokio::sync::watch::Receiver<bool>) -> DirectionEnd {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut reads = ReadBuffer::new();
        loop {
            let n = tokio::select! {
                read = self.reader.read(&mut reads.bytes) => match read {
                    Ok(0) => {
                        self.vanished().await;
                        let _ = self.writer.shutdown().await;
                        return DirectionEnd::Eof;
                    }
                    Ok(n) => n,
                    Err(_) => {
                        self.vanished().await;
                        return DirectionEnd::Failed;
                    }
                },
                () = stopped(stop) => return DirectionEnd::Stopped,
            };
            let buf = &reads.bytes;
            if let Err((error, deliverable)) = self.tracker.feed(&buf[..n]) {
                // Whole frames before the violation still reach the peer.
                tracing::debug!(%error, "WebSocket protocol violation; closing");
                let _ = tokio::time::timeout(CLOSE_GRACE, async {
                    let _ = self.writer.write_all(&buf[..deliverable]).await;
                    let _ = self.writer.flush().await;
                })
                .await;
                return DirectionEnd::Failed;
            }
            self.torn = true;
            tokio::select! {
                written = self.writer.write_all(&buf[..n]) => {
                    if written.is_err() {
                        return DirectionEnd::Failed;
                    }
                    self.torn = false;
                }
                () = stopped(stop) => return DirectionEnd::Stopped,
            }
            reads.after_read(n);
        }
    }

    /// The sender is gone. Unless it said goodbye (a close frame passed), tell the
    /// receiver clearly (1011 to a client, 1001 to the upstream) rather than leave
    /// it with a bare end of stream.
    async fn vanished(&mut self) {
        let frame = std::mem::take(&mut self.on_vanish);
        let _ = tokio::time::timeout(CLOSE_GRACE, self.inject_close(&frame)).await;
    }

    /// Sends a close frame if the stream is between frames and intact.
    async fn inject_close(&mut self, frame: &[u8]) {
        use tokio::io::AsyncWriteExt;
        if frame.is_empty() || self.torn || !self.tracker.at_boundary() || self.tracker.saw_close()
        {
            return;
        }
        let _ = self.writer.write_all(frame).await;
        let _ = self.writer.flush().await;
    }
}

/// Moves bytes both ways until both sides have finished, either fails, or the
/// session ends (then each side gets a close frame between two frames: 4401 with
/// the reason to the client, 1001 to the upstream).
async fn pump(
    gw: &Gateway,
    auth: &Authenticated,
    mut registration: Registration,
    client: hyper::upgrade::Upgraded,
    upstream: Upstream,
) {
    let expires_ms = auth.session.session.expires_ms;
    let (client_read, client_write) = tokio::io::split(TokioIo::new(client));
    let (upstream_read, upstream_write) = tokio::io::split(TokioIo::new(upstream));
    let mut to_upstream = Direction {
        reader: client_read,
        writer: upstream_write,
        tracker: FrameTracker::new(true),
        torn: false,
        on_vanish: ws_frames::close_frame(1001, "client connection lost", Some(mask(gw))),
    };
    let mut to_client = Direction {
        reader: upstream_read,
        writer: client_write,
        tracker: FrameTracker::new(false),
        torn: false,
        on_vanish: ws_frames::close_frame(CLOSE_UPSTREAM_FAILED, "upstream connection lost", None),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop = {
        let (mut rx_a, mut rx_b) = (stop_rx.clone(), stop_rx);
        let (up, down) = (&mut to_upstream, &mut to_client);
        let lifetime = async {
            match gw.config().ws_max_lifetime {
                Some(max) => tokio::time::sleep(max).await,
                None => std::future::pending().await,
            }
        };
        let over = session_over(gw, &mut registration, expires_ms);
        let stop_tx = &stop_tx;
        let directions = async move {
            // A failure on either side ends both; an end of stream waits for the other.
            let a = async {
                let end = up.run(&mut rx_a).await;
                if matches!(end, DirectionEnd::Failed) {
                    let _ = stop_tx.send(true);
                }
                end
            };
            let b = async {
                let end = down.run(&mut rx_b).await;
                if matches!(end, DirectionEnd::Failed) {
                    let _ = stop_tx.send(true);
                }
                end
            };
            let (a, b) = tokio::join!(a, b);
            if matches!((a, b), (DirectionEnd::Eof, DirectionEnd::Eof)) {
                Stop::Finished
            } else {
                Stop::Failed
            }
        };
        tokio::pin!(directions, over, lifetime);
        let stop = tokio::select! {
            stop = &mut directions => stop,
            reason = &mut over => Stop::Ended(reason),
            () = &mut lifetime => Stop::Lifetime,
        };
        if matches!(stop, Stop::Ended(_) | Stop::Lifetime) {
            // Both directions return at once, between two reads or mid-write.
            let _ = stop_tx.send(true);
            let _ = directions.await;
        }
        stop
    };
    let (to_client_frame, to_upstream_frame) = match stop {
        Stop::Finished | Stop::Failed => return,
        Stop::Ended(reason) => (
            ws_frames::close_frame(CLOSE_SESSION_ENDED, reason, None),
            ws_frames::close_frame(1001, "client session ended", Some(mask(gw))),
        ),
        // Not a session end: 1001 tells the client to simply reconnect.
        Stop::Lifetime => (
            ws_frames::close_frame(1001, "maximum connection lifetime reached", None),
            ws_frames::close_frame(1001, "maximum connection lifetime reached", Some(mask(gw))),
        ),
    };
    // A peer that stopped reading cannot hold the close up.
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        tokio::join!(
            to_client.inject_close(&to_client_frame),
            to_upstream.inject_close(&to_upstream_frame)
        )
    })
    .await;
    // Let both sides answer and hang up, reading (and discarding) what they still
    // send, so no unread data turns the close into a reset; never wait forever.
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = tokio::join!(to_client.writer.shutdown(), to_upstream.writer.shutdown());
        let mut sink = vec![0u8; 4096];
        let mut sink2 = vec![0u8; 4096];
        tokio::join!(
            async { while matches!(to_upstream.reader.read(&mut sink).await, Ok(n) if n > 0) {} },
            async { while matches!(to_client.reader.read(&mut sink2).await, Ok(n) if n > 0) {} },
        )
    })
    .await;
}

/// Resolves once `stop` is set (or its sender is gone).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await.map(|_| ());
}

/// A fresh masking key for a frame the gateway sends as a client.
fn mask(gw: &Gateway) -> [u8; 4] {
    let mut key = [0u8; 4];
    let _ = gw.0.entropy.fill(&mut key);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_buffers_grow_under_load_and_shrink_when_quiet() {
        let mut reads = ReadBuffer::new();
        assert_eq!(reads.bytes.len(), QUIET_BUFFER, "a new connection");
        reads.after_read(100);
        assert_eq!(reads.bytes.len(), QUIET_BUFFER);
        reads.after_read(QUIET_BUFFER);
        assert_eq!(reads.bytes.len(), RELAY_BUFFER, "a read filled it");
        for _ in 1..QUIET_READS {
            reads.after_read(10);
        }
        reads.after_read(RELAY_BUFFER / 2);
        assert_eq!(
            reads.bytes.len(),
            RELAY_BUFFER,
            "a large read resets the count"
        );
        for _ in 1..QUIET_READS {
            reads.after_read(10);
        }
        assert_eq!(reads.bytes.len(), RELAY_BUFFER);
        reads.after_read(10);
        assert_eq!(reads.bytes.len(), QUIET_BUFFER, "quiet again");
    }

    #[test]
    fn ticket_parameter_is_read_and_stripped() {
        let rows = [
            ("/ws?ticket=abc", Some("abc"), "/ws"),
            ("/ws?a=1&ticket=abc&b=2", Some("abc"), "/ws?a=1&b=2"),
            ("/ws?ticketx=1", None, "/ws?ticketx=1"),
            ("/ws?ticket=a%2Db", Some("a-b"), "/ws"),
            ("/ws?ticket=1&ticket=2", Some("1"), "/ws"),
            ("/ws", None, "/ws"),
        ];
        for (uri, ticket, forwarded) in rows {
            let uri: http::Uri = uri.parse().unwrap();
            assert_eq!(query_param(&uri, "ticket").as_deref(), ticket, "{uri}");
            assert_eq!(without_query_param(&uri, "ticket"), forwarded, "{uri}");
        }
    }
}
