//! `wasmq exec`: the entrypoint of a Ray job (see `worker::cluster`). Runs
//! the module in its working directory with the same runtime as local mode
//! and prints the report as one marked envelope line, last on stdout.
//!
//! Everything it needs comes from the job's environment (`runtime_env`),
//! never from its command line, which is fixed.

use super::exit::Exit;
use crate::runtime::{
    Allocator, CancelToken, Limits, LoadError, Outcome, RunReport, RunRequest, Runtime,
    RuntimeConfig, TaskInfo, sha256_hex,
};
use crate::worker::envelope::Envelope;
use crate::worker::shipping::MODULE_FILE;
use anyhow::Context;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The task module.
    #[arg(long, default_value = MODULE_FILE)]
    pub module: PathBuf,
    /// Input JSON text.
    #[arg(long, env = "WASMQ_EXEC_INPUT", hide_env_values = true)]
    pub input: Option<String>,
    /// Read the input from this file instead (large inputs).
    #[arg(long, env = "WASMQ_EXEC_INPUT_FILE", conflicts_with = "input")]
    pub input_file: Option<PathBuf>,
    /// Refuse to run a module whose sha256 differs.
    #[arg(long, env = "WASMQ_EXEC_SHA256")]
    pub sha256: Option<String>,
    #[arg(long, env = "WASMQ_EXEC_TASK_ID", default_value = "local")]
    pub task_id: String,
    #[arg(long, env = "WASMQ_EXEC_ATTEMPT", default_value_t = 1)]
    pub attempt: u32,
    #[arg(long, env = "WASMQ_EXEC_MAX_ATTEMPTS", default_value_t = 1)]
    pub max_attempts: u32,
    #[arg(long, env = "WASMQ_EXEC_QUEUE", default_value = "local")]
    pub queue: String,
}

/// Exit 0 whenever an envelope was printed, whatever the task's outcome;
/// an error here (exit ≠ 0) means the runner itself broke.
pub async fn run(args: ExecArgs) -> anyhow::Result<u8> {
    let started = Instant::now();
    let input = super::run::read_input(args.input.as_deref(), args.input_file.as_deref())?;
    // The job's limits arrive as the WASMQ_DEFAULT_* variables.
    let limits = Limits::from_env().map_err(|e| Exit::usage(e.to_string()))?;
    let bytes = std::fs::read(&args.module)
        .with_context(|| format!("reading the module {}", args.module.display()))?;
    if let Some(want) = &args.sha256 {
        let got = sha256_hex(&bytes);
        anyhow::ensure!(
            &got == want,
            "module {} has sha256 {got}, expected {want}",
            args.module.display()
        );
    }
    let mut config = RuntimeConfig::from_env()?;
    if std::env::var_os("WASMQ_ALLOCATOR").is_none() {
        // One run per process: the pool's set-up would not pay for itself.
        config.allocator = Allocator::OnDemand;
    }
    let runtime = Runtime::new(config).context("starting the runtime")?;
    let report = match runtime.load_bytes(bytes).await {
        // No SIGTERM handler: Ray stops a job by signalling its process
        // group, and a runner that dies of it is what Ray reports as STOPPED.
        Ok((module, cache)) => {
            runtime
                .run(
                    &module,
                    cache,
                    RunRequest {
                        input: &input,
                        limits: &limits,
                        task: TaskInfo {
                            task_id: args.task_id,
                            attempt: args.attempt,
                            max_attempts: args.max_attempts,
                            queue: args.queue,
                        },
                        cancel: CancelToken::new(),
                        dirs: &[],
                        progress: None,
                    },
                )
                .await
        }
        Err(LoadError::Module(e)) => RunReport::not_run(
            Outcome::InvalidModule {
                message: e.to_string(),
            },
            args.sha256.unwrap_or_default(),
        ),
        Err(e) => return Err(e.into()),
    };
    let line = Envelope::from_report(&report, started.elapsed().as_millis() as u64).to_line();
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n{line}")?;
    out.flush()?;
    Ok(super::exit::SUCCESS)
}
