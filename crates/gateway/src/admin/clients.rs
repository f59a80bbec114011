//! External clients and their magic links through the admin API (SPEC 7): clients
//! (`auth.client.list|create|edit`), access tokens (`auth.token.list|create|revoke`;
//! the link is in the creating answer once), and the operator preview, which signs
//! the operator's browser into a client session for a scope without touching any
//! existing client or link.

use axum::Json;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_core::audit::AuditAction;
use portcullis_core::client::{ClientSpec, Scope, mint_access_token, preview_slug};
use portcullis_core::identity::{Permission, PrincipalKind};
use portcullis_store::{AccessTokenRow, ClientRow, ClientSwitch, TokenRef};
use serde::Deserialize;
use serde_json::json;

use super::{AdminCall, parse, respond};
use crate::carrier::Carrier;
use crate::clients::{ClientError, announce, create_client, create_link, link_url};
use crate::endpoints::identity::rfc3339;
use crate::error::GatewayError;
use crate::pipeline::Authenticated;

fn client_view(row: &ClientRow) -> serde_json::Value {
    json!({
        "id": row.id,
        "slug": row.slug,
        "name": row.name,
        "active": row.active,
        "roles": row.role_list(),
        "scope": row.scope().paths(),
        "preview": row.preview,
        "created_at": rfc3339(row.created_ms),
    })
}

fn token_view(row: &AccessTokenRow, now: i64) -> serde_json::Value {
    json!({
        "id": row.id,
        "client": row.client_slug,
        "label": row.label,
        "preview": row.preview,
        "created_at": rfc3339(row.created_ms),
        "last_used_at": row.last_used_ms.and_then(rfc3339),
        "expires_at": row.expires_ms.and_then(rfc3339),
        "revoked_at": row.revoked_ms.and_then(rfc3339),
        "status": row.status(now),
    })
}

impl From<ClientError> for GatewayError {
    fn from(error: ClientError) -> Self {
        match error {
            ClientError::Exists(_) => GatewayError::Conflict("a client with that slug exists"),
            ClientError::NoSuchClient(_) => GatewayError::NotFound,
            ClientError::Disabled(_) => GatewayError::Conflict("the client is disabled"),
            ClientError::Store(e) => e.into(),
            ClientError::Entropy(e) => e.into(),
        }
    }
}

/// One path or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Paths {
    One(String),
    Many(Vec<String>),
}

impl Paths {
    fn into_vec(self) -> Vec<String> {
        match self {
            Paths::One(path) => vec![path],
            Paths::Many(paths) => paths,
        }
    }
}

