//! The revocation bus: tells every gateway process which sessions were revoked,
//! wherever the revocation happened (this process, another replica, the CLI).
//!
//! The revocation log is the source of truth. Each process reads it from a cursor
//! (its last position, [`crate::LogCursor`]), so a revocation committed while a
//! process was not listening is read when it is back, never lost:
//!
//! - PostgreSQL: a notification on [`crate::REVOCATION_CHANNEL`] only wakes the
//!   follower, which reads the log from its cursor. A heartbeat on the listening
//!   connection (every [`HEARTBEAT`], answered within [`HEARTBEAT_DEADLINE`])
//!   notices a reset or a silently dropped connection within a second; the
//!   follower then reports [`BusEvent::Lost`], reconnects, reads the log from its
//!   cursor and reports [`BusEvent::Restored`]. Every [`BACKSTOP`] it also reads
//!   the log unprompted.
//! - SQLite: other processes on the same file cannot notify us, so the log is read
//!   every [`POLL_INTERVAL`]; a failed read is `Lost`, the next good one `Restored`.
//!
//! Between `Lost` and `Restored` subscribers must not trust what they cached: the
//! gateway then checks every request against the database (which fails closed
//! when the database is unreachable).
//!
//! Log rows are swept ten minutes after they were written ([`Store::sweep`]). A
//! process away longer cannot read everything it missed, so on every `Restored`
//! subscribers also re-check their live connections against the database.
//!
//! Configuration changes travel beside revocations, in their own log
//! (`config_changes`) and channel ([`crate::CONFIG_CHANNEL`]), as
//! [`BusEvent::Changed`] with a typed [`ConfigTopic`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::Executor as _;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::broadcast;
use tokio::time::{MissedTickBehavior, timeout};

use crate::{
    Backend, CONFIG_CHANNEL, Log, LogCursor, LogEntry, REVOCATION_CHANNEL, Store, StoreError,
};

/// Well inside the 1 s revocation promise, and one indexed query per tick.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How often the listening connection is asked to answer.
pub const HEARTBEAT: Duration = Duration::from_millis(250);
/// How long it has to answer: a reset or silently dropped connection is noticed
/// within `HEARTBEAT + HEARTBEAT_DEADLINE`.
pub const HEARTBEAT_DEADLINE: Duration = Duration::from_millis(600);
/// How often the log is read without a notification, as a backstop.
pub const BACKSTOP: Duration = Duration::from_secs(5);
/// The longest a log read, or connecting and subscribing, may take.
const READ_DEADLINE: Duration = Duration::from_secs(2);
/// Pause between attempts to reconnect.
const RETRY: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// This session (or API token, or internal credential) was revoked.
    Revoked(String),
    /// Shared configuration changed: whoever caches it reloads. Never a revocation.
    Changed(ConfigTopic),
    /// Revocations may have been missed: forget every cached session.
    Flush,
    /// The bus is down (the log cannot be read, or the listening connection
    /// stopped answering): trust no cache until [`BusEvent::Restored`].
    Lost,
    /// The bus is back and every revocation missed meanwhile has been delivered.
    Restored,
}

/// What shared configuration changed (the `config_changes` log and, on
/// PostgreSQL, the payload on [`crate::CONFIG_CHANNEL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigTopic {
    /// OpenID providers or group mappings.
    OidcProviders,
    /// External clients (their scopes decide which pages say "access required").
    Clients,
}

impl ConfigTopic {
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigTopic::OidcProviders => "oidc",
            ConfigTopic::Clients => "clients",
        }
    }

    /// A stored topic; `None` for one this version does not know (written by a
    /// newer version: ignored).
    pub fn parse(topic: &str) -> Option<Self> {
        match topic {
            "oidc" => Some(ConfigTopic::OidcProviders),
            "clients" => Some(ConfigTopic::Clients),
            _ => None,
        }
    }
}

fn changed(topic: &str) -> Option<BusEvent> {
    let parsed = ConfigTopic::parse(topic).map(BusEvent::Changed);
    if parsed.is_none() {
        tracing::warn!(topic, "unknown configuration topic on the bus; ignored");
    }
    parsed
}

