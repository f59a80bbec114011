//! The upstream side of a WebSocket: a plain HTTP/1.1 upgrade through hyper's
//! client connection, whose upgraded stream keeps any bytes the upstream sent right
//! after its 101 (a greeting frame is never lost).

use http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::{UpstreamClient, UpstreamError};

/// A WebSocket the upstream accepted.
pub struct Accepted {
    pub stream: hyper::upgrade::Upgraded,
    /// The subprotocol the upstream selected, if any.
    pub protocol: Option<String>,
}

/// Opens a WebSocket to the upstream at `target` with `headers` (already
/// rewritten for the upstream, the subprotocol offer included) and the
/// handshake key `key` (16 random bytes, base64). The whole handshake must finish
/// within the client's timeout.
pub async fn handshake(
    client: &UpstreamClient,
    target: &str,
    mut headers: HeaderMap,
    key: &str,
) -> Result<Accepted, UpstreamError> {
    // The upstream handshake gets its own key and version; no extension may be
    // negotiated (the relay refuses compressed frames).
    for name in [
        header::SEC_WEBSOCKET_KEY,
        header::SEC_WEBSOCKET_VERSION,
        header::SEC_WEBSOCKET_EXTENSIONS,
        header::SEC_WEBSOCKET_ACCEPT,
    ] {
        headers.remove(name);
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    );
    headers.insert(
        header::SEC_WEBSOCKET_KEY,
        HeaderValue::from_str(key).map_err(|_| UpstreamError::Malformed("handshake key"))?,
    );
    if !headers.contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(client.authority().as_str())
    {
        headers.insert(header::HOST, host);
    }
    let mut request = Request::new(http_body_util::Empty::<bytes::Bytes>::new());
    *request.uri_mut() = target
        .parse()
        .map_err(|_| UpstreamError::Malformed("request target"))?;
    *request.headers_mut() = headers;

    let exchange = async {
        let tcp = client.connect().await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(UpstreamError::Handshake)?;
        tokio::spawn(connection.with_upgrades());
        let response = sender
            .send_request(request)
            .await
            .map_err(UpstreamError::Handshake)?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(UpstreamError::Refused(response.status()));
        }
        let accepted = response
            .headers()
            .get(header::SEC_WEBSOCKET_ACCEPT)
            .is_some_and(|v| v.as_bytes() == derive_accept_key(key.as_bytes()).as_bytes());
        if !accepted {
            return Err(UpstreamError::Malformed("wrong Sec-WebSocket-Accept"));
        }
        if response
            .headers()
            .contains_key(header::SEC_WEBSOCKET_EXTENSIONS)
        {
            return Err(UpstreamError::Malformed(
                "an extension that was not offered",
            ));
        }
        let protocol = response
            .headers()
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let stream = hyper::upgrade::on(response)
            .await
            .map_err(UpstreamError::Handshake)?;
        Ok(Accepted { stream, protocol })
    };
    tokio::time::timeout(client.timeout(), exchange)
        .await
        .map_err(|_| UpstreamError::Timeout)?
}
