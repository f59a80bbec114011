//! The only place that turns failures into HTTP statuses, WebSocket close codes,
//! OAuth error bodies and client-visible text (linkerd's rescue at the edge).
//!
//! Every failure says whose fault it is ([`Fault`]). Clients learn a uniform
//! message; for the upstream's faults and ours, the cause goes to the log under an
//! error id (the request id) that the client also receives, so an operator can
//! match a user's report to the log line without the user ever seeing the detail.

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_store::StoreError;
use serde_json::json;

use crate::pages;
use crate::request_id::RequestId;
use crate::upstream::UpstreamError;

/// Close code for "your session ended, or you never had one; sign in again"
/// (SPEC 6.4, 6.5).
pub const CLOSE_SESSION_ENDED: u16 = 4401;
/// Close code for "the credential presented was refused" (SPEC 6.5).
pub const CLOSE_REJECTED: u16 = 4403;
/// The upstream refused or failed the WebSocket. 1011 ("unexpected condition")
/// rather than the later-registered 1014 ("bad gateway"), which strict clients
/// still treat as reserved and answer with a protocol error.
pub const CLOSE_UPSTREAM_FAILED: u16 = 1011;

/// Whose fault a failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request (4xx): nothing to log beyond the access log.
    Client,
    /// The upstream or the identity provider (502/504).
    Upstream,
    /// The gateway or its database (5xx).
    Gateway,
}

/// Everything a gateway request can end with other than success.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("unauthenticated")]
    Unauthenticated,
    #[error("invalid credentials")]
    InvalidCredentials,
    /// A credential was presented and refused (WebSocket upgrades tell this apart
    /// from [`GatewayError::Unauthenticated`]).
    #[error("credential rejected")]
    CredentialRejected,
    #[error("CSRF token missing or wrong")]
    Csrf,
    #[error("origin not allowed")]
    OriginNotAllowed,
    #[error("host not allowed")]
    HostNotAllowed,
    #[error("forbidden")]
    Forbidden,
    /// A client session (magic link) asked for a path outside its scope.
    #[error("outside the client's scope")]
    OutsideScope,
    /// A browser without a session asked for a path inside a client scope: the
    /// page says to ask for a new link (not the sign-in form).
    #[error("access required")]
    AccessRequired,
    /// A magic link that signs no one in (unknown, revoked, expired, client
    /// disabled: one uniform answer, the reason goes to the audit log).
    #[error("link refused")]
    LinkRefused,
    /// A route rule needs a stronger sign-in than the session's (step-up): a
    /// browser is sent through its provider again (`login_url`); others get 401
    /// with the RFC 9470 challenge naming `acr_values`.
    #[error("step-up authentication required")]
    StepUp {
        login_url: String,
        acr_values: String,
    },
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// Input that fails validation; the message names the problems (never secrets).
    #[error("invalid: {0}")]
    Invalid(String),
    /// Any failed OpenID Connect sign-in: one uniform answer, the precise reason
    /// goes to the audit log.
    #[error("OpenID Connect failure: {0}")]
    OidcFailed(String),
    /// A back-channel logout token that fails validation (the reason is audited).
    #[error("logout token refused: {0}")]
    LogoutTokenRefused(String),
    #[error("too many attempts")]
    Throttled { retry_after_secs: u64 },
    #[error("login workers busy")]
    Busy,
    #[error("upstream: {0}")]
    Upstream(#[from] UpstreamError),
    /// The identity provider could not be reached or answered nonsense.
    #[error("identity provider: {0}")]
    Provider(String),
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("entropy source: {0}")]
    Entropy(#[from] portcullis_core::secret::EntropyError),
    #[error("internal error: {0}")]
    Internal(String),
}

tokio::task_local! {
    /// The id of the request being served, so an error's id is its request's.
    pub static CURRENT_REQUEST: RequestId;
}

