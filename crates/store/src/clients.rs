//! External clients and their magic-link access tokens (SPEC 7).
//!
//! A session minted from a link is bound to its token (`sessions.access_token_id`).
//! Revoking the token or disabling the client revokes every bound session in the
//! same transaction, through the revocation log and `NOTIFY`, so every gateway drops
//! them and closes their WebSockets within a second; [`Store::session`] also reads a
//! bound session as revoked whenever its token or client says so.
//!
//! Sign-in and revocation serialise on the token row: sign-in stamps the token
//! (`UPDATE … WHERE revoked_ms IS NULL`) before inserting its session, and a
//! revocation updates the token (or, when disabling a client, every token of it)
//! before revoking bound sessions. On PostgreSQL the second writer waits for the
//! first to commit, so either the sign-in sees the revocation and refuses, or the
//! revocation's session update sees the new session and revokes it. SQLite has one
//! writer at a time.

use portcullis_core::client::Scope;
use portcullis_core::identity::{Identity, IdentityProvider};
use portcullis_core::session::Session;

use crate::sessions::{insert_session, revoke_in_tx};
use crate::{Backend, Store, StoreError, log_revocation, on_pool};

/// A client as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ClientRow {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub active: bool,
    /// Comma-joined role names.
    pub roles: String,
    /// Newline-joined path prefixes ([`Scope::stored`]).
    pub scope: String,
    /// Created by the operator preview.
    pub preview: bool,
    pub created_ms: i64,
}

impl ClientRow {
    pub fn scope(&self) -> Scope {
        Scope::from_stored(&self.scope)
    }

    pub fn role_list(&self) -> Vec<String> {
        self.roles
            .split(',')
            .filter(|r| !r.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

const CLIENT_COLUMNS: &str = "id, slug, name, active, roles, scope, preview, created_ms";

/// An access token as stored (never the secret), with its client's slug.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AccessTokenRow {
    pub id: String,
    pub client_id: String,
    pub client_slug: String,
    pub label: Option<String>,
    pub preview: bool,
    pub created_ms: i64,
    pub last_used_ms: Option<i64>,
    pub expires_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
}

impl AccessTokenRow {
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
}

const TOKEN_COLUMNS: &str = "t.id, t.client_id, c.slug AS client_slug, t.label, t.preview, \
     t.created_ms, t.last_used_ms, t.expires_ms, t.revoked_ms";

/// Which token a sign-in presents.
#[derive(Debug, Clone, Copy)]
pub enum TokenRef<'a> {
    /// The SHA-256 of a link's secret.
    Hash(&'a str),
    /// A token id (the operator preview, which never sees a secret).
    Id(&'a str),
}

/// Why a link signs no one in (the audit reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRefusal {
    Unknown,
    Revoked,
    Expired,
    ClientDisabled,
}

impl LinkRefusal {
    pub fn reason(self) -> &'static str {
        match self {
            LinkRefusal::Unknown => "unknown_token",
            LinkRefusal::Revoked => "token_revoked",
            LinkRefusal::Expired => "token_expired",
            LinkRefusal::ClientDisabled => "client_disabled",
        }
    }
}

/// What became of disabling or enabling a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientSwitch {
    NoSuchClient,
    /// It already was in that state.
    Unchanged,
    /// Done; the sessions revoked by disabling it.
    Switched(Vec<String>),
}

impl Store {
    /// Adds a client; `false` if its slug is taken.
    pub async fn insert_client(&self, row: &ClientRow) -> Result<bool, StoreError> {
        let inserted = on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO clients (id, slug, name, active, roles, scope, preview, created_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (slug) DO NOTHING",
            )
            .bind(&row.id)
            .bind(&row.slug)
            .bind(&row.name)
            .bind(row.active)
            .bind(&row.roles)
            .bind(&row.scope)
            .bind(row.preview)
            .bind(row.created_ms)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(inserted == 1)
    }

    /// Makes a client declared in the configuration file exist with its declared
    /// name, roles and scope (its active flag is left to the operator). A client
    /// whose declaration changed loses its live sessions (they carry the old scope
    /// and roles); its links stay valid. Returns whether anything changed.
    pub async fn declare_client(&self, row: &ClientRow) -> Result<bool, StoreError> {
        if self.insert_client(row).await? {
            return Ok(true);
        }
        let changed = on_pool!(self, pool => {
            sqlx::query(
                "UPDATE clients SET name = $2, roles = $3, scope = $4 WHERE slug = $1 \
                 AND (name <> $2 OR roles <> $3 OR scope <> $4)",
            )
            .bind(&row.slug)
            .bind(&row.name)
            .bind(&row.roles)
            .bind(&row.scope)
            .execute(pool)
            .await?
            .rows_affected()
        });
        if changed > 0 {
            self.revoke_where(
                "access_token_id IN (SELECT t.id FROM access_tokens t JOIN clients c \
                 ON c.id = t.client_id WHERE c.slug = $3)",
                &[&row.slug],
                "configuration",
                row.created_ms,
            )
            .await?;
        }
        Ok(changed > 0)
    }

