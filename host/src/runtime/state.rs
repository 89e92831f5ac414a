//! The per-run store data: WASI context, resource limiter, and the `host`
//! interface every task imports.

use super::cancel::CancelToken;
use super::config::RunConfig;
use super::http::HttpRun;
use super::limits::{
    LOG_RECORD_OVERHEAD_BYTES, MAX_LOG_MESSAGE_BYTES, MAX_LOG_RECORDS, MAX_PROGRESS_MESSAGE_BYTES,
};
use super::outcome::{LogRecord, make_storable};
use super::subtasks::{ChildEnd, Refused, SpawnOptions, Subtasks, WaitError};
use std::sync::Arc;
use std::time::Instant;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "task",
    exports: { default: async },
    // A wait that must suspend, or a spawn that differs from the first
    // run's, ends the run: a trap the guest cannot catch.
    imports: {
        "wasmq:task/subtasks.spawn": trappable,
        "wasmq:task/subtasks.spawn-many": trappable,
        "wasmq:task/subtasks.wait": trappable,
        "wasmq:task/subtasks.map": trappable,
    },
});

use self::wasmq::task::subtasks::{Child as WitChild, SpawnOptions as WitSpawnOptions};
use self::wasmq::task::types::TaskError as WitTaskError;
pub use self::wasmq::task::types::{ErrorKind as WitErrorKind, LogLevel, TaskContext};

/// Receives progress reports as the guest makes them (the worker stores them).
/// It is called from inside the guest's host call, so it must return at
/// once; the message is already storable and at most
/// [`MAX_PROGRESS_MESSAGE_BYTES`] long.
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
    /// `None` where subtasks are not available (`wasmq run`): a spawn is
    /// refused with an error that says so.
    pub(super) subtasks: Option<Subtasks>,
    /// Outbound HTTP: linked only for runs with a grant; without one every
    /// request is refused anyway.
    http: HttpRun,
    /// What `wasi:config/store` answers (granted secrets); `None`: nothing.
    config: Option<Arc<RunConfig>>,
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
        subtasks: Option<Subtasks>,
        http: HttpRun,
        config: Option<Arc<RunConfig>>,
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
            subtasks,
            http,
            config,
        }
    }
}

impl HostState {
    pub(super) fn config(&self) -> Option<&RunConfig> {
        self.config.as_deref()
    }

    /// Guest text with the run's secret values taken out.
    fn redacted(&self, mut text: String) -> String {
        if let Some(c) = &self.config {
            c.redactor().redact_string(&mut text);
        }
        text
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

impl wasmtime_wasi_http::WasiHttpView for HostState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http.ctx,
            table: &mut self.table,
            hooks: &mut self.http.hooks,
        }
    }
}

impl self::wasmq::task::types::Host for HostState {}

impl self::wasmq::task::host::Host for HostState {
    fn log(&mut self, level: LogLevel, message: String) {
        let at_ms = self.started.elapsed().as_millis() as u64;
        let message = self.redacted(message);
        self.logs.push(level_name(level), message, at_ms);
    }

