//! Running one vetted aggregation: one DataFusion query per (group,
//! privacy unit), reduced on the host into per-group cells (units, record
//! keys, rows, per-argument sums and top contributors), then released under
//! the minimum group size, per-value thresholds, dominance, cell-key
//! perturbation and rounding.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::logical_expr::{
    Aggregate, Expr, LogicalPlan, LogicalPlanBuilder, cast as cast_expr, lit, when,
};
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;

use super::{Dominance, EnforceError, Measure, Vetting};
use crate::policy::Rounding;
use crate::release::positional_schema;

/// Per group: what the released values are computed from.
#[derive(Debug, Clone, Default)]
struct Cell {
    units: u64,
    /// Sum of the record keys of the group's units (wrapping).
    key: u64,
    rows: i64,
    arguments: Vec<ArgumentCell>,
}

#[derive(Debug, Clone, Default)]
struct ArgumentCell {
    /// Units with at least one non-NULL value.
    units: u64,
    key: u64,
    count: i64,
    sum: f64,
    abs_total: f64,
    /// The largest absolute per-unit contributions, descending.
    top: Vec<f64>,
}

impl ArgumentCell {
    fn add(&mut self, record_key: u64, count: i64, contribution: f64, keep: usize) {
        self.units += 1;
        self.key = self.key.wrapping_add(record_key);
        self.count += count;
        self.sum += contribution;
        let size = contribution.abs();
        self.abs_total += size;
        let at = self.top.partition_point(|&t| t >= size);
        if at < keep {
            self.top.insert(at, size);
            self.top.truncate(keep);
        }
    }

    fn dominated(&self, dominance: Dominance) -> bool {
        let first = self.top.first().copied().unwrap_or(0.0);
        let second = self.top.get(1).copied().unwrap_or(0.0);
        self.abs_total > 0.0
            && (first > dominance.one * self.abs_total
                || first + second > dominance.two * self.abs_total)
    }
}

/// The per-(group, unit) query whose rows the host reduces: group keys,
/// unit, row count, then per argument its non-NULL count and its sum.
fn per_unit_plan(vetting: &Vetting) -> datafusion::error::Result<LogicalPlan> {
    let unit = Expr::Column(vetting.unit.clone());
    let builder = LogicalPlanBuilder::from(vetting.region.plan.clone());
    if vetting.single_unique_scan {
        let mut columns: Vec<Expr> = vetting
            .group_expr
            .iter()
            .enumerate()
            .map(|(i, e)| e.clone().alias(format!("__dsb_g{i}")))
            .collect();
        columns.push(unit.alias("__dsb_unit"));
        columns.push(lit(1i64).alias("__dsb_rows"));
        for (i, argument) in vetting.arguments.iter().enumerate() {
            let value = Expr::Column(argument.clone());
            columns.push(
                when(value.clone().is_null(), lit(0i64))
                    .otherwise(lit(1i64))?
                    .alias(format!("__dsb_n{i}")),
            );
            columns.push(cast_expr(value, DataType::Float64).alias(format!("__dsb_s{i}")));
        }
        return builder.project(columns)?.build();
    }
    let mut keys = vetting.group_expr.clone();
    keys.push(unit);
    let mut aggregates = vec![count(lit(1i64)).alias("__dsb_rows")];
    for (i, argument) in vetting.arguments.iter().enumerate() {
        let value = Expr::Column(argument.clone());
        aggregates.push(count(value.clone()).alias(format!("__dsb_n{i}")));
        aggregates.push(sum(cast_expr(value, DataType::Float64)).alias(format!("__dsb_s{i}")));
    }
    builder.aggregate(keys, aggregates)?.build()
}

fn arrow_failed(error: datafusion::arrow::error::ArrowError) -> EnforceError {
    EnforceError::Failed(error.into())
}

