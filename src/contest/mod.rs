//! Contest mode: competitions on hidden data (the SODA open-data contest).
//!
//! An administrator creates a contest from a TOML spec (dataset, label,
//! features, metric, split, open and close times, limits, release rule).
//! The host draws a secret split seed; only its SHA-256 ever leaves. A
//! team (a contestant token's tenant) submits a `model` component: one
//! instance gets the training rows (features and label) through `train`,
//! then the public and private test rows shuffled together, without labels
//! or identifiers, through `predict`. The host clips the predictions to
//! what the metric reads (probabilities to [0, 1], values to the label's
//! declared range), scores them against the hidden labels and releases only
//! the public score, rounded to the contest's `step` and passed through the
//! release rule (the Ladder mechanism of Blum & Hardt by default: a new
//! score shows only if it beats the team's best by more than the step;
//! or plain). A released score is one of at most `range / step + 1` values
//! (201 by default: 7.65 bits). Private scores show after the close, on the
//! team's final picks (or its best public ones). Predictions, logs and
//! errors never leave; a failure the model caused is `not-scored` to the
//! team whatever it was (the detail is the administrators'). Guest failures
//! count against the quota, host failures (internal, interrupted,
//! cancelled) do not; each contest also caps submissions a day across all
//! teams.

pub mod metrics;

use std::collections::HashMap;

use datafusion::arrow::array::{Array, Float64Array, RecordBatch, StringArray, UInt32Array};
use datafusion::arrow::compute::{cast, concat_batches, take_record_batch};
use datafusion::arrow::datatypes::DataType;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;
use toml::Spanned;

pub use metrics::Metric;

use crate::dataset::{ColumnRole, DatasetSource};
use crate::sandbox::{Category, Diagnostics, GuestCall, JobEnv, LoadedModule, Returned, Sandbox};
use crate::store::{Store, StoreError, audit, now};

/// Fractions of the labelled rows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Split {
    pub train: f64,
    pub public: f64,
    pub private: f64,
}

/// How public scores are released. Both round the score to the contest's
/// `step` first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ReleaseRule {
    /// The rounded score.
    Plain,
    /// The Ladder (the default): a new score only if it beats the team's
    /// best by more than `step`; otherwise the best again.
    #[default]
    Ladder,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    id: Spanned<String>,
    title: String,
    dataset: Spanned<String>,
    label: Spanned<String>,
    features: Option<Spanned<Vec<String>>>,
    metric: Metric,
    split: Spanned<Split>,
    opens: Spanned<String>,
    closes: Spanned<String>,
    #[serde(default = "default_daily")]
    daily_limit: u32,
    #[serde(default = "default_total")]
    total_limit: u32,
    #[serde(default = "default_picks")]
    final_picks: u32,
    /// Submissions a day from all teams together.
    #[serde(default = "default_contest_daily")]
    contest_daily_limit: u32,
    #[serde(default)]
    release: ReleaseRule,
    /// The released score's step (and the Ladder's margin).
    #[serde(alias = "ladder_step")]
    step: Option<Spanned<f64>>,
    /// The label's smallest and largest values: predictions are clipped to
    /// them (required for rmse, mae and macro-f1).
    label_range: Option<Spanned<[f64; 2]>>,
    fuel: Option<u64>,
    memory_mb: Option<u64>,
    timeout_seconds: Option<u64>,
    release_every_seconds: Option<u64>,
}

fn default_daily() -> u32 {
    5
}
fn default_total() -> u32 {
    100
}
fn default_picks() -> u32 {
    2
}
fn default_contest_daily() -> u32 {
    1_000
}

/// Released scores take at most this many steps across the metric's range
/// by default: log2(201) ≈ 7.65 bits a submission at most.
const DEFAULT_STEPS: f64 = 200.0;

fn default_step() -> f64 {
    1.0 / DEFAULT_STEPS
}

