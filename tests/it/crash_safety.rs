//! SIGKILL the job loop at 50 random moments, restarting it each time; then
//! the audit chain verifies, every acknowledged job exists, every released
//! job has its receipt and audit entry, and no job is left running.

use crate::common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use datasandbox::receipt::Receipt;
use datasandbox::service::Service;
use datasandbox::store::{audit, jobs};

const KILLS: usize = 50;

#[tokio::test]
async fn killing_the_process_loses_no_job_receipt_or_audit_entry() {
    let dir = tempfile::tempdir().unwrap();
    catalog_with_samples(dir.path()).await;
    let module = guests_dir().join("district_stats.wasm");
    // One complete run first: it compiles the module into the artifact
    // cache, so every later start takes milliseconds, not a compile.
    let warm = Command::new(env!("CARGO_BIN_EXE_dsb"))
        .args([
            "job",
            "soak",
            "--count",
            "1",
            "--dataset",
            "enterprises",
            "--module",
        ])
        .arg(&module)
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--policies")
        .arg(repo().join("policies"))
        .output()
        .unwrap();
    assert!(
        warm.status.success(),
        "{}",
        String::from_utf8_lossy(&warm.stderr)
    );
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    // A fixed-seed generator: the same kill moments on every run.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..KILLS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dsb"))
            .args(["job", "soak", "--dataset", "enterprises", "--module"])
            .arg(&module)
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--policies")
            .arg(repo().join("policies"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let acks = Arc::clone(&acknowledged);
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(id) = line.strip_prefix("submitted ") {
                    acks.lock().unwrap().push(id.to_string());
                }
            }
        });
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(150 + seed % 700));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
    }

    let service = Service::open(dir.path(), &repo().join("policies"))
        .await
        .unwrap();
    let all = jobs::all(&service.store).await.unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    for id in &acknowledged {
        assert!(
            all.iter().any(|j| &j.id == id),
            "acknowledged job {id} was lost"
        );
    }
    assert!(
        all.iter()
            .all(|j| j.state != "running" && j.state != "queued")
    );
    let keys = service.keys.public_keys().unwrap();
    let entries = audit::entries(&service.store).await.unwrap();
    let mut released = 0;
    for job in all.iter().filter(|j| j.state == "released") {
        released += 1;
        let receipt = job
            .receipt
            .as_ref()
            .unwrap_or_else(|| panic!("released job {} has no receipt", job.id));
        Receipt::verify(
            &serde_json::to_vec(receipt).unwrap(),
            &keys,
            job.output.as_ref(),
        )
        .unwrap();
        let entry = &entries[receipt.body.audit_position as usize - 1];
        assert_eq!(
            (entry.action.as_str(), entry.subject.as_str()),
            ("job.released", job.id.as_str())
        );
        assert!(
            entries
                .iter()
                .any(|e| e.action == "job.submitted" && e.subject == job.id)
        );
    }
    let (verified, _) = service.verify_audit().await.unwrap().unwrap();
    let interrupted = all
        .iter()
        .filter(|j| j.category.as_deref() == Some("interrupted"))
        .count();
    eprintln!(
        "crash test: {KILLS} kills, {} jobs acknowledged, {} stored, {released} released with receipts, \
         {interrupted} interrupted, {verified} audit entries verified, 0 lost",
        acknowledged.len(),
        all.len()
    );
    assert!(released > 0, "some jobs must have completed between kills");
    assert!(interrupted > 0, "some kills must have hit a running job");
}

/// The migrations the store applies are every file of `migrations/`, each
/// under the version, description and SHA-384 checksum sqlx's own
/// `migrate!` recorded, so a data directory made by an earlier build keeps
/// its history (a changed checksum would refuse to open it).
#[tokio::test]
async fn the_store_applies_every_migration_file_under_sqlx_names_and_checksums() {
    use sha2::{Digest, Sha384};
    use sqlx::Row;

    let dir = tempfile::tempdir().unwrap();
    let store = datasandbox::store::Store::open(&dir.path().join("dsb.sqlite"))
        .await
        .unwrap();
    let applied: Vec<(i64, String, Vec<u8>)> = sqlx::query(
        "SELECT version, description, checksum FROM _sqlx_migrations WHERE success ORDER BY version",
    )
    .fetch_all(store.pool())
    .await
    .unwrap()
    .into_iter()
    .map(|row| (row.get(0), row.get(1), row.get(2)))
    .collect();
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(repo().join("migrations"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(applied.len(), files.len());
    for ((version, description, checksum), file) in applied.iter().zip(&files) {
        let name = file.file_stem().unwrap().to_str().unwrap();
        let (number, rest) = name.split_once('_').unwrap();
        assert_eq!(*version, number.parse::<i64>().unwrap());
        assert_eq!(description, &rest.replace('_', " "));
        assert_eq!(
            checksum.as_slice(),
            Sha384::digest(std::fs::read(file).unwrap()).as_slice(),
            "{name}"
        );
    }
    // Opening it again applies nothing and refuses nothing.
    drop(store);
    datasandbox::store::Store::open(&dir.path().join("dsb.sqlite"))
        .await
        .unwrap();
}
