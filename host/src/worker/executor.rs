//! Runs one claimed task in-process and turns the report into a completion.

use super::retry::RetryPolicy;
use crate::runtime::{
    CancelToken, Limits, LoadError, Outcome, ProgressSink, RunReport, RunRequest, Runtime,
    TaskErrorKind, TaskInfo,
};
use crate::store::{AnyStore, AttemptReport, ClaimedTask, Completion, Store, Transition};
use chrono::Utc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Most bytes of guest logs and stderr stored with one attempt.
pub const MAX_STORED_LOGS: usize = 64 * 1024;
/// Progress reports closer together than this are not stored (but the one
/// that reaches 100% always is).
pub const PROGRESS_MIN_INTERVAL: Duration = Duration::from_millis(250);

/// What the executor needs, shared by every task of a worker.
pub struct Executor {
    pub runtime: Arc<Runtime>,
    pub store: AnyStore,
    pub defaults: Limits,
    pub policy: RetryPolicy,
    /// Set in cluster mode: tasks run as Ray jobs instead of in-process.
    pub cluster: Option<Arc<super::Cluster>>,
}

impl Executor {
    /// Runs `task` to the end of its attempt. `shutdown` (the run's halt
    /// token: the grace period ran out, or the lease was lost) tells an
    /// interrupted run apart from a cancelled one: interrupted tasks are
    /// released without spending the attempt.
    pub async fn execute(
        &self,
        worker_id: &str,
        task: &ClaimedTask,
        cancel: CancelToken,
        shutdown: &CancelToken,
    ) -> Completion {
        if let Some(cluster) = &self.cluster {
            return cluster
                .execute(self, worker_id, task, cancel, shutdown)
                .await;
        }
        let started = Instant::now();
        let metrics = crate::metrics::global();
        let _running = metrics.in_flight_guard();
        if task.attempt == 1 {
            let wait = (Utc::now() - task.enqueued_at).to_std().unwrap_or_default();
            metrics
                .queue_wait
                .observe(&[&task.queue], wait.as_secs_f64());
        }
        let limits = self.limits_for(task);
        let store = self.store.clone();
        let sha = task.module_sha256.clone();
        // Fetching and compiling a module can take long (a big component
        // compiles for seconds to minutes): a cancel, or the end of the grace
        // period at shutdown, must not wait for it. An abandoned compile
        // finishes on its blocking thread and is dropped.
        let loading = self.runtime.load(&task.module_sha256, || async move {
            store.module_bytes(&sha).await
        });
        let loaded = tokio::select! {
            loaded = loading => Some(loaded),
            () = cancel.cancelled() => None,
        };
        let report = match loaded {
            None => RunReport::not_run(
                Outcome::Cancelled {
                    message: "cancelled while its module was being loaded".into(),
                },
                task.module_sha256.clone(),
            ),
            Some(Ok((module, cache))) => {
                self.runtime
                    .run(
                        &module,
                        cache,
                        RunRequest {
                            input: &task.input,
                            limits: &limits,
                            task: TaskInfo {
                                task_id: task.id.to_string(),
                                attempt: task.counted_attempt(),
                                max_attempts: task.max_attempts,
                                queue: task.queue.clone(),
                            },
                            cancel,
                            dirs: &[],
                            progress: Some(self.progress_sink(worker_id, task)),
                        },
                    )
                    .await
            }
            Some(Err(e)) => failed_load(task, e),
        };
        let interrupted = shutdown.is_cancelled() && report.outcome.kind() == "cancelled";
        let elapsed = started.elapsed();
        let outcome = if interrupted {
            "shutdown"
        } else {
            report.outcome.kind()
        };
        metrics.attempt_finished(outcome, &task.module_name, elapsed, report.fuel_used);
        self.complete(task, report, interrupted, elapsed)
    }

    /// Stores the guest's progress reports in the background, throttled, so
    /// a chatty guest never waits for the database.
    fn progress_sink(&self, worker_id: &str, task: &ClaimedTask) -> ProgressSink {
        let store = self.store.clone();
        let worker = worker_id.to_string();
        let lease = task.lease();
        let last: Mutex<Option<Instant>> = Mutex::new(None);
        // The task's span, so that a line about storing progress carries
        // the task's fields like every other line about it.
        let span = tracing::Span::current();
        Arc::new(move |percent: u8, message: &str| {
            {
                let mut last = last.lock().unwrap();
                if percent < 100 && last.is_some_and(|t| t.elapsed() < PROGRESS_MIN_INTERVAL) {
                    return;
                }
                *last = Some(Instant::now());
            }
            let Ok(handle) = tokio::runtime::Handle::try_current() else {
                return;
            };
            let (store, worker, message) = (store.clone(), worker.clone(), message.to_string());
            handle.spawn(
                async move {
                    if let Err(e) = store.set_progress(&worker, lease, percent, &message).await {
                        tracing::debug!(error = %e, "could not store progress");
                    }
                }
                .instrument(span.clone()),
            );
        })
    }

