//! `dsb audit`: verify, checkpoint and export the hash-chained audit log
//! (local data directory, or verify and checkpoint on a server).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use datasandbox::receipt::keys::key_id;
use datasandbox::receipt::{KeyRing, PublicKey};
use datasandbox::store::{Store, audit};

use super::{Remote, Target};

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Walk the chain and check every checkpoint; exit 1 when broken.
    Verify {
        /// Verify an export (`dsb audit export`) instead of the database,
        /// against the data directory's public keys (or --key).
        #[arg(long)]
        from_export: Option<PathBuf>,
        /// Hex Ed25519 public keys to trust for checkpoints; repeatable.
        #[arg(long = "key")]
        keys: Vec<String>,
    },
    /// Sign the current head.
    Checkpoint,
    /// Print entries and checkpoints as JSON lines.
    Export,
}

pub async fn run(command: AuditCommand, target: Target<'_>) -> anyhow::Result<()> {
    match (target.remote, &command) {
        (
            Some(remote),
            AuditCommand::Verify {
                from_export: None, ..
            },
        ) => return verify(remote).await,
        (Some(remote), AuditCommand::Checkpoint) => return checkpoint(remote).await,
        _ => {}
    }
    let data_dir = target.data_dir;
    let store = Store::open(&data_dir.join("dsb.sqlite")).await?;
    let keys = KeyRing::open(&data_dir.join("keys"))?;
    match command {
        AuditCommand::Verify {
            from_export,
            keys: extra,
        } => {
            let (entries, checkpoints) = match &from_export {
                Some(path) => audit::read_export(
                    &std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?,
                )?,
                None => (
                    audit::entries(&store).await?,
                    audit::checkpoints(&store).await?,
                ),
            };
            let mut trusted = keys.public_keys()?;
            trusted.extend(extra.iter().map(|k| PublicKey {
                key_id: key_id(&hex::decode(k).unwrap_or_default()),
                public_key: k.clone(),
                current: false,
            }));
            match audit::verify(&entries, &checkpoints, &trusted) {
                Ok((entries, checkpoints)) => {
                    println!(
                        "audit chain intact: {entries} entries, {checkpoints} signed checkpoints"
                    );
                    Ok(())
                }
                Err(broken) => {
                    println!("BROKEN: {broken}");
                    std::process::exit(1);
                }
            }
        }
        AuditCommand::Checkpoint => {
            let checkpoint = audit::checkpoint(&store, &keys.signer()?).await?;
            println!("{}", serde_json::to_string(&checkpoint)?);
            Ok(())
        }
        AuditCommand::Export => {
            for entry in audit::entries(&store).await? {
                println!("{}", serde_json::json!({ "entry": entry }));
            }
            for checkpoint in audit::checkpoints(&store).await? {
                println!("{}", serde_json::json!({ "checkpoint": checkpoint }));
            }
            Ok(())
        }
    }
}

async fn verify(remote: &Remote) -> anyhow::Result<()> {
    let verdict = remote.client.audit_verify().await?;
    remote.print(&verdict, |v| {
        if v.intact {
            println!(
                "audit chain intact: {} entries, {} signed checkpoints",
                v.entries, v.checkpoints
            );
        } else {
            println!(
                "BROKEN at entry {}: {}",
                v.broken_at.unwrap_or(0),
                v.reason.as_deref().unwrap_or("")
            );
        }
    })?;
    if !verdict.intact {
        std::process::exit(1);
    }
    Ok(())
}

async fn checkpoint(remote: &Remote) -> anyhow::Result<()> {
    let checkpoint = remote.client.audit_checkpoint().await?;
    println!("{}", serde_json::to_string(&checkpoint)?);
    Ok(())
}
