//! `dsb module`: upload components and list your own (server).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use super::Remote;

#[derive(Subcommand)]
pub enum ModuleCommand {
    /// Upload a component; prints its sha256.
    Upload {
        file: PathBuf,
        #[arg(long)]
        name: Option<String>,
    },
    /// Your modules.
    List,
}

pub async fn run(command: ModuleCommand, remote: &Remote) -> anyhow::Result<()> {
    match command {
        ModuleCommand::Upload { file, name } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let info = remote.client.upload_module(bytes, name.as_deref()).await?;
            remote.print(&info, |i| {
                println!("{}  {} component, {} bytes", i.sha256, i.world, i.size)
            })
        }
        ModuleCommand::List => {
            let modules = remote.client.modules().await?;
            remote.print(&modules, |list| {
                for m in list {
                    println!(
                        "{}  {:<15} {:>9} B  {}",
                        m.sha256,
                        m.world,
                        m.size,
                        m.name.as_deref().unwrap_or("")
                    );
                }
            })
        }
    }
}
