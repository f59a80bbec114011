//! OpenID Connect login and Back-Channel Logout (SPEC 5), as a relying party.
//!
//! Providers live in the database (client secrets sealed); this module keeps each
//! provider's discovery document and key set in memory. Discovery is refreshed
//! hourly; an ID or logout token naming an unknown `kid` refetches the key set at
//! most once per [`JWKS_REFETCH_WINDOW`]. Every failure answers 400 with one
//! uniform message; the audit log keeps the precise reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::http::header;
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis_core::keys::SecretKey;
use portcullis_core::oidc::{self as rules, Algorithm, JwkSet, ProviderRecord, TokenError};
use portcullis_core::secret::SecretString;
use portcullis_store::{Store, StoreError};
use serde::Deserialize;

use crate::config::OidcProviderSpec;
use crate::error::GatewayError;

/// How long a discovery document is trusted before it is fetched again.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// At most one key-set refetch per provider per window, however many tokens name
/// unknown keys.
pub const JWKS_REFETCH_WINDOW: Duration = Duration::from_secs(30);
/// Requests to providers: bounded in time and size, never redirected.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_DOCUMENT: usize = 1 << 20;

/// A provider's discovery document (the parts Portcullis uses).
#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    pub end_session_endpoint: Option<String>,
    pub userinfo_endpoint: Option<String>,
    #[serde(default)]
    pub id_token_signing_alg_values_supported: Option<Vec<String>>,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

/// A provider with its cached discovery and keys.
#[derive(Debug)]
pub struct Provider {
    pub record: ProviderRecord,
    pub(crate) client_secret: Option<SecretString>,
    pub(crate) algorithms: Vec<Algorithm>,
    metadata: RwLock<Option<(Arc<Metadata>, Instant)>>,
    jwks: RwLock<Arc<JwkSet>>,
    jwks_fetched: Mutex<Option<Instant>>,
}

/// Why a sign-in or logout token failed (kept for the audit log).
#[derive(Debug)]
pub struct Failure {
    pub reason: String,
    /// The database could not answer: nothing was refused, so the answer is 503
    /// (a provider retries a back-channel logout; a user retries a sign-in).
    pub store: Option<StoreError>,
}

impl From<TokenError> for Failure {
    fn from(e: TokenError) -> Self {
        Failure::new(e.reason())
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure {
            reason: format!("store: {e}"),
            store: Some(e),
        }
    }
}

/// Marks a stored ID token as sealed (an ID token itself starts with `eyJ`).
const SEALED_ID_TOKEN: &str = "sealed.";

impl Failure {
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            store: None,
        }
    }

    fn into_error(self) -> GatewayError {
        match self.store {
            Some(e) => GatewayError::Store(e),
            None => GatewayError::OidcFailed(self.reason),
        }
    }

    pub(crate) fn into_response(self) -> Response {
        self.into_error().into_response_for(true)
    }
}

/// The OpenID side of a gateway.
#[derive(Debug)]
pub struct Oidc {
    pub(crate) http: reqwest::Client,
    secret: SecretKey,
    providers: RwLock<HashMap<String, Arc<Provider>>>,
    /// One reload at a time: a reload that read the database earlier must not
    /// install its older list after a newer one.
    reloading: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
pub enum RefreshError {
    NotFound,
    Fetch(Failure),
    Downgrade(String),
}

#[derive(Debug, thiserror::Error)]
pub enum OidcStartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("provider {id}: {why}")]
    Provider { id: String, why: String },
    #[error("HTTP client: {0}")]
    Http(String),
}

