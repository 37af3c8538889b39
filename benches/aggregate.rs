//! Aggregate mode against what an analyst would use instead, side by side
//! in one run on the same Parquet files: unprotected native DataFusion, and
//! DuckDB running the same GROUP BY with the unit threshold written as
//! `HAVING COUNT(DISTINCT enterprise_id) >= 10` (goal: aggregate mode
//! ≤ 1.5× DuckDB on every table shape).
//!
//! Shapes: 1M and 10M rows, one and ten rows per enterprise; enterprise
//! ids are 18-character strings as in the registers. Aggregate mode runs as
//! a job would: a fresh `QuerySession` over the file, the plan gate,
//! cell-key perturbation, dominance, the threshold and the query ledger
//! (one SQLite transaction). DuckDB runs in its own Python process
//! (`benches/duckdb_peer.py`, opening a fresh connection per run); set
//! `DSB_DUCKDB_PYTHON` to a Python with `duckdb` installed, which
//! `scripts/bench-aggregate-vs-duckdb` does. Each figure is the median of
//! five runs after one warm-up.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{percentile, repo};
use datafusion::arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use datasandbox::dataset::{Classification, DatasetSource};

const SQL: &str = "SELECT district, industry, COUNT(*) AS n, SUM(amount) AS total, AVG(amount) AS mean \
                   FROM payments GROUP BY district, industry";
const DUCKDB_SQL: &str = "SELECT district, industry, COUNT(*) AS n, SUM(amount) AS total, AVG(amount) AS mean \
                          FROM read_parquet('{file}') GROUP BY district, industry \
                          HAVING COUNT(DISTINCT enterprise_id) >= 10";
const RUNS: usize = 5;

const DISTRICTS: [&str; 8] = [
    "Pudong",
    "Minhang",
    "Jiading",
    "Songjiang",
    "Baoshan",
    "Qingpu",
    "Fengxian",
    "Jing'an",
];
const INDUSTRIES: [&str; 12] = [
    "logistics",
    "retail",
    "it-services",
    "manufacturing",
    "catering",
    "construction",
    "finance",
    "healthcare",
    "education",
    "tourism",
    "agriculture",
    "media",
];

/// `rows` payments, `rows_per_unit` per enterprise; an enterprise's rows
/// share its district and industry (as a register's would).
fn write_payments(path: &Path, rows: usize, rows_per_unit: usize) {
    let units = rows / rows_per_unit;
    let file = std::fs::File::create(path).unwrap();
    let mut writer: Option<ArrowWriter<std::fs::File>> = None;
    for start in (0..rows).step_by(1 << 20) {
        let end = (start + (1 << 20)).min(rows);
        let unit = |i: usize| (i % units) * 2_654_435_761 % 1_000_000_007;
        let id =
            StringArray::from_iter_values((start..end).map(|i| format!("9131{:014}", unit(i))));
        let district = StringArray::from_iter_values(
            (start..end).map(|i| DISTRICTS[unit(i) % DISTRICTS.len()]),
        );
        let industry = StringArray::from_iter_values(
            (start..end).map(|i| INDUSTRIES[unit(i) / 7 % INDUSTRIES.len()]),
        );
        let amount = Float64Array::from_iter_values(
            (start..end).map(|i| ((i * 2_654_435_761) % 100_000) as f64 / 10.0),
        );
        let batch = RecordBatch::try_from_iter([
            ("enterprise_id", Arc::new(id) as ArrayRef),
            ("district", Arc::new(district) as ArrayRef),
            ("industry", Arc::new(industry) as ArrayRef),
            ("amount", Arc::new(amount) as ArrayRef),
        ])
        .unwrap();
        let w = writer.get_or_insert_with(|| {
            ArrowWriter::try_new(file.try_clone().unwrap(), batch.schema(), None).unwrap()
        });
        w.write(&batch).unwrap();
    }
    writer.unwrap().close().unwrap();
}

fn protected(file: &Path, unique: bool) -> DatasetSource {
    let mut table = DatasetSource::from_file(file, Classification::Conditional).unwrap();
    table.name = "payments".into();
    with_rules(table, unique)
}

