//! Contribution bounding at scale: a `dp` query over a table with many
//! rows per privacy unit (default 10,000,000 rows of 1,000,000 units, ten
//! rows each over eight quarters), against the same statement run exactly
//! in plain DataFusion over the same Arrow file in the same run.
//!
//! The dp path does everything a job's query does: the shape check, the
//! ledger charge (a real SQLite file), the bounding plan in DataFusion, the
//! noise. Three configurations: bounded per query (per unit and quarter,
//! capped; at most `max_groups_per_unit` quarters per unit: 4 of 8, then
//! all 8), and bounded by the manifest's declared `max_rows_per_unit`
//! (held to the data at registration, whose cost is printed too; no
//! per-unit stage). Prints the median of a few runs of each and their
//! ratio to the exact query. Scale with `DSB_BENCH_ROWS` and `DSB_BENCH_UNITS`.
//! Run: `cargo bench --bench dp_bounding`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Float64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datasandbox::catalog::{Catalog, Manifest};
use datasandbox::dataset::DataFormat;
use datasandbox::dp::{DpSession, Ledger};
use datasandbox::policy::PolicySet;
use datasandbox::query::QuerySession;
use datasandbox::release::bind::dp_job_table;
use datasandbox::store::Store;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const RUNS: usize = 3;
const SQL: &str =
    "SELECT quarter, COUNT(*) AS n, SUM(amount) AS total FROM filings GROUP BY quarter";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn write_inputs(dir: &Path, rows: usize, units: usize) {
    let mut rng = StdRng::seed_from_u64(11);
    let schema = Arc::new(Schema::new(vec![
        Field::new("firm_id", DataType::Utf8, false),
        Field::new("quarter", DataType::Utf8, false),
        Field::new("amount", DataType::Float64, false),
    ]));
    let file = std::fs::File::create(dir.join("filings.arrow")).unwrap();
    let mut writer = datafusion::arrow::ipc::writer::FileWriter::try_new(file, &schema).unwrap();
    let chunk = 1_000_000;
    let mut written = 0;
    while written < rows {
        let n = chunk.min(rows - written);
        let (mut firms, mut quarters, mut amounts) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for i in written..written + n {
            firms.push(format!("F{:07}", i % units));
            quarters.push(format!("Q{}", rng.random_range(1..=8)));
            amounts.push((rng.random::<f64>() * 1000.0).round());
        }
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(firms)),
                Arc::new(StringArray::from(quarters)),
                Arc::new(Float64Array::from(amounts)),
            ],
        )
        .unwrap();
        writer.write(&batch).unwrap();
        written += n;
    }
    writer.finish().unwrap();
}

/// The manifest, declaring `max_rows_per_unit` or not (every unit of the
/// bench's data has rows / units rows: it keeps the bound).
fn write_manifest(dir: &Path, declared: Option<usize>) {
    let declared = declared.map_or(String::new(), |r| format!("max_rows_per_unit = {r}\n"));
    std::fs::write(
        dir.join("filings.toml"),
        format!(
            "id = \"filings\"\ntitle = \"t\"\ndomain = \"d\"\nsummary = \"s\"\nowner = \"o\"\n\
             update_frequency = \"never\"\nclassification = \"restricted\"\n\
             privacy_unit = \"firm_id\"\n{declared}join_keys = []\n\n\
             [[columns]]\nname = \"firm_id\"\ntype = \"string\"\ndescription = \"id\"\nrole = \"identifier\"\n\n\
             [[columns]]\nname = \"quarter\"\ntype = \"string\"\ndescription = \"q\"\nrole = \"attribute\"\n\
             categories = [\"Q1\", \"Q2\", \"Q3\", \"Q4\", \"Q5\", \"Q6\", \"Q7\", \"Q8\"]\n\n\
             [[columns]]\nname = \"amount\"\ntype = \"float64\"\ndescription = \"a\"\nrole = \"sensitive\"\nbounds = [0, 1000]\n",
        ),
    )
    .unwrap();
}

