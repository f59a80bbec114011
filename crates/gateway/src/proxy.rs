//! The general path's proxy: a request outside the auth prefix that the fast path
//! did not take (a body, an upgrade, a bearer token, a refusal to answer) passes
//! the pipeline's phases here and streams to the upstream over the pooled client.
//! Bodies stream in both directions; nothing is buffered whole.

use axum::body::Body;
use axum::http::{Request, Response, Uri};
use hyper::body::Incoming;

use crate::endpoints::{unauthenticated, wants_html};
use crate::error::GatewayError;
use crate::pipeline::authenticate::{Primed, authenticate_primed};
use crate::pipeline::authorize::{UpstreamAccess, authorize_upstream};
use crate::pipeline::{Outcome, PathKind, RequestContext};
use crate::state::Gateway;
use crate::upstream::UpstreamClient;
use crate::upstream::rewrite::{UpstreamRewrite, remove_hop_by_hop, upstream_target};

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
    // authenticate
    let outcome = authenticate_primed(gw, &parts.headers, &parts.uri, None, ctx.peer, primed).await;
    let auth = match outcome {
        Ok(Outcome::Authenticated(auth)) => auth,
        Ok(Outcome::NoCredential | Outcome::Rejected) => {
            let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
            return unauthenticated(gw, &parts.method, &parts.headers, path_and_query);
        }
        Err(e) => return e.into_response_for(html),
    };
    // authorize
    let access = UpstreamAccess {
        method: &parts.method,
        path: parts.uri.path(),
        origin: None,
        upgrade: false,
    };
    if let Err(e) = authorize_upstream(gw, &auth, &access) {
        return e.into_response_for(html);
    }
    // rewrite
    let target = upstream_target(
        parts.uri.path_and_query().map_or("/", |pq| pq.as_str()),
        Some(auth.carrier),
    );
    let uri = Uri::builder()
        .scheme(client.scheme().clone())
        .authority(client.authority().clone())
        .path_and_query(target.as_ref())
        .build();
    let Ok(uri) = uri else {
        return GatewayError::BadRequest("request target").into_response_for(html);
    };
    UpstreamRewrite {
        identity: auth.identity(),
        client_ip: ctx.peer.ip(),
        proto: gw.forwarded_proto(),
        request_id: &ctx.id,
    }
    .apply(&mut parts.headers);
    ctx.principal = Some(auth);
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    // relay
    let sent = std::time::Instant::now();
    let response = match client.request(Request::from_parts(parts, body)).await {
        Ok(response) => response,
        Err(e) => return GatewayError::from(e).into_response_for(html),
    };
    ctx.upstream_time = Some(sent.elapsed());
    let (mut parts, body) = response.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Body::new(body))
}
