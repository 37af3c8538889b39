//! `dsb policy`: check a policy directory (with the catalog's populations
//! when given a data directory), or make a server reload its own.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use datasandbox::catalog::Catalog;
use datasandbox::policy::{PolicyError, PolicySet};

use super::{Remote, needs_server};

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Validate every policy file; exit code 1 on any error.
    Check {
        #[arg(default_value = "policies")]
        dir: PathBuf,
        /// Also check that named datasets exist in this data directory's catalog.
        #[arg(long, env = "DSB_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Make the server re-read its policy directory (admin).
    Reload,
}

pub async fn run(command: PolicyCommand, remote: Option<&Remote>) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Reload => match remote {
            Some(remote) => reload(remote).await,
            None => needs_server("policy reload"),
        },
        PolicyCommand::Check { dir, data_dir } => check(&dir, data_dir.as_deref()),
    }
}

fn check(dir: &Path, data_dir: Option<&Path>) -> anyhow::Result<()> {
    let catalog = match &data_dir {
        Some(dir) => Some(Catalog::open(&dir.join("catalog"))?),
        None => None,
    };
    let known = match &catalog {
        Some(catalog) => Some(catalog.ids()?),
        None => None,
    };
    let result = PolicySet::load(dir, known.as_deref()).and_then(|set| {
        let mut notes = Vec::new();
        if let (Some(catalog), Some(known)) = (&catalog, &known) {
            let mut populations = std::collections::BTreeMap::new();
            for id in known {
                let version = catalog.get(id).map_err(|e| {
                    PolicyError(vec![datasandbox::policy::PolicyDiagnostic {
                        file: dir.to_path_buf(),
                        line: 0,
                        message: format!("catalog: {e}"),
                    }])
                })?;
                populations.insert(id.clone(), version.manifest.population().to_string());
            }
            let report = set.check_populations(&populations);
            if !report.problems.is_empty() {
                return Err(PolicyError(report.problems));
            }
            notes = report.notes;
        }
        Ok((set, notes))
    });
    match result {
        Ok((set, notes)) => {
            for policy in set.policies() {
                println!(
                    "ok  {}  {}  sha256 {}",
                    policy.source.display(),
                    policy.dataset.as_deref().unwrap_or("(default)"),
                    &policy.hash[..16]
                );
            }
            for note in notes {
                println!("note  {note}");
            }
            if catalog.is_none() {
                println!(
                    "note  populations (shared budgets, exact/noisy sides) are checked \
                     with --data-dir"
                );
            }
            Ok(())
        }
        Err(PolicyError(problems)) => {
            for problem in problems {
                eprintln!("{problem}");
            }
            std::process::exit(1);
        }
    }
}

async fn reload(remote: &Remote) -> anyhow::Result<()> {
    let policies = remote.client.reload_policies().await?;
    remote.print(&policies, |list| {
        for p in list {
            println!(
                "reloaded {:<20} {}  sha256 {}",
                p.dataset.as_deref().unwrap_or("(default)"),
                p.file,
                &p.sha256[..16]
            );
        }
    })
}
