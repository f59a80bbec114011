//! The one subscriber of the revocation bus: it fans each typed event out to what
//! it concerns, in a fixed order (the session cache forgets a revoked session before
//! its live connections are told), so no cache or registry follows the bus on its
//! own. Work that needs the database runs in its own task, so a slow re-check never
//! holds up the next revocation.

use std::sync::Arc;

use portcullis_core::clock::Clock;
use portcullis_core::identity::PrincipalKind;
use portcullis_store::{BusEvent, ConfigTopic, Store};
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
}

/// Applies bus events until the bus closes.
pub async fn dispatch(mut events: broadcast::Receiver<BusEvent>, followers: Followers) {
    loop {
        match events.recv().await {
            Ok(event) => followers.apply(event),
            // Events were dropped: revocations may be among them.
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "bus subscriber lagged; treating as a flush");
                followers.apply(BusEvent::Flush);
            }
            Err(RecvError::Closed) => return,
        }
    }
}

impl Followers {
    fn apply(&self, event: BusEvent) {
        match event {
            BusEvent::Revoked(id) => {
                self.sessions.invalidate(&id);
                self.live.end_session(&id, REASON_REVOKED);
                if PrincipalKind::of(&id) == PrincipalKind::Internal {
                    self.internal.on_revoked(&id);
                }
            }
            BusEvent::Changed(ConfigTopic::OidcProviders) => {
                let (oidc, store) = (self.oidc.clone(), self.store.clone());
                tokio::spawn(async move { reload_oidc(&oidc, &store).await });
            }
            BusEvent::Flush => {
                self.sessions.invalidate_all();
                let this = self.clone();
                tokio::spawn(async move {
                    this.live
                        .recheck_all(&this.store, this.clock.as_ref())
                        .await;
                    this.internal.recheck(&this.store, &this.live).await;
                    reload_oidc(&this.oidc, &this.store).await;
                });
            }
        }
    }
}

async fn reload_oidc(oidc: &Oidc, store: &Store) {
    if let Err(error) = oidc.reload(store).await {
        tracing::error!(%error, "could not reload OpenID providers");
    }
}
