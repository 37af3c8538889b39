//! Shared test helpers: real guest components built from `sandbox-guests/`,
//! a shared sandbox, the shipped sample data.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use datasandbox::dataset::{Classification, DatasetSource};
use datasandbox::sandbox::{Execution, GuestCall, JobEnv, Limits, Output, Sandbox, SandboxConfig};

/// The string the `hostile` fixture hides in traps, panics, errors and logs.
pub const SECRET: &str = "7f3a9c";

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The built guest components' directory. `scripts/test` builds them once
/// before the tests and sets `DSB_GUESTS_BUILT`; without it (a bare
/// `cargo test`), the first call in each test process runs
/// `scripts/build-guests` (a no-op when they are up to date).
pub fn guests_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if std::env::var_os("DSB_GUESTS_BUILT").is_none() {
            let status = Command::new("bash")
                .arg(repo().join("scripts/build-guests"))
                .status()
                .expect("running scripts/build-guests");
            assert!(status.success(), "building the guest components failed");
        }
        repo().join("sandbox-guests/target/wasm32-wasip2/release")
    })
}

/// The bytes of a built guest, e.g. `guest("district_stats")`.
pub fn guest(name: &str) -> Vec<u8> {
    let path = guests_dir().join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The bytes of a built Python guest, e.g. `python_guest("logistic_model")`.
/// `scripts/test` builds them (`scripts/build-python-guests`) before
/// `cargo test`: componentize-py runs outside the test binaries.
pub fn python_guest(name: &str) -> Vec<u8> {
    let path = python_guests_dir().join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "reading {}: {e}; build the Python guests with scripts/build-python-guests",
            path.display()
        )
    })
}

pub fn python_guests_dir() -> PathBuf {
    repo().join("sandbox-guests/target/python")
}

/// One sandbox per test process: engines are meant to be shared, and each
/// reserves virtual memory for its instance pool. Its module store is shared
/// by every test process (`target/test-modules`), so a component is compiled
/// once for the whole run, not once per test (an 18 MB Python component
/// takes seconds in Cranelift).
pub fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        Sandbox::new(test_config(Some(shared_module_dir()))).expect("starting the sandbox")
    })
}

/// The module store the test processes share.
pub fn shared_module_dir() -> PathBuf {
    repo().join("target/test-modules")
}

pub fn test_config(module_dir: Option<PathBuf>) -> SandboxConfig {
    SandboxConfig {
        module_dir,
        concurrent_instances: 16,
        ..SandboxConfig::default()
    }
}

pub fn samples() -> PathBuf {
    repo().join("data/samples")
}

pub fn register(classification: Classification) -> DatasetSource {
    DatasetSource::from_file(&samples().join("enterprises.csv"), classification).unwrap()
}

pub fn tax_records() -> DatasetSource {
    DatasetSource::from_file(&samples().join("tax_records.csv"), Classification::Open).unwrap()
}

/// Limits that keep hostile tests quick: 3·10⁸ fuel, 10 s.
pub fn quick_limits() -> Limits {
    Limits {
        fuel: 300_000_000,
        timeout: Duration::from_secs(10),
        ..Limits::default()
    }
}

pub fn env(job_id: &str, limits: Limits, datasets: Vec<DatasetSource>) -> JobEnv {
    let mut env = JobEnv::new(job_id);
    env.limits = limits;
    env.datasets = datasets;
    env
}

/// Run the `hostile` fixture with `params` over the open register.
pub async fn hostile(params: &str, limits: Limits) -> Execution {
    let env = env("hostile-job", limits, vec![register(Classification::Open)]);
    sandbox()
        .run_bytes(
            &guest("hostile"),
            &env,
            GuestCall::Run {
                params: params.to_string(),
            },
        )
        .await
}

/// Run one SQL statement through the `hostile` fixture's `query` attack.
pub async fn query_through_guest(sql: &str, datasets: Vec<DatasetSource>) -> Execution {
    let params = serde_json::json!({ "attack": "query", "sql": sql }).to_string();
    let env = env("query-job", quick_limits(), datasets);
    sandbox()
        .run_bytes(&guest("hostile"), &env, GuestCall::Run { params })
        .await
}

