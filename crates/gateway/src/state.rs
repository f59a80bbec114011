//! The shared state of one running gateway, and the background tasks that keep it
//! true (revocation bus, activity batching, sweeping, key reloads).

use portcullis_core::audit::AuditAction;
use std::sync::Arc;
use std::time::Duration;

use portcullis_core::clock::Clock;
use portcullis_core::identity::IdentityProvider;
use portcullis_core::keys::SecretKey;
use portcullis_core::secret::{Entropy, SecretString};
use portcullis_core::session::CsrfKey;
use portcullis_store::{AuditEvent, RevocationBus, Store, StoreError};
use tokio::task::JoinHandle;

use crate::config::GatewayConfig;
use crate::internal::InternalCredentials;
use crate::keyring::{KeyringError, LiveKeyring};
use crate::live::LiveConnections;
use crate::oidc::Oidc;
use crate::session_cache::SessionCache;
use crate::throttle::{LoginThrottle, PasswordPool};

/// How often batched `last_seen` updates are written.
const ACTIVITY_FLUSH_INTERVAL: Duration = Duration::from_secs(2);
/// How often expired rows are swept, and how many per kind per sweep.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
const SWEEP_BATCH: i64 = 500;
/// At most this many batches of expired audit rows per sweep (so a first sweep
/// after enabling retention on a large table never holds the database long).
const AUDIT_SWEEP_ROUNDS: usize = 20;
/// How often the keyring is re-read so a rotation from the CLI starts signing.
const KEYRING_REFRESH: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("signing keys: {0}")]
    Keyring(#[from] KeyringError),
    #[error("internal credential: {0}")]
    Internal(#[from] crate::internal::InternalError),
    #[error("OpenID Connect: {0}")]
    Oidc(#[from] crate::oidc::OidcStartError),
    #[error("clients declared in the configuration: {0}")]
    Clients(String),
    #[error("could not prepare the password verifier: {0}")]
    Dummy(String),
    #[error("the system's randomness failed: {0}")]
    Entropy(String),
}

/// A running gateway's state; cheap to clone. Its parts are private: modules use
/// them through the methods below, which keep their invariants (a revocation both
/// forgets the cached session and tells this process's followers; randomness never
/// falls back to zeros).
#[derive(Debug, Clone)]
pub struct Gateway(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    config: GatewayConfig,
    store: Store,
    keyring: Arc<LiveKeyring>,
    csrf: CsrfKey,
    sessions: Arc<SessionCache>,
    live: Arc<LiveConnections>,
    internal: Arc<InternalCredentials>,
    oidc: Arc<Oidc>,
    clients: Arc<crate::clients::ClientScopes>,
    admission: Arc<crate::admission::Admission>,
    bus: RevocationBus,
    /// This process among the replicas (its readiness probe row).
    process: String,
    /// The last readiness write probe: when, and whether it succeeded.
    readiness: tokio::sync::Mutex<Option<(std::time::Instant, bool)>>,
    throttle: Arc<LoginThrottle>,
    throttled: Arc<crate::audit_window::ThrottledAttempts>,
    passwords: PasswordPool,
    /// Verified against for unknown usernames so they cost the same as known ones.
    users: Arc<crate::users::LiveUsers>,
    clock: Arc<dyn Clock>,
    entropy: Arc<dyn Entropy>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Ends the window of throttled attempts: one audit row for each address's.
async fn write_throttled(store: &Store, throttled: &crate::audit_window::ThrottledAttempts) {
    for row in throttled.close_window() {
        row.log();
        if let Err(error) = store.record_audit(&row).await {
            tracing::error!(%error, "could not write audit event");
        }
    }
}

impl Gateway {
    /// Applies migrations, loads (or creates) signing keys, starts the revocation
    /// bus and the background tasks.
    pub async fn start(
        config: GatewayConfig,
        store: Store,
        secret: SecretKey,
        clock: Arc<dyn Clock>,
        entropy: Arc<dyn Entropy>,
    ) -> Result<Self, StartError> {
        store.migrate().await?;
        // Tokens made before tokens recorded their owner's provider: those of a
        // configured basic user become that user's, so removing the user ends them.
        let names: Vec<&str> = config.basic_users.names().collect();
        let adopted = store.adopt_unowned_api_tokens("basic", &names).await?;
        if adopted > 0 {
            tracing::info!(adopted, "API tokens of basic users now end with their user");
        }
        let keyring = Arc::new(
            LiveKeyring::load(&store, secret.clone(), entropy.as_ref(), clock.now_ms()).await?,
        );
        let csrf = CsrfKey::new(&secret.derive("portcullis csrf v1"));
        let internal =
            Arc::new(InternalCredentials::load(&store, secret.clone(), clock.now_ms()).await?);
        let oidc = Arc::new(
            Oidc::start(
                &store,
                secret.clone(),
                &config.oidc_providers,
                entropy.as_ref(),
                clock.now_ms(),
            )
            .await?,
        );
        crate::clients::declare_clients(&store, &config.clients, entropy.as_ref(), clock.now_ms())
            .await
            .map_err(|e| StartError::Clients(e.to_string()))?;
        let clients = Arc::new(crate::clients::ClientScopes::load(&store).await?);
        let bus = RevocationBus::start(store.clone()).await?;
        let (sessions, mut activity) = SessionCache::new();
        let sessions = Arc::new(sessions);

        let (users, dummy_entropy) = (config.basic_users.clone(), entropy.clone());
        let started = std::time::Instant::now();
        let dummy_hash =
            tokio::task::spawn_blocking(move || users.dummy_hash(dummy_entropy.as_ref()))
                .await
                .map_err(|e| StartError::Dummy(e.to_string()))?
                .map_err(|e| StartError::Dummy(e.to_string()))?;
        let dummy_took = started.elapsed();

        let users = Arc::new(crate::users::LiveUsers::new(crate::users::Users {
            list: config.basic_users.clone(),
            dummy_hash,
        }));
        let throttle = Arc::new(LoginThrottle::new(config.login_limits));
        let mut tasks = Vec::new();
        if let Some(path) = &config.users_file {
            let (cache, local) = (sessions.clone(), bus.clone());
            let reloader = crate::users::Reloader {
                path: path.clone(),
                admins: config.basic_admins.clone(),
                users: users.clone(),
                store: store.clone(),
                entropy: entropy.clone(),
                revoked: Box::new(move |id: &str| {
                    cache.invalidate(id);
                    local.publish_local(portcullis_store::BusEvent::Revoked(id.to_owned()));
                }),
            };
            tasks.push(tokio::spawn(reloader.follow()));
        }
        let live = Arc::new(LiveConnections::default());
        tasks.push(tokio::spawn(crate::events::dispatch(
            bus.subscribe(),
            crate::events::Followers {
                store: store.clone(),
                clock: clock.clone(),
                sessions: sessions.clone(),
                live: live.clone(),
                internal: internal.clone(),
                oidc: oidc.clone(),
                clients: clients.clone(),
                bus: bus.clone(),
            },
        )));
        {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(ACTIVITY_FLUSH_INTERVAL);
                loop {
                    tick.tick().await;
                    if let Err(error) = SessionCache::flush_activity(&store, &mut activity).await {
                        tracing::warn!(%error, "could not record session activity; will retry");
                    }
                }
            }));
        }
        let throttled = Arc::new(crate::audit_window::ThrottledAttempts::default());
        {
            let (store, clock, throttle, sessions, throttled) = (
                store.clone(),
                clock.clone(),
                throttle.clone(),
                sessions.clone(),
                throttled.clone(),
            );
            let retention_ms =
                i64::try_from(config.audit_retention.as_millis()).unwrap_or(i64::MAX);
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(SWEEP_INTERVAL);
                loop {
                    tick.tick().await;
                    throttle.prune();
                    sessions.purge_expired();
                    match store.sweep(clock.now_ms(), SWEEP_BATCH).await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(rows = n, "swept expired rows"),
                        Err(error) => tracing::warn!(%error, "sweep failed"),
                    }
                    // The window of throttled attempts ends with each sweep.
                    write_throttled(&store, &throttled).await;
                    // Audit rows past their retention, in bounded batches.
                    let before = clock.now_ms().saturating_sub(retention_ms);
                    for _ in 0..AUDIT_SWEEP_ROUNDS {
                        match store.sweep_audit(before, SWEEP_BATCH).await {
                            Ok(n) if n == SWEEP_BATCH as u64 => continue,
                            Ok(_) => break,
                            Err(error) => {
                                tracing::warn!(%error, "audit retention sweep failed");
                                break;
                            }
                        }
                    }
                }
            }));
        }
        {
            let (store, keyring) = (store.clone(), keyring.clone());
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(KEYRING_REFRESH);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if let Err(error) = keyring.reload_if_due(&store).await {
                        tracing::warn!(%error, "could not reload signing keys");
                    }
                }
            }));
        }

        Ok(Self(Arc::new(Inner {
            // Making the dummy hash costs what verifying the costliest one does.
            passwords: PasswordPool::new(config.argon2_workers, dummy_took),
            config,
            store,
            keyring,
            csrf,
            sessions,
            live,
            internal,
            oidc,
            clients,
            admission: Arc::default(),
            bus,
            process: portcullis_core::secret::random_id(entropy.as_ref(), "proc-")
                .map_err(|e| StartError::Entropy(e.to_string()))?,
            readiness: tokio::sync::Mutex::new(None),
            throttle,
            throttled,
            users,
            clock,
            entropy,
            tasks,
        })))
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.0.config
    }

    /// Whether any of `roles` grants `permission` (built-in and configured grants).
    pub fn grants<'r>(
        &self,
        roles: impl IntoIterator<Item = &'r str>,
        permission: portcullis_core::identity::Permission,
    ) -> bool {
        self.0.config.role_permissions.any_grants(roles, permission)
    }

    /// Whether the identity `subject` of provider `provider` (its stored name)
    /// still exists: a basic user still configured, an OpenID provider still
    /// known. Offboarding: sessions and tokens of removed identities stop working.
    pub fn identity_exists(&self, provider: &str, subject: &str) -> bool {
        // Read on every request: no allocation, one map lookup.
        let basic = IdentityProvider::Basic;
        if provider == basic.as_str() {
            return self.0.users.has(subject);
        }
        // A client named like a basic user would reach the upstream as that user:
        // such a client signs no one in (SPEC 4, no shared names by accident).
        if provider == IdentityProvider::Magic.as_str() {
            return !self.0.users.has(subject);
        }
        !IdentityProvider::is_oidc_name(provider) || self.oidc().knows(provider)
    }

    /// Open connections, shared by every event loop.
    pub fn admission(&self) -> &Arc<crate::admission::Admission> {
        &self.0.admission
    }

    /// Scopes of the active clients (magic links).
    pub fn clients(&self) -> &crate::clients::ClientScopes {
        &self.0.clients
    }

    pub fn store(&self) -> &Store {
        &self.0.store
    }

    /// The session cache (exposed for benchmarks and diagnostics).
    pub fn session_cache(&self) -> &SessionCache {
        &self.0.sessions
    }

    /// The scheme clients used, for `X-Forwarded-Proto`: `https` when the public
    /// URL is, else `http`.
    pub(crate) fn forwarded_proto(&self) -> &'static str {
        if self.0.config.public_url.is_https() {
            "https"
        } else {
            "http"
        }
    }

    /// The gateway's clock, in milliseconds.
    pub(crate) fn now(&self) -> i64 {
        self.0.clock.now_ms()
    }

    pub(crate) fn entropy(&self) -> &dyn Entropy {
        self.0.entropy.as_ref()
    }

    pub(crate) fn keyring(&self) -> &LiveKeyring {
        &self.0.keyring
    }

    pub(crate) fn csrf(&self) -> &CsrfKey {
        &self.0.csrf
    }

    pub(crate) fn internal(&self) -> &InternalCredentials {
        &self.0.internal
    }

    pub(crate) fn oidc(&self) -> &Oidc {
        &self.0.oidc
    }

    pub(crate) fn throttle(&self) -> &LoginThrottle {
        &self.0.throttle
    }

    pub(crate) fn passwords(&self) -> &PasswordPool {
        &self.0.passwords
    }

    /// The basic users now (and the hash unknown names are verified against).
    pub(crate) fn users(&self) -> Arc<crate::users::Users> {
        self.0.users.get()
    }

    /// This process's id among the replicas (random, per start).
    pub fn process_id(&self) -> &str {
        &self.0.process
    }

    /// The last readiness write probe (see `endpoints::health`).
    pub(crate) fn readiness(&self) -> &tokio::sync::Mutex<Option<(std::time::Instant, bool)>> {
        &self.0.readiness
    }

    /// Whether the revocation bus is up (cached sessions can be trusted).
    pub fn bus_connected(&self) -> bool {
        self.0.bus.is_connected()
    }

    /// Revokes session `id` in the database (`by` says who) and then here at
    /// once ([`Gateway::revoked_here`]).
    pub(crate) async fn revoke_session(
        &self,
        id: &str,
        by: &str,
    ) -> Result<(), portcullis_store::StoreError> {
        self.0.store.revoke_session(id, by, self.now()).await?;
        self.revoked_here(id);
        Ok(())
    }

    /// Tells this process's followers of a revocation committed here (other
    /// processes hear of it through the database), at once rather than after the
    /// database round trip. The session cache forgets it first.
    pub(crate) fn revoked_here(&self, id: &str) {
        crate::metrics::REVOCATIONS_PUBLISHED.inc();
        self.0.sessions.invalidate(id);
        self.0
            .bus
            .publish_local(portcullis_store::BusEvent::Revoked(id.to_owned()));
    }

    /// Writes what is still only in memory before the process ends: the
    /// throttled attempts of the window still open. Bounded (a database that
    /// does not answer must not hold the process up): what cannot be written
    /// within it is logged as lost.
    pub async fn stopped(&self) {
        let within = self.0.store.timeout() * 2;
        let written = write_throttled(&self.0.store, &self.0.throttled);
        if tokio::time::timeout(within, written).await.is_err() {
            tracing::error!(
                ?within,
                "throttled sign-in attempts of the last minute could not be written before stopping"
            );
        }
    }

    /// Records a throttled attempt: the first of its address's window at once,
    /// the rest as one row with their count when the window ends.
    pub(crate) async fn audit_throttled(&self, event: AuditEvent) {
        if self.0.throttled.note(&event) {
            self.audit(event).await;
        }
    }

    /// Records an audit event in the database and as a structured log line. A
    /// failure to write is logged, never silently dropped.
    pub(crate) async fn audit(&self, event: AuditEvent) {
        event.log();
        if let Err(error) = self.0.store.record_audit(&event).await {
            tracing::error!(%error, action = %event.action, "could not write audit event");
        }
    }

    /// The internal credential (SPEC 6.3), minted on the first call and the same
    /// on every later one (per process, or per deployment with PostgreSQL). For the
    /// supervised child's environment and the credential file only.
    pub async fn internal_credential(&self) -> Result<SecretString, StartError> {
        let inner = &self.0;
        let (minted, fresh) = inner
            .internal
            .get_or_mint(&inner.store, inner.entropy.as_ref(), inner.clock.now_ms())
            .await?;
        if fresh {
            let mut event = self.audit_event(
                portcullis_core::internal::SUBJECT,
                AuditAction::InternalCredentialMint,
                "success",
            );
            event.target = Some(minted.credential.id().to_owned());
            self.audit(event).await;
        }
        Ok(minted.credential.secret().clone())
    }

    /// Resets the internal credential: this process forgets it and closes the
    /// connections it carried; with PostgreSQL the deployment's stored credential is
    /// deleted and every replica told. The next [`Gateway::internal_credential`]
    /// call mints a new one.
    pub async fn reset_internal_credential(&self) -> Result<(), StartError> {
        let inner = &self.0;
        let old = inner.internal.forget();
        if inner.internal.is_shared() {
            inner
                .internal
                .reset_deployment(&inner.store, inner.clock.now_ms())
                .await?;
        }
        if let Some(old) = old {
            inner
                .live
                .end_session(old.credential.id(), crate::live::REASON_REVOKED);
            let mut event = self.audit_event(
                portcullis_core::internal::SUBJECT,
                AuditAction::InternalCredentialReset,
                "success",
            );
            event.target = Some(old.credential.id().to_owned());
            self.audit(event).await;
        }
        Ok(())
    }

    /// Fills `buf` from the gateway's entropy source; a failure is an error, never
    /// zeros.
    pub(crate) fn fill_random(
        &self,
        buf: &mut [u8],
    ) -> Result<(), portcullis_core::secret::EntropyError> {
        self.0.entropy.fill(buf)
    }

    /// Live WebSockets of session `id` on this replica.
    pub(crate) fn live_connections(&self, id: &str) -> usize {
        self.0.live.connections(id)
    }

    /// Every live WebSocket on this replica.
    pub(crate) fn live_websockets(&self) -> usize {
        self.0.live.connections_total()
    }

    /// Registers a live WebSocket of principal `id` (before its upstream is
    /// contacted).
    pub(crate) fn register_live(&self, id: &str) -> crate::live::Registration {
        self.0.live.register(id)
    }

    /// Whether `presented` is the CSRF token of session `session_id`.
    pub(crate) fn csrf_valid(&self, session_id: &str, presented: &str) -> bool {
        self.0.csrf.verify(session_id, presented)
    }

    pub(crate) fn audit_event(
        &self,
        actor: &str,
        action: AuditAction,
        outcome: &str,
    ) -> AuditEvent {
        AuditEvent {
            at_ms: self.0.clock.now_ms(),
            actor: actor.to_owned(),
            action: action.name().to_owned(),
            target: None,
            outcome: outcome.to_owned(),
            reason: None,
            ip: None,
            count: 1,
        }
    }
}
