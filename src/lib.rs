//! datasandbox: data stays home, algorithms travel.
//!
//! Users send analysis code as WebAssembly components; the code runs next to
//! protected data inside wasmtime with no files, network, clock or entropy,
//! reads the data only through SQL that the host plans and checks with
//! Apache DataFusion, and only results that pass the dataset's output policy
//! leave. See `ARCHITECTURE.md` for the codemap and `wit/guest.wit` for the
//! guest contract.
//!
//! Layout:
//! - [`sandbox`]: wasmtime engine, module intake and cache, locked-down WASI,
//!   host imports, limits, job outcomes.
//! - [`query`]: the SQL gate and DataFusion sessions behind `data.query`.
//! - [`catalog`]: manifests, dataset versions, quality profiles, synthetic samples.
//! - [`dataset`]: dataset files (CSV, Parquet, Arrow IPC) and classifications.
//! - [`policy`]: output policy files, checked with `file:line` errors.
//! - [`release`]: the release gate: the positive grammar over protected rows, the `aggregate` mode (thresholds, dominance, cell-key perturbation), the query ledger, the fail-closed check.
//! - [`dp`]: differential privacy: DP SQL, OpenDP noise, privacy budgets.
//! - [`rate`]: the token bucket behind job admission and scoring rates.
//! - [`review`]: held outputs, two-person blind review, automated pre-checks.
//! - [`receipt`]: Ed25519 keys and signed receipts, verifiable offline.
//! - [`contest`]: contests on hidden data: specs, secret splits, metrics, leaderboards.
//! - [`scoring`]: scoring mode: subjects' authorisations, scoring policies, per-subject fresh instances.
//! - [`service`]: a data directory's store, keys, catalog, policies and sandbox; the durable job loop.
//! - [`store`]: the SQLite store: durable jobs, modules and the hash-chained audit log.
//! - [`accounts`]: API tokens (roles, tenants) and dataset grants.
//! - [`applications`]: conditional-access applications, working-day deadlines, scoped grants.
//! - [`server`]: `dsb serve`, the axum `/v1` API, job queue, metrics, OpenAPI.
//! - [`api`]: the HTTP API's wire types, shared by `server` and `client`.
//! - [`client`]: the HTTP client the CLI, the demo and the tests use.
//! - [`worker`]: supervised worker processes that run served jobs' guest calls under OS limits.
//! - [`arrow_ipc`]: Arrow IPC stream bytes, the format tables travel in.
//! - [`sample_data`]: the deterministic sample datasets shipped for demo and tests.
//!
//! The `dsb` binary (`src/main.rs`, `src/cli/`: one file per command group,
//! the demo, Python guest builds) is a client of this library.

pub mod accounts;
pub mod api;
pub mod applications;
pub mod arrow_ipc;
pub mod catalog;
pub mod client;
pub mod contest;
pub mod dataset;
pub mod dp;
pub mod policy;
pub mod query;
pub mod rate;
pub mod receipt;
pub mod release;
pub mod review;
pub mod sample_data;
pub mod sandbox;
pub mod scoring;
pub mod server;
pub mod service;
pub mod store;
pub mod worker;
