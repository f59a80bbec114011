//! `portcullis oidc add|list|remove|refresh`: OpenID providers in the database,
//! the same rules as the admin API. Running gateways reload within a second.

use portcullis_core::audit::AuditAction;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use portcullis_core::clock::{Clock, SystemClock};
use portcullis_core::oidc::{self as rules, ProviderRecord};
use portcullis_core::secret::{OsEntropy, SecretString};
use portcullis_gateway::oidc::{Oidc, RefreshError};
use portcullis_store::ProviderDelete;
use serde_json::json;

use crate::commands::{cli_audit, open_existing_store, resolve, secret_key};
use crate::settings::RawSettings;

#[derive(Debug, Subcommand)]
// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum OidcCommand {
    /// Add or replace a provider (client secret read from a variable or a file,
    /// never from the command line)
    Add(AddArgs),
    /// List providers (never their secrets)
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a provider; refused while sessions still use it
    Remove { id: String },
    /// Re-run discovery and fetch the keys; a downgrade needs --force
    Refresh {
        id: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// Provider id (a-z, 0-9, -, _), used in /oidc/login?provider=ID
    #[arg(long)]
    id: String,
    /// Issuer URL (https, or http on loopback)
    #[arg(long)]
    issuer: String,
    #[arg(long)]
    client_id: String,
    /// Environment variable holding the client secret
    #[arg(long, conflicts_with = "client_secret_file")]
    client_secret_env: Option<String>,
    /// File holding the client secret
    #[arg(long)]
    client_secret_file: Option<PathBuf>,
    /// Button label on the sign-in page [default: the id]
    #[arg(long)]
    display_name: Option<String>,
    /// Comma-separated scopes [default: openid,email,profile]
    #[arg(long, value_delimiter = ',')]
    scopes: Option<Vec<String>>,
    /// Comma-separated signing algorithms [default: RS256,ES256,EdDSA]
    #[arg(long, value_delimiter = ',')]
    algorithms: Option<Vec<String>>,
    /// ID token / UserInfo claim holding the user's groups [default: groups]
    #[arg(long)]
    groups_claim: Option<String>,
    /// Refuse users none of whose groups is mapped (instead of role `user`)
    #[arg(long)]
    refuse_unmapped: bool,
    /// Forward e-mail addresses the provider does not mark verified [default:
    /// dropped]
    #[arg(long)]
    accept_unverified_email: bool,
    /// The claim naming the user upstream [default: sub]
    #[arg(long)]
    user_claim: Option<String>,
    /// Before it in X-Forwarded-User [default: ID:]; "" declares the names
    /// disjoint from other providers' and basic users'
    #[arg(long)]
    user_prefix: Option<String>,
}

