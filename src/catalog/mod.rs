//! The dataset catalog: manifests, content-addressed versions, quality
//! profiles and synthetic samples.
//!
//! Layout under the catalog directory:
//! `<id>/CURRENT` (the current version's hash), and per version
//! `<id>/versions/<sha256>.<ext>` (the bytes), `<sha256>.manifest.toml`,
//! `<sha256>.profile.json`. Versions are never deleted, so every version a
//! receipt names stays readable as `id@hash`.
//!
//! This module checks data against its manifest and profiles it; it does
//! not decide what may be released (`policy` does).

pub mod manifest;
pub mod profile;
pub mod synthetic;

use std::path::{Path, PathBuf};

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::{CsvReadOptions, SessionContext};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use manifest::{ColumnSpec, ColumnType, Manifest, ManifestError};
pub use profile::Profile;

use crate::dataset::{DataFormat, DatasetSource};
use crate::release::cell_key::RecordKeys;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Manifest(Vec<ManifestError>),
    #[error("unknown dataset {0}")]
    UnknownDataset(String),
    #[error("dataset {id} has no version {hash}")]
    UnknownVersion { id: String, hash: String },
    #[error("{0}: not a CSV, Parquet or Arrow IPC file")]
    UnsupportedFormat(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading the data: {0}")]
    Data(#[from] datafusion::error::DataFusionError),
    #[error("catalog record {path}: {message}")]
    Corrupt { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CatalogError + '_ {
    move |source| CatalogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One stored version of a dataset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetVersion {
    pub id: String,
    /// Hex SHA-256 of the data file's bytes, as the data holder gave them.
    pub hash: String,
    /// What jobs read: the version's Parquet copy (typed by the manifest),
    /// or, for versions stored before there were copies, the original.
    pub format: DataFormat,
    pub path: PathBuf,
    /// The data file as registered (the bytes `hash` is of).
    #[serde(default)]
    pub original: PathBuf,
    pub manifest: Manifest,
    pub profile: Profile,
    /// The catalog's record keys for cell-key perturbation (never stored
    /// with the version record, never shown).
    #[serde(skip, default = "RecordKeys::random")]
    pub record_keys: RecordKeys,
}

/// A data file under its manifest as a table, without any release rules:
/// declared schema and dictionary. Protected data in this form answers no
/// query through the gate; the catalog's own profiling reads it directly.
/// `release::bind` adds what a job's mode and policy allow.
pub fn raw_table(manifest: &Manifest, path: &Path, format: DataFormat) -> DatasetSource {
    DatasetSource {
        name: manifest.id.clone(),
        path: path.to_path_buf(),
        format,
        classification: manifest.classification,
        schema: Some(manifest.schema()),
        dictionary: manifest.dictionary(),
        rules: None,
        dp: None,
        granted_columns: None,
    }
}

/// The catalog directory.
#[derive(Debug, Clone)]
pub struct Catalog {
    dir: PathBuf,
    /// Record keys of every privacy unit, one secret for the catalog: the
    /// same unit has the same key in every dataset and version, so no
    /// combination of tables gives a query a fresh perturbation.
    record_keys: RecordKeys,
}

impl Catalog {
    pub fn open(dir: &Path) -> Result<Self, CatalogError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let secret = dir.join("record-keys.secret");
        let record_keys = RecordKeys::load_or_create(&secret).map_err(io(&secret))?;
        Ok(Catalog {
            dir: dir.to_path_buf(),
            record_keys,
        })
    }

    /// Register `data` under its manifest: check the manifest, check the
    /// data against it, profile it, and store it as a new version that
    /// becomes current. Adding identical bytes again is a no-op.
    pub async fn add(
        &self,
        data: &Path,
        manifest_path: &Path,
    ) -> Result<DatasetVersion, CatalogError> {
        let manifest = Manifest::load(manifest_path).map_err(CatalogError::Manifest)?;
        let format = DataFormat::from_path(data)
            .ok_or_else(|| CatalogError::UnsupportedFormat(data.to_path_buf()))?;
        check_data(&manifest, data, format).await?;
        check_rows_per_unit(&manifest, &raw_table(&manifest, data, format)).await?;
        let bytes = std::fs::read(data).map_err(io(data))?;
        let hash = hex::encode(Sha256::digest(&bytes));
        let versions = self.dir.join(&manifest.id).join("versions");
        std::fs::create_dir_all(&versions).map_err(io(&versions))?;
        let extension = data
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("csv")
            .to_ascii_lowercase();
        let stored = versions.join(format!("{hash}.{extension}"));
        write_atomically(&stored, &bytes)?;
        let manifest_text = std::fs::read_to_string(manifest_path).map_err(io(manifest_path))?;
        let manifest_copy = versions.join(format!("{hash}.manifest.toml"));
        write_atomically(&manifest_copy, manifest_text.as_bytes())?;
        let mut manifest = manifest;
        manifest.source = manifest_copy;
        let scan = versions.join(format!("{hash}.{SCAN_SUFFIX}"));
        if !scan.exists() {
            write_scan_copy(&raw_table(&manifest, &stored, format), &scan).await?;
        }
        let table = raw_table(&manifest, &scan, DataFormat::Parquet);
        let profile = profile::profile(&manifest, &table).await?;
        let profile_path = versions.join(format!("{hash}.profile.json"));
        write_atomically(
            &profile_path,
            serde_json::to_string_pretty(&profile)
                .expect("profile serialises")
                .as_bytes(),
        )?;
        let current = self.dir.join(&manifest.id).join("CURRENT");
        write_atomically(&current, hash.as_bytes())?;
        Ok(DatasetVersion {
            id: manifest.id.clone(),
            hash,
            format: DataFormat::Parquet,
            path: scan,
            original: stored,
            manifest,
            profile,
            record_keys: self.record_keys.clone(),
        })
    }

    /// Dataset ids, sorted.
    pub fn ids(&self) -> Result<Vec<String>, CatalogError> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let path = entry.map_err(io(&self.dir))?.path();
            if path.join("CURRENT").exists()
                && let Some(name) = path.file_name().and_then(|n| n.to_str())
            {
                ids.push(name.to_string());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// A dataset's current version, or `id@hash` for a given one.
    pub fn get(&self, reference: &str) -> Result<DatasetVersion, CatalogError> {
        let (id, hash) = match reference.split_once('@') {
            Some((id, hash)) => (id, Some(hash.to_string())),
            None => (reference, None),
        };
        if crate::dataset::validate_table_name(id).is_err() {
            return Err(CatalogError::UnknownDataset(id.to_string()));
        }
        let root = self.dir.join(id);
        let hash = match hash {
            Some(hash) => hash,
            None => std::fs::read_to_string(root.join("CURRENT"))
                .map_err(|_| CatalogError::UnknownDataset(id.to_string()))?
                .trim()
                .to_string(),
        };
        if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(CatalogError::UnknownVersion {
                id: id.into(),
                hash,
            });
        }
        let versions = root.join("versions");
        let manifest_path = versions.join(format!("{hash}.manifest.toml"));
        if !manifest_path.exists() {
            return Err(CatalogError::UnknownVersion {
                id: id.into(),
                hash,
            });
        }
        let manifest = Manifest::load(&manifest_path).map_err(CatalogError::Manifest)?;
        let profile_path = versions.join(format!("{hash}.profile.json"));
        let profile: Profile =
            serde_json::from_slice(&std::fs::read(&profile_path).map_err(io(&profile_path))?)
                .map_err(|e| CatalogError::Corrupt {
                    path: profile_path.clone(),
                    message: e.to_string(),
                })?;
        let path = std::fs::read_dir(&versions)
            .map_err(io(&versions))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_stem().and_then(|s| s.to_str()) == Some(hash.as_str())
                    && DataFormat::from_path(p).is_some()
            })
            .ok_or_else(|| CatalogError::UnknownVersion {
                id: id.into(),
                hash: hash.clone(),
            })?;
        let scan = versions.join(format!("{hash}.{SCAN_SUFFIX}"));
        let (format, scan) = if scan.exists() {
            (DataFormat::Parquet, scan)
        } else {
            (
                DataFormat::from_path(&path).expect("filtered on format"),
                path.clone(),
            )
        };
        Ok(DatasetVersion {
            id: id.to_string(),
            format,
            hash,
            path: scan,
            original: path,
            manifest,
            profile,
            record_keys: self.record_keys.clone(),
        })
    }
}

