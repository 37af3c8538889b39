//! `datasandbox:guest/data`: the job's tables and SQL over them.

use std::sync::Arc;

use crate::arrow_ipc;
use crate::dataset::Classification;
use crate::query::QueryError;
use crate::sandbox::bindings::data::{self, QueryError as WitQueryError};
use crate::sandbox::bindings::types::{
    Classification as WitClassification, ColumnInfo, ColumnRole, TableInfo,
};
use crate::sandbox::job::JobState;
use crate::sandbox::limits::LimitHit;
use crate::sandbox::outcome::QueryRecord;

/// Longest statement accepted; longer ones are refused unparsed.
const MAX_SQL_BYTES: usize = 1 << 20;
/// How much of each statement the diagnostics keep.
const LOGGED_SQL_BYTES: usize = 4 << 10;

/// Aborts the spawned query when the job is cancelled (timeout), so a
/// runaway query does not outlive its job.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl data::Host for JobState {
    fn tables(&mut self) -> wasmtime::Result<Vec<TableInfo>> {
        let Some(session) = &self.session else {
            return Ok(Vec::new());
        };
        Ok(session
            .tables()
            .iter()
            .map(|table| TableInfo {
                name: table.name.clone(),
                classification: match table.classification {
                    Classification::Open => WitClassification::Open,
                    Classification::Conditional => WitClassification::Conditional,
                    Classification::Restricted => WitClassification::Restricted,
                },
                columns: table
                    .columns
                    .iter()
                    .map(|column| ColumnInfo {
                        name: column.name.clone(),
                        data_type: column.data_type.clone(),
                        role: match column.role {
                            crate::dataset::ColumnRole::Identifier => ColumnRole::Identifier,
                            crate::dataset::ColumnRole::QuasiIdentifier => {
                                ColumnRole::QuasiIdentifier
                            }
                            crate::dataset::ColumnRole::Sensitive => ColumnRole::Sensitive,
                            crate::dataset::ColumnRole::Attribute => ColumnRole::Attribute,
                            crate::dataset::ColumnRole::Label => ColumnRole::Label,
                        },
                        description: column.description.clone(),
                    })
                    .collect(),
            })
            .collect())
    }

    async fn query(&mut self, sql: String) -> wasmtime::Result<Result<Vec<u8>, WitQueryError>> {
        self.queries += 1;
        if self.queries > self.limits.queries {
            return Err(self.trip(LimitHit::Query));
        }
        let logged_sql = truncate(&sql, LOGGED_SQL_BYTES);
        if sql.len() > MAX_SQL_BYTES {
            self.record(logged_sql, "invalid: statement too long", 0, 0);
            return Ok(Err(WitQueryError::Invalid(
                "statement longer than 1 MiB".into(),
            )));
        }
        let Some(session) = self.session.clone() else {
            return Ok(Err(WitQueryError::Rejected(
                "this job has no data access".into(),
            )));
        };
        let remaining = self.limits.query_bytes.saturating_sub(self.query_bytes);
        // Planning and execution run on a tokio worker, not on the guest's
        // fiber stack: DataFusion recurses deeply on nested SQL.
        let mut task = AbortOnDrop(tokio::spawn(run_query(session, sql, remaining)));
        let result = match (&mut task.0).await {
            Ok(result) => result,
            Err(join_error) => {
                self.internal = Some(format!("query task failed: {join_error}"));
                return Err(wasmtime::Error::msg("internal error in query task"));
            }
        };
        match result {
            Ok((bytes, rows)) => {
                if self.query_bytes.saturating_add(bytes.len()) > self.limits.query_bytes {
                    self.record(logged_sql, "too-large", rows, bytes.len());
                    return Err(self.trip(LimitHit::Query));
                }
                self.query_bytes += bytes.len();
                self.record(logged_sql, "ok", rows, bytes.len());
                Ok(Ok(bytes))
            }
            Err(QueryError::TooLarge { .. }) => {
                self.record(logged_sql, "too-large", 0, 0);
                Err(self.trip(LimitHit::Query))
            }
            Err(QueryError::Rejected(reason)) => {
                self.record(logged_sql, &format!("rejected: {reason}"), 0, 0);
                self.rejection.get_or_insert_with(|| reason.clone());
                Ok(Err(WitQueryError::Rejected(reason)))
            }
            Err(QueryError::Invalid(reason)) => {
                self.record(logged_sql, &format!("invalid: {reason}"), 0, 0);
                Ok(Err(WitQueryError::Invalid(reason)))
            }
            Err(QueryError::Failed { detail }) => {
                self.record(logged_sql, &format!("failed: {detail}"), 0, 0);
                Ok(Err(WitQueryError::Failed))
            }
        }
    }
}

impl JobState {
    fn record(&mut self, sql: String, outcome: &str, rows: usize, bytes: usize) {
        self.query_log.push(QueryRecord {
            sql,
            outcome: outcome.to_string(),
            rows,
            bytes,
        });
    }
}

async fn run_query(
    session: Arc<crate::query::QuerySession>,
    sql: String,
    max_bytes: usize,
) -> Result<(Vec<u8>, usize), QueryError> {
    let (schema, batches) = session.run(&sql, max_bytes).await?;
    let bytes = arrow_ipc::encode(&schema, &batches).map_err(|e| QueryError::Failed {
        detail: format!("encoding the result: {e}"),
    })?;
    Ok((bytes, arrow_ipc::row_count(&batches)))
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
