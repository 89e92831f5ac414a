//! One run of one task: a fresh store, the sandbox, the limits, and the
//! classification of whatever happened into an [`Outcome`].

use super::Runtime;
use super::cancel::CancelToken;
use super::capture::CapturePipe;
use super::config::{RunConfig, redact_report};
use super::http::{HttpPolicy, HttpRun};
use super::limits::Limits;
use super::module::{LoadedModule, ModuleError, is_instance_limit};
use super::outcome::{CacheSource, Outcome, RunReport, TaskErrorKind};
use super::state::{HostState, MemoryLimiter, ProgressSink, TaskInfo, WitErrorKind};
use super::subtasks::{NonDeterministic, SubtaskPlan, Subtasks, Suspended};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// A host directory the guest may read, mounted at `guest` (read-only).
#[derive(Debug, Clone)]
pub struct DirGrant {
    pub host: PathBuf,
    pub guest: String,
}

impl std::str::FromStr for DirGrant {
    type Err = String;
    /// `HOST[:GUEST]`; the guest path defaults to the host path.
    fn from_str(s: &str) -> Result<Self, String> {
        let (host, guest) = match s.split_once(':') {
            Some((h, g)) => (h, g),
            None => (s, s),
        };
        if host.is_empty() || guest.is_empty() {
            return Err(format!("`{s}`: expected HOST[:GUEST]"));
        }
        Ok(DirGrant {
            host: PathBuf::from(host),
            guest: guest.to_string(),
        })
    }
}

/// Everything one run needs besides the module.
pub struct RunRequest<'a> {
    pub input: &'a str,
    pub limits: &'a Limits,
    pub task: TaskInfo,
    pub cancel: CancelToken,
    pub dirs: &'a [DirGrant],
    pub progress: Option<ProgressSink>,
    /// The parent's side of the `subtasks` interface; `None` refuses spawns.
    pub subtasks: Option<SubtaskPlan>,
    /// Outbound HTTP the run may make; `None` links no `wasi:http` at all.
    pub http: Option<Arc<HttpPolicy>>,
    /// What the guest reads through `wasi:config/store` (granted secrets,
    /// which are also redacted from the report); `None`: nothing.
    pub config: Option<Arc<RunConfig>>,
}

/// Raised from the epoch callback to stop a running guest.
#[derive(Debug, Clone, Copy, thiserror::Error)]
enum Interrupted {
    #[error("deadline reached")]
    Timeout,
    #[error("cancelled")]
    Cancelled,
}

enum Phase {
    Instantiate,
    Call,
}

impl Runtime {
    /// Runs `module` once. Never panics on guest behaviour and never returns an
    /// error: every way a run can end is an [`Outcome`] in the report.
    ///
    /// Everything in the report that the guest wrote is storable (no NUL,
    /// valid UTF-8) and bounded in bytes and in records, whatever the guest
    /// did: see [`RunReport::bounded`] and the caps in [`super::limits`].
    pub async fn run(
        &self,
        module: &LoadedModule,
        cache: CacheSource,
        req: RunRequest<'_>,
    ) -> RunReport {
        let limits = req.limits;
        self.run_unbounded(module, cache, req).await.bounded(limits)
    }

