//! One guest execution: a fresh store with its own limits, fuel, deadline and
//! locked-down WASI context; the call into the guest; and the classification
//! of how it ended.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::intake::World;
use super::limits::{JobLimiter, LimitHit, Limits};
use super::outcome::{Category, Diagnostics, Output, QueryRecord, SubmitterReport};
use super::wasi::{GuestLog, locked_down_context};
use super::{LoadedModule, WorldPre};
use crate::dataset::DatasetSource;
use crate::query::QuerySession;

/// What a job runs on and under.
#[derive(Debug, Clone)]
pub struct JobEnv {
    /// Seeds the guest's randomness; names the job in reports.
    pub job_id: String,
    /// The wall-clock time the guest sees (since the Unix epoch), fixed for
    /// the whole job.
    pub logical_time: Duration,
    pub limits: Limits,
    /// Tables the job may query (world `analysis` only).
    pub datasets: Vec<DatasetSource>,
    /// A `dp`-mode job's tables, ε per query and budget ledger.
    pub dp: Option<std::sync::Arc<crate::dp::DpSession>>,
    /// An aggregate-mode job's query ledger across jobs.
    pub ledger: Option<std::sync::Arc<crate::release::ledger::QueryLedger>>,
}

impl JobEnv {
    /// A job with default limits and no datasets, its logical time now
    /// rounded down to the day (so the guest learns only the date).
    pub fn new(job_id: impl Into<String>) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        JobEnv {
            job_id: job_id.into(),
            logical_time: Duration::from_secs(now.as_secs() / 86_400 * 86_400),
            limits: Limits::default(),
            datasets: Vec::new(),
            dp: None,
            ledger: None,
        }
    }
}

/// The call a job makes into its guest; one variant per world.
#[derive(Debug, Clone)]
pub enum GuestCall {
    /// `analysis.run(params)`.
    Run { params: String },
    /// `block-analysis.analyze(block, params)`.
    Analyze { block: Vec<u8>, params: String },
    /// `model.train(table, params)` then `model.predict(features)` in the
    /// same instance.
    TrainPredict {
        train: Vec<u8>,
        params: String,
        features: Vec<u8>,
    },
    /// `scorer.score(rows, params)`.
    Score {
        rows: Vec<(String, Vec<u8>)>,
        params: String,
    },
}

impl GuestCall {
    pub fn world(&self) -> World {
        match self {
            GuestCall::Run { .. } => World::Analysis,
            GuestCall::Analyze { .. } => World::BlockAnalysis,
            GuestCall::TrainPredict { .. } => World::Model,
            GuestCall::Score { .. } => World::Scorer,
        }
    }
}

/// What a guest's exports returned.
///
/// Numbers travel (to and from a worker process) as their IEEE bits, so a
/// NaN or an infinity a guest returned arrives as itself and is judged by
/// the mode, not lost in JSON.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Returned {
    Unit,
    Vector(#[serde(with = "f64_bits::vec")] Vec<f64>),
    Number(#[serde(with = "f64_bits")] f64),
}

mod f64_bits {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(value.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(f64::from_bits(u64::deserialize(d)?))
    }

    pub mod vec {
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(values: &[f64], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(values.iter().map(|v| v.to_bits()))
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
            Ok(Vec::<u64>::deserialize(d)?
                .into_iter()
                .map(f64::from_bits)
                .collect())
        }
    }
}

/// The whole result of one execution. Only [`Execution::submitter_report`]
/// may be shown to the job's submitter.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Execution {
    pub job_id: String,
    pub category: Category,
    /// What the export returned, when the category is `ok`. For the
    /// non-analysis worlds the release mode post-processes it.
    pub returned: Option<Returned>,
    /// Emitted outputs, when the category is `ok`.
    pub outputs: Vec<Output>,
    pub diagnostics: Diagnostics,
}

impl Execution {
    /// The category and, on success, the outputs; nothing else the guest
    /// controlled.
    pub fn submitter_report(&self) -> SubmitterReport {
        SubmitterReport {
            job_id: self.job_id.clone(),
            category: self.category.clone(),
            outputs: if self.category.is_ok() {
                self.outputs.clone()
            } else {
                Vec::new()
            },
        }
    }

