//! Cluster mode: claimed tasks run in Ray jobs (`wasmq exec` on a Ray node),
//! submitted through the Job Submission REST API, up to `--ray-batch` tasks
//! of one module and queue per job ([`super::batching`]).
//!
//! One attempt, start to end:
//! 1. If the previous attempt's worker died (`lease-expired`) while its job
//!    was still alive or finished unread, attach to that job instead of
//!    submitting another: a task runs once per job. The job's metadata must
//!    list this task at an earlier attempt, and name this module.
//! 2. Otherwise join the open batch of the task's module and queue. The
//!    batch's submitter waits for a free job slot (the batch fills up
//!    meanwhile), records the job's submission id `wasmq-<first task's id>-
//!    <attempt>` on every task, makes sure the package is on the cluster
//!    (check, upload if missing: Ray deletes unused packages) and submits.
//!    "Already exists" means this batch was submitted before (a retried
//!    POST): attach to it, but only if its metadata lists every task at this
//!    attempt and names this module. Otherwise the job is not ours: it is
//!    left alone (not stopped, not read) and the attempts end as host
//!    errors; the retries get new submission ids.
//! 3. Follow the job through its [`Watch`], shared by its tasks: status
//!    polls (every 250 ms, slower for long jobs), and a read of its logs
//!    whenever the runner wakes the worker ([`super::wakeup`]) after a run.
//!    The worker's heartbeat keeps the leases meanwhile. A task ends as soon
//!    as its own envelope is in the logs. A cancel ends the task at once;
//!    the job is stopped when none of its tasks wants it any more. A job
//!    still PENDING after `--ray-pending-timeout` is stopped and its tasks'
//!    attempts end as (retried) host errors.
//! 4. Finish the task through [`Executor::finish`] like local mode. Once
//!    every task of the job has read its result and the job has ended, the
//!    job is deleted — only a job this worker submitted, and only while all
//!    its tasks are still ours at their attempts: a job adopted by a later
//!    attempt is never deleted under it.
//!
//! | Ray says                              | the attempt ends as                      |
//! |---------------------------------------|------------------------------------------|
//! | the task's envelope, job running or ended | the envelope's outcome               |
//! | SUCCEEDED without the task's envelope | host-error (retried)                     |
//! | FAILED (the runner crashed) before the task's envelope | host-error (retried)    |
//! | FAILED, RUNTIME_ENV_SETUP_FAILURE     | host-error (retried; the package is re-checked) |
//! | (a cancel from wasmq)                 | cancelled, at once                       |
//! | STOPPED by someone else               | host-error (retried)                     |
//! | PENDING past the pending timeout      | host-error (retried); the job is stopped |
//! | "already exists" with other metadata  | host-error (retried); the job is left alone |
//! | unreachable, 5xx, job vanished        | requeued with backoff as a free run, attempt not spent, until the task has [`DEFAULT_MAX_DEFERS`] free runs |
//! | worker shutting down                  | released; the job keeps running and the next worker attaches (stopped instead if no task of it is wanted) |
//!
//! Every Ray call of a task's own path watches the worker's interrupt token
//! (the end of the grace period), so no request (30 s) or upload (300 s)
//! holds the worker's exit. Jobs that must stop but whose stop failed are
//! tried again by a sweep that runs every minute while the worker runs (it
//! also stops the jobs whose tasks all ended while nobody followed the job)
//! and are logged when the worker stops.

use super::batching::{
    Afterwards, BATCH_LINGER, BatchKey, DEFAULT_RAY_BATCH, JobEnd, Joined, Leave, Member,
    OpenBatch, Shipment, Watch,
};
use super::envelope::Envelope;
use super::executor::Executor;
use super::grants::sealed_of;
use super::shipping::{
    BATCH_FILE, BatchItem, DEFAULT_INPUT_ENV_MAX, HTTP_CA_FILE, Runner, SECRETS_FILE,
};
use super::wakeup::{self, WakeAddress};
use crate::kinds::OutcomeKind;
use crate::ray::{
    JobDetails, JobStatus, RUNTIME_ENV_SETUP_FAILURE, RayClient, RayError, RuntimeEnv,
    SubmitRequest,
};
use crate::runtime::{CancelToken, Limits, Outcome, RunReport, Runtime};
use crate::store::{AnyStore, ClaimedTask, Completion, Store, TaskRecord, TaskState, Transition};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tracing::{Instrument, debug, info, info_span, warn};
use uuid::Uuid;

/// First status poll interval.
pub const DEFAULT_RAY_POLL: Duration = Duration::from_millis(250);
/// A running job's logs are also read every this many status polls, for
/// the runs whose wake-ups did not arrive.
pub const LOGS_EVERY_POLLS: u32 = 8;
/// Polls slow down (×1.5 each) after a job has run this long …
pub const POLL_BACKOFF_AFTER: Duration = Duration::from_secs(10);
/// … up to this interval.
pub const MAX_RAY_POLL: Duration = Duration::from_secs(5);
/// A job still PENDING this long after the attempt started following it is
/// stopped: the cluster lacks the resources it asks for, or cannot schedule
/// it. Ray's own limit (`RAY_JOB_START_TIMEOUT_SECONDS`) is 15 minutes.
pub const DEFAULT_RAY_PENDING_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Requeue delay when the cluster is unreachable: doubles per consecutive
/// failure of this worker, up to the cap.
pub const UNREACHABLE_BACKOFF_BASE: Duration = Duration::from_secs(1);
pub const UNREACHABLE_BACKOFF_CAP: Duration = Duration::from_secs(60);
/// Consecutive "cluster unavailable" ends of one task that are requeued
/// without spending the attempt; the next one spends it (about 5 minutes of
/// an unreachable cluster with the backoff above).
pub const DEFAULT_MAX_DEFERS: u32 = 10;
/// How much of a crashed runner's log output is kept with the attempt.
const CRASH_LOG_TAIL: usize = 8 * 1024;
/// Stop calls per job (each one already retried by the client on
/// connection errors and 5xx), the pause between them, and the most one
/// call may take.
const STOP_TRIES: u32 = 3;
const STOP_RETRY_DELAY: Duration = Duration::from_secs(1);
const STOP_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Once the grace period is over, what is left to do for a job (read the
/// task, stop the job) must not hold the worker's exit longer than this.
const AT_EXIT_BUDGET: Duration = Duration::from_secs(5);
/// How long a worker on its way out waits for the jobs whose results it has
/// read to end, so that it can delete them.
pub const SETTLE_AT_EXIT: Duration = Duration::from_secs(10);
/// How often the sweep looks for jobs that must not keep running.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Settings of the cluster mode (flags of `wasmq worker --cluster`).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub poll_interval: Duration,
    /// Keep finished jobs on the cluster instead of deleting them once read.
    pub keep_jobs: bool,
    pub num_cpus: Option<f64>,
    /// Bytes.
    pub memory: Option<u64>,
    pub resources: BTreeMap<String, f64>,
    pub input_env_max: usize,
    /// See [`DEFAULT_RAY_PENDING_TIMEOUT`].
    pub pending_timeout: Duration,
    /// See [`DEFAULT_MAX_DEFERS`].
    pub max_defers: u32,
    /// Most tasks in one job (`--ray-batch`).
    pub batch: u32,
    /// Jobs in flight at once (`--max-in-flight`).
    pub max_jobs: u32,
    /// Where runners' wake-ups arrive (`--ray-wake`).
    pub wake: WakeAddress,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            poll_interval: DEFAULT_RAY_POLL,
            keep_jobs: false,
            num_cpus: None,
            memory: None,
            resources: BTreeMap::new(),
            input_env_max: DEFAULT_INPUT_ENV_MAX,
            pending_timeout: DEFAULT_RAY_PENDING_TIMEOUT,
            max_defers: DEFAULT_MAX_DEFERS,
            batch: DEFAULT_RAY_BATCH,
            max_jobs: crate::worker::DEFAULT_MAX_IN_FLIGHT,
            wake: WakeAddress::Auto,
        }
    }
}

