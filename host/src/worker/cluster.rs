//! Cluster mode: each claimed task runs as a Ray job (`wasmq exec` on a Ray
//! node), submitted through the Job Submission REST API.
//!
//! One attempt, start to end:
//! 1. If the previous attempt's worker died (`lease-expired`) while its job
//!    was still alive or finished unread, attach to that job instead of
//!    submitting another: a task runs once per job.
//! 2. Otherwise make sure the package is on the cluster (check, upload if
//!    missing: Ray deletes unused packages), record the submission id
//!    `wasmq-<task id>-<attempt>` on the task, and submit. "Already exists"
//!    means this attempt was submitted before (a released task, a retried
//!    POST): attach to it.
//! 3. Poll the job (every 250 ms, slower for long jobs) while the worker's
//!    heartbeat keeps the lease; a cancel request stops the job.
//! 4. At the end, read the logs, parse the envelope, finish the task through
//!    [`Executor::complete`] like local mode, and delete the job.
//!
//! | Ray says                              | the attempt ends as                      |
//! |---------------------------------------|------------------------------------------|
//! | SUCCEEDED, envelope                   | the envelope's outcome                   |
//! | SUCCEEDED without a readable envelope | host-error (retried)                     |
//! | FAILED (the runner crashed)           | host-error (retried)                     |
//! | FAILED, RUNTIME_ENV_SETUP_FAILURE     | host-error (retried; the package is re-checked) |
//! | STOPPED (or FAILED) after wasmq's stop | cancelled                                |
//! | STOPPED by someone else               | host-error (retried)                     |
//! | unreachable, 5xx, job vanished        | requeued with backoff, attempt not spent |
//! | worker shutting down                  | released; the job keeps running and the next worker attaches |

use super::envelope::Envelope;
use super::executor::Executor;
use super::shipping::{DEFAULT_INPUT_ENV_MAX, INPUT_FILE, Runner};
use crate::ray::{
    JobDetails, JobStatus, RUNTIME_ENV_SETUP_FAILURE, RayClient, RayError, RuntimeEnv,
    SubmitRequest,
};
use crate::runtime::{CancelToken, Limits, Outcome, RunReport};
use crate::store::{AnyStore, ClaimedTask, Completion, Store, Transition, outcome};
use chrono::Utc;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tracing::{Instrument, debug, info, info_span, warn};

/// First status poll interval.
pub const DEFAULT_RAY_POLL: Duration = Duration::from_millis(250);
/// Polls slow down (×1.5 each) after a job has run this long …
pub const POLL_BACKOFF_AFTER: Duration = Duration::from_secs(10);
/// … up to this interval.
pub const MAX_RAY_POLL: Duration = Duration::from_secs(5);
/// Requeue delay when the cluster is unreachable: doubles per consecutive
/// failure of this worker, up to the cap.
pub const UNREACHABLE_BACKOFF_BASE: Duration = Duration::from_secs(1);
pub const UNREACHABLE_BACKOFF_CAP: Duration = Duration::from_secs(60);
/// How much of a crashed runner's log output is kept with the attempt.
const CRASH_LOG_TAIL: usize = 8 * 1024;

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
}

/// How an attempt ended, before it is mapped onto the state machine.
enum End {
    Report(Box<RunReport>),
    /// Shutdown: leave the job running; the next worker attaches to it.
    Interrupted,
    /// The cluster could not be used: requeue without spending the attempt.
    Unavailable(String),
}

/// The submission id of one attempt: deterministic, so that a retried
/// submit or a restarted worker finds the job instead of starting another.
pub fn submission_id(task: &ClaimedTask) -> String {
    format!("wasmq-{}-{}", task.id, task.attempt)
}

