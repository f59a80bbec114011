//! Validated sessions kept in memory so the hot path costs no database round trip.
//!
//! Correctness rests on three rules:
//! 1. Every revocation reaches [`SessionCache::invalidate`] through the revocation bus
//!    (or directly, when made in this process); a lost bus connection flushes all.
//! 2. A load that raced with an invalidation is not cached: loads remember the
//!    invalidation epoch before reading the database and insert only if it is
//!    unchanged, so a stale "valid" row can never be installed after a revocation.
//! 3. Entries also expire after [`MAX_ENTRY_AGE`], a backstop for anything missed.
//!
//! Activity (`last_seen`) is recorded in the entry and written to the database in
//! batches by [`SessionCache::flush_activity`], at most once per
//! [`TOUCH_GRANULARITY`] per session.

use std::sync::Arc;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::expiring::{ExpiringMap, Keyed};
use portcullis_core::clock::Millis;
use portcullis_core::identity::PrincipalKind;
use portcullis_core::session::{Session, SessionEnd};
use portcullis_store::{Store, StoreError};
use tokio::sync::mpsc;

/// Backstop lifetime of a cached entry.
pub const MAX_ENTRY_AGE: Duration = Duration::from_secs(300);
/// Activity finer than this is not written to the database.
pub const TOUCH_GRANULARITY: Millis = 5_000;
/// Upper bound on cached sessions (about 500 bytes each).
const MAX_ENTRIES: usize = 2_000_000;
/// Upper bound on cached API tokens.
const MAX_TOKENS: usize = 100_000;

/// A session known to be valid when it was loaded.
#[derive(Debug)]
pub struct CachedSession {
    pub session: Session,
    last_seen: AtomicI64,
    persisted_seen: AtomicI64,
    queued: AtomicBool,
}

impl CachedSession {
    pub fn last_seen(&self) -> Millis {
        self.last_seen.load(Ordering::Relaxed)
    }

    /// A pseudo-session for a credential that is not a session (an API token, the
    /// internal credential): valid until revoked, no activity recorded.
    pub fn pseudo(session: Session) -> Self {
        Self {
            last_seen: AtomicI64::new(session.last_seen_ms),
            persisted_seen: AtomicI64::new(i64::MAX),
            queued: AtomicBool::new(true),
            session,
        }
    }
}

/// What the cache alone can say about a session.
#[derive(Debug)]
pub enum Cached {
    Valid(Arc<CachedSession>),
    Ended(SessionEnd),
    /// Not cached, or only the database can decide (possible idleness).
    Miss,
}

