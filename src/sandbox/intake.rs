//! Module intake: validate an uploaded component before anything runs, and
//! cache its compiled artifact so a module compiles once.
//!
//! Checks, in order, each with its own stable code: size (`module-too-large`),
//! wasm magic (`not-wasm`), component rather than core module
//! (`core-module-not-component`), validation and compilation
//! (`invalid-component`), exports naming exactly one of our worlds
//! (`unknown-world`), and imports limited to that world's interfaces and
//! WASI p2 (`forbidden-import: <name>`).
//!
//! Modules are keyed by the SHA-256 of their bytes. With a module directory
//! the bytes are kept as `<sha256>.wasm` and the compiled artifact as
//! `<sha256>-<engine>.cwasm`, where `<engine>` hashes the wasmtime version and
//! configuration, so an engine change never loads a stale artifact.
//!
//! **Trust:** artifacts are loaded with `Component::deserialize_file`, which
//! runs native code. Only this host writes the module directory; it must not
//! be writable by users.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

/// The guest worlds of `wit/guest.wit`, one per release-mode family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    Analysis,
    BlockAnalysis,
    Model,
    Scorer,
}

impl World {
    pub const ALL: [World; 4] = [
        World::Analysis,
        World::BlockAnalysis,
        World::Model,
        World::Scorer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            World::Analysis => "analysis",
            World::BlockAnalysis => "block-analysis",
            World::Model => "model",
            World::Scorer => "scorer",
        }
    }

    /// The functions a component of this world exports, sorted.
    fn exports(self) -> &'static [&'static str] {
        match self {
            World::Analysis => &["run"],
            World::BlockAnalysis => &["analyze"],
            World::Model => &["predict", "train"],
            World::Scorer => &["score"],
        }
    }

    /// The `datasandbox:guest` interfaces a component of this world may import.
    fn interfaces(self) -> &'static [&'static str] {
        match self {
            World::Analysis => &["types", "data", "output", "diagnostics"],
            _ => &["types", "diagnostics"],
        }
    }

    /// Whether a component of this world may import `name`.
    fn may_import(self, name: &str) -> bool {
        if let Some(rest) = name.strip_prefix("datasandbox:guest/") {
            return rest.split_once('@').is_some_and(|(interface, version)| {
                version == GUEST_PACKAGE_VERSION && self.interfaces().contains(&interface)
            });
        }
        if let Some(rest) = name.strip_prefix("wasi:") {
            // WASI p2 as ordinary toolchains import it; the context behind
            // every interface is empty (see `wasi`).
            return rest
                .split_once('/')
                .is_some_and(|(package, interface_version)| {
                    WASI_PACKAGES.contains(&package)
                        && interface_version
                            .split_once('@')
                            .is_some_and(|(_, version)| version.starts_with("0.2."))
                });
        }
        false
    }
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for World {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        World::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| {
                format!("unknown world {s:?}: use analysis, block-analysis, model or scorer")
            })
    }
}

const GUEST_PACKAGE_VERSION: &str = "0.1.0";
const WASI_PACKAGES: [&str; 6] = ["cli", "clocks", "filesystem", "random", "sockets", "io"];

/// Why a module was refused. The `Display` text is the host-written reason
/// the submitter sees after `invalid-module: `.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("module-too-large: {size} bytes, the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("not-wasm")]
    NotWasm,
    #[error("core-module-not-component")]
    CoreModule,
    #[error("invalid-component")]
    InvalidComponent,
    #[error("unknown-world")]
    UnknownWorld,
    #[error("forbidden-import: {0}")]
    ForbiddenImport(String),
    #[error("too-complex: {0}")]
    TooComplex(String),
    #[error("wrong-world: the job needs {expected}, the module targets {found}")]
    WrongWorld { expected: World, found: World },
    /// The module directory failed; a host problem, not the module's.
    #[error("module store: {0}")]
    Store(#[from] std::io::Error),
}

/// Where a loaded module came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModuleLoad {
    /// Compiled from its bytes now.
    Compiled,
    /// Loaded from the on-disk artifact cache.
    Artifact,
    /// Already loaded by this process.
    Memory,
}

