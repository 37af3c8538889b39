//! The job's tables and SQL queries over them (world `analysis`).

use arrow_array::RecordBatch;
use std::fmt;

use crate::bindings::datasandbox::guest::data as wit;
pub use crate::bindings::datasandbox::guest::types::{
    Classification, ColumnInfo, ColumnRole, TableInfo,
};

/// Why a query returned no result.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryError {
    /// Not allowed; the host's reason.
    Rejected(String),
    /// Could not be parsed or planned; the host's reason.
    Invalid(String),
    /// Execution failed (no detail, by design).
    Failed,
    /// The host's Arrow bytes could not be decoded (a host/SDK mismatch).
    Decode(String),
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryError::Rejected(reason) => write!(f, "query rejected: {reason}"),
            QueryError::Invalid(reason) => write!(f, "invalid query: {reason}"),
            QueryError::Failed => f.write_str("query failed"),
            QueryError::Decode(reason) => write!(f, "could not decode query result: {reason}"),
        }
    }
}

impl std::error::Error for QueryError {}

/// The tables this job may query.
pub fn tables() -> Vec<TableInfo> {
    wit::tables()
}

/// Run one SELECT and return its result as Arrow IPC stream bytes.
pub fn query_ipc(sql: &str) -> Result<Vec<u8>, QueryError> {
    wit::query(sql).map_err(|error| match error {
        wit::QueryError::Rejected(reason) => QueryError::Rejected(reason),
        wit::QueryError::Invalid(reason) => QueryError::Invalid(reason),
        wit::QueryError::Failed => QueryError::Failed,
    })
}

/// Run one SELECT and return its result as record batches.
pub fn query(sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
    let bytes = query_ipc(sql)?;
    crate::ipc::decode_owned(bytes).map_err(|e| QueryError::Decode(e.to_string()))
}