    /// The worker's default limits with the task's own applied.
    pub fn limits_for(&self, task: &ClaimedTask) -> Limits {
        let mut l = self.defaults.clone();
        if let Some(f) = task.limits.fuel {
            l.fuel = (f > 0).then_some(f);
        }
        if let Some(m) = task.limits.memory_bytes {
            l.memory_bytes = m;
        }
        if let Some(t) = task.limits.timeout_ms {
            l.timeout = Duration::from_millis(t);
        }
        l
    }

    /// Maps an outcome onto the state machine, applying the retry policy.
    pub fn complete(
        &self,
        task: &ClaimedTask,
        report: RunReport,
        interrupted: bool,
        elapsed: Duration,
    ) -> Completion {
        let kind = retry_kind(&report.outcome);
        let transition = if interrupted {
            Transition::Release
        } else {
            match &report.outcome {
                Outcome::Success => Transition::Succeed {
                    result: report.output.clone().unwrap_or_else(|| "null".into()),
                },
                Outcome::Cancelled { .. } => Transition::Cancel,
                _ => match self
                    .policy
                    .decide(&kind, task.counted_attempt(), task.max_attempts)
                {
                    Some(delay) => Transition::Retry {
                        run_after: Utc::now()
                            + chrono::Duration::from_std(delay).unwrap_or_default(),
                    },
                    None => Transition::Fail,
                },
            }
        };
        Completion {
            task_id: task.id,
            attempt: task.attempt,
            epoch: task.epoch,
            started_at: None,
            report: attempt_report(&report, elapsed),
            transition,
        }
    }

    /// The completion of a run whose executor panicked: a host error, which
    /// the retry policy may retry.
    pub fn panicked(&self, task: &ClaimedTask, message: &str) -> Completion {
        let report = RunReport::not_run(
            Outcome::HostError {
                message: format!("the worker's runner panicked: {message}"),
            },
            task.module_sha256.clone(),
        );
        self.complete(task, report, false, Duration::ZERO)
    }
}

/// The key the retry policy uses: the outcome kind, or `task-error:<kind>`.
pub fn retry_kind(outcome: &Outcome) -> String {
    match outcome {
        Outcome::TaskError { error_kind, .. } => format!("task-error:{}", error_kind.as_str()),
        other => other.kind().to_string(),
    }
}

fn attempt_report(report: &RunReport, elapsed: Duration) -> AttemptReport {
    let error_kind = match &report.outcome {
        Outcome::Success => None,
        Outcome::TaskError { error_kind, .. } => Some(match error_kind {
            TaskErrorKind::Permanent => "permanent".to_string(),
            TaskErrorKind::Retryable => "retryable".to_string(),
            TaskErrorKind::InvalidInput => "invalid-input".to_string(),
        }),
        other => Some(other.kind().to_string()),
    };
    let mut error_message = report.outcome.message().map(str::to_owned);
    if let (
        Some(m),
        Outcome::Trap {
            backtrace: Some(bt),
            ..
        },
    ) = (&mut error_message, &report.outcome)
    {
        m.push('\n');
        m.push_str(bt);
    }
    AttemptReport {
        outcome: report.outcome.kind().to_string(),
        error_kind,
        error_message,
        logs: stored_logs(report),
        fuel_used: Some(report.fuel_used),
        peak_memory: Some(report.peak_memory_bytes),
        duration_ms: elapsed.as_millis() as u64,
    }
}

/// The guest's `log()` lines, then its stdout and stderr, bounded.
fn stored_logs(report: &RunReport) -> Option<String> {
    let mut s = report.logs_text();
    for (name, text) in [("stdout", &report.stdout), ("stderr", &report.stderr)] {
        if !text.is_empty() {
            s.push_str(&format!("--- {name} ---\n{}\n", text.trim_end()));
        }
    }
    if s.is_empty() {
        return None;
    }
    if s.len() > MAX_STORED_LOGS {
        let mut cut = MAX_STORED_LOGS;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("\n[wasmq: logs truncated]");
    }
    Some(s)
}

fn failed_load(task: &ClaimedTask, e: LoadError) -> RunReport {
    let outcome = match e {
        LoadError::Module(m) => Outcome::InvalidModule {
            message: m.to_string(),
        },
        other => Outcome::HostError {
            message: other.to_string(),
        },
    };
    RunReport::not_run(outcome, task.module_sha256.clone())
}
