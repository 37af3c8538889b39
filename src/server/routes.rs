//! The `/v1` handlers. Each is annotated for the OpenAPI document, which
//! `utoipa-axum` builds from the same route list the router uses.
//!
//! Tenancy: modules, jobs, outputs and receipts are looked up with the
//! caller's tenant, so another tenant's object is a 404, exactly like a
//! missing one. Datasets: the catalog of open and conditional datasets is
//! visible to every principal (so they can apply for access); restricted
//! ones only to administrators and grantees; running a job needs the access
//! the service checks.

use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, Multipart, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::{Admin, Caller};
use super::error::{ApiError, ErrorBody};
use crate::accounts::{self, Grant, Role, TokenInfo};
use crate::catalog::DatasetVersion;
use crate::dataset::Classification;
use crate::service::JobRequest;
use crate::store::modules::ModuleInfo;
use crate::store::{audit, jobs, modules};

/// JSON bodies with API-shaped rejections (400 with serde's message).
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

type ApiResult<T> = Result<T, ApiError>;

fn spawn_error(error: impl std::fmt::Display) -> ApiError {
    ApiError::internal(error)
}

// ---------------------------------------------------------------- health

/// Liveness: answers while jobs run.
#[utoipa::path(get, path = "/healthz", tag = "system", responses((status = 200, description = "alive")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Prometheus metrics (text exposition format), for administrators only:
/// job counts and durations per mode are timing about other tenants' jobs
/// (a dp or contest job's duration could carry a private value).
#[utoipa::path(get, path = "/metrics", tag = "system", responses((status = 200, description = "metrics", content_type = "text/plain"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn metrics(State(state): State<AppState>, _admin: Admin) -> Response {
    match crate::applications::overdue(&state.service.store).await {
        Ok(n) => {
            state.metrics.applications_overdue.set(n);
        }
        Err(error) => tracing::error!(%error, "counting overdue applications"),
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

// ---------------------------------------------------------------- modules

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// A name to remember the module by.
    pub name: Option<String>,
}

/// Upload a WebAssembly component (the raw bytes as the body). It is
/// validated, compiled and recorded for the caller's tenant; uploading the
/// same bytes again returns the same record.
#[utoipa::path(post, path = "/v1/modules", tag = "modules",
    params(UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/wasm"),
    responses(
        (status = 201, body = ModuleInfo),
        (status = 413, body = ErrorBody, description = "larger than the module limit"),
        (status = 422, body = ErrorBody, description = "not a valid component for any world"),
    ))]
pub async fn upload_module(
    State(state): State<AppState>,
    // Authentication is checked after the body is read: answering 401 in
    // the middle of a large upload closes the connection under a client
    // that is still sending, which then sees a reset instead of the error.
    caller: Result<Caller, ApiError>,
    ApiQuery(query): ApiQuery<UploadQuery>,
    body: Bytes,
) -> ApiResult<(StatusCode, ApiJson<ModuleInfo>)> {
    let caller = caller?;
    if query.name.as_ref().is_some_and(|n| n.len() > 200) {
        return Err(ApiError::bad_request(
            "bad-query",
            "name: at most 200 bytes",
        ));
    }
    let info = state
        .service
        .upload_module(&caller.submitter(), body.to_vec(), query.name)
        .await?;
    Ok((StatusCode::CREATED, ApiJson(info)))
}

/// The caller's modules.
#[utoipa::path(get, path = "/v1/modules", tag = "modules", responses((status = 200, body = Vec<ModuleInfo>)))]
pub async fn list_modules(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<ApiJson<Vec<ModuleInfo>>> {
    Ok(ApiJson(
        modules::of_tenant(&state.service.store, &caller.0.tenant).await?,
    ))
}

/// One of the caller's modules.
#[utoipa::path(get, path = "/v1/modules/{sha256}", tag = "modules",
    params(("sha256" = String, Path, description = "hex SHA-256 of the module")),
    responses((status = 200, body = ModuleInfo), (status = 404, body = ErrorBody)))]
pub async fn show_module(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(sha256): ApiPath<String>,
) -> ApiResult<ApiJson<ModuleInfo>> {
    modules::get(&state.service.store, &caller.0.tenant, &sha256)
        .await?
        .map(ApiJson)
        .ok_or_else(|| ApiError::not_found("module"))
}

// ---------------------------------------------------------------- jobs

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

/// Submit a job. It is durable when this returns (202); poll it with
/// `GET /v1/jobs/{id}?wait=…`.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = SubmitJob,
    responses(
        (status = 202, body = JobView),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "unknown module or dataset (or no access)"),
        (status = 429, body = ErrorBody, description = "queue full, rate or concurrency limit; see Retry-After"),
        (status = 503, body = ErrorBody, description = "shutting down"),
    ))]
pub async fn submit_job(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<SubmitJob>,
) -> ApiResult<(StatusCode, ApiJson<JobView>)> {
    let params = match body.params {
        serde_json::Value::Null => "{}".to_string(),
        value => value.to_string(),
    };
    let request = JobRequest {
        module: body.module,
        mode: body.mode,
        datasets: body.datasets,
        params,
        epsilon: body.epsilon,
        accuracy: body.accuracy,
        sample_aggregate: body.sample_aggregate,
        contest: None,
    };
    let id = state.queue.submit(&caller.submitter(), request).await?;
    let job = jobs::get(&state.service.store, &id).await?;
    Ok((StatusCode::ACCEPTED, ApiJson(JobView::from(&job))))
}