/// A checked contest spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Spec {
    pub id: String,
    pub title: String,
    pub dataset: String,
    pub label: String,
    /// Empty: every column that is neither an identifier nor the label.
    pub features: Vec<String>,
    pub metric: Metric,
    pub split: Split,
    /// Seconds since the Unix epoch.
    pub opens_at: i64,
    pub closes_at: i64,
    pub daily_limit: u32,
    pub total_limit: u32,
    pub final_picks: u32,
    /// Submissions a day from all teams together.
    #[serde(default = "default_contest_daily")]
    pub contest_daily_limit: u32,
    pub release: ReleaseRule,
    /// Released scores are multiples of this; the Ladder's margin.
    #[serde(alias = "ladder_step", default = "default_step")]
    pub step: f64,
    /// Predictions are clipped to it (and to [0, 1] for probabilities).
    #[serde(default)]
    pub label_range: Option<(f64, f64)>,
    pub fuel: Option<u64>,
    pub memory_mb: Option<u64>,
    pub timeout_seconds: Option<u64>,
    /// Scores are released on a schedule from the submission's start:
    /// at the first multiple of this many seconds after the run ended.
    /// Unset: once, at the time limit (the run's duration shows nothing).
    /// Shorter periods are faster and leak at most
    /// log2(⌈limit / period⌉) bits of the run's duration a submission.
    #[serde(default)]
    pub release_every_seconds: Option<u64>,
}

/// Contest errors callers can act on.
#[derive(Debug, thiserror::Error)]
pub enum ContestError {
    #[error("{}", .0.join("\n"))]
    BadSpec(Vec<String>),
    #[error("unknown contest {0}")]
    Unknown(String),
    #[error("contest {0} already exists")]
    Exists(String),
    #[error("contest {0} is not open for submissions")]
    Closed(String),
    #[error("contest {0} is still open: private scores show after the close")]
    StillOpen(String),
    #[error("{0}")]
    Quota(String),
    #[error("{0}")]
    Pick(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn line_of(text: &str, offset: usize) -> usize {
    crate::policy::line_of(text, offset)
}

fn parse_time(text: &str) -> Option<i64> {
    humantime::parse_rfc3339(text)
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs() as i64)
}

/// Parse and check a spec; errors are `file:line: message`.
pub fn parse_spec(file: &str, text: &str) -> Result<Spec, ContestError> {
    let parsed: SpecFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(text, s.start));
        ContestError::BadSpec(vec![format!("{file}:{line}: {}", e.message())])
    })?;
    let mut problems = Vec::new();
    let mut problem = |span: std::ops::Range<usize>, message: &str| {
        let line = if span.is_empty() {
            1
        } else {
            line_of(text, span.start)
        };
        problems.push(format!("{file}:{line}: {message}"));
    };
    let id = parsed.id.get_ref();
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        problem(parsed.id.span(), "id: lower-case letters, digits and '-'");
    }
    let split = *parsed.split.get_ref();
    let parts = [split.train, split.public, split.private];
    if parts.iter().any(|p| !(p.is_finite() && *p > 0.0))
        || (parts.iter().sum::<f64>() - 1.0).abs() > 1e-9
    {
        problem(
            parsed.split.span(),
            "split: train, public and private fractions, each above 0, summing to 1",
        );
    }
    let opens = parse_time(parsed.opens.get_ref());
    let closes = parse_time(parsed.closes.get_ref());
    match (opens, closes) {
        (None, _) => problem(
            parsed.opens.span(),
            "opens: an RFC 3339 time, e.g. 2026-11-01T00:00:00Z",
        ),
        (_, None) => problem(parsed.closes.span(), "closes: an RFC 3339 time"),
        (Some(o), Some(c)) if o >= c => problem(parsed.closes.span(), "closes: after opens"),
        _ => {}
    }
    let label_range = parsed.label_range.as_ref().map(|r| {
        let [lo, hi] = *r.get_ref();
        (lo, hi)
    });
    match (&parsed.label_range, label_range) {
        (Some(span), Some((lo, hi))) if !(lo.is_finite() && hi.is_finite() && lo < hi) => problem(
            span.span(),
            "label_range: [smallest, largest], finite, smallest first",
        ),
        (None, _) if parsed.metric.needs_label_range() => problem(
            0..0,
            "label_range = [smallest, largest] is required for rmse, mae and macro-f1: predictions are clipped to it",
        ),
        _ => {}
    }
    if parsed.contest_daily_limit < parsed.daily_limit {
        problem(0..0, "contest_daily_limit at least daily_limit");
    }
    if parsed.daily_limit == 0 || parsed.total_limit < parsed.daily_limit || parsed.final_picks == 0
    {
        problem(
            0..0,
            "daily_limit at least 1, total_limit at least daily_limit, final_picks at least 1",
        );
    }
    let (low, high) = parsed.metric.score_range(label_range);
    let step = parsed
        .step
        .as_ref()
        .map_or((high - low) / DEFAULT_STEPS, |s| *s.get_ref());
    if !(step.is_finite() && step > 0.0 && step <= high - low) {
        problem(
            parsed.step.as_ref().map_or(0..0, |s| s.span()),
            "step: above 0 and at most the metric's range",
        );
    }
    if !problems.is_empty() {
        return Err(ContestError::BadSpec(problems));
    }
    Ok(Spec {
        id: parsed.id.into_inner(),
        title: parsed.title,
        dataset: parsed.dataset.into_inner(),
        label: parsed.label.into_inner(),
        features: parsed.features.map(Spanned::into_inner).unwrap_or_default(),
        metric: parsed.metric,
        split,
        opens_at: opens.expect("checked"),
        closes_at: closes.expect("checked"),
        daily_limit: parsed.daily_limit,
        total_limit: parsed.total_limit,
        final_picks: parsed.final_picks,
        contest_daily_limit: parsed.contest_daily_limit,
        release: parsed.release,
        step,
        label_range,
        fuel: parsed.fuel,
        memory_mb: parsed.memory_mb,
        timeout_seconds: parsed.timeout_seconds,
        release_every_seconds: parsed.release_every_seconds,
    })
}

