//! The embedded service: a data directory's store, keys, catalog, policies
//! and sandbox together, and the durable job loop over them:
//! submit (committed before anything runs) → start → run in the sandbox →
//! finish (release with receipt, or rejection/failure), each step with its
//! audit entry in the same transaction.
//!
//! Data directory layout: `dsb.sqlite` (jobs, audit), `keys/` (Ed25519,
//! 0600), `catalog/` (dataset versions), `modules/` (module bytes and
//! compiled artifacts), `receipts/<job>.json`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::catalog::{Catalog, CatalogError};
use crate::policy::{Mode, PolicyError, PolicyStore};
use crate::receipt::{DatasetRef, KeyError, KeyRing, PrivacyCost, Receipt};
use crate::sandbox::{
    Category, Execution, GuestCall, IntakeError, JobEnv, Limits, Sandbox, SandboxConfig,
    SandboxError,
};
use crate::store::{Store, StoreError, audit, jobs};

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
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// What the submitter of a job gets back.
#[derive(Debug, Clone)]
pub struct JobResult {
    pub job_id: String,
    pub execution: Execution,
    pub receipt: Option<Receipt>,
}

pub struct Service {
    pub data_dir: PathBuf,
    pub store: Store,
    pub keys: KeyRing,
    pub catalog: Catalog,
    pub policies: PolicyStore,
    pub sandbox: Arc<Sandbox>,
}

impl Service {
    /// Open a data directory (creating what is missing) and mark jobs a
    /// previous process left unfinished as interrupted.
    pub async fn open(data_dir: &Path, policies_dir: &Path) -> Result<Self, ServiceError> {
        std::fs::create_dir_all(data_dir).map_err(|e| ServiceError::Io(data_dir.into(), e))?;
        let store = Store::open(&data_dir.join("dsb.sqlite")).await?;
        let keys = KeyRing::open(&data_dir.join("keys"))?;
        let catalog = Catalog::open(&data_dir.join("catalog"))?;
        let policies = PolicyStore::open(policies_dir, Some(&catalog.ids()?))?;
        let sandbox = Arc::new(Sandbox::new(SandboxConfig {
            module_dir: Some(data_dir.join("modules")),
            ..SandboxConfig::default()
        })?);
        let interrupted = jobs::recover_interrupted(&store).await?;
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
        })
    }

    /// Run an `analysis` job in aggregate mode over catalog datasets, durably.
    /// `on_submitted` is called once the job is committed (acknowledged).
    pub async fn run_analysis(
        &self,
        principal: &str,
        module: &[u8],
        datasets: &[String],
        params: &str,
        on_submitted: impl FnOnce(&str),
    ) -> Result<JobResult, ServiceError> {
        let policies = self.policies.current();
        let mut tables = Vec::new();
        let mut refs = Vec::new();
        let mut limits = Limits::default();
        let mut policy_hash = None;
        for reference in datasets {
            let version = self.catalog.get(reference)?;
            if let Some(policy) = policies
                .policy_for(&version.id)
                .filter(|p| p.allows(Mode::Aggregate))
            {
                limits = policy.job_limits(&limits);
                policy_hash = Some(policy.hash.clone());
            }
            refs.push(DatasetRef {
                id: version.id.clone(),
                version: version.hash.clone(),
            });
            tables.push(version.job_table(&policies));
        }
        let loaded = self.sandbox.load_module(module);
        let job = jobs::NewJob {
            id: jobs::new_job_id(),
            principal: principal.into(),
            module_sha256: crate::sandbox::intake::module_hash(module),
            world: loaded
                .as_ref()
                .map_or("unknown".into(), |(m, _)| m.world.to_string()),
            mode: "aggregate".into(),
            datasets: refs,
            policy_sha256: policy_hash,
            params: params.into(),
            limits: limits.clone(),
        };
        jobs::submit(&self.store, &job).await?;
        on_submitted(&job.id);
        jobs::start(&self.store, &job.id).await?;
        let execution = match loaded {
            Ok((module, _)) => {
                let mut env = JobEnv::new(job.id.clone());
                env.limits = limits;
                env.datasets = tables;
                self.sandbox
                    .run(
                        &module,
                        &env,
                        GuestCall::Run {
                            params: params.into(),
                        },
                    )
                    .await
            }
            Err(error) => Execution::refused(&job.id, Category::from(&error as &IntakeError)),
        };
        let signer = self.keys.signer()?;
        let receipt = jobs::finish(
            &self.store,
            &job.id,
            &execution.category,
            &execution.outputs,
            PrivacyCost::default(),
            &signer,
        )
        .await?;
        if let Some(receipt) = &receipt {
            let dir = self.data_dir.join("receipts");
            std::fs::create_dir_all(&dir).map_err(|e| ServiceError::Io(dir.clone(), e))?;
            let path = dir.join(format!("{}.json", job.id));
            let text = serde_json::to_string_pretty(receipt).expect("receipt serialises");
            std::fs::write(&path, text).map_err(|e| ServiceError::Io(path, e))?;
        }
        Ok(JobResult {
            job_id: job.id,
            execution,
            receipt,
        })
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
