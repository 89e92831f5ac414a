//! `wasmq exec`: the entrypoint of a Ray job (see `worker::cluster`). Runs
//! the module in its working directory with the same runtime as local mode
//! and prints the report as one marked envelope line, last on stdout.
//!
//! Everything it needs comes from the job's environment (`runtime_env`),
//! never from its command line, which is fixed. Ray expands `$VAR` and
//! `${VAR}` in runtime_env values (and drops unknown `${VAR}`s), so the
//! cluster worker sends user text (input, queue name) base64-encoded, in the
//! `…_B64` variables: base64 has no `$`.

use super::exit::Exit;
use crate::runtime::subtasks::SubtaskPlan;
use crate::runtime::{
    Allocator, CancelToken, HttpGrant, HttpLimits, HttpPolicy, Limits, LoadError, Maxima, Outcome,
    RunConfig, RunReport, RunRequest, Runtime, TaskInfo, sha256_hex, tls_config, tls_config_pem,
};
use crate::secrets::{Sealed, SecretError, SecretKey};
use crate::worker::cluster::ShippedSecret;
use crate::worker::envelope::Envelope;
use crate::worker::shipping::MODULE_FILE;
use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The task module.
    #[arg(long, default_value = MODULE_FILE)]
    pub module: PathBuf,
    /// Input JSON text.
    #[arg(long, env = "WASMQ_EXEC_INPUT", hide_env_values = true)]
    pub input: Option<String>,
    /// Input JSON text, base64-encoded (standard alphabet, padded).
    #[arg(long, env = "WASMQ_EXEC_INPUT_B64", hide_env_values = true,
          conflicts_with_all = ["input", "input_file"])]
    pub input_b64: Option<String>,
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
    /// The queue name, base64-encoded; wins over --queue.
    #[arg(long, env = "WASMQ_EXEC_QUEUE_B64")]
    pub queue_b64: Option<String>,
    /// The task's subtask plan (its recorded children, what a child
    /// inherits), JSON, base64-encoded.
    #[arg(
        long,
        env = "WASMQ_EXEC_SUBTASKS_B64",
        hide_env_values = true,
        conflicts_with = "subtasks_file"
    )]
    pub subtasks_b64: Option<String>,
    /// The subtask plan from this file instead (a long ledger).
    #[arg(long, env = "WASMQ_EXEC_SUBTASKS_FILE")]
    pub subtasks_file: Option<PathBuf>,
    /// The module's HTTP grants, one per line, base64-encoded; the limits
    /// come from the `WASMQ_HTTP_*` variables.
    #[arg(long, env = "WASMQ_EXEC_ALLOW_HTTP_B64")]
    pub allow_http_b64: Option<String>,
    /// Extra CA certificates (PEM) for HTTPS, base64-encoded.
    #[arg(
        long,
        env = "WASMQ_EXEC_HTTP_CA_B64",
        requires = "allow_http_b64",
        conflicts_with = "http_ca_file"
    )]
    pub http_ca_b64: Option<String>,
    /// Extra CA certificates (PEM) for HTTPS, from this file instead.
    #[arg(long, env = "WASMQ_EXEC_HTTP_CA_FILE", requires = "allow_http_b64")]
    pub http_ca_file: Option<PathBuf>,
    /// The module's granted secrets, sealed (JSON, base64-encoded); opened
    /// with the key in WASMQ_SECRET_KEY_FILE.
    #[arg(
        long,
        env = "WASMQ_EXEC_SECRETS_B64",
        hide_env_values = true,
        conflicts_with = "secrets_file"
    )]
    pub secrets_b64: Option<String>,
    /// The sealed secrets from this file instead.
    #[arg(long, env = "WASMQ_EXEC_SECRETS_FILE")]
    pub secrets_file: Option<PathBuf>,
    /// The module's plain config values, `[[key, value], …]` JSON,
    /// base64-encoded.
    #[arg(long, env = "WASMQ_EXEC_CONFIG_B64")]
    pub config_b64: Option<String>,
}

/// The config values and secrets the cluster worker shipped, the secrets
/// opened with this node's key.
fn run_config(args: &ExecArgs) -> anyhow::Result<Option<Arc<RunConfig>>> {
    let plain: Vec<(String, String)> = match &args.config_b64 {
        Some(b64) => serde_json::from_str(&decode_b64("WASMQ_EXEC_CONFIG_B64", b64)?)
            .context("the config values are not valid")?,
        None => Vec::new(),
    };
    let Some(json) = b64_or_file(
        "WASMQ_EXEC_SECRETS_B64",
        &args.secrets_b64,
        &args.secrets_file,
        "the sealed secrets",
    )?
    else {
        return Ok(RunConfig::shared(plain, Vec::new()));
    };
    let shipped: Vec<ShippedSecret> =
        serde_json::from_str(&json).context("the sealed secrets are not valid")?;
    let key = SecretKey::from_env()?.ok_or(SecretError::NoKey)?;
    let mut values = Vec::with_capacity(shipped.len());
    for s in shipped {
        let sealed = Sealed {
            key_id: s.key_id,
            nonce: B64.decode(&s.nonce).context("a sealed secret's nonce")?,
            ciphertext: B64
                .decode(&s.ciphertext)
                .context("a sealed secret's ciphertext")?,
        };
        let value = key.open(&s.name, &sealed)?;
        values.push((s.name, value));
    }
    Ok(RunConfig::shared(plain, values))
}

