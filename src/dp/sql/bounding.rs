//! Contribution bounding and the true aggregates, all in DataFusion (no
//! per-unit state in Rust, so it scales with DataFusion's aggregation).
//!
//! With one row per unit every unit is in one group with one row: the plan
//! aggregates per group directly. With a declared `max_rows_per_unit` the
//! data was checked against, it does too (counting distinct units per group
//! only when the query needs them). Otherwise, in three stages:
//! 1. per (unit, group): each measure's partial, bounded as if the unit
//!    kept at most `max_rows` rows there: counts capped at `max_rows`, sums
//!    of clamped values clamped to `max_rows·[min(lo,0), max(hi,0)]`;
//! 2. per unit, at most `max_groups` of its groups, a uniform random subset
//!    (`row_number()` over the unit ordered by `random()`), skipped when the
//!    published keys are no more than `max_groups`;
//! 3. per group: the partials summed and the units counted.
//!
//! The result is read into per-key [`Totals`]; a non-finite partial counts
//! as nothing rather than failing after the charge.

use std::collections::HashMap;

use datafusion::arrow::array::{Array, Float64Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Column;
use datafusion::functions_aggregate::expr_fn::{count, count_distinct, min, sum};
use datafusion::logical_expr::{
    Expr, ExprFunctionExt, LogicalPlan, LogicalPlanBuilder, col, lit, when,
};
use datafusion::prelude::SessionContext;

use super::spend::{Bounds, Enforced};
use super::{Key, Measure, failed};
use crate::query::error::QueryError;

/// Per group: privacy units and the partial sums of each measure.
#[derive(Debug, Clone, Default)]
pub(super) struct Totals {
    pub units: i64,
    pub partials: Vec<f64>,
}

impl Totals {
    pub fn empty(width: usize) -> Self {
        Totals {
            units: 0,
            partials: vec![0.0; width],
        }
    }
}

/// Partials per measure: none for the unit count (counted per group), two
/// for AVG (a sum and a count), one otherwise.
pub(super) fn width(measures: &[Measure]) -> usize {
    measures
        .iter()
        .map(|m| match m {
            Measure::Units => 0,
            Measure::Avg { .. } => 2,
            _ => 1,
        })
        .sum()
}

/// What to bound: the rows below the aggregation and how they group.
pub(super) struct Input<'a> {
    pub rows: LogicalPlan,
    pub unit: Column,
    pub groups: &'a [Column],
    pub measures: &'a [Measure],
    /// The query releases unit counts or thresholds keys on them.
    pub units_needed: bool,
    /// How many keys a query with published categories can have.
    pub published_keys: Option<usize>,
}

/// Run the bounding plan; the true (bounded) totals per group key.
pub(super) async fn totals(
    ctx: &SessionContext,
    input: Input<'_>,
    bounds: Bounds,
) -> Result<HashMap<Key, Totals>, QueryError> {
    let Input {
        rows,
        unit,
        groups,
        measures,
        units_needed,
        published_keys,
    } = input;
    let width = width(measures);
    let group_exprs: Vec<Expr> = groups.iter().map(|g| Expr::Column(g.clone())).collect();
    let partial_names: Vec<String> = (0..width).map(|i| format!("__dsb_p{i}")).collect();
    let rows_cap = f64::from(bounds.max_rows);
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
    let mut builder = LogicalPlanBuilder::from(rows)
        .filter(Expr::Column(unit.clone()).is_not_null())
        .map_err(failed)?;
    if bounds.by != Enforced::PerQuery {
        let mut all = aggregates;
        all.push(
            match bounds.by {
                Enforced::Unique => count(lit(1i64)),
                _ if units_needed => count_distinct(Expr::Column(unit.clone())),
                // Not released and not thresholded on: not computed (an
                // aggregate that is always 0 keeps the batch's layout).
                _ => min(lit(0i64)),
            }
            .alias("__dsb_units"),
        );
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
        if published_keys.is_none_or(|keys| keys > bounds.max_groups as usize) {
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
                .and_then(|b| b.filter(col("__dsb_rn").lt_eq(lit(i64::from(bounds.max_groups)))))
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
            let entry = totals.entry(key).or_insert_with(|| Totals::empty(width));
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
    Ok(totals)
}

/// A column as Float64, clamped to [lo, hi] (NaN and ±∞ land on a bound:
/// comparisons in a total order).
fn clamp(column: &Column, lo: f64, hi: f64) -> Result<Expr, QueryError> {
    let value = datafusion::prelude::cast(Expr::Column(column.clone()), DataType::Float64);
    when(value.clone().lt(lit(lo)), lit(lo))
        .when(value.clone().gt(lit(hi)), lit(hi))
        .otherwise(value)
        .map_err(failed)
}
