//! Names and attributes of the gateway's cookies, and reading them from requests.
//!
//! With an https public URL every cookie at `Path=/` is set as `__Host-` + its
//! name (SPEC 4): browsers accept such a cookie only from the host itself, over
//! https, without `Domain`, so a sibling subdomain cannot plant one (cookie
//! tossing). The unprefixed names are still read, for one release of migration.
//! A credential cookie present with several values (under either name, in any
//! `Cookie` header) is ambiguous: it is used only if exactly one value verifies,
//! so a planted cookie beside the real one can never choose who the request is.

use http::HeaderMap;
use http::header::COOKIE;

use crate::config::GatewayConfig;

pub const SESSION_COOKIE: &str = "portcullis_session";
pub const CSRF_COOKIE: &str = "portcullis_csrf";
pub const PENDING_COOKIE: &str = "portcullis_oidc_pending";
/// A client session (magic link): beside the session cookie, so an operator
/// previewing a client's view keeps their own session.
pub const CLIENT_COOKIE: &str = "portcullis_client";

/// Cookies that belong to the gateway and are never forwarded upstream (under
/// either name).
pub const GATEWAY_COOKIES: [&str; 4] = [SESSION_COOKIE, CSRF_COOKIE, PENDING_COOKIE, CLIENT_COOKIE];

/// The prefix of cookies only the host itself may set (RFC 6265bis 4.1.3.2).
pub const HOST_PREFIX: &str = "__Host-";

/// The name cookie `base` is set under: `__Host-` + `base` when the public URL is
/// https.
pub fn name(config: &GatewayConfig, base: &str) -> String {
    if config.public_url.is_https() {
        format!("{HOST_PREFIX}{base}")
    } else {
        base.to_owned()
    }
}

/// Whether a cookie name is `base`, prefixed or not.
fn is_named(name: &str, base: &str) -> bool {
    name.strip_prefix(HOST_PREFIX).unwrap_or(name) == base
}

/// What a request holds of one credential cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held<'a> {
    None,
    One(&'a str),
    /// Different values (under one name or both): see [`Held::resolve`].
    Several(Vec<&'a str>),
}

impl<'a> Held<'a> {
    /// The value to authenticate with: the only one, or among several the only
    /// one `verifies` accepts (its signature); `None` when none or several do.
    pub fn resolve(self, verifies: impl Fn(&str) -> bool) -> Option<&'a str> {
        match self {
            Held::None => None,
            Held::One(value) => Some(value),
            Held::Several(values) => {
                let mut valid = values.into_iter().filter(|v| verifies(v));
                match (valid.next(), valid.next()) {
                    (Some(value), None) => Some(value),
                    _ => None,
                }
            }
        }
    }
}

/// Every value of credential cookie `base` (prefixed or not) across all `Cookie`
/// headers.
pub fn held<'a>(headers: &'a HeaderMap, base: &str) -> Held<'a> {
    held_from(headers.get_all(COOKIE).iter().map(|v| v.as_bytes()), base)
}

/// The credential cookies (session and client session), whose `__Host-` names,
/// when any is present, hide the unprefixed ones: a sibling subdomain can plant
/// an unprefixed cookie, never a `__Host-` one.
const CREDENTIAL_COOKIES: [&str; 2] = [SESSION_COOKIE, CLIENT_COOKIE];

/// One credential cookie's values as a request holds them, without allocating
/// unless a second, different value turns up.
#[derive(Debug, Default)]
struct Values<'a> {
    first: Option<&'a str>,
    others: Vec<&'a str>,
}

impl<'a> Values<'a> {
    fn add(&mut self, value: &'a str) {
        match self.first {
            None => self.first = Some(value),
            Some(seen) if seen == value => {}
            Some(_) if self.others.contains(&value) => {}
            Some(_) => self.others.push(value),
        }
    }

    fn held(self) -> Held<'a> {
        match self.first {
            None => Held::None,
            Some(value) if self.others.is_empty() => Held::One(value),
            Some(value) => {
                let mut all = self.others;
                all.insert(0, value);
                Held::Several(all)
            }
        }
    }
}

