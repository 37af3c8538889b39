//! API errors: `{ "error": { "code": "…", "message": "…" } }` with a stable
//! code and the matching status. Internal failures are logged with their
//! detail and answered with a generic message.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::accounts::AuthError;
pub use crate::api::{ErrorBody, ErrorDetail};
use crate::catalog::CatalogError;
use crate::service::ServiceError;
use crate::store::StoreError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no such {what}"),
        )
    }

    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this operation needs the admin role",
        )
    }

    pub fn too_many(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after.max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, message)
        }
    }

    /// A failure that is ours: the detail goes to the log only.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the operator's log has the detail",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.into(),
                message: self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&seconds.to_string()).expect("digits"),
            );
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let code = match rejection {
            JsonRejection::MissingJsonContentType(_) => "unsupported-media-type",
            JsonRejection::BytesRejection(_) => "body-too-large",
            _ => "bad-json",
        };
        let status = match code {
            "unsupported-media-type" => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "body-too-large" => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, code, rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::bad_request("bad-query", rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::bad_request("bad-path", rejection.body_text())
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Store(error) => ApiError::internal(error),
            other => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", other.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::UnknownJob(_) => ApiError::not_found("job"),
            StoreError::WrongState { state, .. } => ApiError::new(
                StatusCode::CONFLICT,
                "wrong-state",
                format!("the job is {state}"),
            ),
            other => ApiError::internal(other),
        }
    }
}

impl From<CatalogError> for ApiError {
    fn from(error: CatalogError) -> Self {
        match error {
            CatalogError::UnknownDataset(_) | CatalogError::UnknownVersion { .. } => {
                ApiError::not_found("dataset")
            }
            CatalogError::Manifest(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad-manifest",
                error.to_string(),
            ),
            CatalogError::UnsupportedFormat(_) => ApiError::bad_request(
                "unsupported-format",
                "the data is not a CSV, Parquet or Arrow IPC file",
            ),
            CatalogError::Data(error) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad-data",
                format!("the data does not match its manifest: {error}"),
            ),
            other => ApiError::internal(other),
        }
    }
}

impl From<crate::contest::ContestError> for ApiError {
    fn from(error: crate::contest::ContestError) -> Self {
        use crate::contest::ContestError;
        let message = error.to_string();
        match error {
            ContestError::BadSpec(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad-contest", message)
            }
            ContestError::Unknown(_) => ApiError::new(StatusCode::NOT_FOUND, "not-found", message),
            ContestError::Exists(_) => ApiError::new(StatusCode::CONFLICT, "exists", message),
            ContestError::Closed(_) => {
                ApiError::new(StatusCode::CONFLICT, "contest-closed", message)
            }
            ContestError::StillOpen(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "contest-open", message)
            }
            ContestError::Quota(_) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota-exhausted", message)
            }
            ContestError::PickNotScored | ContestError::PicksSpent(_) => {
                ApiError::new(StatusCode::CONFLICT, "bad-pick", message)
            }
            ContestError::Store(error) => error.into(),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::Contest(error) => error.into(),
            ServiceError::Review(error) => {
                use crate::review::ReviewError;
                let message = error.to_string();
                match error {
                    ReviewError::Unknown(_) => ApiError::not_found("held output"),
                    ReviewError::OwnOutput => {
                        ApiError::new(StatusCode::FORBIDDEN, "own-output", message)
                    }
                    ReviewError::Ended(_) => {
                        ApiError::new(StatusCode::CONFLICT, "review-ended", message)
                    }
                    ReviewError::AlreadyDecided => {
                        ApiError::new(StatusCode::CONFLICT, "already-decided", message)
                    }
                    ReviewError::UnknownDecision | ReviewError::NoComment => {
                        ApiError::bad_request("bad-decision", message)
                    }
                    ReviewError::Store(error) => error.into(),
                }
            }
            ServiceError::Application(problem) => {
                ApiError::bad_request("bad-application", problem.to_string())
            }
            ServiceError::Decision(error) => {
                use crate::applications::DecisionError;
                let message = error.to_string();
                match error {
                    DecisionError::Unknown(_) => ApiError::not_found("application"),
                    DecisionError::Decided(_) => {
                        ApiError::new(StatusCode::CONFLICT, "already-decided", message)
                    }
                    DecisionError::Wider(_) => ApiError::bad_request("wider-than-asked", message),
                    DecisionError::Store(error) => error.into(),
                }
            }
            error @ ServiceError::ModeNotGranted { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "no-grant", error.to_string())
            }
            error @ ServiceError::ColumnsNotGranted { .. } => ApiError::new(
                StatusCode::FORBIDDEN,
                "column-not-granted",
                error.to_string(),
            ),
            ServiceError::Store(error) => error.into(),
            ServiceError::Catalog(error) => error.into(),
            ServiceError::UnknownModule(_) => ApiError::not_found("module"),
            // Unknown and not granted look alike, so ids are not confirmed.
            ServiceError::NoAccess(dataset) => ApiError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("no such dataset (or no access): {dataset}"),
            ),
            ServiceError::Module(intake) => match intake {
                crate::sandbox::IntakeError::Store(error) => ApiError::internal(error),
                intake => ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid-module",
                    intake.to_string(),
                ),
            },
            ServiceError::Policy(error) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad-policy",
                error
                    .0
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            error @ ServiceError::CompileBusy => {
                ApiError::too_many("compile-busy", error.to_string(), 5)
            }
            error @ ServiceError::ModeConflict { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "mode-conflict", error.to_string())
            }
            ServiceError::QueryLimit(exhausted) => {
                ApiError::too_many("query-limit", exhausted.to_string(), 3600)
            }
            error @ ServiceError::NotApproved { .. } => ApiError::new(
                StatusCode::FORBIDDEN,
                "module-not-approved",
                error.to_string(),
            ),
            error @ (ServiceError::WrongWorld { .. }
            | ServiceError::ModeNotAllowed(_)
            | ServiceError::Kind(_)
            | ServiceError::EpsilonOutOfRange { .. }
            | ServiceError::SampleAggregateDatasets
            | ServiceError::SampleAggregate(_)
            | ServiceError::NoDatasets
            | ServiceError::Params { .. }
            | ServiceError::Scoring(_)) => ApiError::bad_request("bad-job", error.to_string()),
            other => ApiError::internal(other),
        }
    }
}
