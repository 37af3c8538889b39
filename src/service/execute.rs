//! Running a committed job: start, run in the sandbox (or the mode's own
//! loop), hold until the release time, then finish: release with receipt,
//! hold for review, or reject, each with its audit entry.

use super::*;
use crate::receipt::PrivacyCost;
use crate::sandbox::{Category, Execution, GuestCall};
use crate::store::jobs;

impl Service {
    /// Run a queued job to its end: `running`, the sandbox, then release
    /// (with receipt) or rejection/failure. If `cancel` completes first the
    /// guest is stopped and the job ends `cancelled`. The caller wakes
    /// whoever waits for the job (the server's `server::waiters`) once it
    /// has recorded what it needs (metrics, the queue's slot).
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
            // (In a worker on a server: the statements are the guest's.)
            let answered: Vec<(usize, &str)> = execution
                .diagnostics
                .queries
                .iter()
                .enumerate()
                .filter(|(_, query)| query.outcome == "ok")
                .map(|(index, query)| (index, query.sql.as_str()))
                .collect();
            let statements = answered.iter().map(|(_, sql)| sql.to_string()).collect();
            let cells = self.sandbox.dominated_cells(&job.env, statements).await;
            for ((index, _), cells) in answered.iter().zip(cells) {
                match cells {
                    Some(0) => {}
                    Some(cells) => prechecks.push(crate::review::Finding {
                        check: "dominance".into(),
                        output: format!("query {}", index + 1),
                        detail: format!(
                            "{cells} cell(s) where one privacy unit holds over 50% of the total or two over 67%"
                        ),
                    }),
                    None => tracing::warn!(job = %job.id, "dominance check skipped"),
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

    pub(super) async fn finish(
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
            self.write_receipt(id, receipt)?;
        }
        Ok(JobResult {
            job_id: id.into(),
            execution,
            receipt,
        })
    }

    /// Wait until the job's release time, if it has one. A cancelled job
    /// ends at once (cancelling is the submitter's act, not the data's).
    pub(super) async fn hold(
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
}