    /// An execution that never started (for example, the module was refused).
    pub fn refused(job_id: &str, category: Category) -> Self {
        Execution {
            job_id: job_id.to_string(),
            category,
            returned: None,
            outputs: Vec::new(),
            diagnostics: Diagnostics::default(),
        }
    }
}

/// Per-job host state inside the `Store`.
pub struct JobState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: JobLimiter,
    pub(crate) log: GuestLog,
    pub(crate) limits: Limits,
    pub(crate) session: Option<Arc<QuerySession>>,
    pub(crate) queries: usize,
    pub(crate) query_bytes: usize,
    pub(crate) query_log: Vec<QueryRecord>,
    pub(crate) emits: usize,
    pub(crate) output_bytes: usize,
    pub(crate) output_rows: usize,
    pub(crate) outputs: Vec<Output>,
    /// The first limit a host function enforced.
    pub(crate) host_limit: Option<LimitHit>,
    /// The first policy rejection a query received; becomes the job's
    /// `policy-rejected` reason if the guest then fails.
    pub(crate) rejection: Option<String>,
    /// A host-side failure; the job ends `internal`.
    pub(crate) internal: Option<String>,
    /// How long instantiation took.
    instantiate: Duration,
}

impl JobState {
    pub(crate) fn new(env: &JobEnv, session: Option<Arc<QuerySession>>) -> Self {
        let log = GuestLog::new(env.limits.log_bytes);
        JobState {
            wasi: locked_down_context(&env.job_id, env.logical_time, &log),
            table: ResourceTable::new(),
            limiter: JobLimiter::new(&env.limits),
            log,
            limits: env.limits.clone(),
            session,
            queries: 0,
            query_bytes: 0,
            query_log: Vec::new(),
            emits: 0,
            output_bytes: 0,
            output_rows: 0,
            outputs: Vec::new(),
            host_limit: None,
            rejection: None,
            internal: None,
            instantiate: Duration::ZERO,
        }
    }

    /// Record a host-enforced limit and return the trap that ends the job.
    pub(crate) fn trip(&mut self, hit: LimitHit) -> wasmtime::Error {
        self.host_limit.get_or_insert(hit);
        hit.into()
    }
}

impl WasiView for JobState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Run `call` in a fresh store. Never panics on guest behaviour; every way a
/// guest can end maps to one [`Category`].
pub(super) async fn execute(
    engine: &wasmtime::Engine,
    module: &LoadedModule,
    env: &JobEnv,
    session: Option<Arc<QuerySession>>,
    call: GuestCall,
    epoch_tick: Duration,
) -> Execution {
    let started = Instant::now();
    let mut store = Store::new(engine, JobState::new(env, session));
    store.limiter(|state| &mut state.limiter);
    let fuel_ready = store.set_fuel(env.limits.fuel);
    // The wall-clock deadline, counted in epoch ticks: at every tick the
    // guest yields to the executor (so a spinning guest cannot hold a tokio
    // worker) until its ticks are used up, then it is interrupted.
    let deadline_ticks = (env.limits.timeout.as_nanos() / epoch_tick.as_nanos().max(1)).max(1);
    let mut ticks = 0u128;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        ticks += 1;
        Ok(if ticks >= deadline_ticks {
            UpdateDeadline::Interrupt
        } else {
            UpdateDeadline::Yield(1)
        })
    });

    // The same bound from outside, for time the guest spends blocked in a
    // host call (a WASI sleep, a long query), where no epoch check runs.
    let outcome = match fuel_ready {
        Ok(()) => {
            tokio::time::timeout(
                env.limits.timeout,
                call_guest(&module.pre, &mut store, call),
            )
            .await
        }
        Err(error) => Ok(Err(error)),
    };
    let fuel_consumed = env
        .limits
        .fuel
        .saturating_sub(store.get_fuel().unwrap_or(0));
    let state = store.data_mut();
    let mut diagnostics = Diagnostics {
        fuel_consumed,
        duration: started.elapsed(),
        queries: std::mem::take(&mut state.query_log),
        instantiate: state.instantiate,
        memory_peak_bytes: state.limiter.peak_memory,
        ..Diagnostics::default()
    };
    (diagnostics.log, diagnostics.log_truncated) = state.log.contents();

    let (category, returned) = match outcome {
        Err(_elapsed) => (Category::Timeout, None),
        Ok(Ok(Ok(returned))) => (Category::Ok, Some(returned)),
        Ok(Ok(Err(guest_error))) => {
            diagnostics.guest_error = Some(guest_error);
            let category = match &state.rejection {
                Some(reason) => Category::PolicyRejected(reason.clone()),
                None => Category::GuestError,
            };
            (category, None)
        }
        Ok(Err(trap)) => {
            diagnostics.trap = Some(format!("{trap:?}"));
            (classify_trap(&trap, state), None)
        }
    };
    if let Some(internal) = &state.internal {
        tracing::error!(job = %env.job_id, %internal, "host failure during job");
    }
    let outputs = if category.is_ok() {
        std::mem::take(&mut state.outputs)
    } else {
        Vec::new()
    };
    Execution {
        job_id: env.job_id.clone(),
        category,
        returned,
        outputs,
        diagnostics,
    }
}

