//! Sample-and-aggregate (mode `sample-aggregate`, world `block-analysis`):
//! differential privacy for arbitrary code, after GUPT and Airavat.
//!
//! The submitter declares the output's dimensions, each with a range
//! `[lo, hi]` and a default, the ε of the release, and optionally the number
//! of blocks k and each block's time allowance. The host
//!
//! 1. charges ε to the submitter's budget on the dataset's population
//!    (committed, with its audit entry, before anything runs);
//! 2. splits the dataset into k disjoint blocks by privacy unit: each unit
//!    goes to block `H(seed, unit) mod k`, with H = SHA-256 and a fresh
//!    random seed per job, so all rows of a unit share a block and every
//!    unit is placed independently of every other;
//! 3. runs a **fresh instance per block**, `PARALLEL_BLOCKS` at a time, each
//!    with the same fuel, memory and its own time allowance counted from
//!    its own start; a block that fails in any way, returns the wrong number
//!    of values or a non-finite one gets the declared default;
//! 4. clamps every block's vector to the ranges, averages over k, and adds
//!    OpenDP Laplace noise per dimension with ε/d each.
//!
//! **Why (hi − lo)/k is the sensitivity.** k is the declared count or
//! [`DEFAULT_BLOCKS`], never a function of the data, so neighbouring
//! datasets (one unit more or less) have the same k. The placement of every
//! other unit does not depend on the added unit (each unit's block is a
//! function of the seed and its own id only), so under the same seed the
//! two datasets' blocks are identical except the one block that holds the
//! added unit. That block's clamped output moves by at most hi − lo in each
//! dimension, the others not at all, and the mean moves by at most
//! (hi − lo)/k: Laplace noise of scale d·(hi − lo)/(k·ε) per dimension
//! gives ε-DP for the vector. (An earlier version derived k from n and
//! dealt units round-robin after a shuffle: one unit more changed k and
//! moved every later unit to another block, and the bound did not hold.)
//! Block outcomes must depend on the block's rows only, so each block's
//! time allowance starts when the block starts, not at a shared deadline a
//! slow neighbour could eat into.
//!
//! Only the noisy vector is released, and, if the policy says so
//! (`report_defaulted`), a noisy count of defaulted blocks (one unit changes
//! one block, so sensitivity 1; it takes a (d+1)-th share of ε). Per-block
//! outcomes, logs and timings stay with the host. The release waits until
//! [`Spec::hold`] after the job's start, a time computed from k, the
//! allowance and the parallelism before any data is read, so the job's
//! duration does not carry how long the blocks ran (what remains is in the
//! README).

use datafusion::arrow::array::{Array, RecordBatch, StringArray, UInt32Array};
use datafusion::arrow::compute::{cast, concat_batches, take_record_batch};
use datafusion::arrow::datatypes::DataType;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::budget::{self, ChargeError, Cost};
use super::noise;
use crate::dataset::DatasetSource;
use crate::policy::DpRules;
use crate::sandbox::{Category, GuestCall, JobEnv, LoadedModule, Output, Returned, Sandbox};
use crate::store::Store;

/// Most dimensions a release may have.
pub const MAX_DIMENSIONS: usize = 64;

/// One output dimension as the submitter declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Dimension {
    pub name: String,
    pub lo: f64,
    pub hi: f64,
    /// Substituted for a block that fails.
    pub default: f64,
}

/// The submitter's declaration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub dimensions: Vec<Dimension>,
    /// ε of the whole release.
    pub epsilon: f64,
    /// Number of blocks (default [`DEFAULT_BLOCKS`]; never derived from
    /// the data).
    #[serde(default)]
    pub blocks: Option<usize>,
    /// Each block's wall-time allowance in milliseconds (default
    /// [`DEFAULT_BLOCK_MILLIS`]; at most the job's timeout).
    #[serde(default)]
    pub block_millis: Option<u64>,
}

