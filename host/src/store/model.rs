//! Domain types of the task store.
//!
//! # Task states
//!
//! ```text
//!                         enqueue (or spawn, by a parent's run)
//!                            │
//!                            ▼
//!    retry (manual)    ┌───────────┐   cancel
//!   ┌─────────────────▶│   queued  │─────────────────────────────────────┐
//!   │                  └───────────┘                                     │
//!   │                     │     ▲ retry (backoff)                        │
//!   │                claim│     │ release (shutdown) / defer: the run    │
//!   │                     │     │   is free, the attempt is not spent    │
//!   │                     ▼     │ lease expired (reaper)                 │
//!   │                  ┌───────────┐                                     │
//!   │                  │   leased  │ (claimed, waiting for a free runner)│
//!   │                  └─────┬─────┘                                     │
//!   │                 start  │  (any arrow out of `running` also leaves  │
//!   │                        ▼   `leased`: release, expiry, cancel, …)   │
//!   │                  ┌───────────┐  wait (free run)  ┌───────────┐     │
//!   │                  │  running  │──────────────────▶│  waiting  │─────┤
//!   │                  └─────┬─────┘                   └─────┬─────┘cancel
//!   │                        │        the last awaited child │           │
//!   │                        │        ends: → queued (resume)┘           │
//!   │            ┌───────────┼───────────┐                               │
//!   │     succeed│       fail│           │ cancel (the worker stopped    │
//!   │            │           │           │ it, or a requeue found a      │
//!   │            ▼           ▼           ▼ cancel request pending)       │
//!   │      ┌───────────┐ ┌────────┐ ┌───────────┐                        │
//!   │      │ succeeded │ │ failed │ │ cancelled │◀───────────────────────┘
//!   │      └───────────┘ └────────┘ └───────────┘
//!   │                        │            │
//!   └────────────────────────┴────────────┘
//!
//!   succeeded, failed and cancelled are terminal; only they can be purged.
//! ```
//!
//! **Subtasks.** A run may spawn children (tasks whose `parent_id` is the
//! run's task, keyed by `spawn_seq`: one child per key, whatever runs of the
//! parent spawn it). The children a run spawned are stored with its
//! completion, whatever its outcome, so a retried or resumed parent finds
//! them. A run that waits on unfinished children ends `waiting` (a free
//! run, like a release): its awaited children are marked, and `waiting_on`
//! counts those that must still end. Triggers (migration 0005, and 0007 on
//! SQLite) count it down as each awaited child reaches a terminal state, by
//! whatever arrow, and queue the parent again when it reaches zero, in the
//! child's own transaction. The parent then runs again from the start and
//! replays (see [`crate::runtime::subtasks`]). Cancelling a task cancels
//! its unfinished descendants in the same transaction: queued and waiting
//! ones at once, live ones by request.
//!
//! `leased` and `running` are the *live* states: the task holds a lease
//! (`lease_owner`, `lease_expires_at`, `lease_epoch`). A claim leases a task
//! (the worker may prefetch more than it runs); the task becomes `running`
//! when a runner really starts it, and `started_at` is that moment. The start
//! is written in the same batch as the worker's next completions, so it costs
//! no extra commit for short tasks.
//!
//! Every claim is a new *run*: it increments the task's `lease_epoch` (the
//! fencing token) and its `attempt` number, so `(task, attempt)` names one
//! attempt row and nothing ever rewinds. A run that ends by release
//! (shutdown) or defer (the cluster could not be reached) is *free*: it
//! increments `free_runs`, and retry budgets count
//! [`ClaimedTask::counted_attempt`] = `attempt - free_runs`.
//!
//! A reaper takes a live task whose lease expired back from its silent
//! worker: requeued, or failed when its attempts are used up.
//!
//! Every arrow is a conditional write that checks the current state (claims
//! and completions do so for a whole batch in one statement). Arrows out of
//! the live states are also fenced on the lease owner and the lease epoch,
//! so a worker that lost its lease cannot overwrite newer state, and a
//! heartbeat extends only the leases (task, epoch) the worker names.
//! Cancelling a live task only sets `cancel_requested`; the owning worker
//! learns it from its heartbeat (or a [`StoreEvent::CancelRequested`]) and
//! finishes the task as cancelled. A requeue (retry, release, lease expiry) of
//! a task whose cancellation was requested ends in `cancelled` instead, so a
//! cancel request is never lost.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

