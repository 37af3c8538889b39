//! Host bindings generated from `wit/guest.wit`, one module per world.
//!
//! The shared interfaces (`types`, `data`, `output`, `diagnostics`) are
//! generated once, in `analysis`, and reused by the other worlds through
//! `with`, so one `impl Host` serves every world.

/// World `analysis`: imports `data`, `output`, `diagnostics`; exports `run`.
pub mod analysis {
    wasmtime::component::bindgen!({
        world: "analysis",
        path: "wit",
        imports: {
            "datasandbox:guest/data.query": async | trappable,
            default: trappable,
        },
        exports: { default: async },
    });
}

/// World `block-analysis`: exports `analyze`.
pub mod block_analysis {
    wasmtime::component::bindgen!({
        world: "block-analysis",
        path: "wit",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "datasandbox:guest/types": super::analysis::datasandbox::guest::types,
            "datasandbox:guest/diagnostics": super::analysis::datasandbox::guest::diagnostics,
        },
    });
}

/// World `model`: exports `train` and `predict`.
pub mod model {
    wasmtime::component::bindgen!({
        world: "model",
        path: "wit",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "datasandbox:guest/types": super::analysis::datasandbox::guest::types,
            "datasandbox:guest/diagnostics": super::analysis::datasandbox::guest::diagnostics,
        },
    });
}

/// World `scorer`: exports `score`.
pub mod scorer {
    wasmtime::component::bindgen!({
        world: "scorer",
        path: "wit",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "datasandbox:guest/types": super::analysis::datasandbox::guest::types,
            "datasandbox:guest/diagnostics": super::analysis::datasandbox::guest::diagnostics,
        },
    });
}

pub use analysis::datasandbox::guest::{data, diagnostics, output, types};
