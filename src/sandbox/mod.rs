//! The wasmtime host: runs untrusted components next to the data.
//!
//! One [`Sandbox`] per process: the `Engine` (Cranelift, pooling allocator,
//! fuel and epoch interruption) and one `Linker` per world are built once; an
//! `InstancePre` is built once per module and cached by its SHA-256; every
//! job gets a fresh `Store` with its own limits, fuel, deadline and
//! locked-down WASI context (`job`).
//!
//! Layout:
//! - `intake`: module validation, world detection, artifact cache.
//! - `job`: one execution and its classification into a [`Category`].
//! - `host`: the host imports, one file per WIT interface.
//! - `wasi`: the WASI context that gives the guest nothing.
//! - `limits`: per-job limits and the store's resource limiter.
//! - `outcome`: categories, diagnostics, the submitter's report.
//!
//! **Architecture Invariant:** nothing a guest writes (trap text, error
//! strings, logs, stdout) reaches a [`SubmitterReport`]; it goes to
//! [`Diagnostics`].

pub mod bindings;
mod host;
pub mod intake;
pub mod job;
pub mod limits;
pub mod local;
pub mod outcome;
pub mod wasi;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

pub use intake::{IntakeError, ModuleLoad, World};
pub use job::{Execution, GuestCall, JobEnv, JobState, Returned};
pub use limits::Limits;
pub use outcome::{Category, Diagnostics, Output, SubmitterReport};

use crate::query::{QueryConfig, QuerySession};

/// Engine-wide settings, fixed when the [`Sandbox`] starts.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where module bytes and compiled artifacts are kept; `None` keeps them
    /// in memory only.
    pub module_dir: Option<PathBuf>,
    /// Largest module accepted.
    pub max_module_bytes: usize,
    /// What the compiler may be asked to do with one module.
    pub complexity: intake::Complexity,
    /// Wasm stack per call; deeper recursion ends as `stack-overflow`.
    pub max_wasm_stack: usize,
    /// Upper bound for any job's memory limit (the pooling allocator's slot).
    pub max_memory_bytes: usize,
    /// Component instances alive at once (pool size).
    pub concurrent_instances: u32,
    /// Loaded modules kept in memory, bounded by the sum of their compiled
    /// code and module bytes; the least recently used go first (a later
    /// use reloads them from the module directory's artifact).
    pub module_cache_bytes: usize,
    /// How often the epoch advances; guests yield to the executor this often.
    pub epoch_tick: Duration,
    /// DataFusion resources per job.
    pub query: QueryConfig,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            module_dir: None,
            max_module_bytes: 64 << 20,
            complexity: intake::Complexity::default(),
            max_wasm_stack: 512 << 10,
            max_memory_bytes: 1 << 30,
            concurrent_instances: 128,
            module_cache_bytes: 1 << 30,
            epoch_tick: Duration::from_millis(10),
            query: QueryConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("configuring wasmtime: {0}")]
    Engine(String),
    #[error("module directory: {0}")]
    ModuleDir(#[from] std::io::Error),
}

/// Runs guest calls somewhere other than this process (`crate::worker`'s
/// supervised processes). A [`Sandbox`] given one hands every
/// [`Sandbox::run`] to it; module intake stays here.
pub trait Isolation: Send + Sync {
    fn run<'a>(
        &'a self,
        module: &'a LoadedModule,
        env: &'a JobEnv,
        call: GuestCall,
    ) -> futures::future::BoxFuture<'a, Execution>;

    /// Validate and compile `bytes` into the module directory this
    /// sandbox reads, so that [`Sandbox::load_module`] then finds the
    /// artifact and compiles nothing here.
    fn compile<'a>(
        &'a self,
        bytes: &'a [u8],
    ) -> futures::future::BoxFuture<'a, Result<(), IntakeError>>;

    /// [`Sandbox::dominated_cells`] where guest calls run.
    fn dominated_cells<'a>(
        &'a self,
        env: &'a JobEnv,
        statements: Vec<String>,
    ) -> futures::future::BoxFuture<'a, Vec<Option<usize>>>;
}

