//! The live signing keyring. Keys rotate in the database (possibly from the CLI
//! while gateways run), so the keyring reloads when a cookie names a key it does
//! not know (at most once per [`RELOAD_MIN_INTERVAL`]) and periodically.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use portcullis_core::keys::{KeyError, Keyring, SecretKey, new_signing_key};
use portcullis_core::secret::Entropy;
use portcullis_store::{Store, StoreError};

/// Unknown key ids in cookies trigger at most one reload per second, so forged
/// cookies cannot turn into a database load.
pub const RELOAD_MIN_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] KeyError),
}

#[derive(Debug)]
pub struct LiveKeyring {
    secret: SecretKey,
    current: RwLock<Arc<Keyring>>,
    last_reload: Mutex<Instant>,
}

impl LiveKeyring {
    /// Loads the keyring, creating the first signing key if the database has none.
    pub async fn load(
        store: &Store,
        secret: SecretKey,
        entropy: &dyn Entropy,
        now_ms: i64,
    ) -> Result<Self, KeyringError> {
        let mut stored = store.signing_keys().await?;
        if !stored.iter().any(|k| k.active) {
            let key = new_signing_key(&secret, entropy, now_ms)?;
            store.insert_first_signing_key(&key).await?;
            stored = store.signing_keys().await?;
        }
        let ring = Keyring::unseal(&secret, &stored)?;
        Ok(Self {
            secret,
            current: RwLock::new(Arc::new(ring)),
            last_reload: Mutex::new(Instant::now()),
        })
    }

    pub fn current(&self) -> Arc<Keyring> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reloads from the database unless it was done less than a second ago.
    /// Returns whether a reload happened.
    pub async fn reload_if_due(&self, store: &Store) -> Result<bool, KeyringError> {
        {
            let mut last = match self.last_reload.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            if last.elapsed() < RELOAD_MIN_INTERVAL {
                return Ok(false);
            }
            *last = Instant::now();
        }
        let stored = store.signing_keys().await?;
        let ring = Keyring::unseal(&self.secret, &stored)?;
        match self.current.write() {
            Ok(mut guard) => *guard = Arc::new(ring),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(ring),
        }
        Ok(true)
    }
}
