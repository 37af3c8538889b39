//! The `aggregate` release mode.
//!
//! Accepted shape (anything else is refused):
//!
//! ```text
//! SELECT <group keys and measures>
//! FROM <region>                      -- see `grammar`: protected tables joined INNER on declared keys,
//!                                    --   WHERE and computed columns from total expressions only
//! [GROUP BY <group keys>]            -- total expressions over non-identifier columns
//! measure := COUNT(*) | COUNT(col) | COUNT(DISTINCT <privacy unit>) | SUM(col) | AVG(col)
//!            (col: a non-identifier column of a catalog table, through widening casts only;
//!             each allowed by the dataset's policy)
//! ```
//!
//! HAVING, ORDER BY, LIMIT, window functions, joins with open tables, set
//! operations and outer queries are allowed only *above* such an
//! aggregation: they run on the released rows. A protected table read
//! anywhere else refuses the query (`row-level-output`), and after the
//! released rows replace every vetted aggregation the final plan is checked
//! again ([`super::no_protected_scan_left`]).
//!
//! [`enforce`] runs each vetted aggregation as one DataFusion plan, per
//! (group, privacy unit) (per row when the table holds one row per unit)
//! and then per group, so only one row per group reaches the host, which
//! releases, per group:
//! - nothing, unless the group holds at least `min_group_size` distinct
//!   privacy units (a withheld group looks exactly like an absent one);
//! - NULL for a value backed by fewer units with a non-NULL argument;
//! - NULL for a SUM or AVG that one unit dominates (more than the policy's
//!   `dominance_one` share of the cell's absolute total) or two do (more
//!   than `dominance_two`);
//! - counts and sums with cell-key perturbation ([`super::cell_key`]) when
//!   the policy asks for it (AVG is the perturbed sum over the perturbed
//!   count), then rounding.
//!
//! Rows without a privacy unit are never released. What the guest learns
//! besides the released rows is the release rule itself (schema metadata
//! [`RELEASE_METADATA_KEY`]); nothing about withheld groups.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::Column;
use datafusion::common::tree_node::{Transformed, TreeNodeRecursion};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::prelude::SessionContext;
use serde::Serialize;

use super::cell_key::{CellKeyParams, RecordKeys};
use super::grammar::Region;
use super::{Rejection, reject, vetted_scan};
pub use crate::policy::Dominance;

mod cells;
mod vet;

use crate::policy::{AggregateFn, Rounding};
use cells::run;
use vet::check_aggregation;

/// Schema metadata key under which an aggregate result states the rule it
/// was released under (threshold, perturbation, dominance, rounding).
pub const RELEASE_METADATA_KEY: &str = "datasandbox.release";

/// What the policy and the manifest say about one protected table.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct TableRules {
    /// The column naming the person or enterprise a row is about.
    pub privacy_unit: String,
    /// Columns with the `identifier` role (the privacy unit among them).
    pub identifiers: Vec<String>,
    /// Columns other tables may join on.
    pub join_keys: Vec<String>,
    pub min_group_size: u32,
    pub aggregates: Vec<AggregateFn>,
    pub rounding: Rounding,
    /// The table holds one row per privacy unit (verified by the catalog's
    /// profile when the version was registered).
    pub unit_is_unique: bool,
    /// Cell-key perturbation, or `None` for exact (thresholded) values.
    pub perturbation: Option<CellKeyParams>,
    pub dominance: Dominance,
    /// The catalog's record keys (see `cell_key`).
    pub record_keys: RecordKeys,
}

/// Tables by SQL name, for the protected tables of a job.
pub type RulesByTable = HashMap<String, Arc<TableRules>>;

/// Enforcement failed: refused by policy, or the vetted sub-query failed.
#[derive(Debug)]
pub enum EnforceError {
    Rejected(Rejection),
    Failed(datafusion::error::DataFusionError),
}

impl From<Rejection> for EnforceError {
    fn from(rejection: Rejection) -> Self {
        EnforceError::Rejected(rejection)
    }
}

/// The rule a result was released under, for the guest.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReleaseRule {
    pub mode: &'static str,
    pub min_group_size: u32,
    /// `cell-key` or `none`.
    pub perturbation: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_count_adjustment: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub magnitude: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_contributors: Option<usize>,
    pub dominance: [f64; 2],
    pub rounding: &'static str,
}

