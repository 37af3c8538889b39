//! Modules are validated before anything runs, refused with a stable code,
//! and compiled once.

use crate::common;

use common::*;
use datasandbox::sandbox::{
    Category, GuestCall, IntakeError, JobEnv, ModuleLoad, Sandbox, SandboxConfig, World,
};

fn refusal(bytes: &[u8]) -> IntakeError {
    sandbox()
        .load_module(bytes)
        .expect_err("the module must be refused")
}

#[test]
fn garbage_bytes_are_not_wasm() {
    assert!(matches!(
        refusal(b"MZ\x90\0 definitely not wasm"),
        IntakeError::NotWasm
    ));
    assert!(matches!(refusal(b""), IntakeError::NotWasm));
}

#[test]
fn a_core_module_is_not_a_component() {
    let core = wat::parse_str(r#"(module (func (export "run")))"#).unwrap();
    assert!(matches!(refusal(&core), IntakeError::CoreModule));
}

#[test]
fn a_truncated_component_is_invalid() {
    let bytes = guest("district_stats");
    assert!(matches!(
        refusal(&bytes[..bytes.len() / 2]),
        IntakeError::InvalidComponent
    ));
}

#[test]
fn a_component_importing_an_unknown_interface_is_refused_by_name() {
    let evil = wat::parse_str(r#"(component (import "evil:net/raw@1.0.0" (instance)))"#).unwrap();
    match refusal(&evil) {
        IntakeError::ForbiddenImport(name) => assert_eq!(name, "evil:net/raw@1.0.0"),
        other => panic!("expected forbidden-import, got {other:?}"),
    }
    let http =
        wat::parse_str(r#"(component (import "wasi:http/outgoing-handler@0.2.0" (instance)))"#)
            .unwrap();
    assert!(matches!(refusal(&http), IntakeError::ForbiddenImport(_)));
}

#[test]
fn a_component_exporting_no_world_is_refused() {
    let empty = wat::parse_str("(component)").unwrap();
    assert!(matches!(refusal(&empty), IntakeError::UnknownWorld));
}

#[test]
fn oversized_modules_are_refused_before_parsing() {
    let small = Sandbox::new(SandboxConfig {
        max_module_bytes: 1024,
        ..test_config(None)
    })
    .unwrap();
    let error = small.load_module(&guest("district_stats")).unwrap_err();
    assert!(matches!(error, IntakeError::TooLarge { limit: 1024, .. }));
    assert!(error.to_string().starts_with("module-too-large"));
}

#[test]
fn each_example_targets_its_world() {
    for (name, world) in [
        ("district_stats", World::Analysis),
        ("block_mean", World::BlockAnalysis),
        ("model_baseline", World::Model),
        ("scorer_simple", World::Scorer),
        ("hostile", World::Analysis),
    ] {
        let (module, _) = sandbox().load_module(&guest(name)).unwrap();
        assert_eq!(module.world, world, "{name}");
    }
}

#[tokio::test]
async fn refusals_reach_the_submitter_as_invalid_module_with_the_host_reason() {
    let core = wat::parse_str("(module)").unwrap();
    let execution = sandbox()
        .run_bytes(
            &core,
            &JobEnv::new("core"),
            GuestCall::Run {
                params: "{}".into(),
            },
        )
        .await;
    assert_eq!(
        execution.category,
        Category::InvalidModule("core-module-not-component".into())
    );
    assert_eq!(
        execution.category.to_string(),
        "invalid-module: core-module-not-component"
    );

    let block = guest("block_mean");
    let execution = sandbox()
        .run_bytes(
            &block,
            &JobEnv::new("wrong"),
            GuestCall::Run {
                params: "{}".into(),
            },
        )
        .await;
    assert_eq!(execution.category.code(), "invalid-module");
    assert_eq!(
        execution.category.reason(),
        Some("wrong-world: the job needs analysis, the module targets block-analysis")
    );
}

#[test]
fn a_module_compiles_once_and_later_loads_its_cached_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = guest("district_stats");

    let first = Sandbox::new(test_config(Some(dir.path().to_path_buf()))).unwrap();
    let (module, load) = first.load_module(&bytes).unwrap();
    assert_eq!(load, ModuleLoad::Compiled);
    assert_eq!(first.load_module(&bytes).unwrap().1, ModuleLoad::Memory);
    let artifacts: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".cwasm"))
        .collect();
    assert_eq!(artifacts.len(), 1);
    assert!(artifacts[0].starts_with(&module.hash));
    drop(first);

    // A restarted host finds the artifact and does not compile again.
    let second = Sandbox::new(test_config(Some(dir.path().to_path_buf()))).unwrap();
    assert_eq!(second.load_module(&bytes).unwrap().1, ModuleLoad::Artifact);
    assert!(second.module_by_hash(&module.hash).unwrap().is_some());
    drop(second);

    // A damaged artifact is not trusted: the module is compiled again.
    let artifact = dir.path().join(&artifacts[0]);
    std::fs::write(&artifact, b"corrupted").unwrap();
    let third = Sandbox::new(test_config(Some(dir.path().to_path_buf()))).unwrap();
    assert_eq!(third.load_module(&bytes).unwrap().1, ModuleLoad::Compiled);
}

