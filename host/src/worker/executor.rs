//! Runs one claimed task in-process and turns the report into a completion.

use super::grants::TaskGrants;
use super::retry::RetryPolicy;
use super::spawning;
use crate::kinds::OutcomeKind;
use crate::runtime::subtasks::SubtaskPlan;
use crate::runtime::{
    CacheSource, CancelToken, HttpPolicy, Limits, LoadError, Maxima, Outcome, ProgressSink,
    RunConfig, RunReport, RunRequest, Runtime, TaskInfo,
};
use crate::store::{
    AnyStore, AttemptReport, ClaimedTask, Completion, Lease, NewTask, Store, Transition,
};
use crate::text::storable;
use chrono::Utc;
use futures::future::BoxFuture;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Most bytes of guest logs and stderr stored with one attempt.
pub const MAX_STORED_LOGS: usize = 64 * 1024;
/// Most bytes of an attempt's error message stored: the outcome's message
/// and a trap's backtrace, each bounded by the runtime; this also bounds a
/// report that came from a Ray job's envelope.
pub const MAX_STORED_ERROR: usize =
    crate::runtime::MAX_ERROR_MESSAGE_BYTES + 1 + crate::runtime::MAX_BACKTRACE_BYTES;
/// One task's progress is written at most once per this interval; a report
/// arriving sooner waits (replaced by any newer one) until it has passed.
pub const PROGRESS_MIN_INTERVAL: Duration = Duration::from_millis(250);
/// How long the end of a run waits for its last progress report to be
/// written before completing the task without it.
pub const PROGRESS_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// What a run is granted beyond clocks and randomness.
struct Granted {
    http: Option<Arc<HttpPolicy>>,
    config: Option<Arc<RunConfig>>,
}

