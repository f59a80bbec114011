//! Validated sessions kept in memory so the hot path costs no database round trip.
//!
//! Correctness rests on three rules:
//! 1. Every revocation reaches [`SessionCache::invalidate`] through the revocation bus
//!    (or directly, when made in this process); a lost bus connection flushes all.
//! 2. A load that raced with an invalidation is not cached: loads remember the
//!    invalidation epoch before reading the database and insert only if it is
//!    unchanged, so a stale "valid" row can never be installed after a revocation.
//! 3. Entries also expire after [`MAX_ENTRY_AGE`], a backstop for anything missed.
//! 4. While the bus is down ([`SessionCache::suspend`] to [`SessionCache::resume`])
//!    nothing is served from memory and nothing is cached: every request is
//!    checked against the database, so a revocation the bus could not deliver is
//!    still honoured (or the request fails closed with the database).
//!
//! Activity (`last_seen`) is recorded in the entry and written to the database in
//! batches by [`SessionCache::flush_activity`], at most once per
//! [`TOUCH_GRANULARITY`] per session.

use std::sync::Arc;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::expiring::{ExpiringMap, Keyed};
pub use crate::identity::{IdentityFields, Roles};
use portcullis_core::client::Scope;
use portcullis_core::clock::Millis;
use portcullis_core::identity::{IdentityProvider, PrincipalKind};
use portcullis_core::session::{Assurance, Session, SessionEnd};
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

/// A session known to be valid when it was loaded, held compactly: its strings
/// (id, subject, name, e-mail, provider, roles) share one allocation, and what a
/// cached session never needs (revocation time, OpenID `sid`, access token) is not
/// kept: a revoked session leaves the cache instead.
#[derive(Debug)]
pub struct CachedSession {
    text: Box<str>,
    /// End offsets in `text` of the id, subject, name, e-mail and provider; the
    /// roles (separated by [`ROLE_SEPARATOR`]) run to the end.
    ends: [u32; 5],
    has_email: bool,
    /// Every string is safe in a header (checked once, when loaded).
    header_safe: bool,
    expires_ms: Millis,
    idle_timeout_ms: Option<Millis>,
    /// `acr`/`amr` of an OpenID sign-in (boxed: most sessions have none).
    assurance: Option<Box<Assurance>>,
    /// For an API token: its owner's provider (`None`: a service token).
    token_owner: Option<Box<str>>,
    /// For a client session (magic link): the paths it may reach.
    scope: Option<Box<Scope>>,
    last_seen: AtomicI64,
    persisted_seen: AtomicI64,
    queued: AtomicBool,
}

/// Separates roles in a cached session's text, which is therefore the
/// `X-Forwarded-Groups` value as it is. A role containing it is dropped (with a
/// warning) rather than read as two; no role can hold one (group mappings and
/// API tokens refuse it, basic roles are fixed).
const ROLE_SEPARATOR: char = ',';

impl IdentityFields for CachedSession {
    fn subject(&self) -> &str {
        self.part(1)
    }

    fn name(&self) -> &str {
        self.part(2)
    }

    fn email(&self) -> Option<&str> {
        self.has_email.then(|| self.part(3))
    }

    fn roles(&self) -> Roles<'_> {
        let start = self.ends[4] as usize;
        let roles = self.text.get(start..).unwrap_or("");
        Roles::Text((!roles.is_empty()).then(|| roles.split(ROLE_SEPARATOR)))
    }

    fn provider_name(&self) -> &str {
        self.part(4)
    }

    fn groups(&self) -> Option<std::borrow::Cow<'_, str>> {
        Some(std::borrow::Cow::Borrowed(
            self.text.get(self.ends[4] as usize..).unwrap_or(""),
        ))
    }

    fn header_safe(&self) -> bool {
        self.header_safe
    }
}

impl CachedSession {
    fn new(session: Session, persisted_seen: Millis, queued: bool) -> Self {
        let identity = &session.identity;
        let mut text = String::with_capacity(
            session.id.len()
                + identity.subject.len()
                + identity.name.len()
                + identity.email.as_ref().map_or(0, String::len)
                + identity.provider.as_str().len()
                + identity.roles.iter().map(|r| r.len() + 1).sum::<usize>(),
        );
        let mut ends = [0u32; 5];
        let parts = [
            session.id.as_str(),
            identity.subject.as_str(),
            identity.name.as_str(),
            identity.email.as_deref().unwrap_or(""),
            identity.provider.as_str(),
        ];
        for (end, part) in ends.iter_mut().zip(parts) {
            text.push_str(part);
            *end = u32::try_from(text.len()).unwrap_or(u32::MAX);
        }
        let mut first = true;
        for role in &identity.roles {
            if role.contains(ROLE_SEPARATOR) || role.is_empty() {
                tracing::warn!("a role name with a comma (or empty) was ignored");
                continue;
            }
            if !first {
                text.push(ROLE_SEPARATOR);
            }
            text.push_str(role);
            first = false;
        }
        Self {
            header_safe: crate::identity::header_safe(text.as_bytes()),
            text: text.into_boxed_str(),
            ends,
            has_email: identity.email.is_some(),
            expires_ms: session.expires_ms,
            idle_timeout_ms: session.idle_timeout_ms,
            assurance: (!session.assurance.is_empty()).then(|| Box::new(session.assurance)),
            token_owner: None,
            scope: session.scope.map(Box::new),
            last_seen: AtomicI64::new(session.last_seen_ms),
            persisted_seen: AtomicI64::new(persisted_seen),
            queued: AtomicBool::new(queued),
        }
    }