/// The policy: `max_groups` quarters per unit (fewer than the eight the
/// data has: the random choice of groups per unit runs), two rows each.
fn write_policy(dir: &Path, max_groups: u32) {
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(
        dir.join("policies/filings.toml"),
        format!(
            "dataset = \"filings\"\nmodes = [\"dp\"]\n[dp]\nepsilon_total = 1000000.0\n\
             query_epsilon = [0.01, 20.0]\nmax_groups_per_unit = {max_groups}\nmax_rows_per_group = 2\n"
        ),
    )
    .unwrap();
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() {
    let rows = env_usize("DSB_BENCH_ROWS", 10_000_000);
    let units = env_usize("DSB_BENCH_UNITS", 1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dp-bounding-bench");
        std::fs::create_dir_all(&dir).unwrap();
        let started = Instant::now();
        write_inputs(&dir, rows, units);
        eprintln!(
            "wrote {rows} rows of {units} units in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let _ = std::fs::remove_file(dir.join("dsb.sqlite"));
        let store = Store::open(&dir.join("dsb.sqlite")).await.unwrap();

        let ctx = datafusion::prelude::SessionContext::new();
        ctx.register_arrow(
            "filings",
            dir.join("filings.arrow").to_str().unwrap(),
            datafusion::datasource::file_format::options::ArrowReadOptions::default(),
        )
        .await
        .unwrap();
        let mut native = Vec::new();
        for _ in 0..RUNS {
            let started = Instant::now();
            let batches = ctx.sql(SQL).await.unwrap().collect().await.unwrap();
            assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 8);
            native.push(started.elapsed());
        }
        let native = median(native);
        // The bounding plan itself (per unit and quarter, capped; at most
        // four quarters per unit at random; per quarter), as plain SQL in
        // plain DataFusion: what the plan costs without the dp path.
        const BOUNDING_SQL: &str = "WITH per_unit AS (SELECT firm_id, quarter, \
             CASE WHEN COUNT(*) > 2 THEN 2 ELSE COUNT(*) END AS n FROM filings GROUP BY firm_id, quarter), \
             chosen AS (SELECT quarter, n, row_number() OVER (PARTITION BY firm_id ORDER BY random()) AS rn \
             FROM per_unit) SELECT quarter, SUM(n) FROM chosen WHERE rn <= 4 GROUP BY quarter";
        let mut plan_only = Vec::new();
        for _ in 0..RUNS {
            let started = Instant::now();
            ctx.sql(BOUNDING_SQL).await.unwrap().collect().await.unwrap();
            plan_only.push(started.elapsed());
        }
        let plan_only = median(plan_only);
        // Per query, 4 of 8 quarters per unit: the per-unit random choice
        // runs (a window over units); 8: every unit's quarters fit, no
        // window. Declared: the manifest's `max_rows_per_unit` (each unit
        // has rows / units rows), held to the data at registration, is no
        // looser than 8 quarters × 2 rows: no per-unit stage.
        let per_unit = rows.div_ceil(units.max(1));
        for (declared, max_groups) in [(None, 4), (None, 8), (Some(per_unit), 8)] {
            write_manifest(&dir, declared);
            let manifest = Manifest::load(&dir.join("filings.toml")).unwrap();
            if declared.is_some() {
                // What registration costs once per version: the schema
                // check, the rows-per-unit check and the profile.
                let catalog_dir = dir.join("catalog");
                let _ = std::fs::remove_dir_all(&catalog_dir);
                let started = Instant::now();
                Catalog::open(&catalog_dir)
                    .unwrap()
                    .add(&dir.join("filings.arrow"), &dir.join("filings.toml"))
                    .await
                    .unwrap();
                println!(
                    "registering the version (schema, max_rows_per_unit = {per_unit} checked, profile), once per version: {:.2} s",
                    started.elapsed().as_secs_f64()
                );
                let _ = std::fs::remove_dir_all(&catalog_dir);
            }
            write_policy(&dir, max_groups);
            let policies = PolicySet::load(&dir.join("policies"), None).unwrap();
            let table = dp_job_table(
                &manifest,
                &dir.join("filings.arrow"),
                DataFormat::Arrow,
                &policies,
                false,
            );
            let mut dp = Vec::new();
            for run in 0..RUNS {
                let session = Arc::new(DpSession {
                    tables: [("filings".to_string(), table.dp.clone().unwrap())].into(),
                    epsilon: 1.0,
                    accuracy: None,
                    ledger: Ledger {
                        store: store.clone(),
                        principal: "bench".into(),
                        job_id: format!("bench-{max_groups}-{}-{run}", declared.is_some()),
                        populations: Default::default(),
                    },
                });
                let query = QuerySession::open(std::slice::from_ref(&table), &Default::default())
                    .await
                    .unwrap()
                    .with_dp(Some(session));
                let started = Instant::now();
                let (_, batches) = query.run(SQL, 64 << 20).await.unwrap();
                dp.push(started.elapsed());
                assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 8);
            }
            let dp = median(dp);
            if declared.is_none() && max_groups == 4 {
                println!(
                    "the same bounding plan as plain SQL in plain DataFusion: {:.3} s; \
                     the dp path {:.2}× that",
                    plan_only.as_secs_f64(),
                    dp.as_secs_f64() / plan_only.as_secs_f64()
                );
            }
            let bounded = match declared {
                Some(r) => format!("declared max_rows_per_unit = {r} (policy {max_groups} quarters × 2 rows)"),
                None => format!("per query, at most {max_groups} quarters × 2 rows per unit"),
            };
            println!(
                "dp bounding: {rows} rows, {units} units, {bounded}: exact DataFusion {:.3} s, \
                 dp {:.3} s, ratio {:.2}× (target ≤ 2×)",
                native.as_secs_f64(),
                dp.as_secs_f64(),
                dp.as_secs_f64() / native.as_secs_f64()
            );
        }
    });
}
