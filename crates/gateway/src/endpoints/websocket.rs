//! WebSocket helpers for clients: `POST {prefix}/ws-ticket` (a single-use ticket
//! for one upgrade) and `GET {prefix}/capabilities` (the carrier table, as data).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::carrier::{self, Carrier};
use crate::cookies::Audience;
use crate::error::GatewayError;
use crate::pipeline::ClientAddr;
use crate::pipeline::authenticate::authenticate_endpoint;
use crate::pipeline::authorize::{EndpointAccess, authorize_endpoint};
use crate::state::Gateway;

/// `POST {prefix}/ws-ticket`: a single-use ticket for one WebSocket upgrade, for
/// the calling session (cookie plus `X-CSRF-Token`).
pub async fn ws_ticket(
    State(gw): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let auth = match authenticate_endpoint(&gw, &headers, peer, Audience::Upstream).await {
        Ok(Some(auth)) => auth,
        Ok(None) => return GatewayError::Unauthenticated.into_response(),
        Err(e) => return e.into_response(),
    };
    let access = EndpointAccess {
        headers: &headers,
        body: &body,
        mutating: true,
        permission: None,
        mints_ticket: true,
        peer,
    };
    if let Err(e) = authorize_endpoint(&gw, &auth, &access).await {
        return e.into_response();
    }
    let ticket = match portcullis_core::ticket::mint(gw.entropy()) {
        Ok(ticket) => ticket,
        Err(e) => return GatewayError::Entropy(e).into_response(),
    };
    let now = gw.now();
    let ttl = gw.config().ws_ticket_ttl_ms;
    if let Err(e) = gw
        .store()
        .insert_ticket(&ticket.hash, auth.session_id(), now, now + ttl)
        .await
    {
        return GatewayError::from(e).into_response();
    }
    let mut response = Json(json!({
        "ticket": ticket.secret.expose(),
        "expires_in": ttl / 1000,
    }))
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET {prefix}/capabilities`: which WebSocket credentials this gateway accepts,
/// so clients need no trial and error. Unauthenticated; reveals no secret.
pub async fn capabilities(State(gw): State<Gateway>) -> Response {
    let config = gw.config();
    let schemes: Vec<&str> = carrier::carriers(config, true)
        .map(Carrier::scheme)
        .collect();
    Json(json!({
        "websocket": {
            "schemes": schemes,
            "ticket_endpoint": format!("{}/ws-ticket", config.auth_prefix),
            "ticket_ttl_seconds": config.ws_ticket_ttl_ms / 1000,
            "subprotocol": portcullis_core::subprotocol::JEP121_MARKER,
            "cookie_origin": config.public_url.origin(),
            "reject": match config.ws_reject {
                crate::config::WsReject::Status => "status",
                crate::config::WsReject::Close => "close",
            },
            "close_codes": {"session_ended": crate::error::CLOSE_SESSION_ENDED, "rejected": crate::error::CLOSE_REJECTED},
        }
    }))
    .into_response()
}
