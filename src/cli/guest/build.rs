//! `dsb guest build --python`: a Python module into a guest component.
//!
//! componentize-py (from the Python package registry) does the work: it
//! bundles CPython, the app and the SDK, runs the app's imports once and
//! snapshots the interpreter into a component. This module stages what it
//! needs in a scratch directory (the WIT of `wit/guest.wit` and the Python
//! SDK of `sandbox-guests/python`, both compiled into `dsb`, and a two-line
//! entry module that adapts the app's plain functions to the world) and
//! reports what it built. The result goes through the same intake as any
//! upload; nothing here is trusted by the host.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use datasandbox::sandbox::{World, intake};

/// The componentize-py release the SDK is written and tested against.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

const GUEST_WIT: &str = include_str!("../../../wit/guest.wit");
const SDK_FILES: [(&str, &str); 3] = [
    (
        "__init__.py",
        include_str!("../../../sandbox-guests/python/datasandbox_guest/__init__.py"),
    ),
    (
        "_entry.py",
        include_str!("../../../sandbox-guests/python/datasandbox_guest/_entry.py"),
    ),
    (
        "arrow.py",
        include_str!("../../../sandbox-guests/python/datasandbox_guest/arrow.py"),
    ),
];

/// Where `scripts/python-env` installs componentize-py, relative to the
/// repository root.
pub const LOCAL_VENV_TOOL: &str = "target/python-guests/venv/bin/componentize-py";

/// What to build.
#[derive(Debug, Clone)]
pub struct PythonBuild {
    /// The app: a `.py` file defining the world's functions.
    pub app: PathBuf,
    pub world: World,
    pub out: PathBuf,
    /// More directories to search for pure-Python modules the app imports.
    pub paths: Vec<PathBuf>,
    /// The componentize-py executable; found on `PATH` or in
    /// [`LOCAL_VENV_TOOL`] when not given.
    pub componentize_py: Option<PathBuf>,
}

/// What was built.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub out: PathBuf,
    pub bytes: usize,
    pub sha256: String,
    pub elapsed: Duration,
    pub tool: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum GuestBuildError {
    #[error(
        "componentize-py not found{searched}. Install it with\n    \
         python3 -m pip install componentize-py=={COMPONENTIZE_PY_VERSION}\n\
         (or run scripts/python-env, which installs it into {LOCAL_VENV_TOOL}), \
         or point --componentize-py / DSB_COMPONENTIZE_PY at it"
    )]
    ToolMissing { searched: String },
    #[error(
        "{tool} is componentize-py {found}; the SDK needs {COMPONENTIZE_PY_VERSION} \
         (python3 -m pip install componentize-py=={COMPONENTIZE_PY_VERSION})"
    )]
    WrongVersion { tool: String, found: String },
    #[error("{0} is not a Python file (expected app.py)")]
    NotPython(PathBuf),
    #[error(
        "{0}: the file name must be a Python module name (letters, digits, underscores; not starting with a digit)"
    )]
    BadModuleName(PathBuf),
    #[error("componentize-py failed:\n{0}")]
    Failed(String),
    #[error("{context}: {error}")]
    Io {
        context: String,
        error: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> GuestBuildError {
    let context = context.into();
    move |error| GuestBuildError::Io { context, error }
}

/// Find componentize-py: the explicit path, then `PATH`, then the local venv.
pub fn find_componentize_py(explicit: Option<&Path>) -> Result<PathBuf, GuestBuildError> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(GuestBuildError::ToolMissing {
                searched: format!(" at {}", path.display()),
            })
        };
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("componentize-py"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_default();
    if let Some(found) = on_path {
        return Ok(found);
    }
    let local = PathBuf::from(LOCAL_VENV_TOOL);
    if local.is_file() {
        return Ok(local);
    }
    Err(GuestBuildError::ToolMissing {
        searched: format!(" on PATH or at {LOCAL_VENV_TOOL}"),
    })
}

