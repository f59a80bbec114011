//! The deployment's internal credential, sealed: one row at most, created once by
//! whichever replica needs it first and read by the others.

use crate::{Backend, Store, StoreError, log_revocation, on_pool};

impl Store {
    /// The sealed credential, if one was minted. On the request path (a
    /// credential checked while the bus is down), so bounded by the store's
    /// timeout like the session read.
    pub async fn internal_credential(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let row: Option<(Vec<u8>,)> = crate::bounded_on_conn!(self, self.timeout, conn => {
            sqlx::query_as("SELECT sealed FROM internal_credential WHERE slot = 1")
                .fetch_optional(&mut *conn)
                .await?
        })?;
        Ok(row.map(|(sealed,)| sealed))
    }

    /// Stores `sealed` unless a credential exists already, then returns the stored
    /// one: of replicas racing to mint, all end up with the same credential.
    pub async fn internal_credential_or_insert(
        &self,
        sealed: &[u8],
        now_ms: i64,
    ) -> Result<Vec<u8>, StoreError> {
        let (stored,): (Vec<u8>,) = on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO internal_credential (slot, sealed, created_ms) VALUES (1, $1, $2) \
                 ON CONFLICT (slot) DO NOTHING",
            )
            .bind(sealed)
            .bind(now_ms)
            .execute(pool)
            .await?;
            sqlx::query_as("SELECT sealed FROM internal_credential WHERE slot = 1")
                .fetch_one(pool)
                .await?
        });
        Ok(stored)
    }

    /// Deletes the credential and announces `id` (its public fingerprint) on the
    /// revocation bus, so every replica stops accepting it and closes its sockets.
    /// Returns whether there was one.
    pub async fn reset_internal_credential(
        &self,
        id: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let notify = matches!(self.backend, Backend::Postgres(_));
        let deleted = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let deleted = sqlx::query("DELETE FROM internal_credential WHERE slot = 1")
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if let Some(id) = id {
                log_revocation!(tx, id, now_ms, notify);
            }
            tx.commit().await?;
            deleted
        });
        Ok(deleted == 1)
    }
}
