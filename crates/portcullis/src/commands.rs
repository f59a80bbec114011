//! The subcommands that operate on configuration and the database.

use portcullis_core::audit::AuditAction;
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use portcullis_core::basic::BasicUsers;
use portcullis_core::basic::hash_password as argon2_hash;
use portcullis_core::clock::{Clock, SystemClock};
use portcullis_core::keys::{SecretKey, new_signing_key};
use portcullis_core::secret::{Key32, OsEntropy, SecretString};
use portcullis_gateway::{Gateway, bind_per_core, serve_per_core};
use portcullis_store::{AuditEvent, SessionFilter, Store};
use serde_json::json;
use tokio::net::TcpListener;

use crate::settings::{RawSettings, SecretSource, Settings};

/// Resolves settings or fails with every problem listed.
pub(crate) fn resolve(raw: &RawSettings, need_upstream: bool) -> anyhow::Result<Settings> {
    let settings = raw
        .resolve(need_upstream)
        .map_err(|problems| anyhow::anyhow!("{problems}"))?;
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    Ok(settings)
}

/// The secret key, generating it (mode 0600) when SQLite runs without one.
pub fn secret_key(settings: &Settings) -> anyhow::Result<SecretKey> {
    match &settings.secret {
        SecretSource::Loaded(key) => Ok(key.clone()),
        SecretSource::Generate(path) => {
            let key = Key32::generate(&OsEntropy)?;
            write_private(path, STANDARD.encode(key.expose()).as_bytes())?;
            tracing::info!(path = %path.display(), "generated a new secret key; back it up with the database");
            Ok(SecretKey::new(key))
        }
    }
}

/// Writes a file readable only by its owner, refusing to overwrite.
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    Ok(())
}

/// Opens (and creates, with SQLite) the database and applies migrations: for
/// `serve`, `demo` and `migrate`. The data directory is created 0700 and the
/// SQLite files are made 0600.
pub(crate) async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    let sqlite_file = settings
        .database_url
        .strip_prefix("sqlite://")
        .map(Path::new);
    if sqlite_file.is_some() && !settings.data_dir.exists() {
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("creating data directory {}", settings.data_dir.display()))?;
        set_mode(&settings.data_dir, 0o700)?;
    }
    let store = Store::connect_with_timeout(&settings.database_url, settings.db_timeout)
        .await
        .context("connecting to the database")?;
    store.migrate().await.context("applying migrations")?;
    if let Some(file) = sqlite_file {
        for suffix in ["", "-wal", "-shm"] {
            let path = std::path::PathBuf::from(format!("{}{suffix}", file.display()));
            if path.exists() {
                set_mode(&path, 0o600)?;
            }
        }
    }
    Ok(store)
}

/// Opens the database an operator command works on, refusing to create an empty
/// one (a mistyped --data-dir would otherwise show "no sessions" and create a
/// database nobody uses).
pub(crate) async fn open_existing_store(settings: &Settings) -> anyhow::Result<Store> {
    if let Some(file) = settings.database_url.strip_prefix("sqlite://")
        && !Path::new(file).exists()
    {
        bail!(
            "no Portcullis database in {} (looked for {file}); give the data directory \
             the gateway uses (--data-dir or PORTCULLIS_DATA_DIR) or --database",
            settings.data_dir.display()
        );
    }
    open_store(settings).await
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("restricting {}", path.display()))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> anyhow::Result<()> {
    Ok(())
}

pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// One event loop per CPU, like nginx's `worker_processes auto`.
pub fn event_loops() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// A gateway ready to serve: store open, secret key loaded, sockets bound (one per
/// event loop), background tasks running. Shared by `serve` and `demo`.
pub async fn start_gateway(settings: &Settings) -> anyhow::Result<(Vec<TcpListener>, Gateway)> {
    let Some(mut config) = settings.gateway.clone() else {
        bail!("no upstream configured");
    };
    let (capacity, descriptors) = connection_capacity();
    match settings.max_connections {
        Some(asked) => {
            if asked > capacity {
                tracing::warn!(
                    asked,
                    capacity,
                    descriptors,
                    "--max-connections is above what the file-descriptor limit allows; \
                     connections beyond it would fail late (raise the limit: LimitNOFILE=, \
                     ulimit -n)"
                );
            }
            config.connections.total = asked;
        }
        None => config.connections.total = capacity,
    }
    tracing::info!(
        max_connections = config.connections.total,
        max_connections_per_ip = config.connections.per_ip,
        descriptors,
        "connection capacity"
    );
    let store = open_store(settings).await?;
    let secret = secret_key(settings)?;
    let listeners = bind_per_core(settings.listen, event_loops()).with_context(|| {
        format!(
            "listening on {} (choose another with --listen)",
            settings.listen
        )
    })?;
    let gateway = Gateway::start(
        config,
        store,
        secret,
        Arc::new(SystemClock),
        Arc::new(OsEntropy),
    )
    .await
    .context("starting the gateway")?;
    Ok((listeners, gateway))
}

/// Raises the soft limit on open files to the hard one and returns how many client
/// connections that allows, with the limit: each connection may hold a second
/// descriptor upstream, and some are kept for the database, logs and listeners.
fn connection_capacity() -> (usize, u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let mut soft = limit.current;
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => soft = limit.maximum,
            Err(error) => tracing::warn!(%error, "could not raise the file-descriptor limit"),
        }
    }
    // No limit at all still has one in practice.
    let soft = soft.unwrap_or(1 << 20).min(1 << 20);
    let capacity = usize::try_from(soft.saturating_sub(128) / 2).unwrap_or(usize::MAX);
    (capacity.max(16), soft)
}

/// `portcullis serve [options] [-- CMD ARGS...]`. With a child command the gateway
/// starts it (with the internal credential in its environment), proxies to it, stops
/// it on shutdown and exits, with the child's code, if it dies.
pub async fn serve(mut raw: RawSettings, child_command: Vec<String>) -> anyhow::Result<ExitCode> {
    // A child with no upstream named listens where the gateway tells it: `$PORT`.
    let child_port = if !child_command.is_empty() && raw.upstream.is_none() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("choosing a port for the child")?
            .port();
        raw.upstream = Some(format!("http://127.0.0.1:{port}"));
        Some(port)
    } else {
        None
    };
    let settings = resolve(&raw, true)?;
    let (listeners, gateway) = start_gateway(&settings).await?;
    let metrics = start_metrics(&settings, &gateway).await?;
    let wants_credential = !child_command.is_empty() || settings.internal_credential_file.is_some();
    let credential = if wants_credential {
        Some(
            gateway
                .internal_credential()
                .await
                .context("minting the internal credential")?,
        )
    } else {
        None
    };
    if let (Some(path), Some(credential)) = (&settings.internal_credential_file, &credential) {
        crate::child::write_credential_file(path, credential)?;
        tracing::info!(path = %path.display(), "wrote the internal credential (mode 0600)");
    }
    tracing::info!(
        listen = %settings.listen,
        event_loops = listeners.len(),
        upstream = %gateway.config().upstream.authority,
        public_url = %gateway.config().public_url.origin(),
        "portcullis is serving"
    );

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let (died_tx, died_rx) = tokio::sync::oneshot::channel();
    let supervisor = match credential {
        Some(credential) if !child_command.is_empty() => {
            let env = crate::child::ChildEnv {
                credential,
                gateway_url: loopback_url(listeners[0].local_addr()?),
                public_url: gateway.config().public_url.origin(),
                auth_prefix: gateway.config().auth_prefix.clone(),
                port: child_port,
            };
            let child = crate::child::spawn(&child_command, &env)?;
            Some(tokio::spawn(child.supervise(stop_rx, died_tx)))
        }
        _ => None,
    };
    let child_status = Arc::new(std::sync::OnceLock::new());
    let shutdown = {
        let child_status = child_status.clone();
        async move {
            tokio::select! {
                () = shutdown_signal() => {}
                Ok(status) = died_rx => {
                    tracing::error!(%status, "the child exited; stopping the gateway");
                    let _ = child_status.set(status);
                }
            }
        }
    };
    let served = serve_per_core(listeners, gateway, shutdown).await;
    drop(metrics);
    if let Some(supervisor) = supervisor {
        let _ = stop_tx.send(());
        let _ = supervisor.await;
    }
    served?;
    Ok(match child_status.get() {
        Some(status) => crate::child::exit_code(*status),
        None => ExitCode::SUCCESS,
    })
}

