//! Session rows: durable at insert, revocable, listed for operators.

use portcullis_core::identity::{Identity, IdentityProvider};
use portcullis_core::session::Session;

use crate::{Backend, Store, StoreError, on_pool};

const SESSION_COLUMNS: &str = "id, subject, name, email, provider, roles, created_ms, last_seen_ms, \
     expires_ms, idle_timeout_ms, revoked_ms, oidc_sid, access_token_id, user_agent, ip, acr, amr, \
     oidc_sub, credential";

#[derive(sqlx::FromRow)]
struct SessionRow {
    id: String,
    subject: String,
    name: String,
    email: Option<String>,
    provider: String,
    roles: String,
    created_ms: i64,
    last_seen_ms: i64,
    expires_ms: i64,
    idle_timeout_ms: Option<i64>,
    revoked_ms: Option<i64>,
    oidc_sid: Option<String>,
    access_token_id: Option<String>,
    user_agent: Option<String>,
    ip: Option<String>,
    acr: Option<String>,
    /// Comma-joined.
    amr: Option<String>,
    oidc_sub: Option<String>,
    credential: Option<String>,
}

impl From<SessionRow> for Session {
    fn from(r: SessionRow) -> Self {
        Session {
            id: r.id,
            identity: Identity {
                subject: r.subject,
                name: r.name,
                email: r.email,
                provider: IdentityProvider::from_stored(&r.provider),
                roles: r
                    .roles
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            },
            created_ms: r.created_ms,
            last_seen_ms: r.last_seen_ms,
            expires_ms: r.expires_ms,
            idle_timeout_ms: r.idle_timeout_ms,
            revoked_ms: r.revoked_ms,
            oidc_sid: r.oidc_sid,
            oidc_sub: r.oidc_sub,
            access_token_id: r.access_token_id,
            scope: None,
            device: portcullis_core::session::Device {
                user_agent: r.user_agent,
                ip: r.ip,
            },
            assurance: portcullis_core::session::Assurance {
                acr: r.acr,
                amr: r
                    .amr
                    .iter()
                    .flat_map(|a| a.split(','))
                    .filter(|a| !a.is_empty())
                    .map(str::to_owned)
                    .collect(),
            },
            credential: r.credential,
        }
    }
}

/// Inserts session `$s` through executor `$exec` (a pool or a transaction).
macro_rules! insert_session {
    ($exec:expr, $s:expr) => {{
        let s: &Session = $s;
        if s.identity.roles.iter().any(|r| r.contains(',')) {
            return Err(StoreError::Corrupt(
                "role names cannot contain commas".into(),
            ));
        }
        sqlx::query(
            "INSERT INTO sessions (id, subject, name, email, provider, roles, created_ms, \
             last_seen_ms, expires_ms, idle_timeout_ms, revoked_ms, oidc_sid, access_token_id, \
             user_agent, ip, acr, amr, oidc_sub, credential) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
             $19)",
        )
        .bind(&s.id)
        .bind(&s.identity.subject)
        .bind(&s.identity.name)
        .bind(&s.identity.email)
        .bind(s.identity.provider.as_str())
        .bind(s.identity.roles.join(","))
        .bind(s.created_ms)
        .bind(s.last_seen_ms)
        .bind(s.expires_ms)
        .bind(s.idle_timeout_ms)
        .bind(s.revoked_ms)
        .bind(&s.oidc_sid)
        .bind(&s.access_token_id)
        .bind(&s.device.user_agent)
        .bind(&s.device.ip)
        .bind(&s.assurance.acr)
        .bind((!s.assurance.amr.is_empty()).then(|| s.assurance.amr.join(",")))
        .bind(&s.oidc_sub)
        .bind(&s.credential)
        .execute($exec)
        .await?;
    }};
}
pub(crate) use insert_session;

/// A session row with what its access token and client say (see [`Store::session`]).
#[derive(sqlx::FromRow)]
struct BoundSessionRow {
    #[sqlx(flatten)]
    session: SessionRow,
    token_revoked_ms: Option<i64>,
    token_expires_ms: Option<i64>,
    client_active: Option<bool>,
    client_scope: Option<String>,
}

