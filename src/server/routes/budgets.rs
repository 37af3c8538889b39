//! `/v1/budgets`: privacy budgets per population, and (admin) adding to one.

use axum::extract::State;
use axum::http::StatusCode;

use super::{ApiJson, ApiQuery, ApiResult};
use crate::accounts::Role;
use crate::api::{BudgetQuery, NewBudgetGrant};
use crate::server::AppState;
use crate::server::auth::{Admin, Caller};
use crate::server::error::{ApiError, ErrorBody};

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
