//! `/healthz` and the administrators' `/metrics`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use crate::server::AppState;
use crate::server::auth::Admin;
use crate::server::error::ErrorBody;

/// Liveness: answers while jobs run.
#[utoipa::path(get, path = "/healthz", tag = "system", responses((status = 200, description = "alive")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Prometheus metrics (text exposition format), for administrators only:
/// job counts and durations per mode are timing about other tenants' jobs
/// (a dp or contest job's duration could carry a private value).
#[utoipa::path(get, path = "/metrics", tag = "system", responses((status = 200, description = "metrics", content_type = "text/plain"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn metrics(State(state): State<AppState>, _admin: Admin) -> Response {
    match crate::applications::overdue(&state.service.store).await {
        Ok(n) => {
            state.metrics.applications_overdue.set(n);
        }
        Err(error) => tracing::error!(%error, "counting overdue applications"),
    }
    if let Some(pool) = &state.workers {
        use std::sync::atomic::Ordering::Relaxed;
        for (event, count) in [
            ("started", &pool.stats.started),
            ("killed", &pool.stats.killed),
            ("crashed", &pool.stats.crashed),
        ] {
            state
                .metrics
                .workers
                .get_or_create(&crate::server::metrics::WorkerLabels {
                    event: event.into(),
                })
                .set(count.load(Relaxed) as i64);
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
