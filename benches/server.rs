//! Server benchmarks over real loopback HTTP, against baselines measured in
//! the same run. Run with `cargo bench --bench server` after
//! `scripts/build-guests`.
//!
//! 1. The cost of a release's evidence: one audit append (its own
//!    write transaction, fsync'd) and one receipt signature, µs.
//! 2. A tiny job end to end (submit, long-poll until released, fetch the
//!    receipt), one at a time: p50/p99 vs an HTTP round trip to `/healthz`
//!    (goal p50 ≤ 5 ms).
//! 3. Throughput with 64 clients submitting tiny jobs (goal ≥ 1,000 jobs/s).
//! 4. Peak RSS with 64 concurrent jobs each aggregating the 2,000-row
//!    register (goal ≤ 8 GiB), vs the RSS before them.
//! 5. Scoring: one subject per request (p50), and 10,000 subjects in batches
//!    subjects with a fresh instance each (goal ≥ 2,000 subjects/s).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{guest, percentile};
use datasandbox::accounts::{self, Role};
use datasandbox::client::Client;
use datasandbox::receipt::{PrivacyCost, Receipt, ReceiptBody};
use datasandbox::server::{Server, ServerConfig};
use datasandbox::service::Service;

/// Peak and current resident set, from /proc (kB → bytes).
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(
        Service::open(&dir.path().join("data"), &root.join("policies"))
            .await
            .unwrap(),
    );
    service
        .add_dataset(
            "bench",
            &root.join("data/samples/enterprises.csv"),
            &root.join("data/samples/enterprises.toml"),
        )
        .await
        .unwrap();

    // 1. Evidence per release.
    let signer = service.keys.signer().unwrap();
    let n = 300;
    let started = Instant::now();
    for i in 0..n {
        service
            .store
            .transition(async |tx| {
                tx.record(
                    "bench",
                    "bench.entry",
                    &i.to_string(),
                    serde_json::json!({ "i": i }),
                )
                .await
            })
            .await
            .unwrap();
    }
    let append = started.elapsed() / n;
    let body = ReceiptBody {
        format: 1,
        job_id: "0".repeat(32),
        subject: None,
        reviewers: None,
        module_sha256: "a".repeat(64),
        world: "analysis".into(),
        mode: "aggregate".into(),
        datasets: vec![],
        policy_sha256: Some("b".repeat(64)),
        params_sha256: "c".repeat(64),
        privacy_cost: PrivacyCost::default(),
        output_sha256: "d".repeat(64),
        output: Some(serde_json::json!([{ "kind": "value", "name": "x", "value": 1.0 }])),
        released_at: 0,
        audit_position: 1,
        key_id: signer.key_id.clone(),
    };
    let started = Instant::now();
    for _ in 0..n {
        std::hint::black_box(Receipt::sign(body.clone(), &signer));
    }
    let sign = started.elapsed() / n;
    println!(
        "1. evidence per release: audit append (own fsync'd transaction) {:.0} µs, \
         receipt JCS + Ed25519 signature {:.0} µs",
        append.as_secs_f64() * 1e6,
        sign.as_secs_f64() * 1e6
    );

    let server = Server::bind_service(
        ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("data"),
            policies: root.join("policies"),
            max_queued: 100_000,
            per_tenant_jobs: 100_000,
            per_tenant_per_minute: 0,
            // As deployed: every guest call in a `dsb worker` process.
            workers: datasandbox::worker::WorkerConfig {
                exe: Some(env!("CARGO_BIN_EXE_dsb").into()),
                ..Default::default()
            },
            ..ServerConfig::default()
        },
        Arc::clone(&service),
    )
    .await
    .unwrap();
    let base = format!("http://{}", server.addr);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let (_, admin_token) =
        accounts::create_token(&service.store, "bench", Role::Admin, "platform", None)
            .await
            .unwrap();
    let admin = Client::new(&base, Some(admin_token));
    admin.grant("bench-lab", "enterprises").await.unwrap();
    let analyst = admin.with_token(
        admin
            .create_token(Role::Analyst, "bench-lab", None)
            .await
            .unwrap()
            .token,
    );
    let tiny = analyst
        .upload_module(guest("hostile"), None)
        .await
        .unwrap()
        .sha256;
    let stats = analyst
        .upload_module(guest("district_stats"), None)
        .await
        .unwrap()
        .sha256;
    let datasets = vec!["enterprises".to_string()];
    let tiny_params = serde_json::json!({ "attack": "ok" });

    // 2. Latency, one job at a time.
    let mut round_trips = Vec::new();
    for _ in 0..300 {
        let started = Instant::now();
        analyst.healthz().await.unwrap();
        round_trips.push(started.elapsed());
    }
    let mut jobs = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        let job = analyst
            .submit_job(&tiny, "aggregate", &datasets, tiny_params.clone())
            .await
            .unwrap();
        let job = analyst
            .wait_job(&job.id, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(job.state, "released", "{job:?}");
        analyst.receipt(&job.id).await.unwrap();
        jobs.push(started.elapsed());
    }
    let rt50 = percentile(&mut round_trips, 0.5);
    let (p50, p99) = (percentile(&mut jobs, 0.5), percentile(&mut jobs, 0.99));
    println!(
        "2. tiny job end to end over HTTP with receipt: p50 {:.2} ms, p99 {:.2} ms \
         (baseline HTTP round trip p50 {:.3} ms; ratio {:.1}×; goal p50 ≤ 5 ms)",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        rt50.as_secs_f64() * 1e3,
        p50.as_secs_f64() / rt50.as_secs_f64()
    );

    // 3. Throughput.
    let total = 1000;
    let clients = 64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let analyst = analyst.clone();
        let tiny = tiny.clone();
        let datasets = datasets.clone();
        let params = tiny_params.clone();
        tasks.push(tokio::spawn(async move {
            for _ in (c..total).step_by(clients) {
                let job = analyst
                    .submit_job(&tiny, "aggregate", &datasets, params.clone())
                    .await
                    .unwrap();
                let job = analyst
                    .wait_job(&job.id, Duration::from_secs(120))
                    .await
                    .unwrap();
                assert_eq!(job.state, "released");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "3. throughput, {clients} clients, {total} tiny jobs: {:.0} jobs/s ({:.2} s; goal ≥ 1,000 jobs/s)",
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );

    let _ = stop.send(());
    serving.await.unwrap().unwrap();

    // 4. Memory with 64 aggregating jobs running at once (a server with 64
    // job workers over the same data directory).
    let server = Server::bind_service(
        ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("data"),
            policies: root.join("policies"),
            concurrency: 64,
            max_queued: 1000,
            per_tenant_jobs: 1000,
            per_tenant_per_minute: 0,
            // In process, so the figure is every job's memory in one
            // process (with workers it would be spread over 64 of them).
            workers: datasandbox::worker::WorkerConfig {
                isolation: datasandbox::worker::IsolationMode::InProcess,
                ..Default::default()
            },
            ..ServerConfig::default()
        },
        Arc::clone(&service),
    )
    .await
    .unwrap();
    let (_, token) =
        accounts::create_token(&service.store, "bench", Role::Analyst, "bench-lab", None)
            .await
            .unwrap();
    let analyst = Client::new(&format!("http://{}", server.addr), Some(token));
    let server_addr = server.addr;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let (_, before) = rss();
    let mut ids = Vec::new();
    for _ in 0..64 {
        ids.push(
            analyst
                .submit_job(&stats, "aggregate", &datasets, serde_json::json!({}))
                .await
                .unwrap()
                .id,
        );
    }
    for id in &ids {
        let job = analyst
            .wait_job(id, Duration::from_secs(300))
            .await
            .unwrap();
        assert_eq!(job.state, "released");
    }
    let (peak, _) = rss();
    println!(
        "4. 64 concurrent aggregate jobs: peak RSS {:.0} MiB (before them {:.0} MiB; goal ≤ 8 GiB)",
        mib(peak),
        mib(before)
    );

    // 5. Scoring with the example logistic model over four datasets: every
    // enterprise authorised; one subject at a time, then 10,000 subjects as
    // five batches of the 2,000 enterprises (a batch lists a subject once).
    for id in ["tax_records", "social_security", "utility_payments"] {
        service
            .add_dataset(
                "bench",
                &root.join(format!("data/samples/{id}.csv")),
                &root.join(format!("data/samples/{id}.toml")),
            )
            .await
            .unwrap();
    }
    let register = std::fs::read_to_string(root.join("data/samples/enterprises.csv")).unwrap();
    let ids: Vec<String> = register
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();
    let t = datasandbox::store::now();
    let terms: Vec<_> = ids
        .iter()
        .map(
            |id| datasandbox::scoring::authorisations::NewAuthorisation {
                subject: id.clone(),
                tenant: "bank-d".into(),
                purpose: "credit-assessment".into(),
                datasets: datasandbox::sample_data::DATASETS
                    .map(String::from)
                    .to_vec(),
                valid_from: t - 10,
                valid_until: t + 86_400,
                consent_sha256: "0".repeat(64),
                consent_uri: format!("consents/{id}.pdf"),
            },
        )
        .collect();
    datasandbox::scoring::authorisations::add(&service.store, "bench", &terms)
        .await
        .unwrap();
    let (_, token) =
        accounts::create_token(&service.store, "bench", Role::Institution, "bank-d", None)
            .await
            .unwrap();
    let bank = Client::new(&format!("http://{}", server_addr), Some(token));
    let scorer = bank
        .upload_module(guest("credit_risk"), None)
        .await
        .unwrap()
        .sha256;
    datasandbox::scoring::approvals::approve(
        &service.store,
        &datasandbox::scoring::approvals::NewApproval {
            policy: "credit-risk".into(),
            institution: "bank-d".into(),
            module: scorer.clone(),
            params: serde_json::json!({}),
        },
        "bench",
    )
    .await
    .unwrap();
    let request = |subjects: &[String]| {
        serde_json::json!({
            "module": scorer, "policy": "credit-risk", "subjects": subjects,
        })
        .to_string()
        .into_bytes()
    };
    let mut single = Vec::new();
    for id in ids.iter().take(100) {
        let started = Instant::now();
        let (status, _, _) = bank
            .raw(
                reqwest::Method::POST,
                "/v1/scoring",
                Some(("application/json", request(std::slice::from_ref(id)))),
            )
            .await
            .unwrap();
        assert_eq!(status, 200);
        single.push(started.elapsed());
    }
    let started = Instant::now();
    let mut scored = 0;
    while scored < 10_000 {
        let take = (10_000 - scored).min(ids.len());
        let (status, _, body) = bank
            .raw(
                reqwest::Method::POST,
                "/v1/scoring",
                Some(("application/json", request(&ids[..take]))),
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let result: datasandbox::scoring::ScoreBatch = serde_json::from_slice(&body).unwrap();
        assert!(result.results.iter().all(|r| r.outcome == "scored"));
        scored += take;
    }
    let elapsed = started.elapsed();
    println!(
        "5. scoring: one subject per request p50 {:.2} ms; 10,000 subjects in batches of 2,000 \
         (fresh instance each) {:.2} s = {:.0} subjects/s (goal ≥ 2,000 subjects/s)",
        percentile(&mut single, 0.5).as_secs_f64() * 1e3,
        elapsed.as_secs_f64(),
        10_000.0 / elapsed.as_secs_f64()
    );
    let _ = stop.send(());
    serving.await.unwrap().unwrap();
}
