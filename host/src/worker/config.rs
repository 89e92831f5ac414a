//! Worker settings: named defaults, each overridable by an environment variable
//! and by a flag of `wasmq worker`.

use crate::store::QueueSelector;
use std::time::Duration;

/// How long a claimed task stays leased without a heartbeat.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// How often the reaper looks for expired leases.
pub const DEFAULT_REAPER_INTERVAL: Duration = Duration::from_secs(10);
/// How often an idle worker polls when no wake-up event arrives.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long in-flight tasks may finish after SIGTERM/SIGINT before they are
/// interrupted and requeued.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Most tasks claimed in one statement.
pub const DEFAULT_CLAIM_BATCH: u32 = 256;
/// Most completions written in one transaction.
pub const DEFAULT_COMPLETE_BATCH: usize = 512;

/// Most tasks an adaptive worker claims beyond those it runs. Measured with
/// `wasmq bench queue` on 2 cores: on PostgreSQL fixed prefetches of 384–768
/// drain 5,400–5,800 `hello` tasks/s and 1,024 only 4,900 (more rows leased
/// and waiting for their completion write at once); SQLite is flat from 512
/// up.
pub const MAX_AUTO_PREFETCH: u32 = 512;
/// How much work an adaptive worker keeps claimed ahead of its runners,
/// measured in run time: enough to cover several claim round trips, little
/// enough that a worker never hoards what another one could start now.
pub const DEFAULT_PREFETCH_HORIZON: Duration = Duration::from_millis(100);

/// How many tasks a worker claims beyond those it runs at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefetch {
    /// Sized from how fast tasks finish: the tasks the runners would finish
    /// within the prefetch horizon, at most [`MAX_AUTO_PREFETCH`]. Nothing
    /// is prefetched until the first runs have been timed, so a queue of
    /// long tasks is shared between workers from the start.
    Auto { horizon: Duration },
    /// Exactly this many (`--prefetch N`).
    Fixed(u32),
}

impl Prefetch {
    /// The default: adaptive, with `WASMQ_PREFETCH_HORIZON` overriding
    /// [`DEFAULT_PREFETCH_HORIZON`].
    pub fn auto() -> Prefetch {
        Prefetch::Auto {
            horizon: env_duration("WASMQ_PREFETCH_HORIZON").unwrap_or(DEFAULT_PREFETCH_HORIZON),
        }
    }

    /// The most tasks this setting ever prefetches.
    pub fn max(self) -> u32 {
        match self {
            Prefetch::Auto { .. } => MAX_AUTO_PREFETCH,
            Prefetch::Fixed(n) => n,
        }
    }
}

impl std::fmt::Display for Prefetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Prefetch::Auto { horizon } => write!(f, "auto ({horizon:?} of work)"),
            Prefetch::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// Most ended runs of child tasks whose ends are not written yet, beyond
/// the runs under way: a child's run waits for a slot. Without a bound, a
/// worker runs short children faster than it writes their ends, and the
/// parent, which only the last of those writes can queue again, waits for
/// the whole backlog (hundreds of ends when `map` fans out over `add`).
/// Plain tasks are not bound: for them a backlog only means larger, cheaper
/// commits.
pub const DEFAULT_CHILD_BACKLOG: u32 = 16;

/// Ray jobs in flight per cluster worker (`--max-in-flight`).
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 16;

/// Which execution mode the worker runs tasks in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Up to `concurrency` tasks at once on the async runtime.
    Local,
    /// One task at a time on the worker's own thread.
    Sync,
    /// Each task as a Ray job; `concurrency` jobs in flight.
    Cluster,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Local => "local",
            Mode::Sync => "sync",
            Mode::Cluster => "ray",
        }
    }
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub mode: Mode,
    pub queues: QueueSelector,
    /// Tasks running at once.
    pub concurrency: u32,
    /// Tasks claimed ahead of a free slot, so short tasks do not wait for a
    /// database round trip each. Prefetched tasks are leased (and
    /// heartbeated) like running ones.
    pub prefetch: Prefetch,
    pub lease: Duration,
    pub reaper_interval: Duration,
    pub poll_interval: Duration,
    pub grace: Duration,
    pub claim_batch: u32,
    pub complete_batch: usize,
    /// See [`DEFAULT_CHILD_BACKLOG`]; 0 lifts the bound. Cluster workers
    /// never bound it: their children's ends arrive a job at a time.
    pub child_backlog: u32,
    /// Exit once no task is queued or running on the worker's queues.
    pub exit_when_idle: bool,
}

impl WorkerConfig {
    pub fn new(mode: Mode) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let (concurrency, prefetch) = match mode {
            Mode::Local => (cores, Prefetch::auto()),
            Mode::Sync => (1, Prefetch::auto()),
            // A claimed task waits for nothing local: claim only what runs.
            Mode::Cluster => (DEFAULT_MAX_IN_FLIGHT, Prefetch::Fixed(0)),
        };
        WorkerConfig {
            mode,
            queues: QueueSelector::Named(vec!["default".into()]),
            concurrency,
            prefetch,
            lease: env_duration("WASMQ_LEASE").unwrap_or(DEFAULT_LEASE),
            reaper_interval: env_duration("WASMQ_REAPER_INTERVAL")
                .unwrap_or(DEFAULT_REAPER_INTERVAL),
            poll_interval: env_duration("WASMQ_POLL_INTERVAL").unwrap_or(DEFAULT_POLL_INTERVAL),
            grace: env_duration("WASMQ_GRACE").unwrap_or(DEFAULT_GRACE),
            claim_batch: DEFAULT_CLAIM_BATCH,
            complete_batch: DEFAULT_COMPLETE_BATCH,
            child_backlog: match mode {
                Mode::Cluster => 0,
                _ => env_u32("WASMQ_CHILD_BACKLOG").unwrap_or(DEFAULT_CHILD_BACKLOG),
            },
            exit_when_idle: false,
        }
    }

    /// The most tasks this worker ever holds: running plus prefetched.
    pub fn max_held(&self) -> u32 {
        self.concurrency.saturating_add(self.prefetch.max())
    }

    /// Heartbeats come three times per lease, so two may be lost in a row.
    pub fn heartbeat_interval(&self) -> Duration {
        self.lease / 3
    }

    /// A worker silent for this long is marked stopped.
    pub fn stale_after(&self) -> Duration {
        self.lease * 3
    }
}

/// The setting `name` parsed by `parse`; unset is `None`, and so is a value
/// that does not parse, with a warning that names it.
pub(crate) fn env_setting<T, E: std::fmt::Display>(
    name: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Option<T> {
    let v = std::env::var(name).ok()?;
    match parse(v.trim()) {
        Ok(value) => Some(value),
        Err(e) => {
            tracing::warn!(variable = name, error = %e, "ignoring invalid setting");
            None
        }
    }
}

pub(crate) fn env_u32(name: &str) -> Option<u32> {
    env_setting(name, str::parse)
}

pub(crate) fn env_duration(name: &str) -> Option<Duration> {
    env_setting(name, crate::runtime::parse_duration)
}