/// A worker's connection to one Ray cluster.
pub struct Cluster {
    pub client: RayClient,
    pub runner: Runner,
    pub config: ClusterConfig,
    /// Consecutive "unreachable" ends, for the requeue backoff.
    unreachable: AtomicU32,
    /// One package check at a time, so that jobs starting together upload a
    /// missing package once, not once each.
    shipping: tokio::sync::Mutex<()>,
    /// Jobs that had to stop but whose stop call failed: the sweep tries
    /// again, and whatever is left is logged when the worker stops.
    unstopped: Arc<Mutex<BTreeSet<String>>>,
    sweeps: Once,
    sweeper: Mutex<Option<tokio::task::AbortHandle>>,
    listener: Mutex<Option<tokio::task::AbortHandle>>,
    /// Job slots: a batch is submitted once it has one.
    jobs: Arc<Semaphore>,
    /// The batch still gathering tasks, per module and queue.
    batches: Mutex<HashMap<BatchKey, Arc<OpenBatch>>>,
    /// The jobs followed, by submission id.
    watches: Arc<Mutex<HashMap<String, Arc<Watch>>>>,
    /// The wake-up socket until its listener starts, and its address.
    wake_socket: Mutex<Option<std::net::UdpSocket>>,
    wake_address: Option<std::net::SocketAddr>,
}

/// How an attempt ended, before it is mapped onto the state machine.
enum End {
    Report(Box<RunReport>),
    /// Shutdown: leave the job running; the next worker attaches to it.
    Interrupted,
    /// The cluster could not be used: requeue without spending the attempt.
    Unavailable(String),
}

/// Why the work on a job stopped before it had an [`End`].
enum Halt {
    Ray(RayError),
    /// The grace period ended during a Ray call.
    Interrupted,
}

impl From<RayError> for Halt {
    fn from(e: RayError) -> Self {
        Halt::Ray(e)
    }
}

/// Races a Ray call against the end of the grace period. Dropping the call
/// aborts its request, which is safe for every call: a submit that reached
/// Ray is found again under the same submission id.
async fn or_interrupt<T>(
    shutdown: &CancelToken,
    call: impl Future<Output = Result<T, RayError>>,
) -> Result<T, Halt> {
    tokio::select! {
        biased;
        () = shutdown.cancelled() => Err(Halt::Interrupted),
        r = call => r.map_err(Halt::Ray),
    }
}

/// The submission id of one attempt: deterministic, so that a retried
/// submit or a restarted worker finds the job instead of starting another.
pub fn submission_id(task: &ClaimedTask) -> String {
    format!("wasmq-{}-{}", task.id, task.attempt)
}

/// Which attempt an adopted job must carry in its metadata.
#[derive(Debug, Clone, Copy)]
enum AdoptAs {
    /// "Already exists": this very attempt.
    ThisAttempt,
    /// The job of a dead worker: an earlier attempt.
    EarlierAttempt,
}

/// Whether `job` is the job this worker would have submitted for `task`:
/// the same task, the same module bytes, the expected attempt. Ray lets
/// anyone pick any submission id, so the id alone proves nothing.
fn check_adoptable(job: &JobDetails, task: &ClaimedTask, adopt: AdoptAs) -> Result<(), String> {
    let meta = job.metadata.as_ref().ok_or("it has no metadata")?;
    let want = &task.module_sha256;
    match meta.get("wasmq_module_sha256") {
        Some(got) if got == want => {}
        got => {
            return Err(format!(
                "its wasmq_module_sha256 is {got:?}, expected {want:?}"
            ));
        }
    }
    let Some(&(_, attempt)) = job_tasks(job).iter().find(|(id, _)| *id == task.id) else {
        return Err(format!(
            "its wasmq_task_id is {:?} and its wasmq_tasks {:?}: neither names task {}",
            meta.get("wasmq_task_id"),
            meta.get("wasmq_tasks"),
            task.id
        ));
    };
    let ok = match adopt {
        AdoptAs::ThisAttempt => attempt == Some(task.attempt),
        AdoptAs::EarlierAttempt => attempt.is_some_and(|a| a >= 1 && a < task.attempt),
    };
    if ok {
        Ok(())
    } else {
        Err(match adopt {
            AdoptAs::ThisAttempt => {
                format!(
                    "its wasmq_attempt for this task is {attempt:?}, expected {}",
                    task.attempt
                )
            }
            AdoptAs::EarlierAttempt => format!(
                "its wasmq_attempt for this task is {attempt:?}, expected one before {}",
                task.attempt
            ),
        })
    }
}

/// The decision for an attempt the cluster could not run. `defers_before`
/// is the task's free runs so far ([`ClaimedTask::free_runs`]).
/// `Some(run_after)`: requeue without spending the attempt. `None`: spend it
/// (the retry policy then retries or fails it as a host error).
pub fn defer_or_spend(
    defers_before: u32,
    max_defers: u32,
    delay: Duration,
) -> Option<DateTime<Utc>> {
    (defers_before < max_defers)
        .then(|| Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default())
}

impl Cluster {
    pub fn new(client: RayClient, runner: Runner, config: ClusterConfig) -> Cluster {
        let jobs = Arc::new(Semaphore::new(config.max_jobs.max(1) as usize));
        let wake_socket = match wakeup::bind(&config.wake, client.address()) {
            Ok(socket) => socket,
            Err(e) => {
                warn!(error = %e, "no wake-ups from runners (--ray-wake): results arrive at \
                      the status polls");
                None
            }
        };
        let wake_address = wake_socket.as_ref().and_then(|s| s.local_addr().ok());
        if let Some(at) = wake_address {
            info!(%at, "listening for runners' wake-ups");
        }
        Cluster {
            client,
            runner,
            config,
            unreachable: AtomicU32::new(0),
            shipping: tokio::sync::Mutex::new(()),
            unstopped: Arc::new(Mutex::new(BTreeSet::new())),
            sweeps: Once::new(),
            sweeper: Mutex::new(None),
            listener: Mutex::new(None),
            jobs,
            batches: Mutex::new(HashMap::new()),
            watches: Arc::new(Mutex::new(HashMap::new())),
            wake_socket: Mutex::new(wake_socket),
            wake_address,
        }
    }

