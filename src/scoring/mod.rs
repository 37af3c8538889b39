//! Scoring mode ("algorithm front-loading"): an institution's `scorer`
//! module runs at the data holder, one fresh instance per authorised
//! subject, over that subject's rows only; the host clamps and buckets the
//! number and releases it with a signed receipt.
//!
//! A batch is one durable job (mode `scoring`). For each subject, in order:
//! the authorisation is checked (subject × institution × purpose × every
//! dataset × now); a refusal is `not-authorised` whether or not the subject
//! exists, and no data is read for it. The covered datasets are read once
//! per batch (only the policy's columns and the subject key) and split by
//! subject in memory; each authorised subject's rows go to a new instance.
//! The policy's daily cap and per-minute rate (per institution, counted in
//! subjects run) stop a batch cleanly: what was scored is released, the rest
//! is reported `cap-reached` or `rate-limited`.
//!
//! The batch's release is one job with one receipt over all released
//! scores; each scored subject also gets its own receipt, the batch's body
//! cut down to that subject's output (`subject` set), signed by the same
//! key, so an institution can file one enterprise's score without showing
//! the others'. A policy with a grade scale releases only grades. Only a
//! (module, params) pair an administrator approved for the policy and the
//! institution runs (`approvals`).

pub mod approvals;
pub mod authorisations;
pub mod policy;

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, RecordBatch, StringArray, UInt32Array};
use datafusion::arrow::compute::{cast, take_record_batch};
use datafusion::arrow::datatypes::DataType;
use serde::{Deserialize, Serialize};

pub use policy::{Released, ScoringPolicy};

/// The scoring policies (`<policies>/scoring/*.toml`), read afresh.
pub fn policies(service: &Service) -> Result<Vec<ScoringPolicy>, ServiceError> {
    Ok(policy::load_dir(&service.policies.dir().join("scoring"))?)
}

use crate::catalog::DatasetVersion;
use crate::policy::Mode;
use crate::receipt::{DatasetRef, PrivacyCost, Receipt, canonical_hash};
use crate::sandbox::{Category, GuestCall, JobEnv, Limits, Output, Returned, World};
use crate::service::{Service, ServiceError, Submitter};
use crate::store::{StoreError, jobs, now};

/// Most subjects one batch may carry.
pub const MAX_SUBJECTS: usize = 100_000;

pub use policy::ScoringProblem;

/// A scoring request.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    /// SHA-256 of an uploaded `scorer` module.
    pub module: String,
    /// The scoring policy's name.
    pub policy: String,
    pub subjects: Vec<String>,
    /// Handed to the scorer as JSON text.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
}

/// One subject's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SubjectScore {
    pub subject: String,
    /// `scored`, `not-authorised`, `cap-reached`, `rate-limited` or
    /// `not-scored`: whatever the scorer did wrong (a non-number, an error,
    /// out of fuel, …) is that one outcome, since the scorer chose it after
    /// reading the subject's rows. The detail is in the administrators'
    /// diagnostics of the batch's job.
    pub outcome: String,
    /// The clamped, bucketed score when `scored` (absent under a grade
    /// scale).
    pub score: Option<f64>,
    /// The grade when `scored` under a policy with a grade scale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grade: Option<String>,
    /// This subject's own signed receipt when `scored`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub receipt: Option<Receipt>,
}

impl SubjectScore {
    fn unscored(subject: &str, outcome: &str) -> SubjectScore {
        SubjectScore {
            subject: subject.to_string(),
            outcome: outcome.to_string(),
            score: None,
            grade: None,
            receipt: None,
        }
    }
}

/// A finished batch.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScoreBatch {
    pub job_id: String,
    pub results: Vec<SubjectScore>,
    /// Signed over the released scores (absent when none was released).
    #[schema(value_type = Option<Object>)]
    pub receipt: Option<Receipt>,
}

