//! WebSocket upgrades: the pipeline's phases, then a relay of bytes, verbatim,
//! that tracks frame headers (`ws_frames`) so the gateway can still end a
//! connection with a close code of its own (4401) between two frames when the
//! session dies. An opaque byte pipe could only drop the TCP connection, which
//! browsers report as an uninformative 1006.
//!
//! A connection is registered under its principal before the upstream is
//! contacted, so a revocation that lands during the upstream handshake is never
//! missed. `Sec-WebSocket-Extensions` is not forwarded: no extension may be
//! negotiated end to end (the relay refuses frames with reserved bits), so frames
//! stay readable.

use portcullis_core::audit::AuditAction;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use base64::Engine as _;
use futures_util::StreamExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use portcullis_core::identity::PrincipalKind;
use portcullis_core::subprotocol::{Offer, answer, parse_offer};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use crate::config::WsReject;
use crate::error::{CLOSE_SESSION_ENDED, CLOSE_UPSTREAM_FAILED, GatewayError};
use crate::host::request_host;
use crate::identity::IdentityFields;
use crate::live::{EndReason, REASON_EXPIRED, Registration};
use crate::pipeline::authorize::{UpstreamAccess, authorize_upstream, method_overrides, route};
use crate::pipeline::{Authenticated, Outcome, RequestContext, authenticate};
use crate::state::Gateway;
use crate::upstream::rewrite::{UpstreamRewrite, upstream_target, with_query};
use crate::upstream::{UpstreamClient, websocket};
use crate::ws_frames::{self, FrameTracker};

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