    async fn run_unbounded(
        &self,
        module: &LoadedModule,
        cache: CacheSource,
        req: RunRequest<'_>,
    ) -> RunReport {
        let started = Instant::now();
        let limits = req.limits;
        let mut report = RunReport {
            cache,
            ..RunReport::not_run(Outcome::Success, module.sha256.clone())
        };

        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(req.input) {
            report.outcome = Outcome::TaskError {
                error_kind: TaskErrorKind::InvalidInput,
                message: format!("input is not valid JSON: {e}"),
                details: None,
            };
            return report;
        }
        if self.pooling && limits.memory_bytes > self.config.pool_max_memory {
            // Every attempt would be refused the same way: not a host error,
            // which the retry policy would try again.
            report.outcome = Outcome::refused(format!(
                "the memory limit of {} bytes is above this host's maximum of {} bytes \
                 (WASMQ_POOL_MAX_MEMORY)",
                limits.memory_bytes, self.config.pool_max_memory
            ));
            return report;
        }

        let pre = match module.pre(req.http.is_some().then_some(&self.http_linker)) {
            Ok(pre) => pre,
            Err(message) => {
                report.outcome = Outcome::InvalidModule { message };
                return report;
            }
        };

        let stdout = CapturePipe::new(limits.max_stdout_bytes);
        let stderr = CapturePipe::new(limits.max_stderr_bytes);
        let wasi = match build_wasi(&stdout, &stderr, req.dirs) {
            Ok(w) => w,
            Err(message) => {
                report.outcome = Outcome::HostError { message };
                return report;
            }
        };

        let deadline = started + limits.timeout;
        let deadline_unix_ms = (SystemTime::now() + limits.timeout)
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as u64;
        // Held until the store is dropped, which returns the slot to the pool.
        let _slot = match &self.instance_slots {
            Some(slots) => tokio::select! {
                permit = slots.clone().acquire_owned() => {
                    Some(permit.expect("the slot semaphore is never closed"))
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    report.outcome = timeout(limits);
                    return report;
                }
                _ = req.cancel.cancelled() => {
                    report.outcome = cancelled();
                    return report;
                }
            },
            None => None,
        };
        let limiter =
            MemoryLimiter::new(usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX));
        let state = HostState::new(
            wasi,
            limiter,
            req.task,
            deadline,
            deadline_unix_ms,
            req.cancel.clone(),
            limits.max_log_bytes,
            req.progress,
            req.subtasks.map(Subtasks::new),
            HttpRun::new(req.http, deadline),
            req.config.clone(),
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        let fuel = limits.fuel.unwrap_or(u64::MAX);
        store.set_fuel(fuel).expect("fuel is enabled on the engine");
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|ctx| {
            let s = ctx.data();
            if s.cancel.is_cancelled() {
                return Err(Interrupted::Cancelled.into());
            }
            if Instant::now() >= s.deadline {
                return Err(Interrupted::Timeout.into());
            }
            // Yield each tick so a long guest shares its worker thread.
            Ok(UpdateDeadline::Yield(1))
        });

        let mut phase = Phase::Instantiate;
        let call = async {
            let instance = pre.instantiate_async(&mut store).await?;
            phase = Phase::Call;
            instance.call_run(&mut store, req.input).await
        };
        // The epoch callback stops guest code; these stop a guest blocked in a
        // host call (a sleep, a poll), which never reaches an epoch check.
        let result = tokio::select! {
            r = call => Ok(r),
            _ = tokio::time::sleep_until(deadline.into()) => Err(Interrupted::Timeout),
            _ = req.cancel.cancelled() => Err(Interrupted::Cancelled),
        };

        report.fuel_used = fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        report.wall_time_us = started.elapsed().as_micros() as u64;
        let data = store.data();
        report.peak_memory_bytes = data.limiter.peak as u64;
        report.progress = data.progress.clone();
        let denied = data.limiter.denied;
        report.logs = store.data_mut().logs.finish(report.wall_time_us / 1000);
        let (spawns, suspension) = store
            .data_mut()
            .subtasks
            .take()
            .map(Subtasks::finish)
            .unwrap_or_default();
        drop(store);
        report.stdout = stdout.text();
        report.stderr = stderr.text();

        report.outcome = match result {
            Err(Interrupted::Timeout) => timeout(limits),
            Err(Interrupted::Cancelled) => cancelled(),
            Ok(Ok(Ok(mut output))) => {
                // Redacted before the check: `[redacted:NAME]` can be longer
                // than the value it replaces, and the cap is on what is stored.
                if let Some(config) = &req.config {
                    config.redactor().redact_string(&mut output);
                }
                let checked = check_output(&output, limits.max_output_bytes);
                if checked.is_success() {
                    report.output = Some(output);
                }
                checked
            }
            Ok(Ok(Err(e))) => Outcome::TaskError {
                error_kind: match e.kind {
                    WitErrorKind::Permanent => TaskErrorKind::Permanent,
                    WitErrorKind::Retryable => TaskErrorKind::Retryable,
                    WitErrorKind::InvalidInput => TaskErrorKind::InvalidInput,
                },
                message: e.message,
                details: e.details,
            },
            Ok(Err(e)) => classify_error(e, phase, denied, limits, &report.stderr),
        };
        // Children spawned by a run that ended any way are recorded: a retry
        // or a resume finds them (only a stale run's are refused, by the
        // store's fencing).
        report.spawns = spawns;
        if let (Outcome::Waiting { .. }, Some(s)) = (&report.outcome, suspension) {
            report.suspension = Some(s);
        }
        if let Some(config) = &req.config {
            redact_report(&mut report, config.redactor());
        }
        report
    }
}

