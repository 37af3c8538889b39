//! Supervised worker processes: every guest call of a served job (the
//! wasmtime instance and the DataFusion queries it makes) runs in a child
//! process, `dsb worker`, under OS limits, with its deadline kept from the
//! outside.
//!
//! Why processes and not only in-process guards: the in-process bounds
//! (statement length and depth, the function allow-list, the guest-table
//! decoder, wasmtime's fuel, epochs and memory limiter) end every known
//! attack with a clean category, but a failure nobody foresaw (an abort in
//! a dependency, a host function that never yields, memory outside every
//! counter) would take the whole server, and every tenant's jobs, with it.
//! In a worker it takes one job: the supervisor sees the process end or
//! overrun, kills it, ends the call `internal` or `timeout` (the host's
//! categories, not charged to the tenant) and starts another worker for
//! the next call.
//!
//! - The deadline is the job's own wall-clock limit plus `kill_after`, kept
//!   by the supervisor with `SIGKILL`; nothing inside a worker can outlast
//!   it.
//! - Each worker limits itself before it reads a request (`RLIMIT_DATA`:
//!   heap, wasm memories and thread stacks together; `RLIMIT_NOFILE`;
//!   `RLIMIT_CORE` 0) and dies with the server (a watchdog thread that
//!   sees its parent change within half a second); before
//!   each call it sets its soft `RLIMIT_CPU` to what it has used plus the
//!   call's limit times `cpu_cores_per_call` (`SIGXCPU` past it reads
//!   `timeout`).
//! - A worker runs one call at a time; idle workers are kept up to
//!   `idle_workers` and retired after `calls_per_worker` calls, so no
//!   tenant's call inherits much of another's process.
//! - A cancelled call drops its worker, which kills it.
//!
//! The embedded default stays one command: `dsb serve` starts its own
//! workers from its own executable. In-process execution remains for the
//! library, the CLI's local commands and most tests.

mod child;
pub mod wire;

pub use child::{WorkerArgs, serve};

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::sandbox::IntakeError;
use crate::sandbox::{Category, Execution, GuestCall, Isolation, JobEnv, LoadedModule};
use wire::{CallRequest, Fault, Request, Response, WireEnv, WireError, read_frame, write_frame};

/// The environment variable that lets a worker honour injected faults.
const FAULTS_ENV: &str = "DSB_WORKER_FAULTS";

/// Largest response a worker may send: the output limit's tables as hex
/// plus diagnostics, with room to spare.
const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// How the server runs guest calls.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// `process` (supervised workers) or `in-process`.
    pub isolation: IsolationMode,
    /// The `dsb` executable to start workers from (default: this one,
    /// which must then be `dsb`).
    pub exe: Option<PathBuf>,
    /// `RLIMIT_DATA` of each worker, bytes: its heap, wasm memories and
    /// thread stacks together.
    pub memory_bytes: u64,
    /// `RLIMIT_NOFILE` of each worker.
    pub open_files: u64,
    /// CPU a call may burn, in cores for its whole wall-clock limit: each
    /// call's `RLIMIT_CPU` is what the worker used so far plus the call's
    /// limit times this, plus a second (default: every core, so the OS
    /// limit backs up the supervisor's deadline and never cuts a query
    /// short that the deadline allows).
    pub cpu_cores_per_call: u32,
    /// How long past a call's own wall-clock limit the supervisor waits
    /// before it kills the worker.
    #[serde(deserialize_with = "seconds")]
    pub kill_after: Duration,
    /// Idle workers kept warm.
    pub idle_workers: usize,
    /// Calls a worker serves before it is retired.
    pub calls_per_worker: u32,
    /// How long one module's compilation may take before its worker is
    /// killed and the upload refused.
    #[serde(deserialize_with = "seconds")]
    pub compile_timeout: Duration,
    /// Test only: honour `{"dsb_fault": …}` in a job's params (see
    /// [`wire::Fault`]). Never set in a deployment.
    pub fault_injection: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IsolationMode {
    Process,
    InProcess,
}

fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let seconds = <f64 as serde::Deserialize>::deserialize(d)?;
    Duration::try_from_secs_f64(seconds).map_err(serde::de::Error::custom)
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            isolation: IsolationMode::Process,
            exe: None,
            memory_bytes: 4 << 30,
            open_files: 256,
            cpu_cores_per_call: std::thread::available_parallelism().map_or(2, |n| n.get() as u32),
            kill_after: Duration::from_secs(5),
            idle_workers: 4,
            calls_per_worker: 100,
            compile_timeout: Duration::from_secs(60),
            fault_injection: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot find the dsb executable to start workers from: {0}")]
    Exe(std::io::Error),
    #[error("starting a worker: {0}")]
    Spawn(std::io::Error),
    #[error("setting the worker's OS limits: {0}")]
    Limits(std::io::Error),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// One live worker process.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    calls: u32,
}

/// Counters for `/metrics` and the tests.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub started: AtomicU64,
    /// Workers killed at their deadline.
    pub killed: AtomicU64,
    /// Workers that ended on their own during a call (a crash).
    pub crashed: AtomicU64,
}

/// The supervisor: starts workers, hands each one call, keeps the deadline.
pub struct WorkerPool {
    config: WorkerConfig,
    exe: PathBuf,
    data_dir: PathBuf,
    idle: Mutex<Vec<Worker>>,
    /// One compilation at a time: Cranelift spreads one module over every
    /// core already.
    compiles: tokio::sync::Semaphore,
    pub stats: WorkerStats,
}

/// How one exchange ended at the supervisor.
enum Ended {
    Answered(Box<(Response, Worker)>),
    Deadline,
    Died(String),
}

impl WorkerPool {
    pub fn new(config: WorkerConfig, data_dir: &Path) -> Result<WorkerPool, WorkerError> {
        let exe = match &config.exe {
            Some(exe) => exe.clone(),
            // Only `dsb` has the `worker` command: a program that embeds
            // the server names the executable to start workers from.
            None => {
                let exe = std::env::current_exe().map_err(WorkerError::Exe)?;
                if exe.file_stem().and_then(|s| s.to_str()) != Some("dsb") {
                    return Err(WorkerError::Exe(std::io::Error::other(format!(
                        "{} is not dsb; set [workers] exe to the dsb executable (or \
                         isolation = \"in-process\")",
                        exe.display()
                    ))));
                }
                exe
            }
        };
        Ok(WorkerPool {
            config,
            exe,
            data_dir: data_dir.to_path_buf(),
            idle: Mutex::new(Vec::new()),
            compiles: tokio::sync::Semaphore::new(1),
            stats: WorkerStats::default(),
        })
    }

