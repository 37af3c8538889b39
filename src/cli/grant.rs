//! `dsb grant`: dataset access for tenants (server, admin).

use clap::Subcommand;

use super::Remote;

#[derive(Subcommand)]
pub enum GrantCommand {
    /// Let a tenant run jobs on a conditional or restricted dataset.
    Add {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        dataset: String,
    },
    List,
}

pub async fn run(command: GrantCommand, remote: &Remote) -> anyhow::Result<()> {
    match command {
        GrantCommand::Add { tenant, dataset } => {
            let grant = remote.client.grant(&tenant, &dataset).await?;
            remote.print(&grant, |g| {
                println!("granted {} to {}", g.dataset, g.tenant)
            })
        }
        GrantCommand::List => {
            let grants = remote.client.grants().await?;
            remote.print(&grants, |list| {
                for g in list {
                    println!("{:<20} {:<20} by {}", g.dataset, g.tenant, g.granted_by);
                }
            })
        }
    }
}