/// What the executor needs, shared by every task of a worker.
pub struct Executor {
    pub runtime: Arc<Runtime>,
    pub store: AnyStore,
    pub defaults: Limits,
    /// Ceilings on what a task may ask for; a task above them is refused
    /// (`task-error`, `invalid-input`), never run.
    pub maxima: Maxima,
    pub policy: RetryPolicy,
    /// Set in cluster mode: tasks run as Ray jobs instead of in-process.
    pub cluster: Option<Arc<super::Cluster>>,
    /// What the operator granted each module (`wasmq module grant`).
    pub grants: Arc<super::Grants>,
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
            metrics.queue_waited(&task.queue, wait);
        }
        let plan = spawning::plan_for(&self.store, task, self.maxima).await;
        let granted = self.grants_for(task).await.and_then(|g| match g {
            None => Ok((None, None)),
            Some(g) => Ok((g.http.clone(), g.config()?)),
        });
        let report = match (self.limits_for(task), plan, granted) {
            (Ok(limits), Ok(plan), Ok((http, config))) => {
                let granted = Granted { http, config };
                self.load_and_run(worker_id, task, &limits, cancel, plan, granted)
                    .await
            }
            (Err(refused), _, _) | (_, Err(refused), _) | (_, _, Err(refused)) => {
                RunReport::not_run(refused, task.module_sha256.clone())
            }
        };

        let interrupted =
            shutdown.is_cancelled() && report.outcome.outcome_kind() == OutcomeKind::Cancelled;
        let elapsed = started.elapsed();
        let end = if interrupted {
            OutcomeKind::Shutdown
        } else {
            report.outcome.outcome_kind()
        };
        metrics.attempt_finished(end, &task.module_name, elapsed, report.fuel_used);
        self.finish(task, report, interrupted, elapsed).await
    }

    /// [`Executor::complete`], with the children the run spawned resolved
    /// into tasks that the completion stores (in whichever mode it ran).
    pub async fn finish(
        &self,
        task: &ClaimedTask,
        report: RunReport,
        interrupted: bool,
        elapsed: Duration,
    ) -> Completion {
        let (report, spawns) = spawning::resolve(&self.store, task, report).await;
        let mut completion = self.complete(task, report, interrupted, elapsed);
        completion.spawns = spawns;
        completion
    }

    /// Loads the task's module (compiling it on first use) and runs it under
    /// `limits`, its progress reports going to the store.
    async fn load_and_run(
        &self,
        worker_id: &str,
        task: &ClaimedTask,
        limits: &Limits,
        cancel: CancelToken,
        subtasks: SubtaskPlan,
        granted: Granted,
    ) -> RunReport {
        let progress = self.progress_sink(worker_id, task);
        let store = self.store.clone();
        let sha = task.module_sha256.clone();
        // Fetching and compiling a module can take long (a big component
        // compiles for seconds to minutes): the task's wall-clock limit
        // covers it, and a cancel, or the end of the grace period at
        // shutdown, does not wait for it. An abandoned compilation goes on
        // within its own budget and lands in the disk cache for the next
        // attempt.
        let started = tokio::time::Instant::now();
        let loading = self.runtime.load(&task.module_sha256, || async move {
            store.module_bytes(&sha).await
        });
        let loaded = tokio::select! {
            loaded = loading => Ok(loaded),
            () = cancel.cancelled() => Err(Outcome::Cancelled {
                message: "cancelled while its module was being loaded".into(),
            }),
            () = tokio::time::sleep_until(started + limits.timeout) => Err(Outcome::Timeout {
                message: format!(
                    "the task's wall-clock limit of {} ran out while its module was being \
                     compiled (first use on this worker); the compilation goes on for the \
                     next attempt",
                    humantime::format_duration(limits.timeout)
                ),
            }),
        };
        let report = match loaded {
            Err(outcome) => RunReport::not_run(outcome, task.module_sha256.clone()),
            Ok(Ok((module, cache))) => {
                // A load from disk or a compilation took part of the limit:
                // the run gets what is left.
                let limits = &match cache {
                    CacheSource::Memory => limits.clone(),
                    CacheSource::Disk | CacheSource::Compiled => Limits {
                        timeout: limits.timeout.saturating_sub(started.elapsed()),
                        ..limits.clone()
                    },
                };
                self.runtime
                    .run(
                        &module,
                        cache,
                        RunRequest {
                            input: &task.input,
                            limits,
                            task: TaskInfo {
                                task_id: task.id.to_string(),
                                attempt: task.counted_attempt(),
                                max_attempts: task.max_attempts,
                                queue: task.queue.clone(),
                            },
                            cancel,
                            dirs: &[],
                            progress: Some(progress.sink()),
                            subtasks: Some(subtasks),
                            http: granted.http,
                            config: granted.config,
                        },
                    )
                    .await
            }
            Ok(Err(e)) => failed_load(task, e),
        };
        // Once the task completes the fenced write is refused, so the last
        // report goes out now.
        progress.finish().await;
        report
    }

    /// Stores the guest's progress reports in the background, coalesced, so
    /// a chatty guest never waits for the database and never makes more than
    /// one write at a time per task (see [`ProgressWriter`]).
    fn progress_sink(&self, worker_id: &str, task: &ClaimedTask) -> ProgressWriter {
        let store = self.store.clone();
        let worker = worker_id.to_string();
        let lease = task.lease();
        let write: ProgressWrite = Arc::new(move |percent, message| {
            let (store, worker) = (store.clone(), worker.clone());
            Box::pin(async move {
                if let Err(e) = store_progress(&store, &worker, lease, percent, &message).await {
                    tracing::debug!(error = %e, "could not store progress");
                }
            })
        });
        // The task's span, so that a line about storing progress carries
        // the task's fields like every other line about it.
        ProgressWriter::new(write, PROGRESS_MIN_INTERVAL, tracing::Span::current())
    }

    /// What the operator granted the task's module in its queue; an
    /// unreadable grant table is a host error (retried), never a run
    /// without the grants.
    pub async fn grants_for(&self, task: &ClaimedTask) -> Result<Option<Arc<TaskGrants>>, Outcome> {
        self.grants
            .for_task(&task.module_name, &task.queue)
            .await
            .map_err(|e| Outcome::HostError {
                message: format!("could not read the module's grants: {e}"),
            })
    }

    /// The worker's default limits with the task's own applied, or the
    /// outcome that refuses the task when they are above the worker's
    /// maxima (a looser process may have enqueued it).
    pub fn limits_for(&self, task: &ClaimedTask) -> Result<Limits, Outcome> {
        let mut l = self.defaults.clone();
        if let Some(f) = task.limits.fuel {
            l.fuel = f.units();
        }
        if let Some(m) = task.limits.memory_bytes {
            l.memory_bytes = m;
        }
        if let Some(t) = task.limits.timeout_ms {
            l.timeout = Duration::from_millis(t);
        }
        self.maxima.check(&l).map_err(Outcome::refused)?;
        Ok(l)
    }

    /// Maps an outcome onto the state machine, applying the retry policy.
    pub fn complete(
        &self,
        task: &ClaimedTask,
        report: RunReport,
        interrupted: bool,
        elapsed: Duration,
    ) -> Completion {
        let transition = if interrupted {
            Transition::Release
        } else {
            match (&report.outcome, report.outcome.failure_kind()) {
                (Outcome::Success, _) => Transition::Succeed {
                    result: report.output.clone().unwrap_or_else(|| "null".into()),
                },
                (Outcome::Waiting { .. }, _) => match &report.suspension {
                    Some(s) => Transition::Wait {
                        awaited: s.awaited.clone(),
                        allowed_unfinished: s.allowed_unfinished,
                    },
                    // A waiting outcome always carries its suspension.
                    None => Transition::Fail,
                },
                (Outcome::Cancelled { .. }, _) | (_, None) => Transition::Cancel,
                (_, Some(kind)) => {
                    match self
                        .policy
                        .decide(kind, task.counted_attempt(), task.max_attempts)
                    {
                        Some(delay) => Transition::Retry {
                            run_after: Utc::now()
                                + chrono::Duration::from_std(delay).unwrap_or_default(),
                        },
                        None => Transition::Fail,
                    }
                }
            }
        };
        Completion {
            task_id: task.id,
            attempt: task.attempt,
            epoch: task.epoch,
            started_at: None,
            report: attempt_report(&report, elapsed),
            transition,
            spawns: Vec::<NewTask>::new(),
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

/// The one place that writes a task's progress (fenced by the attempt).
async fn store_progress(
    store: &AnyStore,
    worker: &str,
    lease: Lease,
    percent: u8,
    message: &str,
) -> crate::store::Result<bool> {
    store.set_progress(worker, lease, percent, message).await
}

/// Writes one progress report somewhere (the store, or a test's recorder).
type ProgressWrite = Arc<dyn Fn(u8, String) -> BoxFuture<'static, ()> + Send + Sync>;

/// Coalesces one task's progress reports into writes.
///
/// The guest may call `progress()` in a tight loop, and the sink runs inside
/// that host call, so it only replaces the one pending value and, when no
/// writer task is running, starts one. The writer writes the pending value,
/// waits [`PROGRESS_MIN_INTERVAL`] since its last write, and writes whatever
/// is pending by then, until nothing is: at most one writer task, one write
/// in flight and one pending value per task, whatever the guest does. Every
/// value waits its turn, 100 % included; [`ProgressWriter::finish`] writes
/// the last one at the end of the run.
pub(crate) struct ProgressWriter {
    shared: Arc<ProgressShared>,
}

struct ProgressShared {
    state: Mutex<ProgressState>,
    /// Cuts the writer's wait short when the run ends.
    wake: tokio::sync::Notify,
    write: ProgressWrite,
    interval: Duration,
    span: tracing::Span,
}

#[derive(Default)]
struct ProgressState {
    pending: Option<(u8, String)>,
    /// The writer task, while one runs; there is never more than one.
    writer: Option<tokio::task::JoinHandle<()>>,
    last_write: Option<tokio::time::Instant>,
    /// Set by `finish`: no more waiting, no more reports.
    finished: bool,
    /// Writer tasks started, for tests.
    writers_started: u64,
}

impl ProgressWriter {
    fn new(write: ProgressWrite, interval: Duration, span: tracing::Span) -> ProgressWriter {
        ProgressWriter {
            shared: Arc::new(ProgressShared {
                state: Mutex::new(ProgressState::default()),
                wake: tokio::sync::Notify::new(),
                write,
                interval,
                span,
            }),
        }
    }

    /// The sink handed to the runtime.
    pub(crate) fn sink(&self) -> ProgressSink {
        let shared = self.shared.clone();
        Arc::new(move |percent: u8, message: &str| {
            let mut st = shared.state.lock().unwrap();
            if st.finished {
                return;
            }
            match &mut st.pending {
                // Reuse the pending buffer: a flood allocates nothing.
                Some((p, m)) => {
                    *p = percent;
                    m.clear();
                    m.push_str(message);
                }
                None => st.pending = Some((percent, message.to_owned())),
            }
            if st.writer.is_none() {
                // Without a runtime (not the case in a worker) the value stays
                // pending and `finish` writes it.
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    let task = write_pending(shared.clone()).instrument(shared.span.clone());
                    st.writer = Some(handle.spawn(task));
                    st.writers_started += 1;
                }
            }
        })
    }

    /// Writes the last pending report now, without waiting for the interval,
    /// and returns once it is written (or after [`PROGRESS_FLUSH_TIMEOUT`]).
    /// Reports after this are ignored.
    pub(crate) async fn finish(&self) {
        let writer = {
            let mut st = self.shared.state.lock().unwrap();
            st.finished = true;
            st.writer.take()
        };
        self.shared.wake.notify_one();
        let flushed = async {
            if let Some(writer) = writer {
                // A panicking write only loses progress.
                let _ = writer.await;
            }
            let left = self.shared.state.lock().unwrap().pending.take();
            if let Some((percent, message)) = left {
                (self.shared.write)(percent, message).await;
            }
        };
        if tokio::time::timeout(PROGRESS_FLUSH_TIMEOUT, flushed)
            .await
            .is_err()
        {
            tracing::debug!("the last progress report was not stored in time");
        }
    }
}

async fn write_pending(shared: Arc<ProgressShared>) {
    loop {
        let wait = {
            let st = shared.state.lock().unwrap();
            match st.last_write {
                Some(t) if !st.finished => {
                    (t + shared.interval).saturating_duration_since(tokio::time::Instant::now())
                }
                _ => Duration::ZERO,
            }
        };
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shared.wake.notified() => {}
            }
        }
        let (percent, message) = {
            let mut st = shared.state.lock().unwrap();
            match st.pending.take() {
                Some(next) => {
                    st.last_write = Some(tokio::time::Instant::now());
                    next
                }
                None => {
                    // Under the lock: a report after this starts a new writer.
                    st.writer = None;
                    return;
                }
            }
        };
        (shared.write)(percent, message).await;
    }
}

