//! The one upstream rewrite: what of a client's request reaches the upstream, and
//! what the gateway adds. One set of rules, rendered two ways: onto a header map
//! ([`UpstreamRewrite::apply`], the general path and WebSocket upgrades) and as
//! HTTP/1.1 bytes ([`render_head`] then [`UpstreamRewrite::render_tail`], the fast
//! path).
//!
//! - Hop-by-hop headers, and headers named in `Connection`, are removed.
//! - Headers the gateway owns are removed: identity headers, the forwarding headers
//!   it sets (`X-Forwarded-For|Proto|Host`, `X-Request-Id`), and every other
//!   header a client could use to claim an address, scheme, host or path of its
//!   own (`Forwarded`, `X-Real-IP`, `X-Forwarded-Port`, …): the gateway is the edge,
//!   and those claims are worthless from a client.
//! - Names are compared as a server behind the gateway may compare them: ASCII case
//!   folded and `_` read as `-` (CGI, WSGI, Rack and PHP all map both to `_`), so
//!   `X_Forwarded_User` is an identity header too.
//! - The gateway's cookies are removed, and exactly the credential that
//!   authenticated the request ([`Carrier`]): `Authorization` only when it carried
//!   our bearer, `?ticket=` only when the ticket authenticated. A gateway credential
//!   in `?token=` never reaches the upstream, whatever authenticated the request;
//!   the upstream's own `Authorization`, `?token=` and `?ticket=` pass untouched.
//! - Identity headers, `X-Forwarded-For|Proto|Host` and `X-Request-Id` are set.

use std::borrow::Cow;
use std::net::IpAddr;

use crate::identity::{IdentityFields, header_safe};
use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::carrier::{Carrier, bearer_value, is_portcullis_bearer};
use crate::cookies;
use crate::request_id::RequestId;

/// Identity headers the gateway sets (SPEC 4).
pub const IDENTITY_HEADERS: [&str; 4] = [
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
];

pub const X_REQUEST_ID: &str = "x-request-id";

/// A header name as a server behind the gateway may read it: ASCII lower case,
/// `_` as `-`. On the stack when short (nearly always).
pub struct NormalName {
    bytes: [u8; 48],
    len: usize,
    long: Option<String>,
}

