//! `/v1/tokens`: bearer tokens (admin).

use axum::extract::State;
use axum::http::StatusCode;

use super::{ApiJson, ApiPath, ApiResult};
use crate::accounts::{self, TokenInfo};
use crate::api::{CreatedToken, NewToken};
use crate::server::AppState;
use crate::server::auth::Admin;
use crate::server::error::{ApiError, ErrorBody};

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
