//! Storage of sealed cookie-signing keys.

use portcullis_core::keys::StoredSigningKey;

use crate::{Store, StoreError, on_pool};

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: String,
    sealed: Vec<u8>,
    active: bool,
    created_ms: i64,
}

impl Store {
    /// Every signing key, oldest first.
    pub async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>, StoreError> {
        let rows: Vec<KeyRow> = on_pool!(self, pool => {
            sqlx::query_as("SELECT id, sealed, active, created_ms FROM signing_keys ORDER BY created_ms, id")
                .fetch_all(pool)
                .await?
        });
        Ok(rows
            .into_iter()
            .map(|r| StoredSigningKey {
                id: r.id,
                sealed: r.sealed,
                active: r.active,
                created_ms: r.created_ms,
            })
            .collect())
    }

    /// Adds `key` as the only active key; older keys stay and keep verifying.
    pub async fn rotate_signing_key(&self, key: &StoredSigningKey) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("UPDATE signing_keys SET active = $1").bind(false).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO signing_keys (id, sealed, active, created_ms) VALUES ($1, $2, $3, $4)")
                .bind(&key.id)
                .bind(&key.sealed)
                .bind(true)
                .bind(key.created_ms)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Adds `key` only if no key is active yet; returns whether it was added. Used at
    /// first start. Two replicas racing may both add one: both keys verify and the
    /// newest signs, which is harmless.
    pub async fn insert_first_signing_key(
        &self,
        key: &StoredSigningKey,
    ) -> Result<bool, StoreError> {
        let inserted = on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO signing_keys (id, sealed, active, created_ms) \
                 SELECT $1, $2, $3, $4 WHERE NOT EXISTS (SELECT 1 FROM signing_keys WHERE active = $3)",
            )
            .bind(&key.id)
            .bind(&key.sealed)
            .bind(true)
            .bind(key.created_ms)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(inserted == 1)
    }
}