/// Run one vetted aggregation and return its released rows in the original
/// output schema (positional names).
pub(super) async fn run(
    ctx: &SessionContext,
    aggregate: &Aggregate,
    vetting: &Vetting,
) -> Result<Vec<RecordBatch>, EnforceError> {
    let plan = per_unit_plan(vetting).map_err(EnforceError::Failed)?;
    let group_count = vetting.group_expr.len();
    let argument_count = vetting.arguments.len();
    let keep_top = vetting
        .combined
        .perturbation
        .as_ref()
        .map_or(2, |p| p.top_contributors.max(2));
    let group_fields: Vec<SortField> = plan.schema().fields()[..group_count]
        .iter()
        .map(|f| SortField::new(f.data_type().clone()))
        .collect();
    let converter = RowConverter::new(group_fields).map_err(arrow_failed)?;
    let keys = &vetting.combined.record_keys;

    let mut index: HashMap<Box<[u8]>, usize> = HashMap::new();
    let mut group_rows: Vec<Box<[u8]>> = Vec::new();
    let mut cells: Vec<Cell> = Vec::new();
    let mut stream = ctx
        .execute_logical_plan(plan)
        .await
        .map_err(EnforceError::Failed)?
        .execute_stream()
        .await
        .map_err(EnforceError::Failed)?;
    while let Some(batch) = stream.try_next().await.map_err(EnforceError::Failed)? {
        // Without GROUP BY every row belongs to the one cell (key: no bytes).
        let rows = if group_count == 0 {
            None
        } else {
            Some(
                converter
                    .convert_columns(&batch.columns()[..group_count])
                    .map_err(arrow_failed)?,
            )
        };
        let units = cast(batch.column(group_count), &DataType::Utf8).map_err(arrow_failed)?;
        let units = units.as_string::<i32>();
        let row_counts =
            cast(batch.column(group_count + 1), &DataType::Int64).map_err(arrow_failed)?;
        let row_counts = row_counts.as_primitive::<Int64Type>();
        let mut counts = Vec::with_capacity(argument_count);
        let mut sums = Vec::with_capacity(argument_count);
        for i in 0..argument_count {
            counts.push(
                cast(batch.column(group_count + 2 + 2 * i), &DataType::Int64)
                    .map_err(arrow_failed)?,
            );
            sums.push(
                cast(batch.column(group_count + 3 + 2 * i), &DataType::Float64)
                    .map_err(arrow_failed)?,
            );
        }
        for r in 0..batch.num_rows() {
            if units.is_null(r) {
                continue;
            }
            let record_key = keys.record_key(units.value(r).as_bytes());
            let row: &[u8] = rows.as_ref().map_or(&[], |rows| rows.row(r).data());
            let at = match index.get(row) {
                Some(&at) => at,
                None => {
                    let bytes: Box<[u8]> = row.into();
                    index.insert(bytes.clone(), cells.len());
                    group_rows.push(bytes);
                    cells.push(Cell {
                        arguments: vec![ArgumentCell::default(); argument_count],
                        ..Cell::default()
                    });
                    cells.len() - 1
                }
            };
            let cell = &mut cells[at];
            cell.units += 1;
            cell.key = cell.key.wrapping_add(record_key);
            cell.rows += row_counts.value(r);
            for i in 0..argument_count {
                let n = counts[i].as_primitive::<Int64Type>();
                let s = sums[i].as_primitive::<Float64Type>();
                if n.is_valid(r) && n.value(r) > 0 {
                    let contribution = if s.is_valid(r) { s.value(r) } else { 0.0 };
                    cell.arguments[i].add(record_key, n.value(r), contribution, keep_top);
                }
            }
        }
    }

    let k = u64::from(vetting.combined.min_group_size);
    let released: Vec<usize> = (0..cells.len()).filter(|&i| cells[i].units >= k).collect();
    let group_columns = if group_count == 0 {
        Vec::new()
    } else {
        let parser = converter.parser();
        converter
            .convert_rows(released.iter().map(|&i| parser.parse(&group_rows[i])))
            .map_err(arrow_failed)?
    };

    let combined = &vetting.combined;
    let perturb_count = |value: i64, key: u64| -> i64 {
        match &combined.perturbation {
            Some(p) => value + p.count_adjustment(keys, key, value),
            None => value,
        }
    };
    let perturb_sum = |argument: &ArgumentCell| -> f64 {
        match &combined.perturbation {
            Some(p) => argument.sum + p.magnitude_adjustment(keys, argument.key, &argument.top),
            None => argument.sum,
        }
    };
    let schema = positional_schema(&aggregate.schema);
    let mut columns: Vec<ArrayRef> = group_columns;
    for (j, measure) in vetting.measures.iter().enumerate() {
        let target = schema.field(group_count + j).data_type();
        let rounding = combined.rounding;
        let column: ArrayRef = match *measure {
            Measure::Rows | Measure::Units | Measure::Count(_) => {
                let values: Int64Array = released
                    .iter()
                    .map(|&i| {
                        let cell = &cells[i];
                        let (value, key) = match *measure {
                            Measure::Rows => (cell.rows, cell.key),
                            Measure::Units => (cell.units as i64, cell.key),
                            Measure::Count(a) => {
                                let argument = &cell.arguments[a];
                                if argument.units < k {
                                    return None;
                                }
                                (argument.count, argument.key)
                            }
                            _ => unreachable!("counts"),
                        };
                        let released = perturb_count(value, key);
                        match rounding {
                            Rounding::None => Some(released),
                            Rounding::Nearest5 if value <= 7 => None,
                            Rounding::Nearest5 => Some((released as f64 / 5.0).round() as i64 * 5),
                        }
                    })
                    .collect();
                Arc::new(values)
            }
            Measure::Sum(a) | Measure::Avg(a) => {
                let values: Float64Array = released
                    .iter()
                    .map(|&i| {
                        let argument = &cells[i].arguments[a];
                        if argument.units < k || argument.dominated(combined.dominance) {
                            return None;
                        }
                        let total = perturb_sum(argument);
                        if matches!(measure, Measure::Avg(_)) {
                            let count = perturb_count(argument.count, argument.key);
                            return Some(total / count as f64);
                        }
                        let total = if target.is_integer() {
                            total.round()
                        } else {
                            total
                        };
                        Some(match rounding {
                            Rounding::None => total,
                            Rounding::Nearest5 => (total / 5.0).round() * 5.0,
                        })
                    })
                    .collect();
                Arc::new(values)
            }
        };
        columns.push(cast(&column, target).map_err(arrow_failed)?);
    }
    let options =
        datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(released.len()));
    let batch = RecordBatch::try_new_with_options(Arc::clone(&schema), columns, &options)
        .map_err(arrow_failed)?;
    Ok(vec![batch])
}
