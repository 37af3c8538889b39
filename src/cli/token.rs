//! `dsb token`: API tokens, on a server or (to bootstrap the first
//! administrator) on the local data directory.

use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use datasandbox::accounts::{self, Role};
use datasandbox::store::Store;

use super::{Remote, Target};

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token (shown once). Without --server: on the local data
    /// directory, to bootstrap the first administrator.
    Create {
        #[arg(long)]
        role: Role,
        #[arg(long)]
        tenant: String,
        /// Lifetime from now: `90d`, `12h`, `30min`…
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<Duration>,
    },
    List,
    Revoke {
        id: String,
    },
}

pub async fn run(command: TokenCommand, target: Target<'_>) -> anyhow::Result<()> {
    match target.remote {
        Some(remote) => on_server(command, remote).await,
        None => local(command, target.data_dir).await,
    }
}

async fn on_server(command: TokenCommand, remote: &Remote) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create {
            role,
            tenant,
            expires,
        } => {
            let expires_at = expires.map(|d| datasandbox::store::now() + d.as_secs() as i64);
            let created = remote
                .client
                .create_token(role, &tenant, expires_at)
                .await?;
            remote.print(&created, |c| {
                println!("{}", c.token);
                eprintln!(
                    "token {} for {}/{} (shown once; store it now)",
                    c.info.id, c.info.tenant, c.info.role
                );
            })
        }
        TokenCommand::List => {
            let tokens = remote.client.tokens().await?;
            remote.print(&tokens, |list| print_tokens(list))
        }
        TokenCommand::Revoke { id } => {
            remote.client.revoke_token(&id).await?;
            println!("revoked {id}");
            Ok(())
        }
    }
}

/// `dsb token …` on the local data directory (bootstrapping the first
/// administrator before any server runs).
async fn local(command: TokenCommand, data_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)?;
    let store = Store::open(&data_dir.join("dsb.sqlite")).await?;
    match command {
        TokenCommand::Create {
            role,
            tenant,
            expires,
        } => {
            let expires_at = expires.map(|d| datasandbox::store::now() + d.as_secs() as i64);
            let (info, token) =
                accounts::create_token(&store, "operator", role, &tenant, expires_at).await?;
            println!("{token}");
            eprintln!(
                "token {} for {}/{} (shown once; store it now)",
                info.id, info.tenant, info.role
            );
        }
        TokenCommand::List => {
            print_tokens(&accounts::list_tokens(&store).await?);
        }
        TokenCommand::Revoke { id } => {
            if !accounts::revoke_token(&store, "operator", &id).await? {
                bail!("no such token {id}");
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}

/// Tokens as a table (no secrets: only ids, roles, tenants, state).
fn print_tokens(tokens: &[datasandbox::accounts::TokenInfo]) {
    for t in tokens {
        println!(
            "{}  {:<12} {:<20} {}",
            t.id,
            t.role.name(),
            t.tenant,
            if t.revoked_at.is_some() {
                "revoked"
            } else {
                ""
            }
        );
    }
}
