//! How a job ended, and what each audience may see of it.
//!
//! The submitter gets a [`SubmitterReport`]: a fixed [`Category`], host-written
//! reasons and, only for `ok`, the outputs. Everything the guest controls
//! besides its outputs (trap messages and backtraces, error strings, panics,
//! logs, resource figures) goes into [`Diagnostics`], which only
//! administrators (and a developer running their own data with `dsb dev run`)
//! read. A secret in any of those must never reach a [`SubmitterReport`].

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::intake::IntakeError;

/// The one category a job ends in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Category {
    Ok,
    OutOfFuel,
    Timeout,
    MemoryLimit,
    StackOverflow,
    OutputLimit,
    QueryLimit,
    /// The guest trapped, panicked or returned an error; the detail is in
    /// the diagnostics only.
    GuestError,
    /// A host check refused something; the reason is host-written and
    /// depends only on the plan and the policy.
    PolicyRejected(String),
    /// The module was refused before it ran.
    InvalidModule(String),
    /// The host failed; nothing about the guest is implied.
    Internal,
    /// The submitter cancelled the job before it finished.
    Cancelled,
    /// A model returned a different number of predictions than rows.
    WrongPredictionCount,
    /// A model returned a prediction that is not a finite number.
    InvalidPrediction,
    /// What a contest team sees of any failure its model caused (the
    /// detailed category stays with the administrators).
    NotScored,
}

impl Category {
    /// The stable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            Category::Ok => "ok",
            Category::OutOfFuel => "out-of-fuel",
            Category::Timeout => "timeout",
            Category::MemoryLimit => "memory-limit",
            Category::StackOverflow => "stack-overflow",
            Category::OutputLimit => "output-limit",
            Category::QueryLimit => "query-limit",
            Category::GuestError => "guest-error",
            Category::PolicyRejected(_) => "policy-rejected",
            Category::InvalidModule(_) => "invalid-module",
            Category::Internal => "internal",
            Category::Cancelled => "cancelled",
            Category::WrongPredictionCount => "wrong-prediction-count",
            Category::InvalidPrediction => "invalid-prediction",
            Category::NotScored => "not-scored",
        }
    }

    /// The host-written reason, for the categories that carry one.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Category::PolicyRejected(reason) | Category::InvalidModule(reason) => Some(reason),
            _ => None,
        }
    }

    pub fn is_ok(&self) -> bool {
        *self == Category::Ok
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason() {
            Some(reason) => write!(f, "{}: {reason}", self.code()),
            None => f.write_str(self.code()),
        }
    }
}

impl From<&IntakeError> for Category {
    fn from(error: &IntakeError) -> Self {
        match error {
            IntakeError::Store(_) => Category::Internal,
            other => Category::InvalidModule(other.to_string()),
        }
    }
}

impl Serialize for Category {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::str::FromStr for Category {
    type Err = String;

    /// The inverse of `Display`: `code` or `code: reason`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (code, reason) = match text.split_once(": ") {
            Some((code, reason)) => (code, Some(reason.to_string())),
            None => (text, None),
        };
        Ok(match (code, reason) {
            ("policy-rejected", Some(reason)) => Category::PolicyRejected(reason),
            ("invalid-module", Some(reason)) => Category::InvalidModule(reason),
            ("ok", None) => Category::Ok,
            ("out-of-fuel", None) => Category::OutOfFuel,
            ("timeout", None) => Category::Timeout,
            ("memory-limit", None) => Category::MemoryLimit,
            ("stack-overflow", None) => Category::StackOverflow,
            ("output-limit", None) => Category::OutputLimit,
            ("query-limit", None) => Category::QueryLimit,
            ("guest-error", None) => Category::GuestError,
            ("internal", None) => Category::Internal,
            ("cancelled", None) => Category::Cancelled,
            ("wrong-prediction-count", None) => Category::WrongPredictionCount,
            ("invalid-prediction", None) => Category::InvalidPrediction,
            ("not-scored", None) => Category::NotScored,
            _ => return Err(format!("unknown category `{text}`")),
        })
    }
}

impl<'de> Deserialize<'de> for Category {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// One released output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Output {
    /// A table as Arrow IPC stream bytes.
    Table {
        name: String,
        rows: usize,
        #[serde(with = "hex_bytes")]
        arrow_ipc: Vec<u8>,
    },
    /// A number.
    Value { name: String, value: f64 },
    /// A grade from a scoring policy's scale (released instead of a number).
    Grade { name: String, grade: String },
}

impl Output {
    pub fn name(&self) -> &str {
        match self {
            Output::Table { name, .. }
            | Output::Value { name, .. }
            | Output::Grade { name, .. } => name,
        }
    }
}

pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        hex::decode(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// One `data.query` call as administrators see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryRecord {
    pub sql: String,
    /// `ok`, `rejected: …`, `invalid: …`, `failed: <DataFusion text>` or
    /// `too-large`.
    pub outcome: String,
    pub rows: usize,
    pub bytes: usize,
}

/// Everything about a job that only administrators may read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Diagnostics {
    /// The trap or host error as wasmtime rendered it (with backtrace).
    pub trap: Option<String>,
    /// The guest's own error string, if it returned one.
    pub guest_error: Option<String>,
    /// Guest log, stdout and stderr, bounded.
    pub log: String,
    pub log_truncated: bool,
    pub fuel_consumed: u64,
    pub duration: Duration,
    /// Of `duration`, the time spent instantiating the module.
    pub instantiate: Duration,
    /// The most linear memory the component held at once, all its memories
    /// together, in bytes.
    pub memory_peak_bytes: usize,
    pub queries: Vec<QueryRecord>,
    /// Where the module came from: compiled now, the artifact cache, or memory.
    pub module_load: Option<String>,
    /// The detailed category when the submitter was told a coarser one
    /// (a contest's `not-scored`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub withheld_category: Option<String>,
    /// The worker process that ran the call, when it ran in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_pid: Option<u32>,
}

/// What the submitter of a job receives: nothing the guest wrote except,
/// on success, its outputs.
#[derive(Debug, Clone, Serialize)]
pub struct SubmitterReport {
    pub job_id: String,
    /// `ok`, `out-of-fuel`, …, `policy-rejected: <host reason>`.
    pub category: Category,
    /// Empty unless `category` is `ok`.
    pub outputs: Vec<Output>,
}