/// A module ready to instantiate: validated, compiled, pre-linked.
pub struct LoadedModule {
    /// Hex SHA-256 of the module's bytes.
    pub hash: String,
    pub world: World,
    pub size: usize,
    /// What it costs the in-memory cache: module bytes plus compiled code.
    cache_bytes: usize,
    pre: WorldPre,
}

impl std::fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModule")
            .field("hash", &self.hash)
            .field("world", &self.world)
            .finish_non_exhaustive()
    }
}

/// Loaded modules by hash, least recently used first out once their summed
/// `cache_bytes` pass the bound. The module just inserted always stays (a
/// module larger than the bound is still usable by the job that loaded it).
struct ModuleCache {
    map: HashMap<String, (Arc<LoadedModule>, u64)>,
    bytes: usize,
    limit: usize,
    clock: u64,
}

impl ModuleCache {
    fn new(limit: usize) -> Self {
        ModuleCache {
            map: HashMap::new(),
            bytes: 0,
            limit,
            clock: 0,
        }
    }

    fn get(&mut self, hash: &str) -> Option<Arc<LoadedModule>> {
        self.clock += 1;
        let clock = self.clock;
        self.map.get_mut(hash).map(|(module, used)| {
            *used = clock;
            Arc::clone(module)
        })
    }

    fn insert(&mut self, module: Arc<LoadedModule>) -> Arc<LoadedModule> {
        if let Some(existing) = self.get(&module.hash) {
            return existing;
        }
        self.clock += 1;
        self.bytes += module.cache_bytes;
        self.map
            .insert(module.hash.clone(), (Arc::clone(&module), self.clock));
        while self.bytes > self.limit && self.map.len() > 1 {
            let Some(oldest) = self
                .map
                .iter()
                .filter(|(hash, _)| **hash != module.hash)
                .min_by_key(|(_, (_, used))| *used)
                .map(|(hash, _)| hash.clone())
            else {
                break;
            };
            if let Some((evicted, _)) = self.map.remove(&oldest) {
                self.bytes -= evicted.cache_bytes;
            }
        }
        module
    }
}

/// The typed `InstancePre` of each world.
enum WorldPre {
    Analysis(bindings::analysis::AnalysisPre<JobState>),
    BlockAnalysis(bindings::block_analysis::BlockAnalysisPre<JobState>),
    Model(bindings::model::ModelPre<JobState>),
    Scorer(bindings::scorer::ScorerPre<JobState>),
}

/// Linkers built once, one per world, each with exactly the imports that
/// world may use.
struct Linkers {
    analysis: Linker<JobState>,
    block_analysis: Linker<JobState>,
    model: Linker<JobState>,
    scorer: Linker<JobState>,
}

/// The process-wide wasmtime host.
pub struct Sandbox {
    engine: Engine,
    linkers: Linkers,
    config: SandboxConfig,
    store: Option<intake::ModuleStore>,
    /// Loaded modules by hash. A `std` mutex: held only to look up or insert,
    /// never across an `.await` or a compilation.
    modules: Mutex<ModuleCache>,
    /// One lock per module hash being loaded, so concurrent loads of one
    /// module compile it once (the others wait and take the cached result).
    loading: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// One compilation at a time: Cranelift already spreads one module over
    /// every core, and a second concurrent compile would only add its
    /// memory. Uploads beyond it wait here, bounded by `Complexity`.
    compiler: Mutex<()>,
    /// Where guest calls run when not in this process.
    isolation: std::sync::OnceLock<Arc<dyn Isolation>>,
    _ticker: EpochTicker,
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        let engine = build_engine(&config).map_err(|e| SandboxError::Engine(format!("{e:#}")))?;
        let linkers = build_linkers(&engine).map_err(|e| SandboxError::Engine(format!("{e:#}")))?;
        let store = match &config.module_dir {
            Some(dir) => Some(intake::ModuleStore::open(dir, &engine)?),
            None => None,
        };
        let ticker = EpochTicker::start(&engine, config.epoch_tick);
        Ok(Sandbox {
            engine,
            linkers,
            modules: Mutex::new(ModuleCache::new(config.module_cache_bytes)),
            config,
            store,
            loading: Mutex::new(HashMap::new()),
            compiler: Mutex::new(()),
            isolation: std::sync::OnceLock::new(),
            _ticker: ticker,
        })
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Run every later guest call through `isolation`. Set once; returns
    /// false if one was set already.
    pub fn isolate(&self, isolation: Arc<dyn Isolation>) -> bool {
        self.isolation.set(isolation).is_ok()
    }

