//! Per-job resource limits and the store's resource limiter.
//!
//! Every limit has a default suited to an interactive analysis; release modes
//! and policies may lower or raise them per job. Engine-wide limits (stack
//! size, pool sizes, module size) live in `SandboxConfig`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What one job may consume. A job that passes a limit ends with that
/// limit's category; nothing it emitted is released.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Deterministic CPU budget in wasmtime fuel units (about one per wasm
    /// instruction). Ends the job as `out-of-fuel`.
    pub fuel: u64,
    /// Wall-clock bound, including time spent in host calls. `timeout`.
    #[serde(with = "duration_ms", rename = "timeout_ms")]
    pub timeout: Duration,
    /// Linear memory of the whole component: all its memories together.
    /// `memory-limit`.
    pub memory_bytes: usize,
    /// Core instances, tables and memories a component may create.
    pub instances: usize,
    pub tables: usize,
    pub memories: usize,
    /// Elements of all tables together.
    pub table_elements: usize,
    /// Bytes of all emitted tables together. `output-limit`.
    pub output_bytes: usize,
    /// Rows of all emitted tables together. `output-limit`.
    pub output_rows: usize,
    /// Number of emit calls. `output-limit`.
    pub emits: usize,
    /// Number of `data.query` calls. `query-limit`.
    pub queries: usize,
    /// Bytes of all query results together. `query-limit`.
    pub query_bytes: usize,
    /// Diagnostic log (guest `log`, stdout, stderr); the rest is cut.
    pub log_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 20_000_000_000,
            timeout: Duration::from_secs(30),
            memory_bytes: 256 << 20,
            instances: 16,
            tables: 16,
            memories: 4,
            table_elements: 100_000,
            output_bytes: 16 << 20,
            output_rows: 5_000,
            emits: 100,
            queries: 100,
            query_bytes: 256 << 20,
            log_bytes: 64 << 10,
        }
    }
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis().try_into().unwrap_or(u64::MAX))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// A limit the host enforced by ending the job. Stored in the job state when
/// it trips, so classification does not depend on how wasmtime wraps errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitHit {
    #[error("memory limit reached")]
    Memory,
    #[error("table or instance limit reached")]
    Tables,
    #[error("output limit reached")]
    Output,
    #[error("query limit reached")]
    Query,
}

/// The store's `ResourceLimiter`: refuses growth past the job's limits and
/// records that it did, so the job ends as `memory-limit` rather than as
/// whatever the guest's allocator does with a failed `memory.grow`.
#[derive(Debug)]
pub struct JobLimiter {
    memory_bytes: usize,
    table_elements: usize,
    instances: usize,
    tables: usize,
    memories: usize,
    /// The first limit that tripped, if any.
    pub hit: Option<LimitHit>,
    /// Linear memory granted to all memories together now (bytes).
    memory_total: usize,
    /// Table elements granted to all tables together now.
    table_total: usize,
    /// The most linear memory granted to all memories together (bytes),
    /// for the diagnostics.
    pub peak_memory: usize,
}

impl JobLimiter {
    pub fn new(limits: &Limits) -> Self {
        JobLimiter {
            memory_bytes: limits.memory_bytes,
            table_elements: limits.table_elements,
            instances: limits.instances,
            tables: limits.tables,
            memories: limits.memories,
            hit: None,
            memory_total: 0,
            table_total: 0,
            peak_memory: 0,
        }
    }
}

impl wasmtime::ResourceLimiter for JobLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // The limit covers every memory of the component together: a
        // component with four core instances gets one budget, not four.
        let total = (self.memory_total - current.min(self.memory_total)).saturating_add(desired);
        if total > self.memory_bytes {
            self.hit.get_or_insert(LimitHit::Memory);
            // An error traps the guest at once instead of letting its
            // allocator loop or abort with its own message.
            return Err(LimitHit::Memory.into());
        }
        self.memory_total = total;
        self.peak_memory = self.peak_memory.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Elements of all tables together, like memory.
        let total = (self.table_total - current.min(self.table_total)).saturating_add(desired);
        if total > self.table_elements {
            self.hit.get_or_insert(LimitHit::Tables);
            return Err(LimitHit::Tables.into());
        }
        self.table_total = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn tables(&self) -> usize {
        self.tables
    }

    fn memories(&self) -> usize {
        self.memories
    }
}
