//! OpenID Connect storage: providers, group mappings, pre-login rows (consumed
//! atomically, once), the back-channel logout `jti` replay store, and the ID token
//! kept for RP-initiated logout.

use crate::sessions::revoke_in_tx;
use portcullis_core::oidc::{PendingLogin, ProviderRecord};
use portcullis_core::secret::SecretString;

use crate::{Backend, Store, StoreError, on_pool};

#[derive(sqlx::FromRow)]
struct ProviderRow {
    id: String,
    display_name: String,
    issuer: String,
    client_id: String,
    client_secret_sealed: Option<Vec<u8>>,
    scopes: String,
    algorithms: String,
    groups_claim: String,
    refuse_unmapped: bool,
    accept_unverified_email: bool,
    user_claim: String,
    user_prefix: Option<String>,
    source: String,
    key_baseline: Option<String>,
    created_ms: i64,
    updated_ms: i64,
}

const PROVIDER_COLUMNS: &str = "id, display_name, issuer, client_id, client_secret_sealed, scopes, \
     algorithms, groups_claim, refuse_unmapped, accept_unverified_email, user_claim, user_prefix, \
     source, key_baseline, created_ms, updated_ms";

fn split(list: &str) -> Vec<String> {
    list.split_whitespace().map(str::to_owned).collect()
}

impl From<ProviderRow> for ProviderRecord {
    fn from(r: ProviderRow) -> Self {
        Self {
            id: r.id,
            display_name: r.display_name,
            issuer: r.issuer,
            client_id: r.client_id,
            client_secret_sealed: r.client_secret_sealed,
            scopes: split(&r.scopes),
            algorithms: split(&r.algorithms),
            groups_claim: r.groups_claim,
            refuse_unmapped: r.refuse_unmapped,
            accept_unverified_email: r.accept_unverified_email,
            user_claim: r.user_claim,
            user_prefix: r.user_prefix,
            source: r.source,
            key_baseline: r.key_baseline,
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
        }
    }
}

/// A group mapping: members of `idp_group` at `provider_id` get `role`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct GroupMapping {
    pub id: String,
    pub provider_id: String,
    pub idp_group: String,
    pub role: String,
}

/// The outcome of deleting a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderDelete {
    Deleted,
    NotFound,
    /// Live sessions still come from this provider.
    InUse,
}

/// Announced on the revocation bus when providers or mappings change, so every
/// gateway reloads them.
impl Store {
    /// Tells every gateway (through the bus) that OpenID providers or group
    /// mappings changed.
    pub async fn announce_oidc_change(&self, now_ms: i64) -> Result<(), StoreError> {
        self.announce_change(crate::bus::ConfigTopic::OidcProviders, now_ms)
            .await
    }

