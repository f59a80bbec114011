//! The gateway's internal credential (SPEC 6.3): minted on demand, once, and held
//! for the life of the process. With PostgreSQL it belongs to the deployment: the
//! first replica to mint it stores it sealed, the others read it, so a child
//! spawned by one replica is accepted by all of them.
//!
//! Nothing is minted until a consumer asks (a supervised child or the credential
//! file): a gateway with no consumer accepts no internal credential at all.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use portcullis_core::internal::{self, InternalCredential};
use portcullis_core::keys::{KeyError, SecretKey};
use portcullis_core::secret::{Entropy, SecretString};
use portcullis_store::{Store, StoreError};

use crate::live::{LiveConnections, REASON_REVOKED};
use crate::session_cache::CachedSession;

/// Binds the sealed value to its purpose, so no other sealed row can stand in.
const SEAL_CONTEXT: &str = "portcullis internal credential v1";
/// A credential-shaped value that does not match triggers at most one reload
/// from the database per interval (PostgreSQL), so guesses cannot load it.
const RELOAD_MIN_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum InternalError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the stored internal credential cannot be opened with this secret key: {0}")]
    Key(#[from] KeyError),
    #[error("could not mint the internal credential: {0}")]
    Entropy(String),
}

/// One minted credential and the pseudo-session requests carrying it run as.
#[derive(Debug)]
pub struct Minted {
    pub credential: InternalCredential,
    pub session: Arc<CachedSession>,
}

impl Minted {
    fn new(credential: InternalCredential, now_ms: i64) -> Arc<Self> {
        let session = portcullis_core::session::Session {
            id: credential.id().to_owned(),
            identity: internal::identity(),
            created_ms: now_ms,
            last_seen_ms: now_ms,
            expires_ms: i64::MAX,
            idle_timeout_ms: None,
            revoked_ms: None,
            oidc_sid: None,
            oidc_sub: None,
            access_token_id: None,
            scope: None,
            device: portcullis_core::session::Device::default(),
            assurance: portcullis_core::session::Assurance::default(),
            credential: None,
        };
        Arc::new(Self {
            credential,
            session: Arc::new(CachedSession::pseudo(session)),
        })
    }
}

#[derive(Debug)]
pub struct InternalCredentials {
    secret: SecretKey,
    /// Shared by the deployment through the database (PostgreSQL).
    shared: bool,
    current: RwLock<Option<Arc<Minted>>>,
    last_reload: Mutex<Option<Instant>>,
    /// The revocation bus was lost and the credential held has not been
    /// re-checked since: a reset on another replica may have gone unheard.
    suspended: std::sync::atomic::AtomicBool,
}

impl InternalCredentials {
    /// Loads the deployment's credential if one was minted (PostgreSQL); mints
    /// nothing.
    pub async fn load(
        store: &Store,
        secret: SecretKey,
        now_ms: i64,
    ) -> Result<Self, InternalError> {
        let shared = store.kind() == portcullis_store::BackendKind::Postgres;
        let this = Self {
            secret,
            shared,
            current: RwLock::new(None),
            last_reload: Mutex::new(None),
            suspended: false.into(),
        };
        if shared && let Some(sealed) = store.internal_credential().await? {
            this.set(Some(Minted::new(this.open(&sealed)?, now_ms)));
        }
        Ok(this)
    }

    fn open(&self, sealed: &[u8]) -> Result<InternalCredential, InternalError> {
        open(&self.secret, sealed)
    }

    /// Whether the credential belongs to the deployment (PostgreSQL) rather than
    /// this process.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Deletes the deployment's stored credential and tells every replica.
    pub async fn reset_deployment(
        &self,
        store: &Store,
        now_ms: i64,
    ) -> Result<bool, InternalError> {
        reset_deployment_credential(store, &self.secret, now_ms).await
    }

