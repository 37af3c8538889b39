//! The positive grammar of what may read protected rows.
//!
//! Below a vetted aggregation sits its *region*: the rows it aggregates.
//! A region is accepted only if every node and every expression in it is one
//! of the shapes written here; anything else is refused, whatever it is.
//!
//! ```text
//! region      := scan                       -- a protected catalog table, no pushed filters or limits
//!              | region WHERE total-pred    -- Filter
//!              | SELECT item, … FROM region -- Projection; item := column [AS name] | total-expr AS name
//!              | region AS alias            -- SubqueryAlias (derived tables, CTEs)
//!              | region INNER JOIN region ON key = key [AND key = key …] [AND total-pred]
//! key         := a column whose provenance is a declared join key of a catalog table
//! total-expr  := column (not an identifier) | literal
//!              | total-expr (= | <> | < | <= | > | >= | IS [NOT] DISTINCT FROM) total-expr
//!              | total-expr AND | OR total-expr | NOT total-expr
//!              | total-expr IS [NOT] NULL | IS [NOT] TRUE | FALSE | UNKNOWN
//!              | total-expr [NOT] BETWEEN total-expr AND total-expr
//!              | total-expr [NOT] IN (literal, …)
//!              | total-expr [NOT] [I]LIKE literal-pattern
//!              | CASE [total-expr] WHEN total-expr THEN total-expr … [ELSE total-expr] END
//!              | CAST(total-expr AS wider type)           -- widening only (int → larger int or float, string ↔ string, number → string)
//!              | CAST(literal AS type)                     -- folded when the plan is checked; a failing one refuses the query
//!              | - literal
//!              | date_part | date_trunc ('year'|'quarter'|'month'|'day', date or timestamp)
//!              | coalesce | nullif | lower | upper (total-expr, …)
//! ```
//!
//! A total expression cannot fail on any row, so whether a query succeeds
//! never depends on data; none of them costs more on one value than on
//! another of the same length, so timing says no more than the data's size.
//! Provenance, not names, decides what a column is: every column of a
//! region's output carries its [`Origin`] (a base column of a scan instance,
//! renamed or not, or a computed one), so `SELECT enterprise_id AS eid`
//! stays an identifier and a `VALUES` column named `enterprise_id` is not a
//! key (it is not a scan at all, so it is refused).
//!
//! The region is also rewritten: projections that drop a scan's privacy
//! unit column carry it along under a hidden name, so the aggregation above
//! can always count units, whatever the derived tables kept.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::logical_expr::logical_plan::{Filter, Join, Projection, SubqueryAlias};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, JoinType, LogicalPlan, Operator};

use super::{Rejection, reject, unalias};

/// What a protected table contributes to the grammar.
#[derive(Debug, Clone, PartialEq)]
pub struct TableFacts {
    /// The column naming the person or enterprise a row is about.
    pub privacy_unit: String,
    /// Columns with the `identifier` role (the privacy unit among them).
    pub identifiers: Vec<String>,
    /// Columns other tables may join on.
    pub join_keys: Vec<String>,
}

/// Where a column of a region's output comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// A column of a scan instance, passed through (perhaps renamed).
    Base {
        scan: usize,
        column: String,
        identifier: bool,
        join_key: bool,
        unit: bool,
    },
    /// Computed by a total expression over non-identifier columns.
    Computed,
}

impl Origin {
    fn is_identifier(&self) -> bool {
        matches!(
            self,
            Origin::Base {
                identifier: true,
                ..
            }
        )
    }
}

/// A checked and rewritten region.
#[derive(Debug, Clone)]
pub struct Region {
    /// The region with every scan's privacy unit carried to its output.
    pub plan: LogicalPlan,
    /// One origin per column of `plan`'s schema.
    pub origins: Vec<Origin>,
    /// The table of each scan instance.
    pub scans: Vec<String>,
    /// Scan instances whose privacy units are equal on every row (joined on
    /// them), as a union-find parent list.
    parent: Vec<usize>,
}

impl Region {
    fn class(&self, mut scan: usize) -> usize {
        while self.parent[scan] != scan {
            scan = self.parent[scan];
        }
        scan
    }

