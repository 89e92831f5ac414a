//! The task store: modules, tasks, attempts and workers in SQL.
//!
//! One interface ([`Store`]) with one implementation per backend
//! ([`SqliteStore`], [`PgStore`]) and [`AnyStore`] to pick one from a URL.
//! This module knows nothing of the runtime or of Ray; they know nothing of
//! the SQL.
//!
//! Guarantees every backend provides:
//! - every state change is one conditional write that checks the current
//!   state; changes of live (leased or running) tasks are also fenced on the
//!   lease owner and the lease epoch, so a worker that lost its lease cannot
//!   overwrite newer state (see [`model`] for the state diagram);
//! - guest text is made storable (no NUL) and bounded before it is written
//!   ([`crate::text`]), so no guest can make a batch fail;
//! - a task leased by a worker that stops heartbeating is found by
//!   [`Store::expired_leases`] and put back (or failed) by [`Store::expire`];
//! - claims and completions work in batches, each batch one transaction with
//!   durable commits.

/// Columns of a full task row, in the order both backends select them
/// (a macro so that it can be `concat!`ed into static SQL).
macro_rules! task_columns {
    () => {
        "seq, id, module_name, module_version, module_sha256, queue, priority, input, state, \
         run_after, attempt, max_attempts, fuel, memory_bytes, timeout_ms, unique_key, \
         lease_owner, lease_expires_at, cancel_requested, result, error_kind, error_message, \
         error_logs, progress_percent, progress_message, enqueued_at, started_at, finished_at, \
         parent_id, ray_submission_id, updated_at, lease_epoch, free_runs, spawn_seq, depth, \
         children, waiting_on"
    };
}

/// Columns of a task summary ([`TaskSummary`]): no input, no result, no
/// logs, only the first characters of the result and of the error, so a page
/// of a listing costs the same whatever the tasks carried.
macro_rules! summary_columns {
    () => {
        "seq, id, module_name, module_version, queue, priority, state, run_after, attempt, \
         max_attempts, free_runs, lease_owner, cancel_requested, error_kind, \
         substr(error_message, 1, 121) AS error_preview, \
         substr(result, 1, 121) AS result_preview, progress_percent, enqueued_at, started_at, \
         finished_at, parent_id, ray_submission_id, spawn_seq, children"
    };
}

#[macro_use]
mod transitions;

mod error;
pub mod faults;
pub mod model;
mod notify;
mod postgres;
mod shared;
mod sqlite;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use error::{Result, StoreError};
pub use faults::{FaultPlan, Op};
pub use model::*;
pub use notify::Listener;
pub use postgres::PgStore;
pub use shared::{
    MAX_GRANT_VALUE_LEN, MAX_GRANTS_PER_MODULE, MAX_STORED_ERROR, MAX_STORED_LOGS,
    MAX_STORED_PROGRESS_MESSAGE, unstorable_completion, validate_new_task, validate_secret_name,
};
pub use sqlite::SqliteStore;

/// Connection pool size used by [`AnyStore::connect`].
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;

/// Rows [`Store::purge`] deletes per transaction: small enough that no other
/// writer (a heartbeat above all) waits long for the write lock.
pub const PURGE_BATCH: u32 = 5_000;

