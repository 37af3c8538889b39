//! The job queue over real HTTP: admission limits (429 with Retry-After),
//! a responsive server while guests spin, cancellation, concurrent
//! submissions, graceful shutdown.

use crate::common;

use std::time::{Duration, Instant};

use common::{TestServer, guest};
use datasandbox::accounts::Role;
use datasandbox::client::{Client, ClientError};

async fn setup(server: &TestServer, tenant: &str) -> (Client, String, String) {
    server.admin.grant(tenant, "enterprises").await.unwrap();
    let client = server.client(Role::Analyst, tenant).await;
    let stats = client
        .upload_module(guest("district_stats"), None)
        .await
        .unwrap()
        .sha256;
    let hostile = client
        .upload_module(guest("hostile"), None)
        .await
        .unwrap()
        .sha256;
    (client, stats, hostile)
}

async fn looping(client: &Client, hostile: &str) -> Result<String, ClientError> {
    Ok(client
        .submit_job(
            hostile,
            "aggregate",
            &["enterprises".into()],
            serde_json::json!({"attack": "loop"}),
        )
        .await?
        .id)
}

async fn wait_for_state(client: &Client, id: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let job = client.job(id, 0).await.unwrap();
        if job.state == state {
            return;
        }
        assert!(Instant::now() < deadline, "job {id} stuck in {}", job.state);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_gets_429_and_the_server_stays_responsive() {
    let mut server = TestServer::start_with(|c| {
        c.concurrency = 1;
        c.max_queued = 2;
    })
    .await;
    let (client, _, hostile) = setup(&server, "lab-a").await;
    let running = looping(&client, &hostile).await.unwrap();
    wait_for_state(&client, &running, "running").await;
    let queued = [
        looping(&client, &hostile).await.unwrap(),
        looping(&client, &hostile).await.unwrap(),
    ];
    match looping(&client, &hostile).await {
        Err(ClientError::Api {
            status,
            code,
            retry_after,
            ..
        }) => {
            assert_eq!((status, code.as_str()), (429, "queue-full"));
            assert!(retry_after.is_some_and(|s| s >= 1));
        }
        other => panic!("expected 429 queue-full, got {other:?}"),
    }
    // While a guest spins and two wait, the API answers promptly.
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(client.healthz().await.unwrap(), "ok");
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(100),
        "healthz took {slowest:?}"
    );
    let metrics = server.admin.metrics().await.unwrap();
    assert!(metrics.contains("dsb_queue_depth 2"), "{metrics}");
    assert!(
        metrics.contains("dsb_admissions_refused_total{code=\"queue-full\"} 1"),
        "{metrics}"
    );

    // Cancel a queued job: it ends at once and never runs.
    let cancelled = client.cancel_job(&queued[0]).await.unwrap();
    assert_eq!(cancelled.state, "failed");
    assert_eq!(cancelled.category.as_deref(), Some("cancelled"));
    assert!(cancelled.started_at.is_none());
    // Cancel the running one: the guest is stopped at its next yield.
    let started = Instant::now();
    client.cancel_job(&running).await.unwrap();
    let stopped = client
        .wait_job(&running, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        stopped.category.as_deref(),
        Some("cancelled"),
        "{stopped:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // The last one now runs; cancel it too, then nothing is left.
    wait_for_state(&client, &queued[1], "running").await;
    client.cancel_job(&queued[1]).await.unwrap();
    let last = client
        .wait_job(&queued[1], Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(last.category.as_deref(), Some("cancelled"));
    // Cancelling a finished job is a conflict.
    let again = client.cancel_job(&queued[1]).await.unwrap_err();
    assert_eq!(again.code(), Some("wrong-state"));
    let actions: Vec<String> = datasandbox::store::audit::entries(&server.service.store)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert!(actions.contains(&"job.cancelled".to_string()));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_tenant_concurrency_and_rate_limits() {
    let mut server = TestServer::start_with(|c| {
        c.concurrency = 1;
        c.per_tenant_jobs = 1;
        c.per_tenant_per_minute = 3;
    })
    .await;
    let (a, _, hostile_a) = setup(&server, "lab-a").await;
    let (b, stats_b, _) = setup(&server, "lab-b").await;
    let first = looping(&a, &hostile_a).await.unwrap();
    let error = looping(&a, &hostile_a).await.unwrap_err();
    assert_eq!(error.code(), Some("too-many-jobs"), "{error}");
    // Another tenant is not held up by lab-a's limit.
    let other = b
        .submit_job(
            &stats_b,
            "aggregate",
            &["enterprises".into()],
            serde_json::json!({}),
        )
        .await
        .unwrap();
    a.cancel_job(&first).await.unwrap();
    a.wait_job(&first, Duration::from_secs(10)).await.unwrap();
    let done = b
        .wait_job(&other.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done.state, "released");
    // lab-a has used 2 of its 3 submissions a minute (the refused one
    // counted); the third is admitted, the fourth is rate-limited.
    let third = looping(&a, &hostile_a).await.unwrap();
    a.cancel_job(&third).await.unwrap();
    a.wait_job(&third, Duration::from_secs(10)).await.unwrap();
    match looping(&a, &hostile_a).await {
        Err(ClientError::Api {
            status,
            code,
            retry_after,
            ..
        }) => {
            assert_eq!((status, code.as_str()), (429, "rate-limited"));
            assert!(
                retry_after.is_some_and(|s| (1..=60).contains(&s)),
                "{retry_after:?}"
            );
        }
        other => panic!("expected 429 rate-limited, got {other:?}"),
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_from_several_tenants_all_land() {
    let mut server = TestServer::start().await;
    let mut tenants = Vec::new();
    for name in ["lab-a", "lab-b", "lab-c", "lab-d"] {
        tenants.push(setup(&server, name).await);
    }
    let mut tasks = Vec::new();
    for i in 0..32 {
        let (client, stats, _) = tenants[i % tenants.len()].clone();
        tasks.push(tokio::spawn(async move {
            let job = client
                .submit_job(
                    &stats,
                    "aggregate",
                    &["enterprises".into()],
                    serde_json::json!({}),
                )
                .await
                .unwrap();
            let job = client
                .wait_job(&job.id, Duration::from_secs(120))
                .await
                .unwrap();
            let receipt = client.receipt(&job.id).await.unwrap();
            (client, job, receipt)
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for task in tasks {
        let (client, job, receipt) = task.await.unwrap();
        assert_eq!(job.state, "released");
        assert_eq!(receipt.body.job_id, job.id);
        ids.insert(job.id.clone());
        // The owner sees the job in its own list.
        assert!(client.jobs().await.unwrap().iter().any(|j| j.id == job.id));
    }
    assert_eq!(ids.len(), 32);
    for (client, _, _) in &tenants {
        assert_eq!(client.jobs().await.unwrap().len(), 8);
    }
    let verdict = server.admin.audit_verify().await.unwrap();
    assert!(verdict.intact, "{verdict:?}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_the_grace_period_then_interrupts() {
    let mut server = TestServer::start_with(|c| {
        c.concurrency = 1;
        c.grace_period = Duration::from_millis(500);
    })
    .await;
    let (client, stats, hostile) = setup(&server, "lab-a").await;
    let quick = client
        .submit_job(
            &stats,
            "aggregate",
            &["enterprises".into()],
            serde_json::json!({}),
        )
        .await
        .unwrap();
    client
        .wait_job(&quick.id, Duration::from_secs(60))
        .await
        .unwrap();
    let spinning = looping(&client, &hostile).await.unwrap();
    wait_for_state(&client, &spinning, "running").await;
    let waiting = looping(&client, &hostile).await.unwrap();
    let service = std::sync::Arc::clone(&server.service);
    let started = Instant::now();
    server.stop().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    for id in [&spinning, &waiting] {
        let job = datasandbox::store::jobs::get(&service.store, id)
            .await
            .unwrap();
        assert_eq!(
            (job.state.as_str(), job.category.as_deref()),
            ("failed", Some("interrupted")),
            "{id}"
        );
    }
    let job = datasandbox::store::jobs::get(&service.store, &quick.id)
        .await
        .unwrap();
    assert_eq!(job.state, "released");
    let verdict = service.verify_audit().await.unwrap();
    assert!(verdict.is_ok(), "{verdict:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_with_many_queued_jobs_does_not_starve_another() {
    let mut server = TestServer::start_with(|c| {
        c.concurrency = 1;
    })
    .await;
    let (busy, _, busy_hostile) = setup(&server, "lab-busy").await;
    let (quiet, quiet_stats, _) = setup(&server, "lab-quiet").await;
    // lab-busy fills the one worker with a loop and queues three more.
    let running = looping(&busy, &busy_hostile).await.unwrap();
    wait_for_state(&busy, &running, "running").await;
    let mut queued = Vec::new();
    for _ in 0..3 {
        queued.push(looping(&busy, &busy_hostile).await.unwrap());
    }
    // lab-quiet submits one ordinary job after all of them.
    let job = quiet
        .submit_job(
            &quiet_stats,
            "aggregate",
            &["enterprises".into()],
            serde_json::json!({}),
        )
        .await
        .unwrap();
    // Turns alternate between the tenants that wait: lab-busy's first
    // queued job (it was waiting first), then lab-quiet's, then lab-busy's
    // others. First come, first served would run all three before it.
    busy.cancel_job(&running).await.unwrap();
    wait_for_state(&quiet, &job.id, "released").await;
    let last = busy.job(&queued[2], 0).await.unwrap();
    assert!(
        matches!(last.state.as_str(), "queued" | "running"),
        "lab-busy's third queued job ran before lab-quiet's: {last:?}"
    );
    for id in &queued {
        let _ = busy.cancel_job(id).await;
    }
    server.stop().await.unwrap();
}