/// Blocks when the submitter declares none.
pub const DEFAULT_BLOCKS: usize = 20;
/// A block's time allowance when the submitter declares none.
pub const DEFAULT_BLOCK_MILLIS: u64 = 2_000;
/// Blocks run at the same time (a constant, not the machine's load).
pub const PARALLEL_BLOCKS: usize = 2;
/// The latest release a declaration may ask for (k blocks at their full
/// allowance, two at a time): a job may not hold a tenant's place longer.
pub const MAX_HOLD: std::time::Duration = std::time::Duration::from_secs(600);
/// Time allowed for splitting the table and drawing the noise.
const OVERHEAD: std::time::Duration = std::time::Duration::from_secs(2);

impl Spec {
    /// The number of blocks the run uses.
    pub fn k(&self) -> usize {
        self.blocks.unwrap_or(DEFAULT_BLOCKS)
    }

    /// Each block's time allowance.
    pub fn block_time(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.block_millis.unwrap_or(DEFAULT_BLOCK_MILLIS))
    }

    /// When, after the job's start, the release happens: every round of
    /// [`PARALLEL_BLOCKS`] blocks at its full allowance, plus the overhead.
    /// A function of the declaration only.
    pub fn hold(&self) -> std::time::Duration {
        let rounds = self.k().div_ceil(PARALLEL_BLOCKS) as u32;
        self.block_time() * rounds + OVERHEAD
    }
}

/// A sample-aggregate request's field outside what the host accepts; the
/// message names the field.
#[derive(Debug, thiserror::Error)]
pub enum SpecProblem {
    #[error("dimensions: 1 to {MAX_DIMENSIONS}")]
    Dimensions,
    #[error("dimension {0}: finite lo < hi and a finite default")]
    Dimension(String),
    #[error("epsilon: within [{low}, {high}]")]
    Epsilon { low: f64, high: f64 },
    #[error("blocks: 2 to 1000")]
    Blocks,
    #[error("block_millis: 50 to 60000")]
    BlockMillis,
    #[error(
        "blocks × block_millis: every block runs its full allowance, {PARALLEL_BLOCKS} at a \
         time, so the release would come {seconds} s after the start; at most {max} s"
    )]
    Hold { seconds: u64, max: u64 },
}

impl Spec {
    /// Field checks against the dataset's dp rules.
    pub fn check(&self, rules: &DpRules) -> Result<(), SpecProblem> {
        if self.dimensions.is_empty() || self.dimensions.len() > MAX_DIMENSIONS {
            return Err(SpecProblem::Dimensions);
        }
        for d in &self.dimensions {
            if !(d.lo.is_finite() && d.hi.is_finite() && d.lo < d.hi && d.default.is_finite()) {
                return Err(SpecProblem::Dimension(d.name.clone()));
            }
        }
        let (low, high) = rules.query_epsilon;
        if !(low..=high).contains(&self.epsilon) {
            return Err(SpecProblem::Epsilon { low, high });
        }
        if let Some(k) = self.blocks
            && !(2..=1_000).contains(&k)
        {
            return Err(SpecProblem::Blocks);
        }
        if let Some(ms) = self.block_millis
            && !(50..=60_000).contains(&ms)
        {
            return Err(SpecProblem::BlockMillis);
        }
        if self.hold() > MAX_HOLD {
            return Err(SpecProblem::Hold {
                seconds: self.hold().as_secs(),
                max: MAX_HOLD.as_secs(),
            });
        }
        Ok(())
    }
}

/// What a sample-and-aggregate run released.
#[derive(Debug, Clone)]
pub struct Release {
    pub category: Category,
    pub outputs: Vec<Output>,
    pub blocks: usize,
    pub defaulted: usize,
}

/// Everything a run needs.
pub struct Run<'a> {
    pub sandbox: &'a Sandbox,
    pub module: &'a LoadedModule,
    pub env: &'a JobEnv,
    pub table: &'a DatasetSource,
    pub privacy_unit: &'a str,
    pub rules: DpRules,
    pub spec: &'a Spec,
    pub params: &'a str,
    pub store: &'a Store,
    pub principal: &'a str,
    /// The budget the release is charged to.
    pub population: budget::Population,
    /// Release the number of defaulted blocks (policy `report_defaulted`).
    pub report_defaulted: bool,
}