    /// The one privacy-unit population this region's rows belong to: every
    /// scan's unit is equated with every other's by the joins. Returns a
    /// column of the region's output holding the unit.
    pub fn unit_column(&self) -> Result<Column, Rejection> {
        let first = self.class(0);
        if (1..self.scans.len()).any(|scan| self.class(scan) != first) {
            return Err(reject(
                "one-population",
                "an aggregation counts one population of privacy units: join protected tables on their privacy-unit columns",
            ));
        }
        let index = self
            .origins
            .iter()
            .position(|o| matches!(o, Origin::Base { unit: true, .. }))
            .ok_or_else(|| {
                reject(
                    "privacy-unit-missing",
                    "the privacy unit cannot be followed through this query",
                )
            })?;
        Ok(Column::from(self.plan.schema().qualified_field(index)))
    }

    /// The origin of a column of the region's output.
    pub fn origin(&self, column: &Column) -> Result<&Origin, Rejection> {
        origin_in(self.plan.schema(), &self.origins, column)
    }
}

fn origin_in<'a>(
    schema: &DFSchema,
    origins: &'a [Origin],
    column: &Column,
) -> Result<&'a Origin, Rejection> {
    schema
        .index_of_column(column)
        .ok()
        .and_then(|i| origins.get(i))
        .ok_or_else(|| reject("plan", "a column could not be resolved"))
}

/// Check `plan` as a region and rewrite it (see the module doc).
pub fn region(
    plan: &LogicalPlan,
    tables: &HashMap<String, Arc<TableFacts>>,
) -> Result<Region, Rejection> {
    let mut builder = Builder {
        tables,
        scans: Vec::new(),
        parent: Vec::new(),
    };
    let (plan, origins) = builder.rewrite(plan)?;
    Ok(Region {
        plan,
        origins,
        scans: builder.scans,
        parent: builder.parent,
    })
}

struct Builder<'a> {
    tables: &'a HashMap<String, Arc<TableFacts>>,
    scans: Vec<String>,
    parent: Vec<usize>,
}