    fn part(&self, index: usize) -> &str {
        let start = if index == 0 {
            0
        } else {
            self.ends[index - 1] as usize
        };
        self.text
            .get(start..self.ends[index] as usize)
            .unwrap_or("")
    }

    pub fn id(&self) -> &str {
        self.part(0)
    }

    pub fn provider(&self) -> IdentityProvider {
        IdentityProvider::from_stored(self.provider_name())
    }

    /// For a client session (magic link), the paths it may reach; `None` for
    /// every other principal, which no scope restricts.
    pub fn scope(&self) -> Option<&Scope> {
        self.scope.as_deref()
    }

    /// For an API token, the provider of the identity that owns it.
    pub fn token_owner(&self) -> Option<&str> {
        self.token_owner.as_deref()
    }

    /// How the provider authenticated this sign-in (empty for other sessions).
    pub fn assurance(&self) -> &Assurance {
        static NONE: Assurance = Assurance {
            acr: None,
            amr: Vec::new(),
        };
        self.assurance.as_deref().unwrap_or(&NONE)
    }

    pub fn expires_ms(&self) -> Millis {
        self.expires_ms
    }

    /// Whether the session still authenticates at `now`, given the latest known
    /// activity (a cached session was unrevoked when loaded; a revocation removes
    /// it from the cache).
    fn check(&self, now: Millis, last_seen: Millis) -> Result<(), SessionEnd> {
        if now >= self.expires_ms {
            return Err(SessionEnd::Expired);
        }
        if let Some(idle) = self.idle_timeout_ms
            && now.saturating_sub(last_seen) >= idle
        {
            return Err(SessionEnd::Idle);
        }
        Ok(())
    }

    pub fn last_seen(&self) -> Millis {
        self.last_seen.load(Ordering::Relaxed)
    }

