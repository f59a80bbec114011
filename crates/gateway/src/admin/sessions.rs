//! Sessions through the admin API: list one's own (`auth.session.list`) or
//! everyone's (`auth.session.list.all`), end one's own (`auth.session.revoke`) or
//! anyone's (both). Ending a session closes its WebSockets here at once and on
//! every other replica through the revocation bus.

use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use portcullis_core::audit::AuditAction;
use portcullis_core::identity::{IdentityProvider, Permission};
use portcullis_core::session::Session;
use portcullis_store::SessionFilter;
use serde::Deserialize;
use serde_json::json;

use super::{AdminCall, parse, respond};
use crate::endpoints::identity::rfc3339;
use crate::error::GatewayError;
use crate::identity::IdentityFields;
use crate::pipeline::Authenticated;
use crate::state::Gateway;

/// Whether a session belongs to the principal: same subject from the same
/// provider. An API token stands for its owner (subject and the owner's
/// provider); a service token, owned by no identity, owns no session.
pub(super) fn owns(auth: &Authenticated, subject: &str, provider: &str) -> bool {
    let who = auth.identity();
    let principal_provider = if who.provider_name() == IdentityProvider::ApiToken.as_str() {
        match auth.session.token_owner() {
            Some(owner) => owner,
            None => return false,
        }
    } else {
        who.provider_name()
    };
    who.subject() == subject && principal_provider == provider
}

fn view(gw: &Gateway, auth: &Authenticated, s: &Session) -> serde_json::Value {
    json!({
        "id": s.id,
        "user": s.identity.subject,
        "name": s.identity.name,
        "email": s.identity.email,
        "provider": s.identity.provider.as_str(),
        "roles": s.identity.roles,
        "user_agent": s.device.user_agent,
        "ip": s.device.ip,
        "created_at": rfc3339(s.created_ms),
        "last_seen_at": rfc3339(s.last_seen_ms),
        "expires_at": rfc3339(s.expires_ms),
        "revoked_at": s.revoked_ms.and_then(rfc3339),
        "live_websockets": gw.live_connections(&s.id),
        "current": s.id == auth.session_id(),
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Everyone's sessions (`auth.session.list.all`).
    #[serde(default)]
    all: bool,
    /// Only this user's (someone else's needs `auth.session.list.all`).
    user: Option<String>,
    provider: Option<String>,
    /// Only sessions with at least this many live WebSockets on this replica.
    min_live_websockets: Option<usize>,
    /// Include revoked and expired sessions.
    #[serde(default)]
    include_ended: bool,
}

/// `GET {prefix}/api/v1/sessions`
pub async fn list_sessions(call: AdminCall) -> Response {
    respond(
        async {
            let gw = &call.gw;
            let auth = call.authorize(Permission::SessionList).await?;
            let query: ListQuery = call.query()?;
            let me = auth.identity().subject().to_owned();
            let everyone = query.all || query.user.as_deref().is_some_and(|u| u != me);
            if everyone {
                call.require(&auth, Permission::SessionListAll).await?;
            }
            let filter = SessionFilter {
                subject: if everyone {
                    query.user.clone()
                } else {
                    Some(me)
                },
                provider: query.provider.clone(),
                include_ended: query.include_ended,
            };
            let sessions = gw.store().list_sessions(&filter, gw.now()).await?;
            let list: Vec<_> = sessions
                .iter()
                .filter(|s| {
                    everyone || owns(&auth, &s.identity.subject, s.identity.provider.as_str())
                })
                .filter(|s| {
                    query
                        .min_live_websockets
                        .is_none_or(|n| gw.live_connections(&s.id) >= n)
                })
                .map(|s| view(gw, &auth, s))
                .collect();
            Ok(Json(json!({ "sessions": list })).into_response())
        }
        .await,
    )
}

/// Ends session `id` for the principal `auth` (it has `auth.session.revoke`;
/// someone else's session also needs `auth.session.list.all`).
pub(super) async fn end_one(
    call: &AdminCall,
    auth: &Authenticated,
    id: &str,
) -> Result<(), GatewayError> {
    let gw = &call.gw;
    let target = gw
        .store()
        .session(id)
        .await?
        .ok_or(GatewayError::NotFound)?;
    if !owns(
        auth,
        &target.identity.subject,
        target.identity.provider.as_str(),
    ) {
        call.require(auth, Permission::SessionListAll).await?;
    }
    if !call.revoke_session(auth, id).await? {
        return Err(GatewayError::Conflict("the session has already ended"));
    }
    Ok(())
}

/// Ends every live session of `user` except `keep`: all of them for someone
/// else's (the caller holds `auth.session.list.all`), only those the principal
/// owns for its own name. Returns the ended ids.
pub(super) async fn end_sessions(
    call: &AdminCall,
    auth: &Authenticated,
    user: &str,
    keep: Option<&str>,
) -> Result<Vec<String>, GatewayError> {
    let gw = &call.gw;
    let me = auth.identity().subject();
    let filter = SessionFilter {
        subject: Some(user.to_owned()),
        ..SessionFilter::default()
    };
    let mut ended = Vec::new();
    for s in gw.store().list_sessions(&filter, gw.now()).await? {
        let allowed = user != me || owns(auth, &s.identity.subject, s.identity.provider.as_str());
        if !allowed || keep == Some(s.id.as_str()) {
            continue;
        }
        if call.revoke_session(auth, &s.id).await? {
            ended.push(s.id);
        }
    }
    Ok(ended)
}

/// `DELETE {prefix}/api/v1/sessions/{id}`
pub async fn revoke_session(Path(id): Path<String>, call: AdminCall) -> Response {
    respond(
        async {
            let auth = call.authorize(Permission::SessionRevoke).await?;
            end_one(&call, &auth, &id).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        .await,
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeAll {
    /// Whose sessions; the caller's own when absent.
    user: Option<String>,
    /// Keep the session making this call ("end all my other sessions").
    #[serde(default)]
    keep_current: bool,
    /// Revoke the user's API tokens too (`auth.token.revoke`).
    #[serde(default)]
    api_tokens: bool,
}

/// `POST {prefix}/api/v1/sessions/revoke`: every live session of a user (and
/// their API tokens when asked).
pub async fn revoke_sessions(call: AdminCall) -> Response {
    respond(
        async {
            let gw = &call.gw;
            let auth = call.authorize(Permission::SessionRevoke).await?;
            let body: RevokeAll = parse(&call.body)?;
            let me = auth.identity().subject();
            let user = body.user.as_deref().unwrap_or(me).to_owned();
            if user != me {
                call.require(&auth, Permission::SessionListAll).await?;
            }
            if body.api_tokens {
                call.require(&auth, Permission::TokenRevoke).await?;
            }
            let keep = body.keep_current.then(|| auth.session_id());
            let ended = end_sessions(&call, &auth, &user, keep).await?;
            let mut tokens = Vec::new();
            if body.api_tokens {
                for id in gw
                    .store()
                    .revoke_subject_api_tokens(&user, gw.now())
                    .await?
                {
                    call.revoked(&auth, AuditAction::ApiTokenRevoke, &id).await;
                    tokens.push(id);
                }
            }
            Ok(
                Json(json!({ "revoked_sessions": ended, "revoked_api_tokens": tokens }))
                    .into_response(),
            )
        }
        .await,
    )
}
