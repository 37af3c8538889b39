//! `dsb score`: score authorised subjects (server, institutions).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use super::Remote;

#[derive(Subcommand)]
pub enum ScoreCommand {
    /// Score the subjects listed in a file (one id a line) with a scorer
    /// module under a scoring policy; prints one line per subject.
    Batch {
        /// A sha256 or a .wasm file (uploaded first).
        #[arg(long)]
        module: String,
        #[arg(long, default_value = "credit-risk")]
        policy: String,
        #[arg(long)]
        subjects: PathBuf,
        #[arg(long, default_value = "{}")]
        params: String,
        /// Subjects per request.
        #[arg(long, default_value_t = 500)]
        chunk: usize,
        /// Write each scored subject's own signed receipt to
        /// `<dir>/<subject>.json`.
        #[arg(long)]
        receipts: Option<PathBuf>,
    },
    /// Approve a scorer module, with its exact params, for one scoring
    /// policy and one institution (administrators, after review).
    Approve {
        #[arg(long, default_value = "credit-risk")]
        policy: String,
        #[arg(long)]
        institution: String,
        /// The scorer's sha256.
        #[arg(long)]
        module: String,
        #[arg(long, default_value = "{}")]
        params: String,
    },
}

pub async fn run(command: ScoreCommand, remote: &Remote) -> anyhow::Result<()> {
    let (module, policy, subjects, params, chunk, receipts) = match command {
        ScoreCommand::Batch {
            module,
            policy,
            subjects,
            params,
            chunk,
            receipts,
        } => (module, policy, subjects, params, chunk, receipts),
        ScoreCommand::Approve {
            policy,
            institution,
            module,
            params,
        } => {
            let params: serde_json::Value =
                serde_json::from_str(&params).context("--params must be JSON")?;
            let approval = remote
                .client
                .approve_scorer(&datasandbox::scoring::approvals::NewApproval {
                    policy,
                    institution,
                    module,
                    params,
                })
                .await?;
            return remote.print(&approval, |a| {
                println!(
                    "approved {} for {} under {} (params sha256 {})",
                    a.module, a.institution, a.policy, a.params_sha256
                )
            });
        }
    };
    let sha256 = remote.module_hash(&module).await?;
    let params: serde_json::Value =
        serde_json::from_str(&params).context("--params must be JSON")?;
    let list: Vec<String> = std::fs::read_to_string(&subjects)
        .with_context(|| format!("reading {}", subjects.display()))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let progress = indicatif::ProgressBar::new(list.len() as u64);
    if remote.json {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut batches = Vec::new();
    for part in list.chunks(chunk.max(1)) {
        let batch = remote
            .client
            .score(&sha256, &policy, part, params.clone())
            .await?;
        progress.inc(part.len() as u64);
        let stop = batch
            .results
            .iter()
            .any(|r| r.outcome == "cap-reached" || r.outcome == "rate-limited");
        batches.push(batch);
        if stop {
            break;
        }
    }
    progress.finish_and_clear();
    if let Some(dir) = &receipts {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for r in batches.iter().flat_map(|b| &b.results) {
            if let Some(receipt) = &r.receipt {
                // Subject ids name files: keep them to a safe alphabet.
                let name: String = r
                    .subject
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '-' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                let path = dir.join(format!("{name}.json"));
                std::fs::write(&path, serde_json::to_vec_pretty(receipt)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    remote.print(&batches, |batches| {
        for batch in batches {
            for r in &batch.results {
                match (r.score, &r.grade) {
                    (Some(score), _) => println!("{}  {}  {score}", r.subject, r.outcome),
                    (None, Some(grade)) => println!("{}  {}  {grade}", r.subject, r.outcome),
                    (None, None) => println!("{}  {}", r.subject, r.outcome),
                }
            }
            eprintln!(
                "job {}: {} scored, receipt {}",
                batch.job_id,
                batch
                    .results
                    .iter()
                    .filter(|r| r.outcome == "scored")
                    .count(),
                if batch.receipt.is_some() {
                    "signed"
                } else {
                    "none"
                }
            );
        }
    })
}
