//! `/v1/grants`: dataset access for tenants (admin).

use axum::extract::State;
use axum::http::StatusCode;

use super::{ApiJson, ApiResult};
use crate::accounts::{self, Grant};
use crate::api::NewGrant;
use crate::server::AppState;
use crate::server::auth::Admin;
use crate::server::error::{ApiError, ErrorBody};

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