/// Serves `GET /metrics` on `--metrics-listen`, if given, until the returned
/// handle is dropped; returns it with the address it listens on.
pub async fn start_metrics(
    settings: &Settings,
    gateway: &Gateway,
) -> anyhow::Result<Option<(AbortOnDrop, std::net::SocketAddr)>> {
    let Some(addr) = settings.metrics_listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("listening for metrics on {addr} (choose another with --metrics-listen)")
    })?;
    let bound = listener.local_addr()?;
    tracing::info!(metrics_listen = %bound, "serving metrics at GET /metrics");
    let served = portcullis_gateway::metrics::serve(listener, gateway.clone());
    let task = tokio::spawn(async move {
        if let Err(error) = served.await {
            tracing::error!(%error, "the metrics listener failed");
        }
    });
    Ok(Some((AbortOnDrop(task), bound)))
}

/// Stops a background task when dropped.
pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The URL a process on this host uses to reach the gateway listening on `addr`
/// (an unspecified address such as 0.0.0.0 is reached through loopback).
fn loopback_url(addr: std::net::SocketAddr) -> String {
    let ip = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => std::net::Ipv4Addr::LOCALHOST.into(),
        ip if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("http://{}", std::net::SocketAddr::new(ip, addr.port()))
}

/// `keys reset-internal-credential`: with PostgreSQL, deletes the deployment's
/// internal credential; every replica stops accepting it and closes its
/// connections within a second. Restarted gateways mint a new one.
pub async fn reset_internal_credential(raw: RawSettings) -> anyhow::Result<ExitCode> {
    let settings = resolve(&raw, false)?;
    if !settings.database_url.starts_with("postgres") {
        bail!(
            "with SQLite the internal credential lives only in the gateway process; \
             restart the gateway to mint a new one"
        );
    }
    let store = open_existing_store(&settings).await?;
    let secret = secret_key(&settings)?;
    let existed =
        portcullis_gateway::reset_deployment_credential(&store, &secret, SystemClock.now_ms())
            .await?;
    if existed {
        cli_audit(&store, AuditAction::InternalCredentialReset, None).await;
        println!(
            "internal credential reset; restart the gateways (and their children) to mint a new one"
        );
    } else {
        println!("no internal credential was minted; nothing to reset");
    }
    Ok(ExitCode::SUCCESS)
}

/// `portcullis secret generate`: a new key, printed once.
pub fn generate_secret() -> anyhow::Result<ExitCode> {
    let mut key = [0u8; 32];
    portcullis_core::secret::Entropy::fill(&OsEntropy, &mut key)?;
    println!("{}", STANDARD.encode(key));
    key.fill(0);
    Ok(ExitCode::SUCCESS)
}

