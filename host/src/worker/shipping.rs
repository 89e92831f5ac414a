//! What a Ray job gets: a `working_dir` package with the runner executable
//! (unless the nodes have it installed) and the task module, one package per
//! (module sha256, runner hash), built once per process and named by content
//! hash; the input and limits go in `runtime_env.env_vars` (user text
//! base64-encoded: Ray expands `$VAR` in those values).

use crate::ray::{Package, PackageEntry, PackageError};
use crate::runtime::Limits;
use crate::runtime::subtasks::SubtaskPlan;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The runner's file name inside the working dir.
pub const RUNNER_FILE: &str = "wasmq";
/// The small runner's file name, next to `wasmq` where it is built or
/// installed.
pub const SMALL_RUNNER: &str = "wasmq-runner";
/// Where a package keeps the module's precompiled artifact, named as the
/// runner's disk cache names it (which names the engine it is for).
pub const ARTIFACT_DIR: &str = "precompiled";
/// The module's file name inside the working dir.
pub const MODULE_FILE: &str = "task.wasm";
/// The input's file name when it does not fit in an environment variable.
pub const INPUT_FILE: &str = "input.json";
/// Where a job's subtask plan is when it is too large for the environment.
pub const SUBTASKS_FILE: &str = "subtasks.json";
/// The worker's extra CA certificates for outbound HTTP, when too long
/// for the environment.
pub const HTTP_CA_FILE: &str = "http-ca.pem";
/// The sealed secrets of a job, when too long for the environment.
pub const SECRETS_FILE: &str = "secrets.json";
/// A job's batch (its tasks, [`BatchItem`]s), when too long for the
/// environment.
pub const BATCH_FILE: &str = "batch.json";
/// Inputs up to this many bytes travel in `WASMQ_EXEC_INPUT_B64` (4/3 as
/// many bytes once encoded); larger ones in a per-task package (Linux caps
/// one environment string at 128 KiB, and Ray repeats the runtime_env inside
/// another variable).
pub const DEFAULT_INPUT_ENV_MAX: usize = 64 * 1024;
/// Prefix of package names.
const PACKAGE_PREFIX: &str = "wasmq";

/// One task of a job's batch, as it travels to the runner: everything that
/// differs between tasks of one module and queue. What they share (the
/// module, its grants) travels once per job.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BatchItem {
    pub task_id: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub queue: String,
    pub input: String,
    pub limits: Limits,
    /// The task's recorded children and what a child inherits; `None`
    /// refuses spawns.
    pub subtasks: Option<SubtaskPlan>,
}

/// How the job's entrypoint finds `wasmq`.
#[derive(Debug, Clone)]
pub enum RunnerSource {
    /// Ship this executable in every package (default: the running binary).
    Ship(PathBuf),
    /// The nodes have `wasmq` at this absolute path; ship only the module.
    Installed(String),
}

/// The runner as shipped: read, hashed and compressed once per process.
pub struct Runner {
    source: RunnerSource,
    /// A package holding only the runner, and the runner's sha256, when
    /// shipped. Module packages copy its compressed entry.
    shipped: Option<(Package, String)>,
    packages: Mutex<HashMap<String, Arc<Package>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ShippingError {
    #[error("cannot read the runner executable {}: {message}", path.display())]
    Runner { path: PathBuf, message: String },
    #[error(
        "--ray-runner-installed {0:?} must be an absolute path of letters, digits, '/', '.', '_', '-' \
         (it becomes part of the job's command line)"
    )]
    InstalledPath(String),
    #[error(transparent)]
    Package(#[from] PackageError),
}

