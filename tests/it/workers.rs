//! Supervised worker processes (`datasandbox::worker`) behind a real
//! server: every guest call runs in a `dsb worker` child; a worker that
//! aborts, panics, never yields, allocates past its OS limit or is
//! cancelled ends one job in a fixed host category, and the server, the
//! tenant and every other tenant go on. Faults are committed for real by
//! the worker process (`WorkerConfig::fault_injection`, test only).

use crate::common;

use std::time::{Duration, Instant};

use common::{TestServer, guest};
use datasandbox::accounts::Role;
use datasandbox::client::Client;

async fn analyst(server: &TestServer, tenant: &str) -> (Client, String) {
    server.admin.grant(tenant, "enterprises").await.unwrap();
    let client = server.client(Role::Analyst, tenant).await;
    let module = client
        .upload_module(guest("district_stats"), None)
        .await
        .unwrap()
        .sha256;
    (client, module)
}

async fn faulty_server() -> TestServer {
    TestServer::start_with(|c| {
        c.concurrency = 2;
        // A slot a failed job kept would refuse the tenant's next job.
        c.per_tenant_jobs = 1;
        c.workers.fault_injection = true;
        c.workers.kill_after = Duration::from_secs(1);
        // Enough for the engine and DataFusion, far below what `allocate`
        // asks for.
        c.workers.memory_bytes = 2 << 30;
    })
    .await
}

async fn run(client: &Client, module: &str, params: serde_json::Value) -> (String, String) {
    let job = client
        .submit_job(module, "aggregate", &["enterprises".into()], params)
        .await
        .unwrap();
    let done = client.job(&job.id, 60).await.unwrap();
    (job.id, done.category.unwrap_or_default())
}

