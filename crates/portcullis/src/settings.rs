//! Configuration in two stages. [`RawSettings`] is what flags, `PORTCULLIS_*`
//! environment variables and the TOML file say (every field optional, unknown TOML
//! keys refused); [`RawSettings::resolve`] checks all of it at once and produces the
//! validated runtime configuration, or the full list of problems.
//!
//! Precedence: flag > environment > file > default. clap merges flag and
//! environment; the file fills what both left unset.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use clap::Args;
use portcullis_core::basic::BasicUsers;
use portcullis_core::client::ClientSpec;
use portcullis_core::forwarded::TrustedProxies;
use portcullis_core::identity::RolePermissions;
use portcullis_core::keys::SecretKey;
use portcullis_core::routes::{RouteRules, RouteSpec};
use portcullis_core::secret::{Key32, SecretString};
use portcullis_core::session::SessionPolicy;
use portcullis_gateway::config::{LoginLimits, validate_brand, validate_prefix};
use portcullis_gateway::{
    GatewayConfig, OidcProviderSpec, PublicUrl, SameSite, Upstream, WsReject,
};
use serde::Deserialize;

/// Settings shared by every command. Each has a flag, an environment variable and a
/// TOML key of the same name (with `_` for `-`).
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    /// Address to listen on [default: 127.0.0.1:4180]
    #[arg(long, env = "PORTCULLIS_LISTEN", global = true)]
    pub listen: Option<String>,
    /// Address serving Prometheus metrics at GET /metrics [default: none, no metrics]
    #[arg(long, env = "PORTCULLIS_METRICS_LISTEN", global = true)]
    pub metrics_listen: Option<String>,
    /// Upstream application, e.g. http://127.0.0.1:8888
    #[arg(long, env = "PORTCULLIS_UPSTREAM", global = true)]
    pub upstream: Option<String>,
    /// Public origin users reach, e.g. https://dash.example.com [default: http://<listen>]
    #[arg(long, env = "PORTCULLIS_PUBLIC_URL", global = true)]
    pub public_url: Option<String>,
    /// Database URL: sqlite://PATH or postgres://… [default: sqlite://<data-dir>/portcullis.db]
    #[arg(long, env = "PORTCULLIS_DATABASE", global = true)]
    pub database: Option<String>,
    /// Directory for the SQLite database and generated secret key
    #[arg(long, env = "PORTCULLIS_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// File holding the base64 32-byte secret key (or set PORTCULLIS_SECRET_KEY)
    #[arg(long, global = true)]
    pub secret_key_file: Option<PathBuf>,
    /// Path prefix of the gateway's own endpoints [default: /.auth]
    #[arg(long, env = "PORTCULLIS_AUTH_PREFIX", global = true)]
    pub auth_prefix: Option<String>,
    /// Product name shown on the sign-in and other pages [default: Portcullis]
    #[arg(long, env = "PORTCULLIS_BRAND_NAME", global = true)]
    pub brand_name: Option<String>,
    /// Extra Host header values to accept, comma-separated
    #[arg(
        long,
        env = "PORTCULLIS_ALLOWED_HOSTS",
        value_delimiter = ',',
        global = true
    )]
    pub allowed_hosts: Option<Vec<String>>,
    /// Absolute session lifetime, e.g. 8h [default: 8h]
    #[arg(long, env = "PORTCULLIS_SESSION_TTL", global = true)]
    pub session_ttl: Option<String>,
    /// End sessions idle this long, e.g. 30m [default: none]
    #[arg(long, env = "PORTCULLIS_SESSION_IDLE_TIMEOUT", global = true)]
    pub session_idle_timeout: Option<String>,
    /// SameSite attribute of session cookies: lax or strict [default: lax]
    #[arg(long, env = "PORTCULLIS_COOKIE_SAMESITE", global = true)]
    pub cookie_samesite: Option<String>,
    /// Login attempts allowed per client IP per minute [default: 30]
    #[arg(long, env = "PORTCULLIS_LOGIN_RATE_PER_IP", global = true)]
    pub login_rate_per_ip: Option<u32>,
    /// Login attempts allowed per username per minute [default: 10]
    #[arg(long, env = "PORTCULLIS_LOGIN_RATE_PER_USER", global = true)]
    pub login_rate_per_user: Option<u32>,
    /// How long a request may wait for the database before it fails closed with
    /// 503 (a connection, and the session and token reads) [default: 2s]
    #[arg(long, env = "PORTCULLIS_DB_TIMEOUT", global = true)]
    pub db_timeout: Option<String>,
    /// How long audit events are kept; older ones are deleted in small batches
    /// [default: 90d]
    #[arg(long, env = "PORTCULLIS_AUDIT_RETENTION", global = true)]
    pub audit_retention: Option<String>,
    /// Time the upstream may take to start answering, e.g. 60s [default: 60s]
    #[arg(long, env = "PORTCULLIS_UPSTREAM_TIMEOUT", global = true)]
    pub upstream_timeout: Option<String>,
    /// Time a client has to send a request body: all of it for the gateway's own
    /// endpoints, plus what a proxied upload earns at --body-min-rate [default: 10s]
    #[arg(long, env = "PORTCULLIS_BODY_TIMEOUT", global = true)]
    pub body_timeout: Option<String>,
    /// Bytes per second a proxied upload must keep up on average [default: 4096]
    #[arg(long, env = "PORTCULLIS_BODY_MIN_RATE", global = true)]
    pub body_min_rate: Option<u32>,
    /// How long a write to a client that stopped reading may wait before the
    /// connection closes [default: 60s]
    #[arg(long, env = "PORTCULLIS_WRITE_TIMEOUT", global = true)]
    pub write_timeout: Option<String>,
    /// Open connections allowed in total; more are refused at once [default: what
    /// the file-descriptor limit allows, logged at start]
    #[arg(long, env = "PORTCULLIS_MAX_CONNECTIONS", global = true)]
    pub max_connections: Option<usize>,
    /// Open connections allowed from one client address (trusted proxies are held
    /// to the total only) [default: 256]
    #[arg(long, env = "PORTCULLIS_MAX_CONNECTIONS_PER_IP", global = true)]
    pub max_connections_per_ip: Option<usize>,
    /// Refused WebSocket upgrades: `status` (401/403) or `close` (accept, then close 4401/4403) [default: status]
    #[arg(long, env = "PORTCULLIS_WS_REJECT", global = true)]
    pub ws_reject: Option<String>,
    /// Lifetime of single-use WebSocket tickets, 1s to 10m [default: 30s]
    #[arg(long, env = "PORTCULLIS_WS_TICKET_TTL", global = true)]
    pub ws_ticket_ttl: Option<String>,
    /// Accept `?token=pct_…` on WebSocket upgrades (legacy clients) [default: true]
    #[arg(long, env = "PORTCULLIS_WS_QUERY_TOKEN", global = true)]
    pub ws_query_token: Option<bool>,
    /// Close WebSockets older than this, e.g. 12h; clients reconnect [default: none]
    #[arg(long, env = "PORTCULLIS_WS_MAX_LIFETIME", global = true)]
    pub ws_max_lifetime: Option<String>,
    /// Also write the internal credential to this file (mode 0600) for processes
    /// the gateway does not start itself
    #[arg(long, env = "PORTCULLIS_INTERNAL_CREDENTIAL_FILE", global = true)]
    pub internal_credential_file: Option<PathBuf>,
    /// Accept the internal credential from non-loopback peers [default: false]
    #[arg(long, env = "PORTCULLIS_INTERNAL_CREDENTIAL_REMOTE", global = true)]
    pub internal_credential_remote: Option<bool>,
    /// Proxies whose X-Forwarded-For and X-Request-Id are believed: addresses or
    /// CIDR ranges, comma-separated [default: none]
    #[arg(
        long,
        env = "PORTCULLIS_TRUSTED_PROXIES",
        value_delimiter = ',',
        global = true
    )]
    pub trusted_proxies: Option<Vec<String>>,
    /// Concurrent argon2 verifications, on threads below the event loops' priority
    /// [default: the number of CPUs less one, at least one]
    #[arg(long, env = "PORTCULLIS_ARGON2_WORKERS", global = true)]
    pub argon2_workers: Option<usize>,
    /// A file of `user:argon2hash` entries, one per line (`#` comments), instead
    /// of AUTH_BASIC_USERS; reloaded on SIGHUP and when it changes, and a user
    /// removed or whose hash changed is signed out everywhere [default: none]
    #[arg(long, env = "PORTCULLIS_USERS_FILE", global = true)]
    pub users_file: Option<PathBuf>,
    /// `user:argon2hash` entries separated by `;` (in TOML also an array of
    /// entries)
    #[arg(skip)]
    #[serde(default, deserialize_with = "entries")]
    /// (Password hashes: kept out of `Debug` output like any secret.)
    pub basic_users: Option<SecretString>,
    /// Basic users with the admin role, comma-separated
    #[arg(skip)]
    pub basic_admins: Option<String>,
    /// OpenID providers (TOML `[[oidc.providers]]` only)
    #[arg(skip)]
    pub oidc: Option<RawOidc>,
    /// Route rules (TOML `[[routes]]` only), first match wins
    #[arg(skip)]
    pub routes: Option<Vec<RawRoute>>,
    /// External clients for magic links (TOML `[[clients]]` only)
    #[arg(skip)]
    pub clients: Option<Vec<RawClient>>,
    /// Permissions granted to roles beyond the built-in ones (TOML `[roles]` only):
    /// `role = ["permission", …]`
    #[arg(skip)]
    pub roles: Option<std::collections::BTreeMap<String, Vec<String>>>,
}

