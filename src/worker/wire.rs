//! What travels between the supervisor and a worker process: one request
//! (module hash, the job's environment, the guest call) and one response
//! (the execution), each a length-prefixed JSON frame on the worker's
//! stdin and stdout.
//!
//! The environment travels as data: the rules, dp tables, populations and
//! ledger limits the server bound at submission, never re-derived in the
//! worker (a policy changed in between must not change a running job). The
//! store handles of the dp and query ledgers are reopened in the worker on
//! the same SQLite file.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::dataset::{ColumnNote, DatasetSource};
use crate::dp::budget::Population;
use crate::dp::{Accuracy, DpSession, DpTable, Ledger};
use crate::policy::LedgerLimits;
use crate::release::aggregate::TableRules;
use crate::release::ledger::QueryLedger;
use crate::sandbox::{Execution, GuestCall, JobEnv, Limits};
use crate::store::Store;

/// Bytes as hex in JSON (an array of numbers would be four times larger).
#[derive(Debug, Clone, PartialEq)]
pub struct Hex(pub Vec<u8>);

impl Serialize for Hex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text).map(Hex).map_err(serde::de::Error::custom)
    }
}

/// What a worker is asked to do.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Run one guest call.
    Call(Box<CallRequest>),
    /// Validate and compile the module in this file (written by the
    /// server, read here) into the shared module directory; the server then
    /// loads the artifact without compiling.
    Compile { module: std::path::PathBuf },
    /// The review pre-check: dominated cells of each statement.
    Dominance {
        env: Box<WireEnv>,
        statements: Vec<String>,
    },
}

/// What a worker answers.
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Execution(Box<Execution>),
    Compiled(Result<(), CompileRefusal>),
    Dominance(Vec<Option<usize>>),
}

/// Why a worker refused to compile a module (the intake errors a compile
/// can end in; the cheap checks on the bytes run in the server first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CompileRefusal {
    NotWasm,
    CoreModule,
    InvalidComponent,
    UnknownWorld,
    ForbiddenImport(String),
    TooComplex(String),
    /// The module directory failed in the worker.
    Store(String),
}

impl From<&crate::sandbox::IntakeError> for CompileRefusal {
    fn from(error: &crate::sandbox::IntakeError) -> Self {
        use crate::sandbox::IntakeError as E;
        match error {
            E::NotWasm => CompileRefusal::NotWasm,
            E::CoreModule => CompileRefusal::CoreModule,
            E::UnknownWorld => CompileRefusal::UnknownWorld,
            E::ForbiddenImport(name) => CompileRefusal::ForbiddenImport(name.clone()),
            E::Store(error) => CompileRefusal::Store(error.to_string()),
            E::TooComplex(what) => CompileRefusal::TooComplex(what.clone()),
            // Size is checked before the bytes leave the server; a wrong
            // world needs a job.
            E::TooLarge { .. } | E::WrongWorld { .. } | E::InvalidComponent => {
                CompileRefusal::InvalidComponent
            }
        }
    }
}

impl From<CompileRefusal> for crate::sandbox::IntakeError {
    fn from(refusal: CompileRefusal) -> Self {
        use crate::sandbox::IntakeError as E;
        match refusal {
            CompileRefusal::NotWasm => E::NotWasm,
            CompileRefusal::CoreModule => E::CoreModule,
            CompileRefusal::InvalidComponent => E::InvalidComponent,
            CompileRefusal::UnknownWorld => E::UnknownWorld,
            CompileRefusal::ForbiddenImport(name) => E::ForbiddenImport(name),
            CompileRefusal::TooComplex(what) => E::TooComplex(what),
            CompileRefusal::Store(message) => E::Store(std::io::Error::other(message)),
        }
    }
}

/// One guest call for a worker.
#[derive(Debug, Serialize, Deserialize)]
pub struct CallRequest {
    /// SHA-256 of a module the server has stored (validated, compiled).
    pub module: String,
    pub env: WireEnv,
    pub call: WireCall,
    /// Test-only fault injection (`WorkerConfig::fault_injection`); a
    /// worker started without it ignores the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
}