impl NormalName {
    pub fn new(name: &str) -> Self {
        let fold = |b: u8| {
            if b == b'_' {
                b'-'
            } else {
                b.to_ascii_lowercase()
            }
        };
        let mut bytes = [0u8; 48];
        if name.len() <= bytes.len() {
            for (to, from) in bytes.iter_mut().zip(name.bytes()) {
                *to = fold(from);
            }
            Self {
                bytes,
                len: name.len(),
                long: None,
            }
        } else {
            let long = name.bytes().map(|b| char::from(fold(b))).collect();
            Self {
                bytes,
                len: 0,
                long: Some(long),
            }
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.long {
            Some(long) => long,
            // Header names are ASCII tokens (checked by httparse and `http`), so
            // this never fails; a failure would read as a name no rule matches.
            None => std::str::from_utf8(&self.bytes[..self.len]).unwrap_or(""),
        }
    }
}

/// Hop-by-hop headers (RFC 9110 section 7.6.1): they describe one connection and
/// never cross a proxy, in either direction. `name` is normalised.
pub fn is_hop_by_hop(name: &str) -> bool {
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

/// Request headers the gateway owns (see the module comment). `name` is normalised.
pub fn is_gateway_owned(name: &str) -> bool {
    IDENTITY_HEADERS.contains(&name)
        || matches!(
            name,
            "x-forwarded-for"
                | "x-forwarded-proto"
                | "x-forwarded-host"
                | "x-request-id"
                | "forwarded"
                | "x-real-ip"
                | "x-client-ip"
                | "true-client-ip"
                | "x-forwarded-port"
                | "x-forwarded-prefix"
                | "x-forwarded-server"
                | "x-forwarded-ssl"
                | "x-forwarded-scheme"
                | "x-forwarded-uri"
                | "x-forwarded-method"
                | "x-original-uri"
                | "x-original-url"
                | "x-original-host"
                | "x-original-method"
                | "x-rewrite-url"
                | "x-host"
                | "x-url-scheme"
                | "front-end-https"
        )
}

/// Whether a client request header never reaches the upstream as sent.
pub fn drops_request_header(name: &str) -> bool {
    let name = NormalName::new(name);
    is_hop_by_hop(name.as_str()) || is_gateway_owned(name.as_str())
}

/// The identity headers' values for `identity`: user, e-mail, groups, preferred
/// username. A value that is not header-safe (or groups with a role that would read
/// as two) is omitted with a warning; a cached session has checked its strings
/// once, when it was loaded.
fn identity_values(identity: &dyn IdentityFields, mut emit: impl FnMut(&'static str, &str)) {
    let checked = identity.header_safe();
    let groups = identity.groups();
    let values = [
        (IDENTITY_HEADERS[0], Some(identity.subject())),
        (IDENTITY_HEADERS[1], identity.email()),
        (IDENTITY_HEADERS[2], groups.as_deref()),
        (IDENTITY_HEADERS[3], Some(identity.name())),
    ];
    for (name, value) in values {
        match value {
            Some(value) if checked || header_safe(value.as_bytes()) => emit(name, value),
            None if name != IDENTITY_HEADERS[2] => {}
            _ => tracing::warn!(
                header = name,
                "identity value not representable as a header; omitted"
            ),
        }
    }
}

/// The identity headers for `identity`, as a header map holds them.
pub fn identity_headers(identity: &dyn IdentityFields) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::with_capacity(4);
    identity_values(identity, |name, value| {
        if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
            out.push((HeaderName::from_static(name), value));
        }
    });
    out
}

/// The identity headers of a forward-auth answer: every one present, empty when
/// unknown or anonymous, so a proxy copying them leaves no client-supplied value
/// or template placeholder behind.
pub fn set_forward_auth_headers(headers: &mut HeaderMap, identity: Option<&dyn IdentityFields>) {
    for name in IDENTITY_HEADERS {
        headers.insert(HeaderName::from_static(name), HeaderValue::from_static(""));
    }
    if let Some(identity) = identity {
        for (name, value) in identity_headers(identity) {
            headers.insert(name, value);
        }
    }
}

/// The request target for the upstream: `?ticket=` removed when the ticket
/// authenticated, and every `token=` holding a gateway credential removed always.
/// Borrowed (no allocation) when nothing is removed.
pub fn upstream_target(target: &str, carrier: Option<Carrier>) -> Cow<'_, str> {
    let Some((path, query)) = target.split_once('?') else {
        return Cow::Borrowed(target);
    };
    // Keys are compared decoded, and `;` is read as a separator too (some servers
    // split on it), so no spelling of `token=pct_…` slips through.
    let ours = |pair: &str| {
        pair.split(';').any(|part| {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            let key = percent_encoding::percent_decode_str(key).decode_utf8_lossy();
            match key.as_ref() {
                "ticket" => carrier == Some(Carrier::Ticket),
                "token" => is_portcullis_bearer(
                    &percent_encoding::percent_decode_str(value).decode_utf8_lossy(),
                ),
                _ => false,
            }
        })
    };
    if !query.split('&').any(ours) {
        return Cow::Borrowed(target);
    }
    let kept: Vec<&str> = query.split('&').filter(|pair| !ours(pair)).collect();
    if kept.is_empty() {
        Cow::Owned(path.to_owned())
    } else {
        Cow::Owned(format!("{path}?{}", kept.join("&")))
    }
}

/// A request target from a canonical path and the original query.
pub fn with_query<'a>(path: &'a str, query: Option<&str>) -> Cow<'a, str> {
    match query {
        Some(query) => Cow::Owned(format!("{path}?{query}")),
        None => Cow::Borrowed(path),
    }
}