impl Spec {
    /// Check the spec against its dataset's dictionary; fills in the
    /// default features.
    pub fn bind(&mut self, manifest: &crate::catalog::Manifest) -> Result<(), ContestError> {
        let column = |name: &str| manifest.columns.iter().find(|c| c.name == name);
        let mut problems = Vec::new();
        match column(&self.label) {
            Some(c) if c.role == ColumnRole::Label => {}
            _ => problems.push(format!(
                "label: {} is not a label column of {}",
                self.label, manifest.id
            )),
        }
        if self.features.is_empty() {
            self.features = manifest
                .columns
                .iter()
                .filter(|c| c.role != ColumnRole::Identifier && c.name != self.label)
                .map(|c| c.name.clone())
                .collect();
        }
        for feature in &self.features {
            match column(feature) {
                Some(c) if c.role != ColumnRole::Identifier && c.name != self.label => {}
                _ => problems.push(format!(
                    "features: {feature} is not a non-identifier column of {} other than the label",
                    manifest.id
                )),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ContestError::BadSpec(problems))
        }
    }

    /// The score on the step grid (cleaned of binary noise, so 0.505 shows
    /// as 0.505).
    fn round(&self, score: f64) -> f64 {
        let step = if self.step > 0.0 {
            self.step
        } else {
            default_step()
        };
        let stepped = (score / step).round() * step;
        (stepped * 1e9).round() / 1e9
    }

    /// Most bits one released score can carry: log2 of the number of steps
    /// in the metric's range, plus one.
    pub fn bits_per_submission(&self) -> f64 {
        let (low, high) = self.metric.score_range(self.label_range);
        ((high - low) / self.step + 1.0).log2()
    }

    /// Leaderboard order of two scores: the better one first.
    fn rank(&self, a: f64, b: f64) -> std::cmp::Ordering {
        if self.better(a, b) {
            std::cmp::Ordering::Less
        } else if self.better(b, a) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    }

    fn better(&self, a: f64, b: f64) -> bool {
        if self.metric.higher_is_better() {
            a > b
        } else {
            a < b
        }
    }
}

/// A contest as anyone may see it (never the seed).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ContestView {
    #[serde(flatten)]
    pub spec: Spec,
    /// SHA-256 of the secret split seed (it commits to the split).
    pub seed_sha256: String,
    pub open: bool,
}

