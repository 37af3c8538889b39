//! `/v1/contests`: contests, submissions, final picks, leaderboards and contest
//! samples.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::{ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::accounts::Role;
use crate::api::{ContestSampleQuery, LeaderboardQuery, SubmitModel};
use crate::server::AppState;
use crate::server::auth::{Admin, Caller};
use crate::server::error::{ApiError, ErrorBody};
use crate::service::JobRequest;

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
