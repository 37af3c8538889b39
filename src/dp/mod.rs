//! Differential privacy: the `dp` release mode (DP SQL) and the budgets
//! every noisy answer is charged to.
//!
//! - [`budget`]: per (principal, dataset) ledgers in the store; a charge is
//!   committed with its audit entry before the answer is computed.
//! - [`noise`]: the mechanisms, all from OpenDP's exact samplers (discrete
//!   Laplace on integers and on a 2⁻ᵏ grid for floats, Laplace threshold
//!   for key selection); this crate samples no noise of its own.
//! - [`sql`]: the DP subset of SQL, planned by DataFusion: contribution
//!   bounding, clamping, true aggregates, noise, key release.
//! - [`sample_aggregate`]: DP for arbitrary code: disjoint blocks by
//!   privacy unit, a fresh instance per block, clamped average plus noise.

pub mod budget;
pub mod noise;
pub mod sample_aggregate;
pub mod sides;
pub mod sql;

use std::collections::HashMap;
use std::sync::Arc;

use crate::policy::DpRules;
use crate::store::Store;

/// Schema metadata key under which a DP answer tells the guest what it cost
/// and how noisy each column is (JSON).
pub const DP_METADATA_KEY: &str = "datasandbox.dp";

/// What the manifest and the policy say about one table in `dp` mode.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DpTable {
    pub dataset: String,
    /// Always the manifest's; a query cannot change it.
    pub privacy_unit: String,
    /// The population whose budget the table's queries spend.
    pub population: String,
    pub identifiers: Vec<String>,
    /// Declared clamping bounds of numeric columns.
    pub bounds: HashMap<String, (f64, f64)>,
    /// Published category lists (keys released without a threshold).
    pub categories: HashMap<String, Vec<String>>,
    /// One row per privacy unit (from the profile): no bounding needed.
    pub unit_is_unique: bool,
    /// The manifest's `max_rows_per_unit`, which the registered data was
    /// checked against.
    pub rows_per_unit: Option<u32>,
    pub rules: DpRules,
}

/// Where one job's charges go.
#[derive(Debug, Clone)]
pub struct Ledger {
    pub store: Store,
    pub principal: String,
    pub job_id: String,
    /// The populations of the job's tables, with their members and caps
    /// (resolved from the catalog and the policies when the job is
    /// committed).
    pub populations: HashMap<String, budget::Population>,
}

impl Ledger {
    /// The budget `table`'s queries are charged to. A table whose
    /// population was not resolved is a population of its own under its
    /// policy's caps.
    pub fn population(&self, table: &DpTable) -> budget::Population {
        self.populations
            .get(&table.population)
            .cloned()
            .unwrap_or_else(|| budget::Population {
                id: table.population.clone(),
                datasets: vec![table.dataset.clone()],
                caps: table.rules.caps(),
            })
    }
}

/// An error bound instead of ε: each noisy number of an answer is within
/// `within` of the true aggregate (after bounding) with probability at
/// least `confidence`, and the host spends the least ε that achieves it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Accuracy {
    pub within: f64,
    #[serde(default = "default_confidence")]
    pub confidence: f64,
}

fn default_confidence() -> f64 {
    0.95
}

impl Accuracy {
    /// Finite positive bound, confidence in [0.5, 0.999].
    pub fn check(&self) -> Result<(), String> {
        if !(self.within.is_finite() && self.within > 0.0) {
            return Err("accuracy.within: a positive number".into());
        }
        if !(0.5..=0.999).contains(&self.confidence) {
            return Err("accuracy.confidence: from 0.5 to 0.999".into());
        }
        Ok(())
    }

    /// The ε one noisy quantity of L1 sensitivity `sensitivity` needs.
    /// Discrete Laplace of scale b has P(|Z| ≥ k) = 2e^{-k/b}/(1 + e^{-1/b})
    /// ≤ 2e^{-k/b}, so b = within / ln(2 / (1 − confidence)) keeps the noise
    /// within the bound at the confidence (the lattice Laplace of floats is
    /// tighter still).
    pub fn epsilon_for(&self, sensitivity: f64) -> f64 {
        sensitivity * (2.0 / (1.0 - self.confidence)).ln() / self.within
    }
}

/// A job's DP context: its tables, the ε of each query, its ledger.
#[derive(Debug)]
pub struct DpSession {
    pub tables: HashMap<String, Arc<DpTable>>,
    /// ε of each query, declared at submission within the policy's range.
    pub epsilon: f64,
    /// Instead of `epsilon`: each query spends what reaches this bound
    /// (refused if that is more than the policy lets one query spend).
    pub accuracy: Option<Accuracy>,
    pub ledger: Ledger,
}
