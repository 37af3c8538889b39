//! The SQL gate and DataFusion sessions behind the guest's `data.query`.
//!
//! A [`QuerySession`] is opened per job over exactly the job's datasets. Each
//! statement passes three checks before it runs: it is one `SELECT` (no DDL,
//! DML, `COPY`, `EXPLAIN` or `SET`), its logical plan contains only relational
//! nodes (checked with `apply_with_subqueries`, deny by default), and every
//! table it scans belongs to the job and may be queried under its
//! classification. Errors are split by what they may reveal: planning errors
//! depend only on the statement and the schema and are returned with their
//! text; execution errors could depend on row values and are returned as a
//! bare [`QueryError::Failed`], their detail kept for administrators.
//!
//! This module does not know about wasm, jobs or outputs.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::file_format::options::ArrowReadOptions;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{
    CsvReadOptions, ParquetReadOptions, SQLOptions, SessionConfig, SessionContext,
};
use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use futures::StreamExt;

pub mod bounds;
mod cast_table;
pub mod error;

pub use error::QueryError;

use crate::dataset::{Classification, ColumnRole, DataFormat, DatasetSource};
use crate::release::aggregate::{self, EnforceError, RELEASE_METADATA_KEY, RulesByTable};
use crate::release::ledger::{LedgerError, QueryLedger};

/// Resources one job's queries may use.
#[derive(Debug, Clone)]
pub struct QueryConfig {
    /// DataFusion memory pool per job; operators that track memory fail past it.
    pub memory_limit_bytes: usize,
    /// Parallelism of one query.
    pub target_partitions: usize,
    /// Deepest SQL nesting the parser accepts (guards the host's stack).
    pub parser_recursion_limit: usize,
    /// Longest statement accepted, checked before parsing.
    pub max_sql_bytes: usize,
    /// Deepest expression nesting accepted, checked on the parsed statement.
    pub max_expression_depth: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            memory_limit_bytes: 1 << 30,
            target_partitions: std::thread::available_parallelism().map_or(2, |n| n.get()),
            parser_recursion_limit: 64,
            max_sql_bytes: 16 << 10,
            max_expression_depth: 128,
        }
    }
}

/// Opening a session failed: a host-side problem with a dataset file.
#[derive(Debug, thiserror::Error)]
#[error("cannot open dataset {table}: {source}")]
pub struct OpenError {
    pub table: String,
    #[source]
    pub source: datafusion::error::DataFusionError,
}

/// A column as the guest sees it in `data.tables`.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnDescription {
    pub name: String,
    pub data_type: String,
    pub role: ColumnRole,
    pub description: String,
}

/// A table as the guest sees it in `data.tables`.
#[derive(Debug, Clone, PartialEq)]
pub struct TableDescription {
    pub name: String,
    pub classification: Classification,
    pub columns: Vec<ColumnDescription>,
}

/// One job's view of its datasets.
pub struct QuerySession {
    ctx: SessionContext,
    tables: Vec<TableDescription>,
    classification: HashMap<String, Classification>,
    /// Aggregate-mode rules of the protected tables that have them.
    rules: RulesByTable,
    /// A `dp`-mode job's context: its tables answer only DP SQL.
    dp: Option<Arc<crate::dp::DpSession>>,
    /// Where an aggregate-mode job's queries over protected tables are
    /// recorded across jobs (none for local, in-process runs).
    ledger: Option<Arc<QueryLedger>>,
    /// Per table with a column-limited grant: the columns it may not name.
    forbidden_columns: HashMap<String, Vec<String>>,
    parser_recursion_limit: usize,
    max_sql_bytes: usize,
    max_expression_depth: usize,
}