impl Builder<'_> {
    fn union(&mut self, a: usize, b: usize) {
        let find = |parent: &Vec<usize>, mut x: usize| {
            while parent[x] != x {
                x = parent[x];
            }
            x
        };
        let (ra, rb) = (find(&self.parent, a), find(&self.parent, b));
        if ra != rb {
            self.parent[rb] = ra;
        }
    }

    fn rewrite(&mut self, plan: &LogicalPlan) -> Result<(LogicalPlan, Vec<Origin>), Rejection> {
        let failed = |_| reject("plan", "the query could not be re-planned");
        match plan {
            LogicalPlan::TableScan(scan) => {
                let table = scan.table_name.table();
                let Some(facts) = self.tables.get(table) else {
                    return Err(reject(
                        "outside-grammar",
                        "only protected catalog tables may be aggregated together; join other tables to the released rows above the aggregation",
                    ));
                };
                if !scan.filters.is_empty() || scan.fetch.is_some() {
                    return Err(reject("outside-grammar", "a scan with pushed-down filters"));
                }
                let index = self.scans.len();
                self.scans.push(table.to_string());
                self.parent.push(index);
                let origins = scan
                    .projected_schema
                    .fields()
                    .iter()
                    .map(|field| {
                        let name = field.name();
                        Origin::Base {
                            scan: index,
                            column: name.clone(),
                            identifier: facts.identifiers.contains(name)
                                || &facts.privacy_unit == name,
                            join_key: facts.join_keys.contains(name),
                            unit: &facts.privacy_unit == name,
                        }
                    })
                    .collect();
                Ok((plan.clone(), origins))
            }
            LogicalPlan::Filter(filter) => {
                let (input, origins) = self.rewrite(&filter.input)?;
                total(&filter.predicate, input.schema(), &origins)?;
                let rebuilt =
                    Filter::try_new(filter.predicate.clone(), Arc::new(input)).map_err(failed)?;
                Ok((LogicalPlan::Filter(rebuilt), origins))
            }
            LogicalPlan::SubqueryAlias(alias) => {
                let (input, origins) = self.rewrite(&alias.input)?;
                let rebuilt =
                    SubqueryAlias::try_new(Arc::new(input), alias.alias.clone()).map_err(failed)?;
                Ok((LogicalPlan::SubqueryAlias(rebuilt), origins))
            }
            LogicalPlan::Projection(projection) => {
                let (input, input_origins) = self.rewrite(&projection.input)?;
                let mut exprs = projection.expr.clone();
                let mut origins = Vec::with_capacity(exprs.len());
                for expr in &projection.expr {
                    match unalias(expr) {
                        Expr::Column(column) => {
                            origins.push(origin_in(input.schema(), &input_origins, column)?.clone())
                        }
                        other => {
                            total(other, input.schema(), &input_origins)?;
                            origins.push(Origin::Computed);
                        }
                    }
                }
                // Carry each scan's privacy unit that the projection drops.
                for (i, origin) in input_origins.iter().enumerate() {
                    if let Origin::Base {
                        scan, unit: true, ..
                    } = origin
                        && !origins.iter().any(
                            |o| matches!(o, Origin::Base { scan: s, unit: true, .. } if s == scan),
                        )
                    {
                        let column = Column::from(input.schema().qualified_field(i));
                        exprs.push(Expr::Column(column).alias(format!("__dsb_unit_{scan}")));
                        origins.push(origin.clone());
                    }
                }
                let rebuilt = Projection::try_new(exprs, Arc::new(input)).map_err(failed)?;
                Ok((LogicalPlan::Projection(rebuilt), origins))
            }
            LogicalPlan::Join(join) => self.join(join),
            other => Err(reject(
                "outside-grammar",
                format!(
                    "{} is not allowed below an aggregation over protected data",
                    node_name(other)
                ),
            )),
        }
    }

    fn join(&mut self, join: &Join) -> Result<(LogicalPlan, Vec<Origin>), Rejection> {
        if join.join_type != JoinType::Inner || join.null_aware {
            return Err(reject(
                "join-type",
                "protected tables are joined INNER only",
            ));
        }
        let (left, left_origins) = self.rewrite(&join.left)?;
        let (right, right_origins) = self.rewrite(&join.right)?;
        let rebuilt = Join::try_new(
            Arc::new(left),
            Arc::new(right),
            join.on.clone(),
            join.filter.clone(),
            join.join_type,
            join.join_constraint,
            join.null_equality,
            join.null_aware,
        )
        .map_err(|_| reject("plan", "the query could not be re-planned"))?;
        let origins: Vec<Origin> = left_origins.into_iter().chain(right_origins).collect();
        let schema = Arc::clone(&rebuilt.schema);

        let mut pairs = Vec::new();
        for (l, r) in &join.on {
            pairs.push((l.clone(), r.clone()));
        }
        let mut rest = Vec::new();
        if let Some(filter) = &join.filter {
            for conjunct in split_conjunction(filter) {
                match conjunct {
                    Expr::BinaryExpr(BinaryExpr {
                        left,
                        op: Operator::Eq,
                        right,
                    }) if matches!(**left, Expr::Column(_))
                        && matches!(**right, Expr::Column(_)) =>
                    {
                        pairs.push(((**left).clone(), (**right).clone()))
                    }
                    other => rest.push(other.clone()),
                }
            }
        }
        let mut keyed = 0;
        for (l, r) in &pairs {
            let (Expr::Column(l), Expr::Column(r)) = (l, r) else {
                return Err(reject(
                    "join-not-on-declared-keys",
                    "join conditions compare columns, not expressions",
                ));
            };
            let key = |c: &Column| match origin_in(&schema, &origins, c) {
                Ok(Origin::Base {
                    scan,
                    join_key: true,
                    unit,
                    ..
                }) => Some((*scan, *unit)),
                _ => None,
            };
            match (key(l), key(r)) {
                (Some((a, unit_a)), Some((b, unit_b))) => {
                    if unit_a && unit_b {
                        self.union(a, b);
                    }
                    keyed += 1;
                }
                _ => {
                    return Err(reject(
                        "join-not-on-declared-keys",
                        "both sides of a join condition must be declared join keys of catalog tables",
                    ));
                }
            }
        }
        if keyed == 0 {
            return Err(reject(
                "join-not-on-declared-keys",
                "joins with a protected dataset need JOIN … ON equal declared join keys",
            ));
        }
        for condition in rest {
            total(&condition, &schema, &origins)?;
        }
        Ok((LogicalPlan::Join(rebuilt), origins))
    }
}

fn node_name(plan: &LogicalPlan) -> &'static str {
    match plan {
        LogicalPlan::Aggregate(_) => "a nested aggregation",
        LogicalPlan::Values(_) => "a literal relation (VALUES)",
        LogicalPlan::EmptyRelation(_) => "a relation without a table",
        LogicalPlan::Window(_) => "a window function",
        LogicalPlan::Sort(_) => "ORDER BY",
        LogicalPlan::Limit(_) => "LIMIT or OFFSET",
        LogicalPlan::Union(_) => "a set operation",
        LogicalPlan::Distinct(_) => "DISTINCT",
        LogicalPlan::Unnest(_) => "UNNEST",
        LogicalPlan::RecursiveQuery(_) => "a recursive query",
        LogicalPlan::Subquery(_) => "a subquery",
        LogicalPlan::Repartition(_) => "a repartition",
        _ => "this plan node",
    }
}