/// Why a lookup found no valid session.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("no such session")]
    Unknown,
    #[error(transparent)]
    Ended(SessionEnd),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An API token row as a pseudo-session: its id is the token id (so revocations
/// and the WebSocket registry treat it like a session) and it has no expiry.
fn token_entry(row: portcullis_store::ApiTokenRow) -> Arc<CachedSession> {
    let session = Session {
        identity: portcullis_core::identity::Identity {
            name: row.subject.clone(),
            subject: row.subject.clone(),
            email: None,
            provider: portcullis_core::identity::IdentityProvider::ApiToken,
            roles: row.role_list(),
        },
        id: row.id,
        created_ms: row.created_ms,
        last_seen_ms: row.created_ms,
        expires_ms: i64::MAX,
        idle_timeout_ms: None,
        revoked_ms: None,
        oidc_sid: None,
        access_token_id: None,
    };
    Arc::new(CachedSession::pseudo(session))
}

impl Keyed for Arc<CachedSession> {
    fn has_key(&self, key: &str) -> bool {
        self.session.id == key
    }
}

/// A cached API token: its secret's hash and its pseudo-session.
#[derive(Debug, Clone)]
struct TokenEntry(Arc<(String, Arc<CachedSession>)>);

impl Keyed for TokenEntry {
    fn has_key(&self, key: &str) -> bool {
        self.0.0 == key
    }
}

#[derive(Debug)]
pub struct SessionCache {
    entries: ExpiringMap<Arc<CachedSession>>,
    /// API tokens by secret hash, as pseudo-sessions named by their `tok-` id.
    tokens: ExpiringMap<TokenEntry>,
    epoch: AtomicU64,
    /// Sessions read from the database (misses), for diagnostics.
    loads: AtomicU64,
    activity: mpsc::UnboundedSender<Arc<CachedSession>>,
}

impl SessionCache {
    /// The cache and the receiving end of its activity queue.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Arc<CachedSession>>) {
        let (activity, rx) = mpsc::unbounded_channel();
        let entries = ExpiringMap::new(MAX_ENTRIES, MAX_ENTRY_AGE);
        let tokens = ExpiringMap::new(MAX_TOKENS, MAX_ENTRY_AGE);
        (
            Self {
                entries,
                tokens,
                epoch: AtomicU64::new(0),
                loads: AtomicU64::new(0),
                activity,
            },
            rx,
        )
    }

    /// The hot path: answers from memory only, never touching the database.
    pub fn cached(&self, id: &str, now: Millis) -> Cached {
        let Some(entry) = self.entries.get(id) else {
            return Cached::Miss;
        };
        match entry.session.check(now, entry.last_seen()) {
            Ok(()) => {
                self.touch(&entry, now);
                Cached::Valid(entry)
            }
            // Another replica may have seen activity we have not: ask the database.
            Err(SessionEnd::Idle) => Cached::Miss,
            Err(end) => {
                self.entries.remove(id);
                Cached::Ended(end)
            }
        }
    }

    /// Returns the valid session `id` at `now`, loading it if not cached.
    pub async fn lookup(
        &self,
        store: &Store,
        id: &str,
        now: Millis,
    ) -> Result<Arc<CachedSession>, LookupError> {
        match self.cached(id, now) {
            Cached::Valid(entry) => return Ok(entry),
            Cached::Ended(end) => return Err(LookupError::Ended(end)),
            Cached::Miss => {}
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        self.loads.fetch_add(1, Ordering::Relaxed);
        let session = store.session(id).await?.ok_or(LookupError::Unknown)?;
        session
            .check(now, session.last_seen_ms)
            .map_err(LookupError::Ended)?;
        let entry = self.insert_if_epoch(session, epoch);
        self.touch(&entry, now);
        Ok(entry)
    }

    /// The live API token whose secret hashes to `hash`, as a pseudo-session: its
    /// id is the token id (so revocations and the WebSocket registry treat it like a
    /// session) and it has no expiry.
    pub async fn lookup_token(
        &self,
        store: &Store,
        hash: &str,
    ) -> Result<Arc<CachedSession>, LookupError> {
        if let Some(entry) = self.tokens.get(hash) {
            return Ok(entry.0.1.clone());
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let row = store
            .api_token_by_hash(hash)
            .await?
            .ok_or(LookupError::Unknown)?;
        let entry = token_entry(row);
        self.tokens.insert_if(
            hash,
            TokenEntry(Arc::new((hash.to_owned(), entry.clone()))),
            || self.epoch.load(Ordering::Acquire) == epoch,
        );
        Ok(entry)
    }

    /// The live API token `id` (`tok-…`) as a pseudo-session, read from the
    /// database (for a WebSocket ticket the token minted; not cached).
    pub async fn lookup_token_id(
        &self,
        store: &Store,
        id: &str,
    ) -> Result<Arc<CachedSession>, LookupError> {
        let row = store
            .api_token_by_id(id)
            .await?
            .ok_or(LookupError::Unknown)?;
        Ok(token_entry(row))
    }

    /// Caches a session just created and committed by this process.
    pub fn insert_new(&self, session: Session) {
        let epoch = self.epoch.load(Ordering::Acquire);
        self.insert_if_epoch(session, epoch);
    }

    fn insert_if_epoch(&self, session: Session, epoch: u64) -> Arc<CachedSession> {
        let entry = Arc::new(CachedSession {
            last_seen: AtomicI64::new(session.last_seen_ms),
            persisted_seen: AtomicI64::new(session.last_seen_ms),
            queued: AtomicBool::new(false),
            session,
        });
        self.entries
            .insert_if(&entry.session.id, entry.clone(), || {
                self.epoch.load(Ordering::Acquire) == epoch
            });
        entry
    }

    fn touch(&self, entry: &Arc<CachedSession>, now: Millis) {
        entry.last_seen.fetch_max(now, Ordering::Relaxed);
        if now - entry.persisted_seen.load(Ordering::Relaxed) >= TOUCH_GRANULARITY
            && !entry.queued.swap(true, Ordering::AcqRel)
        {
            let _ = self.activity.send(entry.clone());
        }
    }

    /// Forgets one session (it was revoked). Tokens are cached by hash, not id, and
    /// revoked rarely: a token revocation drops the whole (small) token cache.
    pub fn invalidate(&self, id: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if PrincipalKind::of(id) == PrincipalKind::ApiToken {
            self.tokens.clear();
        } else {
            self.entries.remove(id);
        }
    }

    /// Forgets every session (revocations may have been missed).
    pub fn invalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.entries.clear();
        self.tokens.clear();
    }

    /// How many session lookups have gone to the database.
    pub fn database_loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Gives back the memory of expired entries (they are never served).
    pub fn purge_expired(&self) {
        self.entries.purge_expired();
        self.tokens.purge_expired();
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes queued activity to the database in one batch per call.
    pub async fn flush_activity(
        store: &Store,
        queue: &mut mpsc::UnboundedReceiver<Arc<CachedSession>>,
    ) -> Result<usize, StoreError> {
        let mut batch = Vec::new();
        let mut entries = Vec::new();
        while let Ok(entry) = queue.try_recv() {
            entry.queued.store(false, Ordering::Release);
            let seen = entry.last_seen();
            batch.push((entry.session.id.clone(), seen));
            entries.push((entry, seen));
            if batch.len() >= 1000 {
                break;
            }
        }
        store.touch_sessions(&batch).await?;
        for (entry, seen) in entries {
            entry.persisted_seen.fetch_max(seen, Ordering::Relaxed);
        }
        Ok(batch.len())
    }
}
