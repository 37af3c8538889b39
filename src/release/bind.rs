//! Binding: a dataset's manifest × the policy in force × the job's mode
//! become the tables a job may query (with the release rules of its mode)
//! and the job's limits. The one place that turns policy text into what a
//! job runs under; `catalog`, `dp` and `policy` do not know about each
//! other.
//!
//! Protected data fails closed here: without a policy that allows the
//! job's mode, a protected table gets no rules and so answers no query.

use std::path::Path;
use std::sync::Arc;

use crate::catalog::{DatasetVersion, Manifest, raw_table};
use crate::dataset::{Classification, DataFormat, DatasetSource};
use crate::dp::DpTable;
use crate::policy::{DpRules, Mode, Policy, PolicySet};
use crate::release::aggregate::TableRules;
use crate::release::cell_key::RecordKeys;
use crate::sandbox::Limits;

/// A data file under its manifest as a table of an exact-mode job:
/// declared schema, dictionary and, for protected data whose policy allows
/// the aggregate mode, its rules. `unit_is_unique`: the data holds one row
/// per privacy unit (from the profile), which makes counting units cheaper.
pub fn job_table(
    manifest: &Manifest,
    path: &Path,
    format: DataFormat,
    policies: &PolicySet,
    unit_is_unique: bool,
    record_keys: &RecordKeys,
) -> DatasetSource {
    let mut table = raw_table(manifest, path, format);
    if manifest.classification == Classification::Open {
        return table;
    }
    table.rules = policies
        .policy_for(&manifest.id)
        .filter(|p| p.allows(Mode::Aggregate))
        .map(|policy| {
            Arc::new(TableRules {
                privacy_unit: manifest.privacy_unit.clone(),
                identifiers: manifest.identifiers(),
                join_keys: manifest.join_keys.clone(),
                min_group_size: policy.min_group_size,
                aggregates: policy.aggregates.clone(),
                rounding: policy.rounding,
                unit_is_unique,
                perturbation: policy.perturbation.clone(),
                dominance: policy.dominance,
                record_keys: record_keys.clone(),
            })
        });
    table
}

/// A data file as a table of a `dp`-mode job: no aggregate rules, the DP
/// rules of a policy that allows `dp`. Protected data without a `dp` policy
/// answers nothing; open data without one is answered exactly (it is
/// public).
pub fn dp_job_table(
    manifest: &Manifest,
    path: &Path,
    format: DataFormat,
    policies: &PolicySet,
    unit_is_unique: bool,
) -> DatasetSource {
    let mut table = raw_table(manifest, path, format);
    table.dp = policies
        .policy_for(&manifest.id)
        .filter(|p| p.allows(Mode::Dp))
        .and_then(|p| p.dp)
        .map(|rules| Arc::new(dp_table(manifest, rules, unit_is_unique)));
    table
}

/// A stored version as a table of an exact-mode job.
pub fn version_table(version: &DatasetVersion, policies: &PolicySet) -> DatasetSource {
    job_table(
        &version.manifest,
        &version.path,
        version.format,
        policies,
        unit_is_unique(version),
        &version.record_keys,
    )
}

/// A stored version as a table of a `dp`-mode job.
pub fn version_dp_table(version: &DatasetVersion, policies: &PolicySet) -> DatasetSource {
    dp_job_table(
        &version.manifest,
        &version.path,
        version.format,
        policies,
        unit_is_unique(version),
    )
}

fn unit_is_unique(version: &DatasetVersion) -> bool {
    version.profile.rows == version.profile.privacy_units
}

/// What `dp::sql` needs to know of one table: its unit, population,
/// identifiers, declared bounds and categories, and the policy's DP rules.
pub fn dp_table(manifest: &Manifest, rules: DpRules, unit_is_unique: bool) -> DpTable {
    DpTable {
        dataset: manifest.id.clone(),
        privacy_unit: manifest.privacy_unit.clone(),
        population: manifest.population().to_string(),
        identifiers: manifest.identifiers(),
        bounds: manifest
            .columns
            .iter()
            .filter_map(|c| c.bounds.map(|[lo, hi]| (c.name.clone(), (lo, hi))))
            .collect(),
        categories: manifest
            .columns
            .iter()
            .filter_map(|c| c.categories.clone().map(|list| (c.name.clone(), list)))
            .collect(),
        unit_is_unique,
        rows_per_unit: manifest.max_rows_per_unit,
        rules,
    }
}

/// A job's limits tightened by its dataset's policy caps.
pub fn job_limits(policy: &Policy, base: &Limits) -> Limits {
    let mut limits = base.clone();
    if let Some(queries) = policy.max_queries_per_job {
        limits.queries = limits.queries.min(queries as usize);
    }
    if let Some(rows) = policy.max_output_rows {
        limits.output_rows = limits.output_rows.min(rows as usize);
    }
    if let Some(seconds) = policy.max_job_seconds {
        limits.timeout = limits
            .timeout
            .min(std::time::Duration::from_secs(u64::from(seconds)));
    }
    if let Some(bytes) = policy.max_output_bytes {
        limits.output_bytes = limits
            .output_bytes
            .min(usize::try_from(bytes).unwrap_or(usize::MAX));
    }
    limits
}

/// A dataset's policy does not offer the mode a request asked for (or the
/// dataset has no policy: protected data fails closed).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the policy of {dataset} does not allow the {mode} mode")]
pub struct ModeNotAllowed {
    pub dataset: String,
    pub mode: Mode,
}

/// The one check that a dataset's policy offers `mode`; the policy when it
/// does.
pub fn require_mode(
    policies: &PolicySet,
    dataset: &str,
    mode: Mode,
) -> Result<Arc<Policy>, ModeNotAllowed> {
    policies
        .policy_for(dataset)
        .filter(|p| p.allows(mode))
        .ok_or_else(|| ModeNotAllowed {
            dataset: dataset.to_string(),
            mode,
        })
}
