//! The worker's side: `dsb worker` limits itself, watches its parent, then
//! answers the supervisor's requests one at a time on stdin and stdout
//! (calls, compiles, dominance checks) with an in-process sandbox.

use std::path::PathBuf;
use std::time::Duration;

use super::wire::{CallRequest, CompileRefusal, Fault, Request, Response, read_frame, write_frame};
use super::{FAULTS_ENV, WorkerError};
use crate::sandbox::{Category, Execution, Sandbox, SandboxConfig};

/// Arguments of `dsb worker`.
#[derive(Debug, Clone)]
pub struct WorkerArgs {
    pub data_dir: PathBuf,
    pub memory_bytes: u64,
    pub open_files: u64,
    pub cpu_cores_per_call: u32,
}

/// Limit this process as a worker: memory, open files, no core dumps, and
/// death with the parent.
fn limit_self(args: &WorkerArgs) -> Result<(), WorkerError> {
    use rustix::process::{Resource, Rlimit, setrlimit};
    let limit = |resource, value: u64| {
        setrlimit(
            resource,
            Rlimit {
                current: Some(value),
                maximum: Some(value),
            },
        )
        .map_err(|e| WorkerError::Limits(e.into()))
    };
    limit(Resource::Data, args.memory_bytes)?;
    limit(Resource::Nofile, args.open_files)?;
    limit(Resource::Core, 0)?;
    die_with_parent();
    Ok(())
}

/// End this process as soon as the server that started it is gone, even
/// when a call holds every other thread. (Not `PR_SET_PDEATHSIG`: it fires
/// when the *thread* that spawned the worker exits, and the server's
/// runtime threads come and go.)
fn die_with_parent() {
    let parent = rustix::process::getppid();
    std::thread::Builder::new()
        .name("dsb-worker-watchdog".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(500));
                if rustix::process::getppid() != parent {
                    std::process::exit(70);
                }
            }
        })
        .map(drop)
        .unwrap_or_else(|error| {
            tracing::error!(%error, "cannot start the worker's watchdog");
        });
}

/// CPU seconds this process has used (user and system, all threads).
fn cpu_used() -> u64 {
    // `/proc/self/stat`: fields after the command are state, ppid, …;
    // utime and stime are the 12th and 13th of them, in clock ticks
    // (100 a second on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split(' ').collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)).div_ceil(100)
}

/// Let the next call burn at most `seconds` more CPU seconds: the soft
/// `RLIMIT_CPU` (the kernel sends `SIGXCPU` past it, which ends the
/// worker). The hard limit stays where it was, so the next call can raise
/// the soft one again.
fn limit_cpu(seconds: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let hard = getrlimit(Resource::Cpu).maximum;
    let soft = cpu_used().saturating_add(seconds).saturating_add(1);
    let soft = hard.map_or(soft, |hard| soft.min(hard));
    if let Err(error) = setrlimit(
        Resource::Cpu,
        Rlimit {
            current: Some(soft),
            maximum: hard,
        },
    ) {
        tracing::error!(%error, "cannot set the call's CPU limit");
    }
}

/// The worker's main loop (`dsb worker`): limit itself, then answer one
/// request after another from stdin until it closes.
pub async fn serve(args: WorkerArgs) -> Result<(), WorkerError> {
    limit_self(&args)?;
    let faults = std::env::var(FAULTS_ENV).is_ok_and(|v| v == "1");
    let sandbox = Sandbox::new(SandboxConfig {
        module_dir: Some(args.data_dir.join("modules")),
        // One call at a time (two for sample-aggregate's blocks is the
        // supervisor's business: two workers).
        concurrent_instances: 4,
        ..SandboxConfig::default()
    })?;
    let store = crate::store::Store::open(&args.data_dir.join("dsb.sqlite")).await?;
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let cores = u64::from(args.cpu_cores_per_call.max(1));
    while let Some(request) = read_frame::<_, Request>(&mut stdin, usize::MAX).await? {
        limit_cpu(match &request {
            Request::Call(call) => call.env.limits.timeout.as_secs().max(1) * cores,
            Request::Compile { .. } | Request::Dominance { .. } => 300 * cores,
        });
        let response = match request {
            Request::Call(request) => {
                let job_id = request.env.job_id.clone();
                let handled = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
                    handle(&sandbox, &store, *request, faults),
                ))
                .await;
                Response::Execution(Box::new(handled.unwrap_or_else(|_| {
                    tracing::error!(job = %job_id, "the worker panicked handling a call");
                    let mut execution = Execution::refused(&job_id, Category::Internal);
                    execution.diagnostics.trap = Some("the host panicked in the worker".into());
                    execution
                })))
            }
            Request::Dominance { env, statements } => {
                let checked = match env.into_env(&store) {
                    Ok(env) => futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
                        sandbox.dominated_cells(&env, statements.clone()),
                    ))
                    .await
                    .ok(),
                    Err(error) => {
                        tracing::error!(%error, "cannot rebuild the job's environment");
                        None
                    }
                };
                Response::Dominance(checked.unwrap_or_else(|| vec![None; statements.len()]))
            }
            Request::Compile { module } => Response::Compiled(
                std::fs::read(&module)
                    .map_err(crate::sandbox::IntakeError::Store)
                    .and_then(|bytes| sandbox.load_module(&bytes))
                    .map(|_| ())
                    .map_err(|error| CompileRefusal::from(&error)),
            ),
        };
        write_frame(&mut stdout, &response).await?;
    }
    Ok(())
}

async fn handle(
    sandbox: &Sandbox,
    store: &crate::store::Store,
    request: CallRequest,
    faults: bool,
) -> Execution {
    let job_id = request.env.job_id.clone();
    if faults && let Some(fault) = request.fault {
        commit_fault(fault);
    }
    let module = match sandbox.module_by_hash(&request.module) {
        Ok(Some(module)) => module,
        Ok(None) => {
            tracing::error!(job = %job_id, module = %request.module, "module not in the store");
            return Execution::refused(&job_id, Category::Internal);
        }
        Err(error) => return Execution::refused(&job_id, Category::from(&error)),
    };
    let env = match request.env.into_env(store) {
        Ok(env) => env,
        Err(error) => {
            tracing::error!(job = %job_id, %error, "cannot rebuild the job's environment");
            return Execution::refused(&job_id, Category::Internal);
        }
    };
    sandbox.run(&module, &env, request.call.into()).await
}

fn commit_fault(fault: Fault) {
    match fault {
        Fault::Abort => std::process::abort(),
        Fault::Hang => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        Fault::Spin => loop {
            std::hint::spin_loop();
        },
        Fault::Panic => panic!("injected host panic"),
        Fault::Allocate => {
            let block = vec![1u8; 16 << 30];
            tracing::error!(len = block.len(), "the memory limit did not stop 16 GiB");
        }
    }
}
