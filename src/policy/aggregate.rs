//! The `aggregate` release mode, enforced on the DataFusion logical plan.
//!
//! [`check`] walks the analysed plan (with subqueries) of a query that reads
//! a protected table and refuses it with a stable code and a reason that
//! depends only on the plan, never on data:
//!
//! - `row-level-output`: the result, and every protected scan, must sit
//!   under an aggregation;
//! - `aggregate-not-allowed` / `aggregate-argument`: only the policy's
//!   aggregates, over plain base columns (or `*` for COUNT), no FILTER or
//!   ORDER BY inside them;
//! - `identifier-used`: identifier columns never grouped on, projected under
//!   a new name, filtered on, compared, sorted on or used in expressions;
//!   the exceptions are equi-joins on declared join keys and
//!   `COUNT(DISTINCT <privacy unit>)`;
//! - `join-not-on-declared-keys`, `grouping-sets`, `window-function`,
//!   `set-operation`, `distinct-rows`, `subquery-expression`: shapes that
//!   select or difference rows.
//!
//! [`enforce`] then runs each first-level aggregation (the ones directly
//! over protected rows) with helper columns that count distinct privacy
//! units, per group and per released value, and vets the result: groups
//! under `min_group_size` units are dropped, values backed by fewer units are
//! set to NULL, rounding is applied. The vetted rows replace the aggregation
//! in the plan, so HAVING, ORDER BY, LIMIT and outer queries see only
//! released groups, and the data is scanned once. A dropped group looks
//! exactly like an absent one; the only report is the number of privacy
//! units in all omitted groups together, given only when that number itself
//! reaches the threshold.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch};
use datafusion::arrow::compute::kernels::cmp::{gt_eq, lt, lt_eq};
use datafusion::arrow::compute::{and, cast, filter_record_batch, nullif};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchemaRef};
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::functions_aggregate::expr_fn::{count, count_distinct};
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    Aggregate, Expr, ExprSchemable, LogicalPlan, LogicalPlanBuilder, Operator, when,
};
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;

use super::{AggregateFn, Rounding};

/// What the policy and the manifest say about one protected table.
#[derive(Debug, Clone, PartialEq)]
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
    /// profile when the version was registered): unit counts are row counts.
    pub unit_is_unique: bool,
}

/// Why a plan was refused: a stable code and a host-written detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: &'static str,
    pub detail: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

fn reject(code: &'static str, detail: impl Into<String>) -> Rejection {
    Rejection {
        code,
        detail: detail.into(),
    }
}

/// Enforcement failed: refused by policy, or the vetted sub-query failed.
#[derive(Debug)]
pub enum EnforceError {
    Rejected(Rejection),
    Failed(datafusion::error::DataFusionError),
}

/// What the guest may learn about what was withheld.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuppressionReport {
    pub min_group_size: u32,
    /// Privacy units in all omitted groups together (with multiplicity
    /// across groups).
    pub omitted_units: u64,
    /// Privacy units behind values set to NULL for lack of units.
    pub withheld_value_units: u64,
}

impl SuppressionReport {
    /// The report as text, with every number under the threshold replaced
    /// by "fewer than N" (a small number would itself identify someone).
    pub fn describe(&self) -> String {
        let k = u64::from(self.min_group_size);
        let amount = |n: u64| {
            if n >= k {
                n.to_string()
            } else {
                format!("fewer than {k}")
            }
        };
        format!(
            "groups with fewer than {k} privacy units are omitted (they held {} privacy units together); \
             values backed by fewer than {k} privacy units are NULL ({} privacy units)",
            amount(self.omitted_units),
            amount(self.withheld_value_units)
        )
    }
}

/// Tables by SQL name, for the protected tables of a job.
pub type RulesByTable = HashMap<String, Arc<TableRules>>;

