//! The query gate's error type, in a file of its own so the modes that
//! answer queries (`dp::sql`) can return it without depending on the gate.

/// Why a statement returned nothing. Texts in `Rejected` and `Invalid` are
/// host-written or planner-written and depend only on the statement and the
/// schema; they may go to the guest.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    #[error("rejected: {0}")]
    Rejected(String),
    #[error("invalid: {0}")]
    Invalid(String),
    /// Execution failed. `detail` is DataFusion's text, which can quote row
    /// values: it goes to the administrators' diagnostics only.
    #[error("query failed")]
    Failed { detail: String },
    /// The result exceeded the bytes the job may still receive.
    #[error("result larger than the {limit} bytes left for this job")]
    TooLarge { limit: usize },
}
