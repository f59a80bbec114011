//! The revocation bus: tells every gateway process which sessions were revoked,
//! wherever the revocation happened (this process, another replica, the CLI).
//!
//! PostgreSQL: `LISTEN` on [`crate::REVOCATION_CHANNEL`]. Notifications sent while
//! the listener is disconnected are lost, so a lost connection is reported as
//! [`BusEvent::Flush`] and subscribers drop everything they cached.
//!
//! SQLite: other processes on the same file cannot notify us, so the bus polls the
//! revocation log every [`POLL_INTERVAL`]; a failed poll is also a `Flush`.
//!
//! Configuration changes travel beside revocations, in their own log
//! (`config_changes`) and channel ([`crate::CONFIG_CHANNEL`]), as
//! [`BusEvent::Changed`] with a typed [`ConfigTopic`].

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::broadcast;

use crate::{Backend, CONFIG_CHANNEL, REVOCATION_CHANNEL, Store};

/// Well inside the 1 s revocation promise, and one indexed query per tick.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// This session (or API token, or internal credential) was revoked.
    Revoked(String),
    /// Shared configuration changed: whoever caches it reloads. Never a revocation.
    Changed(ConfigTopic),
    /// Revocations may have been missed: forget every cached session.
    Flush,
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
                listener
                    .listen_all([REVOCATION_CHANNEL, CONFIG_CHANNEL])
                    .await?;
                tokio::spawn(listen_postgres(listener, sender.clone()))
            }
            Backend::Sqlite(_) => {
                let seqs = store.latest_bus_seqs().await?;
                tokio::spawn(poll_log(store.clone(), seqs, sender.clone()))
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
                let event = if notification.channel() == CONFIG_CHANNEL {
                    changed(notification.payload())
                } else {
                    Some(BusEvent::Revoked(notification.payload().to_owned()))
                };
                if let Some(event) = event {
                    let _ = sender.send(event);
                }
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

async fn poll_log(store: Store, seqs: (i64, i64), sender: broadcast::Sender<BusEvent>) {
    let (mut seq, mut config_seq) = seqs;
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy = true;
    loop {
        ticker.tick().await;
        let polled = async {
            let revoked = store.revocations_since(seq).await?;
            let changes = store.config_changes_since(config_seq).await?;
            Ok::<_, crate::StoreError>((revoked, changes))
        };
        match polled.await {
            Ok((revoked, changes)) => {
                healthy = true;
                for (next, id) in revoked {
                    seq = next;
                    let _ = sender.send(BusEvent::Revoked(id));
                }
                for (next, topic) in changes {
                    config_seq = next;
                    if let Some(event) = changed(&topic) {
                        let _ = sender.send(event);
                    }
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
