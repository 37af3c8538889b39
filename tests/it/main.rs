//! The integration tests: one binary (linking datafusion, wasmtime and sqlx
//! once), one module per capability. Each runs against real components: a
//! real wasmtime, a real DataFusion, a real SQLite file and, for the server
//! tests, a real `dsb serve` process on loopback.

mod common;

mod aggregate_release;
mod applications;
mod catalog_and_policies;
mod cli;
mod contest;
mod crash_safety;
mod data_formats;
mod data_path;
mod dp;
mod dp_channels;
mod dp_declared_bounds;
mod guest_cannot_escape;
mod guest_worlds;
mod hostile_guests;
mod hostile_input;
mod input_fuzz;
mod local_calls;
mod module_intake;
mod no_guest_text_reaches_submitter;
mod python_guests;
mod receipts_and_audit;
mod review;
mod sample_data;
mod scoring;
mod server_api;
mod server_queue;
mod snapshots;
mod workers;
