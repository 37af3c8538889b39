//! Vetting one aggregation over protected rows: its region (see
//! [`crate::release::grammar`]), its grouping keys and its measures, each
//! checked against the combined rules of the tables it reads.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::Column;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{Aggregate, Expr, ExprSchemable};

use super::{Measure, RulesByTable, TableRules, Vetting, combine};
use crate::policy::AggregateFn;
use crate::release::grammar::{self, Origin, Region, TableFacts};
use crate::release::{Rejection, reject, unalias};

pub(super) fn check_aggregation(
    aggregate: &Aggregate,
    rules: &RulesByTable,
) -> Result<Vetting, Rejection> {
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