impl Cluster {
    pub fn new(client: RayClient, runner: Runner, config: ClusterConfig) -> Cluster {
        Cluster {
            client,
            runner,
            config,
            unreachable: AtomicU32::new(0),
            shipping: tokio::sync::Mutex::new(()),
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
        let started = Instant::now();
        let id = submission_id(task);
        let span = info_span!("ray_job", submission_id = %id);
        let end = async {
            match self
                .run_job(exec, worker_id, task, &id, &cancel, shutdown)
                .await
            {
                Ok(end) => end,
                Err(e) if e.is_unavailable() || matches!(e, RayError::NotFound { .. }) => {
                    End::Unavailable(e.to_string())
                }
                Err(e) => End::Report(Box::new(host_error(task, format!("Ray: {e}"), None))),
            }
        }
        .instrument(span)
        .await;
        match end {
            End::Report(report) => {
                self.unreachable.store(0, Ordering::Relaxed);
                exec.complete(task, *report, false, started.elapsed())
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
                let message = format!(
                    "Ray cluster {} unavailable: {message}; requeued for {delay:?} without spending the attempt",
                    self.client.address()
                );
                let mut c = exec.complete(
                    task,
                    host_error(task, message, None),
                    false,
                    started.elapsed(),
                );
                c.transition = Transition::Defer {
                    run_after: Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default(),
                };
                c
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
    ) -> Result<End, RayError> {
        let store = &exec.store;
        if cancel.is_cancelled() && !shutdown.is_cancelled() {
            // Cancelled before it started: nothing to submit.
            return Ok(End::Report(Box::new(RunReport::not_run(
                Outcome::Cancelled {
                    message: "cancelled before its Ray job was submitted".into(),
                },
                task.module_sha256.clone(),
            ))));
        }
        let job_id = match self.orphan_of_previous_attempt(store, task).await? {
            Some(prev) => {
                info!(previous = %prev, "attaching to the job of the previous attempt, whose worker died");
                record(store, worker_id, task, &prev).await;
                prev
            }
            None => {
                record(store, worker_id, task, id).await;
                let limits = exec.limits_for(task);
                match self.submit(store, task, id, &limits).await {
                    Ok(()) => debug!("job submitted"),
                    Err(Submitted::Ray(RayError::AlreadyExists { .. })) => {
                        info!("job already submitted: attaching to it");
                    }
                    Err(Submitted::Ray(e)) => return Err(e),
                    Err(Submitted::Host(message)) => {
                        return Ok(End::Report(Box::new(host_error(task, message, None))));
                    }
                }
                id.to_string()
            }
        };
        self.follow(task, &job_id, cancel, shutdown).await
    }

    /// The previous attempt's job, if its worker died while it ran (the
    /// reaper requeued the task as `lease-expired`) and the job is still
    /// running or finished with its result unread.
    async fn orphan_of_previous_attempt(
        &self,
        store: &AnyStore,
        task: &ClaimedTask,
    ) -> Result<Option<String>, RayError> {
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
        let (Some(prev), Some(outcome::LEASE_EXPIRED)) =
            (record.ray_submission_id, record.error_kind.as_deref())
        else {
            return Ok(None);
        };
        match self.client.job(&prev).await {
            Ok(j) if j.status != JobStatus::Stopped => Ok(Some(prev)),
            Ok(_) | Err(RayError::NotFound { .. }) => Ok(None),
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
        let big;
        let package = if task.input.len() > self.config.input_env_max {
            big = tokio::task::block_in_place(|| Runner::package_with_input(&base, &task.input))
                .map_err(|e| Submitted::Host(e.to_string()))?;
            env.insert("WASMQ_EXEC_INPUT_FILE".into(), INPUT_FILE.into());
            &big
        } else {
            env.insert("WASMQ_EXEC_INPUT".into(), task.input.clone());
            &*base
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

    /// Polls the job to its end, stopping it on cancel, then reads it.
    async fn follow(
        &self,
        task: &ClaimedTask,
        job_id: &str,
        cancel: &CancelToken,
        shutdown: &CancelToken,
    ) -> Result<End, RayError> {
        let started = Instant::now();
        let mut every = self.config.poll_interval;
        let mut stopped_by_us = false;
        let job = loop {
            let j = self.client.job(job_id).await?;
            if j.status.is_terminal() {
                break j;
            }
            if started.elapsed() > POLL_BACKOFF_AFTER {
                every = every.mul_f64(1.5).min(MAX_RAY_POLL);
            }
            if stopped_by_us {
                tokio::time::sleep(every).await;
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = cancel.cancelled() => {
                    if shutdown.is_cancelled() {
                        info!("worker shutting down: leaving the job running for the next worker");
                        return Ok(End::Interrupted);
                    }
                    info!("cancellation requested: stopping the Ray job");
                    self.client.stop(job_id).await?;
                    stopped_by_us = true;
                }
            }
        };
        let end = self.read_end(task, &job, stopped_by_us).await?;
        if !self.config.keep_jobs
            && let Err(e) = self.client.delete(job_id).await
        {
            warn!(error = %e, "could not delete the finished Ray job");
        }
        Ok(end)
    }

    async fn read_end(
        &self,
        task: &ClaimedTask,
        job: &JobDetails,
        stopped_by_us: bool,
    ) -> Result<End, RayError> {
        let id = job.submission_id.as_deref().unwrap_or("?");
        let ray_ms = job.ray_duration_ms();
        let message = job.message.as_deref().unwrap_or("").trim();
        let report = match job.status {
            JobStatus::Succeeded => {
                let logs = self.client.logs(id).await?;
                match Envelope::find_in(&logs) {
                    Ok(env) => {
                        debug!(ray_ms, runner_ms = env.runner_ms, "job succeeded");
                        env.into_report()
                    }
                    Err(e) => host_error(task, format!("Ray job {id}: {e}"), Some(&logs)),
                }
            }
            // Stopped as asked; a runner that exits on the signal may also be
            // reported FAILED.
            JobStatus::Stopped | JobStatus::Failed if stopped_by_us => RunReport::not_run(
                Outcome::Cancelled {
                    message: format!("cancelled: Ray job {id} stopped"),
                },
                task.module_sha256.clone(),
            ),
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
                let logs = self.client.logs(id).await.unwrap_or_default();
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
fn exec_env(task: &ClaimedTask, limits: &Limits) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "WASMQ_DEFAULT_FUEL".into(),
            limits.fuel.map_or("unlimited".into(), |f| f.to_string()),
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
        ("WASMQ_EXEC_QUEUE".into(), task.queue.clone()),
        // The runner's own log lines would only clutter the job's logs.
        ("WASMQ_LOG".into(), "warn".into()),
    ])
}

/// Metadata shown by `ray job list` and the Ray dashboard.
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
