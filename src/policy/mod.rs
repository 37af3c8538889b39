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

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
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

/// The `[cell_key]` section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CellKeySection {
    count_weights: Option<Vec<u32>>,
    magnitude: Option<f64>,
    top_contributors: Option<usize>,
}

/// Withhold SUM and AVG cells that one or two privacy units dominate.
#[derive(Debug, Clone, Copy, PartialEq)]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
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

fn default_min_group_size() -> Spanned<u32> {
    Spanned::new(0..0, 10)
}

fn default_aggregates() -> Vec<Spanned<AggregateFn>> {
    [
        AggregateFn::Count,
        AggregateFn::CountDistinct,
        AggregateFn::Sum,
        AggregateFn::Avg,
    ]
    .into_iter()
    .map(|a| Spanned::new(0..0, a))
    .collect()
}

/// A policy file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    dataset: Option<Spanned<String>>,
    #[serde(default)]
    default: bool,
    modes: Spanned<Vec<Spanned<Mode>>>,
    #[serde(default = "default_min_group_size")]
    min_group_size: Spanned<u32>,
    #[serde(default = "default_aggregates")]
    aggregates: Vec<Spanned<AggregateFn>>,
    #[serde(default)]
    rounding: Rounding,
    max_queries_per_job: Option<Spanned<u32>>,
    max_output_rows: Option<Spanned<u32>>,
    max_output_bytes: Option<Spanned<u64>>,
    /// A job's wall-time limit in seconds. Noisy and contest jobs are
    /// released at this limit after their start, whatever they did.
    max_job_seconds: Option<Spanned<u32>>,
    #[serde(default)]
    review: Review,
    /// Review only outputs with more than this many cells (table cells and
    /// values together), or any model coefficients (`coef*` values).
    review_cells_over: Option<u64>,
    dp: Option<Spanned<DpSection>>,
    #[serde(default)]
    perturbation: Perturbation,
    cell_key: Option<Spanned<CellKeySection>>,
    /// `[one, two]`: SUM/AVG cells where one unit holds more than `one` of
    /// the absolute total, or two more than `two`, are withheld.
    dominance: Option<Spanned<[f64; 2]>>,
    ledger: Option<LedgerLimits>,
    /// The data-use agreement applicants accept (a file next to the
    /// policies, e.g. `agreements/enterprises.md`).
    agreement: Option<Spanned<String>>,
    agreement_version: Option<String>,
}

/// A dataset's data-use agreement.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize, utoipa::ToSchema)]
pub struct Agreement {
    pub version: String,
    /// Hex SHA-256 of the text; an applicant accepts exactly this.
    pub sha256: String,
    pub text: String,
}

/// The `[dp]` section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DpSection {
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BoundsSource {
    /// The manifest's declared `bounds` (public knowledge, never the data).
    #[default]
    Manifest,
}

/// Differential-privacy rules of a dataset (the `[dp]` section).
#[derive(Debug, Clone, Copy, PartialEq)]
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

fn check_dp(section: &DpSection) -> Result<DpRules, String> {
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

/// What checking policies against the catalog's populations found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PopulationReport {
    /// Errors: the set is refused.
    pub problems: Vec<PolicyDiagnostic>,
    /// Facts an administrator should read (populations answered on both
    /// sides, and the rule that applies to them).
    pub notes: Vec<String>,
}

impl PolicySet {
    /// The tightest budget caps over `datasets` (one population) whose
    /// policies allow a noisy mode; `None` when none does.
    pub fn population_caps(&self, datasets: &[String]) -> Option<crate::dp::budget::Caps> {
        datasets
            .iter()
            .filter_map(|d| self.policy_for(d))
            .filter(|p| p.allows(Mode::Dp) || p.allows(Mode::SampleAggregate))
            .filter_map(|p| p.dp.map(|rules| rules.caps()))
            .reduce(|a, b| a.tightest(b))
    }