/// The caller's job record, or a 404 for anyone else's.
async fn own_job(state: &AppState, caller: &Caller, id: &str) -> ApiResult<jobs::JobRecord> {
    match jobs::get(&state.service.store, id).await {
        Ok(job) if job.principal == caller.0.tenant => Ok(job),
        Ok(_) | Err(crate::store::StoreError::UnknownJob(_)) => Err(ApiError::not_found("job")),
        Err(error) => Err(error.into()),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// At most this many (default 100, at most 1000).
    pub limit: Option<i64>,
}

/// The caller's jobs, newest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(ListQuery), responses((status = 200, body = Vec<JobView>)))]
pub async fn list_jobs(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<ApiJson<Vec<JobView>>> {
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let jobs = jobs::of_principal(&state.service.store, &caller.0.tenant, limit).await?;
    Ok(ApiJson(jobs.iter().map(JobView::from).collect()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Long-poll: wait up to this many seconds (at most 30) for the job to
    /// reach a final state.
    pub wait: Option<u64>,
}

/// Longest long-poll.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// One of the caller's jobs; with `wait`, returns when it is final or the
/// wait is over.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path), WaitQuery),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody)))]
pub async fn show_job(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<WaitQuery>,
) -> ApiResult<ApiJson<JobView>> {
    let wait = Duration::from_secs(query.wait.unwrap_or(0)).min(MAX_WAIT);
    let mut job = own_job(&state, &caller, &id).await?;
    if job.is_final() || wait.is_zero() {
        return Ok(ApiJson(JobView::from(&job)));
    }
    let mut ended = state.service.watch_job(&id);
    let deadline = tokio::time::Instant::now() + wait;
    // Re-read after registering, so an ending in between is not missed.
    job = own_job(&state, &caller, &id).await?;
    while !job.is_final() {
        match tokio::time::timeout_at(deadline, ended.changed()).await {
            Ok(Ok(())) => job = own_job(&state, &caller, &id).await?,
            _ => break,
        }
    }
    state.service.stop_watching(&id, ended);
    Ok(ApiJson(JobView::from(&job)))
}

/// A job's diagnostics (admin): trap text, guest error and log, queries and
/// their engine outcomes, resource use. Kept bounded for a retention
/// period; 404 once dropped. Never shown to the job's submitter.
#[utoipa::path(get, path = "/v1/jobs/{id}/diagnostics", tag = "jobs",
    params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn job_diagnostics(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<ApiJson<serde_json::Value>> {
    match crate::store::diagnostics::get(&state.service.store, &id).await? {
        Some(diagnostics) => Ok(ApiJson(diagnostics)),
        None => Err(ApiError::not_found("diagnostics")),
    }
}

/// Cancel one of the caller's jobs (queued: at once; running: at the
/// guest's next yield). 409 when it has already ended.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path)),
    responses((status = 202, body = JobView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel_job(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<(StatusCode, ApiJson<JobView>)> {
    let job = own_job(&state, &caller, &id).await?;
    if job.is_final() || !state.queue.cancel(&id, &caller.0.actor()).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "wrong-state",
            format!("the job is {}", job.state),
        ));
    }
    let job = own_job(&state, &caller, &id).await?;
    Ok((StatusCode::ACCEPTED, ApiJson(JobView::from(&job))))
}

/// What a released job returned.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobOutput {
    pub job_id: String,
    /// Tables (`kind = table`, Arrow IPC stream as hex) and values.
    #[schema(value_type = Vec<Object>)]
    pub outputs: Vec<crate::sandbox::Output>,
}

fn not_released(job: &jobs::JobRecord) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "not-released",
        format!(
            "the job is {}{}",
            job.state,
            job.category
                .as_ref()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default()
        ),
    )
}

/// The released output of one of the caller's jobs.
#[utoipa::path(get, path = "/v1/jobs/{id}/output", tag = "jobs",
    params(("id" = String, Path)),
    responses((status = 200, body = JobOutput), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "not released")))]
pub async fn job_output(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<ApiJson<JobOutput>> {
    let job = own_job(&state, &caller, &id).await?;
    let output = job.output.clone().ok_or_else(|| not_released(&job))?;
    let outputs = serde_json::from_value(output).map_err(spawn_error)?;
    Ok(ApiJson(JobOutput {
        job_id: job.id,
        outputs,
    }))
}

/// The signed receipt of one of the caller's released jobs.
#[utoipa::path(get, path = "/v1/jobs/{id}/receipt", tag = "jobs",
    params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "not released")))]
pub async fn job_receipt(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<ApiJson<crate::receipt::Receipt>> {
    let job = own_job(&state, &caller, &id).await?;
    match job.receipt {
        Some(receipt) => Ok(ApiJson(receipt)),
        None => Err(not_released(&job)),
    }
}

// ---------------------------------------------------------------- datasets

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

async fn visible_version(
    state: &AppState,
    caller: &Caller,
    reference: &str,
) -> ApiResult<(DatasetVersion, bool)> {
    let version = state.service.catalog.get(reference)?;
    let accessible = state
        .service
        .may_read(&caller.0.tenant, caller.0.role, &version)
        .await?;
    if version.manifest.classification == Classification::Restricted && !accessible {
        return Err(ApiError::not_found("dataset"));
    }
    Ok((version, accessible))
}

/// The catalog as the caller may see it.
#[utoipa::path(get, path = "/v1/datasets", tag = "datasets", responses((status = 200, body = Vec<DatasetSummary>)))]
pub async fn list_datasets(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<ApiJson<Vec<DatasetSummary>>> {
    let mut summaries = Vec::new();
    for id in state.service.catalog.ids()? {
        let Ok((version, accessible)) = visible_version(&state, &caller, &id).await else {
            continue;
        };
        summaries.push(DatasetSummary {
            id: version.id,
            version: version.hash,
            title: version.manifest.title,
            classification: version.manifest.classification.to_string(),
            rows: version.profile.published().rows,
            accessible,
        });
    }
    Ok(ApiJson(summaries))
}

/// Dictionary and quality profile of a dataset (`id` or `id@version`).
#[utoipa::path(get, path = "/v1/datasets/{id}", tag = "datasets",
    params(("id" = String, Path)),
    responses((status = 200, body = DatasetDetail), (status = 404, body = ErrorBody)))]
