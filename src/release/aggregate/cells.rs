//! Running one vetted aggregation as one DataFusion plan: per (group,
//! privacy unit) rows (the table's rows when it holds one per unit), then
//! per group its cells (units, the sum of their record keys, rows, and per
//! argument the units with a value, count, sum, absolute total and top
//! contributors). Only those few per-group rows reach the host, which
//! releases them under the minimum group size, per-value thresholds,
//! dominance, cell-key perturbation and rounding.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, UInt32Array,
};
use datafusion::arrow::compute::{cast, concat_batches, take};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int64Type, SchemaRef};
use datafusion::common::{Column, ScalarValue};
use datafusion::functions::core::expr_fn::coalesce;
use datafusion::functions::math::expr_fn::abs;
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::logical_expr::{
    Accumulator, Aggregate, AggregateUDF, ColumnarValue, Expr, LogicalPlan, LogicalPlanBuilder,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, cast as cast_expr,
    create_udaf, lit, when,
};
use datafusion::prelude::SessionContext;

use super::{Dominance, EnforceError, Measure, Vetting};
use crate::policy::Rounding;
use crate::release::cell_key::RecordKeys;
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
    fn dominated(&self, dominance: Dominance) -> bool {
        let first = self.top.first().copied().unwrap_or(0.0);
        let second = self.top.get(1).copied().unwrap_or(0.0);
        self.abs_total > 0.0
            && (first > dominance.one * self.abs_total
                || first + second > dominance.two * self.abs_total)
    }
}

/// The per-(group, unit) stage: group keys, unit, row count, then per
/// argument its non-NULL count and its sum.
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
    let mut group_by = vetting.group_expr.clone();
    group_by.push(unit);
    let mut aggregates = vec![count(lit(1i64)).alias("__dsb_rows")];
    for (i, argument) in vetting.arguments.iter().enumerate() {
        let value = Expr::Column(argument.clone());
        aggregates.push(count(value.clone()).alias(format!("__dsb_n{i}")));
        aggregates.push(sum(cast_expr(value, DataType::Float64)).alias(format!("__dsb_s{i}")));
    }
    builder.aggregate(group_by, aggregates)?.build()
}

fn arrow_failed(error: datafusion::arrow::error::ArrowError) -> EnforceError {
    EnforceError::Failed(error.into())
}

/// `dsb_record_key(unit)`: a unit's keyed 64-bit record key, from its
/// value as text, as the bits of an Int64 (so DataFusion's wrapping `SUM`
/// adds keys mod 2⁶⁴). NULL for a NULL unit. Strings are hashed in place,
/// other unit types through their text.
struct RecordKeyUdf {
    keys: RecordKeys,
    signature: Signature,
}

impl RecordKeyUdf {
    fn udf(keys: &RecordKeys) -> ScalarUDF {
        ScalarUDF::new_from_impl(RecordKeyUdf {
            keys: keys.clone(),
            signature: Signature::any(1, Volatility::Immutable),
        })
    }

    fn hash<'a>(&self, units: impl Iterator<Item = Option<&'a str>>) -> Int64Array {
        units
            .map(|unit| unit.map(|u| self.keys.record_key(u.as_bytes()) as i64))
            .collect()
    }
}

/// Never the secret: plans are printed in errors and logs.
impl std::fmt::Debug for RecordKeyUdf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordKeyUdf")
    }
}

impl PartialEq for RecordKeyUdf {
    fn eq(&self, other: &Self) -> bool {
        self.keys == other.keys
    }
}

impl Eq for RecordKeyUdf {}

impl std::hash::Hash for RecordKeyUdf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        "dsb_record_key".hash(state);
    }
}

impl ScalarUDFImpl for RecordKeyUdf {
    fn name(&self) -> &str {
        "dsb_record_key"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Int64)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let units = args.args[0].to_array(args.number_rows)?;
        let hashed = match units.data_type() {
            DataType::Utf8 => self.hash(units.as_string::<i32>().iter()),
            DataType::LargeUtf8 => self.hash(units.as_string::<i64>().iter()),
            DataType::Utf8View => self.hash(units.as_string_view().iter()),
            _ => {
                let text = cast(&units, &DataType::Utf8)?;
                self.hash(text.as_string::<i32>().iter())
            }
        };
        Ok(ColumnarValue::Array(Arc::new(hashed)))
    }
}

/// The `keep` largest values of a group (NULLs skipped), descending, as a
/// list: the top contributors for dominance and magnitude perturbation.
#[derive(Debug)]
struct Largest {
    keep: usize,
    top: Vec<f64>,
}

