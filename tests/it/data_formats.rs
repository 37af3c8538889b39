//! A data holder's file registers as CSV, Parquet or Arrow IPC, whatever
//! physical types its writer chose for a declared logical type (string
//! views, large strings, narrower integers, single floats), and every job
//! reads it with the declared types from the version's Parquet copy (the
//! original is kept, and versions stored without a copy stay readable):
//! the same rows answer the same query with the same released result in
//! all three formats.

use crate::common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datasandbox::catalog::{Catalog, CatalogError, DatasetVersion};
use datasandbox::dataset::DataFormat;
use datasandbox::policy::PolicySet;
use datasandbox::sandbox::Category;
use sha2::Digest;

/// The sample register read with its declared types.
async fn register_batches() -> Vec<RecordBatch> {
    let manifest = datasandbox::catalog::Manifest::load(&samples().join("enterprises.toml"))
        .expect("manifest");
    let table = datasandbox::catalog::raw_table(
        &manifest,
        &samples().join("enterprises.csv"),
        datasandbox::dataset::DataFormat::Csv,
    );
    native_typed("SELECT * FROM enterprises", &[table]).await
}

/// The physical type a writer chose for a column (by name and logical type).
type Physical = dyn Fn(&str, &DataType) -> DataType;

/// `batches` with each column cast as `physical` says.
fn recast(batches: &[RecordBatch], physical: &Physical) -> Vec<RecordBatch> {
    batches
        .iter()
        .map(|batch| {
            let schema = batch.schema();
            let fields: Vec<Field> = schema
                .fields()
                .iter()
                .map(|f| Field::new(f.name(), physical(f.name(), f.data_type()), true))
                .collect();
            let columns: Vec<ArrayRef> = batch
                .columns()
                .iter()
                .zip(&fields)
                .map(|(column, field)| cast(column, field.data_type()).expect("cast"))
                .collect();
            RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("batch")
        })
        .collect()
}

fn write_parquet(path: &Path, batches: &[RecordBatch]) {
    let file = std::fs::File::create(path).unwrap();
    let mut writer =
        datafusion::parquet::arrow::ArrowWriter::try_new(file, batches[0].schema(), None).unwrap();
    for batch in batches {
        writer.write(batch).unwrap();
    }
    writer.close().unwrap();
}

fn write_arrow(path: &Path, batches: &[RecordBatch]) {
    let file = std::fs::File::create(path).unwrap();
    let mut writer =
        datafusion::arrow::ipc::writer::FileWriter::try_new(file, &batches[0].schema()).unwrap();
    for batch in batches {
        writer.write(batch).unwrap();
    }
    writer.finish().unwrap();
}

/// Narrow every column the way other writers do: 32-bit integers, single
/// floats for money, large strings.
fn narrowed(name: &str, logical: &DataType) -> DataType {
    match (name, logical) {
        (_, DataType::Int64) => DataType::Int32,
        (_, DataType::Float64) => DataType::Float32,
        ("district" | "industry", DataType::Utf8) => DataType::LargeUtf8,
        _ => logical.clone(),
    }
}

async fn aggregate_over(version: &DatasetVersion) -> Vec<Vec<String>> {
    aggregate_over_file(version, &version.path, version.format).await
}

/// The same job over one of the version's files (its copy or original).
async fn aggregate_over_file(
    version: &DatasetVersion,
    path: &Path,
    format: DataFormat,
) -> Vec<Vec<String>> {
    let policies = PolicySet::load(&repo().join("policies"), None).unwrap();
    let dataset = datasandbox::release::bind::job_table(
        &version.manifest,
        path,
        format,
        &policies,
        true,
        &version.record_keys,
    );
    let execution = query_through_guest(
        "SELECT district, COUNT(*) AS n, SUM(employees) AS staff, AVG(registered_capital) AS capital \
         FROM enterprises GROUP BY district ORDER BY district",
        vec![dataset],
    )
    .await;
    assert_eq!(
        execution.category,
        Category::Ok,
        "{format:?}: {:?}",
        execution.diagnostics
    );
    rows(&table(&execution, "result"))
}

