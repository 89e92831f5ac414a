//! Turning bytes into a runnable task module, with a distinct error for each
//! way a file can fail to be one.

use super::state::{HostState, TaskPre};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

/// Why a file is not a usable task module.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ModuleError {
    #[error("empty file: a task module is a WebAssembly component, but this file has 0 bytes")]
    Empty,
    #[error("not a WebAssembly file: expected the magic bytes `\\0asm`, found {found}")]
    NotWasm { found: String },
    #[error(
        "this is a core WebAssembly module, not a component: build the task for \
         wasm32-wasip2 (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule,
    #[error("unsupported WebAssembly version/layer bytes {0}")]
    UnknownVersion(String),
    #[error("the component does not compile: {0}")]
    Compile(String),
    #[error(
        "the component does not export `run` (its exports: {exports}); a task must \
         target the world `wasmq:task/task`"
    )]
    MissingExport { exports: String },
    #[error(
        "the component's `run` export has the wrong type for the world `wasmq:task/task` \
         (expected `run: func(input: string) -> result<string, task-error>`): {0}"
    )]
    WrongExportType(String),
    #[error("the component imports something the host does not provide: {0}")]
    UnsupportedImport(String),
    #[error(
        "the component needs more instances, memories or tables, or larger ones, than this \
         host allows per run: {0}"
    )]
    InstanceLimits(String),
    #[error("the component could not be compiled within this host's budget: {0}")]
    CompileBudget(String),
}

impl ModuleError {
    /// A short stable code for scripts and tests.
    pub fn reason(&self) -> &'static str {
        match self {
            ModuleError::Empty => "empty",
            ModuleError::NotWasm { .. } => "not-wasm",
            ModuleError::CoreModule => "core-module",
            ModuleError::UnknownVersion(_) => "unknown-version",
            ModuleError::Compile(_) => "compile-error",
            ModuleError::MissingExport { .. } => "missing-export",
            ModuleError::WrongExportType(_) => "wrong-export-type",
            ModuleError::UnsupportedImport(_) => "unsupported-import",
            ModuleError::InstanceLimits(_) => "instance-limits",
            ModuleError::CompileBudget(_) => "compile-budget",
        }
    }
}

/// A module ready to instantiate: compiled, linked and type-checked.
///
/// It is linked once per linker it runs with: without `wasi:http` (every
/// run), and with it for runs granted outbound HTTP (on the first such run).
pub struct LoadedModule {
    pub sha256: String,
    component: Component,
    /// Linked without `wasi:http`; `None` when the component imports it.
    pre: Option<TaskPre<HostState>>,
    /// Linked with `wasi:http`, for runs with an HTTP grant.
    http_pre: OnceLock<Result<TaskPre<HostState>, ModuleError>>,
    /// The `wasi:http` interfaces the component imports.
    http_imports: Vec<String>,
}

impl LoadedModule {
    /// The `InstancePre` for a run: `http_linker` is the linker with
    /// `wasi:http`, given only when the run has an HTTP grant. A component
    /// that imports `wasi:http` cannot run without one: the error names the
    /// imports and the flag that grants them.
    pub(super) fn pre(
        &self,
        http_linker: Option<&Linker<HostState>>,
    ) -> Result<&TaskPre<HostState>, String> {
        match http_linker {
            None => self.pre.as_ref().ok_or_else(|| {
                format!(
                    "the component imports {} (outbound HTTP), which this run is not granted; \
                     the operator grants it host by host, with `wasmq module grant NAME \
                     --allow-http URL` for queued tasks or `wasmq run --allow-http URL`",
                    self.http_imports_named()
                )
            }),
            Some(linker) => self
                .http_pre
                .get_or_init(|| link_pre(linker, &self.component))
                .as_ref()
                .map_err(|e| e.to_string()),
        }
    }

    /// The `wasi:http` interfaces the component imports (empty for most).
    pub fn http_imports(&self) -> &[String] {
        &self.http_imports
    }

