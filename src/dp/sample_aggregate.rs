//! Sample-and-aggregate (mode `sample-aggregate`, world `block-analysis`):
//! differential privacy for arbitrary code, after GUPT and Airavat.
//!
//! The submitter declares the output's dimensions, each with a range
//! `[lo, hi]` and a default, and the ε of the release. The host
//!
//! 1. charges ε to the submitter's budget on the dataset (committed, with
//!    its audit entry, before anything runs);
//! 2. splits the dataset into k disjoint blocks by privacy unit (all rows of
//!    a unit in one block; units shuffled with the thread's CSPRNG and dealt
//!    round-robin, so blocks differ in size by at most one unit), with k the
//!    declared count or ⌈n^0.4⌉ for n units;
//! 3. runs a **fresh instance per block** with the same fuel, memory and
//!    time allowance; a block that fails in any way, returns the wrong
//!    number of values or a non-finite one gets the declared default;
//! 4. clamps every block's vector to the ranges, averages, and adds OpenDP
//!    Laplace noise per dimension with sensitivity (hi − lo)/k (one unit
//!    changes one block) and ε/d each.
//!
//! Only the noisy vector is released (and, if the policy says so, how many
//! blocks were defaulted). Per-block outcomes, logs and timings stay with
//! the host. Residual channel, documented: the job's wall time (shown in
//! whole seconds) depends on how long the blocks ran; fuel is the same
//! allowance for every block, not the same consumption.

use std::collections::HashMap;

use datafusion::arrow::array::{Array, RecordBatch, StringArray, UInt32Array};
use datafusion::arrow::compute::{cast, concat_batches, take_record_batch};
use datafusion::arrow::datatypes::DataType;
use rand::seq::SliceRandom;
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
    /// Number of blocks (default ⌈n^0.4⌉ for n privacy units).
    #[serde(default)]
    pub blocks: Option<usize>,
}

impl Spec {
    /// Field checks against the dataset's dp rules; the message names the
    /// field.
    pub fn check(&self, rules: &DpRules) -> Result<(), String> {
        if self.dimensions.is_empty() || self.dimensions.len() > MAX_DIMENSIONS {
            return Err(format!("dimensions: 1 to {MAX_DIMENSIONS}"));
        }
        for d in &self.dimensions {
            if !(d.lo.is_finite() && d.hi.is_finite() && d.lo < d.hi && d.default.is_finite()) {
                return Err(format!(
                    "dimension {}: finite lo < hi and a finite default",
                    d.name
                ));
            }
        }
        let (low, high) = rules.query_epsilon;
        if !(low..=high).contains(&self.epsilon) {
            return Err(format!("epsilon: within [{low}, {high}]"));
        }
        if let Some(k) = self.blocks
            && !(2..=10_000).contains(&k)
        {
            return Err("blocks: 2 to 10000".into());
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
        &run.table.name,
        &run.env.job_id,
        Cost {
            epsilon: run.spec.epsilon,
            delta: 0.0,
        },
        run.rules.caps(),
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
    let blocks = match split(run.table, run.privacy_unit, run.spec.blocks).await {
        Ok(blocks) => blocks,
        Err(error) => {
            tracing::error!(job = %run.env.job_id, %error, "splitting the dataset into blocks");
            return refused(Category::Internal);
        }
    };
    let k = blocks.len();
    let dims = &run.spec.dimensions;
    let mut sums = vec![0.0; dims.len()];
    let mut defaulted = 0;
    for (index, block) in blocks.into_iter().enumerate() {
        // A fresh instance per block, same allowance for each.
        let mut env = JobEnv::new(format!("{}-block-{index}", run.env.job_id));
        env.limits = run.env.limits.clone();
        env.logical_time = run.env.logical_time;
        let execution = run
            .sandbox
            .run(
                run.module,
                &env,
                GuestCall::Analyze {
                    block,
                    params: run.params.to_string(),
                },
            )
            .await;
        let vector = match (&execution.category, execution.returned) {
            (Category::Ok, Some(Returned::Vector(v)))
                if v.len() == dims.len() && v.iter().all(|x| x.is_finite()) =>
            {
                v
            }
            _ => {
                defaulted += 1;
                dims.iter().map(|d| d.default).collect()
            }
        };
        for ((sum, value), d) in sums.iter_mut().zip(vector).zip(dims) {
            *sum += value.clamp(d.lo, d.hi);
        }
    }
    let epsilon_each = run.spec.epsilon / dims.len() as f64;
    let mut outputs = Vec::with_capacity(dims.len() + 1);
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
        outputs.push(Output::Value {
            name: "defaulted_blocks".into(),
            value: defaulted as f64,
        });
    }
    Release {
        category: Category::Ok,
        outputs,
        blocks: k,
        defaulted,
    }
}

/// The dataset's rows as Arrow IPC blocks, disjoint by privacy unit.
async fn split(
    table: &DatasetSource,
    privacy_unit: &str,
    blocks: Option<usize>,
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
    let mut rows: HashMap<&str, Vec<u32>> = HashMap::new();
    for i in 0..units.len() {
        // Rows without a privacy unit cannot be bounded: dropped.
        if units.is_valid(i) {
            rows.entry(units.value(i)).or_default().push(i as u32);
        }
    }
    let mut order: Vec<&str> = rows.keys().copied().collect();
    order.sort_unstable();
    order.shuffle(&mut rand::rng());
    let n = order.len().max(1);
    let k = blocks
        .unwrap_or_else(|| (n as f64).powf(0.4).ceil() as usize)
        .clamp(2, n.max(2));
    let mut assigned: Vec<Vec<u32>> = vec![Vec::new(); k];
    for (i, unit) in order.iter().enumerate() {
        assigned[i % k].extend(&rows[unit]);
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