/// Whether anyone can sign in: a valid basic user, or an OpenID provider in the
/// configuration or (added with `portcullis oidc add`) in the database. `Err`
/// says why not.
async fn someone_can_sign_in(settings: &Settings) -> Result<(), String> {
    let Some(gateway) = &settings.gateway else {
        return Ok(());
    };
    if !gateway.basic_users.is_empty() || !gateway.oidc_providers.is_empty() {
        return Ok(());
    }
    let nobody = "no one can sign in: AUTH_BASIC_USERS defines no valid user and no OpenID \
                  provider is configured";
    let sqlite_file = settings.database_url.strip_prefix("sqlite://");
    if sqlite_file.is_some_and(|path| !std::path::Path::new(path).exists()) {
        return Err(nobody.into());
    }
    let look = async {
        let store = Store::open_read_only(&settings.database_url, settings.db_timeout).await?;
        store.oidc_providers().await
    };
    match tokio::time::timeout(Duration::from_secs(5), look).await {
        Ok(Ok(providers)) if !providers.is_empty() => Ok(()),
        Ok(Ok(_)) => Err(format!("{nobody} (none in the database either)")),
        Ok(Err(e)) => Err(format!(
            "{nobody}, and the database could not be read to look for providers: {e}"
        )),
        Err(_) => Err(format!(
            "{nobody}, and the database did not answer when asked for providers"
        )),
    }
}

pub async fn check_config(raw: &RawSettings) -> ExitCode {
    match raw.resolve(true) {
        Ok(settings) => {
            for warning in &settings.warnings {
                println!("warning: {warning}");
            }
            if let Err(lockout) = someone_can_sign_in(&settings).await {
                println!("error: {lockout}");
                println!("1 problem(s) found");
                return ExitCode::FAILURE;
            }
            if let SecretSource::Generate(path) = &settings.secret {
                println!(
                    "note: a secret key will be generated at {} on first start",
                    path.display()
                );
            }
            println!("configuration is valid");
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for warning in &problems.warnings {
                println!("warning: {warning}");
            }
            for error in &problems.errors {
                println!("error: {error}");
            }
            println!("{} problem(s) found", problems.errors.len());
            ExitCode::FAILURE
        }
    }
}

pub fn hash_password() -> anyhow::Result<ExitCode> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let second = rpassword::prompt_password("Again: ")?;
        if first != second {
            bail!("the passwords do not match");
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    if password.is_empty() {
        bail!("refusing to hash an empty password");
    }
    let hash = argon2_hash(&SecretString::new(password), &OsEntropy)?;
    println!("{hash}");
    Ok(ExitCode::SUCCESS)
}

pub async fn migrate(raw: RawSettings) -> anyhow::Result<ExitCode> {
    let settings = resolve(&raw, false)?;
    // Closed, so that SQLite folds its WAL into the file and removes it.
    open_store(&settings).await?.close().await;
    println!(
        "migrations applied to {}",
        redact_url(&settings.database_url)
    );
    Ok(ExitCode::SUCCESS)
}

/// A database URL without its password, for messages.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{}@{}", &url[..scheme_end + 3], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

pub(crate) async fn cli_audit(store: &Store, action: AuditAction, target: Option<String>) {
    let event = AuditEvent {
        at_ms: SystemClock.now_ms(),
        actor: "cli".into(),
        action: action.name().into(),
        target,
        outcome: "success".into(),
        reason: None,
        ip: None,
        count: 1,
    };
    event.log();
    if let Err(error) = store.record_audit(&event).await {
        tracing::error!(%error, "could not write audit event");
    }
}

