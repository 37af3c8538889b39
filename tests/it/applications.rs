//! Conditional access over real HTTP: apply (accepting the agreement),
//! approve with narrower columns, modes and term, queries refused outside
//! the grant before they run, expiry at once, rejection with a reason,
//! working-day deadlines and the overdue flag.

use crate::common;

use common::{TestServer, aggregate_job, guest};
use datasandbox::accounts::Role;
use datasandbox::applications::{Approval, NewApplication};
use datasandbox::client::Client;

async fn application(client: &Client, columns: &[&str], modes: &[&str]) -> NewApplication {
    let agreement = client.agreement("enterprises").await.unwrap();
    assert!(agreement.text.contains("Data-use agreement"));
    NewApplication {
        dataset: "enterprises".into(),
        purpose: "Enterprise density by district for a planning study".into(),
        columns: columns.iter().map(|c| c.to_string()).collect(),
        modes: modes.iter().map(|m| m.to_string()).collect(),
        term_days: 90,
        intended_outputs: "Counts and mean head count by district".into(),
        agreement_sha256: agreement.sha256,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_approve_and_query_within_the_grant_only() {
    let mut server = TestServer::start().await;
    let analyst = server.client(Role::Analyst, "lab-a").await;
    let request = application(
        &analyst,
        &["district", "employees", "industry"],
        &["aggregate", "dp"],
    )
    .await;
    let applied = analyst.apply(&request).await.unwrap();
    assert_eq!(applied.state, "pending");
    assert_eq!(applied.agreement_version, "2026-1");
    assert!(applied.deadline_at > applied.submitted_at + 5 * 86_400 - 86_400);
    assert!(!applied.overdue);
    // The applicant cannot approve their own application.
    assert_eq!(
        analyst
            .approve_application(&applied.id, &Approval::default())
            .await
            .unwrap_err()
            .code(),
        Some("forbidden")
    );
    // An approval cannot be wider than the application.
    let wider = Approval {
        columns: Some(vec!["name".into()]),
        ..Approval::default()
    };
    assert_eq!(
        server
            .admin
            .approve_application(&applied.id, &wider)
            .await
            .unwrap_err()
            .code(),
        Some("wider-than-asked")
    );
    // Approved narrower: two columns, aggregate only, 30 days.
    let approved = server
        .admin
        .approve_application(
            &applied.id,
            &Approval {
                columns: Some(vec!["district".into(), "employees".into()]),
                modes: Some(vec!["aggregate".into()]),
                term_days: Some(30),
            },
        )
        .await
        .unwrap();
    assert_eq!(approved.state, "approved");
    assert_eq!(
        server
            .admin
            .reject_application(&applied.id, "late")
            .await
            .unwrap_err()
            .code(),
        Some("already-decided")
    );
    // Within the grant: district and head count.
    let stats = analyst
        .upload_module(guest("district_stats"), None)
        .await
        .unwrap()
        .sha256;
    let job = aggregate_job(&analyst, &stats, "enterprises", serde_json::json!({})).await;
    assert_eq!(job.state, "released", "{job:?}");
    // Outside it: a column not granted is refused before the query runs.
    let probe = analyst
        .upload_module(guest("hostile"), None)
        .await
        .unwrap()
        .sha256;
    let job = aggregate_job(&analyst, &probe, "enterprises", serde_json::json!({"attack": "query", "sql": "SELECT industry, COUNT(*) AS n FROM enterprises GROUP BY industry"})).await;
    assert_eq!(job.state, "rejected");
    assert!(
        job.category
            .as_deref()
            .unwrap()
            .contains("column-not-granted: industry"),
        "{job:?}"
    );
    // A mode not granted is refused at submission.
    let error = analyst
        .submit_dp_job(&stats, &["enterprises".into()], serde_json::json!({}), 1.0)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("no-grant"));
    // Expired grants stop working at once.
    sqlx::query("UPDATE grants SET expires_at = ? WHERE tenant = 'lab-a'")
        .bind(datasandbox::store::now() - 1)
        .execute(server.service.store.pool())
        .await
        .unwrap();
    let error = analyst
        .submit_job(
            &stats,
            "aggregate",
            &["enterprises".into()],
            serde_json::json!({}),
        )
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("not-found"));
    // Every step is in the audit log.
    let actions: Vec<String> = datasandbox::store::audit::entries(&server.service.store)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    for action in [
        "application.submitted",
        "application.approved",
        "grant.added",
    ] {
        assert!(actions.contains(&action.to_string()), "{action}");
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_carry_a_reason_and_bad_applications_are_refused() {
    let mut server = TestServer::start().await;
    let analyst = server.client(Role::Analyst, "lab-b").await;
    let mut request = application(&analyst, &["district"], &["aggregate"]).await;
    // The agreement must be the current one.
    let stale = NewApplication {
        agreement_sha256: "0".repeat(64),
        ..request.clone()
    };
    assert_eq!(
        analyst.apply(&stale).await.unwrap_err().code(),
        Some("bad-application")
    );
    // Columns outside the dictionary, modes the policy does not allow.
    for bad in [
        NewApplication {
            columns: vec!["salary".into()],
            ..request.clone()
        },
        NewApplication {
            modes: vec!["contest".into()],
            ..request.clone()
        },
    ] {
        assert_eq!(
            analyst.apply(&bad).await.unwrap_err().code(),
            Some("bad-application")
        );
    }
    // Restricted datasets are not even confirmed to exist.
    request.dataset = "social_security".into();
    assert_eq!(
        analyst.apply(&request).await.unwrap_err().code(),
        Some("not-found")
    );
    request.dataset = "enterprises".into();
    let applied = analyst.apply(&request).await.unwrap();
    server
        .admin
        .reject_application(
            &applied.id,
            "The purpose does not need enterprise-level data.",
        )
        .await
        .unwrap();
    let mine = analyst.applications().await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].state, "rejected");
    assert_eq!(
        mine[0].reason.as_deref(),
        Some("The purpose does not need enterprise-level data.")
    );
    // No grant came of it.
    let stats = analyst
        .upload_module(guest("district_stats"), None)
        .await
        .unwrap()
        .sha256;
    assert_eq!(
        analyst
            .submit_job(
                &stats,
                "aggregate",
                &["enterprises".into()],
                serde_json::json!({})
            )
            .await
            .unwrap_err()
            .code(),
        Some("not-found")
    );
    // Pending past the deadline: flagged in the list and in /metrics.
    let late = analyst
        .apply(&application(&analyst, &["district"], &["aggregate"]).await)
        .await
        .unwrap();
    sqlx::query("UPDATE applications SET deadline_at = ? WHERE id = ?")
        .bind(datasandbox::store::now() - 1)
        .bind(&late.id)
        .execute(server.service.store.pool())
        .await
        .unwrap();
    let all = server.admin.applications().await.unwrap();
    assert!(all.iter().any(|a| a.id == late.id && a.overdue));
    let metrics = server.admin.metrics().await.unwrap();
    assert!(metrics.contains("dsb_applications_overdue 1"), "{metrics}");
    // Another tenant does not see lab-b's applications.
    let other = server.client(Role::Analyst, "lab-c").await;
    assert!(other.applications().await.unwrap().is_empty());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_decisions_on_one_application_leave_exactly_one() {
    let mut server = TestServer::start().await;
    let analyst = server.client(Role::Analyst, "lab-race").await;
    let second_admin = server.client(Role::Admin, "platform").await;
    for round in 0..5 {
        let request = application(&analyst, &["district"], &["aggregate"]).await;
        let applied = analyst.apply(&request).await.unwrap();
        let approval = Approval::default();
        let (approved, rejected) = tokio::join!(
            server.admin.approve_application(&applied.id, &approval),
            second_admin.reject_application(&applied.id, "no"),
        );
        assert!(
            approved.is_ok() != rejected.is_ok(),
            "round {round}: exactly one decision wins: {approved:?} / {rejected:?}"
        );
        let loser = approved.err().or(rejected.err()).unwrap();
        assert_eq!(loser.code(), Some("already-decided"), "round {round}");
    }
    server.stop().await.unwrap();
}
