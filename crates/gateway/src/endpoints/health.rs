//! `GET {prefix}/healthz` (the process answers) and `GET {prefix}/readyz` (its
//! database answers).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::GatewayError;
use crate::state::Gateway;

pub async fn healthz() -> Response {
    (StatusCode::OK, Json(json!({"status": "ok"}))).into_response()
}

pub async fn readyz(State(gw): State<Gateway>) -> Response {
    match gw.store().ping().await {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready"}))).into_response(),
        Err(e) => GatewayError::from(e).into_response(),
    }
}