    /// Check the set against the catalog's populations (`dataset →
    /// population`): the noisy modes of one population share one budget,
    /// so their policies must state the same caps; and a population
    /// answered on both sides is reported with the per-tenant rule.
    pub fn check_populations(&self, populations: &BTreeMap<String, String>) -> PopulationReport {
        let mut members: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (dataset, population) in populations {
            members.entry(population).or_default().push(dataset);
        }
        let mut report = PopulationReport::default();
        for (population, datasets) in members {
            let mut caps: Vec<(&str, Arc<Policy>, crate::dp::budget::Caps)> = Vec::new();
            let mut sides: BTreeMap<Side, Vec<String>> = BTreeMap::new();
            for dataset in &datasets {
                let Some(policy) = self.policy_for(dataset) else {
                    continue;
                };
                for mode in &policy.modes {
                    if let Some(side) = mode.side() {
                        sides
                            .entry(side)
                            .or_default()
                            .push(format!("{} on {dataset}", mode.name()));
                    }
                }
                if (policy.allows(Mode::Dp) || policy.allows(Mode::SampleAggregate))
                    && let Some(rules) = policy.dp
                {
                    caps.push((dataset, Arc::clone(&policy), rules.caps()));
                }
            }
            if let Some((first, _, expected)) = caps.first() {
                for (dataset, policy, found) in &caps[1..] {
                    if found != expected {
                        report.problems.push(PolicyDiagnostic {
                            file: policy.source.clone(),
                            line: 1,
                            message: format!(
                                "[dp] of {dataset} states other budget caps than {first}'s \
                                 ({found:?} against {expected:?}); both are in population \
                                 {population}, which has one budget"
                            ),
                        });
                    }
                }
            }
            if let (Some(exact), Some(noisy)) = (sides.get(&Side::Exact), sides.get(&Side::Noisy)) {
                report.notes.push(format!(
                    "population {population} answers exactly ({}) and with noise ({}): \
                     each tenant is pinned to one side by its first job on the population \
                     and is refused the other (mode-conflict)",
                    exact.join(", "),
                    noisy.join(", ")
                ));
            }
        }
        report
    }
}

