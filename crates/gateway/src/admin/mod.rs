//! The admin API under `{prefix}/api/v1` (SPEC 8): OpenID providers and group
//! mappings. Every route authenticates through the one authentication phase,
//! checks a permission (RBAC), and requires the CSRF token on cookie-authenticated
//! mutations. Changes are audited and announced on the bus so every replica
//! reloads them.

use portcullis_core::audit::AuditAction;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, Path, Request};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use portcullis_core::identity::Permission;
use portcullis_core::oidc::{self as rules, ProviderRecord};
use portcullis_core::secret::{SecretString, random_id};
use portcullis_store::{GroupMapping, ProviderDelete};
use serde::Deserialize;
use serde_json::json;

use crate::cookies::Audience;
use crate::error::GatewayError;
use crate::identity::IdentityFields;
use crate::oidc::RefreshError;
use crate::pipeline::Authenticated;
use crate::pipeline::ClientAddr;
use crate::pipeline::authenticate::authenticate_endpoint;
use crate::pipeline::authorize::{EndpointAccess, authorize_endpoint};
use crate::state::Gateway;

mod audit;
mod clients;
mod pages;
mod sessions;
mod tokens;

pub use audit::list_audit;
pub use clients::{
    add_client, create_access_token, disable_client, enable_client, list_access_tokens,
    list_clients, preview, revoke_access_token,
};
pub use pages::{audit_page, end_other_sessions_form, end_session_form, sessions_page};
pub use sessions::{list_sessions, revoke_session, revoke_sessions};
pub use tokens::{create_token, list_tokens, revoke_token};

/// One admin API call: who asks, from where, with what. Handlers take it as their
/// last argument (it reads the body, bounded by the router's limit: 413 beyond).
pub struct AdminCall {
    gw: Gateway,
    peer: ClientAddr,
    mutating: bool,
    headers: HeaderMap,
    /// The query string, parsed by [`AdminCall::query`] once the caller is
    /// authorized.
    query: String,
    body: Bytes,
}

impl FromRequest<Gateway> for AdminCall {
    type Rejection = Response;

    async fn from_request(request: Request, gw: &Gateway) -> Result<Self, Response> {
        let peer = request
            .extensions()
            .get::<ConnectInfo<ClientAddr>>()
            .map(|c| c.0)
            .ok_or_else(|| GatewayError::Internal("no peer address".into()).into_response())?;
        // Anything but a read is a mutation and, with a cookie, needs the CSRF token.
        let mutating = !matches!(*request.method(), Method::GET | Method::HEAD);
        let headers = request.headers().clone();
        let query = request.uri().query().unwrap_or("").to_owned();
        let body = Bytes::from_request(request, gw)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Self {
            gw: gw.clone(),
            peer,
            mutating,
            headers,
            query,
            body,
        })
    }
}

impl AdminCall {
    /// Authenticates, authorizes and (for cookie-authenticated mutations) checks CSRF.
    async fn authorize(&self, permission: Permission) -> Result<Authenticated, GatewayError> {
        let gw = &self.gw;
        let auth = authenticate_endpoint(gw, &self.headers, self.peer, Audience::Gateway)
            .await?
            .ok_or(GatewayError::Unauthenticated)?;
        let access = EndpointAccess {
            headers: &self.headers,
            body: &self.body,
            mutating: self.mutating,
            permission: Some(permission),
            mints_ticket: false,
            peer: self.peer,
        };
        authorize_endpoint(gw, &auth, &access).await?;
        Ok(auth)
    }

    /// The query string as `T` (call after [`AdminCall::authorize`]: an
    /// unauthorized caller learns nothing about what the route accepts).
    fn query<T: serde::de::DeserializeOwned>(&self) -> Result<T, GatewayError> {
        serde_urlencoded::from_str(&self.query)
            .map_err(|e| GatewayError::Invalid(format!("query: {e}")))
    }

    /// A further permission the call needs once its target is known (acting on
    /// someone else's session, say); refusals are audited like the first.
    async fn require(
        &self,
        auth: &Authenticated,
        permission: Permission,
    ) -> Result<(), GatewayError> {
        let access = EndpointAccess {
            headers: &self.headers,
            body: &self.body,
            mutating: false,
            permission: Some(permission),
            mints_ticket: false,
            peer: self.peer,
        };
        authorize_endpoint(&self.gw, auth, &access).await
    }

    /// After a session or token was revoked in the store: its WebSockets close
    /// here at once (other replicas hear of it through the bus), and it is audited.
    async fn revoked(&self, auth: &Authenticated, action: AuditAction, id: &str) {
        self.gw.revoked_here(id);
        self.audit_change(auth, action, id).await;
    }