pub async fn show_dataset(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<ApiJson<DatasetDetail>> {
    let (version, accessible) = visible_version(&state, &caller, &id).await?;
    // Administrators see the profile as computed; users who may use the
    // dataset (and everyone, for open data) the published one; others
    // only the dictionary.
    let profile = if caller.0.role == crate::accounts::Role::Admin {
        serde_json::to_value(&version.profile).map_err(spawn_error)?
    } else if accessible || version.manifest.classification == Classification::Open {
        serde_json::to_value(version.profile.published()).map_err(spawn_error)?
    } else {
        serde_json::Value::Null
    };
    Ok(ApiJson(DatasetDetail {
        id: version.id,
        version: version.hash,
        manifest: serde_json::to_value(&version.manifest).map_err(spawn_error)?,
        profile,
        accessible,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SampleQuery {
    /// Rows to generate (default 200, at most 10,000).
    pub rows: Option<usize>,
}

/// A synthetic sample as CSV: the declared schema and value ranges, no real
/// row. For building a guest before access is granted.
#[utoipa::path(get, path = "/v1/datasets/{id}/sample", tag = "datasets",
    params(("id" = String, Path), SampleQuery),
    responses((status = 200, content_type = "text/csv", body = String), (status = 404, body = ErrorBody)))]
pub async fn dataset_sample(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<SampleQuery>,
) -> ApiResult<Response> {
    let (version, _) = visible_version(&state, &caller, &id).await?;
    let rows = query.rows.unwrap_or(200).clamp(1, 10_000);
    let csv = crate::catalog::synthetic::sample_csv(
        &version.manifest,
        &version.profile.published(),
        rows,
        0,
    );
    Ok(([(axum::http::header::CONTENT_TYPE, "text/csv")], csv).into_response())
}

/// Register a dataset, or a new version of one (admin). Multipart form with
/// a `manifest` part (TOML) and a `data` part (CSV, Parquet or Arrow IPC;
/// its file name's extension gives the format).
#[utoipa::path(post, path = "/v1/datasets", tag = "datasets",
    request_body(content_type = "multipart/form-data", description = "parts `manifest` and `data`"),
    responses((status = 201, body = DatasetSummary), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn add_dataset(
    State(state): State<AppState>,
    Admin(admin): Admin,
    mut form: Multipart,
) -> ApiResult<(StatusCode, ApiJson<DatasetSummary>)> {
    let scratch = tempfile_dir(&state)?;
    let mut manifest = None;
    let mut data = None;
    while let Some(mut field) = form
        .next_field()
        .await
        .map_err(|e| ApiError::bad_request("bad-form", e.body_text()))?
    {
        let name = field.name().unwrap_or_default().to_string();
        let path = match name.as_str() {
            "manifest" => scratch.path().join("manifest.toml"),
            "data" => {
                let file_name = field.file_name().unwrap_or("data.csv").to_string();
                let extension = std::path::Path::new(&file_name)
                    .extension()
                    .and_then(|e| e.to_str())
                    .unwrap_or("csv")
                    .to_ascii_lowercase();
                if !extension.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(ApiError::bad_request("bad-form", "data: bad file name"));
                }
                scratch.path().join(format!("data.{extension}"))
            }
            other => {
                return Err(ApiError::bad_request(
                    "bad-form",
                    format!("unexpected part {other:?} (expected manifest and data)"),
                ));
            }
        };
        let mut file = tokio::fs::File::create(&path).await.map_err(spawn_error)?;
        while let Some(chunk) = field
            .chunk()
            .await
            .map_err(|e| ApiError::bad_request("bad-form", e.body_text()))?
        {
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
                .await
                .map_err(spawn_error)?;
        }
        tokio::io::AsyncWriteExt::flush(&mut file)
            .await
            .map_err(spawn_error)?;
        if name == "manifest" {
            manifest = Some(path);
        } else {
            data = Some(path);
        }
    }
    let (Some(manifest), Some(data)) = (manifest, data) else {
        return Err(ApiError::bad_request(
            "bad-form",
            "both a manifest and a data part are needed",
        ));
    };
    let version = state
        .service
        .add_dataset(&admin.actor(), &data, &manifest)
        .await?;
    Ok((
        StatusCode::CREATED,
        ApiJson(DatasetSummary {
            id: version.id,
            version: version.hash,
            title: version.manifest.title,
            classification: version.manifest.classification.to_string(),
            rows: version.profile.rows,
            accessible: true,
        }),
    ))
}

fn tempfile_dir(state: &AppState) -> ApiResult<tempfile::TempDir> {
    let root = state.service.data_dir.join("uploads");
    std::fs::create_dir_all(&root).map_err(spawn_error)?;
    tempfile::TempDir::new_in(&root).map_err(spawn_error)
}

// ---------------------------------------------------------------- grants

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGrant {
    pub tenant: String,
    pub dataset: String,
    /// Seconds since the Unix epoch.
    pub expires_at: Option<i64>,
}

/// Grant a tenant access to a conditional or restricted dataset (admin).
#[utoipa::path(post, path = "/v1/grants", tag = "grants", request_body = NewGrant,
    responses((status = 201, body = Grant), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn add_grant(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiJson(body): ApiJson<NewGrant>,
) -> ApiResult<(StatusCode, ApiJson<Grant>)> {
    accounts::validate_tenant(&body.tenant).map_err(|m| ApiError::bad_request("bad-tenant", m))?;
    let version = state.service.catalog.get(&body.dataset)?;
    let grant = accounts::grant(
        &state.service.store,
        &admin.actor(),
        &body.tenant,
        &version.id,
        body.expires_at,
    )
    .await?;
    Ok((StatusCode::CREATED, ApiJson(grant)))
}

/// Every grant (admin).
#[utoipa::path(get, path = "/v1/grants", tag = "grants", responses((status = 200, body = Vec<Grant>), (status = 403, body = ErrorBody)))]
pub async fn list_grants(
    State(state): State<AppState>,
    _admin: Admin,
) -> ApiResult<ApiJson<Vec<Grant>>> {
    Ok(ApiJson(accounts::list_grants(&state.service.store).await?))
}

// ---------------------------------------------------------------- policies

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

fn policy_summary(policy: &crate::policy::Policy) -> PolicySummary {
    PolicySummary {
        dataset: policy.dataset.clone(),
        file: policy
            .source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        sha256: policy.hash.clone(),
        modes: policy.modes.iter().map(|m| m.name().to_string()).collect(),
        min_group_size: policy.min_group_size,
    }
}

/// The policies in force (admin).
#[utoipa::path(get, path = "/v1/policies", tag = "policies", responses((status = 200, body = Vec<PolicySummary>), (status = 403, body = ErrorBody)))]
pub async fn list_policies(
    State(state): State<AppState>,
    _admin: Admin,
) -> ApiResult<ApiJson<Vec<PolicySummary>>> {
    let set = state.service.policies.current();
    Ok(ApiJson(
        set.policies().iter().map(|p| policy_summary(p)).collect(),
    ))
}

/// One dataset's policy in force, with its text (admin).
#[utoipa::path(get, path = "/v1/policies/{dataset}", tag = "policies",
    params(("dataset" = String, Path)),
    responses((status = 200, body = Object), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn show_policy(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(dataset): ApiPath<String>,
) -> ApiResult<ApiJson<serde_json::Value>> {
    let set = state.service.policies.current();
    let policy = set
        .policies()
        .into_iter()
        .find(|p| p.dataset.as_deref() == Some(dataset.as_str()))
        .ok_or_else(|| ApiError::not_found("policy"))?;
    let text = std::fs::read_to_string(&policy.source).unwrap_or_default();
    Ok(ApiJson(serde_json::json!({
        "summary": policy_summary(&policy),
        "text": text,
    })))
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

/// Check the policy directory as it is on disk now, without applying it
/// (admin).
#[utoipa::path(post, path = "/v1/policies/check", tag = "policies",
    responses((status = 200, body = PolicyCheck), (status = 403, body = ErrorBody)))]
pub async fn check_policies(
    State(state): State<AppState>,
    _admin: Admin,
) -> ApiResult<ApiJson<PolicyCheck>> {
    let known = state.service.catalog.ids()?;
    let (problems, notes) =
        match crate::policy::PolicySet::load(state.service.policies.dir(), Some(&known)) {
            Ok(set) => {
                let report = set.check_populations(&state.service.populations()?);
                (
                    report.problems.iter().map(|d| d.to_string()).collect(),
                    report.notes,
                )
            }
            Err(error) => (
                error.0.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                Vec::new(),
            ),
        };
    Ok(ApiJson(PolicyCheck {
        ok: problems.is_empty(),
        problems,
        notes,
    }))
}

/// Re-read the policy directory and apply it to jobs submitted from now on
/// (admin). On any error nothing changes (422 with every problem).
#[utoipa::path(post, path = "/v1/policies/reload", tag = "policies",
    responses((status = 200, body = Vec<PolicySummary>), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn reload_policies(
    State(state): State<AppState>,
    Admin(admin): Admin,
) -> ApiResult<ApiJson<Vec<PolicySummary>>> {
    state.service.reload_policies(&admin.actor()).await?;
    let set = state.service.policies.current();
    Ok(ApiJson(
        set.policies().iter().map(|p| policy_summary(p)).collect(),
    ))
}

// ---------------------------------------------------------------- keys

/// The receipt-signing public keys, current and retired (no token needed).
#[utoipa::path(get, path = "/v1/keys", tag = "keys", responses((status = 200, body = Vec<Object>)))]
pub async fn list_keys(
    State(state): State<AppState>,
) -> ApiResult<ApiJson<Vec<crate::receipt::PublicKey>>> {
    Ok(ApiJson(
        state.service.keys.public_keys().map_err(spawn_error)?,
    ))
}

// ---------------------------------------------------------------- audit

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Entries after this sequence number.
    pub after: Option<i64>,
    /// At most this many (default 1000, at most 10,000).
    pub limit: Option<i64>,
}

/// Audit entries in sequence order (admin).
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = Vec<Object>), (status = 403, body = ErrorBody)))]
pub async fn audit_entries(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> ApiResult<ApiJson<Vec<audit::AuditEntry>>> {
    let limit = query.limit.unwrap_or(1000).clamp(1, 10_000);
    Ok(ApiJson(
        audit::entries_after(&state.service.store, query.after.unwrap_or(0), limit).await?,
    ))
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

/// Walk the audit chain and check every checkpoint (admin).
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit",
    responses((status = 200, body = AuditVerdict), (status = 403, body = ErrorBody)))]