/// Does the plan read any protected table?
pub fn reads_protected(plan: &LogicalPlan, rules: &RulesByTable) -> bool {
    // A walk that fails counts as reading protected data: fail closed.
    plan.apply_with_subqueries(|node| {
        Ok(match node {
            LogicalPlan::TableScan(scan) if rules.contains_key(scan.table_name.table()) => {
                TreeNodeRecursion::Stop
            }
            _ => TreeNodeRecursion::Continue,
        })
    })
    .map_or(true, |r| r == TreeNodeRecursion::Stop)
}

/// The combined rules of the protected tables a region reads: the strictest
/// wins.
#[derive(Debug, Clone)]
struct Combined {
    min_group_size: u32,
    aggregates: Vec<AggregateFn>,
    rounding: Rounding,
    perturbation: Option<CellKeyParams>,
    dominance: Dominance,
    record_keys: RecordKeys,
}

fn combine(tables: &[&TableRules]) -> Combined {
    let first = tables[0];
    let mut combined = Combined {
        min_group_size: 0,
        aggregates: first.aggregates.clone(),
        rounding: Rounding::None,
        perturbation: None,
        dominance: first.dominance,
        record_keys: first.record_keys.clone(),
    };
    for rules in tables {
        combined.min_group_size = combined.min_group_size.max(rules.min_group_size);
        combined.aggregates.retain(|a| rules.aggregates.contains(a));
        if rules.rounding == Rounding::Nearest5 {
            combined.rounding = Rounding::Nearest5;
        }
        if let Some(params) = &rules.perturbation {
            let stronger = combined.perturbation.as_ref().is_none_or(|p| {
                params.max_count_adjustment() > p.max_count_adjustment()
                    || params.magnitude > p.magnitude
            });
            if stronger {
                combined.perturbation = Some(params.clone());
            }
        }
        combined.dominance.one = combined.dominance.one.min(rules.dominance.one);
        combined.dominance.two = combined.dominance.two.min(rules.dominance.two);
    }
    combined
}

/// One released aggregate of a vetted aggregation.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Measure {
    /// `COUNT(*)`.
    Rows,
    /// `COUNT(DISTINCT <privacy unit>)`.
    Units,
    /// `COUNT(col)`, by argument index.
    Count(usize),
    Sum(usize),
    Avg(usize),
}

/// A vetted aggregation, ready to run.
struct Vetting {
    region: Region,
    group_expr: Vec<Expr>,
    unit: Column,
    /// Distinct aggregate arguments (base columns of the region).
    arguments: Vec<Column>,
    measures: Vec<Measure>,
    single_unique_scan: bool,
    combined: Combined,
}

/// A query checked against the grammar, not yet run.
pub struct Prepared {
    first_level: Vec<LogicalPlan>,
    vettings: Vec<Vetting>,
}

impl Prepared {
    /// The protected tables the query reads, each once (for the ledger).
    pub fn tables(&self) -> Vec<String> {
        let mut tables: Vec<String> = self
            .vettings
            .iter()
            .flat_map(|v| v.region.scans.iter().cloned())
            .collect();
        tables.sort();
        tables.dedup();
        tables
    }
}

/// Check `plan` (see the module doc): every aggregation over protected rows
/// and the region below it. Depends on the plan and the rules only.
pub fn prepare(plan: &LogicalPlan, rules: &RulesByTable) -> Result<Prepared, Rejection> {
    let mut first_level = Vec::new();
    find_vetted(plan, rules, &mut first_level)?;
    if first_level.is_empty() {
        return Err(reject(
            "row-level-output",
            "a query over a protected dataset must return aggregates",
        ));
    }
    let mut vettings = Vec::with_capacity(first_level.len());
    for aggregate in &first_level {
        let LogicalPlan::Aggregate(inner) = aggregate else {
            unreachable!("collected aggregates")
        };
        vettings.push(check_aggregation(inner, rules)?);
    }
    Ok(Prepared {
        first_level,
        vettings,
    })
}

