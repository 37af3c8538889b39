//! The `dsb` command line. One file per command group, each with its clap
//! enum and a `run` that acts on its target: the local data directory, or
//! the server named by `--server` (through [`datasandbox::client`]).
//! Human-readable output by default, `--json` for scripts. `anyhow` lives
//! only here, in the binary.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use datasandbox::client::Client;
use serde::Serialize;

mod application;
mod audit;
mod auth;
mod budget;
mod contest;
mod dataset;
mod demo;
mod dev;
mod grant;
mod guest;
mod job;
mod key;
mod module;
mod output;
mod policy;
mod receipt;
mod review;
mod score;
mod serve;
mod token;
mod worker;

#[derive(Parser)]
#[command(
    name = "dsb",
    version,
    about = "datasandbox: data stays home, algorithms travel"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Talk to this server (`http://127.0.0.1:8470`) instead of a local
    /// data directory.
    #[arg(long, env = "DSB_SERVER", global = true)]
    server: Option<String>,
    /// The bearer token for --server.
    #[arg(long, env = "DSB_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Print JSON instead of tables (client commands).
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole loop on the bundled sample data.
    Demo(demo::DemoArgs),
    /// Serve the HTTP API.
    Serve(serve::ServeArgs),
    /// Upload and list modules (server).
    Module {
        #[command(subcommand)]
        command: module::ModuleCommand,
    },
    /// API tokens: create, list, revoke.
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
        #[arg(long, env = "DSB_DATA_DIR", default_value = "dsb-data", global = true)]
        data_dir: PathBuf,
    },
    /// Subjects' authorisations for scoring (server, admin).
    Auth {
        #[command(subcommand)]
        command: auth::AuthCommand,
    },
    /// Apply for a conditional dataset, accepting its data-use agreement
    /// (server).
    Apply(application::ApplyArgs),
    /// Applications (server): list; approve or reject (admin).
    Application {
        #[command(subcommand)]
        command: application::ApplicationCommand,
    },
    /// Review held outputs (server, administrators other than the author).
    Review {
        #[command(subcommand)]
        command: review::ReviewCommand,
    },
    /// Contests on hidden data (server): create (admin), submit, pick, leaderboards.
    Contest {
        #[command(subcommand)]
        command: contest::ContestCommand,
    },
    /// Differential-privacy budgets (server): yours, or grant more (admin).
    Budget {
        #[command(subcommand)]
        command: budget::BudgetCommand,
    },
    /// Score authorised subjects (server, institutions).
    Score {
        #[command(subcommand)]
        command: score::ScoreCommand,
    },
    /// Dataset grants for tenants (server, admin).
    Grant {
        #[command(subcommand)]
        command: grant::GrantCommand,
    },
    /// Build guest components from source.
    Guest {
        #[command(subcommand)]
        command: guest::GuestCommand,
    },
    /// Develop a guest on your own machine.
    Dev {
        #[command(subcommand)]
        command: dev::DevCommand,
    },
    /// Register and inspect datasets (administrators).
    Dataset {
        #[command(subcommand)]
        command: dataset::DatasetCommand,
        #[arg(long, env = "DSB_DATA_DIR", default_value = "dsb-data", global = true)]
        data_dir: PathBuf,
    },
    /// Check output policies.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// Run jobs durably on the embedded store (receipts, audit).
    Job {
        #[command(subcommand)]
        command: job::JobCommand,
        #[arg(long, env = "DSB_DATA_DIR", default_value = "dsb-data", global = true)]
        data_dir: PathBuf,
        #[arg(long, default_value = "policies", global = true)]
        policies: PathBuf,
    },
    /// Verify a receipt offline.
    Receipt {
        #[command(subcommand)]
        command: receipt::ReceiptCommand,
    },
    /// The audit log: verify, checkpoint, export.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
        #[arg(long, env = "DSB_DATA_DIR", default_value = "dsb-data", global = true)]
        data_dir: PathBuf,
    },
    /// Signing keys: list, rotate.
    Key {
        #[command(subcommand)]
        command: key::KeyCommand,
        #[arg(long, env = "DSB_DATA_DIR", default_value = "dsb-data", global = true)]
        data_dir: PathBuf,
    },
    /// A supervised worker process (started by `dsb serve`).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
    /// Regenerate the bundled sample datasets.
    SampleData {
        #[arg(long, default_value = "data/samples")]
        out: PathBuf,
    },
}