fn parse_policy(
    file: &Path,
    known_datasets: Option<&[String]>,
) -> Result<Policy, Vec<PolicyDiagnostic>> {
    let diagnostic = |line: usize, message: String| PolicyDiagnostic {
        file: file.to_path_buf(),
        line,
        message,
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| vec![diagnostic(0, format!("cannot read: {e}"))])?;
    let parsed: PolicyFile = toml::from_str(&text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(&text, s.start));
        vec![diagnostic(line, e.message().to_string())]
    })?;
    let at = |span: std::ops::Range<usize>| {
        if span.is_empty() {
            1
        } else {
            line_of(&text, span.start)
        }
    };
    let mut problems = Vec::new();
    match (&parsed.dataset, parsed.default) {
        (Some(dataset), true) => problems.push(diagnostic(
            at(dataset.span()),
            "a policy names a dataset or is the default, not both".into(),
        )),
        (None, false) => problems.push(diagnostic(
            1,
            "missing `dataset` (or `default = true`)".into(),
        )),
        (Some(dataset), false) => {
            if let Some(known) = known_datasets
                && !known.contains(dataset.get_ref())
            {
                problems.push(diagnostic(
                    at(dataset.span()),
                    format!(
                        "unknown dataset {:?}: not in the catalog",
                        dataset.get_ref()
                    ),
                ));
            }
        }
        (None, true) => {}
    }
    if parsed.modes.get_ref().is_empty() {
        problems.push(diagnostic(
            at(parsed.modes.span()),
            "`modes` allows nothing; list at least one".into(),
        ));
    }
    let min_group_size = *parsed.min_group_size.get_ref();
    if min_group_size < 2 {
        problems.push(diagnostic(
            at(parsed.min_group_size.span()),
            "`min_group_size` must be at least 2".into(),
        ));
    }
    if parsed.aggregates.is_empty() {
        problems.push(diagnostic(
            1,
            "`aggregates` allows nothing; list at least one".into(),
        ));
    }
    for (name, value) in [
        (
            "max_queries_per_job",
            parsed
                .max_queries_per_job
                .as_ref()
                .map(|v| (u64::from(*v.get_ref()), v.span())),
        ),
        (
            "max_output_rows",
            parsed
                .max_output_rows
                .as_ref()
                .map(|v| (u64::from(*v.get_ref()), v.span())),
        ),
        (
            "max_output_bytes",
            parsed
                .max_output_bytes
                .as_ref()
                .map(|v| (*v.get_ref(), v.span())),
        ),
        (
            "max_job_seconds",
            parsed
                .max_job_seconds
                .as_ref()
                .map(|v| (u64::from(*v.get_ref()), v.span())),
        ),
    ] {
        if let Some((0, span)) = value {
            problems.push(diagnostic(at(span), format!("`{name}` must be at least 1")));
        }
    }
    let dp = match &parsed.dp {
        Some(section) => match check_dp(section.get_ref()) {
            Ok(rules) => Some(rules),
            Err(message) => {
                problems.push(diagnostic(at(section.span()), message));
                None
            }
        },
        None => None,
    };
    if dp.is_none()
        && parsed.dp.is_none()
        && parsed
            .modes
            .get_ref()
            .iter()
            .any(|m| matches!(m.get_ref(), Mode::Dp | Mode::SampleAggregate))
    {
        problems.push(diagnostic(
            at(parsed.modes.span()),
            "modes `dp` and `sample-aggregate` need a `[dp]` section (epsilon_total at least)"
                .into(),
        ));
    }
    let perturbation = match parsed.perturbation {
        Perturbation::None => {
            if let Some(section) = &parsed.cell_key {
                problems.push(diagnostic(
                    at(section.span()),
                    "`[cell_key]` needs `perturbation = \"cell-key\"`".into(),
                ));
            }
            None
        }
        Perturbation::CellKey => {
            let mut params = crate::release::cell_key::CellKeyParams::default();
            let mut line = 1;
            if let Some(section) = &parsed.cell_key {
                line = at(section.span());
                let section = section.get_ref();
                if let Some(weights) = &section.count_weights {
                    params.count_weights = weights.clone();
                }
                if let Some(magnitude) = section.magnitude {
                    params.magnitude = magnitude;
                }
                if let Some(top) = section.top_contributors {
                    params.top_contributors = top;
                }
            }
            if let Err(message) = params.check(min_group_size) {
                problems.push(diagnostic(line, format!("cell_key: {message}")));
            }
            Some(params)
        }
    };
    let mut dominance = Dominance::default();
    if let Some(shares) = &parsed.dominance {
        let [one, two] = *shares.get_ref();
        if !(0.0 < one && one <= 1.0 && one <= two && two <= 1.0) {
            problems.push(diagnostic(
                at(shares.span()),
                "`dominance = [one, two]` needs 0 < one <= two <= 1 (shares of a cell's total)"
                    .into(),
            ));
        }
        dominance = Dominance { one, two };
    }
    let agreement = match (&parsed.agreement, &parsed.agreement_version) {
        (Some(path), Some(version)) => {
            let full = file.parent().unwrap_or(Path::new(".")).join(path.get_ref());
            match std::fs::read_to_string(&full) {
                Ok(text) => Some(Agreement {
                    version: version.clone(),
                    sha256: hex::encode(Sha256::digest(text.as_bytes())),
                    text,
                }),
                Err(e) => {
                    problems.push(diagnostic(
                        at(path.span()),
                        format!("agreement: cannot read {}: {e}", full.display()),
                    ));
                    None
                }
            }
        }
        (None, None) => None,
        (Some(path), None) => {
            problems.push(diagnostic(
                at(path.span()),
                "agreement needs an agreement_version".into(),
            ));
            None
        }
        (None, Some(_)) => {
            problems.push(diagnostic(
                1,
                "agreement_version without an agreement".into(),
            ));
            None
        }
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Policy {
        dataset: parsed.dataset.map(Spanned::into_inner),
        modes: parsed
            .modes
            .into_inner()
            .into_iter()
            .map(Spanned::into_inner)
            .collect(),
        min_group_size,
        aggregates: parsed
            .aggregates
            .into_iter()
            .map(Spanned::into_inner)
            .collect(),
        rounding: parsed.rounding,
        max_queries_per_job: parsed.max_queries_per_job.map(Spanned::into_inner),
        max_output_rows: parsed.max_output_rows.map(Spanned::into_inner),
        max_output_bytes: parsed.max_output_bytes.map(Spanned::into_inner),
        max_job_seconds: parsed.max_job_seconds.map(Spanned::into_inner),
        review: parsed.review,
        review_cells_over: parsed.review_cells_over,
        dp,
        perturbation,
        dominance,
        ledger: parsed.ledger.unwrap_or_default(),
        agreement,
        hash: hex::encode(Sha256::digest(text.as_bytes())),
        source: file.to_path_buf(),
    })
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