impl BoundSessionRow {
    fn into_session(self) -> Session {
        let mut session = Session::from(self.session);
        if session.access_token_id.is_some() {
            // A missing token or client (never deleted, but never trusted either)
            // reads like a revoked one.
            if session.revoked_ms.is_none()
                && (self.token_revoked_ms.is_some() || self.client_active != Some(true))
            {
                session.revoked_ms = Some(self.token_revoked_ms.unwrap_or(session.created_ms));
            }
            if let Some(token_expires) = self.token_expires_ms {
                session.expires_ms = session.expires_ms.min(token_expires);
            }
            session.scope = Some(portcullis_core::client::Scope::from_stored(
                self.client_scope.as_deref().unwrap_or(""),
            ));
        }
        session
    }
}

/// Which sessions to list.
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub subject: Option<String>,
    /// The stored provider name (`basic`, `magic`, an OpenID provider id).
    pub provider: Option<String>,
    /// Include revoked and expired sessions.
    pub include_ended: bool,
}

/// Inside transaction `tx`: runs `update` (an `UPDATE sessions … RETURNING id` whose
/// `$1` is the time, `$2` who revoked, `$3`, `$4`, … `values`), then logs and (on
/// PostgreSQL) notifies each revoked id. Evaluates to the ids.
macro_rules! revoke_in_tx {
    ($tx:expr, $update:expr, $values:expr, $by:expr, $now_ms:expr, $notify:expr) => {{
        let mut query = sqlx::query_as(sqlx::AssertSqlSafe($update.clone()))
            .bind($now_ms)
            .bind($by);
        for value in $values {
            query = query.bind(*value);
        }
        let ids: Vec<(String,)> = query.fetch_all(&mut *$tx).await?;
        for (id,) in &ids {
            $crate::log_revocation!($tx, id, $now_ms, $notify);
        }
        ids.into_iter().map(|(id,)| id).collect::<Vec<String>>()
    }};
}
pub(crate) use revoke_in_tx;

