//! WebSocket tickets: inserted hashed, consumed atomically exactly once.

use crate::{Store, StoreError, on_pool};

impl Store {
    pub async fn insert_ticket(
        &self,
        hash: &str,
        session_id: &str,
        now_ms: i64,
        expires_ms: i64,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query("INSERT INTO ws_tickets (hash, session_id, created_ms, expires_ms) VALUES ($1, $2, $3, $4)")
                .bind(hash)
                .bind(session_id)
                .bind(now_ms)
                .bind(expires_ms)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Deletes the ticket and returns its session if it existed and had not expired.
    /// `DELETE … RETURNING` is atomic on both backends: of any number of concurrent
    /// consumers on any number of gateways, exactly one gets the row.
    pub async fn consume_ticket(
        &self,
        hash: &str,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        let row: Option<(String, i64)> = on_pool!(self, pool => {
            sqlx::query_as("DELETE FROM ws_tickets WHERE hash = $1 RETURNING session_id, expires_ms")
                .bind(hash)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.and_then(|(session, expires)| (now_ms < expires).then_some(session)))
    }
}
