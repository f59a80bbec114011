//! The self-service pages: `{prefix}/sessions` (one's own sessions, everyone's
//! for those with `auth.session.list.all`; end one, or all others) and
//! `{prefix}/audit` (`audit.read`). Server-rendered, no JavaScript: each action is
//! a form posting the CSRF token, answered with a redirect back to the page. They
//! authorize exactly like the JSON API they mirror.

use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use portcullis_core::identity::Permission;
use portcullis_core::session::Session;
use portcullis_store::{AuditFilter, SessionFilter};
use serde::Deserialize;

use super::AdminCall;
use super::sessions::{end_one, end_sessions, owns};
use crate::endpoints::identity::rfc3339;
use crate::error::GatewayError;
use crate::identity::IdentityFields;
use crate::pages;
use crate::pipeline::Authenticated;
use crate::state::Gateway;

/// An error as a page; an unauthenticated browser goes to the sign-in page and
/// comes back here.
fn page_error(call: &AdminCall, error: GatewayError, back: &str) -> Response {
    match error {
        GatewayError::Unauthenticated => crate::endpoints::unauthenticated(
            &call.gw,
            &Method::GET,
            &call.headers,
            &format!("{}{back}", call.gw.config().auth_prefix),
        ),
        other => other.into_response_for(true),
    }
}

fn html(markup: maud::Markup) -> Response {
    let mut response = (StatusCode::OK, markup).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The page holds a CSRF token: no framing by other sites.
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
    );
    response
}

fn row(gw: &Gateway, auth: &Authenticated, s: &Session) -> pages::SessionRow {
    let time = |ms| rfc3339(ms).unwrap_or_default();
    pages::SessionRow {
        id: s.id.clone(),
        user: s.identity.subject.clone(),
        provider: s.identity.provider.as_str().to_owned(),
        device: s
            .device
            .user_agent
            .clone()
            .unwrap_or_else(|| "unknown".into()),
        ip: s.device.ip.clone().unwrap_or_default(),
        created: time(s.created_ms),
        last_seen: time(s.last_seen_ms),
        live_websockets: gw.live_connections(&s.id),
        current: s.id == auth.session_id(),
    }
}

fn holds(gw: &Gateway, auth: &Authenticated, permission: Permission) -> bool {
    gw.grants(auth.identity().roles(), permission)
}

#[derive(Debug, Default, Deserialize)]
pub struct SessionsQuery {
    /// A notice after an action (`ended`, `ended-others`).
    done: Option<String>,
}

/// `GET {prefix}/sessions`
pub async fn sessions_page(call: AdminCall) -> Response {
    let result = async {
        let gw = &call.gw;
        let auth = call.authorize(Permission::SessionList).await?;
        let query: SessionsQuery = call.query()?;
        let me = auth.identity().subject();
        let now = gw.now();
        let mine = SessionFilter {
            subject: Some(me.to_owned()),
            ..SessionFilter::default()
        };
        let own: Vec<_> = gw
            .store()
            .list_sessions(&mine, now)
            .await?
            .iter()
            .filter(|s| owns(&auth, &s.identity.subject, s.identity.provider.as_str()))
            .map(|s| row(gw, &auth, s))
            .collect();
        let everyone = if holds(gw, &auth, Permission::SessionListAll) {
            let all = gw
                .store()
                .list_sessions(&SessionFilter::default(), now)
                .await?;
            Some(all.iter().map(|s| row(gw, &auth, s)).collect())
        } else {
            None
        };
        let csrf = gw.csrf().token(auth.session_id());
        let notice = match query.done.as_deref() {
            Some("ended") => Some("The session was ended; its WebSockets were closed."),
            Some("ended-others") => Some("All other sessions were ended."),
            _ => None,
        };
        Ok(html(pages::sessions_page(&pages::SessionsPage {
            prefix: &gw.config().auth_prefix,
            user: me,
            csrf: &csrf,
            own,
            everyone,
            audit_link: holds(gw, &auth, Permission::AuditRead),
            notice,
        })))
    }
    .await;
    result.unwrap_or_else(|e| page_error(&call, e, "/sessions"))
}

#[derive(Debug, Deserialize)]
struct EndForm {
    session_id: String,
}

fn back_to_sessions(gw: &Gateway, done: &str) -> Response {
    Redirect::to(&format!("{}/sessions?done={done}", gw.config().auth_prefix)).into_response()
}

/// `POST {prefix}/sessions/end` (form: `csrf_token`, `session_id`)
pub async fn end_session_form(call: AdminCall) -> Response {
    let result = async {
        let auth = call.authorize(Permission::SessionRevoke).await?;
        let form: EndForm = serde_urlencoded::from_bytes(&call.body)
            .map_err(|_| GatewayError::Invalid("session_id is missing".into()))?;
        end_one(&call, &auth, &form.session_id).await?;
        Ok(back_to_sessions(&call.gw, "ended"))
    }
    .await;
    result.unwrap_or_else(|e| page_error(&call, e, "/sessions"))
}

/// `POST {prefix}/sessions/end-others` (form: `csrf_token`)
pub async fn end_other_sessions_form(call: AdminCall) -> Response {
    let result = async {
        let gw = &call.gw;
        let auth = call.authorize(Permission::SessionRevoke).await?;
        let me = auth.identity().subject().to_owned();
        end_sessions(&call, &auth, &me, Some(auth.session_id())).await?;
        Ok(back_to_sessions(gw, "ended-others"))
    }
    .await;
    result.unwrap_or_else(|e| page_error(&call, e, "/sessions"))
}

#[derive(Debug, Default, Deserialize)]
pub struct AuditPageQuery {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    outcome: String,
    cursor: Option<i64>,
}

/// `GET {prefix}/audit`
pub async fn audit_page(call: AdminCall) -> Response {
    let result = async {
        let gw = &call.gw;
        call.authorize(Permission::AuditRead).await?;
        let query: AuditPageQuery = call.query()?;
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let filter = AuditFilter {
            actor: some(&query.actor),
            action: some(&query.action),
            outcome: some(&query.outcome),
            before_id: query.cursor,
            limit: 100,
            ..AuditFilter::default()
        };
        let page = gw.store().audit_page(&filter).await?;
        let rows = page
            .events
            .iter()
            .map(|(_, e)| pages::AuditRow {
                at: rfc3339(e.at_ms).unwrap_or_default(),
                actor: e.actor.clone(),
                action: e.action.clone(),
                target: e.target.clone().unwrap_or_default(),
                outcome: e.outcome.clone(),
                reason: e.reason.clone().unwrap_or_default(),
                ip: e.ip.clone().unwrap_or_default(),
            })
            .collect();
        let older = page.next.map(|cursor| {
            serde_urlencoded::to_string([
                ("actor", query.actor.as_str()),
                ("action", query.action.as_str()),
                ("outcome", query.outcome.as_str()),
                ("cursor", cursor.to_string().as_str()),
            ])
            .unwrap_or_default()
        });
        Ok(html(pages::audit_page(&pages::AuditPage {
            prefix: &gw.config().auth_prefix,
            actor: &query.actor,
            action: &query.action,
            outcome: &query.outcome,
            rows,
            older,
        })))
    }
    .await;
    result.unwrap_or_else(|e| page_error(&call, e, "/audit"))
}