    /// A pseudo-session for a credential that is not a session (an API token, the
    /// internal credential): valid until revoked, no activity recorded.
    pub fn pseudo(session: Session) -> Self {
        Self::new(session, i64::MAX, true)
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
/// and the WebSocket registry treat it like a session); it expires with the token.
fn token_entry(row: portcullis_store::ApiTokenRow) -> Arc<CachedSession> {
    let owner = row.provider.clone().map(String::into_boxed_str);
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
        expires_ms: row.expires_ms.unwrap_or(i64::MAX),
        idle_timeout_ms: None,
        revoked_ms: None,
        oidc_sid: None,
        oidc_sub: None,
        access_token_id: None,
        scope: None,
        device: portcullis_core::session::Device::default(),
        assurance: Assurance::default(),
        credential: None,
    };
    let mut entry = CachedSession::pseudo(session);
    entry.token_owner = owner;
    Arc::new(entry)
}

impl Keyed for Arc<CachedSession> {
    fn has_key(&self, key: &str) -> bool {
        self.id() == key
    }
}

/// A cached API token: its secret's hash and its pseudo-session.
#[derive(Debug, Clone)]
struct TokenEntry(Arc<(String, Arc<CachedSession>)>);

/// Whether the identity `(provider, subject)` still exists (offboarding): a
/// token of a removed user authenticates no more.
pub type OwnerExists<'a> = &'a (dyn Fn(&str, &str) -> bool + Sync);

/// Whether a token's pseudo-session is still valid at `now` for its owner.
fn token_valid(
    session: &CachedSession,
    now: Millis,
    exists: OwnerExists<'_>,
) -> Result<(), LookupError> {
    if now >= session.expires_ms() {
        return Err(LookupError::Ended(SessionEnd::Expired));
    }
    if let Some(provider) = session.token_owner()
        && !exists(provider, session.subject())
    {
        return Err(LookupError::Unknown);
    }
    Ok(())
}

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
    /// The bus is down: cache nothing (rule 4).
    suspended: AtomicBool,
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
                suspended: AtomicBool::new(false),
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
        match entry.check(now, entry.last_seen()) {
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
        now: Millis,
        exists: OwnerExists<'_>,
    ) -> Result<Arc<CachedSession>, LookupError> {
        if let Some(entry) = self.tokens.get(hash) {
            let (_, session) = &*entry.0;
            token_valid(session, now, exists)?;
            return Ok(session.clone());
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let row = store
            .api_token_by_hash(hash)
            .await?
            .ok_or(LookupError::Unknown)?;
        let entry = token_entry(row);
        token_valid(&entry, now, exists)?;
        self.tokens.insert_if(
            hash,
            TokenEntry(Arc::new((hash.to_owned(), entry.clone()))),
            || self.may_insert(epoch),
        );
        Ok(entry)
    }

    /// The live API token `id` (`tok-…`) as a pseudo-session, read from the
    /// database (for a WebSocket ticket the token minted; not cached).
    pub async fn lookup_token_id(
        &self,
        store: &Store,
        id: &str,
        now: Millis,
        exists: OwnerExists<'_>,
    ) -> Result<Arc<CachedSession>, LookupError> {
        let row = store
            .api_token_by_id(id)
            .await?
            .ok_or(LookupError::Unknown)?;
        let entry = token_entry(row);
        token_valid(&entry, now, exists)?;
        Ok(entry)
    }

    /// The invalidation epoch: read it before writing a new session, and hand it
    /// to [`SessionCache::insert_new`].
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Caches a session just created and committed by this process, unless a
    /// revocation arrived since `epoch` (read before the insert): one made by a
    /// concurrent `revoke --user` or link revocation may already cover it.
    pub fn insert_new(&self, session: Session, epoch: u64) {
        self.insert_if_epoch(session, epoch);
    }

    fn insert_if_epoch(&self, session: Session, epoch: u64) -> Arc<CachedSession> {
        let persisted = session.last_seen_ms;
        let entry = Arc::new(CachedSession::new(session, persisted, false));
        self.entries
            .insert_if(entry.id(), entry.clone(), || self.may_insert(epoch));
        entry
    }

    /// A load that started at `epoch` may be cached: no invalidation since, and
    /// the bus is up.
    fn may_insert(&self, epoch: u64) -> bool {
        self.epoch.load(Ordering::Acquire) == epoch && !self.suspended.load(Ordering::Acquire)
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

    /// The bus is down: forget everything and cache nothing until
    /// [`SessionCache::resume`].
    pub fn suspend(&self) {
        self.suspended.store(true, Ordering::Release);
        self.invalidate_all();
    }

    /// The bus is back and has delivered what it missed: cache again. Loads that
    /// started while suspended are still not cached (the epoch moves).
    pub fn resume(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.suspended.store(false, Ordering::Release);
    }

    /// Whether the cache is suspended (the bus is down).
    pub fn is_suspended(&self) -> bool {
        self.suspended.load(Ordering::Acquire)
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
            batch.push((entry.id().to_owned(), seen, entry.scope.is_some()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::identity::Identity;
    use portcullis_core::identity::Permission;

    fn session(email: Option<&str>, roles: &[&str]) -> Session {
        Session {
            identity: Identity {
                subject: "ada@corp".into(),
                name: "Ada Lovelace".into(),
                email: email.map(str::to_owned),
                provider: IdentityProvider::Oidc("corp".into()),
                roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            },
            id: "ses-abc".into(),
            created_ms: 0,
            last_seen_ms: 1_000,
            expires_ms: 10_000,
            idle_timeout_ms: Some(2_000),
            revoked_ms: None,
            oidc_sid: Some("sid".into()),
            oidc_sub: None,
            access_token_id: None,
            scope: None,
            device: portcullis_core::session::Device::default(),
            assurance: Assurance::default(),
            credential: None,
        }
    }

    #[test]
    fn a_compact_session_reads_back_what_it_was_given() {
        // (email, roles given, roles read back)
        let rows: &[(Option<&str>, &[&str], &[&str])] = &[
            (
                Some("ada@corp.example"),
                &["admin", "user"],
                &["admin", "user"],
            ),
            (None, &["user"], &["user"]),
            (Some(""), &[], &[]),
            // A role that would read as two is dropped, never split.
            (None, &["user", "x,admin"], &["user"]),
            (None, &["", "user"], &["user"]),
        ];
        for (email, roles, read) in rows {
            let cached = CachedSession::new(session(*email, roles), 0, false);
            assert_eq!(cached.id(), "ses-abc");
            assert_eq!(cached.subject(), "ada@corp");
            assert_eq!(cached.name(), "Ada Lovelace");
            assert_eq!(cached.email(), *email, "{roles:?}");
            assert_eq!(cached.provider(), IdentityProvider::Oidc("corp".into()));
            assert_eq!(cached.roles().collect::<Vec<_>>(), *read, "{roles:?}");
        }
        let admin = CachedSession::new(session(None, &["admin"]), 0, false);
        let map = portcullis_core::identity::RolePermissions::default();
        assert!(map.any_grants(admin.roles(), Permission::AuditRead));
        let user = CachedSession::new(session(None, &["user", "x,admin"]), 0, false);
        assert!(!map.any_grants(user.roles(), Permission::AuditRead));
    }

    #[test]
    fn a_compact_session_expires_and_idles_like_the_session() {
        let cached = CachedSession::new(session(None, &["user"]), 0, false);
        // (now, last seen, expected)
        let rows = [
            (1_500, 1_000, Ok(())),
            (3_000, 1_000, Err(SessionEnd::Idle)),
            (3_000, 2_500, Ok(())),
            (10_000, 9_999, Err(SessionEnd::Expired)),
        ];
        for (now, seen, expected) in rows {
            assert_eq!(cached.check(now, seen), expected, "now {now}");
            assert_eq!(
                session(None, &["user"]).check(now, seen),
                expected,
                "the session agrees at {now}"
            );
        }
    }
}
