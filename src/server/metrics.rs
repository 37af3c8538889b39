//! Prometheus metrics, one registry per server (no global recorder, so
//! several servers can live in one process, as in the tests).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::sandbox::{Category, Execution};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    outcome: String,
    mode: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: String,
}

pub struct Metrics {
    registry: Registry,
    jobs: Family<JobLabels, Counter>,
    rejections: Family<CodeLabels, Counter>,
    admissions_refused: Family<CodeLabels, Counter>,
    duration: Histogram,
    instantiate: Histogram,
    pub queue_depth: Gauge,
    pub running: Gauge,
    /// Pending applications past their deadline (set at each scrape).
    pub applications_overdue: Gauge,
    /// Worker processes started, killed at their deadline, died during a
    /// call (set at each scrape from the supervisor's counters).
    pub workers: Family<WorkerLabels, Gauge>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    pub event: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("dsb");
        let jobs = Family::<JobLabels, Counter>::default();
        registry.register("jobs", "Finished jobs by outcome and mode", jobs.clone());
        let rejections = Family::<CodeLabels, Counter>::default();
        registry.register(
            "policy_rejections",
            "Jobs refused by the output policy, by rejection code",
            rejections.clone(),
        );
        let admissions_refused = Family::<CodeLabels, Counter>::default();
        registry.register(
            "admissions_refused",
            "Job submissions refused at admission (queue full, rate or concurrency limit)",
            admissions_refused.clone(),
        );
        let duration = Histogram::new(exponential_buckets(0.000_5, 2.0, 18));
        registry.register(
            "job_duration_seconds",
            "Time a job spent in the sandbox",
            duration.clone(),
        );
        let instantiate = Histogram::new(exponential_buckets(0.000_005, 2.0, 16));
        registry.register(
            "instantiation_seconds",
            "Time to instantiate a guest from its pre-linked module",
            instantiate.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Jobs accepted and waiting for a worker",
            queue_depth.clone(),
        );
        let running = Gauge::default();
        registry.register("jobs_running", "Jobs running now", running.clone());
        let applications_overdue = Gauge::default();
        registry.register(
            "applications_overdue",
            "Conditional-access applications pending past their working-day deadline",
            applications_overdue.clone(),
        );
        let workers = Family::<WorkerLabels, Gauge>::default();
        registry.register(
            "workers",
            "Worker processes: started, killed at their deadline, crashed during a call",
            workers.clone(),
        );
        Metrics {
            workers,
            registry,
            jobs,
            rejections,
            admissions_refused,
            duration,
            instantiate,
            queue_depth,
            running,
            applications_overdue,
        }
    }
}

impl Metrics {
    pub fn job_finished(&self, mode: &str, execution: &Execution) {
        self.jobs
            .get_or_create(&JobLabels {
                outcome: execution.category.code().into(),
                mode: mode.into(),
            })
            .inc();
        self.duration
            .observe(execution.diagnostics.duration.as_secs_f64());
        if !execution.diagnostics.instantiate.is_zero() {
            self.instantiate
                .observe(execution.diagnostics.instantiate.as_secs_f64());
        }
        if let Category::PolicyRejected(reason) = &execution.category {
            self.rejections
                .get_or_create(&CodeLabels {
                    code: rejection_code(reason).into(),
                })
                .inc();
        }
    }

    pub fn admission_refused(&self, code: &str) {
        self.admissions_refused
            .get_or_create(&CodeLabels { code: code.into() })
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String");
        text
    }
}

/// Policy reasons are `<code>: <detail>`; the code is a bounded label.
fn rejection_code(reason: &str) -> &str {
    match reason.split_once(": ") {
        Some((code, _)) if code.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') => code,
        _ => "other",
    }
}
