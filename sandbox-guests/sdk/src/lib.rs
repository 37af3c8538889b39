//! Write a datasandbox guest in a few lines.
//!
//! A guest is a WebAssembly component that targets one world of the
//! `datasandbox:guest` WIT package (see `wit/guest.wit` in the repository).
//! Pick the world with this crate's cargo feature (`analysis`,
//! `block-analysis`, `model` or `scorer`), implement [`Guest`] and call
//! [`export!`]:
//!
//! ```ignore
//! use datasandbox_guest::{data, output, Guest};
//!
//! struct Count;
//! impl Guest for Count {
//!     fn run(_params: String) -> Result<(), String> {
//!         let batches = data::query("SELECT COUNT(*) AS n FROM enterprises").map_err(|e| e.to_string())?;
//!         output::emit_table("count", &batches).map_err(|e| e.to_string())
//!     }
//! }
//! datasandbox_guest::export!(Count);
//! ```
//!
//! Layout:
//! - [`ipc`]: Arrow IPC stream bytes to and from `RecordBatch`es.
//! - [`data`] (analysis): the job's tables and SQL queries.
//! - [`output`] (analysis): emit tables and values for release.
//! - [`log`]: the diagnostic log (never shown to a submitter of a protected job).
//!
//! The guest has no files, network, real clock or real entropy: `std::fs`
//! calls fail, `SystemTime::now()` is the job's frozen logical time and random
//! numbers are seeded from the job id.

#[cfg(any(
    all(feature = "analysis", feature = "block-analysis"),
    all(feature = "analysis", feature = "model"),
    all(feature = "analysis", feature = "scorer"),
    all(feature = "block-analysis", feature = "model"),
    all(feature = "block-analysis", feature = "scorer"),
    all(feature = "model", feature = "scorer"),
))]
compile_error!(
    "enable exactly one world feature of datasandbox-guest (a component targets one world)"
);

#[cfg(not(any(
    feature = "analysis",
    feature = "block-analysis",
    feature = "model",
    feature = "scorer"
)))]
compile_error!(
    "enable one world feature of datasandbox-guest: analysis, block-analysis, model or scorer"
);

pub use arrow_array;
pub use arrow_schema;

/// Generated WIT bindings for the selected world.
#[doc(hidden)]
pub mod bindings {
    #[cfg(feature = "analysis")]
    wit_bindgen::generate!({
        world: "analysis",
        path: "../../wit",
        pub_export_macro: true,
        default_bindings_module: "datasandbox_guest::bindings",
    });
    #[cfg(feature = "block-analysis")]
    wit_bindgen::generate!({
        world: "block-analysis",
        path: "../../wit",
        pub_export_macro: true,
        default_bindings_module: "datasandbox_guest::bindings",
    });
    #[cfg(feature = "model")]
    wit_bindgen::generate!({
        world: "model",
        path: "../../wit",
        pub_export_macro: true,
        default_bindings_module: "datasandbox_guest::bindings",
    });
    #[cfg(feature = "scorer")]
    wit_bindgen::generate!({
        world: "scorer",
        path: "../../wit",
        pub_export_macro: true,
        default_bindings_module: "datasandbox_guest::bindings",
    });
}

/// The world's exports; implement it and pass the type to [`export!`].
pub use bindings::Guest;
/// Registers a [`Guest`] implementation as the component's exports.
pub use bindings::export;

pub mod ipc;

#[cfg(feature = "analysis")]
pub mod data;
#[cfg(feature = "analysis")]
pub mod output;

/// Append a line to the job's diagnostic log (bounded; the rest is cut).
/// Administrators see it; a submitter of a job on protected data never does.
pub fn log(message: &str) {
    bindings::datasandbox::guest::diagnostics::log(message);
}