pub async fn run(raw: RawSettings, command: OidcCommand) -> anyhow::Result<ExitCode> {
    let settings = resolve(&raw, false)?;
    let store = open_existing_store(&settings).await?;
    let now = SystemClock.now_ms();
    match command {
        OidcCommand::Add(args) => {
            let scopes = rules::or_defaults(args.scopes, rules::DEFAULT_SCOPES);
            let algorithms = rules::or_defaults(args.algorithms, rules::DEFAULT_ALGORITHMS);
            let user_claim = args.user_claim.clone().unwrap_or_else(|| "sub".into());
            let mut problems = rules::check_provider_fields(
                &args.id,
                &args.issuer,
                &args.client_id,
                &scopes,
                &algorithms,
            );
            problems.extend(rules::check_user_naming(
                &user_claim,
                args.user_prefix.as_deref(),
            ));
            if !problems.is_empty() {
                bail!("invalid provider:\n  - {}", problems.join("\n  - "));
            }
            let client_secret = match (&args.client_secret_env, &args.client_secret_file) {
                (Some(var), _) => Some(SecretString::new(
                    std::env::var(var)
                        .with_context(|| format!("--client-secret-env: {var} is not set"))?
                        .trim()
                        .to_owned(),
                )),
                (None, Some(path)) => Some(SecretString::new(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("--client-secret-file {}", path.display()))?
                        .trim()
                        .to_owned(),
                )),
                (None, None) => None,
            };
            if client_secret
                .as_ref()
                .is_some_and(|s| s.expose().is_empty())
            {
                bail!("the client secret is empty");
            }
            let secret = secret_key(&settings)?;
            let sealed = match &client_secret {
                Some(value) => Some(secret.seal(
                    &OsEntropy,
                    &rules::client_secret_context(&args.id),
                    value.expose().as_bytes(),
                )?),
                None => None,
            };
            let existing = store.oidc_provider(&args.id).await?;
            let record = ProviderRecord {
                id: args.id.clone(),
                display_name: args.display_name.unwrap_or_else(|| args.id.clone()),
                issuer: args.issuer,
                client_id: args.client_id,
                client_secret_sealed: sealed,
                scopes,
                algorithms,
                groups_claim: args.groups_claim.unwrap_or_else(|| "groups".into()),
                refuse_unmapped: args.refuse_unmapped,
                accept_unverified_email: args.accept_unverified_email,
                user_claim,
                user_prefix: args.user_prefix.clone(),
                source: "api".into(),
                key_baseline: existing.as_ref().and_then(|e| e.key_baseline.clone()),
                created_ms: existing.as_ref().map_or(now, |e| e.created_ms),
                updated_ms: now,
            };
            if let Some(clash) = rules::clash_with(&record, &store.oidc_providers().await?) {
                bail!("invalid provider: {clash}");
            }
            store.upsert_oidc_provider(&record).await?;
            store.announce_oidc_change(now).await?;
            cli_audit(
                &store,
                AuditAction::OidcProviderCreate,
                Some(args.id.clone()),
            )
            .await;
            println!(
                "{} provider {}",
                if existing.is_some() {
                    "replaced"
                } else {
                    "added"
                },
                args.id
            );
            Ok(ExitCode::SUCCESS)
        }
        OidcCommand::List { json: as_json } => {
            for p in store.oidc_providers().await? {
                if as_json {
                    println!(
                        "{}",
                        json!({"id": p.id, "display_name": p.display_name, "issuer": p.issuer,
                               "client_id": p.client_id, "has_client_secret": p.client_secret_sealed.is_some(),
                               "scopes": p.scopes, "algorithms": p.algorithms, "source": p.source})
                    );
                } else {
                    println!(
                        "{:<16} {:<40} {:<20} {} {}",
                        p.id,
                        p.issuer,
                        p.client_id,
                        p.algorithms.join(","),
                        p.source
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        OidcCommand::Remove { id } => match store.delete_oidc_provider(&id, now).await? {
            ProviderDelete::Deleted => {
                store.announce_oidc_change(now).await?;
                cli_audit(&store, AuditAction::OidcProviderDelete, Some(id.clone())).await;
                println!("removed provider {id}");
                Ok(ExitCode::SUCCESS)
            }
            ProviderDelete::NotFound => bail!("no provider {id}"),
            ProviderDelete::InUse => bail!(
                "provider {id} is still used by live sessions; revoke them first \
                 (portcullis sessions list)"
            ),
        },
        OidcCommand::Refresh { id, force } => {
            let oidc = Oidc::load(&store, secret_key(&settings)?).await?;
            match oidc.refresh(&store, &id, force, now).await {
                Ok(baseline) => {
                    store.announce_oidc_change(now).await?;
                    cli_audit(&store, AuditAction::OidcProviderRefresh, Some(id.clone())).await;
                    println!(
                        "refreshed {id}: algorithms {}; keys {}",
                        baseline.algorithms.join(","),
                        baseline.keys.join(",")
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(RefreshError::NotFound) => bail!("no provider {id}"),
                Err(RefreshError::Fetch(failure)) => {
                    bail!("could not refresh {id}: {}", failure.reason)
                }
                Err(RefreshError::Downgrade(why)) => bail!(
                    "refused: {id} now offers less than before ({why}); repeat with --force to accept"
                ),
            }
        }
    }
}