pub async fn audit_verify(
    State(state): State<AppState>,
    _admin: Admin,
) -> ApiResult<ApiJson<AuditVerdict>> {
    Ok(ApiJson(match state.service.verify_audit().await? {
        Ok((entries, checkpoints)) => AuditVerdict {
            intact: true,
            entries,
            checkpoints,
            broken_at: None,
            reason: None,
        },
        Err(broken) => AuditVerdict {
            intact: false,
            entries: 0,
            checkpoints: 0,
            broken_at: Some(broken.seq),
            reason: Some(broken.reason),
        },
    }))
}

/// Sign the current head of the audit chain (admin).
#[utoipa::path(post, path = "/v1/audit/checkpoints", tag = "audit",
    responses((status = 201, body = Object), (status = 403, body = ErrorBody)))]
pub async fn audit_checkpoint(
    State(state): State<AppState>,
    _admin: Admin,
) -> ApiResult<(StatusCode, ApiJson<audit::Checkpoint>)> {
    let signer = state.service.keys.signer().map_err(spawn_error)?;
    let checkpoint = audit::checkpoint(&state.service.store, &signer).await?;
    Ok((StatusCode::CREATED, ApiJson(checkpoint)))
}

// ---------------------------------------------------------------- tokens

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

/// Create a token (admin).
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_token(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiJson(body): ApiJson<NewToken>,
) -> ApiResult<(StatusCode, ApiJson<CreatedToken>)> {
    accounts::validate_tenant(&body.tenant).map_err(|m| ApiError::bad_request("bad-tenant", m))?;
    let (info, token) = accounts::create_token(
        &state.service.store,
        &admin.actor(),
        body.role,
        &body.tenant,
        body.expires_at,
    )
    .await?;
    Ok((StatusCode::CREATED, ApiJson(CreatedToken { token, info })))
}

