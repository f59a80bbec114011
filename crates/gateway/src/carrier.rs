//! Where a request's credential may ride, in the one order SPEC 6 fixes. The table
//! [`CARRIERS`] is the only statement of that order: the general path, WebSocket
//! upgrades, the fast path (which takes a request only when the cookie is the
//! carrier the table picks) and `GET {prefix}/capabilities` all read it.
//!
//! Only the first carrier present is examined ("only if there are no credentials
//! in bearer, do we examine cookies"): a request never falls back from a refused
//! credential to another carrier. Within the cookie carrier, a client session's
//! cookie that is refused gives way to the session cookie beside it
//! ([`crate::cookies::pick`] orders the two).

use std::borrow::Cow;

use http::{HeaderMap, Uri, header};
use portcullis_core::subprotocol::Offer;

use crate::config::GatewayConfig;
use crate::cookies::{self, Audience, CLIENT_COOKIE, SESSION_COOKIE};

/// What carried the credential that authenticated a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// `?ticket=T`: a single-use WebSocket ticket (SPEC 6.1).
    Ticket,
    /// A bearer in `Sec-WebSocket-Protocol` (Jupyter JEP 121, SPEC 6.2).
    Subprotocol,
    /// `Authorization: Bearer` holding one of the gateway's own credentials.
    Bearer,
    /// `?token=T` holding one of the gateway's own credentials (legacy).
    QueryToken,
    /// The session cookie: the one ambient credential, sent by browsers on their
    /// own, so only it needs CSRF tokens and an allowed `Origin` on upgrades.
    Cookie,
}

/// One row of the carrier table.
#[derive(Debug, Clone, Copy)]
pub struct CarrierRule {
    pub carrier: Carrier,
    /// Accepted on WebSocket upgrades only (URL and subprotocol credentials would
    /// otherwise leak into logs, histories and `Referer` of ordinary pages).
    pub upgrades_only: bool,
}

/// The carrier order of SPEC 6, first match wins.
pub const CARRIERS: [CarrierRule; 5] = [
    CarrierRule {
        carrier: Carrier::Ticket,
        upgrades_only: true,
    },
    CarrierRule {
        carrier: Carrier::Subprotocol,
        upgrades_only: true,
    },
    CarrierRule {
        carrier: Carrier::Bearer,
        upgrades_only: false,
    },
    CarrierRule {
        carrier: Carrier::QueryToken,
        upgrades_only: true,
    },
    CarrierRule {
        carrier: Carrier::Cookie,
        upgrades_only: false,
    },
];

impl Carrier {
    /// The name `GET {prefix}/capabilities` and the access log use.
    pub fn scheme(self) -> &'static str {
        match self {
            Carrier::Ticket => "ticket",
            Carrier::Subprotocol => "jep121-subprotocol",
            Carrier::Bearer => "authorization-bearer",
            Carrier::QueryToken => "query-token",
            Carrier::Cookie => "cookie",
        }
    }

    /// Sent by a browser on its own with any request, cross-site ones included.
    pub fn is_ambient(self) -> bool {
        self == Carrier::Cookie
    }

    /// Whether this gateway's configuration accepts the carrier at all.
    fn enabled(self, config: &GatewayConfig) -> bool {
        self != Carrier::QueryToken || config.ws_query_token
    }
}

/// The carriers a request may use, in order, as this gateway is configured.
pub fn carriers(config: &GatewayConfig, upgrade: bool) -> impl Iterator<Item = Carrier> + '_ {
    CARRIERS
        .iter()
        .filter(move |rule| upgrade || !rule.upgrades_only)
        .map(|rule| rule.carrier)
        .filter(|carrier| carrier.enabled(config))
}

/// The first carrier present in a request, by [`CARRIERS`]; `present` says whether
/// a request holds a credential in a carrier. The fast path uses this directly on
/// what it parsed; everything else goes through [`find`].
pub fn select(
    config: &GatewayConfig,
    upgrade: bool,
    mut present: impl FnMut(Carrier) -> bool,
) -> Option<Carrier> {
    carriers(config, upgrade).find(|carrier| present(*carrier))
}

/// Whether a bearer value is one of the gateway's (an API token `pct_…` or the
/// internal credential `pci_…`) rather than the upstream's.
pub fn is_portcullis_bearer(token: &str) -> bool {
    token.starts_with(portcullis_core::ticket::API_TOKEN_PREFIX)
        || token.starts_with(portcullis_core::internal::PREFIX)
}

/// The `Authorization: Bearer` value if it is one of ours. Other values belong to
/// the upstream and pass through untouched.
/// Every `Authorization` header is looked at (as the fast path does), so a second
/// one cannot hide a credential of ours.
pub fn portcullis_bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .find_map(|value| bearer_value(value.to_str().ok()?))
}

