//! Python guests (componentize-py, the SDK in `sandbox-guests/python`) run
//! under exactly the host posture of Rust guests: same worlds, same limits,
//! same locked-down WASI, same categories, no guest text to the submitter.
//! The components are built by `scripts/build-python-guests` (part of
//! `scripts/test`) with `dsb guest build --python`.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::*;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Date32Type, Float64Type, Int64Type};
use datasandbox::accounts::Role;
use datasandbox::dataset::Classification;
use datasandbox::sandbox::{Category, Execution, GuestCall, Returned, World};

async fn run_python(
    name: &str,
    params: serde_json::Value,
    limits: datasandbox::sandbox::Limits,
) -> Execution {
    run_python_as("python-job", name, params, limits).await
}

/// Run a Python analysis guest over the register as job `job_id`.
async fn run_python_as(
    job_id: &str,
    name: &str,
    params: serde_json::Value,
    limits: datasandbox::sandbox::Limits,
) -> Execution {
    let env = env(job_id, limits, vec![register(Classification::Open)]);
    sandbox()
        .run_bytes(
            &python_guest(name),
            &env,
            GuestCall::Run {
                params: params.to_string(),
            },
        )
        .await
}

async fn hostile_py(mode: &str) -> Execution {
    run_python(
        "hostile",
        serde_json::json!({ "mode": mode }),
        quick_limits(),
    )
    .await
}

fn submitter_text(execution: &Execution) -> String {
    format!(
        "{}\n{}",
        serde_json::to_string(&execution.submitter_report()).unwrap(),
        execution.category
    )
}

#[tokio::test]
async fn python_components_pass_intake_as_their_world() {
    for (name, world) in [
        ("district_stats", World::Analysis),
        ("logistic_model", World::Model),
        ("hostile", World::Analysis),
        ("block_mean", World::BlockAnalysis),
        ("scorer_sum", World::Scorer),
    ] {
        let bytes = python_guest(name);
        assert!(bytes.len() > 10 << 20, "{name}: a whole CPython inside");
        let (module, _) = sandbox().load_module(&bytes).expect(name);
        assert_eq!(module.world, world, "{name}");
    }
}

#[tokio::test]
async fn python_district_stats_matches_native_datafusion_and_the_rust_guest() {
    let python = run_python("district_stats", serde_json::json!({}), Default::default()).await;
    assert_eq!(python.category, Category::Ok, "{:?}", python.diagnostics);
    let env = env(
        "rust-job",
        Default::default(),
        vec![register(Classification::Open)],
    );
    let rust = sandbox()
        .run_bytes(
            &guest("district_stats"),
            &env,
            GuestCall::Run {
                params: "{}".into(),
            },
        )
        .await;
    assert_eq!(rust.category, Category::Ok);
    let expected = native(
        "SELECT district, COUNT(*) AS enterprises, AVG(employees) AS mean_employees \
         FROM enterprises GROUP BY district ORDER BY district",
        &[register(Classification::Open)],
    )
    .await;
    // The Python SDK re-encodes the query result itself (its own Arrow
    // writer); the host reads it back to the same values.
    assert_eq!(rows(&table(&python, "by_district")), rows(&expected));
    assert_eq!(
        rows(&table(&python, "by_district")),
        rows(&table(&rust, "by_district"))
    );
    assert_eq!(value(&python, "districts"), 16.0);
    assert_eq!(value(&python, "districts"), value(&rust, "districts"));
}

#[tokio::test]
async fn python_randomness_comes_from_the_host_seeded_per_job() {
    let run = |job: &'static str| {
        run_python_as(
            job,
            "hostile",
            serde_json::json!({"mode": "random"}),
            quick_limits(),
        )
    };
    let (a, again, b) = (run("job-a").await, run("job-a").await, run("job-b").await);
    for execution in [&a, &again, &b] {
        assert_eq!(
            execution.category,
            Category::Ok,
            "{:?}",
            execution.diagnostics
        );
    }
    // os.urandom (and so `secrets`) reads the host's generator, seeded from
    // the job id: a rerun repeats it, another job differs.
    assert_eq!(value(&a, "urandom"), value(&again, "urandom"));
    assert_ne!(value(&a, "urandom"), value(&b, "urandom"));
    // So does `random`: componentize-py seeds it from that generator when
    // the instance starts.
    assert_eq!(value(&a, "random"), value(&again, "random"));
    assert_ne!(value(&a, "random"), value(&b, "random"));
}

