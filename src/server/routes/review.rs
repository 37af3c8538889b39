//! `/v1/reviews`: held outputs and their review (admin).

use axum::extract::State;

use super::{ApiJson, ApiPath, ApiResult};
use crate::api::ReviewState;
use crate::server::AppState;
use crate::server::auth::{Admin, Caller};
use crate::server::error::ErrorBody;

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
    state.waiters.announce(&job);
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
    super::jobs::own_job(&state, &caller, &id).await?;
    Ok(ApiJson(
        crate::review::get(&state.service.store, &id, None)
            .await
            .map_err(crate::service::ServiceError::from)?,
    ))
}
