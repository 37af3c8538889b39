//! Every hostile fixture ends in its own category within its limit, the
//! host stays up, and the next job on the same sandbox succeeds.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use datasandbox::sandbox::{Category, Limits};

/// Run `attack`, check its category, then check an ordinary job still works.
async fn contained(attack: &str, limits: Limits, expected: Category) {
    let started = Instant::now();
    let execution = hostile(&format!(r#"{{"attack":"{attack}"}}"#), limits.clone()).await;
    assert_eq!(
        execution.category, expected,
        "attack {attack}: {:?}",
        execution.diagnostics
    );
    assert!(
        execution.outputs.is_empty(),
        "a failed job releases nothing"
    );
    assert!(
        started.elapsed() < limits.timeout + Duration::from_secs(5),
        "attack {attack} was not stopped in time: {:?}",
        started.elapsed()
    );
    let next = hostile(r#"{"attack":"ok"}"#, quick_limits()).await;
    assert_eq!(next.category, Category::Ok, "job after {attack}");
    assert_eq!(value(&next, "ok"), 1.0);
}

#[tokio::test]
async fn infinite_loop_runs_out_of_fuel() {
    contained("loop", quick_limits(), Category::OutOfFuel).await;
}

#[tokio::test]
async fn infinite_loop_with_unlimited_fuel_times_out() {
    let limits = Limits {
        fuel: u64::MAX / 2,
        timeout: Duration::from_millis(500),
        ..quick_limits()
    };
    contained("loop", limits, Category::Timeout).await;
}

#[tokio::test]
async fn sleeping_in_a_host_call_times_out() {
    let limits = Limits {
        timeout: Duration::from_millis(500),
        ..quick_limits()
    };
    contained("sleep", limits, Category::Timeout).await;
}

#[tokio::test]
async fn memory_bomb_hits_the_memory_limit() {
    let limits = Limits {
        memory_bytes: 64 << 20,
        fuel: 5_000_000_000,
        ..quick_limits()
    };
    contained("memory", limits, Category::MemoryLimit).await;
}

#[tokio::test]
async fn unbounded_recursion_overflows_the_stack() {
    contained("recursion", quick_limits(), Category::StackOverflow).await;
}

#[tokio::test]
async fn huge_emit_hits_the_output_limit() {
    contained("huge-emit", quick_limits(), Category::OutputLimit).await;
}

#[tokio::test]
async fn too_many_rows_hit_the_output_limit() {
    contained("many-rows", quick_limits(), Category::OutputLimit).await;
}

#[tokio::test]
async fn too_many_emits_hit_the_output_limit() {
    contained("many-emits", quick_limits(), Category::OutputLimit).await;
}

#[tokio::test]
async fn query_storm_hits_the_query_limit() {
    let execution = hostile(r#"{"attack":"query-storm"}"#, quick_limits()).await;
    assert_eq!(execution.category, Category::QueryLimit);
    // The limit is 100 queries: the 101st call ends the job.
    assert_eq!(execution.diagnostics.queries.len(), 100);
    contained("query-storm", quick_limits(), Category::QueryLimit).await;
}

#[tokio::test]
async fn query_bytes_are_limited_per_job() {
    let limits = Limits {
        query_bytes: 10_000,
        ..quick_limits()
    };
    let params =
        serde_json::json!({"attack": "query", "sql": "SELECT * FROM enterprises"}).to_string();
    let execution = hostile(&params, limits).await;
    assert_eq!(execution.category, Category::QueryLimit);
}

#[tokio::test]
async fn concurrent_hostile_jobs_do_not_disturb_each_other() {
    let attacks = [
        "loop",
        "memory",
        "recursion",
        "ok",
        "query-storm",
        "ok",
        "huge-emit",
        "ok",
    ];
    let jobs = attacks.map(|attack| {
        let limits = quick_limits();
        tokio::spawn(async move {
            hostile(&format!(r#"{{"attack":"{attack}"}}"#), limits)
                .await
                .category
        })
    });
    let mut categories = Vec::new();
    for job in jobs {
        categories.push(job.await.unwrap());
    }
    assert_eq!(
        categories,
        vec![
            Category::OutOfFuel,
            Category::MemoryLimit,
            Category::StackOverflow,
            Category::Ok,
            Category::QueryLimit,
            Category::Ok,
            Category::OutputLimit,
            Category::Ok
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_instance_pool_is_the_hosts_failure_not_the_guests() {
    use datasandbox::sandbox::{GuestCall, Sandbox, SandboxConfig};
    // One instance slot: a looping guest holds it while another starts.
    let sandbox = std::sync::Arc::new(
        Sandbox::new(SandboxConfig {
            concurrent_instances: 1,
            ..test_config(None)
        })
        .unwrap(),
    );
    let limits = Limits {
        fuel: u64::MAX / 2,
        timeout: Duration::from_millis(800),
        ..quick_limits()
    };
    // Compiled once up front, so the first job is instantiated at once.
    let (module, _) = sandbox.load_module(&guest("hostile")).unwrap();
    let busy = {
        let sandbox = std::sync::Arc::clone(&sandbox);
        let module = std::sync::Arc::clone(&module);
        let limits = limits.clone();
        tokio::spawn(async move {
            let env = env("busy", limits, vec![]);
            let params = r#"{"attack":"loop"}"#.to_string();
            sandbox.run(&module, &env, GuestCall::Run { params }).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let env = env("second", quick_limits(), vec![]);
    let params = r#"{"attack":"ok"}"#.to_string();
    let second = sandbox.run(&module, &env, GuestCall::Run { params }).await;
    assert_eq!(
        second.category,
        Category::Internal,
        "{:?}",
        second.diagnostics
    );
    assert_eq!(busy.await.unwrap().category, Category::Timeout);
}
