//! OpenID Connect login and Back-Channel Logout (SPEC 5), as a relying party.
//!
//! Providers live in the database (client secrets sealed); this module keeps each
//! provider's discovery document and key set in memory. Discovery is refreshed
//! hourly; an ID or logout token naming an unknown `kid` refetches the key set at
//! most once per [`JWKS_REFETCH_WINDOW`]. Every failure answers 400 with one
//! uniform message; the audit log keeps the precise reason.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis_core::cookie::PRE_LOGIN_PREFIX;
use portcullis_core::keys::SecretKey;
use portcullis_core::oidc::{
    self as rules, Algorithm, Expectations, JwkSet, PENDING_TTL_MS, PendingLogin, ProviderRecord,
    TokenError,
};
use portcullis_core::redirect::safe_next;
use portcullis_core::secret::{SecretString, ct_eq, random_id};
use portcullis_store::{BusEvent, Store, StoreError};
use serde::Deserialize;

use crate::config::OidcProviderSpec;
use crate::cookies::{self, PENDING_COOKIE};
use crate::error::GatewayError;
use crate::state::Gateway;

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
    client_secret: Option<SecretString>,
    algorithms: Vec<Algorithm>,
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

    fn into_response(self) -> Response {
        self.into_error().into_response_for(true)
    }
}

