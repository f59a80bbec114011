//! Everything that talks to the upstream, with one set of timeouts and one error
//! type: the pooled hyper client of the general path, the fast path's raw pool
//! ([`raw`]), the WebSocket handshake connection ([`websocket`]), and the one
//! rewrite of requests for the upstream ([`rewrite`]).

pub mod chunked;
pub mod raw;
pub mod rewrite;
pub mod websocket;

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpStream;

use crate::body::ClientBody;
use crate::config::GatewayConfig;
use raw::RawPool;

/// A TCP connection to the upstream must be made within this time.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle pooled connections of the general path are closed after this time.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the upstream could not be used. Every variant is the upstream's fault as
/// the client sees it (502), but for [`UpstreamError::Timeout`] (504).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting: {0}")]
    Connect(#[source] std::io::Error),
    #[error("connecting timed out")]
    ConnectTimeout,
    #[error("sending the request: {0}")]
    Send(#[source] std::io::Error),
    #[error("reading the response: {0}")]
    Read(#[source] std::io::Error),
    #[error("connection closed before a response")]
    ClosedEarly,
    #[error("malformed response head: {0}")]
    MalformedHead(#[source] httparse::Error),
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    #[error("request failed: {0}")]
    Client(#[source] hyper_util::client::legacy::Error),
    #[error("WebSocket handshake: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("WebSocket refused: upstream answered {0}")]
    Refused(http::StatusCode),
    #[error("did not answer in time")]
    Timeout,
}

/// The upstream's connections for one event loop: each loop has its own, so an
/// upstream connection is only ever driven by the thread that uses it.
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    client: Client<HttpConnector, ClientBody<Incoming>>,
    raw: Arc<RawPool>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// `host:port` to connect to.
    addr: String,
    timeout: Duration,
}

impl UpstreamClient {
    pub fn new(config: &GatewayConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(1024)
            .build(connector);
        let authority = config.upstream.authority.clone();
        let addr = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        );
        Self {
            client,
            raw: Arc::new(RawPool::new(addr.clone(), CONNECT_TIMEOUT)),
            scheme: config.upstream.scheme.clone(),
            authority,
            addr,
            timeout: config.upstream_timeout,
        }
    }

    pub fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }

    pub fn scheme(&self) -> &http::uri::Scheme {
        &self.scheme
    }

    /// Time allowed for the upstream to start answering (response head, or the
    /// WebSocket handshake).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn raw(&self) -> &RawPool {
        &self.raw
    }

    /// Sends a request over the pooled client; the response head must arrive
    /// within [`Self::timeout`] of the request body's end, and while the body is
    /// sent it must move at least once per timeout (a client that sends too
    /// slowly is the body deadline's). The response body streams afterwards.
    pub async fn request(
        &self,
        request: http::Request<ClientBody<Incoming>>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let answer = |result: Result<_, _>| result.map_err(UpstreamError::Client);
        // The upstream's time to answer starts once the client's body is all
        // sent: an upload takes as long as the client's rate allows (bounded by
        // the body's own deadline). Meanwhile the body must move at least once
        // per timeout, or the upstream stopped reading it.
        let progress = request.body().progress();
        let exchange = self.client.request(request);
        tokio::pin!(exchange);
        loop {
            let stalled = progress.last_moved() + self.timeout;
            tokio::select! {
                result = &mut exchange => return answer(result),
                () = progress.ended() => break,
                () = tokio::time::sleep_until(stalled) => {
                    if progress.ended_at().is_none()
                        && progress.last_moved() + self.timeout <= tokio::time::Instant::now()
                    {
                        return Err(UpstreamError::Timeout);
                    }
                }
            }
        }
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => answer(result),
            Err(_) => Err(UpstreamError::Timeout),
        }
    }

    /// A new TCP connection to the upstream (for a WebSocket).
    pub async fn connect(&self) -> Result<TcpStream, UpstreamError> {
        connect_tcp(&self.addr, CONNECT_TIMEOUT).await
    }
}

/// Connects with `TCP_NODELAY`: small exchanges must not wait for Nagle's algorithm.
async fn connect_tcp(addr: &str, within: Duration) -> Result<TcpStream, UpstreamError> {
    let stream = tokio::time::timeout(within, TcpStream::connect(addr))
        .await
        .map_err(|_| UpstreamError::ConnectTimeout)?
        .map_err(UpstreamError::Connect)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
