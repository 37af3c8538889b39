//! The job queue: admission (queue length, per-tenant concurrency, per-tenant
//! rate), then execution on a runtime of its own so guests never compete
//! with request handling for the server's threads.
//!
//! A job is admitted, then committed (`queued`) by the service, then waits
//! for one of `concurrency` worker slots, handed out fairly between tenants
//! (`super::fair`). Cancelling a queued job ends it
//! at once; cancelling a running one stops the guest at its next yield.
//! Shutdown stops admission, waits for in-flight jobs up to a grace period,
//! and marks what is left interrupted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::error::ApiError;
use super::metrics::Metrics;
use crate::service::{JobRequest, Service, Submitter};

/// Admission limits.
#[derive(Debug, Clone)]
pub struct QueueLimits {
    /// Jobs running at once.
    pub concurrency: usize,
    /// Jobs admitted but waiting for a worker; beyond it submissions get 429.
    pub max_queued: usize,
    /// Unfinished jobs per tenant; beyond it 429.
    pub per_tenant_jobs: usize,
    /// Submissions per tenant per minute (token bucket with a minute's
    /// burst); 0 turns the limit off.
    pub per_tenant_per_minute: u32,
}

#[derive(Default)]
struct Admission {
    queued: usize,
    per_tenant: HashMap<String, usize>,
    buckets: HashMap<String, crate::rate::Bucket>,
}

pub struct JobQueue {
    service: Arc<Service>,
    waiters: Arc<super::waiters::Waiters>,
    metrics: Arc<Metrics>,
    limits: QueueLimits,
    runtime: tokio::runtime::Handle,
    permits: Arc<super::fair::FairSlots>,
    admission: Mutex<Admission>,
    cancels: Mutex<HashMap<String, Arc<Notify>>>,
    accepting: AtomicBool,
    /// Signalled whenever an in-flight job ends (for draining).
    drained: Notify,
}

/// A running job's hold on its queue: dropping it (normally or while a
/// panic unwinds) returns the worker slot, the tenant's count and the
/// running gauge, and wakes the job's waiters.
struct Running {
    queue: Arc<JobQueue>,
    id: String,
    tenant: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.queue.metrics.running.dec();
        self.queue.forget(&self.id);
        self.queue.release(&self.tenant, false);
        // Waiters last: a client told its job ended may submit the next at
        // once, and its slot is free by then.
        self.queue.waiters.announce(&self.id);
    }
}

impl JobQueue {
    pub fn new(
        service: Arc<Service>,
        waiters: Arc<super::waiters::Waiters>,
        metrics: Arc<Metrics>,
        limits: QueueLimits,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        JobQueue {
            waiters,
            permits: super::fair::FairSlots::new(limits.concurrency.max(1)),
            service,
            metrics,
            limits,
            runtime,
            admission: Mutex::new(Admission::default()),
            cancels: Mutex::new(HashMap::new()),
            accepting: AtomicBool::new(true),
            drained: Notify::new(),
        }
    }