pub async fn rotate_keys(raw: RawSettings) -> anyhow::Result<ExitCode> {
    let settings = resolve(&raw, false)?;
    let store = open_existing_store(&settings).await?;
    let secret = secret_key(&settings)?;
    let key = new_signing_key(&secret, &OsEntropy, SystemClock.now_ms())?;
    store.rotate_signing_key(&key).await?;
    cli_audit(&store, AuditAction::KeyRotate, Some(key.id.clone())).await;
    println!(
        "new active signing key {}; existing sessions stay valid",
        key.id
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn rfc3339(ms: i64) -> String {
    UNIX_EPOCH
        .checked_add(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
        .map_or_else(
            || "never".into(),
            |t| humantime::format_rfc3339_seconds(t).to_string(),
        )
}

pub async fn list_sessions(
    raw: RawSettings,
    user: Option<String>,
    all: bool,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let settings = resolve(&raw, false)?;
    let store = open_existing_store(&settings).await?;
    let now = SystemClock.now_ms();
    let sessions = store
        .list_sessions(
            &SessionFilter {
                subject: user,
                include_ended: all,
                ..SessionFilter::default()
            },
            now,
        )
        .await?;
    if !as_json {
        println!(
            "{:<27} {:<20} {:<10} {:<21} {:<21} STATUS",
            "ID", "USER", "PROVIDER", "CREATED", "EXPIRES"
        );
    }
    if sessions.is_empty() && !as_json {
        println!("none");
    }
    for s in &sessions {
        let status = match s.check(now, s.last_seen_ms) {
            Ok(()) => "live".to_owned(),
            Err(end) => end.to_string(),
        };
        if as_json {
            println!(
                "{}",
                json!({
                    "id": s.id, "user": s.identity.subject, "provider": s.identity.provider,
                    "roles": s.identity.roles, "created_at": rfc3339(s.created_ms),
                    "last_seen_at": rfc3339(s.last_seen_ms), "expires_at": rfc3339(s.expires_ms),
                    "status": status,
                })
            );
        } else {
            println!(
                "{:<27} {:<20} {:<10} {:<21} {:<21} {}",
                s.id,
                s.identity.subject,
                s.identity.provider,
                rfc3339(s.created_ms),
                rfc3339(s.expires_ms),
                status
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn revoke_sessions(
    raw: RawSettings,
    id: Option<String>,
    user: Option<String>,
    api_tokens: bool,
) -> anyhow::Result<ExitCode> {
    let settings = resolve(&raw, false)?;
    let store = open_existing_store(&settings).await?;
    let now = SystemClock.now_ms();
    if let (true, Some(user)) = (api_tokens, &user) {
        for id in store.revoke_subject_api_tokens(user, now).await? {
            cli_audit(&store, AuditAction::ApiTokenRevoke, Some(id.clone())).await;
            println!("revoked {id}");
        }
    }
    let revoked = match (id, user) {
        (Some(id), _) => {
            if store.revoke_session(&id, "cli", now).await? {
                vec![id]
            } else {
                eprintln!("no live session {id}");
                return Ok(ExitCode::FAILURE);
            }
        }
        (None, Some(user)) => {
            let revoked = store.revoke_subject_sessions(&user, "cli", now).await?;
            if revoked.is_empty() {
                println!("{user:?} has no live sessions; nothing revoked");
                return Ok(ExitCode::SUCCESS);
            }
            revoked
        }
        (None, None) => bail!("give a session id or --user NAME"),
    };
    for id in &revoked {
        cli_audit(&store, AuditAction::SessionRevoke, Some(id.clone())).await;
        println!("revoked {id}");
    }
    if revoked.is_empty() {
        println!("no live sessions matched");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn create_api_token(
    raw: RawSettings,
    user: String,
    label: Option<String>,
    ttl: Option<String>,
    provider: Option<String>,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let settings = resolve(&raw, false)?;
    let store = open_existing_store(&settings).await?;
    let user = user.trim().to_owned();
    if user.is_empty() || user.contains(',') {
        bail!("--user must be a non-empty name without commas");
    }
    let now = SystemClock.now_ms();
    let expires_ms = match ttl {
        Some(ttl) => {
            let ttl = crate::settings::parse_duration("--ttl", &ttl, Duration::from_secs(60))
                .map_err(|e| anyhow::anyhow!(e))?;
            Some(now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)))
        }
        None => None,
    };
    let file_users = raw
        .users_file
        .as_ref()
        .and_then(|path| std::fs::read_to_string(path).ok())
        .map(|text| portcullis_gateway::users::file_entries(&text));
    let basic_users = file_users
        .as_deref()
        .or(raw.basic_users.as_ref().map(SecretString::expose))
        .map(|u| BasicUsers::parse(u, "").0)
        .unwrap_or_default();
    let provider = match provider {
        Some(p) => Some(p),
        None if basic_users.hash_of(&user).is_some() => Some("basic".to_owned()),
        None if force => {
            eprintln!(
                "{user} is no basic user and no --provider was given: a service token, valid \
                 until revoked or expired whatever users exist"
            );
            None
        }
        None => bail!(
            "{user:?} is not a basic user (AUTH_BASIC_USERS or --users-file); for an OpenID \
             user give --provider ID, for a service token with no user add --force"
        ),
    };
    let admins = raw.basic_admins.as_deref().unwrap_or_default();
    let is_admin = admins.split(',').any(|a| a.trim() == user);
    let token = portcullis_core::ticket::mint_api_token(&OsEntropy)?;
    let row = portcullis_store::ApiTokenRow {
        id: token.id.clone(),
        subject: user,
        roles: if is_admin {
            "admin,user".into()
        } else {
            "user".into()
        },
        label,
        created_ms: now,
        revoked_ms: None,
        provider,
        expires_ms,
    };
    store.insert_api_token(&row, &token.hash).await?;
    cli_audit(&store, AuditAction::ApiTokenCreate, Some(token.id.clone())).await;
    eprintln!(
        "created {} for {} (roles: {}); the secret below is shown only once:",
        row.id, row.subject, row.roles
    );
    println!("{}", token.secret.expose());
    Ok(ExitCode::SUCCESS)
}

pub async fn list_api_tokens(raw: RawSettings, as_json: bool) -> anyhow::Result<ExitCode> {
    let settings = resolve(&raw, false)?;
    let store = open_existing_store(&settings).await?;
    let now = SystemClock.now_ms();
    let tokens = store.list_api_tokens(None).await?;
    if !as_json {
        println!(
            "{:<27} {:<20} {:<12} {:<21} {:<8} LABEL",
            "ID", "USER", "ROLES", "CREATED", "STATUS"
        );
        if tokens.is_empty() {
            println!("none");
        }
    }
    for t in tokens {
        let status = t.status(now);
        if as_json {
            println!(
                "{}",
                json!({"id": t.id, "user": t.subject, "provider": t.provider, "roles": t.role_list(),
                       "label": t.label, "created_at": rfc3339(t.created_ms),
                       "expires_at": t.expires_ms.map(rfc3339), "status": status})
            );
        } else {
            println!(
                "{:<27} {:<20} {:<12} {:<21} {:<8} {}",
                t.id,
                t.subject,
                t.roles,
                rfc3339(t.created_ms),
                status,
                t.label.unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn revoke_api_token(raw: RawSettings, id: String) -> anyhow::Result<ExitCode> {
    let settings = resolve(&raw, false)?;
    let store = open_existing_store(&settings).await?;
    if store.revoke_api_token(&id, SystemClock.now_ms()).await? {
        cli_audit(&store, AuditAction::ApiTokenRevoke, Some(id.clone())).await;
        println!("revoked {id}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("no live API token {id}");
        Ok(ExitCode::FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptor_limit_is_raised_and_sets_the_capacity() {
        let (capacity, descriptors) = connection_capacity();
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(limit.current, limit.maximum, "soft raised to hard");
        assert!(capacity >= 16);
        assert!(
            (capacity as u64) * 2 < descriptors,
            "{capacity} of {descriptors}"
        );
    }

    #[test]
    fn database_passwords_are_redacted() {
        for (url, expected) in [
            ("postgres://u:secret@h/db", "postgres://u@h/db"),
            ("postgres://h/db", "postgres://h/db"),
            ("sqlite:///tmp/x.db", "sqlite:///tmp/x.db"),
        ] {
            assert_eq!(redact_url(url), expected);
        }
    }
}
