//! The embedded service: a data directory's store, keys, catalog, policies
//! and sandbox together, and the durable job loop over them:
//! submit (committed before anything runs) → start → run in the sandbox →
//! finish (release with receipt, or rejection/failure), each step with its
//! audit entry in the same transaction. The server ([`crate::server`]) and
//! the CLI's local commands both go through here.
//!
//! Data directory layout: `dsb.sqlite` (jobs, audit, tokens, modules,
//! grants), `keys/` (Ed25519, 0600), `catalog/` (dataset versions),
//! `modules/` (module bytes and compiled artifacts), `receipts/<job>.json`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::accounts::{self, Role};
use crate::catalog::{Catalog, CatalogError, DatasetVersion};
use crate::dataset::Classification;
use crate::policy::{Mode, PolicyError, PolicyStore};
use crate::receipt::{DatasetRef, KeyError, KeyRing, PrivacyCost, Receipt};
use crate::sandbox::{
    Category, Execution, IntakeError, JobEnv, Limits, LoadedModule, Sandbox, SandboxConfig,
    SandboxError,
};
use crate::store::{Store, StoreError, audit, jobs};

mod applications;
mod budgets;
mod execute;
mod submit;
mod uploads;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Worker(#[from] crate::worker::WorkerError),
    #[error("another upload of this tenant is being compiled; send the next when it has ended")]
    CompileBusy,
    #[error(transparent)]
    Module(#[from] IntakeError),
    #[error("unknown module {0}")]
    UnknownModule(String),
    #[error("module {module} is a `{world}` component; mode {mode} runs `{expected}` components")]
    WrongWorld {
        module: String,
        world: String,
        mode: String,
        expected: String,
    },
    #[error("dp: sample-aggregate runs over exactly one dataset")]
    SampleAggregateDatasets,
    #[error("dp: {0}")]
    SampleAggregate(#[from] crate::dp::sample_aggregate::SpecProblem),
    /// A dataset's query ledger is exhausted for this tenant (HTTP 429).
    #[error("query-limit: {0}")]
    QueryLimit(#[from] crate::release::ledger::Exhausted),
    #[error(transparent)]
    ModeNotAllowed(#[from] crate::release::bind::ModeNotAllowed),
    #[error(transparent)]
    Kind(#[from] crate::release::kind::KindError),
    /// A grant exists but does not cover this mode.
    #[error("no-grant: your grant on {dataset} does not cover the {mode} mode")]
    ModeNotGranted { dataset: String, mode: String },
    /// A grant covers only some columns and the mode reads whole rows.
    #[error(
        "column-not-granted: {mode} reads whole rows of {dataset}; your grant covers only some \
         columns"
    )]
    ColumnsNotGranted { dataset: String, mode: String },
    #[error("application: {0}")]
    Application(#[from] crate::applications::ApplicationProblem),
    #[error(transparent)]
    Review(#[from] crate::review::ReviewError),
    #[error(transparent)]
    Decision(#[from] crate::applications::DecisionError),
    #[error(transparent)]
    Contest(#[from] crate::contest::ContestError),
    #[error("no access to dataset {0}")]
    NoAccess(String),
    #[error("a job needs at least one dataset")]
    NoDatasets,
    #[error("params must be at most {max} bytes of JSON")]
    Params { max: usize },
    #[error("scoring: {0}")]
    Scoring(#[from] crate::scoring::policy::ScoringProblem),
    /// Reading a dataset on the host failed (a host fault: the detail can
    /// quote the data, so it is logged and never answered).
    #[error("reading dataset {dataset}: {detail}")]
    DataRead { dataset: String, detail: String },
    /// The scorer (module and params) is not approved for the policy.
    #[error("module {module} with these params is not approved for scoring policy {policy}")]
    NotApproved { module: String, policy: String },
    /// The tenant is pinned to the other side of a population (exact or
    /// noisy answers).
    #[error(
        "population {population}: you have had {pinned} answers about it (job {job_id}), so \
         {wanted} ones are refused"
    )]
    ModeConflict {
        population: String,
        pinned: &'static str,
        wanted: &'static str,
        job_id: String,
    },
    /// A dp request's ε per query is outside its policy's range.
    #[error("{dataset}: ε per query must be within [{low}, {high}]")]
    EpsilonOutOfRange {
        dataset: String,
        low: f64,
        high: f64,
    },
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// Largest `params` text a job may carry.
pub const MAX_PARAMS_BYTES: usize = 64 << 10;

/// What the submitter of a job gets back.
#[derive(Debug, Clone)]
pub struct JobResult {
    pub job_id: String,
    pub execution: Execution,
    pub receipt: Option<Receipt>,
}

/// Who submits a job.
#[derive(Debug, Clone)]
pub struct Submitter {
    /// The owner of the job (a tenant).
    pub tenant: String,
    pub role: Role,
    /// How the submitter appears in the audit log.
    pub actor: String,
}

/// A job request as clients send it.
#[derive(Debug, Clone)]
pub struct JobRequest {
    /// SHA-256 of an uploaded module.
    pub module: String,
    pub mode: String,
    pub datasets: Vec<String>,
    pub params: String,
    /// `dp` mode: the ε each query spends.
    pub epsilon: Option<f64>,
    /// `dp` mode, instead of `epsilon`: an error bound; each query spends
    /// the least ε that reaches it.
    pub accuracy: Option<crate::dp::Accuracy>,
    /// `sample-aggregate` mode: dimensions, ranges, defaults, ε, blocks.
    pub sample_aggregate: Option<crate::dp::sample_aggregate::Spec>,
    /// `contest` mode: the contest (the team is the submitter's tenant).
    pub contest: Option<String>,
}

/// How a queued job runs.
enum Plan {
    /// One instance, `analysis.run` (modes `aggregate`, `dp`).
    Run,
    /// Sample-and-aggregate over one dataset.
    SampleAggregate(Box<SamplePlan>),
    /// A contest submission: train, predict, score.
    Contest(Box<ContestPlan>),
}

struct ContestPlan {
    spec: crate::contest::Spec,
    seed: String,
    table: crate::dataset::DatasetSource,
    privacy_unit: String,
}

struct SamplePlan {
    spec: crate::dp::sample_aggregate::Spec,
    table: crate::dataset::DatasetSource,
    privacy_unit: String,
    rules: crate::policy::DpRules,
    population: crate::dp::budget::Population,
}

/// A committed (`queued`) job with everything needed to run it.
pub struct QueuedJob {
    pub id: String,
    pub tenant: String,
    pub mode: String,
    module: Arc<LoadedModule>,
    env: JobEnv,
    params: String,
    plan: Plan,
    /// The policy wants a human review before release: (author, the
    /// strictest minimum group size for the pre-checks, the smallest
    /// `review_cells_over` rule if every such policy has one).
    review: Option<(String, u32, Option<u64>)>,
    /// Noisy and contest modes: the result is released exactly this long
    /// after the job starts, whatever the guest and the data did (see
    /// [`Service::execute`]).
    release_hold: Option<std::time::Duration>,
    /// A schedule instead: released at the first multiple of this after
    /// the work ended (contests that choose speed over a fixed time).
    release_every: Option<std::time::Duration>,
}

/// Time for a dp or contest job's host work after the guest's own limit
/// (ending the instance, scoring, noise) inside the release hold.
const HOLD_MARGIN: std::time::Duration = std::time::Duration::from_secs(1);

pub struct Service {
    pub data_dir: PathBuf,
    pub store: Store,
    pub keys: KeyRing,
    pub catalog: Catalog,
    pub policies: PolicyStore,
    pub sandbox: Arc<Sandbox>,
    /// Tenants with an upload being validated and compiled: one each, so
    /// one tenant's uploads cannot fill the compiler's queue.
    compiling: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Service {
    /// Open a data directory (creating what is missing) and mark jobs a
    /// previous process left unfinished as interrupted.
    pub async fn open(data_dir: &Path, policies_dir: &Path) -> Result<Self, ServiceError> {
        std::fs::create_dir_all(data_dir).map_err(|e| ServiceError::Io(data_dir.into(), e))?;
        let store = Store::open(&data_dir.join("dsb.sqlite")).await?;
        let keys = KeyRing::open(&data_dir.join("keys"))?;
        let catalog = Catalog::open(&data_dir.join("catalog"))?;
        // A policy may be written before its dataset is registered; `dsb
        // policy check --data-dir` and `POST /v1/policies/check` flag names
        // that match no dataset.
        let policies = PolicyStore::open(policies_dir, None)?;
        let sandbox = Arc::new(Sandbox::new(SandboxConfig {
            module_dir: Some(data_dir.join("modules")),
            ..SandboxConfig::default()
        })?);
        let interrupted = jobs::recover_interrupted(&store).await?;
        crate::contest::settle_interrupted(&store).await?;
        if interrupted > 0 {
            tracing::warn!(
                interrupted,
                "jobs interrupted by the last shutdown were marked failed"
            );
        }
        Ok(Service {
            data_dir: data_dir.to_path_buf(),
            store,
            keys,
            catalog,
            policies,
            sandbox,
            compiling: std::sync::Mutex::new(std::collections::HashSet::new()),
        })
    }

    /// Whether `tenant` (in `role`) may run jobs on this dataset version:
    /// open data for everyone; conditional and restricted data for
    /// administrators and tenants holding a grant.
    pub async fn may_read(
        &self,
        tenant: &str,
        role: Role,
        version: &DatasetVersion,
    ) -> Result<bool, ServiceError> {
        Ok(match version.manifest.classification {
            Classification::Open => true,
            _ if role == Role::Admin => true,
            _ => accounts::has_grant(&self.store, tenant, &version.id).await?,
        })
    }

    /// Create a contest from its TOML spec (checked against the dataset's
    /// dictionary and policy), with a fresh secret split seed.
    pub async fn create_contest(
        &self,
        actor: &str,
        text: &str,
    ) -> Result<crate::contest::ContestView, ServiceError> {
        let mut spec = crate::contest::parse_spec("spec.toml", text)?;
        let version = self.catalog.get(&spec.dataset)?;
        spec.bind(&version.manifest)?;
        crate::release::bind::require_mode(&self.policies.current(), &version.id, Mode::Contest)
            .map_err(|e| crate::contest::ContestError::BadSpec(vec![format!("dataset: {e}")]))?;
        Ok(crate::contest::create(&self.store, &spec, actor).await?)
    }

    /// Record a reviewer's decision on a held output; the second approval
    /// releases it with a receipt naming the reviewers.
    pub async fn review(
        &self,
        reviewer: &str,
        key_id: &str,
        job_id: &str,
        decision: &crate::review::NewDecision,
    ) -> Result<String, ServiceError> {
        use crate::review::Outcome;
        // What a release would state, read before the decision (a held
        // job's charges and datasets no longer change).
        let cost = crate::dp::budget::job_cost(&self.store, job_id).await?;
        let perturbed = match jobs::get(&self.store, job_id).await {
            Ok(record) => {
                let policies = self.policies.current();
                record.mode == "aggregate"
                    && record.datasets.iter().any(|d| {
                        policies
                            .policy_for(&d.id)
                            .is_some_and(|p| p.perturbation.is_some())
                    })
            }
            Err(StoreError::UnknownJob(_)) => false,
            Err(error) => return Err(error.into()),
        };
        let signer = self.keys.signer()?;
        let outcome = crate::review::decide(
            &self.store,
            job_id,
            reviewer,
            key_id,
            decision,
            crate::review::Finish {
                privacy_cost: PrivacyCost {
                    epsilon: cost.epsilon,
                    delta: cost.delta,
                    rho: cost.rho,
                    perturbed,
                },
                signer: &signer,
            },
        )
        .await?;
        let state = match outcome {
            Outcome::Pending => "held",
            Outcome::Released(receipt) => {
                if let Some(receipt) = &receipt {
                    self.write_receipt(job_id, receipt)?;
                }
                "released"
            }
            Outcome::Rejected(_) => "rejected",
            Outcome::ChangesRequested(_) => "changes-requested",
        };
        Ok(state.to_string())
    }

    /// Cancel a job that has not started. False if it already has.
    pub async fn cancel_queued(&self, id: &str, actor: &str) -> Result<bool, ServiceError> {
        Ok(jobs::cancel_queued(&self.store, id, actor).await?)
    }

    /// Mark every unfinished job interrupted (at shutdown, after the grace
    /// period).
    pub async fn interrupt_unfinished(&self) -> Result<usize, ServiceError> {
        let count = jobs::recover_interrupted(&self.store).await?;
        crate::contest::settle_interrupted(&self.store).await?;
        Ok(count)
    }

    /// Run an `analysis` job in aggregate mode over catalog datasets,
    /// durably, in this process (the CLI's `job run`; no tenancy: the
    /// operator of the data directory acts). `on_submitted` is called once
    /// the job is committed (acknowledged).
    pub async fn run_analysis(
        &self,
        principal: &str,
        module: &[u8],
        datasets: &[String],
        params: &str,
        on_submitted: impl FnOnce(&str),
    ) -> Result<JobResult, ServiceError> {
        let versions = datasets
            .iter()
            .map(|reference| self.catalog.get(reference))
            .collect::<Result<Vec<_>, _>>()?;
        let submitter = Submitter {
            tenant: principal.into(),
            role: Role::Admin,
            actor: principal.into(),
        };
        match self.load_blocking(module.to_vec()).await {
            Ok((loaded, _)) => {
                let job = self
                    .commit(&submitter, loaded, &versions, params.into())
                    .await?;
                on_submitted(&job.id);
                self.execute(job, std::future::pending(), || ()).await
            }
            Err(error) => {
                // Refused modules are still recorded: what was tried, by whom.
                let job = jobs::NewJob {
                    id: jobs::new_job_id(),
                    principal: principal.into(),
                    module_sha256: crate::sandbox::intake::module_hash(module),
                    world: "unknown".into(),
                    mode: "aggregate".into(),
                    datasets: versions
                        .iter()
                        .map(|v| DatasetRef {
                            id: v.id.clone(),
                            version: v.hash.clone(),
                        })
                        .collect(),
                    policy_sha256: None,
                    params: params.into(),
                    limits: Limits::default(),
                };
                jobs::submit(&self.store, &job, principal).await?;
                on_submitted(&job.id);
                jobs::start(&self.store, &job.id).await?;
                let execution = Execution::refused(&job.id, Category::from(&error as &IntakeError));
                self.finish(&job.id, execution, PrivacyCost::default())
                    .await
            }
        }
    }

    /// Register a dataset file under its manifest (a new version when the
    /// id exists) and record it in the audit log.
    pub async fn add_dataset(
        &self,
        actor: &str,
        data: &Path,
        manifest: &Path,
    ) -> Result<DatasetVersion, ServiceError> {
        let version = self.catalog.add(data, manifest).await?;
        record_dataset_added(&self.store, actor, &version).await?;
        Ok(version)
    }

    /// Re-read the policy directory; on success the new set applies to jobs
    /// submitted from now on, and the change is audited with every policy's
    /// hash. On error the old set stays.
    pub async fn reload_policies(&self, actor: &str) -> Result<(), ServiceError> {
        // A set whose noisy policies disagree on a population's caps is
        // refused before anything changes.
        let candidate = crate::policy::PolicySet::load(self.policies.dir(), None)?;
        let report = candidate.check_populations(&self.populations()?);
        if !report.problems.is_empty() {
            return Err(PolicyError(report.problems).into());
        }
        self.policies.reload(None)?;
        let hashes: serde_json::Map<String, serde_json::Value> = self
            .policies
            .current()
            .policies()
            .iter()
            .map(|p| {
                (
                    p.dataset.clone().unwrap_or_else(|| "(default)".into()),
                    p.hash.clone().into(),
                )
            })
            .collect();
        self.store
            .transition(async |tx| {
                tx.record(
                    actor,
                    "policy.reloaded",
                    "policies",
                    serde_json::Value::Object(hashes),
                )
                .await?;
                Ok(())
            })
            .await
    }

    /// Write a released job's receipt to `receipts/<job>.json`, the copy
    /// `dsb job run` points at and offline verification reads (the store
    /// keeps the signed original). Every release path calls this.
    pub(crate) fn write_receipt(
        &self,
        job_id: &str,
        receipt: &Receipt,
    ) -> Result<(), ServiceError> {
        let dir = self.data_dir.join("receipts");
        std::fs::create_dir_all(&dir).map_err(|e| ServiceError::Io(dir.clone(), e))?;
        let path = dir.join(format!("{job_id}.json"));
        let text = serde_json::to_string_pretty(receipt).expect("receipt serialises");
        std::fs::write(&path, text).map_err(|e| ServiceError::Io(path, e))
    }

    /// Verify the audit chain and its checkpoints.
    pub async fn verify_audit(
        &self,
    ) -> Result<Result<(usize, usize), audit::Broken>, ServiceError> {
        let entries = audit::entries(&self.store).await?;
        let checkpoints = audit::checkpoints(&self.store).await?;
        Ok(audit::verify(
            &entries,
            &checkpoints,
            &self.keys.public_keys()?,
        ))
    }
}

/// Audit a new dataset version (the catalog's files are written first; the
/// entry names the version's hash, so the log states what was registered).
pub async fn record_dataset_added(
    store: &Store,
    actor: &str,
    version: &DatasetVersion,
) -> Result<(), StoreError> {
    store
        .transition(async |tx| {
            tx.record(
                actor,
                "dataset.added",
                &version.id,
                serde_json::json!({
                    "version": version.hash,
                    "classification": version.manifest.classification,
                    "rows": version.profile.rows,
                }),
            )
            .await?;
            Ok(())
        })
        .await
}