/// The OpenID side of a gateway.
#[derive(Debug)]
pub struct Oidc {
    http: reqwest::Client,
    secret: SecretKey,
    providers: RwLock<HashMap<String, Arc<Provider>>>,
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
        };
        this.reload(store).await?;
        Ok(this)
    }

    /// Re-reads the providers from the database, keeping the caches of unchanged ones.
    pub async fn reload(&self, store: &Store) -> Result<(), OidcStartError> {
        let records = store.oidc_providers().await?;
        let old = self.snapshot();
        let mut next = HashMap::new();
        for record in records {
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

    fn read_providers<T>(&self, read: impl FnOnce(&HashMap<String, Arc<Provider>>) -> T) -> T {
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
    fn seal_id_token(
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
    fn open_id_token(&self, session_id: &str, stored: &str) -> Option<String> {
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

    /// Reloads providers when they change anywhere (announced on the bus) and after
    /// the bus lost messages.
    pub async fn follow(
        self: Arc<Self>,
        mut events: tokio::sync::broadcast::Receiver<BusEvent>,
        store: Store,
    ) {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let reload = match events.recv().await {
                Ok(BusEvent::Changed(topic)) => topic == portcullis_store::oidc::PROVIDERS_CHANGED,
                Ok(BusEvent::Revoked(_)) => false,
                Ok(BusEvent::Flush) | Err(RecvError::Lagged(_)) => true,
                Err(RecvError::Closed) => return,
            };
            if reload && let Err(error) = self.reload(&store).await {
                tracing::error!(%error, "could not reload OpenID providers");
            }
        }
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
    async fn with_keys<T>(
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

async fn read_json<T: serde::de::DeserializeOwned>(
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

fn now_s(gw: &Gateway) -> i64 {
    gw.0.clock.now_ms() / 1000
}

fn redirect_uri(gw: &Gateway) -> String {
    format!(
        "{}{}/oidc/callback",
        gw.config().public_url.origin(),
        gw.config().auth_prefix
    )
}

fn pending_cookie(gw: &Gateway, value: &str, max_age: i64) -> Option<HeaderValue> {
    let config = gw.config();
    let mut cookie = format!(
        "{PENDING_COOKIE}={value}; Path={}/oidc/; Max-Age={max_age}; SameSite=Lax; HttpOnly",
        config.auth_prefix
    );
    if config.public_url.is_https() {
        cookie.push_str("; Secure");
    }
    HeaderValue::from_str(&cookie).ok()
}

fn form_encode(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    provider: Option<String>,
    next: Option<String>,
}

/// `GET {prefix}/oidc/login?provider=ID&next=`: a pre-login row, its cookie, and a
/// redirect to the provider with PKCE S256, `state` and `nonce`.
pub async fn login(
    State(gw): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<LoginQuery>,
) -> Response {
    let id = query.provider.unwrap_or_default();
    match start_login(&gw, &id, query.next.as_deref()).await {
        Ok(response) => response,
        Err(failure) => {
            let mut event = gw.audit_event("anonymous", "auth.oidc.login", "failure");
            event.target = Some(id);
            event.reason = Some(failure.reason.clone());
            event.ip = Some(peer.ip().to_string());
            gw.audit(event).await;
            failure.into_response()
        }
    }
}

async fn start_login(gw: &Gateway, id: &str, next: Option<&str>) -> Result<Response, Failure> {
    let inner = &gw.0;
    let provider = inner
        .oidc
        .provider(id)
        .ok_or_else(|| Failure::new("unknown_provider"))?;
    let metadata = inner.oidc.metadata(&provider).await?;
    let entropy = inner.entropy.as_ref();
    let entropy_failed = |e: portcullis_core::secret::EntropyError| Failure::new(e.to_string());
    let pkce = rules::pkce(entropy).map_err(entropy_failed)?;
    let now = inner.clock.now_ms();
    let pending = PendingLogin {
        id: random_id(entropy, PRE_LOGIN_PREFIX).map_err(entropy_failed)?,
        provider_id: provider.record.id.clone(),
        state: rules::random_token(entropy).map_err(entropy_failed)?,
        nonce: rules::random_token(entropy).map_err(entropy_failed)?,
        pkce_verifier: pkce.verifier,
        next: next.and_then(safe_next).unwrap_or("/").to_owned(),
        created_ms: now,
        expires_ms: now + PENDING_TTL_MS,
    };
    inner.store.insert_pending_login(&pending).await?;
    let cookie = inner
        .keyring
        .current()
        .sign(&pending.id)
        .map_err(|e| Failure::new(e.to_string()))?;
    let scopes = provider.record.scopes.join(" ");
    let redirect = redirect_uri(gw);
    let query = form_encode(&[
        ("response_type", "code"),
        ("client_id", &provider.record.client_id),
        ("redirect_uri", &redirect),
        ("scope", &scopes),
        ("state", pending.state.expose()),
        ("nonce", pending.nonce.expose()),
        ("code_challenge", &pkce.challenge),
        ("code_challenge_method", "S256"),
    ]);
    let separator = if metadata.authorization_endpoint.contains('?') {
        '&'
    } else {
        '?'
    };
    let location = format!("{}{separator}{query}", metadata.authorization_endpoint);
    let mut response = Redirect::to(&location).into_response();
    let headers = response.headers_mut();
    if let Some(value) = pending_cookie(gw, &cookie, PENDING_TTL_MS / 1000) {
        headers.append(header::SET_COOKIE, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `GET {prefix}/oidc/callback`: consume the pre-login row (once), exchange the
/// code, validate the ID token, map groups, mint a session, 302 to `next`.
pub async fn callback(
    State(gw): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> Response {
    let mut event = gw.audit_event("anonymous", "auth.oidc.login", "failure");
    event.ip = Some(peer.ip().to_string());
    let outcome = finish_login(&gw, &headers, &query, &mut event).await;
    let mut response = match outcome {
        Ok(response) => response,
        Err(Callback::Failed(failure)) => {
            event.reason = Some(failure.reason.clone());
            gw.audit(event).await;
            failure.into_response()
        }
        Err(Callback::Refused(reason)) => {
            event.reason = Some(reason);
            gw.audit(event).await;
            GatewayError::Forbidden.into_response_for(true)
        }
    };
    // The pending cookie is single use whatever happened.
    if let Some(value) = pending_cookie(&gw, "", 0) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

enum Callback {
    Failed(Failure),
    /// Authenticated, but not allowed in (no mapped group on a refusing provider).
    Refused(String),
}

impl<E: Into<Failure>> From<E> for Callback {
    fn from(e: E) -> Self {
        Callback::Failed(e.into())
    }
}

async fn finish_login(
    gw: &Gateway,
    headers: &HeaderMap,
    query: &CallbackQuery,
    event: &mut portcullis_store::AuditEvent,
) -> Result<Response, Callback> {
    let inner = &gw.0;
    let cookie = cookies::read(headers, PENDING_COOKIE)
        .ok_or_else(|| Failure::new("missing_pending_cookie"))?;
    let pending_id = inner
        .keyring
        .current()
        .verify(cookie, PRE_LOGIN_PREFIX)
        .map_err(|e| {
            Failure::new(format!(
                "pending_cookie_{}",
                e.to_string().replace(' ', "_")
            ))
        })?
        .to_owned();
    let pending = inner
        .store
        .consume_pending_login(&pending_id)
        .await?
        .ok_or_else(|| Failure::new("pending_row_missing_or_replayed"))?;
    event.target = Some(pending.provider_id.clone());
    if pending.expires_ms <= inner.clock.now_ms() {
        return Err(Failure::new("pending_row_expired").into());
    }
    let state = query.state.as_deref().unwrap_or_default();
    if !ct_eq(state.as_bytes(), pending.state.expose().as_bytes()) {
        return Err(Failure::new("state_mismatch").into());
    }
    if let Some(error) = &query.error {
        let code: String = error
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        return Err(Failure::new(format!("idp_error:{code}")).into());
    }
    let code = query
        .code
        .as_deref()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| Failure::new("missing_code"))?;
    let provider = inner
        .oidc
        .provider(&pending.provider_id)
        .ok_or_else(|| Failure::new("unknown_provider"))?;
    let metadata = inner.oidc.metadata(&provider).await?;
    let tokens = exchange_code(gw, &provider, &metadata, code, &pending).await?;
    let id_token = tokens.id_token;
    let expect = Expectations {
        issuer: &provider.record.issuer,
        client_id: &provider.record.client_id,
        algorithms: &provider.algorithms,
        now_s: now_s(gw),
    };
    let mut claims = inner
        .oidc
        .with_keys(&provider, &metadata, |keys| {
            rules::verify_id_token(
                &id_token,
                keys,
                &expect,
                pending.nonce.expose(),
                &provider.record.groups_claim,
            )
        })
        .await?;
    event.actor = claims.subject.clone();
    if let (Some(endpoint), Some(access_token)) =
        (&metadata.userinfo_endpoint, &tokens.access_token)
    {
        let response = inner
            .oidc
            .http
            .get(endpoint)
            .bearer_auth(access_token.expose())
            .header(header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| Failure::new(format!("userinfo: {e}")))?;
        let userinfo: serde_json::Value = read_json(response, "userinfo endpoint").await?;
        rules::merge_userinfo(&mut claims, &userinfo, &provider.record.groups_claim)?;
    }

    let mappings = inner.store.group_mappings().await?;
    let mut roles: Vec<String> = mappings
        .iter()
        .filter(|m| m.provider_id == provider.record.id && claims.groups.contains(&m.idp_group))
        .map(|m| m.role.clone())
        .collect();
    roles.sort();
    roles.dedup();
    if roles.is_empty() {
        if provider.record.refuse_unmapped {
            return Err(Callback::Refused("no_mapped_group".into()));
        }
        roles.push(portcullis_core::identity::ROLE_USER.into());
    }
    let identity = portcullis_core::identity::Identity {
        name: claims
            .name
            .clone()
            .unwrap_or_else(|| claims.subject.clone()),
        subject: claims.subject.clone(),
        email: claims.email.clone(),
        provider: portcullis_core::identity::IdentityProvider::Oidc(provider.record.id.clone()),
        roles,
    };
    let (session, cookies) = crate::login::establish_session(gw, identity, claims.sid.clone())
        .await
        .map_err(|e| match e {
            GatewayError::Store(e) => Failure::from(e),
            other => Failure::new(other.to_string()),
        })?;
    if metadata.end_session_endpoint.is_some() {
        // Kept server-side only, sealed, for `id_token_hint` at RP-initiated logout.
        let sealed = inner
            .oidc
            .seal_id_token(&session.id, &id_token, inner.entropy.as_ref())
            .map_err(|e| Failure::new(format!("sealing the ID token: {e}")))?;
        inner
            .store
            .set_session_id_token(&session.id, &sealed)
            .await?;
    }
    event.outcome = "success".into();
    event.target = Some(session.id.clone());
    event.reason = Some(format!("provider:{}", provider.record.id));
    gw.audit(event.clone()).await;
    let mut response = Redirect::to(&pending.next).into_response();
    let headers = response.headers_mut();
    for value in cookies {
        headers.append(header::SET_COOKIE, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// What the token endpoint returned that Portcullis uses (nothing is stored but
/// the ID token, for `id_token_hint`; refresh tokens are never kept).
struct Tokens {
    id_token: String,
    access_token: Option<SecretString>,
}

/// Exchanges the authorization code (with the PKCE verifier) for the ID token,
/// authenticating as the discovery document allows: `client_secret_basic`
/// preferred, else `client_secret_post`; public clients send only their id.
async fn exchange_code(
    gw: &Gateway,
    provider: &Provider,
    metadata: &Metadata,
    code: &str,
    pending: &PendingLogin,
) -> Result<Tokens, Failure> {
    let redirect = redirect_uri(gw);
    let mut form = vec![
        ("grant_type", "authorization_code".to_owned()),
        ("code", code.to_owned()),
        ("redirect_uri", redirect),
        ("code_verifier", pending.pkce_verifier.expose().to_owned()),
        ("client_id", provider.record.client_id.clone()),
    ];
    let methods = metadata
        .token_endpoint_auth_methods_supported
        .clone()
        .unwrap_or_else(|| vec!["client_secret_basic".into()]);
    let mut request = gw.0.oidc.http.post(&metadata.token_endpoint);
    if let Some(secret) = &provider.client_secret {
        if methods.iter().any(|m| m == "client_secret_basic") {
            // RFC 6749 2.3.1: both parts form-urlencoded before Basic encoding.
            let user = form_encode(&[("", provider.record.client_id.as_str())]);
            let pass = form_encode(&[("", secret.expose())]);
            let pair = format!(
                "{}:{}",
                user.trim_start_matches('='),
                pass.trim_start_matches('=')
            );
            let basic = base64::engine::general_purpose::STANDARD.encode(pair);
            request = request.header(header::AUTHORIZATION, format!("Basic {basic}"));
        } else if methods.iter().any(|m| m == "client_secret_post") {
            form.push(("client_secret", secret.expose().to_owned()));
        } else {
            return Err(Failure::new("no_supported_client_auth_method"));
        }
    }
    let response = request
        .header(header::ACCEPT, "application/json")
        .form(&form)
        .send()
        .await
        .map_err(|e| Failure::new(format!("token request: {e}")))?;
    #[derive(Deserialize)]
    struct TokenResponse {
        id_token: Option<String>,
        access_token: Option<String>,
    }
    let tokens: TokenResponse = read_json(response, "token endpoint").await?;
    Ok(Tokens {
        id_token: tokens.id_token.ok_or_else(|| Failure::new("no_id_token"))?,
        access_token: tokens.access_token.map(SecretString::new),
    })
}

/// The unverified `iss` and `aud` of a JWT, only to choose which provider (an
/// issuer may serve several of our clients) checks it.
fn peek_issuer_audience(token: &str) -> Option<(String, Vec<String>)> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let issuer = claims.get("iss")?.as_str()?.to_owned();
    let audience = match claims.get("aud") {
        Some(serde_json::Value::String(one)) => vec![one.clone()],
        Some(serde_json::Value::Array(many)) => many
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    Some((issuer, audience))
}

/// `POST {prefix}/oidc/back-channel-logout` (OIDC Back-Channel Logout 1.0): verify
/// the logout token, remember its `jti`, revoke the matching sessions and close
/// their WebSockets on every replica. 200 with `no-store`; a refused token 400; 503
/// when the database cannot answer (the provider may retry: nothing was applied).
pub async fn back_channel_logout(
    State(gw): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    let mut event = gw.audit_event("anonymous", "auth.oidc.back_channel_logout", "failure");
    event.ip = Some(peer.ip().to_string());
    let outcome = logout_from_token(&gw, &body, &mut event).await;
    let response = match outcome {
        Ok(revoked) => {
            event.outcome = "success".into();
            event.reason = Some(format!("revoked:{revoked}"));
            let mut response = StatusCode::OK.into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(failure) => {
            event.reason = Some(failure.reason.clone());
            match failure.store {
                Some(e) => GatewayError::Store(e),
                None => GatewayError::LogoutTokenRefused(failure.reason),
            }
            .into_oauth_response()
        }
    };
    gw.audit(event).await;
    response
}

async fn logout_from_token(
    gw: &Gateway,
    body: &[u8],
    event: &mut portcullis_store::AuditEvent,
) -> Result<usize, Failure> {
    #[derive(Deserialize)]
    struct Form {
        logout_token: Option<String>,
    }
    let form: Form =
        serde_urlencoded::from_bytes(body).map_err(|_| Failure::new("malformed_form"))?;
    let token = form
        .logout_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Failure::new("missing_logout_token"))?;
    let inner = &gw.0;
    let (issuer, audience) =
        peek_issuer_audience(&token).ok_or_else(|| Failure::new("malformed"))?;
    let provider = inner
        .oidc
        .read_providers(|providers| {
            providers
                .values()
                .find(|p| p.record.issuer == issuer && audience.contains(&p.record.client_id))
                .cloned()
        })
        .ok_or_else(|| Failure::new("unknown_issuer_or_audience"))?;
    event.target = Some(provider.record.id.clone());
    let metadata = inner.oidc.metadata(&provider).await?;
    let expect = Expectations {
        issuer: &provider.record.issuer,
        client_id: &provider.record.client_id,
        algorithms: &provider.algorithms,
        now_s: now_s(gw),
    };
    let claims = inner
        .oidc
        .with_keys(&provider, &metadata, |keys| {
            rules::verify_logout_token(&token, keys, &expect)
        })
        .await?;
    if let Some(sub) = &claims.subject {
        event.actor = sub.clone();
    }
    let revoked = inner
        .store
        .apply_logout_token(
            &provider.record.id,
            &claims.jti,
            claims.remember_until_s.saturating_mul(1000),
            claims.sid.as_deref(),
            claims.subject.as_deref(),
            inner.clock.now_ms(),
        )
        .await?
        .ok_or_else(|| Failure::new("replayed_jti"))?;
    for id in &revoked {
        inner.sessions.invalidate(id);
        inner.bus.publish_local(BusEvent::Revoked(id.clone()));
    }
    Ok(revoked.len())
}

/// RP-initiated logout: the provider's `end_session_endpoint` for a session that
/// came from it, with the `id_token_hint` kept server-side at sign-in (taken, so it
/// is used once) and a return to the sign-in page. `None` for other sessions.
pub async fn end_session_url(
    gw: &Gateway,
    auth: &crate::pipeline::Authenticated,
) -> Option<String> {
    let inner = &gw.0;
    let provider = inner.oidc.provider(auth.identity().provider.oidc_id()?)?;
    let id_token = match inner.store.take_session_id_token(auth.session_id()).await {
        Ok(stored) => {
            let opened = inner.oidc.open_id_token(auth.session_id(), &stored?);
            if opened.is_none() {
                tracing::warn!("the kept ID token does not open; logging out without a hint");
            }
            opened?
        }
        Err(error) => {
            tracing::warn!(%error, "could not read the ID token for RP-initiated logout");
            return None;
        }
    };
    let metadata = inner.oidc.metadata(&provider).await.ok()?;
    let endpoint = metadata.end_session_endpoint.as_deref()?;
    let back = format!(
        "{}{}/login",
        gw.config().public_url.origin(),
        gw.config().auth_prefix
    );
    let query = form_encode(&[
        ("id_token_hint", id_token.as_str()),
        ("post_logout_redirect_uri", back.as_str()),
        ("client_id", provider.record.client_id.as_str()),
    ]);
    let separator = if endpoint.contains('?') { '&' } else { '?' };
    Some(format!("{endpoint}{separator}{query}"))
}