/// Does the plan read any protected table?
pub fn reads_protected(plan: &LogicalPlan, rules: &RulesByTable) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && rules.contains_key(scan.table_name.table())
        {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// The combined rules of the protected tables a sub-plan reads: the
/// strictest wins.
#[derive(Debug, Clone)]
struct Combined {
    units: Vec<String>,
    min_group_size: u32,
    aggregates: Vec<AggregateFn>,
    rounding: Rounding,
    unit_is_unique: bool,
}

fn combine<'a>(tables: impl Iterator<Item = &'a TableRules>) -> Option<Combined> {
    let mut combined: Option<Combined> = None;
    for rules in tables {
        let c = combined.get_or_insert_with(|| Combined {
            units: Vec::new(),
            min_group_size: 0,
            aggregates: rules.aggregates.clone(),
            rounding: Rounding::None,
            unit_is_unique: true,
        });
        c.unit_is_unique &= rules.unit_is_unique;
        if !c.units.contains(&rules.privacy_unit) {
            c.units.push(rules.privacy_unit.clone());
        }
        c.min_group_size = c.min_group_size.max(rules.min_group_size);
        c.aggregates.retain(|a| rules.aggregates.contains(a));
        if rules.rounding == Rounding::Nearest5 {
            c.rounding = Rounding::Nearest5;
        }
    }
    combined
}

