//! `dsb`: the datasandbox command line. Errors are printed here and the
//! process exits non-zero; the library layers return typed errors.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use datasandbox::accounts;
use datasandbox::catalog::{Catalog, synthetic};
use datasandbox::dataset::{Classification, DatasetSource, ensure_unique_names};
use datasandbox::policy::{PolicyError, PolicySet};
use datasandbox::receipt::keys::key_id;
use datasandbox::receipt::{KeyRing, PublicKey, Receipt};
use datasandbox::sandbox::{GuestCall, JobEnv, Limits, Returned, Sandbox, SandboxConfig, World};
use datasandbox::server::{Server, ServerConfig};
use datasandbox::service::Service;
use datasandbox::store::{Store, audit, jobs};
use datasandbox::{arrow_ipc, demo, guest_build, query, sample_data};

mod cli;

#[derive(Parser)]
#[command(
    name = "dsb",
    version,
    about = "datasandbox: data stays home, algorithms travel"
)]
struct Cli {
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
    Demo {
        /// Built guest components.
        #[arg(
            long,
            env = "DSB_GUESTS_DIR",
            default_value = "sandbox-guests/target/wasm32-wasip2/release"
        )]
        guests: PathBuf,
        /// Built Python guest components.
        #[arg(long, default_value = "sandbox-guests/target/python")]
        python_guests: PathBuf,
        /// The sample datasets and their manifests.
        #[arg(long, default_value = "data/samples")]
        samples: PathBuf,
        /// The output policies.
        #[arg(long, default_value = "policies")]
        policies: PathBuf,
    },
    /// Serve the HTTP API.
    Serve {
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
    },
    /// Upload and list modules (server).
    Module {
        #[command(subcommand)]
        command: cli::ModuleCommand,
    },
    /// API tokens: create, list, revoke.
    Token {
        #[command(subcommand)]
        command: cli::TokenCommand,
        #[arg(long, env = "DSB_DATA_DIR", default_value = "dsb-data", global = true)]
        data_dir: PathBuf,
    },
    /// Subjects' authorisations for scoring (server, admin).
    Auth {
        #[command(subcommand)]
        command: cli::AuthCommand,
    },
    /// Apply for a conditional dataset, accepting its data-use agreement
    /// (server).
    Apply(cli::ApplyArgs),
    /// Applications (server): list; approve or reject (admin).
    Application {
        #[command(subcommand)]
        command: cli::ApplicationCommand,
    },
    /// Review held outputs (server, administrators other than the author).
    Review {
        #[command(subcommand)]
        command: cli::ReviewCommand,
    },
    /// Contests on hidden data (server): create (admin), submit, pick, leaderboards.
    Contest {
        #[command(subcommand)]
        command: cli::ContestCommand,
    },
    /// Differential-privacy budgets (server): yours, or grant more (admin).
    Budget {
        #[command(subcommand)]
        command: cli::BudgetCommand,
    },
    /// Score authorised subjects (server, institutions).
    Score {
        #[command(subcommand)]
        command: cli::ScoreCommand,
    },
    /// Dataset grants for tenants (server, admin).
    Grant {
        #[command(subcommand)]
        command: cli::GrantCommand,
    },
    /// Build guest components from source.
    Guest {
        #[command(subcommand)]
        command: GuestCommand,
    },
    /// Develop a guest on your own machine.
    Dev {
        #[command(subcommand)]
        command: DevCommand,
    },
    /// Register and inspect datasets (administrators).
    Dataset {
        #[command(subcommand)]
        command: DatasetCommand,
        #[arg(long, env = "DSB_DATA_DIR", default_value = "dsb-data", global = true)]
        data_dir: PathBuf,
    },
    /// Check output policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Run jobs durably on the embedded store (receipts, audit).
    Job {
        #[command(subcommand)]
        command: JobCommand,
        #[arg(long, env = "DSB_DATA_DIR", default_value = "dsb-data", global = true)]
        data_dir: PathBuf,
        #[arg(long, default_value = "policies", global = true)]
        policies: PathBuf,
    },
    /// Verify a receipt offline.
    Receipt {
        #[command(subcommand)]
        command: ReceiptCommand,
    },
    /// The audit log: verify, checkpoint, export.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
        #[arg(long, env = "DSB_DATA_DIR", default_value = "dsb-data", global = true)]
        data_dir: PathBuf,
    },
    /// Signing keys: list, rotate.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
        #[arg(long, env = "DSB_DATA_DIR", default_value = "dsb-data", global = true)]
        data_dir: PathBuf,
    },
    /// Regenerate the bundled sample datasets.
    SampleData {
        #[arg(long, default_value = "data/samples")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum GuestCommand {
    /// Build a Python module into a component with componentize-py
    /// (`pip install componentize-py==0.25.1`, or `scripts/python-env`).
    /// Rust guests build with `cargo build --target wasm32-wasip2`.
    Build {
        /// The app: a .py file defining the world's functions
        /// (see sandbox-guests/python/README.md).
        #[arg(long)]
        python: PathBuf,
        /// analysis, block-analysis, model or scorer.
        #[arg(long)]
        world: World,
        /// Where to write the component.
        #[arg(short, long)]
        out: PathBuf,
        /// More directories of pure-Python modules to bundle.
        #[arg(long = "path")]
        paths: Vec<PathBuf>,
        /// The componentize-py executable (default: PATH, then
        /// target/python-guests/venv).
        #[arg(long, env = "DSB_COMPONENTIZE_PY")]
        componentize_py: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DatasetCommand {
    /// Register a CSV, Parquet or Arrow IPC file under its manifest; a new
    /// version if the id exists.
    Add {
        file: PathBuf,
        #[arg(long)]
        manifest: PathBuf,
    },
    /// List datasets (with --server: as the caller may see them).
    List,
    /// Dictionary, profile and quality warnings of a dataset (`id` or `id@hash`).
    Show { dataset: String },
    /// Write a synthetic sample (no real row) as CSV.
    Sample {
        dataset: String,
        #[arg(long, default_value_t = 200)]
        rows: usize,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum JobCommand {
    /// Run an analysis job over catalog datasets and write its receipt.
    Run {
        #[arg(long)]
        module: PathBuf,
        #[arg(long = "dataset", required = true)]
        datasets: Vec<String>,
        #[arg(long, default_value = "{}")]
        params: String,
        #[arg(long, default_value = "analyst")]
        principal: String,
    },
    /// Run jobs back to back, printing `submitted <id>` once each is
    /// committed (for the crash-safety test).
    Soak {
        #[arg(long)]
        module: PathBuf,
        #[arg(long = "dataset", required = true)]
        datasets: Vec<String>,
        #[arg(long, default_value_t = u64::MAX)]
        count: u64,
    },
    /// Mark unfinished jobs interrupted and list every job's state (with
    /// --server: your jobs).
    List,
    /// Submit a job to the server; --module is a sha256 or a .wasm file.
    Submit {
        #[arg(long)]
        module: String,
        #[arg(long = "dataset", required = true)]
        datasets: Vec<String>,
        #[arg(long, default_value = "aggregate")]
        mode: String,
        #[arg(long, default_value = "{}")]
        params: String,
        /// `--mode dp`: the ε each query spends; `--mode sample-aggregate`:
        /// the ε of the release.
        #[arg(long)]
        epsilon: Option<f64>,
        /// `--mode dp`, instead of --epsilon: each query's noise stays within
        /// ± this with probability --confidence; the host spends the least ε
        /// that does it.
        #[arg(long, conflicts_with = "epsilon")]
        within: Option<f64>,
        /// With --within (default 0.95).
        #[arg(long, requires = "within", default_value_t = 0.95)]
        confidence: f64,
        /// `--mode sample-aggregate`: an output dimension as
        /// `name=lo:hi:default` (repeat for each, in the guest's order).
        #[arg(long = "dimension")]
        dimensions: Vec<String>,
        /// `--mode sample-aggregate`: number of blocks (default 20; never
        /// derived from the data).
        #[arg(long)]
        blocks: Option<usize>,
        /// `--mode sample-aggregate`: each block's time allowance in ms
        /// (default 2000). The release waits for every block's full
        /// allowance, so it comes at a time fixed by the declaration.
        #[arg(long)]
        block_millis: Option<u64>,
        /// Wait for the job to end and print its output.
        #[arg(long)]
        wait: bool,
    },
    /// A job's state (server).
    Show { id: String },
    /// A released job's output (server).
    Output { id: String },
    /// Cancel a job (server).
    Cancel { id: String },
    /// A job's diagnostics: trap, guest error and log, queries, resource
    /// use (administrators; server, or the local data directory).
    Diagnostics { id: String },
}

#[derive(Subcommand)]
enum ReceiptCommand {
    /// Fetch a job's receipt from the server, verified against its keys.
    Get {
        id: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check a receipt's signature (and the output, if given). Trusted
    /// keys: --key, --data-dir, or the server's published keys (--server).
    Verify {
        receipt: PathBuf,
        /// Hex Ed25519 public keys to trust; repeatable.
        #[arg(long = "key")]
        keys: Vec<String>,
        /// Trust the keys of this data directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The released output (JSON) to check against the receipt.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the chain and check every checkpoint; exit 1 when broken.
    Verify {
        /// Verify an export (`dsb audit export`) instead of the database,
        /// against the data directory's public keys (or --key).
        #[arg(long)]
        from_export: Option<PathBuf>,
        /// Hex Ed25519 public keys to trust for checkpoints; repeatable.
        #[arg(long = "key")]
        keys: Vec<String>,
    },
    /// Sign the current head.
    Checkpoint,
    /// Print entries and checkpoints as JSON lines.
    Export,
}

#[derive(Subcommand)]
enum KeyCommand {
    List,
    Rotate,
}

#[derive(Subcommand)]
enum PolicyCommand {
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

#[derive(Subcommand)]
enum DevCommand {
    /// Run a component on local data with the same host code and limits as
    /// the server. It is your own data, so the diagnostic log is shown.
    Run(DevRun),
}

#[derive(Args)]
struct DevRun {
    /// The component (.wasm).
    #[arg(long)]
    module: PathBuf,
    /// A CSV, Parquet or Arrow IPC file, or a directory of them; repeatable.
    /// Table names come from the file names.
    #[arg(long = "data")]
    data: Vec<PathBuf>,
    /// A catalog dataset: runs on its synthetic sample under its policy.
    #[arg(long = "dataset")]
    dataset: Vec<String>,
    /// The policy directory used with --dataset.
    #[arg(long, default_value = "policies")]
    policies: PathBuf,
    /// JSON text handed to the guest.
    #[arg(long, default_value = "{}")]
    params: String,
    /// For `model` guests: the label column, held back from `predict`.
    #[arg(long)]
    label: Option<String>,
    /// A contest (with --server): train on a synthetic sample of its
    /// features and label, predict a second synthetic sample, and print the
    /// contest's metric, before spending a submission.
    #[arg(long)]
    contest: Option<String>,
    /// Rows of each synthetic sample with --contest.
    #[arg(long, default_value_t = 1000)]
    rows: usize,
    #[arg(skip)]
    holdout: Option<PathBuf>,
    #[arg(skip)]
    metric: Option<datasandbox::contest::Metric>,
    /// Where compiled modules are cached.
    #[arg(long, env = "DSB_DATA_DIR", default_value = "dsb-data")]
    data_dir: PathBuf,
    /// Job id; seeds the guest's randomness.
    #[arg(long, default_value = "dev")]
    job_id: String,
    /// Override the fuel limit.
    #[arg(long)]
    fuel: Option<u64>,
    /// Override the wall-clock limit, in milliseconds.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Override the memory limit, in MiB.
    #[arg(long)]
    memory_mib: Option<usize>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

fn main() {
    if let Err(error) = run() {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DSB_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let remote = cli.server.as_deref().map(|url| cli::Remote {
        client: datasandbox::client::Client::new(url, cli.token.clone()),
        json: cli.json,
    });
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
            policies,
            concurrency,
        } => {
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
            runtime.block_on(async {
                let server = Server::bind(config).await?;
                eprintln!("dsb serving on http://{}", server.addr);
                server.run(datasandbox::server::shutdown_signal()).await?;
                eprintln!("dsb stopped");
                Ok(())
            })
        }
        Command::Module { command } => match &remote {
            Some(remote) => runtime.block_on(remote.module(command)),
            None => cli::needs_server("module"),
        },
        Command::Auth { command } => match &remote {
            Some(remote) => runtime.block_on(remote.auth(command)),
            None => cli::needs_server("auth"),
        },
        Command::Apply(args) => match &remote {
            Some(remote) => runtime.block_on(remote.apply(args)),
            None => cli::needs_server("apply"),
        },
        Command::Application { command } => match &remote {
            Some(remote) => runtime.block_on(remote.application(command)),
            None => cli::needs_server("application"),
        },
        Command::Review { command } => match &remote {
            Some(remote) => runtime.block_on(remote.review(command)),
            None => cli::needs_server("review"),
        },
        Command::Contest { command } => match &remote {
            Some(remote) => runtime.block_on(remote.contest(command)),
            None => cli::needs_server("contest"),
        },
        Command::Budget { command } => match &remote {
            Some(remote) => runtime.block_on(remote.budget(command)),
            None => cli::needs_server("budget"),
        },
        Command::Score { command } => match &remote {
            Some(remote) => runtime.block_on(remote.score(command)),
            None => cli::needs_server("score"),
        },
        Command::Grant { command } => match &remote {
            Some(remote) => runtime.block_on(remote.grant(command)),
            None => cli::needs_server("grant"),
        },
        Command::Token { command, data_dir } => match &remote {
            Some(remote) => runtime.block_on(remote.token(command)),
            None => runtime.block_on(local_token(command, &data_dir)),
        },
        Command::Dataset { command, .. } if remote.is_some() => {
            let remote = remote.as_ref().expect("checked");
            runtime.block_on(async {
                match command {
                    DatasetCommand::Add { file, manifest } => {
                        remote.add_dataset(&file, &manifest).await
                    }
                    DatasetCommand::List => remote.datasets().await,
                    DatasetCommand::Show { dataset } => remote.dataset(&dataset).await,
                    DatasetCommand::Sample { dataset, rows, out } => {
                        let text = remote.client.dataset_sample(&dataset, rows).await?;
                        match out {
                            Some(path) => std::fs::write(&path, text)?,
                            None => print!("{text}"),
                        }
                        Ok(())
                    }
                }
            })
        }
        Command::Job { command, .. }
            if remote.is_some() && !matches!(command, JobCommand::Run { .. } | JobCommand::Soak { .. }) =>
        {
            let remote = remote.as_ref().expect("checked");
            runtime.block_on(async {
                match command {
                    JobCommand::Submit {
                        module,
                        datasets,
                        mode,
                        params,
                        epsilon,
                        within,
                        confidence,
                        dimensions,
                        blocks,
                        block_millis,
                        wait,
                    } => {
                        let spec = if mode == "sample-aggregate" {
                            Some(cli::sample_spec(
                                &dimensions,
                                epsilon,
                                blocks,
                                block_millis,
                            )?)
                        } else {
                            None
                        };
                        let submission = cli::Submission {
                            module: &module,
                            mode: &mode,
                            datasets: &datasets,
                            params: &params,
                            epsilon,
                            accuracy: within.map(|within| datasandbox::dp::Accuracy {
                                within,
                                confidence,
                            }),
                            sample: spec,
                        };
                        remote.submit(submission, wait).await
                    }
                    JobCommand::Show { id } => remote.show(&id).await,
                    JobCommand::Output { id } => remote.output(&id).await,
                    JobCommand::Cancel { id } => remote.cancel(&id).await,
                    JobCommand::Diagnostics { id } => remote.diagnostics(&id).await,
                    JobCommand::List => remote.list_jobs().await,
                    JobCommand::Run { .. } | JobCommand::Soak { .. } => unreachable!("matched above"),
                }
            })
        }
        Command::Receipt {
            command: ReceiptCommand::Get { id, out },
        } => match &remote {
            Some(remote) => runtime.block_on(remote.receipt(&id, out)),
            None => cli::needs_server("receipt get"),
        },
        Command::Audit {
            command: AuditCommand::Verify { from_export: None, .. },
            ..
        } if remote.is_some() => runtime.block_on(remote.as_ref().expect("checked").audit_verify()),
        Command::Audit {
            command: AuditCommand::Checkpoint,
            ..
        } if remote.is_some() => {
            runtime.block_on(remote.as_ref().expect("checked").audit_checkpoint())
        }
        Command::Policy {
            command: PolicyCommand::Reload,
        } => match &remote {
            Some(remote) => runtime.block_on(remote.reload_policies()),
            None => cli::needs_server("policy reload"),
        },
        Command::Demo {
            guests,
            python_guests,
            samples,
            policies,
        } => runtime.block_on(async {
            let work = tempdir()?;
            let config = demo::DemoConfig {
                guests_dir: guests,
                python_guests_dir: python_guests,
                samples_dir: samples,
                policies_dir: policies,
                work_dir: work.clone(),
            };
            let result = demo::run(&config, &mut std::io::stdout().lock()).await;
            let _ = std::fs::remove_dir_all(&work);
            result
        }),
        Command::Dev {
            command: DevCommand::Run(mut args),
        } => {
            if let Some(contest) = args.contest.clone() {
                let Some(remote) = &remote else {
                    return cli::needs_server("dev run --contest");
                };
                runtime.block_on(async {
                    let view = remote.client.contest(&contest).await?;
                    let dir = args.data_dir.join("synthetic");
                    std::fs::create_dir_all(&dir)?;
                    let train = dir.join("contest_train.csv");
                    let holdout = dir.join("contest_holdout.csv");
                    std::fs::write(&train, remote.client.contest_sample(&contest, args.rows, 1).await?)?;
                    std::fs::write(&holdout, remote.client.contest_sample(&contest, args.rows, 2).await?)?;
                    args.data = vec![train];
                    args.holdout = Some(holdout);
                    args.label = Some(view.spec.label.clone());
                    args.metric = Some(view.spec.metric);
                    args.params = serde_json::json!({
                        "label": view.spec.label,
                        "features": view.spec.features,
                    })
                    .to_string();
                    anyhow::Ok(())
                })?;
            }
            let ok = runtime.block_on(dev_run(args))?;
            if !ok {
                std::process::exit(2);
            }
            Ok(())
        }
        Command::Guest {
            command:
                GuestCommand::Build {
                    python,
                    world,
                    out,
                    paths,
                    componentize_py,
                },
        } => {
            let report = guest_build::build_python(&guest_build::PythonBuild {
                app: python,
                world,
                out,
                paths,
                componentize_py,
            })?;
            println!(
                "built {} ({world}, {:.1} MB, sha256 {}) in {:.1} s with {}",
                report.out.display(),
                report.bytes as f64 / 1e6,
                report.sha256,
                report.elapsed.as_secs_f64(),
                report.tool.display()
            );
            Ok(())
        }
        Command::Dataset { command, data_dir } => {
            runtime.block_on(dataset_command(command, &data_dir))
        }
        Command::Policy {
            command: PolicyCommand::Check { dir, data_dir },
        } => {
            let catalog = match &data_dir {
                Some(dir) => Some(Catalog::open(&dir.join("catalog"))?),
                None => None,
            };
            let known = match &catalog {
                Some(catalog) => Some(catalog.ids()?),
                None => None,
            };
            let result = PolicySet::load(&dir, known.as_deref()).and_then(|set| {
                let mut notes = Vec::new();
                if let (Some(catalog), Some(known)) = (&catalog, &known) {
                    let mut populations = std::collections::BTreeMap::new();
                    for id in known {
                        let version = catalog.get(id).map_err(|e| {
                            PolicyError(vec![datasandbox::policy::PolicyDiagnostic {
                                file: dir.clone(),
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
        Command::Job {
            command,
            data_dir,
            policies,
        } => runtime.block_on(job_command(command, &data_dir, &policies)),
        Command::Receipt {
            command:
                ReceiptCommand::Verify {
                    receipt,
                    keys,
                    data_dir,
                    output,
                },
        } => {
            let published = match &remote {
                Some(remote) => runtime.block_on(remote.client.keys())?,
                None => Vec::new(),
            };
            let mut trusted: Vec<PublicKey> = keys
                .iter()
                .map(|k| PublicKey {
                    key_id: key_id(&hex::decode(k).unwrap_or_default()),
                    public_key: k.clone(),
                    current: false,
                })
                .collect();
            if let Some(dir) = data_dir {
                trusted.extend(KeyRing::open(&dir.join("keys"))?.public_keys()?);
            }
            trusted.extend(published);
            let json = std::fs::read(&receipt).with_context(|| format!("reading {}", receipt.display()))?;
            let output = match output {
                Some(path) => Some(serde_json::from_slice(&std::fs::read(&path)?)?),
                None => None,
            };
            match Receipt::verify(&json, &trusted, output.as_ref()) {
                Ok(receipt) => {
                    println!(
                        "valid: job {}{} released at audit entry {}, signed by key {}",
                        receipt.body.job_id,
                        receipt
                            .body
                            .subject
                            .as_ref()
                            .map(|s| format!(" (subject {s})"))
                            .unwrap_or_default(),
                        receipt.body.audit_position,
                        receipt.body.key_id
                    );
                    Ok(())
                }
                Err(error) => {
                    println!("INVALID: {error}");
                    std::process::exit(1);
                }
            }
        }
        Command::Audit { command, data_dir } => runtime.block_on(async {
            let store = Store::open(&data_dir.join("dsb.sqlite")).await?;
            let keys = KeyRing::open(&data_dir.join("keys"))?;
            match command {
                AuditCommand::Verify { from_export, keys: extra } => {
                    let (entries, checkpoints) = match &from_export {
                        Some(path) => audit::read_export(
                            &std::fs::read_to_string(path)
                                .with_context(|| format!("reading {}", path.display()))?,
                        )?,
                        None => (
                            audit::entries(&store).await?,
                            audit::checkpoints(&store).await?,
                        ),
                    };
                    let mut trusted = keys.public_keys()?;
                    trusted.extend(extra.iter().map(|k| PublicKey {
                        key_id: key_id(&hex::decode(k).unwrap_or_default()),
                        public_key: k.clone(),
                        current: false,
                    }));
                    match audit::verify(&entries, &checkpoints, &trusted) {
                        Ok((entries, checkpoints)) => {
                            println!("audit chain intact: {entries} entries, {checkpoints} signed checkpoints");
                            Ok(())
                        }
                        Err(broken) => {
                            println!("BROKEN: {broken}");
                            std::process::exit(1);
                        }
                    }
                }
                AuditCommand::Checkpoint => {
                    let checkpoint = audit::checkpoint(&store, &keys.signer()?).await?;
                    println!("{}", serde_json::to_string(&checkpoint)?);
                    Ok(())
                }
                AuditCommand::Export => {
                    for entry in audit::entries(&store).await? {
                        println!("{}", serde_json::json!({ "entry": entry }));
                    }
                    for checkpoint in audit::checkpoints(&store).await? {
                        println!("{}", serde_json::json!({ "checkpoint": checkpoint }));
                    }
                    Ok(())
                }
            }
        }),
        Command::Key { command, data_dir } => {
            let keys = KeyRing::open(&data_dir.join("keys"))?;
            if let KeyCommand::Rotate = command {
                println!("new signing key {}", keys.rotate()?);
            }
            for key in keys.public_keys()? {
                println!("{} {} {}", key.key_id, key.public_key, if key.current { "current" } else { "" });
            }
            Ok(())
        }
        Command::SampleData { out } => {
            sample_data::write(&out).with_context(|| format!("writing {}", out.display()))?;
            println!("wrote the sample datasets to {}", out.display());
            Ok(())
        }
    }
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("dsb-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Returns whether the job ended `ok`.
async fn dev_run(args: DevRun) -> anyhow::Result<bool> {
    let bytes = std::fs::read(&args.module)
        .with_context(|| format!("reading {}", args.module.display()))?;
    let mut datasets = Vec::new();
    for path in &args.data {
        // Your own files: treated as open data.
        datasets.extend(DatasetSource::discover(path, Classification::Open)?);
    }
    let mut policy_limits = None;
    if !args.dataset.is_empty() {
        let catalog = Catalog::open(&args.data_dir.join("catalog"))?;
        let policies = PolicySet::load(&args.policies, Some(&catalog.ids()?))?;
        let samples = args.data_dir.join("synthetic");
        std::fs::create_dir_all(&samples)?;
        for reference in &args.dataset {
            let version = catalog.get(reference)?;
            let path = samples.join(format!("{}.csv", version.id));
            std::fs::write(
                &path,
                synthetic::sample_csv(&version.manifest, &version.profile, 500, 1),
            )?;
            let mut table = datasandbox::release::bind::job_table(
                &version.manifest,
                &path,
                version.format,
                &policies,
                false,
                &datasandbox::release::cell_key::RecordKeys::random(),
            );
            table.format = datasandbox::dataset::DataFormat::Csv;
            if let Some(policy) = policies.policy_for(&version.id) {
                policy_limits = Some(policy);
            }
            datasets.push(table);
        }
    }
    ensure_unique_names(&datasets)?;
    let sandbox = Sandbox::new(SandboxConfig {
        module_dir: Some(args.data_dir.join("modules")),
        ..SandboxConfig::default()
    })?;
    let (module, load) = match sandbox.load_module(&bytes) {
        Ok(loaded) => loaded,
        Err(error) => {
            println!("category: invalid-module: {error}");
            return Ok(false);
        }
    };
    let mut limits = Limits::default();
    if let Some(fuel) = args.fuel {
        limits.fuel = fuel;
    }
    if let Some(ms) = args.timeout_ms {
        limits.timeout = Duration::from_millis(ms);
    }
    if let Some(mib) = args.memory_mib {
        limits.memory_bytes = mib << 20;
    }
    if let Some(policy) = &policy_limits {
        limits = datasandbox::release::bind::job_limits(policy, &limits);
    }
    let mut env = JobEnv::new(args.job_id.clone());
    env.limits = limits;
    env.datasets = datasets.clone();
    let (call, labels) = guest_call(module.world, &datasets, &args).await?;
    let execution = sandbox.run(&module, &env, call).await;

    let mut out = std::io::stdout().lock();
    if args.json {
        let report = serde_json::json!({
            "report": execution.submitter_report(),
            "returned": returned_json(&execution.returned),
            "diagnostics": execution.diagnostics,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(execution.category.is_ok());
    }
    writeln!(out, "module: {} ({}, {load:?})", module.hash, module.world)?;
    writeln!(out, "category: {}", execution.category)?;
    demo::print_outputs(&execution.outputs, &mut out)?;
    match (&execution.returned, labels) {
        (Some(Returned::Vector(predictions)), Some(labels)) => {
            writeln!(out, "predictions: {}", predictions.len())?;
            if predictions.len() == labels.len() && !labels.is_empty() {
                let mse = predictions
                    .iter()
                    .zip(&labels)
                    .map(|(p, y)| (p - y).powi(2))
                    .sum::<f64>()
                    / labels.len() as f64;
                match args.metric {
                    Some(metric) if predictions.iter().all(|p| metric.valid(*p)) => writeln!(
                        out,
                        "local {} on a synthetic holdout: {:.4} (synthetic labels: this checks \
                         the pipeline, not the model)",
                        metric.name(),
                        metric.score(predictions, &labels)
                    )?,
                    Some(metric) => writeln!(
                        out,
                        "invalid-prediction: a prediction {} cannot score",
                        metric.name()
                    )?,
                    None => writeln!(out, "local RMSE against the label: {:.4}", mse.sqrt())?,
                }
            }
        }
        (Some(Returned::Vector(values)), None) => writeln!(out, "returned: {values:?}")?,
        (Some(Returned::Number(value)), _) => writeln!(out, "returned: {value}")?,
        _ => {}
    }
    let d = &execution.diagnostics;
    writeln!(out, "--- diagnostics (your own data, so shown) ---")?;
    writeln!(
        out,
        "fuel used: {}, duration: {:?} (instantiation {:?}), peak memory: {:.1} MiB",
        d.fuel_consumed,
        d.duration,
        d.instantiate,
        d.memory_peak_bytes as f64 / f64::from(1 << 20)
    )?;
    for q in &d.queries {
        writeln!(
            out,
            "query: {} -> {} ({} rows, {} bytes)",
            q.sql, q.outcome, q.rows, q.bytes
        )?;
    }
    if let Some(error) = &d.guest_error {
        writeln!(out, "guest error: {error}")?;
    }
    if let Some(trap) = &d.trap {
        writeln!(out, "trap: {trap}")?;
    }
    if !d.log.is_empty() {
        writeln!(
            out,
            "log{}:\n{}",
            if d.log_truncated { " (truncated)" } else { "" },
            d.log.trim_end()
        )?;
    }
    Ok(execution.category.is_ok())
}

fn returned_json(returned: &Option<Returned>) -> serde_json::Value {
    match returned {
        Some(Returned::Vector(v)) => serde_json::json!(v),
        Some(Returned::Number(n)) => serde_json::json!(n),
        Some(Returned::Unit) | None => serde_json::Value::Null,
    }
}

/// Build the call for the module's world from local files. Returns the
/// held-back labels for `model` guests.
async fn guest_call(
    world: World,
    datasets: &[DatasetSource],
    args: &DevRun,
) -> anyhow::Result<(GuestCall, Option<Vec<f64>>)> {
    let params = args.params.clone();
    let first = || datasets.first().context("this world needs --data");
    Ok(match world {
        World::Analysis => (GuestCall::Run { params }, None),
        World::BlockAnalysis => {
            // Locally the whole table is one block.
            let (schema, batches) = query::read_table(first()?).await?;
            (
                GuestCall::Analyze {
                    block: arrow_ipc::encode(&schema, &batches)?,
                    params,
                },
                None,
            )
        }
        World::Scorer => {
            let mut rows = Vec::new();
            for dataset in datasets {
                let (schema, batches) = query::read_table(dataset).await?;
                rows.push((dataset.name.clone(), arrow_ipc::encode(&schema, &batches)?));
            }
            (GuestCall::Score { rows, params }, None)
        }
        World::Model => {
            let Some(label) = &args.label else {
                bail!("model guests need --label <column>");
            };
            let (schema, batches) = query::read_table(first()?).await?;
            // Predict the holdout when there is one, else the training rows.
            let (_, predict) = match &args.holdout {
                Some(path) => {
                    let holdout = DatasetSource::from_file(path, Classification::Open)?;
                    query::read_table(&holdout).await?
                }
                None => (std::sync::Arc::clone(&schema), batches.clone()),
            };
            let index = schema
                .index_of(label)
                .with_context(|| format!("no column {label}"))?;
            let mut labels = Vec::new();
            let mut features = Vec::new();
            for batch in &predict {
                let column = datafusion::arrow::compute::cast(
                    batch.column(index),
                    &datafusion::arrow::datatypes::DataType::Float64,
                )?;
                let column = column
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::Float64Array>()
                    .context("label is not numeric")?;
                labels.extend(column.iter().map(|v| v.unwrap_or(f64::NAN)));
                let mut without = batch.clone();
                without.remove_column(index);
                features.push(without);
            }
            let feature_schema = features
                .first()
                .map(|b| b.schema())
                .unwrap_or_else(|| std::sync::Arc::new(schema.as_ref().clone()));
            (
                GuestCall::TrainPredict {
                    train: arrow_ipc::encode(&schema, &batches)?,
                    params,
                    features: arrow_ipc::encode(&feature_schema, &features)?,
                },
                Some(labels),
            )
        }
    })
}

async fn dataset_command(
    command: DatasetCommand,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let catalog = Catalog::open(&data_dir.join("catalog"))?;
    match command {
        DatasetCommand::Add { file, manifest } => {
            let version = catalog.add(&file, &manifest).await?;
            let store = Store::open(&data_dir.join("dsb.sqlite")).await?;
            datasandbox::service::record_dataset_added(&store, "operator", &version).await?;
            println!(
                "added {}@{} ({} rows, {} privacy units)",
                version.id, version.hash, version.profile.rows, version.profile.privacy_units
            );
            for warning in &version.profile.warnings {
                println!("warning: {warning}");
            }
        }
        DatasetCommand::List => {
            for id in catalog.ids()? {
                let version = catalog.get(&id)?;
                println!(
                    "{:<20} {:<12} {}  {}",
                    id,
                    version.manifest.classification.to_string(),
                    &version.hash[..16],
                    version.manifest.title
                );
            }
        }
        DatasetCommand::Show { dataset } => {
            let version = catalog.get(&dataset)?;
            let m = &version.manifest;
            println!("{} — {}\n{}", m.id, m.title, m.summary);
            println!(
                "version {} ({:?}), classification {}, privacy unit {}",
                version.hash, version.format, m.classification, m.privacy_unit
            );
            println!(
                "owner {}, updated {}, domain {}",
                m.owner, m.update_frequency, m.domain
            );
            if let Some(coverage) = &m.time_coverage {
                let observed = version
                    .profile
                    .observed_coverage
                    .clone()
                    .map(|(a, b)| format!("{a} to {b}"))
                    .unwrap_or_else(|| "none".into());
                println!(
                    "time coverage {} to {} (by {}), observed {observed}",
                    coverage.start, coverage.end, coverage.column
                );
            }
            println!(
                "\n{:<20} {:<8} {:<17} {:>7} {:>9} {:>8}  {:<12} {:<12} description",
                "column", "type", "role", "nulls", "distinct", "out-bnd", "min", "max"
            );
            for (column, profile) in m.columns.iter().zip(&version.profile.columns) {
                println!(
                    "{:<20} {:<8} {:<17} {:>6.1}% {:>9} {:>7.1}%  {:<12} {:<12} {}{}",
                    column.name,
                    format!("{:?}", column.data_type).to_lowercase(),
                    column.role.to_string(),
                    profile.null_rate * 100.0,
                    profile.distinct,
                    profile.out_of_bounds_rate * 100.0,
                    profile.min.as_deref().unwrap_or("-"),
                    profile.max.as_deref().unwrap_or("-"),
                    column.description,
                    if column.unit.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", column.unit)
                    },
                );
            }
            println!(
                "\n{} rows, {} privacy units, dictionary {:.0}% complete",
                version.profile.rows,
                version.profile.privacy_units,
                version.profile.dictionary_completeness * 100.0
            );
            if version.profile.warnings.is_empty() {
                println!("quality: no warnings");
            }
            for warning in &version.profile.warnings {
                println!("quality warning: {warning}");
            }
        }
        DatasetCommand::Sample { dataset, rows, out } => {
            let version = catalog.get(&dataset)?;
            let text = synthetic::sample_csv(&version.manifest, &version.profile, rows, 1);
            match out {
                Some(path) => std::fs::write(&path, text)?,
                None => print!("{text}"),
            }
        }
    }
    Ok(())
}

async fn job_command(
    command: JobCommand,
    data_dir: &std::path::Path,
    policies: &std::path::Path,
) -> anyhow::Result<()> {
    let service = Service::open(data_dir, policies).await?;
    match command {
        JobCommand::Run {
            module,
            datasets,
            params,
            principal,
        } => {
            let bytes =
                std::fs::read(&module).with_context(|| format!("reading {}", module.display()))?;
            let result = service
                .run_analysis(&principal, &bytes, &datasets, &params, |_| {})
                .await?;
            println!("job {}: {}", result.job_id, result.execution.category);
            demo::print_outputs(&result.execution.outputs, &mut std::io::stdout().lock())?;
            if result.receipt.is_some() {
                println!(
                    "receipt: {}",
                    data_dir
                        .join("receipts")
                        .join(format!("{}.json", result.job_id))
                        .display()
                );
            }
            if !result.execution.category.is_ok() {
                std::process::exit(2);
            }
        }
        JobCommand::Soak {
            module,
            datasets,
            count,
        } => {
            let bytes = std::fs::read(&module)?;
            for _ in 0..count {
                service
                    .run_analysis("soak", &bytes, &datasets, "{}", |id| {
                        println!("submitted {id}");
                        let _ = std::io::Write::flush(&mut std::io::stdout());
                    })
                    .await?;
            }
        }
        JobCommand::Submit { .. }
        | JobCommand::Show { .. }
        | JobCommand::Output { .. }
        | JobCommand::Cancel { .. } => cli::needs_server("job submit/show/output/cancel")?,
        JobCommand::Diagnostics { id } => {
            match datasandbox::store::diagnostics::get(&service.store, &id).await? {
                Some(diagnostics) => println!("{}", serde_json::to_string_pretty(&diagnostics)?),
                None => anyhow::bail!("no diagnostics kept for job {id}"),
            }
        }
        JobCommand::List => {
            for job in jobs::all(&service.store).await? {
                println!(
                    "{} {} {}",
                    job.id,
                    job.state,
                    job.category.unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

/// `dsb token …` on the local data directory (bootstrapping the first
/// administrator before any server runs).
async fn local_token(command: cli::TokenCommand, data_dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)?;
    let store = Store::open(&data_dir.join("dsb.sqlite")).await?;
    match command {
        cli::TokenCommand::Create {
            role,
            tenant,
            expires,
        } => {
            let expires_at = expires.map(|d| datasandbox::store::now() + d.as_secs() as i64);
            let (info, token) =
                accounts::create_token(&store, "operator", role, &tenant, expires_at).await?;
            println!("{token}");
            eprintln!(
                "token {} for {}/{} (shown once; store it now)",
                info.id, info.tenant, info.role
            );
        }
        cli::TokenCommand::List => {
            cli::print_tokens(&accounts::list_tokens(&store).await?);
        }
        cli::TokenCommand::Revoke { id } => {
            if !accounts::revoke_token(&store, "operator", &id).await? {
                bail!("no such token {id}");
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}
