//! `dsb job`: run jobs durably on the local data directory (`run`,
//! `soak`), or submit and follow them on a server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use datasandbox::service::Service;
use datasandbox::store::jobs;

use super::{Remote, Target, needs_server, output};

#[derive(Subcommand)]
pub enum JobCommand {
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

pub async fn run(command: JobCommand, target: Target<'_>, policies: &Path) -> anyhow::Result<()> {
    let remote = match (target.remote, &command) {
        (Some(remote), command)
            if !matches!(command, JobCommand::Run { .. } | JobCommand::Soak { .. }) =>
        {
            remote
        }
        _ => return local(command, target.data_dir, policies).await,
    };
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
                Some(sample_spec(&dimensions, epsilon, blocks, block_millis)?)
            } else {
                None
            };
            let submission = Submission {
                module: &module,
                mode: &mode,
                datasets: &datasets,
                params: &params,
                epsilon,
                accuracy: within.map(|within| datasandbox::dp::Accuracy { within, confidence }),
                sample: spec,
            };
            submit(submission, wait, remote).await
        }
        JobCommand::Show { id } => show(&id, remote).await,
        JobCommand::Output { id } => output(&id, remote).await,
        JobCommand::Cancel { id } => cancel(&id, remote).await,
        JobCommand::Diagnostics { id } => diagnostics(&id, remote).await,
        JobCommand::List => list(remote).await,
        JobCommand::Run { .. } | JobCommand::Soak { .. } => unreachable!("matched above"),
    }
}

/// A job as `dsb job submit` describes it.
pub struct Submission<'a> {
    /// A sha256 or a .wasm file (uploaded first).
    pub module: &'a str,
    pub mode: &'a str,
    pub datasets: &'a [String],
    /// JSON text for the guest.
    pub params: &'a str,
    /// `dp`: ε per query.
    pub epsilon: Option<f64>,
    /// `dp`: an error bound instead of ε.
    pub accuracy: Option<datasandbox::dp::Accuracy>,
    /// `sample-aggregate`: the declaration.
    pub sample: Option<datasandbox::dp::sample_aggregate::Spec>,
}

/// Submit a job; `module` is a sha256 or a .wasm file (uploaded first).
async fn submit(submission: Submission<'_>, wait: bool, remote: &Remote) -> anyhow::Result<()> {
    let Submission {
        module,
        mode,
        datasets,
        params,
        epsilon,
        accuracy,
        sample,
    } = submission;
    let sha256 = remote.module_hash(module).await?;
    let params: serde_json::Value =
        serde_json::from_str(params).context("--params must be JSON")?;
    let job = match (sample, epsilon, accuracy) {
        (Some(spec), _, _) => {
            remote
                .client
                .submit_sample_aggregate_job(&sha256, datasets, params, &spec)
                .await?
        }
        (None, Some(epsilon), _) => {
            remote
                .client
                .submit_dp_job(&sha256, datasets, params, epsilon)
                .await?
        }
        (None, None, Some(accuracy)) => {
            remote
                .client
                .submit_dp_job_within(&sha256, datasets, params, accuracy)
                .await?
        }
        (None, None, None) => {
            remote
                .client
                .submit_job(&sha256, mode, datasets, params)
                .await?
        }
    };
    if !wait {
        return remote.print(&job, |j| println!("job {} {}", j.id, j.state));
    }
    let spinner = indicatif::ProgressBar::new_spinner();
    if !remote.json {
        spinner.set_message(format!("job {} queued", job.id));
        spinner.enable_steady_tick(Duration::from_millis(120));
    }
    let mut current = job;
    while matches!(current.state.as_str(), "queued" | "running") {
        current = remote.client.job(&current.id, 30).await?;
        spinner.set_message(format!("job {} {}", current.id, current.state));
    }
    spinner.finish_and_clear();
    remote.print(&current, |j| {
        println!(
            "job {} {}: {}",
            j.id,
            j.state,
            j.category.as_deref().unwrap_or("")
        )
    })?;
    if current.state == "released" && !remote.json {
        output(&current.id, remote).await?;
    }
    if current.state != "released" {
        std::process::exit(2);
    }
    Ok(())
}

async fn show(id: &str, remote: &Remote) -> anyhow::Result<()> {
    let job = remote.client.job(id, 0).await?;
    remote.print(&job, |j| {
        println!(
            "job {}\n  state    {}\n  category {}\n  mode     {} ({})\n  module   {}\n  datasets {}\n  receipt  {}",
            j.id,
            j.state,
            j.category.as_deref().unwrap_or("-"),
            j.mode,
            j.world,
            j.module,
            j.datasets
                .iter()
                .map(|d| format!("{}@{}", d.id, &d.version[..12.min(d.version.len())]))
                .collect::<Vec<_>>()
                .join(", "),
            if j.has_receipt { "yes" } else { "no" }
        )
    })
}

async fn diagnostics(id: &str, remote: &Remote) -> anyhow::Result<()> {
    let diagnostics = remote.client.job_diagnostics(id).await?;
    println!("{}", serde_json::to_string_pretty(&diagnostics)?);
    Ok(())
}

async fn output(id: &str, remote: &Remote) -> anyhow::Result<()> {
    let output = remote.client.job_output(id).await?;
    if remote.json {
        println!("{}", serde_json::to_string_pretty(&output)?);
    } else {
        output::print_outputs(&output.outputs, &mut std::io::stdout().lock())?;
    }
    Ok(())
}

async fn list(remote: &Remote) -> anyhow::Result<()> {
    let jobs = remote.client.jobs().await?;
    remote.print(&jobs, |list| {
        for j in list {
            println!(
                "{}  {:<9} {:<10} {}",
                j.id,
                j.state,
                j.mode,
                j.category.as_deref().unwrap_or("")
            );
        }
    })
}

async fn cancel(id: &str, remote: &Remote) -> anyhow::Result<()> {
    let job = remote.client.cancel_job(id).await?;
    remote.print(&job, |j| println!("job {} {}", j.id, j.state))
}

async fn local(
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
            output::print_outputs(&result.execution.outputs, &mut std::io::stdout().lock())?;
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
        | JobCommand::Cancel { .. } => needs_server("job submit/show/output/cancel")?,
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

/// A sample-and-aggregate declaration from `--dimension name=lo:hi:default`
/// flags, `--epsilon`, `--blocks` and `--block-millis`.
fn sample_spec(
    dimensions: &[String],
    epsilon: Option<f64>,
    blocks: Option<usize>,
    block_millis: Option<u64>,
) -> anyhow::Result<datasandbox::dp::sample_aggregate::Spec> {
    let epsilon = epsilon.context("--mode sample-aggregate needs --epsilon")?;
    if dimensions.is_empty() {
        bail!("--mode sample-aggregate needs at least one --dimension name=lo:hi:default");
    }
    let dimensions = dimensions
        .iter()
        .map(|text| {
            let parsed = text.split_once('=').and_then(|(name, range)| {
                let numbers: Vec<f64> = range
                    .split(':')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .ok()?;
                match numbers.as_slice() {
                    [lo, hi, default] => Some(datasandbox::dp::sample_aggregate::Dimension {
                        name: name.to_string(),
                        lo: *lo,
                        hi: *hi,
                        default: *default,
                    }),
                    _ => None,
                }
            });
            parsed.with_context(|| format!("--dimension {text}: expected name=lo:hi:default"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(datasandbox::dp::sample_aggregate::Spec {
        dimensions,
        epsilon,
        blocks,
        block_millis,
    })
}
