//! `dsb review`: held outputs and their review (server, administrators
//! other than the author).

use clap::Subcommand;

use super::Remote;

#[derive(Subcommand)]
pub enum ReviewCommand {
    /// Held outputs you may review.
    List,
    /// One held output: outputs, queries, reports, policy, cost, pre-checks.
    Show { job: String },
    /// Approve (the second approval releases it).
    Approve {
        job: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Reject with a reason the author sees.
    Reject {
        job: String,
        #[arg(long)]
        comment: String,
    },
    /// Send it back to the author with comments.
    RequestChanges {
        job: String,
        #[arg(long)]
        comment: String,
    },
}

pub async fn run(command: ReviewCommand, remote: &Remote) -> anyhow::Result<()> {
    let (job, decision, comment) = match command {
        ReviewCommand::List => {
            let list = remote.client.review_queue().await?;
            return remote.print(&list, |list| {
                for h in list {
                    let checks = h.context["prechecks"]
                        .as_array()
                        .map(|c| c.len())
                        .unwrap_or(0);
                    println!(
                        "{}  by {}  {} pre-check finding(s)",
                        h.job_id, h.author, checks
                    );
                }
            });
        }
        ReviewCommand::Show { job } => {
            let held = remote.client.held_output(&job).await?;
            return remote.print(&held, |h| {
                println!("{}", serde_json::to_string_pretty(h).unwrap_or_default())
            });
        }
        ReviewCommand::Approve { job, comment } => (job, "approve", comment),
        ReviewCommand::Reject { job, comment } => (job, "reject", comment),
        ReviewCommand::RequestChanges { job, comment } => (job, "request-changes", comment),
    };
    let state = remote.client.decide(&job, decision, &comment).await?;
    println!("{job}: {state}");
    Ok(())
}