/// Charge, split, run each block, clamp, average, add noise.
pub async fn run(run: Run<'_>) -> Release {
    let refused = |category| Release {
        category,
        outputs: Vec::new(),
        blocks: 0,
        defaulted: 0,
    };
    match budget::charge(
        run.store,
        run.principal,
        &run.population,
        &run.table.name,
        &run.env.job_id,
        Cost {
            epsilon: run.spec.epsilon,
            delta: 0.0,
            rho: 0.0,
        },
    )
    .await
    {
        Ok(()) => {}
        Err(ChargeError::Exhausted(message)) => {
            return refused(Category::PolicyRejected(format!(
                "budget-exhausted: {message}"
            )));
        }
        Err(ChargeError::Store(error)) => {
            tracing::error!(job = %run.env.job_id, %error, "charging the budget");
            return refused(Category::Internal);
        }
    }
    let k = run.spec.k();
    let blocks = match split(run.table, run.privacy_unit, k).await {
        Ok(blocks) => blocks,
        Err(error) => {
            tracing::error!(job = %run.env.job_id, %error, "splitting the dataset into blocks");
            return refused(Category::Internal);
        }
    };
    let dims = &run.spec.dimensions;
    // A fresh instance per block, the same fuel and memory for each and its
    // own time allowance from its own start.
    let (sandbox, module, job_env) = (run.sandbox, run.module, run.env);
    let block_time = run.spec.block_time().min(job_env.limits.timeout);
    let outcomes: Vec<Option<Vec<f64>>> = futures::stream::iter(blocks.into_iter().enumerate())
        .map(|(index, block)| {
            let mut env = JobEnv::new(format!("{}-block-{index}", job_env.job_id));
            env.limits = job_env.limits.clone();
            env.limits.timeout = block_time;
            env.logical_time = job_env.logical_time;
            let call = GuestCall::Analyze {
                block,
                params: run.params.to_string(),
            };
            async move {
                let execution = sandbox.run(module, &env, call).await;
                match (&execution.category, execution.returned) {
                    (Category::Ok, Some(Returned::Vector(v)))
                        if v.len() == dims.len() && v.iter().all(|x| x.is_finite()) =>
                    {
                        Some(v)
                    }
                    _ => None,
                }
            }
        })
        .buffer_unordered(PARALLEL_BLOCKS)
        .collect()
        .await;
    let mut sums = vec![0.0; dims.len()];
    let mut defaulted = 0usize;
    for outcome in outcomes {
        let vector = outcome.unwrap_or_else(|| {
            defaulted += 1;
            dims.iter().map(|d| d.default).collect()
        });
        for ((sum, value), d) in sums.iter_mut().zip(vector).zip(dims) {
            *sum += value.clamp(d.lo, d.hi);
        }
    }
    let shares = dims.len() + usize::from(run.report_defaulted);
    let epsilon_each = run.spec.epsilon / shares as f64;
    let mut outputs = Vec::with_capacity(shares);
    for (sum, d) in sums.iter().zip(dims) {
        let mean = sum / k as f64;
        let sensitivity = (d.hi - d.lo) / k as f64;
        match noise::laplace_sums(&[mean], sensitivity, epsilon_each) {
            Ok((noisy, _)) => outputs.push(Output::Value {
                name: d.name.clone(),
                value: noisy[0],
            }),
            Err(error) => {
                tracing::error!(job = %run.env.job_id, %error, "sample-and-aggregate noise");
                return refused(Category::Internal);
            }
        }
    }
    if run.report_defaulted {
        // One unit changes one block: the count moves by at most 1.
        match noise::laplace_counts(&[defaulted as i64], 1, epsilon_each) {
            Ok((noisy, _)) => outputs.push(Output::Value {
                name: "defaulted_blocks".into(),
                value: noisy[0].clamp(0, k as i64) as f64,
            }),
            Err(error) => {
                tracing::error!(job = %run.env.job_id, %error, "sample-and-aggregate noise");
                return refused(Category::Internal);
            }
        }
    }
    Release {
        category: Category::Ok,
        outputs,
        blocks: k,
        defaulted,
    }
}

