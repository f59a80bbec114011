//! Portcullis storage: one [`Store`] over SQLite (the embedded default) or
//! PostgreSQL (replicas), with the same schema, the same SQL text and the same tests.
//!
//! Both dialects accept `$n` placeholders, times are integer milliseconds and
//! booleans are bound as `bool`, so every query is written once and the
//! `on_pool!` macro compiles it against each driver. Only migrations (DDL) and the
//! [`bus`] (`LISTEN/NOTIFY` versus polling the revocation log) differ by backend.
//!
//! Rows are mapped to `portcullis-core` domain types here; nothing above this crate
//! sees an `sqlx` type.
#![forbid(unsafe_code)]

use std::str::FromStr;
use std::time::Duration;

use sqlx::ConnectOptions as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

mod api_tokens;
pub mod audit;
pub mod bus;
pub mod clients;
mod internal;
mod keys;
mod log;
pub mod metrics;
pub mod oidc;
mod sessions;
mod tickets;
pub use sessions::SessionFilter;

pub use api_tokens::ApiTokenRow;
pub use audit::{AuditEvent, AuditFilter, AuditPage};
pub use bus::{BusEvent, ConfigTopic, RevocationBus};
pub use clients::{AccessTokenRow, ClientRow, ClientSwitch, LinkRefusal, TokenRef};
pub use log::{Log, LogCursor, LogEntry};
pub use oidc::{GroupMapping, ProviderDelete};

/// Channel used for revocation notifications on PostgreSQL.
pub const REVOCATION_CHANNEL: &str = "portcullis_revocations";
/// PostgreSQL channel on which configuration changes are announced.
pub const CONFIG_CHANNEL: &str = "portcullis_config";

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database URL must start with sqlite:// or postgres:// (got scheme {0:?})")]
    UnsupportedUrl(String),
    /// Said in one sentence with the fix where there is one; the driver's error is not also a
    /// `source`, so a chain of causes does not repeat it.
    #[error("{}", describe(.0))]
    Database(sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("the database did not answer within {0:?}")]
    Timeout(Duration),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        metrics::DATABASE_ERRORS.inc();
        StoreError::Database(error)
    }
}

impl StoreError {
    /// The database did not answer within `wait` (counted for `/metrics`).
    pub fn timeout(wait: Duration) -> Self {
        metrics::TIMEOUTS.inc();
        StoreError::Timeout(wait)
    }
}

/// A driver error as an operator reads it: what happened and, where there is
/// one, the fix.
fn describe(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "the database refused the connection: is it running, at this address and port?".into()
        }
        sqlx::Error::Io(io) => format!("the connection to the database failed: {io}"),
        sqlx::Error::PoolTimedOut => "no connection to the database in time: it is down, \
             unreachable or overloaded"
            .into(),
        sqlx::Error::PoolClosed => "the connections to the database are closed".into(),
        sqlx::Error::Database(db) if db.code().as_deref() == Some("3D000") => {
            let name = db.message().split('"').nth(1).unwrap_or("portcullis");
            format!(
                "PostgreSQL has no database \"{name}\"; create it with `createdb {name}` \
                 (or CREATE DATABASE in psql)"
            )
        }
        sqlx::Error::Database(db) => format!("the database refused a statement: {}", db.message()),
        other => format!("database error: {other}"),
    }
}

#[derive(Debug, Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Sqlite,
    Postgres,
}

/// Runs `$body` with `$pool` bound to the backend's pool; the body is compiled once
/// per driver, so one SQL text serves both.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            $crate::Backend::Sqlite($pool) => $body,
            $crate::Backend::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// Runs `$body` with `$conn` (`&mut` a connection of the pool) within `$wait`,
/// acquiring included. A connection whose work timed out is closed, never handed
/// back: the pool tests a returned connection with a query that has no time
/// limit, so one that went silent would hold its place until TCP gives up.
macro_rules! bounded_on_conn {
    ($store:expr, $wait:expr, $conn:ident => $body:expr) => {{
        let wait: std::time::Duration = $wait;
        let deadline = tokio::time::Instant::now() + wait;
        match &$store.backend {
            $crate::Backend::Sqlite(pool) => {
                $crate::bounded_on_conn!(@run pool, deadline, wait, $conn => $body)
            }
            $crate::Backend::Postgres(pool) => {
                $crate::bounded_on_conn!(@run pool, deadline, wait, $conn => $body)
            }
        }
    }};
    (@run $pool:ident, $deadline:ident, $wait:ident, $conn:ident => $body:expr) => {{
        match tokio::time::timeout_at($deadline, $pool.acquire()).await {
            Err(_) => Err($crate::StoreError::timeout($wait)),
            Ok(Err(e)) => Err($crate::StoreError::from(e)),
            Ok(Ok(mut held)) => {
                let outcome = tokio::time::timeout_at($deadline, async {
                    let $conn = &mut *held;
                    Ok::<_, $crate::StoreError>($body)
                })
                .await;
                match outcome {
                    Ok(result) => result,
                    Err(_) => {
                        held.close_on_drop();
                        Err($crate::StoreError::timeout($wait))
                    }
                }
            }
        }
    }};
}
pub(crate) use bounded_on_conn;