    fn admission(&self) -> std::sync::MutexGuard<'_, Admission> {
        self.admission.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserve a place for one job of `tenant`, or say why not.
    fn admit(&self, tenant: &str) -> Result<(), ApiError> {
        if !self.accepting.load(Ordering::SeqCst) {
            return Err(ApiError {
                retry_after: Some(5),
                ..ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "shutting-down",
                    "the server is shutting down and takes no new jobs",
                )
            });
        }
        let mut admission = self.admission();
        let per_minute = self.limits.per_tenant_per_minute;
        if per_minute > 0 {
            let now = crate::rate::now_ms();
            let bucket = admission
                .buckets
                .entry(tenant.to_string())
                .or_insert(crate::rate::Bucket::full(per_minute, now));
            *bucket = bucket.at(per_minute, now);
            if bucket.take(1) == 0 {
                let wait = bucket.seconds_to_next(per_minute);
                return Err(ApiError::too_many(
                    "rate-limited",
                    format!(
                        "at most {} job submissions a minute per tenant",
                        self.limits.per_tenant_per_minute
                    ),
                    wait,
                ));
            }
        }
        let active = admission.per_tenant.get(tenant).copied().unwrap_or(0);
        if active >= self.limits.per_tenant_jobs {
            return Err(ApiError::too_many(
                "too-many-jobs",
                format!(
                    "at most {} unfinished jobs per tenant",
                    self.limits.per_tenant_jobs
                ),
                1,
            ));
        }
        if admission.queued >= self.limits.max_queued {
            return Err(ApiError::too_many(
                "queue-full",
                format!("the queue is full ({} jobs waiting)", admission.queued),
                1,
            ));
        }
        admission.queued += 1;
        *admission.per_tenant.entry(tenant.to_string()).or_default() += 1;
        self.metrics.queue_depth.set(admission.queued as i64);
        Ok(())
    }

    fn started(&self) {
        let mut admission = self.admission();
        admission.queued -= 1;
        self.metrics.queue_depth.set(admission.queued as i64);
    }

    fn release(&self, tenant: &str, still_queued: bool) {
        let mut admission = self.admission();
        if still_queued {
            admission.queued -= 1;
            self.metrics.queue_depth.set(admission.queued as i64);
        }
        if let Some(count) = admission.per_tenant.get_mut(tenant) {
            *count -= 1;
            if *count == 0 {
                admission.per_tenant.remove(tenant);
            }
        }
        drop(admission);
        self.drained.notify_waiters();
    }

    /// Jobs admitted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.admission().per_tenant.values().sum()
    }

    /// Admit, commit and schedule a job; returns its id once it is durable.
    pub async fn submit(
        self: &Arc<Self>,
        submitter: &Submitter,
        request: JobRequest,
    ) -> Result<String, ApiError> {
        if let Err(error) = self.admit(&submitter.tenant) {
            self.metrics.admission_refused(error.code);
            return Err(error);
        }
        let job = match self.service.submit(submitter, request).await {
            Ok(job) => job,
            Err(error) => {
                self.release(&submitter.tenant, true);
                return Err(error.into());
            }
        };
        let id = job.id.clone();
        let cancel = Arc::new(Notify::new());
        self.cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), Arc::clone(&cancel));
        let queue = Arc::clone(self);
        self.runtime.spawn(async move {
            let tenant = job.tenant.clone();
            let id = job.id.clone();
            let mode = job.mode.clone();
            let permit = tokio::select! {
                permit = queue.permits.acquire(&tenant) => Some(permit),
                () = cancel.notified() => None,
            };
            let Some(permit) = permit else {
                // Cancelled while queued: the cancel request ended the job.
                queue.forget(&id);
                queue.release(&tenant, true);
                return;
            };
            queue.started();
            queue.metrics.running.inc();
            // From here the slot, the tenant's count and the metrics are
            // given back on every path out, a panic included.
            let _running = Running {
                queue: Arc::clone(&queue),
                id: id.clone(),
                tenant,
            };
            // A job waiting for its release time gives its worker back.
            let permit = std::sync::Mutex::new(Some(permit));
            let executed = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
                queue.service.execute(job, cancel.notified(), || {
                    drop(permit.lock().unwrap_or_else(|e| e.into_inner()).take());
                }),
            ))
            .await;
            drop(permit);
            match executed {
                Ok(Ok(result)) => queue.metrics.job_finished(&mode, &result.execution),
                Ok(Err(crate::service::ServiceError::Store(
                    crate::store::StoreError::WrongState { .. },
                ))) => {} // cancelled or interrupted meanwhile
                Ok(Err(error)) => tracing::error!(job = %id, %error, "job failed in the host"),
                Err(_) => {
                    tracing::error!(job = %id, "the host panicked running the job");
                    if let Err(error) = queue.service.fail_internal(&id).await {
                        tracing::error!(job = %id, %error, "cannot end the panicked job");
                    }
                }
            }
        });
        Ok(id)
    }

    /// Run a scoring batch as a job of this queue: admitted like any job
    /// (queue length, the tenant's limits), run on the jobs runtime under a
    /// worker permit, drained at shutdown. The caller awaits the batch; if
    /// it goes away (a disconnect, the request timeout) the batch still runs
    /// to its end, with every subject it scored charged and recorded.
    pub async fn score(
        self: &Arc<Self>,
        submitter: &Submitter,
        request: crate::scoring::ScoreRequest,
    ) -> Result<crate::scoring::ScoreBatch, ApiError> {
        if let Err(error) = self.admit(&submitter.tenant) {
            self.metrics.admission_refused(error.code);
            return Err(error);
        }
        // Registered under its job id, so `POST /v1/jobs/{id}/cancel` stops
        // it between subjects.
        let control = crate::scoring::Control {
            job_id: Some(crate::store::jobs::new_job_id()),
            cancelled: Arc::default(),
        };
        let id = control.job_id.clone().unwrap_or_default();
        let cancel = Arc::new(Notify::new());
        self.cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), Arc::clone(&cancel));
        let flag = Arc::clone(&control.cancelled);
        let watcher = self.runtime.spawn(async move {
            cancel.notified().await;
            flag.store(true, Ordering::SeqCst);
        });
        let queue = Arc::clone(self);
        let submitter = submitter.clone();
        let task = self.runtime.spawn(async move {
            let tenant = submitter.tenant.clone();
            let permit = queue.permits.acquire(&tenant).await;
            queue.started();
            queue.metrics.running.inc();
            let _running = Running {
                queue: Arc::clone(&queue),
                id,
                tenant,
            };
            let _permit = permit;
            let batch = crate::scoring::score(&queue.service, &submitter, request, control).await;
            watcher.abort();
            batch
        });
        match task.await {
            Ok(result) => Ok(result?),
            Err(error) => {
                tracing::error!(%error, "a scoring batch panicked in the host");
                Err(ApiError::internal(std::io::Error::other(
                    "the scoring batch failed in the host",
                )))
            }
        }
    }

    fn forget(&self, id: &str) {
        self.cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Cancel a job: a queued one ends now, a running one at the guest's
    /// next yield. Returns false if the job is not in flight here.
    pub async fn cancel(&self, id: &str, actor: &str) -> Result<bool, ApiError> {
        let notify = self
            .cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned();
        let Some(notify) = notify else {
            return Ok(false);
        };
        // A queued job is ended in the store first, so it never starts; a
        // running one is stopped by the notification and ends `cancelled`.
        if self.service.cancel_queued(id, actor).await? {
            // It ended now, though its task may wait long for a slot.
            self.waiters.announce(id);
        }
        notify.notify_one();
        Ok(true)
    }

    /// Stop admitting jobs.
    pub fn close(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }

    /// Wait until no job is in flight or `grace` has passed; returns how
    /// many are still in flight.
    pub async fn drain(&self, grace: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let waiting = self.drained.notified();
            let left = self.in_flight();
            if left == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, waiting).await.is_err() {
                return self.in_flight();
            }
        }
    }
}
