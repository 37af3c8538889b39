//! Hostile input that once crashed or starved the host: statements that
//! allocate, recurse or loop in the planner, tables whose Arrow IPC lies
//! about its lengths, components whose memories add up past the limit. Each
//! ends in a fixed category and the host (this test process) stays up.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use datasandbox::dataset::Classification;
use datasandbox::sandbox::{Category, GuestCall, Limits};

async fn refused_with(sql: &str, code: &str) {
    let started = Instant::now();
    let execution = query_through_guest(sql, vec![register(Classification::Open)]).await;
    match &execution.category {
        Category::PolicyRejected(reason) => {
            assert!(reason.starts_with(code), "{reason}")
        }
        other => panic!("{}: {other:?}", &sql[..sql.len().min(80)]),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused only after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn functions_that_size_allocations_are_refused_before_running() {
    for sql in [
        "SELECT repeat(arrow_cast('x', 'LargeUtf8'), 100000000000) AS r",
        "SELECT district FROM enterprises WHERE length(repeat(district, 200000000)) > 0",
        "SELECT lpad('x', 10000000000) AS p",
        "SELECT rpad(district, 10000000000) AS p FROM enterprises",
        "SELECT replace(district, 'a', 'bbbbbbbbbbbbbbbbbbbbbbbb') AS r FROM enterprises",
        "SELECT levenshtein(district, district) AS d FROM enterprises",
        "SELECT string_agg(district, ',') AS s FROM enterprises",
    ] {
        refused_with(sql, "function-not-allowed").await;
    }
}

#[tokio::test]
async fn the_planner_hang_is_refused_at_once() {
    // Ran for minutes on a job worker during planning (constant folding).
    refused_with(
        "SELECT levenshtein(repeat('a', 150000), repeat('b', 150000)) AS d",
        "function-not-allowed",
    )
    .await;
}

#[tokio::test]
async fn long_and_deep_statements_are_refused_before_planning() {
    // 5,000 ORs (about 45 KB): once a stack overflow that aborted the host.
    let ors = |n: usize| vec!["registered_capital = 1"; n].join(" OR ");
    let long = format!("SELECT COUNT(*) AS n FROM enterprises WHERE {}", ors(5_000));
    refused_with(&long, "statement-too-long").await;
    // Under the length bound but 600 deep.
    let deep = format!(
        "SELECT COUNT(*) AS n FROM enterprises WHERE {}",
        vec!["a"; 600].join(" OR ").replace('a', "TRUE")
    );
    assert!(deep.len() < 16 << 10);
    refused_with(&deep, "statement-too-deep").await;
    // A realistic WHERE of 40 alternatives still runs.
    let fine = format!("SELECT COUNT(*) AS n FROM enterprises WHERE {}", ors(40));
    let execution = query_through_guest(&fine, vec![register(Classification::Open)]).await;
    assert_eq!(
        execution.category,
        Category::Ok,
        "{:?}",
        execution.diagnostics
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn emit_bytes(bytes: &[u8]) -> datasandbox::sandbox::Execution {
    let params = serde_json::json!({ "attack": "emit-bytes", "hex": hex(bytes) }).to_string();
    hostile(&params, quick_limits()).await
}

#[tokio::test]
async fn tables_that_lie_about_their_lengths_are_refused_without_allocating() {
    // Eight bytes that claim 2 GiB of metadata.
    let mut claim = vec![0xFF; 4];
    claim.extend_from_slice(&i32::MAX.to_le_bytes());
    // A valid stream cut short, and one with its body bytes overwritten.
    let batch = datasandbox::arrow_ipc::encode(
        &std::sync::Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
            datafusion::arrow::datatypes::Field::new(
                "n",
                datafusion::arrow::datatypes::DataType::Int64,
                false,
            ),
        ])),
        &[],
    )
    .unwrap();
    for bytes in [claim, batch[..batch.len() / 2].to_vec(), vec![0xAB; 4096]] {
        let execution = emit_bytes(&bytes).await;
        // The guest sees `invalid-table` and fails; nothing is released.
        assert_eq!(
            execution.category,
            Category::GuestError,
            "{:?}",
            execution.diagnostics
        );
        assert!(execution.outputs.is_empty());
        assert!(
            execution.diagnostics.memory_peak_bytes < 64 << 20,
            "{}",
            execution.diagnostics.memory_peak_bytes
        );
    }
    let next = hostile(r#"{"attack":"ok"}"#, quick_limits()).await;
    assert_eq!(next.category, Category::Ok);
}

/// Two core instances with a 125 MiB memory each: within a 200 MiB limit one
/// at a time, not together.
const TWO_MEMORIES: &str = r#"
(component
  (core module $main
    (memory (export "memory") 2000)
    (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) i32.const 1024)
    (func (export "run") (param i32 i32) (result i32)
      i32.const 16
      i32.const 0
      i32.store8
      i32.const 16))
  (core module $other (memory (export "memory") 2000))
  (core instance $m (instantiate $main))
  (core instance $o (instantiate $other))
  (func (export "run") (param "params" string) (result (result (error string)))
    (canon lift (core func $m "run") (memory $m "memory") (realloc (func $m "cabi_realloc")))))
"#;

#[tokio::test]
async fn the_memory_limit_covers_all_memories_of_a_component() {
    let component = wat::parse_str(TWO_MEMORIES).unwrap();
    let run = |memory_bytes: usize| {
        let limits = Limits {
            memory_bytes,
            ..quick_limits()
        };
        let env = env("two-memories", limits, vec![]);
        let component = component.clone();
        async move {
            sandbox()
                .run_bytes(
                    &component,
                    &env,
                    GuestCall::Run {
                        params: "{}".into(),
                    },
                )
                .await
        }
    };
    let within = run(256 << 20).await;
    assert_eq!(within.category, Category::Ok, "{:?}", within.diagnostics);
    assert_eq!(within.diagnostics.memory_peak_bytes, 2 * 2000 * 65536);
    let over = run(200 << 20).await;
    assert_eq!(
        over.category,
        Category::MemoryLimit,
        "{:?}",
        over.diagnostics
    );
}

/// The cases above against `dsb serve` as its own process: one tenant sends
/// them all at once while another runs an ordinary job. Every hostile job
/// ends in its fixed category within its deadline, the server process is
/// the same one afterwards, both tenants can go on, and the server's peak
/// resident memory stays under a bound (printed for the record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_host_survives_every_case_and_serves_the_next_job() {
    use datasandbox::accounts::Role;
    use datasandbox::client::Client;
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServeProcess::start(&dir.path().join("data"));
    let pid = server.child.id();
    let admin = Client::new(&server.url, Some(server.admin_token.clone()));
    admin
        .add_dataset(
            &samples().join("enterprises.csv"),
            &samples().join("enterprises.toml"),
        )
        .await
        .unwrap();
    admin.reload_policies().await.unwrap();
    for tenant in ["lab-a", "lab-b"] {
        admin.grant(tenant, "enterprises").await.unwrap();
    }
    let token = |tenant: &'static str| {
        let admin = admin.clone();
        async move {
            let created = admin
                .create_token(Role::Analyst, tenant, None)
                .await
                .unwrap();
            admin.with_token(created.token)
        }
    };
    let attacker = token("lab-a").await;
    let neighbour = token("lab-b").await;
    let hostile = attacker
        .upload_module(guest("hostile"), None)
        .await
        .unwrap();
    let stats = neighbour
        .upload_module(guest("district_stats"), None)
        .await
        .unwrap();

    // 2,000 ORs: over the statement bound, under the params bound (64 KiB).
    let ors = vec!["registered_capital = 1"; 2_000].join(" OR ");
    let mut claim = vec![0xFFu8; 4];
    claim.extend_from_slice(&i32::MAX.to_le_bytes());
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (
            serde_json::json!({"attack": "query", "sql": "SELECT repeat(arrow_cast('x', 'LargeUtf8'), 100000000000) AS r"}),
            "policy-rejected: function-not-allowed",
        ),
        (
            serde_json::json!({"attack": "query", "sql": "SELECT COUNT(*) AS n FROM enterprises WHERE length(repeat(district, 200000000)) > 0"}),
            "policy-rejected: function-not-allowed",
        ),
        (
            serde_json::json!({"attack": "query", "sql": format!("SELECT COUNT(*) AS n FROM enterprises WHERE {ors}")}),
            "policy-rejected: statement-too-long",
        ),
        (
            serde_json::json!({"attack": "query", "sql": "SELECT levenshtein(repeat('a', 150000), repeat('b', 150000)) AS d"}),
            "policy-rejected: function-not-allowed",
        ),
        (
            serde_json::json!({"attack": "emit-bytes", "hex": hex(&claim)}),
            "guest-error",
        ),
        (
            serde_json::json!({"attack": "emit-bytes", "hex": hex(&[0xAB; 4096])}),
            "guest-error",
        ),
        (serde_json::json!({"attack": "memory"}), "memory-limit"),
    ];
    let started = Instant::now();
    let mut submitted = Vec::new();
    for (params, _) in &cases {
        let job = attacker
            .submit_job(
                &hostile.sha256,
                "aggregate",
                &["enterprises".into()],
                params.clone(),
            )
            .await
            .unwrap();
        submitted.push(job.id);
    }
    let ordinary = neighbour
        .submit_job(
            &stats.sha256,
            "aggregate",
            &["enterprises".into()],
            serde_json::json!({}),
        )
        .await
        .unwrap();
    for (id, (params, expected)) in submitted.iter().zip(&cases) {
        let job = attacker
            .wait_job(id, Duration::from_secs(90))
            .await
            .unwrap();
        let category = job.category.unwrap_or_default();
        assert!(category.starts_with(expected), "{params}: {category}");
    }
    let neighbour_job = neighbour
        .wait_job(&ordinary.id, Duration::from_secs(90))
        .await
        .unwrap();
    assert_eq!(neighbour_job.state, "released", "{neighbour_job:?}");
    let elapsed = started.elapsed();

    // Many malformed tables in a row do not use up the tenant's job slots
    // (they once panicked the host and left every slot taken).
    let datasets = vec!["enterprises".to_string()];
    for _ in 0..3 {
        let batch: Vec<String> = futures::future::join_all((0..25).map(|_| {
            attacker.submit_job(
                &hostile.sha256,
                "aggregate",
                &datasets,
                serde_json::json!({"attack": "emit-bytes", "hex": hex(&[0xAB; 64])}),
            )
        }))
        .await
        .into_iter()
        .map(|r| r.unwrap().id)
        .collect();
        for id in batch {
            attacker
                .wait_job(&id, Duration::from_secs(90))
                .await
                .unwrap();
        }
    }
    let again = attacker
        .submit_job(
            &hostile.sha256,
            "aggregate",
            &["enterprises".into()],
            serde_json::json!({"attack": "ok"}),
        )
        .await
        .unwrap();
    let again = attacker
        .wait_job(&again.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(again.state, "released", "{again:?}");

    assert!(server.alive(), "the server process died");
    assert_eq!(server.child.id(), pid);
    let rss = server.peak_rss();
    eprintln!(
        "hostile suite: {} cases ended in {elapsed:?}; server peak RSS {} MiB",
        cases.len(),
        rss >> 20
    );
    assert!(rss < 1536 << 20, "peak RSS {} MiB", rss >> 20);
}