    /// [`Self::http_imports`] as error messages name them: `` `a`, `b` ``.
    pub fn http_imports_named(&self) -> String {
        self.http_imports
            .iter()
            .map(|i| format!("`{i}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModule")
            .field("sha256", &self.sha256)
            .finish()
    }
}

/// Hex SHA-256 of a module's bytes: its identity everywhere in wasmq.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Cheap checks on the header, so that the common mistakes get a precise
/// message instead of a compiler error.
pub fn check_header(bytes: &[u8]) -> Result<(), ModuleError> {
    if bytes.is_empty() {
        return Err(ModuleError::Empty);
    }
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        let head = &bytes[..bytes.len().min(4)];
        return Err(ModuleError::NotWasm {
            found: format!("{head:02x?}"),
        });
    }
    match &bytes[4..8] {
        [0x01, 0x00, 0x00, 0x00] => Err(ModuleError::CoreModule),
        [_, _, 0x01, 0x00] => Ok(()),
        other => Err(ModuleError::UnknownVersion(format!("{other:02x?}"))),
    }
}

pub(super) fn compile(engine: &Engine, bytes: &[u8]) -> Result<Component, ModuleError> {
    check_header(bytes)?;
    Component::new(engine, bytes).map_err(|e| {
        let message = format!("{e:#}");
        if is_instance_limit(&message) {
            ModuleError::InstanceLimits(message)
        } else {
            ModuleError::Compile(message)
        }
    })
}

/// Whether an error is wasmtime refusing a component for this host's
/// per-run bounds: the pooling allocator's (checked when the component is
/// created) or the store's counts of instances, memories and tables
/// (checked as it is instantiated). Valid WebAssembly, but never runnable
/// here.
pub(super) fn is_instance_limit(message: &str) -> bool {
    const PHRASES: [&str; 5] = [
        "in the pooling allocator",
        "exceeds the per-instance limit",
        "exceeds the total tables limit",
        "which exceeds the limit of",
        "count too high",
    ];
    PHRASES.iter().any(|p| message.contains(p))
}

/// Links a compiled component against the host and checks its `run` export.
/// A component importing `wasi:http` is linked with `http_linker` (and
/// runs only with a grant); any other is linked with `linker`.
pub(super) fn link(
    engine: &Engine,
    linker: &Linker<HostState>,
    http_linker: &Linker<HostState>,
    sha256: String,
    component: Component,
) -> Result<LoadedModule, ModuleError> {
    if component.get_export_index(None, "run").is_none() {
        let exports: Vec<String> = component
            .component_type()
            .exports(engine)
            .map(|(name, _)| format!("`{name}`"))
            .collect();
        let exports = if exports.is_empty() {
            "none".to_string()
        } else {
            exports.join(", ")
        };
        return Err(ModuleError::MissingExport { exports });
    }
    let http_imports: Vec<String> = component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .filter(|name| name.starts_with("wasi:http/"))
        .collect();
    let http_pre = OnceLock::new();
    let pre = if http_imports.is_empty() {
        Some(link_pre(linker, &component)?)
    } else {
        // Linked now, so that a component whose `wasi:http` imports do not
        // match the host's is refused at load, naming them.
        let pre = link_pre(http_linker, &component).map_err(|e| match e {
            ModuleError::UnsupportedImport(m) => {
                ModuleError::UnsupportedImport(format!("{}: {m}", http_imports.join(", ")))
            }
            other => other,
        })?;
        let _ = http_pre.set(Ok(pre));
        None
    };
    Ok(LoadedModule {
        sha256,
        component,
        pre,
        http_pre,
        http_imports,
    })
}

fn link_pre(
    linker: &Linker<HostState>,
    component: &Component,
) -> Result<TaskPre<HostState>, ModuleError> {
    let pre = linker
        .instantiate_pre(component)
        .map_err(|e| ModuleError::UnsupportedImport(format!("{e:#}")))?;
    TaskPre::new(pre).map_err(|e| ModuleError::WrongExportType(format!("{e:#}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_errors_are_distinct() {
        assert_eq!(check_header(b""), Err(ModuleError::Empty));
        assert_eq!(
            check_header(b"hello world").unwrap_err().reason(),
            "not-wasm"
        );
        assert_eq!(
            check_header(b"\0asm\x01\0\0\0"),
            Err(ModuleError::CoreModule)
        );
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }
}