impl Oidc {
    /// Reconciles the providers declared in configuration into the database (the
    /// file is the source of truth for `config` providers), then loads them all.
    pub async fn start(
        store: &Store,
        secret: SecretKey,
        declared: &[OidcProviderSpec],
        entropy: &dyn portcullis_core::secret::Entropy,
        now_ms: i64,
    ) -> Result<Self, OidcStartError> {
        for spec in declared {
            let existing = store.oidc_provider(&spec.id).await?;
            let sealed = match &spec.client_secret {
                Some(secret_value) => Some(
                    secret
                        .seal(
                            entropy,
                            &rules::client_secret_context(&spec.id),
                            secret_value.expose().as_bytes(),
                        )
                        .map_err(|e| OidcStartError::Provider {
                            id: spec.id.clone(),
                            why: e.to_string(),
                        })?,
                ),
                None => None,
            };
            let record = ProviderRecord {
                id: spec.id.clone(),
                display_name: spec.display_name.clone(),
                issuer: spec.issuer.clone(),
                client_id: spec.client_id.clone(),
                client_secret_sealed: sealed,
                scopes: spec.scopes.clone(),
                algorithms: spec.algorithms.clone(),
                groups_claim: spec.groups_claim.clone(),
                refuse_unmapped: spec.refuse_unmapped,
                accept_unverified_email: spec.accept_unverified_email,
                user_claim: spec.user_claim.clone(),
                user_prefix: spec.user_prefix.clone(),
                source: "config".into(),
                key_baseline: existing.as_ref().and_then(|e| e.key_baseline.clone()),
                created_ms: existing.as_ref().map_or(now_ms, |e| e.created_ms),
                updated_ms: now_ms,
            };
            store.upsert_oidc_provider(&record).await?;
        }
        for stale in store.oidc_providers().await? {
            if stale.source == "config" && !declared.iter().any(|d| d.id == stale.id) {
                match store.delete_oidc_provider(&stale.id, now_ms).await? {
                    portcullis_store::ProviderDelete::InUse => tracing::warn!(
                        provider = %stale.id,
                        "provider removed from the configuration is kept while sessions still use it"
                    ),
                    _ => {
                        tracing::info!(provider = %stale.id, "provider removed from the configuration")
                    }
                }
            }
        }
        // Providers added through the API or the CLI were checked against those
        // present then; a provider declared since in the file may still clash.
        for clash in rules::record_clashes(&store.oidc_providers().await?) {
            tracing::warn!("{clash}");
        }
        Self::load(store, secret).await
    }

    /// Loads the providers stored in the database, reconciling nothing (for the
    /// CLI, which must not touch providers declared in a gateway's config file).
    pub async fn load(store: &Store, secret: SecretKey) -> Result<Self, OidcStartError> {
        // reqwest is built without a default crypto provider (see Cargo.toml).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(HTTP_TIMEOUT)
            .build()
            .map_err(|e| OidcStartError::Http(e.to_string()))?;
        let this = Self {
            http,
            secret,
            providers: RwLock::new(HashMap::new()),
            reloading: tokio::sync::Mutex::new(()),
        };
        this.reload(store).await?;
        Ok(this)
    }

