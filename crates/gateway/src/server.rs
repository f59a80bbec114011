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
use axum::http::{HeaderMap, Request, Response, Uri, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower_service::Service;

use crate::error::GatewayError;
use crate::login;
use crate::proxy;
use crate::state::Gateway;

/// Bodies the gateway itself reads (login forms, JSON) are small; larger ones are
/// refused with 413 before being read. Proxied bodies are streamed and not limited.
const GATEWAY_BODY_LIMIT: usize = 64 * 1024;
/// Largest request head (request line and headers) accepted: 64 KiB, far above
/// real browsers (about 8 KiB) and small enough that a client cannot make the
/// gateway buffer much. Larger heads get 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;
/// A client must finish sending its request head within this time (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The router for the gateway's own endpoints, mounted under the auth prefix.
pub fn router(gw: Gateway) -> Router {
    let own = Router::new()
        .route("/login", get(login::login_page).post(login::login_submit))
        .route("/logout", post(login::logout))
        .route("/me", get(login::me))
        .route("/verify", get(login::verify))
        .route("/healthz", get(login::healthz))
        .route("/readyz", get(login::readyz))
        .fallback(login::not_found)
        .layer(DefaultBodyLimit::max(GATEWAY_BODY_LIMIT));
    Router::new()
        .nest(&gw.config().auth_prefix, own)
        .fallback(login::not_found)
        .with_state(gw)
}

/// Whether `path` belongs to the gateway rather than the upstream.
fn is_own_path(prefix: &str, path: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Refuses a `Host` that is not the public host or an allowed one (DNS rebinding
/// defence). Health endpoints are exempt: orchestrators probe them by IP.
fn check_host(gw: &Gateway, headers: &HeaderMap, uri: &Uri) -> Result<(), GatewayError> {
    let config = gw.config();
    let exempt = uri
        .path()
        .strip_prefix(config.auth_prefix.as_str())
        .is_some_and(|rest| rest == "/healthz" || rest == "/readyz");
    if exempt {
        return Ok(());
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()));
    match host {
        Some(host) if host_allowed(gw, host) => Ok(()),
        _ => Err(GatewayError::HostNotAllowed),
    }
}

fn host_allowed(gw: &Gateway, host: &str) -> bool {
    let config = gw.config();
    let public = config.public_url.authority.as_str();
    let default_port = if config.public_url.is_https() {
        443
    } else {
        80
    };
    let public_without_default_port = match config.public_url.authority.port_u16() {
        Some(port) if port == default_port => config.public_url.authority.host(),
        _ => public,
    };
    host.eq_ignore_ascii_case(public)
        || host.eq_ignore_ascii_case(public_without_default_port)
        || config
            .allowed_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host))
}

/// One connection's request handler.
#[derive(Clone)]
struct Connection {
    gw: Gateway,
    router: Router,
    peer: SocketAddr,
}

impl hyper::service::Service<Request<Incoming>> for Connection {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if let Err(e) = check_host(&this.gw, request.headers(), request.uri()) {
                return Ok(e.into_response());
            }
            if is_own_path(&this.gw.config().auth_prefix, request.uri().path()) {
                let mut request = request.map(Body::new);
                request.extensions_mut().insert(ConnectInfo(this.peer));
                let mut router = this.router;
                return router.call(request).await;
            }
            Ok(proxy::handle(&this.gw, this.peer, request).await)
        })
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
    // Connections watch `stop` to begin a graceful close; each holds a clone of
    // `alive`, so `drained` resolves once every connection has finished.
    let (stop, _) = tokio::sync::watch::channel(false);
    let (alive, mut drained) = tokio::sync::mpsc::channel::<()>(1);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
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
        // Small request/response exchanges must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let service = Connection {
            gw: gw.clone(),
            router: router.clone(),
            peer,
        };
        let connection = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut stopping = stop.subscribe();
        let alive = alive.clone();
        tokio::spawn(async move {
            let _alive = alive;
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = stopping.changed() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_paths() {
        for (path, own) in [
            ("/.auth", true),
            ("/.auth/login", true),
            ("/.authx", false),
            ("/.auth.json", false),
            ("/", false),
            ("/x/.auth/login", false),
        ] {
            assert_eq!(is_own_path("/.auth", path), own, "{path}");
        }
    }
}