#[tokio::test]
async fn python_tables_reach_the_host_with_their_types_and_nulls() {
    let execution = hostile_py("roundtrip").await;
    assert_eq!(
        execution.category,
        Category::Ok,
        "{:?}",
        execution.diagnostics
    );
    let batches = table(&execution, "types");
    let batch = &batches[0];
    let schema = batch.schema();
    let types: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| f.data_type().clone())
        .collect();
    assert_eq!(
        types,
        [
            DataType::Int64,
            DataType::Float64,
            DataType::Boolean,
            DataType::Utf8,
            DataType::Date32
        ]
    );
    let ints = batch.column(0).as_primitive::<Int64Type>();
    assert_eq!(
        (ints.value(0), ints.is_null(1), ints.value(2)),
        (1, true, -3)
    );
    let floats = batch.column(1).as_primitive::<Float64Type>();
    assert_eq!((floats.value(1), floats.is_null(2)), (2.0, true));
    let bools = batch.column(2).as_boolean();
    assert_eq!(
        (bools.value(0), bools.is_null(1), bools.value(2)),
        (true, true, false)
    );
    let strings = batch.column(3).as_string::<i32>();
    assert_eq!(
        (strings.value(0), strings.is_null(1), strings.value(2)),
        ("x", true, "héllo")
    );
    let dates = batch.column(4).as_primitive::<Date32Type>();
    assert_eq!(
        (dates.value(0), dates.is_null(1), dates.value(2)),
        (19_783, true, -1)
    );
}

#[tokio::test]
async fn a_python_loop_runs_out_of_fuel() {
    let execution = hostile_py("loop").await;
    assert_eq!(execution.category, Category::OutOfFuel);
}

#[tokio::test]
async fn a_python_loop_with_plenty_of_fuel_times_out() {
    let limits = datasandbox::sandbox::Limits {
        fuel: u64::MAX / 4,
        timeout: Duration::from_millis(1500),
        ..quick_limits()
    };
    let execution = run_python("hostile", serde_json::json!({"mode": "loop"}), limits).await;
    assert_eq!(execution.category, Category::Timeout);
}

#[tokio::test]
async fn unbounded_python_allocation_hits_the_memory_limit() {
    let execution = hostile_py("allocate").await;
    assert_eq!(execution.category, Category::MemoryLimit);
}

#[tokio::test]
async fn python_recursion_is_a_guest_error_or_a_limit_never_a_host_crash() {
    // Within Python's recursion limit: RecursionError, a guest error.
    assert_eq!(hostile_py("recurse").await.category, Category::GuestError);
    // With the limit lifted, Python 3.14 keeps frames on the heap: the
    // memory limit stops it (the wasm stack limit would, were frames on it).
    let deep = hostile_py("deep").await.category;
    assert!(
        matches!(
            deep,
            Category::MemoryLimit | Category::StackOverflow | Category::OutOfFuel
        ),
        "{deep}"
    );
}

#[tokio::test]
async fn a_python_exception_carrying_data_never_reaches_the_submitter() {
    // The fixture raises RuntimeError("SECRET=<first district>:<its count>").
    let execution = hostile_py("secret").await;
    assert_eq!(execution.category, Category::GuestError);
    let diagnostics = serde_json::to_string(&execution.diagnostics).unwrap();
    assert!(
        diagnostics.contains("SECRET=Baoshan:132"),
        "the fixture must really raise it: {diagnostics}"
    );
    assert!(
        !submitter_text(&execution).contains("Baoshan"),
        "{}",
        submitter_text(&execution)
    );

    let printed = hostile_py("print").await;
    assert_eq!(printed.category, Category::Ok);
    assert!(
        printed
            .diagnostics
            .log
            .contains("[stdout] SECRET=Baoshan:132")
    );
    assert!(
        printed
            .diagnostics
            .log
            .contains("[stderr] SECRET=Baoshan:132")
    );
    assert!(!submitter_text(&printed).contains("Baoshan"));
}

#[tokio::test]
async fn python_gets_no_files_sockets_environment_or_clock() {
    let execution = hostile_py("escape").await;
    assert_eq!(
        execution.category,
        Category::Ok,
        "{:?}",
        execution.diagnostics
    );
    assert_eq!(value(&execution, "open"), 0.0, "open('/etc/passwd')");
    assert_eq!(value(&execution, "write"), 0.0, "open('leak.txt', 'w')");
    assert_eq!(
        value(&execution, "socket_module"),
        1.0,
        "the socket module exists"
    );
    assert_eq!(
        value(&execution, "socket"),
        0.0,
        "connect() to 127.0.0.1:80"
    );
    assert_eq!(value(&execution, "environ"), 0.0, "os.environ is empty");
    assert_eq!(value(&execution, "argv"), 0.0);
    // time.time() is the job's logical time and does not move while the
    // guest works; perf_counter advances one microsecond per reading.
    let logical = datasandbox::sandbox::JobEnv::new("python-job").logical_time;
    assert_eq!(value(&execution, "time"), logical.as_secs_f64());
    assert_eq!(value(&execution, "time_moved"), 0.0);
    assert!((value(&execution, "perf_counter_step") - 1e-6).abs() < 1e-9);
}