    /// Re-reads the providers from the database, keeping the caches of unchanged ones.
    pub async fn reload(&self, store: &Store) -> Result<(), OidcStartError> {
        let _one_at_a_time = self.reloading.lock().await;
        let records = store.oidc_providers().await?;
        let old = self.snapshot();
        let mut next = HashMap::new();
        for record in records {
            if portcullis_core::identity::RESERVED_PROVIDER_IDS.contains(&record.id.as_str()) {
                // Stored before such ids were refused: it would share a namespace with
                // a built-in sign-in method (and could end its sessions by logout).
                tracing::error!(
                    id = %record.id,
                    "OpenID provider ignored: its id is reserved for a built-in sign-in method; remove it and add it under another id"
                );
                continue;
            }
            if let Some(existing) = old.get(&record.id).filter(|p| p.record == record) {
                next.insert(record.id.clone(), existing.clone());
                continue;
            }
            let client_secret = match &record.client_secret_sealed {
                Some(sealed) => {
                    let plain = self
                        .secret
                        .open(&rules::client_secret_context(&record.id), sealed)
                        .map_err(|e| OidcStartError::Provider {
                            id: record.id.clone(),
                            why: format!("client secret: {e}"),
                        })?;
                    Some(SecretString::new(
                        String::from_utf8_lossy(&plain).into_owned(),
                    ))
                }
                None => None,
            };
            let algorithms = rules::parse_algorithms(&record.algorithms).map_err(|why| {
                OidcStartError::Provider {
                    id: record.id.clone(),
                    why,
                }
            })?;
            next.insert(
                record.id.clone(),
                Arc::new(Provider {
                    record,
                    client_secret,
                    algorithms,
                    metadata: RwLock::new(None),
                    jwks: RwLock::new(Arc::new(JwkSet { keys: Vec::new() })),
                    jwks_fetched: Mutex::new(None),
                }),
            );
        }
        match self.providers.write() {
            Ok(mut guard) => *guard = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        Ok(())
    }

    fn snapshot(&self) -> HashMap<String, Arc<Provider>> {
        self.read_providers(|providers| providers.clone())
    }

    pub(crate) fn read_providers<T>(
        &self,
        read: impl FnOnce(&HashMap<String, Arc<Provider>>) -> T,
    ) -> T {
        match self.providers.read() {
            Ok(guard) => read(&guard),
            Err(poisoned) => read(&poisoned.into_inner()),
        }
    }

    /// Seals a client secret for provider `id` under the secret key.
    pub fn seal_client_secret(
        &self,
        id: &str,
        secret: &str,
        entropy: &dyn portcullis_core::secret::Entropy,
    ) -> Result<Vec<u8>, portcullis_core::keys::KeyError> {
        self.secret.seal(
            entropy,
            &rules::client_secret_context(id),
            secret.as_bytes(),
        )
    }

    /// The ID token kept for `session_id`, sealed under the secret key (an ID token
    /// is a signed statement about a user; a database dump should not hand it out).
    pub(crate) fn seal_id_token(
        &self,
        session_id: &str,
        id_token: &str,
        entropy: &dyn portcullis_core::secret::Entropy,
    ) -> Result<String, portcullis_core::keys::KeyError> {
        let sealed = self.secret.seal(
            entropy,
            &rules::id_token_context(session_id),
            id_token.as_bytes(),
        )?;
        Ok(format!(
            "{SEALED_ID_TOKEN}{}",
            URL_SAFE_NO_PAD.encode(sealed)
        ))
    }

    /// The ID token from its stored form; rows written in clear by earlier versions
    /// are read as they are.
    pub(crate) fn open_id_token(&self, session_id: &str, stored: &str) -> Option<String> {
        let Some(sealed) = stored.strip_prefix(SEALED_ID_TOKEN) else {
            return Some(stored.to_owned());
        };
        let sealed = URL_SAFE_NO_PAD.decode(sealed).ok()?;
        let plain = self
            .secret
            .open(&rules::id_token_context(session_id), &sealed)
            .ok()?;
        String::from_utf8(plain).ok()
    }

    /// Whether provider `id` is configured (a map lookup under the read lock).
    pub fn knows(&self, id: &str) -> bool {
        self.read_providers(|providers| providers.contains_key(id))
    }

    pub fn provider(&self, id: &str) -> Option<Arc<Provider>> {
        self.read_providers(|providers| providers.get(id).cloned())
    }

    /// `(id, display name)` of every provider, for the sign-in page.
    pub fn buttons(&self) -> Vec<(String, String)> {
        let mut list: Vec<_> = self.read_providers(|providers| {
            providers
                .values()
                .map(|p| (p.record.id.clone(), p.record.display_name.clone()))
                .collect()
        });
        list.sort();
        list
    }

    async fn fetch_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, Failure> {
        let response = self
            .http
            .get(url)
            .header(header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| Failure::new(format!("fetch {url}: {e}")))?;
        read_json(response, url).await
    }

    /// Re-runs discovery and refetches the keys of provider `id` now, refusing a
    /// downgrade from the recorded baseline unless `force`. On success the new
    /// baseline is recorded and the caches replaced.
    pub async fn refresh(
        &self,
        store: &Store,
        id: &str,
        force: bool,
        now_ms: i64,
    ) -> Result<rules::KeyBaseline, RefreshError> {
        let provider = self.provider(id).ok_or(RefreshError::NotFound)?;
        let url = format!(
            "{}/.well-known/openid-configuration",
            provider.record.issuer.trim_end_matches('/')
        );
        let metadata: Metadata = self.fetch_json(&url).await.map_err(RefreshError::Fetch)?;
        if metadata.issuer != provider.record.issuer {
            return Err(RefreshError::Fetch(Failure::new(
                "discovery_issuer_mismatch",
            )));
        }
        let keys: JwkSet = self
            .fetch_json(&metadata.jwks_uri)
            .await
            .map_err(RefreshError::Fetch)?;
        let advertised = metadata
            .id_token_signing_alg_values_supported
            .clone()
            .unwrap_or_else(|| vec!["RS256".into()]);
        let baseline = rules::key_baseline(&advertised, &provider.algorithms, &keys);
        let previous = provider
            .record
            .key_baseline
            .as_deref()
            .and_then(|b| serde_json::from_str::<rules::KeyBaseline>(b).ok());
        if let Some(previous) = previous
            && let Some(why) = rules::downgrade(&previous, &baseline)
            && !force
        {
            return Err(RefreshError::Downgrade(why));
        }
        let serialized = serde_json::to_string(&baseline)
            .map_err(|e| RefreshError::Fetch(Failure::new(e.to_string())))?;
        store
            .set_oidc_key_baseline(id, &serialized, now_ms)
            .await
            .map_err(|e| RefreshError::Fetch(e.into()))?;
        write_lock(
            &provider.metadata,
            Some((Arc::new(metadata), Instant::now())),
        );
        write_lock(&provider.jwks, Arc::new(keys));
        Ok(baseline)
    }

    /// The provider's discovery document, fetched when missing or stale. Its
    /// `issuer` must be exactly the configured one.
    pub async fn metadata(&self, provider: &Provider) -> Result<Arc<Metadata>, Failure> {
        if let Some((metadata, at)) = read_lock(&provider.metadata).clone()
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(metadata);
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            provider.record.issuer.trim_end_matches('/')
        );
        let metadata: Metadata = self.fetch_json(&url).await?;
        if metadata.issuer != provider.record.issuer {
            return Err(Failure::new("discovery_issuer_mismatch"));
        }
        let metadata = Arc::new(metadata);
        write_lock(&provider.metadata, Some((metadata.clone(), Instant::now())));
        if read_lock(&provider.jwks).keys.is_empty() {
            self.refetch_jwks(provider, &metadata, true).await?;
        }
        Ok(metadata)
    }

