//! `/v1/modules`: uploading components and listing the caller's own.

use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;

use super::{ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::api::UploadQuery;
use crate::server::AppState;
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ErrorBody};
use crate::store::modules;
use crate::store::modules::ModuleInfo;

/// Upload a WebAssembly component (the raw bytes as the body). It is
/// validated, compiled and recorded for the caller's tenant; uploading the
/// same bytes again returns the same record.
#[utoipa::path(post, path = "/v1/modules", tag = "modules",
    params(UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/wasm"),
    responses(
        (status = 201, body = ModuleInfo),
        (status = 413, body = ErrorBody, description = "larger than the module limit"),
        (status = 422, body = ErrorBody, description = "not a valid component for any world"),
    ))]
pub async fn upload_module(
    State(state): State<AppState>,
    // Authentication is checked after the body is read: answering 401 in
    // the middle of a large upload closes the connection under a client
    // that is still sending, which then sees a reset instead of the error.
    caller: Result<Caller, ApiError>,
    ApiQuery(query): ApiQuery<UploadQuery>,
    body: Bytes,
) -> ApiResult<(StatusCode, ApiJson<ModuleInfo>)> {
    let caller = caller?;
    if query.name.as_ref().is_some_and(|n| n.len() > 200) {
        return Err(ApiError::bad_request(
            "bad-query",
            "name: at most 200 bytes",
        ));
    }
    let info = state
        .service
        .upload_module(&caller.submitter(), body.to_vec(), query.name)
        .await?;
    Ok((StatusCode::CREATED, ApiJson(info)))
}

/// The caller's modules.
#[utoipa::path(get, path = "/v1/modules", tag = "modules", responses((status = 200, body = Vec<ModuleInfo>)))]
pub async fn list_modules(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<ApiJson<Vec<ModuleInfo>>> {
    Ok(ApiJson(
        modules::of_tenant(&state.service.store, &caller.0.tenant).await?,
    ))
}

/// One of the caller's modules.
#[utoipa::path(get, path = "/v1/modules/{sha256}", tag = "modules",
    params(("sha256" = String, Path, description = "hex SHA-256 of the module")),
    responses((status = 200, body = ModuleInfo), (status = 404, body = ErrorBody)))]
pub async fn show_module(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(sha256): ApiPath<String>,
) -> ApiResult<ApiJson<ModuleInfo>> {
    modules::get(&state.service.store, &caller.0.tenant, &sha256)
        .await?
        .map(ApiJson)
        .ok_or_else(|| ApiError::not_found("module"))
}