    /// Waits, at most `within`, for the jobs this worker still follows to
    /// end and be deleted: a task's result is read before its job ends, so
    /// a worker exiting when idle would otherwise leave finished jobs
    /// behind on the cluster.
    pub async fn settle(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left = self.watches.lock().unwrap().len();
            if left == 0 {
                return;
            }
            if Instant::now() > deadline {
                info!(jobs = left, "leaving Ray jobs that have not ended yet");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs one attempt of `task` in a Ray job; see the module documentation.
    pub async fn execute(
        self: &Arc<Self>,
        exec: &Executor,
        worker_id: &str,
        task: &ClaimedTask,
        cancel: CancelToken,
        shutdown: &CancelToken,
    ) -> Completion {
        self.start_sweeps(&exec.store);
        let started = Instant::now();
        let span = info_span!("ray_task");
        let end = async {
            match self.run_job(exec, worker_id, task, &cancel, shutdown).await {
                Ok(end) => end,
                Err(Halt::Interrupted) => End::Interrupted,
                Err(Halt::Ray(e))
                    if e.is_unavailable() || matches!(e, RayError::NotFound { .. }) =>
                {
                    End::Unavailable(e.to_string())
                }
                Err(Halt::Ray(e)) => {
                    End::Report(Box::new(host_error(task, format!("Ray: {e}"), None)))
                }
            }
        }
        .instrument(span)
        .await;
        match end {
            End::Report(report) => {
                self.unreachable.store(0, Ordering::Relaxed);
                exec.finish(task, *report, false, started.elapsed()).await
            }
            End::Interrupted => {
                let report = host_error(task, "the worker shut down".into(), None);
                exec.complete(task, report, true, started.elapsed())
            }
            End::Unavailable(message) => {
                let n = self.unreachable.fetch_add(1, Ordering::Relaxed);
                let delay = UNREACHABLE_BACKOFF_BASE
                    .saturating_mul(1 << n.min(10))
                    .min(UNREACHABLE_BACKOFF_CAP);
                // Free runs are durable: the cap holds across worker
                // restarts (a release at shutdown counts too).
                let defers_before = task.free_runs;
                let address = self.client.address();
                match defer_or_spend(defers_before, self.config.max_defers, delay) {
                    Some(run_after) => {
                        let message = format!(
                            "Ray cluster {address} unavailable: {message}; requeued for {delay:?} \
                             without spending the attempt"
                        );
                        let mut c = exec.complete(
                            task,
                            host_error(task, message, None),
                            false,
                            started.elapsed(),
                        );
                        c.transition = Transition::Defer { run_after };
                        c
                    }
                    None => {
                        let message = format!(
                            "Ray cluster {address} unavailable: {message}; the attempt is spent \
                             after {defers_before} runs that did not spend one"
                        );
                        exec.complete(
                            task,
                            host_error(task, message, None),
                            false,
                            started.elapsed(),
                        )
                    }
                }
            }
        }
    }

    async fn run_job(
        self: &Arc<Self>,
        exec: &Executor,
        worker_id: &str,
        task: &ClaimedTask,
        cancel: &CancelToken,
        shutdown: &CancelToken,
    ) -> Result<End, Halt> {
        let store = &exec.store;
        let not_run = |outcome: Outcome| {
            Ok(End::Report(Box::new(RunReport::not_run(
                outcome,
                task.module_sha256.clone(),
            ))))
        };
        if cancel.is_cancelled() && !shutdown.is_cancelled() {
            // This attempt may have submitted a job before its task was
            // released: with the task cancelled, nobody would follow it.
            let id = submission_id(task);
            let note = match self.stop(&id, shutdown).await {
                Ok(true) => format!("; stopped its Ray job {id}"),
                Ok(false) => String::new(),
                Err(e) => format!("; could not stop its Ray job {id}: {e}"),
            };
            return not_run(Outcome::Cancelled {
                message: format!("cancelled before its Ray job was submitted{note}"),
            });
        }
        let limits = match exec.limits_for(task) {
            Ok(l) => l,
            Err(refused) => return not_run(refused),
        };
        // The runner has no database: its recorded children travel with it.
        let plan = match super::spawning::plan_for(store, task, exec.maxima).await {
            Ok(plan) => plan,
            Err(refused) => return not_run(refused),
        };
        // The runner has no database either: the module's grants travel
        // with the job. HTTP grants are not secret (the guest cannot read
        // them); secrets travel sealed, and the runner opens them with the
        // key file the operator put on the Ray nodes.
        let granted = match exec.grants_for(task).await {
            Ok(g) => g.map(|g| Shipment {
                grants: g,
                ca_pem: exec.grants.ca_pem(),
                key_file: exec.grants.key_file().map(Path::to_path_buf),
            }),
            Err(refused) => return not_run(refused),
        };
        let watch = match self
            .orphan_of_previous_attempt(store, task, shutdown)
            .await?
        {
            Some(prev) => {
                info!(previous = %prev,
                    "attaching to the job of the previous run, which ended without reading it");
                record(store, worker_id, task, &prev).await;
                self.adopt(&prev)
            }
            None => {
                let member = Member {
                    task: task.clone(),
                    limits: limits.clone(),
                    plan,
                };
                let batch = self.join(exec, worker_id, member, granted);
                let mut joined = batch.subscribe();
                let mut withdrawn = false;
                let joined = loop {
                    tokio::select! {
                        biased;
                        r = joined.wait_for(Option::is_some) => {
                            break r.expect("the batch outlives its tasks").clone()
                                .expect("waited for it");
                        }
                        () = shutdown.cancelled() => {
                            // Out of the batch, or in a job whose id is
                            // recorded on the task: the next worker adopts it.
                            batch.withdraw(task.id);
                            return Err(Halt::Interrupted);
                        }
                        () = cancel.cancelled(), if !withdrawn => {
                            if batch.withdraw(task.id) {
                                return not_run(Outcome::Cancelled {
                                    message: "cancelled before its Ray job was submitted".into(),
                                });
                            }
                            // Submitted already: the job's watch hears of it.
                            withdrawn = true;
                        }
                    }
                };
                match joined {
                    Joined::Job(watch) => watch,
                    Joined::Ray(e) => return Err(Halt::Ray(e)),
                    Joined::Host(message) => {
                        return Ok(End::Report(Box::new(host_error(task, message, None))));
                    }
                }
            }
        };
        let span = info_span!("ray_job", submission_id = %watch.job_id);
        self.follow(store, worker_id, task, &watch, &limits, cancel, shutdown)
            .instrument(span)
            .await
    }

    /// Puts `member` in the open batch of its module and queue, or opens
    /// one (and starts its submitter).
    fn join(
        self: &Arc<Self>,
        exec: &Executor,
        worker_id: &str,
        member: Member,
        granted: Option<Shipment>,
    ) -> Arc<OpenBatch> {
        let key = BatchKey::of(&member.task);
        let mut batches = self.batches.lock().unwrap();
        let member = match batches.get(&key) {
            Some(open) => match open.try_join(
                member,
                self.config.batch as usize,
                self.config.input_env_max,
            ) {
                Ok(()) => return open.clone(),
                Err(member) => *member,
            },
            None => member,
        };
        let open = Arc::new(OpenBatch::new(member, granted));
        batches.insert(key, open.clone());
        let (this, store, runtime) = (self.clone(), exec.store.clone(), exec.runtime.clone());
        tokio::spawn(
            this.submit_batch(open.clone(), store, runtime, worker_id.to_string())
                .instrument(info_span!("ray_batch")),
        );
        open
    }

    /// Gathers a batch until a job slot is free (and, briefly, until the
    /// batch is full), then records its job's id on every task and submits
    /// the job; announces the outcome to the batch's tasks.
    async fn submit_batch(
        self: Arc<Self>,
        batch: Arc<OpenBatch>,
        store: AnyStore,
        runtime: Arc<Runtime>,
        worker_id: String,
    ) {
        let slot = self.jobs.clone().acquire_owned();
        tokio::pin!(slot);
        let permit = loop {
            tokio::select! {
                p = &mut slot => break p.expect("the semaphore is never closed"),
                () = batch.changed.notified() => {
                    // Every task withdrew (cancelled, or the worker stops).
                    if batch.close_if_empty() {
                        self.forget(&batch);
                        return;
                    }
                }
            }
        };
        let full = self.config.batch as usize;
        let linger = tokio::time::sleep(BATCH_LINGER);
        tokio::pin!(linger);
        while batch.len() < full {
            tokio::select! {
                () = &mut linger => break,
                () = batch.changed.notified() => {}
            }
        }
        self.forget(&batch);
        let members = batch.close();
        if members.is_empty() {
            return;
        }
        let id = submission_id(&members[0].task);
        for m in &members {
            record(&store, &worker_id, &m.task, &id).await;
        }
        let watch = Arc::new(Watch::submitted(id.clone(), members.len(), permit));
        // Known before the submit: the runner's first wake-up can come
        // before Ray answers it.
        self.watches
            .lock()
            .unwrap()
            .insert(id.clone(), watch.clone());
        let joined = match self.submit(&store, &runtime, &batch, &id, &members).await {
            Ok(()) => {
                debug!(job = %id, tasks = members.len(), "job submitted");
                Joined::Job(watch.clone())
            }
            Err(Submitted::Ray(RayError::AlreadyExists { .. })) => {
                match self.client.job(&id).await {
                    Ok(job) => {
                        let foreign = members.iter().find_map(|m| {
                            check_adoptable(&job, &m.task, AdoptAs::ThisAttempt).err()
                        });
                        match foreign {
                            None => {
                                info!(job = %id, "job already submitted: attaching to it");
                                Joined::Job(watch.clone())
                            }
                            Some(why) => {
                                warn!(job = %id, %why, "a Ray job with this batch's submission \
                                      id exists but was not submitted for it: not attaching");
                                Joined::Host(format!(
                                    "Ray job {id} already exists but is not this attempt's job \
                                     ({why}): its result is not trusted and the job is left alone"
                                ))
                            }
                        }
                    }
                    Err(e) => Joined::Ray(e),
                }
            }
            Err(Submitted::Ray(e)) => Joined::Ray(e),
            Err(Submitted::Host(message)) => Joined::Host(message),
        };
        match &joined {
            Joined::Job(watch) => {
                tokio::spawn(self.clone().poll(watch.clone()));
            }
            Joined::Ray(_) | Joined::Host(_) => self.forget_watch(&watch),
        }
        batch.announce(joined);
    }

    /// Removes `batch` from the open batches, if it is still the one there.
    fn forget(&self, batch: &Arc<OpenBatch>) {
        let mut batches = self.batches.lock().unwrap();
        if batches
            .get(&batch.key)
            .is_some_and(|b| Arc::ptr_eq(b, batch))
        {
            batches.remove(&batch.key);
        }
    }

    /// Follows an earlier attempt's job, sharing its watch with other
    /// adopters of the same job.
    fn adopt(self: &Arc<Self>, job_id: &str) -> Arc<Watch> {
        let mut watches = self.watches.lock().unwrap();
        if let Some(w) = watches.get(job_id)
            && w.follow()
        {
            return w.clone();
        }
        let w = Arc::new(Watch::adopted(job_id.to_string()));
        watches.insert(job_id.to_string(), w.clone());
        tokio::spawn(self.clone().poll(w.clone()));
        w
    }

    /// Follows a job for its tasks: polls its status to its end and
    /// publishes the end (with its logs when it ran), reads its logs
    /// whenever a runner says a run ended, and stops a job still PENDING
    /// past the pending timeout. Once every task has left it deletes the
    /// job (when [`Watch::deletable`]) and frees the job's slot.
    async fn poll(self: Arc<Self>, watch: Arc<Watch>) {
        let id = watch.job_id.as_str();
        let started = Instant::now();
        let mut every = self.config.poll_interval;
        let mut read_logs = false;
        let mut polls = 0u32;
        let end = loop {
            if watch.is_abandoned() && !watch.deletable(self.config.keep_jobs) {
                break None;
            }
            // The node is published before any envelope (a task records
            // its node before its end): once it is known, the logs a
            // runner woke us for come first.
            if read_logs && watch.node().is_some() {
                read_logs = false;
                self.read_running_logs(&watch).await;
            }
            let j = match self.client.job(id).await {
                Ok(j) => j,
                Err(e) => break Some(JobEnd::Lost(e)),
            };
            if let Some(node) = j.node_id() {
                watch.publish_node(node);
            }
            if read_logs && !j.status.is_terminal() {
                read_logs = false;
                self.read_running_logs(&watch).await;
            }
            if j.status.is_terminal() {
                let ran = match j.status {
                    JobStatus::Succeeded => true,
                    JobStatus::Failed => j.error_type.as_deref() != Some(RUNTIME_ENV_SETUP_FAILURE),
                    _ => false,
                };
                let logs = if ran {
                    Some(self.client.logs(id).await.map(Arc::from))
                } else {
                    None
                };
                break Some(JobEnd::Terminal {
                    job: Box::new(j),
                    logs,
                });
            }
            if j.status == JobStatus::Pending && started.elapsed() > self.config.pending_timeout {
                let timeout = self.config.pending_timeout;
                warn!(
                    job = id,
                    ?timeout,
                    "the Ray job is still PENDING: stopping it"
                );
                let stopped = match self.stop(id, &CancelToken::new()).await {
                    // Ray's stop is fire-and-forget: a job whose supervisor
                    // cannot be scheduled stays PENDING until Ray gives up.
                    Ok(_) => "its stop was requested".to_string(),
                    Err(e) => format!("stopping it failed ({e}); the worker keeps trying"),
                };
                let ray_says = j.message.as_deref().unwrap_or("").trim();
                break Some(JobEnd::PendingTimeout(format!(
                    "Ray job {id} was still PENDING after the pending timeout of \
                     {timeout:?} (--ray-pending-timeout): the cluster may lack the resources \
                     it asks for; {stopped}. Ray says: {}",
                    first_line(ray_says)
                )));
            }
            if started.elapsed() > POLL_BACKOFF_AFTER {
                every = every.mul_f64(1.5).min(MAX_RAY_POLL);
            }
            // Wake-ups may be lost (UDP) or blocked: runs that ended still
            // come in within a few polls.
            polls += 1;
            if j.status == JobStatus::Running && polls.is_multiple_of(LOGS_EVERY_POLLS) {
                read_logs = true;
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = watch.wake.notified() => {}
                () = watch.logged.notified() => read_logs = true,
            }
        };
        if let Some(end) = end {
            let terminal = matches!(end, JobEnd::Terminal { .. });
            watch.publish_end(end);
            while !watch.is_abandoned() {
                watch.wake.notified().await;
            }
            if terminal && watch.deletable(self.config.keep_jobs) {
                match self.client.delete(id).await {
                    Ok(_) => debug!(job = id, "deleted the finished Ray job"),
                    Err(e) => warn!(job = id, error = %e, "could not delete the finished Ray job"),
                }
            }
        }
        watch.release();
        self.forget_watch(&watch);
    }

    /// Publishes the envelopes in a running job's logs, decoded once here,
    /// not once per task.
    async fn read_running_logs(&self, watch: &Watch) {
        match self.client.logs(&watch.job_id).await {
            Ok(logs) => watch.publish_envelopes(Envelope::all_in(&logs)),
            Err(e) => {
                debug!(job = %watch.job_id, error = %e, "could not read the running job's logs")
            }
        }
    }

    /// Waits for `task`'s result from `watch`'s job: its envelope in the
    /// logs read while the job runs, or the job's end. A cancel ends the
    /// task at once (the job is stopped once none of its tasks wants it),
    /// and the worker's shutdown leaves the job to the next worker.
    #[allow(clippy::too_many_arguments)]
    async fn follow(
        &self,
        store: &AnyStore,
        worker_id: &str,
        task: &ClaimedTask,
        watch: &Arc<Watch>,
        limits: &Limits,
        cancel: &CancelToken,
        shutdown: &CancelToken,
    ) -> Result<End, Halt> {
        let task_id = task.id.to_string();
        let mut seen = watch.subscribe();
        let mut node_recorded = false;
        let found = loop {
            let (node, result) = {
                let s = seen.borrow_and_update();
                let node = s.node.clone().filter(|_| !node_recorded);
                let result = match &s.end {
                    Some(end) => Some(Err(end.clone())),
                    None => s.envelopes.get(&task_id).map(|e| Ok(e.clone())),
                };
                (node, result)
            };
            // Before the result: the attempt is still open to the write.
            if let Some(node) = node {
                node_recorded = true;
                record_node(store, worker_id, task, &node).await;
            }
            if let Some(result) = result {
                break result;
            }
            tokio::select! {
                biased;
                r = seen.changed() => r.expect("the watch outlives its tasks"),
                () = shutdown.cancelled() => {
                    return Ok(self.interrupted(store, task, watch, shutdown).await);
                }
                () = cancel.cancelled() => {
                    info!("cancellation requested");
                    let message = self.cancel_in(watch, "cancelled", shutdown).await;
                    return Ok(End::Report(Box::new(cancelled(task, message))));
                }
            }
        };
        let read = match found {
            Ok(envelope) => {
                debug!(
                    runner_ms = envelope.runner_ms,
                    "run read from the running job's logs"
                );
                Ok(End::Report(Box::new(envelope.into_checked_report(limits))))
            }
            Err(end) => self.read_end(task, watch, &end, limits),
        };
        // Whether a later attempt may have adopted the job: it must not be
        // deleted under it. Only asked when the job might be deleted.
        let ours = matches!(read, Ok(End::Report(_)))
            && (self.config.keep_jobs || still_ours(store, worker_id, task).await);
        if watch.leave(Leave::Read { ours }) == Afterwards::Stop {
            // The last task to read its result, with a cancelled one's run
            // still going in the job.
            if let Err(e) = self.stop(&watch.job_id, shutdown).await {
                warn!(error = %e, "could not stop the Ray job of cancelled runs");
            }
        }
        read
    }

    fn forget_watch(&self, watch: &Arc<Watch>) {
        let mut watches = self.watches.lock().unwrap();
        if watches
            .get(&watch.job_id)
            .is_some_and(|w| Arc::ptr_eq(w, watch))
        {
            watches.remove(&watch.job_id);
        }
    }

    /// A task of `watch`'s job is cancelled: it leaves, and if none of the
    /// job's tasks wants what it still runs, the job is stopped. The message
    /// for the task's attempt starts with `what`.
    async fn cancel_in(&self, watch: &Arc<Watch>, what: &str, shutdown: &CancelToken) -> String {
        let id = &watch.job_id;
        if watch.leave(Leave::Cancelled) != Afterwards::Stop {
            return format!(
                "{what}; Ray job {id} runs on for the other tasks of its batch, and this \
                 task's result from it is ignored"
            );
        }
        match self.stop(id, shutdown).await {
            Ok(_) => format!("{what}: Ray job {id} stopped"),
            Err(e) => format!(
                "{what}; stopping Ray job {id} failed ({e}): it may still run, and the worker \
                 keeps trying to stop it"
            ),
        }
    }

    /// The grace period is over while the job runs. Normally the job is left
    /// running for the next worker, which attaches to it. But a task whose
    /// cancellation is pending ends `cancelled` when released, and no worker
    /// would ever look at its job again for it.
    async fn interrupted(
        &self,
        store: &AnyStore,
        task: &ClaimedTask,
        watch: &Arc<Watch>,
        shutdown: &CancelToken,
    ) -> End {
        let cancel_pending = tokio::time::timeout(AT_EXIT_BUDGET, store.get_task(task.id))
            .await
            .ok()
            .and_then(Result::ok)
            .is_some_and(|t| t.cancel_requested);
        if !cancel_pending {
            info!("worker shutting down: leaving the job running for the next worker");
            watch.leave(Leave::Interrupted);
            return End::Interrupted;
        }
        info!("worker shutting down with the task's cancellation pending");
        let message = self
            .cancel_in(watch, "cancelled while the worker shut down", shutdown)
            .await;
        End::Report(Box::new(cancelled(task, message)))
    }

    /// The previous run's job, if that run ended without reading it (its
    /// worker died and the reaper requeued the task as `lease-expired`, or
    /// it shut down and released the task) and the job is still running or
    /// finished with its result unread.
    async fn orphan_of_previous_attempt(
        &self,
        store: &AnyStore,
        task: &ClaimedTask,
        shutdown: &CancelToken,
    ) -> Result<Option<String>, Halt> {
        if task.attempt < 2 {
            return Ok(None);
        }
        let record = match store.get_task(task.id).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cannot read the task's previous job; submitting a new one");
                return Ok(None);
            }
        };
        let Some(prev) = record.ray_submission_id else {
            return Ok(None);
        };
        // Only a run that ended without reading its job leaves one to adopt:
        // its worker died (lease expired) or shut down (released). Attempt
        // numbers never repeat, so the next run cannot find the job under
        // its own submission id.
        let previous_run = match store.list_attempts(task.id).await {
            Ok(attempts) => attempts.into_iter().rfind(|a| {
                a.attempt < task.attempt && a.ray_submission_id.as_deref() == Some(&prev)
            }),
            Err(e) => {
                warn!(error = %e, "cannot read the task's previous runs; submitting a new job");
                return Ok(None);
            }
        };
        let unread = previous_run.is_some_and(|a| {
            matches!(
                a.outcome,
                Some(OutcomeKind::LeaseExpired | OutcomeKind::Shutdown)
            )
        });
        if !unread {
            return Ok(None);
        }
        match or_interrupt(shutdown, self.client.job(&prev)).await {
            Ok(j) if j.status == JobStatus::Stopped => Ok(None),
            Ok(j) => match check_adoptable(&j, task, AdoptAs::EarlierAttempt) {
                Ok(()) => Ok(Some(prev)),
                Err(why) => {
                    warn!(previous = %prev, %why,
                        "the previous attempt's Ray job is not this task's: submitting a new one");
                    Ok(None)
                }
            },
            Err(Halt::Ray(RayError::NotFound { .. })) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Ships the package (checked before every submit) and submits the job
    /// of `members`, the tasks of `batch`.
    async fn submit(
        &self,
        store: &AnyStore,
        runtime: &Runtime,
        batch: &OpenBatch,
        id: &str,
        members: &[Member],
    ) -> Result<(), Submitted> {
        let sha256 = &batch.key.module_sha256;
        let module = store
            .module_bytes(sha256)
            .await
            .map_err(|e| Submitted::Host(format!("loading module bytes: {e}")))?;
        // Copies tens of MB the first time a module is seen: off the
        // async threads' hot path.
        let base = match self.runner.built(sha256) {
            Some(p) => p,
            None => {
                // Compiled here once (or read from this machine's cache), so
                // that a node with the same engine does not compile it.
                let artifact = match runtime.artifact(module.clone()).await {
                    Ok(a) => a,
                    Err(e) => {
                        debug!(error = %e, "shipping the module without its artifact");
                        None
                    }
                };
                tokio::task::block_in_place(|| {
                    self.runner.package(sha256, &module, artifact.as_ref())
                })
                .map_err(|e| Submitted::Host(e.to_string()))?
            }
        };
        let wake = self.wake_address.map(|at| (at, id));
        let mut env = job_env(sha256, self.config.num_cpus, wake);
        // Values too large for the environment go into the package, as
        // files next to the module.
        let items: Vec<BatchItem> = members.iter().map(batch_item).collect();
        let items = serde_json::to_string(&items).expect("plain data serializes");
        let mut files: Vec<(&str, &str)> = Vec::new();
        if items.len() > self.config.input_env_max {
            env.insert("WASMQ_EXEC_BATCH_FILE".into(), BATCH_FILE.into());
            files.push((BATCH_FILE, &items));
        } else {
            env.insert("WASMQ_EXEC_BATCH_B64".into(), B64.encode(&items));
        }
        let granted = batch.granted.as_ref();
        let secrets = granted.and_then(shipped_secrets);
        if let Some(granted) = granted {
            granted_env(&mut env, granted).map_err(Submitted::Host)?;
            if let Some(json) = &secrets {
                if json.len() > self.config.input_env_max {
                    env.insert("WASMQ_EXEC_SECRETS_FILE".into(), SECRETS_FILE.into());
                    files.push((SECRETS_FILE, json));
                } else {
                    env.insert("WASMQ_EXEC_SECRETS_B64".into(), B64.encode(json));
                }
            }
            if let (Some(pem), Some(_)) = (&granted.ca_pem, &granted.grants.http) {
                if pem.len() > self.config.input_env_max {
                    env.insert("WASMQ_EXEC_HTTP_CA_FILE".into(), HTTP_CA_FILE.into());
                    files.push((HTTP_CA_FILE, &**pem));
                } else {
                    env.insert("WASMQ_EXEC_HTTP_CA_B64".into(), B64.encode(&**pem));
                }
            }
        }
        let big;
        let package = if files.is_empty() {
            &*base
        } else {
            big = tokio::task::block_in_place(|| Runner::package_with_files(&base, &files))
                .map_err(|e| Submitted::Host(e.to_string()))?;
            &big
        };
        let uploaded = {
            let _one_at_a_time = self.shipping.lock().await;
            self.client
                .ensure_package(package)
                .await
                .map_err(Submitted::Ray)?
        };
        if uploaded {
            info!(package = %package.name, bytes = package.bytes.len(), "uploaded the package");
        }
        let req = SubmitRequest {
            entrypoint: self.runner.entrypoint(),
            submission_id: Some(id.to_string()),
            runtime_env: Some(RuntimeEnv {
                working_dir: Some(package.uri()),
                env_vars: env,
            }),
            metadata: metadata(members, &self.runner),
            entrypoint_num_cpus: self.config.num_cpus,
            entrypoint_memory: self.config.memory,
            entrypoint_resources: self.config.resources.clone(),
        };
        self.client.submit(&req).await.map_err(Submitted::Ray)?;
        Ok(())
    }

    /// Stops `job_id` with a few tries; once the grace period is over, the
    /// tries left get [`AT_EXIT_BUDGET`]. Ok(false): the job had already
    /// ended or does not exist. A job that could not be stopped is
    /// remembered for the sweep and logged at exit.
    async fn stop(&self, job_id: &str, shutdown: &CancelToken) -> Result<bool, RayError> {
        let tries = stop_with_retries(&self.client, job_id);
        tokio::pin!(tries);
        let r = tokio::select! {
            r = &mut tries => r,
            () = shutdown.cancelled() => tokio::time::timeout(AT_EXIT_BUDGET, &mut tries)
                .await
                .unwrap_or_else(|_| {
                    Err(RayError::Unreachable {
                        url: self.client.address().to_string(),
                        message: format!("no answer to the stop within {AT_EXIT_BUDGET:?}"),
                    })
                }),
        };
        match &r {
            Ok(_) => {
                self.unstopped.lock().unwrap().remove(job_id);
            }
            Err(e) => {
                warn!(job = job_id, error = %e, "could not stop the Ray job; will try again");
                self.unstopped.lock().unwrap().insert(job_id.to_string());
            }
        }
        r
    }

    /// `task`'s end, from what Ray said about its job.
    fn read_end(
        &self,
        task: &ClaimedTask,
        watch: &Watch,
        end: &JobEnd,
        limits: &Limits,
    ) -> Result<End, Halt> {
        let id = &watch.job_id;
        let (job, logs) = match end {
            JobEnd::Lost(e) => return Err(Halt::Ray(e.clone())),
            JobEnd::PendingTimeout(message) => {
                return Ok(End::Report(Box::new(host_error(
                    task,
                    message.clone(),
                    None,
                ))));
            }
            JobEnd::Terminal { job, logs } => (job, logs),
        };
        let logs = match logs {
            Some(Ok(logs)) => Some(&**logs),
            // Succeeded, and its logs could not be read: try again later.
            Some(Err(e)) if job.status == JobStatus::Succeeded => return Err(Halt::Ray(e.clone())),
            Some(Err(_)) | None => None,
        };
        let single = job_tasks(job).len() <= 1;
        let envelope = logs.map(|logs| {
            Envelope::find_for(logs, &task.id.to_string()).or_else(|e| {
                // A job of one task from an older worker, whose runner did
                // not name the task (its metadata was checked on adoption).
                if single {
                    Envelope::find_in(logs)
                } else {
                    Err(e)
                }
            })
        });
        let ray_ms = job.ray_duration_ms();
        let message = job.message.as_deref().unwrap_or("").trim();
        let report = match (job.status, envelope) {
            (JobStatus::Succeeded | JobStatus::Failed, Some(Ok(env))) => {
                debug!(
                    ray_ms,
                    runner_ms = env.runner_ms,
                    "run read from the job's logs"
                );
                env.into_checked_report(limits)
            }
            (JobStatus::Succeeded, Some(Err(e))) => {
                host_error(task, format!("Ray job {id}: {e}"), logs)
            }
            (JobStatus::Failed, _)
                if job.error_type.as_deref() == Some(RUNTIME_ENV_SETUP_FAILURE) =>
            {
                host_error(
                    task,
                    format!(
                        "Ray job {id}: the working_dir package could not be set up \
                         (it will be uploaded again): {message}"
                    ),
                    None,
                )
            }
            (JobStatus::Failed, _) => {
                let code = job
                    .driver_exit_code
                    .map_or("unknown".to_string(), |c| c.to_string());
                host_error(
                    task,
                    format!(
                        "Ray job {id}: the runner crashed before this task's run ended (exit \
                         code {code}, {}): {}",
                        job.error_type.as_deref().unwrap_or("no error type"),
                        first_line(message)
                    ),
                    logs,
                )
            }
            (JobStatus::Stopped, _) => host_error(
                task,
                format!("Ray job {id} was stopped outside wasmq: {message}"),
                None,
            ),
            (JobStatus::Succeeded, None) | (JobStatus::Pending | JobStatus::Running, _) => {
                unreachable!("a succeeded job's logs are read; terminal states only")
            }
        };
        Ok(End::Report(Box::new(report)))
    }

    /// Starts the sweep (once per cluster, from the first task on).
    fn start_sweeps(&self, store: &AnyStore) {
        self.sweeps.call_once(|| {
            let (client, store, unstopped) =
                (self.client.clone(), store.clone(), self.unstopped.clone());
            let handle = tokio::spawn(async move {
                let sent = Mutex::new(BTreeSet::new());
                loop {
                    match sweep(&client, &store, &unstopped, &sent).await {
                        Ok(0) => {}
                        Ok(n) => info!(jobs = n, "stopped Ray jobs that nobody follows"),
                        Err(e) => debug!(error = %e, "sweep of Ray jobs failed"),
                    }
                    tokio::time::sleep(SWEEP_INTERVAL).await;
                }
            });
            *self.sweeper.lock().unwrap() = Some(handle.abort_handle());
            if let Some(socket) = self.wake_socket.lock().unwrap().take() {
                let watches = self.watches.clone();
                let handle = tokio::spawn(async move {
                    let woken = |job: &str| {
                        if let Some(w) = watches.lock().unwrap().get(job) {
                            w.logged.notify_one();
                        }
                    };
                    if let Err(e) = wakeup::listen(socket, woken).await {
                        warn!(error = %e, "wake-ups from runners stopped");
                    }
                });
                *self.listener.lock().unwrap() = Some(handle.abort_handle());
            }
        });
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for task in [&self.sweeper, &self.listener] {
            if let Some(h) = task.lock().unwrap().take() {
                h.abort();
            }
        }
        let left = self.unstopped.lock().unwrap();
        if !left.is_empty() {
            let jobs: Vec<&str> = left.iter().map(String::as_str).collect();
            warn!(jobs = %jobs.join(" "), "Ray jobs that should stop but could not be stopped \
                  may still be running: stop them with `ray job stop ID`");
        }
    }
}

/// One pass over the cluster's jobs: stops the running jobs of this
/// database's tasks that nobody will follow again (see [`is_orphan`]) and
/// the jobs whose stop failed earlier. Jobs of other databases (tasks this
/// store does not know) are left alone. Returns how many it stopped.
async fn sweep(
    client: &RayClient,
    store: &AnyStore,
    unstopped: &Mutex<BTreeSet<String>>,
    sent: &Mutex<BTreeSet<String>>,
) -> Result<usize, RayError> {
    let mut stopped = 0;
    let jobs = client.list().await?;
    // A stopped job may stay PENDING for long (its supervisor was never
    // scheduled): ask once per sweeper, not every minute.
    sent.lock().unwrap().retain(|id| {
        jobs.iter()
            .any(|j| j.submission_id.as_deref() == Some(id) && !j.status.is_terminal())
    });
    for job in &jobs {
        let Some(id) = job.submission_id.as_deref() else {
            continue;
        };
        if job.status.is_terminal() {
            unstopped.lock().unwrap().remove(id);
            continue;
        }
        if sent.lock().unwrap().contains(id) {
            continue;
        }
        let retry = unstopped.lock().unwrap().contains(id);
        // A batch's job is an orphan once every one of its tasks is.
        let tasks = job_tasks(job);
        let mut orphan = !tasks.is_empty();
        for (task_id, attempt) in tasks {
            orphan = match store.get_task(task_id).await {
                Ok(t) => is_orphan(&t, id, attempt),
                Err(_) => false,
            };
            if !orphan {
                break;
            }
        }
        if !(retry || orphan) {
            continue;
        }
        match stop_with_retries(client, id).await {
            Ok(_) => {
                unstopped.lock().unwrap().remove(id);
                sent.lock().unwrap().insert(id.to_string());
                info!(job = id, "stopped a Ray job whose task no worker follows");
                stopped += 1;
            }
            Err(e) => {
                warn!(job = id, error = %e, "could not stop a Ray job whose task no worker follows");
                unstopped.lock().unwrap().insert(id.to_string());
            }
        }
    }
    Ok(stopped)
}

/// The tasks (ids and attempts) wasmq put in a job's metadata: the list
/// of a batch's tasks, or the one task of a job from before batches.
fn job_tasks(job: &JobDetails) -> Vec<(Uuid, Option<u32>)> {
    let Some(meta) = job.metadata.as_ref() else {
        return Vec::new();
    };
    if let Some(list) = meta.get("wasmq_tasks") {
        return list
            .split(',')
            .filter_map(|t| {
                let (id, attempt) = t.split_once(':')?;
                Some((Uuid::parse_str(id).ok()?, attempt.parse().ok()))
            })
            .collect();
    }
    let Some(id) = meta
        .get("wasmq_task_id")
        .and_then(|id| Uuid::parse_str(id).ok())
    else {
        return Vec::new();
    };
    vec![(id, meta.get("wasmq_attempt").and_then(|a| a.parse().ok()))]
}

/// Whether a running job of `task` will never be read: the task has ended,
/// or a later attempt runs without it (it did not adopt it: adopting
/// records the job's id on the task).
fn is_orphan(task: &TaskRecord, job_id: &str, job_attempt: Option<u32>) -> bool {
    orphaned(
        task.state,
        task.attempt,
        task.ray_submission_id.as_deref(),
        job_id,
        job_attempt,
    )
}

fn orphaned(
    state: TaskState,
    attempt: u32,
    recorded_job: Option<&str>,
    job_id: &str,
    job_attempt: Option<u32>,
) -> bool {
    state.is_terminal()
        || (recorded_job != Some(job_id) && job_attempt.is_some_and(|a| a < attempt))
}

/// Stop calls until one is answered, each within [`STOP_CALL_TIMEOUT`].
async fn stop_with_retries(client: &RayClient, job_id: &str) -> Result<bool, RayError> {
    let mut last = None;
    for n in 0..STOP_TRIES {
        if n > 0 {
            tokio::time::sleep(STOP_RETRY_DELAY).await;
        }
        match tokio::time::timeout(STOP_CALL_TIMEOUT, client.stop(job_id)).await {
            Ok(Ok(stopped)) => return Ok(stopped),
            Ok(Err(RayError::NotFound { .. })) => return Ok(false),
            Ok(Err(e)) if e.is_unavailable() => last = Some(e),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                last = Some(RayError::Unreachable {
                    url: client.address().to_string(),
                    message: format!("no answer to the stop within {STOP_CALL_TIMEOUT:?}"),
                })
            }
        }
    }
    Err(last.expect("at least one try"))
}

/// Whether `task` is still leased by this worker at this attempt: only then
/// may the worker delete the attempt's job. A read error says no: a job left
/// behind costs less than one deleted under a later attempt.
async fn still_ours(store: &AnyStore, worker_id: &str, task: &ClaimedTask) -> bool {
    match store.get_task(task.id).await {
        Ok(t) => {
            t.lease_epoch == task.epoch
                && t.lease_owner.as_deref() == Some(worker_id)
                && !t.state.is_terminal()
        }
        Err(e) => {
            warn!(error = %e, "cannot check the task's lease; keeping its Ray job");
            false
        }
    }
}

/// Why a submission did not happen: the cluster's answer, or a local
/// failure (module bytes, package) that is a host error.
enum Submitted {
    Ray(RayError),
    Host(String),
}

/// Records the node that runs `task`'s job on its attempt; a failure only
/// loses that fact, so it is logged and the run goes on.
async fn record_node(store: &AnyStore, worker_id: &str, task: &ClaimedTask, node: &str) {
    match store.set_ray_node(worker_id, task.lease(), node).await {
        Ok(true) => debug!(node, "the Ray job runs on this node"),
        Ok(false) => debug!(node, "the run ended before its node was recorded"),
        Err(e) => warn!(node, error = %e, "could not record the Ray job's node"),
    }
}

/// Records the job on the task and attempt, so `task show` names it and a
/// later attempt can find it.
async fn record(store: &AnyStore, worker_id: &str, task: &ClaimedTask, id: &str) {
    match store.set_ray_submission(worker_id, task.lease(), id).await {
        Ok(true) => {}
        Ok(false) => warn!("could not record the Ray job: the task's lease was taken over"),
        Err(e) => warn!(error = %e, "could not record the Ray job"),
    }
}

/// What `wasmq exec` reads (see `cli/exec.rs`) besides the batch and the
/// grants. Ray expands `$VAR`/`${VAR}` in these values: user text (inputs,
/// queue names) travels base64-encoded in the batch; everything here is
/// digits, hex and fixed words.
fn job_env(
    module_sha256: &str,
    num_cpus: Option<f64>,
    wake: Option<(std::net::SocketAddr, &str)>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::from([
        ("WASMQ_EXEC_SHA256".into(), module_sha256.to_string()),
        // The runner's own log lines would only clutter the job's logs.
        ("WASMQ_LOG".into(), "warn".into()),
    ]);
    if let Some((at, job)) = wake {
        // An address and a submission id (`wasmq-UUID-N`): no `$`.
        env.insert("WASMQ_EXEC_WAKE".into(), at.to_string());
        env.insert("WASMQ_EXEC_JOB".into(), job.to_string());
    }
    if let Some(cpus) = num_cpus {
        // The runs of a batch share the CPUs Ray reserved for the job.
        let at_once = (cpus.ceil() as u64).max(1);
        env.insert("WASMQ_EXEC_CONCURRENCY".into(), at_once.to_string());
    }
    env
}

/// One task of a batch as the runner gets it.
fn batch_item(m: &Member) -> BatchItem {
    BatchItem {
        task_id: m.task.id.to_string(),
        attempt: m.task.attempt,
        max_attempts: m.task.max_attempts,
        queue: m.task.queue.clone(),
        input: m.task.input.clone(),
        limits: m.limits.clone(),
        subtasks: Some(m.plan.clone()),
    }
}

/// The grants in the runner's environment: the HTTP grants (canonical text,
/// one per line) with the worker's HTTP limits, the plain config values,
/// and the path of the key file that opens the secrets (which travel sealed,
/// [`shipped_secrets`]). No secret value is in it: `ray job list` shows
/// this environment.
fn granted_env(env: &mut BTreeMap<String, String>, granted: &Shipment) -> Result<(), String> {
    if let Some(policy) = &granted.grants.http {
        let grants: Vec<String> = policy.grants().iter().map(|g| g.to_string()).collect();
        let limits = policy.limits();
        env.extend([
            (
                "WASMQ_EXEC_ALLOW_HTTP_B64".into(),
                B64.encode(grants.join("\n")),
            ),
            (
                "WASMQ_HTTP_MAX_REQUESTS".into(),
                limits.max_requests.to_string(),
            ),
            (
                "WASMQ_HTTP_MAX_RESPONSE_BYTES".into(),
                limits.max_response_bytes.to_string(),
            ),
            (
                "WASMQ_HTTP_TIMEOUT".into(),
                format!("{}ms", limits.timeout.as_millis()),
            ),
        ]);
    }
    if !granted.grants.plain.is_empty() {
        let json = serde_json::to_string(&granted.grants.plain).expect("plain data serializes");
        env.insert("WASMQ_EXEC_CONFIG_B64".into(), B64.encode(json));
    }
    if !granted.grants.sealed.is_empty() {
        let Some(key_file) = &granted.key_file else {
            return Err(format!(
                "the module is granted secrets, and this worker has no key file to name \
                 to its Ray jobs: {}",
                crate::secrets::SecretError::NoKey
            ));
        };
        env.insert(
            crate::secrets::KEY_FILE_ENV.into(),
            key_file.display().to_string(),
        );
    }
    Ok(())
}

/// The granted secrets, sealed, as JSON for the runner
/// ([`ShippedSecret`]s); `None` when there are none.
fn shipped_secrets(granted: &Shipment) -> Option<String> {
    if granted.grants.sealed.is_empty() {
        return None;
    }
    let shipped: Vec<ShippedSecret> = granted
        .grants
        .sealed
        .iter()
        .map(|s| {
            let sealed = sealed_of(s);
            ShippedSecret {
                name: s.name.clone(),
                key_id: sealed.key_id,
                nonce: B64.encode(sealed.nonce),
                ciphertext: B64.encode(sealed.ciphertext),
            }
        })
        .collect();
    Some(serde_json::to_string(&shipped).expect("plain data serializes"))
}

/// A sealed secret as it travels to a runner: what the store holds, the
/// bytes in base64.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ShippedSecret {
    pub name: String,
    pub key_id: String,
    pub nonce: String,
    pub ciphertext: String,
}

