//! The only place that turns failures into HTTP statuses and client-visible text.
//!
//! Clients learn who is at fault and a uniform message; internal detail goes to the
//! log under an error id that the client also receives, so an operator can match a
//! user's report to the log line without the user ever seeing the detail.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::pages;

/// Everything a gateway request can end with other than success.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("unauthenticated")]
    Unauthenticated,
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("CSRF token missing or wrong")]
    Csrf,
    #[error("origin not allowed")]
    OriginNotAllowed,
    #[error("host not allowed")]
    HostNotAllowed,
    #[error("forbidden")]
    Forbidden,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// Input that fails validation; the message names the problems (never secrets).
    #[error("invalid: {0}")]
    Invalid(String),
    /// Any failed OpenID Connect sign-in or logout token: one uniform answer, the
    /// precise reason goes to the audit log.
    #[error("OpenID Connect failure: {0}")]
    OidcFailed(String),
    #[error("too many attempts")]
    Throttled { retry_after_secs: u64 },
    #[error("login workers busy")]
    Busy,
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(String),
    #[error("upstream timed out")]
    UpstreamTimeout,
    #[error("database unavailable: {0}")]
    StoreUnavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<portcullis_store::StoreError> for GatewayError {
    fn from(e: portcullis_store::StoreError) -> Self {
        GatewayError::StoreUnavailable(e.to_string())
    }
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::Unauthenticated | GatewayError::InvalidCredentials => {
                StatusCode::UNAUTHORIZED
            }
            GatewayError::Csrf | GatewayError::OriginNotAllowed | GatewayError::Forbidden => {
                StatusCode::FORBIDDEN
            }
            GatewayError::HostNotAllowed | GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::NotFound => StatusCode::NOT_FOUND,
            GatewayError::Conflict(_) => StatusCode::CONFLICT,
            GatewayError::Invalid(_) => StatusCode::BAD_REQUEST,
            GatewayError::OidcFailed(_) => StatusCode::BAD_REQUEST,
            GatewayError::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Busy | GatewayError::StoreUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::UpstreamUnavailable(_) => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::Unauthenticated => "unauthenticated",
            GatewayError::InvalidCredentials => "invalid_credentials",
            GatewayError::Csrf => "csrf_failed",
            GatewayError::OriginNotAllowed => "origin_not_allowed",
            GatewayError::HostNotAllowed => "host_not_allowed",
            GatewayError::Forbidden => "forbidden",
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::NotFound => "not_found",
            GatewayError::Conflict(_) => "conflict",
            GatewayError::Invalid(_) => "invalid",
            GatewayError::OidcFailed(_) => "oidc_failed",
            GatewayError::Throttled { .. } => "too_many_attempts",
            GatewayError::Busy => "busy",
            GatewayError::UpstreamUnavailable(_) => "upstream_unavailable",
            GatewayError::UpstreamTimeout => "upstream_timeout",
            GatewayError::StoreUnavailable(_) => "unavailable",
            GatewayError::Internal(_) => "internal_error",
        }
    }

    /// What the client may read.
    pub fn public_message(&self) -> String {
        match self {
            GatewayError::Unauthenticated => "Sign-in required.".into(),
            GatewayError::InvalidCredentials => "Invalid username or password.".into(),
            GatewayError::Csrf => "Missing or invalid X-CSRF-Token header.".into(),
            GatewayError::OriginNotAllowed => "Request origin is not allowed.".into(),
            GatewayError::HostNotAllowed => "Host header is not allowed for this gateway.".into(),
            GatewayError::Forbidden => "You do not have access to this resource.".into(),
            GatewayError::BadRequest(why) => format!("Bad request: {why}."),
            GatewayError::NotFound => "Not found.".into(),
            GatewayError::Conflict(why) => format!("Conflict: {why}."),
            GatewayError::Invalid(why) => format!("Invalid request: {why}."),
            GatewayError::OidcFailed(_) => {
                "Sign-in with the identity provider failed. Please start again.".into()
            }
            GatewayError::Throttled { retry_after_secs } => {
                format!("Too many sign-in attempts. Try again in {retry_after_secs} s.")
            }
            GatewayError::Busy => "The gateway is busy. Try again shortly.".into(),
            GatewayError::UpstreamUnavailable(_) => {
                "The application behind this gateway is not reachable.".into()
            }
            GatewayError::UpstreamTimeout => {
                "The application behind this gateway did not answer in time.".into()
            }
            GatewayError::StoreUnavailable(_) => {
                "The gateway cannot reach its database; access is refused until it can.".into()
            }
            GatewayError::Internal(_) => "Internal error.".into(),
        }
    }

    /// Internal detail worth an error id in the log.
    fn detail(&self) -> Option<&str> {
        match self {
            GatewayError::UpstreamUnavailable(d)
            | GatewayError::StoreUnavailable(d)
            | GatewayError::Internal(d) => Some(d),
            _ => None,
        }
    }

    fn error_id(&self) -> Option<String> {
        let detail = self.detail()?;
        let mut raw = [0u8; 6];
        let _ = getrandom_fill(&mut raw);
        let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        tracing::error!(error_id = %id, code = self.code(), detail, "request failed");
        Some(id)
    }

    /// The response, as an HTML page when the client is a browser navigation.
    pub fn into_response_for(self, wants_html: bool) -> Response {
        let status = self.status();
        let error_id = self.error_id();
        let message = self.public_message();
        let mut response = if wants_html {
            let page = pages::error_page(status, &message, error_id.as_deref());
            (status, page).into_response()
        } else {
            let body = match &error_id {
                Some(id) => json!({"error": self.code(), "message": message, "error_id": id}),
                None => json!({"error": self.code(), "message": message}),
            };
            (status, Json(body)).into_response()
        };
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let GatewayError::Throttled { retry_after_secs } = self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        response
    }
}

fn getrandom_fill(buf: &mut [u8]) -> Result<(), portcullis_core::secret::EntropyError> {
    use portcullis_core::secret::{Entropy, OsEntropy};
    OsEntropy.fill(buf)
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        self.into_response_for(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_detail_never_reaches_the_client() {
        let err = GatewayError::StoreUnavailable("password=hunter2 connection refused".into());
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!err.public_message().contains("hunter2"));
    }
}
