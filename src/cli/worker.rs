//! `dsb worker`: one supervised worker process (started by `dsb serve`,
//! never by hand). Reads guest calls on stdin, answers on stdout.

use std::path::PathBuf;

use clap::Args;

/// Run guest calls for a server (internal: `dsb serve` starts these).
#[derive(Args)]
pub struct WorkerArgs {
    #[arg(long)]
    data_dir: PathBuf,
    /// RLIMIT_DATA, bytes.
    #[arg(long)]
    memory_bytes: u64,
    /// RLIMIT_NOFILE.
    #[arg(long)]
    open_files: u64,
    /// RLIMIT_CPU of a call: its wall-clock limit times this.
    #[arg(long)]
    cpu_cores_per_call: u32,
}

pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    datasandbox::worker::serve(datasandbox::worker::WorkerArgs {
        data_dir: args.data_dir,
        memory_bytes: args.memory_bytes,
        open_files: args.open_files,
        cpu_cores_per_call: args.cpu_cores_per_call,
    })
    .await?;
    Ok(())
}
