//! Output policies: what each dataset releases and how.
//!
//! Administrators write one TOML file per dataset (or one `default = true`
//! file) in `policies/`. A [`PolicySet`] is loaded from that directory with
//! every problem reported as `file:line: message`; a [`PolicyStore`] holds
//! the current set and swaps it on reload, while a running job keeps the
//! `Arc<Policy>` it started with. Every policy carries the SHA-256 of its
//! file, which goes with every job's result.
//!
//! The release modes themselves live in `crate::release`; this module only
//! reads and checks the files and does no query work.

mod dp;
mod parse;
mod populations;

pub use dp::{Accounting, BoundsSource, DpRules, Mechanism};
pub use populations::PopulationReport;

use parse::parse_policy;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

/// Release modes a policy can allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Aggregate,
    Dp,
    SampleAggregate,
    Contest,
    Scoring,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Aggregate => "aggregate",
            Mode::Dp => "dp",
            Mode::SampleAggregate => "sample-aggregate",
            Mode::Contest => "contest",
            Mode::Scoring => "scoring",
        }
    }

    /// Which side of a population the mode answers on: exact answers
    /// (`aggregate`, `contest`) or noisy ones under a privacy budget (`dp`,
    /// `sample-aggregate`). `scoring` is neither: it answers only about
    /// subjects that authorised the institution, by their consent.
    pub fn side(self) -> Option<Side> {
        match self {
            Mode::Aggregate | Mode::Contest => Some(Side::Exact),
            Mode::Dp | Mode::SampleAggregate => Some(Side::Noisy),
            Mode::Scoring => None,
        }
    }
}

/// The two kinds of answers a population can give. A tenant that has seen
/// exact answers about a population would make ε meaningless there, so each
/// tenant is pinned to one side per population by its first job on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    Exact,
    Noisy,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Exact => "exact",
            Side::Noisy => "noisy",
        }
    }

    pub fn parse(name: &str) -> Option<Side> {
        match name {
            "exact" => Some(Side::Exact),
            "noisy" => Some(Side::Noisy),
            _ => None,
        }
    }
}

/// Aggregate functions a policy can allow in `aggregate` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AggregateFn {
    Count,
    CountDistinct,
    Sum,
    Avg,
}

impl AggregateFn {
    pub fn name(self) -> &'static str {
        match self {
            AggregateFn::Count => "count",
            AggregateFn::CountDistinct => "count-distinct",
            AggregateFn::Sum => "sum",
            AggregateFn::Avg => "avg",
        }
    }
}

/// Rounding of released counts and sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rounding {
    #[default]
    None,
    /// Counts and sums to the nearest 5; counts of 7 or less are withheld.
    #[serde(rename = "nearest-5")]
    Nearest5,
}

/// How aggregate mode protects released counts and sums against
/// differencing across queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Perturbation {
    /// Cell-key perturbation (`crate::release::cell_key`).
    #[default]
    CellKey,
    /// Exact values (thresholds and dominance only).
    None,
}

/// Withhold SUM and AVG cells that one or two privacy units dominate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Dominance {
    /// Withheld when the largest contribution exceeds this share of the
    /// cell's absolute total.
    pub one: f64,
    /// Withheld when the two largest together exceed this share.
    pub two: f64,
}

impl Default for Dominance {
    fn default() -> Self {
        Dominance {
            one: 0.5,
            two: 0.67,
        }
    }
}

/// The `[ledger]` section: aggregate-mode queries a dataset answers, across
/// jobs. Unset limits do not apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerLimits {
    /// Per tenant and UTC day.
    pub tenant_queries_per_day: Option<u32>,
    /// Per tenant, ever.
    pub tenant_queries_total: Option<u32>,
    /// All tenants together, per UTC day.
    pub dataset_queries_per_day: Option<u32>,
    /// All tenants together, ever.
    pub dataset_queries_total: Option<u32>,
}

/// Whether released outputs wait for a human.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Review {
    #[default]
    None,
    Required,
}

/// A dataset's data-use agreement.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize, utoipa::ToSchema)]
pub struct Agreement {
    pub version: String,
    /// Hex SHA-256 of the text; an applicant accepts exactly this.
    pub sha256: String,
    pub text: String,
}

