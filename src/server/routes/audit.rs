//! `/v1/audit`: entries, verification and checkpoints of the hash chain
//! (admin).

use axum::extract::State;
use axum::http::StatusCode;

use super::{ApiJson, ApiQuery, ApiResult, spawn_error};
use crate::api::{AuditQuery, AuditVerdict};
use crate::server::AppState;
use crate::server::auth::Admin;
use crate::server::error::ErrorBody;
use crate::store::audit;

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
