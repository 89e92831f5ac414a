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
use crate::worker::shipping::{ARTIFACT_DIR, BatchItem, MODULE_FILE};
use crate::worker::wakeup::Waker;
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
    /// A batch of tasks of this module (JSON list of `BatchItem`s,
    /// base64-encoded): each runs under its own limits and reports its own
    /// envelope. Replaces the single task's variables above.
    #[arg(
        long,
        env = "WASMQ_EXEC_BATCH_B64",
        hide_env_values = true,
        conflicts_with = "batch_file"
    )]
    pub batch_b64: Option<String>,
    /// The batch from this file instead.
    #[arg(long, env = "WASMQ_EXEC_BATCH_FILE")]
    pub batch_file: Option<PathBuf>,
    /// Tasks of a batch run at once [default: the node's cores].
    #[arg(long, env = "WASMQ_EXEC_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// Where to send a wake-up after each envelope (the cluster worker's
    /// UDP address), and the job's submission id it names.
    #[arg(long, env = "WASMQ_EXEC_WAKE", requires = "job")]
    pub wake: Option<String>,
    #[arg(long, env = "WASMQ_EXEC_JOB")]
    pub job: Option<String>,
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

/// The tasks to run: the batch the cluster worker sent, or the one task
/// of the single-task variables.
fn tasks(args: &ExecArgs) -> anyhow::Result<(Vec<BatchItem>, bool)> {
    if let Some(json) = b64_or_file(
        "WASMQ_EXEC_BATCH_B64",
        &args.batch_b64,
        &args.batch_file,
        "the batch",
    )? {
        let mut items: Vec<BatchItem> =
            serde_json::from_str(&json).context("the batch is not valid")?;
        let maxima = Maxima::from_env().map_err(|e| Exit::usage(e.to_string()))?;
        for plan in items.iter_mut().filter_map(|i| i.subtasks.as_mut()) {
            plan.maxima = maxima;
        }
        return Ok((items, true));
    }
    let input = match &args.input_b64 {
        Some(b64) => decode_b64("WASMQ_EXEC_INPUT_B64", b64)?,
        None => super::run::read_input(args.input.as_deref(), args.input_file.as_deref())?,
    };
    let queue = match &args.queue_b64 {
        Some(b64) => decode_b64("WASMQ_EXEC_QUEUE_B64", b64)?,
        None => args.queue.clone(),
    };
    // The job's limits arrive as the WASMQ_DEFAULT_* variables.
    let limits = Limits::from_env().map_err(|e| Exit::usage(e.to_string()))?;
    let item = BatchItem {
        task_id: args.task_id.clone(),
        attempt: args.attempt,
        max_attempts: args.max_attempts,
        queue,
        input,
        limits,
        subtasks: None,
    };
    Ok((vec![item], false))
}

/// Exit 0 whenever an envelope was printed for every task, whatever their
/// outcomes; an error here (exit ≠ 0) means the runner itself broke.
pub async fn run(args: ExecArgs) -> anyhow::Result<u8> {
    let started = Instant::now();
    let subtasks = subtask_plan(&args)?;
    let http = http_policy(&args)?;
    let granted_config = run_config(&args)?;
    let (mut items, batch) = tasks(&args)?;
    if !batch {
        items[0].subtasks = subtasks;
    }
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
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let at_once = args
        .concurrency
        .unwrap_or(cores)
        .clamp(1, items.len().max(1));
    let mut config = super::runtime_config()?.sized_for(at_once as u32);
    if std::env::var_os("WASMQ_ALLOCATOR").is_none() {
        // A few runs per process: the pool's set-up would not pay for itself.
        config.allocator = Allocator::OnDemand;
    }
    let runtime = Arc::new(Runtime::new(config).context("starting the runtime")?);
    if let Some(sha256) = &args.sha256 {
        // The worker's artifact, when this node's engine is the same: no
        // compile here, and none for later jobs on this node.
        if runtime.seed_disk_cache(sha256, std::path::Path::new(ARTIFACT_DIR)) {
            tracing::debug!("using the shipped precompiled module");
        }
    }
    // No SIGTERM handler: Ray stops a job by signalling its process group,
    // and a runner that dies of it is what Ray reports as STOPPED.
    let loaded = match runtime.load_bytes(bytes).await {
        Ok(loaded) => Ok(loaded),
        Err(LoadError::Module(e)) => Err(e.to_string()),
        Err(e) => return Err(e.into()),
    };
    let sha256 = args.sha256.clone().unwrap_or_default();
    let waker = match (&args.wake, &args.job) {
        (Some(to), Some(job)) => Waker::new(to, job).map(Arc::new),
        _ => None,
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(at_once));
    let mut runs = tokio::task::JoinSet::new();
    for item in items {
        // Runs start in the batch's order (the claim's: priority, then
        // age): the slot is taken before the run is spawned, so that no
        // later task of the batch overtakes an earlier one on a free slot.
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        let (runtime, loaded) = (runtime.clone(), loaded.clone());
        let (http, config, sha256) = (http.clone(), granted_config.clone(), sha256.clone());
        let waker = waker.clone();
        runs.spawn(async move {
            let _slot = slot;
            let report = match &loaded {
                Ok((module, cache)) => {
                    runtime
                        .run(
                            module,
                            *cache,
                            RunRequest {
                                input: &item.input,
                                limits: &item.limits,
                                task: TaskInfo {
                                    task_id: item.task_id.clone(),
                                    attempt: item.attempt,
                                    max_attempts: item.max_attempts,
                                    queue: item.queue,
                                },
                                cancel: CancelToken::new(),
                                dirs: &[],
                                progress: None,
                                subtasks: item.subtasks,
                                http,
                                config,
                            },
                        )
                        .await
                }
                Err(message) => RunReport::not_run(
                    Outcome::InvalidModule {
                        message: message.clone(),
                    },
                    sha256,
                ),
            };
            let mut envelope = Envelope::from_report(&report, started.elapsed().as_millis() as u64);
            if batch {
                envelope = envelope.for_task(&item.task_id);
            }
            print_line(&envelope.to_line())?;
            if let Some(w) = &waker {
                w.wake();
            }
            Ok::<_, std::io::Error>(())
        });
    }
    while let Some(printed) = runs.join_next().await {
        printed.context("a run of the batch panicked")??;
    }
    Ok(super::exit::SUCCESS)
}

/// One envelope line, written whole: the runs of a batch print as they end.
fn print_line(line: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n{line}")?;
    out.flush()
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
