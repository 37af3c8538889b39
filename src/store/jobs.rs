//! Durable jobs: `queued → running → released | rejected | failed` (and
//! `held` for review). Each transition and its audit entry commit together;
//! a release also writes its signed receipt in that transaction, naming the
//! audit entry that records it. Jobs left `queued` or `running` by a crash
//! become `failed: interrupted` on the next start.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{Store, StoreError, Transaction, audit, now};
use crate::receipt::{DatasetRef, PrivacyCost, Receipt, ReceiptBody, Signer, canonical_hash};
use crate::sandbox::{Category, Limits, Output};

/// Outputs at most this large (canonical JSON) are embedded in receipts.
const RECEIPT_OUTPUT_BYTES: usize = 16 << 10;

/// A job as submitted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewJob {
    pub id: String,
    pub principal: String,
    pub module_sha256: String,
    pub world: String,
    pub mode: String,
    pub datasets: Vec<DatasetRef>,
    pub policy_sha256: Option<String>,
    pub params: String,
    pub limits: Limits,
}

/// A stored job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    /// The tenant that submitted it (and owns it).
    pub principal: String,
    pub module_sha256: String,
    pub world: String,
    pub mode: String,
    pub datasets: Vec<DatasetRef>,
    pub state: String,
    pub category: Option<String>,
    pub output: Option<serde_json::Value>,
    pub receipt: Option<Receipt>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl JobRecord {
    /// Whether the job has reached a final state.
    pub fn is_final(&self) -> bool {
        !matches!(self.state.as_str(), "queued" | "running")
    }
}

/// The columns [`record`] reads, as a literal for `concat!`.
macro_rules! record_columns {
    () => {
        "id, principal, module_sha256, state, category, output, receipt, created_at, finished_at, world, mode, datasets, started_at"
    };
}

/// A fresh random job id (128 bits from the system's CSPRNG).
pub fn new_job_id() -> String {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("system randomness");
    hex::encode(bytes)
}

/// Record a submitted job (`queued`).
/// `actor` is who submitted it, as the audit log names them.
pub async fn submit(store: &Store, job: &NewJob, actor: &str) -> Result<(), StoreError> {
    let params_sha256 = hex::encode(Sha256::digest(job.params.as_bytes()));
    store.transition(async |tx| {
        sqlx::query(
            "INSERT INTO jobs (id, principal, module_sha256, world, mode, datasets, policy_sha256, params_sha256, params, limits, state, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?)",
        )
        .bind(&job.id)
        .bind(&job.principal)
        .bind(&job.module_sha256)
        .bind(&job.world)
        .bind(&job.mode)
        .bind(serde_json::to_string(&job.datasets).expect("serialisable"))
        .bind(&job.policy_sha256)
        .bind(&params_sha256)
        .bind(&job.params)
        .bind(serde_json::to_string(&job.limits).expect("serialisable"))
        .bind(now())
        .execute(tx.conn())
        .await?;
        tx.record(
            actor,
            "job.submitted",
            &job.id,
            serde_json::json!({ "module": job.module_sha256, "mode": job.mode, "datasets": job.datasets, "params_sha256": params_sha256 }),
        )
        .await?;
        Ok(())
    }).await
}

/// `queued → running`.
pub async fn start(store: &Store, id: &str) -> Result<(), StoreError> {
    store
        .transition(async |tx| {
            let updated = sqlx::query(
        "UPDATE jobs SET state = 'running', started_at = ? WHERE id = ? AND state = 'queued'",
    )
    .bind(now())
    .bind(id)
    .execute(tx.conn())
    .await?;
            if updated.rows_affected() != 1 {
                return Err(StoreError::WrongState {
                    id: id.into(),
                    state: state_of(tx.conn(), id).await?,
                    expected: "queued",
                });
            }
            tx.record("system", "job.started", id, serde_json::json!({}))
                .await?;
            Ok(())
        })
        .await
}

async fn state_of(conn: &mut sqlx::SqliteConnection, id: &str) -> Result<String, StoreError> {
    sqlx::query_scalar("SELECT state FROM jobs WHERE id = ?")
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| StoreError::UnknownJob(id.into()))
}

/// `running → released | rejected | failed`. A release writes the outputs
/// and a receipt signed by `signer`, in the same transaction as its audit
/// entry; the receipt names that entry's position.
pub async fn finish(
    store: &Store,
    id: &str,
    category: &Category,
    outputs: &[Output],
    privacy_cost: PrivacyCost,
    signer: &Signer,
) -> Result<Option<Receipt>, StoreError> {
    end(
        store,
        id,
        "running",
        category,
        outputs,
        privacy_cost,
        None,
        signer,
    )
    .await
}