/// What the gateway adds to a request for the upstream, and which credential it
/// removes.
#[derive(Debug)]
pub struct UpstreamRewrite<'a> {
    /// Who asked; `None` on an anonymous route (no identity headers at all).
    pub identity: Option<&'a dyn IdentityFields>,
    pub client_ip: IpAddr,
    /// `https` when the public URL is, else `http`.
    pub proto: &'static str,
    pub request_id: &'a RequestId,
}

impl UpstreamRewrite<'_> {
    /// Rewrites a header map for the upstream.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let host = headers.get(header::HOST).cloned();
        remove_headers(headers, drops_request_header);
        // A bearer of ours never reaches the upstream, whatever authenticated the
        // request (a ticket may come with one); the upstream's own values stay.
        remove_our_bearers(headers);
        strip_gateway_cookies(headers);
        if let Some(identity) = self.identity {
            for (name, value) in identity_headers(identity) {
                headers.insert(name, value);
            }
        }
        if let Ok(v) = HeaderValue::from_str(&self.client_ip.to_string()) {
            headers.insert(HeaderName::from_static("x-forwarded-for"), v);
        }
        headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static(self.proto),
        );
        if let Some(host) = host {
            headers.insert(HeaderName::from_static("x-forwarded-host"), host);
        }
        if let Ok(id) = HeaderValue::from_str(self.request_id.as_str()) {
            headers.insert(HeaderName::from_static(X_REQUEST_ID), id);
        }
    }

    /// Appends the lines that depend on who asked (identity headers, the request
    /// id) and the blank line ending the head, after [`render_head`].
    pub fn render_tail(&self, out: &mut Vec<u8>) {
        if let Some(identity) = self.identity {
            identity_values(identity, |name, value| {
                push_header(out, name.as_bytes(), value.as_bytes());
            });
        }
        push_header(
            out,
            X_REQUEST_ID.as_bytes(),
            self.request_id.as_str().as_bytes(),
        );
        out.extend_from_slice(b"\r\n");
    }
}

