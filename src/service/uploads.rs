//! Modules: upload (validated and compiled where guest calls run, one
//! compilation per tenant at a time) and a tenant's module by hash.

use super::*;
use crate::store::modules;

/// A tenant's place in the compiler, given back on every path out
/// (including a dropped upload).
struct Compiling<'a> {
    service: &'a Service,
    tenant: String,
}

impl Drop for Compiling<'_> {
    fn drop(&mut self) {
        self.service
            .compiling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.tenant);
    }
}

impl Service {
    /// Validate and compile a module where guest calls run (a worker on a
    /// server, a blocking thread otherwise): seconds for a large component.
    pub(super) async fn load_blocking(
        &self,
        bytes: Vec<u8>,
    ) -> Result<(Arc<LoadedModule>, crate::sandbox::ModuleLoad), IntakeError> {
        self.sandbox.load_module_isolated(bytes).await
    }

    pub async fn upload_module(
        &self,
        submitter: &Submitter,
        bytes: Vec<u8>,
        name: Option<String>,
    ) -> Result<modules::ModuleInfo, ServiceError> {
        let size = bytes.len();
        let _compiling = {
            let mut compiling = self.compiling.lock().unwrap_or_else(|e| e.into_inner());
            if !compiling.insert(submitter.tenant.clone()) {
                return Err(ServiceError::CompileBusy);
            }
            Compiling {
                service: self,
                tenant: submitter.tenant.clone(),
            }
        };
        let (module, _) = self.load_blocking(bytes).await?;
        let info = modules::info(&module.hash, module.world.name(), size, name);
        modules::record(&self.store, &submitter.actor, &submitter.tenant, &info).await?;
        Ok(modules::get(&self.store, &submitter.tenant, &module.hash)
            .await?
            .unwrap_or(info))
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
}
