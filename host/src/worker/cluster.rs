//! Cluster mode: each claimed task runs as a Ray job (`wasmq exec` on a Ray
//! node), submitted through the Job Submission REST API.
//!
//! One attempt, start to end:
//! 1. If the previous attempt's worker died (`lease-expired`) while its job
//!    was still alive or finished unread, attach to that job instead of
//!    submitting another: a task runs once per job. The job's metadata must
//!    name this task and module and an earlier attempt.
//! 2. Otherwise make sure the package is on the cluster (check, upload if
//!    missing: Ray deletes unused packages), record the submission id
//!    `wasmq-<task id>-<attempt>` on the task, and submit. "Already exists"
//!    means this attempt was submitted before (a released task, a retried
//!    POST): attach to it, but only if its metadata (task id, attempt,
//!    module sha256) is what this worker would have submitted. Otherwise the
//!    job is not ours: it is left alone (not stopped, not read) and the
//!    attempt ends as a host error; the retry gets a new submission id.
//! 3. Poll the job (every 250 ms, slower for long jobs) while the worker's
//!    heartbeat keeps the lease; a cancel request stops the job. A job still
//!    PENDING after `--ray-pending-timeout` is stopped and the attempt ends as
//!    a (retried) host error.
//! 4. At the end, read the logs, parse the envelope, finish the task through
//!    [`Executor::complete`] like local mode, and delete the job — only the
//!    job this attempt submitted, and only while the task is still ours at
//!    this attempt: a job adopted by a later attempt is never deleted under it.
//!
//! | Ray says                              | the attempt ends as                      |
//! |---------------------------------------|------------------------------------------|
//! | SUCCEEDED, envelope                   | the envelope's outcome                   |
//! | SUCCEEDED without a readable envelope | host-error (retried)                     |
//! | FAILED (the runner crashed)           | host-error (retried)                     |
//! | FAILED, RUNTIME_ENV_SETUP_FAILURE     | host-error (retried; the package is re-checked) |
//! | STOPPED (or FAILED) after wasmq's stop | cancelled                                |
//! | STOPPED by someone else               | host-error (retried)                     |
//! | PENDING past the pending timeout      | host-error (retried); the job is stopped |
//! | "already exists" with other metadata  | host-error (retried); the job is left alone |
//! | unreachable, 5xx, job vanished        | requeued with backoff as a free run, attempt not spent, until the task has [`DEFAULT_MAX_DEFERS`] free runs |
//! | worker shutting down                  | released; the job keeps running and the next worker attaches (stopped instead if the task's cancellation is pending) |
//!
//! Every Ray call watches the worker's interrupt token (the end of the grace
//! period), so no request (30 s) or upload (300 s) holds the worker's exit.
//! Jobs that must stop but whose stop failed are tried again by a sweep that
//! runs every minute while the worker runs (it also stops the jobs of tasks
//! that ended while nobody followed their job) and are logged when the
//! worker stops.

use super::envelope::Envelope;
use super::executor::Executor;
use super::grants::{TaskGrants, sealed_of};
use super::shipping::{
    DEFAULT_INPUT_ENV_MAX, HTTP_CA_FILE, INPUT_FILE, Runner, SECRETS_FILE, SUBTASKS_FILE,
};
use crate::kinds::OutcomeKind;
use crate::ray::{
    JobDetails, JobStatus, RUNTIME_ENV_SETUP_FAILURE, RayClient, RayError, RuntimeEnv,
    SubmitRequest,
};
use crate::runtime::subtasks::SubtaskPlan;
use crate::runtime::{CancelToken, Limits, Outcome, RunReport};
use crate::store::{AnyStore, ClaimedTask, Completion, Store, TaskRecord, TaskState, Transition};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};
use tracing::{Instrument, debug, info, info_span, warn};
use uuid::Uuid;

