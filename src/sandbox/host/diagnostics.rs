//! `datasandbox:guest/diagnostics`: the admin-only log.

use crate::sandbox::bindings::diagnostics;
use crate::sandbox::job::JobState;

impl diagnostics::Host for JobState {
    /// Appends to the bounded log; never fails, so a full log is invisible
    /// to the guest.
    fn log(&mut self, message: String) -> wasmtime::Result<()> {
        self.log.line("log", &message);
        Ok(())
    }
}
