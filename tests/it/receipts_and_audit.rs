//! Releases carry Ed25519 receipts over canonical JSON that verify offline
//! and catch any altered byte; the audit chain catches edited, deleted,
//! inserted and reordered entries, all with a real SQLite file and the real
//! signer.

use crate::common;

use std::path::Path;

use common::*;
use datasandbox::receipt::{KeyRing, Receipt, VerifyError};
use datasandbox::sandbox::Category;
use datasandbox::service::Service;
use datasandbox::store::{audit, jobs};

async fn open_service(dir: &Path) -> Service {
    // The catalog must hold the datasets the policies name.
    Service::open(dir, &repo().join("policies"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn service_with_data(dir: &Path) -> Service {
    catalog_with_samples(dir).await;
    open_service(dir).await
}

/// Run district-stats once as an analyst.
async fn run_once(service: &Service) -> datasandbox::service::JobResult {
    service
        .run_analysis(
            "analyst",
            &guest("district_stats"),
            &["enterprises".into()],
            "{}",
            |_| {},
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn a_release_has_a_receipt_that_verifies_offline_and_catches_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let service = service_with_data(dir.path()).await;
    let result = run_once(&service).await;
    assert_eq!(result.execution.category, Category::Ok);
    let receipt = result.receipt.unwrap();
    let keys = service.keys.public_keys().unwrap();
    let json = serde_json::to_vec_pretty(&receipt).unwrap();
    let output = serde_json::to_value(&result.execution.outputs).unwrap();
    let checked = Receipt::verify(&json, &keys, Some(&output)).unwrap();
    assert_eq!(checked.body.datasets[0].id, "enterprises");
    assert_eq!(checked.body.privacy_cost.epsilon, 0.0);
    assert!(checked.body.policy_sha256.is_some());

    // Field order and whitespace do not matter.
    let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let mut fields: Vec<(String, serde_json::Value)> =
        value.as_object().unwrap().clone().into_iter().collect();
    fields.reverse();
    let reordered = format!(
        "{{ {} }}",
        fields
            .iter()
            .map(|(k, v)| format!("{:?} :  {}", k, v))
            .collect::<Vec<_>>()
            .join(" ,\n ")
    );
    Receipt::verify(reordered.as_bytes(), &keys, Some(&output)).unwrap();

    // Any changed value is caught.
    for (field, replacement) in [
        ("job_id", serde_json::json!("another-job")),
        ("module_sha256", serde_json::json!("00")),
        ("audit_position", serde_json::json!(1)),
        ("output_sha256", serde_json::json!("ff")),
        ("released_at", serde_json::json!(0)),
    ] {
        let mut tampered = value.clone();
        tampered[field] = replacement;
        let error =
            Receipt::verify(&serde_json::to_vec(&tampered).unwrap(), &keys, None).unwrap_err();
        assert!(
            matches!(error, VerifyError::BadSignature(_)),
            "{field}: {error}"
        );
    }
    // A flipped byte anywhere in the signature is caught.
    let mut flipped = value.clone();
    let signature = flipped["signature"].as_str().unwrap().to_string();
    let last = if signature.ends_with('0') { "1" } else { "0" };
    flipped["signature"] =
        serde_json::json!(format!("{}{last}", &signature[..signature.len() - 1]));
    assert!(Receipt::verify(&serde_json::to_vec(&flipped).unwrap(), &keys, None).is_err());
    // The wrong output, an unknown key.
    let error = Receipt::verify(&json, &keys, Some(&serde_json::json!([]))).unwrap_err();
    assert!(matches!(error, VerifyError::OutputMismatch { .. }));
    let other = KeyRing::open(&dir.path().join("other-keys")).unwrap();
    let error = Receipt::verify(&json, &other.public_keys().unwrap(), None).unwrap_err();
    assert!(matches!(error, VerifyError::UnknownKey(_)));

    // The receipt's audit position is the entry that records the release.
    let entries = audit::entries(&service.store).await.unwrap();
    let entry = &entries[checked.body.audit_position as usize - 1];
    assert_eq!(
        (entry.action.as_str(), entry.subject.as_str()),
        ("job.released", checked.body.job_id.as_str())
    );
}

#[tokio::test]
async fn key_rotation_keeps_old_receipts_verifiable() {
    let dir = tempfile::tempdir().unwrap();
    let service = service_with_data(dir.path()).await;
    let first = run_once(&service).await.receipt.unwrap();
    let new_key = service.keys.rotate().unwrap();
    let second = run_once(&service).await.receipt.unwrap();
    assert_ne!(first.body.key_id, second.body.key_id);
    assert_eq!(second.body.key_id, new_key);
    let keys = service.keys.public_keys().unwrap();
    assert_eq!(keys.len(), 2);
    for receipt in [first, second] {
        Receipt::verify(&serde_json::to_vec(&receipt).unwrap(), &keys, None).unwrap();
    }
    #[cfg(unix)]
    for entry in std::fs::read_dir(dir.path().join("keys")).unwrap() {
        use std::os::unix::fs::PermissionsExt;
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "pk8") {
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }
}

async fn tamper(sql: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let service = service_with_data(dir.path()).await;
    for _ in 0..3 {
        run_once(&service).await;
    }
    audit::checkpoint(&service.store, &service.keys.signer().unwrap())
        .await
        .unwrap();
    assert!(service.verify_audit().await.unwrap().is_ok());
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(service.store.pool())
        .await
        .unwrap();
    service
        .verify_audit()
        .await
        .unwrap()
        .unwrap_err()
        .to_string()
}

#[tokio::test]
async fn the_audit_chain_catches_edits_deletions_insertions_and_reordering() {
    let edited = tamper("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 2").await;
    assert_eq!(
        edited,
        "audit chain broken at entry 2: its content does not match its hash (edited)"
    );

    let deleted = tamper("DELETE FROM audit_log WHERE seq = 3").await;
    assert_eq!(
        deleted,
        "audit chain broken at entry 3: entry 3 is missing (found 4 next)"
    );

    let inserted = tamper(
        "UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 4; \
         INSERT INTO audit_log (seq, at, actor, action, subject, details, prev_hash, hash) \
         SELECT 4, at, actor, action, subject, details, hash, hash FROM audit_log WHERE seq = 3; \
         UPDATE audit_log SET seq = seq - 999 WHERE seq > 1000",
    )
    .await;
    assert!(
        inserted.starts_with("audit chain broken at entry 4:"),
        "{inserted}"
    );

    let reordered = tamper(
        "UPDATE audit_log SET seq = -1 WHERE seq = 2; UPDATE audit_log SET seq = 2 WHERE seq = 3; \
         UPDATE audit_log SET seq = 3 WHERE seq = -1",
    )
    .await;
    assert!(
        reordered.starts_with("audit chain broken at entry 2:"),
        "{reordered}"
    );

    // Rewriting the whole tail consistently is still caught by the signed checkpoint.
    let truncated =
        tamper("DELETE FROM audit_log WHERE seq >= (SELECT MAX(seq) - 1 FROM audit_log)").await;
    assert!(truncated.contains("checkpoint"), "{truncated}");
}

#[tokio::test]
async fn interrupted_jobs_are_marked_on_restart_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let service = service_with_data(dir.path()).await;
    let job = jobs::NewJob {
        id: jobs::new_job_id(),
        principal: "analyst".into(),
        module_sha256: "00".into(),
        world: "analysis".into(),
        mode: "aggregate".into(),
        datasets: vec![],
        policy_sha256: None,
        params: "{}".into(),
        limits: Default::default(),
    };
    jobs::submit(&service.store, &job, "analyst").await.unwrap();
    jobs::start(&service.store, &job.id).await.unwrap();
    drop(service);
    let restarted = open_service(dir.path()).await;
    let record = jobs::get(&restarted.store, &job.id).await.unwrap();
    assert_eq!(
        (record.state.as_str(), record.category.as_deref()),
        ("failed", Some("interrupted"))
    );
    let entries = audit::entries(&restarted.store).await.unwrap();
    assert_eq!(entries.last().unwrap().action, "job.interrupted");
    assert!(restarted.verify_audit().await.unwrap().is_ok());
}

/// `Store::transition` is the one way to change state: a change that
/// fails after recording its audit entry leaves neither the row nor the
/// entry; one that succeeds leaves both.
#[tokio::test]
async fn a_transition_commits_its_change_and_entry_together_or_neither() {
    use datasandbox::store::{Store, StoreError, audit};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("dsb.sqlite")).await.unwrap();
    let tokens = async |store: &Store| -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM tokens")
            .fetch_one(store.pool())
            .await
            .unwrap()
    };
    let insert = "INSERT INTO tokens (id, secret_sha256, role, tenant, created_at) VALUES ('t1', 'x', 'admin', 'platform', 0)";
    let failed: Result<(), StoreError> = store
        .transition(async |tx| {
            sqlx::query(insert).execute(tx.conn()).await?;
            tx.record("tester", "token.created", "t1", serde_json::json!({}))
                .await?;
            Err(StoreError::Record("changed its mind".into()))
        })
        .await;
    assert!(failed.is_err());
    assert_eq!(tokens(&store).await, 0);
    assert!(audit::entries(&store).await.unwrap().is_empty());
    store
        .transition(async |tx| {
            sqlx::query(insert).execute(tx.conn()).await?;
            tx.record("tester", "token.created", "t1", serde_json::json!({}))
                .await?;
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    assert_eq!(tokens(&store).await, 1);
    let entries = audit::entries(&store).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].action, "token.created");
}