/// Protected tables scanned in a sub-plan (not crossing into subqueries,
/// which `check` refuses anyway).
fn protected_scans<'a>(plan: &LogicalPlan, rules: &'a RulesByTable) -> Vec<&'a TableRules> {
    let mut found = Vec::new();
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Some(r) = rules.get(scan.table_name.table())
        {
            found.push(r.as_ref());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// One table scan and no join below: row counts are unit counts when that
/// table has one row per unit.
fn single_scan(plan: &LogicalPlan) -> bool {
    let mut scans = 0;
    let mut joins = false;
    let _ = plan.apply(|node| {
        match node {
            LogicalPlan::TableScan(_) => scans += 1,
            LogicalPlan::Join(_) | LogicalPlan::Union(_) => joins = true,
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    });
    scans == 1 && !joins
}

fn contains_aggregate(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply(|node| {
        if matches!(node, LogicalPlan::Aggregate(_)) {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

pub(crate) fn unalias(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(alias) => unalias(&alias.expr),
        other => other,
    }
}

/// Type coercion wraps columns in casts (AVG of an integer column is
/// `avg(CAST(x AS Float64))`); a cast of a column is still that column.
pub(crate) fn strip_casts(expr: &Expr) -> &Expr {
    match expr {
        Expr::Cast(cast) => strip_casts(&cast.expr),
        Expr::TryCast(cast) => strip_casts(&cast.expr),
        other => other,
    }
}

fn columns_in(expr: &Expr) -> Vec<String> {
    expr.column_refs()
        .into_iter()
        .map(|c| c.name.clone())
        .collect()
}

/// Check a plan that reads protected tables. Returns nothing on success;
/// [`enforce`] does the rewriting.
pub fn check(plan: &LogicalPlan, rules: &RulesByTable) -> Result<(), Rejection> {
    let identifiers: HashSet<&str> = rules
        .values()
        .flat_map(|r| r.identifiers.iter().map(String::as_str))
        .collect();
    let units: HashSet<&str> = rules.values().map(|r| r.privacy_unit.as_str()).collect();
    let join_keys: HashSet<&str> = rules
        .values()
        .flat_map(|r| r.join_keys.iter().map(String::as_str))
        .collect();

    // 1. Node shapes and identifier use, everywhere, subqueries included.
    let mut rejection = None;
    plan.apply_with_subqueries(|node| {
        rejection = check_node(node, &identifiers, &units, &join_keys, rules).err();
        Ok(if rejection.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    })
    .map_err(|e| reject("plan", e.strip_backtrace()))?;
    if let Some(rejection) = rejection {
        return Err(rejection);
    }

    // 2. The output is an aggregation.
    let mut top = plan;
    loop {
        match top {
            LogicalPlan::Projection(p) => top = &p.input,
            LogicalPlan::Sort(s) => top = &s.input,
            LogicalPlan::Limit(l) => top = &l.input,
            LogicalPlan::Filter(f) => top = &f.input,
            LogicalPlan::SubqueryAlias(s) => top = &s.input,
            LogicalPlan::Aggregate(_) => break,
            _ => {
                return Err(reject(
                    "row-level-output",
                    "a query over a protected dataset must return aggregates (GROUP BY or an aggregate function)",
                ));
            }
        }
    }

    // 3. Every protected scan is under an aggregation, and every first-level
    //    aggregation passes its own rules.
    check_under_aggregates(plan, false, rules)
}

fn check_node(
    node: &LogicalPlan,
    identifiers: &HashSet<&str>,
    units: &HashSet<&str>,
    join_keys: &HashSet<&str>,
    rules: &RulesByTable,
) -> Result<(), Rejection> {
    let identifier_in = |expr: &Expr, place: &str| -> Result<(), Rejection> {
        match columns_in(expr)
            .into_iter()
            .find(|c| identifiers.contains(c.as_str()))
        {
            Some(column) => Err(reject("identifier-used", format!("{column} in {place}"))),
            None => Ok(()),
        }
    };
    for expr in node.expressions() {
        let mut subquery = false;
        let _ = expr.apply(|e| {
            if matches!(
                e,
                Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_)
            ) {
                subquery = true;
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        });
        if subquery {
            return Err(reject(
                "subquery-expression",
                "subqueries in expressions are not allowed over protected data; join on a declared key instead",
            ));
        }
    }
    match node {
        LogicalPlan::TableScan(_)
        | LogicalPlan::EmptyRelation(_)
        | LogicalPlan::SubqueryAlias(_) => Ok(()),
        LogicalPlan::Values(values) => {
            for row in &values.values {
                for expr in row {
                    identifier_in(expr, "VALUES")?;
                }
            }
            Ok(())
        }
        LogicalPlan::Projection(projection) => {
            for expr in &projection.expr {
                match expr {
                    // Passing an identifier through unchanged (SELECT * in a
                    // derived table) is harmless: it cannot reach the output
                    // except as a group key or aggregate argument, which are
                    // checked. Renaming it would hide it, so that is refused.
                    Expr::Column(_) => {}
                    Expr::Alias(alias) if matches!(&*alias.expr, Expr::Column(c) if c.name == alias.name) =>
                        {}
                    other => identifier_in(other, "SELECT")?,
                }
            }
            Ok(())
        }
        LogicalPlan::Filter(filter) => identifier_in(&filter.predicate, "WHERE or HAVING"),
        LogicalPlan::Sort(sort) => {
            for s in &sort.expr {
                identifier_in(&s.expr, "ORDER BY")?;
            }
            Ok(())
        }
        LogicalPlan::Limit(limit) => {
            for expr in limit.skip.iter().chain(limit.fetch.iter()) {
                identifier_in(expr, "LIMIT")?;
            }
            Ok(())
        }
        LogicalPlan::Aggregate(aggregate) => {
            for expr in &aggregate.group_expr {
                if matches!(expr, Expr::GroupingSet(_)) {
                    return Err(reject(
                        "grouping-sets",
                        "ROLLUP, CUBE and GROUPING SETS are not allowed",
                    ));
                }
                identifier_in(expr, "GROUP BY")?;
            }
            for expr in &aggregate.aggr_expr {
                if let Expr::AggregateFunction(AggregateFunction { func, params }) = unalias(expr)
                    && func.name() == "count"
                    && params.distinct
                    && params.args.len() == 1
                    && matches!(strip_casts(&params.args[0]), Expr::Column(c) if units.contains(c.name.as_str()))
                {
                    continue; // COUNT(DISTINCT <privacy unit>)
                }
                identifier_in(expr, "an aggregate")?;
            }
            Ok(())
        }
        LogicalPlan::Join(join) => {
            // Before optimisation `JOIN … ON a = b` keeps its condition in
            // `filter`; equi-pairs may also already be in `on`.
            let mut conditions: Vec<Expr> = join
                .on
                .iter()
                .map(|(l, r)| l.clone().eq(r.clone()))
                .collect();
            if let Some(filter) = &join.filter {
                conditions.extend(split_conjunction(filter).into_iter().cloned());
            }
            let is_key = |e: &Expr| matches!(unalias(strip_casts(e)), Expr::Column(c) if join_keys.contains(c.name.as_str()));
            let mut keyed = false;
            for condition in &conditions {
                if let Expr::BinaryExpr(binary) = condition
                    && binary.op == Operator::Eq
                    && is_key(&binary.left)
                    && is_key(&binary.right)
                {
                    keyed = true;
                    continue;
                }
                if let Some(column) = columns_in(condition)
                    .into_iter()
                    .find(|c| identifiers.contains(c.as_str()))
                {
                    return Err(reject(
                        "join-not-on-declared-keys",
                        format!(
                            "{column} is used in a join condition other than a declared-key equality"
                        ),
                    ));
                }
            }
            if !keyed && !protected_scans(node, rules).is_empty() {
                return Err(reject(
                    "join-not-on-declared-keys",
                    "joins with a protected dataset need JOIN … ON equal declared join keys",
                ));
            }
            Ok(())
        }
        LogicalPlan::Window(_) => Err(reject(
            "window-function",
            "window functions are not allowed over protected data",
        )),
        LogicalPlan::Union(_) => Err(reject(
            "set-operation",
            "UNION is not allowed over protected data",
        )),
        LogicalPlan::Distinct(_) => Err(reject(
            "distinct-rows",
            "SELECT DISTINCT lists rows; use GROUP BY with an aggregate",
        )),
        LogicalPlan::Subquery(_) => Ok(()),
        other => Err(reject(
            "plan",
            format!("{} is not allowed over protected data", other.display()),
        )),
    }
}

/// Walk the plan's children; below the first aggregation the protected
/// rows are consumed, above it only vetted groups flow.
fn check_under_aggregates(
    plan: &LogicalPlan,
    under_aggregate: bool,
    rules: &RulesByTable,
) -> Result<(), Rejection> {
    if let LogicalPlan::TableScan(scan) = plan
        && rules.contains_key(scan.table_name.table())
        && !under_aggregate
    {
        return Err(reject(
            "row-level-output",
            format!(
                "rows of {} reach the output without aggregation",
                scan.table_name.table()
            ),
        ));
    }
    if let LogicalPlan::Aggregate(aggregate) = plan
        && !under_aggregate
        && !protected_scans(&aggregate.input, rules).is_empty()
        && !contains_aggregate(&aggregate.input)
    {
        check_first_level(aggregate, rules)?;
    }
    let below = under_aggregate || matches!(plan, LogicalPlan::Aggregate(_));
    for child in plan.inputs() {
        check_under_aggregates(child, below, rules)?;
    }
    Ok(())
}

/// Names computed (not passed through) by projections below an aggregation.
fn computed_columns(plan: &LogicalPlan) -> HashSet<String> {
    let mut computed = HashSet::new();
    let _ = plan.apply(|node| {
        if let LogicalPlan::Projection(projection) = node {
            for (expr, field) in projection.expr.iter().zip(projection.schema.fields()) {
                let pass_through =
                    matches!(unalias(expr), Expr::Column(c) if &c.name == field.name());
                if !pass_through {
                    computed.insert(field.name().clone());
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    computed
}

/// Which policy function an aggregate expression is, if any.
fn classify_aggregate(function: &AggregateFunction) -> Option<AggregateFn> {
    match (function.func.name(), function.params.distinct) {
        ("count", false) => Some(AggregateFn::Count),
        ("count", true) => Some(AggregateFn::CountDistinct),
        ("sum", false) => Some(AggregateFn::Sum),
        ("avg", false) => Some(AggregateFn::Avg),
        ("min", _) => Some(AggregateFn::Min),
        ("max", _) => Some(AggregateFn::Max),
        ("median", false) => Some(AggregateFn::Median),
        _ => None,
    }
}

fn check_first_level(aggregate: &Aggregate, rules: &RulesByTable) -> Result<(), Rejection> {
    let combined =
        combine(protected_scans(&aggregate.input, rules).into_iter()).expect("protected input");
    let computed = computed_columns(&aggregate.input);
    for expr in &aggregate.aggr_expr {
        let Expr::AggregateFunction(function) = unalias(expr) else {
            return Err(reject(
                "aggregate-not-allowed",
                format!("{expr} is not an aggregate function"),
            ));
        };
        let Some(kind) = classify_aggregate(function).filter(|k| combined.aggregates.contains(k))
        else {
            return Err(reject(
                "aggregate-not-allowed",
                format!(
                    "{} is not allowed by the policy",
                    function.func.name().to_uppercase()
                ),
            ));
        };
        if function.params.filter.is_some() || !function.params.order_by.is_empty() {
            return Err(reject(
                "aggregate-argument",
                "FILTER and ORDER BY inside aggregates are not allowed",
            ));
        }
        match function.params.args.as_slice() {
            [Expr::Literal(..)] if kind == AggregateFn::Count => {}
            [argument] if matches!(strip_casts(argument), Expr::Column(c) if !computed.contains(&c.name)) =>
                {}
            _ => {
                return Err(reject(
                    "aggregate-argument",
                    format!(
                        "{} must aggregate a plain column of a dataset",
                        function.func.name().to_uppercase()
                    ),
                ));
            }
        }
    }
    let input_columns: Vec<String> = aggregate
        .input
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    for unit in &combined.units {
        if !input_columns.contains(unit) {
            return Err(reject(
                "privacy-unit-missing",
                format!("keep {unit} in derived tables so groups can be counted in privacy units"),
            ));
        }
    }
    Ok(())
}

/// Check `plan`, run and vet its first-level aggregations, and return the
/// plan to execute with the vetted rows in their place.
pub async fn enforce(
    ctx: &SessionContext,
    plan: LogicalPlan,
    rules: &RulesByTable,
) -> Result<(LogicalPlan, SuppressionReport), EnforceError> {
    check(&plan, rules).map_err(EnforceError::Rejected)?;
    let mut first_level = Vec::new();
    collect_first_level(&plan, false, rules, &mut first_level);

    let mut report = SuppressionReport {
        min_group_size: 0,
        omitted_units: 0,
        withheld_value_units: 0,
    };
    let mut replacements = Vec::new();
    for (index, aggregate) in first_level.iter().enumerate() {
        let LogicalPlan::Aggregate(inner) = aggregate else {
            unreachable!("collected aggregates")
        };
        let combined =
            combine(protected_scans(&inner.input, rules).into_iter()).expect("protected input");
        report.min_group_size = report.min_group_size.max(combined.min_group_size);
        let vetted = vet(ctx, inner, &combined, &mut report).await?;
        let replacement =
            vetted_scan(index, &inner.schema, vetted).map_err(EnforceError::Failed)?;
        replacements.push((aggregate.clone(), replacement));
    }
    let rewritten = plan
        .transform_up(|node| {
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
    Ok((rewritten, report))
}

fn collect_first_level(
    plan: &LogicalPlan,
    under: bool,
    rules: &RulesByTable,
    found: &mut Vec<LogicalPlan>,
) {
    if let LogicalPlan::Aggregate(aggregate) = plan
        && !under
        && !protected_scans(&aggregate.input, rules).is_empty()
        && !contains_aggregate(&aggregate.input)
    {
        if !found.contains(plan) {
            found.push(plan.clone());
        }
        return;
    }
    for child in plan.inputs() {
        collect_first_level(child, under, rules, found);
    }
}

/// Run one first-level aggregation with unit-counting helpers and return
/// its vetted batches in the original output schema (positional names).
async fn vet(
    ctx: &SessionContext,
    aggregate: &Aggregate,
    combined: &Combined,
    report: &mut SuppressionReport,
) -> Result<Vec<RecordBatch>, EnforceError> {
    let k = i64::from(combined.min_group_size);
    let unit_columns: Vec<Column> = combined
        .units
        .iter()
        .flat_map(|unit| {
            aggregate
                .input
                .schema()
                .columns()
                .into_iter()
                .filter(move |c| &c.name == unit)
        })
        .collect();
    let first_unit = Expr::Column(unit_columns[0].clone());
    // With one row per privacy unit (checked when the dataset was
    // registered) and a single scan below, counting non-null units is a
    // plain COUNT; otherwise it takes COUNT(DISTINCT …).
    let unique_rows = combined.unit_is_unique && single_scan(&aggregate.input);
    let count_units = |expr: Expr| {
        if unique_rows {
            count(expr)
        } else {
            count_distinct(expr)
        }
    };
    let mut helpers = Vec::new();
    for (i, unit) in unit_columns.iter().enumerate() {
        helpers.push(count_units(Expr::Column(unit.clone())).alias(format!("__dsb_units_{i}")));
    }
    // Per-value helpers: units with a non-NULL argument, for aggregates of
    // a column (a SUM over 10 units of which one has a value is one value).
    // Not needed for arguments that cannot be NULL; shared by aggregates of
    // the same argument.
    let input_schema = aggregate.input.schema();
    let mut value_helper = Vec::new();
    let mut by_argument: Vec<(Expr, usize)> = Vec::new();
    for (j, expr) in aggregate.aggr_expr.iter().enumerate() {
        let Expr::AggregateFunction(function) = unalias(expr) else {
            continue;
        };
        if let [argument] = function.params.args.as_slice()
            && matches!(strip_casts(argument), Expr::Column(_))
            && argument.nullable(input_schema.as_ref()).unwrap_or(true)
        {
            let column = strip_casts(argument).clone();
            if let Some((_, helper)) = by_argument.iter().find(|(a, _)| *a == column) {
                value_helper.push((j, *helper));
                continue;
            }
            let backing = when(column.clone().is_not_null(), first_unit.clone())
                .end()
                .map_err(EnforceError::Failed)?;
            by_argument.push((column, helpers.len()));
            value_helper.push((j, helpers.len()));
            helpers.push(count_units(backing).alias(format!("__dsb_values_{j}")));
        }
    }
    let group_count = aggregate.group_expr.len();
    let output_count = group_count + aggregate.aggr_expr.len();
    let mut aggr_expr = aggregate.aggr_expr.clone();
    aggr_expr.extend(helpers);
    let helper_plan = LogicalPlan::Aggregate(
        Aggregate::try_new(
            Arc::clone(&aggregate.input),
            aggregate.group_expr.clone(),
            aggr_expr,
        )
        .map_err(EnforceError::Failed)?,
    );
    let batches: Vec<RecordBatch> = ctx
        .execute_logical_plan(helper_plan)
        .await
        .map_err(EnforceError::Failed)?
        .execute_stream()
        .await
        .map_err(EnforceError::Failed)?
        .try_collect()
        .await
        .map_err(EnforceError::Failed)?;

    let schema = positional_schema(&aggregate.schema);
    let threshold = Int64Array::new_scalar(k);
    let mut vetted = Vec::with_capacity(batches.len());
    for batch in batches {
        let units = |i: usize| -> &Int64Array {
            batch
                .column(output_count + i)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("COUNT is Int64")
        };
        // Groups: every unit count must reach the threshold.
        let mut keep = gt_eq(units(0), &threshold).map_err(arrow_failed)?;
        for i in 1..unit_columns.len() {
            keep = and(&keep, &gt_eq(units(i), &threshold).map_err(arrow_failed)?)
                .map_err(arrow_failed)?;
        }
        for (row, kept) in keep.iter().enumerate() {
            if kept != Some(true) {
                report.omitted_units += units(0).value(row).max(0) as u64;
            }
        }
        let mut columns: Vec<ArrayRef> = batch.columns()[..output_count].to_vec();
        for &(j, helper) in &value_helper {
            let backing = batch
                .column(output_count + helper)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("COUNT is Int64");
            let too_few = lt(backing, &threshold).map_err(arrow_failed)?;
            for (row, few) in too_few.iter().enumerate() {
                if few == Some(true) && keep.value(row) {
                    report.withheld_value_units += backing.value(row).max(0) as u64;
                }
            }
            let column = group_count + j;
            columns[column] = nullif(&columns[column], &too_few).map_err(arrow_failed)?;
        }
        if combined.rounding == Rounding::Nearest5 {
            for (j, expr) in aggregate.aggr_expr.iter().enumerate() {
                let Expr::AggregateFunction(function) = unalias(expr) else {
                    continue;
                };
                let column = group_count + j;
                columns[column] = match classify_aggregate(function) {
                    Some(AggregateFn::Count | AggregateFn::CountDistinct) => {
                        let rounded = round_to_5(&columns[column])?;
                        let small = lt_eq(
                            &cast(&columns[column], &DataType::Int64).map_err(arrow_failed)?,
                            &Int64Array::new_scalar(7),
                        )
                        .map_err(arrow_failed)?;
                        nullif(&rounded, &small).map_err(arrow_failed)?
                    }
                    Some(AggregateFn::Sum) => round_to_5(&columns[column])?,
                    _ => Arc::clone(&columns[column]),
                };
            }
        }
        let released = RecordBatch::try_new(Arc::clone(&schema), columns).map_err(arrow_failed)?;
        vetted.push(filter_record_batch(&released, &keep).map_err(arrow_failed)?);
    }
    Ok(vetted)
}

fn arrow_failed(error: datafusion::arrow::error::ArrowError) -> EnforceError {
    EnforceError::Failed(error.into())
}

/// Round to the nearest 5, keeping the column's type.
fn round_to_5(array: &ArrayRef) -> Result<ArrayRef, EnforceError> {
    let as_float = cast(array, &DataType::Float64).map_err(arrow_failed)?;
    let as_float = as_float
        .as_any()
        .downcast_ref::<Float64Array>()
        .expect("cast to Float64");
    let rounded: Float64Array = as_float.unary(|v| (v / 5.0).round() * 5.0);
    cast(&(Arc::new(rounded) as ArrayRef), array.data_type()).map_err(arrow_failed)
}

/// The aggregate's output schema with positional names `c0…cn`, all
/// nullable (vetting may blank values).
pub(crate) fn positional_schema(schema: &DFSchemaRef) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| Field::new(format!("c{i}"), f.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ))
}

/// A scan of the vetted rows, projected back to the original names and
/// qualifiers so the plan above resolves unchanged.
pub(crate) fn vetted_scan(
    index: usize,
    original: &DFSchemaRef,
    batches: Vec<RecordBatch>,
) -> datafusion::error::Result<LogicalPlan> {
    let schema = positional_schema(original);
    let table = format!("__dsb_vetted_{index}");
    let provider = MemTable::try_new(Arc::clone(&schema), vec![batches])?;
    let projection: Vec<Expr> = original
        .iter()
        .enumerate()
        .map(|(i, (qualifier, field))| {
            Expr::Column(Column::new(Some(table.as_str()), format!("c{i}")))
                .alias_qualified(qualifier.cloned(), field.name())
        })
        .collect();
    LogicalPlanBuilder::scan(table.as_str(), provider_as_source(Arc::new(provider)), None)?
        .project(projection)?
        .build()
}