fn attempt_report(report: &RunReport, elapsed: Duration) -> AttemptReport {
    let error_kind = report.outcome.task_error_kind();
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
    let error_message = error_message.map(|m| storable(&m, MAX_STORED_ERROR).into_owned());
    AttemptReport {
        outcome: report.outcome.outcome_kind(),
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
    Some(storable(&s, MAX_STORED_LOGS).into_owned())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Semaphore;

    /// Records writes; each write first takes a permit of `gate`.
    struct Recorder {
        writes: Mutex<Vec<(u8, String)>>,
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
        gate: Semaphore,
    }

    fn recorder(open: bool) -> (Arc<Recorder>, ProgressWrite) {
        let r = Arc::new(Recorder {
            writes: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            gate: Semaphore::new(if open { Semaphore::MAX_PERMITS } else { 0 }),
        });
        let rec = r.clone();
        let write: ProgressWrite = Arc::new(move |percent, message| {
            let rec = rec.clone();
            Box::pin(async move {
                let now = rec.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                rec.max_in_flight.fetch_max(now, Ordering::SeqCst);
                rec.gate.acquire().await.unwrap().forget();
                rec.writes.lock().unwrap().push((percent, message));
                rec.in_flight.fetch_sub(1, Ordering::SeqCst);
            })
        });
        (r, write)
    }

    fn writers_started(w: &ProgressWriter) -> u64 {
        w.shared.state.lock().unwrap().writers_started
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_while_a_write_is_stuck_makes_one_writer_and_ends_with_the_last_value() {
        let (rec, write) = recorder(false);
        // An interval no test run reaches: only `finish` ends the wait.
        let w = ProgressWriter::new(write, Duration::from_secs(3600), tracing::Span::none());
        let sink = w.sink();
        sink(0, "first");
        // Wait until the first write is in flight (and stuck at the gate).
        while rec.in_flight.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        for i in 0..1_000_000u32 {
            sink((i % 100) as u8, &format!("report {i}"));
        }
        sink(100, "done");
        assert_eq!(writers_started(&w), 1);
        rec.gate.add_permits(Semaphore::MAX_PERMITS);
        w.finish().await;
        assert_eq!(
            *rec.writes.lock().unwrap(),
            [(0, "first".to_string()), (100, "done".to_string())]
        );
        assert_eq!(rec.max_in_flight.load(Ordering::SeqCst), 1);
        assert_eq!(writers_started(&w), 1);
        // Reports after the end are ignored.
        sink(5, "late");
        w.finish().await;
        assert_eq!(rec.writes.lock().unwrap().len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hundred_percent_is_throttled_like_any_value_and_written_at_the_end() {
        let (rec, write) = recorder(true);
        let w = ProgressWriter::new(write, Duration::from_secs(3600), tracing::Span::none());
        let sink = w.sink();
        sink(10, "ten");
        while rec.writes.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        sink(100, "all");
        // Pending, not written: the interval has not passed.
        tokio::task::yield_now().await;
        assert_eq!(rec.writes.lock().unwrap().len(), 1);
        w.finish().await;
        assert_eq!(
            *rec.writes.lock().unwrap(),
            [(10, "ten".to_string()), (100, "all".to_string())]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_writer_ends_and_a_later_report_starts_another() {
        let (rec, write) = recorder(true);
        let w = ProgressWriter::new(write, Duration::ZERO, tracing::Span::none());
        let sink = w.sink();
        sink(1, "a");
        while w.shared.state.lock().unwrap().writer.is_some() {
            tokio::task::yield_now().await;
        }
        sink(2, "b");
        w.finish().await;
        assert_eq!(
            *rec.writes.lock().unwrap(),
            [(1, "a".to_string()), (2, "b".to_string())]
        );
        assert_eq!(writers_started(&w), 2);
    }

    #[test]
    fn a_report_made_outside_a_runtime_is_written_by_finish() {
        let (rec, write) = recorder(true);
        let w = ProgressWriter::new(write, PROGRESS_MIN_INTERVAL, tracing::Span::none());
        w.sink()(42, "no runtime here");
        assert_eq!(writers_started(&w), 0);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(w.finish());
        assert_eq!(
            *rec.writes.lock().unwrap(),
            [(42, "no runtime here".to_string())]
        );
    }

    #[test]
    fn stored_logs_and_errors_are_storable_and_bounded() {
        let mut r = RunReport::not_run(
            Outcome::Trap {
                message: "m\0".repeat(20_000),
                backtrace: Some("b\0".repeat(20_000)),
            },
            "sha".into(),
        );
        r.stdout = "o\0".repeat(100_000);
        r.stderr = "e".into();
        let a = attempt_report(&r, Duration::ZERO);
        let logs = a.logs.unwrap();
        assert!(logs.len() <= MAX_STORED_LOGS && !logs.contains('\0'));
        let error = a.error_message.unwrap();
        assert!(error.len() <= MAX_STORED_ERROR && !error.contains('\0'));
    }
}