/// SHA-256 of a split seed: it commits to the split without revealing it.
pub fn seed_hash(seed: &str) -> String {
    hex::encode(Sha256::digest(seed.as_bytes()))
}

/// Record a new contest with a fresh secret seed.
pub async fn create(store: &Store, spec: &Spec, actor: &str) -> Result<ContestView, ContestError> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| StoreError::Record("no system randomness".into()))?;
    let seed = hex::encode(bytes);
    let mut tx = store.begin_write().await?;
    let exists: Option<String> = sqlx::query_scalar("SELECT id FROM contests WHERE id = ?")
        .bind(&spec.id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    if exists.is_some() {
        return Err(ContestError::Exists(spec.id.clone()));
    }
    sqlx::query("INSERT INTO contests (id, spec, seed, opens_at, closes_at, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?)")
        .bind(&spec.id)
        .bind(serde_json::to_string(spec).expect("spec serialises"))
        .bind(&seed)
        .bind(spec.opens_at)
        .bind(spec.closes_at)
        .bind(now())
        .bind(actor)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    audit::append(
        &mut tx,
        actor,
        "contest.created",
        &spec.id,
        serde_json::json!({ "dataset": spec.dataset, "metric": spec.metric, "seed_sha256": seed_hash(&seed) }),
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(view(spec.clone(), &seed))
}

fn view(spec: Spec, seed: &str) -> ContestView {
    let at = now();
    ContestView {
        open: spec.opens_at <= at && at < spec.closes_at,
        spec,
        seed_sha256: seed_hash(seed),
    }
}

/// A contest and its secret seed.
pub async fn get(store: &Store, id: &str) -> Result<(Spec, String), ContestError> {
    let row = sqlx::query("SELECT spec, seed FROM contests WHERE id = ?")
        .bind(id)
        .fetch_optional(store.pool())
        .await
        .map_err(StoreError::from)?
        .ok_or_else(|| ContestError::Unknown(id.into()))?;
    let spec: Spec = serde_json::from_str(&row.get::<String, _>(0))
        .map_err(|e| StoreError::Record(e.to_string()))?;
    Ok((spec, row.get(1)))
}

pub async fn view_of(store: &Store, id: &str) -> Result<ContestView, ContestError> {
    let (spec, seed) = get(store, id).await?;
    Ok(view(spec, &seed))
}

pub async fn list(store: &Store) -> Result<Vec<ContestView>, ContestError> {
    let rows = sqlx::query("SELECT spec, seed FROM contests ORDER BY created_at, id")
        .fetch_all(store.pool())
        .await
        .map_err(StoreError::from)?;
    rows.into_iter()
        .map(|row| {
            let spec: Spec = serde_json::from_str(&row.get::<String, _>(0))
                .map_err(|e| StoreError::Record(e.to_string()))?;
            Ok(view(spec, &row.get::<String, _>(1)))
        })
        .collect()
}

/// Check the contest is open and the team has quota left; record the
/// submission (counted until shown to be the host's failure).
pub async fn admit(
    store: &Store,
    spec: &Spec,
    team: &str,
    submission: &str,
) -> Result<(), ContestError> {
    let at = now();
    if !(spec.opens_at <= at && at < spec.closes_at) {
        return Err(ContestError::Closed(spec.id.clone()));
    }
    let mut tx = store.begin_write().await?;
    let day_start = at - at.rem_euclid(86_400);
    let row = sqlx::query(
        "SELECT COUNT(*), SUM(CASE WHEN submitted_at >= ? THEN 1 ELSE 0 END) FROM contest_submissions WHERE contest_id = ? AND team = ? AND counted = 1",
    )
    .bind(day_start)
    .bind(&spec.id)
    .bind(team)
    .fetch_one(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    let total: i64 = row.get(0);
    let today: i64 = row.get::<Option<i64>, _>(1).unwrap_or(0);
    if today >= i64::from(spec.daily_limit) {
        return Err(ContestError::Quota(format!(
            "quota-exhausted: {} submissions a day; the next counts from 00:00 UTC",
            spec.daily_limit
        )));
    }
    if total >= i64::from(spec.total_limit) {
        return Err(ContestError::Quota(format!(
            "quota-exhausted: {} submissions in all",
            spec.total_limit
        )));
    }
    let contest_today: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM contest_submissions WHERE contest_id = ? AND counted = 1 AND submitted_at >= ?",
    )
    .bind(&spec.id)
    .bind(day_start)
    .fetch_one(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    if contest_today >= i64::from(spec.contest_daily_limit) {
        return Err(ContestError::Quota(format!(
            "quota-exhausted: the contest takes {} submissions a day from all teams together; the next count from 00:00 UTC",
            spec.contest_daily_limit
        )));
    }
    sqlx::query("INSERT INTO contest_submissions (id, contest_id, team, submitted_at, state, counted) VALUES (?, ?, ?, ?, 'queued', 1)")
        .bind(submission)
        .bind(&spec.id)
        .bind(team)
        .bind(at)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(())
}

/// Submissions whose job ended without the contest path recording it (a
/// crash): interrupted, not counted.
pub async fn settle_interrupted(store: &Store) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE contest_submissions SET state = 'interrupted', counted = 0, category = 'interrupted' \
         WHERE state = 'queued' AND id IN (SELECT id FROM jobs WHERE state NOT IN ('queued', 'running'))",
    )
    .execute(store.pool())
    .await?;
    Ok(done.rows_affected())
}