impl Largest {
    fn add(&mut self, value: f64) {
        let at = self.top.partition_point(|&t| t >= value);
        if at < self.keep {
            self.top.insert(at, value);
            self.top.truncate(self.keep);
        }
    }

    fn list(&self) -> ScalarValue {
        let values: Vec<ScalarValue> = self.top.iter().map(|&v| ScalarValue::from(v)).collect();
        ScalarValue::List(ScalarValue::new_list_nullable(&values, &DataType::Float64))
    }
}

impl Accumulator for Largest {
    fn update_batch(&mut self, values: &[ArrayRef]) -> datafusion::error::Result<()> {
        for value in values[0].as_primitive::<Float64Type>().iter().flatten() {
            self.add(value);
        }
        Ok(())
    }

    fn evaluate(&mut self) -> datafusion::error::Result<ScalarValue> {
        Ok(self.list())
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.top.capacity() * std::mem::size_of::<f64>()
    }

    fn state(&mut self) -> datafusion::error::Result<Vec<ScalarValue>> {
        Ok(vec![self.list()])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> datafusion::error::Result<()> {
        let lists = states[0].as_list::<i32>();
        for list in lists.iter().flatten() {
            for value in list.as_primitive::<Float64Type>().iter().flatten() {
                self.add(value);
            }
        }
        Ok(())
    }
}

fn largest_udaf(keep: usize) -> AggregateUDF {
    let list = DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true)));
    create_udaf(
        "dsb_largest",
        vec![DataType::Float64],
        Arc::new(list.clone()),
        Volatility::Immutable,
        Arc::new(move |_| {
            Ok(Box::new(Largest {
                keep,
                top: Vec::with_capacity(keep + 1),
            }))
        }),
        Arc::new(vec![list]),
    )
}

fn column(name: String) -> Expr {
    Expr::Column(Column::from_name(name))
}

/// The per-group cells as one DataFusion plan over the per-unit rows
/// (rows without a unit dropped): group keys, then `units`, `key` (the
/// wrapping sum of the units' record keys), `rows`, and per argument the
/// units with a non-NULL value, their keys, the non-NULL count, the sum,
/// the absolute total and the largest absolute per-unit contributions.
fn per_group_plan(
    vetting: &Vetting,
    keys: &RecordKeys,
    keep: usize,
) -> datafusion::error::Result<LogicalPlan> {
    let group_count = vetting.group_expr.len();
    let groups: Vec<Expr> = (0..group_count)
        .map(|i| column(format!("__dsb_g{i}")))
        .collect();
    let unit = column("__dsb_unit".into());
    let mut projected = groups.clone();
    projected.push(
        RecordKeyUdf::udf(keys)
            .call(vec![unit.clone()])
            .alias("__dsb_key"),
    );
    projected.push(cast_expr(column("__dsb_rows".into()), DataType::Int64).alias("__dsb_rows"));
    for i in 0..vetting.arguments.len() {
        let has = cast_expr(column(format!("__dsb_n{i}")), DataType::Int64);
        projected.push(has.alias(format!("__dsb_n{i}")));
        projected.push(
            coalesce(vec![
                cast_expr(column(format!("__dsb_s{i}")), DataType::Float64),
                lit(0.0f64),
            ])
            .alias(format!("__dsb_s{i}")),
        );
    }
    let key = column("__dsb_key".into());
    let mut aggregates = vec![
        count(lit(1i64)).alias("__dsb_units"),
        sum(key.clone()).alias("__dsb_key"),
        sum(column("__dsb_rows".into())).alias("__dsb_rows"),
    ];
    let largest = largest_udaf(keep);
    for i in 0..vetting.arguments.len() {
        let n = column(format!("__dsb_n{i}"));
        let has = n.clone().gt(lit(0i64));
        let contribution = column(format!("__dsb_s{i}"));
        let only = |value: Expr, otherwise: Expr| when(has.clone(), value).otherwise(otherwise);
        aggregates.push(sum(only(lit(1i64), lit(0i64))?).alias(format!("__dsb_u{i}")));
        aggregates.push(sum(only(key.clone(), lit(0i64))?).alias(format!("__dsb_k{i}")));
        aggregates.push(sum(n).alias(format!("__dsb_c{i}")));
        aggregates.push(sum(only(contribution.clone(), lit(0.0f64))?).alias(format!("__dsb_s{i}")));
        aggregates
            .push(sum(only(abs(contribution.clone()), lit(0.0f64))?).alias(format!("__dsb_a{i}")));
        aggregates.push(
            largest
                .call(vec![only(
                    abs(contribution),
                    lit(ScalarValue::Float64(None)),
                )?])
                .alias(format!("__dsb_t{i}")),
        );
    }
    // The per-unit stage's columns by position, under fixed names (its
    // aggregate path names keys and unit after their expressions).
    let per_unit = per_unit_plan(vetting)?;
    let mut names: Vec<String> = (0..group_count).map(|i| format!("__dsb_g{i}")).collect();
    names.push("__dsb_unit".into());
    names.push("__dsb_rows".into());
    for i in 0..vetting.arguments.len() {
        names.push(format!("__dsb_n{i}"));
        names.push(format!("__dsb_s{i}"));
    }
    let renamed: Vec<Expr> = names
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            Expr::Column(Column::from(per_unit.schema().qualified_field(i))).alias(name)
        })
        .collect();
    LogicalPlanBuilder::from(per_unit)
        .project(renamed)?
        .filter(unit.is_not_null())?
        .project(projected)?
        .aggregate(groups, aggregates)?
        .build()
}

