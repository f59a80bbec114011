//! WebSocket upgrades: authenticated by the same phase as every request, then
//! relayed frame by frame so the gateway can end a connection with a close code of
//! its own (4401) when the session dies. An opaque byte pipe could only drop the
//! TCP connection, which browsers report as an uninformative 1006.
//!
//! `Sec-WebSocket-Extensions` is not forwarded: the relay parses frames and does not
//! implement permessage-deflate, so no extension may be negotiated end to end.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::auth::{
    Authenticated, Outcome, authenticate_bearer_value, authenticate_outcome, authenticate_ticket,
    portcullis_bearer,
};
use crate::config::WsReject;
use crate::error::GatewayError;
use crate::live::{EndReason, REASON_EXPIRED, Registration};
use crate::proxy::{UpstreamClient, upstream_headers};
use crate::state::Gateway;
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
        && auth
            .session_id()
            .starts_with(portcullis_core::internal::ID_PREFIX)
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

type Upstream = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to the upstream WebSocket with the request's (rewritten) headers.
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
    let url = format!("ws://{}{path}", client.authority());
    let mut upstream_request = url.into_client_request().map_err(|e| e.to_string())?;
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
    // The upstream handshake gets its own key and version; extensions cannot pass a
    // frame-parsing relay.
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
    let target = upstream_request.headers_mut();
    for name in headers.keys() {
        target.remove(name);
        for value in headers.get_all(name) {
            target.append(name.clone(), value.clone());
        }
    }
    let connect =
        tokio_tungstenite::connect_async_with_config(upstream_request, Some(config()), true);
    match tokio::time::timeout(client.timeout(), connect).await {
        Ok(Ok((socket, response))) => {
            let selected = response
                .headers()
                .get(header::SEC_WEBSOCKET_PROTOCOL)
                .and_then(|v| v.to_str().ok());
            let protocol = answer(offer, selected).and_then(|p| HeaderValue::from_str(p).ok());
            Ok((socket, protocol))
        }
        Ok(Err(tungstenite::Error::Http(response))) => {
            Err(format!("upstream answered {}", response.status()))
        }
        Ok(Err(e)) => Err(e.to_string()),
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
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config()))
                .await;
        pump(&gw, &auth, registration, socket, upstream).await;
    });
    switching_protocols(&accept, protocol)
}

/// Why a relay stopped.
enum Stop {
    /// Either side closed or failed.
    Closed,
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

/// Moves frames both ways until either side closes or the session ends. Each send
/// is awaited before the next read on that side: backpressure, not buffering.
async fn pump<S>(
    gw: &Gateway,
    auth: &Authenticated,
    mut registration: Registration,
    mut client: WebSocketStream<S>,
    mut upstream: Upstream,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let expires_ms = auth.session.session.expires_ms;
    let lifetime = async {
        match gw.config().ws_max_lifetime {
            Some(max) => tokio::time::sleep(max).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(lifetime);
    // One future for the session's end, polled by every select below: creating
    // it per message would register a timer per message.
    let over = session_over(gw, &mut registration, expires_ms);
    tokio::pin!(over);
    // Every await that could block (including a send to a peer that stopped
    // reading) races the session's end, so a revocation is never held up by a
    // stalled connection.
    let stop = loop {
        tokio::select! {
            message = client.next() => match message {
                Some(Ok(message)) => {
                    let closing = message.is_close();
                    tokio::select! {
                        sent = upstream.send(message) => if sent.is_err() || closing { break Stop::Closed },
                        reason = &mut over => break Stop::Ended(reason),
                    }
                }
                _ => break Stop::Closed,
            },
            message = upstream.next() => match message {
                Some(Ok(message)) => {
                    let closing = message.is_close();
                    tokio::select! {
                        sent = client.send(message) => if sent.is_err() || closing { break Stop::Closed },
                        reason = &mut over => break Stop::Ended(reason),
                    }
                }
                _ => break Stop::Closed,
            },
            reason = &mut over => break Stop::Ended(reason),
            () = &mut lifetime => break Stop::Lifetime,
        }
    };
    let (to_client, to_upstream) = match stop {
        Stop::Closed => (None, None),
        Stop::Ended(reason) => (
            Some(close_frame(CLOSE_SESSION_ENDED, reason)),
            Some(close_frame(1001, "client session ended")),
        ),
        // Not a session end: 1001 tells the client to simply reconnect.
        Stop::Lifetime => (
            Some(close_frame(1001, "maximum connection lifetime reached")),
            Some(close_frame(1001, "maximum connection lifetime reached")),
        ),
    };
    // A peer that stopped reading cannot hold the close up either.
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        if let Some(frame) = to_client {
            let _ = client.close(Some(frame)).await;
        }
    })
    .await;
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        if let Some(frame) = to_upstream {
            let _ = upstream.close(Some(frame)).await;
        }
    })
    .await;
    // Let both close handshakes finish, but never wait forever.
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        tokio::join!(async { while client.next().await.is_some() {} }, async {
            while upstream.next().await.is_some() {}
        },)
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

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
