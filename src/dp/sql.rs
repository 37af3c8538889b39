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
//! 1. Contribution bounding, in DataFusion, in two stages (no per-unit
//!    state in Rust, so it scales with DataFusion): per (unit, group) each
//!    measure's partial is computed on values clamped to the manifest's
//!    bounds and then capped as if the unit kept at most
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

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Column;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{
    Aggregate, Expr, ExprFunctionExt, LogicalPlan, LogicalPlanBuilder, col, lit, when,
};
use datafusion::prelude::SessionContext;
use serde::Serialize;

use super::budget::{self, ChargeError, Cost};
use super::noise::{self, ci95};
use super::{DpSession, DpTable};
use crate::query::error::QueryError;
use crate::release::{positional_schema, strip_casts, unalias, vetted_scan};

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
    max_groups_per_unit: u32,
    max_rows_per_group: u32,
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

fn clamp(column: &Column, lo: f64, hi: f64) -> Result<Expr, QueryError> {
    let value = datafusion::prelude::cast(Expr::Column(column.clone()), DataType::Float64);
    when(value.clone().lt(lit(lo)), lit(lo))
        .when(value.clone().gt(lit(hi)), lit(hi))
        .otherwise(value)
        .map_err(failed)
}

/// Per group: privacy units and the partial sums of each measure.
#[derive(Debug, Clone, Default)]
struct Totals {
    units: i64,
    partials: Vec<f64>,
}

