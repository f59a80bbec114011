//! Names and attributes of the gateway's cookies, and reading them from requests.

use http::HeaderMap;
use http::header::COOKIE;

use crate::config::GatewayConfig;

pub const SESSION_COOKIE: &str = "portcullis_session";
pub const CSRF_COOKIE: &str = "portcullis_csrf";
pub const PENDING_COOKIE: &str = "portcullis_oidc_pending";
/// A client session (magic link): beside the session cookie, so an operator
/// previewing a client's view keeps their own session.
pub const CLIENT_COOKIE: &str = "portcullis_client";

/// Cookies that belong to the gateway and are never forwarded upstream.
pub const GATEWAY_COOKIES: [&str; 4] = [SESSION_COOKIE, CSRF_COOKIE, PENDING_COOKIE, CLIENT_COOKIE];

/// What a request's cookie credential is wanted for, which decides between a
/// client session and a session when a browser holds both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// The upstream (proxying, upgrades, forward auth, WebSocket tickets): the
    /// client session, so a previewing operator sees what the client sees.
    Upstream,
    /// The gateway's own pages and API: the operator's own session.
    Gateway,
}

/// The cookie value that authenticates a request for `audience`, from the client
/// cookie's and the session cookie's values: the preferred one if present, else
/// the other.
pub fn pick<'a>(
    client: Option<&'a str>,
    session: Option<&'a str>,
    audience: Audience,
) -> Option<&'a str> {
    match audience {
        Audience::Upstream => client.or(session),
        Audience::Gateway => session.or(client),
    }
}

/// The first value of cookie `name` across all `Cookie` headers.
pub fn read<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    read_from(headers.get_all(COOKIE).iter().map(|v| v.as_bytes()), name)
}

/// [`read`] over raw `Cookie` header values; values that are not text are skipped.
pub fn read_from<'a>(values: impl Iterator<Item = &'a [u8]>, name: &str) -> Option<&'a str> {
    values
        .filter_map(visible_ascii)
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// The value as text if it is visible ASCII (what `HeaderValue::to_str` accepts);
/// other values are skipped, never guessed at.
fn visible_ascii(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|b| *b == b'\t' || (0x20..0x7f).contains(b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// The `name=value` pairs of raw `Cookie` header values that are not the
/// gateway's, in order.
pub fn foreign_pairs<'a>(values: impl Iterator<Item = &'a [u8]>) -> impl Iterator<Item = &'a str> {
    values
        .filter_map(visible_ascii)
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or_default().trim();
            !GATEWAY_COOKIES.contains(&name)
        })
}

/// `Set-Cookie` value for a session-lifetime cookie.
pub fn set(
    config: &GatewayConfig,
    name: &str,
    value: &str,
    max_age_secs: i64,
    http_only: bool,
) -> String {
    let mut out = format!(
        "{name}={value}; Path=/; Max-Age={}; SameSite={}",
        max_age_secs.max(0),
        config.same_site.as_str()
    );
    if http_only {
        out.push_str("; HttpOnly");
    }
    if config.public_url.is_https() {
        out.push_str("; Secure");
    }
    out
}

/// `Set-Cookie` value that deletes cookie `name`.
pub fn clear(config: &GatewayConfig, name: &str) -> String {
    set(config, name, "", 0, true)
}

/// The `Cookie` header with the gateway's own cookies removed (`None` if nothing
/// else remains).
pub fn without_gateway_cookies(headers: &HeaderMap) -> Option<String> {
    without_gateway_cookies_in(headers.get_all(COOKIE).iter().map(|v| v.as_bytes()))
}

/// [`without_gateway_cookies`] over raw `Cookie` header values.
pub fn without_gateway_cookies_in<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<String> {
    let kept: Vec<&str> = foreign_pairs(values).collect();
    if kept.is_empty() {
        None
    } else {
        Some(kept.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn gateway_cookies_are_stripped_and_others_kept() {
        let rows: &[(&[&str], Option<&str>)] = &[
            (&["a=1; portcullis_session=v1.x; b=2"], Some("a=1; b=2")),
            (&["portcullis_session=x; portcullis_csrf=y"], None),
            (&["portcullis_session=x", "c=3"], Some("c=3")),
            (&["a=1;;b=2"], Some("a=1; b=2")),
            (&["portcullis_sessionx=1"], Some("portcullis_sessionx=1")),
            (&[" portcullis_oidc_pending=p ;z=9"], Some("z=9")),
        ];
        for (input, expected) in rows {
            let mut headers = HeaderMap::new();
            for value in *input {
                headers.append(COOKIE, HeaderValue::from_str(value).unwrap());
            }
            assert_eq!(
                without_gateway_cookies(&headers).as_deref(),
                *expected,
                "{input:?}"
            );
        }
    }

    #[test]
    fn read_finds_first_value() {
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            HeaderValue::from_static("a=1; portcullis_session=abc"),
        );
        headers.append(COOKIE, HeaderValue::from_static("portcullis_session=def"));
        assert_eq!(read(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(read(&headers, "missing"), None);
    }
}