/// Records that `$id` (a session or API token id) was revoked, inside the revoking
/// transaction `$tx`: a revocation-log row for pollers and, on PostgreSQL
/// (`$notify`), a `NOTIFY` delivered at commit. Every revocation goes through here,
/// so every gateway hears of exactly the committed ones.
macro_rules! log_revocation {
    ($tx:expr, $id:expr, $now_ms:expr, $notify:expr) => {{
        sqlx::query("INSERT INTO revocation_log (session_id, at_ms) VALUES ($1, $2)")
            .bind($id)
            .bind($now_ms)
            .execute(&mut *$tx)
            .await?;
        if $notify {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind($crate::REVOCATION_CHANNEL)
                .bind($id)
                .execute(&mut *$tx)
                .await?;
        }
    }};
}
pub(crate) use log_revocation;

/// The database, cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
    /// How long a request may wait for the database (a connection, and the
    /// reads on the request path) before failing closed.
    timeout: Duration,
}

/// The default bound on waiting for the database (`--db-timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

impl Store {
    /// Connects to `url` (`sqlite://PATH` or `postgres://…`). SQLite files are
    /// created if missing and opened in WAL mode with full synchronous commits, so a
    /// login whose response was sent survives `kill -9` (and power loss).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_timeout(url, DEFAULT_TIMEOUT).await
    }

    /// [`Store::connect`], waiting at most `timeout` for a connection (and for the
    /// reads on the request path: [`Store::session`], API tokens, [`Store::ping`]).
    pub async fn connect_with_timeout(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let scheme = url.split(':').next().unwrap_or_default();
        let backend = match scheme {
            "sqlite" => {
                let options = SqliteConnectOptions::from_str(url)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(5))
                    .foreign_keys(true)
                    // Every statement at debug would be one line per bus poll
                    // (five a second): statements at trace, slow ones still warn.
                    .log_statements(::log::LevelFilter::Trace);
                let pool = SqlitePoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(timeout)
                    .connect_with(options)
                    .await?;
                Backend::Sqlite(pool)
            }
            "postgres" | "postgresql" => {
                let options =
                    PgConnectOptions::from_str(url)?.log_statements(::log::LevelFilter::Trace);
                let pool = match PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(timeout)
                    .connect_with(options.clone())
                    .await
                {
                    Ok(pool) => pool,
                    // The pool says only that it timed out; one direct attempt
                    // says why (a refused connection, a missing database).
                    Err(sqlx::Error::PoolTimedOut) => {
                        use sqlx::Connection as _;
                        let direct = sqlx::PgConnection::connect_with(&options);
                        return Err(match tokio::time::timeout(timeout, direct).await {
                            Ok(Err(why)) => why.into(),
                            _ => sqlx::Error::PoolTimedOut.into(),
                        });
                    }
                    Err(other) => return Err(other.into()),
                };
                Backend::Postgres(pool)
            }
            other => return Err(StoreError::UnsupportedUrl(other.to_owned())),
        };
        Ok(Self { backend, timeout })
    }

    /// The database at `url`, to read only (`check-config`): a SQLite file is
    /// opened read-only, never created, and no file is added beside it (files
    /// made by whoever runs the check could lock the gateway's own user out of
    /// them). When it has a WAL (a gateway is running, or stopped uncleanly) the
    /// WAL is read too (SQLite adds the shared-memory file only if that alone is
    /// missing); otherwise everything is in the file itself, opened as immutable
    /// (a gateway starting to write at that very moment could make the read
    /// wrong or fail, never change the file). PostgreSQL is read in read-only
    /// transactions.
    pub async fn open_read_only(url: &str, wait: Duration) -> Result<Self, StoreError> {
        let scheme = url.split(':').next().unwrap_or_default();
        let backend = match scheme {
            "sqlite" => {
                let options = SqliteConnectOptions::from_str(url)?
                    .read_only(true)
                    .create_if_missing(false);
                let beside = |suffix: &str| {
                    let mut path = options.get_filename().as_os_str().to_owned();
                    path.push(suffix);
                    std::path::Path::new(&path).exists()
                };
                let in_use = beside("-wal");
                let options = options
                    .immutable(!in_use)
                    .log_statements(::log::LevelFilter::Trace);
                let pool = SqlitePoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(wait)
                    .connect_with(options)
                    .await?;
                Backend::Sqlite(pool)
            }
            "postgres" | "postgresql" => {
                let options = PgConnectOptions::from_str(url)?
                    .options([("default_transaction_read_only", "on")])
                    .log_statements(::log::LevelFilter::Trace);
                let pool = PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(wait)
                    .connect_with(options)
                    .await?;
                Backend::Postgres(pool)
            }
            other => return Err(StoreError::UnsupportedUrl(other.to_owned())),
        };
        Ok(Self {
            backend,
            timeout: wait,
        })
    }

    pub fn kind(&self) -> BackendKind {
        match self.backend {
            Backend::Sqlite(_) => BackendKind::Sqlite,
            Backend::Postgres(_) => BackendKind::Postgres,
        }
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await?,
            Backend::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await?,
        }
        Ok(())
    }

    /// A trivial query, for readiness checks (bounded like the request path's).
    pub async fn ping(&self) -> Result<(), StoreError> {
        bounded_on_conn!(self, self.timeout, conn => {
            sqlx::query("SELECT 1").execute(&mut *conn).await?;
        })
    }

    /// Whether the database takes a write (a full or read-only disk does not),
    /// within `within`: one row per probing process, rewritten.
    pub async fn probe_write(
        &self,
        process: &str,
        now_ms: i64,
        within: Duration,
    ) -> Result<(), StoreError> {
        bounded_on_conn!(self, within, conn => {
            sqlx::query(
                "INSERT INTO readiness_probe (id, at_ms) VALUES ($1, $2) \
                 ON CONFLICT (id) DO UPDATE SET at_ms = excluded.at_ms",
            )
            .bind(process)
            .bind(now_ms)
            .execute(&mut *conn)
            .await?;
        })
    }

    /// The bound on waiting for the database.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Closes every pooled connection (SQLite then folds its WAL into the file).
    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await);
    }

    /// Deletes rows nobody needs any more, at most `batch` of each kind per call:
    /// sessions a day past their expiry or revocation, revocation-log entries older
    /// than ten minutes (every live process has read them long before), expired
    /// WebSocket tickets.
    pub async fn sweep(&self, now_ms: i64, batch: i64) -> Result<u64, StoreError> {
        // Each statement deletes at most `$2` rows older than its `$1`.
        let sweeps: [(&'static str, i64); 8] = [
            (
                "DELETE FROM readiness_probe WHERE id IN (SELECT id FROM readiness_probe \
                 WHERE at_ms < $1 LIMIT $2)",
                now_ms - 24 * 3600 * 1000,
            ),
            (
                "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions \
                 WHERE expires_ms < $1 OR revoked_ms < $1 LIMIT $2)",
                now_ms - 24 * 3600 * 1000,
            ),
            (
                "DELETE FROM ws_tickets WHERE hash IN (SELECT hash FROM ws_tickets \
                 WHERE expires_ms < $1 LIMIT $2)",
                now_ms,
            ),
            (
                "DELETE FROM revocation_log WHERE seq IN (SELECT seq FROM revocation_log \
                 WHERE at_ms < $1 LIMIT $2)",
                now_ms - 600 * 1000,
            ),
            (
                "DELETE FROM config_changes WHERE seq IN (SELECT seq FROM config_changes \
                 WHERE at_ms < $1 LIMIT $2)",
                now_ms - 600 * 1000,
            ),
            (
                "DELETE FROM oidc_pending WHERE id IN (SELECT id FROM oidc_pending \
                 WHERE expires_ms < $1 LIMIT $2)",
                now_ms,
            ),
            (
                "DELETE FROM oidc_logout_jti WHERE (provider_id, jti) IN (SELECT provider_id, jti \
                 FROM oidc_logout_jti WHERE expires_ms < $1 LIMIT $2)",
                now_ms,
            ),
            (
                "DELETE FROM oidc_session_tokens WHERE session_id IN (SELECT t.session_id \
                 FROM oidc_session_tokens t LEFT JOIN sessions s ON s.id = t.session_id \
                 WHERE s.id IS NULL OR s.revoked_ms IS NOT NULL OR s.expires_ms < $1 LIMIT $2)",
                now_ms,
            ),
        ];
        let mut removed = 0;
        for (sql, older_than) in sweeps {
            removed += on_pool!(self, pool => {
                sqlx::query(sql).bind(older_than).bind(batch).execute(pool).await?.rows_affected()
            });
        }
        Ok(removed)
    }
}