fn with_rules(mut table: DatasetSource, unique: bool) -> DatasetSource {
    table.rules = Some(Arc::new(datasandbox::release::aggregate::TableRules {
        privacy_unit: "enterprise_id".into(),
        identifiers: vec!["enterprise_id".into()],
        join_keys: vec!["enterprise_id".into()],
        min_group_size: 10,
        aggregates: vec![
            datasandbox::policy::AggregateFn::Count,
            datasandbox::policy::AggregateFn::Sum,
            datasandbox::policy::AggregateFn::Avg,
        ],
        rounding: datasandbox::policy::Rounding::None,
        unit_is_unique: unique,
        perturbation: Some(datasandbox::release::cell_key::CellKeyParams::default()),
        dominance: Default::default(),
        record_keys: datasandbox::release::cell_key::RecordKeys::random(),
    }));
    table
}

/// The payments' manifest, for registering them in a catalog.
fn write_manifest(path: &Path) {
    let list = |values: &[&str]| {
        values
            .iter()
            .map(|v| format!("{v:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    std::fs::write(
        path,
        format!(
            "id = \"payments\"\ntitle = \"t\"\ndomain = \"d\"\nsummary = \"s\"\nowner = \"o\"\n\
             update_frequency = \"never\"\nclassification = \"conditional\"\n\
             privacy_unit = \"enterprise_id\"\njoin_keys = []\n\n\
             [[columns]]\nname = \"enterprise_id\"\ntype = \"string\"\ndescription = \"id\"\nrole = \"identifier\"\n\n\
             [[columns]]\nname = \"district\"\ntype = \"string\"\ndescription = \"d\"\nrole = \"attribute\"\ncategories = [{}]\n\n\
             [[columns]]\nname = \"industry\"\ntype = \"string\"\ndescription = \"i\"\nrole = \"attribute\"\ncategories = [{}]\n\n\
             [[columns]]\nname = \"amount\"\ntype = \"float64\"\ndescription = \"a\"\nrole = \"sensitive\"\nbounds = [0, 10000]\n",
            list(&DISTRICTS),
            list(&INDUSTRIES)
        ),
    )
    .unwrap();
}

/// The median of `RUNS` timings of `run` after one warm-up.
async fn median_after_warm_up<F, Fut>(run: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Duration>,
{
    run().await;
    let mut samples = Vec::new();
    for _ in 0..RUNS {
        samples.push(run().await);
    }
    percentile(&mut samples, 0.5)
}

/// Median time of aggregate mode over `table`, as a job runs it.
async fn gated(
    table: &DatasetSource,
    ledger: &Arc<datasandbox::release::ledger::QueryLedger>,
) -> Duration {
    let run = || async {
        let started = Instant::now();
        let session = datasandbox::query::QuerySession::open(
            std::slice::from_ref(table),
            &Default::default(),
        )
        .await
        .unwrap()
        .with_ledger(Some(Arc::clone(ledger)));
        let (_, batches) = session.run(SQL, usize::MAX).await.unwrap();
        assert_eq!(datasandbox::arrow_ipc::row_count(&batches), 96);
        started.elapsed()
    };
    median_after_warm_up(run).await
}

/// DuckDB's median time per file, from its own process.
fn duckdb(files: &[PathBuf]) -> Option<Vec<Duration>> {
    let python = std::env::var("DSB_DUCKDB_PYTHON").ok()?;
    let output = Command::new(python)
        .arg(repo().join("benches/duckdb_peer.py"))
        .arg(DUCKDB_SQL)
        .arg(RUNS.to_string())
        .args(files)
        .output()
        .expect("start the DuckDB peer");
    assert!(
        output.status.success(),
        "DuckDB peer: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|ms| Duration::from_secs_f64(ms.trim().parse::<f64>().unwrap() / 1e3))
            .collect(),
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let dir = std::env::temp_dir().join(format!("dsb-aggregate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = datasandbox::store::Store::open(&dir.join("ledger.db"))
        .await
        .unwrap();
    let mut shapes = Vec::new();
    for rows in [1_000_000, 10_000_000] {
        for rows_per_unit in [1, 10] {
            let file = dir.join(format!("payments-{rows}-{rows_per_unit}.parquet"));
            write_payments(&file, rows, rows_per_unit);
            shapes.push((rows, rows_per_unit, file));
        }
    }
    let files: Vec<PathBuf> = shapes.iter().map(|(_, _, f)| f.clone()).collect();
    let peer = duckdb(&files);
    if peer.is_none() {
        println!(
            "DuckDB peer not run: DSB_DUCKDB_PYTHON is not set (scripts/bench-aggregate-vs-duckdb sets it)"
        );
    }

    for (index, (rows, rows_per_unit, file)) in shapes.iter().enumerate() {
        let native = {
            let run = || async {
                let started = Instant::now();
                let ctx = SessionContext::new();
                ctx.register_parquet(
                    "payments",
                    file.to_str().unwrap(),
                    ParquetReadOptions::default(),
                )
                .await
                .unwrap();
                ctx.sql(SQL).await.unwrap().collect().await.unwrap();
                started.elapsed()
            };
            median_after_warm_up(run).await
        };
        let ledger = Arc::new(datasandbox::release::ledger::QueryLedger {
            store: store.clone(),
            tenant: "bench".into(),
            job_id: format!("bench-{index}"),
            limits: Default::default(),
        });
        let table = protected(file, *rows_per_unit == 1);
        let gated = gated(&table, &ledger).await;
        let label = format!(
            "{} rows, {rows_per_unit} per unit",
            rows / 1_000_000 * 1_000_000
        );
        match &peer {
            Some(times) => println!(
                "{label:<26} aggregate mode {:>8.1} ms | DuckDB {:>8.1} ms | native DataFusion {:>8.1} ms | vs DuckDB {:.2}x (goal <= 1.5x), vs native {:.2}x",
                ms(gated),
                ms(times[index]),
                ms(native),
                gated.as_secs_f64() / times[index].as_secs_f64(),
                gated.as_secs_f64() / native.as_secs_f64()
            ),
            None => println!(
                "{label:<26} aggregate mode {:>8.1} ms | native DataFusion {:>8.1} ms | vs native {:.2}x",
                ms(gated),
                ms(native),
                gated.as_secs_f64() / native.as_secs_f64()
            ),
        }
    }

    // What a job reads: the 10M-row, ten-per-unit payments registered as
    // CSV, read per job from the CSV as before or from the version's
    // Parquet copy.
    let (_, _, parquet) = &shapes[3];
    let csv = dir.join("payments.csv");
    let ctx = SessionContext::new_with_config(
        datafusion::prelude::SessionConfig::new().with_target_partitions(1),
    );
    ctx.read_parquet(parquet.to_str().unwrap(), ParquetReadOptions::default())
        .await
        .unwrap()
        .write_csv(
            csv.to_str().unwrap(),
            datafusion::dataframe::DataFrameWriteOptions::new().with_single_file_output(true),
            None,
        )
        .await
        .unwrap();
    let manifest = dir.join("payments.toml");
    write_manifest(&manifest);
    let catalog = datasandbox::catalog::Catalog::open(&dir.join("catalog")).unwrap();
    let started = Instant::now();
    let version = catalog.add(&csv, &manifest).await.unwrap();
    let registration = started.elapsed();
    let ledger = Arc::new(datasandbox::release::ledger::QueryLedger {
        store: store.clone(),
        tenant: "bench".into(),
        job_id: "bench-read".into(),
        limits: Default::default(),
    });
    let from_csv = gated(
        &with_rules(
            datasandbox::catalog::raw_table(
                &version.manifest,
                &version.original,
                datasandbox::dataset::DataFormat::Csv,
            ),
            false,
        ),
        &ledger,
    )
    .await;
    let from_copy = gated(
        &with_rules(
            datasandbox::catalog::raw_table(&version.manifest, &version.path, version.format),
            false,
        ),
        &ledger,
    )
    .await;
    println!(
        "10M rows registered as CSV ({:.1} s with checks, profile and Parquet copy): aggregate mode reading the CSV {:.1} ms vs the Parquet copy {:.1} ms = {:.2}x",
        registration.as_secs_f64(),
        ms(from_csv),
        ms(from_copy),
        from_csv.as_secs_f64() / from_copy.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
