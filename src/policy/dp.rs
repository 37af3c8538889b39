//! A policy's `[dp]` section: ε per query and in total, δ, bounds,
//! mechanism and accounting, checked into `DpRules`.

use serde::{Deserialize, Serialize};

/// The `[dp]` section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DpSection {
    epsilon_total: f64,
    #[serde(default)]
    delta_total: f64,
    epsilon_dataset: Option<f64>,
    delta_dataset: Option<f64>,
    #[serde(default = "default_query_epsilon")]
    query_epsilon: [f64; 2],
    #[serde(default = "default_delta_per_query")]
    delta_per_query: f64,
    #[serde(default = "default_max_groups")]
    max_groups_per_unit: u32,
    #[serde(default = "default_max_rows")]
    max_rows_per_group: u32,
    #[serde(default)]
    bounds: BoundsSource,
    #[serde(default)]
    report_defaulted: bool,
    #[serde(default)]
    mechanism: Mechanism,
    #[serde(default)]
    accounting: Accounting,
}

/// How a population's charges add up against its caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Accounting {
    /// Every query's (ε, δ) adds up (basic composition).
    #[default]
    Approximate,
    /// Each query is charged ρ (zero-concentrated DP); ρ adds up and is
    /// converted to (ε, δ) once against the caps, so many queries cost much
    /// less ε than their sum. Answers published keys only (a threshold on
    /// keys is approximate DP, not zCDP).
    Zcdp,
}

/// The noise of the `dp` mode's counts and sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mechanism {
    /// Discrete Laplace, pure ε per query (L1 sensitivity).
    #[default]
    Laplace,
    /// Discrete Gaussian, (ε, δ) per query through zCDP (L2 sensitivity:
    /// better when a unit touches several groups). Each query also spends
    /// `delta_per_query`.
    Gaussian,
}

fn default_query_epsilon() -> [f64; 2] {
    [0.01, 2.0]
}

fn default_delta_per_query() -> f64 {
    1e-7
}

fn default_max_groups() -> u32 {
    1
}

fn default_max_rows() -> u32 {
    1
}

/// Where clamping bounds come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BoundsSource {
    /// The manifest's declared `bounds` (public knowledge, never the data).
    #[default]
    Manifest,
}

/// Differential-privacy rules of a dataset (the `[dp]` section).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DpRules {
    /// ε (and δ) each principal may spend on the dataset, before any
    /// administrator's grant.
    pub epsilon_total: f64,
    pub delta_total: f64,
    /// ε all principals together may spend on the dataset's population
    /// (against colluding accounts).
    pub epsilon_dataset: Option<f64>,
    /// δ all principals together may spend on the population.
    pub delta_dataset: Option<f64>,
    /// Smallest and largest ε one query may ask for.
    pub query_epsilon: (f64, f64),
    /// δ of one query that selects group keys by a noisy threshold.
    pub delta_per_query: f64,
    /// Groups one privacy unit may contribute to (more are sampled).
    pub max_groups_per_unit: u32,
    /// Rows one privacy unit may contribute to one group (more are sampled).
    pub max_rows_per_group: u32,
    pub bounds: BoundsSource,
    /// Sample-and-aggregate releases how many blocks were defaulted (a
    /// small residual channel about failures; off by default).
    pub report_defaulted: bool,
    pub mechanism: Mechanism,
    pub accounting: Accounting,
}

impl DpRules {
    pub fn caps(&self) -> crate::dp::budget::Caps {
        crate::dp::budget::Caps {
            total: crate::dp::budget::Cost {
                epsilon: self.epsilon_total,
                delta: self.delta_total,
                rho: 0.0,
            },
            dataset_epsilon: self.epsilon_dataset,
            dataset_delta: self.delta_dataset,
            zcdp: self.accounting == Accounting::Zcdp,
        }
    }
}

pub(super) fn check_dp(section: &DpSection) -> Result<DpRules, String> {
    let [low, high] = section.query_epsilon;
    if !(0.01..=20.0).contains(&low) || !(0.01..=20.0).contains(&high) || low > high {
        return Err("dp.query_epsilon: [low, high] within 0.01 to 20, low first".into());
    }
    if !(section.epsilon_total.is_finite() && section.epsilon_total > 0.0) {
        return Err("dp.epsilon_total: a positive number".into());
    }
    if section.epsilon_total < low {
        return Err("dp.epsilon_total: smaller than the cheapest query".into());
    }
    if let Some(all) = section.epsilon_dataset
        && !(all.is_finite() && all >= section.epsilon_total)
    {
        return Err("dp.epsilon_dataset: at least epsilon_total".into());
    }
    if let Some(all) = section.delta_dataset
        && !(all.is_finite() && all >= section.delta_total && all < 1e-2)
    {
        return Err("dp.delta_dataset: at least delta_total, below 1e-2".into());
    }
    if !(section.delta_total.is_finite() && (0.0..1e-3).contains(&section.delta_total)) {
        return Err("dp.delta_total: from 0 to below 1e-3".into());
    }
    if !(section.delta_per_query > 0.0 && section.delta_per_query <= 1e-5) {
        return Err("dp.delta_per_query: above 0, at most 1e-5".into());
    }
    if section.mechanism == Mechanism::Gaussian && section.delta_total <= 0.0 {
        return Err(
            "dp.mechanism = \"gaussian\" spends δ on every query: set dp.delta_total".into(),
        );
    }
    if section.accounting == Accounting::Zcdp && section.delta_total <= 0.0 {
        return Err(
            "dp.accounting = \"zcdp\" converts ρ to ε at the δ cap: set dp.delta_total".into(),
        );
    }
    if !(1..=100).contains(&section.max_groups_per_unit)
        || !(1..=1000).contains(&section.max_rows_per_group)
    {
        return Err("dp.max_groups_per_unit: 1 to 100; dp.max_rows_per_group: 1 to 1000".into());
    }
    Ok(DpRules {
        epsilon_total: section.epsilon_total,
        delta_total: section.delta_total,
        epsilon_dataset: section.epsilon_dataset,
        delta_dataset: section.delta_dataset,
        query_epsilon: (low, high),
        delta_per_query: section.delta_per_query,
        max_groups_per_unit: section.max_groups_per_unit,
        max_rows_per_group: section.max_rows_per_group,
        bounds: section.bounds,
        report_defaulted: section.report_defaulted,
        mechanism: section.mechanism,
        accounting: section.accounting,
    })
}
