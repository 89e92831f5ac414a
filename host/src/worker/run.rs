//! The worker's loops; see the module documentation of [`super`].

use super::config::WorkerConfig;
use super::executor::Executor;
use super::pace::Pace;
use crate::kinds::{FailureKind, OutcomeKind};
use crate::metrics::FaultKind;
use crate::runtime::CancelToken;
use crate::store::{
    AnyStore, AttemptReport, ClaimedTask, Completion, Lease, Started, Store, StoreError,
    StoreEvent, Transition, WorkerInfo, unstorable_completion,
};
use chrono::Utc;
use futures::FutureExt;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tracing::{Instrument, Span, debug, error, info, info_span, warn};
use uuid::Uuid;

/// Counts of what a worker did, returned when it stops.
#[derive(Debug, Clone, Default)]
pub struct WorkerStats {
    pub completed: u64,
    pub succeeded: u64,
    /// Completions refused because the task's lease had been taken over.
    pub fenced: u64,
    pub elapsed: Duration,
}

pub struct Worker {
    id: String,
    config: WorkerConfig,
    exec: Arc<Executor>,
}

struct Shared {
    id: String,
    store: AnyStore,
    config: WorkerConfig,
    inflight: Mutex<HashMap<Uuid, InFlight>>,
    /// Set when shutdown begins: stop claiming, release tasks not started.
    shutdown: CancelToken,
    /// Set when the grace period is over: interrupt running tasks.
    interrupt: CancelToken,
    wake: Notify,
    /// One permit per task held (claimed and not yet completed), up to
    /// `concurrency` + the most the prefetch setting ever allows.
    claim_slots: Arc<Semaphore>,
    /// One permit per child run under way or whose end is not written yet:
    /// `concurrency` + `child_backlog` of them, when `child_backlog` bounds
    /// them (see [`super::config::DEFAULT_CHILD_BACKLOG`]).
    child_slots: Option<Arc<Semaphore>>,
    /// How fast runs finish: sizes an adaptive prefetch.
    pace: Pace,
    /// Claimed tasks whose run has not ended (buffered or running): while
    /// there are none, no completion is coming that a linger could batch.
    running: AtomicUsize,
    completed: AtomicU64,
    succeeded: AtomicU64,
    fenced: AtomicU64,
    /// A [`check_cancels`] is under way.
    checking_cancels: AtomicBool,
}

/// A claimed task whose completion is not written yet: the lease the
/// heartbeat extends, its cancel token, and the span that puts its id,
/// attempt, module, queue and worker on every log line about it, wherever
/// the line is written.
struct InFlight {
    epoch: u64,
    tokens: Tokens,
    span: Span,
    /// The run ended; only its completion write is pending.
    finished: bool,
}

/// What runners tell the completer: a run started, or ended. (One message
/// per run either way, so the size difference of the variants costs less
/// than boxing every completion would.)
#[allow(clippy::large_enum_variant)]
enum Report {
    Started(Started),
    Done(Completion, Span, Permits),
}

/// What a completion holds until it is written: its claim slot and, for a
/// child, its slot in the children's backlog.
struct Permits {
    _claim: OwnedSemaphorePermit,
    _child: Option<OwnedSemaphorePermit>,
}

/// How a completion fared in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    Applied,
    /// The lease was no longer this worker's: nothing changed.
    Fenced,
    /// The database refused the completion even alone; the task was failed
    /// with a host error instead (`true` if that write applied).
    Unstorable(bool),
    /// The database stayed unreachable: the task's lease runs out and a
    /// reaper takes it back.
    Abandoned,
}

/// How long the completer waits to fill a batch once it holds one completion.
const COMPLETE_LINGER: Duration = Duration::from_millis(2);
/// A claimed task waiting for a runner, with its cancel token, span and claim slot.
type Work = (ClaimedTask, Tokens, Span, OwnedSemaphorePermit);