async fn noisy_aggregate(
    ctx: &SessionContext,
    aggregate: &Aggregate,
    table: &DpTable,
    groups: &[Column],
    measures: &[Measure],
    session: &DpSession,
) -> Result<(RecordBatch, Report), QueryError> {
    let rules = table.rules;
    // With one row per unit, every unit is in one group with one row.
    let (max_groups, max_rows) = if table.unit_is_unique {
        (1u32, 1u32)
    } else {
        (rules.max_groups_per_unit, rules.max_rows_per_group)
    };
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
    if let Some(lists) = &public {
        let keys = lists.iter().map(|l| l.len()).product::<usize>();
        if keys > MAX_PUBLIC_KEYS {
            return Err(reject(
                "dp-too-many-keys",
                format!("{keys} category combinations; at most {MAX_PUBLIC_KEYS}"),
            ));
        }
    }
    let thresholded = public.is_none();
    let noisy_quantities: usize = measures
        .iter()
        .map(|m| match m {
            Measure::Units if thresholded => 0,
            Measure::Avg { .. } => 2,
            _ => 1,
        })
        .sum::<usize>()
        + usize::from(thresholded);
    let group_factor = i64::from(max_groups) * i64::from(max_rows);
    let gaussian = rules.mechanism == crate::policy::Mechanism::Gaussian;
    // The Gaussian quantities share the query's δ_per_query evenly (the
    // threshold, when keys are not published, stays Laplace with its own).
    let gaussian_quantities = noisy_quantities - usize::from(thresholded);
    let delta_each = rules.delta_per_query / gaussian_quantities.max(1) as f64;
    let zcdp = rules.accounting == crate::policy::Accounting::Zcdp;
    if zcdp {
        if thresholded {
            return Err(reject(
                "zcdp-needs-published-keys",
                "this population accounts in zCDP: group only by columns with published categories",
            ));
        }
        if session.accuracy.is_some() {
            return Err(reject(
                "accuracy-not-for-zcdp",
                "an error bound is translated to ε for Laplace noise; ask this table with an ε",
            ));
        }
    }
    if gaussian && session.accuracy.is_some() {
        return Err(reject(
            "accuracy-not-for-gaussian",
            "an error bound is translated to ε for Laplace noise; ask this table with an ε",
        ));
    }
    let epsilon = match session.accuracy {
        None => session.epsilon,
        Some(accuracy) => {
            // The least ε that keeps every noisy quantity within the bound:
            // the widest sensitivity decides, and each quantity gets an
            // even share, as with a declared ε.
            let mut widest = if thresholded {
                f64::from(max_groups)
            } else {
                0.0
            };
            for m in measures {
                widest = widest.max(match m {
                    Measure::Count(_) => group_factor as f64,
                    Measure::Units => f64::from(max_groups),
                    Measure::Sum { lo, hi, .. } => group_factor as f64 * lo.abs().max(hi.abs()),
                    Measure::Avg { .. } => {
                        return Err(reject(
                            "accuracy-not-for-avg",
                            "an error bound applies to COUNT and SUM; ask for AVG with an ε",
                        ));
                    }
                });
            }
            let needed = accuracy.epsilon_for(widest) * noisy_quantities.max(1) as f64;
            let (low, high) = rules.query_epsilon;
            if needed > high {
                return Err(reject(
                    "accuracy-unreachable",
                    format!(
                        "±{} at {:.1}% needs ε = {needed:.4} for this query; one query may spend at most {high}",
                        accuracy.within,
                        accuracy.confidence * 100.0
                    ),
                ));
            }
            needed.max(low)
        }
    };
    // zCDP accounting: the query is charged ρ, the ρ its ε would be worth
    // alone at the population's δ cap; every noisy quantity gets an even
    // share (Laplace at ε = √(2ρ) is ρ-zCDP, Gaussian at σ = Δ₂/√(2ρ)).
    let rho_query = if zcdp {
        budget::zcdp_rho(epsilon, rules.delta_total)
    } else {
        0.0
    };
    let rho_each = rho_query / noisy_quantities.max(1) as f64;
    let epsilon_each = if zcdp {
        (2.0 * rho_each).sqrt()
    } else {
        epsilon / noisy_quantities.max(1) as f64
    };
    let cost = if zcdp {
        Cost {
            epsilon: 0.0,
            delta: 0.0,
            rho: rho_query,
        }
    } else {
        Cost {
            epsilon,
            delta: if thresholded {
                rules.delta_per_query
            } else {
                0.0
            } + if gaussian && gaussian_quantities > 0 {
                rules.delta_per_query
            } else {
                0.0
            },
            rho: 0.0,
        }
    };

    // The charge is committed before anything is computed or drawn.
    budget::charge(
        &session.ledger.store,
        &session.ledger.principal,
        &session.ledger.population(table),
        &table.dataset,
        &session.ledger.job_id,
        cost,
    )
    .await
    .map_err(|e| match e {
        ChargeError::Exhausted(message) => {
            QueryError::Rejected(format!("budget-exhausted: {message}"))
        }
        ChargeError::Store(e) => failed(e),
    })?;

    // Contribution bounding and the true aggregates, all in DataFusion.
    // With one row per unit every unit is in one group with one row:
    // aggregate per group directly. Otherwise, in two stages:
    //   1. per (unit, group): each measure's partial, bounded as if the unit
    //      kept at most `max_rows` rows there: counts capped at max_rows,
    //      sums of clamped values clamped to max_rows·[min(lo,0), max(hi,0)];
    //   2. per unit, at most `max_groups` of its groups, a uniform random
    //      subset (row_number over the unit ordered by random()), skipped
    //      when the published keys are no more than max_groups;
    //   3. per group: the partials summed and the units counted.
    let width = measures
        .iter()
        .map(|m| match m {
            Measure::Units => 0,
            Measure::Avg { .. } => 2,
            _ => 1,
        })
        .sum::<usize>();
    let group_exprs: Vec<Expr> = groups.iter().map(|g| Expr::Column(g.clone())).collect();
    let partial_names: Vec<String> = (0..width).map(|i| format!("__dsb_p{i}")).collect();
    let unique = table.unit_is_unique;
    let rows_cap = f64::from(max_rows);
    // Each partial: its aggregate, and the interval stage 1 caps it to.
    let mut raw: Vec<(Expr, (f64, f64))> = Vec::new();
    for m in measures {
        match m {
            Measure::Count(None) => raw.push((count(lit(1i64)), (0.0, rows_cap))),
            Measure::Count(Some(c)) => raw.push((count(Expr::Column(c.clone())), (0.0, rows_cap))),
            Measure::Units => {}
            Measure::Sum { column, lo, hi } => raw.push((
                sum(clamp(column, *lo, *hi)?),
                (rows_cap * lo.min(0.0), rows_cap * hi.max(0.0)),
            )),
            Measure::Avg { column, lo, hi } => {
                raw.push((
                    sum(clamp(column, *lo, *hi)?),
                    (rows_cap * lo.min(0.0), rows_cap * hi.max(0.0)),
                ));
                raw.push((count(Expr::Column(column.clone())), (0.0, rows_cap)));
            }
        }
    }
    let aggregates: Vec<Expr> = raw
        .iter()
        .zip(&partial_names)
        .map(|((expr, _), name)| expr.clone().alias(name.clone()))
        .collect();
    let mut builder = LogicalPlanBuilder::from(input)
        .filter(Expr::Column(unit.clone()).is_not_null())
        .map_err(failed)?;
    let published_keys = public
        .as_ref()
        .map(|lists| lists.iter().map(|l| l.len()).product::<usize>());
    if unique {
        let mut all = aggregates;
        all.push(count(lit(1i64)).alias("__dsb_units"));
        builder = builder
            .aggregate(group_exprs.clone(), all)
            .map_err(failed)?;
    } else {
        // Stage 1: per (unit, group), then each partial capped.
        let mut unit_keys = vec![Expr::Column(unit.clone())];
        unit_keys.extend(group_exprs.iter().cloned());
        builder = builder
            .aggregate(unit_keys.clone(), aggregates)
            .map_err(failed)?;
        let mut capped = unit_keys;
        for ((_, (low, high)), name) in raw.iter().zip(&partial_names) {
            let value = datafusion::prelude::cast(
                Expr::Column(Column::new_unqualified(name.clone())),
                DataType::Float64,
            );
            capped.push(
                when(value.clone().lt(lit(*low)), lit(*low))
                    .when(value.clone().gt(lit(*high)), lit(*high))
                    .otherwise(value)
                    .map_err(failed)?
                    .alias(name.clone()),
            );
        }
        builder = builder.project(capped).map_err(failed)?;
        // Stage 2: at most max_groups groups per unit.
        if published_keys.is_none_or(|keys| keys > max_groups as usize) {
            let rank = datafusion::functions_window::expr_fn::row_number()
                .partition_by(vec![Expr::Column(unit.clone())])
                .order_by(vec![
                    datafusion::functions::expr_fn::random().sort(true, false),
                ])
                .build()
                .map_err(failed)?
                .alias("__dsb_rn");
            builder = builder
                .window(vec![rank])
                .and_then(|b| b.filter(col("__dsb_rn").lt_eq(lit(i64::from(max_groups)))))
                .map_err(failed)?;
        }
        // Stage 3: per group.
        let mut totals = partial_names
            .iter()
            .map(|name| {
                sum(Expr::Column(Column::new_unqualified(name.clone()))).alias(name.clone())
            })
            .collect::<Vec<_>>();
        totals.push(count(lit(1i64)).alias("__dsb_units"));
        builder = builder
            .aggregate(group_exprs.clone(), totals)
            .map_err(failed)?;
    }
    let plan = builder.build().map_err(failed)?;
    let batches = ctx
        .execute_logical_plan(plan)
        .await
        .map_err(failed)?
        .collect()
        .await
        .map_err(failed)?;

    let mut totals: HashMap<Key, Totals> = HashMap::new();
    for batch in &batches {
        let text = |i: usize| -> Result<StringArray, QueryError> {
            let array = cast(batch.column(i), &DataType::Utf8).map_err(failed)?;
            Ok(array
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("cast to Utf8")
                .clone())
        };
        let number = |i: usize| -> Result<Float64Array, QueryError> {
            let array = cast(batch.column(i), &DataType::Float64).map_err(failed)?;
            Ok(array
                .as_any()
                .downcast_ref::<Float64Array>()
                .expect("cast to Float64")
                .clone())
        };
        let key_columns = (0..groups.len()).map(text).collect::<Result<Vec<_>, _>>()?;
        let value_columns = (groups.len()..groups.len() + width)
            .map(number)
            .collect::<Result<Vec<_>, _>>()?;
        let units = number(groups.len() + width)?;
        for row in 0..batch.num_rows() {
            let key: Key = key_columns
                .iter()
                .map(|c| c.is_valid(row).then(|| c.value(row).to_string()))
                .collect();
            let entry = totals.entry(key).or_insert_with(|| Totals {
                units: 0,
                partials: vec![0.0; width],
            });
            entry.units += units.value(row) as i64;
            for (total, column) in entry.partials.iter_mut().zip(&value_columns) {
                if column.is_valid(row) {
                    // Non-finite partials cannot come from clamped values;
                    // should one appear, it counts as nothing rather than
                    // failing after the charge.
                    let value = column.value(row);
                    if value.is_finite() {
                        *total += value;
                    }
                }
            }
        }
    }

    // Which keys are released, and (thresholded) their noisy unit counts.
    let (released, noisy_units, threshold) = match &public {
        Some(lists) => {
            let mut keys: Vec<Vec<Option<String>>> = vec![Vec::new()];
            for list in lists {
                keys = keys
                    .into_iter()
                    .flat_map(|prefix| {
                        list.iter().map(move |value| {
                            let mut key = prefix.clone();
                            key.push(Some(value.clone()));
                            key
                        })
                    })
                    .collect();
            }
            (keys, None, None)
        }
        None => {
            let units: HashMap<String, i64> = totals
                .iter()
                .map(|(key, t)| (serde_json::to_string(key).expect("keys serialise"), t.units))
                .collect();
            let released =
                noise::threshold_keys(units, max_groups, epsilon_each, rules.delta_per_query)
                    .map_err(failed)?;
            let mut keys: Vec<(Vec<Option<String>>, i64)> = released
                .counts
                .iter()
                .map(|(k, n)| (serde_json::from_str(k).expect("our own keys"), *n))
                .collect();
            keys.sort();
            let counts = keys.iter().map(|(_, n)| *n).collect::<Vec<_>>();
            (
                keys.into_iter().map(|(k, _)| k).collect(),
                Some((counts, released.scale)),
                Some(released.threshold),
            )
        }
    };
    let empty = Totals {
        units: 0,
        partials: vec![0.0; width],
    };
    let totals_of = |key: &Vec<Option<String>>| totals.get(key).unwrap_or(&empty);

    // Noise per measure over the released keys.
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (index, field) in aggregate
        .schema
        .fields()
        .iter()
        .take(groups.len())
        .enumerate()
    {
        let values: StringArray = released.iter().map(|key| key[index].clone()).collect();
        columns.push(cast(&(Arc::new(values) as ArrayRef), field.data_type()).map_err(failed)?);
    }
    let mut noise_report = Vec::new();
    let mut slot = 0usize;
    let fields = aggregate.schema.fields();
    // Noise of one quantity: integer counts or float sums, with their L1
    // sensitivity (Laplace) or L2 sensitivity (Gaussian: a unit in
    // `max_groups` groups moves the vector by √max_groups, not max_groups).
    let spread = f64::from(max_groups).sqrt();
    let counts_noise =
        |values: &[i64], l1: i64, l2: f64| -> Result<(Vec<i64>, f64, f64), QueryError> {
            if gaussian {
                let floats: Vec<f64> = values.iter().map(|v| *v as f64).collect();
                let (noisy, scale) = if zcdp {
                    noise::gaussian_sums_zcdp(&floats, l2, rho_each)
                } else {
                    noise::gaussian_sums(&floats, l2, epsilon_each, delta_each)
                }
                .map_err(failed)?;
                Ok((
                    noisy.into_iter().map(|v| v.round() as i64).collect(),
                    scale,
                    noise::ci95_gaussian(scale),
                ))
            } else {
                let (noisy, scale) =
                    noise::laplace_counts(values, l1, epsilon_each).map_err(failed)?;
                Ok((noisy, scale, noise::ci95_discrete(scale)))
            }
        };
    let sums_noise =
        |values: &[f64], l1: f64, l2: f64| -> Result<(Vec<f64>, f64, f64), QueryError> {
            if gaussian {
                let (noisy, scale) = if zcdp {
                    noise::gaussian_sums_zcdp(values, l2, rho_each)
                } else {
                    noise::gaussian_sums(values, l2, epsilon_each, delta_each)
                }
                .map_err(failed)?;
                Ok((noisy, scale, noise::ci95_gaussian(scale)))
            } else {
                let (noisy, scale) =
                    noise::laplace_sums(values, l1, epsilon_each).map_err(failed)?;
                Ok((noisy, scale, ci95(scale)))
            }
        };
    let rows_factor = f64::from(max_rows);
    for (i, m) in measures.iter().enumerate() {
        let field = &fields[groups.len() + i];
        let (array, scales, interval): (ArrayRef, Vec<f64>, Option<f64>) = match m {
            Measure::Count(_) => {
                let values: Vec<i64> = released
                    .iter()
                    .map(|k| totals_of(k).partials[slot].round() as i64)
                    .collect();
                slot += 1;
                let (noisy, scale, interval) =
                    counts_noise(&values, group_factor, rows_factor * spread)?;
                (
                    Arc::new(Int64Array::from_iter_values(
                        noisy.into_iter().map(|v| v.max(0)),
                    )),
                    vec![scale],
                    Some(interval),
                )
            }
            Measure::Units => {
                let (noisy, scale, interval) = match &noisy_units {
                    Some((counts, scale)) => (counts.clone(), *scale, noise::ci95_discrete(*scale)),
                    None => {
                        let values: Vec<i64> =
                            released.iter().map(|k| totals_of(k).units).collect();
                        counts_noise(&values, i64::from(max_groups), spread)?
                    }
                };
                (
                    Arc::new(Int64Array::from_iter_values(
                        noisy.into_iter().map(|v| v.max(0)),
                    )),
                    vec![scale],
                    Some(interval),
                )
            }
            Measure::Sum { lo, hi, .. } => {
                let values: Vec<f64> = released
                    .iter()
                    .map(|k| totals_of(k).partials[slot])
                    .collect();
                slot += 1;
                let bound = lo.abs().max(hi.abs());
                let (noisy, scale, interval) = sums_noise(
                    &values,
                    group_factor as f64 * bound,
                    rows_factor * bound * spread,
                )?;
                (
                    Arc::new(Float64Array::from(noisy)),
                    vec![scale],
                    Some(interval),
                )
            }
            Measure::Avg { lo, hi, .. } => {
                let sums: Vec<f64> = released
                    .iter()
                    .map(|k| totals_of(k).partials[slot])
                    .collect();
                let counts: Vec<i64> = released
                    .iter()
                    .map(|k| totals_of(k).partials[slot + 1].round() as i64)
                    .collect();
                slot += 2;
                let bound = lo.abs().max(hi.abs());
                let (noisy_sums, sum_scale, _) = sums_noise(
                    &sums,
                    group_factor as f64 * bound,
                    rows_factor * bound * spread,
                )?;
                let (noisy_counts, count_scale, _) =
                    counts_noise(&counts, group_factor, rows_factor * spread)?;
                let averages: Float64Array = noisy_sums
                    .iter()
                    .zip(&noisy_counts)
                    .map(|(s, n)| (*n >= 1).then(|| (s / *n as f64).clamp(*lo, *hi)))
                    .collect();
                (Arc::new(averages), vec![sum_scale, count_scale], None)
            }
        };
        noise_report.push(ColumnNoise {
            column: field.name().clone(),
            mechanism: if gaussian {
                if zcdp {
                    "discrete gaussian (opendp, zCDP)"
                } else {
                    "discrete gaussian (opendp, zCDP cast to (ε, δ))"
                }
            } else {
                "discrete laplace (opendp)"
            },
            scale: scales,
            ci95: interval,
        });
        columns.push(cast(&array, field.data_type()).map_err(failed)?);
    }
    let batch =
        RecordBatch::try_new(positional_schema(&aggregate.schema), columns).map_err(failed)?;
    Ok((
        batch,
        Report {
            dataset: table.dataset.clone(),
            epsilon: if zcdp { epsilon } else { cost.epsilon },
            delta: cost.delta,
            rho: zcdp.then_some(cost.rho),
            keys: if thresholded { "threshold" } else { "public" },
            threshold,
            max_groups_per_unit: max_groups,
            max_rows_per_group: max_rows,
            columns: noise_report,
        },
    ))
}
