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
    Category, Execution, GuestCall, IntakeError, JobEnv, Limits, LoadedModule, Sandbox,
    SandboxConfig, SandboxError,
};
use crate::store::{Store, StoreError, audit, jobs, modules};

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
    #[error("unsupported mode {0:?} (jobs run in: aggregate, dp)")]
    UnsupportedMode(String),
    #[error("dp: {0}")]
    Dp(String),
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
    Application(String),
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
    Scoring(String),
    /// Reading a dataset on the host failed (a host fault: the detail can
    /// quote the data, so it is logged and never answered).
    #[error("reading dataset {dataset}: {detail}")]
    DataRead { dataset: String, detail: String },
    /// The scorer (module and params) is not approved for the policy.
    #[error("{0}")]
    NotApproved(String),
    /// The tenant is pinned to the other side of a population (exact or
    /// noisy answers).
    #[error("{0}")]
    ModeConflict(String),
    /// A dataset's query ledger is exhausted for this tenant (HTTP 429).
    #[error("query-limit: {0}")]
    QueryLimit(String),
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
    /// Long-poll waiters by job id; told when that job reaches a final
    /// state (one wake-up per waiter of that job, not of every job).
    waiters: std::sync::Mutex<std::collections::HashMap<String, tokio::sync::watch::Sender<bool>>>,
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
            waiters: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// Validate, compile and record a module for `tenant`. Compilation runs
    /// on a blocking thread.
    /// `Sandbox::load_module` on a blocking thread: validation and
    /// compilation take seconds for a large component.
    async fn load_blocking(
        &self,
        bytes: Vec<u8>,
    ) -> Result<(Arc<LoadedModule>, crate::sandbox::ModuleLoad), IntakeError> {
        let sandbox = Arc::clone(&self.sandbox);
        tokio::task::spawn_blocking(move || sandbox.load_module(&bytes))
            .await
            .map_err(|_| IntakeError::Store(std::io::Error::other("loading a module panicked")))?
    }

    pub async fn upload_module(
        &self,
        submitter: &Submitter,
        bytes: Vec<u8>,
        name: Option<String>,
    ) -> Result<modules::ModuleInfo, ServiceError> {
        let size = bytes.len();
        let (module, _) = self.load_blocking(bytes).await?;
        let info = modules::info(&module.hash, module.world.name(), size, name);
        modules::record(&self.store, &submitter.actor, &submitter.tenant, &info).await?;
        Ok(modules::get(&self.store, &submitter.tenant, &module.hash)
            .await?
            .unwrap_or(info))
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

    /// A module `tenant` uploaded, loaded, and of the world `mode` runs.
    pub async fn tenant_module(
        &self,
        tenant: &str,
        sha256: &str,
        world: crate::sandbox::World,
        mode: &str,
    ) -> Result<Arc<LoadedModule>, ServiceError> {
        if modules::get(&self.store, tenant, sha256).await?.is_none() {
            return Err(ServiceError::UnknownModule(sha256.into()));
        }
        // Off the async workers: after a restart this loads the compiled
        // artifact (14 ms for a Python component) or, without one,
        // compiles (seconds).
        let sandbox = Arc::clone(&self.sandbox);
        let hash = sha256.to_string();
        let module = tokio::task::spawn_blocking(move || sandbox.module_by_hash(&hash))
            .await
            .map_err(|_| IntakeError::Store(std::io::Error::other("loading a module panicked")))??
            .ok_or_else(|| ServiceError::UnknownModule(sha256.into()))?;
        if module.world != world {
            return Err(ServiceError::WrongWorld {
                module: sha256.into(),
                world: module.world.name().into(),
                mode: mode.into(),
                expected: world.name().into(),
            });
        }
        Ok(module)
    }

    /// Check a request and commit it as a `queued` job (acknowledged from
    /// here on; a crash later marks it interrupted).
    pub async fn submit(
        &self,
        submitter: &Submitter,
        request: JobRequest,
    ) -> Result<QueuedJob, ServiceError> {
        let mode = match request.mode.as_str() {
            "aggregate" => Mode::Aggregate,
            "dp" => Mode::Dp,
            "sample-aggregate" => Mode::SampleAggregate,
            "contest" if request.contest.is_some() => Mode::Contest,
            _ => return Err(ServiceError::UnsupportedMode(request.mode)),
        };
        if (mode == Mode::SampleAggregate) != request.sample_aggregate.is_some() {
            return Err(ServiceError::Dp(
                "`sample_aggregate` (dimensions, epsilon) goes with mode sample-aggregate, and \
                 only with it"
                    .into(),
            ));
        }
        if mode == Mode::Dp && request.epsilon.is_some() == request.accuracy.is_some() {
            return Err(ServiceError::Dp(
                "say how much ε each query spends (`epsilon`) or the error bound it must                  reach (`accuracy`), one of them"
                    .into(),
            ));
        }
        if mode != Mode::Dp && (request.epsilon.is_some() || request.accuracy.is_some()) {
            return Err(ServiceError::Dp(
                "`epsilon` and `accuracy` are for dp mode only".into(),
            ));
        }
        if let Some(accuracy) = &request.accuracy {
            accuracy.check().map_err(ServiceError::Dp)?;
        }
        if let Some(contest) = &request.contest {
            return self
                .commit_contest(submitter, &request.module, contest)
                .await;
        }
        if request.datasets.is_empty() {
            return Err(ServiceError::NoDatasets);
        }
        if request.params.len() > MAX_PARAMS_BYTES {
            return Err(ServiceError::Params {
                max: MAX_PARAMS_BYTES,
            });
        }
        let module = self
            .tenant_module(
                &submitter.tenant,
                &request.module,
                if mode == Mode::SampleAggregate {
                    crate::sandbox::World::BlockAnalysis
                } else {
                    crate::sandbox::World::Analysis
                },
                &request.mode,
            )
            .await?;
        let mut versions = Vec::new();
        let mut granted_columns = std::collections::HashMap::new();
        for reference in &request.datasets {
            let version = match self.catalog.get(reference) {
                Ok(version) => version,
                // Unknown and forbidden look the same to a caller.
                Err(CatalogError::UnknownDataset(_) | CatalogError::UnknownVersion { .. }) => {
                    return Err(ServiceError::NoAccess(reference.clone()));
                }
                Err(other) => return Err(other.into()),
            };
            if !self
                .may_read(&submitter.tenant, submitter.role, &version)
                .await?
            {
                return Err(ServiceError::NoAccess(reference.clone()));
            }
            // A grant may cover only some modes and columns.
            if version.manifest.classification != Classification::Open
                && submitter.role != Role::Admin
                && let Some(scope) =
                    accounts::grant_scope(&self.store, &submitter.tenant, &version.id).await?
            {
                if scope
                    .modes
                    .as_ref()
                    .is_some_and(|modes| !modes.iter().any(|m| m == &request.mode))
                {
                    return Err(ServiceError::ModeNotGranted {
                        dataset: version.id.clone(),
                        mode: request.mode.clone(),
                    });
                }
                if let Some(columns) = scope.columns {
                    if mode == Mode::SampleAggregate {
                        return Err(ServiceError::ColumnsNotGranted {
                            dataset: version.id.clone(),
                            mode: mode.name().to_string(),
                        });
                    }
                    granted_columns.insert(version.id.clone(), columns);
                }
            }
            versions.push(version);
        }
        if let Some(spec) = request.sample_aggregate {
            return self
                .commit_sample_aggregate(submitter, module, &versions, request.params, spec)
                .await;
        }
        let mut job = match (request.epsilon, request.accuracy) {
            (None, None) => {
                self.commit(submitter, module, &versions, request.params)
                    .await?
            }
            (epsilon, accuracy) => {
                self.commit_dp(
                    submitter,
                    module,
                    &versions,
                    request.params,
                    epsilon.unwrap_or_default(),
                    accuracy,
                )
                .await?
            }
        };
        for (table, version) in job.env.datasets.iter_mut().zip(&versions) {
            table.granted_columns = granted_columns.get(&version.id).cloned();
        }
        Ok(job)
    }

    /// Commit a contest submission: the contest is open, the team has
    /// quota, the module is the team's `model` component.
    async fn commit_contest(
        &self,
        submitter: &Submitter,
        module: &str,
        contest: &str,
    ) -> Result<QueuedJob, ServiceError> {
        let (spec, seed) = crate::contest::get(&self.store, contest).await?;
        let module = self
            .tenant_module(
                &submitter.tenant,
                module,
                crate::sandbox::World::Model,
                "contest",
            )
            .await?;
        let version = self.catalog.get(&spec.dataset)?;
        let policies = self.policies.current();
        if !policies
            .policy_for(&version.id)
            .is_some_and(|p| p.allows(Mode::Contest))
        {
            return Err(ServiceError::Dp(format!(
                "the policy of {} does not allow the contest mode",
                version.id
            )));
        }
        let job_id = jobs::new_job_id();
        // A team on the noisy side of the population is refused before its
        // quota is taken (`commit_with` pins again, a no-op by then).
        self.pin_side(
            &submitter.tenant,
            &version,
            crate::policy::Side::Exact,
            &job_id,
        )
        .await?;
        crate::contest::admit(&self.store, &spec, &submitter.tenant, &job_id).await?;
        let params = serde_json::json!({
            "contest": spec.id,
            "metric": spec.metric,
            "label": spec.label,
            "features": spec.features,
            "split_seed_sha256": crate::contest::seed_hash(&seed),
        })
        .to_string();
        let table = crate::release::bind::version_table(&version, &policies);
        let mut job = self
            .commit_with(
                submitter,
                module,
                std::slice::from_ref(&version),
                params,
                Mode::Contest,
                Vec::new(),
                Some(job_id),
            )
            .await?;
        if let Some(fuel) = spec.fuel {
            job.env.limits.fuel = fuel;
        }
        if let Some(mb) = spec.memory_mb {
            job.env.limits.memory_bytes = usize::try_from(mb << 20).unwrap_or(usize::MAX);
        }
        if let Some(seconds) = spec.timeout_seconds {
            job.env.limits.timeout = std::time::Duration::from_secs(seconds);
        }
        job.release_hold = Some(job.env.limits.timeout + HOLD_MARGIN);
        job.release_every = spec
            .release_every_seconds
            .map(|s| std::time::Duration::from_secs(s.max(1)));
        job.plan = Plan::Contest(Box::new(ContestPlan {
            privacy_unit: version.manifest.privacy_unit.clone(),
            spec,
            seed,
            table,
        }));
        Ok(job)
    }

    /// Commit a `sample-aggregate` job over exactly one dataset whose
    /// policy allows the mode.
    async fn commit_sample_aggregate(
        &self,
        submitter: &Submitter,
        module: Arc<LoadedModule>,
        versions: &[DatasetVersion],
        params: String,
        spec: crate::dp::sample_aggregate::Spec,
    ) -> Result<QueuedJob, ServiceError> {
        let [version] = versions else {
            return Err(ServiceError::Dp(
                "sample-aggregate runs over exactly one dataset".into(),
            ));
        };
        let policies = self.policies.current();
        let rules = policies
            .policy_for(&version.id)
            .filter(|p| p.allows(Mode::SampleAggregate))
            .and_then(|p| p.dp)
            .ok_or_else(|| {
                ServiceError::Dp(format!(
                    "the policy of {} does not allow the sample-aggregate mode",
                    version.id
                ))
            })?;
        spec.check(&rules).map_err(ServiceError::Dp)?;
        let population = self
            .population_of(&version.id)?
            .unwrap_or_else(|| crate::dp::budget::Population::solo(&version.id, rules.caps()));
        // The blocks get the rows; no query session is opened.
        let table = crate::release::bind::version_table(version, &policies);
        let mut job = self
            .commit_with(
                submitter,
                module,
                versions,
                params,
                Mode::SampleAggregate,
                Vec::new(),
                None,
            )
            .await?;
        job.release_hold = Some(spec.hold());
        job.plan = Plan::SampleAggregate(Box::new(SamplePlan {
            spec,
            table,
            privacy_unit: version.manifest.privacy_unit.clone(),
            rules,
            population,
        }));
        Ok(job)
    }

    async fn commit(
        &self,
        submitter: &Submitter,
        module: Arc<LoadedModule>,
        versions: &[DatasetVersion],
        params: String,
    ) -> Result<QueuedJob, ServiceError> {
        let policies = self.policies.current();
        let tables: Vec<_> = versions
            .iter()
            .map(|v| crate::release::bind::version_table(v, &policies))
            .collect();
        // The ledger of every protected dataset the job may query; a job
        // that could not run a single query is refused up front.
        let mut limits = std::collections::HashMap::new();
        for (table, version) in tables.iter().zip(versions) {
            if table.rules.is_none() {
                continue;
            }
            let policy_limits = policies
                .policy_for(&version.id)
                .map(|p| p.ledger)
                .unwrap_or_default();
            crate::release::ledger::has_room(
                &self.store,
                &table.name,
                &submitter.tenant,
                policy_limits,
            )
            .await?
            .map_err(ServiceError::QueryLimit)?;
            limits.insert(table.name.clone(), policy_limits);
        }
        let job_id = jobs::new_job_id();
        let mut job = self
            .commit_with(
                submitter,
                module,
                versions,
                params,
                Mode::Aggregate,
                tables,
                Some(job_id.clone()),
            )
            .await?;
        job.env.ledger = Some(std::sync::Arc::new(crate::release::ledger::QueryLedger {
            store: self.store.clone(),
            tenant: submitter.tenant.clone(),
            job_id,
            limits,
        }));
        Ok(job)
    }

    /// Commit a `dp` job: every protected dataset's policy must allow `dp`
    /// and accept `epsilon` per query.
    async fn commit_dp(
        &self,
        submitter: &Submitter,
        module: Arc<LoadedModule>,
        versions: &[DatasetVersion],
        params: String,
        epsilon: f64,
        accuracy: Option<crate::dp::Accuracy>,
    ) -> Result<QueuedJob, ServiceError> {
        let policies = self.policies.current();
        let tables: Vec<_> = versions
            .iter()
            .map(|v| crate::release::bind::version_dp_table(v, &policies))
            .collect();
        let mut dp_tables = std::collections::HashMap::new();
        for (table, version) in tables.iter().zip(versions) {
            match &table.dp {
                Some(dp) => {
                    let (low, high) = dp.rules.query_epsilon;
                    // With an error bound, each query's ε is checked when
                    // its shape is known.
                    if accuracy.is_none() && !(low..=high).contains(&epsilon) {
                        return Err(ServiceError::Dp(format!(
                            "{}: ε per query must be within [{low}, {high}]",
                            version.id
                        )));
                    }
                    dp_tables.insert(table.name.clone(), Arc::clone(dp));
                }
                None if version.manifest.classification == Classification::Open => {}
                None => {
                    return Err(ServiceError::Dp(format!(
                        "the policy of {} does not allow the dp mode",
                        version.id
                    )));
                }
            }
        }
        let registered = self.populations()?;
        let mut populations = std::collections::HashMap::new();
        for table in dp_tables.values() {
            if let Some(population) = self.population_in(&registered, &table.dataset) {
                populations.insert(population.id.clone(), population);
            }
        }
        let job_id = jobs::new_job_id();
        let dp = Arc::new(crate::dp::DpSession {
            tables: dp_tables,
            epsilon,
            accuracy,
            ledger: crate::dp::Ledger {
                store: self.store.clone(),
                principal: submitter.tenant.clone(),
                job_id: job_id.clone(),
                populations,
            },
        });
        let mut job = self
            .commit_with(
                submitter,
                module,
                versions,
                params,
                Mode::Dp,
                tables,
                Some(job_id),
            )
            .await?;
        job.env.dp = Some(dp);
        job.release_hold = Some(job.env.limits.timeout + HOLD_MARGIN);
        Ok(job)
    }

    #[allow(clippy::too_many_arguments)]
    async fn commit_with(
        &self,
        submitter: &Submitter,
        module: Arc<LoadedModule>,
        versions: &[DatasetVersion],
        params: String,
        mode: Mode,
        tables: Vec<crate::dataset::DatasetSource>,
        job_id: Option<String>,
    ) -> Result<QueuedJob, ServiceError> {
        let policies = self.policies.current();
        let mut limits = Limits::default();
        let mut policy_hash = None;
        let mut refs = Vec::new();
        let mut review = None;
        for version in versions {
            if let Some(policy) = policies.policy_for(&version.id).filter(|p| p.allows(mode)) {
                limits = crate::release::bind::job_limits(&policy, &limits);
                policy_hash = Some(policy.hash.clone());
                if policy.review == crate::policy::Review::Required && mode != Mode::Contest {
                    let (threshold, rule) = match &review {
                        Some((_, k, rule)) => (*k, *rule),
                        None => (0, policy.review_cells_over),
                    };
                    // A policy reviewing every output makes the job's rule
                    // "every output"; otherwise the strictest cell count.
                    let rule = match (rule, policy.review_cells_over) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        _ => None,
                    };
                    review = Some((
                        submitter.actor.clone(),
                        threshold.max(policy.min_group_size),
                        rule,
                    ));
                }
            }
            refs.push(DatasetRef {
                id: version.id.clone(),
                version: version.hash.clone(),
            });
        }
        let job_id = job_id.unwrap_or_else(jobs::new_job_id);
        if let Some(side) = mode.side() {
            for version in versions {
                self.pin_side(&submitter.tenant, version, side, &job_id)
                    .await?;
            }
        }
        let job = jobs::NewJob {
            id: job_id,
            principal: submitter.tenant.clone(),
            module_sha256: module.hash.clone(),
            world: module.world.to_string(),
            mode: mode.name().into(),
            datasets: refs,
            policy_sha256: policy_hash,
            params: params.clone(),
            limits: limits.clone(),
        };
        jobs::submit(&self.store, &job, &submitter.actor).await?;
        let mut env = JobEnv::new(job.id.clone());
        env.limits = limits;
        env.datasets = tables;
        Ok(QueuedJob {
            id: job.id,
            tenant: submitter.tenant.clone(),
            mode: job.mode,
            module,
            env,
            params,
            plan: Plan::Run,
            review,
            release_hold: None,
            release_every: None,
        })
    }

    /// Run a queued job to its end: `running`, the sandbox, then release
    /// (with receipt) or rejection/failure. If `cancel` completes first the
    /// guest is stopped and the job ends `cancelled`. Long-poll waiters are
    /// woken by [`Service::announce_end`], which the caller invokes once it
    /// has recorded what it needs (metrics).
    ///
    /// Jobs with a release hold (dp, sample-aggregate, contest) are released
    /// at `start + hold`, a time fixed before any data is read, so how long
    /// the guest or the query took does not show in when the result (or
    /// the leaderboard entry) appears. `free_slot` is called when the work
    /// is done and the job only waits, so a waiting job does not keep a
    /// worker from other jobs.
    pub async fn execute(
        &self,
        job: QueuedJob,
        cancel: impl std::future::Future<Output = ()>,
        free_slot: impl FnOnce(),
    ) -> Result<JobResult, ServiceError> {
        jobs::start(&self.store, &job.id).await?;
        let started = tokio::time::Instant::now();
        let mut free_slot = Some(free_slot);
        let execution = match &job.plan {
            Plan::Run => {
                let call = GuestCall::Run {
                    params: job.params.clone(),
                };
                let execution = tokio::select! {
                    execution = self.sandbox.run(&job.module, &job.env, call) => execution,
                    () = cancel => Execution::refused(&job.id, Category::Cancelled),
                };
                self.hold(&job, &execution.category, started, &mut free_slot)
                    .await;
                execution
            }
            Plan::SampleAggregate(plan) => {
                let run = crate::dp::sample_aggregate::run(crate::dp::sample_aggregate::Run {
                    sandbox: &self.sandbox,
                    module: &job.module,
                    env: &job.env,
                    table: &plan.table,
                    privacy_unit: &plan.privacy_unit,
                    rules: plan.rules,
                    spec: &plan.spec,
                    params: &job.params,
                    store: &self.store,
                    principal: &job.tenant,
                    population: plan.population.clone(),
                    report_defaulted: plan.rules.report_defaulted,
                });
                match tokio::select! {
                    release = run => Some(release),
                    () = cancel => None,
                } {
                    Some(release) => {
                        tracing::info!(
                            job = %job.id,
                            blocks = release.blocks,
                            defaulted = release.defaulted,
                            "sample-and-aggregate"
                        );
                        let mut execution = Execution::refused(&job.id, release.category);
                        execution.outputs = release.outputs;
                        self.hold(&job, &execution.category, started, &mut free_slot)
                            .await;
                        execution
                    }
                    None => Execution::refused(&job.id, Category::Cancelled),
                }
            }
            Plan::Contest(plan) => {
                let (outcome, mut diagnostics) = tokio::select! {
                    evaluated = crate::contest::evaluate(
                        &self.sandbox,
                        &job.module,
                        &job.env,
                        &plan.spec,
                        &plan.seed,
                        &plan.table,
                        &plan.privacy_unit,
                    ) => evaluated,
                    () = cancel => (Err(Category::Cancelled), Default::default()),
                };
                // The leaderboard too shows the score only at the hold.
                let ending = match &outcome {
                    Ok(_) => Category::Ok,
                    Err(category) => category.clone(),
                };
                self.hold(&job, &ending, started, &mut free_slot).await;
                let released =
                    crate::contest::record(&self.store, &plan.spec, &job.id, &job.tenant, &outcome)
                        .await?;
                let mut execution = match (outcome, released) {
                    (Ok(_), Some(score)) => {
                        let mut execution = Execution::refused(&job.id, Category::Ok);
                        execution.outputs = vec![crate::sandbox::Output::Value {
                            name: "public_score".into(),
                            value: score,
                        }];
                        execution
                    }
                    (Err(category), _) => {
                        let told = crate::contest::team_category(&category);
                        let execution = Execution::refused(&job.id, told.clone());
                        if told != category {
                            diagnostics.withheld_category = Some(category.to_string());
                        }
                        execution
                    }
                    (Ok(_), None) => Execution::refused(&job.id, Category::Internal),
                };
                execution.diagnostics = diagnostics;
                execution
            }
        };
        // What the job's answers were charged (committed before each answer
        // reached the guest): the receipt states it.
        let cost = if matches!(job.mode.as_str(), "dp" | "sample-aggregate") {
            let cost = crate::dp::budget::job_cost(&self.store, &job.id).await?;
            PrivacyCost {
                epsilon: cost.epsilon,
                delta: cost.delta,
                rho: cost.rho,
                perturbed: false,
            }
        } else {
            PrivacyCost {
                perturbed: job
                    .env
                    .datasets
                    .iter()
                    .any(|d| d.rules.as_ref().is_some_and(|r| r.perturbation.is_some())),
                ..PrivacyCost::default()
            }
        };
        if let Some((author, threshold, rule)) = &job.review
            && execution.category.is_ok()
            && rule.is_none_or(|cells| crate::review::rule_holds(&execution.outputs, cells))
        {
            let reports: Vec<serde_json::Value> = execution
                .outputs
                .iter()
                .filter_map(|o| match o {
                    crate::sandbox::Output::Table {
                        name, arrow_ipc, ..
                    } => {
                        let (schema, _) = crate::arrow_ipc::decode(arrow_ipc).ok()?;
                        Some(serde_json::json!({ "output": name, "metadata": schema.metadata() }))
                    }
                    _ => None,
                })
                .collect();
            let record = jobs::get(&self.store, &job.id).await?;
            let mut prechecks = crate::review::prechecks(&execution.outputs, *threshold);
            // Dominance needs the data: the host re-plans each query the
            // guest ran and sums per privacy unit within each cell.
            if let Ok(session) =
                crate::query::QuerySession::open(&job.env.datasets, &Default::default()).await
            {
                for (index, query) in execution.diagnostics.queries.iter().enumerate() {
                    if query.outcome != "ok" {
                        continue;
                    }
                    match session.dominated_cells(&query.sql).await {
                        Ok(0) => {}
                        Ok(cells) => prechecks.push(crate::review::Finding {
                            check: "dominance".into(),
                            output: format!("query {}", index + 1),
                            detail: format!(
                                "{cells} cell(s) where one privacy unit holds over 50% of the total or two over 67%"
                            ),
                        }),
                        Err(error) => {
                            tracing::warn!(job = %job.id, %error, "dominance check skipped")
                        }
                    }
                }
            }
            let context = serde_json::json!({
                "module_sha256": job.module.hash,
                "mode": job.mode,
                "datasets": record.datasets,
                "policies": record
                    .datasets
                    .iter()
                    .filter_map(|d| {
                        let policy = self.policies.current().policy_for(&d.id)?;
                        Some(serde_json::json!({
                            "dataset": d.id,
                            "file": policy.source,
                            "sha256": policy.hash,
                            "min_group_size": policy.min_group_size,
                        }))
                    })
                    .collect::<Vec<_>>(),
                "queries": execution.diagnostics.queries,
                "reports": reports,
                "privacy_cost": cost,
                "prechecks": prechecks,
            });
            crate::review::hold(&self.store, &job.id, author, &execution.outputs, context).await?;
            return Ok(JobResult {
                job_id: job.id.clone(),
                execution,
                receipt: None,
            });
        }
        self.finish(&job.id, execution, cost).await
    }

    /// End a running job `internal` after the host failed under it (a
    /// panic outside the sandbox's own guard). Nothing is released; the
    /// category is the host's, so quotas treat it as not the tenant's.
    pub async fn fail_internal(&self, id: &str) -> Result<(), ServiceError> {
        let execution = Execution::refused(id, Category::Internal);
        self.finish(id, execution, PrivacyCost::default())
            .await
            .map(|_| ())
    }

    async fn finish(
        &self,
        id: &str,
        execution: Execution,
        cost: PrivacyCost,
    ) -> Result<JobResult, ServiceError> {
        // Administrators' record first: a job is never final without it.
        if let Err(error) = crate::store::diagnostics::record(
            &self.store,
            id,
            &execution.diagnostics,
            crate::store::diagnostics::Retention::default(),
        )
        .await
        {
            tracing::error!(job = %id, %error, "cannot store the job's diagnostics");
        }
        let signer = self.keys.signer()?;
        let receipt = jobs::finish(
            &self.store,
            id,
            &execution.category,
            &execution.outputs,
            cost,
            &signer,
        )
        .await?;
        if let Some(receipt) = &receipt {
            let dir = self.data_dir.join("receipts");
            std::fs::create_dir_all(&dir).map_err(|e| ServiceError::Io(dir.clone(), e))?;
            let path = dir.join(format!("{id}.json"));
            let text = serde_json::to_string_pretty(receipt).expect("receipt serialises");
            std::fs::write(&path, text).map_err(|e| ServiceError::Io(path, e))?;
        }
        Ok(JobResult {
            job_id: id.into(),
            execution,
            receipt,
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
        if !self
            .policies
            .current()
            .policy_for(&version.id)
            .is_some_and(|p| p.allows(Mode::Contest))
        {
            return Err(crate::contest::ContestError::BadSpec(vec![format!(
                "dataset: the policy of {} does not allow the contest mode",
                version.id
            )])
            .into());
        }
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
                    let dir = self.data_dir.join("receipts");
                    std::fs::create_dir_all(&dir).map_err(|e| ServiceError::Io(dir.clone(), e))?;
                    let path = dir.join(format!("{job_id}.json"));
                    let text = serde_json::to_string_pretty(receipt).expect("receipt serialises");
                    std::fs::write(&path, text).map_err(|e| ServiceError::Io(path, e))?;
                }
                "released"
            }
            Outcome::Rejected(_) => "rejected",
            Outcome::ChangesRequested(_) => "changes-requested",
        };
        Ok(state.to_string())
    }

    /// A dataset's data-use agreement (conditional datasets).
    pub fn agreement(&self, dataset: &str) -> Option<crate::policy::Agreement> {
        self.policies
            .current()
            .policy_for(dataset)?
            .agreement
            .clone()
    }

    /// Check and record an application for a conditional dataset; the
    /// answer is due `working_days` working days later.
    pub async fn apply(
        &self,
        submitter: &Submitter,
        request: crate::applications::NewApplication,
        working_days: u32,
        holidays: &[i64],
    ) -> Result<crate::applications::Application, ServiceError> {
        let refuse = |m: String| Err(ServiceError::Application(m));
        let version = match self.catalog.get(&request.dataset) {
            Ok(v) if v.manifest.classification == Classification::Conditional => v,
            Ok(v) if v.manifest.classification == Classification::Open => {
                return refuse(format!("{} is open: no application needed", v.id));
            }
            // Restricted and unknown look alike.
            _ => return Err(ServiceError::NoAccess(request.dataset.clone())),
        };
        if request.purpose.trim().is_empty() || request.intended_outputs.trim().is_empty() {
            return refuse("purpose and intended_outputs: say what and why".into());
        }
        if request.columns.is_empty()
            || request
                .columns
                .iter()
                .any(|c| !version.manifest.columns.iter().any(|d| &d.name == c))
        {
            return refuse("columns: one or more columns of the dictionary".into());
        }
        let policy = self.policies.current().policy_for(&version.id);
        let allowed: Vec<&str> = policy
            .as_ref()
            .map(|p| p.modes.iter().map(|m| m.name()).collect())
            .unwrap_or_default();
        if request.modes.is_empty() || request.modes.iter().any(|m| !allowed.contains(&m.as_str()))
        {
            return refuse(format!("modes: one or more of {allowed:?}"));
        }
        if !(1..=366).contains(&request.term_days) {
            return refuse("term_days: 1 to 366".into());
        }
        let Some(agreement) = policy.and_then(|p| p.agreement.clone()) else {
            return refuse(format!(
                "{} has no data-use agreement to accept yet",
                version.id
            ));
        };
        if request.agreement_sha256 != agreement.sha256 {
            return refuse(format!(
                "agreement_sha256: accept the current agreement (version {}, sha256 {})",
                agreement.version, agreement.sha256
            ));
        }
        let deadline = crate::applications::deadline(crate::store::now(), working_days, holidays);
        Ok(crate::applications::submit(
            &self.store,
            &submitter.tenant,
            &submitter.actor,
            &request,
            &agreement.version,
            deadline,
        )
        .await?)
    }

    /// Pin `tenant` to `side` of a protected dataset's population (open
    /// data has no privacy units to protect), or refuse `mode-conflict`.
    async fn pin_side(
        &self,
        tenant: &str,
        version: &DatasetVersion,
        side: crate::policy::Side,
        job_id: &str,
    ) -> Result<(), ServiceError> {
        if version.manifest.classification == Classification::Open {
            return Ok(());
        }
        crate::dp::sides::pin(
            &self.store,
            tenant,
            version.manifest.population(),
            side,
            job_id,
        )
        .await
        .map_err(|e| match e {
            crate::dp::sides::PinError::Store(e) => ServiceError::from(e),
            conflict => ServiceError::ModeConflict(conflict.to_string()),
        })
    }

    /// Wait until the job's release time, if it has one. A cancelled job
    /// ends at once (cancelling is the submitter's act, not the data's).
    async fn hold(
        &self,
        job: &QueuedJob,
        ending: &Category,
        started: tokio::time::Instant,
        free_slot: &mut Option<impl FnOnce()>,
    ) {
        let Some(hold) = job.release_hold else {
            return;
        };
        if *ending == Category::Cancelled {
            return;
        }
        if let Some(free) = free_slot.take() {
            free();
        }
        let elapsed = started.elapsed();
        let release = match job.release_every {
            // The first tick of the schedule after the work ended.
            Some(every) => {
                let ticks = (elapsed.as_nanos() / every.as_nanos()).saturating_add(1);
                every * u32::try_from(ticks).unwrap_or(u32::MAX)
            }
            None => {
                if elapsed > hold {
                    // Only a host stall gets here (the guest's limit is
                    // inside the hold); the release is late and logged.
                    tracing::warn!(job = %job.id, ?elapsed, ?hold, "job overran its release hold");
                }
                hold
            }
        };
        tokio::time::sleep_until(started + release).await;
    }

    /// Every registered dataset's population.
    pub fn populations(&self) -> Result<std::collections::BTreeMap<String, String>, ServiceError> {
        let mut populations = std::collections::BTreeMap::new();
        for id in self.catalog.ids()? {
            let version = self.catalog.get(&id)?;
            populations.insert(id, version.manifest.population().to_string());
        }
        Ok(populations)
    }

    /// The budget `dataset`'s noisy answers are charged to: its population,
    /// every registered member, and the tightest caps their policies state.
    /// `None` when no member's policy allows a noisy mode.
    pub fn population_of(
        &self,
        dataset: &str,
    ) -> Result<Option<crate::dp::budget::Population>, ServiceError> {
        Ok(self.population_in(&self.populations()?, dataset))
    }

    /// [`Service::population_of`] against a map from [`Service::populations`]
    /// read once, for callers that ask about several datasets.
    fn population_in(
        &self,
        populations: &std::collections::BTreeMap<String, String>,
        dataset: &str,
    ) -> Option<crate::dp::budget::Population> {
        let id = populations.get(dataset)?.clone();
        let datasets: Vec<String> = populations
            .iter()
            .filter(|(_, p)| **p == id)
            .map(|(d, _)| d.clone())
            .collect();
        self.policies
            .current()
            .population_caps(&datasets)
            .map(|caps| crate::dp::budget::Population { id, datasets, caps })
    }

    /// A tenant's budgets on every population with a noisy mode.
    pub async fn budgets(
        &self,
        tenant: &str,
    ) -> Result<Vec<crate::dp::budget::Budget>, ServiceError> {
        let mut list = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        let populations = self.populations()?;
        for dataset in populations.keys() {
            if let Some(population) = self.population_in(&populations, dataset)
                && seen.insert(population.id.clone())
            {
                list.push(crate::dp::budget::budget(&self.store, tenant, &population).await?);
            }
        }
        Ok(list)
    }

    /// Raise a tenant's cap on a dataset's population (audited); returns
    /// the new budget.
    pub async fn grant_budget(
        &self,
        actor: &str,
        tenant: &str,
        dataset: &str,
        amount: crate::dp::budget::Cost,
        reason: &str,
    ) -> Result<crate::dp::budget::Budget, ServiceError> {
        let population = self
            .population_of(dataset)?
            .ok_or_else(|| ServiceError::NoAccess(dataset.to_string()))?;
        crate::dp::budget::grant(
            &self.store,
            actor,
            tenant,
            &population,
            dataset,
            amount,
            reason,
        )
        .await?;
        Ok(crate::dp::budget::budget(&self.store, tenant, &population).await?)
    }

    /// Cancel a job that has not started. False if it already has.
    pub async fn cancel_queued(&self, id: &str, actor: &str) -> Result<bool, ServiceError> {
        let cancelled = jobs::cancel_queued(&self.store, id, actor).await?;
        if cancelled {
            self.notify_finished(id);
        }
        Ok(cancelled)
    }

    /// Mark every unfinished job interrupted (at shutdown, after the grace
    /// period).
    pub async fn interrupt_unfinished(&self) -> Result<usize, ServiceError> {
        let count = jobs::recover_interrupted(&self.store).await?;
        crate::contest::settle_interrupted(&self.store).await?;
        let waiting: Vec<String> = self.waiters().keys().cloned().collect();
        for id in waiting {
            self.notify_finished(&id);
        }
        Ok(count)
    }

    fn waiters(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<String, tokio::sync::watch::Sender<bool>>,
    > {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wake the long-poll waiters of a job that has ended.
    pub fn announce_end(&self, id: &str) {
        self.notify_finished(id);
    }

    fn notify_finished(&self, id: &str) {
        if let Some(sender) = self.waiters().remove(id) {
            let _ = sender.send(true);
        }
    }

    /// A receiver that changes when job `id` reaches a final state. Take it
    /// before reading the job's state, so no ending is missed; call
    /// [`Service::stop_watching`] when done.
    pub fn watch_job(&self, id: &str) -> tokio::sync::watch::Receiver<bool> {
        self.waiters()
            .entry(id.to_string())
            .or_insert_with(|| tokio::sync::watch::Sender::new(false))
            .subscribe()
    }

    /// Drop a waiter's registration (the entry goes with its last waiter).
    pub fn stop_watching(&self, id: &str, receiver: tokio::sync::watch::Receiver<bool>) {
        drop(receiver);
        let mut waiters = self.waiters();
        if waiters.get(id).is_some_and(|s| s.receiver_count() == 0) {
            waiters.remove(id);
        }
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
                let id = job.id.clone();
                let result = self.execute(job, std::future::pending(), || ()).await;
                self.announce_end(&id);
                result
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
        let mut tx = self.store.begin_write().await?;
        audit::append(
            &mut tx,
            actor,
            "policy.reloaded",
            "policies",
            serde_json::Value::Object(hashes),
        )
        .await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(())
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
    let mut tx = store.begin_write().await?;
    audit::append(
        &mut tx,
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
    tx.commit().await?;
    Ok(())
}
