//! `portcullis clients add|list|disable|enable` and `portcullis tokens
//! create|list|revoke`: external clients and their magic links (SPEC 7), with the
//! same rules as the admin API. Running gateways act within a second: disabling a
//! client or revoking a link ends its sessions and closes their WebSockets.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use portcullis_core::audit::AuditAction;
use portcullis_core::client::ClientSpec;
use portcullis_core::clock::{Clock, SystemClock};
use portcullis_core::secret::OsEntropy;
use portcullis_gateway::PublicUrl;
use portcullis_gateway::clients::{announce, create_client, create_link, link_url};
use portcullis_store::ClientSwitch;
use serde_json::json;

use crate::commands::{cli_audit, open_existing_store, resolve, rfc3339};
use crate::settings::RawSettings;

#[derive(Debug, Subcommand)]
pub enum ClientsCommand {
    /// Add a client: who a magic link signs in, and the paths it may reach
    Add {
        /// Unique name in links' sessions and X-Forwarded-User (a-z, 0-9, -)
        #[arg(long)]
        slug: String,
        /// Display name
        #[arg(long)]
        name: String,
        /// A path prefix the client may reach, ending in / (repeat for several)
        #[arg(long = "scope", required = true)]
        scope: Vec<String>,
        /// A role the client's sessions carry (repeat for several)
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// List clients
    List {
        #[arg(long)]
        json: bool,
    },
    /// Disable a client: its links stop working and every session from them ends
    Disable { slug: String },
    /// Enable a client again (its unrevoked links work again)
    Enable { slug: String },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a magic link for a client; the whole link is printed once
    Create {
        #[arg(long)]
        client: String,
        #[arg(long)]
        label: Option<String>,
        /// Lifetime, e.g. 7d [default: until revoked]
        #[arg(long)]
        ttl: Option<String>,
    },
    /// List links (never their secrets)
    List {
        /// Only this client's links
        #[arg(long)]
        client: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a link by id (act-…): every session from it ends within 1 s
    Revoke { id: String },
}

pub async fn clients(raw: RawSettings, command: ClientsCommand) -> anyhow::Result<ExitCode> {
    let settings = resolve(&raw, false)?;
    let store = open_existing_store(&settings).await?;
    let now = SystemClock.now_ms();
    match command {
        ClientsCommand::Add {
            slug,
            name,
            scope,
            roles,
        } => {
            let spec = ClientSpec::new(&slug, &name, &scope, &roles)
                .map_err(|problems| anyhow::anyhow!(problems.join("\n")))?;
            let users = raw
                .basic_users
                .as_ref()
                .map(|u| portcullis_core::basic::BasicUsers::parse(u.expose(), "").0)
                .unwrap_or_default();
            if users.hash_of(&slug).is_some() {
                bail!(
                    "{slug:?} is also a basic user's name: the client would reach the upstream \
                     as that user; choose another slug"
                );
            }
            let row = create_client(&store, &spec, false, &OsEntropy, now).await?;
            cli_audit(&store, AuditAction::ClientCreate, Some(row.slug.clone())).await;
            println!(
                "added client {} ({}) with scope {}",
                row.slug,
                row.id,
                scope.join(" ")
            );
        }
        ClientsCommand::List { json } => {
            let rows = store.list_clients().await?;
            if rows.is_empty() && !json {
                println!("no clients");
            }
            for c in rows {
                let scope = c.scope();
                if json {
                    println!(
                        "{}",
                        json!({"id": c.id, "slug": c.slug, "name": c.name, "active": c.active,
                               "roles": c.role_list(), "scope": scope.paths(),
                               "preview": c.preview, "created_at": rfc3339(c.created_ms)})
                    );
                } else {
                    println!(
                        "{:<24} {:<8} {:<30} {} {}",
                        c.slug,
                        if c.active { "active" } else { "disabled" },
                        scope.paths().join(","),
                        c.roles,
                        c.name
                    );
                }
            }
        }
        ClientsCommand::Disable { slug } | ClientsCommand::Enable { slug }
            if store.client_by_slug(&slug).await?.is_none() =>
        {
            bail!("no client with slug {slug:?}");
        }
        ClientsCommand::Disable { slug } => {
            match store.set_client_active(&slug, false, "cli", now).await? {
                ClientSwitch::Switched(ended) => {
                    announce(&store, now).await;
                    cli_audit(&store, AuditAction::ClientDisable, Some(slug.clone())).await;
                    println!("disabled {slug}; {} session(s) ended", ended.len());
                }
                _ => println!("{slug} was already disabled"),
            }
        }
        ClientsCommand::Enable { slug } => {
            match store.set_client_active(&slug, true, "cli", now).await? {
                ClientSwitch::Switched(_) => {
                    announce(&store, now).await;
                    cli_audit(&store, AuditAction::ClientEnable, Some(slug.clone())).await;
                    println!("enabled {slug}");
                }
                _ => println!("{slug} was already enabled"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn tokens(raw: RawSettings, command: TokensCommand) -> anyhow::Result<ExitCode> {
    let settings = resolve(&raw, false)?;
    let store = open_existing_store(&settings).await?;
    let now = SystemClock.now_ms();
    match command {
        TokensCommand::Create { client, label, ttl } => {
            let expires_ms = match ttl {
                Some(ttl) => {
                    let ttl =
                        crate::settings::parse_duration("--ttl", &ttl, Duration::from_secs(60))
                            .map_err(|e| anyhow::anyhow!(e))?;
                    Some(now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)))
                }
                None => None,
            };
            if label.as_ref().is_some_and(|l| l.len() > 200) {
                bail!("--label: at most 200 bytes");
            }
            let (row, secret) =
                create_link(&store, &client, label, expires_ms, &OsEntropy, now).await?;
            cli_audit(&store, AuditAction::AccessTokenCreate, Some(row.id.clone())).await;
            let (origin, prefix) = link_base(&raw)?;
            eprintln!(
                "created {} for {}; the link below is shown only once:",
                row.id, row.client_slug
            );
            println!("{}", link_url(&origin, &prefix, &secret).expose());
        }
        TokensCommand::List { client, json } => {
            let rows = store.list_access_tokens(client.as_deref()).await?;
            if rows.is_empty() && !json {
                println!("no links");
            }
            for t in rows {
                let status = t.status(now);
                if json {
                    println!(
                        "{}",
                        json!({"id": t.id, "client": t.client_slug, "label": t.label,
                               "preview": t.preview, "created_at": rfc3339(t.created_ms),
                               "last_used_at": t.last_used_ms.map(rfc3339),
                               "expires_at": t.expires_ms.map(rfc3339),
                               "revoked_at": t.revoked_ms.map(rfc3339), "status": status})
                    );
                } else {
                    println!(
                        "{:<27} {:<24} {:<8} {:<21} {:<21} {}",
                        t.id,
                        t.client_slug,
                        status,
                        rfc3339(t.created_ms),
                        t.last_used_ms
                            .map_or_else(|| "never used".to_owned(), rfc3339),
                        t.label.unwrap_or_default()
                    );
                }
            }
        }
        TokensCommand::Revoke { id } => match store.revoke_access_token(&id, "cli", now).await? {
            Some(ended) => {
                cli_audit(&store, AuditAction::AccessTokenRevoke, Some(id.clone())).await;
                println!("revoked {id}; {} session(s) ended", ended.len());
            }
            None => {
                eprintln!("no live link {id}");
                return Ok(ExitCode::FAILURE);
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// The public origin and auth prefix links are made of (`--public-url`,
/// defaulting like `serve` to `http://<listen>`; `--auth-prefix`).
fn link_base(raw: &RawSettings) -> anyhow::Result<(String, String)> {
    let listen = raw.listen.as_deref().unwrap_or("127.0.0.1:4180");
    let public = raw
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{listen}"));
    let public = PublicUrl::parse(&public)
        .map_err(|e| anyhow::anyhow!("--public-url / PORTCULLIS_PUBLIC_URL: {e}"))?;
    let prefix = raw.auth_prefix.clone().unwrap_or_else(|| "/.auth".into());
    Ok((public.origin(), prefix))
}
