//! The validated runtime configuration of a gateway. Raw settings (flags,
//! environment, TOML) are parsed and checked by the binary; this is what remains
//! once every value is known to be sound.

use std::time::Duration;

use http::uri::{Authority, Scheme};
use portcullis_core::basic::BasicUsers;
use portcullis_core::session::SessionPolicy;

/// The externally visible origin of the gateway. It decides redirect targets, the
/// cookie `Secure` flag, and which `Origin`/`Host` values are accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    pub scheme: Scheme,
    pub authority: Authority,
}

impl PublicUrl {
    /// Parses `http(s)://host[:port]` (a trailing `/` is tolerated; paths are not).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let uri: http::Uri = raw
            .parse()
            .map_err(|e| format!("not a URL ({e}); expected e.g. https://dash.example.com"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or("missing scheme; use http:// or https://")?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(format!("scheme {scheme} is not http or https"));
        }
        let authority = uri.authority().cloned().ok_or("missing host")?;
        if authority.as_str().contains('@') {
            return Err("must not contain user info".into());
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(
                "must be an origin only (no path or query); Portcullis owns the whole host".into(),
            );
        }
        Ok(Self { scheme, authority })
    }

    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }

    /// `scheme://authority`, as browsers send it in `Origin`.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }
}

/// Where proxied requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
}

impl Upstream {
    /// Parses `http://host:port`. Only plain HTTP: the upstream is expected on
    /// loopback or a private network next to the gateway.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let uri: http::Uri = raw
            .parse()
            .map_err(|e| format!("not a URL ({e}); expected e.g. http://127.0.0.1:8888"))?;
        match uri.scheme() {
            Some(s) if *s == Scheme::HTTP => {}
            Some(s) => return Err(format!("scheme {s} is not supported; use http://")),
            None => return Err("missing scheme; use http://HOST:PORT".into()),
        }
        let authority = uri.authority().cloned().ok_or("missing host")?;
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err("must not have a path or query".into());
        }
        Ok(Self {
            scheme: Scheme::HTTP,
            authority,
        })
    }
}

/// `SameSite` attribute of the session and CSRF cookies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Lax,
    Strict,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
        }
    }
}

/// How a refused WebSocket upgrade is answered (SPEC 6.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsReject {
    /// HTTP 401 (no credential) or 403 (credential refused) on the upgrade.
    Status,
    /// Complete the handshake, then close with 4401 or 4403: browsers show scripts
    /// close codes but never the status of a failed upgrade.
    Close,
}

/// Login throttling, in attempts per minute (with an equal burst).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    pub per_ip_per_minute: u32,
    pub per_user_per_minute: u32,
}

impl Default for LoginLimits {
    fn default() -> Self {
        // Generous for people who mistype, ruinous for password guessing.
        Self {
            per_ip_per_minute: 30,
            per_user_per_minute: 10,
        }
    }
}

/// Everything a running gateway needs to know.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub upstream: Upstream,
    pub public_url: PublicUrl,
    /// Extra `Host` values accepted besides the public URL's (DNS-rebinding guard).
    pub allowed_hosts: Vec<String>,
    /// Path prefix of the gateway's own endpoints, e.g. `/.auth`.
    pub auth_prefix: String,
    /// The product name the gateway's pages show (`--brand-name`).
    pub brand_name: std::sync::Arc<str>,
    pub session: SessionPolicy,
    pub same_site: SameSite,
    pub basic_users: BasicUsers,
    /// `AUTH_BASIC_ADMINS` as given (the admin role, applied to a reloaded
    /// users file too).
    pub basic_admins: String,
    /// `--users-file`: where `basic_users` came from, reloaded on SIGHUP and
    /// when it changes.
    pub users_file: Option<std::path::PathBuf>,
    pub login_limits: LoginLimits,
    /// Concurrent argon2 verifications (each uses 64 MiB and one core).
    pub argon2_workers: usize,
    /// How long audit rows are kept (then swept in bounded batches).
    pub audit_retention: Duration,
    /// Time allowed for the upstream to start answering.
    pub upstream_timeout: Duration,
    /// Time a client has to send a request body (the gateway's endpoints: all of
    /// it; proxied uploads: plus what they earn at [`GatewayConfig::body_min_rate`]).
    pub body_timeout: Duration,
    /// How long a write to a client may wait (a client that stopped reading).
    pub write_timeout: Duration,
    /// Open connections allowed, in total and per client address.
    pub connections: crate::admission::ConnectionLimits,
    /// Bytes per second a proxied upload must keep up, on average, beyond
    /// [`GatewayConfig::body_timeout`].
    pub body_min_rate: u32,
    pub ws_reject: WsReject,
    /// Lifetime of WebSocket tickets.
    pub ws_ticket_ttl_ms: i64,
    /// Accept `?token=pct_…` on WebSocket upgrades (legacy clients).
    pub ws_query_token: bool,
    /// Close WebSockets older than this (clients reconnect and re-authenticate).
    pub ws_max_lifetime: Option<Duration>,
    /// Accept the internal credential from non-loopback peers (SPEC 6.3; off by
    /// default: the processes it is for run on the gateway's host).
    pub internal_credential_remote: bool,
    /// OpenID providers declared in the config file, reconciled into the database
    /// at start (SPEC 5).
    pub oidc_providers: Vec<OidcProviderSpec>,
    /// External clients declared in the config file, reconciled into the
    /// database at start (SPEC 7).
    pub clients: Vec<portcullis_core::client::ClientSpec>,
    /// Route rules (SPEC 8): which upstream requests need which identity.
    pub routes: portcullis_core::routes::RouteRules,
    /// Peers whose forwarding headers are believed (`--trusted-proxies`).
    pub trusted_proxies: portcullis_core::forwarded::TrustedProxies,
    /// Role to permission grants beyond the built-in ones.
    pub role_permissions: portcullis_core::identity::RolePermissions,
}

