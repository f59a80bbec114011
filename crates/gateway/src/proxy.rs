//! The streaming reverse proxy: rewrite the authenticated request for the upstream,
//! relay it over a keep-alive pool, and relay the response back. Bodies stream in
//! both directions; nothing is buffered whole.

use std::net::SocketAddr;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri, header};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use portcullis_core::identity::Identity;

use crate::auth::{Outcome, authenticate};
use crate::config::GatewayConfig;
use crate::cookies;
use crate::error::GatewayError;
use crate::login::{unauthenticated, wants_html};
use crate::state::Gateway;
use crate::ws::Refusal;

/// Identity headers the gateway sets. Any client-supplied copy is removed first,
/// or a client could claim to be anyone to an upstream that trusts them.
pub const IDENTITY_HEADERS: [&str; 4] = [
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Hop-by-hop headers (RFC 9110 section 7.6.1): they describe one connection and
/// never cross a proxy, in either direction.
pub(crate) fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Request headers the gateway owns. Identity headers are set from the session;
/// the client-hop headers (`X-Forwarded-For`, `Forwarded`, …) are replaced with what
/// the gateway observed, because the gateway is the edge and the client's own
/// claims about its address and scheme are worthless.
pub(crate) fn is_gateway_owned(name: &str) -> bool {
    IDENTITY_HEADERS.contains(&name)
        || matches!(
            name,
            "x-forwarded-for"
                | "x-forwarded-proto"
                | "x-forwarded-host"
                | "x-real-ip"
                | "forwarded"
        )
}

/// Pooled HTTP/1.1 client to the upstream. Each event loop has its own, so an
/// upstream connection is only ever driven by the thread that uses it.
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    client: Client<HttpConnector, Incoming>,
    /// The fast path's own pool ([`crate::fastpath`]).
    raw: std::sync::Arc<crate::fastpath::RawPool>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    timeout: std::time::Duration,
}

impl UpstreamClient {
    pub fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }

    pub fn timeout(&self) -> std::time::Duration {
        self.timeout
    }

    pub(crate) fn raw(&self) -> &crate::fastpath::RawPool {
        &self.raw
    }

    pub fn new(config: &GatewayConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .pool_max_idle_per_host(1024)
            .build(connector);
        Self {
            client,
            raw: std::sync::Arc::new(crate::fastpath::RawPool::new(&config.upstream.authority)),
            scheme: config.upstream.scheme.clone(),
            authority: config.upstream.authority.clone(),
            timeout: config.upstream_timeout,
        }
    }
}

/// Removes, in one pass, every header for which `drop` is true and every header
/// named in `Connection`. Most requests carry none, so nothing is allocated.
fn remove_headers(headers: &mut HeaderMap, drop: impl Fn(&str) -> bool) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',') {
            if let Ok(name) = HeaderName::from_bytes(token.trim().as_bytes()) {
                doomed.push(name);
            }
        }
    }
    for name in headers.keys() {
        if drop(name.as_str()) {
            doomed.push(name.clone());
        }
    }
    for name in doomed {
        headers.remove(name);
    }
}

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    remove_headers(headers, is_hop_by_hop);
}

/// The identity headers for `identity`. Non-ASCII names from an IdP are sent as raw
/// UTF-8 (obs-text); a value with control characters could split headers and is
/// omitted with a warning.
pub fn identity_header_values(identity: &Identity) -> Vec<(HeaderName, HeaderValue)> {
    let groups = identity.roles.join(",");
    let values = [
        (IDENTITY_HEADERS[0], Some(identity.subject.as_str())),
        (IDENTITY_HEADERS[1], identity.email.as_deref()),
        (IDENTITY_HEADERS[2], Some(groups.as_str())),
        (IDENTITY_HEADERS[3], Some(identity.name.as_str())),
    ];
    let mut out = Vec::with_capacity(4);
    for (name, value) in values {
        let Some(value) = value else { continue };
        match HeaderValue::from_bytes(value.as_bytes()) {
            Ok(v) => out.push((HeaderName::from_static(name), v)),
            Err(_) => {
                tracing::warn!(
                    header = name,
                    "identity value not representable as a header; omitted"
                )
            }
        }
    }
    out
}

/// Sets identity headers, replacing any existing ones.
pub fn set_identity_headers(headers: &mut HeaderMap, values: &[(HeaderName, HeaderValue)]) {
    for name in IDENTITY_HEADERS {
        headers.remove(name);
    }
    for (name, value) in values {
        headers.insert(name.clone(), value.clone());
    }
}

