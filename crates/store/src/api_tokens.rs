//! API tokens: bearer credentials for non-browser clients, stored hashed.
//! Revocation goes through the same revocation log (and `NOTIFY`) as sessions, so
//! every gateway drops the token and closes its WebSockets within a second.

use crate::{Backend, Store, StoreError, log_revocation, on_pool};

/// An API token as stored (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ApiTokenRow {
    pub id: String,
    pub subject: String,
    pub roles: String,
    pub label: Option<String>,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
    /// The owner's identity provider (`basic`, an OpenID provider id); `None` for a
    /// service token that belongs to no sign-in identity.
    pub provider: Option<String>,
    pub expires_ms: Option<i64>,
}

const TOKEN_COLUMNS: &str =
    "id, subject, roles, label, created_ms, revoked_ms, provider, expires_ms";

impl ApiTokenRow {
    /// `live`, `expired` or `revoked` at `now_ms`.
    pub fn status(&self, now_ms: i64) -> &'static str {
        if self.revoked_ms.is_some() {
            "revoked"
        } else if self.expires_ms.is_some_and(|e| e <= now_ms) {
            "expired"
        } else {
            "live"
        }
    }

    pub fn role_list(&self) -> Vec<String> {
        self.roles
            .split(',')
            .filter(|r| !r.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

impl Store {
    pub async fn insert_api_token(&self, row: &ApiTokenRow, hash: &str) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO api_tokens (id, hash, subject, roles, label, created_ms, revoked_ms, \
                 provider, expires_ms) VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, $8)",
            )
            .bind(&row.id)
            .bind(hash)
            .bind(&row.subject)
            .bind(&row.roles)
            .bind(&row.label)
            .bind(row.created_ms)
            .bind(&row.provider)
            .bind(row.expires_ms)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The live (unrevoked) token with this hash.
    pub async fn api_token_by_hash(&self, hash: &str) -> Result<Option<ApiTokenRow>, StoreError> {
        self.live_api_token("hash = $1", hash).await
    }

    /// The live (unrevoked) token with this id.
    pub async fn api_token_by_id(&self, id: &str) -> Result<Option<ApiTokenRow>, StoreError> {
        self.live_api_token("id = $1", id).await
    }

    async fn live_api_token(
        &self,
        predicate: &'static str,
        value: &str,
    ) -> Result<Option<ApiTokenRow>, StoreError> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE {predicate} AND revoked_ms IS NULL"
        );
        crate::bounded_on_conn!(self, self.timeout, conn => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(value)
                .fetch_optional(&mut *conn)
                .await?
        })
    }

    /// Whether token `id` exists and is not revoked.
    pub async fn api_token_live(&self, id: &str) -> Result<bool, StoreError> {
        let row: Option<(String,)> = on_pool!(self, pool => {
            sqlx::query_as("SELECT id FROM api_tokens WHERE id = $1 AND revoked_ms IS NULL")
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.is_some())
    }

    /// Every token, or those of `subject`, oldest first.
    pub async fn list_api_tokens(
        &self,
        subject: Option<&str>,
    ) -> Result<Vec<ApiTokenRow>, StoreError> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE ($1 IS NULL OR subject = $1) \
             ORDER BY created_ms, id LIMIT 10000"
        );
        let rows = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(subject)
                .fetch_all(pool)
                .await?
        });
        Ok(rows)
    }

    /// Gives tokens without an owner's provider (made before tokens recorded it)
    /// whose subject is one of `subjects` the provider `provider`. Returns how many.
    pub async fn adopt_unowned_api_tokens(
        &self,
        provider: &str,
        subjects: &[&str],
    ) -> Result<u64, StoreError> {
        let mut adopted = 0;
        for subject in subjects {
            adopted += on_pool!(self, pool => {
                sqlx::query("UPDATE api_tokens SET provider = $1 WHERE provider IS NULL AND subject = $2")
                    .bind(provider)
                    .bind(subject)
                    .execute(pool)
                    .await?
                    .rows_affected()
            });
        }
        Ok(adopted)
    }

    /// Revokes every live token of `subject`; returns their ids. Logged and
    /// notified like any revocation, in the same transaction.
    pub async fn revoke_subject_api_tokens(
        &self,
        subject: &str,
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let notify = matches!(self.backend, Backend::Postgres(_));
        let ids = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let ids: Vec<(String,)> = sqlx::query_as(
                "UPDATE api_tokens SET revoked_ms = $1 WHERE subject = $2 AND revoked_ms IS NULL RETURNING id",
            )
            .bind(now_ms)
            .bind(subject)
            .fetch_all(&mut *tx)
            .await?;
            for (id,) in &ids {
                log_revocation!(tx, id, now_ms, notify);
            }
            tx.commit().await?;
            ids.into_iter().map(|(id,)| id).collect::<Vec<_>>()
        });
        Ok(ids)
    }

    /// Revokes a token; `false` if it did not exist or was already revoked.
    pub async fn revoke_api_token(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let notify = matches!(self.backend, Backend::Postgres(_));
        let revoked = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let n = sqlx::query("UPDATE api_tokens SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL")
                .bind(now_ms)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 1 {
                log_revocation!(tx, id, now_ms, notify);
            }
            tx.commit().await?;
            n == 1
        });
        Ok(revoked)
    }
}
