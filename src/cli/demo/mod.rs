//! `dsb demo`: the whole loop on bundled data, explained as it runs.
//!
//! Starts the server on a loopback port over a scratch data directory and
//! then acts as its users over HTTP: the administrator registers the sample
//! datasets, loads `policies/`, creates an analyst's token and grants it the
//! conditional enterprise register; the analyst uploads the
//! `district-stats` example, runs it in aggregate mode (a small district is
//! withheld), is refused a row-level query and data it was not granted,
//! fetches the receipt and verifies it offline against the published keys;
//! the administrator verifies the audit chain. Then, in process, what the
//! sandbox does to guests that misbehave, and that a module compiles once.
//! Later release modes add their steps here.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use datasandbox::accounts::{self, Role};
use datasandbox::client::Client;
use datasandbox::dataset::DatasetSource;
use datasandbox::sandbox::{Execution, JobEnv, Output};
use datasandbox::server::{Server, ServerConfig};
use datasandbox::service::Service;

use super::output::print_outputs;

mod steps;
use steps::*;

/// Where the demo finds its inputs and keeps its state.
#[derive(Debug, Clone)]
struct DemoConfig {
    /// Built guest components (`scripts/build-guests`).
    guests_dir: PathBuf,
    /// Built Python guest components (`scripts/build-python-guests`).
    python_guests_dir: PathBuf,
    /// The sample datasets (`data/samples`).
    samples_dir: PathBuf,
    /// The output policies (`policies`).
    policies_dir: PathBuf,
    /// A scratch directory for the data directory.
    work_dir: PathBuf,
}

/// Run the whole loop on the bundled sample data.
#[derive(clap::Args)]
pub struct DemoArgs {
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
}

/// `dsb demo`: the demo in a scratch directory, removed afterwards.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let work = std::env::temp_dir().join(format!("dsb-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let config = DemoConfig {
        guests_dir: args.guests,
        python_guests_dir: args.python_guests,
        samples_dir: args.samples,
        policies_dir: args.policies,
        work_dir: work.clone(),
    };
    let result = walk(&config, &mut std::io::stdout().lock()).await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// Run the demo, writing its narrative to `out`.
async fn walk(config: &DemoConfig, out: &mut impl Write) -> anyhow::Result<()> {
    let district_stats = read_guest(&config.guests_dir, "district_stats")?;
    let hostile = read_guest(&config.guests_dir, "hostile")?;
    writeln!(
        out,
        "datasandbox demo: data stays home, algorithms travel\n"
    )?;

    // The server, on a loopback port, over a fresh data directory.
    let data_dir = config.work_dir.join("data");
    let service = Arc::new(Service::open(&data_dir, &config.policies_dir).await?);
    let server = Server::bind_service(
        ServerConfig {
            listen: "127.0.0.1:0".parse().expect("an address"),
            data_dir: data_dir.clone(),
            policies: config.policies_dir.clone(),
            ..ServerConfig::default()
        },
        Arc::clone(&service),
    )
    .await?;
    let base = format!("http://{}", server.addr);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    // The first administrator's token is made on the data directory itself
    // (`dsb token create --role admin` without --server).
    let (_, admin_token) =
        accounts::create_token(&service.store, "operator", Role::Admin, "platform", None).await?;
    let admin = Client::new(&base, Some(admin_token));
    writeln!(
        out,
        "0. Server: dsb serve on {base} (axum; data directory {}); an admin token was \
         created on the data directory.",
        data_dir.display()
    )?;

    let result = walk_through(config, &service, &admin, &district_stats, out).await;
    let _ = stop.send(());
    serving.await.context("the server task")??;
    result?;

    hostile_guests(config, &district_stats, &hostile, out).await?;
    writeln!(
        out,
        "\nDone: only the vetted table above left the sandbox, with a receipt anyone can \
         check and an audit trail no one can quietly edit."
    )?;
    Ok(())
}

