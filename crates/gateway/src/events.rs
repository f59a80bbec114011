//! The one subscriber of the revocation bus: it fans each typed event out to what
//! it concerns, in a fixed order (the session cache forgets a revoked session before
//! its live connections are told), so no cache or registry follows the bus on its
//! own. Work that needs the database runs in one worker task per kind, woken by the
//! dispatcher: a slow re-check never holds up the next revocation, and a burst of
//! flushes (a database that stays away) coalesces into one re-check at a time.

use std::sync::Arc;

use portcullis_core::clock::Clock;
use portcullis_core::identity::PrincipalKind;
use portcullis_store::{BusEvent, ConfigTopic, Store};
use tokio::sync::Notify;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::internal::InternalCredentials;
use crate::live::{LiveConnections, REASON_REVOKED};
use crate::oidc::Oidc;
use crate::session_cache::SessionCache;

/// Everything that acts on bus events.
#[derive(Debug, Clone)]
pub struct Followers {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub sessions: Arc<SessionCache>,
    pub live: Arc<LiveConnections>,
    pub internal: Arc<InternalCredentials>,
    pub oidc: Arc<Oidc>,
    pub clients: Arc<crate::clients::ClientScopes>,
    /// Whether the bus is up, for when its own events were dropped.
    pub bus: portcullis_store::RevocationBus,
}

/// Applies bus events until the bus closes.
pub async fn dispatch(mut events: broadcast::Receiver<BusEvent>, followers: Followers) {
    let wake = Wake::default();
    let workers = [
        tokio::spawn(recheck_worker(followers.clone(), wake.recheck.clone())),
        tokio::spawn(reload_worker(followers.clone(), wake.reload.clone())),
    ];
    let _stop_workers = AbortOnDrop(workers);
    loop {
        match events.recv().await {
            Ok(event) => followers.apply(event, &wake),
            // Events were dropped: revocations may be among them.
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "bus subscriber lagged; treating as a flush");
                followers.apply(BusEvent::Flush, &wake);
                // A dropped Lost or Restored: the bus's state says which holds.
                let state = if followers.bus.is_connected() {
                    BusEvent::Restored
                } else {
                    BusEvent::Lost
                };
                followers.apply(state, &wake);
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Wakes the workers; a wake while a worker is busy is kept (once) for its next
/// round.
#[derive(Debug, Default)]
struct Wake {
    recheck: Arc<Notify>,
    reload: Arc<Notify>,
}

struct AbortOnDrop([tokio::task::JoinHandle<()>; 2]);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl Followers {
    fn apply(&self, event: BusEvent, wake: &Wake) {
        match event {
            BusEvent::Revoked(id) => {
                self.sessions.invalidate(&id);
                self.live.end_session(&id, REASON_REVOKED);
                if PrincipalKind::of(&id) == PrincipalKind::Internal {
                    self.internal.on_revoked(&id);
                }
            }
            BusEvent::Changed(ConfigTopic::OidcProviders | ConfigTopic::Clients) => {
                wake.reload.notify_one();
            }
            BusEvent::Flush => {
                crate::metrics::CACHE_FLUSHES.inc();
                self.sessions.invalidate_all();
                wake.recheck.notify_one();
                wake.reload.notify_one();
            }
            // Until the bus is back, every request asks the database.
            BusEvent::Lost => {
                crate::metrics::CACHE_FLUSHES.inc();
                self.sessions.suspend();
                self.internal.suspend();
            }
            // The revocations missed meanwhile came first (in log order); what the
            // log may no longer hold (swept while away) is caught by re-checking
            // every live connection, and configuration by reloading it.
            BusEvent::Restored => {
                self.sessions.resume();
                wake.recheck.notify_one();
                wake.reload.notify_one();
            }
        }
    }
}

/// After a flush: live connections and the internal credential re-checked in the
/// database, side by side (one slow check does not hold up the other).
async fn recheck_worker(followers: Followers, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        tokio::join!(
            followers
                .live
                .recheck_all(&followers.store, followers.clock.as_ref()),
            followers
                .internal
                .recheck(&followers.store, &followers.live),
        );
    }
}

/// Provider and client reloads, one at a time (after a change or a flush).
async fn reload_worker(followers: Followers, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        reload_oidc(&followers.oidc, &followers.store).await;
        if let Err(error) = followers.clients.reload(&followers.store).await {
            tracing::error!(%error, "could not reload clients");
        }
    }
}

async fn reload_oidc(oidc: &Oidc, store: &Store) {
    if let Err(error) = oidc.reload(store).await {
        tracing::error!(%error, "could not reload OpenID providers");
    }
}
