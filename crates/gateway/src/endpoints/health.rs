//! `GET {prefix}/healthz` (the process answers) and `GET {prefix}/readyz` (its
//! database answers).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use std::time::Duration;

use crate::state::Gateway;

pub async fn healthz() -> Response {
    (StatusCode::OK, Json(json!({"status": "ok"}))).into_response()
}

/// How long `/readyz` takes at most to say not ready.
const READY_WITHIN: Duration = Duration::from_millis(900);

/// Ready when the database takes a write (so sign-ins can be recorded) and the
/// revocation bus is up (so cached sessions can be trusted), within a second.
pub async fn readyz(State(gw): State<Gateway>) -> Response {
    let process = gw.process_id();
    let probe = gw.store().probe_write(process, gw.now(), READY_WITHIN);
    // Reasons name the part, never its error (which may name hosts).
    let mut reasons = Vec::new();
    if let Err(error) = probe.await {
        tracing::warn!(%error, "not ready: the database does not take writes");
        reasons.push("database");
    }
    if !gw.bus_connected() {
        tracing::warn!("not ready: the revocation bus is down");
        reasons.push("revocation_bus");
    }
    if reasons.is_empty() {
        (StatusCode::OK, Json(json!({"status": "ready"}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "error": "unavailable", "reasons": reasons})),
        )
            .into_response()
    }
}