/// Every token, without secrets (admin).
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", responses((status = 200, body = Vec<TokenInfo>), (status = 403, body = ErrorBody)))]
pub async fn list_tokens(
    State(state): State<AppState>,
    _admin: Admin,
) -> ApiResult<ApiJson<Vec<TokenInfo>>> {
    Ok(ApiJson(accounts::list_tokens(&state.service.store).await?))
}

/// Revoke a token at once (admin).
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn revoke_token(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    if accounts::revoke_token(&state.service.store, &admin.actor(), &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("token"))
    }
}

// ---------------------------------------------------------------- scoring

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SubjectQuery {
    /// Only this subject's authorisations.
    pub subject: Option<String>,
}

/// Record subjects' authorisations (admin); all or none.
#[utoipa::path(post, path = "/v1/authorisations", tag = "scoring",
    request_body = Vec<crate::scoring::authorisations::NewAuthorisation>,
    responses((status = 201, body = Vec<crate::scoring::authorisations::Authorisation>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn add_authorisations(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiJson(body): ApiJson<Vec<crate::scoring::authorisations::NewAuthorisation>>,
) -> ApiResult<(
    StatusCode,
    ApiJson<Vec<crate::scoring::authorisations::Authorisation>>,
)> {
    for (index, terms) in body.iter().enumerate() {
        terms.check().map_err(|m| {
            ApiError::bad_request("bad-authorisation", format!("{}: {m}", index + 1))
        })?;
    }
    let added =
        crate::scoring::authorisations::add(&state.service.store, &admin.actor(), &body).await?;
    Ok((StatusCode::CREATED, ApiJson(added)))
}

/// Import authorisations from a consents CSV (admin); all or none.
#[utoipa::path(post, path = "/v1/authorisations/import", tag = "scoring",
    request_body(content = String, content_type = "text/csv"),
    responses((status = 201, body = Vec<crate::scoring::authorisations::Authorisation>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn import_authorisations(
    State(state): State<AppState>,
    Admin(admin): Admin,
    body: String,
) -> ApiResult<(
    StatusCode,
    ApiJson<Vec<crate::scoring::authorisations::Authorisation>>,
)> {
    let terms = crate::scoring::authorisations::parse_csv(&body)
        .map_err(|m| ApiError::bad_request("bad-authorisation", m))?;
    let added =
        crate::scoring::authorisations::add(&state.service.store, &admin.actor(), &terms).await?;
    Ok((StatusCode::CREATED, ApiJson(added)))
}

/// Authorisations, all or one subject's (admin).
#[utoipa::path(get, path = "/v1/authorisations", tag = "scoring", params(SubjectQuery),
    responses((status = 200, body = Vec<crate::scoring::authorisations::Authorisation>), (status = 403, body = ErrorBody)))]
pub async fn list_authorisations(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(query): ApiQuery<SubjectQuery>,
) -> ApiResult<ApiJson<Vec<crate::scoring::authorisations::Authorisation>>> {
    Ok(ApiJson(
        crate::scoring::authorisations::list(&state.service.store, query.subject.as_deref())
            .await?,
    ))
}

/// Revoke an authorisation at once (admin).
#[utoipa::path(delete, path = "/v1/authorisations/{id}", tag = "scoring",
    params(("id" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn revoke_authorisation(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    if crate::scoring::authorisations::revoke(&state.service.store, &admin.actor(), &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("authorisation"))
    }
}

/// Approve a scorer module with its exact params for one scoring policy
/// and institution (admin, after reviewing the institution's model).
#[utoipa::path(post, path = "/v1/scoring/approvals", tag = "scoring",
    request_body = crate::scoring::approvals::NewApproval,
    responses((status = 201, body = crate::scoring::approvals::Approval), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn approve_scorer(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiJson(body): ApiJson<crate::scoring::approvals::NewApproval>,
) -> ApiResult<(StatusCode, ApiJson<crate::scoring::approvals::Approval>)> {
    accounts::validate_tenant(&body.institution)
        .map_err(|m| ApiError::bad_request("bad-approval", format!("institution: {m}")))?;
    if !crate::scoring::policies(&state.service)?
        .iter()
        .any(|p| p.name == body.policy && p.institutions.contains(&body.institution))
    {
        return Err(ApiError::bad_request(
            "bad-approval",
            "no scoring policy of that name names that institution",
        ));
    }
    if body.module.len() != 64 || !body.module.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(
            "bad-approval",
            "module: the scorer's SHA-256 in hex",
        ));
    }
    let approval =
        crate::scoring::approvals::approve(&state.service.store, &body, &admin.actor()).await?;
    Ok((StatusCode::CREATED, ApiJson(approval)))
}

/// Every scorer approval (admin).
#[utoipa::path(get, path = "/v1/scoring/approvals", tag = "scoring",
    responses((status = 200, body = Vec<crate::scoring::approvals::Approval>), (status = 403, body = ErrorBody)))]
