//! `dsb dev run`: a component on your own files (or a catalog dataset's
//! synthetic sample, or a contest's) with the server's host code and limits;
//! your own data, so the diagnostics are shown.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use datasandbox::catalog::{Catalog, synthetic};
use datasandbox::dataset::{Classification, DatasetSource, ensure_unique_names};
use datasandbox::policy::PolicySet;
use datasandbox::sandbox::{JobEnv, Limits, Returned, Sandbox, SandboxConfig};

use super::{Remote, needs_server, output};

#[derive(Subcommand)]
pub enum DevCommand {
    /// Run a component on local data with the same host code and limits as
    /// the server. It is your own data, so the diagnostic log is shown.
    Run(DevRun),
}

#[derive(Args)]
pub struct DevRun {
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

pub async fn run(command: DevCommand, remote: Option<&Remote>) -> anyhow::Result<()> {
    let DevCommand::Run(mut args) = command;
    if let Some(contest) = args.contest.clone() {
        let Some(remote) = remote else {
            return needs_server("dev run --contest");
        };
        {
            let view = remote.client.contest(&contest).await?;
            let dir = args.data_dir.join("synthetic");
            std::fs::create_dir_all(&dir)?;
            let train = dir.join("contest_train.csv");
            let holdout = dir.join("contest_holdout.csv");
            std::fs::write(
                &train,
                remote.client.contest_sample(&contest, args.rows, 1).await?,
            )?;
            std::fs::write(
                &holdout,
                remote.client.contest_sample(&contest, args.rows, 2).await?,
            )?;
            args.data = vec![train];
            args.holdout = Some(holdout);
            args.label = Some(view.spec.label.clone());
            args.metric = Some(view.spec.metric);
            args.params = serde_json::json!({
                "label": view.spec.label,
                "features": view.spec.features,
            })
            .to_string();
        }
    }
    let ok = dev_run(args).await?;
    if !ok {
        std::process::exit(2);
    }
    Ok(())
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
            let table = datasandbox::release::bind::job_table(
                &version.manifest,
                &path,
                datasandbox::dataset::DataFormat::Csv,
                &policies,
                false,
                &datasandbox::release::cell_key::RecordKeys::random(),
            );
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
    let datasandbox::sandbox::local::LocalCall { call, labels } =
        datasandbox::sandbox::local::call_for(
            module.world,
            &datasets,
            args.params.clone(),
            args.label.as_deref(),
            args.holdout.as_deref(),
        )
        .await?;
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
    output::print_outputs(&execution.outputs, &mut out)?;
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