/// The token of an `Authorization` value `Bearer <token>` if it is one of ours.
/// The scheme is matched in any case and separated by any run of spaces or tabs
/// (servers behind the gateway accept those spellings, so the gateway does too:
/// what it recognises, it also removes).
pub fn bearer_value(value: &str) -> Option<&str> {
    const WHITESPACE: [char; 2] = [' ', '\t'];
    let value = value.trim_matches(WHITESPACE);
    let (scheme, token) = value.split_at(value.find(WHITESPACE)?);
    let token = token.trim_matches(WHITESPACE);
    (scheme.eq_ignore_ascii_case("bearer") && is_portcullis_bearer(token)).then_some(token)
}

/// The first value of query parameter `name`, percent-decoded.
pub fn query_param<'a>(uri: &'a Uri, name: &str) -> Option<Cow<'a, str>> {
    uri.query()?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| percent_encoding::percent_decode_str(value).decode_utf8_lossy())
}

/// What a request presents: the credential of the first carrier present.
pub struct Presented<'a> {
    pub carrier: Carrier,
    pub value: Cow<'a, str>,
}

impl std::fmt::Debug for Presented<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The value is a credential: never printed.
        f.debug_struct("Presented")
            .field("carrier", &self.carrier)
            .field("value", &"[redacted]")
            .finish()
    }
}