impl GatewayError {
    pub fn fault(&self) -> Fault {
        match self {
            GatewayError::Upstream(_) | GatewayError::Provider(_) => Fault::Upstream,
            GatewayError::Store(_)
            | GatewayError::Entropy(_)
            | GatewayError::Internal(_)
            | GatewayError::Busy => Fault::Gateway,
            _ => Fault::Client,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::Unauthenticated
            | GatewayError::InvalidCredentials
            | GatewayError::AccessRequired
            | GatewayError::LinkRefused
            | GatewayError::StepUp { .. } => StatusCode::UNAUTHORIZED,
            GatewayError::CredentialRejected
            | GatewayError::Csrf
            | GatewayError::OriginNotAllowed
            | GatewayError::OutsideScope
            | GatewayError::Forbidden => StatusCode::FORBIDDEN,
            GatewayError::HostNotAllowed
            | GatewayError::BadRequest(_)
            | GatewayError::Invalid(_)
            | GatewayError::OidcFailed(_)
            | GatewayError::LogoutTokenRefused(_) => StatusCode::BAD_REQUEST,
            GatewayError::NotFound => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::Conflict(_) => StatusCode::CONFLICT,
            GatewayError::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Busy | GatewayError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Upstream(UpstreamError::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Upstream(_) | GatewayError::Provider(_) => StatusCode::BAD_GATEWAY,
            GatewayError::Entropy(_) | GatewayError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::Unauthenticated | GatewayError::AccessRequired => "unauthenticated",
            GatewayError::OutsideScope => "outside_scope",
            GatewayError::LinkRefused => "link_invalid",
            GatewayError::InvalidCredentials => "invalid_credentials",
            GatewayError::CredentialRejected | GatewayError::Forbidden => "forbidden",
            GatewayError::StepUp { .. } => "insufficient_user_authentication",
            GatewayError::Csrf => "csrf_failed",
            GatewayError::OriginNotAllowed => "origin_not_allowed",
            GatewayError::HostNotAllowed => "host_not_allowed",
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::NotFound => "not_found",
            GatewayError::MethodNotAllowed => "method_not_allowed",
            GatewayError::Conflict(_) => "conflict",
            GatewayError::Invalid(_) => "invalid",
            GatewayError::OidcFailed(_) => "oidc_failed",
            GatewayError::LogoutTokenRefused(_) => "invalid_request",
            GatewayError::Throttled { .. } => "too_many_attempts",
            GatewayError::Busy => "busy",
            GatewayError::Upstream(UpstreamError::Timeout) => "upstream_timeout",
            GatewayError::Upstream(_) => "upstream_unavailable",
            GatewayError::Provider(_) => "provider_unavailable",
            GatewayError::Store(_) => "unavailable",
            GatewayError::Entropy(_) | GatewayError::Internal(_) => "internal_error",
        }
    }

    /// What the client may read.
    pub fn public_message(&self) -> String {
        match self {
            GatewayError::Unauthenticated => "Sign-in required.".into(),
            GatewayError::AccessRequired => "This page is shared by link. Ask the person \
                who shared it with you for a new link."
                .into(),
            GatewayError::OutsideScope => "Your access is limited to the pages shared with \
                you, and this page is not one of them."
                .into(),
            GatewayError::LinkRefused => "This link is not valid: it may have expired or \
                been withdrawn. Ask the person who shared it with you for a new link."
                .into(),
            GatewayError::InvalidCredentials => "Invalid username or password.".into(),
            GatewayError::Csrf => "Missing or invalid X-CSRF-Token header.".into(),
            GatewayError::OriginNotAllowed => "Request origin is not allowed.".into(),
            GatewayError::HostNotAllowed => "This gateway does not serve this address. If it \
                should, its operator sets --public-url to it or adds the host to --allowed-hosts."
                .into(),
            GatewayError::CredentialRejected | GatewayError::Forbidden => {
                "You do not have access to this resource.".into()
            }
            GatewayError::StepUp { .. } => {
                "This resource needs a stronger sign-in with your identity provider.".into()
            }
            GatewayError::BadRequest(why) => format!("Bad request: {why}."),
            GatewayError::NotFound => "Not found.".into(),
            GatewayError::MethodNotAllowed => "This address does not accept that method.".into(),
            GatewayError::Conflict(why) => format!("Conflict: {why}."),
            GatewayError::Invalid(why) => format!("Invalid request: {why}."),
            GatewayError::OidcFailed(_) => {
                "Sign-in with the identity provider failed. Please start again.".into()
            }
            GatewayError::LogoutTokenRefused(_) => "logout token refused".into(),
            GatewayError::Throttled { retry_after_secs } => {
                format!("Too many sign-in attempts. Try again in {retry_after_secs} s.")
            }
            GatewayError::Busy => "The gateway is busy. Try again shortly.".into(),
            GatewayError::Upstream(UpstreamError::Timeout) => {
                "The application behind this gateway did not answer in time.".into()
            }
            GatewayError::Upstream(_) => {
                "The application behind this gateway is not reachable.".into()
            }
            GatewayError::Provider(_) => "The identity provider is not reachable.".into(),
            GatewayError::Store(_) => {
                "The gateway cannot reach its database; access is refused until it can.".into()
            }
            GatewayError::Entropy(_) | GatewayError::Internal(_) => "Internal error.".into(),
        }
    }

    /// How a WebSocket upgrade refused for this reason is closed when refusals are
    /// sent as close codes (`--ws-reject=close`); `None`: answered with the status.
    pub fn close(&self) -> Option<(u16, &'static str)> {
        match self {
            GatewayError::Unauthenticated => Some((CLOSE_SESSION_ENDED, "authentication required")),
            GatewayError::CredentialRejected => Some((CLOSE_REJECTED, "credential rejected")),
            GatewayError::OriginNotAllowed => Some((CLOSE_REJECTED, "origin not allowed")),
            GatewayError::Forbidden | GatewayError::Csrf => Some((CLOSE_REJECTED, "forbidden")),
            GatewayError::OutsideScope => Some((CLOSE_REJECTED, "outside the client's scope")),
            GatewayError::StepUp { .. } => Some((CLOSE_REJECTED, "step-up required")),
            GatewayError::Upstream(_) => Some((CLOSE_UPSTREAM_FAILED, "upstream unavailable")),
            _ => None,
        }
    }

    /// The close code of a WebSocket whose handshake the client already saw
    /// succeed (the upstream, or the gateway itself, failed after it).
    pub fn close_after_accept(&self) -> (u16, &'static str) {
        self.close()
            .unwrap_or((CLOSE_UPSTREAM_FAILED, "internal error"))
    }

    /// Headers every error response carries: no caching, the schemes a 401 would
    /// accept (RFC 9110 section 11.6.1), and when to retry a throttled attempt.
    /// For responses built elsewhere on an error (the sign-in form re-rendered).
    pub fn decorate(&self, headers: &mut HeaderMap) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let GatewayError::StepUp { acr_values, .. } = self {
            // RFC 9470 section 3: the challenge of a step-up.
            let mut challenge = String::from(
                "Bearer realm=\"portcullis\", error=\"insufficient_user_authentication\", \
                 error_description=\"A stronger sign-in is required\"",
            );
            if !acr_values.is_empty() {
                challenge.push_str(&format!(", acr_values=\"{acr_values}\""));
            }
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                headers.insert(header::WWW_AUTHENTICATE, value);
            }
        } else if self.status() == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"portcullis\""),
            );
        }
        if let GatewayError::Throttled { retry_after_secs } = self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
    }

    /// What an unauthenticated request gets: a browser navigation is sent to sign
    /// in (302 to `login_url`), anything else gets 401 JSON.
    pub fn unauthenticated(browser: bool, login_url: &str) -> Response {
        if browser {
            let mut response = Response::new(axum::body::Body::empty());
            *response.status_mut() = StatusCode::FOUND;
            if let Ok(location) = HeaderValue::from_str(login_url) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response
        } else {
            GatewayError::Unauthenticated.into_response()
        }
    }

    /// Logs the cause of an upstream or gateway fault under an error id (the
    /// current request's id) and returns the id.
    fn log(&self) -> Option<RequestId> {
        if self.fault() == Fault::Client {
            return None;
        }
        let id = CURRENT_REQUEST
            .try_with(RequestId::clone)
            .unwrap_or_else(|_| RequestId::next());
        let mut chain = String::new();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            chain.push_str(": ");
            chain.push_str(&cause.to_string());
            source = cause.source();
        }
        tracing::error!(error_id = %id, code = self.code(), error = %self, causes = %chain, "request failed");
        Some(id)
    }

    /// The heading of the page a person sees for refusals that are about access
    /// by link, rather than a status line.
    fn page_title(&self) -> Option<&'static str> {
        match self {
            GatewayError::AccessRequired => Some("Access required"),
            GatewayError::OutsideScope => Some("Access is limited"),
            GatewayError::LinkRefused => Some("This link is not valid"),
            _ => None,
        }
    }

    /// The response, as an HTML page when the client is a browser navigation.
    pub fn into_response_for(self, wants_html: bool) -> Response {
        if let (true, GatewayError::StepUp { login_url, .. }) = (wants_html, &self) {
            let mut response = GatewayError::unauthenticated(true, login_url);
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return response;
        }
        let status = self.status();
        let error_id = self.log();
        let error_id = error_id.as_ref().map(RequestId::as_str);
        let message = self.public_message();
        let mut response = if wants_html {
            let page = match self.page_title() {
                Some(title) => pages::notice_page(title, &message),
                None => pages::error_page(status, &message, error_id),
            };
            let mut response = (status, page).into_response();
            // A refusal page may answer on the upstream's paths: protected all the same.
            pages::protect(response.headers_mut());
            response
        } else {
            let body = match error_id {
                Some(id) => json!({"error": self.code(), "message": message, "error_id": id}),
                None => json!({"error": self.code(), "message": message}),
            };
            (status, Json(body)).into_response()
        };
        self.decorate(response.headers_mut());
        response
    }

    /// The answer of an OAuth-style endpoint (back-channel logout, RFC 6749
    /// section 5.2 bodies): 400 `invalid_request` for a refused token, 503
    /// `temporarily_unavailable` when the database cannot answer (the provider may
    /// retry: nothing was applied). Never cached.
    pub fn into_oauth_response(self) -> Response {
        let (status, error, description) = match self.fault() {
            Fault::Client => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "logout token refused",
            ),
            Fault::Upstream | Fault::Gateway => {
                self.log();
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "try again later",
                )
            }
        };
        let mut response = (
            status,
            Json(json!({"error": error, "error_description": description})),
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        self.into_response_for(false)
    }
}