    pub async fn client_by_slug(&self, slug: &str) -> Result<Option<ClientRow>, StoreError> {
        let sql = format!("SELECT {CLIENT_COLUMNS} FROM clients WHERE slug = $1");
        let row = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(slug).fetch_optional(pool).await?
        });
        Ok(row)
    }

    /// Every client, oldest first.
    pub async fn list_clients(&self) -> Result<Vec<ClientRow>, StoreError> {
        let sql =
            format!("SELECT {CLIENT_COLUMNS} FROM clients ORDER BY created_ms, slug LIMIT 10000");
        let rows = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await?
        });
        Ok(rows)
    }

    /// Disables or enables a client. Disabling revokes every session minted from
    /// its links (logged and notified like any revocation); enabling lets its
    /// unrevoked links sign in again.
    pub async fn set_client_active(
        &self,
        slug: &str,
        active: bool,
        by: &str,
        now_ms: i64,
    ) -> Result<ClientSwitch, StoreError> {
        let notify = matches!(self.backend, Backend::Postgres(_));
        let update =
            "UPDATE sessions SET revoked_ms = $1, revoked_by = $2 WHERE revoked_ms IS NULL \
             AND access_token_id IN (SELECT t.id FROM access_tokens t JOIN clients c \
             ON c.id = t.client_id WHERE c.slug = $3) RETURNING id"
                .to_owned();
        let switch = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            // A write first, so SQLite takes its write lock at once (a read first
            // could fail to upgrade when another writer commits in between).
            let switched = sqlx::query("UPDATE clients SET active = $2 WHERE slug = $1 AND active <> $2")
                .bind(slug)
                .bind(active)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if switched == 0 {
                let found: Option<(bool,)> = sqlx::query_as("SELECT active FROM clients WHERE slug = $1")
                    .bind(slug)
                    .fetch_optional(&mut *tx)
                    .await?;
                match found {
                    None => ClientSwitch::NoSuchClient,
                    Some(_) => ClientSwitch::Unchanged,
                }
            } else {
                let revoked = if active {
                    Vec::new()
                } else {
                    // Lock the client's tokens: a sign-in in flight commits first
                    // and its session is revoked below; a later one waits and then
                    // finds the client disabled.
                    sqlx::query(
                        "UPDATE access_tokens SET last_used_ms = last_used_ms WHERE client_id = \
                         (SELECT id FROM clients WHERE slug = $1)",
                    )
                    .bind(slug)
                    .execute(&mut *tx)
                    .await?;
                    revoke_in_tx!(tx, update, &[slug], by, now_ms, notify)
                };
                tx.commit().await?;
                ClientSwitch::Switched(revoked)
            }
        });
        Ok(switch)
    }

    pub async fn insert_access_token(
        &self,
        row: &AccessTokenRow,
        hash: &str,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO access_tokens (id, hash, client_id, label, preview, created_ms, \
                 last_used_ms, expires_ms, revoked_ms) VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, NULL)",
            )
            .bind(&row.id)
            .bind(hash)
            .bind(&row.client_id)
            .bind(&row.label)
            .bind(row.preview)
            .bind(row.created_ms)
            .bind(row.expires_ms)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Tokens of one client (by slug) or of all, oldest first.
    pub async fn list_access_tokens(
        &self,
        client_slug: Option<&str>,
    ) -> Result<Vec<AccessTokenRow>, StoreError> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM access_tokens t JOIN clients c ON c.id = t.client_id \
             WHERE ($1 IS NULL OR c.slug = $1) ORDER BY t.created_ms, t.id LIMIT 10000"
        );
        let rows = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(client_slug).fetch_all(pool).await?
        });
        Ok(rows)
    }

    pub async fn access_token(&self, id: &str) -> Result<Option<AccessTokenRow>, StoreError> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM access_tokens t JOIN clients c ON c.id = t.client_id \
             WHERE t.id = $1"
        );
        let row = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await?
        });
        Ok(row)
    }

    /// The live preview token of a client, if it has one.
    pub async fn preview_token(
        &self,
        client_id: &str,
        now_ms: i64,
    ) -> Result<Option<AccessTokenRow>, StoreError> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM access_tokens t JOIN clients c ON c.id = t.client_id \
             WHERE t.client_id = $1 AND t.preview AND t.revoked_ms IS NULL \
             AND (t.expires_ms IS NULL OR t.expires_ms > $2) ORDER BY t.created_ms LIMIT 1"
        );
        let row = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(client_id)
                .bind(now_ms)
                .fetch_optional(pool)
                .await?
        });
        Ok(row)
    }

    /// Revokes a token and every session minted from it. `None` if there is no
    /// such live token; else the revoked session ids.
    pub async fn revoke_access_token(
        &self,
        id: &str,
        by: &str,
        now_ms: i64,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let notify = matches!(self.backend, Backend::Postgres(_));
        let update = "UPDATE sessions SET revoked_ms = $1, revoked_by = $2 \
             WHERE access_token_id = $3 AND revoked_ms IS NULL RETURNING id"
            .to_owned();
        let revoked = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let done = sqlx::query(
                "UPDATE access_tokens SET revoked_ms = $2 WHERE id = $1 AND revoked_ms IS NULL",
            )
            .bind(id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if done == 0 {
                None
            } else {
                let ids = revoke_in_tx!(tx, update, &[id], by, now_ms, notify);
                // The token itself too: a gateway that cached a session of it in
                // the instant before this commit forgets it.
                log_revocation!(tx, id, now_ms, notify);
                tx.commit().await?;
                Some(ids)
            }
        });
        Ok(revoked)
    }

    /// Signs a client in by link: in one transaction the token is checked and
    /// stamped (`last_used_ms`), its client checked, and `session` inserted with
    /// the client's identity, scope and roles, bound to the token and expiring no
    /// later than it. Returns the session as stored, or why the link was refused.
    pub async fn magic_sign_in(
        &self,
        token: TokenRef<'_>,
        mut session: Session,
    ) -> Result<Result<Session, LinkRefusal>, StoreError> {
        let now_ms = session.created_ms;
        let column = match token {
            TokenRef::Hash(_) => "hash",
            TokenRef::Id(_) => "id",
        };
        let value = match token {
            TokenRef::Hash(v) | TokenRef::Id(v) => v,
        };
        let stamp = format!(
            "UPDATE access_tokens SET last_used_ms = $2 WHERE {column} = $1 \
             AND revoked_ms IS NULL AND (expires_ms IS NULL OR expires_ms > $2) \
             RETURNING id, client_id, expires_ms"
        );
        let why = format!("SELECT revoked_ms, expires_ms FROM access_tokens WHERE {column} = $1");
        let client_sql = format!("SELECT {CLIENT_COLUMNS} FROM clients WHERE id = $1");
        let outcome = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let stamped: Option<(String, String, Option<i64>)> =
                sqlx::query_as(sqlx::AssertSqlSafe(stamp))
                    .bind(value)
                    .bind(now_ms)
                    .fetch_optional(&mut *tx)
                    .await?;
            match stamped {
                None => {
                    let found: Option<(Option<i64>, Option<i64>)> =
                        sqlx::query_as(sqlx::AssertSqlSafe(why))
                            .bind(value)
                            .fetch_optional(&mut *tx)
                            .await?;
                    Err(match found {
                        None => LinkRefusal::Unknown,
                        Some((Some(_), _)) => LinkRefusal::Revoked,
                        Some((None, _)) => LinkRefusal::Expired,
                    })
                }
                Some((token_id, client_id, token_expires)) => {
                    let client: Option<ClientRow> = sqlx::query_as(sqlx::AssertSqlSafe(client_sql))
                        .bind(&client_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    match client.filter(|c| c.active) {
                        None => Err(LinkRefusal::ClientDisabled),
                        Some(client) => {
                            session.identity = Identity {
                                subject: client.slug.clone(),
                                name: client.name.clone(),
                                email: None,
                                provider: IdentityProvider::Magic,
                                roles: client.role_list(),
                            };
                            session.access_token_id = Some(token_id);
                            if let Some(expires) = token_expires {
                                session.expires_ms = session.expires_ms.min(expires);
                            }
                            session.scope = Some(client.scope());
                            insert_session!(&mut *tx, &session);
                            tx.commit().await?;
                            Ok(session)
                        }
                    }
                }
            }
        });
        Ok(outcome)
    }
}