/// Map a trap to its category. What the host recorded wins over what the
/// error looks like, since wasmtime may wrap host errors in context.
fn classify_trap(trap: &wasmtime::Error, state: &JobState) -> Category {
    if state.internal.is_some() {
        return Category::Internal;
    }
    match state.host_limit.or(state.limiter.hit) {
        Some(LimitHit::Memory | LimitHit::Tables) => return Category::MemoryLimit,
        Some(LimitHit::Output) => return Category::OutputLimit,
        Some(LimitHit::Query) => return Category::QueryLimit,
        None => {}
    }
    match trap.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Category::OutOfFuel,
        Some(Trap::StackOverflow) => Category::StackOverflow,
        Some(Trap::Interrupt) => Category::Timeout,
        _ => match &state.rejection {
            // The guest failed after a policy refusal (say, it unwrapped the
            // error): the refusal is the cause, and its reason is host text.
            Some(reason) => Category::PolicyRejected(reason.clone()),
            None => Category::GuestError,
        },
    }
}

/// Instantiate from a pre-linked module, recording how long it took.
macro_rules! instantiate {
    ($pre:expr, $store:expr) => {{
        let started = Instant::now();
        let guest = match $pre.instantiate_async(&mut *$store).await {
            Ok(guest) => guest,
            Err(error) => {
                // The instance could not be created (the pool is full, say):
                // the host's failure, not the guest's; never charged to it.
                let state = $store.data();
                if error.downcast_ref::<Trap>().is_none()
                    && state.limiter.hit.is_none()
                    && state.host_limit.is_none()
                {
                    $store.data_mut().internal = Some(format!("instantiation failed: {error}"));
                }
                return Err(error);
            }
        };
        $store.data_mut().instantiate = started.elapsed();
        guest
    }};
}

async fn call_guest(
    pre: &WorldPre,
    store: &mut Store<JobState>,
    call: GuestCall,
) -> wasmtime::Result<Result<Returned, String>> {
    match (pre, call) {
        (WorldPre::Analysis(pre), GuestCall::Run { params }) => {
            let guest = instantiate!(pre, store);
            Ok(guest
                .call_run(&mut *store, &params)
                .await?
                .map(|()| Returned::Unit))
        }
        (WorldPre::BlockAnalysis(pre), GuestCall::Analyze { block, params }) => {
            let guest = instantiate!(pre, store);
            Ok(guest
                .call_analyze(&mut *store, &block, &params)
                .await?
                .map(Returned::Vector))
        }
        (
            WorldPre::Model(pre),
            GuestCall::TrainPredict {
                train,
                params,
                features,
            },
        ) => {
            let guest = instantiate!(pre, store);
            if let Err(error) = guest.call_train(&mut *store, &train, &params).await? {
                return Ok(Err(error));
            }
            Ok(guest
                .call_predict(&mut *store, &features)
                .await?
                .map(Returned::Vector))
        }
        (WorldPre::Scorer(pre), GuestCall::Score { rows, params }) => {
            let guest = instantiate!(pre, store);
            Ok(guest
                .call_score(&mut *store, &rows, &params)
                .await?
                .map(Returned::Number))
        }
        _ => {
            store.data_mut().internal = Some("call does not match the module's world".into());
            Err(wasmtime::Error::msg(
                "call does not match the module's world",
            ))
        }
    }
}