/// Faults a worker can be told to commit, so the supervisor's handling of
/// each is tested against a real process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// `abort()`, as an allocation failure or a foreign stack overflow would.
    Abort,
    /// Block the worker's thread forever without yielding, as a host
    /// function stuck in a loop would.
    Hang,
    /// Burn CPU on the worker's thread without yielding: the worker's
    /// CPU limit must end it.
    Spin,
    /// Panic in the host while handling the call.
    Panic,
    /// Allocate and touch 16 GiB: the worker's memory limit must stop it.
    Allocate,
}

impl Fault {
    pub fn parse(name: &str) -> Option<Fault> {
        serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub enum WireCall {
    Run {
        params: String,
    },
    Analyze {
        block: Hex,
        params: String,
    },
    TrainPredict {
        train: Hex,
        params: String,
        features: Hex,
    },
    Score {
        rows: Vec<(String, Hex)>,
        params: String,
    },
}

impl From<GuestCall> for WireCall {
    fn from(call: GuestCall) -> Self {
        match call {
            GuestCall::Run { params } => WireCall::Run { params },
            GuestCall::Analyze { block, params } => WireCall::Analyze {
                block: Hex(block),
                params,
            },
            GuestCall::TrainPredict {
                train,
                params,
                features,
            } => WireCall::TrainPredict {
                train: Hex(train),
                params,
                features: Hex(features),
            },
            GuestCall::Score { rows, params } => WireCall::Score {
                rows: rows.into_iter().map(|(id, row)| (id, Hex(row))).collect(),
                params,
            },
        }
    }
}

impl From<WireCall> for GuestCall {
    fn from(call: WireCall) -> Self {
        match call {
            WireCall::Run { params } => GuestCall::Run { params },
            WireCall::Analyze { block, params } => GuestCall::Analyze {
                block: block.0,
                params,
            },
            WireCall::TrainPredict {
                train,
                params,
                features,
            } => GuestCall::TrainPredict {
                train: train.0,
                params,
                features: features.0,
            },
            WireCall::Score { rows, params } => GuestCall::Score {
                rows: rows.into_iter().map(|(id, row)| (id, row.0)).collect(),
                params,
            },
        }
    }
}

/// A [`JobEnv`] as data.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireEnv {
    pub job_id: String,
    pub logical_time: Duration,
    pub limits: Limits,
    pub datasets: Vec<WireDataset>,
    pub dp: Option<WireDp>,
    pub ledger: Option<WireLedger>,
}

/// A [`DatasetSource`] with the fields its own serialisation leaves out.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireDataset {
    pub source: DatasetSource,
    /// The declared schema as an empty Arrow IPC stream.
    pub schema: Option<Hex>,
    pub dictionary: Vec<ColumnNote>,
    pub rules: Option<TableRules>,
    pub dp: Option<DpTable>,
    pub granted_columns: Option<Vec<String>>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WireDp {
    pub tables: HashMap<String, DpTable>,
    pub epsilon: f64,
    pub accuracy: Option<Accuracy>,
    pub principal: String,
    pub job_id: String,
    pub populations: HashMap<String, Population>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WireLedger {
    pub tenant: String,
    pub job_id: String,
    pub limits: HashMap<String, LedgerLimits>,
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("encoding a dataset's schema: {0}")]
    Schema(String),
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("frame: {0}")]
    Json(#[from] serde_json::Error),
    #[error("pipe: {0}")]
    Io(#[from] std::io::Error),
}

impl WireEnv {
    pub fn from_env(env: &JobEnv) -> Result<WireEnv, WireError> {
        let datasets = env
            .datasets
            .iter()
            .map(|source| {
                let schema = match &source.schema {
                    Some(schema) => Some(Hex(crate::arrow_ipc::encode(schema, &[])
                        .map_err(|e| WireError::Schema(e.to_string()))?)),
                    None => None,
                };
                Ok(WireDataset {
                    source: source.clone(),
                    schema,
                    dictionary: source.dictionary.clone(),
                    rules: source.rules.as_deref().cloned(),
                    dp: source.dp.as_deref().cloned(),
                    granted_columns: source.granted_columns.clone(),
                })
            })
            .collect::<Result<Vec<_>, WireError>>()?;
        Ok(WireEnv {
            job_id: env.job_id.clone(),
            logical_time: env.logical_time,
            limits: env.limits.clone(),
            datasets,
            dp: env.dp.as_deref().map(|dp| WireDp {
                tables: dp
                    .tables
                    .iter()
                    .map(|(name, table)| (name.clone(), DpTable::clone(table)))
                    .collect(),
                epsilon: dp.epsilon,
                accuracy: dp.accuracy,
                principal: dp.ledger.principal.clone(),
                job_id: dp.ledger.job_id.clone(),
                populations: dp.ledger.populations.clone(),
            }),
            ledger: env.ledger.as_deref().map(|ledger| WireLedger {
                tenant: ledger.tenant.clone(),
                job_id: ledger.job_id.clone(),
                limits: ledger.limits.clone(),
            }),
        })
    }

    /// The environment again, its ledgers on `store`.
    pub fn into_env(self, store: &Store) -> Result<JobEnv, WireError> {
        let datasets = self
            .datasets
            .into_iter()
            .map(|wire| {
                let mut source = wire.source;
                source.schema = match wire.schema {
                    Some(bytes) => Some(
                        crate::arrow_ipc::decode(&bytes.0)
                            .map_err(|e| WireError::Schema(e.to_string()))?
                            .0,
                    ),
                    None => None,
                };
                source.dictionary = wire.dictionary;
                source.rules = wire.rules.map(Arc::new);
                source.dp = wire.dp.map(Arc::new);
                source.granted_columns = wire.granted_columns;
                Ok(source)
            })
            .collect::<Result<Vec<_>, WireError>>()?;
        Ok(JobEnv {
            job_id: self.job_id,
            logical_time: self.logical_time,
            limits: self.limits,
            datasets,
            dp: self.dp.map(|dp| {
                Arc::new(DpSession {
                    tables: dp
                        .tables
                        .into_iter()
                        .map(|(name, table)| (name, Arc::new(table)))
                        .collect(),
                    epsilon: dp.epsilon,
                    accuracy: dp.accuracy,
                    ledger: Ledger {
                        store: store.clone(),
                        principal: dp.principal,
                        job_id: dp.job_id,
                        populations: dp.populations,
                    },
                })
            }),
            ledger: self.ledger.map(|ledger| {
                Arc::new(QueryLedger {
                    store: store.clone(),
                    tenant: ledger.tenant,
                    job_id: ledger.job_id,
                    limits: ledger.limits,
                })
            }),
        })
    }
}

/// Write one frame: a 4-byte big-endian length, then the JSON.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    writer: &mut W,
    value: &T,
) -> Result<(), WireError> {
    let bytes = serde_json::to_vec(value)?;
    let length = u32::try_from(bytes.len()).map_err(|_| WireError::TooLarge(bytes.len()))?;
    writer.write_all(&length.to_be_bytes()).await?;
    writer.write_all(&bytes).await?;
    writer.flush().await?;
    Ok(())
}

/// Read one frame of at most `max` bytes; `None` at a clean end of input.
pub async fn read_frame<R: AsyncRead + Unpin, T: serde::de::DeserializeOwned>(
    reader: &mut R,
    max: usize,
) -> Result<Option<T>, WireError> {
    let mut length = [0u8; 4];
    match reader.read_exact(&mut length).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error.into()),
    }
    let length = u32::from_be_bytes(length) as usize;
    if length > max {
        return Err(WireError::TooLarge(length));
    }
    let mut bytes = vec![0u8; length];
    reader.read_exact(&mut bytes).await?;
    Ok(Some(serde_json::from_slice(&bytes)?))
}