/// Rows per subject of one dataset, as Arrow IPC without the subject key.
struct SubjectRows {
    id: String,
    by_subject: HashMap<String, Vec<u8>>,
    empty: Vec<u8>,
}

async fn load_rows(
    version: &DatasetVersion,
    columns: &[String],
    subjects: &[&str],
) -> Result<SubjectRows, ServiceError> {
    let key = version.manifest.privacy_unit.clone();
    let read_failed = |detail: String| ServiceError::DataRead {
        dataset: version.id.clone(),
        detail,
    };
    for column in columns {
        if *column == key || !version.manifest.columns.iter().any(|c| &c.name == column) {
            return Err(ServiceError::Scoring(ScoringProblem::UnknownColumn {
                column: column.clone(),
                dataset: version.id.clone(),
            }));
        }
    }
    let policies = crate::policy::PolicySet::default();
    let source = crate::release::bind::version_table(version, &policies);
    let (_, batches) = crate::query::read_table(&source)
        .await
        .map_err(|e| read_failed(e.to_string()))?;
    let wanted: std::collections::HashSet<&str> = subjects.iter().copied().collect();
    let mut parts: HashMap<String, Vec<RecordBatch>> = HashMap::new();
    let mut empty_schema = None;
    for batch in &batches {
        let projected = batch
            .project(
                &columns
                    .iter()
                    .map(|c| batch.schema().index_of(c))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| read_failed(e.to_string()))?,
            )
            .map_err(|e| read_failed(e.to_string()))?;
        empty_schema.get_or_insert_with(|| projected.schema());
        let keys = cast(
            batch.column_by_name(&key).expect("the key column"),
            &DataType::Utf8,
        )
        .map_err(|e| read_failed(e.to_string()))?;
        let keys = keys
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("cast to Utf8");
        let mut rows: HashMap<&str, Vec<u32>> = HashMap::new();
        for i in 0..keys.len() {
            if keys.is_valid(i) && wanted.contains(keys.value(i)) {
                rows.entry(keys.value(i)).or_default().push(i as u32);
            }
        }
        for (subject, indices) in rows {
            let part = take_record_batch(&projected, &UInt32Array::from(indices))
                .map_err(|e| read_failed(e.to_string()))?;
            parts.entry(subject.to_string()).or_default().push(part);
        }
    }
    let schema = match empty_schema {
        Some(schema) => schema,
        None => Arc::new(
            source
                .schema
                .as_ref()
                .expect("catalog tables carry their schema")
                .project(
                    &columns
                        .iter()
                        .filter_map(|c| source.schema.as_ref()?.index_of(c).ok())
                        .collect::<Vec<_>>(),
                )
                .map_err(|e| read_failed(e.to_string()))?,
        ),
    };
    let encode = |schema, batches: &[RecordBatch]| {
        crate::arrow_ipc::encode(schema, batches).map_err(|e| read_failed(e.to_string()))
    };
    let mut by_subject = HashMap::new();
    for (subject, batches) in parts {
        by_subject.insert(subject, encode(&schema, &batches)?);
    }
    Ok(SubjectRows {
        id: version.id.clone(),
        by_subject,
        empty: encode(&schema, &[])?,
    })
}

fn day(at: i64) -> i64 {
    at.div_euclid(86_400)
}

/// What taking a subject's place came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reserved {
    Taken,
    /// The institution had this subject scored for this purpose in the
    /// current period already.
    AlreadyScored,
    CapReached,
}

