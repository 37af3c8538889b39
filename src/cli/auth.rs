//! `dsb auth`: subjects' authorisations for scoring (server, admin).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use super::Remote;

#[derive(Subcommand)]
pub enum AuthCommand {
    /// Import authorisations from a consents CSV (header: subject, tenant,
    /// purpose, datasets (`;`-separated), valid_from, valid_until,
    /// consent_sha256, consent_uri).
    Import { file: PathBuf },
    /// Record one authorisation; the consent document's SHA-256 is computed
    /// from the file.
    Add {
        /// The subject's id in the data (e.g. a unified social credit code).
        #[arg(long)]
        subject: String,
        /// The institution (tenant) allowed to score.
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "credit-assessment")]
        purpose: String,
        /// Datasets covered, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        datasets: Vec<String>,
        /// The signed consent document.
        #[arg(long)]
        consent: PathBuf,
        /// Where the consent is kept (default: the file's path).
        #[arg(long)]
        consent_uri: Option<String>,
        /// Valid from (Unix seconds; default now).
        #[arg(long)]
        from: Option<i64>,
        /// How long it is valid, e.g. 365d.
        #[arg(long, default_value = "365d")]
        valid_for: humantime::Duration,
    },
    /// Authorisations, all or one subject's.
    List {
        #[arg(long)]
        subject: Option<String>,
    },
    /// Revoke an authorisation at once.
    Revoke { id: String },
}

pub async fn run(command: AuthCommand, remote: &Remote) -> anyhow::Result<()> {
    match command {
        AuthCommand::Import { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let added = remote.client.import_authorisations(text).await?;
            remote.print(&added, |list| {
                println!("imported {} authorisations", list.len())
            })
        }
        AuthCommand::Add {
            subject,
            tenant,
            purpose,
            datasets,
            consent,
            consent_uri,
            from,
            valid_for,
        } => {
            use sha2::Digest;
            let document = std::fs::read(&consent)
                .with_context(|| format!("reading {}", consent.display()))?;
            let valid_from = from.unwrap_or_else(datasandbox::store::now);
            let terms = datasandbox::scoring::authorisations::NewAuthorisation {
                subject,
                tenant,
                purpose,
                datasets,
                valid_from,
                valid_until: valid_from
                    .saturating_add(i64::try_from(valid_for.as_secs()).unwrap_or(i64::MAX)),
                consent_sha256: hex::encode(sha2::Sha256::digest(&document)),
                consent_uri: consent_uri.unwrap_or_else(|| consent.display().to_string()),
            };
            let added = remote.client.add_authorisations(&[terms]).await?;
            remote.print(&added, |list| {
                for a in list {
                    println!(
                        "{}  {} may be scored by {} for {} until {}",
                        a.id, a.terms.subject, a.terms.tenant, a.terms.purpose, a.terms.valid_until
                    );
                }
            })
        }
        AuthCommand::List { subject } => {
            let list = remote.client.authorisations(subject.as_deref()).await?;
            remote.print(&list, |list| {
                for a in list {
                    println!(
                        "{}  {:<20} {:<12} {:<18} {} → {}{}",
                        a.id,
                        a.terms.subject,
                        a.terms.tenant,
                        a.terms.purpose,
                        a.terms.valid_from,
                        a.terms.valid_until,
                        if a.revoked_at.is_some() {
                            "  revoked"
                        } else {
                            ""
                        }
                    );
                }
            })
        }
        AuthCommand::Revoke { id } => {
            remote.client.revoke_authorisation(&id).await?;
            println!("revoked {id}");
            Ok(())
        }
    }
}
