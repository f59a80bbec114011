//! Reading the two logs the revocation bus follows (revocations and configuration
//! changes) from a cursor, so a follower that was away reads exactly what it
//! missed.
//!
//! On SQLite one transaction writes at a time, so rows commit in sequence order
//! and "everything after the last sequence number read" is exact. On PostgreSQL
//! concurrent transactions can commit out of sequence order: a row with a lower
//! `seq` may become visible after a higher one was read. Each row records the
//! transaction that wrote it (`tx`, migration 0012); a reader remembers the oldest
//! transaction still running when it read (`pg_snapshot_xmin`), and its next read
//! also takes the rows of that transaction and every later one. A row missing
//! below the cursor belongs to a transaction that was running at the last read,
//! so it is found; rows already returned are not returned twice.

use std::collections::HashSet;

use crate::{Backend, Store, StoreError};

/// Rows read per call.
pub const LOG_BATCH: i64 = 1000;

/// The logs the bus follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Log {
    /// Revoked session, API token and internal-credential ids.
    Revocations,
    /// Topics of shared configuration that changed.
    ConfigChanges,
}

/// One entry of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// What the entry says: a revoked id, a configuration topic.
    pub value: String,
    /// When it was written (the writer's clock), in Unix milliseconds.
    pub at_ms: i64,
}

impl LogEntry {
    /// How long ago it was written, by this process's clock (zero when the
    /// writer's clock is ahead).
    pub fn age(&self) -> std::time::Duration {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let at = u128::try_from(self.at_ms).unwrap_or(0);
        std::time::Duration::from_millis(u64::try_from(now.saturating_sub(at)).unwrap_or(u64::MAX))
    }
}

/// A follower's position in one log.
#[derive(Debug, Clone, Default)]
pub struct LogCursor {
    /// Every row at or below this has been read, except (PostgreSQL) rows of
    /// transactions still running at the last read.
    seq: i64,
    /// PostgreSQL: the oldest transaction id still running at the last read
    /// (`xid8` as text). Its rows, and later transactions', may still commit below
    /// `seq`.
    running_from: Option<String>,
    /// Rows returned by the last read, so a row read again (its transaction was
    /// running) is not returned twice.
    returned: HashSet<i64>,
}

impl LogCursor {
    /// The highest sequence number read.
    pub fn seq(&self) -> i64 {
        self.seq
    }
}

/// A row of a PostgreSQL log read: sequence, entry and time (absent when
/// nothing was found), and the oldest transaction running.
type PostgresLogRow = (Option<i64>, Option<String>, Option<i64>, String);

/// One log's SQL: end and read, for SQLite and for PostgreSQL.
struct LogSql {
    sqlite_end: &'static str,
    sqlite_read: &'static str,
    postgres_end: &'static str,
    postgres_read: &'static str,
}

/// The statements for one log table and its entry column.
macro_rules! log_sql {
    ($table:literal, $entry:literal) => {
        LogSql {
            sqlite_end: concat!("SELECT COALESCE(MAX(seq), 0) FROM ", $table),
            sqlite_read: concat!(
                "SELECT seq, ",
                $entry,
                ", at_ms FROM ",
                $table,
                " WHERE seq > $1 ORDER BY seq LIMIT $2"
            ),
            postgres_end: concat!(
                "SELECT COALESCE(MAX(seq), 0), pg_snapshot_xmin(pg_current_snapshot())::text FROM ",
                $table
            ),
            // Rows of transactions running at the last read (which may have
            // committed below the cursor since), then the next batch after it; the
            // oldest transaction running now, from the same snapshot.
            postgres_read: concat!(
                "WITH snap AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) \
                 SELECT r.seq, r.entry, r.at_ms, snap.xmin::text FROM snap LEFT JOIN LATERAL ( \
                 (SELECT seq, ",
                $entry,
                " AS entry, at_ms FROM ",
                $table,
                " WHERE seq <= $1 AND $3::text IS NOT NULL AND tx >= $3::xid8) \
                 UNION ALL (SELECT seq, ",
                $entry,
                " AS entry, at_ms FROM ",
                $table,
                " WHERE seq > $1 ORDER BY seq LIMIT $2)) r ON true ORDER BY r.seq"
            ),
        }
    };
}

impl Log {
    fn sql(self) -> LogSql {
        match self {
            Log::Revocations => log_sql!("revocation_log", "session_id"),
            Log::ConfigChanges => log_sql!("config_changes", "topic"),
        }
    }
}

impl Store {
    /// A cursor at the end of `log`: reading from it returns what commits after
    /// this call (on PostgreSQL, also what transactions running now commit).
    pub async fn log_end(&self, log: Log) -> Result<LogCursor, StoreError> {
        let sql = log.sql();
        let cursor = match &self.backend {
            Backend::Sqlite(pool) => LogCursor {
                seq: sqlx::query_scalar(sql.sqlite_end).fetch_one(pool).await?,
                ..LogCursor::default()
            },
            Backend::Postgres(pool) => {
                let (seq, running_from): (i64, String) =
                    sqlx::query_as(sql.postgres_end).fetch_one(pool).await?;
                LogCursor {
                    seq,
                    running_from: Some(running_from),
                    returned: HashSet::new(),
                }
            }
        };
        Ok(cursor)
    }

    /// The entries of `log` committed since `cursor`, oldest first, advancing it;
    /// `true` beside them when there may be more (call again).
    pub async fn read_log(
        &self,
        log: Log,
        cursor: &mut LogCursor,
    ) -> Result<(Vec<LogEntry>, bool), StoreError> {
        let sql = log.sql();
        let (rows, running_from): (Vec<(i64, String, i64)>, Option<String>) = match &self.backend {
            Backend::Sqlite(pool) => {
                let rows = sqlx::query_as(sql.sqlite_read)
                    .bind(cursor.seq)
                    .bind(LOG_BATCH)
                    .fetch_all(pool)
                    .await?;
                (rows, None)
            }
            Backend::Postgres(pool) => {
                let found: Vec<PostgresLogRow> = sqlx::query_as(sql.postgres_read)
                    .bind(cursor.seq)
                    .bind(LOG_BATCH)
                    .bind(cursor.running_from.as_deref())
                    .fetch_all(pool)
                    .await?;
                let xmin = found.first().map(|(_, _, _, xmin)| xmin.clone());
                let rows = found
                    .into_iter()
                    .filter_map(|(seq, entry, at_ms, _)| Some((seq?, entry?, at_ms?)))
                    .collect();
                (rows, xmin)
            }
        };
        let new = rows.iter().filter(|(seq, _, _)| *seq > cursor.seq).count();
        let returned = rows.iter().map(|(seq, _, _)| *seq).collect();
        let max = rows.iter().map(|(seq, _, _)| *seq).max();
        let entries = rows
            .into_iter()
            .filter(|(seq, _, _)| *seq > cursor.seq || !cursor.returned.contains(seq))
            .map(|(_, value, at_ms)| LogEntry { value, at_ms })
            .collect();
        if let Some(max) = max {
            cursor.seq = cursor.seq.max(max);
        }
        if running_from.is_some() {
            cursor.running_from = running_from;
        }
        cursor.returned = returned;
        Ok((entries, new as i64 >= LOG_BATCH))
    }
}