/// Take one subject's place, durably and before the subject runs, in one
/// write transaction: its period for (institution, purpose) when the policy
/// has `one_score_per_days`, and one from the institution's daily cap. A
/// batch dropped half-way has still charged what it ran, and concurrent
/// batches cannot both take the last place or score one subject twice.
async fn reserve(
    service: &Service,
    tenant: &str,
    subject: &str,
    policy: &ScoringPolicy,
    job_id: &str,
) -> Result<Reserved, StoreError> {
    service.store.transition(async |tx| {
        let at = now();
        if let Some(days) = policy.one_score_per_days {
            let period = at.div_euclid(86_400 * i64::from(days));
            let inserted = sqlx::query(
                "INSERT INTO scoring_subject_periods (tenant, purpose, subject, period, job_id, scored_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(tenant)
            .bind(&policy.purpose)
            .bind(subject)
            .bind(period)
            .bind(job_id)
            .bind(at)
            .execute(tx.conn())
            .await?;
            if inserted.rows_affected() == 0 {
                return Ok(Reserved::AlreadyScored);
            }
        }
        let today = day(at);
        let used: Option<i64> =
            sqlx::query_scalar("SELECT scored FROM scoring_usage WHERE tenant = ? AND day = ?")
                .bind(tenant)
                .bind(today)
                .fetch_optional(tx.conn())
                .await?;
        if policy
            .daily_cap
            .is_some_and(|cap| used.unwrap_or(0) as u64 >= cap)
        {
            // Dropping the transaction undoes the period's row too.
            return Ok(Reserved::CapReached);
        }
        if used.is_some() {
            sqlx::query("UPDATE scoring_usage SET scored = scored + 1 WHERE tenant = ? AND day = ?")
                .bind(tenant)
                .bind(today)
                .execute(tx.conn())
                .await?;
        } else {
            sqlx::query("INSERT INTO scoring_usage (tenant, day, scored) VALUES (?, ?, 1)")
                .bind(tenant)
                .bind(today)
                .execute(tx.conn())
                .await?;
        }
        Ok(Reserved::Taken)
    }).await
}

/// Take up to `wanted` subjects from `tenant`'s per-minute bucket (a
/// minute's worth of burst, refilled continuously), in the store: durable
/// across restarts and one transaction at a time. Returns how many.
async fn take_rate(
    service: &Service,
    tenant: &str,
    per_minute: u32,
    wanted: u64,
) -> Result<u64, StoreError> {
    let now_ms = crate::rate::now_ms();
    service.store.transition(async |tx| {
        let stored: Option<(f64, i64)> =
            sqlx::query_as("SELECT tokens, at_ms FROM scoring_rate WHERE tenant = ?")
                .bind(tenant)
                .fetch_optional(tx.conn())
                .await?;
        let mut bucket = match stored {
            Some((tokens, at_ms)) => crate::rate::Bucket { tokens, at_ms }.at(per_minute, now_ms),
            None => crate::rate::Bucket::full(per_minute, now_ms),
        };
        let granted = bucket.take(wanted);
        sqlx::query(
            "INSERT INTO scoring_rate (tenant, tokens, at_ms) VALUES (?, ?, ?) ON CONFLICT (tenant) DO UPDATE SET tokens = excluded.tokens, at_ms = excluded.at_ms",
        )
        .bind(tenant)
        .bind(bucket.tokens)
        .bind(bucket.at_ms)
        .execute(tx.conn())
        .await?;
        Ok(granted)
    }).await
}

/// How the queue steers a batch: the job id it registered for
/// cancellation, and the flag a cancel request sets. Subjects not yet
/// started when the flag is seen end `cancelled`; the ones scored stay
/// scored (they were charged) and are released.
#[derive(Debug, Clone, Default)]
pub struct Control {
    pub job_id: Option<String>,
    pub cancelled: Arc<std::sync::atomic::AtomicBool>,
}

/// Score a batch of subjects for `submitter`'s institution.
pub async fn score(
    service: &Service,
    submitter: &Submitter,
    request: ScoreRequest,
    control: Control,
) -> Result<ScoreBatch, ServiceError> {
    if request.subjects.is_empty() || request.subjects.len() > MAX_SUBJECTS {
        return Err(ServiceError::Scoring(ScoringProblem::BatchSize {
            max: MAX_SUBJECTS,
        }));
    }
    // One subject twice in a batch would be scored twice by one module:
    // refused, like any request that asks for more than one score a subject.
    let mut seen = std::collections::HashSet::with_capacity(request.subjects.len());
    if let Some(repeated) = request.subjects.iter().find(|s| !seen.insert(s.as_str())) {
        return Err(ServiceError::Scoring(ScoringProblem::Repeated(
            repeated.chars().take(64).collect(),
        )));
    }
    let policy = policies(service)?
        .into_iter()
        .find(|p| p.name == request.policy && p.institutions.contains(&submitter.tenant))
        .ok_or_else(|| ServiceError::NoAccess(format!("scoring policy {}", request.policy)))?;
    let module = service
        .tenant_module(&submitter.tenant, &request.module, World::Scorer, "scoring")
        .await?;
    let dataset_policies = service.policies.current();
    let mut versions = Vec::new();
    for dataset in &policy.datasets {
        let version = service.catalog.get(&dataset.id)?;
        crate::release::bind::require_mode(&dataset_policies, &version.id, Mode::Scoring)?;
        versions.push(version);
    }
    // Only a module an administrator approved, with exactly the approved
    // parameters, for this policy and institution.
    let params = approvals::params_text(&request.params);
    if !approvals::is_approved(
        &service.store,
        &policy.name,
        &submitter.tenant,
        &module.hash,
        &approvals::params_sha256(&params),
    )
    .await?
    {
        return Err(ServiceError::NotApproved {
            module: module.hash.clone(),
            policy: policy.name.clone(),
        });
    }

    // Authorisations first; data is read only for authorised subjects.
    let at = now();
    let covered = policy.dataset_ids();
    let mut authorised = Vec::with_capacity(request.subjects.len());
    for subject in &request.subjects {
        authorised.push(
            authorisations::is_authorised(
                &service.store,
                subject,
                &submitter.tenant,
                &policy.purpose,
                &covered,
                at,
            )
            .await?,
        );
    }
    let wanted: Vec<&str> = request
        .subjects
        .iter()
        .zip(&authorised)
        .filter(|(_, ok)| **ok)
        .map(|(s, _)| s.as_str())
        .collect();
    let mut tables = Vec::new();
    for (version, dataset) in versions.iter().zip(&policy.datasets) {
        tables.push(load_rows(version, &dataset.columns, &wanted).await?);
    }

    let job = jobs::NewJob {
        id: control.job_id.clone().unwrap_or_else(jobs::new_job_id),
        principal: submitter.tenant.clone(),
        module_sha256: module.hash.clone(),
        world: module.world.to_string(),
        mode: "scoring".into(),
        datasets: versions
            .iter()
            .map(|v| DatasetRef {
                id: v.id.clone(),
                version: v.hash.clone(),
            })
            .collect(),
        policy_sha256: Some(policy.hash.clone()),
        params: params.clone(),
        limits: Limits::default(),
    };
    jobs::submit(&service.store, &job, &submitter.actor).await?;
    jobs::start(&service.store, &job.id).await?;

    // The rate is taken for the whole batch at once, so concurrent batches
    // of one institution share it.
    let rate_left = match policy.per_minute {
        Some(per_minute) => {
            Some(take_rate(service, &submitter.tenant, per_minute, wanted.len() as u64).await?)
        }
        None => None,
    };
    let mut results = Vec::with_capacity(request.subjects.len());
    let mut outputs = Vec::new();
    let mut attempted = 0u64;
    let mut failures = Vec::new();
    for (index, (subject, ok)) in request.subjects.iter().zip(&authorised).enumerate() {
        if !ok {
            results.push(SubjectScore::unscored(subject, "not-authorised"));
            continue;
        }
        let stop = if control.cancelled.load(std::sync::atomic::Ordering::SeqCst) {
            Some("cancelled")
        } else if rate_left.is_some_and(|rate| attempted >= rate) {
            Some("rate-limited")
        } else {
            match reserve(service, &submitter.tenant, subject, &policy, &job.id).await? {
                Reserved::Taken => None,
                Reserved::AlreadyScored => {
                    results.push(SubjectScore::unscored(subject, "already-scored"));
                    continue;
                }
                Reserved::CapReached => Some("cap-reached"),
            }
        };
        if let Some(stop) = stop {
            results.extend(
                request.subjects[index..]
                    .iter()
                    .zip(&authorised[index..])
                    .map(|(s, ok)| {
                        SubjectScore::unscored(s, if *ok { stop } else { "not-authorised" })
                    }),
            );
            break;
        }
        attempted += 1;
        let rows = tables
            .iter()
            .map(|t| {
                (
                    t.id.clone(),
                    t.by_subject.get(subject).unwrap_or(&t.empty).clone(),
                )
            })
            .collect();
        // A fresh instance per subject: nothing carries over between them.
        let mut env = JobEnv::new(format!("{}-{index}", job.id));
        env.limits = Limits::default();
        let execution = service
            .sandbox
            .run(
                &module,
                &env,
                GuestCall::Score {
                    rows,
                    params: params.clone(),
                },
            )
            .await;
        let released = match (&execution.category, &execution.returned) {
            (Category::Ok, Some(Returned::Number(n))) => policy.release(*n).ok_or("invalid-score"),
            (Category::Ok, _) => Err("invalid-score"),
            (category, _) => Err(category.code()),
        };
        if let Err(detail) = released {
            failures.push(serde_json::json!({ "subject_index": index, "category": detail }));
        }
        let released = released.map_err(|_| "not-scored");
        let mut result = SubjectScore::unscored(subject, "scored");
        match released {
            Ok(Released::Score(value)) => {
                result.score = Some(value);
                outputs.push(Output::Value {
                    name: subject.clone(),
                    value,
                });
            }
            Ok(Released::Grade(grade)) => {
                result.grade = Some(grade.clone());
                outputs.push(Output::Grade {
                    name: subject.clone(),
                    grade,
                });
            }
            Err(code) => result.outcome = code.to_string(),
        }
        results.push(result);
    }
    if !failures.is_empty() {
        let record = serde_json::json!({ "scoring_failures": failures });
        if let Err(error) = crate::store::diagnostics::record_value(
            &service.store,
            &job.id,
            record,
            crate::store::diagnostics::Retention::default(),
        )
        .await
        {
            tracing::error!(job = %job.id, %error, "cannot store the batch's diagnostics");
        }
    }
    let category = if outputs.is_empty() {
        Category::PolicyRejected("no-score: no subject was scored".into())
    } else {
        Category::Ok
    };
    let signer = service.keys.signer()?;
    let receipt = jobs::finish(
        &service.store,
        &job.id,
        &category,
        &outputs,
        PrivacyCost::default(),
        &signer,
    )
    .await?;
    if let Some(batch) = &receipt {
        service.write_receipt(&job.id, batch)?;
    }
    if let Some(batch) = &receipt {
        let mut released = outputs.iter();
        for result in results.iter_mut().filter(|r| r.outcome == "scored") {
            let output = released.next().expect("one output per scored subject");
            result.receipt = Some(subject_receipt(batch, output, &signer));
        }
    }
    Ok(ScoreBatch {
        job_id: job.id,
        results,
        receipt,
    })
}

/// A subject's own receipt: the batch receipt's body with only this
/// subject's output, re-signed by the same key.
fn subject_receipt(batch: &Receipt, output: &Output, signer: &crate::receipt::Signer) -> Receipt {
    let mut body = batch.body.clone();
    let json = serde_json::to_value([output]).expect("outputs serialise");
    body.subject = Some(output.name().to_string());
    body.output_sha256 = canonical_hash(&json);
    body.output = Some(json);
    Receipt::sign(body, signer)
}