/// Check that `expr` is total over a relation with `schema` whose columns
/// have `origins` (see the module doc), and reads no identifier.
pub fn total(expr: &Expr, schema: &DFSchema, origins: &[Origin]) -> Result<(), Rejection> {
    let is_identifier = |c: &Column| -> Result<bool, Rejection> {
        Ok(origin_in(schema, origins, c)?.is_identifier())
    };
    total_with(expr, schema, &is_identifier)
}

/// [`total`] with the identifier test given directly (dp mode's tables).
pub fn total_with(
    expr: &Expr,
    schema: &DFSchema,
    is_identifier: &dyn Fn(&Column) -> Result<bool, Rejection>,
) -> Result<(), Rejection> {
    let recurse = |e: &Expr| total_with(e, schema, is_identifier);
    match expr {
        Expr::Alias(alias) => recurse(&alias.expr),
        Expr::Column(column) => {
            if is_identifier(column)? {
                // The column's name in the plan may be an alias the guest
                // wrote: the detail does not repeat it.
                Err(reject(
                    "identifier-used",
                    "identifier columns may only be joined on declared keys or counted with COUNT(DISTINCT <privacy unit>)",
                ))
            } else {
                Ok(())
            }
        }
        Expr::Literal(..) => Ok(()),
        Expr::BinaryExpr(binary) => match binary.op {
            Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq
            | Operator::And
            | Operator::Or
            | Operator::IsDistinctFrom
            | Operator::IsNotDistinctFrom => {
                recurse(&binary.left)?;
                recurse(&binary.right)
            }
            _ => Err(not_total(
                "arithmetic and other operators that can fail are not allowed before the aggregation",
            )),
        },
        Expr::Like(like) => {
            recurse(&like.expr)?;
            literal(&like.pattern)
        }
        Expr::Not(e)
        | Expr::IsNull(e)
        | Expr::IsNotNull(e)
        | Expr::IsTrue(e)
        | Expr::IsFalse(e)
        | Expr::IsUnknown(e)
        | Expr::IsNotTrue(e)
        | Expr::IsNotFalse(e)
        | Expr::IsNotUnknown(e) => recurse(e),
        Expr::Negative(e) => literal(e),
        Expr::Between(between) => {
            recurse(&between.expr)?;
            recurse(&between.low)?;
            recurse(&between.high)
        }
        Expr::Case(case) => {
            if let Some(base) = &case.expr {
                recurse(base)?;
            }
            for (when, then) in &case.when_then_expr {
                recurse(when)?;
                recurse(then)?;
            }
            if let Some(otherwise) = &case.else_expr {
                recurse(otherwise)?;
            }
            Ok(())
        }
        Expr::InList(list) => {
            recurse(&list.expr)?;
            list.list.iter().try_for_each(literal)
        }
        Expr::Cast(cast) => {
            if literal(&cast.expr).is_ok() {
                return fold_cast(&cast.expr, cast.field.data_type());
            }
            recurse(&cast.expr)?;
            let from = cast
                .expr
                .get_type(schema)
                .map_err(|_| reject("plan", "a type could not be resolved"))?;
            if widening(&from, cast.field.data_type()) {
                Ok(())
            } else {
                Err(not_total(
                    "only widening casts (a number to a larger number type or to text, text to text) are allowed before the aggregation",
                ))
            }
        }
        Expr::ScalarFunction(function) => {
            let args = &function.args;
            match function.func.name() {
                "date_part" | "date_trunc" => {
                    let [part, value] = args.as_slice() else {
                        return Err(not_total("date_part and date_trunc take two arguments"));
                    };
                    let part_ok = matches!(
                        unalias(part),
                        Expr::Literal(ScalarValue::Utf8(Some(p)) | ScalarValue::Utf8View(Some(p)) | ScalarValue::LargeUtf8(Some(p)), _)
                            if ["year", "quarter", "month", "day"].contains(&p.to_ascii_lowercase().as_str())
                    );
                    let value_type = value
                        .get_type(schema)
                        .map_err(|_| reject("plan", "a type could not be resolved"))?;
                    if !part_ok
                        || !matches!(
                            value_type,
                            DataType::Date32 | DataType::Date64 | DataType::Timestamp(..)
                        )
                    {
                        return Err(not_total(
                            "date_part and date_trunc take 'year', 'quarter', 'month' or 'day' of a date column",
                        ));
                    }
                    recurse(value)
                }
                "coalesce" | "nullif" | "lower" | "upper" => args.iter().try_for_each(recurse),
                _ => Err(not_total(
                    "functions other than date_part, date_trunc, coalesce, nullif, lower and upper are not allowed before the aggregation",
                )),
            }
        }
        Expr::TryCast(_) => Err(not_total(
            "TRY_CAST is not allowed before the aggregation: it turns values into NULLs",
        )),
        Expr::ScalarSubquery(_)
        | Expr::InSubquery(_)
        | Expr::Exists(_)
        | Expr::SetComparison(_) => Err(reject(
            "subquery-expression",
            "subqueries in expressions are not allowed over protected data; join on a declared key instead",
        )),
        Expr::AggregateFunction(_) | Expr::WindowFunction(_) => Err(reject(
            "outside-grammar",
            "aggregates and window functions are not allowed before the aggregation",
        )),
        _ => Err(not_total(
            "this kind of expression is not allowed before the aggregation",
        )),
    }
}