/// Run one vetted aggregation and return its released rows in the original
/// output schema (positional names).
pub(super) async fn run(
    ctx: &SessionContext,
    aggregate: &Aggregate,
    vetting: &Vetting,
) -> Result<Vec<RecordBatch>, EnforceError> {
    let group_count = vetting.group_expr.len();
    let argument_count = vetting.arguments.len();
    let keep_top = vetting
        .combined
        .perturbation
        .as_ref()
        .map_or(2, |p| p.top_contributors.max(2));
    let keys = &vetting.combined.record_keys;
    let plan = per_group_plan(vetting, keys, keep_top).map_err(EnforceError::Failed)?;
    let frame = ctx
        .execute_logical_plan(plan)
        .await
        .map_err(EnforceError::Failed)?;
    let planned: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let batches = frame.collect().await.map_err(EnforceError::Failed)?;
    let schema = batches.first().map_or(planned, |b| b.schema());
    let batch = concat_batches(&schema, &batches).map_err(arrow_failed)?;

    // The few per-group rows, read into cells.
    let int = |i: usize| -> Result<ArrayRef, EnforceError> {
        cast(batch.column(i), &DataType::Int64).map_err(arrow_failed)
    };
    let int_value = |a: &ArrayRef, r: usize| {
        let a = a.as_primitive::<Int64Type>();
        if a.is_valid(r) { a.value(r) } else { 0 }
    };
    let units = int(group_count)?;
    let cell_keys = int(group_count + 1)?;
    let row_counts = int(group_count + 2)?;
    let mut cells: Vec<Cell> = (0..batch.num_rows())
        .map(|r| Cell {
            units: int_value(&units, r) as u64,
            key: int_value(&cell_keys, r) as u64,
            rows: int_value(&row_counts, r),
            arguments: Vec::with_capacity(argument_count),
        })
        .collect();
    for i in 0..argument_count {
        let at = group_count + 3 + 6 * i;
        let (arg_units, arg_keys, counts) = (int(at)?, int(at + 1)?, int(at + 2)?);
        let sums = batch.column(at + 3).as_primitive::<Float64Type>();
        let totals = batch.column(at + 4).as_primitive::<Float64Type>();
        let tops = batch.column(at + 5).as_list::<i32>();
        for (r, cell) in cells.iter_mut().enumerate() {
            let top = if tops.is_valid(r) {
                let list = tops.value(r);
                list.as_primitive::<Float64Type>()
                    .iter()
                    .flatten()
                    .collect()
            } else {
                Vec::new()
            };
            cell.arguments.push(ArgumentCell {
                units: int_value(&arg_units, r) as u64,
                key: int_value(&arg_keys, r) as u64,
                count: int_value(&counts, r),
                sum: if sums.is_valid(r) { sums.value(r) } else { 0.0 },
                abs_total: if totals.is_valid(r) {
                    totals.value(r)
                } else {
                    0.0
                },
                top,
            });
        }
    }

    // A group without units (the one row of an aggregation without GROUP
    // BY over no rows) is never released, whatever the threshold.
    let k = u64::from(vetting.combined.min_group_size);
    let released: Vec<usize> = (0..cells.len())
        .filter(|&i| cells[i].units >= k.max(1))
        .collect();
    let indices = UInt32Array::from_iter_values(released.iter().map(|&i| i as u32));
    let group_columns = batch.columns()[..group_count]
        .iter()
        .map(|c| take(c, &indices, None))
        .collect::<Result<Vec<_>, _>>()
        .map_err(arrow_failed)?;

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