/// The block of a privacy unit under `seed`: SHA-256 of the seed and the
/// unit's id, modulo k. Independent across units given the seed.
fn block_of(seed: &[u8; 32], unit: &str, k: usize) -> usize {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(seed)
        .chain_update(unit.as_bytes())
        .finalize();
    let value = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
    (value % k as u64) as usize
}

/// The dataset's rows as k Arrow IPC blocks, disjoint by privacy unit,
/// placed by [`block_of`] under a fresh random seed.
async fn split(
    table: &DatasetSource,
    privacy_unit: &str,
    k: usize,
) -> Result<Vec<Vec<u8>>, String> {
    let (schema, batches) = crate::query::read_table(table)
        .await
        .map_err(|e| e.to_string())?;
    let all = concat_batches(&schema, &batches).map_err(|e| e.to_string())?;
    let units = cast(
        all.column_by_name(privacy_unit)
            .ok_or_else(|| format!("no column {privacy_unit}"))?,
        &DataType::Utf8,
    )
    .map_err(|e| e.to_string())?;
    let units = units
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("cast to Utf8");
    let seed: [u8; 32] = rand::random();
    let mut assigned: Vec<Vec<u32>> = vec![Vec::new(); k];
    for i in 0..units.len() {
        // Rows without a privacy unit cannot be bounded: dropped.
        if units.is_valid(i) {
            assigned[block_of(&seed, units.value(i), k)].push(i as u32);
        }
    }
    assigned
        .into_iter()
        .map(|indices| {
            let block: RecordBatch =
                take_record_batch(&all, &UInt32Array::from(indices)).map_err(|e| e.to_string())?;
            crate::arrow_ipc::encode(&schema, &[block]).map_err(|e| e.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_added_changes_no_other_units_block() {
        let seed = [7u8; 32];
        let units: Vec<String> = (0..2_000).map(|i| format!("9131{i:014}")).collect();
        let before: Vec<usize> = units.iter().map(|u| block_of(&seed, u, 20)).collect();
        // The same units placed again, with a newcomer among them: the
        // placement of each is its own.
        let mut with = units.clone();
        with.insert(1_000, "canary".into());
        let after: Vec<usize> = with
            .iter()
            .filter(|u| *u != "canary")
            .map(|u| block_of(&seed, u, 20))
            .collect();
        assert_eq!(before, after);
        // Blocks are roughly balanced: 2,000 units in 20 blocks, 100 each
        // on average; none is below 50 or above 150.
        let mut sizes = [0usize; 20];
        for b in &before {
            sizes[*b] += 1;
        }
        assert!(sizes.iter().all(|s| (50..150).contains(s)), "{sizes:?}");
    }

    #[test]
    fn a_declaration_cannot_hold_a_job_for_hours() {
        let rules = crate::policy::PolicySet::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
            None,
        )
        .unwrap()
        .policy_for("enterprises")
        .unwrap()
        .dp
        .unwrap();
        let spec = |blocks, block_millis| Spec {
            dimensions: vec![Dimension {
                name: "x".into(),
                lo: 0.0,
                hi: 1.0,
                default: 0.0,
            }],
            epsilon: 1.0,
            blocks,
            block_millis,
        };
        assert!(spec(Some(20), Some(2_000)).check(&rules).is_ok());
        // 1,000 blocks of a minute each would release after more than 8 h.
        let refused = spec(Some(1_000), Some(60_000)).check(&rules).unwrap_err();
        assert!(
            matches!(refused, SpecProblem::Hold { max: 600, .. }),
            "{refused}"
        );
        assert!(refused.to_string().contains("at most 600 s"), "{refused}");
    }

    #[test]
    fn the_hold_is_a_function_of_the_declaration() {
        let spec = |blocks, block_millis| Spec {
            dimensions: Vec::new(),
            epsilon: 1.0,
            blocks,
            block_millis,
        };
        assert_eq!(
            spec(Some(21), Some(500)).hold(),
            std::time::Duration::from_millis(11 * 500) + OVERHEAD
        );
        assert_eq!(
            spec(None, None).hold(),
            std::time::Duration::from_millis(10 * 2_000) + OVERHEAD
        );
    }
}
