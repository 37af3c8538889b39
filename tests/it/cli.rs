//! `dsb` as a user runs it: `dev run` on local files and `demo`.

use crate::common;

use std::process::Command;

use common::*;

fn dsb(args: &[&str], data_dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dsb"))
        .args(args)
        .env("DSB_DATA_DIR", data_dir)
        .current_dir(repo())
        .output()
        .expect("running dsb")
}

#[test]
fn dev_run_prints_outputs_category_and_the_developers_own_log() {
    let dir = tempfile::tempdir().unwrap();
    let module = guests_dir().join("district_stats.wasm");
    let out = dsb(
        &[
            "dev",
            "run",
            "--module",
            module.to_str().unwrap(),
            "--data",
            "data/samples/enterprises.csv",
        ],
        dir.path(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("category: ok"), "{stdout}");
    assert!(stdout.contains("Pudong"), "{stdout}");
    assert!(
        stdout.contains("[log] district-stats over enterprises"),
        "{stdout}"
    );
}

#[test]
fn dev_run_reports_failures_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let module = guests_dir().join("hostile.wasm");
    let out = dsb(
        &[
            "dev",
            "run",
            "--module",
            module.to_str().unwrap(),
            "--data",
            "data/samples",
            "--params",
            r#"{"attack":"loop"}"#,
            "--fuel",
            "100000000",
        ],
        dir.path(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("category: out-of-fuel"), "{stdout}");

    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"not a module").unwrap();
    let out = dsb(
        &["dev", "run", "--module", garbage.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("category: invalid-module: not-wasm"));
}

#[test]
fn dev_run_drives_every_world() {
    let dir = tempfile::tempdir().unwrap();
    let run = |module: &str, extra: &[&str]| {
        let module = guests_dir().join(format!("{module}.wasm"));
        let mut args = vec!["dev", "run", "--module", module.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = dsb(&args, dir.path());
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let block = run(
        "block_mean",
        &[
            "--data",
            "data/samples/enterprises.csv",
            "--params",
            r#"{"column":"employees"}"#,
        ],
    );
    assert!(
        block.contains("returned: [") && block.contains("2000.0]"),
        "{block}"
    );
    let model = run(
        "model_baseline",
        &[
            "--data",
            "data/samples/tax_records.csv",
            "--label",
            "overdue",
            "--params",
            r#"{"label":"overdue"}"#,
        ],
    );
    assert!(
        model.contains("predictions: 16000") && model.contains("local RMSE"),
        "{model}"
    );
    let scorer = run(
        "scorer_simple",
        &[
            "--data",
            "data/samples/tax_records.csv",
            "--params",
            r#"{"column":"tax_paid"}"#,
        ],
    );
    assert!(scorer.contains("returned: "), "{scorer}");
}

#[test]
fn demo_runs_the_loop_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    guests_dir();
    let out = dsb(&["demo"], dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "Pudong",
        "loop          -> out-of-fuel",
        "memory        -> memory-limit",
        "recursion     -> stack-overflow",
        "query-storm   -> query-limit",
        "secret-error  -> guest-error",
        "file read denied, socket denied, env vars 0",
        "loaded from Artifact cache",
        "Chongming is not listed (fewer than 10 enterprises; a withheld group looks absent); counts carry cell-key perturbation",
        "A row-level query is refused before it runs: rejected (policy-rejected: row-level-output",
        "tax_records was not granted to fudan-lab: not-found",
        "another tenant asking for that output: not-found",
        "Receipt fetched and verified offline against the published keys",
        "with one field changed: bad signature",
        "audit chain intact",
        "dataset.added 5",
        "module.uploaded 9",
        "token.created 10",
        "authorisation.added 6",
        "913100030001023757  not-authorised",
        "913100000001000000  scored            820  B",
        "3 per-subject receipts verified",
        "demo-bank asking about 913100000001000000 again for the same purpose within 30 days: already-scored",
        "In dp mode (ε = 1 per query) the same module gets all 16 published districts",
        "fudan-lab asking for dp answers on enterprises after exact ones: mode-conflict",
        "the receipt states ε = 1; sufe-lab has ε = 9 of 10 left on the enterprise population",
        "team-fudan submitted model_baseline (Rust): scored (public ROC AUC 0.5)",
        "team-sjtu submitted logistic_model.py (Python, componentize-py): scored (public ROC AUC 0.",
        "the admin approved it narrowed to month and paid_late for 30 days: approved",
        "Review: the job ended held (utility_payments requires review",
        "two administrators approved it blind; released; the receipt names reviewers",
        "Contest overdue-2024 on tax_overdue (9 features, label hidden",
        "Sample-and-aggregate (any code, world block-analysis): block-mean ran in a fresh instance on each of 21 disjoint blocks of enterprises (k declared",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in\n{stdout}"
        );
    }
}

#[test]
fn job_run_writes_a_receipt_that_dsb_verifies_offline() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    for id in ["enterprises", "tax_records"] {
        let csv = format!("data/samples/{id}.csv");
        let manifest = format!("data/samples/{id}.toml");
        let out = dsb(
            &[
                "dataset",
                "add",
                &csv,
                "--manifest",
                &manifest,
                "--data-dir",
                data,
            ],
            dir.path(),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let module = guests_dir().join("district_stats.wasm");
    let out = dsb(
        &[
            "job",
            "run",
            "--module",
            module.to_str().unwrap(),
            "--dataset",
            "enterprises",
            "--data-dir",
            data,
        ],
        dir.path(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let receipt = stdout
        .lines()
        .find_map(|l| l.strip_prefix("receipt: "))
        .unwrap()
        .to_string();

    let out = dsb(
        &["receipt", "verify", &receipt, "--data-dir", data],
        dir.path(),
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("valid: job "));
    // Without the data directory's keys nothing vouches for it.
    let out = dsb(&["receipt", "verify", &receipt], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("unknown key"));
    // One altered byte.
    let text = std::fs::read_to_string(&receipt).unwrap().replacen(
        "\"mode\": \"aggregate\"",
        "\"mode\": \"aggregatf\"",
        1,
    );
    let forged = dir.path().join("forged.json");
    std::fs::write(&forged, text).unwrap();
    let out = dsb(
        &[
            "receipt",
            "verify",
            forged.to_str().unwrap(),
            "--data-dir",
            data,
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("INVALID: bad signature"));

    let out = dsb(&["audit", "checkpoint", "--data-dir", data], dir.path());
    assert!(out.status.success());
    let out = dsb(&["audit", "verify", "--data-dir", data], dir.path());
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .starts_with("audit chain intact: 7 entries, 1 signed checkpoints")
    );
    let out = dsb(&["key", "rotate", "--data-dir", data], dir.path());
    assert!(out.status.success());
    let out = dsb(
        &["receipt", "verify", &receipt, "--data-dir", data],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "old receipts stay verifiable after rotation"
    );
    let out = dsb(&["audit", "export", "--data-dir", data], dir.path());
    let export = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(export.lines().count(), 8);
    // An export verifies on its own; an edited one names the entry.
    let file = dir.path().join("audit.jsonl");
    std::fs::write(&file, &export).unwrap();
    let verify_export = |path: &std::path::Path| {
        dsb(
            &[
                "audit",
                "verify",
                "--from-export",
                path.to_str().unwrap(),
                "--data-dir",
                data,
            ],
            dir.path(),
        )
    };
    let out = verify_export(&file);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("audit chain intact: 7 entries"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::fs::write(&file, export.replacen("\"operator\"", "\"someone\"", 1)).unwrap();
    let out = verify_export(&file);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("BROKEN: audit chain broken at entry 1"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `dsb serve` as its own process, driven by `dsb --server …` as users
/// would: bootstrap an admin token on the data directory, register data,
/// create an analyst, grant, upload, submit and wait, fetch and verify the
/// receipt against the server's keys, verify the audit chain, then SIGTERM
/// (a graceful stop).
#[test]
fn the_cli_drives_a_served_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = ServeProcess::start(&data);
    let url = server.url.clone();
    let admin = server.admin_token.clone();
    let client = |token: &str, args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_dsb"))
            .args(["--server", &url])
            .args(args)
            .env("DSB_TOKEN", token)
            .current_dir(repo())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = client(
        &admin,
        &[
            "dataset",
            "add",
            "data/samples/enterprises.csv",
            "--manifest",
            "data/samples/enterprises.toml",
        ],
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.starts_with("added enterprises@"), "{stdout}");
    let (_, stdout, _) = client(&admin, &["policy", "reload"]);
    assert!(stdout.contains("reloaded enterprises"), "{stdout}");
    let (_, analyst, _) = client(
        &admin,
        &["token", "create", "--role", "analyst", "--tenant", "lab-a"],
    );
    let analyst = analyst.trim().to_string();
    let (code, _, stderr) = client(
        &admin,
        &[
            "grant",
            "add",
            "--tenant",
            "lab-a",
            "--dataset",
            "enterprises",
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    // The analyst cannot do what admins do.
    let (code, _, stderr) = client(&analyst, &["token", "list"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("forbidden"), "{stderr}");
    let module = guests_dir().join("district_stats.wasm");
    let (code, stdout, stderr) = client(
        &analyst,
        &[
            "job",
            "submit",
            "--module",
            module.to_str().unwrap(),
            "--dataset",
            "enterprises",
            "--wait",
        ],
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("released: ok") && stdout.contains("Pudong"),
        "{stdout}"
    );
    let job = stdout
        .split_whitespace()
        .nth(1)
        .expect("job <id> released")
        .to_string();
    let (_, listed, _) = client(&analyst, &["job", "list", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["id"], job.as_str());
    // The same guest in dp mode: lab-a has seen exact answers about the
    // enterprise population, so it is refused noisy ones (ε would mean
    // nothing); another lab gets them, charged to its budget.
    let dp_args = [
        "job",
        "submit",
        "--module",
        module.to_str().unwrap(),
        "--dataset",
        "enterprises",
        "--mode",
        "dp",
        "--epsilon",
        "0.5",
        "--wait",
    ];
    let (code, _, stderr) = client(&analyst, &dp_args);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("mode-conflict"), "{stderr}");
    let (_, noisy, _) = client(
        &admin,
        &["token", "create", "--role", "analyst", "--tenant", "lab-n"],
    );
    let noisy = noisy.trim().to_string();
    let (code, _, stderr) = client(
        &admin,
        &[
            "grant",
            "add",
            "--tenant",
            "lab-n",
            "--dataset",
            "enterprises",
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stdout, stderr) = client(
        &noisy,
        &[
            "job",
            "submit",
            "--module",
            module.to_str().unwrap(),
            "--dataset",
            "enterprises",
            "--mode",
            "dp",
            "--epsilon",
            "0.5",
            "--wait",
        ],
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("released: ok") && stdout.contains("Chongming"),
        "{stdout}"
    );
    let (code, stdout, stderr) = client(&noisy, &["budget", "show"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("enterprise ") && stdout.contains("ε spent 0.500 of 10.000, 9.500 left"),
        "{stdout}"
    );
    let receipt = dir.path().join("receipt.json");
    let (code, _, stderr) = client(
        &analyst,
        &["receipt", "get", &job, "--out", receipt.to_str().unwrap()],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stdout, _) = client(&analyst, &["receipt", "verify", receipt.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.starts_with(&format!("valid: job {job}")), "{stdout}");
    let (code, stdout, _) = client(&admin, &["audit", "verify"]);
    assert_eq!(code, Some(0));
    assert!(stdout.starts_with("audit chain intact"), "{stdout}");
    // Scoring from the command line: register the scoring datasets, import
    // a consent for one enterprise, add another's from its document, score
    // three as the bank.
    for id in ["tax_records", "social_security", "utility_payments"] {
        let (code, _, stderr) = client(
            &admin,
            &[
                "dataset",
                "add",
                &format!("data/samples/{id}.csv"),
                "--manifest",
                &format!("data/samples/{id}.toml"),
            ],
        );
        assert_eq!(code, Some(0), "{stderr}");
    }
    let now = datasandbox::store::now();
    let consents = dir.path().join("consents.csv");
    std::fs::write(
        &consents,
        format!(
            "subject,tenant,purpose,datasets,valid_from,valid_until,consent_sha256,consent_uri\n\
             913100000001000000,bank-d,credit-assessment,tax_records;enterprises;social_security;utility_payments,{},{},{},c/1.pdf\n",
            now - 60, now + 3600, "a".repeat(64)
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = client(&admin, &["auth", "import", consents.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("imported 1 authorisations"), "{stdout}");
    let consent = dir.path().join("consent-2.pdf");
    std::fs::write(&consent, b"%PDF signed consent of enterprise 2").unwrap();
    let (code, stdout, stderr) = client(
        &admin,
        &[
            "auth",
            "add",
            "--subject",
            "913100010001007919",
            "--tenant",
            "bank-d",
            "--datasets",
            "tax_records,enterprises,social_security,utility_payments",
            "--consent",
            consent.to_str().unwrap(),
            "--valid-for",
            "1h",
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let added: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        added[0]["consent_sha256"],
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            b"%PDF signed consent of enterprise 2"
        ))
    );
    assert_eq!(
        added[0]["valid_until"].as_i64().unwrap() - added[0]["valid_from"].as_i64().unwrap(),
        3600
    );
    let (_, bank, _) = client(
        &admin,
        &[
            "token",
            "create",
            "--role",
            "institution",
            "--tenant",
            "bank-d",
        ],
    );
    let subjects = dir.path().join("subjects.txt");
    std::fs::write(
        &subjects,
        "913100000001000000\n913100010001007919\n913100020001015838\n",
    )
    .unwrap();
    let scorer = guests_dir().join("scorer_simple.wasm");
    // The administrator approves the bank's scorer with its params first.
    let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        std::fs::read(&scorer).unwrap(),
    ));
    let (code, stdout, stderr) = client(
        &admin,
        &[
            "score",
            "approve",
            "--institution",
            "bank-d",
            "--module",
            &sha256,
            "--params",
            r#"{"column":"employees"}"#,
        ],
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.starts_with(&format!("approved {sha256} for bank-d")),
        "{stdout}"
    );
    let (code, stdout, stderr) = client(
        bank.trim(),
        &[
            "score",
            "batch",
            "--module",
            scorer.to_str().unwrap(),
            "--subjects",
            subjects.to_str().unwrap(),
            "--params",
            r#"{"column":"employees"}"#,
            "--receipts",
            dir.path().join("receipts").to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "913100000001000000  scored  110",
            "913100010001007919  scored  10",
            "913100020001015838  not-authorised"
        ],
        "{stdout}"
    );
    // One receipt per scored subject, verifiable on its own.
    let mut written: Vec<_> = std::fs::read_dir(dir.path().join("receipts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    written.sort();
    assert_eq!(written.len(), 2, "{written:?}");
    let (code, stdout, _) = client(
        bank.trim(),
        &["receipt", "verify", written[0].to_str().unwrap()],
    );
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("(subject 913100000001000000)"), "{stdout}");
    // SIGTERM: a graceful stop, exit status 0.
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (exit, log) = server.wait();
    assert!(exit.success(), "{exit:?}");
    assert!(log.iter().any(|l| l.contains("dsb stopped")), "{log:?}");
}
