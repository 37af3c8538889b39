//! `/v1/keys`: the receipt-signing public keys (no token needed).

use axum::extract::State;

use super::{ApiJson, ApiResult, spawn_error};
use crate::server::AppState;

/// The receipt-signing public keys, current and retired (no token needed).
#[utoipa::path(get, path = "/v1/keys", tag = "keys", responses((status = 200, body = Vec<Object>)))]
pub async fn list_keys(
    State(state): State<AppState>,
) -> ApiResult<ApiJson<Vec<crate::receipt::PublicKey>>> {
    Ok(ApiJson(
        state.service.keys.public_keys().map_err(spawn_error)?,
    ))
}