async fn worker_pid(server: &TestServer, id: &str) -> Option<u64> {
    let diagnostics = server.admin.job_diagnostics(id).await.unwrap();
    diagnostics["worker_pid"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_jobs_run_in_worker_processes_and_release_as_before() {
    let mut server = TestServer::start().await;
    assert!(server.service.sandbox.is_isolated());
    let (client, module) = analyst(&server, "lab-a").await;
    let (first, category) = run(&client, &module, serde_json::json!({})).await;
    assert_eq!(category, "ok");
    let (second, category) = run(&client, &module, serde_json::json!({})).await;
    assert_eq!(category, "ok");
    let (a, b) = (
        worker_pid(&server, &first).await.expect("ran in a worker"),
        worker_pid(&server, &second).await.expect("ran in a worker"),
    );
    assert_ne!(u64::from(std::process::id()), a);
    // An idle worker is reused.
    assert_eq!(a, b);
    // The module was compiled once, in a worker at upload; the server and
    // the workers load the same artifact (one engine tag).
    let artifacts = std::fs::read_dir(server.dir.path().join("data/modules"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.starts_with(&module) && name.ends_with(".cwasm")
        })
        .count();
    assert_eq!(artifacts, 1);
    // Released as before (the suite's other server tests check values
    // through workers too).
    let output = client.job_output(&first).await.unwrap();
    assert!(!output.outputs.is_empty());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_aborts_or_panics_ends_one_job_internal() {
    let mut server = faulty_server().await;
    let (client, module) = analyst(&server, "lab-a").await;
    for fault in ["abort", "panic", "allocate"] {
        let started = Instant::now();
        let (id, category) = run(&client, &module, serde_json::json!({"dsb_fault": fault})).await;
        assert_eq!(category, "internal", "{fault}");
        assert!(started.elapsed() < Duration::from_secs(20), "{fault}");
        let diagnostics = server.admin.job_diagnostics(&id).await.unwrap();
        eprintln!(
            "{fault}: {} in {:?}",
            diagnostics["trap"],
            started.elapsed()
        );
    }
    // The allocation was stopped by the worker's own limit, not by the
    // machine: the server's process never held it.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .unwrap();
    assert!(hwm < 8 << 20, "server peak RSS {hwm} kB");
    // The tenant goes on: its slot was given back each time.
    let (_, category) = run(&client, &module, serde_json::json!({})).await;
    assert_eq!(category, "ok");
    let metrics = server.admin.metrics().await.unwrap();
    assert!(metrics.contains("dsb_jobs_running 0"), "{metrics}");
    assert!(
        metrics.contains("dsb_workers{event=\"crashed\"} 2"),
        "{metrics}"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_never_yields_is_killed_at_the_deadline_and_others_go_on() {
    let mut server = faulty_server().await;
    let (attacker, module) = analyst(&server, "lab-a").await;
    let (other, other_module) = analyst(&server, "lab-b").await;
    let started = Instant::now();
    let hung = attacker
        .submit_job(
            &module,
            "aggregate",
            &["enterprises".into()],
            serde_json::json!({"dsb_fault": "hang"}),
        )
        .await
        .unwrap();
    // Another tenant's job runs to its end meanwhile.
    let (_, category) = run(&other, &other_module, serde_json::json!({})).await;
    assert_eq!(category, "ok");
    assert!(started.elapsed() < Duration::from_secs(8));
    let done = attacker.job(&hung.id, 90).await.unwrap();
    let took = started.elapsed();
    assert_eq!(done.category.as_deref(), Some("timeout"));
    // The job's own limit plus `kill_after`, plus a margin.
    let limit = server
        .service
        .policies
        .current()
        .policy_for("enterprises")
        .and_then(|p| p.max_job_seconds)
        .unwrap();
    eprintln!("hang ended after {took:?} (limit {limit} s + 1 s)");
    assert!(took >= Duration::from_secs(u64::from(limit)), "{took:?}");
    assert!(took < Duration::from_secs(u64::from(limit) + 6), "{took:?}");
    let (_, category) = run(&attacker, &module, serde_json::json!({})).await;
    assert_eq!(category, "ok");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_kills_its_worker() {
    let mut server = faulty_server().await;
    let (client, module) = analyst(&server, "lab-a").await;
    let hung = client
        .submit_job(
            &module,
            "aggregate",
            &["enterprises".into()],
            serde_json::json!({"dsb_fault": "hang"}),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.job(&hung.id, 0).await.unwrap().state != "running" {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    client.cancel_job(&hung.id).await.unwrap();
    let done = client.job(&hung.id, 20).await.unwrap();
    assert_eq!(done.category.as_deref(), Some("cancelled"));
    assert!(started.elapsed() < Duration::from_secs(3));
    let (_, category) = run(&client, &module, serde_json::json!({})).await;
    assert_eq!(category, "ok");
    server.stop().await.unwrap();
}

/// Live (not zombie) `dsb worker` children of this process.
fn live_workers() -> usize {
    workers_of(std::process::id()).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compilation_runs_in_a_worker_under_its_time_limit() {
    let mut server = TestServer::start_with(|c| {
        c.workers.compile_timeout = Duration::from_millis(1);
    })
    .await;
    let client = server.client(Role::Analyst, "lab-a").await;
    let started = Instant::now();
    let refused = client
        .upload_module(guest("district_stats"), None)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some("invalid-module"), "{refused}");
    assert!(refused.to_string().contains("too-complex"), "{refused}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Nothing was kept: no artifact, no worker still compiling.
    let artifacts = std::fs::read_dir(server.dir.path().join("data/modules"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
        })
        .count();
    assert_eq!(artifacts, 0);
    assert_eq!(live_workers(), 0);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_refused_at_the_request_timeout_stops_its_compilation() {
    let mut server = TestServer::start_with(|c| {
        c.request_timeout = Duration::from_millis(300);
    })
    .await;
    let client = server.client(Role::Analyst, "lab-a").await;
    // A Python component takes Cranelift seconds.
    let refused = client
        .upload_module(common::python_guest("district_stats"), None)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some("request-timeout"), "{refused}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while live_workers() > 0 {
        assert!(
            Instant::now() < deadline,
            "the compiling worker outlived its upload"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_compiles_one_upload_at_a_time() {
    let mut server = TestServer::start().await;
    let client = server.client(Role::Analyst, "lab-a").await;
    let python = common::python_guest("district_stats");
    let (first, second) = tokio::join!(client.upload_module(python.clone(), None), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        client.upload_module(guest("district_stats"), None).await
    });
    first.unwrap();
    assert_eq!(second.unwrap_err().code(), Some("compile-busy"));
    // Given back when the first ended.
    client
        .upload_module(guest("district_stats"), None)
        .await
        .unwrap();
    server.stop().await.unwrap();
}

/// The review pre-check re-plans the guest's statements: in a worker, on
/// the job's bound environment sent as data (rules, record keys, schema),
/// with the same answers as in this process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dominance_pre_check_runs_in_a_worker_on_the_bound_environment() {
    let dir = tempfile::tempdir().unwrap();
    let table = crate::review::dominated_firms(dir.path());
    let pool = datasandbox::worker::WorkerPool::new(
        datasandbox::worker::WorkerConfig {
            exe: Some(env!("CARGO_BIN_EXE_dsb").into()),
            ..Default::default()
        },
        &dir.path().join("data"),
    )
    .unwrap();
    let env = common::env("dominance", common::quick_limits(), vec![table]);
    let statements = vec![
        "SELECT sector, SUM(revenue) AS revenue FROM firms GROUP BY sector".to_string(),
        "SELECT sector, COUNT(*) AS firms FROM firms GROUP BY sector".to_string(),
        "SELECT nothing FROM nowhere".to_string(),
    ];
    let in_worker = pool.dominated_cells(&env, statements.clone()).await;
    assert_eq!(in_worker, vec![Some(1), Some(0), None]);
    let here = common::sandbox().dominated_cells(&env, statements).await;
    assert_eq!(in_worker, here);
    assert_eq!(
        pool.stats
            .started
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// The OS limit behind the supervisor: a host thread burning CPU is ended
/// by the worker's own `RLIMIT_CPU` (the call's limit times one core here)
/// long before the supervisor's deadline would, and reads `timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_burning_cpu_is_ended_by_its_cpu_limit() {
    let mut server = TestServer::start_with(|c| {
        c.workers.fault_injection = true;
        c.workers.kill_after = Duration::from_secs(60);
        c.workers.cpu_cores_per_call = 1;
    })
    .await;
    let (client, module) = analyst(&server, "lab-a").await;
    let started = Instant::now();
    let (id, category) = run(&client, &module, serde_json::json!({"dsb_fault": "spin"})).await;
    let took = started.elapsed();
    assert_eq!(category, "timeout");
    eprintln!("spin ended after {took:?}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    let diagnostics = server.admin.job_diagnostics(&id).await.unwrap();
    assert!(
        diagnostics["trap"]
            .as_str()
            .is_some_and(|t| t.contains("CPU limit")),
        "{diagnostics}"
    );
    server.stop().await.unwrap();
}

/// Only `dsb` has the `worker` command: a program embedding the server
/// (this test binary) is told to name the executable instead of starting
/// itself as a worker.
#[test]
fn a_server_outside_dsb_must_name_the_worker_executable() {
    let dir = tempfile::tempdir().unwrap();
    let Err(error) = datasandbox::worker::WorkerPool::new(Default::default(), dir.path()) else {
        panic!("a pool started from the test binary");
    };
    assert!(error.to_string().contains("is not dsb"), "{error}");
}

/// `dsb worker` children of `pid` that are alive (not zombies).
fn workers_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let after = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
            let mut fields = after.split(' ');
            let (state, ppid) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            ppid == pid.to_string()
                && state != "Z"
                && String::from_utf8_lossy(&cmdline).contains("worker")
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

/// A `dsb serve` killed with SIGKILL takes its workers with it (their
/// watchdog sees the parent gone), so no orphan keeps running a guest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_die_with_a_killed_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = common::ServeProcess::start(&dir.path().join("data"));
    let admin = Client::new(&server.url, Some(server.admin_token.clone()));
    admin
        .add_dataset(
            &common::samples().join("enterprises.csv"),
            &common::samples().join("enterprises.toml"),
        )
        .await
        .unwrap();
    admin.reload_policies().await.unwrap();
    let module = admin
        .upload_module(guest("district_stats"), None)
        .await
        .unwrap()
        .sha256;
    let job = common::aggregate_job(&admin, &module, "enterprises", serde_json::json!({})).await;
    assert_eq!(job.category.as_deref(), Some("ok"));
    let workers = workers_of(server.child.id());
    assert!(!workers.is_empty(), "the job ran in a worker");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while workers.iter().any(|&w| alive(w)) {
        assert!(Instant::now() < deadline, "a worker outlived its server");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
