//! The streaming reverse proxy: rewrite the authenticated request for the upstream,
//! relay it over a keep-alive pool, and relay the response back. Bodies stream in
//! both directions; nothing is buffered whole.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri, header};
use axum::response::Response;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use portcullis_core::identity::Identity;

use crate::auth::authenticate;
use crate::config::GatewayConfig;
use crate::cookies;
use crate::error::GatewayError;
use crate::login::{unauthenticated, wants_html};
use crate::state::Gateway;

/// Identity headers the gateway sets. Any client-supplied copy is removed first,
/// or a client could claim to be anyone to an upstream that trusts them.
pub const IDENTITY_HEADERS: [&str; 4] = [
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
];

/// Headers describing the client hop. The gateway is the edge, so client-supplied
/// values are discarded and replaced with what the gateway itself observed.
const FORWARDING_HEADERS: [&str; 5] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "forwarded",
];

/// Hop-by-hop headers (RFC 9110 section 7.6.1) never cross a proxy.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Pooled HTTP/1.1 client to the upstream.
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    client: Client<HttpConnector, Body>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    timeout: std::time::Duration,
}

impl UpstreamClient {
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
            scheme: config.upstream.scheme.clone(),
            authority: config.upstream.authority.clone(),
            timeout: config.upstream_timeout,
        }
    }
}

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Sets the identity headers for `identity`, replacing any existing ones.
pub fn set_identity_headers(headers: &mut HeaderMap, identity: &Identity) {
    for name in IDENTITY_HEADERS {
        headers.remove(name);
    }
    let values = [
        ("x-forwarded-user", Some(identity.subject.as_str())),
        ("x-forwarded-email", identity.email.as_deref()),
        ("x-forwarded-groups", Some(&identity.roles.join(","))),
        (
            "x-forwarded-preferred-username",
            Some(identity.name.as_str()),
        ),
    ];
    for (name, value) in values {
        let Some(value) = value else { continue };
        // Non-ASCII names from an IdP are sent as raw UTF-8 (obs-text); control
        // characters could split headers and are refused.
        match HeaderValue::from_bytes(value.as_bytes()) {
            Ok(v) => {
                headers.insert(name, v);
            }
            Err(_) => tracing::warn!(
                header = name,
                "identity value not representable as a header; omitted"
            ),
        }
    }
}

/// Rewrites the incoming request's headers for the upstream.
pub fn upstream_headers(
    headers: &mut HeaderMap,
    identity: &Identity,
    peer: SocketAddr,
    proto: &str,
) {
    let host = headers.get(header::HOST).cloned();
    remove_hop_by_hop(headers);
    headers.remove(header::UPGRADE);
    for name in FORWARDING_HEADERS {
        headers.remove(name);
    }
    match cookies::without_gateway_cookies(headers) {
        Some(rest) => match HeaderValue::from_str(&rest) {
            Ok(v) => {
                headers.insert(header::COOKIE, v);
            }
            Err(_) => {
                headers.remove(header::COOKIE);
            }
        },
        None => {
            headers.remove(header::COOKIE);
        }
    }
    set_identity_headers(headers, identity);
    if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if proto == "https" { "https" } else { "http" }),
    );
    if let Some(host) = host {
        headers.insert("x-forwarded-host", host);
    }
}

/// The fallback handler: everything outside the auth prefix.
pub async fn proxy(
    State(gw): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let html = wants_html(&parts.method, &parts.headers);
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let auth = match authenticate(&gw, &parts.headers).await {
        Ok(Some(auth)) => auth,
        Ok(None) => return unauthenticated(&gw, &parts.method, &parts.headers, &path_and_query),
        Err(e) => return e.into_response_for(html),
    };
    if parts.headers.contains_key(header::UPGRADE) {
        return GatewayError::BadRequest("protocol upgrades are not proxied by this version")
            .into_response_for(html);
    }
    let client = &gw.0.upstream;
    let uri = Uri::builder()
        .scheme(client.scheme.clone())
        .authority(client.authority.clone())
        .path_and_query(path_and_query)
        .build();
    let uri = match uri {
        Ok(uri) => uri,
        Err(_) => return GatewayError::BadRequest("request target").into_response_for(html),
    };
    upstream_headers(
        &mut parts.headers,
        auth.identity(),
        peer,
        gw.config().public_url.scheme.as_str(),
    );
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    let upstream_request = http::Request::from_parts(parts, body);

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
                &identity(),
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
        set_identity_headers(&mut headers, &who);
        assert!(headers.get("x-forwarded-preferred-username").is_none());
        assert_eq!(headers.get("x-forwarded-user").unwrap(), "alice");
    }
}
