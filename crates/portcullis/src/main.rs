//! `portcullis`: the command line. Parses arguments, resolves configuration and
//! calls into the gateway and store crates; no domain logic lives here.
#![forbid(unsafe_code)]
// Doc comments on CLI arguments are the `--help` text users read, where URLs and
// `<placeholders>` must appear verbatim rather than as rustdoc markup.
#![allow(rustdoc::bare_urls, rustdoc::invalid_html_tags)]

mod child;
mod clients_cli;
mod commands;
mod demo;
mod oidc_cli;
mod settings;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::settings::RawSettings;

#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Authentication gateway for dashboards and internal tools"
)]
struct Cli {
    /// TOML file holding any setting (flags and environment take precedence)
    #[arg(long, env = "PORTCULLIS_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Log lines as `text` (coloured only on a terminal) or `json` (one object per
    /// line, every field a key) [default: text]
    #[arg(
        long,
        env = "PORTCULLIS_LOG_FORMAT",
        global = true,
        value_parser = ["text", "json"]
    )]
    log_format: Option<String>,
    #[command(flatten)]
    settings: RawSettings,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway; with `-- CMD ARGS...`, start CMD as the supervised upstream
    Serve {
        /// The application to start and protect: it gets the internal credential in
        /// PORTCULLIS_INTERNAL_CREDENTIAL and, without --upstream, a port in PORT
        #[arg(last = true, value_name = "CMD")]
        child: Vec<String>,
    },
    /// Run the gateway in front of a built-in demo dashboard, zero configuration
    Demo,
    /// Read a password (no echo on a terminal, else one line of stdin); print an argon2id hash
    HashPassword,
    /// Validate configuration; print every problem and exit non-zero if any
    CheckConfig,
    /// The secret key
    Secret {
        #[command(subcommand)]
        action: SecretCommand,
    },
    /// Apply database migrations
    Migrate,
    /// Cookie-signing keys
    Keys {
        #[command(subcommand)]
        action: KeysCommand,
    },
    /// Sessions in the database
    Sessions {
        #[command(subcommand)]
        action: SessionsCommand,
    },
    /// OpenID Connect providers
    Oidc {
        #[command(subcommand)]
        action: oidc_cli::OidcCommand,
    },
    /// Bearer tokens for non-browser clients
    ApiTokens {
        #[command(subcommand)]
        action: ApiTokensCommand,
    },
    /// External clients that sign in by magic link
    Clients {
        #[command(subcommand)]
        action: clients_cli::ClientsCommand,
    },
    /// Magic links (access tokens) for external clients
    Tokens {
        #[command(subcommand)]
        action: clients_cli::TokensCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ApiTokensCommand {
    /// Create a token for a user; the secret is printed once
    Create {
        #[arg(long)]
        user: String,
        #[arg(long)]
        label: Option<String>,
        /// Lifetime, e.g. 90d [default: no expiry]
        #[arg(long)]
        ttl: Option<String>,
        /// The user's identity provider (`basic` or an OpenID provider id): the
        /// token stops working when the user or provider is removed [default:
        /// basic for a user in AUTH_BASIC_USERS, else none (a service token)]
        #[arg(long)]
        provider: Option<String>,
        /// Create it for a name that is no basic user and no --provider's (a
        /// service token, valid until revoked or expired)
        #[arg(long)]
        force: bool,
    },
    /// List tokens (never their secrets)
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id (tok-…); running gateways refuse it within 1 s
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
enum SecretCommand {
    /// Print a new secret key (32 random bytes, base64) for PORTCULLIS_SECRET_KEY or
    /// --secret-key-file
    Generate,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a new active signing key; older keys keep verifying
    Rotate,
    /// Delete the deployment's internal credential (PostgreSQL); every replica
    /// refuses it and closes its connections; restarted gateways mint a new one
    ResetInternalCredential,
}

#[derive(Debug, Subcommand)]
enum SessionsCommand {
    /// List live sessions
    List {
        /// Only this user's sessions
        #[arg(long)]
        user: Option<String>,
        /// Include revoked and expired sessions
        #[arg(long)]
        all: bool,
        /// Print JSON lines instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Revoke one session by id, or every session of a user
    Revoke {
        /// Session id (ses-…)
        #[arg(required_unless_present = "user", conflicts_with = "user")]
        id: Option<String>,
        /// Revoke all of this user's sessions
        #[arg(long)]
        user: Option<String>,
        /// With --user: revoke the user's API tokens too
        #[arg(long, requires = "user")]
        api_tokens: bool,
    },
}

/// The command line, with an empty environment variable counting as unset (clap
/// would take it as an empty value: an invalid prefix, a number that does not
/// parse).
fn parse_cli() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let command = Cli::command().mut_args(|arg| {
        let empty = arg
            .get_env()
            .and_then(std::env::var_os)
            .is_some_and(|value| value.to_string_lossy().trim().is_empty());
        if empty { arg.env(None) } else { arg }
    });
    let matches = focus_help(command).get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// The settings (by id) a command reads besides `--config` and `--log-format`;
/// `None`: every setting.
fn settings_read_by(command: &str) -> Option<Vec<&'static str>> {
    // Every command that opens the database.
    const STORE: [&str; 4] = ["database", "data_dir", "secret_key_file", "db_timeout"];
    let also: &[&str] = match command {
        "serve" | "demo" | "check-config" => return None,
        "hash-password" | "secret" => return Some(Vec::new()),
        "api-tokens" => &["users_file"],
        // Links are made of the public URL (which defaults to the listen address).
        "tokens" => &["public_url", "listen", "auth_prefix"],
        _ => &[],
    };
    Some([&STORE[..], also].concat())
}

/// Every command's `--help` lists only the settings it reads; the top level's
/// lists none. The settings stay global (accepted before or after any command,
/// so `portcullis --database URL sessions list` still works): each command gets
/// its own copy of every one, hidden where the command does not read it, which
/// clap then keeps instead of propagating the visible one.
fn focus_help(command: clap::Command) -> clap::Command {
    let ids: Vec<String> =
        <RawSettings as clap::Args>::augment_args(clap::Command::new("settings"))
            .get_arguments()
            .map(|arg| arg.get_id().to_string())
            .collect();
    let settings: Vec<clap::Arg> = command
        .get_arguments()
        .filter(|arg| ids.iter().any(|id| arg.get_id() == id.as_str()))
        .cloned()
        .collect();
    fn with_settings(
        mut command: clap::Command,
        settings: &[clap::Arg],
        read: Option<&[&'static str]>,
    ) -> clap::Command {
        for arg in settings {
            let shown = read.is_none_or(|read| read.contains(&arg.get_id().as_str()));
            command = command.arg(arg.clone().hide(!shown));
        }
        let children: Vec<String> = command
            .get_subcommands()
            .map(|sub| sub.get_name().to_owned())
            .collect();
        for child in children {
            command = command.mut_subcommand(child, |sub| with_settings(sub, settings, read));
        }
        command
    }
    let mut command = command;
    let names: Vec<String> = command
        .get_subcommands()
        .map(|sub| sub.get_name().to_owned())
        .collect();
    for name in names {
        let read = settings_read_by(&name);
        command =
            command.mut_subcommand(&name, |sub| with_settings(sub, &settings, read.as_deref()));
    }
    for id in &ids {
        command = command.mut_arg(id.as_str(), |arg| arg.hide(true));
    }
    command.after_help(
        "Settings: `portcullis serve --help` lists them all (flags, environment variables).",
    )
}

fn main() -> ExitCode {
    let cli = parse_cli();
    // Access events are one line per request: asked for, not default.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,portcullis::access=off"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format.as_deref() == Some("json") {
        logs.json().flatten_event(true).init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let raw = match &cli.config {
        Some(path) => cli
            .settings
            .clone()
            .with_file(path)
            .map_err(anyhow::Error::msg)?,
        None => cli.settings.clone(),
    }
    .with_basic_env();
    match cli.command {
        Command::Serve { child } => commands::serve(raw, child).await,
        Command::Demo => demo::run(raw).await,
        Command::HashPassword => commands::hash_password(),
        Command::CheckConfig => Ok(commands::check_config(&raw).await),
        Command::Secret {
            action: SecretCommand::Generate,
        } => commands::generate_secret(),
        Command::Migrate => commands::migrate(raw).await,
        Command::Keys {
            action: KeysCommand::Rotate,
        } => commands::rotate_keys(raw).await,
        Command::Keys {
            action: KeysCommand::ResetInternalCredential,
        } => commands::reset_internal_credential(raw).await,
        Command::Oidc { action } => oidc_cli::run(raw, action).await,
        Command::Clients { action } => clients_cli::clients(raw, action).await,
        Command::Tokens { action } => clients_cli::tokens(raw, action).await,
        Command::ApiTokens { action } => match action {
            ApiTokensCommand::Create {
                user,
                label,
                ttl,
                provider,
                force,
            } => commands::create_api_token(raw, user, label, ttl, provider, force).await,
            ApiTokensCommand::List { json } => commands::list_api_tokens(raw, json).await,
            ApiTokensCommand::Revoke { id } => commands::revoke_api_token(raw, id).await,
        },
        Command::Sessions { action } => match action {
            SessionsCommand::List { user, all, json } => {
                commands::list_sessions(raw, user, all, json).await
            }
            SessionsCommand::Revoke {
                id,
                user,
                api_tokens,
            } => commands::revoke_sessions(raw, id, user, api_tokens).await,
        },
    }
}