#[tokio::test]
async fn csv_parquet_and_arrow_register_and_answer_alike() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(&dir.path().join("catalog")).unwrap();
    let manifest = samples().join("enterprises.toml");
    let batches = register_batches().await;

    // Parquet as DataFusion 55 reads it back: strings arrive as Utf8View.
    let parquet = dir.path().join("enterprises.parquet");
    write_parquet(&parquet, &recast(&batches, &|_, t| t.clone()));
    // Parquet from a writer that chose 32-bit integers and single floats.
    let narrow_parquet = dir.path().join("narrow.parquet");
    write_parquet(&narrow_parquet, &recast(&batches, &narrowed));
    // Arrow IPC with large strings and narrow numbers.
    let arrow = dir.path().join("enterprises.arrow");
    write_arrow(&arrow, &recast(&batches, &narrowed));

    let csv = catalog
        .add(&samples().join("enterprises.csv"), &manifest)
        .await
        .unwrap();
    let mut versions = vec![csv];
    for file in [&parquet, &narrow_parquet, &arrow] {
        let version = catalog
            .add(file, &manifest)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        versions.push(version);
    }
    let hashes: std::collections::HashSet<_> = versions.iter().map(|v| v.hash.clone()).collect();
    assert_eq!(hashes.len(), 4, "four files, four versions");

    // Every version is read from its Parquet copy; the original is kept.
    for version in &versions {
        assert_eq!(version.format, DataFormat::Parquet);
        assert!(version.path.to_string_lossy().ends_with(".scan.parquet"));
        let original = std::fs::read(&version.original).unwrap();
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&original)),
            version.hash,
            "the version's hash is of the bytes as registered"
        );
    }

    // Jobs see the declared types, whatever the file holds: the copies and
    // the originals read alike.
    let readings = versions.iter().flat_map(|v| {
        [
            (v, v.path.clone(), v.format),
            (
                v,
                v.original.clone(),
                DataFormat::from_path(&v.original).unwrap(),
            ),
        ]
    });
    for (version, path, format) in readings {
        let table = datasandbox::catalog::raw_table(&version.manifest, &path, format);
        let read = native_typed(
            "SELECT * FROM enterprises LIMIT 1",
            std::slice::from_ref(&table),
        )
        .await;
        let types: Vec<DataType> = read[0]
            .schema()
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        assert_eq!(
            types,
            vec![
                DataType::Utf8,
                DataType::Utf8,
                DataType::Utf8,
                DataType::Utf8,
                DataType::Utf8,
                DataType::Int64,
                DataType::Float64,
                DataType::Date32
            ],
            "{format:?}"
        );
        let all = native_typed("SELECT * FROM enterprises", &[table]).await;
        assert_eq!(
            all.iter().map(|b| b.num_rows()).sum::<usize>(),
            2000,
            "{format:?}"
        );
    }

    // The profile is the same figures in every format.
    let profile = |v: &DatasetVersion| serde_json::to_value(&v.profile).unwrap();
    assert_eq!(profile(&versions[1]), profile(&versions[0]));
    for version in &versions {
        assert_eq!(version.profile.rows, 2000, "{:?}", version.format);
        assert_eq!(version.profile.privacy_units, 2000, "{:?}", version.format);
    }

    // One aggregate job gives the same released rows in every format
    // (registered capital only to single precision in the narrowed files).
    let exact = aggregate_over(&versions[0]).await;
    assert!(exact.len() >= 5, "{exact:?}");
    assert_eq!(aggregate_over(&versions[1]).await, exact, "parquet");
    // Read through the gate from the originals too (Arrow IPC through the
    // casting table).
    assert_eq!(
        aggregate_over_file(&versions[1], &versions[1].original, DataFormat::Parquet).await,
        exact,
        "original parquet"
    );
    let narrow = [
        aggregate_over(&versions[2]).await,
        aggregate_over(&versions[3]).await,
        aggregate_over_file(&versions[3], &versions[3].original, DataFormat::Arrow).await,
    ];
    for (file, got) in narrow.iter().enumerate() {
        assert_eq!(got.len(), exact.len(), "narrow file {file}");
        for (g, e) in got.iter().zip(&exact) {
            assert_eq!(g[..3], e[..3], "narrow file {file}");
            let (a, b): (f64, f64) = (g[3].parse().unwrap(), e[3].parse().unwrap());
            assert!((a - b).abs() <= b.abs() * 1e-6, "{g:?} vs {e:?}");
        }
    }
}

#[tokio::test]
async fn a_version_stored_before_parquet_copies_is_read_from_its_original() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(&dir.path().join("catalog")).unwrap();
    let version = catalog
        .add(
            &samples().join("enterprises.csv"),
            &samples().join("enterprises.toml"),
        )
        .await
        .unwrap();
    let with_copy = aggregate_over(&version).await;
    // A version stored by an earlier release has no copy.
    std::fs::remove_file(&version.path).unwrap();
    let old = catalog
        .get(&format!("enterprises@{}", version.hash))
        .unwrap();
    assert_eq!(old.format, DataFormat::Csv);
    assert_eq!(old.path, version.original);
    assert_eq!(aggregate_over(&old).await, with_copy);
}

#[tokio::test]
async fn a_file_whose_types_cannot_hold_the_declared_ones_is_refused_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(&dir.path().join("catalog")).unwrap();
    let manifest = samples().join("enterprises.toml");
    let batches = register_batches().await;

    // Doubles where the dictionary says int64; unsigned 64-bit integers
    // that may not fit; a string where a date is declared.
    let cases: [(&str, &Physical, &str); 3] = [
        (
            "float_staff.parquet",
            &|name, t| {
                if name == "employees" {
                    DataType::Float64
                } else {
                    t.clone()
                }
            },
            "enterprises.toml:55: columns: column employees is declared Int64 but the data holds Float64",
        ),
        (
            "unsigned_staff.arrow",
            &|name, t| {
                if name == "employees" {
                    DataType::UInt64
                } else {
                    t.clone()
                }
            },
            "enterprises.toml:55: columns: column employees is declared Int64 but the data holds UInt64",
        ),
        (
            "text_dates.parquet",
            &|name, t| {
                if name == "founded" {
                    DataType::Utf8
                } else {
                    t.clone()
                }
            },
            "enterprises.toml:71: columns: column founded is declared Date but the data holds Utf8",
        ),
    ];
    for (file, physical, expected) in cases {
        let path = dir.path().join(file);
        let recast = recast(&batches, physical);
        if file.ends_with(".parquet") {
            write_parquet(&path, &recast);
        } else {
            write_arrow(&path, &recast);
        }
        let error = catalog.add(&path, &manifest).await.unwrap_err();
        assert!(
            matches!(error, CatalogError::Manifest(_)),
            "{file}: {error}"
        );
        let error = error.to_string();
        assert!(error.contains(expected), "{file}: {error}");
    }
    assert!(catalog.ids().unwrap().is_empty(), "nothing is registered");
}
