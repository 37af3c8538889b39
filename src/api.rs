//! The HTTP API's wire types: request bodies, query strings and responses,
//! shared by the server's handlers (`server::routes`) and the client
//! (`client`). Neither side defines a type the other reads.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::accounts::{Role, TokenInfo};
use crate::store::jobs;

/// Every error answer: `{ "error": { "code": "…", "message": "…" } }`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, kebab-case; clients match on it.
    pub code: String,
    /// For people; may change.
    pub message: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// A name to remember the module by.
    pub name: Option<String>,
}

/// A job submission.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitJob {
    /// SHA-256 of a module the caller uploaded.
    pub module: String,
    /// The release mode: `aggregate`, `dp` or `sample-aggregate`.
    pub mode: String,
    /// Dataset ids (`id` or `id@version`).
    pub datasets: Vec<String>,
    /// Handed to the guest as JSON text.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    /// `dp` mode: the ε each query spends (within the policy's range).
    #[serde(default)]
    pub epsilon: Option<f64>,
    /// `dp` mode, instead of `epsilon`: `{"within": 50, "confidence": 0.95}`;
    /// each query spends the least ε that keeps its noise within the bound
    /// (refused when that is more than one query may spend).
    #[serde(default)]
    pub accuracy: Option<crate::dp::Accuracy>,
    /// `sample-aggregate` mode: the output's dimensions (name, range,
    /// default), the release's ε and optionally the number of blocks.
    #[serde(default)]
    pub sample_aggregate: Option<crate::dp::sample_aggregate::Spec>,
}

/// A job as its owner sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    pub id: String,
    /// `queued`, `running`, `released`, `rejected`, `failed` or `held`.
    pub state: String,
    /// The outcome category (`ok`, `timeout`, `policy-rejected: …`, …) once final.
    pub category: Option<String>,
    pub mode: String,
    pub world: String,
    pub module: String,
    #[schema(value_type = Vec<Object>)]
    pub datasets: Vec<crate::receipt::DatasetRef>,
    /// Seconds since the epoch, rounded down to [`TIME_GRAIN_SECONDS`].
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// Whether a signed receipt is available.
    pub has_receipt: bool,
}

/// Job times are shown in whole tens of seconds. A job's own duration is
/// fixed for noisy and contest modes (their release hold), but the wait in
/// the queue depends on other jobs' running times; the administrators'
/// diagnostics keep the exact figures.
pub const TIME_GRAIN_SECONDS: i64 = 10;

fn coarse(at: i64) -> i64 {
    at - at.rem_euclid(TIME_GRAIN_SECONDS)
}

impl From<&jobs::JobRecord> for JobView {
    fn from(job: &jobs::JobRecord) -> Self {
        JobView {
            id: job.id.clone(),
            state: job.state.clone(),
            category: job.category.clone(),
            mode: job.mode.clone(),
            world: job.world.clone(),
            module: job.module_sha256.clone(),
            datasets: job.datasets.clone(),
            created_at: coarse(job.created_at),
            started_at: job.started_at.map(coarse),
            finished_at: job.finished_at.map(coarse),
            has_receipt: job.receipt.is_some(),
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// At most this many (default 100, at most 1000).
    pub limit: Option<i64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Long-poll: wait up to this many seconds (at most 30) for the job to
    /// reach a final state.
    pub wait: Option<u64>,
}

/// What a released job returned.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobOutput {
    pub job_id: String,
    /// Tables (`kind = table`, Arrow IPC stream as hex) and values.
    #[schema(value_type = Vec<Object>)]
    pub outputs: Vec<crate::sandbox::Output>,
}

/// A catalog entry.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DatasetSummary {
    pub id: String,
    pub version: String,
    pub title: String,
    pub classification: String,
    pub rows: u64,
    /// Whether the caller may run jobs on it now.
    pub accessible: bool,
}

/// A dataset's dictionary and quality profile.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DatasetDetail {
    pub id: String,
    pub version: String,
    #[schema(value_type = Object)]
    pub manifest: serde_json::Value,
    #[schema(value_type = Object)]
    pub profile: serde_json::Value,
    pub accessible: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SampleQuery {
    /// Rows to generate (default 200, at most 10,000).
    pub rows: Option<usize>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGrant {
    pub tenant: String,
    pub dataset: String,
    /// Seconds since the Unix epoch.
    pub expires_at: Option<i64>,
}

/// A loaded policy file.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PolicySummary {
    /// The dataset it governs (absent for the default policy).
    pub dataset: Option<String>,
    pub file: String,
    pub sha256: String,
    pub modes: Vec<String>,
    pub min_group_size: u32,
}

/// The outcome of checking the policy directory.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PolicyCheck {
    pub ok: bool,
    /// `file:line: message`, one per problem.
    pub problems: Vec<String>,
    /// What an administrator should know (populations answered exactly
    /// and with noise, and the per-tenant rule that applies).
    #[serde(default)]
    pub notes: Vec<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Entries after this sequence number.
    pub after: Option<i64>,
    /// At most this many (default 1000, at most 10,000).
    pub limit: Option<i64>,
}

/// The verdict on the audit chain.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditVerdict {
    pub intact: bool,
    pub entries: usize,
    pub checkpoints: usize,
    /// The first broken entry and why, when not intact.
    pub broken_at: Option<i64>,
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub role: Role,
    pub tenant: String,
    /// Seconds since the Unix epoch.
    pub expires_at: Option<i64>,
}

/// A new token; `token` is shown this once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    pub token: String,
    pub info: TokenInfo,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SubjectQuery {
    /// Only this subject's authorisations.
    pub subject: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BudgetQuery {
    /// Whose budgets (administrators only; others always see their own).
    pub tenant: Option<String>,
}

/// Budget added on top of a policy's cap.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBudgetGrant {
    pub tenant: String,
    pub dataset: String,
    pub epsilon: f64,
    #[serde(default)]
    pub delta: f64,
    /// Why: kept in the audit log.
    pub reason: String,
}

/// A contest submission.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitModel {
    /// SHA-256 of the team's uploaded `model` component.
    pub module: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LeaderboardQuery {
    /// The private leaderboard (only after the close).
    #[serde(default)]
    pub private: bool,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ContestSampleQuery {
    /// Rows (1 to 10,000; default 500).
    pub rows: Option<usize>,
    /// Seed of the synthetic generator (a second seed gives a holdout).
    pub seed: Option<u64>,
}

/// The reason for a rejection; the applicant sees it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rejection {
    pub reason: String,
}

/// A review's state after a decision.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReviewState {
    /// `held` (waiting for another reviewer), `released`, `rejected` or
    /// `changes-requested`.
    pub state: String,
}