/// The scores of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    pub public: f64,
    pub private: f64,
}

/// Split the labelled rows with the secret seed, run the model and score
/// its predictions, clipped to what the metric reads. The diagnostics are
/// the administrators' (the detailed failure category among them).
pub async fn evaluate(
    sandbox: &Sandbox,
    module: &LoadedModule,
    env: &JobEnv,
    spec: &Spec,
    seed: &str,
    table: &DatasetSource,
    privacy_unit: &str,
) -> (Result<Scores, Category>, Diagnostics) {
    let split = match split(spec, seed, table, privacy_unit).await {
        Ok(split) => split,
        Err(error) => {
            tracing::error!(job = %env.job_id, %error, "contest split");
            return (Err(Category::Internal), Diagnostics::default());
        }
    };
    let params = serde_json::json!({ "label": spec.label, "features": spec.features }).to_string();
    let execution = sandbox
        .run(
            module,
            env,
            GuestCall::TrainPredict {
                train: split.train,
                params,
                features: split.test,
            },
        )
        .await;
    let diagnostics = execution.diagnostics;
    let predictions = match (execution.category, execution.returned) {
        (Category::Ok, Some(Returned::Vector(p))) => p,
        (Category::Ok, _) => return (Err(Category::Internal), diagnostics),
        (category, _) => return (Err(category), diagnostics),
    };
    if predictions.len() != split.labels.len() {
        return (Err(Category::WrongPredictionCount), diagnostics);
    }
    if !predictions.iter().all(|p| spec.metric.valid(*p)) {
        return (Err(Category::InvalidPrediction), diagnostics);
    }
    let predictions: Vec<f64> = predictions
        .into_iter()
        .map(|p| spec.metric.clip(p, spec.label_range))
        .collect();
    let pick = |public: bool| -> (Vec<f64>, Vec<f64>) {
        split
            .is_public
            .iter()
            .zip(predictions.iter().zip(&split.labels))
            .filter(|(p, _)| **p == public)
            .map(|(_, (prediction, label))| (*prediction, *label))
            .unzip()
    };
    let (public_predictions, public_labels) = pick(true);
    let (private_predictions, private_labels) = pick(false);
    let scores = Scores {
        public: spec.metric.score(&public_predictions, &public_labels),
        private: spec.metric.score(&private_predictions, &private_labels),
    };
    (Ok(scores), diagnostics)
}

struct SplitData {
    /// Features and label of the training rows (Arrow IPC).
    train: Vec<u8>,
    /// Features of the public and private test rows, shuffled together.
    test: Vec<u8>,
    /// Per test row: its label and whether it is public.
    labels: Vec<f64>,
    is_public: Vec<bool>,
}

/// A keyed hash of a privacy unit: the same seed gives the same split.
fn keyed(seed: &str, purpose: &str, unit: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update(seed.as_bytes())
        .chain_update([0])
        .chain_update(purpose.as_bytes())
        .chain_update([0])
        .chain_update(unit.as_bytes())
        .finalize()
        .into()
}

