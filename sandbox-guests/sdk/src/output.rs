//! Emit results for release (world `analysis`).

use arrow_array::RecordBatch;
use std::fmt;

use crate::bindings::datasandbox::guest::output as wit;
pub use wit::EmitError;

/// Why an output could not be emitted.
#[derive(Debug)]
pub enum OutputError {
    /// The host refused it.
    Refused(EmitError),
    /// The batches could not be encoded.
    Encode(String),
}

impl fmt::Display for OutputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutputError::Refused(e) => write!(f, "emit refused: {e:?}"),
            OutputError::Encode(e) => write!(f, "could not encode table: {e}"),
        }
    }
}

impl std::error::Error for OutputError {}

/// Emit a named table.
pub fn emit_table(name: &str, batches: &[RecordBatch]) -> Result<(), OutputError> {
    let bytes = crate::ipc::encode(batches).map_err(|e| OutputError::Encode(e.to_string()))?;
    wit::emit_table(name, &bytes).map_err(OutputError::Refused)
}

/// Emit Arrow IPC stream bytes as a named table, unchanged.
pub fn emit_table_ipc(name: &str, bytes: &[u8]) -> Result<(), OutputError> {
    wit::emit_table(name, bytes).map_err(OutputError::Refused)
}

/// Emit a named number.
pub fn emit_value(name: &str, value: f64) -> Result<(), OutputError> {
    wit::emit_value(name, value).map_err(OutputError::Refused)
}