pub async fn list_scorer_approvals(
    State(state): State<AppState>,
    _admin: Admin,
) -> ApiResult<ApiJson<Vec<crate::scoring::approvals::Approval>>> {
    Ok(ApiJson(
        crate::scoring::approvals::list(&state.service.store).await?,
    ))
}

/// Score subjects with one of the caller's `scorer` modules under a
/// scoring policy that names the caller's institution (role institution).
/// Each subject: `scored` with the bucketed score, `not-authorised` (the
/// same whether or not the subject exists), `cap-reached`, or a category.
#[utoipa::path(post, path = "/v1/scoring", tag = "scoring", request_body = crate::scoring::ScoreRequest,
    responses((status = 200, body = crate::scoring::ScoreBatch), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn score(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<crate::scoring::ScoreRequest>,
) -> ApiResult<ApiJson<crate::scoring::ScoreBatch>> {
    if caller.0.role != Role::Institution {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "scoring is for the institution role",
        ));
    }
    Ok(ApiJson(state.queue.score(&caller.submitter(), body).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BudgetQuery {
    /// Whose budgets (administrators only; others always see their own).
    pub tenant: Option<String>,
}

/// Privacy budgets (ε, δ) on every dataset with a `dp` policy: the cap
/// (policy plus grants), what was spent and what is left.
#[utoipa::path(get, path = "/v1/budgets", tag = "dp", params(BudgetQuery),
    responses((status = 200, body = Vec<crate::dp::budget::Budget>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_budgets(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<BudgetQuery>,
) -> ApiResult<ApiJson<Vec<crate::dp::budget::Budget>>> {
    let tenant = match query.tenant {
        Some(tenant) if caller.0.role == Role::Admin => tenant,
        Some(tenant) if tenant != caller.0.tenant => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "only administrators read other tenants' budgets",
            ));
        }
        _ => caller.0.tenant.clone(),
    };
    Ok(ApiJson(state.service.budgets(&tenant).await?))
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

/// Add privacy budget for a tenant on a dataset (admin; audited). Spent
/// budget is never refunded; this only raises the cap.
#[utoipa::path(post, path = "/v1/budgets/grants", tag = "dp", request_body = NewBudgetGrant,
    responses((status = 201, body = crate::dp::budget::Budget), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn grant_budget(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiJson(body): ApiJson<NewBudgetGrant>,
) -> ApiResult<(StatusCode, ApiJson<crate::dp::budget::Budget>)> {
    crate::accounts::validate_tenant(&body.tenant)
        .map_err(|m| ApiError::bad_request("bad-tenant", m))?;
    let epsilon_ok = body.epsilon.is_finite() && body.epsilon > 0.0 && body.epsilon <= 100.0;
    let delta_ok = body.delta.is_finite() && (0.0..1e-3).contains(&body.delta);
    if !epsilon_ok || !delta_ok || body.reason.trim().is_empty() {
        return Err(ApiError::bad_request(
            "bad-budget-grant",
            "epsilon: above 0, at most 100; delta: 0 to below 1e-3; a reason",
        ));
    }
    let budget = state
        .service
        .grant_budget(
            &admin.actor(),
            &body.tenant,
            &body.dataset,
            crate::dp::budget::Cost {
                epsilon: body.epsilon,
                delta: body.delta,
                rho: 0.0,
            },
            &body.reason,
        )
        .await?;
    Ok((StatusCode::CREATED, ApiJson(budget)))
}

/// Create a contest from a TOML spec (admin): dataset, label, features,
/// metric, split, open and close times, limits, release rule.
#[utoipa::path(post, path = "/v1/contests", tag = "contest",
    request_body(content = String, content_type = "application/toml"),
    responses((status = 201, body = crate::contest::ContestView), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_contest(
    State(state): State<AppState>,
    Admin(admin): Admin,
    body: String,
) -> ApiResult<(StatusCode, ApiJson<crate::contest::ContestView>)> {
    let contest = state.service.create_contest(&admin.actor(), &body).await?;
    Ok((StatusCode::CREATED, ApiJson(contest)))
}

/// Every contest (any signed-in user).
#[utoipa::path(get, path = "/v1/contests", tag = "contest",
    responses((status = 200, body = Vec<crate::contest::ContestView>), (status = 401, body = ErrorBody)))]
pub async fn list_contests(
    State(state): State<AppState>,
    _caller: Caller,
) -> ApiResult<ApiJson<Vec<crate::contest::ContestView>>> {
    Ok(ApiJson(crate::contest::list(&state.service.store).await?))
}

/// One contest (its seed only as a hash).
#[utoipa::path(get, path = "/v1/contests/{id}", tag = "contest", params(("id" = String, Path)),
    responses((status = 200, body = crate::contest::ContestView), (status = 404, body = ErrorBody)))]
