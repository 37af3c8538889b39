//! DP SQL: the subset of SQL the `dp` mode answers, and how.
//!
//! Accepted: one aggregation directly over one DP table, with optional
//! `WHERE` on non-identifier columns, `GROUP BY` non-identifier columns, and
//! `COUNT(*)`, `COUNT(col)`, `COUNT(DISTINCT <privacy unit>)`, `SUM(col)`,
//! `AVG(col)` of numeric columns with declared bounds. Anything above the
//! aggregation (`HAVING`, `ORDER BY`, `LIMIT`, outer queries) runs on the
//! noisy answer only: post-processing cannot weaken the guarantee.
//!
//! The host, not the guest, decides everything that matters for privacy:
//!
//! 1. Contribution bounding ([`spend::Bounds`]): a table with one row per
//!    unit needs none; a manifest's `max_rows_per_unit`, which the data was
//!    held to at registration, is used as it is when it is no looser than
//!    the policy's per-query bounds on every sensitivity the query uses
//!    (see [`spend::Bounds::of`]; a unit then moves a count by at most that
//!    many rows, in L1 and L2 alike, and the
//!    query runs with no per-unit stage); otherwise, in DataFusion, in two
//!    stages (no per-unit state in Rust, so it scales with DataFusion): per
//!    (unit, group) each measure's partial is computed on values clamped to
//!    the manifest's bounds and then capped as if the unit kept at most
//!    `max_rows_per_group` rows there (counts at most that many, sums within
//!    `max_rows_per_group·[min(lo,0), max(hi,0)]`); then each unit keeps at
//!    most `max_groups_per_unit` of its groups, a uniform random subset
//!    (`row_number() OVER (PARTITION BY unit ORDER BY random())`). Rows
//!    without a privacy unit are dropped. A unit therefore moves any sum by
//!    at most `groups·rows·max(|lo|,|hi|)` in L1 and any count by
//!    `groups·rows`, the sensitivities the noise is scaled to.
//! 2. True aggregates per group by DataFusion.
//! 3. The ε of the query is split evenly over the noisy quantities (AVG is
//!    a noisy sum over a noisy count: two) and charged, with δ when keys
//!    are thresholded, **before** any noise is drawn; a refused charge
//!    refuses the query.
//! 4. Keys: when every grouping column has a published category list, the
//!    full cross product of categories is released (empty groups included,
//!    so absence tells nothing); otherwise keys pass only OpenDP's Laplace
//!    threshold on their noisy unit counts.
//! 5. Noise from OpenDP (see [`super::noise`]); the answer's schema
//!    metadata ([`super::DP_METADATA_KEY`]) gives ε, δ and per column the
//!    noise scale and a 95% interval half-width.
//!
//! After the charge nothing but the noisy answer depends on the data:
//! every expression below the aggregation is total (the release gate's
//! rule, checked before the charge, so `1 / (predicate - 1)` is refused,
//! not run), values are clamped with a total order (NaN and ±∞ land on a
//! bound), and a non-finite partial counts as zero. What can still fail
//! after the charge is the host itself (the store, the job's memory pool);
//! such a failure gives the guest the same bare `failed` whatever the data,
//! and the charge stays.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::common::Column;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan};
use datafusion::prelude::SessionContext;
use serde::Serialize;

use super::budget::{self, ChargeError};
use super::{DpSession, DpTable};
use crate::query::error::QueryError;
use crate::release::{strip_casts, unalias, vetted_scan};

mod bounding;
mod noisy;
mod spend;

use spend::{Bounds, Spend};

/// Most group keys a query with published categories may release.
const MAX_PUBLIC_KEYS: usize = 10_000;

fn reject(code: &str, detail: impl std::fmt::Display) -> QueryError {
    QueryError::Rejected(format!("{code}: {detail}"))
}

fn failed(error: impl std::fmt::Display) -> QueryError {
    QueryError::Failed {
        detail: error.to_string(),
    }
}