async fn split(
    spec: &Spec,
    seed: &str,
    table: &DatasetSource,
    privacy_unit: &str,
) -> Result<SplitData, String> {
    let (schema, batches) = crate::query::read_table(table)
        .await
        .map_err(|e| e.to_string())?;
    let all = concat_batches(&schema, &batches).map_err(|e| e.to_string())?;
    let strings = |name: &str| -> Result<StringArray, String> {
        let column = all
            .column_by_name(name)
            .ok_or_else(|| format!("no column {name}"))?;
        let array = cast(column, &DataType::Utf8).map_err(|e| e.to_string())?;
        Ok(array
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("Utf8")
            .clone())
    };
    let units = strings(privacy_unit)?;
    let labels = {
        let column = all.column_by_name(&spec.label).ok_or("no label column")?;
        let array = cast(column, &DataType::Float64).map_err(|e| e.to_string())?;
        array
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("Float64")
            .clone()
    };
    // Stratified by class for classification metrics: each class is split
    // in the same proportions, rows ordered by a keyed hash of their unit.
    let mut strata: HashMap<String, Vec<usize>> = HashMap::new();
    for row in 0..all.num_rows() {
        if units.is_null(row) || labels.is_null(row) {
            continue;
        }
        let stratum = if spec.metric.is_classification() {
            labels.value(row).round().to_string()
        } else {
            String::new()
        };
        strata.entry(stratum).or_default().push(row);
    }
    let (mut train, mut test) = (Vec::new(), Vec::new());
    let mut keys: Vec<&String> = strata.keys().collect();
    keys.sort();
    for key in keys {
        let mut rows = strata[key].clone();
        rows.sort_by_key(|r| keyed(seed, "split", units.value(*r)));
        let n = rows.len();
        let train_n = (n as f64 * spec.split.train).round() as usize;
        let public_n = (n as f64 * spec.split.public).round() as usize;
        for (i, row) in rows.into_iter().enumerate() {
            if i < train_n {
                train.push(row);
            } else {
                test.push((row, i < train_n + public_n));
            }
        }
    }
    train.sort_by_key(|r| keyed(seed, "train-order", units.value(*r)));
    test.sort_by_key(|(r, _)| keyed(seed, "test-order", units.value(*r)));
    let project = |rows: Vec<u32>, with_label: bool| -> Result<Vec<u8>, String> {
        let mut columns = spec.features.clone();
        if with_label {
            columns.push(spec.label.clone());
        }
        let indices = columns
            .iter()
            .map(|c| schema.index_of(c).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let taken: RecordBatch =
            take_record_batch(&all, &UInt32Array::from(rows)).map_err(|e| e.to_string())?;
        let projected = taken.project(&indices).map_err(|e| e.to_string())?;
        crate::arrow_ipc::encode(&projected.schema(), &[projected]).map_err(|e| e.to_string())
    };
    Ok(SplitData {
        train: project(train.iter().map(|r| *r as u32).collect(), true)?,
        labels: test.iter().map(|(r, _)| labels.value(*r)).collect(),
        is_public: test.iter().map(|(_, p)| *p).collect(),
        test: project(test.iter().map(|(r, _)| *r as u32).collect(), false)?,
    })
}

/// Record a submission's end; returns the public score to release.
pub async fn record(
    store: &Store,
    spec: &Spec,
    submission: &str,
    team: &str,
    outcome: &Result<Scores, Category>,
) -> Result<Option<f64>, StoreError> {
    let mut tx = store.begin_write().await?;
    let result = match outcome {
        Ok(scores) => {
            let best: Vec<f64> = sqlx::query_scalar(
                "SELECT public_released FROM contest_submissions WHERE contest_id = ? AND team = ? AND state = 'scored'",
            )
            .bind(&spec.id)
            .bind(team)
            .fetch_all(&mut *tx)
            .await?;
            let best = best
                .into_iter()
                .reduce(|a, b| if spec.better(a, b) { a } else { b });
            let rounded = spec.round(scores.public);
            let released = match (spec.release, best) {
                (ReleaseRule::Ladder, Some(best)) => {
                    let margin = if spec.metric.higher_is_better() {
                        rounded - best
                    } else {
                        best - rounded
                    };
                    if margin > spec.step { rounded } else { best }
                }
                _ => rounded,
            };
            sqlx::query("UPDATE contest_submissions SET state = 'scored', counted = 1, category = 'ok', public_raw = ?, private_raw = ?, public_released = ? WHERE id = ?")
                .bind(scores.public)
                .bind(scores.private)
                .bind(released)
                .bind(submission)
                .execute(&mut *tx)
                .await?;
            Some(released)
        }
        Err(category) => {
            let host = matches!(category, Category::Internal | Category::Cancelled);
            sqlx::query(
                "UPDATE contest_submissions SET state = ?, counted = ?, category = ?, category_detail = ? WHERE id = ?",
            )
            .bind(if host { "interrupted" } else { "failed" })
            .bind(i64::from(!host))
            .bind(team_category(category).code())
            .bind(category.code())
            .bind(submission)
            .execute(&mut *tx)
            .await?;
            None
        }
    };
    tx.commit().await?;
    Ok(result)
}

/// What a team is told of a failed submission. The guest chose its failure
/// after seeing the training rows (out of fuel, an error, a wrong count, a
/// NaN, …: about three bits a submission), so every failure it can cause is
/// one category, `not-scored`; the detail stays in the administrators'
/// records. Host failures (internal, cancelled) keep their own category:
/// the guest cannot choose them, and they are not charged.
pub fn team_category(category: &Category) -> Category {
    match category {
        Category::Ok | Category::Internal | Category::Cancelled => category.clone(),
        _ => Category::NotScored,
    }
}

/// A team's submission as the team sees it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SubmissionView {
    pub id: String,
    pub contest: String,
    pub team: String,
    pub submitted_at: i64,
    /// `queued`, `scored`, `failed` (counts) or `interrupted` (does not).
    pub state: String,
    pub category: Option<String>,
    pub counted: bool,
    /// The released public score (rounded, through the release rule).
    pub public_score: Option<f64>,
    pub picked: bool,
}