/// Every credential cookie of a request in one pass: per name, the values under
/// `__Host-` and those without, and whether any `__Host-` credential is present.
fn scan<'a>(values: impl Iterator<Item = &'a [u8]>) -> ([[Values<'a>; 2]; 2], bool) {
    let mut found: [[Values<'a>; 2]; 2] = Default::default();
    let mut prefixed = false;
    let pairs = values
        .filter_map(visible_ascii)
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='));
    for (name, value) in pairs {
        let (name, is_prefixed) = match name.strip_prefix(HOST_PREFIX) {
            Some(name) => (name, true),
            None => (name, false),
        };
        let Some(index) = CREDENTIAL_COOKIES.iter().position(|c| *c == name) else {
            continue;
        };
        prefixed |= is_prefixed;
        found[index][usize::from(is_prefixed)].add(value.trim_matches('"'));
    }
    (found, prefixed)
}

/// [`held`] over raw `Cookie` header values.
pub fn held_from<'a>(values: impl Iterator<Item = &'a [u8]>, base: &str) -> Held<'a> {
    let (found, prefixed) = scan(values);
    let Some(index) = CREDENTIAL_COOKIES.iter().position(|c| *c == base) else {
        return Held::None;
    };
    let [plain, with_prefix] = found.into_iter().nth(index).unwrap_or_default();
    if prefixed { with_prefix } else { plain }.held()
}

/// Both credential cookies in one pass, for the fast path: the client cookie's
/// value and the session cookie's; `Err` when either has several different
/// values (the general path then settles them by signature).
#[allow(clippy::result_unit_err)]
pub fn credential_pair<'a>(
    values: impl Iterator<Item = &'a [u8]>,
) -> Result<(Option<&'a str>, Option<&'a str>), ()> {
    let (found, prefixed) = scan(values);
    let [session, client] =
        found.map(
            |[plain, with_prefix]| match if prefixed { with_prefix } else { plain }.held() {
                Held::None => Ok(None),
                Held::One(value) => Ok(Some(value)),
                Held::Several(_) => Err(()),
            },
        );
    Ok((client?, session?))
}

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
            !GATEWAY_COOKIES.iter().any(|base| is_named(name, base))
        })
}

/// `Set-Cookie` value for a session-lifetime cookie `base` (named for the
/// configuration: [`name`]).
pub fn set(
    config: &GatewayConfig,
    base: &str,
    value: &str,
    max_age_secs: i64,
    http_only: bool,
) -> String {
    let name = name(config, base);
    set_named(config, &name, value, max_age_secs, http_only)
}

