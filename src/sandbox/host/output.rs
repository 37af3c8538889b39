//! `datasandbox:guest/output`: collects what an analysis wants released.
//! Nothing here releases anything; the release mode decides after the job.

use crate::arrow_ipc;
use crate::sandbox::bindings::output::{self, EmitError};
use crate::sandbox::job::JobState;
use crate::sandbox::limits::LimitHit;
use crate::sandbox::outcome::Output;

/// Columns one emitted table may have.
const MAX_COLUMNS: usize = 1024;

impl JobState {
    /// Count an emit; trap once the job has used all it may.
    fn count_emit(&mut self) -> wasmtime::Result<()> {
        self.emits += 1;
        if self.emits > self.limits.emits {
            return Err(self.trip(LimitHit::Output));
        }
        Ok(())
    }

    fn check_name(&self, name: &str) -> Result<(), EmitError> {
        let valid = (1..=64).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid {
            return Err(EmitError::InvalidName);
        }
        if self.outputs.iter().any(|o| o.name() == name) {
            return Err(EmitError::DuplicateName);
        }
        Ok(())
    }
}

impl output::Host for JobState {
    fn emit_table(
        &mut self,
        name: String,
        table: Vec<u8>,
    ) -> wasmtime::Result<Result<(), EmitError>> {
        self.count_emit()?;
        if let Err(refusal) = self.check_name(&name) {
            return Ok(Err(refusal));
        }
        if self.output_bytes.saturating_add(table.len()) > self.limits.output_bytes {
            return Err(self.trip(LimitHit::Output));
        }
        let allowance = arrow_ipc::Allowance {
            rows: self.limits.output_rows.saturating_sub(self.output_rows),
            columns: MAX_COLUMNS,
        };
        let batches = match arrow_ipc::decode_untrusted(&table, allowance) {
            Ok((_, batches)) => batches,
            Err(arrow_ipc::Refusal::TooManyRows) => return Err(self.trip(LimitHit::Output)),
            Err(refusal) => {
                tracing::debug!(%refusal, "emitted table refused");
                return Ok(Err(EmitError::InvalidTable));
            }
        };
        let rows = arrow_ipc::row_count(&batches);
        self.output_bytes += table.len();
        self.output_rows += rows;
        self.outputs.push(Output::Table {
            name,
            rows,
            arrow_ipc: table,
        });
        Ok(Ok(()))
    }

    fn emit_value(&mut self, name: String, value: f64) -> wasmtime::Result<Result<(), EmitError>> {
        self.count_emit()?;
        if let Err(refusal) = self.check_name(&name) {
            return Ok(Err(refusal));
        }
        if !value.is_finite() {
            return Ok(Err(EmitError::NotFinite));
        }
        self.outputs.push(Output::Value { name, value });
        Ok(Ok(()))
    }
}