    pub fn current(&self) -> Option<Arc<Minted>> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, value: Option<Arc<Minted>>) -> Option<Arc<Minted>> {
        match self.current.write() {
            Ok(mut guard) => std::mem::replace(&mut *guard, value),
            Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), value),
        }
    }

    /// The credential, minting it on first use. Returns it and whether this call
    /// minted it (the caller audits that).
    pub async fn get_or_mint(
        &self,
        store: &Store,
        entropy: &dyn Entropy,
        now_ms: i64,
    ) -> Result<(Arc<Minted>, bool), InternalError> {
        if let Some(minted) = self.current() {
            return Ok((minted, false));
        }
        let fresh =
            InternalCredential::mint(entropy).map_err(|e| InternalError::Entropy(e.to_string()))?;
        let credential = if self.shared {
            let sealed =
                self.secret
                    .seal(entropy, SEAL_CONTEXT, fresh.secret().expose().as_bytes())?;
            self.open(&store.internal_credential_or_insert(&sealed, now_ms).await?)?
        } else {
            fresh.clone()
        };
        let minted_here = credential.id() == fresh.id();
        let minted = Minted::new(credential, now_ms);
        // Two callers racing in one process: the first one stored wins.
        let stored = match self.current.write() {
            Ok(mut guard) => guard.get_or_insert(minted).clone(),
            Err(poisoned) => poisoned.into_inner().get_or_insert(minted).clone(),
        };
        Ok((
            stored.clone(),
            minted_here && stored.credential.id() == fresh.id(),
        ))
    }

    /// The minted credential `presented` is, if any. With PostgreSQL a
    /// credential-shaped value that does not match may have been minted by another
    /// replica: the database is consulted, at most once per second. Nor is the one
    /// held trusted from memory once the revocation bus was lost, until it has
    /// been re-checked ([`Self::recheck`], after the bus is back): a reset on
    /// another replica may have gone unheard, so the database decides each use
    /// of it, and when it cannot answer the credential is refused (fail closed).
    pub async fn verify(
        &self,
        store: &Store,
        presented: &str,
        now_ms: i64,
    ) -> Result<Option<Arc<Minted>>, InternalError> {
        let current = self.current();
        let held = current
            .as_ref()
            .is_some_and(|minted| minted.credential.matches(presented));
        let trusted = !self.shared || !self.suspended.load(Ordering::Acquire);
        if held && trusted {
            return Ok(current);
        }
        // Anything else asks the database: the credential held, each time while
        // it is not trusted; another value, at most once a second (it costs a
        // query whatever it is).
        if !self.shared || !internal::looks_like(presented) || (!held && !self.reload_due()) {
            return Ok(None);
        }
        let reloaded = match store.internal_credential().await? {
            Some(sealed) => {
                let credential = self.open(&sealed)?;
                let unchanged = current
                    .as_ref()
                    .is_some_and(|m| m.credential.id() == credential.id());
                if unchanged {
                    current
                } else {
                    let minted = Minted::new(credential, now_ms);
                    self.set(Some(minted.clone()));
                    Some(minted)
                }
            }
            None => {
                self.set(None);
                None
            }
        };
        Ok(reloaded.filter(|m| m.credential.matches(presented)))
    }

    fn reload_due(&self) -> bool {
        let mut last = match self.last_reload.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if last.is_some_and(|at| at.elapsed() < RELOAD_MIN_INTERVAL) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// Forgets the credential in this process (the next consumer mints a new one)
    /// and returns the one forgotten. Connections it carried are the caller's to
    /// close.
    pub fn forget(&self) -> Option<Arc<Minted>> {
        self.set(None)
    }

    /// A revoked credential id (`keys reset-internal-credential` on any replica):
    /// forgotten if it is the one held.
    pub fn on_revoked(&self, id: &str) {
        if self.current().is_some_and(|m| m.credential.id() == id) {
            self.forget();
            tracing::warn!(%id, "internal credential was reset; restart the gateway to mint a new one");
        }
    }

    /// The revocation bus was lost: the credential held is not trusted from
    /// memory until [`Self::recheck`] has read the database again.
    pub fn suspend(&self) {
        self.suspended.store(true, Ordering::Release);
    }

    /// After a `Flush` or the bus's return (a reset may have been missed): the
    /// database is re-read, sockets of a credential that is gone are closed, and
    /// the one held is trusted again. A failed read leaves it untrusted (each
    /// use then asks the database) until the next re-check.
    pub async fn recheck(&self, store: &Store, live: &LiveConnections) {
        if !self.shared {
            return;
        }
        let Some(held) = self.current() else {
            self.suspended.store(false, Ordering::Release);
            return;
        };
        match store.internal_credential().await {
            Ok(Some(sealed)) => match self.open(&sealed) {
                Ok(c) if c.id() == held.credential.id() => {}
                Ok(_) | Err(_) => {
                    self.forget();
                    live.end_session(held.credential.id(), REASON_REVOKED);
                }
            },
            Ok(None) => {
                self.forget();
                live.end_session(held.credential.id(), REASON_REVOKED);
            }
            Err(error) => {
                tracing::warn!(%error, "could not re-check the internal credential");
                return;
            }
        }
        self.suspended.store(false, Ordering::Release);
    }
}

fn open(secret: &SecretKey, sealed: &[u8]) -> Result<InternalCredential, InternalError> {
    let plain = secret.open(SEAL_CONTEXT, sealed)?;
    String::from_utf8(plain)
        .ok()
        .and_then(|s| InternalCredential::restore(SecretString::new(s)))
        .ok_or(InternalError::Key(KeyError::Unseal))
}

/// Deletes the deployment's stored credential and tells every replica (through the
/// revocation bus) to stop accepting it and close its connections. Returns whether
/// one was stored. Used by `portcullis keys reset-internal-credential`.
pub async fn reset_deployment_credential(
    store: &Store,
    secret: &SecretKey,
    now_ms: i64,
) -> Result<bool, InternalError> {
    let id = match store.internal_credential().await? {
        // A row sealed under another key cannot be named, but is deleted all the same.
        Some(sealed) => open(secret, &sealed).ok().map(|c| c.id().to_owned()),
        None => None,
    };
    Ok(store
        .reset_internal_credential(id.as_deref(), now_ms)
        .await?)
}