/// The value a job emitted under `name`.
pub fn value(execution: &Execution, name: &str) -> f64 {
    execution
        .outputs
        .iter()
        .find_map(|o| match o {
            Output::Value { name: n, value } if n == name => Some(*value),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no value {name} in {:?}", execution.outputs))
}

/// The batches of a table a job emitted under `name`.
pub fn table(execution: &Execution, name: &str) -> Vec<datafusion::arrow::array::RecordBatch> {
    let bytes = execution
        .outputs
        .iter()
        .find_map(|o| match o {
            Output::Table {
                name: n, arrow_ipc, ..
            } if n == name => Some(arrow_ipc.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no table {name} in {:?}", execution.outputs));
    datasandbox::arrow_ipc::decode(&bytes).unwrap().1
}

/// Native DataFusion over the same files: the reference for results.
pub async fn native(
    sql: &str,
    datasets: &[DatasetSource],
) -> Vec<datafusion::arrow::array::RecordBatch> {
    let ctx = datafusion::prelude::SessionContext::new();
    for dataset in datasets {
        ctx.register_csv(
            &dataset.name,
            dataset.path.to_str().unwrap(),
            datafusion::prelude::CsvReadOptions::new(),
        )
        .await
        .unwrap();
    }
    ctx.sql(sql).await.unwrap().collect().await.unwrap()
}

/// The sample datasets as the catalog would hand them to a job: declared
/// types, dictionary, and the rules of `policies/`.
pub fn protected_samples() -> Vec<DatasetSource> {
    let policies = datasandbox::policy::PolicySet::load(&repo().join("policies"), None).unwrap();
    ["enterprises", "tax_records"]
        .iter()
        .map(|id| {
            let manifest =
                datasandbox::catalog::Manifest::load(&samples().join(format!("{id}.toml")))
                    .unwrap();
            datasandbox::release::bind::job_table(
                &manifest,
                &samples().join(format!("{id}.csv")),
                datasandbox::dataset::DataFormat::Csv,
                &policies,
                // One row per enterprise in the register, eight in the tax
                // records: both ways of counting units are exercised.
                *id == "enterprises",
                record_keys(),
            )
        })
        .collect()
}

/// One catalog secret per test binary, as one data directory has.
pub fn record_keys() -> &'static datasandbox::release::cell_key::RecordKeys {
    static KEYS: OnceLock<datasandbox::release::cell_key::RecordKeys> = OnceLock::new();
    KEYS.get_or_init(datasandbox::release::cell_key::RecordKeys::random)
}

/// Native DataFusion with the declared types, no policy: the reference.
pub async fn native_typed(
    sql: &str,
    datasets: &[DatasetSource],
) -> Vec<datafusion::arrow::array::RecordBatch> {
    let ctx = datafusion::prelude::SessionContext::new();
    for dataset in datasets {
        datasandbox::query::register(&ctx, dataset).await.unwrap();
    }
    ctx.sql(sql).await.unwrap().collect().await.unwrap()
}

/// Rows as text, floats to 6 decimals, for comparing results computed in
/// different aggregation orders.
pub fn rows(batches: &[datafusion::arrow::array::RecordBatch]) -> Vec<Vec<String>> {
    use datafusion::arrow::array::{Array, Float64Array};
    use datafusion::arrow::datatypes::DataType;
    let mut out = Vec::new();
    for batch in batches {
        for row in 0..batch.num_rows() {
            out.push(
                batch
                    .columns()
                    .iter()
                    .map(|column| {
                        if column.is_null(row) {
                            return "NULL".to_string();
                        }
                        if column.data_type() == &DataType::Float64 {
                            let v = column
                                .as_any()
                                .downcast_ref::<Float64Array>()
                                .unwrap()
                                .value(row);
                            return format!("{v:.6}");
                        }
                        datafusion::arrow::util::display::array_value_to_string(column, row)
                            .unwrap()
                    })
                    .collect(),
            );
        }
    }
    out
}

/// A catalog under `data_dir` holding every sample dataset.
pub async fn catalog_with_samples(data_dir: &Path) -> datasandbox::catalog::Catalog {
    let catalog = datasandbox::catalog::Catalog::open(&data_dir.join("catalog")).unwrap();
    for id in datasandbox::sample_data::DATASETS {
        catalog
            .add(
                &samples().join(format!("{id}.csv")),
                &samples().join(format!("{id}.toml")),
            )
            .await
            .unwrap();
    }
    catalog
}

/// A real server on a loopback port over a fresh data directory holding
/// both sample datasets and the repository's policies, with an admin token.
pub struct TestServer {
    pub base: String,
    pub admin: datasandbox::client::Client,
    pub service: std::sync::Arc<datasandbox::service::Service>,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), datasandbox::service::ServiceError>>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Start with the configuration adjusted by `tweak`.
    pub async fn start_with(
        tweak: impl FnOnce(&mut datasandbox::server::ServerConfig),
    ) -> TestServer {
        Self::start_in(&repo().join("policies"), tweak).await
    }

    /// Start with another policy directory.
    pub async fn start_in(
        policies: &Path,
        tweak: impl FnOnce(&mut datasandbox::server::ServerConfig),
    ) -> TestServer {
        use datasandbox::accounts::{self, Role};
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let service = std::sync::Arc::new(
            datasandbox::service::Service::open(&data_dir, policies)
                .await
                .unwrap(),
        );
        for id in datasandbox::sample_data::DATASETS {
            service
                .add_dataset(
                    "operator",
                    &samples().join(format!("{id}.csv")),
                    &samples().join(format!("{id}.toml")),
                )
                .await
                .unwrap();
        }
        let mut config = datasandbox::server::ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir,
            policies: policies.to_path_buf(),
            ..Default::default()
        };
        // Guest calls run in `dsb worker` processes, as deployed.
        config.workers.exe = Some(env!("CARGO_BIN_EXE_dsb").into());
        tweak(&mut config);
        let server =
            datasandbox::server::Server::bind_service(config, std::sync::Arc::clone(&service))
                .await
                .unwrap();
        let base = format!("http://{}", server.addr);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        let (_, token) =
            accounts::create_token(&service.store, "operator", Role::Admin, "platform", None)
                .await
                .unwrap();
        TestServer {
            admin: datasandbox::client::Client::new(&base, Some(token)),
            base,
            service,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A client for a new token of `role` in `tenant`.
    pub async fn client(
        &self,
        role: datasandbox::accounts::Role,
        tenant: &str,
    ) -> datasandbox::client::Client {
        let created = self.admin.create_token(role, tenant, None).await.unwrap();
        self.admin.with_token(created.token)
    }

    /// Graceful shutdown; returns what `Server::run` returned.
    pub async fn stop(&mut self) -> Result<(), datasandbox::service::ServiceError> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap()
    }
}

/// Submit an aggregate-mode job over `dataset` and wait (up to 30 s) for
/// its end; the job as its owner sees it then.
pub async fn aggregate_job(
    client: &datasandbox::client::Client,
    module: &str,
    dataset: &str,
    params: serde_json::Value,
) -> datasandbox::api::JobView {
    let job = client
        .submit_job(module, "aggregate", &[dataset.to_string()], params)
        .await
        .unwrap();
    client.job(&job.id, 30).await.unwrap()
}

/// `dsb serve` as its own process over `data_dir` on a loopback port, with
/// an admin token bootstrapped on the data directory first.
pub struct ServeProcess {
    pub child: std::process::Child,
    pub url: String,
    pub admin_token: String,
    log: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl ServeProcess {
    pub fn start(data_dir: &Path) -> ServeProcess {
        use std::io::BufRead;
        let out = Command::new(env!("CARGO_BIN_EXE_dsb"))
            .args(["token", "create", "--role", "admin", "--tenant", "platform"])
            .env("DSB_DATA_DIR", data_dir)
            .current_dir(repo())
            .output()
            .expect("running dsb token create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let admin_token = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let mut child = Command::new(env!("CARGO_BIN_EXE_dsb"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("DSB_DATA_DIR", data_dir)
            .env("DSB_GRACE_PERIOD", "5")
            .current_dir(repo())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("starting dsb serve");
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let url = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("dsb serving on ").map(str::to_string))
            .expect("the server announces its address");
        // Keep draining the server's log so it never blocks on a full pipe.
        let log = std::thread::spawn(move || lines.map_while(Result::ok).collect());
        ServeProcess {
            child,
            url,
            admin_token,
            log: Some(log),
        }
    }

    /// The server's peak resident set so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server process is alive");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .expect("VmHWM in /proc/<pid>/status")
    }

    /// Wait for the process to exit; its status and what it logged.
    pub fn wait(&mut self) -> (std::process::ExitStatus, Vec<String>) {
        let status = self.child.wait().unwrap();
        let log = self
            .log
            .take()
            .map(|l| l.join().unwrap())
            .unwrap_or_default();
        (status, log)
    }

    /// Whether the process is still running (not exited, not killed).
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