/// The connection's place under the caps (see `server::Connection`), which a
/// relay task keeps while the socket lives.
fn admitted_slot(
    request: &Request<Incoming>,
) -> Option<std::sync::Arc<crate::admission::Admitted>> {
    request
        .extensions()
        .get::<std::sync::Arc<crate::admission::Admitted>>()
        .cloned()
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
    let slot = admitted_slot(&request);
    tokio::spawn(async move {
        let _slot = slot;
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

/// An upgrade outside the auth prefix: authenticate (SPEC 6 carrier order, the
/// subprotocol offer included), authorize, register, rewrite, open the upstream
/// WebSocket, answer 101 and relay until either side ends or the session dies.
pub async fn handle(
    gw: &Gateway,
    client: &UpstreamClient,
    ctx: &mut RequestContext,
    request: Request<Incoming>,
) -> Response<Body> {
    let offer = parse_offer(
        request
            .headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let offer = match offer {
        Ok(offer) => offer,
        Err(error) => {
            tracing::debug!(%error, "malformed subprotocol token");
            return refuse(gw, request, GatewayError::CredentialRejected);
        }
    };
    let Some(path) = crate::proxy::upstream_path(gw, request.uri().path()) else {
        return refuse(gw, request, GatewayError::BadRequest("request path"));
    };
    let headers = request.headers();
    let overrides = method_overrides(headers, request.uri().query());
    let overrides: Vec<&str> = overrides.iter().map(AsRef::as_ref).collect();
    let access = UpstreamAccess {
        method: request.method(),
        host: request_host(headers, request.uri()),
        path: &path,
        query: request.uri().query(),
        method_overrides: &overrides,
        origin: headers.get(header::ORIGIN).map(HeaderValue::as_bytes),
        upgrade: true,
    };
    let decision = route(gw, &access);
    if decision.is_anonymous() {
        // An anonymous route: no credential is read, none is forwarded.
        return relay(gw, client, ctx, None, offer, request, &path).await;
    }
    // authenticate
    let outcome = authenticate(gw, headers, request.uri(), Some(&offer), ctx.peer).await;
    let auth = match outcome {
        Ok(Outcome::Authenticated(auth)) => auth,
        Ok(Outcome::NoCredential) => return refuse(gw, request, GatewayError::Unauthenticated),
        Ok(Outcome::Rejected) => return refuse(gw, request, GatewayError::CredentialRejected),
        Err(e) => return e.into_response(),
    };
    // authorize
    if let Err(e) = authorize_upstream(gw, &auth, &access, &decision) {
        return refuse(gw, request, e);
    }
    if PrincipalKind::of(auth.session_id()) == PrincipalKind::Internal {
        // Long-lived connections of spawned processes: each one is on record.
        let mut event = gw.audit_event(
            portcullis_core::internal::SUBJECT,
            AuditAction::InternalCredentialUse,
            "success",
        );
        event.target = Some(request.uri().path().to_owned());
        event.ip = Some(ctx.peer.ip().to_string());
        gw.audit(event).await;
    }
    ctx.principal = Some(auth.clone());
    relay(gw, client, ctx, Some(auth), offer, request, &path).await
}

/// Turns an upgrade away, by status code (default) or by close code
/// (`--ws-reject=close`); both decided by [`GatewayError`].
fn refuse(gw: &Gateway, request: Request<Incoming>, error: GatewayError) -> Response<Body> {
    match (
        gw.config().ws_reject,
        error.close(),
        accept_key(request.headers()),
    ) {
        (WsReject::Close, Some((code, reason)), Some(accept)) => {
            accept_then_close(request, &accept, code, reason)
        }
        _ => error.into_response(),
    }
}

/// Rewrites the request for the upstream (the one rewrite, with the JEP 121 entries
/// left out of the offer) and opens the upstream WebSocket.
async fn connect_upstream(
    gw: &Gateway,
    client: &UpstreamClient,
    ctx: &RequestContext,
    auth: Option<&Authenticated>,
    offer: &Offer,
    request: &Request<Incoming>,
    path: &str,
) -> Result<(websocket::Accepted, Option<HeaderValue>), GatewayError> {
    let target = with_query(path, request.uri().query());
    let target = upstream_target(&target, auth.map(|a| a.carrier));
    let mut headers = request.headers().clone();
    UpstreamRewrite {
        identity: auth.map(|a| a.identity() as &dyn IdentityFields),
        client_ip: ctx.peer.ip(),
        proto: gw.forwarded_proto(),
        request_id: &ctx.id,
    }
    .apply(&mut headers);
    // The offer minus the JEP 121 entries: the token never reaches the upstream.
    headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
    if !offer.forwarded.is_empty()
        && let Ok(value) = HeaderValue::from_str(&offer.forwarded.join(", "))
    {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
    }
    let mut key = [0u8; 16];
    gw.fill_random(&mut key)?;
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    let accepted = websocket::handshake(client, &target, headers, &key).await?;
    let protocol =
        answer(offer, accepted.protocol.as_deref()).and_then(|p| HeaderValue::from_str(p).ok());
    Ok((accepted, protocol))
}

/// Relays an authenticated upgrade to the upstream. The connection is registered
/// before the upstream is contacted.
async fn relay(
    gw: &Gateway,
    client: &UpstreamClient,
    ctx: &mut RequestContext,
    auth: Option<Authenticated>,
    offer: Offer,
    mut request: Request<Incoming>,
    path: &str,
) -> Response<Body> {
    let Some(accept) = accept_key(request.headers()) else {
        return GatewayError::BadRequest(
            "WebSocket handshake needs Sec-WebSocket-Key and version 13",
        )
        .into_response();
    };
    let principal = auth.map(|auth| {
        let registration = gw.register_live(auth.session_id());
        (auth, registration)
    });
    let (upstream, protocol) = match connect_upstream(
        gw,
        client,
        ctx,
        principal.as_ref().map(|(auth, _)| auth),
        &offer,
        &request,
        path,
    )
    .await
    {
        Ok(pair) => pair,
        Err(e) => {
            let (code, reason) = e.close_after_accept();
            tracing::warn!(error = %e, request_id = %ctx.id, "upstream WebSocket failed");
            return accept_then_close(request, &accept, code, reason);
        }
    };
    let upgrade = hyper::upgrade::on(&mut request);
    let slot = admitted_slot(&request);
    let gw = gw.clone();
    ctx.relayed = true;
    let ctx = ctx.clone();
    let path = path.to_owned();
    tokio::spawn(async move {
        // The socket holds its connection's place under the caps while it lives.
        let _slot = slot;
        if let Ok(upgraded) = upgrade.await {
            pump(&gw, principal, upgraded, upstream.stream).await;
        }
        // The log phase of a WebSocket: when it ends.
        ctx.finish("GET", &path, 101);
    });
    switching_protocols(&accept, protocol)
}

/// The upstream side of a relayed connection, after its handshake.
type Upstream = hyper::upgrade::Upgraded;

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
                if gw.now() >= expires_ms {
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
    principal: Option<(Authenticated, Registration)>,
    client: hyper::upgrade::Upgraded,
    upstream: Upstream,
) {
    // Masking keys for the close frames the gateway may send the upstream as a
    // client (RFC 6455 section 5.3: unpredictable). Without entropy there is no
    // safe frame to send: the connection ends here.
    let (vanish_mask, end_mask) = match masking_keys(gw.entropy()) {
        Ok(keys) => keys,
        Err(error) => {
            tracing::error!(%error, "no entropy for WebSocket masking keys; closing the connection");
            return;
        }
    };
    let (client_read, client_write) = tokio::io::split(TokioIo::new(client));
    let (upstream_read, upstream_write) = tokio::io::split(TokioIo::new(upstream));
    let mut to_upstream = Direction {
        reader: client_read,
        writer: upstream_write,
        tracker: FrameTracker::new(true),
        torn: false,
        on_vanish: ws_frames::close_frame(1001, "client connection lost", Some(vanish_mask)),
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
        // An anonymous route's connection has no session to end.
        let over = async move {
            match principal {
                Some((auth, mut registration)) => {
                    session_over(gw, &mut registration, auth.session.expires_ms()).await
                }
                None => std::future::pending().await,
            }
        };
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
            ws_frames::close_frame(1001, "client session ended", Some(end_mask)),
        ),
        // Not a session end: 1001 tells the client to simply reconnect.
        Stop::Lifetime => (
            ws_frames::close_frame(1001, "maximum connection lifetime reached", None),
            ws_frames::close_frame(1001, "maximum connection lifetime reached", Some(end_mask)),
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

/// Two masking keys for close frames the gateway may send the upstream as a client
/// (RFC 6455 section 5.3: unpredictable): an error, never zeros, without entropy.
fn masking_keys(
    entropy: &dyn portcullis_core::secret::Entropy,
) -> Result<([u8; 4], [u8; 4]), portcullis_core::secret::EntropyError> {
    let mut keys = [0u8; 8];
    entropy.fill(&mut keys)?;
    Ok((
        [keys[0], keys[1], keys[2], keys[3]],
        [keys[4], keys[5], keys[6], keys[7]],
    ))
}

/// Resolves once `stop` is set (or its sender is gone).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await.map(|_| ());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct NoEntropy;

    impl portcullis_core::secret::Entropy for NoEntropy {
        fn fill(&self, _: &mut [u8]) -> Result<(), portcullis_core::secret::EntropyError> {
            Err(portcullis_core::secret::EntropyError)
        }
    }

    #[test]
    fn masking_keys_fail_without_entropy_instead_of_being_zero() {
        assert!(masking_keys(&NoEntropy).is_err());
        let (a, b) = masking_keys(&portcullis_core::secret::OsEntropy).unwrap();
        assert_ne!((a, b), ([0; 4], [0; 4]));
    }

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
}
