//! A file table read with its declared types: Arrow IPC scans have no
//! schema adapter in DataFusion 55, so a file that stores a declared int64
//! as int32 (or a string as a large string) is wrapped in [`CastTable`],
//! which reports the declared schema and casts each scanned column to it.
//! The catalog has already checked that every cast is lossless
//! ([`crate::catalog::ColumnType::accepts`]).
//!
//! The wrapper is opaque to the planner (no logical plan of its own), so
//! the plan gate sees one `TableScan` of the dataset's name, as for any
//! other table.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{Column, cast};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::ProjectionExec;

#[derive(Debug)]
pub struct CastTable {
    inner: Arc<dyn TableProvider>,
    declared: SchemaRef,
}

impl CastTable {
    /// `inner` read as `declared`: every declared column must exist in
    /// `inner` by name (the catalog checked it at registration).
    pub fn new(inner: Arc<dyn TableProvider>, declared: SchemaRef) -> Result<Self> {
        let held = inner.schema();
        for field in declared.fields() {
            held.index_of(field.name())?;
        }
        Ok(CastTable { inner, declared })
    }
}

#[async_trait]
impl TableProvider for CastTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.declared)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Filters are not pushed into the file scan (they are typed by the
    /// declared schema, not the file's); DataFusion applies them above.
    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let wanted: Vec<usize> = match projection {
            Some(columns) => columns.clone(),
            None => (0..self.declared.fields().len()).collect(),
        };
        let held = self.inner.schema();
        let inner_columns = wanted
            .iter()
            .map(|&i| held.index_of(self.declared.field(i).name()))
            .collect::<Result<Vec<usize>, _>>()?;
        let scan = self
            .inner
            .scan(state, Some(&inner_columns), &[], limit)
            .await?;
        if wanted.is_empty() {
            return Ok(scan);
        }
        let scanned = scan.schema();
        let exprs = wanted
            .iter()
            .enumerate()
            .map(|(position, &i)| {
                let field = self.declared.field(i);
                let column: Arc<dyn PhysicalExpr> = Arc::new(Column::new(field.name(), position));
                Ok((
                    cast(column, &scanned, field.data_type().clone())?,
                    field.name().clone(),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(ProjectionExec::try_new(exprs, scan)?))
    }
}