    /// Inserts or replaces the provider `p.id` (its `created_ms` is kept on update).
    pub async fn upsert_oidc_provider(&self, p: &ProviderRecord) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO oidc_providers (id, display_name, issuer, client_id, client_secret_sealed, \
                 scopes, algorithms, groups_claim, refuse_unmapped, source, key_baseline, created_ms, updated_ms, \
                 accept_unverified_email, user_claim, user_prefix) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
                 ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name, \
                 issuer = excluded.issuer, client_id = excluded.client_id, \
                 client_secret_sealed = excluded.client_secret_sealed, scopes = excluded.scopes, \
                 algorithms = excluded.algorithms, groups_claim = excluded.groups_claim, \
                 refuse_unmapped = excluded.refuse_unmapped, source = excluded.source, \
                 accept_unverified_email = excluded.accept_unverified_email, \
                 user_claim = excluded.user_claim, user_prefix = excluded.user_prefix, \
                 key_baseline = excluded.key_baseline, updated_ms = excluded.updated_ms",
            )
            .bind(&p.id)
            .bind(&p.display_name)
            .bind(&p.issuer)
            .bind(&p.client_id)
            .bind(&p.client_secret_sealed)
            .bind(p.scopes.join(" "))
            .bind(p.algorithms.join(" "))
            .bind(&p.groups_claim)
            .bind(p.refuse_unmapped)
            .bind(&p.source)
            .bind(&p.key_baseline)
            .bind(p.created_ms)
            .bind(p.updated_ms)
            .bind(p.accept_unverified_email)
            .bind(&p.user_claim)
            .bind(&p.user_prefix)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    pub async fn oidc_providers(&self) -> Result<Vec<ProviderRecord>, StoreError> {
        let sql = format!("SELECT {PROVIDER_COLUMNS} FROM oidc_providers ORDER BY id");
        let rows: Vec<ProviderRow> = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await?
        });
        Ok(rows.into_iter().map(ProviderRecord::from).collect())
    }

    pub async fn oidc_provider(&self, id: &str) -> Result<Option<ProviderRecord>, StoreError> {
        let sql = format!("SELECT {PROVIDER_COLUMNS} FROM oidc_providers WHERE id = $1");
        let row: Option<ProviderRow> = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await?
        });
        Ok(row.map(ProviderRecord::from))
    }

    /// Records the keys and algorithms accepted at the latest discovery.
    pub async fn set_oidc_key_baseline(
        &self,
        id: &str,
        baseline: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE oidc_providers SET key_baseline = $1, updated_ms = $2 WHERE id = $3")
                .bind(baseline)
                .bind(now_ms)
                .bind(id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Deletes a provider unless live sessions still come from it.
    pub async fn delete_oidc_provider(
        &self,
        id: &str,
        now_ms: i64,
    ) -> Result<ProviderDelete, StoreError> {
        let outcome = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let in_use: Option<(String,)> = sqlx::query_as(
                "SELECT id FROM sessions WHERE provider = $1 AND revoked_ms IS NULL AND expires_ms > $2 LIMIT 1",
            )
            .bind(id)
            .bind(now_ms)
            .fetch_optional(&mut *tx)
            .await?;
            if in_use.is_some() {
                ProviderDelete::InUse
            } else {
                let n = sqlx::query("DELETE FROM oidc_providers WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                if n == 1 { ProviderDelete::Deleted } else { ProviderDelete::NotFound }
            }
        });
        Ok(outcome)
    }

    pub async fn group_mappings(&self) -> Result<Vec<GroupMapping>, StoreError> {
        let rows: Vec<GroupMapping> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, provider_id, idp_group, role FROM oidc_group_mappings \
                 ORDER BY provider_id, idp_group, role",
            )
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }

    /// Adds a mapping; `false` if the same one exists already.
    pub async fn add_group_mapping(&self, m: &GroupMapping) -> Result<bool, StoreError> {
        let n = on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO oidc_group_mappings (id, provider_id, idp_group, role) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(&m.id)
            .bind(&m.provider_id)
            .bind(&m.idp_group)
            .bind(&m.role)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n == 1)
    }

    pub async fn remove_group_mapping(&self, id: &str) -> Result<bool, StoreError> {
        let n = on_pool!(self, pool => {
            sqlx::query("DELETE FROM oidc_group_mappings WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n == 1)
    }

    pub async fn insert_pending_login(&self, p: &PendingLogin) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO oidc_pending (id, provider_id, state, nonce, pkce_verifier, next, created_ms, expires_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&p.id)
            .bind(&p.provider_id)
            .bind(p.state.expose())
            .bind(p.nonce.expose())
            .bind(p.pkce_verifier.expose())
            .bind(&p.next)
            .bind(p.created_ms)
            .bind(p.expires_ms)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Deletes the pre-login row and returns it, whatever its age (the caller
    /// checks expiry, so an expired row is consumed and reported as such). Of any
    /// number of concurrent callbacks, exactly one gets the row.
    pub async fn consume_pending_login(
        &self,
        id: &str,
    ) -> Result<Option<PendingLogin>, StoreError> {
        type Row = (String, String, String, String, String, String, i64, i64);
        let row: Option<Row> = on_pool!(self, pool => {
            sqlx::query_as(
                "DELETE FROM oidc_pending WHERE id = $1 \
                 RETURNING id, provider_id, state, nonce, pkce_verifier, next, created_ms, expires_ms",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?
        });
        Ok(row.map(
            |(id, provider_id, state, nonce, verifier, next, created_ms, expires_ms)| {
                PendingLogin {
                    id,
                    provider_id,
                    state: SecretString::new(state),
                    nonce: SecretString::new(nonce),
                    pkce_verifier: SecretString::new(verifier),
                    next,
                    created_ms,
                    expires_ms,
                }
            },
        ))
    }

    /// Applies a back-channel logout token in one transaction: remembers its `jti`
    /// (until `expires_ms`) and revokes the live sessions of `provider_id` matching
    /// `sid` (when given) or else `subject`. `None` when the `jti` was seen before
    /// (a replay: nothing is revoked). Since both happen or neither does, a
    /// provider that retries after a failure is not refused as a replay.
    pub async fn apply_logout_token(
        &self,
        provider_id: &str,
        jti: &str,
        expires_ms: i64,
        sid: Option<&str>,
        subject: Option<&str>,
        now_ms: i64,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let matching = match (sid, subject) {
            (Some(sid), _) => Some(("provider = $3 AND oidc_sid = $4", sid)),
            // Sessions made before `oidc_sub` was recorded: their subject was the `sub`.
            (None, Some(subject)) => Some((
                "provider = $3 AND COALESCE(oidc_sub, subject) = $4",
                subject,
            )),
            (None, None) => None,
        };
        let notify = matches!(self.backend, Backend::Postgres(_));
        let revoked = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let fresh = sqlx::query(
                "INSERT INTO oidc_logout_jti (provider_id, jti, expires_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(provider_id)
            .bind(jti)
            .bind(expires_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !fresh {
                return Ok(None);
            }
            let ids = match matching {
                Some((predicate, value)) => {
                    let update = format!(
                        "UPDATE sessions SET revoked_ms = $1, revoked_by = $2 \
                         WHERE {predicate} AND revoked_ms IS NULL RETURNING id"
                    );
                    let values = [provider_id, value];
                    revoke_in_tx!(tx, update, values.iter(), "oidc-back-channel-logout", now_ms, notify)
                }
                None => Vec::new(),
            };
            tx.commit().await?;
            ids
        });
        Ok(Some(revoked))
    }

    /// Keeps the ID token a session came from, for `id_token_hint` at logout.
    pub async fn set_session_id_token(
        &self,
        session_id: &str,
        id_token: &str,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query("INSERT INTO oidc_session_tokens (session_id, id_token) VALUES ($1, $2)")
                .bind(session_id)
                .bind(id_token)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Every stored ID token, as stored (for tests and audits of what rests on disk).
    pub async fn oidc_session_token_rows(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = on_pool!(self, pool => {
            sqlx::query_as("SELECT id_token FROM oidc_session_tokens")
                .fetch_all(pool)
                .await?
        });
        Ok(rows.into_iter().map(|(t,)| t).collect())
    }

    /// Takes (reads and deletes) the ID token of a session being logged out.
    pub async fn take_session_id_token(
        &self,
        session_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = on_pool!(self, pool => {
            sqlx::query_as("DELETE FROM oidc_session_tokens WHERE session_id = $1 RETURNING id_token")
                .bind(session_id)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(|(t,)| t))
    }
}