pub async fn show_contest(
    State(state): State<AppState>,
    _caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<ApiJson<crate::contest::ContestView>> {
    Ok(ApiJson(
        crate::contest::view_of(&state.service.store, &id).await?,
    ))
}

/// A contest submission.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitModel {
    /// SHA-256 of the team's uploaded `model` component.
    pub module: String,
}

fn contestant(caller: &Caller) -> ApiResult<()> {
    if caller.0.role == Role::Contestant {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "contests are for the contestant role (a token of the team)",
        ))
    }
}

/// Submit a model (contestants; the team is the token's tenant). Counts
/// against the team's daily and total quota unless the host fails.
#[utoipa::path(post, path = "/v1/contests/{id}/submissions", tag = "contest", params(("id" = String, Path)),
    request_body = SubmitModel,
    responses((status = 202, body = crate::contest::SubmissionView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn submit_model(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<SubmitModel>,
) -> ApiResult<(StatusCode, ApiJson<crate::contest::SubmissionView>)> {
    contestant(&caller)?;
    let request = JobRequest {
        module: body.module,
        mode: "contest".into(),
        datasets: Vec::new(),
        params: "{}".into(),
        epsilon: None,
        accuracy: None,
        sample_aggregate: None,
        contest: Some(id.clone()),
    };
    let job = state.queue.submit(&caller.submitter(), request).await?;
    let submission = crate::contest::submissions(&state.service.store, &id, &caller.0.tenant)
        .await?
        .into_iter()
        .find(|s| s.id == job)
        .ok_or_else(|| ApiError::not_found("submission"))?;
    Ok((StatusCode::ACCEPTED, ApiJson(submission)))
}

/// The caller's team's submissions to a contest.
#[utoipa::path(get, path = "/v1/contests/{id}/submissions", tag = "contest", params(("id" = String, Path)),
    responses((status = 200, body = Vec<crate::contest::SubmissionView>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_submissions(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<ApiJson<Vec<crate::contest::SubmissionView>>> {
    contestant(&caller)?;
    crate::contest::get(&state.service.store, &id).await?;
    Ok(ApiJson(
        crate::contest::submissions(&state.service.store, &id, &caller.0.tenant).await?,
    ))
}

/// Mark one of the team's scored submissions as a final pick.
#[utoipa::path(post, path = "/v1/contests/{id}/submissions/{submission}/pick", tag = "contest",
    params(("id" = String, Path), ("submission" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn pick_submission(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, submission)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    contestant(&caller)?;
    let (spec, _) = crate::contest::get(&state.service.store, &id).await?;
    crate::contest::pick(&state.service.store, &spec, &caller.0.tenant, &submission).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LeaderboardQuery {
    /// The private leaderboard (only after the close).
    #[serde(default)]
    pub private: bool,
}

/// The public leaderboard, or after the close the private one.
#[utoipa::path(get, path = "/v1/contests/{id}/leaderboard", tag = "contest",
    params(("id" = String, Path), LeaderboardQuery),
    responses((status = 200, body = Vec<crate::contest::Standing>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn leaderboard(
    State(state): State<AppState>,
    _caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<LeaderboardQuery>,
) -> ApiResult<ApiJson<Vec<crate::contest::Standing>>> {
    let (spec, _) = crate::contest::get(&state.service.store, &id).await?;
    Ok(ApiJson(
        crate::contest::leaderboard(&state.service.store, &spec, query.private).await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ContestSampleQuery {
    /// Rows (1 to 10,000; default 500).
    pub rows: Option<usize>,
    /// Seed of the synthetic generator (a second seed gives a holdout).
    pub seed: Option<u64>,
}

/// A synthetic sample of a contest's features and label, from the
/// dictionary and profile only (no real row, labels synthetic too): for
/// the local loop `dsb dev run --contest`.
#[utoipa::path(get, path = "/v1/contests/{id}/sample", tag = "contest",
    params(("id" = String, Path), ContestSampleQuery),
    responses((status = 200, content_type = "text/csv", body = String), (status = 404, body = ErrorBody)))]
pub async fn contest_sample(
    State(state): State<AppState>,
    _caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ContestSampleQuery>,
) -> ApiResult<Response> {
    let (spec, _) = crate::contest::get(&state.service.store, &id).await?;
    let version = state.service.catalog.get(&spec.dataset)?;
    let rows = query.rows.unwrap_or(500).clamp(1, 10_000);
    // The contest dataset's dictionary and published profile only.
    let csv = crate::catalog::synthetic::sample_csv(
        &version.manifest,
        &version.profile.published(),
        rows,
        query.seed.unwrap_or(0),
    );
    let projected = crate::contest::project_csv(&csv, &spec)
        .map_err(|m| ApiError::internal(std::io::Error::other(m)))?;
    Ok(([(axum::http::header::CONTENT_TYPE, "text/csv")], projected).into_response())
}

/// A conditional dataset's data-use agreement: version, SHA-256 and text.
#[utoipa::path(get, path = "/v1/datasets/{id}/agreement", tag = "applications",
    params(("id" = String, Path)),
    responses((status = 200, body = crate::policy::Agreement), (status = 404, body = ErrorBody)))]
pub async fn dataset_agreement(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<ApiJson<crate::policy::Agreement>> {
    let (version, _) = visible_version(&state, &caller, &id).await?;
    state
        .service
        .agreement(&version.id)
        .map(ApiJson)
        .ok_or_else(|| ApiError::not_found("agreement"))
}

/// Apply for a conditional dataset, accepting its agreement.
#[utoipa::path(post, path = "/v1/applications", tag = "applications",
    request_body = crate::applications::NewApplication,
    responses((status = 201, body = crate::applications::Application), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn apply(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<crate::applications::NewApplication>,
) -> ApiResult<(StatusCode, ApiJson<crate::applications::Application>)> {
    let holidays: Vec<i64> = state
        .config
        .holidays
        .iter()
        .filter_map(|d| crate::applications::parse_day(d))
        .collect();
    let application = state
        .service
        .apply(
            &caller.submitter(),
            body,
            state.config.application_working_days,
            &holidays,
        )
        .await?;
    Ok((StatusCode::CREATED, ApiJson(application)))
}

/// Applications: all of them with deadlines and overdue flags
/// (administrators), or the caller's tenant's.
#[utoipa::path(get, path = "/v1/applications", tag = "applications",
    responses((status = 200, body = Vec<crate::applications::Application>), (status = 401, body = ErrorBody)))]
pub async fn list_applications(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<ApiJson<Vec<crate::applications::Application>>> {
    let tenant = (caller.0.role != Role::Admin).then_some(caller.0.tenant.as_str());
    Ok(ApiJson(
        crate::applications::list(&state.service.store, tenant).await?,
    ))
}

/// Approve an application (admin), optionally narrowing columns, modes
/// and term: creates the grant.
#[utoipa::path(post, path = "/v1/applications/{id}/approve", tag = "applications",
    params(("id" = String, Path)), request_body = crate::applications::Approval,
    responses((status = 200, body = crate::applications::Application), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn approve_application(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<crate::applications::Approval>,
) -> ApiResult<ApiJson<crate::applications::Application>> {
    let decided = crate::applications::approve(&state.service.store, &admin.actor(), &id, &body)
        .await
        .map_err(crate::service::ServiceError::from)?;
    Ok(ApiJson(decided))
}

/// The reason for a rejection; the applicant sees it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rejection {
    pub reason: String,
}

/// Reject an application with a reason (admin).
#[utoipa::path(post, path = "/v1/applications/{id}/reject", tag = "applications",
    params(("id" = String, Path)), request_body = Rejection,
    responses((status = 200, body = crate::applications::Application), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn reject_application(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Rejection>,
) -> ApiResult<ApiJson<crate::applications::Application>> {
    if body.reason.trim().is_empty() {
        return Err(ApiError::bad_request(
            "bad-rejection",
            "give the applicant a reason",
        ));
    }
    let decided =
        crate::applications::reject(&state.service.store, &admin.actor(), &id, &body.reason)
            .await
            .map_err(crate::service::ServiceError::from)?;
    Ok(ApiJson(decided))
}

/// Held outputs waiting for review that the caller may review (admin; the
/// caller's own are left out).
#[utoipa::path(get, path = "/v1/reviews", tag = "review",
    responses((status = 200, body = Vec<crate::review::HeldOutput>), (status = 403, body = ErrorBody)))]
pub async fn review_queue(
    State(state): State<AppState>,
    Admin(admin): Admin,
) -> ApiResult<ApiJson<Vec<crate::review::HeldOutput>>> {
    let actor = admin.actor();
    let mut list = Vec::new();
    for id in crate::review::queue(&state.service.store).await? {
        match crate::review::get(&state.service.store, &id, Some(&actor)).await {
            Ok(held) => list.push(held),
            Err(crate::review::ReviewError::OwnOutput) => {}
            Err(error) => return Err(crate::service::ServiceError::from(error).into()),
        }
    }
    Ok(ApiJson(list))
}

/// One held output with its full context (admin, not its author).
#[utoipa::path(get, path = "/v1/reviews/{job}", tag = "review", params(("job" = String, Path)),
    responses((status = 200, body = crate::review::HeldOutput), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn show_review(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiPath(job): ApiPath<String>,
) -> ApiResult<ApiJson<crate::review::HeldOutput>> {
    Ok(ApiJson(
        crate::review::get(&state.service.store, &job, Some(&admin.actor()))
            .await
            .map_err(crate::service::ServiceError::from)?,
    ))
}

/// A review's state after a decision.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReviewState {
    /// `held` (waiting for another reviewer), `released`, `rejected` or
    /// `changes-requested`.
    pub state: String,
}

/// Decide on a held output (admin, not its author): approve, reject or
/// request changes. The second approval releases it.
#[utoipa::path(post, path = "/v1/reviews/{job}", tag = "review", params(("job" = String, Path)),
    request_body = crate::review::NewDecision,
    responses((status = 200, body = ReviewState), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn decide_review(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiPath(job): ApiPath<String>,
    ApiJson(body): ApiJson<crate::review::NewDecision>,
) -> ApiResult<ApiJson<ReviewState>> {
    let new_state = state
        .service
        .review(&admin.actor(), &admin.token_id, &job, &body)
        .await?;
    state.service.announce_end(&job);
    Ok(ApiJson(ReviewState { state: new_state }))
}

/// The review of one of the caller's held jobs: state, pre-checks, and
/// once it ended the decisions with their comments.
#[utoipa::path(get, path = "/v1/jobs/{id}/review", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, body = crate::review::HeldOutput), (status = 404, body = ErrorBody)))]
pub async fn job_review(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<ApiJson<crate::review::HeldOutput>> {
    own_job(&state, &caller, &id).await?;
    Ok(ApiJson(
        crate::review::get(&state.service.store, &id, None)
            .await
            .map_err(crate::service::ServiceError::from)?,
    ))
}
