//! `dsb serve`: the HTTP API on axum. Requests go through size, header,
//! timeout and panic guards, authenticate with bearer tokens
//! ([`auth`]), and reach the [`Service`] directly or, for jobs, through the
//! [`queue`], which runs guests on a runtime of their own.
//!
//! Configuration comes from a TOML file, then `DSB_*` environment
//! variables, then flags, each overriding the one before.

pub mod auth;
pub mod config;
pub mod error;
mod fair;
pub mod metrics;
pub mod queue;
pub mod routes;
pub mod waiters;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use config::ServerConfig;
use error::ApiError;
use metrics::Metrics;
use queue::{JobQueue, QueueLimits};

use crate::service::{Service, ServiceError};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub service: Arc<Service>,
    pub queue: Arc<JobQueue>,
    /// Long-poll waiters by job id.
    pub waiters: Arc<waiters::Waiters>,
    pub metrics: Arc<Metrics>,
    pub config: Arc<ServerConfig>,
    /// The supervisor of the worker processes, when calls run in them.
    pub workers: Option<Arc<crate::worker::WorkerPool>>,
}

/// Total header bytes a request may carry.
const MAX_HEADER_BYTES: usize = 16 << 10;

#[derive(utoipa::OpenApi)]
#[openapi(info(
    title = "datasandbox",
    description = "Data stays home, algorithms travel: upload WebAssembly components, run them next to protected data, receive vetted results with signed receipts."
))]
struct ApiDoc;

/// The router and the OpenAPI document, built from the same route list.
pub fn router(state: AppState) -> (axum::Router, utoipa::openapi::OpenApi) {
    let modules = OpenApiRouter::new()
        .routes(routes!(routes::upload_module, routes::list_modules))
        .layer(DefaultBodyLimit::max(state.config.max_module_bytes));
    let datasets_upload = OpenApiRouter::new()
        .routes(routes!(routes::add_dataset, routes::list_datasets))
        .layer(DefaultBodyLimit::max(state.config.max_dataset_bytes));
    let api = OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(routes::healthz))
        .routes(routes!(routes::metrics))
        .merge(modules)
        .routes(routes!(routes::show_module))
        .routes(routes!(routes::submit_job, routes::list_jobs))
        .routes(routes!(routes::show_job))
        .routes(routes!(routes::cancel_job))
        .routes(routes!(routes::job_output))
        .routes(routes!(routes::job_receipt))
        .merge(datasets_upload)
        .routes(routes!(routes::show_dataset))
        .routes(routes!(routes::dataset_sample))
        .routes(routes!(routes::add_grant, routes::list_grants))
        .routes(routes!(routes::list_policies))
        .routes(routes!(routes::show_policy))
        .routes(routes!(routes::check_policies))
        .routes(routes!(routes::reload_policies))
        .routes(routes!(routes::list_keys))
        .routes(routes!(routes::audit_entries))
        .routes(routes!(routes::audit_verify))
        .routes(routes!(routes::job_diagnostics))
        .routes(routes!(
            routes::approve_scorer,
            routes::list_scorer_approvals
        ))
        .routes(routes!(routes::audit_checkpoint))
        .routes(routes!(routes::create_token, routes::list_tokens))
        .routes(routes!(routes::revoke_token))
        .routes(routes!(
            routes::add_authorisations,
            routes::list_authorisations
        ))
        .routes(routes!(routes::import_authorisations))
        .routes(routes!(routes::revoke_authorisation))
        .routes(routes!(routes::score))
        .routes(routes!(routes::list_budgets))
        .routes(routes!(routes::grant_budget))
        .routes(routes!(routes::create_contest, routes::list_contests))
        .routes(routes!(routes::show_contest))
        .routes(routes!(routes::submit_model, routes::list_submissions))
        .routes(routes!(routes::pick_submission))
        .routes(routes!(routes::leaderboard))
        .routes(routes!(routes::contest_sample))
        .routes(routes!(routes::dataset_agreement))
        .routes(routes!(routes::apply, routes::list_applications))
        .routes(routes!(routes::approve_application))
        .routes(routes!(routes::reject_application))
        .routes(routes!(routes::review_queue))
        .routes(routes!(routes::show_review, routes::decide_review))
        .routes(routes!(routes::job_review));
    let (router, openapi) = api.split_for_parts();
    let document = openapi.clone();
    let router = router
        .route(
            "/v1/openapi.json",
            axum::routing::get(move || {
                let document = document.clone();
                async move { axum::Json(document) }
            }),
        )
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no-such-route", "no such route")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard_request,
        ))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal("a request handler panicked").into_response()
        }))
        .with_state(state);
    (router, openapi)
}

/// Header size and request time limits, as JSON errors.
async fn guard_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers-too-large",
            format!("request headers must total at most {MAX_HEADER_BYTES} bytes"),
        )
        .into_response();
    }
    match tokio::time::timeout(state.config.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "request-timeout",
            "the request took too long",
        )
        .into_response(),
    }
}