    /// Whether guest calls leave this process.
    pub fn is_isolated(&self) -> bool {
        self.isolation.get().is_some()
    }

    /// Validate and compile a module where guest calls run: in a worker
    /// when isolated (the cheap checks on the bytes first, here), then
    /// load it here from the artifact; in this process otherwise.
    pub async fn load_module_isolated(
        self: &Arc<Self>,
        bytes: Vec<u8>,
    ) -> Result<(Arc<LoadedModule>, ModuleLoad), IntakeError> {
        if let Some(isolation) = self.isolation.get() {
            intake::check_header(&bytes, self.config.max_module_bytes)?;
            let hash = intake::module_hash(&bytes);
            let compiled = self.cached(&hash).is_some()
                || self.store.as_ref().is_some_and(|s| s.has_artifact(&hash));
            // The worker checks complexity before it compiles.
            if !compiled {
                isolation.compile(&bytes).await?;
            }
        }
        let sandbox = Arc::clone(self);
        tokio::task::spawn_blocking(move || sandbox.load_module(&bytes))
            .await
            .map_err(|_| IntakeError::Store(std::io::Error::other("loading a module panicked")))?
    }

    /// Validate, compile (or load the cached artifact) and pre-link a module.
    pub fn load_module(
        &self,
        bytes: &[u8],
    ) -> Result<(Arc<LoadedModule>, ModuleLoad), IntakeError> {
        intake::check_header(bytes, self.config.max_module_bytes)?;
        let hash = intake::module_hash(bytes);
        if let Some(module) = self.cached(&hash) {
            return Ok((module, ModuleLoad::Memory));
        }
        let gate = Arc::clone(
            self.loading
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(hash.clone())
                .or_default(),
        );
        let loaded = {
            let _one_loader = gate.lock().unwrap_or_else(|e| e.into_inner());
            match self.cached(&hash) {
                Some(module) => Ok((module, ModuleLoad::Memory)),
                None => self.compile_and_cache(bytes, hash.clone()),
            }
        };
        self.loading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&hash);
        loaded
    }

    fn compile_and_cache(
        &self,
        bytes: &[u8],
        hash: String,
    ) -> Result<(Arc<LoadedModule>, ModuleLoad), IntakeError> {
        let (component, load) = match self
            .store
            .as_ref()
            .and_then(|s| s.load_artifact(&self.engine, &hash))
        {
            Some(component) => (component, ModuleLoad::Artifact),
            None => {
                intake::check_complexity(bytes, self.config.complexity)?;
                let _compiler = self.compiler.lock().unwrap_or_else(|e| e.into_inner());
                let component = Component::new(&self.engine, bytes).map_err(|error| {
                    tracing::info!(%hash, error = %format!("{error:#}"), "module failed to compile");
                    IntakeError::InvalidComponent
                })?;
                (component, ModuleLoad::Compiled)
            }
        };
        let world = intake::classify_component(&self.engine, &component)?;
        if load == ModuleLoad::Compiled
            && let Some(store) = &self.store
        {
            store.save(&hash, bytes, &component)?;
        }
        let pre = self.pre_link(world, &component).map_err(|error| {
            tracing::info!(%hash, error = %format!("{error:#}"), "module failed to link");
            IntakeError::InvalidComponent
        })?;
        let code = component.image_range();
        let module = Arc::new(LoadedModule {
            hash: hash.clone(),
            world,
            size: bytes.len(),
            cache_bytes: bytes.len() + (code.end as usize - code.start as usize),
            pre,
        });
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        Ok((modules.insert(module), load))
    }

    /// Modules held in memory now and the bytes they are counted at.
    pub fn cached_modules(&self) -> (usize, usize) {
        let modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        (modules.map.len(), modules.bytes)
    }

    /// A module loaded earlier, by hash, from memory or the module directory.
    pub fn module_by_hash(&self, hash: &str) -> Result<Option<Arc<LoadedModule>>, IntakeError> {
        if let Some(module) = self.cached(hash) {
            return Ok(Some(module));
        }
        match self.store.as_ref().and_then(|s| s.module_bytes(hash)) {
            Some(bytes) => Ok(Some(self.load_module(&bytes)?.0)),
            None => Ok(None),
        }
    }

    fn cached(&self, hash: &str) -> Option<Arc<LoadedModule>> {
        self.modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
    }

    fn pre_link(&self, world: World, component: &Component) -> wasmtime::Result<WorldPre> {
        Ok(match world {
            World::Analysis => WorldPre::Analysis(bindings::analysis::AnalysisPre::new(
                self.linkers.analysis.instantiate_pre(component)?,
            )?),
            World::BlockAnalysis => {
                WorldPre::BlockAnalysis(bindings::block_analysis::BlockAnalysisPre::new(
                    self.linkers.block_analysis.instantiate_pre(component)?,
                )?)
            }
            World::Model => WorldPre::Model(bindings::model::ModelPre::new(
                self.linkers.model.instantiate_pre(component)?,
            )?),
            World::Scorer => WorldPre::Scorer(bindings::scorer::ScorerPre::new(
                self.linkers.scorer.instantiate_pre(component)?,
            )?),
        })
    }

    /// Run one guest call. An `analysis` job gets a query session over
    /// `env.datasets`; the other worlds get no data access at all.
    pub async fn run(&self, module: &LoadedModule, env: &JobEnv, call: GuestCall) -> Execution {
        if call.world() != module.world {
            let refusal = IntakeError::WrongWorld {
                expected: call.world(),
                found: module.world,
            };
            return Execution::refused(&env.job_id, Category::from(&refusal));
        }
        if let Some(isolation) = self.isolation.get() {
            return isolation.run(module, env, call).await;
        }
        if env.limits.memory_bytes > self.config.max_memory_bytes {
            tracing::warn!(job = %env.job_id, "job memory limit above the sandbox's; using the sandbox's");
        }
        let mut env = env.clone();
        env.limits.memory_bytes = env.limits.memory_bytes.min(self.config.max_memory_bytes);
        let session = if module.world == World::Analysis {
            match QuerySession::open(&env.datasets, &self.config.query).await {
                Ok(session) => Some(Arc::new(
                    session
                        .with_dp(env.dp.clone())
                        .with_ledger(env.ledger.clone()),
                )),
                Err(error) => {
                    tracing::error!(job = %env.job_id, %error, "cannot open the job's datasets");
                    return Execution::refused(&env.job_id, Category::Internal);
                }
            }
        } else {
            None
        };
        // A panic anywhere below (a host function, the query engine, the
        // decoder of a guest's table) ends this job `internal`; it never
        // unwinds into the caller, which would leave the job's queue slot,
        // pool slot and tenant counters behind.
        let executed =
            futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(job::execute(
                &self.engine,
                module,
                &env,
                session,
                call,
                self.config.epoch_tick,
            )))
            .await;
        executed.unwrap_or_else(|_| {
            tracing::error!(job = %env.job_id, "the host panicked running the job");
            Execution::refused(&env.job_id, Category::Internal)
        })
    }

    /// For a held job's reviewers: how many released cells of each of
    /// `statements` (queries the job's guest ran) one or two privacy units
    /// dominate; `None` where the check could not run. The statements are
    /// the guest's, so on a server this runs in a worker too.
    pub async fn dominated_cells(
        &self,
        env: &JobEnv,
        statements: Vec<String>,
    ) -> Vec<Option<usize>> {
        if let Some(isolation) = self.isolation.get() {
            return isolation.dominated_cells(env, statements).await;
        }
        let session = match QuerySession::open(&env.datasets, &self.config.query).await {
            Ok(session) => session,
            Err(error) => {
                tracing::warn!(job = %env.job_id, %error, "cannot open the job's datasets for the dominance check");
                return vec![None; statements.len()];
            }
        };
        let mut cells = Vec::with_capacity(statements.len());
        for sql in &statements {
            cells.push(match session.dominated_cells(sql).await {
                Ok(n) => Some(n),
                Err(error) => {
                    tracing::warn!(job = %env.job_id, %error, "dominance check failed");
                    None
                }
            });
        }
        cells
    }

    /// Load `bytes` and run `call`: intake refusals become `invalid-module`.
    pub async fn run_bytes(&self, bytes: &[u8], env: &JobEnv, call: GuestCall) -> Execution {
        match self.load_module(bytes) {
            Ok((module, load)) => {
                let mut execution = self.run(&module, env, call).await;
                execution.diagnostics.module_load = Some(format!("{load:?}"));
                execution
            }
            Err(error) => Execution::refused(&env.job_id, Category::from(&error)),
        }
    }

    /// Instantiate a module in a fresh store and drop it; for benchmarks of
    /// the per-job fixed cost.
    pub async fn instantiate_only(
        &self,
        module: &LoadedModule,
        env: &JobEnv,
    ) -> wasmtime::Result<()> {
        let mut store = wasmtime::Store::new(&self.engine, JobState::new(env, None));
        store.limiter(|state| &mut state.limiter);
        store.set_fuel(env.limits.fuel)?;
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        match &module.pre {
            WorldPre::Analysis(pre) => {
                pre.instantiate_async(&mut store).await?;
            }
            WorldPre::BlockAnalysis(pre) => {
                pre.instantiate_async(&mut store).await?;
            }
            WorldPre::Model(pre) => {
                pre.instantiate_async(&mut store).await?;
            }
            WorldPre::Scorer(pre) => {
                pre.instantiate_async(&mut store).await?;
            }
        }
        Ok(())
    }
}