/// One `[[routes]]` entry (SPEC 8).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub path_prefix: String,
    pub host: Option<String>,
    pub methods: Option<Vec<String>>,
    /// Role names, `"anonymous"` or `"authenticated"`: a string or a list.
    pub allow: OneOrMany,
    /// Step-up for OpenID sessions: any one of these `acr` values.
    #[serde(default)]
    pub require_acr: Vec<String>,
    /// Step-up for OpenID sessions: all of these `amr` values (e.g. `["mfa"]`).
    #[serde(default)]
    pub require_amr: Vec<String>,
}

/// One `[[clients]]` entry (SPEC 7): created at start if missing, and kept as
/// declared (its active flag is the operator's).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    pub slug: String,
    pub name: String,
    /// Path prefixes ending in `/`: a string or a list.
    pub scope: OneOrMany,
    #[serde(default)]
    pub roles: Vec<String>,
}

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl Default for OneOrMany {
    fn default() -> Self {
        OneOrMany::Many(Vec::new())
    }
}

impl OneOrMany {
    fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one.clone()],
            OneOrMany::Many(many) => many.clone(),
        }
    }
}

/// `[oidc]` in the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOidc {
    #[serde(default)]
    pub providers: Vec<RawOidcProvider>,
}

/// One `[[oidc.providers]]` entry. The client secret is never in the file itself:
/// it names an environment variable or a file holding it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOidcProvider {
    pub id: String,
    pub display_name: Option<String>,
    pub issuer: String,
    pub client_id: String,
    pub client_secret_env: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    pub scopes: Option<Vec<String>>,
    pub algorithms: Option<Vec<String>>,
    pub groups_claim: Option<String>,
    #[serde(default)]
    pub refuse_unmapped: bool,
    /// Forward e-mail addresses the provider does not mark verified (default:
    /// dropped, and the sign-in's audit row says so).
    #[serde(default)]
    pub accept_unverified_email: bool,
    /// The claim naming the user upstream (default `sub`).
    pub user_claim: Option<String>,
    /// Before it in `X-Forwarded-User` (default `<id>:`; `""` declares this
    /// provider's names disjoint from every other's and from basic users').
    pub user_prefix: Option<String>,
}

/// The longest a client may be given to send a body or take a response: a day
/// is already no bound worth the name, and larger values would overflow timers.
const MAX_CLIENT_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

macro_rules! fill {
    ($dst:expr, $src:expr, $($field:ident),+ $(,)?) => {
        $( if $dst.$field.is_none() { $dst.$field = $src.$field.clone(); } )+
    };
}

/// Where the secret key comes from.
#[derive(Debug)]
pub enum SecretSource {
    Loaded(SecretKey),
    /// To be generated (SQLite only) at this path on first start.
    Generate(PathBuf),
}

/// Why configuration was refused, with the warnings found on the way.
#[derive(Debug)]
pub struct Problems {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid configuration:")?;
        for error in &self.errors {
            write!(f, "\n  - {error}")?;
        }
        Ok(())
    }
}

/// The validated configuration.
#[derive(Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    /// `--metrics-listen`: where `GET /metrics` is served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    pub database_url: String,
    pub data_dir: PathBuf,
    pub secret: SecretSource,
    /// `None` when no upstream was configured (allowed for non-serving commands).
    pub gateway: Option<GatewayConfig>,
    /// Where to write the internal credential, if anywhere.
    pub internal_credential_file: Option<PathBuf>,
    /// `--max-connections`, when given (else the descriptor limit decides).
    pub max_connections: Option<usize>,
    /// `--db-timeout`: the bound on waiting for the database.
    pub db_timeout: Duration,
    pub warnings: Vec<String>,
}

/// An address, or a host name with a port (`localhost:4180`): its first
/// address (IPv4 first, as most clients try it first).
fn listen_address(raw: &str) -> Option<SocketAddr> {
    raw.parse::<SocketAddr>().ok().or_else(|| {
        use std::net::ToSocketAddrs;
        let resolved: Vec<SocketAddr> = raw.to_socket_addrs().ok()?.collect();
        resolved
            .iter()
            .find(|a| a.is_ipv4())
            .or(resolved.first())
            .copied()
    })
}

