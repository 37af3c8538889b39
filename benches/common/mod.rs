//! Helpers shared by the benchmark binaries (`mod common;` in each).
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path, hint: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e} (run {hint})", path.display()))
}

/// A built Rust guest, e.g. `guest("district_stats")`.
pub fn guest(name: &str) -> Vec<u8> {
    read(
        &repo()
            .join("sandbox-guests/target/wasm32-wasip2/release")
            .join(format!("{name}.wasm")),
        "scripts/build-guests",
    )
}

/// A built Python guest, e.g. `python_guest("logistic_model")`.
pub fn python_guest(name: &str) -> Vec<u8> {
    read(
        &repo()
            .join("sandbox-guests/target/python")
            .join(format!("{name}.wasm")),
        "scripts/build-python-guests",
    )
}

/// The `p` quantile (0..=1) of `samples`, which it sorts.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

/// The median of `runs` timings of `f`.
pub fn median<F: FnMut() -> Duration>(runs: usize, mut f: F) -> Duration {
    let mut samples: Vec<Duration> = (0..runs).map(|_| f()).collect();
    percentile(&mut samples, 0.5)
}