pub use crate::fuel::Fuel;
pub use crate::kinds::{OutcomeKind, TaskErrorKind};

/// Lifecycle state of a task; see the module documentation for the diagram.
/// Ordered by lifecycle (queued < leased < running < waiting < succeeded <
/// failed < cancelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Queued,
    /// Claimed by a worker, not started yet (prefetched).
    Leased,
    Running,
    /// Its run ended waiting for children it spawned; queued again when
    /// they are done. Holds no lease and no worker slot.
    Waiting,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 7] = [
        TaskState::Queued,
        TaskState::Leased,
        TaskState::Running,
        TaskState::Waiting,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    /// The spelling used in the database and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Leased => "leased",
            TaskState::Running => "running",
            TaskState::Waiting => "waiting",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// Succeeded, failed and cancelled tasks never run again by themselves.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
        )
    }

    /// Leased and running tasks hold a lease.
    pub fn is_live(self) -> bool {
        matches!(self, TaskState::Leased | TaskState::Running)
    }

    /// Not finished: queued, waiting or live.
    pub fn is_unfinished(self) -> bool {
        !self.is_terminal()
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error of [`TaskState::from_str`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseTaskStateError(pub String);

impl fmt::Display for ParseTaskStateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown task state {:?} (expected queued, leased, running, waiting, succeeded, failed or cancelled)",
            self.0
        )
    }
}

impl std::error::Error for ParseTaskStateError {}

impl FromStr for TaskState {
    type Err = ParseTaskStateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| ParseTaskStateError(s.to_owned()))
    }
}

/// A stored module version. `NAME` alone means the latest version (highest id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModuleRecord {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub size: u64,
    pub created_at: DateTime<Utc>,
    /// `push_module` only: false when an existing row was returned.
    pub created: bool,
}

impl ModuleRecord {
    /// `name@version`.
    pub fn reference(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// What a [`ModuleGrant`] gives a module's tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GrantKind {
    /// Outbound HTTP under a URL prefix (`scheme://host:port/path-prefix`).
    Http,
    /// A stored secret, by name, readable through `wasi:config/store`.
    Secret,
    /// A plain configuration value, `KEY=VALUE`, readable through
    /// `wasi:config/store` as `KEY`. One value per key and scope.
    Config,
}

impl GrantKind {
    pub const ALL: [GrantKind; 3] = [GrantKind::Http, GrantKind::Secret, GrantKind::Config];

    pub fn as_str(self) -> &'static str {
        match self {
            GrantKind::Http => "http",
            GrantKind::Secret => "secret",
            GrantKind::Config => "config",
        }
    }
}

/// A config grant's `KEY=VALUE` split in two; `None` without a `=`.
pub fn config_entry(value: &str) -> Option<(&str, &str)> {
    value.split_once('=')
}

impl std::str::FromStr for GrantKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        GrantKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown grant kind {s:?}"))
    }
}

/// One thing the operator granted the tasks of a module (every version of
/// the name), in one queue or in all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModuleGrant {
    pub module: String,
    /// `None`: tasks of every queue.
    pub queue: Option<String>,
    pub kind: GrantKind,
    /// The grant's canonical text (the store does not interpret it).
    pub value: String,
    pub created_at: DateTime<Utc>,
}

impl ModuleGrant {
    /// Whether the grant applies to a task of `queue`.
    pub fn covers(&self, queue: &str) -> bool {
        self.queue.as_deref().is_none_or(|q| q == queue)
    }
}

/// Grants to add or remove: `values` of `kind` for module `module`, in one
/// queue or (`queue: None`) for every queue. Config values are `KEY=VALUE`
/// to add, `KEY` (or `KEY=…`, the value ignored) to remove.
#[derive(Debug, Clone, Copy)]
pub struct GrantSet<'a> {
    pub module: &'a str,
    pub queue: Option<&'a str>,
    pub kind: GrantKind,
    pub values: &'a [String],
}