impl RawSettings {
    /// Fills unset values from the TOML file `path`.
    pub fn with_file(mut self, path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        let file: RawSettings =
            toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))?;
        fill!(
            self,
            file,
            listen,
            metrics_listen,
            upstream,
            public_url,
            database,
            data_dir,
            secret_key_file,
            auth_prefix,
            brand_name,
            allowed_hosts,
            session_ttl,
            session_idle_timeout,
            cookie_samesite,
            login_rate_per_ip,
            login_rate_per_user,
            db_timeout,
            audit_retention,
            upstream_timeout,
            body_timeout,
            body_min_rate,
            write_timeout,
            max_connections,
            max_connections_per_ip,
            ws_reject,
            ws_ticket_ttl,
            ws_query_token,
            ws_max_lifetime,
            internal_credential_file,
            internal_credential_remote,
            argon2_workers,
            trusted_proxies,
            users_file,
            basic_users,
            basic_admins,
            oidc,
            routes,
            clients,
            roles,
        );
        Ok(self)
    }

    /// Reads `AUTH_BASIC_USERS` / `AUTH_BASIC_ADMINS`, which override the file.
    pub fn with_basic_env(mut self) -> Self {
        // An empty variable counts as unset (as for every PORTCULLIS_ variable).
        if let Some(users) = non_empty_env("AUTH_BASIC_USERS") {
            self.basic_users = Some(SecretString::new(users));
        }
        if let Some(admins) = non_empty_env("AUTH_BASIC_ADMINS") {
            self.basic_admins = Some(admins);
        }
        self
    }

    /// Validates everything, reporting every problem. `need_upstream` is true for
    /// `serve`; `generate_secret_ok` permits generating a missing SQLite secret key.
    pub fn resolve(&self, need_upstream: bool) -> Result<Settings, Problems> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();

        let listen_raw = self.listen.as_deref().unwrap_or("127.0.0.1:4180");
        let listen = listen_address(listen_raw)
            .ok_or_else(|| {
                errors.push(format!(
                    "--listen / PORTCULLIS_LISTEN: {listen_raw:?} is not an address; use HOST:PORT such as 127.0.0.1:4180 or localhost:4180"
                ))
            });
        // Read by the commands that serve (the others hide it from their help).
        let metrics_raw = self.metrics_listen.as_deref().filter(|_| need_upstream);
        let metrics_listen = metrics_raw.and_then(|raw| {
            let address = listen_address(raw);
            match address {
                None => errors.push(format!(
                    "--metrics-listen / PORTCULLIS_METRICS_LISTEN: {raw:?} is not an address; use HOST:PORT such as 127.0.0.1:9464"
                )),
                // Metrics are never served beside the public endpoints (port 0:
                // each listener gets a port of its own).
                Some(metrics) if Ok(metrics) == listen && metrics.port() != 0 => errors.push(
                    "--metrics-listen / PORTCULLIS_METRICS_LISTEN: must differ from --listen \
                     (metrics are served on their own address, never the public one)"
                        .into(),
                ),
                Some(metrics) if !metrics.ip().is_loopback() => warnings.push(format!(
                    "--metrics-listen {metrics} is not a loopback address: anyone who can reach it \
                     reads the gateway's metrics (request counts, sign-in outcomes, provider ids)"
                )),
                Some(_) => {}
            }
            address
        });

        let data_dir = self.data_dir.clone().unwrap_or_else(default_data_dir);
        let database_url = self
            .database
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("portcullis.db").display()));
        let postgres =
            database_url.starts_with("postgres://") || database_url.starts_with("postgresql://");
        if !postgres && !database_url.starts_with("sqlite:") {
            errors.push(format!(
                "--database / PORTCULLIS_DATABASE: unsupported URL scheme in {:?}; use sqlite://PATH or postgres://USER@HOST/DB",
                database_url.split(':').next().unwrap_or_default()
            ));
        }

        let secret = match load_secret(self.secret_key_file.as_deref()) {
            Ok(Some(key)) => Some(SecretSource::Loaded(key)),
            Ok(None) if postgres => {
                errors.push(
                    "a secret key is required with PostgreSQL (every replica must share it): \
                     set PORTCULLIS_SECRET_KEY or --secret-key-file"
                        .into(),
                );
                None
            }
            Ok(None) => {
                let path = data_dir.join("secret.key");
                match read_key_file(&path) {
                    Ok(Some(key)) => Some(SecretSource::Loaded(key)),
                    Ok(None) => Some(SecretSource::Generate(path)),
                    Err(e) => {
                        errors.push(e);
                        None
                    }
                }
            }
            Err(e) => {
                errors.push(e);
                None
            }
        };

        let mut db_timeout = portcullis_store::DEFAULT_TIMEOUT;
        if let Some(raw) = &self.db_timeout {
            match parse_duration(
                "--db-timeout / PORTCULLIS_DB_TIMEOUT",
                raw,
                Duration::from_millis(100),
            ) {
                Ok(d) if d > Duration::from_secs(60) => {
                    errors.push("--db-timeout / PORTCULLIS_DB_TIMEOUT: at most 60 s".into())
                }
                Ok(d) => db_timeout = d,
                Err(e) => errors.push(e),
            }
        }

        let gateway = self.resolve_gateway(listen_raw, need_upstream, &mut errors, &mut warnings);

        match (errors.is_empty(), listen, secret) {
            (true, Ok(listen), Some(secret)) => Ok(Settings {
                listen,
                metrics_listen,
                database_url,
                data_dir,
                secret,
                gateway,
                internal_credential_file: self.internal_credential_file.clone(),
                max_connections: self.max_connections,
                db_timeout,
                warnings,
            }),
            _ => Err(Problems { errors, warnings }),
        }
    }

    fn resolve_gateway(
        &self,
        listen_raw: &str,
        need_upstream: bool,
        errors: &mut Vec<String>,
        warnings: &mut Vec<String>,
    ) -> Option<GatewayConfig> {
        let upstream = match self.upstream.as_deref() {
            Some(raw) => Upstream::parse(raw)
                .map_err(|e| errors.push(format!("--upstream / PORTCULLIS_UPSTREAM: {raw:?}: {e}")))
                .ok(),
            None => {
                if need_upstream {
                    errors.push(
                        "--upstream / PORTCULLIS_UPSTREAM is required: the application to protect, e.g. http://127.0.0.1:8888"
                            .into(),
                    );
                }
                None
            }
        };
        let public_raw = self
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{listen_raw}"));
        let public_url = PublicUrl::parse(&public_raw)
            .map_err(|e| {
                errors.push(format!(
                    "--public-url / PORTCULLIS_PUBLIC_URL: {public_raw:?}: {e}"
                ))
            })
            .ok();
        let prefix = self.auth_prefix.clone().unwrap_or_else(|| "/.auth".into());
        if let Err(e) = validate_prefix(&prefix) {
            errors.push(format!("--auth-prefix / PORTCULLIS_AUTH_PREFIX: {e}"));
        }
        let brand = self.brand_name.as_deref().and_then(|raw| {
            validate_brand(raw)
                .map_err(|e| errors.push(format!("--brand-name / PORTCULLIS_BRAND_NAME: {e}")))
                .ok()
        });
        let mut policy = SessionPolicy::default();
        if let Some(raw) = &self.session_ttl {
            match parse_duration(
                "--session-ttl / PORTCULLIS_SESSION_TTL",
                raw,
                Duration::from_secs(60),
            ) {
                Ok(d) => policy.ttl_ms = millis(d),
                Err(e) => errors.push(e),
            }
        }
        if let Some(raw) = &self.session_idle_timeout {
            match parse_duration(
                "--session-idle-timeout / PORTCULLIS_SESSION_IDLE_TIMEOUT",
                raw,
                Duration::from_secs(60),
            ) {
                Ok(d) => policy.idle_timeout_ms = Some(millis(d)),
                Err(e) => errors.push(e),
            }
        }
        if policy
            .idle_timeout_ms
            .is_some_and(|idle| idle >= policy.ttl_ms)
        {
            warnings.push(
                "--session-idle-timeout is not shorter than --session-ttl: it never ends a session"
                    .into(),
            );
        }
        let same_site = match self
            .cookie_samesite
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("lax") => SameSite::Lax,
            Some("strict") => SameSite::Strict,
            Some(other) => {
                errors.push(format!(
                    "--cookie-samesite / PORTCULLIS_COOKIE_SAMESITE: {other:?} is not allowed; use lax or strict (None would expose sessions to cross-site requests)"
                ));
                SameSite::Lax
            }
        };
        let ws_reject = match self
            .ws_reject
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("status") => WsReject::Status,
            Some("close") => WsReject::Close,
            Some(other) => {
                errors.push(format!("--ws-reject / PORTCULLIS_WS_REJECT: {other:?} is not allowed; use status or close"));
                WsReject::Status
            }
        };
        let mut ws_ticket_ttl_ms = portcullis_core::ticket::DEFAULT_TTL_MS;
        if let Some(raw) = &self.ws_ticket_ttl {
            let name = "--ws-ticket-ttl / PORTCULLIS_WS_TICKET_TTL";
            match parse_duration(name, raw, Duration::from_secs(1)) {
                // A ticket rides in a URL; one that lives for long would defeat the point.
                Ok(d) if d > Duration::from_secs(600) => {
                    errors.push(format!("{name}: {raw:?} is longer than the maximum 10m"))
                }
                Ok(d) => ws_ticket_ttl_ms = millis(d),
                Err(e) => errors.push(e),
            }
        }
        let mut ws_max_lifetime = None;
        if let Some(raw) = &self.ws_max_lifetime {
            match parse_duration(
                "--ws-max-lifetime / PORTCULLIS_WS_MAX_LIFETIME",
                raw,
                Duration::from_secs(1),
            ) {
                Ok(d) => ws_max_lifetime = Some(d),
                Err(e) => errors.push(e),
            }
        }
        let mut upstream_timeout = Duration::from_secs(60);
        if let Some(raw) = &self.upstream_timeout {
            match parse_duration(
                "--upstream-timeout / PORTCULLIS_UPSTREAM_TIMEOUT",
                raw,
                Duration::from_millis(100),
            ) {
                Ok(d) => upstream_timeout = d,
                Err(e) => errors.push(e),
            }
        }
        let mut audit_retention = portcullis_gateway::config::DEFAULT_AUDIT_RETENTION;
        if let Some(raw) = &self.audit_retention {
            match parse_duration(
                "--audit-retention / PORTCULLIS_AUDIT_RETENTION",
                raw,
                Duration::from_secs(3600),
            ) {
                Ok(d) => audit_retention = d,
                Err(e) => errors.push(e),
            }
        }
        let mut body_timeout = Duration::from_secs(10);
        if let Some(raw) = &self.body_timeout {
            match parse_duration(
                "--body-timeout / PORTCULLIS_BODY_TIMEOUT",
                raw,
                Duration::from_millis(100),
            ) {
                Ok(d) if d > MAX_CLIENT_TIMEOUT => errors.push(format!(
                    "--body-timeout / PORTCULLIS_BODY_TIMEOUT: at most {} s",
                    MAX_CLIENT_TIMEOUT.as_secs()
                )),
                Ok(d) => body_timeout = d,
                Err(e) => errors.push(e),
            }
        }
        let mut write_timeout = Duration::from_secs(60);
        if let Some(raw) = &self.write_timeout {
            match parse_duration(
                "--write-timeout / PORTCULLIS_WRITE_TIMEOUT",
                raw,
                Duration::from_millis(100),
            ) {
                Ok(d) if d > MAX_CLIENT_TIMEOUT => errors.push(format!(
                    "--write-timeout / PORTCULLIS_WRITE_TIMEOUT: at most {} s",
                    MAX_CLIENT_TIMEOUT.as_secs()
                )),
                Ok(d) => write_timeout = d,
                Err(e) => errors.push(e),
            }
        }
        for (value, name) in [
            (
                self.max_connections,
                "--max-connections / PORTCULLIS_MAX_CONNECTIONS",
            ),
            (
                self.max_connections_per_ip,
                "--max-connections-per-ip / PORTCULLIS_MAX_CONNECTIONS_PER_IP",
            ),
        ] {
            if value == Some(0) {
                errors.push(format!("{name}: must be at least 1"));
            }
        }
        if self.body_min_rate == Some(0) {
            errors.push(
                "--body-min-rate / PORTCULLIS_BODY_MIN_RATE: must be at least 1 byte per second"
                    .into(),
            );
        }
        let mut limits = LoginLimits::default();
        for (value, slot, name) in [
            (
                self.login_rate_per_ip,
                &mut limits.per_ip_per_minute,
                "--login-rate-per-ip",
            ),
            (
                self.login_rate_per_user,
                &mut limits.per_user_per_minute,
                "--login-rate-per-user",
            ),
        ] {
            match value {
                Some(0) => errors.push(format!("{name}: must be at least 1 attempt per minute")),
                Some(n) => *slot = n,
                None => {}
            }
        }
        if self.argon2_workers == Some(0) {
            errors.push("--argon2-workers: must be at least 1".into());
        }
        // The users: AUTH_BASIC_USERS (or TOML basic_users), or a users file
        // (one entry per line), never both.
        let from_file = match (&self.users_file, &self.basic_users) {
            (Some(_), Some(_)) => {
                errors.push(
                    "--users-file / PORTCULLIS_USERS_FILE and AUTH_BASIC_USERS (or basic_users) \
                     both name the users; give one"
                        .into(),
                );
                None
            }
            (Some(path), None) => match std::fs::read_to_string(path) {
                Ok(text) => Some(SecretString::new(portcullis_gateway::users::file_entries(
                    &text,
                ))),
                Err(e) => {
                    errors.push(format!(
                        "--users-file / PORTCULLIS_USERS_FILE: cannot read {}: {e}",
                        path.display()
                    ));
                    None
                }
            },
            _ => None,
        };
        let (basic_users, entry_warnings) = BasicUsers::parse(
            from_file
                .as_ref()
                .or(self.basic_users.as_ref())
                .map(SecretString::expose)
                .unwrap_or_default(),
            self.basic_admins.as_deref().unwrap_or_default(),
        );
        warnings.extend(entry_warnings.iter().map(ToString::to_string));
        for admin in self
            .basic_admins
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            if basic_users.hash_of(admin).is_none() {
                warnings.push(format!(
                    "AUTH_BASIC_ADMINS names {admin:?}, who is not in AUTH_BASIC_USERS: no one gets that admin role"
                ));
            }
        }
        if basic_users.is_empty() && need_upstream {
            warnings
                .push("AUTH_BASIC_USERS defines no valid user: no basic login can succeed".into());
        }
        let allowed_hosts: Vec<String> = self
            .allowed_hosts
            .iter()
            .flatten()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .collect();
        for host in &allowed_hosts {
            if host.parse::<http::uri::Authority>().is_err() || host.contains('/') {
                errors.push(format!("--allowed-hosts: {host:?} is not a host[:port]"));
            }
        }
        let oidc_providers = self.resolve_oidc(errors);
        let namespaces: Vec<(&str, String)> = oidc_providers
            .iter()
            .map(|p| {
                let prefix = p
                    .user_prefix
                    .clone()
                    .unwrap_or_else(|| format!("{}:", p.id));
                (p.id.as_str(), prefix)
            })
            .collect();
        let namespaces: Vec<(&str, &str)> =
            namespaces.iter().map(|(id, p)| (*id, p.as_str())).collect();
        errors.extend(
            portcullis_core::oidc::namespace_clashes(&namespaces)
                .into_iter()
                .map(|clash| format!("oidc.providers: {clash}")),
        );
        warnings.extend(portcullis_core::oidc::unprefixed_overlaps(
            &namespaces,
            &basic_users.names().collect::<Vec<_>>(),
        ));
        let routes = self.resolve_routes(&prefix, errors);
        let clients = self.resolve_clients(errors);
        for client in &clients {
            if basic_users.hash_of(&client.slug).is_some() {
                errors.push(format!(
                    "clients: slug {:?} is also a basic user's name; the client would reach \
                     the upstream as that user (rename one)",
                    client.slug
                ));
            }
        }
        let trusted_proxies = match TrustedProxies::parse(
            self.trusted_proxies.iter().flatten().map(String::as_str),
        ) {
            Ok(trusted) => trusted,
            Err(problems) => {
                errors.extend(problems);
                TrustedProxies::default()
            }
        };
        let role_permissions = match RolePermissions::from_config(
            self.roles
                .iter()
                .flatten()
                .map(|(role, granted)| (role.as_str(), granted.as_slice())),
        ) {
            Ok(map) => map,
            Err(problems) => {
                errors.extend(problems);
                RolePermissions::default()
            }
        };
        let (upstream, public_url) = (upstream?, public_url?);
        let mut config = GatewayConfig::new(upstream, public_url);
        config.auth_prefix = prefix;
        if let Some(brand) = brand {
            config.brand_name = brand;
        }
        config.session = policy;
        config.same_site = same_site;
        config.upstream_timeout = upstream_timeout;
        config.body_timeout = body_timeout;
        config.audit_retention = audit_retention;
        config.write_timeout = write_timeout;
        if let Some(per_ip) = self.max_connections_per_ip.filter(|n| *n > 0) {
            config.connections.per_ip = per_ip;
        }
        if let Some(rate) = self.body_min_rate.filter(|r| *r > 0) {
            config.body_min_rate = rate;
        }
        config.ws_reject = ws_reject;
        config.ws_ticket_ttl_ms = ws_ticket_ttl_ms;
        config.ws_query_token = self.ws_query_token.unwrap_or(true);
        config.ws_max_lifetime = ws_max_lifetime;
        config.internal_credential_remote = self.internal_credential_remote.unwrap_or(false);
        config.oidc_providers = oidc_providers;
        config.routes = routes;
        config.clients = clients;
        config.trusted_proxies = trusted_proxies;
        config.role_permissions = role_permissions;
        config.login_limits = limits;
        config.basic_users = basic_users;
        config.basic_admins = self.basic_admins.clone().unwrap_or_default();
        config.users_file = self.users_file.clone();
        config.allowed_hosts = allowed_hosts;
        if let Some(n) = self.argon2_workers.filter(|n| *n > 0) {
            config.argon2_workers = n;
        }
        Some(config)
    }
}

