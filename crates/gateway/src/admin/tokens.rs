//! API tokens through the admin API: list (`auth.token.list`), create for the
//! signed-in caller (`auth.token.create`; the secret is in the answer once), and
//! revoke (`auth.token.revoke`; its WebSockets close on every replica).

use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use portcullis_core::audit::AuditAction;
use portcullis_core::identity::{Permission, PrincipalKind};
use portcullis_store::ApiTokenRow;
use serde::Deserialize;
use serde_json::json;

use super::{AdminCall, parse, respond};
use crate::endpoints::identity::rfc3339;
use crate::error::GatewayError;
use crate::identity::IdentityFields;

fn view(row: &ApiTokenRow, now: i64) -> serde_json::Value {
    json!({
        "id": row.id,
        "user": row.subject,
        "provider": row.provider,
        "roles": row.role_list(),
        "label": row.label,
        "created_at": rfc3339(row.created_ms),
        "expires_at": row.expires_ms.and_then(rfc3339),
        "status": row.status(now),
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    user: Option<String>,
}

/// `GET {prefix}/api/v1/api-tokens`
pub async fn list_tokens(call: AdminCall) -> Response {
    respond(
        async {
            let gw = &call.gw;
            call.authorize(Permission::TokenList).await?;
            let query: ListQuery = call.query()?;
            let now = gw.now();
            let rows = gw.store().list_api_tokens(query.user.as_deref()).await?;
            let list: Vec<_> = rows.iter().map(|r| view(r, now)).collect();
            Ok(Json(json!({ "api_tokens": list })).into_response())
        }
        .await,
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    label: Option<String>,
    /// Lifetime in seconds; none: until revoked.
    ttl_seconds: Option<i64>,
}

/// `POST {prefix}/api/v1/api-tokens`: a token for the signed-in caller, with the
/// caller's roles, owned by the caller's identity (it stops working when that
/// identity is removed).
pub async fn create_token(call: AdminCall) -> Response {
    respond(
        async {
            let gw = &call.gw;
            let auth = call.authorize(Permission::TokenCreate).await?;
            // A token minted by a token (or by the internal credential) would outlive
            // the revocation of its parent: only people signed in mint tokens.
            // Nor does a client signed in by link.
            if PrincipalKind::of(auth.session_id()) != PrincipalKind::Session
                || auth.session.scope().is_some()
            {
                return Err(GatewayError::Forbidden);
            }
            let body: CreateToken = parse(&call.body)?;
            let now = gw.now();
            let expires_ms = super::token_terms(body.label.as_deref(), body.ttl_seconds, now)?;
            let who = auth.identity();
            let token = portcullis_core::ticket::mint_api_token(gw.entropy())?;
            let row = ApiTokenRow {
                id: token.id.clone(),
                subject: who.subject().to_owned(),
                roles: who.roles().collect::<Vec<_>>().join(","),
                label: body.label,
                created_ms: now,
                revoked_ms: None,
                provider: Some(who.provider_name().to_owned()),
                expires_ms,
            };
            gw.store().insert_api_token(&row, &token.hash).await?;
            call.audit_change(&auth, AuditAction::ApiTokenCreate, &row.id)
                .await;
            let mut answer = view(&row, now);
            answer["token"] = json!(token.secret.expose());
            Ok(super::created_with_secret(answer))
        }
        .await,
    )
}

/// `DELETE {prefix}/api/v1/api-tokens/{id}`
pub async fn revoke_token(Path(id): Path<String>, call: AdminCall) -> Response {
    respond(
        async {
            let gw = &call.gw;
            let auth = call.authorize(Permission::TokenRevoke).await?;
            if !gw.store().revoke_api_token(&id, gw.now()).await? {
                return Err(GatewayError::NotFound);
            }
            call.revoked(&auth, AuditAction::ApiTokenRevoke, &id).await;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        .await,
    )
}
