//! OpenID Connect Back-Channel Logout 1.0: `POST {prefix}/oidc/back-channel-logout`
//! verifies a logout token, remembers its `jti` and revokes the matching sessions
//! in one transaction, and closes their WebSockets on every replica.

use portcullis_core::audit::AuditAction;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis_core::oidc::{self as rules, Expectations};
use serde::Deserialize;

use crate::error::GatewayError;
use crate::pipeline::ClientAddr;
use crate::state::Gateway;

use super::signin::now_s;
use crate::oidc::*;

/// The unverified `iss` and `aud` of a JWT, only to choose which provider (an
/// issuer may serve several of our clients) checks it.
fn peek_issuer_audience(token: &str) -> Option<(String, Vec<String>)> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let issuer = claims.get("iss")?.as_str()?.to_owned();
    let audience = match claims.get("aud") {
        Some(serde_json::Value::String(one)) => vec![one.clone()],
        Some(serde_json::Value::Array(many)) => many
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    Some((issuer, audience))
}

/// `POST {prefix}/oidc/back-channel-logout` (OIDC Back-Channel Logout 1.0): verify
/// the logout token, remember its `jti`, revoke the matching sessions and close
/// their WebSockets on every replica. 200 with `no-store`; a refused token 400; 503
/// when the database cannot answer (the provider may retry: nothing was applied).
pub async fn back_channel_logout(
    State(gw): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<ClientAddr>,
    body: Bytes,
) -> Response {
    let mut event = gw.audit_event("anonymous", AuditAction::OidcBackChannelLogout, "failure");
    event.ip = Some(peer.ip().to_string());
    let outcome = logout_from_token(&gw, &body, &mut event).await;
    let response = match outcome {
        Ok(revoked) => {
            event.outcome = "success".into();
            event.reason = Some(format!("revoked:{revoked}"));
            let mut response = StatusCode::OK.into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(failure) => {
            event.reason = Some(failure.reason.clone());
            match failure.store {
                Some(e) => GatewayError::Store(e),
                None => GatewayError::LogoutTokenRefused(failure.reason),
            }
            .into_oauth_response()
        }
    };
    gw.audit(event).await;
    response
}

async fn logout_from_token(
    gw: &Gateway,
    body: &[u8],
    event: &mut portcullis_store::AuditEvent,
) -> Result<usize, Failure> {
    #[derive(Deserialize)]
    struct Form {
        logout_token: Option<String>,
    }
    let form: Form =
        serde_urlencoded::from_bytes(body).map_err(|_| Failure::new("malformed_form"))?;
    let token = form
        .logout_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Failure::new("missing_logout_token"))?;
    let (issuer, audience) =
        peek_issuer_audience(&token).ok_or_else(|| Failure::new("malformed"))?;
    let provider = gw
        .oidc()
        .read_providers(|providers| {
            providers
                .values()
                .find(|p| p.record.issuer == issuer && audience.contains(&p.record.client_id))
                .cloned()
        })
        .ok_or_else(|| Failure::new("unknown_issuer_or_audience"))?;
    event.target = Some(provider.record.id.clone());
    let metadata = gw.oidc().metadata(&provider).await?;
    let expect = Expectations {
        issuer: &provider.record.issuer,
        client_id: &provider.record.client_id,
        algorithms: &provider.algorithms,
        now_s: now_s(gw),
    };
    let claims = gw
        .oidc()
        .with_keys(&provider, &metadata, |keys| {
            rules::verify_logout_token(&token, keys, &expect)
        })
        .await?;
    if let Some(sub) = &claims.subject {
        event.actor = sub.clone();
    }
    let revoked = gw
        .store()
        .apply_logout_token(
            &provider.record.id,
            &claims.jti,
            claims.remember_until_s.saturating_mul(1000),
            claims.sid.as_deref(),
            claims.subject.as_deref(),
            gw.now(),
        )
        .await?
        .ok_or_else(|| Failure::new("replayed_jti"))?;
    for id in &revoked {
        gw.revoked_here(id);
    }
    Ok(revoked.len())
}