/// Rewrites the incoming request's headers for the upstream.
pub fn upstream_headers(
    headers: &mut HeaderMap,
    identity: &[(HeaderName, HeaderValue)],
    peer: SocketAddr,
    proto: &str,
) {
    let host = headers.get(header::HOST).cloned();
    remove_headers(headers, |name| {
        is_hop_by_hop(name) || is_gateway_owned(name)
    });
    strip_gateway_cookies(headers);
    for (name, value) in identity {
        headers.insert(name.clone(), value.clone());
    }
    if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    let proto = if proto == "https" { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
}

/// Removes the gateway's cookies from `Cookie`; the common case (no gateway cookie
/// in a header) leaves the header untouched without allocating.
fn strip_gateway_cookies(headers: &mut HeaderMap) {
    let has_ours = headers
        .get_all(header::COOKIE)
        .iter()
        .any(|v| v.as_bytes().windows(11).any(|w| w == b"portcullis_"));
    if !has_ours {
        return;
    }
    match cookies::without_gateway_cookies(headers)
        .and_then(|rest| HeaderValue::from_str(&rest).ok())
    {
        Some(v) => {
            headers.insert(header::COOKIE, v);
        }
        None => {
            headers.remove(header::COOKIE);
        }
    }
}

/// Handles a request outside the auth prefix: authenticate, rewrite, relay.
pub async fn handle(
    gw: &Gateway,
    client: &UpstreamClient,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Response<Body> {
    let (mut parts, body) = request.into_parts();
    let html = wants_html(&parts.method, &parts.headers);
    if crate::ws::is_upgrade(&parts.headers) {
        let (outcome, offer) = crate::ws::authenticate_upgrade(gw, &parts, peer).await;
        let request = Request::from_parts(parts, body);
        return match outcome {
            // Tickets (minted by a CSRF-checked POST) and bearer tokens are never sent
            // by a browser on its own; a cookie rides along with any cross-site
            // request, so only cookie upgrades must come from the public origin.
            Ok(Outcome::Authenticated(auth))
                if !auth.via_cookie || crate::ws::origin_allowed(gw, request.headers()) =>
            {
                crate::ws::relay(gw, client, peer, auth, offer, request).await
            }
            Ok(Outcome::Authenticated(_)) => {
                crate::ws::refuse(gw, request, Refusal::Rejected("origin not allowed"))
            }
            Ok(Outcome::Rejected) => {
                crate::ws::refuse(gw, request, Refusal::Rejected("credential rejected"))
            }
            Ok(Outcome::NoCredential) => crate::ws::refuse(gw, request, Refusal::NoCredential),
            Err(e) => e.into_response_for(false),
        };
    }
    let auth = match authenticate(gw, &parts.headers, peer).await {
        Ok(Some(auth)) => auth,
        Ok(None) => {
            let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
            return unauthenticated(gw, &parts.method, &parts.headers, path_and_query);
        }
        Err(e) => return e.into_response_for(html),
    };
    let mut uri = Uri::builder()
        .scheme(client.scheme.clone())
        .authority(client.authority.clone());
    if let Some(pq) = parts.uri.path_and_query() {
        uri = uri.path_and_query(pq.clone());
    }
    let Ok(uri) = uri.build() else {
        return GatewayError::BadRequest("request target").into_response_for(html);
    };
    if !auth.via_cookie {
        // The bearer credential was ours; the upstream never sees it.
        parts.headers.remove(header::AUTHORIZATION);
    }
    upstream_headers(
        &mut parts.headers,
        auth.session.identity_headers(),
        peer,
        gw.config().public_url.scheme.as_str(),
    );
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    let upstream_request = Request::from_parts(parts, body);

    let response =
        match tokio::time::timeout(client.timeout, client.client.request(upstream_request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                return GatewayError::UpstreamUnavailable(e.to_string()).into_response_for(html);
            }
            Err(_) => return GatewayError::UpstreamTimeout.into_response_for(html),
        };
    let (mut parts, body) = response.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Body::new(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            subject: "alice".into(),
            name: "Alice".into(),
            email: Some("alice@example.com".into()),
            provider: "basic".into(),
            roles: vec!["admin".into(), "user".into()],
        }
    }

    #[test]
    fn spoofed_identity_and_forwarding_headers_are_replaced() {
        let rows: &[(&str, &str, Option<&str>)] = &[
            ("x-forwarded-user", "root", Some("alice")),
            ("X-Forwarded-User", "root", Some("alice")),
            ("x-forwarded-email", "root@evil", Some("alice@example.com")),
            ("x-forwarded-groups", "admin,superuser", Some("admin,user")),
            ("x-forwarded-preferred-username", "root", Some("Alice")),
            ("x-forwarded-for", "10.0.0.1", Some("192.0.2.7")),
            ("x-forwarded-proto", "https", Some("http")),
            ("x-real-ip", "10.0.0.1", None),
            ("forwarded", "for=10.0.0.1", None),
            ("connection", "close", None),
            ("keep-alive", "timeout=5", None),
            ("proxy-authorization", "Basic x", None),
            ("te", "trailers", None),
        ];
        for (name, spoofed, expected) in rows {
            let mut headers = HeaderMap::new();
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static(spoofed),
            );
            upstream_headers(
                &mut headers,
                &identity_header_values(&identity()),
                "192.0.2.7:5000".parse().unwrap(),
                "http",
            );
            let got: Vec<_> = headers
                .get_all(*name)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect();
            assert_eq!(
                got,
                expected.map(|e| vec![e.to_owned()]).unwrap_or_default(),
                "row {name}"
            );
        }
    }

    #[test]
    fn headers_named_in_connection_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "connection",
            HeaderValue::from_static("x-secret-hop, keep-alive"),
        );
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut headers);
        assert!(headers.get("x-secret-hop").is_none());
        assert!(headers.get("x-kept").is_some());
    }

    #[test]
    fn control_characters_in_identity_are_not_forwarded() {
        let mut who = identity();
        who.name = "Eve\r\nX-Forwarded-User: root".into();
        let mut headers = HeaderMap::new();
        set_identity_headers(&mut headers, &identity_header_values(&who));
        assert!(headers.get("x-forwarded-preferred-username").is_none());
        assert_eq!(headers.get("x-forwarded-user").unwrap(), "alice");
    }
}
