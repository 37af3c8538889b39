//! `dsb guest build`: Python guests into components with componentize-py.

use std::path::PathBuf;

use clap::Subcommand;
use datasandbox::sandbox::World;

mod build;

#[derive(Subcommand)]
pub enum GuestCommand {
    /// Build a Python module into a component with componentize-py
    /// (`pip install componentize-py==0.25.1`, or `scripts/python-env`).
    /// Rust guests build with `cargo build --target wasm32-wasip2`.
    Build {
        /// The app: a .py file defining the world's functions
        /// (see sandbox-guests/python/README.md).
        #[arg(long)]
        python: PathBuf,
        /// analysis, block-analysis, model or scorer.
        #[arg(long)]
        world: World,
        /// Where to write the component.
        #[arg(short, long)]
        out: PathBuf,
        /// More directories of pure-Python modules to bundle.
        #[arg(long = "path")]
        paths: Vec<PathBuf>,
        /// The componentize-py executable (default: PATH, then
        /// target/python-guests/venv).
        #[arg(long, env = "DSB_COMPONENTIZE_PY")]
        componentize_py: Option<PathBuf>,
    },
}

pub fn run(command: GuestCommand) -> anyhow::Result<()> {
    let GuestCommand::Build {
        python,
        world,
        out,
        paths,
        componentize_py,
    } = command;
    let report = build::build_python(&build::PythonBuild {
        app: python,
        world,
        out,
        paths,
        componentize_py,
    })?;
    println!(
        "built {} ({world}, {:.1} MB, sha256 {}) in {:.1} s with {}",
        report.out.display(),
        report.bytes as f64 / 1e6,
        report.sha256,
        report.elapsed.as_secs_f64(),
        report.tool.display()
    );
    Ok(())
}