/// Run and vet every aggregation of a prepared query, and return the plan
/// to execute with the released rows in their place, and the release rule
/// for the result's metadata.
pub async fn enforce(
    ctx: &SessionContext,
    plan: LogicalPlan,
    prepared: Prepared,
    rules: &RulesByTable,
) -> Result<(LogicalPlan, ReleaseRule), EnforceError> {
    let Prepared {
        first_level,
        vettings,
    } = prepared;
    let mut rule: Option<ReleaseRule> = None;
    let mut replacements = Vec::with_capacity(first_level.len());
    for (index, (aggregate, vetting)) in first_level.iter().zip(&vettings).enumerate() {
        let LogicalPlan::Aggregate(inner) = aggregate else {
            unreachable!("collected aggregates")
        };
        let batches = run(ctx, inner, vetting).await?;
        let replacement =
            vetted_scan(index, &inner.schema, batches).map_err(EnforceError::Failed)?;
        replacements.push((aggregate.clone(), replacement));
        let this = release_rule(&vetting.combined);
        rule = Some(match rule {
            Some(r) if r.min_group_size >= this.min_group_size => r,
            _ => this,
        });
    }
    let rewritten = plan
        .transform_up_with_subqueries(|node| {
            if let Some((_, replacement)) =
                replacements.iter().find(|(original, _)| *original == node)
            {
                return Ok(Transformed::yes(replacement.clone()));
            }
            // Nullability of vetted columns differs from the original's.
            Ok(Transformed::yes(node.recompute_schema()?))
        })
        .map_err(EnforceError::Failed)?
        .data;
    super::no_protected_scan_left(&rewritten, |table| rules.contains_key(table))?;
    let rule = rule.ok_or_else(|| {
        reject(
            "row-level-output",
            "a query over a protected dataset must return aggregates",
        )
    })?;
    Ok((rewritten, rule))
}

fn release_rule(combined: &Combined) -> ReleaseRule {
    let p = combined.perturbation.as_ref();
    ReleaseRule {
        mode: "aggregate",
        min_group_size: combined.min_group_size,
        perturbation: if p.is_some() { "cell-key" } else { "none" },
        max_count_adjustment: p.map(CellKeyParams::max_count_adjustment),
        magnitude: p.map(|p| p.magnitude),
        top_contributors: p.map(|p| p.top_contributors),
        dominance: [combined.dominance.one, combined.dominance.two],
        rounding: match combined.rounding {
            Rounding::None => "none",
            Rounding::Nearest5 => "nearest-5",
        },
    }
}

/// Whether `plan` reads a protected table other than through an
/// aggregation (which would be vetted on its own). Subqueries count: a
/// region with one is refused, which fails closed.
fn reaches_protected_rows(plan: &LogicalPlan, rules: &RulesByTable) -> bool {
    match plan {
        LogicalPlan::TableScan(scan) => rules.contains_key(scan.table_name.table()),
        LogicalPlan::Aggregate(_) => false,
        _ => {
            let mut in_subquery = false;
            let walked = plan.apply_subqueries(|subquery| {
                if reads_protected(subquery, rules) {
                    in_subquery = true;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            });
            in_subquery
                || walked.is_err()
                || plan
                    .inputs()
                    .into_iter()
                    .any(|child| reaches_protected_rows(child, rules))
        }
    }
}

/// Every aggregation whose input reads protected rows directly is a vetted
/// aggregation (aggregations above it see released rows only); a protected
/// scan reached otherwise is row-level output.
fn find_vetted(
    plan: &LogicalPlan,
    rules: &RulesByTable,
    found: &mut Vec<LogicalPlan>,
) -> Result<(), Rejection> {
    match plan {
        LogicalPlan::Aggregate(aggregate) if reaches_protected_rows(&aggregate.input, rules) => {
            if !found.contains(plan) {
                found.push(plan.clone());
            }
            return Ok(());
        }
        LogicalPlan::TableScan(scan) if rules.contains_key(scan.table_name.table()) => {
            return Err(reject(
                "row-level-output",
                format!(
                    "rows of {} reach the output without aggregation",
                    scan.table_name.table()
                ),
            ));
        }
        _ => {}
    }
    let mut problem = None;
    let walked = plan.apply_subqueries(|subquery| {
        if let LogicalPlan::Subquery(subquery) = subquery
            && let Err(e) = find_vetted(&subquery.subquery, rules, found)
        {
            problem = Some(e);
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    if let Some(problem) = problem {
        return Err(problem);
    }
    walked.map_err(|_| reject("plan", "the query could not be walked"))?;
    for child in plan.inputs() {
        find_vetted(child, rules, found)?;
    }
    Ok(())
}