/// Steps 1 to 5, as the administrator and the analyst, over HTTP.
async fn walk_through(
    config: &DemoConfig,
    service: &Service,
    admin: &Client,
    district_stats: &[u8],
    out: &mut impl Write,
) -> anyhow::Result<()> {
    for id in datasandbox::sample_data::DATASETS {
        admin
            .add_dataset(
                &config.samples_dir.join(format!("{id}.csv")),
                &config.samples_dir.join(format!("{id}.toml")),
            )
            .await?;
    }
    let policies = admin.reload_policies().await?;
    let datasets = admin.datasets().await?;
    let enterprises = datasets
        .iter()
        .find(|d| d.id == "enterprises")
        .context("enterprises registered")?;
    let policy = policies
        .iter()
        .find(|p| p.dataset.as_deref() == Some("enterprises"))
        .context("the demo needs a policy for enterprises")?;
    let analyst_token = admin.create_token(Role::Analyst, "fudan-lab", None).await?;
    admin.grant("fudan-lab", "enterprises").await?;
    let analyst = admin.with_token(analyst_token.token.clone());
    writeln!(
        out,
        "1. Admin over HTTP: registered {} ({} rows, {}), tax_records, social_security, \
         utility_payments and tax_overdue under their manifests; policies loaded ({} for enterprises: modes {:?}, min_group_size {}); \
         token for analyst tenant fudan-lab; grant fudan-lab -> enterprises.",
        enterprises.id,
        enterprises.rows,
        enterprises.classification,
        policy.file,
        policy.modes,
        policy.min_group_size
    )?;

    let module = analyst
        .upload_module(district_stats.to_vec(), Some("district-stats"))
        .await?;
    writeln!(
        out,
        "2. Analyst: uploaded district-stats.wasm ({} KiB), a valid `{}` component, sha256 {}…",
        module.size / 1024,
        module.world,
        &module.sha256[..16]
    )?;
    let job = aggregate_job(
        &analyst,
        &module.sha256,
        "enterprises",
        serde_json::json!({}),
    )
    .await?;
    if job.state != "released" {
        bail!(
            "demo job {} ended {} ({:?})",
            job.id,
            job.state,
            job.category
        );
    }
    let output = analyst.job_output(&job.id).await?;
    writeln!(
        out,
        "   job {} was durable before it ran (202), ran in wasmtime reading only through SQL \
         checked on the DataFusion plan, and was {}:",
        job.id, job.state
    )?;
    print_outputs(&output.outputs, out)?;
    if let Some(Output::Table { arrow_ipc, .. }) = output.outputs.first() {
        let (schema, _) = datasandbox::arrow_ipc::decode(arrow_ipc)?;
        if let Some(rule) = schema
            .metadata()
            .get(datasandbox::release::aggregate::RELEASE_METADATA_KEY)
        {
            writeln!(
                out,
                "   Chongming is not listed (fewer than 10 enterprises; a withheld group looks absent); counts carry cell-key perturbation: {rule}"
            )?;
        }
    }

    let hostile = read_guest(&config.guests_dir, "hostile")?;
    let probe = analyst.upload_module(hostile, Some("probe")).await?;
    let row_level = aggregate_job(
        &analyst,
        &probe.sha256,
        "enterprises",
        serde_json::json!({"attack": "query", "sql": "SELECT name, employees FROM enterprises WHERE district = 'Chongming'"}),
    )
    .await?;
    writeln!(
        out,
        "3. A row-level query is refused before it runs: {} ({}).",
        row_level.state,
        row_level.category.as_deref().unwrap_or("")
    )?;
    let ungranted = analyst
        .submit_job(
            &module.sha256,
            "aggregate",
            &["tax_records".to_string()],
            serde_json::json!({}),
        )
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_else(|| "ACCEPTED".into());
    writeln!(
        out,
        "   tax_records was not granted to fudan-lab: {ungranted}"
    )?;
    let outsider_token = admin
        .create_token(Role::Analyst, "other-bank", None)
        .await?;
    let outsider = admin.with_token(outsider_token.token);
    let peek = outsider
        .job_output(&job.id)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_else(|| "SHOWN".into());
    writeln!(out, "   another tenant asking for that output: {peek}")?;

    let receipt_bytes = analyst.receipt_bytes(&job.id).await?;
    let keys = analyst.keys().await?;
    let output_json = serde_json::to_value(&output.outputs)?;
    let receipt = datasandbox::receipt::Receipt::verify(&receipt_bytes, &keys, Some(&output_json))?;
    writeln!(
        out,
        "4. Receipt fetched and verified offline against the published keys (GET /v1/keys): \
         job {}, module {}…, dataset {}@{}…, policy {}…, output {}…, audit entry {}, key {}.",
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
    let mut tampered: serde_json::Value = serde_json::from_slice(&receipt_bytes)?;
    tampered["audit_position"] = serde_json::json!(1);
    let refused =
        datasandbox::receipt::Receipt::verify(&serde_json::to_vec(&tampered)?, &keys, None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
    writeln!(out, "   the same receipt with one field changed: {refused}")?;
    dp_step(config, admin, &analyst, &module.sha256, out).await?;
    scoring_step(config, admin, out).await?;
    contest_step(config, admin, out).await?;
    review_step(config, admin, out).await?;
    admin.audit_checkpoint().await?;
    let verdict = admin.audit_verify().await?;
    if !verdict.intact {
        bail!("demo audit chain broken: {:?}", verdict.reason);
    }
    let actions = datasandbox::store::audit::entries(&service.store).await?;
    let mut counts = std::collections::BTreeMap::new();
    for entry in &actions {
        *counts.entry(entry.action.as_str()).or_insert(0) += 1;
    }
    writeln!(
        out,
        "5. Admin: audit chain intact, {} hash-chained entries ({}), {} signed checkpoint(s).",
        verdict.entries,
        counts
            .iter()
            .map(|(action, n)| format!("{action} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        verdict.checkpoints
    )?;
    Ok(())
}

/// Submit an aggregate-mode job over one dataset and wait for its end.
pub(super) async fn aggregate_job(
    client: &Client,
    module: &str,
    dataset: &str,
    params: serde_json::Value,
) -> anyhow::Result<datasandbox::api::JobView> {
    let submitted = client
        .submit_job(module, "aggregate", &[dataset.to_string()], params)
        .await?;
    Ok(client
        .wait_job(&submitted.id, Duration::from_secs(60))
        .await?)
}

pub(super) fn env_with(dataset: &DatasetSource) -> JobEnv {
    let mut env = JobEnv::new("demo-after-attacks");
    env.datasets = vec![dataset.clone()];
    env
}

pub(super) fn yes_no(flag: f64) -> &'static str {
    if flag == 0.0 { "denied" } else { "ALLOWED" }
}

pub(super) fn expect_ok(execution: &Execution) -> anyhow::Result<()> {
    if !execution.category.is_ok() {
        bail!("demo job {} ended {}", execution.job_id, execution.category);
    }
    Ok(())
}

pub(super) fn read_guest(dir: &Path, name: &str) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(format!("{name}.wasm"));
    std::fs::read(&path).with_context(|| {
        format!(
            "reading {} (build the guests first: scripts/build-guests and scripts/build-python-guests)",
            path.display()
        )
    })
}