/// The suffix of a version's Parquet copy: `<hash>.scan.parquet`.
const SCAN_SUFFIX: &str = "scan.parquet";

/// Rows per Parquet row group of a version's copy: large enough for scans,
/// small enough that a filtered query skips most of a big table.
const SCAN_ROW_GROUP_ROWS: usize = 256 * 1024;

/// Write a checked data file as the version's Parquet copy: typed by the
/// manifest, in the file's row order, with page-level statistics and page
/// indexes, so every job reads it with projection and predicate pushdown
/// instead of parsing the original again.
async fn write_scan_copy(table: &DatasetSource, scan: &Path) -> Result<(), CatalogError> {
    // One partition keeps the original's row order.
    let ctx = SessionContext::new_with_config(
        datafusion::prelude::SessionConfig::new().with_target_partitions(1),
    );
    crate::query::register(&ctx, table).await?;
    let tmp = scan.with_extension(format!("tmp{}.parquet", std::process::id()));
    let mut options = datafusion::config::TableParquetOptions::default();
    options.global.max_row_group_size = SCAN_ROW_GROUP_ROWS;
    options.global.statistics_enabled = Some("page".into());
    ctx.table(table.name.as_str())
        .await?
        .write_parquet(
            &tmp.to_string_lossy(),
            datafusion::dataframe::DataFrameWriteOptions::new().with_single_file_output(true),
            Some(options),
        )
        .await?;
    std::fs::rename(&tmp, scan).map_err(io(scan))
}