impl From<crate::keyring::KeyringError> for GatewayError {
    fn from(e: crate::keyring::KeyringError) -> Self {
        match e {
            crate::keyring::KeyringError::Store(e) => GatewayError::Store(e),
            other => GatewayError::Internal(other.to_string()),
        }
    }
}

impl From<crate::internal::InternalError> for GatewayError {
    fn from(e: crate::internal::InternalError) -> Self {
        match e {
            crate::internal::InternalError::Store(e) => GatewayError::Store(e),
            other => GatewayError::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_detail_never_reaches_the_client() {
        let err = GatewayError::Store(StoreError::Corrupt(
            "password=hunter2 connection refused".into(),
        ));
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!err.public_message().contains("hunter2"));
        let err = GatewayError::Internal("password=hunter2 connection refused".into());
        assert_eq!(err.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!err.public_message().contains("hunter2"));
    }

    #[test]
    fn each_failure_has_one_status_fault_and_close_code() {
        // (error, status, fault, close code)
        let rows: Vec<(GatewayError, u16, Fault, Option<u16>)> = vec![
            (
                GatewayError::Unauthenticated,
                401,
                Fault::Client,
                Some(4401),
            ),
            (
                GatewayError::CredentialRejected,
                403,
                Fault::Client,
                Some(4403),
            ),
            (
                GatewayError::OriginNotAllowed,
                403,
                Fault::Client,
                Some(4403),
            ),
            (GatewayError::Csrf, 403, Fault::Client, Some(4403)),
            (GatewayError::HostNotAllowed, 400, Fault::Client, None),
            (
                GatewayError::Upstream(UpstreamError::ClosedEarly),
                502,
                Fault::Upstream,
                Some(1011),
            ),
            (
                GatewayError::Upstream(UpstreamError::Timeout),
                504,
                Fault::Upstream,
                Some(1011),
            ),
            (
                GatewayError::Provider("x".into()),
                502,
                Fault::Upstream,
                None,
            ),
            (GatewayError::Busy, 503, Fault::Gateway, None),
            (
                GatewayError::Internal("x".into()),
                500,
                Fault::Gateway,
                None,
            ),
        ];
        for (error, status, fault, close) in rows {
            let name = error.to_string();
            assert_eq!(error.status().as_u16(), status, "{name}");
            assert_eq!(error.fault(), fault, "{name}");
            assert_eq!(error.close().map(|c| c.0), close, "{name}");
        }
    }

    #[tokio::test]
    async fn a_401_names_its_scheme_and_an_error_id_is_the_request_id() {
        let response = GatewayError::Unauthenticated.into_response();
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"portcullis\""
        );
        let id = RequestId::next();
        let response = CURRENT_REQUEST
            .scope(id.clone(), async {
                GatewayError::Internal("boom".into()).into_response()
            })
            .await;
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error_id"], id.as_str());
    }
}