/// A secret as the store keeps it: sealed by the client, never in clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSecret {
    pub name: String,
    /// Which key sealed it (a hash of the key).
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// What `secret list` shows of a secret: never its value, sealed or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretInfo {
    pub name: String,
    pub key_id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Per-task resource limits; `None` means "the worker's default".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TaskLimits {
    pub fuel: Option<Fuel>,
    pub memory_bytes: Option<u64>,
    pub timeout_ms: Option<u64>,
}

/// Default for [`NewTask::max_attempts`].
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// A task to enqueue. Build it with [`NewTask::new`] and the setters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewTask {
    /// Generated by the caller (UUIDv7 by default, so ids sort by time).
    pub id: Uuid,
    pub module_name: String,
    pub module_version: String,
    pub module_sha256: String,
    pub queue: String,
    /// -100..=100, higher runs first.
    pub priority: i16,
    /// JSON text, stored verbatim.
    pub input: String,
    /// `None` = now.
    pub run_after: Option<DateTime<Utc>>,
    pub max_attempts: u32,
    pub limits: TaskLimits,
    /// At most one queued or running task per key.
    pub unique_key: Option<String>,
    pub parent_id: Option<Uuid>,
    /// Set on a child spawned by a task (`parent_id` is that task).
    pub child: Option<ChildKey>,
}

/// Where a spawned child sits under its parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChildKey {
    /// The number of the spawn call that made it: one child per
    /// (parent, seq), whatever runs of the parent spawn it again.
    pub seq: u32,
    /// What the spawn asked for (module reference and input), compared by
    /// later runs of the parent.
    pub digest: String,
    /// The parent's depth + 1.
    pub depth: u32,
    /// The parent's run ended waiting on it.
    pub awaited: bool,
}

impl NewTask {
    /// A task for `module` with JSON `input` on the `default` queue.
    pub fn new(module: &ModuleRecord, input: impl Into<String>) -> Self {
        NewTask {
            id: Uuid::now_v7(),
            module_name: module.name.clone(),
            module_version: module.version.clone(),
            module_sha256: module.sha256.clone(),
            queue: "default".to_owned(),
            priority: 0,
            input: input.into(),
            run_after: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            limits: TaskLimits::default(),
            unique_key: None,
            parent_id: None,
            child: None,
        }
    }

    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    pub fn priority(mut self, priority: i16) -> Self {
        self.priority = priority;
        self
    }