/// The `*.toml` files directly in `dir`, sorted; `what` names the
/// directory in the error.
pub fn toml_files(dir: &Path, what: &str) -> Result<Vec<PathBuf>, PolicyError> {
    let entries = std::fs::read_dir(dir).map_err(|error| {
        PolicyError(vec![PolicyDiagnostic {
            file: dir.to_path_buf(),
            line: 0,
            message: format!("cannot read the {what} directory: {error}"),
        }])
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

/// A checked policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The dataset it governs; `None` for the default policy.
    pub dataset: Option<String>,
    pub modes: Vec<Mode>,
    /// Distinct privacy units every released group and value must hold.
    pub min_group_size: u32,
    pub aggregates: Vec<AggregateFn>,
    pub rounding: Rounding,
    pub max_queries_per_job: Option<u32>,
    pub max_output_rows: Option<u32>,
    pub max_output_bytes: Option<u64>,
    /// Wall-time limit of a job (and the release time of noisy jobs).
    pub max_job_seconds: Option<u32>,
    pub review: Review,
    /// With `review = "required"`: hold only outputs over this many cells
    /// or with model coefficients (`None`: every output).
    pub review_cells_over: Option<u64>,
    /// Required when `modes` has `dp`.
    pub dp: Option<DpRules>,
    /// Cell-key perturbation of aggregate results, or `None` for exact ones.
    pub perturbation: Option<crate::release::cell_key::CellKeyParams>,
    pub dominance: Dominance,
    pub ledger: LedgerLimits,
    pub agreement: Option<Agreement>,
    /// Hex SHA-256 of the file's bytes.
    pub hash: String,
    pub source: PathBuf,
}

impl Policy {
    pub fn allows(&self, mode: Mode) -> bool {
        self.modes.contains(&mode)
    }
}

/// One problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDiagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for PolicyDiagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// All problems found in a policy directory.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} problem(s) in the policies:\n{}", .0.len(), .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct PolicyError(pub Vec<PolicyDiagnostic>);

/// The line (1-based) of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Every policy of a directory, by dataset.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    by_dataset: HashMap<String, Arc<Policy>>,
    default: Option<Arc<Policy>>,
}

impl PolicySet {
    /// Load and check every `*.toml` in `dir`. `known_datasets`, when given,
    /// are the catalog's ids: a policy naming another dataset is an error.
    pub fn load(dir: &Path, known_datasets: Option<&[String]>) -> Result<Self, PolicyError> {
        let mut diagnostics = Vec::new();
        let files = toml_files(dir, "policy")?;
        let mut set = PolicySet::default();
        let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
        for file in files {
            match parse_policy(&file, known_datasets) {
                Ok(policy) => {
                    let key = policy.dataset.clone().unwrap_or_else(|| "(default)".into());
                    if let Some(first) = seen.insert(key.clone(), file.clone()) {
                        diagnostics.push(PolicyDiagnostic {
                            file: file.clone(),
                            line: 1,
                            message: format!(
                                "a second policy for {key}; the first is {}",
                                first.display()
                            ),
                        });
                        continue;
                    }
                    let policy = Arc::new(policy);
                    match &policy.dataset {
                        Some(dataset) => {
                            set.by_dataset.insert(dataset.clone(), policy);
                        }
                        None => set.default = Some(policy),
                    }
                }
                Err(mut found) => diagnostics.append(&mut found),
            }
        }
        if diagnostics.is_empty() {
            Ok(set)
        } else {
            Err(PolicyError(diagnostics))
        }
    }

    /// The policy governing `dataset`: its own, else the default.
    pub fn policy_for(&self, dataset: &str) -> Option<Arc<Policy>> {
        self.by_dataset
            .get(dataset)
            .or(self.default.as_ref())
            .cloned()
    }

    /// Every policy, datasets first (sorted), then the default.
    pub fn policies(&self) -> Vec<Arc<Policy>> {
        let mut list: Vec<_> = self.by_dataset.values().cloned().collect();
        list.sort_by(|a, b| a.dataset.cmp(&b.dataset));
        list.extend(self.default.clone());
        list
    }
}

/// The current policies, swapped whole on reload. Jobs take an
/// `Arc<Policy>` when they start and keep it, whatever reloads happen.
#[derive(Debug)]
pub struct PolicyStore {
    dir: PathBuf,
    /// A `std` lock held only to clone or swap the `Arc`.
    current: RwLock<Arc<PolicySet>>,
}

impl PolicyStore {
    pub fn open(dir: &Path, known_datasets: Option<&[String]>) -> Result<Self, PolicyError> {
        Ok(PolicyStore {
            dir: dir.to_path_buf(),
            current: RwLock::new(Arc::new(PolicySet::load(dir, known_datasets)?)),
        })
    }

    /// The policy directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn current(&self) -> Arc<PolicySet> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Re-read the directory. On any error the old set stays in force.
    pub fn reload(&self, known_datasets: Option<&[String]>) -> Result<(), PolicyError> {
        let fresh = Arc::new(PolicySet::load(&self.dir, known_datasets)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}
