//! `dsb budget`: privacy budgets, yours or (admin) anyone's, and adding
//! to one (server).

use clap::Subcommand;

use super::Remote;

#[derive(Subcommand)]
pub enum BudgetCommand {
    /// Budgets on every dataset with a dp policy: cap, spent, left.
    Show {
        /// Another tenant's (administrators).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Add budget on top of a policy's cap (administrators; audited).
    Grant {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        dataset: String,
        #[arg(long)]
        epsilon: f64,
        #[arg(long, default_value_t = 0.0)]
        delta: f64,
        #[arg(long)]
        reason: String,
    },
}

pub async fn run(command: BudgetCommand, remote: &Remote) -> anyhow::Result<()> {
    let print = |list: &Vec<datasandbox::dp::budget::Budget>| {
        for b in list {
            println!(
                "{:<18} {:<12} ε spent {:.3} of {:.3}, {:.3} left   δ spent {:e} of {:e}   ({})",
                b.population,
                b.principal,
                b.spent.epsilon,
                b.cap.epsilon,
                b.remaining.epsilon,
                b.spent.delta,
                b.cap.delta,
                b.datasets.join(", ")
            );
        }
    };
    match command {
        BudgetCommand::Show { tenant } => {
            let list = remote.client.budgets(tenant.as_deref()).await?;
            remote.print(&list, print)
        }
        BudgetCommand::Grant {
            tenant,
            dataset,
            epsilon,
            delta,
            reason,
        } => {
            let budget = remote
                .client
                .grant_budget(&tenant, &dataset, epsilon, delta, &reason)
                .await?;
            remote.print(&vec![budget], print)
        }
    }
}