/// First status poll interval.
pub const DEFAULT_RAY_POLL: Duration = Duration::from_millis(250);
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
/// After wasmq's stop, how long a job may stay PENDING or RUNNING before
/// the attempt ends as cancelled anyway: Ray's stop is fire-and-forget, and
/// a job whose supervisor was never scheduled stays PENDING regardless.
const STOP_SETTLE: Duration = Duration::from_secs(30);
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
    for (key, want) in [
        ("wasmq_task_id", task.id.to_string()),
        ("wasmq_module_sha256", task.module_sha256.clone()),
    ] {
        match meta.get(key) {
            Some(got) if *got == want => {}
            got => return Err(format!("its {key} is {got:?}, expected {want:?}")),
        }
    }
    let got = meta.get("wasmq_attempt");
    let attempt = got.and_then(|a| a.parse::<u32>().ok());
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
                    "its wasmq_attempt is {got:?}, expected \"{}\"",
                    task.attempt
                )
            }
            AdoptAs::EarlierAttempt => format!(
                "its wasmq_attempt is {got:?}, expected one before {}",
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
        Cluster {
            client,
            runner,
            config,
            unreachable: AtomicU32::new(0),
            shipping: tokio::sync::Mutex::new(()),
            unstopped: Arc::new(Mutex::new(BTreeSet::new())),
            sweeps: Once::new(),
            sweeper: Mutex::new(None),
        }
    }

    /// Runs one attempt of `task` as a Ray job; see the module documentation.
    pub async fn execute(
        &self,
        exec: &Executor,
        worker_id: &str,
        task: &ClaimedTask,
        cancel: CancelToken,
        shutdown: &CancelToken,
    ) -> Completion {
        self.start_sweeps(&exec.store);
        let started = Instant::now();
        let id = submission_id(task);
        let span = info_span!("ray_job", submission_id = %id);
        let end = async {
            match self
                .run_job(exec, worker_id, task, &id, &cancel, shutdown)
                .await
            {
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
        &self,
        exec: &Executor,
        worker_id: &str,
        task: &ClaimedTask,
        id: &str,
        cancel: &CancelToken,
        shutdown: &CancelToken,
    ) -> Result<End, Halt> {
        let store = &exec.store;
        if cancel.is_cancelled() && !shutdown.is_cancelled() {
            // This attempt may have submitted a job before its task was
            // released: with the task cancelled, nobody would follow it.
            let note = match self.stop(id, shutdown).await {
                Ok(true) => format!("; stopped its Ray job {id}"),
                Ok(false) => String::new(),
                Err(e) => format!("; could not stop its Ray job {id}: {e}"),
            };
            return Ok(End::Report(Box::new(RunReport::not_run(
                Outcome::Cancelled {
                    message: format!("cancelled before its Ray job was submitted{note}"),
                },
                task.module_sha256.clone(),
            ))));
        }
        let limits = match exec.limits_for(task) {
            Ok(l) => l,
            Err(refused) => {
                return Ok(End::Report(Box::new(RunReport::not_run(
                    refused,
                    task.module_sha256.clone(),
                ))));
            }
        };
        // The runner has no database: its recorded children travel with it.
        let plan = match super::spawning::plan_for(store, task, exec.maxima).await {
            Ok(plan) => plan,
            Err(refused) => {
                return Ok(End::Report(Box::new(RunReport::not_run(
                    refused,
                    task.module_sha256.clone(),
                ))));
            }
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
            Err(refused) => {
                return Ok(End::Report(Box::new(RunReport::not_run(
                    refused,
                    task.module_sha256.clone(),
                ))));
            }
        };
        let job_id = match self
            .orphan_of_previous_attempt(store, task, shutdown)
            .await?
        {
            Some(prev) => {
                info!(previous = %prev,
                    "attaching to the job of the previous run, which ended without reading it");
                record(store, worker_id, task, &prev).await;
                prev
            }
            None => {
                record(store, worker_id, task, id).await;
                let submitted = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return Err(Halt::Interrupted),
                    r = self.submit(store, task, id, &limits, &plan, granted.as_ref()) => r,
                };
                match submitted {
                    Ok(()) => debug!("job submitted"),
                    Err(Submitted::Ray(RayError::AlreadyExists { .. })) => {
                        let job = or_interrupt(shutdown, self.client.job(id)).await?;
                        if let Err(why) = check_adoptable(&job, task, AdoptAs::ThisAttempt) {
                            warn!(%why, "a Ray job with this attempt's submission id exists but \
                                  was not submitted for it: not attaching");
                            return Ok(End::Report(Box::new(host_error(
                                task,
                                format!(
                                    "Ray job {id} already exists but is not this attempt's job \
                                     ({why}): its result is not trusted and the job is left alone"
                                ),
                                None,
                            ))));
                        }
                        info!("job already submitted: attaching to it");
                    }
                    Err(Submitted::Ray(e)) => return Err(e.into()),
                    Err(Submitted::Host(message)) => {
                        return Ok(End::Report(Box::new(host_error(task, message, None))));
                    }
                }
                id.to_string()
            }
        };
        let (end, ended) = self
            .follow(store, task, &job_id, &limits, cancel, shutdown)
            .await?;
        // Only the job this attempt submitted, and only while the task is
        // still ours at this attempt: a later attempt may have adopted it.
        if !self.config.keep_jobs
            && ended
            && job_id == id
            && still_ours(store, worker_id, task).await
        {
            match or_interrupt(shutdown, self.client.delete(&job_id)).await {
                Ok(_) | Err(Halt::Interrupted) => {}
                Err(Halt::Ray(e)) => warn!(error = %e, "could not delete the finished Ray job"),
            }
        }
        Ok(end)
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

    /// Ships the package (checked before every submit) and submits the job.
    async fn submit(
        &self,
        store: &AnyStore,
        task: &ClaimedTask,
        id: &str,
        limits: &Limits,
        plan: &SubtaskPlan,
        granted: Option<&Shipment>,
    ) -> Result<(), Submitted> {
        let module = store
            .module_bytes(&task.module_sha256)
            .await
            .map_err(|e| Submitted::Host(format!("loading module bytes: {e}")))?;
        // Copies tens of MB the first time a module is seen: off the
        // async threads' hot path.
        let base =
            tokio::task::block_in_place(|| self.runner.package(&task.module_sha256, &module))
                .map_err(|e| Submitted::Host(e.to_string()))?;
        let mut env = exec_env(task, limits);
        // Values too large for the environment go into the package, as
        // files next to the module.
        let plan = serde_json::to_string(plan).expect("plain data serializes");
        let mut files: Vec<(&str, &str)> = Vec::new();
        if task.input.len() > self.config.input_env_max {
            env.insert("WASMQ_EXEC_INPUT_FILE".into(), INPUT_FILE.into());
            files.push((INPUT_FILE, &task.input));
        } else {
            env.insert("WASMQ_EXEC_INPUT_B64".into(), B64.encode(&task.input));
        }
        if plan.len() > self.config.input_env_max {
            env.insert("WASMQ_EXEC_SUBTASKS_FILE".into(), SUBTASKS_FILE.into());
            files.push((SUBTASKS_FILE, &plan));
        } else {
            env.insert("WASMQ_EXEC_SUBTASKS_B64".into(), B64.encode(&plan));
        }
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
            metadata: metadata(task, &self.runner),
            entrypoint_num_cpus: self.config.num_cpus,
            entrypoint_memory: self.config.memory,
            entrypoint_resources: self.config.resources.clone(),
        };
        self.client.submit(&req).await.map_err(Submitted::Ray)?;
        Ok(())
    }

    /// Polls the job to its end, stopping it on cancel or when it stays
    /// PENDING too long, then reads it. True with the end if Ray reported
    /// the job terminal (it can be deleted).
    async fn follow(
        &self,
        store: &AnyStore,
        task: &ClaimedTask,
        job_id: &str,
        limits: &Limits,
        cancel: &CancelToken,
        shutdown: &CancelToken,
    ) -> Result<(End, bool), Halt> {
        let started = Instant::now();
        let mut every = self.config.poll_interval;
        let mut stop_sent: Option<Instant> = None;
        let job = loop {
            let j = or_interrupt(shutdown, self.client.job(job_id)).await?;
            if j.status.is_terminal() {
                break j;
            }
            if started.elapsed() > POLL_BACKOFF_AFTER {
                every = every.mul_f64(1.5).min(MAX_RAY_POLL);
            }
            if let Some(at) = stop_sent {
                let unconfirmed = |why: &str| {
                    End::Report(Box::new(cancelled(
                        task,
                        format!(
                            "cancelled: Ray job {job_id} was asked to stop; {why} (Ray still says {})",
                            j.status
                        ),
                    )))
                };
                if at.elapsed() > STOP_SETTLE {
                    return Ok((
                        unconfirmed(&format!("it had not stopped {STOP_SETTLE:?} later")),
                        false,
                    ));
                }
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = shutdown.cancelled() => {
                        return Ok((unconfirmed("the worker shut down before Ray confirmed it"), false));
                    }
                }
                continue;
            }
            if j.status == JobStatus::Pending && started.elapsed() > self.config.pending_timeout {
                let timeout = self.config.pending_timeout;
                warn!(?timeout, "the Ray job is still PENDING: stopping it");
                let stopped = match self.stop(job_id, shutdown).await {
                    // Ray's stop is fire-and-forget: a job whose supervisor
                    // cannot be scheduled stays PENDING until Ray gives up.
                    Ok(_) => "its stop was requested".to_string(),
                    Err(e) => format!("stopping it failed ({e}); the worker keeps trying"),
                };
                let ray_says = j.message.as_deref().unwrap_or("").trim();
                let message = format!(
                    "Ray job {job_id} was still PENDING after the pending timeout of \
                     {timeout:?} (--ray-pending-timeout): the cluster may lack the resources \
                     it asks for; {stopped}. Ray says: {}",
                    first_line(ray_says)
                );
                return Ok((
                    End::Report(Box::new(host_error(task, message, None))),
                    false,
                ));
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = shutdown.cancelled() => {
                    return Ok((self.interrupted(store, task, job_id, shutdown).await, false));
                }
                () = cancel.cancelled() => {
                    if shutdown.is_cancelled() {
                        return Ok((self.interrupted(store, task, job_id, shutdown).await, false));
                    }
                    info!("cancellation requested: stopping the Ray job");
                    if let Err(e) = self.stop(job_id, shutdown).await {
                        let message = format!(
                            "cancelled; stopping Ray job {job_id} failed ({e}): it may still \
                             run, and the worker keeps trying to stop it"
                        );
                        return Ok((End::Report(Box::new(cancelled(task, message))), false));
                    }
                    stop_sent = Some(Instant::now());
                }
            }
        };
        let end = self
            .read_end(task, &job, limits, stop_sent.is_some(), shutdown)
            .await?;
        Ok((end, true))
    }

    /// The grace period is over while the job runs. Normally the job is left
    /// running for the next worker, which attaches to it. But a task whose
    /// cancellation is pending ends `cancelled` when released, and no worker
    /// would ever look at its job again: stop it.
    async fn interrupted(
        &self,
        store: &AnyStore,
        task: &ClaimedTask,
        job_id: &str,
        shutdown: &CancelToken,
    ) -> End {
        let cancel_pending = tokio::time::timeout(AT_EXIT_BUDGET, store.get_task(task.id))
            .await
            .ok()
            .and_then(Result::ok)
            .is_some_and(|t| t.cancel_requested);
        if !cancel_pending {
            info!("worker shutting down: leaving the job running for the next worker");
            return End::Interrupted;
        }
        let message = match self.stop(job_id, shutdown).await {
            Ok(_) => format!("cancelled while the worker shut down: Ray job {job_id} stopped"),
            Err(e) => format!(
                "cancelled while the worker shut down; stopping Ray job {job_id} failed ({e}): \
                 it may still run"
            ),
        };
        info!("worker shutting down with the task's cancellation pending: stopped its Ray job");
        End::Report(Box::new(cancelled(task, message)))
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

    async fn read_end(
        &self,
        task: &ClaimedTask,
        job: &JobDetails,
        limits: &Limits,
        stopped_by_us: bool,
        shutdown: &CancelToken,
    ) -> Result<End, Halt> {
        let id = job.submission_id.as_deref().unwrap_or("?");
        let ray_ms = job.ray_duration_ms();
        let message = job.message.as_deref().unwrap_or("").trim();
        let report = match job.status {
            JobStatus::Succeeded => {
                let logs = or_interrupt(shutdown, self.client.logs(id)).await?;
                match Envelope::find_in(&logs) {
                    Ok(env) => {
                        debug!(ray_ms, runner_ms = env.runner_ms, "job succeeded");
                        env.into_checked_report(limits)
                    }
                    Err(e) => host_error(task, format!("Ray job {id}: {e}"), Some(&logs)),
                }
            }
            // Stopped as asked; a runner that exits on the signal may also be
            // reported FAILED.
            JobStatus::Stopped | JobStatus::Failed if stopped_by_us => {
                cancelled(task, format!("cancelled: Ray job {id} stopped"))
            }
            JobStatus::Failed if job.error_type.as_deref() == Some(RUNTIME_ENV_SETUP_FAILURE) => {
                host_error(
                    task,
                    format!(
                        "Ray job {id}: the working_dir package could not be set up \
                         (it will be uploaded again): {message}"
                    ),
                    None,
                )
            }
            JobStatus::Failed => {
                let logs = match or_interrupt(shutdown, self.client.logs(id)).await {
                    Ok(logs) => logs,
                    Err(Halt::Interrupted) => return Err(Halt::Interrupted),
                    Err(Halt::Ray(_)) => String::new(),
                };
                let code = job
                    .driver_exit_code
                    .map_or("unknown".to_string(), |c| c.to_string());
                host_error(
                    task,
                    format!(
                        "Ray job {id}: the runner crashed (exit code {code}, {}): {}",
                        job.error_type.as_deref().unwrap_or("no error type"),
                        first_line(message)
                    ),
                    Some(&logs),
                )
            }
            JobStatus::Stopped => host_error(
                task,
                format!("Ray job {id} was stopped outside wasmq: {message}"),
                None,
            ),
            JobStatus::Pending | JobStatus::Running => unreachable!("terminal states only"),
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
        });
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(h) = self.sweeper.lock().unwrap().take() {
            h.abort();
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
        let orphan = match job_task(job) {
            Some((task_id, attempt)) => match store.get_task(task_id).await {
                Ok(t) => is_orphan(&t, id, attempt),
                Err(_) => false,
            },
            None => false,
        };
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

/// The task id and attempt wasmq put in a job's metadata.
fn job_task(job: &JobDetails) -> Option<(Uuid, Option<u32>)> {
    let meta = job.metadata.as_ref()?;
    let id = Uuid::parse_str(meta.get("wasmq_task_id")?).ok()?;
    Some((id, meta.get("wasmq_attempt").and_then(|a| a.parse().ok())))
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

/// Records the job on the task and attempt, so `task show` names it and a
/// later attempt can find it.
async fn record(store: &AnyStore, worker_id: &str, task: &ClaimedTask, id: &str) {
    match store.set_ray_submission(worker_id, task.lease(), id).await {
        Ok(true) => {}
        Ok(false) => warn!("could not record the Ray job: the task's lease was taken over"),
        Err(e) => warn!(error = %e, "could not record the Ray job"),
    }
}

/// What `wasmq exec` reads (see `cli/exec.rs`), besides the input. The
/// limits use the variables every wasmq command reads its defaults from.
/// Ray expands `$VAR`/`${VAR}` in these values: user text (the queue name,
/// the input) goes base64-encoded; everything else is digits, hex and
/// fixed words.
fn exec_env(task: &ClaimedTask, limits: &Limits) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "WASMQ_DEFAULT_FUEL".into(),
            limits
                .fuel
                .map_or(crate::fuel::UNLIMITED.into(), |f| f.to_string()),
        ),
        (
            "WASMQ_DEFAULT_MEMORY".into(),
            limits.memory_bytes.to_string(),
        ),
        (
            "WASMQ_DEFAULT_TIMEOUT".into(),
            format!("{}ms", limits.timeout.as_millis()),
        ),
        (
            "WASMQ_MAX_OUTPUT".into(),
            limits.max_output_bytes.to_string(),
        ),
        ("WASMQ_EXEC_SHA256".into(), task.module_sha256.clone()),
        ("WASMQ_EXEC_TASK_ID".into(), task.id.to_string()),
        ("WASMQ_EXEC_ATTEMPT".into(), task.attempt.to_string()),
        (
            "WASMQ_EXEC_MAX_ATTEMPTS".into(),
            task.max_attempts.to_string(),
        ),
        ("WASMQ_EXEC_QUEUE_B64".into(), B64.encode(&task.queue)),
        // The runner's own log lines would only clutter the job's logs.
        ("WASMQ_LOG".into(), "warn".into()),
    ])
}

