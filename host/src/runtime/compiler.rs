//! Compiling a component, bounded: at most N compilations at once, and,
//! for the `wasmq` binary, each one in a child process with a time and a
//! memory budget.
//!
//! Compilation runs before any task limit applies, on bytes anyone with
//! push rights chose: 50 MB of code in ten functions compiles for about two
//! minutes in 1.8 GiB. In a child process the budget can be enforced (the
//! process is killed at the deadline, and its data segment is capped with
//! `RLIMIT_DATA`), and a compiler that runs out of memory takes down only
//! itself. The child is the same binary (`wasmq compile-module`, hidden), so
//! its engine is configured exactly like the parent's and the artifact it
//! writes deserializes here.

use super::module::{ModuleError, check_header, is_instance_limit};
use std::io::Read;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Longest a compilation may take in a child process: several times what
/// the largest real components here (Python and JavaScript, about 40 MB)
/// take on 2 busy cores.
pub const DEFAULT_COMPILE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most memory (data segment) a compiling child process may use.
pub const DEFAULT_COMPILE_MEMORY_BYTES: u64 = 2 << 30;
/// Compilations at once per process: each takes every core it can get.
pub const DEFAULT_COMPILE_CONCURRENCY: usize = 2;
/// Exit code of `wasmq compile-module` when the bytes do not compile; its
/// stderr then holds the compiler's message.
pub const EXIT_DOES_NOT_COMPILE: i32 = 3;
/// Most of a compiling child's stderr kept for an error message.
const MAX_CHILD_STDERR: usize = 16 * 1024;

/// Where compilations run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compiler {
    /// On a blocking thread of this process, unbounded in time and memory:
    /// the library's default (tests, embedders without a `wasmq` binary).
    InProcess,
    /// In a child process, `program compile-module`, within `budget`.
    Process {
        program: PathBuf,
        budget: CompileBudget,
    },
}

/// What one compilation in a child process may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileBudget {
    pub timeout: Duration,
    pub memory_bytes: u64,
}

impl Default for CompileBudget {
    fn default() -> Self {
        CompileBudget {
            timeout: DEFAULT_COMPILE_TIMEOUT,
            memory_bytes: DEFAULT_COMPILE_MEMORY_BYTES,
        }
    }
}

