//! The accept loop and the top-level request dispatch. Every request passes the
//! `Host` guard; requests under the auth prefix go to the gateway's own axum router,
//! everything else straight to the proxy, so the hot path pays for no routing table
//! and no middleware stack.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit};
use axum::http::{Request, Response};
use bytes::BytesMut;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower_service::Service;

use crate::error::CURRENT_REQUEST;
use crate::fastpath;
use crate::pipeline::authenticate::Primed;
use crate::pipeline::{ClientAddr, PathKind, RequestContext};
use crate::proxy;
use crate::state::Gateway;
use crate::upstream::UpstreamClient;
use crate::upstream::rewrite::X_REQUEST_ID;

/// Bodies the gateway itself reads (login forms, JSON) are small; larger ones are
/// refused with 413 before being read. Proxied bodies are streamed and not limited.
const GATEWAY_BODY_LIMIT: usize = 64 * 1024;
/// Largest request head (request line and headers) accepted: 64 KiB, far above
/// real browsers (about 8 KiB) and small enough that a client cannot make the
/// gateway buffer much. Larger heads get 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A client must finish sending its request head within this time (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The router for the gateway's own endpoints, mounted under the auth prefix:
/// exactly the routes of [`crate::openapi::ENDPOINTS`], which the OpenAPI
/// document describes.
pub fn router(gw: Gateway) -> Router {
    let mut own = Router::new();
    for endpoint in crate::openapi::ENDPOINTS {
        own = own.route(endpoint.path, (endpoint.routes)());
    }
    let own = own
        .fallback(crate::endpoints::not_found)
        .method_not_allowed_fallback(crate::endpoints::method_not_allowed)
        .layer(DefaultBodyLimit::max(GATEWAY_BODY_LIMIT))
        .layer(axum::middleware::map_response(protect_page));
    Router::new()
        .nest(&gw.config().auth_prefix, own)
        .fallback(crate::endpoints::not_found)
        .with_state(gw)
}

/// Every response of the gateway's own endpoints carries the page protections.
async fn protect_page(mut response: Response<Body>) -> Response<Body> {
    crate::pages::protect(response.headers_mut());
    response
}

/// One connection's request handler.
#[derive(Clone)]
struct Connection {
    gw: Gateway,
    router: Router,
    upstream: UpstreamClient,
    peer: SocketAddr,
    /// The fast path's authentication of the first request hyper reads.
    primed: std::sync::Arc<std::sync::Mutex<Option<Primed>>>,
    /// The connection's place under the caps: a WebSocket relay outlives the
    /// connection's task and holds it too.
    admitted: std::sync::Arc<crate::admission::Admitted>,
}

impl hyper::service::Service<Request<Incoming>> for Connection {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        let primed = this
            .primed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(primed) = primed {
            request.extensions_mut().insert(primed);
        }
        request.extensions_mut().insert(this.admitted.clone());
        let client = ClientAddr::of(
            &self.gw.config().trusted_proxies,
            self.peer,
            request.headers(),
        );
        request.extensions_mut().insert(ConnectInfo(client));
        // Copied for the access event only when one is wanted.
        let logged = crate::pipeline::access_log_enabled().then(|| {
            let path = request.uri().path();
            let path = crate::endpoints::loggable_path(path);
            (request.method().clone(), path.into_owned())
        });
        let mut ctx = crate::pipeline::Finishing::new(
            RequestContext::for_request(client, PathKind::Proxy, request.headers()),
            logged,
        );
        Box::pin(CURRENT_REQUEST.scope(ctx.id.clone(), async move {
            let mut response = this.dispatch(&mut ctx, request).await;
            if let Ok(id) = axum::http::HeaderValue::from_str(ctx.id.as_str()) {
                response.headers_mut().insert(X_REQUEST_ID, id);
            }
            // A relayed WebSocket logs when it ends, not at its 101.
            if !ctx.relayed {
                ctx.finish(response.status().as_u16());
            }
            Ok(response)
        }))
    }
}

