//! `/v1/applications` and dataset agreements: applying for conditional access
//! and deciding (admin).

use axum::extract::State;
use axum::http::StatusCode;

use super::{ApiJson, ApiPath, ApiResult};
use crate::accounts::Role;
use crate::api::Rejection;
use crate::server::AppState;
use crate::server::auth::{Admin, Caller};
use crate::server::error::{ApiError, ErrorBody};

/// A conditional dataset's data-use agreement: version, SHA-256 and text.
#[utoipa::path(get, path = "/v1/datasets/{id}/agreement", tag = "applications",
    params(("id" = String, Path)),
    responses((status = 200, body = crate::policy::Agreement), (status = 404, body = ErrorBody)))]
pub async fn dataset_agreement(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<ApiJson<crate::policy::Agreement>> {
    let (version, _) = super::datasets::visible_version(&state, &caller, &id).await?;
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
