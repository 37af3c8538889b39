//! `dsb serve`: the HTTP API over a data directory.

use std::path::PathBuf;

use clap::Args;
use datasandbox::server::{Server, ServerConfig};

/// Serve the HTTP API.
#[derive(Args)]
pub struct ServeArgs {
    /// A TOML configuration file (see `ServerConfig`).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long)]
    policies: Option<PathBuf>,
    #[arg(long)]
    concurrency: Option<usize>,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let ServeArgs {
        config,
        listen,
        data_dir,
        policies,
        concurrency,
    } = args;
    let mut config = ServerConfig::load(config.as_deref(), std::env::vars())?;
    if let Some(listen) = listen {
        config.listen = listen;
    }
    if let Some(dir) = data_dir {
        config.data_dir = dir;
    }
    if let Some(dir) = policies {
        config.policies = dir;
    }
    if let Some(n) = concurrency {
        config.concurrency = n.max(1);
    }
    let server = Server::bind(config).await?;
    eprintln!("dsb serving on http://{}", server.addr);
    server.run(datasandbox::server::shutdown_signal()).await?;
    eprintln!("dsb stopped");
    Ok(())
}
