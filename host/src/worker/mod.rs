//! The worker: leases tasks from the store and runs them.
//!
//! One worker process runs these concurrent loops:
//! - **claim**: leases up to `concurrency + prefetch` tasks in batches,
//!   the prefetch sized from how fast runs finish ([`Prefetch::Auto`])
//!   (woken by LISTEN/NOTIFY on PostgreSQL, an in-process signal on SQLite,
//!   a freed slot, or the poll interval);
//! - **jobs**: one per claimed task, at most `concurrency` running;
//! - **completer**: writes finished attempts in batches, one transaction each;
//! - **heartbeat**: every third of the lease, extends the leases of all the
//!   worker's tasks in one statement and learns of cancellations;
//! - **reaper**: takes back tasks whose worker stopped heartbeating, and marks
//!   silent workers stopped;
//! - **listener**: turns database events into wake-ups and cancellations.
//!
//! In cluster mode (`wasmq worker --cluster`) each job loop hands its task to
//! a batch of its module, which runs as one Ray job, and follows that job
//! instead of running the task here ([`cluster`], [`batching`]).

pub mod batching;
pub mod cluster;
mod config;
pub mod envelope;
mod executor;
mod grants;
mod pace;
mod retry;
mod run;
pub mod shipping;
mod spawning;
pub mod wakeup;

pub use cluster::{Cluster, ClusterConfig};
pub use config::{
    DEFAULT_CLAIM_BATCH, DEFAULT_COMPLETE_BATCH, DEFAULT_GRACE, DEFAULT_LEASE,
    DEFAULT_MAX_IN_FLIGHT, DEFAULT_POLL_INTERVAL, DEFAULT_PREFETCH_HORIZON,
    DEFAULT_REAPER_INTERVAL, MAX_AUTO_PREFETCH, Mode, Prefetch, WorkerConfig,
};
pub use executor::{Executor, MAX_STORED_LOGS};
pub use grants::{DEFAULT_GRANT_TTL, Grants, TaskGrants, sealed_of};
pub use retry::{DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_CAP, DEFAULT_RETRY_ON, RetryPolicy};
pub use run::{Worker, WorkerStats};