/// Metadata shown by `ray job list` and the Ray dashboard, and checked
/// before a job is adopted: the first task's id and attempt, and every
/// task's as `ID:ATTEMPT,…`. Ray stores these values as given (no `$`
/// expansion: that happens to runtime_env values only).
fn metadata(members: &[Member], runner: &Runner) -> BTreeMap<String, String> {
    let first = &members[0].task;
    let tasks: Vec<String> = members
        .iter()
        .map(|m| format!("{}:{}", m.task.id, m.task.attempt))
        .collect();
    BTreeMap::from([
        ("wasmq_task_id".into(), first.id.to_string()),
        (
            "wasmq_module".into(),
            format!("{}@{}", first.module_name, first.module_version),
        ),
        ("wasmq_module_sha256".into(), first.module_sha256.clone()),
        ("wasmq_attempt".into(), first.attempt.to_string()),
        ("wasmq_tasks".into(), tasks.join(",")),
        ("wasmq_queue".into(), first.queue.clone()),
        ("wasmq_runner".into(), runner.identity()),
    ])
}

fn cancelled(task: &ClaimedTask, message: String) -> RunReport {
    RunReport::not_run(Outcome::Cancelled { message }, task.module_sha256.clone())
}

/// A host-error report; `logs` (a crashed job's output) are kept, tail first.
fn host_error(task: &ClaimedTask, message: String, logs: Option<&str>) -> RunReport {
    RunReport {
        stderr: logs.map(tail).unwrap_or_default(),
        ..RunReport::not_run(Outcome::HostError { message }, task.module_sha256.clone())
    }
}

