//! Reading one policy file: the TOML shape (unknown keys refused), every
//! value checked, each problem a `file:line` diagnostic.

use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

use super::dp::{DpSection, check_dp};
use super::*;

/// The `[cell_key]` section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CellKeySection {
    count_weights: Option<Vec<u32>>,
    magnitude: Option<f64>,
    top_contributors: Option<usize>,
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

pub(super) fn parse_policy(
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