    pub fn run_after(mut self, at: DateTime<Utc>) -> Self {
        self.run_after = Some(at);
        self
    }

    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    pub fn limits(mut self, limits: TaskLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    pub fn parent(mut self, parent_id: Uuid) -> Self {
        self.parent_id = Some(parent_id);
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EnqueueOutcome {
    pub id: Uuid,
    /// True when an unfinished task with the same unique key already existed;
    /// `id` is then that task's id and nothing was inserted.
    pub deduplicated: bool,
}

/// A task row, all columns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRecord {
    pub id: Uuid,
    /// Enqueue order; also the cursor of [`TaskFilter::before_seq`].
    pub seq: i64,
    pub module_name: String,
    pub module_version: String,
    pub module_sha256: String,
    pub queue: String,
    pub priority: i16,
    pub input: String,
    pub state: TaskState,
    pub run_after: DateTime<Utc>,
    /// Runs started so far (0 before the first claim); see
    /// [`TaskRecord::counted_attempts`] for the ones the retry budget counts.
    pub attempt: u32,
    pub max_attempts: u32,
    /// Runs that did not spend an attempt (released at shutdown, deferred).
    pub free_runs: u32,
    pub limits: TaskLimits,
    pub unique_key: Option<String>,
    pub lease_owner: Option<String>,
    /// Fencing token of the current or last lease; see the module docs.
    pub lease_epoch: u64,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub cancel_requested: bool,
    pub result: Option<String>,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    pub error_logs: Option<String>,
    pub progress_percent: Option<u8>,
    pub progress_message: Option<String>,
    pub enqueued_at: DateTime<Utc>,
    /// Start of the current or last attempt.
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub parent_id: Option<Uuid>,
    pub ray_submission_id: Option<String>,
    /// Last write to the row other than a lease extension.
    pub updated_at: DateTime<Utc>,
    /// A child's key under its parent.
    pub spawn_seq: Option<u32>,
    /// 0 for a task nobody spawned.
    pub depth: u32,
    /// Children it has spawned (recorded ones).
    pub children: u32,
    /// While `waiting`: awaited children that must still end.
    pub waiting_on: i64,
}

impl TaskRecord {
    /// Attempts spent from the `max_attempts` budget.
    pub fn counted_attempts(&self) -> u32 {
        self.attempt.saturating_sub(self.free_runs)
    }
}

/// Characters of a result or an error message a [`TaskSummary`] carries
/// (the summary SQL selects one more, to know whether it clipped).
pub const PREVIEW_CHARS: usize = 120;

/// A task as listings show it: what a table row needs, without the input,
/// the result or the logs (read those with `get_task`). A listing of tasks
/// that each carry megabytes costs the same as one of empty tasks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskSummary {
    pub id: Uuid,
    pub seq: i64,
    pub module_name: String,
    pub module_version: String,
    pub queue: String,
    pub priority: i16,
    pub state: TaskState,
    pub run_after: DateTime<Utc>,
    pub attempt: u32,
    pub max_attempts: u32,
    pub free_runs: u32,
    pub lease_owner: Option<String>,
    pub cancel_requested: bool,
    pub error_kind: Option<String>,
    /// The first [`PREVIEW_CHARS`] characters of the error message, with `…`
    /// when there were more.
    pub error_preview: Option<String>,
    /// The first [`PREVIEW_CHARS`] characters of the result's JSON text,
    /// with `…` when there were more.
    pub result_preview: Option<String>,
    pub progress_percent: Option<u8>,
    pub enqueued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub parent_id: Option<Uuid>,
    pub ray_submission_id: Option<String>,
    pub spawn_seq: Option<u32>,
    pub children: u32,
}

/// `text` cut to [`PREVIEW_CHARS`] characters, marked with `…` when cut.
pub fn preview(text: Option<String>) -> Option<String> {
    text.map(|t| match t.char_indices().nth(PREVIEW_CHARS) {
        Some((end, _)) => format!("{}…", &t[..end]),
        None => t,
    })
}

/// Default and maximum of [`TaskFilter::limit`].
pub const DEFAULT_LIST_LIMIT: u32 = 100;
pub const MAX_LIST_LIMIT: u32 = 10_000;

/// Selection for `list_tasks`; results are newest first (descending seq).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFilter {
    pub state: Option<TaskState>,
    pub queue: Option<String>,
    /// Module name (any version).
    pub module: Option<String>,
    /// 1..=[`MAX_LIST_LIMIT`]; 0 means [`DEFAULT_LIST_LIMIT`].
    pub limit: u32,
    /// Only tasks with `seq < before_seq`: pass the last seq of a page to get the next.
    pub before_seq: Option<i64>,
}

impl Default for TaskFilter {
    fn default() -> Self {
        TaskFilter {
            state: None,
            queue: None,
            module: None,
            limit: DEFAULT_LIST_LIMIT,
            before_seq: None,
        }
    }
}

/// One row of the attempts history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptRecord {
    pub id: i64,
    pub task_id: Uuid,
    pub attempt: u32,
    /// The lease epoch of this run (absent on rows written before epochs).
    pub lease_epoch: Option<u64>,
    pub worker_id: String,
    /// When a runner started it; the claim time until then (and for runs
    /// released before they started).
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `None` while the attempt runs.
    pub outcome: Option<OutcomeKind>,
    pub error_message: Option<String>,
    pub logs: Option<String>,
    pub fuel_used: Option<u64>,
    pub peak_memory: Option<u64>,
    pub duration_ms: Option<u64>,
    pub ray_submission_id: Option<String>,
    /// The Ray node its job ran on, once known (cluster runs only).
    pub ray_node_id: Option<String>,
}

impl AttemptRecord {
    /// The outcome's name; `None` while the attempt runs.
    pub fn outcome_name(&self) -> Option<&'static str> {
        self.outcome.map(OutcomeKind::as_str)
    }
}

