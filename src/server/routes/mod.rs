//! The `/v1` handlers. Each is annotated for the OpenAPI document, which
//! `utoipa-axum` builds from the same route list the router uses.
//!
//! Tenancy: modules, jobs, outputs and receipts are looked up with the
//! caller's tenant, so another tenant's object is a 404, exactly like a
//! missing one. Datasets: the catalog of open and conditional datasets is
//! visible to every principal (so they can apply for access); restricted
//! ones only to administrators and grantees; running a job needs the access
//! the service checks.

use axum::extract::{FromRequest, FromRequestParts};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::error::ApiError;

mod applications;
mod audit;
mod budgets;
mod contests;
mod datasets;
mod grants;
mod health;
mod jobs;
mod keys;
mod modules;
mod policies;
mod review;
mod scoring;
mod tokens;

pub use applications::*;
pub use audit::*;
pub use budgets::*;
pub use contests::*;
pub use datasets::*;
pub use grants::*;
pub use health::*;
pub use jobs::*;
pub use keys::*;
pub use modules::*;
pub use policies::*;
pub use review::*;
pub use scoring::*;
pub use tokens::*;

/// JSON bodies with API-shaped rejections (400 with serde's message).
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

pub(super) type ApiResult<T> = Result<T, ApiError>;

pub(super) fn spawn_error(error: impl std::fmt::Display) -> ApiError {
    ApiError::internal(error)
}