#[test]
fn concurrent_loads_of_one_module_compile_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = guest("district_stats");
    let sandbox = Sandbox::new(test_config(Some(dir.path().to_path_buf()))).unwrap();
    let loads: Vec<ModuleLoad> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|_| scope.spawn(|| sandbox.load_module(&bytes).unwrap().1))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let compiled = loads.iter().filter(|l| **l == ModuleLoad::Compiled).count();
    assert_eq!(compiled, 1, "{loads:?}");
    assert!(
        loads
            .iter()
            .all(|l| matches!(l, ModuleLoad::Compiled | ModuleLoad::Memory))
    );
    // No temporary file is left behind: only the module and its artifact.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().any(|n| n.ends_with(".cwasm")));
    assert!(
        names
            .iter()
            .any(|n| n.ends_with(".wasm") && !n.ends_with(".cwasm"))
    );
}

#[test]
fn the_module_cache_is_bounded_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(SandboxConfig {
        module_cache_bytes: 1,
        ..test_config(Some(dir.path().to_path_buf()))
    })
    .unwrap();
    let first = guest("district_stats");
    let second = guest("block_mean");
    assert_eq!(sandbox.load_module(&first).unwrap().1, ModuleLoad::Compiled);
    let (count, bytes) = sandbox.cached_modules();
    assert_eq!(count, 1);
    assert!(bytes > first.len(), "compiled code is counted: {bytes}");
    assert_eq!(
        sandbox.load_module(&second).unwrap().1,
        ModuleLoad::Compiled
    );
    // Over the bound, the least recently used module left memory; its
    // artifact brings it back without compiling.
    assert_eq!(sandbox.cached_modules().0, 1);
    assert_eq!(sandbox.load_module(&first).unwrap().1, ModuleLoad::Artifact);
    assert_eq!(sandbox.load_module(&first).unwrap().1, ModuleLoad::Memory);
}

#[tokio::test]
async fn a_cached_module_runs_like_a_fresh_one() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = guest("district_stats");
    let datasets = vec![register(datasandbox::dataset::Classification::Open)];
    let mut results = Vec::new();
    for _ in 0..2 {
        let sandbox = Sandbox::new(test_config(Some(dir.path().to_path_buf()))).unwrap();
        let execution = sandbox
            .run_bytes(
                &bytes,
                &env("cached", quick_limits(), datasets.clone()),
                GuestCall::Run {
                    params: "{}".into(),
                },
            )
            .await;
        assert_eq!(execution.category, Category::Ok);
        results.push((execution.outputs, execution.diagnostics.module_load));
    }
    assert_eq!(results[0].0, results[1].0);
    assert_eq!(results[0].1.as_deref(), Some("Compiled"));
    assert_eq!(results[1].1.as_deref(), Some("Artifact"));
}

#[tokio::test]
async fn the_host_keeps_working_after_refusing_bad_modules() {
    for bad in [
        b"garbage".to_vec(),
        wat::parse_str("(module)").unwrap(),
        wat::parse_str("(component)").unwrap(),
        wat::parse_str(r#"(component (import "evil:net/raw" (instance)))"#).unwrap(),
    ] {
        let execution = sandbox()
            .run_bytes(
                &bad,
                &JobEnv::new("bad"),
                GuestCall::Run {
                    params: "{}".into(),
                },
            )
            .await;
        assert_eq!(execution.category.code(), "invalid-module");
    }
    let execution = sandbox()
        .run_bytes(
            &guest("district_stats"),
            &env(
                "after-bad",
                quick_limits(),
                vec![register(datasandbox::dataset::Classification::Open)],
            ),
            GuestCall::Run {
                params: "{}".into(),
            },
        )
        .await;
    assert_eq!(execution.category, Category::Ok);
}

/// A component whose one core function nests `depth` loops, written flat so
/// the text parser does not recurse.
fn nested_loops(depth: usize) -> Vec<u8> {
    let body = format!("{}{}", "loop\n".repeat(depth), "end\n".repeat(depth));
    wat::parse_str(format!("(component (core module (func {body})))")).unwrap()
}

#[test]
fn compile_bombs_are_refused_before_compiling() {
    // 20,000 nested loops in 40 KB: a minute and more than a gigabyte of
    // compilation, refused on the bytes in milliseconds.
    let bomb = nested_loops(20_000);
    assert!(bomb.len() < 64 << 10);
    let started = std::time::Instant::now();
    let refused = refusal(&bomb);
    assert!(matches!(refused, IntakeError::TooComplex(_)), "{refused:?}");
    assert_eq!(
        refused.to_string(),
        "too-complex: control flow nests too deep"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    // Within the bound it is compiled (and refused later for exporting no
    // world, like any other component without one).
    assert!(matches!(
        refusal(&nested_loops(200)),
        IntakeError::UnknownWorld
    ));
}

#[test]
fn real_guests_stay_within_the_complexity_bounds() {
    let bounds = datasandbox::sandbox::intake::Complexity::default();
    for name in ["district_stats", "hostile", "logistic_model", "credit_risk"] {
        datasandbox::sandbox::intake::check_complexity(&guest(name), bounds)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for name in ["district_stats", "logistic_model"] {
        datasandbox::sandbox::intake::check_complexity(&python_guest(name), bounds)
            .unwrap_or_else(|e| panic!("python {name}: {e}"));
    }
}
