//! Printing what a job released, for the CLI's commands and the demo.

use std::io::Write;

use datasandbox::sandbox::Output;

/// Print outputs as tables and `name = value` lines.
pub fn print_outputs(outputs: &[Output], out: &mut impl Write) -> anyhow::Result<()> {
    for output in outputs {
        match output {
            Output::Table {
                name,
                rows,
                arrow_ipc,
            } => {
                let (_, batches) = datasandbox::arrow_ipc::decode(arrow_ipc)?;
                writeln!(out, "   table {name} ({rows} rows):")?;
                let table = datafusion::arrow::util::pretty::pretty_format_batches(&batches)?;
                for line in table.to_string().lines() {
                    writeln!(out, "   {line}")?;
                }
            }
            Output::Value { name, value } => writeln!(out, "   {name} = {value}")?,
            Output::Grade { name, grade } => writeln!(out, "   {name} = grade {grade}")?,
        }
    }
    Ok(())
}