impl Connection {
    async fn dispatch(
        &self,
        ctx: &mut RequestContext,
        request: Request<Incoming>,
    ) -> Response<Body> {
        if let Err(e) = crate::host::check_host(
            &self.gw,
            request.headers(),
            request.uri(),
            ctx.peer.relayed(),
        ) {
            ctx.kind = PathKind::Endpoint;
            let html = crate::endpoints::wants_html(request.method(), request.headers());
            return e.into_response_for(html);
        }
        if crate::host::is_own_path(&self.gw.config().auth_prefix, request.uri().path()) {
            ctx.kind = PathKind::Endpoint;
            // A body for the gateway is small: all of it within the body timeout.
            let limits = crate::body::BodyLimits {
                grace: self.gw.config().body_timeout,
                min_rate: None,
            };
            let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let html = crate::endpoints::wants_html(request.method(), request.headers());
            let request = request
                .map(|body| Body::new(crate::body::ClientBody::new(body, limits, failed.clone())));
            let mut router = self.router.clone();
            let response = match router.call(request).await {
                Ok(response) => response,
                Err(infallible) => match infallible {},
            };
            // A body the client sent malformed or too slowly: the gateway's own
            // answer (not the extractor's), and the connection closes.
            if failed.load(std::sync::atomic::Ordering::Acquire) {
                let mut response = proxy::client_body_failed(html);
                crate::pages::protect(response.headers_mut());
                return response;
            }
            return response;
        }
        proxy::handle(&self.gw, &self.upstream, ctx, request).await
    }
}

