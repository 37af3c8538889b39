//! A secret the guest puts in a trap, a panic, an error string, the log,
//! stdout or stderr reaches the administrators' diagnostics and never the
//! submitter's report.

use crate::common;

use common::*;
use datasandbox::sandbox::{Category, Execution};

fn submitter_text(execution: &Execution) -> String {
    format!(
        "{}\n{}",
        serde_json::to_string(&execution.submitter_report()).unwrap(),
        execution.category
    )
}

fn diagnostics_text(execution: &Execution) -> String {
    serde_json::to_string(&execution.diagnostics).unwrap()
}

async fn secret_stays_with_admins(attack: &str, expected: Category) {
    let execution = hostile(&format!(r#"{{"attack":"{attack}"}}"#), quick_limits()).await;
    assert_eq!(
        execution.category, expected,
        "{attack}: {:?}",
        execution.diagnostics
    );
    assert!(
        diagnostics_text(&execution).contains(SECRET),
        "{attack}: the fixture must really produce the secret, else this test proves nothing: {:?}",
        execution.diagnostics
    );
    assert!(
        !submitter_text(&execution).contains(SECRET),
        "{attack}: the secret reached the submitter: {}",
        submitter_text(&execution)
    );
}

#[tokio::test]
async fn secret_in_a_trap_backtrace() {
    secret_stays_with_admins("secret-trap", Category::GuestError).await;
}

#[tokio::test]
async fn secret_in_a_panic_message() {
    secret_stays_with_admins("secret-panic", Category::GuestError).await;
}

#[tokio::test]
async fn secret_in_an_error_string() {
    secret_stays_with_admins("secret-error", Category::GuestError).await;
}

#[tokio::test]
async fn secret_in_log_stdout_and_stderr() {
    let execution = hostile(r#"{"attack":"secret-log"}"#, quick_limits()).await;
    assert_eq!(execution.category, Category::Ok);
    let log = &execution.diagnostics.log;
    for source in ["[log]", "[stdout]", "[stderr]"] {
        assert!(
            log.lines()
                .any(|l| l.starts_with(source) && l.contains(SECRET)),
            "{source} missing from {log}"
        );
    }
    assert!(!submitter_text(&execution).contains(SECRET));
}

#[tokio::test]
async fn data_dependent_query_errors_reach_neither_guest_nor_submitter() {
    // A failing cast quotes the offending value in DataFusion's message.
    let execution = query_through_guest(
        "SELECT CAST(name AS INT) AS n FROM enterprises",
        vec![register(datasandbox::dataset::Classification::Open)],
    )
    .await;
    assert_eq!(execution.category, Category::GuestError);
    let record = &execution.diagnostics.queries[0];
    assert!(record.outcome.starts_with("failed: "), "{record:?}");
    assert!(
        record.outcome.contains("Firm"),
        "admins see the detail: {record:?}"
    );
    // The guest got only the bare category and returned it as its error.
    assert_eq!(
        execution.diagnostics.guest_error.as_deref(),
        Some("query failed")
    );
    assert!(!submitter_text(&execution).contains("Firm"));
}

/// On the server the diagnostics are stored: administrators read them
/// through the admin API after the job, the submitter cannot, and nothing
/// in the submitter's view of the job carries the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnostics_are_kept_for_administrators_only() {
    use datasandbox::accounts::Role;
    let server = TestServer::start().await;
    server.admin.grant("lab-a", "enterprises").await.unwrap();
    let analyst = server.client(Role::Analyst, "lab-a").await;
    let hostile = analyst.upload_module(guest("hostile"), None).await.unwrap();
    let job = analyst
        .submit_job(
            &hostile.sha256,
            "aggregate",
            &["enterprises".into()],
            serde_json::json!({"attack": "secret-error"}),
        )
        .await
        .unwrap();
    let ended = analyst
        .wait_job(&job.id, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(ended.category.as_deref(), Some("guest-error"));
    assert!(!serde_json::to_string(&ended).unwrap().contains(SECRET));

    let diagnostics = server.admin.job_diagnostics(&job.id).await.unwrap();
    assert!(
        diagnostics["guest_error"]
            .as_str()
            .is_some_and(|e| e.contains(SECRET)),
        "{diagnostics}"
    );
    assert_eq!(
        analyst.job_diagnostics(&job.id).await.unwrap_err().code(),
        Some("forbidden")
    );
    assert_eq!(
        server
            .admin
            .job_diagnostics("no-such-job")
            .await
            .unwrap_err()
            .code(),
        Some("not-found")
    );
}
