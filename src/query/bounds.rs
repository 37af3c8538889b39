//! Bounds on what one statement may ask of the host, checked before and
//! during planning so that no statement can exhaust the host's stack, memory
//! or CPU outside the job's limits:
//!
//! - the statement's length, before it is parsed;
//! - the nesting depth of its expressions, on the parsed AST (a chain of
//!   5,000 `OR`s parses iteratively but builds a tree 5,000 deep that every
//!   later recursive pass walks);
//! - the functions it calls: an allow-list. Functions whose arguments size
//!   an allocation or a quadratic loop (`repeat`, `lpad`, `rpad`,
//!   `levenshtein`, `replace`, `array_repeat`, …) are not on it: one call
//!   could allocate past every memory pool (DataFusion's pool does not track
//!   scalar function results) or hold a worker for minutes.

use std::ops::ControlFlow;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Expr, LogicalPlan, WindowFunctionDefinition};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, Visit, Visitor};

use crate::release::{Rejection, reject};

/// Scalar functions a statement may call: total, and bounded in time and
/// memory by the size of their arguments (no argument that is a count).
const SCALAR: &[&str] = &[
    // Numbers.
    "abs",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atan2",
    "atanh",
    "cbrt",
    "ceil",
    "cos",
    "cosh",
    "cot",
    "degrees",
    "exp",
    "floor",
    "gcd",
    "isnan",
    "iszero",
    "lcm",
    "ln",
    "log",
    "log10",
    "log2",
    "nanvl",
    "pi",
    "power",
    "pow",
    "radians",
    "round",
    "signum",
    "sin",
    "sinh",
    "sqrt",
    "tan",
    "tanh",
    "trunc",
    "greatest",
    "least",
    // Text (none of them longer than its arguments put together).
    "ascii",
    "btrim",
    "char_length",
    "character_length",
    "chr",
    "concat",
    "concat_ws",
    "contains",
    "ends_with",
    "initcap",
    "instr",
    "left",
    "length",
    "lower",
    "ltrim",
    "octet_length",
    "bit_length",
    "reverse",
    "right",
    "rtrim",
    "split_part",
    "starts_with",
    "strpos",
    "substr",
    "substring",
    "substr_index",
    "substring_index",
    "translate",
    "trim",
    "upper",
    "to_hex",
    "md5",
    "sha224",
    "sha256",
    "sha384",
    "sha512",
    // Regular expressions (linear time; the pattern's size is bounded).
    "regexp_like",
    "regexp_match",
    "regexp_count",
    // Conditionals.
    "coalesce",
    "nullif",
    "nvl",
    "nvl2",
    "ifnull",
    // Dates and times.
    "date_part",
    "datepart",
    "date_trunc",
    "datetrunc",
    "date_bin",
    "to_date",
    "to_timestamp",
    "to_timestamp_seconds",
    "to_timestamp_millis",
    "to_timestamp_micros",
    "to_timestamp_nanos",
    "make_date",
    "from_unixtime",
    "to_unixtime",
    "to_char",
    "date_format",
    // Types and fields.
    "arrow_cast",
    "arrow_typeof",
    "get_field",
];

/// Aggregate functions (also allowed as window functions).
const AGGREGATE: &[&str] = &[
    "count",
    "sum",
    "avg",
    "mean",
    "min",
    "max",
    "median",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "var",
    "var_pop",
    "var_samp",
    "var_sample",
    "var_population",
    "variance",
    "covar",
    "covar_pop",
    "covar_samp",
    "corr",
    "approx_distinct",
    "approx_median",
    "approx_percentile_cont",
    "bool_and",
    "bool_or",
    "first_value",
    "last_value",
    "grouping",
    "regr_slope",
    "regr_intercept",
    "regr_count",
    "regr_r2",
    "regr_avgx",
    "regr_avgy",
    "regr_sxx",
    "regr_syy",
    "regr_sxy",
];

/// Window-only functions.
const WINDOW: &[&str] = &[
    "row_number",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "ntile",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "nth_value",
];

/// Refuse a statement longer than `max_bytes`, before parsing it.
pub fn check_length(sql: &str, max_bytes: usize) -> Result<(), Rejection> {
    if sql.len() > max_bytes {
        return Err(reject(
            "statement-too-long",
            format!("a statement may be at most {max_bytes} bytes"),
        ));
    }
    Ok(())
}

/// Refuse a statement whose expressions nest deeper than `max_depth`. The
/// walk stops at the first level past the bound, so it never recurses
/// deeper than `max_depth` itself.
pub fn check_depth(statement: &DfStatement, max_depth: usize) -> Result<(), Rejection> {
    struct Depth {
        now: usize,
        max: usize,
    }
    impl Visitor for Depth {
        type Break = ();
        fn pre_visit_expr(&mut self, _: &SqlExpr) -> ControlFlow<()> {
            self.now += 1;
            if self.now > self.max {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
        fn post_visit_expr(&mut self, _: &SqlExpr) -> ControlFlow<()> {
            self.now -= 1;
            ControlFlow::Continue(())
        }
    }
    let DfStatement::Statement(statement) = statement else {
        return Ok(());
    };
    let mut depth = Depth {
        now: 0,
        max: max_depth,
    };
    if statement.visit(&mut depth).is_break() {
        return Err(reject(
            "statement-too-deep",
            format!(
                "expressions may nest at most {max_depth} deep (use IN for long lists of alternatives)"
            ),
        ));
    }
    Ok(())
}

/// Refuse any function call outside the allow-lists, anywhere in the plan
/// (subqueries included).
pub fn check_functions(plan: &LogicalPlan) -> Result<(), Rejection> {
    let mut refused: Option<String> = None;
    let walked = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                let (name, allowed) = match e {
                    Expr::ScalarFunction(f) => (f.func.name(), SCALAR),
                    Expr::AggregateFunction(f) => (f.func.name(), AGGREGATE),
                    Expr::WindowFunction(w) => match &w.fun {
                        WindowFunctionDefinition::AggregateUDF(f) => (f.name(), AGGREGATE),
                        WindowFunctionDefinition::WindowUDF(f) => (f.name(), WINDOW),
                    },
                    _ => return Ok(TreeNodeRecursion::Continue),
                };
                if allowed.contains(&name.to_ascii_lowercase().as_str()) {
                    Ok(TreeNodeRecursion::Continue)
                } else {
                    refused = Some(name.to_string());
                    Ok(TreeNodeRecursion::Stop)
                }
            })
        })?;
        Ok(if refused.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    match (refused, walked) {
        (None, Ok(_)) => Ok(()),
        (Some(name), _) => Err(reject(
            "function-not-allowed",
            format!("{name} is not among the functions a query may call"),
        )),
        (None, Err(_)) => Err(reject(
            "function-not-allowed",
            "the statement's functions could not be checked",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_lists_have_no_size_amplifiers() {
        for name in [
            "repeat",
            "lpad",
            "rpad",
            "levenshtein",
            "replace",
            "regexp_replace",
            "overlay",
            "array_repeat",
            "string_agg",
            "array_agg",
            "generate_series",
            "range",
        ] {
            assert!(
                !SCALAR.contains(&name) && !AGGREGATE.contains(&name) && !WINDOW.contains(&name),
                "{name}"
            );
        }
    }
}