/// Serves `gw` on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish (up to a drain timeout) and returns.
pub async fn serve(
    listener: TcpListener,
    gw: Gateway,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router(gw.clone());
    let upstream = UpstreamClient::new(gw.config());
    // Connections watch `stop` to begin a graceful close; each holds a clone of
    // `alive`, so `drained` resolves once every connection has finished.
    let (stop, _) = tokio::sync::watch::channel(false);
    let (alive, mut drained) = tokio::sync::mpsc::channel::<()>(1);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(crate::fastpath::MAX_HEADERS);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Over a cap: refused at once, before it can hold anything.
        let trusted = gw.config().trusted_proxies.contains(peer.ip());
        let admitted = match gw
            .admission()
            .admit(peer.ip(), trusted, gw.config().connections)
        {
            Ok(admitted) => admitted,
            Err(why) => {
                refuse_connection(&stream, peer, why);
                continue;
            }
        };
        // Small request/response exchanges must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let (gw, router, upstream) = (gw.clone(), router.clone(), upstream.clone());
        let mut stopping = stop.subscribe();
        let alive = alive.clone();
        let http = http.clone();
        let limits = fastpath::Limits {
            max_head_bytes: MAX_HEAD_BYTES,
            header_read_timeout: HEADER_READ_TIMEOUT,
        };
        let write_timeout = gw.config().write_timeout;
        tokio::spawn(async move {
            let _alive = alive;
            let admitted = std::sync::Arc::new(admitted);
            let mut stream = fastpath::ClientStream::new(stream, write_timeout);
            let mut buf = BytesMut::with_capacity(8 * 1024);
            let handoff = fastpath::serve(
                &gw,
                &upstream,
                peer,
                limits,
                &mut stream,
                &mut buf,
                &mut stopping,
            )
            .await;
            // Most connections never leave the fast path; the hyper side is built
            // only for those that do.
            let fastpath::Handoff::Hyper(primed) = handoff else {
                return;
            };
            let service = Connection {
                gw,
                router,
                upstream,
                peer,
                primed: std::sync::Arc::new(std::sync::Mutex::new(primed)),
                admitted,
            };
            let io = fastpath::Prefixed::new(buf.freeze(), stream);
            let brand = service.gw.config().brand_name.clone();
            let connection = http
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            let mut connection = std::pin::pin!(connection);
            let served = async {
                tokio::select! {
                    result = connection.as_mut() => result,
                    _ = stopping.changed() => {
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                }
            };
            // Every page of the connection shows the operator's product name.
            let result = crate::pages::BRAND.scope(brand, served).await;
            if let Err(error) = result {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    drop(alive);
    if tokio::time::timeout(DRAIN_TIMEOUT, drained.recv())
        .await
        .is_err()
    {
        tracing::warn!("shutdown drain timed out; closing remaining connections");
    }
    Ok(())
}

/// Answers a connection over a cap with a 503 (if the socket takes it at once)
/// and closes it; says so in the log at most every 10 s.
fn refuse_connection(
    stream: &tokio::net::TcpStream,
    peer: SocketAddr,
    why: crate::admission::Refused,
) {
    let _ = stream.try_write(
        b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\n\
          Content-Length: 0\r\n\r\n",
    );
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if crate::host::once_in_ten_seconds(&LAST) {
        let cap = match why {
            crate::admission::Refused::Total => "--max-connections",
            crate::admission::Refused::PerAddress => "--max-connections-per-ip",
        };
        tracing::warn!(%peer, cap, "connection refused: over the cap (raise it if legitimate)");
    }
}

/// Binds `threads` listening sockets to `addr` with `SO_REUSEPORT`, so the kernel
/// spreads new connections evenly across the event loops of [`serve_per_core`].
///
/// A plain bind is tried first so an address already in use (say, a second gateway
/// started by mistake) is an error rather than a silently shared port; with port 0
/// every socket joins the port the first one was given.
pub fn bind_per_core(addr: SocketAddr, threads: usize) -> std::io::Result<Vec<TcpListener>> {
    drop(std::net::TcpListener::bind(addr)?);
    let mut addr = addr;
    let mut listeners = Vec::new();
    for _ in 0..threads.max(1) {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        #[cfg(unix)]
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(1024)?;
        addr = listener.local_addr()?;
        listeners.push(listener);
        if cfg!(not(unix)) {
            break;
        }
    }
    Ok(listeners)
}

/// Serves one event loop per listener, each a single-threaded runtime on its own OS
/// thread with its own upstream pool, until `shutdown` resolves. This is the shape
/// of nginx's workers: a request is parsed, authenticated, proxied and answered on
/// one thread, with no work stealing and no cross-thread wake-ups on the hot path.
/// Background tasks (revocation bus, activity batching) stay on the calling runtime.
pub async fn serve_per_core(
    listeners: Vec<TcpListener>,
    gw: Gateway,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop, _) = tokio::sync::watch::channel(false);
    let mut handles = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let listener = listener.into_std()?;
        let gw = gw.clone();
        let mut stopping = stop.subscribe();
        let handle = std::thread::Builder::new()
            .name(format!("portcullis-loop-{index}"))
            .spawn(move || -> std::io::Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener)?;
                    serve(listener, gw, async move {
                        let _ = stopping.wait_for(|stop| *stop).await;
                    })
                    .await
                })
            })?;
        handles.push(handle);
    }
    shutdown.await;
    let _ = stop.send(true);
    // Every loop is joined (the first failure kept) before what is left in
    // memory is written.
    let joined = tokio::task::spawn_blocking(move || {
        let mut first = Ok(());
        for handle in handles {
            let result = handle
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("an event loop thread panicked")));
            if first.is_ok() {
                first = result;
            }
        }
        first
    })
    .await
    .map_err(std::io::Error::other)?;
    gw.stopped().await;
    joined
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn per_core_sockets_share_one_port_and_refuse_a_taken_one() {
        let listeners = bind_per_core("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        assert_eq!(ports.len(), 3);
        assert!(ports.iter().all(|p| *p == ports[0]), "{ports:?}");
        let taken = listeners[0].local_addr().unwrap();
        let err = bind_per_core(taken, 2).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    }
}