/// Hex SHA-256 of a module's bytes: its identity everywhere.
pub fn module_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Cheap checks that need no compilation.
pub fn check_header(bytes: &[u8], max_bytes: usize) -> Result<(), IntakeError> {
    if bytes.len() > max_bytes {
        return Err(IntakeError::TooLarge {
            size: bytes.len(),
            limit: max_bytes,
        });
    }
    if !bytes.starts_with(b"\0asm") {
        return Err(IntakeError::NotWasm);
    }
    if wasmparser::Parser::is_core_wasm(bytes) {
        return Err(IntakeError::CoreModule);
    }
    if !wasmparser::Parser::is_component(bytes) {
        return Err(IntakeError::NotWasm);
    }
    Ok(())
}

/// What the compiler may be asked to do with one component. Cranelift's
/// time and memory grow faster than linearly with control nesting and
/// function size: a 31 KB module of nested loops took a minute and 1.4 GB
/// to compile. These bounds are checked on the bytes, before compiling.
#[derive(Debug, Clone, Copy)]
pub struct Complexity {
    /// Deepest nesting of `block`, `loop`, `if` and `try` in one function.
    pub max_nesting: usize,
    /// Largest function body, in bytes.
    pub max_function_bytes: usize,
    /// Functions across all core modules of the component.
    pub max_functions: usize,
    /// Locals of one function.
    pub max_locals: u64,
}

impl Default for Complexity {
    fn default() -> Self {
        // The largest real guests (componentize-py's CPython) stay well
        // under these: see the module-intake tests.
        Complexity {
            max_nesting: 1_000,
            max_function_bytes: 2 << 20,
            max_functions: 100_000,
            max_locals: 50_000,
        }
    }
}

/// Walk every core module's code (nested modules included) and refuse a
/// component past `bounds`, or one that does not parse.
pub fn check_complexity(bytes: &[u8], bounds: Complexity) -> Result<(), IntakeError> {
    use wasmparser::{Operator, Parser, Payload};
    let mut functions = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let Payload::CodeSectionEntry(body) = payload.map_err(|_| IntakeError::InvalidComponent)?
        else {
            continue;
        };
        functions += 1;
        if functions > bounds.max_functions {
            return Err(IntakeError::TooComplex("too many functions".into()));
        }
        if body.range().len() > bounds.max_function_bytes {
            return Err(IntakeError::TooComplex(
                "a function body is too large".into(),
            ));
        }
        let mut locals = 0u64;
        for local in body
            .get_locals_reader()
            .map_err(|_| IntakeError::InvalidComponent)?
        {
            let (count, _) = local.map_err(|_| IntakeError::InvalidComponent)?;
            locals += u64::from(count);
            if locals > bounds.max_locals {
                return Err(IntakeError::TooComplex(
                    "a function has too many locals".into(),
                ));
            }
        }
        let mut depth = 0usize;
        let mut operators = body
            .get_operators_reader()
            .map_err(|_| IntakeError::InvalidComponent)?;
        while !operators.eof() {
            match operators
                .read()
                .map_err(|_| IntakeError::InvalidComponent)?
            {
                Operator::Block { .. }
                | Operator::Loop { .. }
                | Operator::If { .. }
                | Operator::Try { .. }
                | Operator::TryTable { .. } => {
                    depth += 1;
                    if depth > bounds.max_nesting {
                        return Err(IntakeError::TooComplex(
                            "control flow nests too deep".into(),
                        ));
                    }
                }
                Operator::End => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    Ok(())
}

/// The world a compiled component targets, judged by its exports, after
/// checking its imports against what that world (and WASI p2) provides.
pub fn classify_component(engine: &Engine, component: &Component) -> Result<World, IntakeError> {
    let ty = component.component_type();
    let mut exports: Vec<&str> = ty
        .exports(engine)
        .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentFunc(_)))
        .map(|(name, _)| name)
        .collect();
    let other_exports = ty
        .exports(engine)
        .filter(|(_, item)| !inert(&item.ty))
        .count();
    exports.sort_unstable();
    // Imports first: a component that asks for something we never provide
    // is refused by that name, whatever it exports.
    for (name, _) in ty.imports(engine) {
        if !World::ALL.into_iter().any(|w| w.may_import(name)) {
            return Err(IntakeError::ForbiddenImport(printable(name)));
        }
    }
    let world = World::ALL
        .into_iter()
        .find(|w| other_exports == 0 && w.exports() == exports.as_slice())
        .ok_or(IntakeError::UnknownWorld)?;
    for (name, _) in ty.imports(engine) {
        if !world.may_import(name) {
            return Err(IntakeError::ForbiddenImport(printable(name)));
        }
    }
    Ok(world)
}

