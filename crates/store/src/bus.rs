//! The revocation bus: tells every gateway process which sessions were revoked,
//! wherever the revocation happened (this process, another replica, the CLI).
//!
//! PostgreSQL: `LISTEN` on [`crate::REVOCATION_CHANNEL`]. Notifications sent while
//! the listener is disconnected are lost, so a lost connection is reported as
//! [`BusEvent::Flush`] and subscribers drop everything they cached.
//!
//! SQLite: other processes on the same file cannot notify us, so the bus polls the
//! revocation log every [`POLL_INTERVAL`]; a failed poll is also a `Flush`.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::broadcast;

use crate::{Backend, REVOCATION_CHANNEL, Store};

/// Well inside the 1 s revocation promise, and one indexed query per tick.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// This session (or API token, or internal credential) was revoked.
    Revoked(String),
    /// Shared configuration changed (the log entry's topic, e.g. `cfg:oidc`):
    /// whoever caches it reloads. Never a revocation.
    Changed(String),
    /// Revocations may have been missed: forget every cached session.
    Flush,
}

/// Prefix of revocation-log entries that announce a configuration change.
pub const CHANGE_PREFIX: &str = "cfg:";

impl BusEvent {
    /// The event a revocation-log entry (or its notification) stands for.
    pub fn from_log(entry: String) -> Self {
        if entry.starts_with(CHANGE_PREFIX) {
            BusEvent::Changed(entry)
        } else {
            BusEvent::Revoked(entry)
        }
    }
}

/// A running bus. Its task stops when the last clone of the bus is dropped.
#[derive(Debug, Clone)]
pub struct RevocationBus {
    sender: broadcast::Sender<BusEvent>,
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
    /// Starts listening. Returns once the listener is subscribed (PostgreSQL) or the
    /// poll position is known (SQLite), so no revocation committed after this call
    /// returns can be missed.
    pub async fn start(store: Store) -> Result<Self, crate::StoreError> {
        let (sender, _) = broadcast::channel(4096);
        let task = match &store.backend {
            Backend::Postgres(pool) => {
                let mut listener = PgListener::connect_with(pool).await?;
                listener.listen(REVOCATION_CHANNEL).await?;
                tokio::spawn(listen_postgres(listener, sender.clone()))
            }
            Backend::Sqlite(_) => {
                let seq = store.latest_revocation_seq().await?;
                tokio::spawn(poll_log(store.clone(), seq, sender.clone()))
            }
        };
        Ok(Self {
            sender,
            _task: Arc::new(AbortOnDrop(task.abort_handle())),
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<BusEvent> {
        self.sender.subscribe()
    }

    /// Publishes an event to this process's subscribers only (for revocations made
    /// here, which need not wait for the database round trip).
    pub fn publish_local(&self, event: BusEvent) {
        let _ = self.sender.send(event);
    }
}

async fn listen_postgres(mut listener: PgListener, sender: broadcast::Sender<BusEvent>) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                let _ = sender.send(BusEvent::from_log(notification.payload().to_owned()));
            }
            // The connection dropped; PgListener reconnects on the next call.
            Ok(None) => {
                tracing::warn!("revocation listener lost its connection; flushing session caches");
                let _ = sender.send(BusEvent::Flush);
            }
            Err(error) => {
                tracing::warn!(%error, "revocation listener failed; flushing session caches");
                let _ = sender.send(BusEvent::Flush);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn poll_log(store: Store, mut seq: i64, sender: broadcast::Sender<BusEvent>) {
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy = true;
    loop {
        ticker.tick().await;
        match store.revocations_since(seq).await {
            Ok(rows) => {
                healthy = true;
                for (next, id) in rows {
                    seq = next;
                    let _ = sender.send(BusEvent::from_log(id));
                }
            }
            Err(error) => {
                if healthy {
                    tracing::warn!(%error, "revocation log poll failed; flushing session caches");
                }
                healthy = false;
                let _ = sender.send(BusEvent::Flush);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_changes_are_not_revocations() {
        for (entry, event) in [
            ("ses-abc", BusEvent::Revoked("ses-abc".into())),
            ("tok-abc", BusEvent::Revoked("tok-abc".into())),
            ("int-abc", BusEvent::Revoked("int-abc".into())),
            ("cfg:oidc", BusEvent::Changed("cfg:oidc".into())),
        ] {
            assert_eq!(BusEvent::from_log(entry.into()), event, "{entry}");
        }
        assert!(crate::oidc::PROVIDERS_CHANGED.starts_with(CHANGE_PREFIX));
    }
}
