//! `dsb dataset`: register and inspect datasets, on the local data
//! directory (administrators) or a server (as the caller may see them).

use std::path::PathBuf;

use clap::Subcommand;
use datasandbox::catalog::{Catalog, synthetic};
use datasandbox::store::Store;

use super::{Remote, Target};

#[derive(Subcommand)]
pub enum DatasetCommand {
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

pub async fn run(command: DatasetCommand, target: Target<'_>) -> anyhow::Result<()> {
    let Some(remote) = target.remote else {
        return local(command, target.data_dir).await;
    };
    match command {
        DatasetCommand::Add { file, manifest } => add(&file, &manifest, remote).await,
        DatasetCommand::List => list(remote).await,
        DatasetCommand::Show { dataset } => show(&dataset, remote).await,
        DatasetCommand::Sample { dataset, rows, out } => {
            let text = remote.client.dataset_sample(&dataset, rows).await?;
            match out {
                Some(path) => std::fs::write(&path, text)?,
                None => print!("{text}"),
            }
            Ok(())
        }
    }
}

async fn list(remote: &Remote) -> anyhow::Result<()> {
    let list = remote.client.datasets().await?;
    remote.print(&list, |list| {
        for d in list {
            println!(
                "{:<20} {:<12} {:>8} rows  {}  {}",
                d.id,
                d.classification,
                d.rows,
                if d.accessible { "access" } else { "no access" },
                d.title
            );
        }
    })
}

async fn show(id: &str, remote: &Remote) -> anyhow::Result<()> {
    let detail = remote.client.dataset(id).await?;
    // The dictionary and profile are nested documents: JSON either way.
    println!("{}", serde_json::to_string_pretty(&detail)?);
    Ok(())
}

async fn add(
    file: &std::path::Path,
    manifest: &std::path::Path,
    remote: &Remote,
) -> anyhow::Result<()> {
    let summary = remote.client.add_dataset(file, manifest).await?;
    remote.print(&summary, |d| {
        println!("added {}@{} ({} rows)", d.id, d.version, d.rows)
    })
}

async fn local(command: DatasetCommand, data_dir: &std::path::Path) -> anyhow::Result<()> {
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