/// The outbound HTTP the cluster worker granted this run, if any.
fn http_policy(args: &ExecArgs) -> anyhow::Result<Option<Arc<HttpPolicy>>> {
    let Some(b64) = &args.allow_http_b64 else {
        return Ok(None);
    };
    let grants = decode_b64("WASMQ_EXEC_ALLOW_HTTP_B64", b64)?
        .lines()
        .map(|g| g.parse::<HttpGrant>().map_err(|e| Exit::usage(e).into()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tls = match (&args.http_ca_b64, &args.http_ca_file) {
        (Some(b64), _) => {
            let pem = decode_b64("WASMQ_EXEC_HTTP_CA_B64", b64)?;
            tls_config_pem(Some((pem.as_bytes(), "WASMQ_EXEC_HTTP_CA_B64")))
        }
        (None, path) => tls_config(path.as_deref()),
    }
    .map_err(Exit::usage)?;
    let limits = HttpLimits::from_env().map_err(Exit::usage)?;
    let policy = HttpPolicy::with_tls(grants, tls, limits).map_err(Exit::usage)?;
    Ok(Some(Arc::new(policy)))
}

/// The subtask plan the cluster worker sent, if any; its child limits are
/// checked against this process's maxima (the `WASMQ_MAX_*` it was given).
fn subtask_plan(args: &ExecArgs) -> anyhow::Result<Option<SubtaskPlan>> {
    let Some(json) = b64_or_file(
        "WASMQ_EXEC_SUBTASKS_B64",
        &args.subtasks_b64,
        &args.subtasks_file,
        "the subtask plan",
    )?
    else {
        return Ok(None);
    };
    let mut plan: SubtaskPlan =
        serde_json::from_str(&json).context("the subtask plan is not valid")?;
    plan.maxima = Maxima::from_env().map_err(|e| Exit::usage(e.to_string()))?;
    Ok(Some(plan))
}

/// A value the cluster worker sent in a `…_B64` variable, or in a file of
/// the package when it was too long for the environment.
fn b64_or_file(
    variable: &str,
    b64: &Option<String>,
    file: &Option<PathBuf>,
    what: &str,
) -> anyhow::Result<Option<String>> {
    match (b64, file) {
        (Some(b64), _) => decode_b64(variable, b64).map(Some),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("reading {what} {}", path.display()))
            .map(Some),
        (None, None) => Ok(None),
    }
}

/// Decodes one of the `…_B64` values into the text it carries.
pub fn decode_b64(what: &str, value: &str) -> anyhow::Result<String> {
    let bytes = B64
        .decode(value.trim())
        .with_context(|| format!("{what} is not valid base64"))?;
    String::from_utf8(bytes).with_context(|| format!("{what} is not UTF-8 text"))
}

/// Exit 0 whenever an envelope was printed, whatever the task's outcome;
/// an error here (exit ≠ 0) means the runner itself broke.
pub async fn run(args: ExecArgs) -> anyhow::Result<u8> {
    let started = Instant::now();
    let subtasks = subtask_plan(&args)?;
    let http = http_policy(&args)?;
    let granted_config = run_config(&args)?;
    let input = match &args.input_b64 {
        Some(b64) => decode_b64("WASMQ_EXEC_INPUT_B64", b64)?,
        None => super::run::read_input(args.input.as_deref(), args.input_file.as_deref())?,
    };
    let queue = match &args.queue_b64 {
        Some(b64) => decode_b64("WASMQ_EXEC_QUEUE_B64", b64)?,
        None => args.queue,
    };
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
    let mut config = super::runtime_config()?.sized_for(1);
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
                            queue,
                        },
                        cancel: CancelToken::new(),
                        dirs: &[],
                        progress: None,
                        subtasks,
                        http,
                        config: granted_config,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_values_decode_to_the_exact_text() {
        let text = "{\"name\":\"$HOME ${PATH} ${NOPE} $$ `id` '\\\" \\n\n\u{e9}\u{1f600}\"}";
        assert_eq!(decode_b64("x", &B64.encode(text)).unwrap(), text);
        assert!(decode_b64("x", "not base64!").is_err());
        assert!(decode_b64("x", &B64.encode([0xff, 0xfe])).is_err());
    }
}