    /// Revokes session `id` for `auth` (who may: the caller checked) and
    /// [`AdminCall::revoked`] it; `false` when it had already ended.
    async fn revoke_session(&self, auth: &Authenticated, id: &str) -> Result<bool, GatewayError> {
        let gw = &self.gw;
        let ended = gw
            .store()
            .revoke_session(id, auth.identity().subject(), gw.now())
            .await?;
        if ended {
            self.revoked(auth, AuditAction::SessionRevoke, id).await;
        }
        Ok(ended)
    }

    /// Audits a change made through the API.
    async fn audit_change(&self, auth: &Authenticated, action: AuditAction, target: &str) {
        let mut event = self
            .gw
            .audit_event(auth.identity().subject(), action, "success");
        event.target = Some(target.to_owned());
        event.ip = Some(self.peer.ip().to_string());
        self.gw.audit(event).await;
    }

    /// After a change: reload here at once, tell the other replicas, audit.
    async fn changed(&self, auth: &Authenticated, action: AuditAction, target: &str) {
        if let Err(error) = self.gw.oidc().reload(self.gw.store()).await {
            tracing::error!(%error, "could not reload OpenID providers");
        }
        if let Err(error) = self.gw.store().announce_oidc_change(self.gw.now()).await {
            tracing::error!(%error, "could not announce the provider change to other replicas");
        }
        self.audit_change(auth, action, target).await;
    }
}

/// The longest lifetime a credential (an API token, a magic link) may be given
/// through the API: one year.
const MAX_TTL_SECONDS: i64 = 366 * 24 * 3600;

/// Checks what a request for a new credential asks of it (a label, a lifetime in
/// seconds) and returns its expiry (`None`: until revoked).
fn token_terms(
    label: Option<&str>,
    ttl_seconds: Option<i64>,
    now: i64,
) -> Result<Option<i64>, GatewayError> {
    if label.is_some_and(|l| l.len() > 200) {
        return Err(GatewayError::Invalid("label: at most 200 bytes".into()));
    }
    match ttl_seconds {
        None => Ok(None),
        Some(ttl) if (60..=MAX_TTL_SECONDS).contains(&ttl) => Ok(Some(now + ttl * 1000)),
        Some(_) => Err(GatewayError::Invalid(format!(
            "ttl_seconds: between 60 and {MAX_TTL_SECONDS}"
        ))),
    }
}

/// 201 with an answer that holds a secret shown this once: never cached.
fn created_with_secret(answer: serde_json::Value) -> Response {
    let mut response = (StatusCode::CREATED, Json(answer)).into_response();
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
}

/// Bodies are bounded by the router's limit (413 beyond it).
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, GatewayError> {
    serde_json::from_slice(body).map_err(|e| GatewayError::Invalid(format!("invalid JSON: {e}")))
}

/// A provider as the API shows it: never the client secret, only whether one is set.
fn view(p: &ProviderRecord) -> serde_json::Value {
    json!({
        "id": p.id,
        "display_name": p.display_name,
        "issuer": p.issuer,
        "client_id": p.client_id,
        "has_client_secret": p.client_secret_sealed.is_some(),
        "scopes": p.scopes,
        "algorithms": p.algorithms,
        "groups_claim": p.groups_claim,
        "refuse_unmapped": p.refuse_unmapped,
        "accept_unverified_email": p.accept_unverified_email,
        "user_claim": p.user_claim,
        "user_prefix": p.prefix(),
        "source": p.source,
        "key_baseline": p.key_baseline.as_deref().and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok()),
    })
}

/// What the API accepts to create or edit a provider.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderInput {
    pub id: Option<String>,
    pub display_name: Option<String>,
    pub issuer: String,
    pub client_id: String,
    /// Absent on edit: keep the stored one. Empty string: remove it (public client).
    pub client_secret: Option<SecretString>,
    pub scopes: Option<Vec<String>>,
    pub algorithms: Option<Vec<String>>,
    pub groups_claim: Option<String>,
    #[serde(default)]
    pub refuse_unmapped: bool,
    /// Forward e-mails the provider does not mark verified (default: dropped).
    #[serde(default)]
    pub accept_unverified_email: bool,
    /// The claim naming the user (default `sub`).
    pub user_claim: Option<String>,
    /// Before it in `X-Forwarded-User` (default `<id>:`; `""`: disjoint).
    pub user_prefix: Option<String>,
}

/// Refuses a provider whose user names could coincide with another provider's.
async fn refuse_namespace_clash(gw: &Gateway, record: &ProviderRecord) -> Result<(), GatewayError> {
    let existing = gw.store().oidc_providers().await?;
    match rules::clash_with(record, &existing) {
        Some(clash) => Err(GatewayError::Invalid(clash)),
        None => Ok(()),
    }
}