fn set_named(
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

/// `Set-Cookie` values that delete cookie `base`: under its name and, with the
/// `__Host-` prefix in use, under the old name too.
pub fn clear(config: &GatewayConfig, base: &str) -> Vec<String> {
    let mut out = vec![set(config, base, "", 0, true)];
    if config.public_url.is_https() {
        out.push(set_named(config, base, "", 0, true));
    }
    out
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
    fn a_credential_cookie_with_several_values_is_settled_by_signature() {
        // (Cookie headers, values whose signature verifies, expected)
        type Row<'a> = (&'a [&'a str], &'a [&'a str], Option<&'a str>);
        let rows: &[Row] = &[
            (&["a=1"], &[], None),
            (&["portcullis_session=A"], &[], Some("A")),
            (&["__Host-portcullis_session=A"], &[], Some("A")),
            (
                &["__Host-portcullis_session=A; portcullis_session=A"],
                &[],
                Some("A"),
            ),
            (
                &["portcullis_session=A", "portcullis_session=A"],
                &[],
                Some("A"),
            ),
            (
                &["portcullis_session=B; portcullis_session=A"],
                &["A", "B"],
                None,
            ),
            (
                // A `__Host-` cookie hides unprefixed ones (a subdomain can
                // plant those), of either credential.
                &["portcullis_session=B", "__Host-portcullis_session=A"],
                &["A", "B"],
                Some("A"),
            ),
            (
                &["portcullis_session=B; __Host-portcullis_client=C"],
                &["B"],
                None,
            ),
            (
                &["__Host-portcullis_session=A; __Host-portcullis_session=B"],
                &["A", "B"],
                None,
            ),
            (
                &["portcullis_session=junk; __Host-portcullis_session=A"],
                &["A"],
                Some("A"),
            ),
            (
                &["portcullis_session=A; portcullis_session=junk"],
                &["A"],
                Some("A"),
            ),
            (&["portcullis_session=x; portcullis_session=y"], &[], None),
            (&["__Host-portcullis_sessionx=A"], &[], None),
            (&["__host-portcullis_session=A"], &[], None),
        ];
        for (headers, valid, expected) in rows {
            let mut map = HeaderMap::new();
            for value in *headers {
                map.append(COOKIE, HeaderValue::from_str(value).unwrap());
            }
            let found = held(&map, SESSION_COOKIE).resolve(|v| valid.contains(&v));
            assert_eq!(found, *expected, "{headers:?}");
        }
    }

    #[test]
    fn the_fast_paths_single_pass_agrees_with_held() {
        let rows: &[&[&str]] = &[
            &["a=1"],
            &["portcullis_session=A"],
            &["__Host-portcullis_session=A; portcullis_client=C"],
            &[
                "portcullis_session=A; portcullis_session=A",
                "portcullis_client=C",
            ],
            &["portcullis_session=A; portcullis_session=B"],
            &["portcullis_client=C", "__Host-portcullis_client=D"],
            &["portcullis_sessionx=1; xportcullis_session=2"],
            &["portcullis_client=C; __Host-portcullis_session=A"],
        ];
        for headers in rows {
            let values = || headers.iter().map(|h| h.as_bytes());
            let one = |base| match held_from(values(), base) {
                Held::None => Ok(None),
                Held::One(v) => Ok(Some(v)),
                Held::Several(_) => Err(()),
            };
            let expected = match (one(CLIENT_COOKIE), one(SESSION_COOKIE)) {
                (Ok(client), Ok(session)) => Ok((client, session)),
                _ => Err(()),
            };
            assert_eq!(credential_pair(values()), expected, "{headers:?}");
        }
        // A planted unprefixed client cookie never outranks a `__Host-` session.
        let planted = ["portcullis_client=C; __Host-portcullis_session=A"];
        assert_eq!(
            credential_pair(planted.iter().map(|h| h.as_bytes())),
            Ok((None, Some("A")))
        );
    }

    #[test]
    fn names_carry_the_host_prefix_over_https() {
        let mut config = GatewayConfig::for_tests();
        assert_eq!(name(&config, SESSION_COOKIE), "portcullis_session");
        assert_eq!(clear(&config, SESSION_COOKIE).len(), 1);
        config.public_url = crate::config::PublicUrl::parse("https://dash.example.com").unwrap();
        assert_eq!(name(&config, SESSION_COOKIE), "__Host-portcullis_session");
        let set = set(&config, CSRF_COOKIE, "v", 60, false);
        assert!(
            set.starts_with("__Host-portcullis_csrf=v; Path=/;"),
            "{set}"
        );
        assert!(set.contains("; Secure") && !set.contains("Domain"), "{set}");
        let cleared = clear(&config, SESSION_COOKIE);
        assert!(cleared[0].starts_with("__Host-portcullis_session=;"));
        assert!(cleared[1].starts_with("portcullis_session=;"));
    }

    #[test]
    fn gateway_cookies_are_stripped_and_others_kept() {
        let rows: &[(&[&str], Option<&str>)] = &[
            (&["a=1; portcullis_session=v1.x; b=2"], Some("a=1; b=2")),
            (&["portcullis_session=x; portcullis_csrf=y"], None),
            (&["portcullis_session=x", "c=3"], Some("c=3")),
            (&["a=1;;b=2"], Some("a=1; b=2")),
            (&["portcullis_sessionx=1"], Some("portcullis_sessionx=1")),
            (&[" portcullis_oidc_pending=p ;z=9"], Some("z=9")),
            (&["__Host-portcullis_session=x; a=1"], Some("a=1")),
            (
                &["__Host-portcullis_csrf=y", "__Host-portcullis_client=z"],
                None,
            ),
            (&["__Host-other=1"], Some("__Host-other=1")),
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
