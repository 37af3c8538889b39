//! Submitting a job: access, grants and the policy's modes checked, the
//! tenant pinned to one side of each population, the job committed
//! (`queued`, with its audit entry) with everything needed to run it.

use std::sync::Arc;

use super::*;
use crate::accounts::{self, Role};
use crate::catalog::{CatalogError, DatasetVersion};
use crate::dataset::Classification;
use crate::policy::Mode;
use crate::receipt::DatasetRef;
use crate::release::kind::{DpSpend, JobKind, RequestedKind};
use crate::sandbox::{JobEnv, Limits, LoadedModule};
use crate::store::jobs;

impl Service {
    /// Check a request and commit it as a `queued` job (acknowledged from
    /// here on; a crash later marks it interrupted).
    pub async fn submit(
        &self,
        submitter: &Submitter,
        request: JobRequest,
    ) -> Result<QueuedJob, ServiceError> {
        let JobRequest {
            module: module_ref,
            mode: mode_name,
            datasets,
            params,
            epsilon,
            accuracy,
            sample_aggregate,
            contest,
        } = request;
        let kind = JobKind::parse(RequestedKind {
            mode: mode_name,
            epsilon,
            accuracy,
            sample_aggregate,
            contest,
        })?;
        let mode = kind.mode();
        if let JobKind::Contest(contest) = &kind {
            return self.commit_contest(submitter, &module_ref, contest).await;
        }
        if datasets.is_empty() {
            return Err(ServiceError::NoDatasets);
        }
        if params.len() > MAX_PARAMS_BYTES {
            return Err(ServiceError::Params {
                max: MAX_PARAMS_BYTES,
            });
        }
        let module = self
            .tenant_module(
                &submitter.tenant,
                &module_ref,
                if mode == Mode::SampleAggregate {
                    crate::sandbox::World::BlockAnalysis
                } else {
                    crate::sandbox::World::Analysis
                },
                mode.name(),
            )
            .await?;
        let mut versions = Vec::new();
        let mut granted_columns = std::collections::HashMap::new();
        for reference in &datasets {
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
                    .is_some_and(|modes| !modes.iter().any(|m| m == mode.name()))
                {
                    return Err(ServiceError::ModeNotGranted {
                        dataset: version.id.clone(),
                        mode: mode.name().to_string(),
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
        let mut job = match kind {
            JobKind::SampleAggregate(spec) => {
                return self
                    .commit_sample_aggregate(submitter, module, &versions, params, *spec)
                    .await;
            }
            JobKind::Aggregate => self.commit(submitter, module, &versions, params).await?,
            JobKind::Dp(spend) => {
                let (epsilon, accuracy) = match spend {
                    DpSpend::Epsilon(epsilon) => (epsilon, None),
                    DpSpend::Accuracy(accuracy) => (0.0, Some(accuracy)),
                };
                self.commit_dp(submitter, module, &versions, params, epsilon, accuracy)
                    .await?
            }
            JobKind::Contest(_) => unreachable!("committed above"),
        };
        for (table, version) in job.env.datasets.iter_mut().zip(&versions) {
            table.granted_columns = granted_columns.get(&version.id).cloned();
        }
        Ok(job)
    }

    /// Commit a contest submission: the contest is open, the team has
    /// quota, the module is the team's `model` component.
    pub(super) async fn commit_contest(
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
        crate::release::bind::require_mode(&policies, &version.id, Mode::Contest)?;
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
    pub(super) async fn commit_sample_aggregate(
        &self,
        submitter: &Submitter,
        module: Arc<LoadedModule>,
        versions: &[DatasetVersion],
        params: String,
        spec: crate::dp::sample_aggregate::Spec,
    ) -> Result<QueuedJob, ServiceError> {
        let [version] = versions else {
            return Err(ServiceError::SampleAggregateDatasets);
        };
        let policies = self.policies.current();
        let policy =
            crate::release::bind::require_mode(&policies, &version.id, Mode::SampleAggregate)?;
        let rules = policy
            .dp
            .ok_or_else(|| crate::release::bind::ModeNotAllowed {
                dataset: version.id.clone(),
                mode: Mode::SampleAggregate,
            })?;
        spec.check(&rules)?;
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

    pub(super) async fn commit(
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
    pub(super) async fn commit_dp(
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
                        return Err(ServiceError::EpsilonOutOfRange {
                            dataset: version.id.clone(),
                            low,
                            high,
                        });
                    }
                    dp_tables.insert(table.name.clone(), Arc::clone(dp));
                }
                None if version.manifest.classification == Classification::Open => {}
                None => {
                    return Err(crate::release::bind::ModeNotAllowed {
                        dataset: version.id.clone(),
                        mode: Mode::Dp,
                    }
                    .into());
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
    pub(super) async fn commit_with(
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

    /// Pin `tenant` to `side` of a protected dataset's population (open
    /// data has no privacy units to protect), or refuse `mode-conflict`.
    pub(super) async fn pin_side(
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
            crate::dp::sides::PinError::Conflict {
                population,
                pinned,
                wanted,
                job_id,
            } => ServiceError::ModeConflict {
                population,
                pinned,
                wanted,
                job_id,
            },
        })
    }
}