fn build_wasi(
    stdout: &CapturePipe,
    stderr: &CapturePipe,
    dirs: &[DirGrant],
) -> Result<wasmtime_wasi::WasiCtx, String> {
    let mut b = WasiCtxBuilder::new();
    // Nothing is granted unless asked for: no env, no args, no preopens and no
    // sockets (the default address check already refuses every address; the
    // flags below also remove name lookup and UDP entirely). Clocks and random
    // are on by default.
    b.stdout(stdout.clone())
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    for d in dirs {
        b.preopened_dir(&d.host, &d.guest, FsPerms::ReadOnly)
            .map_err(|e| format!("cannot open --allow-dir {}: {e:#}", d.host.display()))?;
    }
    Ok(b.build())
}

fn timeout(limits: &Limits) -> Outcome {
    Outcome::Timeout {
        message: format!(
            "the task ran past its wall-clock limit of {}",
            humantime::format_duration(limits.timeout)
        ),
    }
}

fn cancelled() -> Outcome {
    Outcome::Cancelled {
        message: "the task was cancelled while running".into(),
    }
}

/// What a task's returned output becomes: `Success` when it is JSON within
/// `cap` bytes (and then stored as it is), else `InvalidOutput`.
pub fn check_output(output: &str, cap: usize) -> Outcome {
    if output.len() > cap {
        return Outcome::InvalidOutput {
            message: format!(
                "output is {} bytes, over the cap of {cap} bytes",
                output.len()
            ),
        };
    }
    match serde_json::from_str::<serde::de::IgnoredAny>(output) {
        Ok(_) => Outcome::Success,
        Err(e) => Outcome::InvalidOutput {
            message: format!("output is not valid JSON: {e}"),
        },
    }
}

fn classify_error(
    e: wasmtime::Error,
    phase: Phase,
    denied: Option<usize>,
    limits: &Limits,
    stderr: &str,
) -> Outcome {
    if let Some(i) = e.downcast_ref::<Interrupted>() {
        return match i {
            Interrupted::Timeout => timeout(limits),
            Interrupted::Cancelled => cancelled(),
        };
    }
    if e.downcast_ref::<Suspended>().is_some() {
        return Outcome::Waiting {
            message: "waiting for its children".into(),
        };
    }
    if let Some(nd) = e.downcast_ref::<NonDeterministic>() {
        return Outcome::TaskError {
            error_kind: TaskErrorKind::Permanent,
            message: nd.to_string(),
            details: None,
        };
    }
    let trap = e.downcast_ref::<Trap>().copied();
    if trap == Some(Trap::OutOfFuel) {
        return Outcome::OutOfFuel {
            message: format!(
                "the task used all of its fuel ({})",
                limits
                    .fuel
                    .map_or(crate::fuel::UNLIMITED.into(), |f| f.to_string())
            ),
        };
    }
    if let Some(wanted) = denied
        && refusal_ended_the_run(trap, stderr)
    {
        return Outcome::OutOfMemory {
            message: format!(
                "the task exceeded its memory limit of {} bytes (it asked for {wanted} bytes)",
                limits.memory_bytes
            ),
        };
    }
    let backtrace = e
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .map(|bt| bt.to_string())
        .filter(|s| !s.trim().is_empty());
    let mut outcome = match (trap, phase) {
        (Some(trap), _) => {
            let mut message = trap.to_string();
            if let Some(panic) = panic_message(stderr) {
                message.push_str(&format!("; {panic}"));
            }
            Outcome::Trap { message, backtrace }
        }
        (None, Phase::Call) => Outcome::Trap {
            message: format!("{e:#}"),
            backtrace,
        },
        (None, Phase::Instantiate) => instantiation_failed(&e),
    };
    if let (Some(wanted), Outcome::Trap { message, .. }) = (denied, &mut outcome) {
        message.push_str(&format!(
            " (earlier, a request for {wanted} bytes of memory was refused, over the \
             limit of {} bytes, and the task went on)",
            limits.memory_bytes
        ));
    }
    outcome
}