fn not_total(detail: &'static str) -> Rejection {
    reject("expression-not-total", detail)
}

/// A literal, or a cast or negation of one that folds without error.
fn literal(expr: &Expr) -> Result<(), Rejection> {
    match unalias(expr) {
        Expr::Literal(..) => Ok(()),
        Expr::Cast(cast) => {
            literal(&cast.expr)?;
            fold_cast(&cast.expr, cast.field.data_type())
        }
        Expr::Negative(inner) => match unalias(inner) {
            Expr::Literal(value, _) => value
                .arithmetic_negate()
                .map(|_| ())
                .map_err(|_| not_total("a literal that cannot be negated")),
            _ => Err(not_total(
                "only literals may be negated before the aggregation",
            )),
        },
        _ => Err(not_total(
            "IN lists, LIKE patterns and negations take literals only",
        )),
    }
}

/// Evaluate a cast of a literal now: it either always fails (the query is
/// refused before it runs) or never does.
fn fold_cast(expr: &Expr, to: &DataType) -> Result<(), Rejection> {
    let value = match unalias(expr) {
        Expr::Literal(value, _) => value.clone(),
        Expr::Cast(inner) => {
            fold_cast(&inner.expr, inner.field.data_type())?;
            return Ok(());
        }
        Expr::Negative(inner) => match unalias(inner) {
            Expr::Literal(value, _) => value
                .arithmetic_negate()
                .map_err(|_| not_total("a literal that cannot be negated"))?,
            _ => return Err(not_total("only literals may be negated")),
        },
        _ => return Err(not_total("a cast of a non-literal")),
    };
    value.cast_to(to).map(|_| ()).map_err(|_| {
        reject(
            "invalid-literal",
            "a literal cannot be converted to the column's type",
        )
    })
}

/// Casts that succeed on every value of `from`.
pub fn widening(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    if from == to {
        return true;
    }
    let signed_bits = |t: &DataType| match t {
        Int8 => Some(8),
        Int16 => Some(16),
        Int32 => Some(32),
        Int64 => Some(64),
        _ => None,
    };
    let unsigned_bits = |t: &DataType| match t {
        UInt8 => Some(8),
        UInt16 => Some(16),
        UInt32 => Some(32),
        UInt64 => Some(64),
        _ => None,
    };
    let is_text = |t: &DataType| matches!(t, Utf8 | LargeUtf8 | Utf8View);
    match (from, to) {
        (Null, _) => true,
        (f, Float64) if f.is_integer() || matches!(f, Float16 | Float32) => true,
        (Float16, Float32) => true,
        (f, t) if signed_bits(f).is_some() && signed_bits(t).is_some() => {
            signed_bits(f) < signed_bits(t)
        }
        (f, t) if unsigned_bits(f).is_some() && unsigned_bits(t).is_some() => {
            unsigned_bits(f) < unsigned_bits(t)
        }
        (f, t) if unsigned_bits(f).is_some() && signed_bits(t).is_some() => {
            unsigned_bits(f) < signed_bits(t)
        }
        (f, t) if is_text(f) && is_text(t) => true,
        (f, t) if (f.is_integer() || f.is_floating() || matches!(f, Boolean)) && is_text(t) => true,
        (Date32, Date64) => true,
        _ => false,
    }
}
