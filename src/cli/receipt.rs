//! `dsb receipt`: fetch a receipt (server) and verify one offline.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use datasandbox::receipt::keys::key_id;
use datasandbox::receipt::{KeyRing, PublicKey, Receipt};

use super::{Remote, needs_server};

#[derive(Subcommand)]
pub enum ReceiptCommand {
    /// Fetch a job's receipt from the server, verified against its keys.
    Get {
        id: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check a receipt's signature (and the output, if given). Trusted
    /// keys: --key, --data-dir, or the server's published keys (--server).
    Verify {
        receipt: PathBuf,
        /// Hex Ed25519 public keys to trust; repeatable.
        #[arg(long = "key")]
        keys: Vec<String>,
        /// Trust the keys of this data directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The released output (JSON) to check against the receipt.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

pub async fn run(command: ReceiptCommand, remote: Option<&Remote>) -> anyhow::Result<()> {
    match command {
        ReceiptCommand::Get { id, out } => match remote {
            Some(remote) => get(&id, out, remote).await,
            None => needs_server("receipt get"),
        },
        ReceiptCommand::Verify {
            receipt,
            keys,
            data_dir,
            output,
        } => {
            let published = match remote {
                Some(remote) => remote.client.keys().await?,
                None => Vec::new(),
            };
            let mut trusted: Vec<PublicKey> = keys
                .iter()
                .map(|k| PublicKey {
                    key_id: key_id(&hex::decode(k).unwrap_or_default()),
                    public_key: k.clone(),
                    current: false,
                })
                .collect();
            if let Some(dir) = data_dir {
                trusted.extend(KeyRing::open(&dir.join("keys"))?.public_keys()?);
            }
            trusted.extend(published);
            let json = std::fs::read(&receipt)
                .with_context(|| format!("reading {}", receipt.display()))?;
            let output = match output {
                Some(path) => Some(serde_json::from_slice(&std::fs::read(&path)?)?),
                None => None,
            };
            match Receipt::verify(&json, &trusted, output.as_ref()) {
                Ok(receipt) => {
                    println!(
                        "valid: job {}{} released at audit entry {}, signed by key {}",
                        receipt.body.job_id,
                        receipt
                            .body
                            .subject
                            .as_ref()
                            .map(|s| format!(" (subject {s})"))
                            .unwrap_or_default(),
                        receipt.body.audit_position,
                        receipt.body.key_id
                    );
                    Ok(())
                }
                Err(error) => {
                    println!("INVALID: {error}");
                    std::process::exit(1);
                }
            }
        }
    }
}

/// Fetch a receipt, verify it against the server's published keys, and
/// write it to `out` (or print it).
async fn get(id: &str, out: Option<PathBuf>, remote: &Remote) -> anyhow::Result<()> {
    let bytes = remote.client.receipt_bytes(id).await?;
    let keys = remote.client.keys().await?;
    let receipt = Receipt::verify(&bytes, &keys, None)
        .map_err(|e| anyhow::anyhow!("the server's receipt does not verify: {e}"))?;
    match out {
        Some(path) => {
            std::fs::write(&path, &bytes)?;
            eprintln!(
                "receipt for job {} (signature valid, key {}) written to {}",
                receipt.body.job_id,
                receipt.body.key_id,
                path.display()
            );
        }
        None => println!("{}", serde_json::to_string_pretty(&receipt)?),
    }
    Ok(())
}
