//! The WASI context gives the guest nothing: no files, environment,
//! arguments, sockets, name lookups or stdin; a frozen wall clock, a counting
//! monotonic clock, and randomness seeded from the job id.

use crate::common;

use std::time::Duration;

use common::*;
use datasandbox::dataset::Classification;
use datasandbox::sandbox::{Category, Execution, GuestCall, JobEnv};

async fn probe(job_id: &str) -> (JobEnv, Execution) {
    let env = env(job_id, quick_limits(), vec![register(Classification::Open)]);
    let execution = sandbox()
        .run_bytes(
            &guest("hostile"),
            &env,
            GuestCall::Run {
                params: r#"{"attack":"wasi-probe"}"#.into(),
            },
        )
        .await;
    assert_eq!(
        execution.category,
        Category::Ok,
        "{:?}",
        execution.diagnostics
    );
    (env, execution)
}

#[tokio::test]
async fn guest_cannot_open_files_sockets_env_or_stdin() {
    let (_, execution) = probe("probe-1").await;
    for denied in [
        "file_read",
        "dir_listed",
        "file_created",
        "socket",
        "resolved",
    ] {
        assert_eq!(value(&execution, denied), 0.0, "{denied} must fail");
    }
    assert_eq!(value(&execution, "env_vars"), 0.0);
    assert_eq!(value(&execution, "args"), 0.0);
    assert_eq!(value(&execution, "stdin_bytes"), 0.0);
}

#[tokio::test]
async fn guest_sees_the_jobs_logical_time_not_the_real_clock() {
    let (env, execution) = probe("probe-clock").await;
    assert_eq!(
        value(&execution, "wall_clock_secs"),
        env.logical_time.as_secs_f64()
    );
    assert_eq!(
        env.logical_time.as_secs() % 86_400,
        0,
        "only the day is revealed"
    );
    // Two readings of the monotonic clock are one tick apart, however long
    // the work between them took.
    assert_eq!(value(&execution, "monotonic_elapsed_ns"), 1_000.0);

    let mut later = env.clone();
    later.logical_time = Duration::from_secs(1_700_000_000);
    let execution = sandbox()
        .run_bytes(
            &guest("hostile"),
            &later,
            GuestCall::Run {
                params: r#"{"attack":"wasi-probe"}"#.into(),
            },
        )
        .await;
    assert_eq!(value(&execution, "wall_clock_secs"), 1_700_000_000.0);
}

#[tokio::test]
async fn randomness_is_seeded_from_the_job_id() {
    let (_, first) = probe("probe-random-a").await;
    let (_, again) = probe("probe-random-a").await;
    let (_, other) = probe("probe-random-b").await;
    let random = |e: &Execution| (value(e, "random_hi"), value(e, "random_lo"));
    assert_eq!(random(&first), random(&again), "same job, same numbers");
    assert_ne!(random(&first), random(&other), "another job, other numbers");
}
