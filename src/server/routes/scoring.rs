//! `/v1/authorisations`, `/v1/scorers`, `/v1/score`: subjects' authorisations,
//! approved scorers, and scoring through the queue.

use axum::extract::State;
use axum::http::StatusCode;

use super::{ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::accounts::{self, Role};
use crate::api::SubjectQuery;
use crate::server::AppState;
use crate::server::auth::{Admin, Caller};
use crate::server::error::{ApiError, ErrorBody};

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
