//! The registry of live WebSocket connections per session, so the gateway can close
//! every connection a session carries the moment the session dies, whatever killed
//! it and wherever (this process, another replica, the CLI): the revocation bus
//! reaches [`LiveConnections::end_session`] on every gateway (through the one bus
//! dispatcher, `events`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use portcullis_core::clock::Clock;
use portcullis_core::identity::PrincipalKind;
use portcullis_core::session::SessionEnd;
use portcullis_store::Store;
use tokio::sync::watch;

/// Why a session's connections are being closed (the close reason sent to clients).
pub type EndReason = &'static str;

pub const REASON_REVOKED: EndReason = "session revoked";
pub const REASON_EXPIRED: EndReason = "session expired";

/// How long an ended id is remembered, for connections that authenticated just
/// before the end and register just after it.
const RECENT_ENDS: Duration = Duration::from_secs(60);

/// Live connections and recently ended ids under one lock: registering and ending
/// are atomic with respect to each other, so a connection registers either before
/// an end (and is told) or after it (and finds it remembered), never in between.
#[derive(Debug, Default)]
pub struct LiveConnections {
    state: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    sessions: HashMap<String, watch::Sender<Option<EndReason>>>,
    recently_ended: HashMap<String, (EndReason, Instant)>,
    pruned: Option<Instant>,
}

impl Registry {
    /// Forgets ends older than [`RECENT_ENDS`], scanning at most once a second (a
    /// mass revocation must not make every registration scan every ended id). An
    /// end is therefore remembered at least [`RECENT_ENDS`].
    fn forget_old_ends(&mut self) {
        if self.pruned.is_some_and(|at| at.elapsed() < PRUNE_INTERVAL) {
            return;
        }
        self.pruned = Some(Instant::now());
        self.recently_ended
            .retain(|_, (_, at)| at.elapsed() < RECENT_ENDS);
    }
}

/// How often the memory of ended ids is pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(1);

/// One connection's membership; leaving the registry happens on drop.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<LiveConnections>,
    session_id: String,
    ended: Option<watch::Receiver<Option<EndReason>>>,
}

impl Registration {
    /// Resolves with the reason once the session has ended.
    pub async fn ended(&mut self) -> EndReason {
        let Some(receiver) = self.ended.as_mut() else {
            return REASON_REVOKED;
        };
        match receiver.wait_for(Option::is_some).await {
            Ok(reason) => reason.unwrap_or(REASON_REVOKED),
            // The sender lives in the registry while we are registered; losing it
            // means the registry is gone, so the session can no longer be vouched for.
            Err(_) => REASON_REVOKED,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        drop(self.ended.take());
        let mut registry = self.registry.lock();
        if registry
            .sessions
            .get(&self.session_id)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            registry.sessions.remove(&self.session_id);
        }
    }
}

impl LiveConnections {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Registers a connection of `session_id`. If the session ended moments ago
    /// (after the connection authenticated but before this call), the registration
    /// starts out ended, so no revocation can slip through the gap.
    pub fn register(self: &Arc<Self>, session_id: &str) -> Registration {
        let receiver = {
            let mut registry = self.lock();
            registry.forget_old_ends();
            let ended = registry
                .recently_ended
                .get(session_id)
                .map(|(reason, _)| *reason);
            let sender = registry
                .sessions
                .entry(session_id.to_owned())
                .or_insert_with(|| watch::channel(None).0);
            if ended.is_some() {
                sender.send_replace(ended);
            }
            sender.subscribe()
        };
        Registration {
            registry: self.clone(),
            session_id: session_id.to_owned(),
            ended: Some(receiver),
        }
    }

    /// Closes every connection of `session_id`, and any that registers shortly after.
    pub fn end_session(&self, session_id: &str, reason: EndReason) {
        let mut registry = self.lock();
        registry.forget_old_ends();
        registry
            .recently_ended
            .insert(session_id.to_owned(), (reason, Instant::now()));
        if let Some(sender) = registry.sessions.get(session_id) {
            sender.send_replace(Some(reason));
        }
    }

