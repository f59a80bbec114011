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

/// How long a write probe's answer is reused: `/readyz` is public, and a write
/// per call would let anyone make the database write as fast as they ask.
const PROBE_REUSE: Duration = Duration::from_secs(1);

/// Whether the database took the last write probe, one probe at a time, at
/// most one a second (callers meanwhile share its answer).
async fn database_takes_writes(gw: &Gateway) -> bool {
    let mut last = gw.readiness().lock().await;
    if let Some((at, took)) = *last
        && at.elapsed() < PROBE_REUSE
    {
        return took;
    }
    let took = match gw
        .store()
        .probe_write(gw.process_id(), gw.now(), READY_WITHIN)
        .await
    {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, "not ready: the database does not take writes");
            false
        }
    };
    *last = Some((std::time::Instant::now(), took));
    took
}

/// How long `/readyz` takes at most to say not ready.
const READY_WITHIN: Duration = Duration::from_millis(900);

/// Ready when the database takes a write (so sign-ins can be recorded) and the
/// revocation bus is up (so cached sessions can be trusted), within a second.
pub async fn readyz(State(gw): State<Gateway>) -> Response {
    // Reasons name the part, never its error (which may name hosts).
    let mut reasons = Vec::new();
    if !database_takes_writes(&gw).await {
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