/// Task count per (queue, state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueStat {
    pub queue: String,
    pub state: TaskState,
    pub count: u64,
    /// For `queued` only: the oldest `enqueued_at` among those tasks.
    pub oldest_queued_at: Option<DateTime<Utc>>,
}

/// Which queues a worker serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum QueueSelector {
    All,
    Named(Vec<String>),
}

impl QueueSelector {
    /// Parses `*` or a comma-separated list of queue names.
    pub fn parse(s: &str) -> Self {
        let s = s.trim();
        if s == "*" {
            return QueueSelector::All;
        }
        QueueSelector::Named(
            s.split(',')
                .map(str::trim)
                .filter(|q| !q.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }

    pub fn matches(&self, queue: &str) -> bool {
        match self {
            QueueSelector::All => true,
            QueueSelector::Named(names) => names.iter().any(|n| n == queue),
        }
    }
}

impl fmt::Display for QueueSelector {
    /// `*` or the comma-separated names; the inverse of [`QueueSelector::parse`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueSelector::All => f.write_str("*"),
            QueueSelector::Named(names) => f.write_str(&names.join(",")),
        }
    }
}

/// A task leased to a worker by `claim`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClaimedTask {
    pub id: Uuid,
    pub module_name: String,
    pub module_version: String,
    pub module_sha256: String,
    pub queue: String,
    pub priority: i16,
    pub input: String,
    /// The number of this run, starting at 1; unique per task.
    pub attempt: u32,
    /// The fencing token of this lease. Pass it back in [`Completion`],
    /// [`Lease`] and every other write about this run.
    pub epoch: u64,
    pub max_attempts: u32,
    /// Earlier runs that did not spend an attempt.
    pub free_runs: u32,
    pub limits: TaskLimits,
    pub enqueued_at: DateTime<Utc>,
    pub lease_expires_at: DateTime<Utc>,
    pub cancel_requested: bool,
    /// 0 for a task nobody spawned.
    pub depth: u32,
    /// Children recorded by earlier runs (their ledger is read only when
    /// there are some).
    pub children: u32,
}

impl ClaimedTask {
    /// The attempt number the retry budget counts (1-based): runs minus
    /// free runs. This is what the guest sees as its attempt.
    pub fn counted_attempt(&self) -> u32 {
        self.attempt.saturating_sub(self.free_runs).max(1)
    }

    /// This run's lease, as the heartbeat names it.
    pub fn lease(&self) -> Lease {
        Lease {
            task_id: self.id,
            epoch: self.epoch,
        }
    }
}

/// One lease a worker holds: a task and the epoch it was claimed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Lease {
    pub task_id: Uuid,
    pub epoch: u64,
}

/// What a heartbeat learnt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HeartbeatReply {
    /// Leases that could not be extended: the task is no longer live under
    /// this worker and epoch (reaped, cancelled and finished, re-claimed).
    /// The worker must stop running them.
    pub lost: Vec<Uuid>,
    /// Extended leases whose task has a cancel request pending.
    pub cancel_requested: Vec<Uuid>,
}

/// A run that a runner has started: moves the task from `leased` to
/// `running`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Started {
    pub lease: Lease,
    pub at: DateTime<Utc>,
}

/// What happened during one attempt; stored in its `attempts` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptReport {
    pub outcome: OutcomeKind,
    /// The task's own kind of error, for a `task-error` outcome. The task's
    /// `error_kind` is this, or else the outcome kind
    /// ([`crate::kinds::stored_error_kind`]).
    pub error_kind: Option<TaskErrorKind>,
    pub error_message: Option<String>,
    pub logs: Option<String>,
    pub fuel_used: Option<u64>,
    pub peak_memory: Option<u64>,
    pub duration_ms: u64,
}

impl AttemptReport {
    /// A report of `outcome` and nothing else.
    pub fn of(outcome: OutcomeKind) -> AttemptReport {
        AttemptReport {
            outcome,
            error_kind: None,
            error_message: None,
            logs: None,
            fuel_used: None,
            peak_memory: None,
            duration_ms: 0,
        }
    }
}