/// Whether an export other than a function can be left alone: a type, or an
/// exported instance. The host calls only the world's top-level functions,
/// by name, through typed bindings; nothing inside an exported instance is
/// ever reached. componentize-py exports one (`exports`: its binding
/// metadata and the `init` its build-time snapshot ran).
fn inert(item: &ComponentItem) -> bool {
    matches!(
        item,
        ComponentItem::ComponentFunc(_)
            | ComponentItem::Type(_)
            | ComponentItem::ComponentInstance(_)
    )
}

/// An import name is the submitter's own text; still, keep it short and
/// printable before it goes into a message.
fn printable(name: &str) -> String {
    name.chars()
        .take(128)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// The on-disk home of module bytes and compiled artifacts.
#[derive(Debug, Clone)]
pub struct ModuleStore {
    dir: PathBuf,
    engine_tag: String,
}

impl ModuleStore {
    pub fn open(dir: &Path, engine: &Engine) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(ModuleStore {
            dir: dir.to_path_buf(),
            engine_tag: format!("{:016x}", hasher.finish()),
        })
    }

    fn artifact_path(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}-{}.cwasm", self.engine_tag))
    }

    /// Whether a compiled artifact of the module is on disk.
    pub fn has_artifact(&self, hash: &str) -> bool {
        self.artifact_path(hash).exists()
    }

    /// The module's bytes, if stored.
    pub fn module_bytes(&self, hash: &str) -> Option<Vec<u8>> {
        std::fs::read(self.dir.join(format!("{hash}.wasm"))).ok()
    }

    /// Load a compiled artifact written by [`ModuleStore::save`].
    pub fn load_artifact(&self, engine: &Engine, hash: &str) -> Option<Component> {
        let path = self.artifact_path(hash);
        if !path.exists() {
            return None;
        }
        // SAFETY: the artifact was produced by `Component::serialize` of an
        // engine with the same compatibility hash (it is in the file name),
        // and only this host writes the module directory (see module docs).
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => Some(component),
            Err(error) => {
                tracing::warn!(%hash, %error, "unreadable module artifact; recompiling");
                None
            }
        }
    }

    /// Keep the module's bytes and compiled artifact, each written to a
    /// temporary file and renamed into place so a crash leaves no torn file.
    pub fn save(&self, hash: &str, bytes: &[u8], component: &Component) -> std::io::Result<()> {
        let artifact = component.serialize().map_err(std::io::Error::other)?;
        write_atomically(&self.dir.join(format!("{hash}.wasm")), bytes)?;
        write_atomically(&self.artifact_path(hash), &artifact)
    }
}

/// Write through a uniquely named temporary file in the same directory and
/// rename it into place: concurrent writers of one artifact (two loads in one
/// process, or two processes sharing a store) never share a temporary file,
/// and a crash leaves no torn file under the final name.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checks_name_the_problem() {
        assert!(matches!(
            check_header(b"hello", 100),
            Err(IntakeError::NotWasm)
        ));
        assert!(matches!(
            check_header(b"\0asm\x01\0\0\0", 100),
            Err(IntakeError::CoreModule)
        ));
        assert!(matches!(
            check_header(&[0; 200], 100),
            Err(IntakeError::TooLarge {
                size: 200,
                limit: 100
            })
        ));
        assert!(check_header(b"\0asm\x0d\0\x01\0", 100).is_ok());
    }

    #[test]
    fn imports_are_limited_to_the_world_and_wasi_p2() {
        assert!(World::Analysis.may_import("datasandbox:guest/data@0.1.0"));
        assert!(!World::Scorer.may_import("datasandbox:guest/data@0.1.0"));
        assert!(!World::Analysis.may_import("datasandbox:guest/data@0.2.0"));
        assert!(World::Model.may_import("wasi:filesystem/types@0.2.9"));
        assert!(!World::Model.may_import("wasi:http/outgoing-handler@0.2.0"));
        assert!(!World::Model.may_import("wasi:cli/environment@0.3.0"));
        assert!(!World::Model.may_import("evil:net/raw"));
    }

    #[test]
    fn import_names_are_made_printable() {
        assert_eq!(printable("a\nb\u{7}c"), "a?b?c");
        assert_eq!(printable(&"x".repeat(500)).len(), 128);
    }
}