/// Validates `input` into a record for provider `id`, sealing a new client secret.
fn record_from(
    gw: &Gateway,
    id: &str,
    input: ProviderInput,
    existing: Option<&ProviderRecord>,
) -> Result<ProviderRecord, GatewayError> {
    let scopes = rules::or_defaults(input.scopes, rules::DEFAULT_SCOPES);
    let algorithms = rules::or_defaults(input.algorithms, rules::DEFAULT_ALGORITHMS);
    let mut problems =
        rules::check_provider_fields(id, &input.issuer, &input.client_id, &scopes, &algorithms);
    let user_claim = input.user_claim.unwrap_or_else(|| "sub".into());
    problems.extend(rules::check_user_naming(
        &user_claim,
        input.user_prefix.as_deref(),
    ));
    if !problems.is_empty() {
        return Err(GatewayError::Invalid(problems.join("; ")));
    }
    let sealed = match input.client_secret.as_ref().map(SecretString::expose) {
        None => existing.and_then(|e| e.client_secret_sealed.clone()),
        Some("") => None,
        Some(secret) => Some(
            gw.oidc()
                .seal_client_secret(id, secret, gw.entropy())
                .map_err(|e| GatewayError::Internal(e.to_string()))?,
        ),
    };
    let now = gw.now();
    Ok(ProviderRecord {
        id: id.to_owned(),
        display_name: input.display_name.unwrap_or_else(|| id.to_owned()),
        issuer: input.issuer,
        client_id: input.client_id,
        client_secret_sealed: sealed,
        scopes,
        algorithms,
        groups_claim: input.groups_claim.unwrap_or_else(|| "groups".into()),
        refuse_unmapped: input.refuse_unmapped,
        accept_unverified_email: input.accept_unverified_email,
        user_claim,
        user_prefix: input.user_prefix,
        source: "api".into(),
        key_baseline: existing.and_then(|e| e.key_baseline.clone()),
        created_ms: existing.map_or(now, |e| e.created_ms),
        updated_ms: now,
    })
}

fn respond(result: Result<Response, GatewayError>) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

pub async fn list_providers(call: AdminCall) -> Response {
    respond(
        async {
            let gw = &call.gw;
            call.authorize(Permission::OidcList).await?;
            let providers = gw.store().oidc_providers().await?;
            let list: Vec<_> = providers.iter().map(view).collect();
            Ok(Json(json!({ "providers": list })).into_response())
        }
        .await,
    )
}

pub async fn get_provider(Path(id): Path<String>, call: AdminCall) -> Response {
    respond(
        async {
            let gw = &call.gw;
            call.authorize(Permission::OidcList).await?;
            let provider = gw.store().oidc_provider(&id).await?;
            let provider = provider.ok_or(GatewayError::NotFound)?;
            Ok(Json(view(&provider)).into_response())
        }
        .await,
    )
}

pub async fn create_provider(call: AdminCall) -> Response {
    respond(
        async {
            let gw = &call.gw;
            let auth = call.authorize(Permission::OidcCreate).await?;
            let input: ProviderInput = parse(&call.body)?;
            let id = input
                .id
                .clone()
                .ok_or_else(|| GatewayError::Invalid("id is required".into()))?;
            if gw.store().oidc_provider(&id).await?.is_some() {
                return Err(GatewayError::Conflict("a provider with this id exists"));
            }
            let record = record_from(gw, &id, input, None)?;
            refuse_namespace_clash(gw, &record).await?;
            gw.store().upsert_oidc_provider(&record).await?;
            call.changed(&auth, AuditAction::OidcProviderCreate, &id)
                .await;
            Ok((StatusCode::CREATED, Json(view(&record))).into_response())
        }
        .await,
    )
}

pub async fn edit_provider(Path(id): Path<String>, call: AdminCall) -> Response {
    respond(
        async {
            let gw = &call.gw;
            let auth = call.authorize(Permission::OidcEdit).await?;
            let input: ProviderInput = parse(&call.body)?;
            if input.id.as_deref().is_some_and(|given| given != id) {
                return Err(GatewayError::Invalid("the id cannot be changed".into()));
            }
            let existing = gw.store().oidc_provider(&id).await?;
            let existing = existing.ok_or(GatewayError::NotFound)?;
            let record = record_from(gw, &id, input, Some(&existing))?;
            refuse_namespace_clash(gw, &record).await?;
            gw.store().upsert_oidc_provider(&record).await?;
            call.changed(&auth, AuditAction::OidcProviderEdit, &id)
                .await;
            Ok(Json(view(&record)).into_response())
        }
        .await,
    )
}