/// Build `spec.app` into a component of `spec.world` at `spec.out`.
pub fn build_python(spec: &PythonBuild) -> Result<BuildReport, GuestBuildError> {
    if spec.app.extension().and_then(|e| e.to_str()) != Some("py") || !spec.app.is_file() {
        return Err(GuestBuildError::NotPython(spec.app.clone()));
    }
    let module = spec
        .app
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| is_module_name(s))
        .ok_or_else(|| GuestBuildError::BadModuleName(spec.app.clone()))?
        .to_string();
    // Absolute: componentize-py runs in the scratch directory.
    let tool = absolute(&find_componentize_py(spec.componentize_py.as_deref())?)?;
    check_version(&tool)?;

    let scratch = tempfile::tempdir().map_err(io("creating a scratch directory"))?;
    let wit_dir = scratch.path().join("wit");
    let sdk_dir = scratch.path().join("sdk");
    let package = sdk_dir.join("datasandbox_guest");
    std::fs::create_dir_all(&wit_dir).map_err(io("staging the WIT"))?;
    std::fs::create_dir_all(&package).map_err(io("staging the SDK"))?;
    std::fs::write(wit_dir.join("guest.wit"), GUEST_WIT).map_err(io("staging the WIT"))?;
    for (name, text) in SDK_FILES {
        std::fs::write(package.join(name), text).map_err(io("staging the SDK"))?;
    }
    let entry_dir = scratch.path().join("entry");
    std::fs::create_dir_all(&entry_dir).map_err(io("staging the entry module"))?;
    std::fs::write(
        entry_dir.join("dsb_entry.py"),
        format!(
            "# Generated by dsb guest build.\n\
             import datasandbox_guest._entry\n\
             import {module}\n\
             WitWorld = datasandbox_guest._entry.world_class({world:?}, {module})\n",
            world = spec.world.name(),
        ),
    )
    .map_err(io("staging the entry module"))?;
    let app_dir = absolute(spec.app.parent().unwrap_or(Path::new(".")))?;
    let out = absolute(&spec.out)?;

    let mut command = Command::new(&tool);
    command
        .current_dir(scratch.path())
        .arg("-d")
        .arg(&wit_dir)
        .arg("-w")
        .arg(spec.world.name())
        .arg("componentize")
        .arg("dsb_entry")
        .arg("-p")
        .arg(&entry_dir)
        .arg("-p")
        .arg(&sdk_dir)
        .arg("-p")
        .arg(&app_dir);
    for path in &spec.paths {
        command.arg("-p").arg(absolute(path)?);
    }
    command.arg("-o").arg(&out);
    let started = Instant::now();
    let result = command
        .output()
        .map_err(io(format!("running {}", tool.display())))?;
    let elapsed = started.elapsed();
    if !result.status.success() {
        let mut text = String::from_utf8_lossy(&result.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&result.stdout));
        return Err(GuestBuildError::Failed(text.trim().to_string()));
    }
    let bytes = std::fs::read(&out).map_err(io(format!("reading {}", out.display())))?;
    Ok(BuildReport {
        out,
        bytes: bytes.len(),
        sha256: intake::module_hash(&bytes),
        elapsed,
        tool,
    })
}

fn check_version(tool: &Path) -> Result<(), GuestBuildError> {
    let output = Command::new(tool)
        .arg("--version")
        .output()
        .map_err(io(format!("running {} --version", tool.display())))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let found = text.split_whitespace().last().unwrap_or("").to_string();
    if found != COMPONENTIZE_PY_VERSION {
        return Err(GuestBuildError::WrongVersion {
            tool: tool.display().to_string(),
            found: if found.is_empty() {
                "of an unknown version".into()
            } else {
                found
            },
        });
    }
    Ok(())
}

fn absolute(path: &Path) -> Result<PathBuf, GuestBuildError> {
    std::path::absolute(path).map_err(io(format!("resolving {}", path.display())))
}

fn is_module_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !matches!(name, "dsb_entry" | "datasandbox_guest" | "wit_world")
}
