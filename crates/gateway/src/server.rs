//! Routing and the accept loop: the auth prefix goes to the gateway's own handlers,
//! everything else to the proxy; the `Host` guard runs first on every request.

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::error::GatewayError;
use crate::login;
use crate::proxy::proxy;
use crate::state::Gateway;

/// Bodies the gateway itself reads (login forms, JSON) are small; larger ones are
/// refused with 413 before being read. Proxied bodies are streamed and not limited.
const GATEWAY_BODY_LIMIT: usize = 64 * 1024;

/// The full application router.
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
        .fallback(proxy)
        .layer(middleware::from_fn_with_state(gw.clone(), host_guard))
        .with_state(gw)
}

/// Refuses requests whose `Host` is not the public host or an allowed one (DNS
/// rebinding defence). Health endpoints are exempt: orchestrators probe them by IP.
async fn host_guard(State(gw): State<Gateway>, request: Request, next: Next) -> Response {
    let config = gw.config();
    let path = request.uri().path();
    let exempt = path
        .strip_prefix(config.auth_prefix.as_str())
        .is_some_and(|rest| rest == "/healthz" || rest == "/readyz");
    if !exempt {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()));
        if !host.is_some_and(|h| host_allowed(&gw, h)) {
            return GatewayError::HostNotAllowed.into_response();
        }
    }
    next.run(request).await
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

/// Serves `gw` on `listener` until `shutdown` resolves, then finishes in-flight
/// requests and returns.
pub async fn serve(
    listener: TcpListener,
    gw: Gateway,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = listener.tap_io(|tcp| {
        // Small request/response exchanges must not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
    });
    let app = router(gw).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