/// The credential a request presents, reading [`CARRIERS`] in order. `offer` is
/// the parsed `Sec-WebSocket-Protocol` of an upgrade (`None` for other requests);
/// `audience` picks between a client session's cookie and the session cookie, and
/// `verifies` (a signature check) settles a cookie present with several values.
pub fn find<'a>(
    config: &GatewayConfig,
    headers: &'a HeaderMap,
    uri: &'a Uri,
    offer: Option<&'a Offer>,
    audience: Audience,
    verifies: &dyn Fn(&str) -> bool,
) -> Option<Presented<'a>> {
    carriers(config, offer.is_some()).find_map(|carrier| {
        let value: Cow<'a, str> = match carrier {
            Carrier::Ticket => query_param(uri, "ticket")?,
            Carrier::Subprotocol => Cow::Borrowed(offer?.token.as_deref()?),
            Carrier::Bearer => Cow::Borrowed(portcullis_bearer(headers)?),
            Carrier::QueryToken => {
                query_param(uri, "token").filter(|token| is_portcullis_bearer(token))?
            }
            Carrier::Cookie => Cow::Borrowed(cookies::pick(
                cookies::held(headers, CLIENT_COOKIE).resolve(verifies),
                cookies::held(headers, SESSION_COOKIE).resolve(verifies),
                audience,
            )?),
        };
        Some(Presented { carrier, value })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_presented_credential_never_prints() {
        let presented = Presented {
            carrier: Carrier::Bearer,
            value: Cow::Borrowed("pct_secret-value"),
        };
        let printed = format!("{presented:?}");
        assert!(!printed.contains("secret-value"), "{printed}");
        let primed = crate::pipeline::authenticate::Primed::new(
            "v1.ses-secret.sk.mac",
            Ok(Err(crate::pipeline::authenticate::Refusal::SessionEnded)),
        );
        let printed = format!("{primed:?}");
        assert!(!printed.contains("ses-secret"), "{printed}");
    }

    #[test]
    fn order_is_spec_6_and_plain_requests_use_bearer_then_cookie() {
        let config = GatewayConfig::for_tests();
        let upgrade: Vec<_> = carriers(&config, true).map(Carrier::scheme).collect();
        assert_eq!(
            upgrade,
            [
                "ticket",
                "jep121-subprotocol",
                "authorization-bearer",
                "query-token",
                "cookie"
            ]
        );
        let plain: Vec<_> = carriers(&config, false).collect();
        assert_eq!(plain, [Carrier::Bearer, Carrier::Cookie]);
        let mut off = GatewayConfig::for_tests();
        off.ws_query_token = false;
        assert!(!carriers(&off, true).any(|c| c == Carrier::QueryToken));
    }

    #[test]
    fn the_first_carrier_present_is_the_one_examined() {
        let config = GatewayConfig::for_tests();
        let cookie = format!("{SESSION_COOKIE}=v1.ses-x.sk-y.mac");
        // (name, uri, headers, upgrade, expected carrier and value)
        type Row<'a> = (
            &'a str,
            &'a str,
            &'a [(&'a str, &'a str)],
            bool,
            Option<(Carrier, &'a str)>,
        );
        let rows: &[Row] = &[
            ("nothing", "/", &[], false, None),
            (
                "cookie",
                "/",
                &[("cookie", &cookie)],
                false,
                Some((Carrier::Cookie, "v1.ses-x.sk-y.mac")),
            ),
            (
                "bearer before cookie",
                "/",
                &[("authorization", "Bearer pct_abc"), ("cookie", &cookie)],
                false,
                Some((Carrier::Bearer, "pct_abc")),
            ),
            (
                "the upstream's bearer is no carrier",
                "/",
                &[("authorization", "Bearer jupyter-own"), ("cookie", &cookie)],
                false,
                Some((Carrier::Cookie, "v1.ses-x.sk-y.mac")),
            ),
            (
                "our bearer in a second Authorization header",
                "/",
                &[
                    ("authorization", "Bearer jupyter-own"),
                    ("authorization", "Bearer pct_abc"),
                    ("cookie", &cookie),
                ],
                false,
                Some((Carrier::Bearer, "pct_abc")),
            ),
            (
                "a ticket on a plain request is the upstream's",
                "/?ticket=abc",
                &[],
                false,
                None,
            ),
            (
                "our query token on a plain request is no carrier",
                "/?token=pct_abc",
                &[],
                false,
                None,
            ),
            (
                "ticket first on upgrades",
                "/ws?token=pct_q&ticket=t%2D1",
                &[("authorization", "Bearer pct_abc")],
                true,
                Some((Carrier::Ticket, "t-1")),
            ),
            (
                "bearer before query token",
                "/ws?token=pct_q",
                &[("authorization", "Bearer pct_abc")],
                true,
                Some((Carrier::Bearer, "pct_abc")),
            ),
            (
                "query token before cookie",
                "/ws?token=pct_q",
                &[("cookie", &cookie)],
                true,
                Some((Carrier::QueryToken, "pct_q")),
            ),
            (
                "the upstream's query token is no carrier",
                "/ws?token=jupyter-own",
                &[("cookie", &cookie)],
                true,
                Some((Carrier::Cookie, "v1.ses-x.sk-y.mac")),
            ),
        ];
        for (name, uri, headers, upgrade, expected) in rows {
            let uri: Uri = uri.parse().unwrap();
            let mut map = HeaderMap::new();
            for (k, v) in *headers {
                map.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            let offer = Offer::default();
            let found = find(
                &config,
                &map,
                &uri,
                upgrade.then_some(&offer),
                Audience::Upstream,
                &|_| true,
            );
            let found = found.as_ref().map(|p| (p.carrier, p.value.as_ref()));
            assert_eq!(found, *expected, "row {name}");
        }
    }

    #[test]
    fn every_spelling_of_our_bearer_is_recognised() {
        let rows: &[(&str, Option<&str>)] = &[
            ("Bearer pct_abc", Some("pct_abc")),
            ("bearer pct_abc", Some("pct_abc")),
            ("BEARER   pct_abc  ", Some("pct_abc")),
            ("Bearer\tpct_abc", Some("pct_abc")),
            ("Bearer \t pci_abc", Some("pci_abc")),
            ("Bearer pct_abc\t", Some("pct_abc")),
            ("Bearer jupyter-own", None),
            ("Basic pct_abc", None),
            ("Bearerpct_abc", None),
            ("pct_abc", None),
            ("", None),
        ];
        for (value, expected) in rows {
            assert_eq!(bearer_value(value), *expected, "{value:?}");
        }
    }

    #[test]
    fn a_client_session_is_the_upstream_credential_and_a_session_the_gateway_one() {
        let config = GatewayConfig::for_tests();
        let uri = Uri::from_static("/");
        // (cookies, audience, expected value)
        let rows: &[(&str, Audience, Option<&str>)] = &[
            ("portcullis_client=c", Audience::Upstream, Some("c")),
            ("portcullis_client=c", Audience::Gateway, Some("c")),
            ("portcullis_session=s", Audience::Upstream, Some("s")),
            ("portcullis_session=s", Audience::Gateway, Some("s")),
            (
                "portcullis_session=s; portcullis_client=c",
                Audience::Upstream,
                Some("c"),
            ),
            (
                "portcullis_client=c; portcullis_session=s",
                Audience::Gateway,
                Some("s"),
            ),
            ("other=1", Audience::Upstream, None),
        ];
        for (cookie, audience, expected) in rows {
            let mut map = HeaderMap::new();
            map.append(header::COOKIE, cookie.parse().unwrap());
            let found = find(&config, &map, &uri, None, *audience, &|_| true);
            let found = found.as_ref().map(|p| p.value.as_ref());
            assert_eq!(found, *expected, "{cookie} for {audience:?}");
        }
    }
}