/// Check the data file against the manifest: columns, order and types.
async fn check_data(
    manifest: &Manifest,
    data: &Path,
    format: DataFormat,
) -> Result<(), CatalogError> {
    let ctx = SessionContext::new();
    let path = data.to_string_lossy();
    match format {
        DataFormat::Csv => {
            // Read everything as text first, to name the columns whose values
            // do not parse as their declared type.
            let inferred = ctx
                .read_csv(
                    path.as_ref(),
                    CsvReadOptions::new().schema_infer_max_records(0),
                )
                .await?;
            let names: Vec<String> = inferred
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            manifest
                .check_schema(&names, None)
                .map_err(CatalogError::Manifest)?;
            let text_schema = Schema::new(
                names
                    .iter()
                    .map(|n| Field::new(n, DataType::Utf8, true))
                    .collect::<Vec<_>>(),
            );
            ctx.register_csv(
                "raw",
                path.as_ref(),
                CsvReadOptions::new().schema(&text_schema),
            )
            .await?;
            let mut problems = Vec::new();
            for column in &manifest.columns {
                if column.data_type == ColumnType::String {
                    continue;
                }
                let sql = format!(
                    "SELECT CAST(COALESCE(SUM(CASE WHEN \"{0}\" IS NOT NULL AND TRY_CAST(\"{0}\" AS {1}) IS NULL \
                     THEN 1 ELSE 0 END), 0) AS BIGINT) AS invalid FROM raw",
                    column.name,
                    column.data_type.sql()
                );
                let invalid = scalar_i64(&ctx, &sql).await?;
                if invalid > 0 {
                    problems.push(ManifestError {
                        file: manifest.source.clone(),
                        line: column.line,
                        field: "columns.type".into(),
                        message: format!(
                            "{invalid} value(s) of column {} are not {:?}",
                            column.name, column.data_type
                        ),
                    });
                }
            }
            if !problems.is_empty() {
                return Err(CatalogError::Manifest(problems));
            }
        }
        DataFormat::Parquet | DataFormat::Arrow => {
            let frame = match format {
                DataFormat::Parquet => ctx.read_parquet(path.as_ref(), Default::default()).await?,
                _ => ctx.read_arrow(path.as_ref(), Default::default()).await?,
            };
            let names: Vec<String> = frame
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            let types: Vec<DataType> = frame
                .schema()
                .fields()
                .iter()
                .map(|f| f.data_type().clone())
                .collect();
            manifest
                .check_schema(&names, Some(&types))
                .map_err(CatalogError::Manifest)?;
        }
    }
    Ok(())
}

/// Hold the data to the manifest's `max_rows_per_unit`: the bound is a
/// public fact every `dp` query's noise is scaled to, so a file with a unit
/// over it is refused, not truncated.
async fn check_rows_per_unit(
    manifest: &Manifest,
    table: &DatasetSource,
) -> Result<(), CatalogError> {
    let Some(allowed) = manifest.max_rows_per_unit else {
        return Ok(());
    };
    let ctx = SessionContext::new();
    crate::query::register(&ctx, table).await?;
    let unit = &manifest.privacy_unit;
    let sql = format!(
        "SELECT CAST(COALESCE(MAX(n), 0) AS BIGINT) FROM (SELECT COUNT(*) AS n FROM {} \
         WHERE \"{unit}\" IS NOT NULL GROUP BY \"{unit}\")",
        table.name
    );
    let most = scalar_i64(&ctx, &sql).await?;
    if most > i64::from(allowed) {
        let over = format!(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM (SELECT COUNT(*) AS n FROM {} \
             WHERE \"{unit}\" IS NOT NULL GROUP BY \"{unit}\") WHERE n > {allowed}",
            table.name
        );
        let units = scalar_i64(&ctx, &over).await?;
        return Err(CatalogError::Manifest(vec![ManifestError {
            file: manifest.source.clone(),
            line: manifest.max_rows_per_unit_line,
            field: "max_rows_per_unit".into(),
            message: format!(
                "{units} privacy unit(s) have more than {allowed} rows (the most: {most}); \
                 raise the bound or split the data"
            ),
        }]));
    }
    Ok(())
}

/// The first column of the first row of a `BIGINT` query (0 if none).
async fn scalar_i64(ctx: &SessionContext, sql: &str) -> Result<i64, CatalogError> {
    let batches = ctx.sql(sql).await?.collect().await?;
    Ok(batches
        .first()
        .filter(|b| b.num_rows() > 0)
        .and_then(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                .map(|a| a.value(0))
        })
        .unwrap_or(0))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CatalogError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}
