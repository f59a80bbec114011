//! External clients and their magic links (SPEC 7), as the gateway, the admin API
//! and the CLI share them: creating clients and links, declaring clients from the
//! configuration file, and the scopes of active clients kept in memory (an
//! unauthenticated browser inside one is told to ask for a new link, not shown the
//! sign-in form).

use std::sync::{Arc, RwLock};

use portcullis_core::client::{ClientSpec, Scope, mint_access_token, new_client_id};
use portcullis_core::clock::Millis;
use portcullis_core::secret::{Entropy, EntropyError, SecretString};
use portcullis_store::{AccessTokenRow, ClientRow, ConfigTopic, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("a client with slug {0:?} already exists")]
    Exists(String),
    #[error("no client with slug {0:?}")]
    NoSuchClient(String),
    #[error("client {0:?} is disabled; enable it first")]
    Disabled(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Entropy(#[from] EntropyError),
}

/// Adds a client (active). `preview` marks one the operator preview made.
pub async fn create_client(
    store: &Store,
    spec: &ClientSpec,
    preview: bool,
    entropy: &dyn Entropy,
    now: Millis,
) -> Result<ClientRow, ClientError> {
    let row = row_of(spec, preview, entropy, now)?;
    if !store.insert_client(&row).await? {
        return Err(ClientError::Exists(spec.slug.clone()));
    }
    announce(store, now).await;
    Ok(row)
}

fn row_of(
    spec: &ClientSpec,
    preview: bool,
    entropy: &dyn Entropy,
    now: Millis,
) -> Result<ClientRow, EntropyError> {
    Ok(ClientRow {
        id: new_client_id(entropy)?,
        slug: spec.slug.clone(),
        name: spec.name.clone(),
        active: true,
        roles: spec.roles.join(","),
        scope: spec.scope.stored(),
        preview,
        created_ms: now,
    })
}

/// Makes the clients declared in the configuration file exist as declared.
pub async fn declare_clients(
    store: &Store,
    specs: &[ClientSpec],
    entropy: &dyn Entropy,
    now: Millis,
) -> Result<(), ClientError> {
    let mut changed = false;
    for spec in specs {
        changed |= store
            .declare_client(&row_of(spec, false, entropy, now)?)
            .await?;
    }
    if changed {
        announce(store, now).await;
    }
    Ok(())
}

/// A new access token for client `slug`: the row and the secret, which is shown
/// once (in the link) and never stored.
pub async fn create_link(
    store: &Store,
    slug: &str,
    label: Option<String>,
    expires_ms: Option<Millis>,
    entropy: &dyn Entropy,
    now: Millis,
) -> Result<(AccessTokenRow, SecretString), ClientError> {
    let client = store
        .client_by_slug(slug)
        .await?
        .ok_or_else(|| ClientError::NoSuchClient(slug.to_owned()))?;
    if !client.active {
        return Err(ClientError::Disabled(slug.to_owned()));
    }
    let token = mint_access_token(entropy)?;
    let row = AccessTokenRow {
        id: token.id,
        client_id: client.id,
        client_slug: client.slug,
        label,
        preview: false,
        created_ms: now,
        last_used_ms: None,
        expires_ms,
        revoked_ms: None,
    };
    store.insert_access_token(&row, &token.hash).await?;
    Ok((row, token.secret))
}

/// The link a client follows: `{public-url}{prefix}/magic/<secret>`.
pub fn link_url(public_url: &str, prefix: &str, secret: &SecretString) -> SecretString {
    SecretString::new(format!(
        "{}{prefix}/magic/{}",
        public_url.trim_end_matches('/'),
        secret.expose()
    ))
}

/// Tells every gateway that clients changed (their scopes are reloaded). A
/// failure is logged: the change itself is committed, and a reload also follows
/// any bus flush.
pub async fn announce(store: &Store, now: Millis) {
    if let Err(error) = store.announce_change(ConfigTopic::Clients, now).await {
        tracing::error!(%error, "could not announce the client change to other gateways");
    }
}

/// The scopes of every active client, for deciding what an unauthenticated
/// browser is told.
#[derive(Debug, Default)]
pub struct ClientScopes(RwLock<Arc<[Scope]>>);

impl ClientScopes {
    pub async fn load(store: &Store) -> Result<Self, StoreError> {
        let scopes = Self::default();
        scopes.reload(store).await?;
        Ok(scopes)
    }

    pub async fn reload(&self, store: &Store) -> Result<(), StoreError> {
        let scopes: Arc<[Scope]> = store
            .list_clients()
            .await?
            .iter()
            .filter(|c| c.active)
            .map(ClientRow::scope)
            .collect();
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = scopes;
        Ok(())
    }

    /// Whether canonical `path` lies inside some active client's scope.
    pub fn covers(&self, path: &str) -> bool {
        let scopes = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        scopes.iter().any(|scope| scope.contains(path))
    }
}