/// Whether a refused allocation is what ended the run. A guest may probe
/// `memory.grow`, cope with the refusal and fail later for another reason:
/// that is a trap (its message then mentions the refusal). So the refusal
/// counts only with evidence: nothing but the refusal stopped the run (an
/// instantiation, or the host's own allocation in the guest, was refused),
/// or the guest aborted (`unreachable`) saying on stderr that an allocation
/// failed, as Rust's allocator does ("memory allocation of N bytes failed").
fn refusal_ended_the_run(trap: Option<Trap>, stderr: &str) -> bool {
    match trap {
        None => true,
        Some(Trap::UnreachableCodeReached) => says_allocation_failed(stderr),
        Some(_) => false,
    }
}

/// The words language runtimes print when an allocation fails before they
/// abort: Rust's allocator, C's and CPython's `MemoryError`, JavaScript
/// engines' "out of memory".
fn says_allocation_failed(stderr: &str) -> bool {
    const PHRASES: [&str; 4] = [
        "memory allocation of",
        "out of memory",
        "memoryerror",
        "allocation failed",
    ];
    let lower = stderr.to_ascii_lowercase();
    PHRASES.iter().any(|p| lower.contains(p))
}

/// Classifies an instantiation that failed without a trap or a refusal by
/// the limiter. Only a full pool is worth retrying (another run will have
/// ended); a module over this host's per-run bounds fails the same way on
/// every attempt.
fn instantiation_failed(e: &wasmtime::Error) -> Outcome {
    let message = format!("{e:#}");
    if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
        .is_some()
    {
        return Outcome::HostError {
            message: format!("no free instance slot in this worker: {message}"),
        };
    }
    // The store's counts of instances, memories and tables (the pooling
    // allocator's bounds are checked earlier, as the component loads).
    if is_instance_limit(&message) {
        return Outcome::InvalidModule {
            message: ModuleError::InstanceLimits(message).to_string(),
        };
    }
    Outcome::HostError {
        message: format!("instantiating the module: {message}"),
    }
}

/// Finds a Rust panic message in the guest's stderr
/// (`thread '…' panicked at src/lib.rs:5:9:\nmessage`).
fn panic_message(stderr: &str) -> Option<String> {
    let start = stderr.find("panicked at ")?;
    let rest = &stderr[start..];
    let mut lines = rest.lines();
    let location = lines.next()?.trim_end_matches(':');
    let message: Vec<&str> = lines
        .take_while(|l| !l.starts_with("note: run with `RUST_BACKTRACE"))
        .collect();
    Some(format!("guest {location}: {}", message.join("\n")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_rust_panic_messages() {
        let stderr = "\nthread '<unnamed>' panicked at src/lib.rs:7:5:\nboom\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            panic_message(stderr).as_deref(),
            Some("guest panicked at src/lib.rs:7:5: boom")
        );
        assert_eq!(panic_message("nothing here"), None);
    }

    #[test]
    fn a_refusal_ends_the_run_only_with_evidence() {
        let rust_oom = "memory allocation of 1048576 bytes failed\n";
        assert!(refusal_ended_the_run(None, ""));
        assert!(refusal_ended_the_run(
            Some(Trap::UnreachableCodeReached),
            rust_oom
        ));
        // Probed, coped, then failed for another reason.
        assert!(!refusal_ended_the_run(
            Some(Trap::UnreachableCodeReached),
            ""
        ));
        assert!(!refusal_ended_the_run(
            Some(Trap::IntegerDivisionByZero),
            rust_oom
        ));
        assert!(!refusal_ended_the_run(
            Some(Trap::UnreachableCodeReached),
            "thread 'main' panicked at src/lib.rs:1:1:\nindex out of bounds"
        ));
    }

    #[test]
    fn output_checks() {
        assert!(check_output("{\"a\":1}", 100).is_success());
        assert_eq!(check_output("{\"a\":1}", 3).kind(), "invalid-output");
        assert_eq!(check_output("not json", 100).kind(), "invalid-output");
    }

    #[test]
    fn dir_grants() {
        let d: DirGrant = "/data:/in".parse().unwrap();
        assert_eq!(d.guest, "/in");
        let d: DirGrant = "/data".parse().unwrap();
        assert_eq!(d.guest, "/data");
        assert!("".parse::<DirGrant>().is_err());
    }
}