/// A running server.
pub struct Server {
    pub state: AppState,
    pub addr: SocketAddr,
    listener: tokio::net::TcpListener,
    router: axum::Router,
    jobs_runtime: JobsRuntime,
}

/// The runtime guests run on; shut down without blocking when dropped
/// (a tokio runtime may not be dropped inside another).
struct JobsRuntime(Option<tokio::runtime::Runtime>);

impl Drop for JobsRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Server {
    /// Open the data directory and bind the listener.
    pub async fn bind(config: ServerConfig) -> Result<Server, ServiceError> {
        let service = Arc::new(Service::open(&config.data_dir, &config.policies).await?);
        Self::bind_service(config, service).await
    }

    /// Serve an already opened service.
    pub async fn bind_service(
        config: ServerConfig,
        service: Arc<Service>,
    ) -> Result<Server, ServiceError> {
        let concurrency = config.concurrency.max(1);
        let workers = if config.workers.isolation == crate::worker::IsolationMode::Process
            && !service.sandbox.is_isolated()
        {
            let pool = Arc::new(crate::worker::WorkerPool::new(
                config.workers.clone(),
                &service.data_dir,
            )?);
            service.sandbox.isolate(Arc::clone(&pool) as _);
            Some(pool)
        } else {
            None
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(concurrency)
            .thread_name("dsb-jobs")
            .enable_all()
            .build()
            .map_err(|e| ServiceError::Io("jobs runtime".into(), e))?;
        let metrics = Arc::new(Metrics::default());
        let waiters = Arc::new(waiters::Waiters::default());
        let queue = Arc::new(JobQueue::new(
            Arc::clone(&service),
            Arc::clone(&waiters),
            Arc::clone(&metrics),
            QueueLimits {
                concurrency,
                max_queued: config.max_queued,
                per_tenant_jobs: config.per_tenant_jobs,
                per_tenant_per_minute: config.per_tenant_per_minute,
            },
            runtime.handle().clone(),
        ));
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| ServiceError::Io(config.listen.to_string().into(), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| ServiceError::Io(config.listen.to_string().into(), e))?;
        let state = AppState {
            service,
            queue,
            waiters,
            metrics,
            config: Arc::new(config),
            workers,
        };
        let (router, _) = router(state.clone());
        Ok(Server {
            state,
            addr,
            listener,
            router,
            jobs_runtime: JobsRuntime(Some(runtime)),
        })
    }

    /// The router with its state, for driving handlers without a socket
    /// (`tower::ServiceExt::oneshot`); `run` serves the same router.
    pub fn router(&self) -> axum::Router {
        self.router.clone()
    }

    /// Serve until `shutdown` completes; then stop taking jobs, let running
    /// ones finish within the grace period, and mark the rest interrupted.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServiceError> {
        let Server {
            state,
            listener,
            router,
            jobs_runtime,
            ..
        } = self;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let queue = Arc::clone(&state.queue);
        let http_stop = {
            let mut stop_rx = stop_rx.clone();
            async move {
                let _ = stop_rx.wait_for(|stopped| *stopped).await;
            }
        };
        let service = Arc::clone(&state.service);
        let grace = state.config.grace_period;
        let checkpoint_every = state.config.checkpoint_interval;
        let checkpoints = tokio::spawn(periodic_checkpoints(
            Arc::clone(&service),
            checkpoint_every,
            stop_rx,
        ));
        let serve = axum::serve(listener, router).with_graceful_shutdown(http_stop);
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: no new jobs");
            queue.close();
            let left = queue.drain(grace).await;
            if left > 0 {
                tracing::warn!(left, "grace period over; unfinished jobs are interrupted");
            }
            let _ = stop_tx.send(true);
        };
        let (served, ()) = tokio::join!(serve.into_future(), signal);
        served.map_err(|e| ServiceError::Io("serving".into(), e))?;
        let _ = checkpoints.await;
        drop(jobs_runtime);
        let interrupted = service.interrupt_unfinished().await?;
        state.waiters.announce_all();
        if interrupted > 0 {
            tracing::warn!(interrupted, "jobs marked interrupted at shutdown");
        }
        if let Ok(signer) = service.keys.signer() {
            crate::store::audit::checkpoint(&service.store, &signer).await?;
        }
        Ok(())
    }
}

/// Sign the audit head every `every` while entries are being added (0 turns
/// it off), so it can be published or anchored outside.
async fn periodic_checkpoints(
    service: Arc<Service>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if every.is_zero() {
        return;
    }
    let mut last_head = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let head = crate::store::audit::head(&service.store).await.ok();
        if head.is_some() && head != last_head {
            match service.keys.signer() {
                Ok(signer) => {
                    if let Err(error) =
                        crate::store::audit::checkpoint(&service.store, &signer).await
                    {
                        tracing::error!(%error, "periodic audit checkpoint failed");
                    }
                    last_head = crate::store::audit::head(&service.store).await.ok();
                }
                Err(error) => tracing::error!(%error, "no signing key for checkpoints"),
            }
        }
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
