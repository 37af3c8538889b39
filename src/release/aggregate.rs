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
//! [`enforce`] runs each vetted aggregation as one DataFusion query per
//! (group, privacy unit) (per row when the table holds one row per unit),
//! reduces it on the host and releases, per group:
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

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::Column;
use datafusion::common::tree_node::{Transformed, TreeNodeRecursion};
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{
    Aggregate, Expr, ExprSchemable, LogicalPlan, LogicalPlanBuilder, cast as cast_expr, lit, when,
};
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use serde::Serialize;

use super::cell_key::{CellKeyParams, RecordKeys};
use super::grammar::{self, Origin, Region, TableFacts};
use super::{Rejection, positional_schema, reject, unalias, vetted_scan};
pub use crate::policy::Dominance;
use crate::policy::{AggregateFn, Rounding};

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

fn check_aggregation(aggregate: &Aggregate, rules: &RulesByTable) -> Result<Vetting, Rejection> {
    let facts: HashMap<String, Arc<TableFacts>> = rules
        .iter()
        .map(|(name, r)| {
            (
                name.clone(),
                Arc::new(TableFacts {
                    privacy_unit: r.privacy_unit.clone(),
                    identifiers: r.identifiers.clone(),
                    join_keys: r.join_keys.clone(),
                }),
            )
        })
        .collect();
    let region = grammar::region(&aggregate.input, &facts)?;
    let unit = region.unit_column()?;
    let tables: Vec<&TableRules> = region
        .scans
        .iter()
        .map(|t| rules[t.as_str()].as_ref())
        .collect();
    let combined = combine(&tables);

    let schema = Arc::clone(region.plan.schema());
    for expr in &aggregate.group_expr {
        if matches!(expr, Expr::GroupingSet(_)) {
            return Err(reject(
                "grouping-sets",
                "ROLLUP, CUBE and GROUPING SETS are not allowed",
            ));
        }
        grammar::total(expr, &schema, &region.origins)?;
    }
    let mut arguments: Vec<Column> = Vec::new();
    let mut measures = Vec::with_capacity(aggregate.aggr_expr.len());
    for expr in &aggregate.aggr_expr {
        let (kind, measure) = measure(unalias(expr), &region, &mut arguments)?;
        if !combined.aggregates.contains(&kind) {
            return Err(reject(
                "aggregate-not-allowed",
                format!(
                    "{} is not allowed by the policy",
                    kind.name().to_uppercase()
                ),
            ));
        }
        measures.push(measure);
    }
    let single_unique_scan = region.scans.len() == 1 && tables[0].unit_is_unique;
    Ok(Vetting {
        region,
        group_expr: aggregate.group_expr.clone(),
        unit,
        arguments,
        measures,
        single_unique_scan,
        combined,
    })
}

const MEASURES: &str = "aggregates allowed over protected data: COUNT(*), COUNT(col), COUNT(DISTINCT <privacy unit>), SUM(col), AVG(col), each of a column of a dataset";

/// Which measure an aggregate expression is; its argument goes to
/// `arguments` (deduplicated).
fn measure(
    expr: &Expr,
    region: &Region,
    arguments: &mut Vec<Column>,
) -> Result<(AggregateFn, Measure), Rejection> {
    let Expr::AggregateFunction(AggregateFunction { func, params }) = expr else {
        return Err(reject("aggregate-not-allowed", MEASURES));
    };
    if params.filter.is_some() || !params.order_by.is_empty() {
        return Err(reject(
            "aggregate-argument",
            "FILTER and ORDER BY inside aggregates are not allowed",
        ));
    }
    let mut argument = |arg: &Expr, numeric: bool| -> Result<usize, Rejection> {
        let column = value_column(arg, region, numeric)?;
        Ok(match arguments.iter().position(|c| *c == column) {
            Some(i) => i,
            None => {
                arguments.push(column);
                arguments.len() - 1
            }
        })
    };
    match (func.name(), params.distinct, params.args.as_slice()) {
        ("count", false, []) => Ok((AggregateFn::Count, Measure::Rows)),
        ("count", false, [Expr::Literal(value, _)]) if !value.is_null() => {
            Ok((AggregateFn::Count, Measure::Rows))
        }
        ("count", false, [arg]) => Ok((AggregateFn::Count, Measure::Count(argument(arg, false)?))),
        ("count", true, [arg]) => match widened_column(arg, region)? {
            Some(column) if matches!(region.origin(&column)?, Origin::Base { unit: true, .. }) => {
                Ok((AggregateFn::CountDistinct, Measure::Units))
            }
            _ => Err(reject(
                "aggregate-argument",
                "COUNT(DISTINCT …) counts the privacy unit only",
            )),
        },
        ("sum", false, [arg]) => Ok((AggregateFn::Sum, Measure::Sum(argument(arg, true)?))),
        ("avg", false, [arg]) => Ok((AggregateFn::Avg, Measure::Avg(argument(arg, true)?))),
        _ => Err(reject("aggregate-not-allowed", MEASURES)),
    }
}

/// The column an argument is, through widening casts only.
fn widened_column(arg: &Expr, region: &Region) -> Result<Option<Column>, Rejection> {
    match unalias(arg) {
        Expr::Column(column) => Ok(Some(column.clone())),
        Expr::Cast(cast) => {
            let from = cast
                .expr
                .get_type(region.plan.schema().as_ref())
                .map_err(|_| reject("plan", "a type could not be resolved"))?;
            if grammar::widening(&from, cast.field.data_type()) {
                widened_column(&cast.expr, region)
            } else {
                Ok(None)
            }
        }
        _ => Ok(None),
    }
}

/// An aggregate argument: a non-identifier base column of a catalog table
/// (numeric for SUM and AVG), through widening casts only.
fn value_column(arg: &Expr, region: &Region, numeric: bool) -> Result<Column, Rejection> {
    let refused = || {
        reject(
            "aggregate-argument",
            "aggregates take a column of a dataset as it is (widening casts only), not an expression or a computed column",
        )
    };
    let column = widened_column(arg, region)?.ok_or_else(refused)?;
    match region.origin(&column)? {
        Origin::Base {
            identifier: true, ..
        } => Err(reject(
            "identifier-used",
            "an identifier can only be counted with COUNT(DISTINCT <privacy unit>)",
        )),
        Origin::Base { .. } => {
            let data_type = Expr::Column(column.clone())
                .get_type(region.plan.schema().as_ref())
                .map_err(|_| reject("plan", "a type could not be resolved"))?;
            if numeric && !(data_type.is_integer() || data_type.is_floating()) {
                return Err(reject(
                    "aggregate-argument",
                    "SUM and AVG take a numeric column",
                ));
            }
            Ok(column)
        }
        Origin::Computed => Err(refused()),
    }
}

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
async fn run(
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