/// Where a running task goes when its attempt ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Transition {
    /// → succeeded, with the result JSON text.
    Succeed { result: String },
    /// → queued again at `run_after`; the attempt counts.
    Retry { run_after: DateTime<Utc> },
    /// → failed.
    Fail,
    /// → cancelled.
    Cancel,
    /// → queued now as a free run (graceful shutdown): the attempt is not
    /// spent. The attempt row is recorded with outcome `shutdown`.
    Release,
    /// → queued again at `run_after` as a free run: the run could not happen
    /// for reasons outside the task (a Ray cluster that cannot be reached).
    /// The attempt row and the task's error record why.
    Defer { run_after: DateTime<Utc> },
    /// → waiting, as a free run, until at most `allowed_unfinished` of its
    /// awaited children (those at the spawn numbers `awaited`, and any
    /// awaited by earlier runs) are unfinished; → queued at once when that
    /// already holds.
    Wait {
        awaited: Vec<u32>,
        allowed_unfinished: u32,
    },
}

/// The end of one attempt, reported by the worker that holds the lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Completion {
    pub task_id: Uuid,
    /// [`ClaimedTask::attempt`], for logs.
    pub attempt: u32,
    /// [`ClaimedTask::epoch`]: the fencing token.
    pub epoch: u64,
    /// When the run started, if it did: recorded unless a start write got
    /// there first.
    pub started_at: Option<DateTime<Utc>>,
    pub report: AttemptReport,
    pub transition: Transition,
    /// Children the run spawned, stored with the completion (their
    /// `parent_id` and `child` set); a spawn already stored is skipped.
    pub spawns: Vec<NewTask>,
}

impl Completion {
    pub fn lease(&self) -> Lease {
        Lease {
            task_id: self.task_id,
            epoch: self.epoch,
        }
    }
}

/// A running task whose lease ran out (its worker stopped heartbeating).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpiredTask {
    pub id: Uuid,
    pub attempt: u32,
    pub epoch: u64,
    pub max_attempts: u32,
    pub free_runs: u32,
    pub lease_owner: String,
    pub queue: String,
    /// `name@version`, for the log line about the lost attempt.
    pub module: String,
}

impl ExpiredTask {
    /// See [`ClaimedTask::counted_attempt`].
    pub fn counted_attempt(&self) -> u32 {
        self.attempt.saturating_sub(self.free_runs).max(1)
    }
}

/// A child as its parent's next run needs it: what the spawn asked for,
/// and how the child ended, if it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChildRecord {
    pub seq: u32,
    pub id: Uuid,
    pub digest: String,
    pub state: TaskState,
    pub result: Option<String>,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
}

/// What a task's descendants used, summed over all their runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FamilyUsage {
    pub descendants: u64,
    pub fuel_used: u64,
    pub duration_ms: u64,
}

/// Result of `request_cancel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CancelOutcome {
    /// The task was queued (or waiting) and is now cancelled.
    Cancelled,
    /// The task is live (leased or running); its worker has been asked to
    /// stop it.
    Requested,
    /// Nothing to do: the task had already finished in this state.
    AlreadyFinished(TaskState),
}

/// What a worker registers about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerInfo {
    pub id: String,
    pub hostname: String,
    pub pid: u32,
    /// Execution mode, e.g. `local` or `ray`.
    pub mode: String,
    pub queues: QueueSelector,
    pub concurrency: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerRecord {
    pub id: String,
    pub hostname: String,
    pub pid: u32,
    pub mode: String,
    pub queues: QueueSelector,
    pub concurrency: u32,
    pub started_at: DateTime<Utc>,
    pub last_heartbeat_at: DateTime<Utc>,
    pub stopped_at: Option<DateTime<Utc>>,
    /// Tasks currently leased to this worker (leased or running).
    pub running_tasks: u64,
}

/// Wake-up hints for workers. They are hints only: a worker must still poll
/// now and then, because events can be lost (see [`StoreEvent::Missed`]) and,
/// on SQLite, only reach listeners in the same process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum StoreEvent {
    /// A task became claimable on `queue` (enqueued, retried or released).
    TaskAvailable { queue: String },
    /// Cancellation of live task `id` was requested.
    CancelRequested { id: Uuid },
    /// Events may have been lost (the listener reconnected or fell behind):
    /// poll the database now.
    Missed,
}
