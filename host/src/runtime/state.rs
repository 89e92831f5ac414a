//! The per-run store data: WASI context, resource limiter, and the `host`
//! interface every task imports.

use super::cancel::CancelToken;
use super::outcome::LogRecord;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "task",
    exports: { default: async },
});

pub use self::wasmq::task::types::{ErrorKind as WitErrorKind, LogLevel, TaskContext};

/// Receives progress reports as the guest makes them (the worker stores them).
pub type ProgressSink = Arc<dyn Fn(u8, &str) + Send + Sync>;

/// Who the run is, as the guest sees it through `context()`.
#[derive(Debug, Clone)]
pub struct TaskInfo {
    pub task_id: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub queue: String,
}

impl TaskInfo {
    /// The identity used by `wasmq run`, outside any queue.
    pub fn local() -> Self {
        TaskInfo {
            task_id: "local".into(),
            attempt: 1,
            max_attempts: 1,
            queue: "local".into(),
        }
    }
}

pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limiter: MemoryLimiter,
    pub(super) task: TaskInfo,
    pub(super) deadline_unix_ms: u64,
    pub(super) deadline: Instant,
    pub(super) started: Instant,
    pub(super) cancel: CancelToken,
    pub(super) logs: LogBuffer,
    pub(super) progress: Option<(u8, String)>,
    progress_sink: Option<ProgressSink>,
}

impl HostState {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        wasi: WasiCtx,
        limiter: MemoryLimiter,
        task: TaskInfo,
        deadline: Instant,
        deadline_unix_ms: u64,
        cancel: CancelToken,
        max_log_bytes: usize,
        progress_sink: Option<ProgressSink>,
    ) -> Self {
        HostState {
            wasi,
            table: ResourceTable::new(),
            limiter,
            task,
            deadline_unix_ms,
            deadline,
            started: Instant::now(),
            cancel,
            logs: LogBuffer::new(max_log_bytes),
            progress: None,
            progress_sink,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl self::wasmq::task::types::Host for HostState {}

impl self::wasmq::task::host::Host for HostState {
    fn log(&mut self, level: LogLevel, message: String) {
        let at_ms = self.started.elapsed().as_millis() as u64;
        self.logs.push(level_name(level), message, at_ms);
    }

    fn progress(&mut self, percent: u8, message: String) {
        let percent = percent.min(100);
        if let Some(sink) = &self.progress_sink {
            sink(percent, &message);
        }
        self.progress = Some((percent, message));
    }

    fn context(&mut self) -> TaskContext {
        TaskContext {
            task_id: self.task.task_id.clone(),
            attempt: self.task.attempt,
            max_attempts: self.task.max_attempts,
            queue: self.task.queue.clone(),
            deadline_unix_ms: Some(self.deadline_unix_ms),
        }
    }

    fn is_cancelled(&mut self) -> bool {
        self.cancel.is_cancelled()
    }
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    }
}

/// Guest log lines, bounded by total message bytes.
pub(super) struct LogBuffer {
    pub(super) records: Vec<LogRecord>,
    bytes: usize,
    cap: usize,
    pub(super) dropped: u64,
}

impl LogBuffer {
    fn new(cap: usize) -> Self {
        LogBuffer {
            records: Vec::new(),
            bytes: 0,
            cap,
            dropped: 0,
        }
    }

    fn push(&mut self, level: &'static str, message: String, at_ms: u64) {
        if self.bytes + message.len() > self.cap {
            self.dropped += 1;
            return;
        }
        self.bytes += message.len();
        self.records.push(LogRecord {
            level,
            message,
            at_ms,
        });
    }
}

/// Caps the total linear memory of a run (all memories together), and records
/// the peak and whether the guest was ever refused, so that an allocation
/// failure can be reported as out-of-memory rather than as a bare trap.
pub(super) struct MemoryLimiter {
    limit: usize,
    current: usize,
    pub(super) peak: usize,
    pub(super) denied: Option<usize>,
}

/// Upper bounds on table elements and instance counts, generous enough for
/// componentize-py and componentize-js output.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;
const MAX_INSTANCES: usize = 1_000;
const MAX_TABLES: usize = 1_000;
const MAX_MEMORIES: usize = 100;

impl MemoryLimiter {
    pub(super) fn new(limit: usize) -> Self {
        MemoryLimiter {
            limit,
            current: 0,
            peak: 0,
            denied: None,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.current - current.min(self.current) + desired;
        if total > self.limit {
            self.denied = Some(total);
            return Ok(false);
        }
        self.current = total;
        self.peak = self.peak.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }
    fn tables(&self) -> usize {
        MAX_TABLES
    }
    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}
