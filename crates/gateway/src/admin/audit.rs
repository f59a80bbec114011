//! The audit log through the admin API (`audit.read`): filters by time range,
//! actor, action and outcome; pages newest first with an opaque cursor.

use axum::Json;
use axum::response::{IntoResponse, Response};
use portcullis_core::identity::Permission;
use portcullis_store::AuditFilter;
use serde::Deserialize;
use serde_json::json;

use super::{AdminCall, respond};
use crate::endpoints::identity::rfc3339;
use crate::error::GatewayError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Events at or after this time (milliseconds since the epoch).
    since_ms: Option<i64>,
    /// Events before this time (milliseconds since the epoch).
    until_ms: Option<i64>,
    actor: Option<String>,
    action: Option<String>,
    /// `success` or `failure`.
    outcome: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<i64>,
}

/// `GET {prefix}/api/v1/audit`
pub async fn list_audit(call: AdminCall) -> Response {
    respond(
        async {
            let gw = &call.gw;
            call.authorize(Permission::AuditRead).await?;
            let query: AuditQuery = call.query()?;
            let before_id = match query.cursor.as_deref() {
                None => None,
                Some(cursor) => Some(
                    cursor
                        .parse::<i64>()
                        .ok()
                        .filter(|id| *id > 0)
                        .ok_or_else(|| GatewayError::Invalid("cursor: not a cursor".into()))?,
                ),
            };
            if let Some(limit) = query.limit
                && !(1..=1000).contains(&limit)
            {
                return Err(GatewayError::Invalid("limit: between 1 and 1000".into()));
            }
            if let Some(outcome) = query.outcome.as_deref()
                && !matches!(outcome, "success" | "failure")
            {
                return Err(GatewayError::Invalid("outcome: success or failure".into()));
            }
            let filter = AuditFilter {
                since_ms: query.since_ms,
                until_ms: query.until_ms,
                actor: query.actor,
                action: query.action,
                outcome: query.outcome,
                before_id,
                limit: query.limit.unwrap_or(100),
            };
            let page = gw.store().audit_page(&filter).await?;
            let events: Vec<_> = page
                .events
                .iter()
                .map(|(id, e)| {
                    json!({
                        "id": id,
                        "at": rfc3339(e.at_ms),
                        "at_ms": e.at_ms,
                        "actor": e.actor,
                        "action": e.action,
                        "target": e.target,
                        "outcome": e.outcome,
                        "reason": e.reason,
                        "ip": e.ip,
                        "count": e.count,
                    })
                })
                .collect();
            Ok(Json(json!({
                "events": events,
                "next_cursor": page.next.map(|id| id.to_string()),
            }))
            .into_response())
        }
        .await,
    )
}