fn submission_view(row: &sqlx::sqlite::SqliteRow) -> SubmissionView {
    SubmissionView {
        id: row.get("id"),
        contest: row.get("contest_id"),
        team: row.get("team"),
        submitted_at: row.get("submitted_at"),
        state: row.get("state"),
        category: row.get("category"),
        counted: row.get::<i64, _>("counted") == 1,
        public_score: row.get("public_released"),
        picked: row.get::<i64, _>("picked") == 1,
    }
}

pub async fn submissions(
    store: &Store,
    contest: &str,
    team: &str,
) -> Result<Vec<SubmissionView>, StoreError> {
    let rows = sqlx::query("SELECT * FROM contest_submissions WHERE contest_id = ? AND team = ? ORDER BY submitted_at, id")
        .bind(contest)
        .bind(team)
        .fetch_all(store.pool())
        .await?;
    Ok(rows.iter().map(submission_view).collect())
}

/// Mark one of the team's scored submissions as a final pick.
pub async fn pick(
    store: &Store,
    spec: &Spec,
    team: &str,
    submission: &str,
) -> Result<(), ContestError> {
    if now() >= spec.closes_at {
        return Err(ContestError::Closed(spec.id.clone()));
    }
    let mut tx = store.begin_write().await?;
    let state: Option<String> = sqlx::query_scalar(
        "SELECT state FROM contest_submissions WHERE id = ? AND contest_id = ? AND team = ?",
    )
    .bind(submission)
    .bind(&spec.id)
    .bind(team)
    .fetch_optional(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    match state.as_deref() {
        None => return Err(ContestError::Unknown(submission.into())),
        Some("scored") => {}
        Some(_) => {
            return Err(ContestError::Pick(
                "only scored submissions can be picked".into(),
            ));
        }
    }
    let picked: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM contest_submissions WHERE contest_id = ? AND team = ? AND picked = 1 AND id != ?",
    )
    .bind(&spec.id)
    .bind(team)
    .bind(submission)
    .fetch_one(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    if picked >= i64::from(spec.final_picks) {
        return Err(ContestError::Pick(format!(
            "{} final picks already made",
            spec.final_picks
        )));
    }
    sqlx::query("UPDATE contest_submissions SET picked = 1 WHERE id = ?")
        .bind(submission)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    audit::append(
        &mut tx,
        team,
        "contest.picked",
        submission,
        serde_json::json!({ "contest": spec.id }),
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(())
}

/// One team on a leaderboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Standing {
    pub rank: usize,
    pub team: String,
    pub score: f64,
    /// When the team first reached this score.
    pub at: i64,
    pub submissions: usize,
}

/// The public leaderboard (best released public score per team, ties by
/// the earlier time), or after the close the private one (best private
/// score among the team's final picks, or its best public ones).
pub async fn leaderboard(
    store: &Store,
    spec: &Spec,
    private: bool,
) -> Result<Vec<Standing>, ContestError> {
    if private && now() < spec.closes_at {
        return Err(ContestError::StillOpen(spec.id.clone()));
    }
    let rows = sqlx::query("SELECT team, submitted_at, public_released, private_raw, picked FROM contest_submissions WHERE contest_id = ? AND state = 'scored' ORDER BY submitted_at, id")
        .bind(&spec.id)
        .fetch_all(store.pool())
        .await
        .map_err(StoreError::from)?;
    let mut by_team: HashMap<String, Vec<(i64, f64, f64, bool)>> = HashMap::new();
    for row in &rows {
        by_team.entry(row.get(0)).or_default().push((
            row.get(1),
            row.get(2),
            row.get(3),
            row.get::<i64, _>(4) == 1,
        ));
    }
    let mut standings = Vec::new();
    for (team, subs) in by_team {
        let candidates: Vec<(i64, f64)> = if private {
            let mut chosen: Vec<&(i64, f64, f64, bool)> = subs.iter().filter(|s| s.3).collect();
            if chosen.is_empty() {
                let mut by_public: Vec<&(i64, f64, f64, bool)> = subs.iter().collect();
                by_public.sort_by(|a, b| spec.rank(a.1, b.1).then(a.0.cmp(&b.0)));
                chosen = by_public
                    .into_iter()
                    .take(spec.final_picks as usize)
                    .collect();
            }
            chosen.into_iter().map(|s| (s.0, spec.round(s.2))).collect()
        } else {
            subs.iter().map(|s| (s.0, s.1)).collect()
        };
        let best = candidates
            .iter()
            .copied()
            .reduce(|a, b| if spec.better(b.1, a.1) { b } else { a })
            .expect("a team on the board has a scored submission");
        standings.push(Standing {
            rank: 0,
            team,
            score: best.1,
            at: best.0,
            submissions: subs.len(),
        });
    }
    standings.sort_by(|a, b| {
        spec.rank(a.score, b.score)
            .then(a.at.cmp(&b.at))
            .then_with(|| a.team.cmp(&b.team))
    });
    for (i, s) in standings.iter_mut().enumerate() {
        s.rank = i + 1;
    }
    Ok(standings)
}

/// Keep only a contest's feature and label columns of a CSV (the synthetic
/// sample's values contain no commas or quotes; anything else is refused).
pub fn project_csv(csv: &str, spec: &Spec) -> Result<String, String> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().ok_or("empty sample")?.split(',').collect();
    let mut wanted: Vec<usize> = Vec::new();
    for column in spec.features.iter().chain(std::iter::once(&spec.label)) {
        wanted.push(
            header
                .iter()
                .position(|h| h == column)
                .ok_or_else(|| format!("no column {column} in the sample"))?,
        );
    }
    let mut out = String::new();
    let pick = |fields: &[&str]| {
        wanted
            .iter()
            .map(|i| fields[*i])
            .collect::<Vec<_>>()
            .join(",")
    };
    out.push_str(&pick(&header));
    out.push('\n');
    for line in lines {
        if line.contains('"') {
            return Err("quoted values in the sample".into());
        }
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != header.len() {
            return Err("ragged sample row".into());
        }
        out.push_str(&pick(&fields));
        out.push('\n');
    }
    Ok(out)
}