/// A group key: each grouping column's value as text (`None` for NULL).
type Key = Vec<Option<String>>;

/// An accepted aggregation: its table, grouping columns and measures.
struct Shape {
    table: Arc<DpTable>,
    groups: Vec<Column>,
    measures: Vec<Measure>,
}

/// One released aggregate.
#[derive(Debug, Clone, PartialEq)]
enum Measure {
    /// `COUNT(*)` (no column) or `COUNT(col)` (its non-NULL values).
    Count(Option<Column>),
    /// `COUNT(DISTINCT <privacy unit>)`.
    Units,
    Sum {
        column: Column,
        lo: f64,
        hi: f64,
    },
    Avg {
        column: Column,
        lo: f64,
        hi: f64,
    },
}

/// What the guest learns about the noise in one column.
#[derive(Debug, Clone, Serialize)]
struct ColumnNoise {
    column: String,
    mechanism: &'static str,
    /// Laplace scale of the noise (for AVG: of the sum and of the count).
    scale: Vec<f64>,
    /// Half-width of a 95% interval (absent for AVG, a ratio).
    ci95: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
struct Report {
    dataset: String,
    /// ε asked for (under zCDP accounting: what the charged ρ is worth
    /// alone at the population's δ cap).
    epsilon: f64,
    delta: f64,
    /// ρ charged (zCDP accounting only).
    #[serde(skip_serializing_if = "Option::is_none")]
    rho: Option<f64>,
    /// `public` (published categories) or `threshold`.
    keys: &'static str,
    threshold: Option<i64>,
    /// How a unit's contribution is bounded: `one row per unit`,
    /// `max_rows_per_unit` (the manifest's, checked at registration) or
    /// `per query` (in the plan).
    bounded: &'static str,
    max_groups_per_unit: u32,
    max_rows_per_group: u32,
    max_rows_per_unit: u32,
    columns: Vec<ColumnNoise>,
}

/// Whether `plan` reads a DP table.
pub fn reads_dp(plan: &LogicalPlan, session: &DpSession) -> bool {
    !dp_scans(plan, session).is_empty()
}

fn dp_scans(plan: &LogicalPlan, session: &DpSession) -> Vec<Arc<DpTable>> {
    let mut found = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Some(table) = session.tables.get(scan.table_name.table())
        {
            found.push(Arc::clone(table));
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// Answer a DP query: the plan to execute, with the noisy aggregation in
/// place of the real one, and the report for the schema metadata.
pub async fn answer(
    ctx: &SessionContext,
    plan: LogicalPlan,
    session: &DpSession,
) -> Result<(LogicalPlan, String), QueryError> {
    let mut aggregates = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::Aggregate(aggregate) = node
            && !dp_scans(&aggregate.input, session).is_empty()
            && !aggregate
                .input
                .exists(|n| Ok(matches!(n, LogicalPlan::Aggregate(_))))
                .unwrap_or(true)
            && !aggregates.contains(node)
        {
            aggregates.push(node.clone());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    let [original] = aggregates.as_slice() else {
        return Err(if aggregates.is_empty() {
            reject(
                "row-level-output",
                "dp mode answers aggregates only (COUNT, SUM, AVG)",
            )
        } else {
            reject("dp-shape", "one aggregation over the DP table per query")
        });
    };
    let LogicalPlan::Aggregate(aggregate) = original else {
        unreachable!("collected aggregates")
    };
    let Shape {
        table,
        groups,
        measures,
    } = shape(aggregate, session)?;
    let (batch, report) =
        noisy_aggregate(ctx, aggregate, &table, &groups, &measures, session).await?;
    let replacement = vetted_scan(0, &aggregate.schema, vec![batch]).map_err(failed)?;
    let rewritten = plan
        .transform_up_with_subqueries(|node| {
            if node == *original {
                return Ok(Transformed::yes(replacement.clone()));
            }
            Ok(Transformed::yes(node.recompute_schema()?))
        })
        .map_err(failed)?
        .data;
    // The fail-closed check every mode shares: no DP table left outside
    // the one noisy aggregation.
    crate::release::no_protected_scan_left(&rewritten, |t| session.tables.contains_key(t))
        .map_err(|r| QueryError::Rejected(r.to_string()))?;
    let report = serde_json::to_string(&report).expect("report serialises");
    Ok((rewritten, report))
}

/// Check the aggregation's shape: its table, grouping columns, measures.
fn shape(aggregate: &Aggregate, session: &DpSession) -> Result<Shape, QueryError> {
    let scans = dp_scans(&aggregate.input, session);
    let [table] = scans.as_slice() else {
        return Err(reject(
            "dp-shape",
            "aggregate exactly one DP table, without joins",
        ));
    };
    let table = Arc::clone(table);
    let mut problem = None;
    let _ = aggregate.input.apply(|node| {
        problem = match node {
            LogicalPlan::TableScan(_) | LogicalPlan::SubqueryAlias(_) => None,
            LogicalPlan::Filter(filter) => {
                if filter
                    .predicate
                    .exists(|e| {
                        Ok(matches!(
                            e,
                            Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_)
                        ))
                    })
                    .unwrap_or(true)
                {
                    Some(reject("dp-shape", "no subqueries in WHERE"))
                } else {
                    // The release gate's total-expression rule: a WHERE
                    // that could fail on one row would read it after the
                    // charge, outside the noise.
                    crate::release::grammar::total_with(
                        &filter.predicate,
                        filter.input.schema(),
                        &|c| Ok(table.identifiers.contains(&c.name)),
                    )
                    .err()
                    .map(|r| QueryError::Rejected(r.to_string()))
                }
            }
            LogicalPlan::Projection(projection)
                if projection.expr.iter().all(|e| matches!(e, Expr::Column(_))) =>
            {
                None
            }
            other => Some(reject(
                "dp-shape",
                format!(
                    "only WHERE may stand between the table and the aggregation, not {}",
                    other.display()
                ),
            )),
        };
        Ok(if problem.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    if let Some(problem) = problem {
        return Err(problem);
    }
    let mut groups = Vec::new();
    for expr in &aggregate.group_expr {
        match strip_casts(unalias(expr)) {
            Expr::Column(column) if table.identifiers.contains(&column.name) => {
                return Err(reject(
                    "identifier-used",
                    format!("{} cannot be grouped on", column.name),
                ));
            }
            Expr::Column(column) => groups.push(column.clone()),
            Expr::GroupingSet(_) => {
                return Err(reject(
                    "grouping-sets",
                    "GROUPING SETS, CUBE and ROLLUP are refused",
                ));
            }
            other => {
                return Err(reject(
                    "dp-shape",
                    format!("group by plain columns, not {other}"),
                ));
            }
        }
    }
    let mut measures = Vec::new();
    for expr in &aggregate.aggr_expr {
        measures.push(measure(unalias(expr), &table)?);
    }
    Ok(Shape {
        table,
        groups,
        measures,
    })
}

fn measure(expr: &Expr, table: &DpTable) -> Result<Measure, QueryError> {
    let Expr::AggregateFunction(AggregateFunction { func, params }) = expr else {
        return Err(reject("dp-shape", format!("{expr} is not an aggregate")));
    };
    let name = func.name().to_lowercase();
    if params.filter.is_some() || !params.order_by.is_empty() {
        return Err(reject(
            "aggregate-argument",
            "FILTER and ORDER BY inside aggregates are refused",
        ));
    }
    let column = match params.args.as_slice() {
        [argument] => match strip_casts(argument) {
            Expr::Column(column) => Some(column.clone()),
            Expr::Literal(value, _) if name == "count" && !value.is_null() => None,
            other => {
                return Err(reject(
                    "aggregate-argument",
                    format!("{name} must aggregate a plain column, not {other}"),
                ));
            }
        },
        _ => {
            return Err(reject(
                "aggregate-argument",
                format!("{name} takes one column"),
            ));
        }
    };
    let bounded = |column: Column| {
        table
            .bounds
            .get(&column.name)
            .copied()
            .map(|(lo, hi)| (column.clone(), lo, hi))
            .ok_or_else(|| {
                reject(
                    "aggregate-argument",
                    format!("{} has no declared bounds to clamp to", column.name),
                )
            })
    };
    match (name.as_str(), params.distinct, column) {
        ("count", false, column) => {
            if let Some(c) = &column
                && table.identifiers.contains(&c.name)
            {
                return Err(reject(
                    "identifier-used",
                    format!(
                        "count privacy units as COUNT(DISTINCT {})",
                        table.privacy_unit
                    ),
                ));
            }
            Ok(Measure::Count(column))
        }
        ("count", true, Some(column)) if column.name == table.privacy_unit => Ok(Measure::Units),
        ("count", true, _) => Err(reject(
            "aggregate-argument",
            format!(
                "COUNT(DISTINCT …) only of the privacy unit {}",
                table.privacy_unit
            ),
        )),
        ("sum", false, Some(column)) if !table.identifiers.contains(&column.name) => {
            let (column, lo, hi) = bounded(column)?;
            Ok(Measure::Sum { column, lo, hi })
        }
        ("avg", false, Some(column)) if !table.identifiers.contains(&column.name) => {
            let (column, lo, hi) = bounded(column)?;
            Ok(Measure::Avg { column, lo, hi })
        }
        (other, _, _) => Err(reject(
            "aggregate-not-allowed",
            format!("dp mode answers COUNT, COUNT(DISTINCT unit), SUM and AVG, not {other}"),
        )),
    }
}

/// The noisy aggregation: the spend decided from the schema, the charge,
/// the bounded totals from DataFusion, then keys and noise.
async fn noisy_aggregate(
    ctx: &SessionContext,
    aggregate: &Aggregate,
    table: &DpTable,
    groups: &[Column],
    measures: &[Measure],
    session: &DpSession,
) -> Result<(RecordBatch, Report), QueryError> {
    let input = aggregate.input.as_ref().clone();
    let unit = input
        .schema()
        .columns()
        .into_iter()
        .find(|c| c.name == table.privacy_unit)
        .ok_or_else(|| {
            reject(
                "privacy-unit-missing",
                format!("keep {} below the aggregation", table.privacy_unit),
            )
        })?;

    // Key release decided from the schema alone, before any data is read.
    let public = groups
        .iter()
        .map(|g| table.categories.get(&g.name))
        .collect::<Option<Vec<_>>>();
    let published_keys = public
        .as_ref()
        .map(|lists| lists.iter().map(|l| l.len()).product::<usize>());
    if let Some(keys) = published_keys
        && keys > MAX_PUBLIC_KEYS
    {
        return Err(reject(
            "dp-too-many-keys",
            format!("{keys} category combinations; at most {MAX_PUBLIC_KEYS}"),
        ));
    }
    let units_needed = public.is_none() || measures.contains(&Measure::Units);
    let bounds = Bounds::of(table, units_needed);
    let spend = Spend::plan(&table.rules, bounds, measures, public.is_none(), session)?;

    // The charge is committed before anything is computed or drawn.
    budget::charge(
        &session.ledger.store,
        &session.ledger.principal,
        &session.ledger.population(table),
        &table.dataset,
        &session.ledger.job_id,
        spend.cost,
    )
    .await
    .map_err(|e| match e {
        ChargeError::Exhausted(message) => {
            QueryError::Rejected(format!("budget-exhausted: {message}"))
        }
        ChargeError::Store(e) => failed(e),
    })?;

    let totals = bounding::totals(
        ctx,
        bounding::Input {
            rows: input,
            unit,
            groups,
            measures,
            units_needed,
            published_keys,
        },
        bounds,
    )
    .await?;
    noisy::answer(
        aggregate,
        table,
        groups.len(),
        measures,
        public.as_deref(),
        &totals,
        &spend,
    )
}