/// What a granted task's runner needs.
struct Shipment {
    grants: Arc<TaskGrants>,
    /// The worker's `--http-ca-file`, PEM.
    ca_pem: Option<Arc<str>>,
    /// The worker's `WASMQ_SECRET_KEY_FILE`, which must hold the same key
    /// on the Ray nodes.
    key_file: Option<PathBuf>,
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
/// before a job is adopted. Ray stores these values as given (no `$`
/// expansion: that happens to runtime_env values only).
fn metadata(task: &ClaimedTask, runner: &Runner) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("wasmq_task_id".into(), task.id.to_string()),
        (
            "wasmq_module".into(),
            format!("{}@{}", task.module_name, task.module_version),
        ),
        ("wasmq_module_sha256".into(), task.module_sha256.clone()),
        ("wasmq_attempt".into(), task.attempt.to_string()),
        ("wasmq_queue".into(), task.queue.clone()),
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
        // Ray would expand it on the node (see exec_env).
        let t = task("q$HOME${NOPE}", 2);
        let limits = Limits::default();
        let env = exec_env(&t, &limits);
        for (k, v) in &env {
            assert!(!v.contains('$'), "{k}={v}");
        }
        let queue = B64.decode(&env["WASMQ_EXEC_QUEUE_B64"]).unwrap();
        assert_eq!(queue, t.queue.as_bytes());
        assert!(!env.contains_key("WASMQ_EXEC_QUEUE"));
        assert!(!env.contains_key("WASMQ_EXEC_INPUT"));
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