impl RawSettings {
    fn resolve_routes(&self, prefix: &str, errors: &mut Vec<String>) -> RouteRules {
        let specs: Vec<RouteSpec> = self
            .routes
            .iter()
            .flatten()
            .map(|raw| RouteSpec {
                path_prefix: raw.path_prefix.clone(),
                host: raw.host.clone(),
                methods: raw.methods.clone(),
                allow: raw.allow.to_vec(),
                require_acr: raw.require_acr.clone(),
                require_amr: raw.require_amr.clone(),
            })
            .collect();
        for (n, spec) in specs.iter().enumerate() {
            let path = spec.path_prefix.trim_end_matches('/');
            if !path.is_empty() && (path == prefix || path.starts_with(&format!("{prefix}/"))) {
                errors.push(format!(
                    "routes[{n}] ({:?}): paths under the auth prefix {prefix} are the \
                     gateway's own; route rules govern the upstream's paths",
                    spec.path_prefix
                ));
            }
        }
        match RouteRules::from_specs(&specs) {
            Ok(rules) => rules,
            Err(problems) => {
                errors.extend(problems);
                RouteRules::default()
            }
        }
    }

    fn resolve_clients(&self, errors: &mut Vec<String>) -> Vec<ClientSpec> {
        let mut specs: Vec<ClientSpec> = Vec::new();
        for (n, raw) in self.clients.iter().flatten().enumerate() {
            match ClientSpec::new(&raw.slug, &raw.name, &raw.scope.to_vec(), &raw.roles) {
                Ok(spec) if specs.iter().any(|s| s.slug == spec.slug) => {
                    errors.push(format!(
                        "clients[{n}]: slug {:?} is declared twice",
                        spec.slug
                    ));
                }
                Ok(spec) => specs.push(spec),
                Err(problems) => {
                    for problem in problems {
                        errors.push(format!("clients[{n}] ({:?}): {problem}", raw.slug));
                    }
                }
            }
        }
        specs
    }

