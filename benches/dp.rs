//! DP group-by benchmark: COUNT and SUM by two keys over 1,000,000 rows,
//! through the `dp` mode's query path (DataFusion, OpenDP noise, a real
//! SQLite ledger charge per query), at ε = 1.
//!
//! Writes the data and a JSON summary to `target/dp-bench/` so that
//! `scripts/bench-dp-vs-smartnoise` can run SmartNoise SQL on the same file
//! at the same ε in the same run and print the time ratio and both mean
//! absolute errors. Run on its own: `cargo bench --bench dp`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, Float64Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datasandbox::catalog::Manifest;
use datasandbox::dataset::{DataFormat, DatasetSource};
use datasandbox::dp::{DpSession, Ledger};
use datasandbox::policy::PolicySet;
use datasandbox::query::QuerySession;
use datasandbox::release::bind::dp_job_table;
use datasandbox::store::Store;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const ROWS: usize = 1_000_000;
const REGIONS: usize = 16;
const SECTORS: usize = 10;
const RUNS: usize = 5;
const SQL: &str =
    "SELECT region, sector, COUNT(*) AS n, SUM(amount) AS total FROM bench GROUP BY region, sector";

fn write_inputs(dir: &Path) {
    let mut rng = StdRng::seed_from_u64(7);
    let mut csv = String::with_capacity(ROWS * 32);
    csv.push_str("person_id,region,sector,amount\n");
    for i in 0..ROWS {
        // Skewed keys, so groups range from large to small.
        let region = (rng.random::<f64>().powi(2) * REGIONS as f64) as usize;
        let sector = (rng.random::<f64>().powi(3) * SECTORS as f64) as usize;
        let amount = (rng.random::<f64>() * 1000.0).round();
        writeln!(csv, "P{i:07},r{region:02},s{sector:02},{amount}").unwrap();
    }
    std::fs::write(dir.join("bench.csv"), csv).unwrap();
    let list = |prefix: &str, n: usize| {
        (0..n)
            .map(|i| format!("\"{prefix}{i:02}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    std::fs::write(
        dir.join("bench.toml"),
        format!(
            "id = \"bench\"\ntitle = \"t\"\ndomain = \"d\"\nsummary = \"s\"\nowner = \"o\"\n\
             update_frequency = \"never\"\nclassification = \"restricted\"\n\
             privacy_unit = \"person_id\"\njoin_keys = []\n\n\
             [[columns]]\nname = \"person_id\"\ntype = \"string\"\ndescription = \"id\"\nrole = \"identifier\"\n\n\
             [[columns]]\nname = \"region\"\ntype = \"string\"\ndescription = \"r\"\nrole = \"attribute\"\ncategories = [{}]\n\n\
             [[columns]]\nname = \"sector\"\ntype = \"string\"\ndescription = \"s\"\nrole = \"attribute\"\ncategories = [{}]\n\n\
             [[columns]]\nname = \"amount\"\ntype = \"float64\"\ndescription = \"a\"\nrole = \"sensitive\"\nbounds = [0, 1000]\n",
            list("r", REGIONS),
            list("s", SECTORS)
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(
        dir.join("policies/bench.toml"),
        "dataset = \"bench\"\nmodes = [\"dp\"]\n[dp]\nepsilon_total = 1000000.0\nquery_epsilon = [0.01, 20.0]\n",
    )
    .unwrap();
}

fn column_strings(batch: &datafusion::arrow::array::RecordBatch, i: usize) -> Vec<String> {
    let array = cast(batch.column(i), &DataType::Utf8).unwrap();
    let array = array.as_any().downcast_ref::<StringArray>().unwrap();
    (0..array.len())
        .map(|r| array.value(r).to_string())
        .collect()
}

fn column_numbers(batch: &datafusion::arrow::array::RecordBatch, i: usize) -> Vec<f64> {
    let array = cast(batch.column(i), &DataType::Float64).unwrap();
    let array = array.as_any().downcast_ref::<Float64Array>().unwrap();
    (0..array.len()).map(|r| array.value(r)).collect()
}

type Groups = HashMap<(String, String), (f64, f64)>;

fn groups(batches: &[datafusion::arrow::array::RecordBatch]) -> Groups {
    let mut out = HashMap::new();
    for b in batches {
        let (r, s, n, t) = (
            column_strings(b, 0),
            column_strings(b, 1),
            column_numbers(b, 2),
            column_numbers(b, 3),
        );
        for i in 0..r.len() {
            out.insert((r[i].clone(), s[i].clone()), (n[i], t[i]));
        }
    }
    out
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dp-bench");
        std::fs::create_dir_all(&dir).unwrap();
        write_inputs(&dir);
        let manifest = Manifest::load(&dir.join("bench.toml")).unwrap();
        let policies = PolicySet::load(&dir.join("policies"), None).unwrap();
        let table: DatasetSource = dp_job_table(
            &manifest,
            &dir.join("bench.csv"),
            DataFormat::Csv,
            &policies,
            true,
        );
        let _ = std::fs::remove_file(dir.join("dsb.sqlite"));
        let store = Store::open(&dir.join("dsb.sqlite")).await.unwrap();

        // Exact answers, with plain DataFusion over the same file.
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.register_csv(
            "bench",
            dir.join("bench.csv").to_str().unwrap(),
            datafusion::prelude::CsvReadOptions::new(),
        )
        .await
        .unwrap();
        let started = Instant::now();
        let exact = groups(&ctx.sql(SQL).await.unwrap().collect().await.unwrap());
        let native = started.elapsed();

        let mut summary = serde_json::json!({
            "rows": ROWS,
            "native_seconds": native.as_secs_f64(),
        });
        // ε = 1 for the whole query (0.5 per aggregate), and ε = 2 (1 per
        // aggregate, what SmartNoise SQL spends at epsilon = 1: it charges
        // each aggregate column).
        for (label, epsilon) in [("eps1", 1.0), ("eps2", 2.0)] {
            let mut times: Vec<Duration> = Vec::new();
            let (mut count_error, mut sum_error, mut cells) = (0.0, 0.0, 0usize);
            for run in 0..RUNS {
                let session = Arc::new(DpSession {
                    tables: HashMap::from([("bench".to_string(), table.dp.clone().unwrap())]),
                    epsilon,

                    accuracy: None,
                    ledger: Ledger {
                        store: store.clone(),
                        principal: "bench".into(),
                        job_id: format!("bench-{label}-{run}"),
                        populations: Default::default(),
                    },
                });
                let started = Instant::now();
                let query = QuerySession::open(std::slice::from_ref(&table), &Default::default())
                    .await
                    .unwrap()
                    .with_dp(Some(session));
                let (_, batches) = query.run(SQL, 64 << 20).await.unwrap();
                times.push(started.elapsed());
                for (key, (n, total)) in groups(&batches) {
                    let (true_n, true_total) = exact.get(&key).copied().unwrap_or((0.0, 0.0));
                    count_error += (n - true_n).abs();
                    sum_error += (total - true_total).abs();
                    cells += 1;
                }
            }
            times.sort();
            let median = times[RUNS / 2];
            summary[label] = serde_json::json!({
                "epsilon": epsilon,
                "seconds": median.as_secs_f64(),
                "mae_count": count_error / cells as f64,
                "mae_sum": sum_error / cells as f64,
                "groups": cells / RUNS,
            });
            println!(
                "dp group-by (COUNT, SUM by region × sector; {ROWS} rows, query ε = {epsilon}): \
             dsb median {:.3} s over {RUNS} runs (incl. CSV scan, bounding, OpenDP noise, \
             ledger charge) vs exact DataFusion {:.3} s ({:.2}×); {} groups; MAE count {:.2}, \
             MAE sum {:.1}",
                median.as_secs_f64(),
                native.as_secs_f64(),
                median.as_secs_f64() / native.as_secs_f64(),
                cells / RUNS,
                count_error / cells as f64,
                sum_error / cells as f64
            );
        }
        std::fs::write(dir.join("dsb.json"), summary.to_string()).unwrap();
        println!("inputs and summary in {}", dir.display());
    });
}
