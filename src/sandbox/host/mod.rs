//! Host imports, one file per WIT interface. Each function checks its
//! arguments and limits, calls the owning layer, and returns. Limits end the
//! job by trapping with a [`LimitHit`](super::limits::LimitHit) that is also
//! recorded in the job state; refusals the guest can recover from are WIT
//! error values.

mod data;
mod diagnostics;
mod output;

/// `datasandbox:guest/types` declares only types; the generated trait is empty.
impl super::bindings::types::Host for super::job::JobState {}