/// `dsb` with the test server's address and a token.
fn dsb(server: &str, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dsb"))
        .args(args)
        .env("DSB_SERVER", server)
        .env("DSB_TOKEN", token)
        .env_remove("DSB_COMPONENTIZE_PY")
        .current_dir(repo())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_team_builds_submits_with_the_cli_and_gets_a_score() {
    let mut server = TestServer::start().await;
    // The contest the README's walkthrough creates, with the CLI.
    let admin_token = server
        .admin
        .create_token(Role::Admin, "platform", None)
        .await
        .unwrap()
        .token;
    let created_contest = tokio::task::spawn_blocking({
        let base = server.base.clone();
        move || {
            dsb(
                &base,
                &admin_token,
                &["contest", "create", "data/contests/overdue-2024.toml"],
            )
        }
    })
    .await
    .unwrap();
    assert!(
        created_contest.status.success(),
        "{}",
        String::from_utf8_lossy(&created_contest.stderr)
    );
    let created = server
        .admin
        .create_token(Role::Contestant, "team-py", None)
        .await
        .unwrap();
    let rust_team = server.client(Role::Contestant, "team-rust").await;

    // Build the model with the CLI, as the README tells a team to.
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("model.wasm");
    let app = repo().join("sandbox-guests/python/examples/logistic_model.py");
    let tool = repo().join("target/python-guests/venv/bin/componentize-py");
    let built = tokio::task::spawn_blocking({
        let (base, token, wasm, app, tool) = (
            server.base.clone(),
            created.token.clone(),
            wasm.clone(),
            app.clone(),
            tool.clone(),
        );
        move || {
            dsb(
                &base,
                &token,
                &[
                    "guest",
                    "build",
                    "--python",
                    app.to_str().unwrap(),
                    "--world",
                    "model",
                    "-o",
                    wasm.to_str().unwrap(),
                    "--componentize-py",
                    tool.to_str().unwrap(),
                ],
            )
        }
    })
    .await
    .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    assert!(String::from_utf8_lossy(&built.stdout).contains("(model,"));

    let submitted = tokio::task::spawn_blocking({
        let (base, token, wasm) = (server.base.clone(), created.token.clone(), wasm.clone());
        move || {
            dsb(
                &base,
                &token,
                &[
                    "--json",
                    "contest",
                    "submit",
                    "overdue-2024",
                    "--module",
                    wasm.to_str().unwrap(),
                    "--wait",
                ],
            )
        }
    })
    .await
    .unwrap();
    assert!(
        submitted.status.success(),
        "{}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    let views: serde_json::Value = serde_json::from_slice(&submitted.stdout).unwrap();
    let view = &views[0];
    assert_eq!(view["state"], "scored", "{views}");
    let python_score = view["public_score"].as_f64().unwrap();

    let rust_module = rust_team
        .upload_module(guest("logistic_model"), None)
        .await
        .unwrap()
        .sha256;
    let rust = rust_team
        .submit_model("overdue-2024", &rust_module)
        .await
        .unwrap();
    rust_team
        .wait_job(&rust.id, Duration::from_secs(120))
        .await
        .unwrap();
    let rust_score = rust_team
        .submissions("overdue-2024")
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.id == rust.id)
        .unwrap()
        .public_score
        .unwrap();
    println!("public ROC AUC: Python logistic {python_score}, Rust logistic {rust_score}");
    // The constant baseline scores exactly 0.5; both models learn (the
    // public set has 400 rows, AUC standard error about 0.03).
    assert!(python_score > 0.56, "Python AUC {python_score}");
    assert!(
        (python_score - rust_score).abs() < 0.08,
        "{python_score} vs {rust_score}"
    );
    let board = server
        .admin
        .leaderboard("overdue-2024", false)
        .await
        .unwrap();
    assert_eq!(board.len(), 2, "{board:?}");
    server.stop().await.unwrap();
}

#[test]
fn guest_build_without_componentize_py_says_how_to_install_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_dsb"))
        .args([
            "guest",
            "build",
            "--python",
            repo()
                .join("sandbox-guests/python/examples/logistic_model.py")
                .to_str()
                .unwrap(),
            "--world",
            "model",
            "-o",
            "/tmp/never.wasm",
        ])
        .env("DSB_COMPONENTIZE_PY", "/nonexistent/componentize-py")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("componentize-py not found"), "{stderr}");
    assert!(
        stderr.contains("pip install componentize-py==0.25.1"),
        "{stderr}"
    );
}

