//! `/v1/jobs`: submit, list, long-poll, cancel; outputs, receipts and (admin)
//! diagnostics of the caller's own jobs.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;

use super::{ApiJson, ApiPath, ApiQuery, ApiResult, spawn_error};
use crate::api::{JobOutput, JobView, ListQuery, SubmitJob, WaitQuery};
use crate::server::AppState;
use crate::server::auth::{Admin, Caller};
use crate::server::error::{ApiError, ErrorBody};
use crate::service::JobRequest;
use crate::store::jobs;

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
pub(super) async fn own_job(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> ApiResult<jobs::JobRecord> {
    match jobs::get(&state.service.store, id).await {
        Ok(job) if job.principal == caller.0.tenant => Ok(job),
        Ok(_) | Err(crate::store::StoreError::UnknownJob(_)) => Err(ApiError::not_found("job")),
        Err(error) => Err(error.into()),
    }
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
    let mut ended = state.waiters.watch(&id);
    let deadline = tokio::time::Instant::now() + wait;
    // Re-read after registering, so an ending in between is not missed.
    job = own_job(&state, &caller, &id).await?;
    while !job.is_final() {
        match tokio::time::timeout_at(deadline, ended.changed()).await {
            Ok(Ok(())) => job = own_job(&state, &caller, &id).await?,
            _ => break,
        }
    }
    state.waiters.stop_watching(&id, ended);
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