fn tail(s: &str) -> String {
    let mut cut = s.len().saturating_sub(CRASH_LOG_TAIL);
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    s[cut..].to_string()
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TaskLimits;

    fn task(queue: &str, attempt: u32) -> ClaimedTask {
        ClaimedTask {
            id: Uuid::new_v4(),
            module_name: "hello".into(),
            module_version: "1".into(),
            module_sha256: "ab".repeat(32),
            queue: queue.into(),
            priority: 0,
            input: r#"{"name":"$HOME ${PATH} ${NOPE} $$"}"#.into(),
            attempt,
            epoch: u64::from(attempt),
            max_attempts: 3,
            free_runs: 0,
            limits: TaskLimits::default(),
            enqueued_at: Utc::now(),
            lease_expires_at: Utc::now(),
            cancel_requested: false,
            depth: 0,
            children: 0,
        }
    }

    #[test]
    fn no_runtime_env_value_holds_a_dollar() {
        // Ray would expand it on the node (see job_env): user text travels
        // in the batch, base64-encoded.
        let t = task("q$HOME${NOPE}", 2);
        let at = "[::1]:4000".parse().unwrap();
        let env = job_env(&t.module_sha256, Some(1.5), Some((at, "wasmq-x-1")));
        for (k, v) in &env {
            assert!(!v.contains('$'), "{k}={v}");
        }
        assert_eq!(env["WASMQ_EXEC_CONCURRENCY"], "2");
        assert_eq!(env["WASMQ_EXEC_WAKE"], "[::1]:4000");
        let plain = job_env(&t.module_sha256, None, None);
        assert!(!plain.contains_key("WASMQ_EXEC_CONCURRENCY"));
        assert!(!plain.contains_key("WASMQ_EXEC_WAKE"));
    }

    fn job_with(meta: &[(&str, String)]) -> JobDetails {
        serde_json::from_value(serde_json::json!({
            "submission_id": "wasmq-x-2",
            "status": "RUNNING",
            "metadata": meta.iter().cloned().collect::<BTreeMap<_, _>>(),
        }))
        .unwrap()
    }

    #[test]
    fn adopts_only_jobs_with_this_tasks_metadata() {
        let t = task("default", 2);
        let good = |attempt: &str| {
            vec![
                ("wasmq_task_id", t.id.to_string()),
                ("wasmq_module_sha256", t.module_sha256.clone()),
                ("wasmq_attempt", attempt.to_string()),
            ]
        };
        assert!(check_adoptable(&job_with(&good("2")), &t, AdoptAs::ThisAttempt).is_ok());
        assert!(check_adoptable(&job_with(&good("1")), &t, AdoptAs::EarlierAttempt).is_ok());
        for (attempt, adopt) in [
            ("1", AdoptAs::ThisAttempt),
            ("3", AdoptAs::ThisAttempt),
            ("2", AdoptAs::EarlierAttempt),
            ("0", AdoptAs::EarlierAttempt),
            ("x", AdoptAs::ThisAttempt),
        ] {
            let e = check_adoptable(&job_with(&good(attempt)), &t, adopt).unwrap_err();
            assert!(e.contains("wasmq_attempt"), "{e}");
        }
        let mut other_module = good("2");
        other_module[1].1 = "cd".repeat(32);
        let e = check_adoptable(&job_with(&other_module), &t, AdoptAs::ThisAttempt).unwrap_err();
        assert!(e.contains("wasmq_module_sha256"), "{e}");
        let mut other_task = good("2");
        other_task[0].1 = Uuid::new_v4().to_string();
        let e = check_adoptable(&job_with(&other_task), &t, AdoptAs::ThisAttempt).unwrap_err();
        assert!(e.contains("wasmq_task_id"), "{e}");
        let bare: JobDetails =
            serde_json::from_str(r#"{"submission_id": "wasmq-x-2", "status": "RUNNING"}"#).unwrap();
        assert!(check_adoptable(&bare, &t, AdoptAs::ThisAttempt).is_err());

        // A batch's job names its first task, and lists them all.
        let lead = Uuid::new_v4();
        let batch = |attempt: u32| {
            job_with(&[
                ("wasmq_task_id", lead.to_string()),
                ("wasmq_attempt", "1".into()),
                ("wasmq_module_sha256", t.module_sha256.clone()),
                ("wasmq_tasks", format!("{lead}:1,{}:{attempt},junk,:", t.id)),
            ])
        };
        assert!(check_adoptable(&batch(2), &t, AdoptAs::ThisAttempt).is_ok());
        assert!(check_adoptable(&batch(1), &t, AdoptAs::EarlierAttempt).is_ok());
        let e = check_adoptable(&batch(1), &t, AdoptAs::ThisAttempt).unwrap_err();
        assert!(e.contains("wasmq_attempt"), "{e}");
        assert_eq!(
            job_tasks(&batch(2)).len(),
            2,
            "malformed entries are skipped"
        );
        let mut lead_task = t.clone();
        lead_task.id = Uuid::new_v4();
        let e = check_adoptable(&batch(2), &lead_task, AdoptAs::ThisAttempt).unwrap_err();
        assert!(e.contains("wasmq_tasks"), "{e}");
    }

    #[test]
    fn defers_until_the_cap_then_spends() {
        let d = Duration::from_secs(4);
        for before in 0..3 {
            let at = defer_or_spend(before, 3, d).expect("deferred");
            assert!(at > Utc::now() + chrono::Duration::seconds(3));
        }
        assert_eq!(defer_or_spend(3, 3, d), None);
        assert_eq!(defer_or_spend(0, 0, d), None);
    }

    #[test]
    fn orphans_are_jobs_nobody_will_read() {
        use TaskState::*;
        // The task ended while the job ran.
        assert!(orphaned(Cancelled, 1, Some("j1"), "j1", Some(1)));
        assert!(orphaned(Failed, 3, Some("j3"), "j1", Some(1)));
        // Followed, or about to be adopted (a released or lease-expired task
        // keeps the job's id).
        assert!(!orphaned(Running, 1, Some("j1"), "j1", Some(1)));
        assert!(!orphaned(Queued, 1, Some("j1"), "j1", Some(1)));
        assert!(!orphaned(Running, 2, Some("j1"), "j1", Some(1)));
        // A later attempt runs its own job.
        assert!(orphaned(Running, 2, Some("j2"), "j1", Some(1)));
        // A deferred attempt's job, whose attempt number comes back.
        assert!(!orphaned(Queued, 0, Some("j1"), "j1", Some(1)));
        assert!(!orphaned(Running, 2, Some("j2"), "j9", None));
    }
}
