//! The audit log: one row per security-relevant event. Reasons are internal
//! (for operators); secrets never appear in any field.

use serde_json::json;

use crate::{Store, StoreError, on_pool};

/// One audit event.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditEvent {
    pub at_ms: i64,
    /// Who acted: a subject, `cli`, `server-internal`, or `anonymous`.
    pub actor: String,
    /// Dotted action name, e.g. `auth.login`, `auth.session.revoke`, `auth.key.rotate`.
    pub action: String,
    /// What was acted on (a session id, a key id, a username).
    pub target: Option<String>,
    /// `success` or `failure`.
    pub outcome: String,
    /// The precise internal reason, e.g. `unknown_user`, `bad_password`.
    pub reason: Option<String>,
    pub ip: Option<String>,
}

impl AuditEvent {
    /// The event as one JSON object, for the structured log line.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "at_ms": self.at_ms, "actor": self.actor, "action": self.action,
            "target": self.target, "outcome": self.outcome, "reason": self.reason, "ip": self.ip,
        })
    }
}

/// Which audit events to list.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub since_ms: Option<i64>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub limit: i64,
}

impl Store {
    pub async fn record_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO audit_events (at_ms, actor, action, target, outcome, reason, ip) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(event.at_ms)
            .bind(&event.actor)
            .bind(&event.action)
            .bind(&event.target)
            .bind(&event.outcome)
            .bind(&event.reason)
            .bind(&event.ip)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Newest first.
    pub async fn audit_events(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError> {
        let limit = if filter.limit <= 0 {
            100
        } else {
            filter.limit.min(1000)
        };
        let rows = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT at_ms, actor, action, target, outcome, reason, ip FROM audit_events \
                 WHERE ($1 IS NULL OR at_ms >= $1) AND ($2 IS NULL OR actor = $2) \
                 AND ($3 IS NULL OR action = $3) ORDER BY id DESC LIMIT $4",
            )
            .bind(filter.since_ms)
            .bind(&filter.actor)
            .bind(&filter.action)
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }
}