impl Runner {
    pub fn new(source: RunnerSource) -> Result<Runner, ShippingError> {
        let shipped = match &source {
            RunnerSource::Ship(path) => {
                let bytes = std::fs::read(path).map_err(|e| ShippingError::Runner {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                let bytes = match without_debug_info(&bytes) {
                    Some(stripped) => {
                        tracing::info!(runner = %path.display(), bytes = bytes.len(),
                            shipped = stripped.len(), "shipping the runner stripped of its debug info and symbols");
                        stripped
                    }
                    None => bytes,
                };
                let hash = hex::encode(Sha256::digest(&bytes));
                let package = Package::build(
                    PACKAGE_PREFIX,
                    &[PackageEntry {
                        path: RUNNER_FILE.into(),
                        bytes: Bytes::from(bytes),
                        mode: 0o755,
                    }],
                )?;
                Some((package, hash))
            }
            RunnerSource::Installed(p) => {
                let safe = p.starts_with('/')
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b));
                if !safe {
                    return Err(ShippingError::InstalledPath(p.clone()));
                }
                None
            }
        };
        Ok(Runner {
            source,
            shipped,
            packages: Mutex::new(HashMap::new()),
        })
    }

    /// What a cluster worker ships by default: `wasmq-runner` from the
    /// running binary's folder (the small runner: `wasmq exec` only), else
    /// the running binary itself.
    pub fn default_exe() -> Result<PathBuf, ShippingError> {
        let exe = Self::current_exe()?;
        let small = exe.with_file_name(SMALL_RUNNER);
        Ok(if check_executable(&small).is_ok() {
            small
        } else {
            exe
        })
    }

    /// The running binary.
    pub fn current_exe() -> Result<PathBuf, ShippingError> {
        std::env::current_exe().map_err(|e| ShippingError::Runner {
            path: PathBuf::from("(current executable)"),
            message: e.to_string(),
        })
    }

    /// The job's fixed command line. It holds no task data: that travels in
    /// environment variables and files.
    pub fn entrypoint(&self) -> String {
        match &self.source {
            RunnerSource::Ship(_) => format!("./{RUNNER_FILE} exec"),
            RunnerSource::Installed(path) => format!("{path} exec"),
        }
    }

    /// The sha256 of the shipped runner, or the installed path.
    pub fn identity(&self) -> String {
        match (&self.shipped, &self.source) {
            (Some((_, hash)), _) => hash.clone(),
            (None, RunnerSource::Installed(p)) => p.clone(),
            (None, RunnerSource::Ship(p)) => p.display().to_string(),
        }
    }

    /// The package of module `sha256`, if built already.
    pub fn built(&self, sha256: &str) -> Option<Arc<Package>> {
        self.packages.lock().unwrap().get(sha256).cloned()
    }

    /// The package of `module` (runner + module, and the module's
    /// precompiled `artifact` — file name and bytes — under
    /// [`ARTIFACT_DIR`] when there is one), built on first use.
    pub fn package(
        &self,
        sha256: &str,
        module: &[u8],
        artifact: Option<&(String, Vec<u8>)>,
    ) -> Result<Arc<Package>, ShippingError> {
        if let Some(p) = self.built(sha256) {
            return Ok(p);
        }
        let mut entry = vec![PackageEntry {
            path: MODULE_FILE.into(),
            bytes: Bytes::copy_from_slice(module),
            mode: 0o644,
        }];
        if let Some((name, bytes)) = artifact {
            entry.push(PackageEntry {
                path: format!("{ARTIFACT_DIR}/{name}"),
                bytes: Bytes::copy_from_slice(bytes),
                mode: 0o644,
            });
        }
        let p = Arc::new(match &self.shipped {
            Some((runner, _)) => runner.extended(PACKAGE_PREFIX, &entry)?,
            None => Package::build(PACKAGE_PREFIX, &entry)?,
        });
        self.packages
            .lock()
            .unwrap()
            .insert(sha256.to_string(), p.clone());
        Ok(p)
    }