impl CompileBudget {
    /// The defaults overridden by `WASMQ_COMPILE_TIMEOUT` and
    /// `WASMQ_COMPILE_MEMORY`.
    pub fn from_env() -> anyhow::Result<Self> {
        let mut b = CompileBudget::default();
        if let Some(v) = env("WASMQ_COMPILE_TIMEOUT") {
            b.timeout = super::limits::parse_duration(&v)?;
        }
        if let Some(v) = env("WASMQ_COMPILE_MEMORY") {
            b.memory_bytes = super::limits::parse_size(&v)?;
        }
        anyhow::ensure!(
            !b.timeout.is_zero() && b.memory_bytes > 0,
            "WASMQ_COMPILE_TIMEOUT and WASMQ_COMPILE_MEMORY must be above zero"
        );
        Ok(b)
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Why a compilation gave no component.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(transparent)]
    Module(#[from] ModuleError),
    /// The compiler itself failed (could not start, crashed without a
    /// reason of the module's making): worth trying again.
    #[error("the compiler failed: {0}")]
    Compiler(String),
}

/// Compiles `bytes` where `compiler` says.
pub(super) async fn compile(
    engine: &Engine,
    compiler: &Compiler,
    bytes: Vec<u8>,
) -> Result<Component, CompileError> {
    check_header(&bytes)?;
    match compiler {
        Compiler::InProcess => {
            let engine = engine.clone();
            // Compiling a large component takes seconds of CPU: keep it off
            // the async worker threads.
            tokio::task::spawn_blocking(move || super::module::compile(&engine, &bytes))
                .await
                .map_err(|e| CompileError::Compiler(e.to_string()))?
                .map_err(CompileError::from)
        }
        Compiler::Process { program, budget } => {
            let artifact = compile_in_child(program, *budget, bytes).await?;
            // SAFETY: the artifact is the output of `Engine::precompile_component`
            // in a child process of this same binary with the same engine
            // configuration, handed over through a pipe only the two hold;
            // `deserialize` checks it was made for a compatible engine.
            unsafe { Component::deserialize(engine, &artifact) }.map_err(|e| {
                let message = format!("{e:#}");
                if is_instance_limit(&message) {
                    ModuleError::InstanceLimits(message).into()
                } else {
                    CompileError::Compiler(format!("loading the compiled artifact: {message}"))
                }
            })
        }
    }
}

async fn compile_in_child(
    program: &std::path::Path,
    budget: CompileBudget,
    bytes: Vec<u8>,
) -> Result<Vec<u8>, CompileError> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg("compile-module")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let memory = budget.memory_bytes;
    // SAFETY: only setrlimit, which is async-signal-safe, runs between fork
    // and exec.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: memory as libc::rlim_t,
                rlim_max: memory as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_DATA, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| CompileError::Compiler(format!("starting {}: {e}", program.display())))?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let feed = async move {
        // A child that dies early closes the pipe: its exit status says why.
        let _ = stdin.write_all(&bytes).await;
    };
    let drain = async move {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut head = (&mut stderr).take(MAX_CHILD_STDERR as u64);
        let (o, e) = tokio::join!(stdout.read_to_end(&mut out), head.read_to_end(&mut err));
        // Keep the pipe open to the end so the child never blocks on it.
        let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
        (o.map(|_| out), e.map(|_| err))
    };
    let work = async {
        let ((), (out, err), status) = tokio::join!(feed, drain, child.wait());
        (out, err, status)
    };
    let (out, err, status) = match tokio::time::timeout(budget.timeout, work).await {
        Ok(done) => done,
        Err(_) => {
            let _ = child.kill().await;
            return Err(ModuleError::CompileBudget(format!(
                "compiling took longer than {} (WASMQ_COMPILE_TIMEOUT)",
                humantime::format_duration(budget.timeout)
            ))
            .into());
        }
    };
    let status = status.map_err(|e| CompileError::Compiler(format!("waiting: {e}")))?;
    let stderr_text = String::from_utf8_lossy(&err.unwrap_or_default()).into_owned();
    let out_of_memory = || {
        ModuleError::CompileBudget(format!(
            "compiling needed more than {} bytes of memory (WASMQ_COMPILE_MEMORY)",
            budget.memory_bytes
        ))
    };
    match status.code() {
        Some(0) => out.map_err(|e| CompileError::Compiler(format!("reading the artifact: {e}"))),
        Some(EXIT_DOES_NOT_COMPILE) if ran_out_of_memory(&stderr_text) => {
            Err(out_of_memory().into())
        }
        Some(EXIT_DOES_NOT_COMPILE) => {
            let message = stderr_text.trim().to_string();
            Err(if is_instance_limit(&message) {
                ModuleError::InstanceLimits(message)
            } else {
                ModuleError::Compile(message)
            }
            .into())
        }
        // Rust aborts when an allocation fails: with the data segment
        // capped, that is the budget.
        _ if ran_out_of_memory(&stderr_text) || aborted(&status) => Err(out_of_memory().into()),
        _ => Err(CompileError::Compiler(format!(
            "{status}: {}",
            stderr_text.trim()
        ))),
    }
}

fn aborted(status: &std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(libc::SIGABRT)
}

fn ran_out_of_memory(stderr: &str) -> bool {
    stderr.contains("memory allocation of") || stderr.contains("Cannot allocate memory")
}

/// `wasmq compile-module`: reads a component from stdin, writes the
/// artifact to stdout. Exits [`EXIT_DOES_NOT_COMPILE`] with the compiler's
/// message on stderr when the bytes do not compile.
pub fn compile_module_main(engine: &Engine) -> i32 {
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
        eprintln!("reading the module from stdin: {e}");
        return 1;
    }
    let artifact = match check_header(&bytes) {
        Ok(()) => engine.precompile_component(&bytes),
        Err(e) => {
            eprintln!("{e}");
            return EXIT_DOES_NOT_COMPILE;
        }
    };
    match artifact {
        Ok(a) => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            match out.write_all(&a).and_then(|()| out.flush()) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("writing the artifact: {e}");
                    1
                }
            }
        }
        Err(e) => {
            eprintln!("{e:#}");
            EXIT_DOES_NOT_COMPILE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_words_of_an_allocation_failure() {
        assert!(ran_out_of_memory(
            "memory allocation of 4096 bytes failed\n"
        ));
        assert!(!ran_out_of_memory("unexpected end of file"));
    }
}