/// The two ways a run is stopped from outside. `cancel` ends it as
/// cancelled (an operator's request); `cancel` together with `halt` means
/// the run is no longer this worker's to finish (the grace period ran out,
/// or the lease was lost): it ends without touching what it started (a Ray
/// job keeps running for whoever takes the task next).
#[derive(Clone, Default)]
struct Tokens {
    cancel: CancelToken,
    halt: CancelToken,
}

impl Worker {
    pub fn new(exec: Executor, config: WorkerConfig) -> Worker {
        let host = hostname();
        let short = Uuid::new_v4().simple().to_string();
        Worker {
            id: format!("{host}-{}-{}", std::process::id(), &short[..8]),
            config,
            exec: Arc::new(exec),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Runs until `stop` resolves (or, with `exit_when_idle`, until no work is
    /// left), then shuts down gracefully: no new claims, in-flight tasks get
    /// the grace period, the rest are interrupted and released.
    pub async fn run(self, stop: impl Future<Output = ()> + Send) -> anyhow::Result<WorkerStats> {
        let started = Instant::now();
        let store = self.exec.store.clone();
        let cfg = self.config.clone();
        store
            .register_worker(&WorkerInfo {
                id: self.id.clone(),
                hostname: hostname(),
                pid: std::process::id(),
                mode: cfg.mode.as_str().into(),
                queues: cfg.queues.clone(),
                concurrency: cfg.concurrency,
            })
            .await?;
        crate::metrics::global().heartbeat(&self.id);
        info!(worker = %self.id, mode = cfg.mode.as_str(), queues = %cfg.queues,
            concurrency = cfg.concurrency, prefetch = %cfg.prefetch, backend = store.backend_name(),
            "worker started");

        let shared = Arc::new(Shared {
            id: self.id.clone(),
            store: store.clone(),
            inflight: Mutex::new(HashMap::new()),
            shutdown: CancelToken::new(),
            interrupt: CancelToken::new(),
            wake: Notify::new(),
            claim_slots: Arc::new(Semaphore::new(cfg.max_held() as usize)),
            child_slots: (cfg.child_backlog > 0).then(|| {
                Arc::new(Semaphore::new(
                    (cfg.concurrency + cfg.child_backlog) as usize,
                ))
            }),
            pace: Pace::default(),
            running: AtomicUsize::new(0),
            completed: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            fenced: AtomicU64::new(0),
            checking_cancels: AtomicBool::new(false),
            config: cfg.clone(),
        });
        let (done_tx, done_rx) = mpsc::unbounded_channel::<Report>();

        let mut background = JoinSet::new();
        background.spawn(heartbeat(shared.clone()));
        background.spawn(reaper(shared.clone(), self.exec.clone()));
        background.spawn(listener(shared.clone()));
        let completer = tokio::spawn(completer(shared.clone(), done_rx));

        // A fixed pool of runners pulls claimed tasks from one local queue:
        // while work is buffered they never park, so a short task costs no
        // thread wake-up.
        let (work_tx, work_rx) = mpsc::unbounded_channel::<Work>();
        let work_rx = Arc::new(tokio::sync::Mutex::new(work_rx));
        let mut runners = JoinSet::new();
        for _ in 0..cfg.concurrency {
            runners.spawn(runner(
                shared.clone(),
                self.exec.clone(),
                work_rx.clone(),
                done_tx.clone(),
            ));
        }
        {
            // Stopping only raises the flag: a claim in progress completes, so
            // no task is left leased without a runner to run or release it.
            let claim = claim_loop(&shared, &work_tx);
            tokio::pin!(claim, stop);
            tokio::select! {
                r = &mut claim => r?,
                () = &mut stop => {
                    info!(worker = %self.id, "stop requested: finishing in-flight tasks");
                    shared.shutdown.cancel();
                    claim.await?;
                }
            }
        }

        // Graceful shutdown: runners release what is still buffered and
        // finish what runs, within the grace period.
        shared.shutdown.cancel();
        drop(work_tx);
        let drained = tokio::time::timeout(cfg.grace, async {
            while runners.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            let n = shared.inflight.lock().unwrap().len();
            warn!(worker = %self.id, tasks = n, grace = ?cfg.grace,
                "grace period over: interrupting and requeueing the remaining tasks");
            shared.interrupt.cancel();
            for t in shared.inflight.lock().unwrap().values() {
                t.tokens.halt.cancel();
                t.tokens.cancel.cancel();
            }
            while runners.join_next().await.is_some() {}
        }
        drop(done_tx);
        completer.await?;
        background.abort_all();
        crate::metrics::global().forget_worker(&self.id);
        if let Err(e) = store.stop_worker(&self.id).await {
            warn!(worker = %self.id, error = %e, "could not mark the worker stopped");
        }
        let stats = WorkerStats {
            completed: shared.completed.load(Ordering::Relaxed),
            succeeded: shared.succeeded.load(Ordering::Relaxed),
            fenced: shared.fenced.load(Ordering::Relaxed),
            elapsed: started.elapsed(),
        };
        info!(worker = %self.id, completed = stats.completed, succeeded = stats.succeeded,
            "worker stopped");
        Ok(stats)
    }
}

async fn claim_loop(
    shared: &Arc<Shared>,
    work_tx: &mpsc::UnboundedSender<Work>,
) -> anyhow::Result<()> {
    let cfg = &shared.config;
    let mut db_backoff = Duration::from_millis(100);
    loop {
        if shared.shutdown.is_cancelled() {
            return Ok(());
        }
        // Claim in large batches: wait until a quarter of the target is
        // free, unless the tasks still held are too few to keep every
        // runner busy.
        let target = cfg.concurrency + shared.pace.prefetch(cfg.prefetch, cfg.concurrency);
        let held = cfg.max_held() - shared.claim_slots.available_permits() as u32;
        let want = target.saturating_sub(held);
        let free = if want >= (target / 4).max(1) || held <= cfg.concurrency {
            want.min(cfg.claim_batch)
        } else {
            0
        };
        if free == 0 {
            tokio::select! {
                () = shared.wake.notified() => {}
                () = shared.shutdown.cancelled() => {}
            }
            continue;
        }
        let tasks = match shared
            .store
            .claim(&shared.id, &cfg.queues, free, cfg.lease)
            .await
        {
            Ok(t) => {
                db_backoff = Duration::from_millis(100);
                t
            }
            Err(e) => {
                // A claim whose reply was lost may have leased tasks that
                // this worker never learns of: no heartbeat names them, so
                // their leases run out and a reaper requeues them.
                fault(FaultKind::ClaimFailed);
                warn!(worker = %shared.id, error = %e, "claiming failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(db_backoff) => {}
                    () = shared.shutdown.cancelled() => {}
                }
                db_backoff = (db_backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let got = tasks.len() as u32;
        for task in tasks {
            let permit = shared
                .claim_slots
                .clone()
                .try_acquire_owned()
                .expect("only the claim loop takes claim slots");
            let tokens = Tokens::default();
            if task.cancel_requested {
                tokens.cancel.cancel();
            }
            let span = task_span(
                task.id,
                task.attempt,
                &format!("{}@{}", task.module_name, task.module_version),
                &task.queue,
                &shared.id,
            );
            shared.running.fetch_add(1, Ordering::Relaxed);
            shared.inflight.lock().unwrap().insert(
                task.id,
                InFlight {
                    epoch: task.epoch,
                    tokens: tokens.clone(),
                    span: span.clone(),
                    finished: false,
                },
            );
            if work_tx.send((task, tokens, span, permit)).is_err() {
                anyhow::bail!("all task runners stopped");
            }
        }
        if got == free {
            continue;
        }
        if cfg.exit_when_idle && got == 0 && is_idle(shared).await {
            info!(worker = %shared.id, "no work left: exiting");
            return Ok(());
        }
        tokio::select! {
            () = shared.wake.notified() => {}
            () = tokio::time::sleep(cfg.poll_interval) => {}
            () = shared.shutdown.cancelled() => {}
        }
    }
}

/// Nothing in flight here and nothing queued or running on our queues.
async fn is_idle(shared: &Shared) -> bool {
    if shared.claim_slots.available_permits() < shared.config.max_held() as usize {
        return false;
    }
    match shared.store.queue_stats().await {
        Ok(stats) => !stats.iter().any(|s| {
            shared.config.queues.matches(&s.queue) && s.state.is_unfinished() && s.count > 0
        }),
        Err(_) => false,
    }
}

async fn runner(
    shared: Arc<Shared>,
    exec: Arc<Executor>,
    work: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Work>>>,
    done_tx: mpsc::UnboundedSender<Report>,
) {
    loop {
        let next = work.lock().await.recv().await;
        let Some((task, tokens, span, claim_permit)) = next else {
            return;
        };
        let child_permit = match &shared.child_slots {
            Some(slots) if task.depth > 0 && !shared.shutdown.is_cancelled() => {
                slots.clone().acquire_owned().await.ok()
            }
            _ => None,
        };
        let completion = async {
            let c = if shared.shutdown.is_cancelled() {
                release(&task)
            } else {
                let at = Utc::now();
                let clock = Instant::now();
                let _ = done_tx.send(Report::Started(Started {
                    lease: task.lease(),
                    at,
                }));
                // A panic in the executor must not leave the task leased
                // and heartbeated forever: it ends the run as a host error.
                let run = exec.execute(&shared.id, &task, tokens.cancel, &tokens.halt);
                let mut c = match AssertUnwindSafe(run).catch_unwind().await {
                    Ok(c) => c,
                    Err(panic) => {
                        let message = panic_message(&panic);
                        error!(panic = %message, "the task's runner panicked");
                        exec.panicked(&task, &message)
                    }
                };
                c.started_at = Some(at);
                shared.pace.record(clock.elapsed());
                c
            };
            log_end(&c);
            c
        }
        .instrument(span.clone())
        .await;
        if let Some(t) = shared.inflight.lock().unwrap().get_mut(&task.id) {
            t.finished = true;
        }
        // The claim slot is freed, and the task forgotten, once the
        // completion is written.
        let permits = Permits {
            _claim: claim_permit,
            _child: child_permit,
        };
        let _ = done_tx.send(Report::Done(completion, span, permits));
        // After the send: the completer, seeing no run under way, must find
        // this completion already queued.
        shared.running.fetch_sub(1, Ordering::Release);
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Gives a task back untouched (shutdown before it started).
fn release(task: &ClaimedTask) -> Completion {
    Completion {
        task_id: task.id,
        attempt: task.attempt,
        epoch: task.epoch,
        started_at: None,
        report: AttemptReport {
            error_message: Some("the worker shut down before running the task".into()),
            ..AttemptReport::of(OutcomeKind::Shutdown)
        },
        transition: Transition::Release,
        spawns: Vec::new(),
    }
}

fn log_end(c: &Completion) {
    let r = &c.report;
    match &c.transition {
        Transition::Succeed { .. } => {
            debug!(outcome = %r.outcome, duration_ms = r.duration_ms, fuel = r.fuel_used, "task succeeded")
        }
        Transition::Retry { run_after } => {
            info!(outcome = %r.outcome, error = r.error_message.as_deref().unwrap_or(""),
            retry_at = %run_after, "attempt failed; will retry")
        }
        Transition::Fail => {
            info!(outcome = %r.outcome, error = r.error_message.as_deref().unwrap_or(""), "task failed")
        }
        Transition::Cancel => info!("task cancelled"),
        Transition::Release => info!("task released for another worker"),
        Transition::Defer { run_after } => {
            warn!(outcome = %r.outcome, error = r.error_message.as_deref().unwrap_or(""),
            retry_at = %run_after, "could not run the task here; requeued without spending the attempt")
        }
        Transition::Wait { awaited, .. } => {
            debug!(
                children = awaited.len(),
                spawned = c.spawns.len(),
                "task waits for its children"
            )
        }
    }
}

/// Most tries of one write while the database cannot be reached.
const MAX_WRITE_TRIES: u32 = 20;

/// Writes starts and completions in batches. A batch the database refuses
/// is split until the one completion it cannot store is found; that task is
/// failed with a host error instead, so one guest's output never holds back
/// the others. A write that keeps failing because the database is away is
/// retried with backoff, then abandoned: the task is forgotten, so no
/// heartbeat extends its lease, and a reaper takes it back.
async fn completer(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Report>) {
    while let Some(first) = rx.recv().await {
        // Linger briefly for more: each write is a durable commit, so fewer,
        // larger batches are what lets short tasks drain fast. When no run
        // is under way nothing more is coming, and a linger would only
        // delay what waits on these: a single task's result, or the parent
        // that the last of its children requeues.
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + COMPLETE_LINGER;
        while batch.len() < shared.config.complete_batch * 2 {
            match rx.try_recv() {
                Ok(d) => batch.push(d),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty)
                    if shared.running.load(Ordering::Acquire) == 0 || children_blocked(&shared) =>
                {
                    break;
                }
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(until, rx.recv()).await {
                        Ok(Some(d)) => batch.push(d),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
        let mut starts = Vec::new();
        let mut completions = Vec::with_capacity(batch.len());
        let mut spans = Vec::with_capacity(batch.len());
        let mut permits = Vec::with_capacity(batch.len());
        for report in batch {
            match report {
                Report::Started(s) => starts.push(s),
                Report::Done(c, span, permit) => {
                    completions.push(c);
                    spans.push(span);
                    permits.push(permit);
                }
            }
        }
        // A run that also ended in this batch carries its start time in its
        // completion: one write instead of two.
        let ended: HashSet<Uuid> = completions.iter().map(|c| c.task_id).collect();
        starts.retain(|s| !ended.contains(&s.lease.task_id));
        if !starts.is_empty() {
            write_starts(&shared, &starts).await;
        }
        if completions.is_empty() {
            continue;
        }
        let written = write_completions(&shared, &completions).await;
        debug!(tasks = completions.len(), "completions written");
        wake_for_retries(&shared, &completions);
        {
            let mut inflight = shared.inflight.lock().unwrap();
            for c in &completions {
                inflight.remove(&c.task_id);
            }
        }
        for ((c, w), span) in completions.iter().zip(&written).zip(&spans) {
            match w {
                Written::Applied => {
                    if matches!(c.transition, Transition::Succeed { .. }) {
                        shared.succeeded.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Written::Fenced => {
                    shared.fenced.fetch_add(1, Ordering::Relaxed);
                    span.in_scope(|| {
                        warn!("completion refused: the task's lease was taken over")
                    });
                }
                Written::Unstorable(applied) => span.in_scope(|| {
                    warn!(applied, "the completion could not be stored: the task failed with a host error instead")
                }),
                Written::Abandoned => span.in_scope(|| {
                    error!("giving up writing the completion: the lease will expire and a reaper will take the task back")
                }),
            }
        }
        shared
            .completed
            .fetch_add(completions.len() as u64, Ordering::Relaxed);
        drop(permits);
        shared.wake.notify_one();
    }
}

/// Every slot of the children's backlog is taken: the runners of children
/// wait for this write, so lingering would only hold them up.
fn children_blocked(shared: &Shared) -> bool {
    shared
        .child_slots
        .as_ref()
        .is_some_and(|s| s.available_permits() == 0)
}

fn fault(kind: FaultKind) {
    crate::metrics::global().fault(kind);
}

/// Start writes are an optimisation of what the task row shows: a failed
/// one is logged, and the completion records the start time anyway.
async fn write_starts(shared: &Shared, starts: &[Started]) {
    if let Err(e) = shared.store.mark_started(&shared.id, starts).await {
        fault(FaultKind::StartFailed);
        warn!(worker = %shared.id, error = %e, tasks = starts.len(),
            "could not mark started tasks running; their completions will record the start");
    }
}

/// Writes `completions`, splitting the batch when the database refuses it;
/// one result per completion, in order.
fn write_completions<'a>(
    shared: &'a Shared,
    completions: &'a [Completion],
) -> Pin<Box<dyn Future<Output = Vec<Written>> + Send + 'a>> {
    Box::pin(async move {
        let e = match write_with_retries(shared, completions).await {
            Ok(applied) => {
                return applied
                    .into_iter()
                    .map(|ok| {
                        if ok {
                            Written::Applied
                        } else {
                            Written::Fenced
                        }
                    })
                    .collect();
            }
            Err(e) => e,
        };
        if e.is_transient() {
            fault(FaultKind::CompletionAbandoned);
            warn!(worker = %shared.id, error = %e, tasks = completions.len(),
                "the database stayed unreachable while writing completions");
            return vec![Written::Abandoned; completions.len()];
        }
        if completions.len() > 1 {
            fault(FaultKind::CompletionSplit);
            warn!(worker = %shared.id, error = %e, tasks = completions.len(),
                "the database refused a completion batch: splitting it to find the bad one");
            let (a, b) = completions.split_at(completions.len() / 2);
            let mut written = write_completions(shared, a).await;
            written.extend(write_completions(shared, b).await);
            return written;
        }
        fault(FaultKind::CompletionUnstorable);
        let replacement = unstorable_completion(&completions[0], &e);
        match write_with_retries(shared, std::slice::from_ref(&replacement)).await {
            Ok(applied) => vec![Written::Unstorable(applied[0])],
            Err(e) => {
                fault(FaultKind::CompletionAbandoned);
                warn!(worker = %shared.id, error = %e,
                    "could not even store the failure of an unstorable completion");
                vec![Written::Abandoned]
            }
        }
    })
}

/// One write, tried again with backoff while the error is transient and the
/// grace period after a shutdown has not run out.
async fn write_with_retries(
    shared: &Shared,
    completions: &[Completion],
) -> Result<Vec<bool>, StoreError> {
    let mut delay = Duration::from_millis(100);
    let mut tries = 0;
    loop {
        tries += 1;
        match shared.store.complete(&shared.id, completions).await {
            Ok(applied) => return Ok(applied),
            Err(e) if e.is_transient() && tries < MAX_WRITE_TRIES => {
                fault(FaultKind::CompletionRetried);
                warn!(worker = %shared.id, error = %e, tasks = completions.len(),
                    "writing completions failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shared.interrupt.cancelled() => return Err(e),
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Retries become claimable at their `run_after`: wake the claim loop then
/// rather than at the next poll.
fn wake_for_retries(shared: &Arc<Shared>, completions: &[Completion]) {
    let first = completions
        .iter()
        .filter_map(|c| match c.transition {
            Transition::Retry { run_after } | Transition::Defer { run_after } => Some(run_after),
            _ => None,
        })
        .min();
    if let Some(at) = first {
        let wait = (at - Utc::now()).to_std().unwrap_or_default();
        if wait < shared.config.poll_interval {
            let shared = shared.clone();
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                shared.wake.notify_one();
            });
        }
    }
}

/// Extends exactly the leases of the tasks in flight here (running, or
/// finished and waiting for their completion write). A lease the store
/// could not extend is lost: the task was reaped or taken over, so its guest
/// is stopped at once (its completion would be fenced off anyway).
async fn heartbeat(shared: Arc<Shared>) {
    let every = shared.config.heartbeat_interval();
    let mut failures: u32 = 0;
    loop {
        tokio::time::sleep(every).await;
        let leases: Vec<Lease> = shared
            .inflight
            .lock()
            .unwrap()
            .iter()
            .map(|(&task_id, t)| Lease {
                task_id,
                epoch: t.epoch,
            })
            .collect();
        match shared
            .store
            .heartbeat(&shared.id, &leases, shared.config.lease)
            .await
        {
            Ok(reply) => {
                if failures > 0 {
                    info!(worker = %shared.id, failures, "heartbeats work again");
                }
                failures = 0;
                crate::metrics::global().heartbeat(&shared.id);
                for id in reply.lost {
                    lose_inflight(&shared, id);
                }
                for id in reply.cancel_requested {
                    cancel_inflight(&shared, id);
                }
            }
            Err(e) => {
                failures += 1;
                fault(FaultKind::HeartbeatFailed);
                warn!(worker = %shared.id, error = %e, consecutive = failures,
                    leases = leases.len(), lease = ?shared.config.lease,
                    "heartbeat failed; leases run out unless a later one gets through");
            }
        }
    }
}

fn cancel_inflight(shared: &Shared, id: Uuid) {
    if let Some(t) = shared.inflight.lock().unwrap().get(&id) {
        if !t.tokens.cancel.is_cancelled() && !t.finished {
            t.span
                .in_scope(|| info!("cancellation requested: interrupting the task"));
        }
        t.tokens.cancel.cancel();
    }
}

/// Events were missed, or (SQLite) another process committed: a cancel
/// request for one of this worker's tasks may be among them. Asks the
/// database (a read), at most one check at a time, only with tasks in
/// flight; the heartbeat would learn it too, a third of a lease later.
fn check_cancels(shared: &Arc<Shared>) {
    if shared.inflight.lock().unwrap().is_empty()
        || shared.checking_cancels.swap(true, Ordering::AcqRel)
    {
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        match shared.store.cancel_requests(&shared.id).await {
            Ok(ids) => ids.into_iter().for_each(|id| cancel_inflight(&shared, id)),
            Err(e) => debug!(error = %e, "could not check for cancel requests"),
        }
        shared.checking_cancels.store(false, Ordering::Release);
    });
}

fn lose_inflight(shared: &Shared, id: Uuid) {
    let inflight = shared.inflight.lock().unwrap();
    let Some(t) = inflight.get(&id) else { return };
    // A finished run whose completion was written just before this
    // heartbeat looks lost too: nothing runs that could be stopped.
    if t.finished {
        return;
    }
    fault(FaultKind::LeaseLost);
    t.span
        .in_scope(|| warn!("lease lost (the task was reaped or taken over): stopping the run"));
    t.tokens.halt.cancel();
    t.tokens.cancel.cancel();
}

async fn reaper(shared: Arc<Shared>, exec: Arc<Executor>) {
    let mut tick = tokio::time::interval(shared.config.reaper_interval);
    loop {
        tick.tick().await;
        if let Err(e) = reap_once(&shared, &exec).await {
            warn!(worker = %shared.id, error = %e, "reaper pass failed");
        }
    }
}

async fn reap_once(shared: &Shared, exec: &Executor) -> anyhow::Result<()> {
    let store = &shared.store;
    for t in store.expired_leases(100).await? {
        let transition = match exec.policy.decide(
            FailureKind::LeaseExpired,
            t.counted_attempt(),
            t.max_attempts,
        ) {
            Some(delay) => Transition::Retry {
                run_after: Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default(),
            },
            None => Transition::Fail,
        };
        if store.expire(t.id, t.epoch, transition.clone()).await? {
            task_span(t.id, t.attempt, &t.module, &t.queue, &shared.id).in_scope(|| {
                warn!(lost_worker = %t.lease_owner,
                    // A pending cancel request turns a requeue into `cancelled`.
                    retry_planned = matches!(transition, Transition::Retry { .. }),
                    "took back a task whose worker stopped heartbeating")
            });
        }
    }
    let stale = store
        .mark_stale_workers(shared.config.stale_after())
        .await?;
    if stale > 0 {
        info!(workers = stale, "marked silent workers stopped");
    }
    Ok(())
}

async fn listener(shared: Arc<Shared>) {
    loop {
        let mut l = match shared.store.listen().await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot listen for events; polling only for now");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        loop {
            match l.recv().await {
                Ok(StoreEvent::TaskAvailable { queue }) => {
                    if shared.config.queues.matches(&queue) {
                        shared.wake.notify_one();
                    }
                }
                Ok(StoreEvent::CancelRequested { id }) => cancel_inflight(&shared, id),
                Ok(StoreEvent::Missed) => {
                    shared.wake.notify_one();
                    check_cancels(&shared);
                }
                Err(e) => {
                    debug!(error = %e, "event listener lost its connection");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// The span of every log line about one attempt of a task: with
/// `--log-format json` its fields appear on each such line.
fn task_span(id: Uuid, attempt: u32, module: &str, queue: &str, worker: &str) -> Span {
    info_span!("task", task_id = %id, attempt, module, queue, worker)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