    /// Live connections of `session_id` on this replica.
    pub fn connections(&self, session_id: &str) -> usize {
        self.lock()
            .sessions
            .get(session_id)
            .map_or(0, watch::Sender::receiver_count)
    }

    /// Live connections of every session on this replica.
    pub fn connections_total(&self) -> usize {
        self.lock()
            .sessions
            .values()
            .map(watch::Sender::receiver_count)
            .sum()
    }

    pub fn session_ids(&self) -> Vec<String> {
        self.lock().sessions.keys().cloned().collect()
    }

    /// Number of sessions with at least one live connection.
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// After a `Flush` (revocations may have been missed): every session with
    /// live connections is re-checked in the database.
    pub async fn recheck_all(&self, store: &Store, clock: &dyn Clock) {
        for id in self.session_ids() {
            match PrincipalKind::of(&id) {
                // The internal credential's holder re-checks its own connections.
                PrincipalKind::Internal => continue,
                PrincipalKind::ApiToken => {
                    match store.api_token_live(&id).await {
                        Ok(true) => {}
                        Ok(false) => self.end_session(&id, REASON_REVOKED),
                        Err(error) => {
                            tracing::warn!(%error, "could not re-check a live API token")
                        }
                    }
                    continue;
                }
                PrincipalKind::Session => {}
            }
            match store.session(&id).await {
                Ok(Some(session)) => match session.check(clock.now_ms(), clock.now_ms()) {
                    Ok(()) => {}
                    Err(SessionEnd::Expired) => self.end_session(&id, REASON_EXPIRED),
                    Err(_) => self.end_session(&id, REASON_REVOKED),
                },
                Ok(None) => self.end_session(&id, REASON_REVOKED),
                // Cannot confirm either way; the next flush or a notification decides.
                Err(error) => tracing::warn!(%error, "could not re-check a live session"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ending_a_session_reaches_all_its_connections_only() {
        let registry = Arc::new(LiveConnections::default());
        let mut a1 = registry.register("ses-a");
        let mut a2 = registry.register("ses-a");
        let mut b = registry.register("ses-b");
        registry.end_session("ses-a", REASON_REVOKED);
        assert_eq!(a1.ended().await, REASON_REVOKED);
        assert_eq!(a2.ended().await, REASON_REVOKED);
        let pending = tokio::time::timeout(std::time::Duration::from_millis(50), b.ended()).await;
        assert!(
            pending.is_err(),
            "another session's connection must stay open"
        );
        drop((a1, a2));
        assert_eq!(registry.session_ids(), vec!["ses-b".to_string()]);
        drop(b);
        assert!(registry.is_empty());
    }

    #[test]
    fn registering_and_ending_race_without_losing_an_end() {
        // One thread ends ids while another registers them, in step, so the two
        // meet on the same id again and again. Every id ends, so every
        // registration must end up ended, whichever side won each meeting.
        const ROUNDS: usize = 20;
        const N: usize = 5_000;
        for round in 0..ROUNDS {
            let registry = Arc::new(LiveConnections::default());
            let ids: Arc<Vec<String>> =
                Arc::new((0..N).map(|i| format!("ses-{round}-{i}")).collect());
            let barrier = Arc::new(std::sync::Barrier::new(2));
            let ender = {
                let (registry, ids, barrier) = (registry.clone(), ids.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    for id in ids.iter() {
                        registry.end_session(id, REASON_REVOKED);
                    }
                })
            };
            barrier.wait();
            let registrations: Vec<Registration> =
                ids.iter().map(|id| registry.register(id)).collect();
            ender.join().unwrap();
            let lost = registrations
                .iter()
                .filter(|r| r.ended.as_ref().is_none_or(|rx| rx.borrow().is_none()))
                .count();
            assert_eq!(lost, 0, "round {round}: revocations lost to the race");
        }
    }

    #[tokio::test]
    async fn a_connection_registering_just_after_its_session_ended_is_ended() {
        let registry = Arc::new(LiveConnections::default());
        registry.end_session("ses-gone", REASON_EXPIRED);
        let mut late = registry.register("ses-gone");
        assert_eq!(late.ended().await, REASON_EXPIRED);
    }
}