/// A client of a server's `/v1` API, printing tables or (`--json`) JSON.
pub struct Remote {
    pub client: Client,
    pub json: bool,
}

impl Remote {
    /// A module argument as a SHA-256: a `.wasm` file is uploaded first,
    /// anything else is taken as the hash of an uploaded module.
    async fn module_hash(&self, module: &str) -> anyhow::Result<String> {
        if !Path::new(module).is_file() {
            return Ok(module.to_string());
        }
        let bytes = std::fs::read(module).with_context(|| format!("reading {module}"))?;
        Ok(self.client.upload_module(bytes, None).await?.sha256)
    }

    fn print<T: Serialize>(&self, value: &T, human: impl FnOnce(&T)) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value)?);
        } else {
            human(value);
        }
        Ok(())
    }
}

/// Where a command acts: the server named by `--server`, if any, and the
/// local data directory (some commands act locally even with a server).
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub remote: Option<&'a Remote>,
    pub data_dir: &'a Path,
}

/// Commands that exist only against a server.
pub fn needs_server(what: &str) -> anyhow::Result<()> {
    bail!("`{what}` talks to a server: pass --server URL (or set DSB_SERVER) and a token")
}

/// The server for a command that only exists against one.
fn server<'a>(remote: Option<&'a Remote>, what: &str) -> anyhow::Result<&'a Remote> {
    remote.with_context(|| {
        format!("`{what}` talks to a server: pass --server URL (or set DSB_SERVER) and a token")
    })
}

/// Parse the command line and run it.
pub fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DSB_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(dispatch(cli))
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let remote = cli.server.as_deref().map(|url| Remote {
        client: datasandbox::client::Client::new(url, cli.token.clone()),
        json: cli.json,
    });
    let remote = remote.as_ref();
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Worker(args) => worker::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Module { command } => module::run(command, server(remote, "module")?).await,
        Command::Auth { command } => auth::run(command, server(remote, "auth")?).await,
        Command::Apply(args) => application::apply(args, server(remote, "apply")?).await,
        Command::Application { command } => {
            application::run(command, server(remote, "application")?).await
        }
        Command::Review { command } => review::run(command, server(remote, "review")?).await,
        Command::Contest { command } => contest::run(command, server(remote, "contest")?).await,
        Command::Budget { command } => budget::run(command, server(remote, "budget")?).await,
        Command::Score { command } => score::run(command, server(remote, "score")?).await,
        Command::Grant { command } => grant::run(command, server(remote, "grant")?).await,
        Command::Token { command, data_dir } => {
            token::run(
                command,
                Target {
                    remote,
                    data_dir: &data_dir,
                },
            )
            .await
        }
        Command::Dataset { command, data_dir } => {
            dataset::run(
                command,
                Target {
                    remote,
                    data_dir: &data_dir,
                },
            )
            .await
        }
        Command::Job {
            command,
            data_dir,
            policies,
        } => {
            job::run(
                command,
                Target {
                    remote,
                    data_dir: &data_dir,
                },
                &policies,
            )
            .await
        }
        Command::Receipt { command } => receipt::run(command, remote).await,
        Command::Audit { command, data_dir } => {
            audit::run(
                command,
                Target {
                    remote,
                    data_dir: &data_dir,
                },
            )
            .await
        }
        Command::Key { command, data_dir } => key::run(command, &data_dir),
        Command::Policy { command } => policy::run(command, remote).await,
        Command::Dev { command } => dev::run(command, remote).await,
        Command::Guest { command } => guest::run(command),
        Command::SampleData { out } => {
            datasandbox::sample_data::write(&out)
                .with_context(|| format!("writing {}", out.display()))?;
            println!("wrote the sample datasets to {}", out.display());
            Ok(())
        }
    }
}