/// A running bus. Its task stops when the last clone of the bus is dropped.
#[derive(Debug, Clone)]
pub struct RevocationBus {
    sender: broadcast::Sender<BusEvent>,
    connected: Arc<AtomicBool>,
    _task: Arc<AbortOnDrop>,
}

/// Stops the listening task when the last handle to the bus is dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl RevocationBus {
    /// Starts following. Returns once the listener is subscribed (PostgreSQL) and
    /// the cursors are at the end of the logs, so no revocation committed after
    /// this call returns can be missed.
    pub async fn start(store: Store) -> Result<Self, StoreError> {
        let (sender, _) = broadcast::channel(4096);
        let connected = Arc::new(AtomicBool::new(true));
        let listener = match &store.backend {
            Backend::Postgres(pool) => {
                let options = (*pool.connect_options()).clone();
                Some((subscribe(&options, store.timeout).await?, options))
            }
            Backend::Sqlite(_) => None,
        };
        let follower = Follower {
            revocations: store.log_end(Log::Revocations).await?,
            changes: store.log_end(Log::ConfigChanges).await?,
            store,
            sender: sender.clone(),
            connected: connected.clone(),
        };
        let task = match listener {
            Some((listener, options)) => tokio::spawn(follow_postgres(follower, options, listener)),
            None => tokio::spawn(poll_sqlite(follower)),
        };
        Ok(Self {
            sender,
            connected,
            _task: Arc::new(AbortOnDrop(task.abort_handle())),
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<BusEvent> {
        self.sender.subscribe()
    }

    /// Whether the bus is up: every revocation committed so far has been or is
    /// being delivered.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Publishes an event to this process's subscribers only (for revocations made
    /// here, which need not wait for the database round trip).
    pub fn publish_local(&self, event: BusEvent) {
        let _ = self.sender.send(event);
    }
}

/// Reads the logs from its cursors and publishes what it finds.
struct Follower {
    store: Store,
    sender: broadcast::Sender<BusEvent>,
    revocations: LogCursor,
    changes: LogCursor,
    connected: Arc<AtomicBool>,
}

impl Follower {
    /// Publishes every entry committed since the cursors.
    async fn catch_up(&mut self, revocations: bool, changes: bool) -> Result<(), String> {
        // Each batch is delivered as soon as it is read: the cursor has moved
        // past it, so a later batch's failure must not lose it.
        let (store, sender) = (&self.store, &self.sender);
        let read = async {
            if revocations {
                read_all(store, Log::Revocations, &mut self.revocations, |entry| {
                    crate::metrics::REVOCATIONS_RECEIVED.inc();
                    crate::metrics::BUS_DELAY.observe(entry.age());
                    let _ = sender.send(BusEvent::Revoked(entry.value));
                })
                .await?;
            }
            if changes {
                read_all(store, Log::ConfigChanges, &mut self.changes, |entry| {
                    if let Some(event) = changed(&entry.value) {
                        let _ = sender.send(event);
                    }
                })
                .await?;
            }
            Ok::<_, StoreError>(())
        };
        match timeout(READ_DEADLINE, read).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(format!("reading the revocation log failed: {error}")),
            Err(_) => {
                crate::metrics::TIMEOUTS.inc();
                Err(format!(
                    "reading the revocation log took over {READ_DEADLINE:?}"
                ))
            }
        }
    }

    fn lost(&self, why: &str) {
        if self.connected.swap(false, Ordering::AcqRel) {
            crate::metrics::BUS_LOST.inc();
            tracing::warn!(
                why,
                "revocation bus lost; every request is checked against the database until it is back"
            );
            let _ = self.sender.send(BusEvent::Lost);
        }
    }

    fn restored(&self) {
        if !self.connected.swap(true, Ordering::AcqRel) {
            crate::metrics::BUS_RECONNECTS.inc();
            tracing::info!("revocation bus restored; revocations missed meanwhile were applied");
            let _ = self.sender.send(BusEvent::Restored);
        }
    }
}

/// Hands every entry of `log` after `cursor` to `deliver`, batch by batch.
async fn read_all(
    store: &Store,
    log: Log,
    cursor: &mut LogCursor,
    mut deliver: impl FnMut(LogEntry),
) -> Result<(), StoreError> {
    loop {
        let (entries, more) = store.read_log(log, cursor).await?;
        entries.into_iter().for_each(&mut deliver);
        if !more {
            return Ok(());
        }
    }
}

/// A listener on its own connection (its own pool of one), so a connection that
/// stopped answering is never handed back to the request path.
async fn subscribe(options: &PgConnectOptions, wait: Duration) -> Result<PgListener, StoreError> {
    let connect = async {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(wait)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(options.clone());
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.eager_reconnect(false);
        listener.ignore_pool_close_event(true);
        listener
            .listen_all([REVOCATION_CHANNEL, CONFIG_CHANNEL])
            .await?;
        Ok::<_, StoreError>(listener)
    };
    timeout(wait + READ_DEADLINE, connect)
        .await
        .map_err(|_| StoreError::timeout(wait + READ_DEADLINE))?
}

async fn follow_postgres(mut f: Follower, options: PgConnectOptions, listener: PgListener) {
    let mut listener = Some(listener);
    loop {
        let mut current = match listener.take() {
            Some(current) => current,
            None => match subscribe(&options, f.store.timeout).await {
                Ok(current) => current,
                Err(error) => {
                    f.lost(&format!("reconnecting failed: {error}"));
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            },
        };
        // Everything committed while nobody was listening.
        if let Err(why) = f.catch_up(true, true).await {
            f.lost(&why);
            tokio::time::sleep(RETRY).await;
            continue;
        }
        f.restored();
        let why = listen(&mut f, &mut current).await;
        f.lost(&why);
    }
}

/// Follows notifications and heartbeats until the connection fails; says why.
async fn listen(f: &mut Follower, listener: &mut PgListener) -> String {
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut backstop = tokio::time::interval(BACKSTOP);
    backstop.set_missed_tick_behavior(MissedTickBehavior::Delay);
    backstop.tick().await;
    loop {
        enum Tick {
            Received(Result<Option<sqlx::postgres::PgNotification>, sqlx::Error>),
            Heartbeat,
            Backstop,
        }
        let tick = tokio::select! {
            received = listener.try_recv() => Tick::Received(received),
            _ = heartbeat.tick() => Tick::Heartbeat,
            _ = backstop.tick() => Tick::Backstop,
        };
        let mut wake = Wake::default();
        match tick {
            Tick::Received(Ok(Some(notification))) => wake.add(notification.channel()),
            Tick::Received(Ok(None)) => return "the listening connection was closed".into(),
            Tick::Received(Err(error)) => {
                return format!("the listening connection failed: {error}");
            }
            Tick::Heartbeat => {
                match timeout(HEARTBEAT_DEADLINE, (&mut *listener).execute("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => return format!("heartbeat failed: {error}"),
                    Err(_) => {
                        crate::metrics::TIMEOUTS.inc();
                        return format!("heartbeat unanswered for {HEARTBEAT_DEADLINE:?}");
                    }
                }
            }
            Tick::Backstop => {
                wake = Wake {
                    revocations: true,
                    changes: true,
                }
            }
        }
        // Notifications that arrived meanwhile: one read serves them all.
        while let Some(notification) = listener.next_buffered() {
            wake.add(notification.channel());
        }
        if (wake.revocations || wake.changes)
            && let Err(why) = f.catch_up(wake.revocations, wake.changes).await
        {
            return why;
        }
    }
}

/// Which logs a round of notifications asks to read.
#[derive(Debug, Default)]
struct Wake {
    revocations: bool,
    changes: bool,
}

impl Wake {
    fn add(&mut self, channel: &str) {
        if channel == CONFIG_CHANNEL {
            self.changes = true;
        } else {
            self.revocations = true;
        }
    }
}

async fn poll_sqlite(mut f: Follower) {
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match f.catch_up(true, true).await {
            Ok(()) => f.restored(),
            Err(why) => f.lost(&why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_topics_round_trip_and_unknown_ones_are_ignored() {
        {
            let topic = ConfigTopic::OidcProviders;
            assert_eq!(ConfigTopic::parse(topic.as_str()), Some(topic));
        }
        assert_eq!(
            changed("oidc"),
            Some(BusEvent::Changed(ConfigTopic::OidcProviders))
        );
        assert_eq!(changed("cfg:oidc"), None);
        assert_eq!(changed("from-a-newer-version"), None);
    }
}
