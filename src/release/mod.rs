//! Release rules: what may leave a job, per release mode, decided on the
//! DataFusion logical plan before anything runs.
//!
//! - [`grammar`]: the positive grammar of the rows an aggregation may read
//!   (the *region* below a vetted aggregation): catalog tables joined INNER
//!   on declared keys (by provenance, not by name), WHERE and computed
//!   columns built only from **total** expressions, nothing else. Shared by
//!   `aggregate` and by `dp`'s WHERE clauses.
//! - [`aggregate`]: the `aggregate` mode: finds every aggregation over
//!   protected rows, checks it against the grammar, runs it with helper
//!   columns, applies minimum group sizes, per-value thresholds, dominance,
//!   cell-key perturbation and rounding, and splices the vetted rows into
//!   the plan.
//! - [`cell_key`]: cell-key perturbation (record keys, cell keys, the
//!   perturbation tables for counts and magnitudes).
//! - [`bind`]: manifest × policy × mode → a job's tables and limits, and
//!   `require_mode`, the one check that a policy offers a mode.
//! - [`kind`]: a request's mode and options, parsed once (`JobKind`).
//! - [`ledger`]: the query ledger across jobs (per tenant and dataset, per
//!   dataset; per day and in total).
//!
//! This module owns the one fail-closed check every mode that answers SQL
//! over protected data runs after rewriting: [`no_protected_scan_left`].
//! It never sees wasm and never decides who may use which dataset.

pub mod aggregate;
pub mod bind;
pub mod cell_key;
pub mod grammar;
pub mod kind;
pub mod ledger;

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchemaRef};
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, Volatility};

/// Why a plan was refused: a stable code and a host-written detail that
/// depends only on the plan's shape and the catalog's names, never on data
/// and never on literals or expressions the guest wrote.
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

pub(crate) fn reject(code: &'static str, detail: impl Into<String>) -> Rejection {
    Rejection {
        code,
        detail: detail.into(),
    }
}

/// Fail closed after rewriting: the final plan may not scan a protected
/// table anywhere (subqueries included). Every release mode that answers SQL
/// replaces the aggregations it vetted with their released rows; any scan
/// still reachable would hand unvetted rows to the rest of the plan.
pub fn no_protected_scan_left(
    plan: &LogicalPlan,
    is_protected: impl Fn(&str) -> bool,
) -> Result<(), Rejection> {
    let mut left = false;
    let walked = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && is_protected(scan.table_name.table())
        {
            left = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    if left || walked.is_err() {
        return Err(reject(
            "row-level-output",
            "protected rows would reach the output outside a vetted aggregation",
        ));
    }
    Ok(())
}

/// Functions whose result depends on something other than their arguments
/// (`now()`, `random()`, `uuid()`, …) would hand the host's clock and
/// entropy to a guest whose own clock is frozen and entropy seeded. They are
/// outside every mode's grammar, in every query.
pub fn refuse_volatile(plan: &LogicalPlan) -> Result<(), Rejection> {
    let mut found = false;
    let walked = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                if let Expr::ScalarFunction(function) = e
                    && function.func.signature().volatility != Volatility::Immutable
                {
                    found = true;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })?;
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    if found || walked.is_err() {
        return Err(reject(
            "volatile-function",
            "functions that read the clock or randomness (now, random, uuid, current_date, …) are not available",
        ));
    }
    Ok(())
}

pub(crate) fn unalias(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(alias) => unalias(&alias.expr),
        other => other,
    }
}

/// Type coercion wraps columns in casts (AVG of an integer column is
/// `avg(CAST(x AS Float64))`); used where the caller has already checked
/// that the casts are widening.
pub(crate) fn strip_casts(expr: &Expr) -> &Expr {
    match expr {
        Expr::Cast(cast) => strip_casts(&cast.expr),
        Expr::TryCast(cast) => strip_casts(&cast.expr),
        other => other,
    }
}

/// An aggregation's output schema with positional names `c0…cn`, all
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

/// A scan of released rows, projected back to the original names and
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
