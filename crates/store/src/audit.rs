//! The audit log: one row per security-relevant event. Reasons are internal
//! (for operators); secrets never appear in any field.

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
    /// How many occurrences the row stands for (1, or the attempts of one window
    /// when repeated throttled attempts are aggregated).
    pub count: i64,
}

impl AuditEvent {
    /// The event as one log line on target `portcullis::audit`, its parts as
    /// fields (`--log-format json` makes each a JSON key).
    pub fn log(&self) {
        tracing::info!(
            target: "portcullis::audit",
            at_ms = self.at_ms,
            actor = %self.actor,
            action = %self.action,
            object = self.target.as_deref(),
            outcome = %self.outcome,
            reason = self.reason.as_deref(),
            ip = self.ip.as_deref(),
            count = self.count,
            "audit"
        );
    }
}

/// Which audit events to list.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub since_ms: Option<i64>,
    /// Events strictly before this time.
    pub until_ms: Option<i64>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<String>,
    /// Cursor: events older than the event with this id (from the previous page).
    pub before_id: Option<i64>,
    /// At most this many (1 to 1000; 100 when 0).
    pub limit: i64,
}

/// One page of audit events, newest first, with the cursor of the next page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditPage {
    pub events: Vec<(i64, AuditEvent)>,
    /// Pass as `before_id` for the next page; `None` on the last page.
    pub next: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    id: i64,
    #[sqlx(flatten)]
    event: AuditEvent,
}

impl Store {
    pub async fn record_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO audit_events (at_ms, actor, action, target, outcome, reason, ip, count) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(event.at_ms)
            .bind(&event.actor)
            .bind(&event.action)
            .bind(&event.target)
            .bind(&event.outcome)
            .bind(&event.reason)
            .bind(&event.ip)
            .bind(event.count.max(1))
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Deletes at most `batch` audit events older than `before_ms` (the retention
    /// period), oldest first; returns how many.
    pub async fn sweep_audit(&self, before_ms: i64, batch: i64) -> Result<u64, StoreError> {
        let removed = on_pool!(self, pool => {
            sqlx::query(
                "DELETE FROM audit_events WHERE id IN (SELECT id FROM audit_events \
                 WHERE at_ms < $1 ORDER BY at_ms LIMIT $2)",
            )
            .bind(before_ms)
            .bind(batch)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(removed)
    }

    /// Newest first (one page).
    pub async fn audit_events(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError> {
        let page = self.audit_page(filter).await?;
        Ok(page.events.into_iter().map(|(_, e)| e).collect())
    }

    /// One page of events, newest first; ids are the cursor (`before_id`), so a
    /// page never repeats or skips an event however many are written meanwhile.
    pub async fn audit_page(&self, filter: &AuditFilter) -> Result<AuditPage, StoreError> {
        let limit = if filter.limit <= 0 {
            100
        } else {
            filter.limit.min(1000)
        };
        let rows: Vec<AuditRow> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, at_ms, actor, action, target, outcome, reason, ip, count FROM audit_events \
                 WHERE ($1 IS NULL OR at_ms >= $1) AND ($2 IS NULL OR at_ms < $2) \
                 AND ($3 IS NULL OR actor = $3) AND ($4 IS NULL OR action = $4) \
                 AND ($5 IS NULL OR outcome = $5) AND ($6 IS NULL OR id < $6) \
                 ORDER BY id DESC LIMIT $7",
            )
            .bind(filter.since_ms)
            .bind(filter.until_ms)
            .bind(&filter.actor)
            .bind(&filter.action)
            .bind(&filter.outcome)
            .bind(filter.before_id)
            .bind(limit + 1)
            .fetch_all(pool)
            .await?
        });
        let more = rows.len() as i64 > limit;
        let events: Vec<(i64, AuditEvent)> = rows
            .into_iter()
            .take(usize::try_from(limit).unwrap_or(100))
            .map(|r| (r.id, r.event))
            .collect();
        let next = if more {
            events.last().map(|(id, _)| *id)
        } else {
            None
        };
        Ok(AuditPage { events, next })
    }
}
