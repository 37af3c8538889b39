//! `dsb contest`: create (admin), submit, pick, leaderboards (server).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;

use super::Remote;

#[derive(Subcommand)]
pub enum ContestCommand {
    /// Create a contest from a TOML spec (administrators).
    Create { spec: PathBuf },
    /// Every contest.
    List,
    /// Submit a model (a sha256 or a .wasm file, uploaded first).
    Submit {
        contest: String,
        #[arg(long)]
        module: String,
        /// Wait for the score.
        #[arg(long)]
        wait: bool,
    },
    /// Your team's submissions.
    Submissions { contest: String },
    /// Mark a scored submission as one of your final picks.
    Pick { contest: String, submission: String },
    /// The public leaderboard, or after the close the private one.
    Leaderboard {
        contest: String,
        #[arg(long)]
        private: bool,
    },
}

pub async fn run(command: ContestCommand, remote: &Remote) -> anyhow::Result<()> {
    let print_submissions = |list: &Vec<datasandbox::contest::SubmissionView>| {
        for s in list {
            println!(
                "{}  {:<12} {:<24} {}{}",
                s.id,
                s.state,
                s.category.as_deref().unwrap_or("-"),
                s.public_score.map(|v| v.to_string()).unwrap_or_default(),
                if s.picked { "  picked" } else { "" }
            );
        }
    };
    match command {
        ContestCommand::Create { spec } => {
            let text = std::fs::read_to_string(&spec)
                .with_context(|| format!("reading {}", spec.display()))?;
            let contest = remote.client.create_contest(text).await?;
            remote.print(&contest, |c| {
                println!(
                    "contest {} on {} ({}), split seed sha256 {}",
                    c.spec.id,
                    c.spec.dataset,
                    c.spec.metric.name(),
                    c.seed_sha256
                )
            })
        }
        ContestCommand::List => {
            let list = remote.client.contests().await?;
            remote.print(&list, |list| {
                for c in list {
                    println!(
                        "{:<24} {:<10} {:<12} {}",
                        c.spec.id,
                        c.spec.metric.name(),
                        if c.open { "open" } else { "closed" },
                        c.spec.title
                    );
                }
            })
        }
        ContestCommand::Submit {
            contest,
            module,
            wait,
        } => {
            let sha256 = remote.module_hash(&module).await?;
            let mut submission = remote.client.submit_model(&contest, &sha256).await?;
            if wait {
                remote
                    .client
                    .wait_job(&submission.id, Duration::from_secs(600))
                    .await?;
                submission = remote
                    .client
                    .submissions(&contest)
                    .await?
                    .into_iter()
                    .find(|s| s.id == submission.id)
                    .context("the submission disappeared")?;
            }
            remote.print(&vec![submission], print_submissions)
        }
        ContestCommand::Submissions { contest } => {
            let list = remote.client.submissions(&contest).await?;
            remote.print(&list, print_submissions)
        }
        ContestCommand::Pick {
            contest,
            submission,
        } => {
            remote.client.pick(&contest, &submission).await?;
            println!("picked {submission}");
            Ok(())
        }
        ContestCommand::Leaderboard { contest, private } => {
            let board = remote.client.leaderboard(&contest, private).await?;
            remote.print(&board, |board| {
                for s in board {
                    println!(
                        "{:>3}. {:<20} {:<10} ({} submissions)",
                        s.rank, s.team, s.score, s.submissions
                    );
                }
            })
        }
    }
}