pub async fn delete_provider(Path(id): Path<String>, call: AdminCall) -> Response {
    respond(
        async {
            let gw = &call.gw;
            let auth = call.authorize(Permission::OidcDelete).await?;
            let now = gw.now();
            match gw.store().delete_oidc_provider(&id, now).await? {
                ProviderDelete::Deleted => {
                    call.changed(&auth, AuditAction::OidcProviderDelete, &id)
                        .await;
                    Ok(StatusCode::NO_CONTENT.into_response())
                }
                ProviderDelete::NotFound => Err(GatewayError::NotFound),
                ProviderDelete::InUse => Err(GatewayError::Conflict(
                    "sessions still reference this provider; revoke them first",
                )),
            }
        }
        .await,
    )
}

#[derive(Debug, Deserialize)]
pub struct RefreshQuery {
    #[serde(default)]
    force: bool,
}

pub async fn refresh_provider(Path(id): Path<String>, call: AdminCall) -> Response {
    respond(
        async {
            let gw = &call.gw;
            let auth = call.authorize(Permission::OidcEdit).await?;
            let query: RefreshQuery = call.query()?;
            let outcome = gw
                .oidc()
                .refresh(gw.store(), &id, query.force, gw.now())
                .await;
            let mut event = gw.audit_event(
                auth.identity().subject(),
                AuditAction::OidcProviderRefresh,
                "failure",
            );
            event.target = Some(id.clone());
            event.ip = Some(call.peer.ip().to_string());
            match outcome {
                Ok(baseline) => {
                    call.changed(&auth, AuditAction::OidcProviderRefresh, &id)
                        .await;
                    Ok(Json(json!({ "id": id, "key_baseline": baseline })).into_response())
                }
                Err(RefreshError::NotFound) => Err(GatewayError::NotFound),
                Err(RefreshError::Fetch(failure)) => {
                    event.reason = Some(failure.reason.clone());
                    gw.audit(event).await;
                    Err(match failure.store {
                        Some(e) => GatewayError::Store(e),
                        None => GatewayError::Provider(failure.reason),
                    })
                }
                Err(RefreshError::Downgrade(why)) => {
                    event.reason = Some(format!("downgrade: {why}"));
                    gw.audit(event).await;
                    Err(GatewayError::Invalid(format!(
                        "refused: the provider now offers less than before ({why}); \
                     repeat with ?force=true to accept"
                    )))
                }
            }
        }
        .await,
    )
}

pub async fn list_mappings(call: AdminCall) -> Response {
    respond(
        async {
            let gw = &call.gw;
            call.authorize(Permission::OidcList).await?;
            let mappings = gw.store().group_mappings().await?;
            Ok(Json(json!({ "mappings": mappings })).into_response())
        }
        .await,
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingInput {
    provider_id: String,
    idp_group: String,
    role: String,
}

pub async fn add_mapping(call: AdminCall) -> Response {
    respond(
        async {
            let gw = &call.gw;
            let auth = call.authorize(Permission::OidcEdit).await?;
            let input: MappingInput = parse(&call.body)?;
            let role_ok = !input.role.is_empty()
                && input.role.len() <= 64
                && input
                    .role
                    .bytes()
                    .all(portcullis_core::routes::is_role_byte);
            if !role_ok || input.idp_group.is_empty() || input.idp_group.len() > 256 {
                return Err(GatewayError::Invalid(
                    "role: 1 to 64 of a-z A-Z 0-9 - _ . :; idp_group: 1 to 256 characters".into(),
                ));
            }
            if gw
                .store()
                .oidc_provider(&input.provider_id)
                .await?
                .is_none()
            {
                return Err(GatewayError::NotFound);
            }
            let mapping = GroupMapping {
                id: random_id(gw.entropy(), "map-")
                    .map_err(|e| GatewayError::Internal(e.to_string()))?,
                provider_id: input.provider_id,
                idp_group: input.idp_group,
                role: input.role,
            };
            if !gw.store().add_group_mapping(&mapping).await? {
                return Err(GatewayError::Conflict("this mapping exists"));
            }
            call.changed(&auth, AuditAction::OidcMappingAdd, &mapping.id)
                .await;
            Ok((StatusCode::CREATED, Json(mapping)).into_response())
        }
        .await,
    )
}

pub async fn remove_mapping(Path(id): Path<String>, call: AdminCall) -> Response {
    respond(
        async {
            let gw = &call.gw;
            let auth = call.authorize(Permission::OidcEdit).await?;
            if !gw.store().remove_group_mapping(&id).await? {
                return Err(GatewayError::NotFound);
            }
            call.changed(&auth, AuditAction::OidcMappingRemove, &id)
                .await;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_input_never_prints_its_secret() {
        let input: ProviderInput = serde_json::from_str(
            r#"{"issuer": "https://id.example.com", "client_id": "c", "client_secret": "hunter2-secret"}"#,
        )
        .unwrap();
        let printed = format!("{input:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert_eq!(input.client_secret.unwrap().expose(), "hunter2-secret");
    }
}