/// Renders the part of an upstream request head that does not depend on who asked:
/// request line, the client's headers the rules keep (every `Cookie` header merged
/// into one without the gateway's cookies) and the connection's forwarding lines.
/// For requests the cookie authenticated (the fast path's only carrier): nothing
/// else is a credential to remove. The caller has refused heads with headers named
/// in `Connection` other than `close` and `keep-alive`.
pub fn render_head(
    out: &mut Vec<u8>,
    method: &str,
    target: &str,
    headers: &[httparse::Header<'_>],
    forwarded: &[u8],
    host: &[u8],
) {
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(upstream_target(target, Some(Carrier::Cookie)).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut cookies_written = false;
    for h in headers {
        let normal = NormalName::new(h.name);
        let name = normal.as_str();
        if is_hop_by_hop(name) || is_gateway_owned(name) {
            continue;
        }
        if name == "cookie" {
            if !cookies_written {
                let values = headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
                    .map(|h| h.value);
                let mut pairs = cookies::foreign_pairs(values);
                if let Some(first) = pairs.next() {
                    out.extend_from_slice(b"cookie: ");
                    out.extend_from_slice(first.as_bytes());
                    for pair in pairs {
                        out.extend_from_slice(b"; ");
                        out.extend_from_slice(pair.as_bytes());
                    }
                    out.extend_from_slice(b"\r\n");
                }
            }
            cookies_written = true;
            continue;
        }
        push_header(out, h.name.as_bytes(), h.value);
    }
    out.extend_from_slice(forwarded);
    push_header(out, b"x-forwarded-host", host);
}

/// The `X-Forwarded-For` and `X-Forwarded-Proto` lines of a connection: what the
/// gateway saw, never what the client claimed.
pub fn forwarded_lines(client_ip: IpAddr, proto: &str) -> Vec<u8> {
    format!("x-forwarded-for: {client_ip}\r\nx-forwarded-proto: {proto}\r\n").into_bytes()
}

pub fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
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

/// Removes every `Authorization` value that holds one of the gateway's bearers.
fn remove_our_bearers(headers: &mut HeaderMap) {
    let ours = |v: &HeaderValue| v.to_str().ok().and_then(bearer_value).is_some();
    if !headers.get_all(header::AUTHORIZATION).iter().any(ours) {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter(|v| !ours(v))
        .cloned()
        .collect();
    headers.remove(header::AUTHORIZATION);
    for value in kept {
        headers.append(header::AUTHORIZATION, value);
    }
}

/// Removes hop-by-hop headers and those named in `Connection` from a response.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    remove_headers(headers, is_hop_by_hop);
}

/// Removes, in one pass, every header for which `drop` is true and every header
/// named in `Connection`.
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

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::identity::Identity;

    fn identity() -> Identity {
        Identity {
            subject: "alice".into(),
            name: "Alice".into(),
            email: Some("alice@example.com".into()),
            provider: portcullis_core::identity::IdentityProvider::Basic,
            roles: vec!["admin".into(), "user".into()],
        }
    }

    fn rewrite<'a>(who: &'a Identity, id: &'a RequestId) -> UpstreamRewrite<'a> {
        UpstreamRewrite {
            identity: Some(who),
            client_ip: "192.0.2.7".parse().unwrap(),
            proto: "http",
            request_id: id,
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
            // Spelled with underscores: read as the same header by CGI-style servers.
            ("x_forwarded_user", "mallory", None),
            ("X_FORWARDED_GROUPS", "admin", None),
            ("x-forwarded_email", "mallory@evil", None),
            ("x_real_ip", "10.0.0.1", None),
            ("x_request_id", "forged", None),
            // Other client claims about address, scheme, host or path.
            ("x-forwarded-port", "443", None),
            ("x-forwarded-prefix", "/admin", None),
            ("x-forwarded-server", "evil", None),
            ("x-forwarded-ssl", "on", None),
            ("x-forwarded-scheme", "https", None),
            ("front-end-https", "on", None),
            ("x-url-scheme", "https", None),
            ("x-original-host", "evil", None),
            ("x-host", "evil", None),
            ("x-original-uri", "/admin", None),
            ("true-client-ip", "10.0.0.1", None),
            // Not ours: untouched.
            ("x-forwarded-thing", "kept", Some("kept")),
            (
                "authorization",
                "Bearer jupyter-own",
                Some("Bearer jupyter-own"),
            ),
        ];
        let id = RequestId::next();
        for (name, spoofed, expected) in rows {
            let mut headers = HeaderMap::new();
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static(spoofed),
            );
            rewrite(&identity(), &id).apply(&mut headers);
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
            assert_eq!(headers["x-request-id"], id.as_str(), "row {name}");
        }
    }

    #[test]
    fn the_byte_rendering_drops_what_the_map_rendering_drops() {
        let raw = b"GET /a?token=pct_x&b=1 HTTP/1.1\r\nhost: gw\r\nX_Forwarded_User: mallory\r\nx-forwarded-groups: admin\r\nforwarded: for=1.2.3.4\r\nx-kept: 1\r\ncookie: a=1; portcullis_session=v1.s; portcullis_csrf=c\r\ncookie: b=2\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut request = httparse::Request::new(&mut headers);
        request.parse(raw).unwrap();
        let mut out = Vec::new();
        render_head(
            &mut out,
            "GET",
            request.path.unwrap(),
            request.headers,
            &forwarded_lines("192.0.2.7".parse().unwrap(), "http"),
            b"gw",
        );
        let id = RequestId::next();
        rewrite(&identity(), &id).render_tail(&mut out);
        let text = String::from_utf8(out).unwrap();
        let expected = format!(
            "GET /a?b=1 HTTP/1.1\r\nhost: gw\r\nx-kept: 1\r\ncookie: a=1; b=2\r\n\
             x-forwarded-for: 192.0.2.7\r\nx-forwarded-proto: http\r\nx-forwarded-host: gw\r\n\
             x-forwarded-user: alice\r\nx-forwarded-email: alice@example.com\r\n\
             x-forwarded-groups: admin,user\r\nx-forwarded-preferred-username: Alice\r\n\
             x-request-id: {id}\r\n\r\n"
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn the_upstreams_authorization_stays_and_ours_never_passes() {
        let id = RequestId::next();
        // Whatever carrier authenticated: (Authorization values sent, received)
        let rows: [(&[&str], &[&str]); 4] = [
            (&["token upstream-own"], &["token upstream-own"]),
            (&["Bearer pct_abc"], &[]),
            (&["bearer pci_abc"], &[]),
            (
                &["Bearer upstream-own", "Bearer pct_abc"],
                &["Bearer upstream-own"],
            ),
        ];
        for (sent, received) in rows {
            let mut headers = HeaderMap::new();
            for value in sent {
                headers.append(header::AUTHORIZATION, HeaderValue::from_static(value));
            }
            rewrite(&identity(), &id).apply(&mut headers);
            let got: Vec<_> = headers
                .get_all(header::AUTHORIZATION)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            assert_eq!(got, received, "{sent:?}");
        }
    }

    #[test]
    fn gateway_credentials_leave_the_target() {
        // (target, carrier, forwarded)
        let rows = [
            ("/a", Some(Carrier::Cookie), "/a"),
            ("/a?token=pct_abc", Some(Carrier::Cookie), "/a"),
            ("/a?x=1&token=pci_abc&y=2", None, "/a?x=1&y=2"),
            ("/a?token=pct%5Fabc", Some(Carrier::Bearer), "/a"),
            (
                "/a?token=jupyter-own",
                Some(Carrier::Cookie),
                "/a?token=jupyter-own",
            ),
            ("/ws?ticket=t&a=1", Some(Carrier::Ticket), "/ws?a=1"),
            (
                "/ws?ticket=upstream-own",
                Some(Carrier::Cookie),
                "/ws?ticket=upstream-own",
            ),
            ("/ws?ticketx=1", Some(Carrier::Ticket), "/ws?ticketx=1"),
            ("/ws?ticket=1&ticket=2", Some(Carrier::Ticket), "/ws"),
            ("/a?%74oken=pct_abc&b=1", Some(Carrier::Cookie), "/a?b=1"),
            ("/a?b=1;token=pct_abc", Some(Carrier::Cookie), "/a"),
            ("/a?%74icket=t", Some(Carrier::Ticket), "/a"),
        ];
        for (target, carrier, expected) in rows {
            assert_eq!(upstream_target(target, carrier), expected, "{target}");
        }
        assert!(matches!(upstream_target("/a?b=1", None), Cow::Borrowed(_)));
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
        set_forward_auth_headers(&mut headers, Some(&who));
        // Present (forward auth always sends every header) but without the value.
        assert_eq!(headers.get("x-forwarded-preferred-username").unwrap(), "");
        assert_eq!(headers.get("x-forwarded-user").unwrap(), "alice");
        let id = RequestId::next();
        let mut out = Vec::new();
        rewrite(&who, &id).render_tail(&mut out);
        assert!(!String::from_utf8(out).unwrap().contains("root"));
    }

    #[test]
    fn ticket_parameter_is_read_and_stripped() {
        let rows = [
            ("/ws?ticket=abc", Some("abc"), "/ws"),
            ("/ws?a=1&ticket=abc&b=2", Some("abc"), "/ws?a=1&b=2"),
            ("/ws?ticketx=1", None, "/ws?ticketx=1"),
            ("/ws?ticket=a%2Db", Some("a-b"), "/ws"),
            ("/ws?ticket=1&ticket=2", Some("1"), "/ws"),
            ("/ws", None, "/ws"),
        ];
        for (uri, ticket, forwarded) in rows {
            let parsed: http::Uri = uri.parse().unwrap();
            assert_eq!(
                crate::carrier::query_param(&parsed, "ticket").as_deref(),
                ticket,
                "{uri}"
            );
            assert_eq!(
                upstream_target(uri, Some(Carrier::Ticket)),
                forwarded,
                "{uri}"
            );
        }
    }
}
