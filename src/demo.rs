//! `dsb demo`: the sandbox loop on bundled data, explained as it runs.
//!
//! Registers the shipped sample datasets in a scratch catalog under their
//! manifests and `policies/`, runs the `district-stats` example over the
//! conditional enterprise register in aggregate mode (a small district is
//! withheld), shows a row-level query refused, then what the sandbox does to
//! guests that misbehave, and that a module compiles once. Later release modes add their steps here.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::catalog::Catalog;
use crate::dataset::DatasetSource;
use crate::policy::PolicySet;
use crate::sandbox::{Execution, GuestCall, JobEnv, Limits, Output, Sandbox, SandboxConfig};

/// Where the demo finds its inputs and keeps its state.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Built guest components (`scripts/build-guests`).
    pub guests_dir: PathBuf,
    /// The sample datasets (`data/samples`).
    pub samples_dir: PathBuf,
    /// The output policies (`policies`).
    pub policies_dir: PathBuf,
    /// A scratch directory for the catalog and the module cache.
    pub work_dir: PathBuf,
}

/// Run the demo, writing its narrative to `out`.
pub async fn run(config: &DemoConfig, out: &mut impl Write) -> anyhow::Result<()> {
    let district_stats = read_guest(&config.guests_dir, "district_stats")?;
    let hostile = read_guest(&config.guests_dir, "hostile")?;
    let sandbox_config = SandboxConfig {
        module_dir: Some(config.work_dir.join("modules")),
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::new(sandbox_config.clone())?;

    writeln!(
        out,
        "datasandbox demo: data stays home, algorithms travel\n"
    )?;
    let catalog = Catalog::open(&config.work_dir.join("catalog"))?;
    let mut versions = Vec::new();
    for id in ["enterprises", "tax_records"] {
        let version = catalog
            .add(
                &config.samples_dir.join(format!("{id}.csv")),
                &config.samples_dir.join(format!("{id}.toml")),
            )
            .await?;
        versions.push(version);
    }
    let policies = PolicySet::load(&config.policies_dir, Some(&catalog.ids()?))?;
    let register = versions[0].job_table(&policies);
    let policy = policies
        .policy_for(&register.name)
        .context("the demo needs a policy for enterprises")?;
    writeln!(
        out,
        "0. Catalog: registered {} ({} rows, {}) and {} under their manifests; \
         policy {} (sha256 {}…): modes {:?}, min_group_size {}.",
        register.name,
        versions[0].profile.rows,
        register.classification,
        versions[1].id,
        policy.source.display(),
        &policy.hash[..12],
        policy.modes,
        policy.min_group_size
    )?;
    let (module, load) = sandbox.load_module(&district_stats)?;
    writeln!(
        out,
        "1. Intake: district-stats.wasm ({} KiB) is a valid `{}` component, sha256 {}…, {:?}.",
        district_stats.len() / 1024,
        module.world,
        &module.hash[..16],
        load
    )?;

    let mut env = JobEnv::new("demo-district-stats");
    env.datasets = vec![register.clone()];
    env.limits = policy.job_limits(&env.limits);
    let run = GuestCall::Run {
        params: "{}".into(),
    };
    let execution = sandbox.run(&module, &env, run).await;
    writeln!(
        out,
        "2. It ran inside wasmtime over `{}` ({} data, aggregate mode), reading it only \
         through SQL that the host checked on the DataFusion plan:",
        register.name, register.classification
    )?;
    expect_ok(&execution)?;
    print_outputs(&execution, out)?;
    if let Some(Output::Table { arrow_ipc, .. }) = execution.outputs.first() {
        let (schema, _) = crate::arrow_ipc::decode(arrow_ipc)?;
        if let Some(report) = schema
            .metadata()
            .get(crate::query::SUPPRESSION_METADATA_KEY)
        {
            writeln!(out, "   Chongming is not listed: {report}.")?;
        }
    }
    let row_level = GuestCall::Run {
        params: r#"{"attack":"query","sql":"SELECT name, employees FROM enterprises WHERE district = 'Chongming'"}"#
            .into(),
    };
    let refused = sandbox
        .run_bytes(&hostile, &env_with(&register), row_level)
        .await;
    writeln!(
        out,
        "   A row-level query is refused before it runs: {}",
        refused.category
    )?;

    writeln!(
        out,
        "3. Hostile guests end in a fixed category; the host stays up:"
    )?;
    let strict = Limits {
        fuel: 500_000_000,
        ..Limits::default()
    };
    for (attack, protects) in [
        ("loop", "CPU (fuel)"),
        ("memory", "memory (256 MiB per instance)"),
        ("recursion", "the stack"),
        ("query-storm", "the query budget (100 per job)"),
        ("secret-error", "guest text never reaches the submitter"),
    ] {
        let mut env = JobEnv::new(format!("demo-{attack}"));
        env.limits = strict.clone();
        env.datasets = vec![register.clone()];
        let params = format!(r#"{{"attack":"{attack}"}}"#);
        let execution = sandbox
            .run_bytes(&hostile, &env, GuestCall::Run { params })
            .await;
        writeln!(
            out,
            "   {attack:<13} -> {:<16} protects {protects}",
            execution.category.to_string()
        )?;
    }
    let mut env = JobEnv::new("demo-wasi-probe");
    env.datasets = vec![register.clone()];
    let probe = sandbox
        .run_bytes(
            &hostile,
            &env,
            GuestCall::Run {
                params: r#"{"attack":"wasi-probe"}"#.into(),
            },
        )
        .await;
    expect_ok(&probe)?;
    let seen = |name: &str| {
        probe
            .outputs
            .iter()
            .find_map(|o| match o {
                Output::Value { name: n, value } if n == name => Some(*value),
                _ => None,
            })
            .unwrap_or(f64::NAN)
    };
    writeln!(
        out,
        "   wasi-probe    -> file read {}, socket {}, env vars {}, clock frozen at {} (the job's day)",
        yes_no(seen("file_read")),
        yes_no(seen("socket")),
        seen("env_vars"),
        seen("wall_clock_secs")
    )?;
    let next = sandbox
        .run(
            &module,
            &env_with(&register),
            GuestCall::Run {
                params: "{}".into(),
            },
        )
        .await;
    expect_ok(&next)?;
    writeln!(
        out,
        "   and the next job still succeeds: {}\n",
        next.category
    )?;

    let restarted = Sandbox::new(sandbox_config)?;
    let (_, load) = restarted.load_module(&district_stats)?;
    writeln!(
        out,
        "4. After a restart the module is not compiled again: loaded from {load:?} cache."
    )?;

    // The same job through the durable service: recorded before it runs,
    // released with a signed receipt, every step in the audit chain.
    let service = crate::service::Service::open(&config.work_dir, &config.policies_dir).await?;
    let result = service
        .run_analysis(
            "demo-analyst",
            &district_stats,
            std::slice::from_ref(&register.name),
            "{}",
            |_| {},
        )
        .await?;
    let receipt = result.receipt.context("the demo job must be released")?;
    writeln!(
        out,
        "5. Released with a signed receipt: job {}, module {}…, dataset {}@{}…, policy {}…, output {}…, \
         audit entry {}, key {}.",
        receipt.body.job_id,
        &receipt.body.module_sha256[..12],
        receipt.body.datasets[0].id,
        &receipt.body.datasets[0].version[..12],
        receipt
            .body
            .policy_sha256
            .as_deref()
            .map_or("none", |h| &h[..12]),
        &receipt.body.output_sha256[..12],
        receipt.body.audit_position,
        receipt.body.key_id
    )?;
    let keys = service.keys.public_keys()?;
    let json = serde_json::to_vec(&receipt)?;
    let output = serde_json::to_value(&result.execution.outputs)?;
    crate::receipt::Receipt::verify(&json, &keys, Some(&output))?;
    writeln!(
        out,
        "   receipt verify: valid (Ed25519 over RFC 8785 canonical JSON, output hash matches)"
    )?;
    let mut tampered: serde_json::Value = serde_json::from_slice(&json)?;
    tampered["audit_position"] = serde_json::json!(1);
    let refused = crate::receipt::Receipt::verify(&serde_json::to_vec(&tampered)?, &keys, None)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    writeln!(out, "   the same receipt with one field changed: {refused}")?;
    crate::store::audit::checkpoint(&service.store, &service.keys.signer()?).await?;
    match service.verify_audit().await? {
        Ok((entries, checkpoints)) => writeln!(
            out,
            "   audit chain intact: {entries} hash-chained entries, {checkpoints} signed checkpoint"
        )?,
        Err(broken) => bail!("demo audit chain broken: {broken}"),
    }
    writeln!(
        out,
        "\nDone: only the vetted table above left the sandbox; no group under {} enterprises.",
        policy.min_group_size
    )?;
    Ok(())
}

fn env_with(dataset: &DatasetSource) -> JobEnv {
    let mut env = JobEnv::new("demo-after-attacks");
    env.datasets = vec![dataset.clone()];
    env
}

fn yes_no(flag: f64) -> &'static str {
    if flag == 0.0 { "denied" } else { "ALLOWED" }
}

fn expect_ok(execution: &Execution) -> anyhow::Result<()> {
    if !execution.category.is_ok() {
        bail!("demo job {} ended {}", execution.job_id, execution.category);
    }
    Ok(())
}

fn read_guest(dir: &Path, name: &str) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(format!("{name}.wasm"));
    std::fs::read(&path).with_context(|| {
        format!(
            "reading {} (build the guests first: scripts/build-guests)",
            path.display()
        )
    })
}

/// Print outputs as tables and `name = value` lines.
pub fn print_outputs(execution: &Execution, out: &mut impl Write) -> anyhow::Result<()> {
    for output in &execution.outputs {
        match output {
            Output::Table {
                name,
                rows,
                arrow_ipc,
            } => {
                let (_, batches) = crate::arrow_ipc::decode(arrow_ipc)?;
                writeln!(out, "   table {name} ({rows} rows):")?;
                let table = datafusion::arrow::util::pretty::pretty_format_batches(&batches)?;
                for line in table.to_string().lines() {
                    writeln!(out, "   {line}")?;
                }
            }
            Output::Value { name, value } => writeln!(out, "   {name} = {value}")?,
        }
    }
    Ok(())
}