#[test]
fn guest_build_names_a_missing_world_function() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("half_model.py");
    std::fs::write(&app, "def train(table, params):\n    pass\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dsb"))
        .args([
            "guest",
            "build",
            "--python",
            app.to_str().unwrap(),
            "--world",
            "model",
            "-o",
            dir.path().join("m.wasm").to_str().unwrap(),
        ])
        .env(
            "DSB_COMPONENTIZE_PY",
            repo().join("target/python-guests/venv/bin/componentize-py"),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the model world needs a function predict"),
        "{stderr}"
    );
}

/// `dsb guest build` with `app` and a componentize-py that does not exist;
/// its stderr.
fn build_refused(dir: &std::path::Path, app: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_dsb"))
        .args([
            "guest",
            "build",
            "--python",
            app.to_str().unwrap(),
            "--world",
            "model",
            "-o",
            dir.join("never.wasm").to_str().unwrap(),
            "--componentize-py",
            "/nonexistent/componentize-py",
        ])
        .env_remove("DSB_COMPONENTIZE_PY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!dir.join("never.wasm").exists());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn guest_build_refuses_bad_input_before_any_tool_runs() {
    let dir = tempfile::tempdir().unwrap();
    // Not a Python file.
    let text = build_refused(dir.path(), &repo().join("Cargo.toml"));
    assert!(text.contains("is not a Python file"), "{text}");
    // File names must be importable module names that do not shadow ours.
    for name in ["1app.py", "my-app.py", "wit_world.py", "dsb_entry.py"] {
        let app = dir.path().join(name);
        std::fs::write(&app, "def run(params):\n    return None\n").unwrap();
        let text = build_refused(dir.path(), &app);
        assert!(
            text.contains("must be a Python module name"),
            "{name}: {text}"
        );
    }
    // A good app with no componentize-py says how to install it.
    let app = dir.path().join("good_app.py");
    std::fs::write(&app, "def run(params):\n    return None\n").unwrap();
    let text = build_refused(dir.path(), &app);
    assert!(
        text.contains("pip install componentize-py==0.25.1"),
        "{text}"
    );
    assert!(text.contains("scripts/python-env"), "{text}");
}

/// Run `call` with quick limits and no datasets; what the guest returned.
async fn returned(bytes: &[u8], call: GuestCall) -> Returned {
    let execution = sandbox()
        .run_bytes(bytes, &env("twin", quick_limits(), Vec::new()), call)
        .await;
    assert_eq!(
        execution.category,
        Category::Ok,
        "{:?}",
        execution.diagnostics
    );
    execution.returned.expect("an ok job returns")
}

#[tokio::test]
async fn python_block_analysis_and_scorer_match_their_rust_twins() {
    // block-analysis: the register as one block.
    let (schema, batches) = datasandbox::query::read_table(&register(Classification::Open))
        .await
        .unwrap();
    let block = datasandbox::arrow_ipc::encode(&schema, &batches).unwrap();
    let analyze = || GuestCall::Analyze {
        block: block.clone(),
        params: r#"{"column":"employees"}"#.into(),
    };
    let python = returned(&python_guest("block_mean"), analyze()).await;
    let rust = returned(&guest("block_mean"), analyze()).await;
    let (Returned::Vector(python), Returned::Vector(rust)) = (python, rust) else {
        panic!("block-analysis returns vectors");
    };
    assert_eq!(python.len(), 2);
    assert_eq!(python[1], 2000.0, "rows");
    assert_eq!(python[1], rust[1]);
    // Python's sum() of floats is compensated; Rust's is not: equal to
    // rounding.
    assert!((python[0] - rust[0]).abs() < 1e-9, "{python:?} vs {rust:?}");

    // scorer: one enterprise's tax rows.
    let (schema, batches) = datasandbox::query::read_table(&tax_records())
        .await
        .unwrap();
    let rows = vec![(
        "tax_records".to_string(),
        datasandbox::arrow_ipc::encode(&schema, &[batches[0].slice(0, 8)]).unwrap(),
    )];
    let score = || GuestCall::Score {
        rows: rows.clone(),
        params: r#"{"column":"tax_paid"}"#.into(),
    };
    let python = returned(&python_guest("scorer_sum"), score()).await;
    let rust = returned(&guest("scorer_simple"), score()).await;
    let (Returned::Number(python), Returned::Number(rust)) = (python, rust) else {
        panic!("scorers return numbers");
    };
    assert!(rust > 0.0);
    assert!((python - rust).abs() <= 1e-9 * rust, "{python} vs {rust}");
}
