//! `dsb apply` and `dsb application`: applying for a conditional dataset,
//! and deciding applications (server).

use std::time::Duration;

use clap::Subcommand;

use super::Remote;

#[derive(clap::Args)]
pub struct ApplyArgs {
    #[arg(long)]
    pub dataset: String,
    #[arg(long)]
    pub purpose: String,
    /// Columns from the dictionary, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub columns: Vec<String>,
    /// Release modes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "aggregate")]
    pub modes: Vec<String>,
    #[arg(long, default_value_t = 90)]
    pub term_days: u32,
    /// What you intend to publish.
    #[arg(long)]
    pub outputs: String,
    /// Accept the dataset's current data-use agreement (shown without it).
    #[arg(long)]
    pub accept_agreement: bool,
}

#[derive(Subcommand)]
pub enum ApplicationCommand {
    /// Applications with deadlines (all for admins, your own otherwise).
    List,
    /// Approve, optionally narrowing columns, modes and term (admin).
    Approve {
        id: String,
        #[arg(long, value_delimiter = ',')]
        columns: Option<Vec<String>>,
        #[arg(long, value_delimiter = ',')]
        modes: Option<Vec<String>>,
        #[arg(long)]
        term_days: Option<u32>,
    },
    /// Reject with a reason the applicant sees (admin).
    Reject {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

pub async fn apply(args: ApplyArgs, remote: &Remote) -> anyhow::Result<()> {
    let agreement = remote.client.agreement(&args.dataset).await?;
    if !args.accept_agreement {
        println!(
            "{}\n(agreement version {}, sha256 {})\nRe-run with --accept-agreement to accept it and apply.",
            agreement.text.trim_end(),
            agreement.version,
            agreement.sha256
        );
        return Ok(());
    }
    let application = remote
        .client
        .apply(&datasandbox::applications::NewApplication {
            dataset: args.dataset,
            purpose: args.purpose,
            columns: args.columns,
            modes: args.modes,
            term_days: args.term_days,
            intended_outputs: args.outputs,
            agreement_sha256: agreement.sha256,
        })
        .await?;
    remote.print(&application, |a| {
        println!(
            "application {} for {} pending; answer due by {} (agreement {} accepted)",
            a.id,
            a.request.dataset,
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_secs(a.deadline_at as u64)
            ),
            a.agreement_version
        )
    })
}

pub async fn run(command: ApplicationCommand, remote: &Remote) -> anyhow::Result<()> {
    let print = |list: &Vec<datasandbox::applications::Application>| {
        for a in list {
            println!(
                "{}  {:<12} {:<14} {:<9} due {}{}{}",
                a.id,
                a.tenant,
                a.request.dataset,
                a.state,
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_secs(a.deadline_at as u64)
                ),
                if a.overdue { "  OVERDUE" } else { "" },
                a.reason
                    .as_ref()
                    .map(|r| format!("  reason: {r}"))
                    .unwrap_or_default()
            );
        }
    };
    match command {
        ApplicationCommand::List => {
            let list = remote.client.applications().await?;
            remote.print(&list, print)
        }
        ApplicationCommand::Approve {
            id,
            columns,
            modes,
            term_days,
        } => {
            let decided = remote
                .client
                .approve_application(
                    &id,
                    &datasandbox::applications::Approval {
                        columns,
                        modes,
                        term_days,
                    },
                )
                .await?;
            remote.print(&vec![decided], print)
        }
        ApplicationCommand::Reject { id, reason } => {
            let decided = remote.client.reject_application(&id, &reason).await?;
            remote.print(&vec![decided], print)
        }
    }
}