/// `held → released`: two reviewers approved; the receipt names them.
///
/// Runs inside the caller's transaction (the review decision's), so the
/// decision, the release and their audit entries commit together or not
/// at all.
pub async fn release_held_in(
    tx: &mut Transaction<'_>,
    id: &str,
    outputs: &[Output],
    privacy_cost: PrivacyCost,
    reviewers: Vec<String>,
    signer: &Signer,
) -> Result<Option<Receipt>, StoreError> {
    end_in(
        tx,
        id,
        "held",
        &Category::Ok,
        outputs,
        privacy_cost,
        Some(reviewers),
        signer,
    )
    .await
}

/// `running → held`: the output waits for review; nothing is released and
/// the job's own output stays empty until then.
pub async fn hold(store: &Store, id: &str) -> Result<(), StoreError> {
    store.transition(async |tx| {
        let updated = sqlx::query(
            "UPDATE jobs SET state = 'held', category = 'ok', finished_at = ? WHERE id = ? AND state = 'running'",
        )
        .bind(now())
        .bind(id)
        .execute(tx.conn())
        .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::WrongState {
                id: id.into(),
                state: "not running".into(),
                expected: "running",
            });
        }
        tx.record("system", "job.held", id, serde_json::json!({})).await?;
        Ok(())
    }).await
}

/// `held → rejected` or `held → changes-requested` after a review.
/// Inside the caller's transaction, like [`release_held_in`].
pub async fn end_review_in(
    tx: &mut Transaction<'_>,
    id: &str,
    state: &str,
    category: &str,
) -> Result<(), StoreError> {
    let updated =
        sqlx::query("UPDATE jobs SET state = ?, category = ? WHERE id = ? AND state = 'held'")
            .bind(state)
            .bind(category)
            .bind(id)
            .execute(tx.conn())
            .await?;
    if updated.rows_affected() == 0 {
        return Err(StoreError::WrongState {
            id: id.into(),
            state: "not held".into(),
            expected: "held",
        });
    }
    tx.record(
        "system",
        "job.review-ended",
        id,
        serde_json::json!({ "state": state, "category": category }),
    )
    .await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn end(
    store: &Store,
    id: &str,
    expected: &'static str,
    category: &Category,
    outputs: &[Output],
    privacy_cost: PrivacyCost,
    reviewers: Option<Vec<String>>,
    signer: &Signer,
) -> Result<Option<Receipt>, StoreError> {
    store
        .transition(async |tx| {
            end_in(
                tx,
                id,
                expected,
                category,
                outputs,
                privacy_cost,
                reviewers,
                signer,
            )
            .await
        })
        .await
}

#[allow(clippy::too_many_arguments)]
async fn end_in(
    tx: &mut Transaction<'_>,
    id: &str,
    expected: &'static str,
    category: &Category,
    outputs: &[Output],
    privacy_cost: PrivacyCost,
    reviewers: Option<Vec<String>>,
    signer: &Signer,
) -> Result<Option<Receipt>, StoreError> {
    let row = sqlx::query("SELECT state, module_sha256, world, mode, datasets, policy_sha256, params_sha256 FROM jobs WHERE id = ?")
        .bind(id)
        .fetch_optional(tx.conn())
        .await?
        .ok_or_else(|| StoreError::UnknownJob(id.into()))?;
    let state: String = row.get(0);
    if state != expected {
        return Err(StoreError::WrongState {
            id: id.into(),
            state,
            expected,
        });
    }
    let finished = now();
    let (new_state, action) = match category {
        Category::Ok => ("released", "job.released"),
        Category::PolicyRejected(_) | Category::InvalidModule(_) => ("rejected", "job.rejected"),
        _ => ("failed", "job.failed"),
    };
    let mut receipt = None;
    let mut details = serde_json::json!({ "category": category.to_string() });
    let output_json = serde_json::to_value(outputs).expect("outputs serialise");
    if category.is_ok() {
        let datasets: Vec<DatasetRef> = serde_json::from_str(&row.get::<String, _>(4))
            .map_err(|e| StoreError::Record(e.to_string()))?;
        let output_sha256 = canonical_hash(&output_json);
        let embedded =
            serde_json::to_vec(&output_json).is_ok_and(|b| b.len() <= RECEIPT_OUTPUT_BYTES);
        let body = ReceiptBody {
            format: 1,
            job_id: id.into(),
            subject: None,
            module_sha256: row.get(1),
            world: row.get(2),
            mode: row.get(3),
            datasets,
            policy_sha256: row.get(5),
            params_sha256: row.get(6),
            privacy_cost,
            output_sha256: output_sha256.clone(),
            output: embedded.then(|| output_json.clone()),
            released_at: finished as u64,
            audit_position: audit::next_seq(tx.conn()).await? as u64,
            reviewers: reviewers.clone(),
            key_id: signer.key_id.clone(),
        };
        let signed = Receipt::sign(body, signer);
        details = serde_json::json!({
            "category": "ok",
            "output_sha256": output_sha256,
            "receipt_sha256": canonical_hash(&signed),
            "privacy_cost": privacy_cost,
        });
        receipt = Some(signed);
    }
    let entry = tx.record("system", action, id, details).await?;
    if let Some(receipt) = &receipt
        && receipt.body.audit_position != entry.seq as u64
    {
        return Err(StoreError::Record(
            "audit position moved inside a transaction".into(),
        ));
    }
    sqlx::query("UPDATE jobs SET state = ?, category = ?, output = ?, receipt = ?, finished_at = ? WHERE id = ?")
        .bind(new_state)
        .bind(category.to_string())
        .bind(category.is_ok().then(|| output_json.to_string()))
        .bind(receipt.as_ref().map(|r| serde_json::to_string(r).expect("receipt serialises")))
        .bind(finished)
        .bind(id)
        .execute(tx.conn())
        .await?;
    Ok(receipt)
}

/// Mark jobs a crash left `queued` or `running` as `failed: interrupted`
/// (they can be resubmitted). Returns how many.
pub async fn recover_interrupted(store: &Store) -> Result<usize, StoreError> {
    store.transition(async |tx| {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE state IN ('queued', 'running') ORDER BY created_at, id",
        )
        .fetch_all(tx.conn())
        .await?;
        for id in &ids {
            sqlx::query("UPDATE jobs SET state = 'failed', category = 'interrupted', finished_at = ? WHERE id = ?")
                .bind(now())
                .bind(id)
                .execute(tx.conn())
                .await?;
            tx.record("system", "job.interrupted", id, serde_json::json!({}))
                .await?;
        }
        Ok(ids.len())
    }).await
}