    fn resolve_oidc(&self, errors: &mut Vec<String>) -> Vec<OidcProviderSpec> {
        let mut specs: Vec<OidcProviderSpec> = Vec::new();
        let declared = self.oidc.iter().flat_map(|o| o.providers.iter());
        for (n, raw) in declared.enumerate() {
            let name = format!("oidc.providers[{n}] ({:?})", raw.id);
            let before = errors.len();
            if specs.iter().any(|s| s.id == raw.id) {
                errors.push(format!("{name}: id is declared twice"));
            }
            let algorithms = portcullis_core::oidc::or_defaults(
                raw.algorithms.clone(),
                portcullis_core::oidc::DEFAULT_ALGORITHMS,
            );
            let scopes = portcullis_core::oidc::or_defaults(
                raw.scopes.clone(),
                portcullis_core::oidc::DEFAULT_SCOPES,
            );
            errors.extend(
                portcullis_core::oidc::check_provider_fields(
                    &raw.id,
                    &raw.issuer,
                    &raw.client_id,
                    &scopes,
                    &algorithms,
                )
                .into_iter()
                .map(|problem| format!("{name}: {problem}")),
            );
            let user_claim = raw.user_claim.clone().unwrap_or_else(|| "sub".into());
            errors.extend(
                portcullis_core::oidc::check_user_naming(&user_claim, raw.user_prefix.as_deref())
                    .into_iter()
                    .map(|problem| format!("{name}: {problem}")),
            );
            let client_secret = match (&raw.client_secret_env, &raw.client_secret_file) {
                (Some(_), Some(_)) => {
                    errors.push(format!(
                        "{name}: give client_secret_env or client_secret_file, not both"
                    ));
                    None
                }
                (Some(var), None) => match std::env::var(var) {
                    Ok(value) if !value.trim().is_empty() => {
                        Some(SecretString::new(value.trim().to_owned()))
                    }
                    _ => {
                        errors.push(format!(
                            "{name}: client_secret_env names {var}, which is not set"
                        ));
                        None
                    }
                },
                (None, Some(path)) => match std::fs::read_to_string(path) {
                    Ok(value) if !value.trim().is_empty() => {
                        Some(SecretString::new(value.trim().to_owned()))
                    }
                    Ok(_) => {
                        errors.push(format!("{name}: {} is empty", path.display()));
                        None
                    }
                    Err(e) => {
                        errors.push(format!(
                            "{name}: client_secret_file {}: {e}",
                            path.display()
                        ));
                        None
                    }
                },
                // A public client (PKCE only).
                (None, None) => None,
            };
            if errors.len() == before {
                specs.push(OidcProviderSpec {
                    id: raw.id.clone(),
                    display_name: raw.display_name.clone().unwrap_or_else(|| raw.id.clone()),
                    issuer: raw.issuer.clone(),
                    client_id: raw.client_id.clone(),
                    client_secret,
                    scopes,
                    algorithms,
                    groups_claim: raw.groups_claim.clone().unwrap_or_else(|| "groups".into()),
                    refuse_unmapped: raw.refuse_unmapped,
                    accept_unverified_email: raw.accept_unverified_email,
                    user_claim,
                    user_prefix: raw.user_prefix.clone(),
                });
            }
        }
        specs
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub fn parse_duration(name: &str, raw: &str, min: Duration) -> Result<Duration, String> {
    let d = humantime::parse_duration(raw.trim())
        .map_err(|e| format!("{name}: {raw:?} is not a duration ({e}); use e.g. 30s, 15m, 8h"))?;
    if d < min {
        return Err(format!(
            "{name}: {raw:?} is shorter than the minimum {}",
            humantime::format_duration(min)
        ));
    }
    Ok(d)
}

fn default_data_dir() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("portcullis");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/portcullis"),
        None => PathBuf::from("portcullis-data"),
    }
}