impl QuerySession {
    /// Register the job's datasets; nothing else is visible to its queries.
    pub async fn open(datasets: &[DatasetSource], config: &QueryConfig) -> Result<Self, OpenError> {
        let session_config = SessionConfig::new()
            .with_information_schema(false)
            .with_target_partitions(config.target_partitions.max(1));
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(config.memory_limit_bytes, 1.0)
            .build_arc()
            .map_err(|source| OpenError {
                table: String::new(),
                source,
            })?;
        let ctx = SessionContext::new_with_config_rt(session_config, runtime);
        let mut tables = Vec::with_capacity(datasets.len());
        let mut classification = HashMap::new();
        let mut rules = RulesByTable::new();
        let mut forbidden_columns = HashMap::new();
        for dataset in datasets {
            let open_error = |source| OpenError {
                table: dataset.name.clone(),
                source,
            };
            register(&ctx, dataset).await.map_err(open_error)?;
            let schema = ctx
                .table_provider(dataset.name.as_str())
                .await
                .map_err(open_error)?
                .schema();
            tables.push(TableDescription {
                name: dataset.name.clone(),
                classification: dataset.classification,
                columns: schema
                    .fields()
                    .iter()
                    .map(|f| {
                        let note = dataset.dictionary.iter().find(|c| &c.name == f.name());
                        ColumnDescription {
                            name: f.name().clone(),
                            data_type: f.data_type().to_string(),
                            role: note.map_or(ColumnRole::Attribute, |c| c.role),
                            description: note.map(|c| c.description.clone()).unwrap_or_default(),
                        }
                    })
                    .collect(),
            });
            classification.insert(dataset.name.clone(), dataset.classification);
            if let Some(granted) = &dataset.granted_columns {
                forbidden_columns.insert(
                    dataset.name.clone(),
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.name().clone())
                        .filter(|name| !granted.contains(name))
                        .collect::<Vec<_>>(),
                );
            }
            if dataset.classification != Classification::Open
                && let Some(table_rules) = &dataset.rules
            {
                rules.insert(dataset.name.clone(), Arc::clone(table_rules));
            }
        }
        Ok(QuerySession {
            ctx,
            tables,
            classification,
            rules,
            dp: None,
            ledger: None,
            forbidden_columns,
            parser_recursion_limit: config.parser_recursion_limit,
            max_sql_bytes: config.max_sql_bytes,
            max_expression_depth: config.max_expression_depth,
        })
    }

    /// Answer the DP session's tables in `dp` mode only.
    pub fn with_dp(mut self, dp: Option<Arc<crate::dp::DpSession>>) -> Self {
        self.dp = dp;
        self
    }

    /// Record aggregate-mode queries in `ledger`.
    pub fn with_ledger(mut self, ledger: Option<Arc<QueryLedger>>) -> Self {
        self.ledger = ledger;
        self
    }

    /// The job's tables.
    pub fn tables(&self) -> &[TableDescription] {
        &self.tables
    }

    /// Check and run one statement; stop with [`QueryError::TooLarge`] once
    /// the result's in-memory size passes `max_bytes`.
    pub async fn run(
        &self,
        sql: &str,
        max_bytes: usize,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
        let plan = self.plan(sql).await?;
        let failed = |e: datafusion::error::DataFusionError| QueryError::Failed {
            detail: e.strip_backtrace(),
        };
        let (plan, report) = match &self.dp {
            Some(dp) if crate::dp::sql::reads_dp(&plan, dp) => {
                let (plan, report) = crate::dp::sql::answer(&self.ctx, plan, dp).await?;
                (plan, Some((crate::dp::DP_METADATA_KEY, report)))
            }
            _ if aggregate::reads_protected(&plan, &self.rules) => {
                let prepared = aggregate::prepare(&plan, &self.rules)
                    .map_err(|r| QueryError::Rejected(r.to_string()))?;
                if let Some(ledger) = &self.ledger {
                    ledger
                        .record(&prepared.tables())
                        .await
                        .map_err(|e| match e {
                            LedgerError::Exhausted(_) => QueryError::Rejected(e.to_string()),
                            LedgerError::Store(e) => QueryError::Failed {
                                detail: e.to_string(),
                            },
                        })?;
                }
                match aggregate::enforce(&self.ctx, plan, prepared, &self.rules).await {
                    Ok((plan, rule)) => (
                        plan,
                        Some((
                            RELEASE_METADATA_KEY,
                            serde_json::to_string(&rule).expect("the rule serialises"),
                        )),
                    ),
                    Err(EnforceError::Rejected(rejection)) => {
                        return Err(QueryError::Rejected(rejection.to_string()));
                    }
                    Err(EnforceError::Failed(error)) => return Err(failed(error)),
                }
            }
            _ => (plan, None),
        };
        let frame = self.ctx.execute_logical_plan(plan).await.map_err(failed)?;
        let mut stream = frame.execute_stream().await.map_err(failed)?;
        // The physical plan's schema: after released rows replace an
        // aggregation, nullability can differ from the logical plan's.
        let mut schema: SchemaRef = stream.schema();
        if let Some((key, report)) = report {
            let mut metadata = schema.metadata().clone();
            metadata.insert(key.to_string(), report);
            schema = Arc::new(schema.as_ref().clone().with_metadata(metadata));
        }
        let (mut batches, mut bytes) = (Vec::new(), 0usize);
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(failed)?;
            let batch = batch
                .with_schema(Arc::clone(&schema))
                .map_err(|e| failed(e.into()))?;
            bytes = bytes.saturating_add(batch.get_array_memory_size());
            if bytes > max_bytes {
                return Err(QueryError::TooLarge { limit: max_bytes });
            }
            batches.push(batch);
        }
        Ok((schema, batches))
    }

    /// Cells of `sql`'s first aggregation over a protected table whose SUM
    /// is dominated: one privacy unit holds more than 50% of the cell's
    /// total, or two hold more than 67%. Only groups of at least the
    /// policy's minimum size count (smaller ones are never released). For
    /// reviewers; the host runs it, never the guest.
    pub async fn dominated_cells(&self, sql: &str) -> Result<usize, QueryError> {
        use datafusion::common::tree_node::TreeNode;
        let plan = self.plan(sql).await?;
        let failed = |e: datafusion::error::DataFusionError| QueryError::Failed {
            detail: e.strip_backtrace(),
        };
        let mut found = None;
        plan.apply(|node| {
            if let LogicalPlan::Aggregate(aggregate) = node {
                let mut rules = None;
                let _ = aggregate.input.apply(|n| {
                    if let LogicalPlan::TableScan(scan) = n
                        && let Some(r) = self.rules.get(scan.table_name.table())
                    {
                        rules = Some(Arc::clone(r));
                    }
                    Ok(TreeNodeRecursion::Continue)
                });
                if let Some(rules) = rules {
                    found = Some((aggregate.clone(), rules));
                    return Ok(TreeNodeRecursion::Stop);
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .map_err(failed)?;
        let Some((aggregate, rules)) = found else {
            return Ok(0);
        };
        let Some(unit) = aggregate
            .input
            .schema()
            .columns()
            .into_iter()
            .find(|c| c.name == rules.privacy_unit)
        else {
            return Ok(0);
        };
        let sums: Vec<datafusion::logical_expr::Expr> = aggregate
            .aggr_expr
            .iter()
            .filter_map(|e| match crate::release::unalias(e) {
                datafusion::logical_expr::Expr::AggregateFunction(f)
                    if f.func.name().eq_ignore_ascii_case("sum") && f.params.args.len() == 1 =>
                {
                    Some(datafusion::functions_aggregate::expr_fn::sum(
                        f.params.args[0].clone(),
                    ))
                }
                _ => None,
            })
            .enumerate()
            .map(|(i, e)| e.alias(format!("__dsb_s{i}")))
            .collect();
        if sums.is_empty() {
            return Ok(0);
        }
        let measures = sums.len();
        let mut keys = aggregate.group_expr.clone();
        keys.push(datafusion::logical_expr::Expr::Column(unit));
        let per_unit =
            datafusion::logical_expr::LogicalPlanBuilder::from(aggregate.input.as_ref().clone())
                .aggregate(keys, sums)
                .and_then(|b| b.build())
                .map_err(failed)?;
        let batches = self
            .ctx
            .execute_logical_plan(per_unit)
            .await
            .map_err(failed)?
            .collect()
            .await
            .map_err(failed)?;
        let groups = aggregate.group_expr.len();
        let mut cells: HashMap<String, Vec<Vec<f64>>> = HashMap::new();
        for batch in &batches {
            let keys = (0..groups)
                .map(|i| {
                    datafusion::arrow::compute::cast(
                        batch.column(i),
                        &datafusion::arrow::datatypes::DataType::Utf8,
                    )
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| failed(e.into()))?;
            let values = (0..measures)
                .map(|i| {
                    datafusion::arrow::compute::cast(
                        batch.column(groups + 1 + i),
                        &datafusion::arrow::datatypes::DataType::Float64,
                    )
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| failed(e.into()))?;
            for row in 0..batch.num_rows() {
                let key = keys
                    .iter()
                    .map(|k| {
                        let k = k
                            .as_any()
                            .downcast_ref::<datafusion::arrow::array::StringArray>()
                            .expect("Utf8");
                        if k.is_valid(row) {
                            k.value(row).to_string()
                        } else {
                            "\0".into()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\u{1f}");
                let entry = cells
                    .entry(key)
                    .or_insert_with(|| vec![Vec::new(); measures]);
                for (m, column) in values.iter().enumerate() {
                    let column = column
                        .as_any()
                        .downcast_ref::<datafusion::arrow::array::Float64Array>()
                        .expect("Float64");
                    if column.is_valid(row) {
                        entry[m].push(column.value(row));
                    }
                }
            }
        }
        let mut dominated = 0;
        for measures in cells.values() {
            for contributions in measures {
                if contributions.len() < rules.min_group_size as usize {
                    continue;
                }
                let total: f64 = contributions.iter().map(|v| v.abs()).sum();
                let mut top = contributions.iter().map(|v| v.abs()).collect::<Vec<_>>();
                top.sort_by(|a, b| b.total_cmp(a));
                let first = top.first().copied().unwrap_or(0.0);
                let second = top.get(1).copied().unwrap_or(0.0);
                if total > 0.0 && (first > 0.5 * total || first + second > 0.67 * total) {
                    dominated += 1;
                }
            }
        }
        Ok(dominated)
    }

    /// Parse, gate and plan one statement without running it.
    pub async fn plan(&self, sql: &str) -> Result<LogicalPlan, QueryError> {
        let rejected = |r: crate::release::Rejection| QueryError::Rejected(r.to_string());
        bounds::check_length(sql, self.max_sql_bytes).map_err(rejected)?;
        let statement = single_select(sql, self.parser_recursion_limit)?;
        bounds::check_depth(&statement, self.max_expression_depth).map_err(rejected)?;
        let plan = self
            .ctx
            .state()
            .statement_to_plan(statement)
            .await
            .map_err(|e| QueryError::Invalid(e.strip_backtrace()))?;
        // Check the plan that will execute: after analysis (type coercion,
        // subquery and CTE resolution), never the SQL text.
        let state = self.ctx.state();
        let plan = state
            .analyzer()
            .execute_and_check(plan, state.config_options(), |_, _| {})
            .map_err(|e| QueryError::Invalid(e.strip_backtrace()))?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|_| QueryError::Rejected("only SELECT statements are allowed".into()))?;
        self.check_plan(&plan)?;
        crate::release::refuse_volatile(&plan).map_err(rejected)?;
        bounds::check_functions(&plan).map_err(rejected)?;
        Ok(plan)
    }

    /// Deny by default: only relational nodes, only the job's tables, only
    /// tables whose classification lets them answer queries.
    fn check_plan(&self, plan: &LogicalPlan) -> Result<(), QueryError> {
        let mut rejection = None;
        plan.apply_with_subqueries(|node| {
            rejection = self.rejects(node);
            Ok(if rejection.is_some() {
                TreeNodeRecursion::Stop
            } else {
                TreeNodeRecursion::Continue
            })
        })
        .map_err(|e| QueryError::Invalid(e.strip_backtrace()))?;
        if let Some(reason) = rejection {
            return Err(QueryError::Rejected(reason));
        }
        self.check_columns(plan)
    }

    /// Columns outside a job's grant: refused wherever the query names them
    /// (matched by name, whatever the qualifier: fail closed).
    fn check_columns(&self, plan: &LogicalPlan) -> Result<(), QueryError> {
        if self.forbidden_columns.is_empty() {
            return Ok(());
        }
        let mut refused = None;
        plan.apply_with_subqueries(|node| {
            for expr in node.expressions() {
                for column in expr.column_refs() {
                    if let Some((table, _)) = self
                        .forbidden_columns
                        .iter()
                        .find(|(_, forbidden)| forbidden.contains(&column.name))
                    {
                        refused = Some(format!(
                            "column-not-granted: {} of {table} is outside your grant",
                            column.name
                        ));
                        return Ok(TreeNodeRecursion::Stop);
                    }
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .map_err(|e| QueryError::Invalid(e.strip_backtrace()))?;
        refused.map_or(Ok(()), |reason| Err(QueryError::Rejected(reason)))
    }

    fn rejects(&self, node: &LogicalPlan) -> Option<String> {
        match node {
            LogicalPlan::TableScan(scan) => {
                let table = scan.table_name.table();
                match self.classification.get(table) {
                    None => Some(format!("table {table} is not part of this job")),
                    _ if self
                        .dp
                        .as_ref()
                        .is_some_and(|dp| dp.tables.contains_key(table)) =>
                    {
                        None
                    }
                    Some(Classification::Open) => None,
                    Some(_) if self.rules.contains_key(table) => None,
                    // Fail closed: protected datasets answer only under an
                    // output policy that allows this mode.
                    Some(_) => Some(format!("no policy for this dataset ({table})")),
                }
            }
            LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::Window(_)
            | LogicalPlan::Aggregate(_)
            | LogicalPlan::Sort(_)
            | LogicalPlan::Join(_)
            | LogicalPlan::Repartition(_)
            | LogicalPlan::Union(_)
            | LogicalPlan::EmptyRelation(_)
            | LogicalPlan::Subquery(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::Values(_)
            | LogicalPlan::Distinct(_)
            | LogicalPlan::Unnest(_)
            | LogicalPlan::RecursiveQuery(_) => None,
            LogicalPlan::Explain(_) | LogicalPlan::Analyze(_) => {
                Some("EXPLAIN is refused: it shows statistics and file paths".into())
            }
            other => Some(format!(
                "{} is not allowed in a query",
                plan_node_name(other)
            )),
        }
    }
}

/// Register one dataset file as a table of `ctx`.
pub async fn register(
    ctx: &SessionContext,
    dataset: &DatasetSource,
) -> datafusion::error::Result<()> {
    let path = dataset.path.to_string_lossy();
    match dataset.format {
        DataFormat::Csv => {
            let mut options = CsvReadOptions::new();
            if let Some(schema) = &dataset.schema {
                options = options.schema(schema);
            }
            ctx.register_csv(&dataset.name, path.as_ref(), options)
                .await
        }
        // Parquet scans cast the file's columns to a given schema
        // themselves (string views, narrower integers), keeping projection
        // and predicate pushdown.
        DataFormat::Parquet => {
            let mut options = ParquetReadOptions::default();
            if let Some(schema) = &dataset.schema {
                options = options.schema(schema);
            }
            ctx.register_parquet(&dataset.name, path.as_ref(), options)
                .await
        }
        DataFormat::Arrow => match &dataset.schema {
            None => {
                ctx.register_arrow(&dataset.name, path.as_ref(), ArrowReadOptions::default())
                    .await
            }
            Some(schema) => {
                let file = ctx
                    .read_arrow(path.as_ref(), ArrowReadOptions::default())
                    .await?
                    .into_view();
                let table = cast_table::CastTable::new(file, Arc::clone(schema))?;
                ctx.register_table(dataset.name.as_str(), Arc::new(table))
                    .map(|_| ())
            }
        },
    }
}

/// Read a whole dataset on the host side, bypassing the gate: for release
/// modes that hand rows to a guest (blocks, training data, one subject's
/// rows) and for `dsb dev run` on the developer's own data.
pub async fn read_table(
    dataset: &DatasetSource,
) -> Result<(SchemaRef, Vec<RecordBatch>), OpenError> {
    let ctx = SessionContext::new();
    let open_error = |source| OpenError {
        table: dataset.name.clone(),
        source,
    };
    register(&ctx, dataset).await.map_err(open_error)?;
    let frame = ctx.table(dataset.name.as_str()).await.map_err(open_error)?;
    let schema: SchemaRef = Arc::clone(frame.schema().inner());
    let batches = frame.collect().await.map_err(open_error)?;
    Ok((schema, batches))
}

fn plan_node_name(plan: &LogicalPlan) -> &'static str {
    match plan {
        LogicalPlan::Dml(_) => "data modification",
        LogicalPlan::Ddl(_) => "DDL",
        LogicalPlan::Copy(_) => "COPY",
        LogicalPlan::Statement(_) => "a session statement",
        LogicalPlan::DescribeTable(_) => "DESCRIBE",
        LogicalPlan::Extension(_) => "an extension node",
        _ => "this plan node",
    }
}

/// Parse `sql` and require exactly one plain `SELECT` (or other query
/// expression: `WITH`, `VALUES`, set operations).
fn single_select(sql: &str, recursion_limit: usize) -> Result<DfStatement, QueryError> {
    let mut statements = DFParserBuilder::new(sql)
        .with_dialect(&GenericDialect {})
        .with_recursion_limit(recursion_limit)
        .build()
        .and_then(|mut parser| parser.parse_statements())
        .map_err(|e| QueryError::Invalid(e.strip_backtrace()))?;
    if statements.len() > 1 {
        return Err(QueryError::Rejected("one statement per query".into()));
    }
    let statement = statements
        .pop_front()
        .ok_or_else(|| QueryError::Invalid("no SQL statement".into()))?;
    match &statement {
        DfStatement::Statement(inner) if matches!(**inner, SqlStatement::Query(_)) => Ok(statement),
        DfStatement::Explain(_) => Err(QueryError::Rejected(
            "EXPLAIN is refused: it shows statistics and file paths".into(),
        )),
        DfStatement::Statement(inner)
            if matches!(
                **inner,
                SqlStatement::Explain { .. } | SqlStatement::ExplainTable { .. }
            ) =>
        {
            Err(QueryError::Rejected(
                "EXPLAIN is refused: it shows statistics and file paths".into(),
            ))
        }
        _ => Err(QueryError::Rejected(
            "only SELECT statements are allowed".into(),
        )),
    }
}
