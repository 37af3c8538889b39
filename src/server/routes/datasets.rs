//! `/v1/datasets`: the catalog as the caller may see it, published profiles,
//! synthetic samples, and (admin) registering versions.

use axum::extract::{Multipart, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::{ApiJson, ApiPath, ApiQuery, ApiResult, spawn_error};
use crate::api::{DatasetDetail, DatasetSummary, SampleQuery};
use crate::catalog::DatasetVersion;
use crate::dataset::Classification;
use crate::server::AppState;
use crate::server::auth::{Admin, Caller};
use crate::server::error::{ApiError, ErrorBody};

pub(super) async fn visible_version(
    state: &AppState,
    caller: &Caller,
    reference: &str,
) -> ApiResult<(DatasetVersion, bool)> {
    let version = state.service.catalog.get(reference)?;
    let accessible = state
        .service
        .may_read(&caller.0.tenant, caller.0.role, &version)
        .await?;
    if version.manifest.classification == Classification::Restricted && !accessible {
        return Err(ApiError::not_found("dataset"));
    }
    Ok((version, accessible))
}

/// The catalog as the caller may see it.
#[utoipa::path(get, path = "/v1/datasets", tag = "datasets", responses((status = 200, body = Vec<DatasetSummary>)))]
pub async fn list_datasets(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<ApiJson<Vec<DatasetSummary>>> {
    let mut summaries = Vec::new();
    for id in state.service.catalog.ids()? {
        let Ok((version, accessible)) = visible_version(&state, &caller, &id).await else {
            continue;
        };
        summaries.push(DatasetSummary {
            id: version.id,
            version: version.hash,
            title: version.manifest.title,
            classification: version.manifest.classification.to_string(),
            rows: version.profile.published().rows,
            accessible,
        });
    }
    Ok(ApiJson(summaries))
}

/// Dictionary and quality profile of a dataset (`id` or `id@version`).
#[utoipa::path(get, path = "/v1/datasets/{id}", tag = "datasets",
    params(("id" = String, Path)),
    responses((status = 200, body = DatasetDetail), (status = 404, body = ErrorBody)))]
pub async fn show_dataset(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<ApiJson<DatasetDetail>> {
    let (version, accessible) = visible_version(&state, &caller, &id).await?;
    // Administrators see the profile as computed; users who may use the
    // dataset (and everyone, for open data) the published one; others
    // only the dictionary.
    let profile = if caller.0.role == crate::accounts::Role::Admin {
        serde_json::to_value(&version.profile).map_err(spawn_error)?
    } else if accessible || version.manifest.classification == Classification::Open {
        serde_json::to_value(version.profile.published()).map_err(spawn_error)?
    } else {
        serde_json::Value::Null
    };
    Ok(ApiJson(DatasetDetail {
        id: version.id,
        version: version.hash,
        manifest: serde_json::to_value(&version.manifest).map_err(spawn_error)?,
        profile,
        accessible,
    }))
}

/// A synthetic sample as CSV: the declared schema and value ranges, no real
/// row. For building a guest before access is granted.
#[utoipa::path(get, path = "/v1/datasets/{id}/sample", tag = "datasets",
    params(("id" = String, Path), SampleQuery),
    responses((status = 200, content_type = "text/csv", body = String), (status = 404, body = ErrorBody)))]
pub async fn dataset_sample(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<SampleQuery>,
) -> ApiResult<Response> {
    let (version, _) = visible_version(&state, &caller, &id).await?;
    let rows = query.rows.unwrap_or(200).clamp(1, 10_000);
    let csv = crate::catalog::synthetic::sample_csv(
        &version.manifest,
        &version.profile.published(),
        rows,
        0,
    );
    Ok(([(axum::http::header::CONTENT_TYPE, "text/csv")], csv).into_response())
}

/// Register a dataset, or a new version of one (admin). Multipart form with
/// a `manifest` part (TOML) and a `data` part (CSV, Parquet or Arrow IPC;
/// its file name's extension gives the format).
#[utoipa::path(post, path = "/v1/datasets", tag = "datasets",
    request_body(content_type = "multipart/form-data", description = "parts `manifest` and `data`"),
    responses((status = 201, body = DatasetSummary), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn add_dataset(
    State(state): State<AppState>,
    Admin(admin): Admin,
    mut form: Multipart,
) -> ApiResult<(StatusCode, ApiJson<DatasetSummary>)> {
    let scratch = tempfile_dir(&state)?;
    let mut manifest = None;
    let mut data = None;
    while let Some(mut field) = form
        .next_field()
        .await
        .map_err(|e| ApiError::bad_request("bad-form", e.body_text()))?
    {
        let name = field.name().unwrap_or_default().to_string();
        let path = match name.as_str() {
            "manifest" => scratch.path().join("manifest.toml"),
            "data" => {
                let file_name = field.file_name().unwrap_or("data.csv").to_string();
                let extension = std::path::Path::new(&file_name)
                    .extension()
                    .and_then(|e| e.to_str())
                    .unwrap_or("csv")
                    .to_ascii_lowercase();
                if !extension.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(ApiError::bad_request("bad-form", "data: bad file name"));
                }
                scratch.path().join(format!("data.{extension}"))
            }
            other => {
                return Err(ApiError::bad_request(
                    "bad-form",
                    format!("unexpected part {other:?} (expected manifest and data)"),
                ));
            }
        };
        let mut file = tokio::fs::File::create(&path).await.map_err(spawn_error)?;
        while let Some(chunk) = field
            .chunk()
            .await
            .map_err(|e| ApiError::bad_request("bad-form", e.body_text()))?
        {
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
                .await
                .map_err(spawn_error)?;
        }
        tokio::io::AsyncWriteExt::flush(&mut file)
            .await
            .map_err(spawn_error)?;
        if name == "manifest" {
            manifest = Some(path);
        } else {
            data = Some(path);
        }
    }
    let (Some(manifest), Some(data)) = (manifest, data) else {
        return Err(ApiError::bad_request(
            "bad-form",
            "both a manifest and a data part are needed",
        ));
    };
    let version = state
        .service
        .add_dataset(&admin.actor(), &data, &manifest)
        .await?;
    Ok((
        StatusCode::CREATED,
        ApiJson(DatasetSummary {
            id: version.id,
            version: version.hash,
            title: version.manifest.title,
            classification: version.manifest.classification.to_string(),
            rows: version.profile.rows,
            accessible: true,
        }),
    ))
}

fn tempfile_dir(state: &AppState) -> ApiResult<tempfile::TempDir> {
    let root = state.service.data_dir.join("uploads");
    std::fs::create_dir_all(&root).map_err(spawn_error)?;
    tempfile::TempDir::new_in(&root).map_err(spawn_error)
}
