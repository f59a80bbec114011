//! Which requests the gateway serves at all: the `Host` allow-list (DNS-rebinding
//! defence) and the split between the gateway's own paths and the upstream's.

use axum::http::{HeaderMap, Uri, header};

use crate::config::GatewayConfig;
use crate::error::GatewayError;
use crate::state::Gateway;

/// Whether `path` belongs to the gateway rather than the upstream.
pub(crate) fn is_own_path(prefix: &str, path: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The host a request was made for: its `Host` header, or the authority of an
/// absolute-form target.
pub(crate) fn request_host<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

/// Refuses a `Host` that is not the public host or an allowed one (DNS rebinding
/// defence). Health endpoints are exempt: orchestrators probe them by IP.
/// A trusted proxy's forward-auth call is exempt too: its `Host` names the
/// gateway as the proxy reaches it (Traefik), and the original host it asks about
/// is checked by `/verify` itself.
pub(crate) fn check_host(
    gw: &Gateway,
    headers: &HeaderMap,
    uri: &Uri,
    relayed: bool,
) -> Result<(), GatewayError> {
    let config = gw.config();
    let exempt = uri
        .path()
        .strip_prefix(config.auth_prefix.as_str())
        .is_some_and(|rest| {
            rest == "/healthz" || rest == "/readyz" || (relayed && rest == "/verify")
        });
    if exempt {
        return Ok(());
    }
    // RFC 9112 section 3.2: more than one Host is a bad request, and which of them
    // a later hop would believe is anyone's guess.
    let mut hosts = headers.get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(GatewayError::HostNotAllowed);
    }
    let host = first
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()));
    match host {
        Some(host) if host_allowed(gw.config(), host) => Ok(()),
        other => {
            log_refusal("host", other.unwrap_or(""));
            Err(GatewayError::HostNotAllowed)
        }
    }
}

/// Whether `origin` (an `Origin` header, or the scheme-and-host part of a
/// `Referer`) is the public URL's or an `--allowed-hosts` alias's, with the
/// public URL's scheme.
pub(crate) fn origin_allowed(gw: &Gateway, origin: &[u8]) -> bool {
    let config = gw.config();
    if origin == config.public_url.origin().as_bytes() {
        return true;
    }
    let scheme = if config.public_url.is_https() {
        "https://"
    } else {
        "http://"
    };
    std::str::from_utf8(origin)
        .ok()
        .and_then(|o| o.strip_prefix(scheme))
        .is_some_and(|host| {
            config
                .allowed_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(host))
        })
}

/// Says, at most once every ten seconds (a scanner's random `Host` values must
/// not flood the log), which setting would admit a refused host or origin.
pub(crate) fn log_refusal(what: &str, value: &str) {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if !once_in_ten_seconds(&LAST) {
        return;
    }
    let value: String = value
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    tracing::warn!(
        "refused a request for {what} {value:?}: if it is how users reach this gateway, \
         set --public-url to it or add it to --allowed-hosts"
    );
}

/// Whether a log line kept in `last` (seconds since the epoch of its last
/// writing) is due again: at most once every ten seconds, so a flood of refusals
/// cannot flood the log.
pub(crate) fn once_in_ten_seconds(last: &std::sync::atomic::AtomicU64) -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let seen = last.load(Relaxed);
    now.saturating_sub(seen) >= 10 && last.compare_exchange(seen, now, Relaxed, Relaxed).is_ok()
}

pub(crate) fn host_allowed(config: &GatewayConfig, host: &str) -> bool {
    let public = config.public_url.authority.as_str();
    let default_port = if config.public_url.is_https() {
        443
    } else {
        80
    };
    let public_without_default_port = match config.public_url.authority.port_u16() {
        Some(port) if port == default_port => config.public_url.authority.host(),
        _ => public,
    };
    host.eq_ignore_ascii_case(public)
        || host.eq_ignore_ascii_case(public_without_default_port)
        || config
            .allowed_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_paths() {
        for (path, own) in [
            ("/.auth", true),
            ("/.auth/login", true),
            ("/.authx", false),
            ("/.auth.json", false),
            ("/", false),
            ("/x/.auth/login", false),
        ] {
            assert_eq!(is_own_path("/.auth", path), own, "{path}");
        }
    }
}
