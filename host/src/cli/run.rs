//! `wasmq run`: one task, in this process, no database.

use super::exit::{self, Exit};
use super::limits::LimitArgs;
use super::term;
use crate::runtime::{
    CancelToken, DirGrant, HttpGrant, HttpLimits, HttpPolicy, LoadError, RunRequest, Runtime,
    TaskInfo,
};
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The task module (a WebAssembly component targeting `wasmq:task/task`).
    pub module: PathBuf,
    /// Input JSON text.
    #[arg(long, conflicts_with = "input_file")]
    pub input: Option<String>,
    /// Read the input JSON from a file (`-` for stdin).
    #[arg(long)]
    pub input_file: Option<PathBuf>,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Let the task read a host directory, HOST[:GUEST] (read-only; repeatable).
    #[arg(long = "allow-dir", value_name = "HOST[:GUEST]")]
    pub allow_dir: Vec<DirGrant>,
    /// Let the task make HTTP requests under this URL prefix,
    /// scheme://host[:port][/path-prefix] (host may be `*.example.com` or an IP
    /// address; repeatable). Private and loopback addresses are refused unless
    /// the grant names the address itself.
    #[arg(long = "allow-http", value_name = "URL")]
    pub allow_http: Vec<HttpGrant>,
    /// Also trust the CA certificates in this PEM file for HTTPS (with --allow-http).
    #[arg(long = "http-ca-file", value_name = "PEM", requires = "allow_http")]
    pub http_ca_file: Option<PathBuf>,
    /// Print the full report as JSON instead of just the output.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: RunArgs) -> anyhow::Result<u8> {
    let input = read_input(args.input.as_deref(), args.input_file.as_deref())?;
    let limits = args.limits.limits()?;
    let http = if args.allow_http.is_empty() {
        None
    } else {
        let http_limits = HttpLimits::from_env().map_err(Exit::usage)?;
        let policy = HttpPolicy::new(
            args.allow_http.clone(),
            args.http_ca_file.as_deref(),
            http_limits,
        )
        .map_err(Exit::usage)?;
        Some(Arc::new(policy))
    };
    let bytes = std::fs::read(&args.module)
        .map_err(|e| Exit::usage(format!("cannot read {}: {e}", args.module.display())))?;

    let runtime =
        Runtime::new(super::runtime_config()?.sized_for(1)).context("starting the runtime")?;
    let (module, cache) = match runtime.load_bytes(bytes).await {
        Ok(m) => m,
        Err(LoadError::Module(e)) => {
            if args.json {
                let v = serde_json::json!({"outcome": {
                    "kind": "invalid-module", "reason": e.reason(), "message": e.to_string()}});
                println!("{v:#}");
            }
            eprintln!(
                "invalid-module ({}): {}",
                e.reason(),
                term::line(&e.to_string())
            );
            return Ok(exit::INVALID_MODULE);
        }
        Err(e) => return Err(e.into()),
    };

    // Ctrl-C cancels the run the same way a queue cancellation does. The
    // handler is installed before the guest starts (not lazily in the spawned
    // task), so an early SIGINT cancels instead of killing the process.
    let cancel = CancelToken::new();
    let on_signal = cancel.clone();
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        if interrupt.recv().await.is_some() {
            on_signal.cancel();
        }
    });
    // Shown with WASMQ_LOG=info (a command logs only warnings by default).
    tracing::info!(module = %args.module.display(), "running; Ctrl-C cancels");

    let report = runtime
        .run(
            &module,
            cache,
            RunRequest {
                input: &input,
                limits: &limits,
                task: TaskInfo::local(),
                cancel,
                dirs: &args.allow_dir,
                progress: None,
                subtasks: None,
                http,
                config: None,
            },
        )
        .await;

    // The guest wrote the output, the outcome's message and its stderr: all
    // of it is made safe for a terminal (the JSON report is escaped already).
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if let Some(out) = &report.output {
        println!("{}", term::stdout_data(out));
    }
    if !report.outcome.is_success() {
        eprintln!("{}", term::text(&report.outcome.to_string()));
        if !args.json && !report.stderr.is_empty() {
            eprintln!(
                "--- guest stderr ---\n{}",
                term::text(report.stderr.trim_end())
            );
        }
    }
    Ok(exit::for_outcome(&report.outcome))
}

/// Reads `--input`/`--input-file` (default `{}`); JSON validity is checked by
/// the runtime, which reports it as the task's invalid input.
pub fn read_input(input: Option<&str>, file: Option<&std::path::Path>) -> anyhow::Result<String> {
    Ok(match (input, file) {
        (Some(s), _) => s.to_string(),
        (None, Some(p)) if p.as_os_str() == "-" => std::io::read_to_string(std::io::stdin())
            .map_err(|e| Exit::usage(format!("cannot read stdin: {e}")))?,
        (None, Some(p)) => std::fs::read_to_string(p)
            .map_err(|e| Exit::usage(format!("cannot read {}: {e}", p.display())))?,
        (None, None) => "{}".to_string(),
    })
}