/// One job.
pub async fn get(store: &Store, id: &str) -> Result<JobRecord, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        record_columns!(),
        " FROM jobs WHERE id = ?"
    ))
    .bind(id)
    .fetch_optional(store.pool())
    .await?
    .ok_or_else(|| StoreError::UnknownJob(id.into()))?;
    record(&row)
}

/// Every job, oldest first.
pub async fn all(store: &Store) -> Result<Vec<JobRecord>, StoreError> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        record_columns!(),
        " FROM jobs ORDER BY created_at, id"
    ))
    .fetch_all(store.pool())
    .await?;
    rows.iter().map(record).collect()
}

/// A tenant's jobs, newest first, at most `limit`.
pub async fn of_principal(
    store: &Store,
    principal: &str,
    limit: i64,
) -> Result<Vec<JobRecord>, StoreError> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        record_columns!(),
        " FROM jobs WHERE principal = ? ORDER BY created_at DESC, id LIMIT ?"
    ))
    .bind(principal)
    .bind(limit)
    .fetch_all(store.pool())
    .await?;
    rows.iter().map(record).collect()
}

/// `queued → failed: cancelled`, before the job started. Returns false
/// when the job is no longer queued.
pub async fn cancel_queued(store: &Store, id: &str, actor: &str) -> Result<bool, StoreError> {
    store.transition(async |tx| {
        let updated = sqlx::query("UPDATE jobs SET state = 'failed', category = 'cancelled', finished_at = ? WHERE id = ? AND state = 'queued'")
            .bind(now())
            .bind(id)
            .execute(tx.conn())
            .await?;
        if updated.rows_affected() == 0 {
            return Ok(false);
        }
        tx.record(actor, "job.cancelled", id, serde_json::json!({})).await?;
        Ok(true)
    }).await
}

fn record(row: &sqlx::sqlite::SqliteRow) -> Result<JobRecord, StoreError> {
    let parse = |text: Option<String>| -> Result<Option<serde_json::Value>, StoreError> {
        text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Record(e.to_string())))
            .transpose()
    };
    let receipt: Option<String> = row.get(6);
    Ok(JobRecord {
        id: row.get(0),
        principal: row.get(1),
        module_sha256: row.get(2),
        world: row.get(9),
        mode: row.get(10),
        datasets: serde_json::from_str(&row.get::<String, _>(11))
            .map_err(|e| StoreError::Record(e.to_string()))?,
        started_at: row.get(12),
        state: row.get(3),
        category: row.get(4),
        output: parse(row.get(5))?,
        receipt: receipt
            .map(|r| serde_json::from_str(&r).map_err(|e| StoreError::Record(e.to_string())))
            .transpose()?,
        created_at: row.get(7),
        finished_at: row.get(8),
    })
}
