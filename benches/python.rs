//! Python guest benchmarks: what an 18 MB componentize-py component costs
//! the host, each against a baseline measured in the same run. Run with
//! `cargo bench --bench python` after `scripts/build-guests` and
//! `scripts/build-python-guests`.
//!
//! 1. Compile (cold) and load from the artifact cache, Python vs Rust
//!    `district_stats`.
//! 2. Instantiation in a fresh store from the pooling allocator, p50/p99,
//!    Python vs Rust, and the instance's linear memory.
//! 3. The `district_stats` job end to end, Python vs Rust vs the same SQL in
//!    native DataFusion.
//! 4. The logistic model's train + predict on the contest data (1,200 rows
//!    in, 800 predicted), Python in the sandbox vs the same Python file on
//!    the host's native CPython vs the Rust guest.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{guest as rust_guest, percentile, python_guest, repo};
use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::{CsvReadOptions, SessionContext};
use datasandbox::arrow_ipc;
use datasandbox::dataset::{Classification, DatasetSource};
use datasandbox::sandbox::{
    Category, GuestCall, JobEnv, Limits, ModuleLoad, Returned, Sandbox, SandboxConfig,
};

const FEATURES: [&str; 9] = [
    "district",
    "industry",
    "size_class",
    "employees",
    "registered_capital",
    "founded_year",
    "tax_paid_2023",
    "overdue_quarters_2023",
    "undeclared_quarters_2023",
];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn config(dir: &Path) -> SandboxConfig {
    SandboxConfig {
        module_dir: Some(dir.to_path_buf()),
        ..SandboxConfig::default()
    }
}

/// Time to load `bytes` into a fresh sandbox over `dir`, and how it loaded.
fn load_time(dir: &Path, bytes: &[u8]) -> (Duration, ModuleLoad) {
    let sandbox = Sandbox::new(config(dir)).unwrap();
    let started = Instant::now();
    let (_, load) = sandbox.load_module(bytes).unwrap();
    (started.elapsed(), load)
}

async fn instantiate_times(sandbox: &Sandbox, bytes: &[u8]) -> (Duration, Duration) {
    let (module, _) = sandbox.load_module(bytes).unwrap();
    let env = JobEnv::new("bench-instantiate");
    for _ in 0..50 {
        sandbox.instantiate_only(&module, &env).await.unwrap();
    }
    let mut samples: Vec<Duration> = Vec::with_capacity(1_000);
    for _ in 0..1_000 {
        let started = Instant::now();
        sandbox.instantiate_only(&module, &env).await.unwrap();
        samples.push(started.elapsed());
    }
    (
        percentile(&mut samples, 0.5),
        percentile(&mut samples, 0.99),
    )
}

async fn contest_tables() -> (Vec<u8>, Vec<u8>) {
    let ctx = SessionContext::new();
    ctx.register_csv(
        "t",
        repo()
            .join("data/samples/tax_overdue.csv")
            .to_str()
            .unwrap(),
        CsvReadOptions::new(),
    )
    .await
    .unwrap();
    let columns = FEATURES.join(", ");
    let collect = |sql: String| {
        let ctx = ctx.clone();
        async move {
            let frame = ctx.sql(&sql).await.unwrap();
            let schema = std::sync::Arc::new(frame.schema().as_arrow().clone());
            let batches: Vec<RecordBatch> = frame.collect().await.unwrap();
            arrow_ipc::encode(&schema, &batches).unwrap()
        }
    };
    let train = collect(format!(
        "SELECT {columns}, overdue_2024 FROM t ORDER BY enterprise_id LIMIT 1200"
    ))
    .await;
    let features = collect(format!(
        "SELECT {columns} FROM t ORDER BY enterprise_id OFFSET 1200"
    ))
    .await;
    (train, features)
}