/// Operations on the task store. Implemented by each backend and by
/// [`AnyStore`]. All futures are `Send` so a worker can spawn them on a
/// multi-threaded runtime.
pub trait Store: Clone + Send + Sync + 'static {
    /// `"sqlite"` or `"postgres"`.
    fn backend_name(&self) -> &'static str;

    /// Applies pending migrations. Idempotent, and safe when several
    /// processes start at once.
    fn migrate(&self) -> impl Future<Output = Result<()>> + Send;

    /// One round trip to the database (`SELECT 1`).
    fn ping(&self) -> impl Future<Output = Result<()>> + Send;

    /// Closes the connection pool; later calls fail.
    fn close(&self) -> impl Future<Output = ()> + Send;

    // ---- modules -------------------------------------------------------

    /// Stores module bytes as `name@version`. The caller computes `sha256`
    /// (lowercase hex) and validates the module.
    ///
    /// Without `version`: if these bytes are already stored under `name`, that
    /// row is returned (`created: false`); otherwise the version is the next
    /// integer for that name ("1", "2", …). With `version`: an existing
    /// `name@version` holding the same bytes is returned, one holding other
    /// bytes is a [`StoreError::Conflict`].
    fn push_module(
        &self,
        name: &str,
        version: Option<&str>,
        bytes: &[u8],
        sha256: &str,
    ) -> impl Future<Output = Result<ModuleRecord>> + Send;

    /// `name@version`, or the latest version of `name` (highest id).
    fn resolve_module(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> impl Future<Output = Result<ModuleRecord>> + Send;

    fn module_bytes(&self, sha256: &str) -> impl Future<Output = Result<Vec<u8>>> + Send;

    /// All module versions, by name then age.
    fn list_modules(&self) -> impl Future<Output = Result<Vec<ModuleRecord>>> + Send;

    /// Deletes `name@version` (all versions of `name` when `version` is
    /// `None`) and returns how many versions were deleted. Refused with
    /// [`StoreError::ModuleInUse`] while queued or running tasks use it,
    /// unless `force`. The bytes are removed once neither a module version nor
    /// any task row (whatever its state) refers to them; tasks already queued
    /// therefore still run after a forced delete, and [`Store::purge`]
    /// collects the bytes later.
    fn delete_module(
        &self,
        name: &str,
        version: Option<&str>,
        force: bool,
    ) -> impl Future<Output = Result<u64>> + Send;

    // ---- grants ----------------------------------------------------------

    /// Grants `set.values` to the tasks of module `set.module` (of every
    /// version) in `set.queue`, or in every queue. At least one version of
    /// the module must be stored, and for secrets the secrets themselves
    /// ([`StoreError::NotFound`] otherwise); the name may hold at most
    /// [`MAX_GRANTS_PER_MODULE`] grants. Returns
    /// how many were new. Deleting the last version of a name deletes its
    /// grants: a later module of that name starts with none.
    fn add_grants(&self, set: GrantSet<'_>) -> impl Future<Output = Result<u64>> + Send;

    /// Removes `set.values` from the scope `set.queue` names (the
    /// every-queue scope when `None`); returns how many were removed.
    fn remove_grants(&self, set: GrantSet<'_>) -> impl Future<Output = Result<u64>> + Send;

    /// Removes every grant of `module` in `queue`, or in every scope when
    /// `None`; returns how many were removed.
    fn revoke_all_grants(
        &self,
        module: &str,
        queue: Option<&str>,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// The grants of `module`, or of every module, by module, queue, kind
    /// and value.
    fn list_grants(
        &self,
        module: Option<&str>,
    ) -> impl Future<Output = Result<Vec<ModuleGrant>>> + Send;

    // ---- secrets ---------------------------------------------------------

    /// Stores a sealed secret under `secret.name`, replacing the one there;
    /// returns whether it is new.
    fn put_secret(&self, secret: &StoredSecret) -> impl Future<Output = Result<bool>> + Send;

    /// Every secret's name and key id, by name.
    fn list_secrets(&self) -> impl Future<Output = Result<Vec<SecretInfo>>> + Send;

    /// Deletes a secret and every grant of it ([`StoreError::NotFound`] when
    /// there is none).
    fn delete_secret(&self, name: &str) -> impl Future<Output = Result<()>> + Send;

    /// The sealed secrets of these names that exist, by name.
    fn sealed_secrets(
        &self,
        names: &[String],
    ) -> impl Future<Output = Result<Vec<StoredSecret>>> + Send;

    // ---- enqueue -------------------------------------------------------

    fn enqueue(&self, task: NewTask) -> impl Future<Output = Result<EnqueueOutcome>> + Send;

    /// Inserts many tasks in one transaction; outcomes are in input order.
    /// Either all are stored or none.
    fn enqueue_batch(
        &self,
        tasks: &[NewTask],
    ) -> impl Future<Output = Result<Vec<EnqueueOutcome>>> + Send;

    // ---- reads ---------------------------------------------------------

    fn get_task(&self, id: Uuid) -> impl Future<Output = Result<TaskRecord>> + Send;

    /// Summaries, newest first.
    fn list_tasks(
        &self,
        filter: &TaskFilter,
    ) -> impl Future<Output = Result<Vec<TaskSummary>>> + Send;

    /// Oldest first.
    fn list_attempts(
        &self,
        task_id: Uuid,
    ) -> impl Future<Output = Result<Vec<AttemptRecord>>> + Send;

    fn queue_stats(&self) -> impl Future<Output = Result<Vec<QueueStat>>> + Send;

    // ---- subtasks --------------------------------------------------------

    /// The children `parent` spawned, by spawn number, with how each ended
    /// (results of succeeded ones only): what the parent's next run replays
    /// against.
    fn child_ledger(&self, parent: Uuid) -> impl Future<Output = Result<Vec<ChildRecord>>> + Send;

    /// Summaries of `parent`'s children, by spawn number, at most `limit`
    /// (0 = [`DEFAULT_LIST_LIMIT`]) from spawn number `from` on.
    fn list_children(
        &self,
        parent: Uuid,
        from: u32,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<TaskSummary>>> + Send;

    /// How many descendants `id` has and what all their runs used.
    fn family_usage(&self, id: Uuid) -> impl Future<Output = Result<FamilyUsage>> + Send;

    // ---- the worker's loop ---------------------------------------------

    /// Leases up to `limit` due queued tasks to `worker_id` for `lease`,
    /// highest priority first, then earliest `run_after`, then enqueue order;
    /// each becomes `leased` in a new epoch and run, with an attempt row.
    /// Returned in that order.
    fn claim(
        &self,
        worker_id: &str,
        queues: &QueueSelector,
        limit: u32,
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<ClaimedTask>>> + Send;

    /// Marks leased tasks `running` from the moment their runner started
    /// them (task and attempt row). `result[i]` is false when `starts[i]` was
    /// fenced off (the lease is no longer this worker's) or the task already
    /// left `leased`.
    fn mark_started(
        &self,
        worker_id: &str,
        starts: &[Started],
    ) -> impl Future<Output = Result<Vec<bool>>> + Send;

    /// Ends runs, all in one transaction. `result[i]` is true when
    /// `completions[i]` was applied, false when it was fenced off because the
    /// task is no longer live under this worker and epoch (the lease was
    /// reaped, the task re-claimed, …); a fenced row changes nothing.
    /// Retry and Release of a task whose cancellation was requested end in
    /// `cancelled`. Guest text in the reports is made storable and bounded
    /// here whatever the caller did.
    fn complete(
        &self,
        worker_id: &str,
        completions: &[Completion],
    ) -> impl Future<Output = Result<Vec<bool>>> + Send;

    /// Records that the worker is alive and extends exactly `leases` (those
    /// still live under this worker and epoch) to now + `lease`. The reply
    /// names the leases that could not be extended and the extended ones with
    /// a cancel request.
    fn heartbeat(
        &self,
        worker_id: &str,
        leases: &[Lease],
        lease: Duration,
    ) -> impl Future<Output = Result<HeartbeatReply>> + Send;

    /// The live tasks of `worker_id` whose cancellation was requested. A
    /// read only: a worker calls it when another process committed (SQLite
    /// has no notifications between processes), and a write there would
    /// make workers wake each other without end.
    fn cancel_requests(&self, worker_id: &str) -> impl Future<Output = Result<Vec<Uuid>>> + Send;

    /// Live tasks whose lease has run out, oldest lease first.
    fn expired_leases(&self, limit: u32) -> impl Future<Output = Result<Vec<ExpiredTask>>> + Send;

    /// Takes an expired task back from its silent worker: `Retry` requeues it,
    /// `Fail` fails it (the caller applies its retry policy). The lost run
    /// is recorded with outcome `lease-expired`. Returns false (and changes
    /// nothing) unless the task is still live in `epoch` with an expired
    /// lease.
    fn expire(
        &self,
        task_id: Uuid,
        epoch: u64,
        transition: Transition,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Records a live task's progress, as reported by its guest (the message
    /// is made storable and bounded). Fenced like a completion: returns false
    /// (and changes nothing) unless the task is still live under `worker_id`
    /// in `epoch`.
    fn set_progress(
        &self,
        worker_id: &str,
        lease: Lease,
        percent: u8,
        message: &str,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Records the Ray job that runs a live task's run `lease`, on the task
    /// (its latest job) and on the attempt row. Fenced like a completion.
    fn set_ray_submission(
        &self,
        worker_id: &str,
        lease: Lease,
        submission_id: &str,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Records the Ray node that runs the job of a live run `lease` on its
    /// attempt row. Fenced by the attempt's worker and epoch; false once
    /// the run has ended or is not this worker's.
    fn set_ray_node(
        &self,
        worker_id: &str,
        lease: Lease,
        node_id: &str,
    ) -> impl Future<Output = Result<bool>> + Send;

    // ---- operator actions ------------------------------------------------

    /// Cancels a queued or waiting task at once; asks the worker of a live
    /// one to stop it. Its unfinished descendants are cancelled the same
    /// way, in the same transaction.
    fn request_cancel(&self, id: Uuid) -> impl Future<Output = Result<CancelOutcome>> + Send;

    /// Requeues a failed or cancelled task now, keeping its attempt history
    /// and counter; grants one more attempt if they were used up.
    fn retry(&self, id: Uuid) -> impl Future<Output = Result<TaskRecord>> + Send;

    /// Deletes tasks (and their attempts) in terminal `state` that finished
    /// before `older_than`, [`PURGE_BATCH`] rows per transaction so that no
    /// other writer waits long. Returns how many.
    fn purge(
        &self,
        state: TaskState,
        older_than: DateTime<Utc>,
    ) -> impl Future<Output = Result<u64>> + Send;

    // ---- workers -------------------------------------------------------

    /// Inserts or refreshes the worker row (heartbeat now, not stopped).
    fn register_worker(&self, info: &WorkerInfo) -> impl Future<Output = Result<()>> + Send;

    fn stop_worker(&self, id: &str) -> impl Future<Output = Result<()>> + Send;

    /// Marks workers silent for longer than `silent_for` as stopped; returns
    /// how many.
    fn mark_stale_workers(&self, silent_for: Duration) -> impl Future<Output = Result<u64>> + Send;

    /// Newest first.
    fn list_workers(&self) -> impl Future<Output = Result<Vec<WorkerRecord>>> + Send;

    // ---- events --------------------------------------------------------

    /// Subscribes to wake-up events ([`StoreEvent`]). On PostgreSQL the
    /// listener holds one connection of the pool for its lifetime.
    fn listen(&self) -> impl Future<Output = Result<Listener>> + Send;
}

/// A store of either backend, chosen by URL. Cheap to clone.
#[derive(Clone)]
pub enum AnyStore {
    Sqlite(SqliteStore),
    Postgres(PgStore),
    /// A backend whose calls fail when a [`FaultPlan`] says so: for tests of
    /// what the worker does when the database misbehaves.
    Faulty(Arc<(Backend, FaultPlan)>),
}

/// A backend without fault injection.
#[derive(Clone)]
pub enum Backend {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl std::fmt::Debug for AnyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AnyStore({})", self.backend_name())
    }
}

impl AnyStore {
    /// This store with `plan`'s faults injected into its calls.
    pub fn with_faults(self, plan: FaultPlan) -> AnyStore {
        let backend = match self {
            AnyStore::Sqlite(s) => Backend::Sqlite(s),
            AnyStore::Postgres(s) => Backend::Postgres(s),
            AnyStore::Faulty(f) => f.0.clone(),
        };
        AnyStore::Faulty(Arc::new((backend, plan)))
    }

    /// The fault plan, if faults are injected.
    pub fn faults(&self) -> Option<&FaultPlan> {
        match self {
            AnyStore::Faulty(f) => Some(&f.1),
            _ => None,
        }
    }

    /// Fails the call when the plan has a fault armed for `op` before it.
    fn inject_before(&self, op: Op) -> Result<()> {
        self.faults().map_or(Ok(()), |f| f.before(op))
    }

    /// Turns a successful call into a lost reply when the plan says so.
    fn inject_after<T>(&self, op: Op, result: Result<T>) -> Result<T> {
        match (self.faults(), result) {
            (Some(f), Ok(v)) => f.after(op).map(|()| v),
            (_, result) => result,
        }
    }

    /// Connects to `sqlite://PATH` (created if missing), `sqlite::memory:`,
    /// or `postgres://…` / `postgresql://…`. Does not migrate.
    pub async fn connect(url: &str) -> Result<AnyStore> {
        Self::connect_with(url, DEFAULT_MAX_CONNECTIONS).await
    }

    /// [`AnyStore::connect`] with a pool of at most `max_connections`.
    pub async fn connect_with(url: &str, max_connections: u32) -> Result<AnyStore> {
        if url.starts_with("sqlite:") {
            Ok(AnyStore::Sqlite(
                SqliteStore::connect_with(url, max_connections).await?,
            ))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(AnyStore::Postgres(
                PgStore::connect_with(url, max_connections).await?,
            ))
        } else {
            // Never echo the URL: it may hold a password.
            let scheme = url.split(':').next().unwrap_or_default();
            Err(StoreError::invalid(format!(
                "unsupported database URL scheme {scheme:?}: use sqlite://PATH, sqlite::memory: or postgres://…"
            )))
        }
    }
}

/// Forwards a trait method to the backend.
macro_rules! dispatch {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            AnyStore::Sqlite($store) => $call,
            AnyStore::Postgres($store) => $call,
            AnyStore::Faulty(f) => match &f.0 {
                Backend::Sqlite($store) => $call,
                Backend::Postgres($store) => $call,
            },
        }
    };
}

impl Store for AnyStore {
    fn backend_name(&self) -> &'static str {
        dispatch!(self, s => s.backend_name())
    }

    async fn migrate(&self) -> Result<()> {
        dispatch!(self, s => s.migrate().await)
    }

    async fn ping(&self) -> Result<()> {
        dispatch!(self, s => s.ping().await)
    }

    async fn close(&self) {
        dispatch!(self, s => s.close().await)
    }

    async fn push_module(
        &self,
        name: &str,
        version: Option<&str>,
        bytes: &[u8],
        sha256: &str,
    ) -> Result<ModuleRecord> {
        dispatch!(self, s => s.push_module(name, version, bytes, sha256).await)
    }

    async fn resolve_module(&self, name: &str, version: Option<&str>) -> Result<ModuleRecord> {
        dispatch!(self, s => s.resolve_module(name, version).await)
    }

    async fn module_bytes(&self, sha256: &str) -> Result<Vec<u8>> {
        dispatch!(self, s => s.module_bytes(sha256).await)
    }

    async fn list_modules(&self) -> Result<Vec<ModuleRecord>> {
        dispatch!(self, s => s.list_modules().await)
    }

    async fn delete_module(&self, name: &str, version: Option<&str>, force: bool) -> Result<u64> {
        dispatch!(self, s => s.delete_module(name, version, force).await)
    }

    async fn add_grants(&self, set: GrantSet<'_>) -> Result<u64> {
        dispatch!(self, s => s.add_grants(set).await)
    }

    async fn remove_grants(&self, set: GrantSet<'_>) -> Result<u64> {
        dispatch!(self, s => s.remove_grants(set).await)
    }

    async fn revoke_all_grants(&self, module: &str, queue: Option<&str>) -> Result<u64> {
        dispatch!(self, s => s.revoke_all_grants(module, queue).await)
    }

    async fn list_grants(&self, module: Option<&str>) -> Result<Vec<ModuleGrant>> {
        dispatch!(self, s => s.list_grants(module).await)
    }

    async fn put_secret(&self, secret: &StoredSecret) -> Result<bool> {
        dispatch!(self, s => s.put_secret(secret).await)
    }

    async fn list_secrets(&self) -> Result<Vec<SecretInfo>> {
        dispatch!(self, s => s.list_secrets().await)
    }

    async fn delete_secret(&self, name: &str) -> Result<()> {
        dispatch!(self, s => s.delete_secret(name).await)
    }

    async fn sealed_secrets(&self, names: &[String]) -> Result<Vec<StoredSecret>> {
        dispatch!(self, s => s.sealed_secrets(names).await)
    }

    async fn enqueue(&self, task: NewTask) -> Result<EnqueueOutcome> {
        dispatch!(self, s => s.enqueue(task).await)
    }

    async fn enqueue_batch(&self, tasks: &[NewTask]) -> Result<Vec<EnqueueOutcome>> {
        dispatch!(self, s => s.enqueue_batch(tasks).await)
    }

    async fn get_task(&self, id: Uuid) -> Result<TaskRecord> {
        dispatch!(self, s => s.get_task(id).await)
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskSummary>> {
        dispatch!(self, s => s.list_tasks(filter).await)
    }

    async fn list_attempts(&self, task_id: Uuid) -> Result<Vec<AttemptRecord>> {
        dispatch!(self, s => s.list_attempts(task_id).await)
    }

    async fn queue_stats(&self) -> Result<Vec<QueueStat>> {
        dispatch!(self, s => s.queue_stats().await)
    }

    async fn child_ledger(&self, parent: Uuid) -> Result<Vec<ChildRecord>> {
        dispatch!(self, s => s.child_ledger(parent).await)
    }

    async fn list_children(&self, parent: Uuid, from: u32, limit: u32) -> Result<Vec<TaskSummary>> {
        dispatch!(self, s => s.list_children(parent, from, limit).await)
    }

    async fn family_usage(&self, id: Uuid) -> Result<FamilyUsage> {
        dispatch!(self, s => s.family_usage(id).await)
    }

    async fn claim(
        &self,
        worker_id: &str,
        queues: &QueueSelector,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<ClaimedTask>> {
        self.inject_before(Op::Claim)?;
        let claimed = dispatch!(self, s => s.claim(worker_id, queues, limit, lease).await);
        self.inject_after(Op::Claim, claimed)
    }

    async fn mark_started(&self, worker_id: &str, starts: &[Started]) -> Result<Vec<bool>> {
        self.inject_before(Op::MarkStarted)?;
        dispatch!(self, s => s.mark_started(worker_id, starts).await)
    }

    async fn complete(&self, worker_id: &str, completions: &[Completion]) -> Result<Vec<bool>> {
        self.inject_before(Op::Complete)?;
        if let Some(f) = self.faults() {
            f.check_completions(completions)?;
        }
        let written = dispatch!(self, s => s.complete(worker_id, completions).await);
        self.inject_after(Op::Complete, written)
    }

    async fn heartbeat(
        &self,
        worker_id: &str,
        leases: &[Lease],
        lease: Duration,
    ) -> Result<HeartbeatReply> {
        self.inject_before(Op::Heartbeat)?;
        dispatch!(self, s => s.heartbeat(worker_id, leases, lease).await)
    }

    async fn cancel_requests(&self, worker_id: &str) -> Result<Vec<Uuid>> {
        dispatch!(self, s => s.cancel_requests(worker_id).await)
    }

    async fn expired_leases(&self, limit: u32) -> Result<Vec<ExpiredTask>> {
        dispatch!(self, s => s.expired_leases(limit).await)
    }

    async fn expire(&self, task_id: Uuid, epoch: u64, transition: Transition) -> Result<bool> {
        dispatch!(self, s => s.expire(task_id, epoch, transition).await)
    }

    async fn set_progress(
        &self,
        worker_id: &str,
        lease: Lease,
        percent: u8,
        message: &str,
    ) -> Result<bool> {
        dispatch!(self, s => s.set_progress(worker_id, lease, percent, message).await)
    }

    async fn set_ray_submission(
        &self,
        worker_id: &str,
        lease: Lease,
        submission_id: &str,
    ) -> Result<bool> {
        dispatch!(self, s => s.set_ray_submission(worker_id, lease, submission_id).await)
    }

    async fn set_ray_node(&self, worker_id: &str, lease: Lease, node_id: &str) -> Result<bool> {
        dispatch!(self, s => s.set_ray_node(worker_id, lease, node_id).await)
    }

    async fn request_cancel(&self, id: Uuid) -> Result<CancelOutcome> {
        dispatch!(self, s => s.request_cancel(id).await)
    }

    async fn retry(&self, id: Uuid) -> Result<TaskRecord> {
        dispatch!(self, s => s.retry(id).await)
    }

    async fn purge(&self, state: TaskState, older_than: DateTime<Utc>) -> Result<u64> {
        dispatch!(self, s => s.purge(state, older_than).await)
    }

    async fn register_worker(&self, info: &WorkerInfo) -> Result<()> {
        dispatch!(self, s => s.register_worker(info).await)
    }

    async fn stop_worker(&self, id: &str) -> Result<()> {
        dispatch!(self, s => s.stop_worker(id).await)
    }

    async fn mark_stale_workers(&self, silent_for: Duration) -> Result<u64> {
        dispatch!(self, s => s.mark_stale_workers(silent_for).await)
    }

    async fn list_workers(&self) -> Result<Vec<WorkerRecord>> {
        dispatch!(self, s => s.list_workers().await)
    }

    async fn listen(&self) -> Result<Listener> {
        dispatch!(self, s => s.listen().await)
    }
}