/// `GET {prefix}/api/v1/clients`
pub async fn list_clients(call: AdminCall) -> Response {
    respond(
        async {
            call.authorize(Permission::ClientList).await?;
            let rows = call.gw.store().list_clients().await?;
            let list: Vec<_> = rows.iter().map(client_view).collect();
            Ok(Json(json!({ "clients": list })).into_response())
        }
        .await,
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateClient {
    slug: String,
    name: String,
    scope: Paths,
    #[serde(default)]
    roles: Vec<String>,
}

/// `POST {prefix}/api/v1/clients`
pub async fn add_client(call: AdminCall) -> Response {
    respond(
        async {
            let gw = &call.gw;
            let auth = call.authorize(Permission::ClientCreate).await?;
            let body: CreateClient = parse(&call.body)?;
            let spec = ClientSpec::new(&body.slug, &body.name, &body.scope.into_vec(), &body.roles)
                .map_err(|problems| GatewayError::Invalid(problems.join("; ")))?;
            if gw.users().list.hash_of(&spec.slug).is_some() {
                return Err(GatewayError::Conflict(
                    "a basic user has that name: the client would reach the upstream as them",
                ));
            }
            let row = create_client(gw.store(), &spec, false, gw.entropy(), gw.now()).await?;
            reload_here(&call).await;
            call.audit_change(&auth, AuditAction::ClientCreate, &row.slug)
                .await;
            Ok((StatusCode::CREATED, Json(client_view(&row))).into_response())
        }
        .await,
    )
}

/// `POST {prefix}/api/v1/clients/{slug}/disable`: every session minted from its
/// links ends, WebSockets included, on every replica.
pub async fn disable_client(Path(slug): Path<String>, call: AdminCall) -> Response {
    switch_client(slug, false, call).await
}

/// `POST {prefix}/api/v1/clients/{slug}/enable`: its unrevoked links work again.
pub async fn enable_client(Path(slug): Path<String>, call: AdminCall) -> Response {
    switch_client(slug, true, call).await
}

async fn switch_client(slug: String, active: bool, call: AdminCall) -> Response {
    respond(
        async {
            let gw = &call.gw;
            let auth = call.authorize(Permission::ClientEdit).await?;
            let by = crate::identity::IdentityFields::subject(auth.identity()).to_owned();
            let revoked = match gw
                .store()
                .set_client_active(&slug, active, &by, gw.now())
                .await?
            {
                ClientSwitch::NoSuchClient => return Err(GatewayError::NotFound),
                ClientSwitch::Unchanged => Vec::new(),
                ClientSwitch::Switched(revoked) => {
                    for id in &revoked {
                        gw.revoked_here(id);
                    }
                    announce(gw.store(), gw.now()).await;
                    reload_here(&call).await;
                    let action = if active {
                        AuditAction::ClientEnable
                    } else {
                        AuditAction::ClientDisable
                    };
                    call.audit_change(&auth, action, &slug).await;
                    revoked
                }
            };
            let row = gw
                .store()
                .client_by_slug(&slug)
                .await?
                .ok_or(GatewayError::NotFound)?;
            let mut answer = client_view(&row);
            answer["sessions_ended"] = json!(revoked.len());
            Ok(Json(answer).into_response())
        }
        .await,
    )
}

/// The client scopes this replica holds, reloaded at once after a change here
/// (other replicas reload when the change reaches them on the bus).
async fn reload_here(call: &AdminCall) {
    if let Err(error) = call.gw.clients().reload(call.gw.store()).await {
        tracing::error!(%error, "could not reload clients");
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenQuery {
    client: Option<String>,
}

/// `GET {prefix}/api/v1/access-tokens`
pub async fn list_access_tokens(call: AdminCall) -> Response {
    respond(
        async {
            let gw = &call.gw;
            call.authorize(Permission::TokenList).await?;
            let query: TokenQuery = call.query()?;
            let now = gw.now();
            let rows = gw
                .store()
                .list_access_tokens(query.client.as_deref())
                .await?;
            let list: Vec<_> = rows.iter().map(|r| token_view(r, now)).collect();
            Ok(Json(json!({ "access_tokens": list })).into_response())
        }
        .await,
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateLink {
    client: String,
    label: Option<String>,
    /// Lifetime in seconds; none: until revoked.
    ttl_seconds: Option<i64>,
}

/// `POST {prefix}/api/v1/access-tokens`: a new link for a client; the answer holds
/// the link, once.
pub async fn create_access_token(call: AdminCall) -> Response {
    respond(
        async {
            let gw = &call.gw;
            let auth = call.authorize(Permission::TokenCreate).await?;
            let body: CreateLink = parse(&call.body)?;
            let now = gw.now();
            let expires_ms = super::token_terms(body.label.as_deref(), body.ttl_seconds, now)?;
            let (row, secret) = create_link(
                gw.store(),
                &body.client,
                body.label,
                expires_ms,
                gw.entropy(),
                now,
            )
            .await?;
            call.audit_change(&auth, AuditAction::AccessTokenCreate, &row.id)
                .await;
            let config = gw.config();
            let link = link_url(&config.public_url.origin(), &config.auth_prefix, &secret);
            let mut answer = token_view(&row, now);
            answer["link"] = json!(link.expose());
            Ok(super::created_with_secret(answer))
        }
        .await,
    )
}

/// `DELETE {prefix}/api/v1/access-tokens/{id}`: the link stops working and every
/// session minted from it ends, WebSockets included, on every replica.
pub async fn revoke_access_token(Path(id): Path<String>, call: AdminCall) -> Response {
    respond(
        async {
            let gw = &call.gw;
            let auth = call.authorize(Permission::TokenRevoke).await?;
            let by = crate::identity::IdentityFields::subject(auth.identity()).to_owned();
            let Some(revoked) = gw.store().revoke_access_token(&id, &by, gw.now()).await? else {
                return Err(GatewayError::NotFound);
            };
            for session in &revoked {
                gw.revoked_here(session);
            }
            call.audit_change(&auth, AuditAction::AccessTokenRevoke, &id)
                .await;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        .await,
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Preview {
    scope: Paths,
}

/// `POST {prefix}/api/v1/clients/preview`: signs the operator's browser into a
/// client session for a scope (a second cookie; the operator's own session
/// stays). Idempotent: it reuses an active client whose scope holds every path
/// asked for, else the scope's own `preview-…` client, and that client's preview
/// token; it creates them only when missing and never changes an existing client
/// or link.
pub async fn preview(call: AdminCall) -> Response {
    respond(
        async {
            let gw = &call.gw;
            let auth = call.authorize(Permission::ClientCreate).await?;
            call.require(&auth, Permission::TokenCreate).await?;
            if auth.carrier != Carrier::Cookie
                || PrincipalKind::of(auth.session_id()) != PrincipalKind::Session
                || auth.session.scope().is_some()
            {
                return Err(GatewayError::Invalid(
                    "the preview signs a browser in: call it from a browser signed in as an operator"
                        .into(),
                ));
            }
            let body: Preview = parse(&call.body)?;
            let scope = Scope::new(&body.scope.into_vec())
                .map_err(|problems| GatewayError::Invalid(problems.join("; ")))?;
            let (client, created) = preview_client(&call, &auth, &scope).await?;
            let token = preview_token(&call, &auth, &client).await?;
            let device = crate::endpoints::device_of(&call.headers, Some(call.peer.ip().to_string()));
            let replaced = crate::endpoints::client_session_of(gw, &call.headers).await;
            let (session, cookies) = match crate::endpoints::establish_client_session(
                gw,
                TokenRef::Id(&token.id),
                device,
                false,
            )
            .await?
            {
                Ok(signed_in) => signed_in,
                Err(_) => return Err(GatewayError::Conflict("the client was disabled meanwhile")),
            };
            crate::endpoints::end_replaced_client_session(gw, replaced, &session.id).await;
            let mut event = gw.audit_event(
                crate::identity::IdentityFields::subject(auth.identity()),
                AuditAction::ClientPreview,
                "success",
            );
            event.target = Some(client.slug.clone());
            event.reason = Some(format!("session {}", session.id));
            event.ip = Some(call.peer.ip().to_string());
            gw.audit(event).await;
            let home = session
                .scope
                .as_ref()
                .map_or("/", Scope::home)
                .to_owned();
            let mut response = Json(json!({
                "client": client_view(&client),
                "client_created": created,
                "token_id": token.id,
                "location": home,
            }))
            .into_response();
            let out = response.headers_mut();
            out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            for value in cookies {
                out.append(header::SET_COOKIE, value);
            }
            Ok(response)
        }
        .await,
    )
}

/// The client a preview of `scope` uses, and whether it was created now.
async fn preview_client(
    call: &AdminCall,
    auth: &Authenticated,
    scope: &Scope,
) -> Result<(ClientRow, bool), GatewayError> {
    let gw = &call.gw;
    // A client linked to the scope: active, its scope holding every path asked
    // for; a real client before a preview one.
    let mut clients = gw.store().list_clients().await?;
    clients.sort_by_key(|c| c.preview);
    let linked = clients.into_iter().find(|c| {
        let theirs = c.scope();
        c.active && scope.paths().iter().all(|p| theirs.paths().contains(p))
    });
    if let Some(client) = linked {
        return Ok((client, false));
    }
    let slug = preview_slug(scope);
    if let Some(client) = gw.store().client_by_slug(&slug).await? {
        // Never re-enabled behind the operator's back who disabled it.
        return if client.active {
            Ok((client, false))
        } else {
            Err(GatewayError::Conflict(
                "this scope's preview client is disabled; enable it to preview",
            ))
        };
    }
    let spec = ClientSpec {
        slug: slug.clone(),
        name: format!("Preview of {}", scope.paths().join(", ")),
        scope: scope.clone(),
        roles: Vec::new(),
    };
    match create_client(gw.store(), &spec, true, gw.entropy(), gw.now()).await {
        Ok(client) => {
            reload_here(call).await;
            call.audit_change(auth, AuditAction::ClientCreate, &client.slug)
                .await;
            Ok((client, true))
        }
        // Another preview created it at the same moment: use that one.
        Err(ClientError::Exists(_)) => Ok((
            gw.store()
                .client_by_slug(&slug)
                .await?
                .ok_or(GatewayError::NotFound)?,
            false,
        )),
        Err(e) => Err(e.into()),
    }
}

/// The client's live preview token, created (its secret discarded: a preview
/// rides the cookie, never a link) when it has none.
async fn preview_token(
    call: &AdminCall,
    auth: &Authenticated,
    client: &ClientRow,
) -> Result<AccessTokenRow, GatewayError> {
    let gw = &call.gw;
    let now = gw.now();
    if let Some(token) = gw.store().preview_token(&client.id, now).await? {
        return Ok(token);
    }
    let minted = mint_access_token(gw.entropy())?;
    let row = AccessTokenRow {
        id: minted.id,
        client_id: client.id.clone(),
        client_slug: client.slug.clone(),
        label: Some("preview".into()),
        preview: true,
        created_ms: now,
        last_used_ms: None,
        expires_ms: None,
        revoked_ms: None,
    };
    if let Err(error) = gw.store().insert_access_token(&row, &minted.hash).await {
        // Another preview of this client made its token at the same moment (one
        // live preview token per client is a unique index): use that one.
        return match gw.store().preview_token(&client.id, now).await? {
            Some(token) => Ok(token),
            None => Err(error.into()),
        };
    }
    call.audit_change(auth, AuditAction::AccessTokenCreate, &row.id)
        .await;
    Ok(row)
}