/// An OpenID provider as declared in configuration (validated).
#[derive(Debug, Clone)]
pub struct OidcProviderSpec {
    pub id: String,
    pub display_name: String,
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<portcullis_core::secret::SecretString>,
    pub scopes: Vec<String>,
    pub algorithms: Vec<String>,
    pub groups_claim: String,
    pub refuse_unmapped: bool,
    /// Forward e-mails the provider does not mark verified (default: dropped).
    pub accept_unverified_email: bool,
    /// The claim naming the user (default `sub`).
    pub user_claim: String,
    /// Before it in `X-Forwarded-User`; `None`: `<id>:`; `""`: disjoint namespaces.
    pub user_prefix: Option<String>,
}

impl GatewayConfig {
    /// A configuration with defaults around the required values.
    pub fn new(upstream: Upstream, public_url: PublicUrl) -> Self {
        Self {
            upstream,
            public_url,
            allowed_hosts: Vec::new(),
            auth_prefix: "/.auth".to_owned(),
            brand_name: crate::pages::DEFAULT_BRAND.into(),
            session: SessionPolicy::default(),
            same_site: SameSite::Lax,
            basic_users: BasicUsers::default(),
            basic_admins: String::new(),
            users_file: None,
            login_limits: LoginLimits::default(),
            // One core is left to the event loops whatever a login flood does.
            argon2_workers: std::thread::available_parallelism()
                .map_or(1, |n| n.get().saturating_sub(1).max(1)),
            audit_retention: DEFAULT_AUDIT_RETENTION,
            upstream_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(10),
            body_min_rate: 4096,
            connections: crate::admission::ConnectionLimits::default(),
            write_timeout: Duration::from_secs(60),
            ws_reject: WsReject::Status,
            ws_ticket_ttl_ms: portcullis_core::ticket::DEFAULT_TTL_MS,
            ws_query_token: true,
            ws_max_lifetime: None,
            internal_credential_remote: false,
            oidc_providers: Vec::new(),
            clients: Vec::new(),
            routes: portcullis_core::routes::RouteRules::default(),
            trusted_proxies: portcullis_core::forwarded::TrustedProxies::default(),
            role_permissions: portcullis_core::identity::RolePermissions::default(),
        }
    }
}

/// The default of `--audit-retention`: 90 days.
pub const DEFAULT_AUDIT_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

#[cfg(test)]
impl GatewayConfig {
    /// Defaults in front of an upstream on loopback, for unit tests.
    pub(crate) fn for_tests() -> Self {
        Self::new(
            Upstream::parse("http://127.0.0.1:9").unwrap_or_else(|e| unreachable!("{e}")),
            PublicUrl::parse("http://127.0.0.1:4180").unwrap_or_else(|e| unreachable!("{e}")),
        )
    }
}

/// A `--brand-name`: the product name every page shows, one line of at most
/// 64 characters (surrounding spaces dropped).
pub fn validate_brand(raw: &str) -> Result<std::sync::Arc<str>, String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.chars().any(char::is_control) {
        return Err("must be one line of text (no control characters)".into());
    }
    let max = crate::pages::MAX_BRAND_CHARS;
    if name.chars().count() > max {
        return Err(format!("at most {max} characters"));
    }
    Ok(name.into())
}

/// Checks an auth prefix: `/` followed by path characters, no trailing slash.
pub fn validate_prefix(prefix: &str) -> Result<(), String> {
    let ok = prefix.len() >= 2
        && prefix.starts_with('/')
        && !prefix.ends_with('/')
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'))
        && !prefix.contains("//");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{prefix:?} is not a valid prefix; use a path like /.auth (letters, digits, . _ - /, no trailing slash)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_url_rows() {
        let rows: &[(&str, bool)] = &[
            ("http://127.0.0.1:4180", true),
            ("https://dash.example.com", true),
            ("https://dash.example.com/", true),
            ("ftp://x", false),
            ("dash.example.com", false),
            ("https://dash.example.com/app", false),
            ("https://user@dash.example.com", false),
            ("", false),
        ];
        for (raw, ok) in rows {
            assert_eq!(PublicUrl::parse(raw).is_ok(), *ok, "{raw}");
        }
        assert_eq!(
            PublicUrl::parse("https://d.example:8443/")
                .unwrap()
                .origin(),
            "https://d.example:8443"
        );
    }

    #[test]
    fn upstream_rows() {
        let rows: &[(&str, bool)] = &[
            ("http://127.0.0.1:8888", true),
            ("http://localhost:8888/", true),
            ("https://127.0.0.1:8888", false),
            ("127.0.0.1:8888", false),
            ("http://127.0.0.1:8888/lab", false),
        ];
        for (raw, ok) in rows {
            assert_eq!(Upstream::parse(raw).is_ok(), *ok, "{raw}");
        }
    }

    #[test]
    fn prefix_rows() {
        for (p, ok) in [
            ("/.auth", true),
            ("/_gate/auth", true),
            ("/", false),
            (".auth", false),
            ("/.auth/", false),
            ("/a b", false),
            ("//auth", false),
        ] {
            assert_eq!(validate_prefix(p).is_ok(), ok, "{p}");
        }
    }
}