    fn progress(&mut self, percent: u8, message: String) {
        let percent = percent.min(100);
        let mut message = self.redacted(message);
        make_storable(&mut message, MAX_PROGRESS_MESSAGE_BYTES);
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

impl self::wasmq::task::subtasks::Host for HostState {
    fn spawn(
        &mut self,
        module: String,
        input: String,
        options: WitSpawnOptions,
    ) -> wasmtime::Result<Result<WitChild, WitTaskError>> {
        let options = spawn_options(options);
        let Some(subtasks) = &mut self.subtasks else {
            return Ok(Err(no_subtasks()));
        };
        Ok(match subtasks.spawn(&module, input, &options)? {
            Ok((id, seq)) => Ok(WitChild {
                id: id.to_string(),
                seq,
            }),
            Err(refused) => Err(refused_error(refused)),
        })
    }

    fn spawn_many(
        &mut self,
        module: String,
        inputs: Vec<String>,
        options: WitSpawnOptions,
    ) -> wasmtime::Result<Result<Vec<WitChild>, WitTaskError>> {
        let options = spawn_options(options);
        let Some(subtasks) = &mut self.subtasks else {
            return Ok(Err(no_subtasks()));
        };
        let mut children = Vec::with_capacity(inputs.len().min(1024));
        for input in inputs {
            match subtasks.spawn(&module, input, &options)? {
                Ok((id, seq)) => children.push(WitChild {
                    id: id.to_string(),
                    seq,
                }),
                Err(refused) => return Ok(Err(refused_error(refused))),
            }
        }
        Ok(Ok(children))
    }

    fn wait(
        &mut self,
        children: Vec<WitChild>,
    ) -> wasmtime::Result<Vec<Result<String, WitTaskError>>> {
        let Some(subtasks) = &mut self.subtasks else {
            // Nothing can have been spawned.
            return Ok(children.iter().map(|_| Err(no_subtasks())).collect());
        };
        let keys: Vec<(String, u32)> = children.into_iter().map(|c| (c.id, c.seq)).collect();
        wait_results(subtasks, &keys, 0)
    }

    fn map(
        &mut self,
        module: String,
        inputs: Vec<String>,
        options: WitSpawnOptions,
        max_running: Option<u32>,
    ) -> wasmtime::Result<Result<Vec<Result<String, WitTaskError>>, WitTaskError>> {
        let options = spawn_options(options);
        let Some(subtasks) = &mut self.subtasks else {
            return Ok(Err(no_subtasks()));
        };
        let n = u32::try_from(inputs.len()).unwrap_or(u32::MAX);
        let first = subtasks.reserve(n);
        let end = first.saturating_add(n);
        // With a window, only so many of this map's children are unfinished
        // at once: the recorded unfinished ones take their places first.
        let window = max_running.filter(|&w| w > 0).unwrap_or(u32::MAX);
        let mut room = window.saturating_sub(subtasks.unfinished_known(first..end));
        let mut keys = Vec::with_capacity(inputs.len().min(1024));
        let mut unspawned = 0u32;
        for (i, input) in inputs.into_iter().enumerate() {
            let seq = first + i as u32;
            if !subtasks.is_known(seq) {
                if room == 0 {
                    unspawned += 1;
                    continue;
                }
                room -= 1;
            }
            subtasks.set_next(seq);
            match subtasks.spawn(&module, input, &options)? {
                Ok((id, seq)) => keys.push((id.to_string(), seq)),
                Err(refused) => return Ok(Err(refused_error(refused))),
            }
        }
        subtasks.set_next(end);
        // Resume when half the window is free, to spawn the next ones.
        let allowed = if unspawned > 0 { window / 2 } else { 0 };
        match wait_results(subtasks, &keys, allowed) {
            Ok(results) if unspawned == 0 => Ok(Ok(results)),
            // Every spawned child is done but some are not spawned yet:
            // the room computed above makes this impossible, and a short
            // list must never be returned.
            Ok(_) => Err(wasmtime::Error::msg(
                "map: children left unspawned with none running (a bug in the host)",
            )),
            Err(e) => Err(e),
        }
    }
}

/// The results of a wait, or the trap that ends the run.
fn wait_results(
    subtasks: &mut Subtasks,
    keys: &[(String, u32)],
    allowed_unfinished: u32,
) -> wasmtime::Result<Vec<Result<String, WitTaskError>>> {
    match subtasks.wait(keys, allowed_unfinished) {
        Ok(ends) => Ok(ends.into_iter().map(child_result).collect()),
        Err(WaitError::Suspended(s)) => Err(s.into()),
        Err(WaitError::Unknown(message)) => Err(wasmtime::Error::msg(message)),
    }
}

fn child_result(end: &ChildEnd) -> Result<String, WitTaskError> {
    match end {
        ChildEnd::Succeeded { result } => Ok(result.clone()),
        ChildEnd::Failed {
            task_state,
            error_kind,
            message,
        } => Err(WitTaskError {
            kind: WitErrorKind::Permanent,
            message: format!(
                "{task_state} ({}): {}",
                error_kind.as_deref().unwrap_or("unknown"),
                message.as_deref().unwrap_or("no message")
            ),
            details: None,
        }),
    }
}

fn spawn_options(o: WitSpawnOptions) -> SpawnOptions {
    SpawnOptions {
        queue: o.queue,
        priority: o.priority,
        max_attempts: o.max_attempts,
        fuel: o.fuel,
        memory_bytes: o.memory_bytes,
        timeout_ms: o.timeout_ms,
    }
}

fn refused_error(refused: Refused) -> WitTaskError {
    WitTaskError {
        kind: WitErrorKind::Permanent,
        message: refused.0,
        details: None,
    }
}

fn no_subtasks() -> WitTaskError {
    WitTaskError {
        kind: WitErrorKind::Permanent,
        message: "subtasks are not available to this run: they need a queued task run by a \
                  worker (`wasmq run` has no queue to spawn on)"
            .into(),
        details: None,
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

/// Guest log lines, bounded in bytes and in records. The first lines are
/// kept; later ones are only counted, so a guest that logs in a loop costs a
/// counter, not memory.
pub(super) struct LogBuffer {
    records: Vec<LogRecord>,
    /// Message bytes kept, plus [`LOG_RECORD_OVERHEAD_BYTES`] per record.
    bytes: usize,
    cap: usize,
    dropped: u64,
}

impl LogBuffer {
    pub(super) fn new(cap: usize) -> Self {
        LogBuffer {
            records: Vec::new(),
            bytes: 0,
            cap,
            dropped: 0,
        }
    }

    pub(super) fn push(&mut self, level: &'static str, mut message: String, at_ms: u64) {
        // Checked before the message is made storable, so that a dropped
        // line costs no copy; checked again after, since replacing NUL
        // makes text longer.
        let fits = |bytes: usize, len: usize, records: usize| {
            records < MAX_LOG_RECORDS && bytes + LOG_RECORD_OVERHEAD_BYTES + len <= self.cap
        };
        if !fits(
            self.bytes,
            message.len().min(MAX_LOG_MESSAGE_BYTES),
            self.records.len(),
        ) {
            self.dropped += 1;
            return;
        }
        make_storable(&mut message, MAX_LOG_MESSAGE_BYTES);
        if !fits(self.bytes, message.len(), self.records.len()) {
            self.dropped += 1;
            return;
        }
        self.bytes += LOG_RECORD_OVERHEAD_BYTES + message.len();
        self.records.push(LogRecord {
            level,
            message,
            at_ms,
        });
    }

    /// The kept records, then a marker line when some were dropped.
    pub(super) fn finish(&mut self, at_ms: u64) -> Vec<LogRecord> {
        let mut records = std::mem::take(&mut self.records);
        if self.dropped > 0 {
            records.push(LogRecord {
                level: "warn",
                message: format!(
                    "[wasmq: {} log lines dropped over the cap of {} lines or {} bytes]",
                    self.dropped, MAX_LOG_RECORDS, self.cap
                ),
                at_ms,
            });
        }
        records
    }
}

/// Caps what a run may allocate: its linear memories and its tables
/// together, whatever the allocator (the pooling allocator bounds each slot,
/// but the on-demand one, which `wasmq exec` uses, would otherwise give a
/// module declaring many large tables gigabytes of host memory). Records the
/// peak, and the last refusal, so that an allocation failure can be reported
/// as out-of-memory rather than as a bare trap.
pub(super) struct MemoryLimiter {
    limit: usize,
    /// Bytes of linear memory plus table storage in use.
    current: usize,
    pub(super) peak: usize,
    /// The total the guest asked for when it was last refused; cleared when
    /// a later growth succeeds, since a guest that goes on allocating coped
    /// with the refusal and whatever ends it later is not that refusal.
    pub(super) denied: Option<usize>,
}

/// Upper bounds on table elements and instance counts, generous enough for
/// componentize-py and componentize-js output.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;
const MAX_INSTANCES: usize = 1_000;
const MAX_TABLES: usize = 1_000;
const MAX_MEMORIES: usize = 100;
/// What one table element costs the host: a pointer (a `funcref` or an
/// `externref`). Counted against the run's memory limit.
pub(super) const TABLE_ELEMENT_BYTES: usize = 8;

impl MemoryLimiter {
    pub(super) fn new(limit: usize) -> Self {
        MemoryLimiter {
            limit,
            current: 0,
            peak: 0,
            denied: None,
        }
    }

    /// Moves `current` from `old` to `new` bytes of one memory or table,
    /// unless the total would pass the limit.
    fn grow(&mut self, old: usize, new: usize) -> bool {
        let total = (self.current - old.min(self.current)).saturating_add(new);
        if total > self.limit {
            self.denied = Some(total);
            return false;
        }
        self.current = total;
        self.peak = self.peak.max(total);
        self.denied = None;
        true
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(current, desired))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.denied = Some(desired.saturating_mul(TABLE_ELEMENT_BYTES));
            return Ok(false);
        }
        Ok(self.grow(
            current.saturating_mul(TABLE_ELEMENT_BYTES),
            desired.saturating_mul(TABLE_ELEMENT_BYTES),
        ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::{NUL_REPLACEMENT, TRUNCATION_MARK};

    #[test]
    fn empty_lines_cost_their_overhead_and_the_record_count_is_capped() {
        let mut logs = LogBuffer::new(64 * 1024);
        for _ in 0..1_000_000 {
            logs.push("info", String::new(), 0);
        }
        let records = logs.finish(7);
        // The kept lines, then one marker line.
        let kept = records.len() - 1;
        assert!(kept <= MAX_LOG_RECORDS, "{kept} records kept");
        assert!(kept * LOG_RECORD_OVERHEAD_BYTES <= 64 * 1024);
        let marker = records.last().unwrap();
        assert_eq!(
            marker.message,
            format!(
                "[wasmq: {} log lines dropped over the cap of {MAX_LOG_RECORDS} lines or 65536 bytes]",
                1_000_000 - kept
            )
        );
        assert_eq!(marker.at_ms, 7);
    }

    #[test]
    fn empty_lines_alone_reach_the_byte_cap() {
        // A small byte cap is reached before the record cap: empty lines are
        // not free.
        let cap = 10 * LOG_RECORD_OVERHEAD_BYTES;
        let mut logs = LogBuffer::new(cap);
        for _ in 0..100 {
            logs.push("info", String::new(), 0);
        }
        assert_eq!(logs.records.len(), 10);
        assert_eq!(logs.dropped, 90);
    }

    #[test]
    fn log_lines_are_storable_and_each_is_bounded() {
        let mut logs = LogBuffer::new(64 * 1024);
        logs.push("info", "a\0b".into(), 0);
        logs.push("warn", "x".repeat(10 * MAX_LOG_MESSAGE_BYTES), 1);
        // Fits before NUL replacement, not after: dropped, not over the cap.
        let mut tight = LogBuffer::new(LOG_RECORD_OVERHEAD_BYTES + 3);
        tight.push("info", "\0\0\0".into(), 0);
        assert!(tight.records.is_empty());
        assert_eq!(tight.dropped, 1);

        let records = logs.finish(0);
        assert_eq!(records.len(), 2, "nothing dropped, so no marker");
        assert_eq!(records[0].message, format!("a{NUL_REPLACEMENT}b"));
        assert!(records[1].message.len() <= MAX_LOG_MESSAGE_BYTES);
        assert!(records[1].message.ends_with(TRUNCATION_MARK));
    }

    #[test]
    fn a_line_over_the_remaining_bytes_is_dropped_and_later_small_ones_kept() {
        let cap = 2 * LOG_RECORD_OVERHEAD_BYTES + 10;
        let mut logs = LogBuffer::new(cap);
        logs.push("info", "0123456789".into(), 0);
        logs.push("info", "too long for what is left".into(), 0);
        logs.push("info", String::new(), 0);
        let records = logs.finish(0);
        let messages: Vec<&str> = records.iter().map(|r| r.message.as_str()).collect();
        assert_eq!(messages[..2], ["0123456789", ""]);
        assert!(messages[2].starts_with("[wasmq: 1 log lines dropped"));
    }

    #[test]
    fn tables_count_against_the_memory_limit() {
        let mut l = MemoryLimiter::new(1 << 20);
        assert!(l.memory_growing(0, 512 << 10, None).unwrap());
        // 64k elements are 512 KiB: exactly the rest of the limit.
        assert!(l.table_growing(0, 64 << 10, None).unwrap());
        assert!(!l.table_growing(0, 1, None).unwrap());
        assert_eq!(l.denied, Some((1 << 20) + TABLE_ELEMENT_BYTES));
        assert!(!l.table_growing(0, MAX_TABLE_ELEMENTS + 1, None).unwrap());
        assert_eq!(l.peak, 1 << 20);
    }

    #[test]
    fn a_growth_after_a_refusal_clears_it() {
        let mut l = MemoryLimiter::new(1 << 20);
        assert!(!l.memory_growing(0, 2 << 20, None).unwrap());
        assert!(l.denied.is_some());
        assert!(l.memory_growing(0, 64 << 10, None).unwrap());
        assert_eq!(l.denied, None, "the guest coped and went on");
    }
}
