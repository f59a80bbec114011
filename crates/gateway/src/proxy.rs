//! The general path's proxy: a request outside the auth prefix that the fast path
//! did not take (a body, an upgrade, a bearer token, a refusal to answer) passes
//! the pipeline's phases here and streams to the upstream over the pooled client.
//! Bodies stream in both directions; nothing is buffered whole.

use axum::body::Body;
use axum::http::{Request, Response, Uri};
use hyper::body::Incoming;

use crate::body::{BodyLimits, ClientBody};
use crate::endpoints::{unauthenticated, wants_html};
use crate::error::GatewayError;
use crate::host::request_host;
use crate::identity::IdentityFields;
use crate::pipeline::authenticate::{Primed, authenticate_primed};
use crate::pipeline::authorize::{UpstreamAccess, authorize_upstream, method_overrides, route};
use crate::pipeline::{Outcome, PathKind, RequestContext};
use crate::state::Gateway;
use crate::upstream::UpstreamClient;
use crate::upstream::rewrite::{UpstreamRewrite, remove_hop_by_hop, upstream_target, with_query};
use portcullis_core::routes::canonical_path;

/// Handles a request outside the auth prefix: authenticate, authorize, rewrite,
/// relay. WebSocket upgrades go to [`crate::ws`].
pub async fn handle(
    gw: &Gateway,
    client: &UpstreamClient,
    ctx: &mut RequestContext,
    request: Request<Incoming>,
) -> Response<Body> {
    if crate::ws::is_upgrade(request.headers()) {
        ctx.kind = PathKind::Upgrade;
        return crate::ws::handle(gw, client, ctx, request).await;
    }
    let (mut parts, body) = request.into_parts();
    let html = wants_html(&parts.method, &parts.headers);
    let primed = parts.extensions.remove::<Primed>();
    let Some(path) = upstream_path(gw, parts.uri.path()) else {
        return GatewayError::BadRequest("request path").into_response_for(html);
    };
    let overrides = method_overrides(&parts.headers, parts.uri.query());
    let overrides: Vec<&str> = overrides.iter().map(AsRef::as_ref).collect();
    let access = UpstreamAccess {
        method: &parts.method,
        host: request_host(&parts.headers, &parts.uri),
        path: &path,
        query: parts.uri.query(),
        method_overrides: &overrides,
        origin: None,
        upgrade: false,
    };
    let decision = route(gw, &access);
    let auth = if decision.is_anonymous() {
        // An anonymous route: no credential is read, none is forwarded.
        None
    } else {
        // authenticate
        let outcome =
            authenticate_primed(gw, &parts.headers, &parts.uri, None, ctx.peer, primed).await;
        let auth = match outcome {
            Ok(Outcome::Authenticated(auth)) => auth,
            Ok(Outcome::NoCredential | Outcome::Rejected) => {
                let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
                return unauthenticated(gw, &parts.method, &parts.headers, path_and_query);
            }
            Err(e) => return e.into_response_for(html),
        };
        // authorize
        if let Err(e) = authorize_upstream(gw, &auth, &access, &decision) {
            return e.into_response_for(html);
        }
        Some(auth)
    };
    drop(overrides);
    // rewrite
    let target = with_query(&path, parts.uri.query());
    let target = upstream_target(&target, auth.as_ref().map(|a| a.carrier));
    let uri = Uri::builder()
        .scheme(client.scheme().clone())
        .authority(client.authority().clone())
        .path_and_query(target.as_ref())
        .build();
    let Ok(uri) = uri else {
        return GatewayError::BadRequest("request target").into_response_for(html);
    };
    UpstreamRewrite {
        identity: auth.as_ref().map(|a| a.identity() as &dyn IdentityFields),
        client_ip: ctx.peer.ip(),
        proto: gw.forwarded_proto(),
        request_id: &ctx.id,
    }
    .apply(&mut parts.headers);
    ctx.principal = auth;
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    // relay: the body streams with a deadline; its failures are the client's.
    let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let limits = BodyLimits {
        grace: gw.config().body_timeout,
        min_rate: Some(gw.config().body_min_rate),
    };
    let body = ClientBody::new(body, limits, failed.clone());
    let progress = body.progress();
    let response = match client.request(Request::from_parts(parts, body)).await {
        Ok(response) => response,
        Err(_) if failed.load(std::sync::atomic::Ordering::Acquire) => {
            return client_body_failed(html);
        }
        Err(e) => return GatewayError::from(e).into_response_for(html),
    };
    // The upstream's time: from the body's end (the client's upload is not it).
    ctx.upstream_time = progress.ended_at().map(|ended| ended.elapsed());
    let (mut parts, body) = response.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Body::new(body))
}

/// A request whose body the client sent malformed or too slowly: 400, and the
/// connection closes (its framing can no longer be trusted).
pub fn client_body_failed(html: bool) -> Response<Body> {
    let mut response =
        GatewayError::BadRequest("request body malformed or too slow").into_response_for(html);
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    response
}

/// The canonical path the upstream receives ([`canonical_path`]); `None` for a
/// path that is malformed or that only a crafted request could make land under
/// the auth prefix (`/x/../.auth/…`): neither is the upstream's.
pub fn upstream_path(gw: &Gateway, raw: &str) -> Option<String> {
    let path = canonical_path(raw).ok()?;
    if crate::host::is_own_path(&gw.config().auth_prefix, &path) {
        return None;
    }
    Some(path.into_owned())
}