    /// Fetches the key set, unless one was fetched within the window (and not
    /// `force`). Returns whether it fetched.
    async fn refetch_jwks(
        &self,
        provider: &Provider,
        metadata: &Metadata,
        force: bool,
    ) -> Result<bool, Failure> {
        {
            let mut last = match provider.jwks_fetched.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            if !force && last.is_some_and(|at| at.elapsed() < JWKS_REFETCH_WINDOW) {
                return Ok(false);
            }
            *last = Some(Instant::now());
        }
        let keys: JwkSet = self.fetch_json(&metadata.jwks_uri).await?;
        write_lock(&provider.jwks, Arc::new(keys));
        Ok(true)
    }

    /// Runs `check` against the provider's keys; on an unknown `kid`, refetches
    /// the key set (rate limited) and tries once more.
    pub(crate) async fn with_keys<T>(
        &self,
        provider: &Provider,
        metadata: &Metadata,
        check: impl Fn(&JwkSet) -> Result<T, TokenError>,
    ) -> Result<T, Failure> {
        let keys = read_lock(&provider.jwks).clone();
        match check(&keys) {
            Err(TokenError::UnknownKey) => {
                if self.refetch_jwks(provider, metadata, false).await? {
                    let keys = read_lock(&provider.jwks).clone();
                    Ok(check(&keys)?)
                } else {
                    Err(TokenError::UnknownKey.into())
                }
            }
            other => Ok(other?),
        }
    }
}

fn read_lock<T: Clone>(lock: &RwLock<T>) -> T {
    match lock.read() {
        Ok(guard) => guard.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

fn write_lock<T>(lock: &RwLock<T>, value: T) {
    match lock.write() {
        Ok(mut guard) => *guard = value,
        Err(poisoned) => *poisoned.into_inner() = value,
    }
}

pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    mut response: reqwest::Response,
    url: &str,
) -> Result<T, Failure> {
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| Failure::new(format!("read {url}: {e}")))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT {
            return Err(Failure::new(format!("{url}: response too large")));
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        #[derive(Deserialize)]
        struct OAuthError {
            error: String,
        }
        let code = serde_json::from_slice::<OAuthError>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| status.as_u16().to_string());
        return Err(Failure::new(format!("{url}: {code}")));
    }
    serde_json::from_slice(&body).map_err(|e| Failure::new(format!("{url}: invalid JSON: {e}")))
}