#[tokio::main]
async fn main() {
    println!("Python guest benchmarks (baselines measured in this run)\n");
    let python = python_guest("district_stats");
    let rust = rust_guest("district_stats");
    if std::env::args().any(|a| a == "--instantiate-only") {
        // For profiling: `perf record … target/release/deps/python-* --instantiate-only`.
        let dir = tempfile::tempdir().unwrap();
        let sandbox = Sandbox::new(config(dir.path())).unwrap();
        for _ in 0..10 {
            let (p50, p99) = instantiate_times(&sandbox, &python).await;
            println!("instantiate Python: p50 {:?} p99 {:?}", p50, p99);
        }
        return;
    }
    println!(
        "component size: Python {:.1} MB, Rust {:.2} MB",
        python.len() as f64 / 1e6,
        rust.len() as f64 / 1e6
    );

    // 1. Compile cold, then load the cached artifact in a new process-like
    //    sandbox (same module directory).
    let dir = tempfile::tempdir().unwrap();
    let (python_cold, load) = load_time(dir.path(), &python);
    assert_eq!(load, ModuleLoad::Compiled);
    let (rust_cold, _) = load_time(dir.path(), &rust);
    let mut python_cached = Vec::new();
    let mut rust_cached = Vec::new();
    for _ in 0..5 {
        let (t, load) = load_time(dir.path(), &python);
        assert_eq!(load, ModuleLoad::Artifact);
        python_cached.push(t);
        rust_cached.push(load_time(dir.path(), &rust).0);
    }
    let python_cached = percentile(&mut python_cached, 0.5);
    let rust_cached = percentile(&mut rust_cached, 0.5);
    println!(
        "compile cold: Python {:.2} s vs Rust {:.3} s = {:.0}x; from the artifact cache: Python {:.1} ms vs Rust {:.1} ms ({:.0}x faster than compiling Python)",
        python_cold.as_secs_f64(),
        rust_cold.as_secs_f64(),
        python_cold.as_secs_f64() / rust_cold.as_secs_f64(),
        ms(python_cached),
        ms(rust_cached),
        python_cold.as_secs_f64() / python_cached.as_secs_f64()
    );

    // 2. Instantiation from the pool.
    let sandbox = Sandbox::new(config(dir.path())).unwrap();
    let (py50, py99) = instantiate_times(&sandbox, &python).await;
    let (rs50, rs99) = instantiate_times(&sandbox, &rust).await;
    println!(
        "instantiate: Python p50 {:.1} µs p99 {:.1} µs vs Rust p50 {:.1} µs p99 {:.1} µs = {:.1}x at p50",
        py50.as_secs_f64() * 1e6,
        py99.as_secs_f64() * 1e6,
        rs50.as_secs_f64() * 1e6,
        rs99.as_secs_f64() * 1e6,
        py50.as_secs_f64() / rs50.as_secs_f64()
    );

    // 3. The district_stats job.
    let register = DatasetSource::from_file(
        &repo().join("data/samples/enterprises.csv"),
        Classification::Open,
    )
    .unwrap();
    let mut env = JobEnv::new("bench-job");
    env.datasets = vec![register.clone()];
    let job = |bytes: Vec<u8>| {
        let env = env.clone();
        let sandbox = &sandbox;
        async move {
            let (module, _) = sandbox.load_module(&bytes).unwrap();
            let mut samples = Vec::new();
            let mut memory = 0;
            for _ in 0..30 {
                let started = Instant::now();
                let execution = sandbox
                    .run(
                        &module,
                        &env,
                        GuestCall::Run {
                            params: "{}".into(),
                        },
                    )
                    .await;
                samples.push(started.elapsed());
                assert_eq!(execution.category, Category::Ok);
                memory = execution.diagnostics.memory_peak_bytes;
            }
            (percentile(&mut samples, 0.5), memory)
        }
    };
    let (python_job, python_memory) = job(python.clone()).await;
    let (rust_job, rust_memory) = job(rust.clone()).await;
    let sql = "SELECT district, COUNT(*) AS enterprises, AVG(employees) AS mean_employees \
               FROM enterprises GROUP BY district ORDER BY district";
    let mut native = Vec::new();
    for _ in 0..30 {
        let started = Instant::now();
        let ctx = SessionContext::new();
        ctx.register_csv(
            "enterprises",
            repo()
                .join("data/samples/enterprises.csv")
                .to_str()
                .unwrap(),
            CsvReadOptions::new(),
        )
        .await
        .unwrap();
        ctx.sql(sql).await.unwrap().collect().await.unwrap();
        native.push(started.elapsed());
    }
    let native = percentile(&mut native, 0.5);
    println!(
        "district_stats job: Python {:.2} ms vs Rust {:.2} ms vs native DataFusion {:.2} ms (Python/native {:.2}x, Rust/native {:.2}x); peak linear memory Python {:.1} MiB, Rust {:.1} MiB",
        ms(python_job),
        ms(rust_job),
        ms(native),
        python_job.as_secs_f64() / native.as_secs_f64(),
        rust_job.as_secs_f64() / native.as_secs_f64(),
        python_memory as f64 / f64::from(1 << 20),
        rust_memory as f64 / f64::from(1 << 20)
    );

    // 4. Logistic model: sandboxed Python vs native CPython vs Rust guest.
    let (train, features) = contest_tables().await;
    let params = serde_json::json!({"label": "overdue_2024", "features": FEATURES}).to_string();
    let mut env = JobEnv::new("bench-model");
    env.limits = Limits {
        fuel: u64::MAX / 4,
        timeout: Duration::from_secs(600),
        ..Limits::default()
    };
    let model_run = |bytes: Vec<u8>| {
        let (env, train, features, params, sandbox) = (
            env.clone(),
            train.clone(),
            features.clone(),
            params.clone(),
            &sandbox,
        );
        async move {
            let (module, _) = sandbox.load_module(&bytes).unwrap();
            let mut samples = Vec::new();
            let mut predictions = Vec::new();
            for _ in 0..5 {
                let call = GuestCall::TrainPredict {
                    train: train.clone(),
                    params: params.clone(),
                    features: features.clone(),
                };
                let started = Instant::now();
                let execution = sandbox.run(&module, &env, call).await;
                samples.push(started.elapsed());
                assert_eq!(
                    execution.category,
                    Category::Ok,
                    "{:?}",
                    execution.diagnostics
                );
                if let Some(Returned::Vector(p)) = execution.returned {
                    predictions = p;
                }
            }
            (percentile(&mut samples, 0.5), predictions)
        }
    };
    let (python_model, python_predictions) = model_run(python_guest("logistic_model")).await;
    let (rust_model, _) = model_run(rust_guest("logistic_model")).await;
    let scratch = tempfile::tempdir().unwrap();
    let (train_path, features_path) = (
        scratch.path().join("train.arrow"),
        scratch.path().join("features.arrow"),
    );
    std::fs::write(&train_path, &train).unwrap();
    std::fs::write(&features_path, &features).unwrap();
    let output = Command::new("python3")
        .arg(repo().join("benches/python_native.py"))
        .arg(&train_path)
        .arg(&features_path)
        .arg(&params)
        .arg("5")
        .output()
        .expect("running python3 for the native baseline");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let native: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let native_seconds = native["seconds"].as_f64().unwrap();
    let native_predictions: Vec<f64> =
        serde_json::from_value(native["predictions"].clone()).unwrap();
    let max_difference = python_predictions
        .iter()
        .zip(&native_predictions)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert_eq!(python_predictions.len(), native_predictions.len());
    println!(
        "logistic model train(1,200 rows) + predict(800): Python in the sandbox {:.0} ms vs the same file on native CPython {:.0} ms = {:.2}x (whole job incl. instantiation and IPC); Rust guest {:.0} ms; max |prediction difference| sandbox vs native {:.1e}",
        ms(python_model),
        native_seconds * 1e3,
        python_model.as_secs_f64() / native_seconds,
        ms(rust_model),
        max_difference
    );
}