fn build_engine(config: &SandboxConfig) -> wasmtime::Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    let instances = config.concurrent_instances.max(1);
    pool.total_component_instances(instances)
        // A Rust or Python component holds a handful of core instances
        // (the program, WASI adapters, shims), tables and memories.
        .total_core_instances(instances * 8)
        .total_memories(instances * 2)
        .total_tables(instances * 8)
        .total_stacks(instances)
        .max_memory_size(config.max_memory_bytes)
        .max_memories_per_component(4)
        .max_tables_per_component(16)
        .max_core_instances_per_component(16);
    let mut wasm = Config::new();
    wasm.wasm_component_model(true)
        .consume_fuel(true)
        .epoch_interruption(true)
        .max_wasm_stack(config.max_wasm_stack)
        .parallel_compilation(true)
        .cranelift_opt_level(OptLevel::Speed)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&wasm)
}

fn build_linkers(engine: &Engine) -> wasmtime::Result<Linkers> {
    let base = || -> wasmtime::Result<Linker<JobState>> {
        let mut linker = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        Ok(linker)
    };
    let mut analysis = base()?;
    bindings::analysis::Analysis::add_to_linker::<_, HasSelf<_>>(&mut analysis, |s| s)?;
    let mut block_analysis = base()?;
    bindings::block_analysis::BlockAnalysis::add_to_linker::<_, HasSelf<_>>(
        &mut block_analysis,
        |s| s,
    )?;
    let mut model = base()?;
    bindings::model::Model::add_to_linker::<_, HasSelf<_>>(&mut model, |s| s)?;
    let mut scorer = base()?;
    bindings::scorer::Scorer::add_to_linker::<_, HasSelf<_>>(&mut scorer, |s| s)?;
    Ok(Linkers {
        analysis,
        block_analysis,
        model,
        scorer,
    })
}

/// Advances the engine's epoch on a fixed tick; stops when dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: &Engine, tick: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let engine = engine.clone();
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("dsb-epoch".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        EpochTicker {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