/// Decodes a base64 (standard or URL-safe) 32-byte key. Messages never include the
/// value.
/// `basic_users` in TOML: one string of `;`-separated entries, or an array of
/// entries.
fn entries<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SecretString>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Entries {
        One(SecretString),
        Many(Vec<SecretString>),
    }
    Ok(Some(match Entries::deserialize(deserializer)? {
        Entries::One(all) => all,
        Entries::Many(each) => SecretString::new(
            each.iter()
                .map(SecretString::expose)
                .collect::<Vec<_>>()
                .join(";"),
        ),
    }))
}

/// A variable's value, `None` when unset or empty.
pub fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// How to make a key, said with every refusal of one.
const MAKE_A_KEY: &str = "the key is 32 random bytes in base64; make one with \
     `portcullis secret generate` (or `openssl rand -base64 32`)";

pub fn decode_key(text: &str, origin: &str) -> Result<SecretKey, String> {
    let text = text.trim();
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{origin}: looks like hex; {MAKE_A_KEY}"));
    }
    let bytes = STANDARD
        .decode(text)
        .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
        .map_err(|_| format!("{origin}: not valid base64; {MAKE_A_KEY}"))?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|v: Vec<u8>| {
        format!(
            "{origin}: decodes to {} bytes, not 32; {MAKE_A_KEY}",
            v.len()
        )
    })?;
    Ok(SecretKey::new(Key32::from_bytes(bytes)))
}

fn load_secret(file: Option<&Path>) -> Result<Option<SecretKey>, String> {
    if let Some(value) = non_empty_env("PORTCULLIS_SECRET_KEY") {
        let value = SecretString::new(value);
        return decode_key(value.expose(), "PORTCULLIS_SECRET_KEY").map(Some);
    }
    match file {
        Some(path) => match read_key_file(path)? {
            Some(key) => Ok(Some(key)),
            None => Err(format!(
                "--secret-key-file: {} does not exist",
                path.display()
            )),
        },
        None => Ok(None),
    }
}