    /// `package` plus files (`(path, text)`): an input or a subtask plan too
    /// large for the environment.
    pub fn package_with_files(
        base: &Package,
        files: &[(&str, &str)],
    ) -> Result<Package, ShippingError> {
        let entries: Vec<PackageEntry> = files
            .iter()
            .map(|(path, text)| PackageEntry {
                path: (*path).into(),
                bytes: Bytes::copy_from_slice(text.as_bytes()),
                mode: 0o644,
            })
            .collect();
        Ok(base.extended("wasmq-input", &entries)?)
    }
}

/// `elf` stripped of its debug info and its static symbol table (what
/// `strip` removes), or `None` when it has neither or is not an ELF file
/// this can rewrite (then it ships as it is). Code, dynamic symbols and
/// unwind tables stay.
pub fn without_debug_info(elf: &[u8]) -> Option<Vec<u8>> {
    let mut builder = object::build::elf::Builder::read(elf).ok()?;
    let mut any = false;
    for section in builder.sections.iter_mut() {
        let name = section.name.as_slice();
        if name.starts_with(b".debug_") || name == b".symtab" || name == b".strtab" {
            section.delete = true;
            any = true;
        }
    }
    if !any {
        return None;
    }
    for symbol in builder.symbols.iter_mut() {
        symbol.delete = true;
    }
    builder.delete_orphans();
    let mut out = Vec::new();
    builder.write(&mut out).ok()?;
    Some(out)
}

/// Whether `path` names an executable file (for a clear error at start-up).
pub fn check_executable(path: &Path) -> Result<(), ShippingError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| ShippingError::Runner {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(ShippingError::Runner {
            path: path.to_path_buf(),
            message: "not an executable file".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installed_paths_must_be_plain() {
        assert!(Runner::new(RunnerSource::Installed("/opt/wasmq/bin/wasmq".into())).is_ok());
        for bad in ["wasmq", "/opt/x; rm -rf /", "/opt/$(id)", "/a b"] {
            assert!(
                Runner::new(RunnerSource::Installed(bad.into())).is_err(),
                "{bad}"
            );
        }
        let r = Runner::new(RunnerSource::Installed("/usr/bin/wasmq".into())).unwrap();
        assert_eq!(r.entrypoint(), "/usr/bin/wasmq exec");
    }

    #[test]
    fn a_runner_without_debug_info_still_runs() {
        use std::os::unix::fs::PermissionsExt;
        // This test binary: a release build with line tables.
        let exe = std::env::current_exe().unwrap();
        let bytes = std::fs::read(&exe).unwrap();
        let stripped = without_debug_info(&bytes).expect("it has debug info");
        assert!(
            stripped.len() < bytes.len(),
            "{} ≥ {}",
            stripped.len(),
            bytes.len()
        );
        assert!(
            without_debug_info(&stripped).is_none(),
            "nothing left to strip"
        );
        assert!(without_debug_info(b"#!/bin/sh\n").is_none(), "not ELF");
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("stripped");
        std::fs::write(&copy, &stripped).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = std::process::Command::new(&copy)
            .args(["--list", "a_runner_without_debug_info_still_runs"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("still_runs"));
    }

    #[test]
    fn one_package_per_module_with_the_runner_executable() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("runner");
        std::fs::write(&exe, b"#!/bin/sh\necho hi\n").unwrap();
        let r = Runner::new(RunnerSource::Ship(exe)).unwrap();
        assert_eq!(r.entrypoint(), "./wasmq exec");
        let art = ("x.cwasm".to_string(), b"artifact".to_vec());
        let a = r.package(&"a".repeat(64), b"module a", Some(&art)).unwrap();
        let a2 = r.package(&"a".repeat(64), b"module a", None).unwrap();
        let b = r.package(&"b".repeat(64), b"module b", None).unwrap();
        assert!(Arc::ptr_eq(&a, &a2));
        assert_ne!(a.name, b.name);
        let with_input = Runner::package_with_files(&a, &[(INPUT_FILE, "{}")]).unwrap();
        assert_ne!(with_input.name, a.name);
    }
}