    fn spawn(&self) -> Result<Worker, WorkerError> {
        let mut command = Command::new(&self.exe);
        command
            .arg("worker")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--memory-bytes")
            .arg(self.config.memory_bytes.to_string())
            .arg("--open-files")
            .arg(self.config.open_files.to_string())
            .arg("--cpu-cores-per-call")
            .arg(self.config.cpu_cores_per_call.to_string())
            // Nothing of the server's environment (tokens, keys) reaches a
            // worker but the log filter.
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Ok(filter) = std::env::var("DSB_LOG") {
            command.env("DSB_LOG", filter);
        }
        if self.config.fault_injection {
            command.env(FAULTS_ENV, "1");
        }
        let mut child = command.spawn().map_err(WorkerError::Spawn)?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(WorkerError::Spawn(std::io::Error::other(
                "the worker's pipes are missing",
            )));
        };
        self.stats.started.fetch_add(1, Ordering::Relaxed);
        Ok(Worker {
            child,
            stdin,
            stdout,
            calls: 0,
        })
    }

    /// An idle worker that is still alive, or a new one.
    fn take(&self) -> Result<Worker, WorkerError> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(mut worker) = idle.pop() {
            if matches!(worker.child.try_wait(), Ok(None)) {
                return Ok(worker);
            }
        }
        drop(idle);
        self.spawn()
    }

    fn give_back(&self, mut worker: Worker) {
        worker.calls += 1;
        if worker.calls >= self.config.calls_per_worker {
            return; // dropped: killed and reaped
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.config.idle_workers {
            idle.push(worker);
        }
    }

    /// Run one call in a worker. Every failure of the worker or the pipe
    /// ends the call in a host category; the guest learns nothing more.
    pub async fn call(&self, module: &LoadedModule, env: &JobEnv, call: GuestCall) -> Execution {
        let fault = match (&call, self.config.fault_injection) {
            (GuestCall::Run { params }, true) => serde_json::from_str::<serde_json::Value>(params)
                .ok()
                .and_then(|v| v.get("dsb_fault")?.as_str().and_then(Fault::parse)),
            _ => None,
        };
        let request = match WireEnv::from_env(env) {
            Ok(wire_env) => CallRequest {
                module: module.hash.clone(),
                env: wire_env,
                call: call.into(),
                fault,
            },
            Err(error) => {
                tracing::error!(job = %env.job_id, %error, "cannot describe the job to a worker");
                return Execution::refused(&env.job_id, Category::Internal);
            }
        };
        let started = Instant::now();
        let deadline = env.limits.timeout + self.config.kill_after;
        let (ended, pid) = match self
            .exchange(&Request::Call(Box::new(request)), deadline)
            .await
        {
            Ok(exchanged) => exchanged,
            Err(error) => {
                tracing::error!(job = %env.job_id, %error, "cannot start a worker");
                return Execution::refused(&env.job_id, Category::Internal);
            }
        };
        let mut execution = match ended {
            Ended::Answered(answered) => {
                let (response, worker) = *answered;
                self.give_back(worker);
                match response {
                    Response::Execution(execution) => *execution,
                    Response::Compiled(_) | Response::Dominance(_) => {
                        tracing::error!(job = %env.job_id, "the worker answered a call with something else");
                        Execution::refused(&env.job_id, Category::Internal)
                    }
                }
            }
            Ended::Deadline => {
                tracing::warn!(job = %env.job_id, ?pid, ?deadline, "worker overran its deadline; killed");
                let mut execution = Execution::refused(&env.job_id, Category::Timeout);
                execution.diagnostics.trap = Some(format!(
                    "the worker was killed by the supervisor {deadline:?} after the call started"
                ));
                execution.diagnostics.duration = started.elapsed();
                execution
            }
            Ended::Died(how) if how == describe_signal(SIGXCPU) => {
                tracing::warn!(job = %env.job_id, ?pid, "worker passed its CPU limit");
                let mut execution = Execution::refused(&env.job_id, Category::Timeout);
                execution.diagnostics.trap = Some(format!("the worker {how} (its CPU limit)"));
                execution.diagnostics.duration = started.elapsed();
                execution
            }
            Ended::Died(how) => {
                tracing::error!(job = %env.job_id, ?pid, %how, "worker died during a call");
                let mut execution = Execution::refused(&env.job_id, Category::Internal);
                execution.diagnostics.trap = Some(format!("the worker {how}"));
                execution.diagnostics.duration = started.elapsed();
                execution
            }
        };
        execution.diagnostics.worker_pid = pid;
        execution
    }

    /// Validate and compile `bytes` in a worker, under `compile_timeout`
    /// and the worker's memory limit; the artifact lands in the shared
    /// module directory. Dropping the future (a refused upload) kills the
    /// worker and the compilation with it.
    pub async fn compile(&self, bytes: &[u8]) -> Result<(), IntakeError> {
        let _one = self
            .compiles
            .acquire()
            .await
            .map_err(|_| IntakeError::Store(std::io::Error::other("the compiler is closed")))?;
        // The bytes travel as a file in the module directory, not through
        // the pipe (a Python component is 18 MB).
        let staged = tempfile::NamedTempFile::new_in(self.data_dir.join("modules"))
            .and_then(|mut file| {
                std::io::Write::write_all(&mut file, bytes)?;
                Ok(file)
            })
            .map_err(IntakeError::Store)?;
        let request = Request::Compile {
            module: staged.path().to_path_buf(),
        };
        let (ended, pid) = self
            .exchange(&request, self.config.compile_timeout)
            .await
            .map_err(|e| IntakeError::Store(std::io::Error::other(e.to_string())))?;
        match ended {
            Ended::Answered(answered) => {
                let (response, worker) = *answered;
                self.give_back(worker);
                match response {
                    Response::Compiled(result) => result.map_err(IntakeError::from),
                    Response::Execution(_) | Response::Dominance(_) => Err(IntakeError::Store(
                        std::io::Error::other("the worker answered a compile with something else"),
                    )),
                }
            }
            Ended::Deadline => {
                tracing::warn!(?pid, "compilation overran its limit; worker killed");
                Err(IntakeError::TooComplex(
                    "compilation took longer than its limit".into(),
                ))
            }
            Ended::Died(how) => {
                tracing::warn!(?pid, %how, "worker died compiling a module");
                Err(IntakeError::TooComplex(
                    "compilation needed more than the compiler's limits".into(),
                ))
            }
        }
    }

    /// The review pre-check in a worker, under the job's own deadline; any
    /// failure leaves every statement unchecked (`None`).
    pub async fn dominated_cells(
        &self,
        env: &JobEnv,
        statements: Vec<String>,
    ) -> Vec<Option<usize>> {
        let unchecked = vec![None; statements.len()];
        let request = match WireEnv::from_env(env) {
            Ok(wire_env) => Request::Dominance {
                env: Box::new(wire_env),
                statements,
            },
            Err(error) => {
                tracing::error!(job = %env.job_id, %error, "cannot describe the job to a worker");
                return unchecked;
            }
        };
        let deadline = env.limits.timeout + self.config.kill_after;
        match self.exchange(&request, deadline).await {
            Ok((Ended::Answered(answered), _)) => {
                let (response, worker) = *answered;
                self.give_back(worker);
                match response {
                    Response::Dominance(cells) if cells.len() == unchecked.len() => cells,
                    _ => unchecked,
                }
            }
            Ok((ended, pid)) => {
                let how = match ended {
                    Ended::Died(how) => how,
                    _ => "overran its deadline".into(),
                };
                tracing::warn!(job = %env.job_id, ?pid, %how, "worker failed the dominance check");
                unchecked
            }
            Err(error) => {
                tracing::error!(job = %env.job_id, %error, "cannot start a worker");
                unchecked
            }
        }
    }

    /// Send one request to a worker and wait for its answer until
    /// `deadline`; a worker that overruns is killed (dropped), one that
    /// dies is reaped and described.
    async fn exchange(
        &self,
        request: &Request,
        deadline: Duration,
    ) -> Result<(Ended, Option<u32>), WorkerError> {
        let mut worker = self.take()?;
        let pid = worker.child.id();
        let exchange = async {
            write_frame(&mut worker.stdin, request).await?;
            read_frame::<_, Response>(&mut worker.stdout, MAX_RESPONSE_BYTES).await
        };
        let ended = match tokio::time::timeout(deadline, exchange).await {
            Ok(Ok(Some(response))) => Ended::Answered(Box::new((response, worker))),
            Ok(Ok(None)) | Ok(Err(WireError::Io(_))) => {
                self.stats.crashed.fetch_add(1, Ordering::Relaxed);
                let status = tokio::time::timeout(Duration::from_secs(2), worker.child.wait())
                    .await
                    .ok()
                    .and_then(Result::ok);
                Ended::Died(match status {
                    Some(status) => describe_exit(status),
                    None => "closed its pipe".into(),
                })
            }
            Ok(Err(error)) => {
                self.stats.crashed.fetch_add(1, Ordering::Relaxed);
                Ended::Died(format!("sent an unreadable answer: {error}"))
            }
            Err(_) => {
                self.stats.killed.fetch_add(1, Ordering::Relaxed);
                Ended::Deadline
            }
        };
        Ok((ended, pid))
    }
}

/// `SIGXCPU`: the kernel's signal past the soft `RLIMIT_CPU`.
const SIGXCPU: i32 = 24;

fn describe_signal(signal: i32) -> String {
    format!("was ended by signal {signal}")
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (_, Some(signal)) => describe_signal(signal),
        (Some(code), None) => format!("exited with status {code}"),
        (None, None) => "ended".into(),
    }
}

impl Isolation for WorkerPool {
    fn run<'a>(
        &'a self,
        module: &'a LoadedModule,
        env: &'a JobEnv,
        call: GuestCall,
    ) -> BoxFuture<'a, Execution> {
        Box::pin(self.call(module, env, call))
    }

    fn compile<'a>(&'a self, bytes: &'a [u8]) -> BoxFuture<'a, Result<(), IntakeError>> {
        Box::pin(WorkerPool::compile(self, bytes))
    }

    fn dominated_cells<'a>(
        &'a self,
        env: &'a JobEnv,
        statements: Vec<String>,
    ) -> BoxFuture<'a, Vec<Option<usize>>> {
        Box::pin(WorkerPool::dominated_cells(self, env, statements))
    }
}