fn read_key_file(path: &Path) -> Result<Option<SecretKey>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let text = SecretString::new(text);
            decode_key(
                text.expose(),
                &format!("secret key file {}", path.display()),
            )
            .map(Some)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("secret key file {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> RawSettings {
        RawSettings {
            upstream: Some("http://127.0.0.1:8888".into()),
            data_dir: Some(std::env::temp_dir().join("portcullis-settings-test")),
            ..RawSettings::default()
        }
    }

    #[test]
    fn bad_values_are_reported_together() {
        let raw = RawSettings {
            listen: Some("nonsense".into()),
            upstream: Some("ftp://x".into()),
            session_ttl: Some("forever".into()),
            cookie_samesite: Some("none".into()),
            auth_prefix: Some("auth".into()),
            ..base()
        };
        let errors = raw.resolve(true).unwrap_err().errors;
        for needle in [
            "--listen",
            "--upstream",
            "--session-ttl",
            "--cookie-samesite",
            "--auth-prefix",
        ] {
            assert!(
                errors.iter().any(|e| e.contains(needle)),
                "missing {needle} in {errors:?}"
            );
        }
    }

    #[test]
    fn config_rows() {
        let rows: Vec<(&str, RawSettings, Option<&str>)> = vec![
            ("defaults are valid", base(), None),
            (
                "trusted proxies",
                RawSettings {
                    trusted_proxies: Some(vec![
                        "10.0.0.0/8".into(),
                        "::1".into(),
                        "127.0.0.1".into(),
                    ]),
                    ..base()
                },
                None,
            ),
            (
                "trusted proxy that is not a range",
                RawSettings {
                    trusted_proxies: Some(vec!["10.0.0.0/40".into()]),
                    ..base()
                },
                Some("--trusted-proxies"),
            ),
            (
                "trusted proxy by name",
                RawSettings {
                    trusted_proxies: Some(vec!["proxy.internal".into()]),
                    ..base()
                },
                Some("--trusted-proxies"),
            ),
            (
                "missing upstream",
                RawSettings {
                    upstream: None,
                    ..base()
                },
                Some("--upstream"),
            ),
            (
                "https upstream",
                RawSettings {
                    upstream: Some("https://x:1".into()),
                    ..base()
                },
                Some("--upstream"),
            ),
            (
                "public url with path",
                RawSettings {
                    public_url: Some("https://x/app".into()),
                    ..base()
                },
                Some("--public-url"),
            ),
            (
                "ttl too short",
                RawSettings {
                    session_ttl: Some("5s".into()),
                    ..base()
                },
                Some("minimum"),
            ),
            (
                "idle not a duration",
                RawSettings {
                    session_idle_timeout: Some("soon".into()),
                    ..base()
                },
                Some("--session-idle-timeout"),
            ),
            (
                "zero rate",
                RawSettings {
                    login_rate_per_ip: Some(0),
                    ..base()
                },
                Some("--login-rate-per-ip"),
            ),
            (
                "zero workers",
                RawSettings {
                    argon2_workers: Some(0),
                    ..base()
                },
                Some("--argon2-workers"),
            ),
            (
                "bad database",
                RawSettings {
                    database: Some("mysql://x".into()),
                    ..base()
                },
                Some("unsupported URL scheme"),
            ),
            (
                "postgres without key",
                RawSettings {
                    database: Some("postgres://x/y".into()),
                    ..base()
                },
                Some("secret key is required"),
            ),
            (
                "ticket ttl too long",
                RawSettings {
                    ws_ticket_ttl: Some("1h".into()),
                    ..base()
                },
                Some("maximum 10m"),
            ),
            (
                "bad ws-reject",
                RawSettings {
                    ws_reject: Some("drop".into()),
                    ..base()
                },
                Some("--ws-reject"),
            ),
            (
                "bad allowed host",
                RawSettings {
                    allowed_hosts: Some(vec!["a b".into()]),
                    ..base()
                },
                Some("--allowed-hosts"),
            ),
            (
                "missing key file",
                RawSettings {
                    secret_key_file: Some("/nonexistent/key".into()),
                    ..base()
                },
                Some("does not exist"),
            ),
        ];
        for (name, raw, expected) in rows {
            match (raw.resolve(true), expected) {
                (Ok(_), None) => {}
                (Err(problems), Some(needle)) => {
                    let errors = problems.errors;
                    assert!(
                        errors.iter().any(|e| e.contains(needle)),
                        "row {name}: {errors:?}"
                    )
                }
                (Ok(_), Some(needle)) => panic!("row {name}: accepted, expected error {needle}"),
                (Err(problems), None) => panic!("row {name}: rejected: {:?}", problems.errors),
            }
        }
    }

    #[test]
    fn key_decoding_rows() {
        let good = STANDARD.encode([7u8; 32]);
        let urlsafe = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let rows: Vec<(&str, String, Option<&str>)> = vec![
            ("standard", good.clone(), None),
            ("url-safe", urlsafe, None),
            ("trailing newline", format!("{good}\n"), None),
            ("not base64", "!!!!".into(), Some("not valid base64")),
            ("short", STANDARD.encode([7u8; 16]), Some("16 bytes")),
        ];
        for (name, text, expected) in rows {
            match (decode_key(&text, "k"), expected) {
                (Ok(_), None) => {}
                (Err(e), Some(needle)) => {
                    assert!(e.contains(needle), "row {name}: {e}");
                    assert!(
                        !e.contains(&text.trim()[..4.min(text.len())]) || text.starts_with('!'),
                        "row {name} leaks"
                    );
                }
                (r, _) => panic!("row {name}: unexpected {:?}", r.map(|_| ())),
            }
        }
    }

    #[test]
    fn toml_unknown_keys_are_refused() {
        let dir = std::env::temp_dir().join(format!("pc-toml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "upstream = \"http://127.0.0.1:1\"\nlisten_addr = \"x\"\n",
        )
        .unwrap();
        let err = RawSettings::default().with_file(&path).unwrap_err();
        assert!(err.contains("listen_addr"), "{err}");
        std::fs::write(
            &path,
            "upstream = \"http://127.0.0.1:1\"\nsession_ttl = \"2h\"\n",
        )
        .unwrap();
        let merged = RawSettings {
            session_ttl: Some("1h".into()),
            ..RawSettings::default()
        }
        .with_file(&path)
        .unwrap();
        assert_eq!(
            merged.session_ttl.as_deref(),
            Some("1h"),
            "flag/env beats file"
        );
        assert_eq!(
            merged.upstream.as_deref(),
            Some("http://127.0.0.1:1"),
            "file fills the rest"
        );
    }

    #[test]
    fn debug_output_holds_no_password_hash() {
        let raw = RawSettings {
            basic_users: Some(SecretString::new(
                "alice:$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
            )),
            ..base()
        };
        let printed = format!("{raw:?}");
        assert!(!printed.contains("argon2id"), "{printed}");
        assert!(printed.contains("[redacted]"));
    }

    #[test]
    fn route_and_role_rows() {
        let dir = std::env::temp_dir().join(format!("pc-routes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        let base = "upstream = \"http://127.0.0.1:1\"\n";
        // (name, file body after the upstream line, Ok(rule count) or a needle)
        let rows: Vec<(&str, &str, Result<usize, &str>)> = vec![
            ("no rules", "", Ok(0)),
            (
                "roles as a list",
                "[[routes]]\npath_prefix = \"/admin/\"\nallow = [\"admin\", \"ops\"]\n",
                Ok(1),
            ),
            (
                "allow as a string",
                "[[routes]]\npath_prefix = \"/public/\"\nallow = \"anonymous\"\n",
                Ok(1),
            ),
            (
                "every field",
                "[[routes]]\npath_prefix = \"/api/\"\nhost = \"dash.example.com\"\n\
                 methods = [\"POST\", \"delete\"]\nallow = [\"admin\"]\n\
                 [[routes]]\npath_prefix = \"/\"\nallow = \"authenticated\"\n",
                Ok(2),
            ),
            (
                "relative prefix",
                "[[routes]]\npath_prefix = \"admin/\"\nallow = \"admin\"\n",
                Err("must start with /"),
            ),
            (
                "dot segments",
                "[[routes]]\npath_prefix = \"/a/../admin/\"\nallow = \"admin\"\n",
                Err("normal form"),
            ),
            (
                "mixed allow",
                "[[routes]]\npath_prefix = \"/a/\"\nallow = [\"anonymous\", \"admin\"]\n",
                Err("cannot be combined"),
            ),
            (
                "under the auth prefix",
                "[[routes]]\npath_prefix = \"/.auth/login\"\nallow = \"anonymous\"\n",
                Err("auth prefix"),
            ),
            (
                "step-up",
                "[[routes]]\npath_prefix = \"/a/\"\nallow = \"admin\"\nrequire_amr = [\"mfa\"]\n\
                 require_acr = [\"urn:gold\"]\n",
                Ok(1),
            ),
            (
                "step-up on an anonymous route",
                "[[routes]]\npath_prefix = \"/a/\"\nallow = \"anonymous\"\nrequire_amr = [\"mfa\"]\n",
                Err("not anonymous"),
            ),
            (
                "unknown route key",
                "[[routes]]\npath_prefix = \"/a/\"\nallow = \"admin\"\nrequire_mfa = true\n",
                Err("require_mfa"),
            ),
            (
                "configured role",
                "[roles]\nsupport = [\"auth.session.list.all\", \"audit.read\"]\n",
                Ok(0),
            ),
            (
                "unknown permission",
                "[roles]\nsupport = [\"auth.sessions.list\"]\n",
                Err("unknown permission"),
            ),
        ];
        for (name, body, expected) in rows {
            std::fs::write(&path, format!("{base}{body}")).unwrap();
            let raw = RawSettings {
                data_dir: Some(dir.clone()),
                ..RawSettings::default()
            }
            .with_file(&path);
            let resolved = raw.map(|raw| raw.resolve(true).map_err(|p| p.errors.join("\n")));
            match (resolved, expected) {
                (Ok(Ok(settings)), Ok(count)) => {
                    let gateway = settings.gateway.unwrap();
                    assert_eq!(gateway.routes.iter().count(), count, "{name}");
                }
                (Ok(Err(errors)), Err(needle)) | (Err(errors), Err(needle)) => {
                    assert!(errors.contains(needle), "{name}: {needle} in {errors}");
                }
                (other, _) => panic!("{name}: unexpected {:?}", other.map(|r| r.map(|_| ()))),
            }
        }
    }

    #[test]
    fn oidc_provider_rows() {
        let dir = std::env::temp_dir().join(format!("pc-oidc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret_file = dir.join("secret");
        std::fs::write(&secret_file, "from-a-file\n").unwrap();
        let empty_file = dir.join("empty");
        std::fs::write(&empty_file, "").unwrap();
        // A variable every test process has, standing in for the operator's secret.
        let present_var = "PATH";
        let provider = |extra: &str| {
            format!(
                "upstream = \"http://127.0.0.1:1\"\n[[oidc.providers]]\nid = \"corp\"\n\
                 issuer = \"https://id.example.com\"\nclient_id = \"portcullis\"\n{extra}"
            )
        };
        let rows: Vec<(&str, String, Result<(), &str>)> = vec![
            ("public client", provider(""), Ok(())),
            (
                "secret from the environment",
                provider(&format!("client_secret_env = \"{present_var}\"\n")),
                Ok(()),
            ),
            (
                "secret from a file",
                provider(&format!(
                    "client_secret_file = {:?}\n",
                    secret_file.display().to_string()
                )),
                Ok(()),
            ),
            (
                "all the options",
                provider(
                    "display_name = \"Corp\"\nscopes = [\"openid\", \"email\"]\nalgorithms = [\"ES256\"]\ngroups_claim = \"roles\"\nrefuse_unmapped = true\n",
                ),
                Ok(()),
            ),
            (
                "unset secret variable",
                provider("client_secret_env = \"PORTCULLIS_TEST_UNSET_VARIABLE\"\n"),
                Err("is not set"),
            ),
            (
                "empty secret file",
                provider(&format!(
                    "client_secret_file = {:?}\n",
                    empty_file.display().to_string()
                )),
                Err("is empty"),
            ),
            (
                "both secret sources",
                provider(&format!(
                    "client_secret_env = \"{present_var}\"\nclient_secret_file = \"x\"\n"
                )),
                Err("not both"),
            ),
            (
                "http issuer off loopback",
                provider("").replace("https://id.example.com", "http://id.example.com"),
                Err("https"),
            ),
            (
                "alg none",
                provider("algorithms = [\"none\"]\n"),
                Err("algorithms"),
            ),
            ("HS256", provider("algorithms = [\"HS256\"]\n"), Err("HMAC")),
            (
                "no openid scope",
                provider("scopes = [\"email\"]\n"),
                Err("openid"),
            ),
            (
                "bad id",
                provider("").replace("\"corp\"", "\"Corp SSO\""),
                Err("id"),
            ),
            (
                "declared twice",
                format!(
                    "{}\n{}",
                    provider(""),
                    provider("").replace("upstream = \"http://127.0.0.1:1\"\n", "")
                ),
                Err("declared twice"),
            ),
            (
                "one prefix begins another's",
                format!(
                    "{}\n{}",
                    provider("user_prefix = \"corp:\"\n"),
                    provider("user_prefix = \"corp:eu:\"\n")
                        .replace("upstream = \"http://127.0.0.1:1\"\n", "")
                        .replace("\"corp\"", "\"corp-eu\"")
                ),
                Err("overlapping prefixes"),
            ),
            (
                "two providers without a prefix",
                format!(
                    "{}\n{}",
                    provider("user_prefix = \"\"\n"),
                    provider("user_prefix = \"\"\n")
                        .replace("upstream = \"http://127.0.0.1:1\"\n", "")
                        .replace("\"corp\"", "\"other\"")
                ),
                Err("overlapping prefixes"),
            ),
        ];
        let path = dir.join("c.toml");
        for (name, text, expected) in rows {
            std::fs::write(&path, &text).unwrap();
            let raw = RawSettings {
                data_dir: Some(dir.clone()),
                ..RawSettings::default()
            }
            .with_file(&path)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            match (raw.resolve(true), expected) {
                (Ok(settings), Ok(())) => {
                    let specs = &settings.gateway.unwrap().oidc_providers;
                    assert_eq!(specs.len(), 1, "{name}");
                }
                (Err(problems), Err(needle)) => assert!(
                    problems
                        .errors
                        .iter()
                        .any(|e| e.contains(needle) && e.contains("oidc.providers")),
                    "{name}: {needle} in {:?}",
                    problems.errors
                ),
                (r, _) => panic!(
                    "{name}: unexpected {:?}",
                    r.map(|_| ()).map_err(|p| p.errors)
                ),
            }
        }
        // The file holds no secret itself, and unknown provider keys are refused.
        std::fs::write(&path, provider("client_secret = \"inline\"\n")).unwrap();
        let err = RawSettings::default().with_file(&path).unwrap_err();
        assert!(err.contains("client_secret"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