impl Store {
    /// Persists a new session. Returns once the row is committed, so a login
    /// response sent afterwards never refers to a session a crash could lose.
    pub async fn insert_session(&self, s: &Session) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            insert_session!(pool, s);
        });
        Ok(())
    }

    /// Session `id` as it stands: one bound to a magic-link access token reads as
    /// revoked once the token is revoked or its client disabled, expires with the
    /// token, and carries its client's scope.
    pub async fn session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        // Built once: a session read is the miss path of every request.
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "SELECT {}, t.revoked_ms AS token_revoked_ms, t.expires_ms AS token_expires_ms, \
                 c.active AS client_active, c.scope AS client_scope \
                 FROM sessions s LEFT JOIN access_tokens t ON t.id = s.access_token_id \
                 LEFT JOIN clients c ON c.id = t.client_id WHERE s.id = $1",
                SESSION_COLUMNS
                    .split(", ")
                    .map(|c| format!("s.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        });
        let row: Option<BoundSessionRow> = crate::bounded_on_conn!(self, self.timeout, conn => {
            sqlx::query_as(SQL.as_str())
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?
        })?;
        Ok(row.map(BoundSessionRow::into_session))
    }

    /// Sessions, newest first; live ones only unless `include_ended`.
    pub async fn list_sessions(
        &self,
        filter: &SessionFilter,
        now_ms: i64,
    ) -> Result<Vec<Session>, StoreError> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE ($1 IS NULL OR subject = $1) \
             AND ($2 OR (revoked_ms IS NULL AND expires_ms > $3)) AND ($4 IS NULL OR provider = $4) \
             ORDER BY created_ms DESC LIMIT 10000"
        );
        let rows: Vec<SessionRow> = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(&filter.subject)
                .bind(filter.include_ended)
                .bind(now_ms)
                .bind(&filter.provider)
                .fetch_all(pool)
                .await?
        });
        Ok(rows.into_iter().map(Session::from).collect())
    }

    /// Revokes one session. Returns `false` if it did not exist or was already
    /// revoked. The revocation is logged and (on PostgreSQL) notified in the same
    /// transaction, so every gateway hears of exactly the committed revocations.
    pub async fn revoke_session(
        &self,
        id: &str,
        by: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        Ok(!self
            .revoke_where("id = $3", &[id], by, now_ms)
            .await?
            .is_empty())
    }

    /// Revokes every live session of `subject`; returns their ids.
    pub async fn revoke_subject_sessions(
        &self,
        subject: &str,
        by: &str,
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        self.revoke_where("subject = $3", &[subject], by, now_ms)
            .await
    }

    /// Signs basic user `name` out after a change of the users file: sessions
    /// whose recorded hash is not `keep` (the user's hash now, by
    /// [`portcullis_core::basic::credential_fingerprint`]; `None`: the user is
    /// gone), and sessions that recorded none and API tokens made before
    /// `before_ms`. In one transaction, logged and notified like any
    /// revocation. Returns their ids. What the new password made is kept, on
    /// whichever replica it was made and however late this one reads the change.
    pub async fn sign_out_basic_user(
        &self,
        name: &str,
        keep: Option<&str>,
        before_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let notify = matches!(self.backend, crate::Backend::Postgres(_));
        let ids = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            // Sessions that recorded their hash end unless it is the one kept;
            // older ones (and API tokens) if made before the change.
            let sessions: Vec<(String,)> = sqlx::query_as(
                "UPDATE sessions SET revoked_ms = $1, revoked_by = 'users-file' \
                 WHERE provider = 'basic' AND subject = $2 AND revoked_ms IS NULL \
                 AND (CASE WHEN credential IS NULL THEN created_ms < $3 \
                 ELSE COALESCE(credential <> $4, TRUE) END) RETURNING id",
            )
            .bind(now_ms)
            .bind(name)
            .bind(before_ms)
            .bind(keep)
            .fetch_all(&mut *tx)
            .await?;
            let tokens: Vec<(String,)> = sqlx::query_as(
                "UPDATE api_tokens SET revoked_ms = $1 \
                 WHERE provider = 'basic' AND subject = $2 AND created_ms < $3 \
                 AND revoked_ms IS NULL RETURNING id",
            )
            .bind(now_ms)
            .bind(name)
            .bind(before_ms)
            .fetch_all(&mut *tx)
            .await?;
            let ids: Vec<String> = sessions.into_iter().chain(tokens).map(|(id,)| id).collect();
            for id in &ids {
                crate::log_revocation!(tx, id, now_ms, notify);
            }
            tx.commit().await?;
            ids
        });
        Ok(ids)
    }

    /// Revokes the live sessions matching `predicate`, whose `$3`, `$4`, … are
    /// `values`; logs and (on PostgreSQL) notifies each in the same transaction.
    pub(crate) async fn revoke_where(
        &self,
        predicate: &'static str,
        values: &[&str],
        by: &str,
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let update = format!(
            "UPDATE sessions SET revoked_ms = $1, revoked_by = $2 WHERE {predicate} AND revoked_ms IS NULL RETURNING id"
        );
        let notify = matches!(self.backend, Backend::Postgres(_));
        let ids: Vec<String> = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let ids = revoke_in_tx!(tx, update, values, by, now_ms, notify);
            tx.commit().await?;
            ids
        });
        Ok(ids)
    }

    /// Records activity for many sessions in one transaction (`last_seen` batching).
    /// `bound` marks a magic-link session, whose access token's `last_used_ms`
    /// is stamped too.
    pub async fn touch_sessions(&self, seen: &[(String, i64, bool)]) -> Result<(), StoreError> {
        if seen.is_empty() {
            return Ok(());
        }
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for (id, at, bound) in seen {
                sqlx::query("UPDATE sessions SET last_seen_ms = $1 WHERE id = $2 AND last_seen_ms < $1")
                    .bind(*at)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                if *bound {
                    sqlx::query(
                        "UPDATE access_tokens SET last_used_ms = $1 WHERE id = \
                         (SELECT access_token_id FROM sessions WHERE id = $2) \
                         AND (last_used_ms IS NULL OR last_used_ms < $1)",
                    )
                    .bind(*at)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Announces a configuration change to every gateway: a row for pollers and,
    /// on PostgreSQL, a `NOTIFY` on [`crate::CONFIG_CHANNEL`] at commit.
    pub async fn announce_change(
        &self,
        topic: crate::bus::ConfigTopic,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let notify = matches!(self.backend, crate::Backend::Postgres(_));
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("INSERT INTO config_changes (topic, at_ms) VALUES ($1, $2)")
                .bind(topic.as_str())
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            if notify {
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(crate::CONFIG_CHANNEL)
                    .bind(topic.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }
}
