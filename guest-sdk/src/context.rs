//! What a running task can ask of, and tell, the host.

use std::cell::OnceCell;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use crate::bindings::wasmq::task::{host, types as wit};
use crate::testing::Recorder;

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Very fine-grained tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the task worked around.
    Warn,
    /// A failure.
    Error,
}

impl From<LogLevel> for wit::LogLevel {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Trace => wit::LogLevel::Trace,
            LogLevel::Debug => wit::LogLevel::Debug,
            LogLevel::Info => wit::LogLevel::Info,
            LogLevel::Warn => wit::LogLevel::Warn,
            LogLevel::Error => wit::LogLevel::Error,
        }
    }
}

/// Who the running attempt is.
#[derive(Debug, Clone)]
pub(crate) struct Info {
    pub task_id: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub queue: String,
    pub deadline_unix_ms: Option<u64>,
}

impl From<wit::TaskContext> for Info {
    fn from(c: wit::TaskContext) -> Self {
        Info {
            task_id: c.task_id,
            attempt: c.attempt,
            max_attempts: c.max_attempts,
            queue: c.queue,
            deadline_unix_ms: c.deadline_unix_ms,
        }
    }
}

/// The running attempt's view of the host: who it is, and a channel for logs,
/// progress and cancellation.
///
/// The task's identity is fetched from the host on first use only, so a task
/// that never asks (like a latency-sensitive one) pays nothing for it. Under
/// [`testing::TestContext`](crate::testing::TestContext) it is the test's,
/// and logs, progress and cancellation checks are recorded instead.
#[derive(Debug)]
pub struct Context {
    info: OnceCell<Info>,
    /// `None` inside a component: the host's imports.
    recorder: Option<Rc<Recorder>>,
}

impl Context {
    pub(crate) fn new() -> Self {
        Context {
            info: OnceCell::new(),
            recorder: None,
        }
    }

    pub(crate) fn recording(info: Info, recorder: Rc<Recorder>) -> Self {
        Context {
            info: OnceCell::from(info),
            recorder: Some(recorder),
        }
    }

    fn info(&self) -> &Info {
        self.info.get_or_init(|| host::context().into())
    }

    /// The task's id: a UUID for queued tasks, `local` under `wasmq run`.
    pub fn task_id(&self) -> &str {
        &self.info().task_id
    }

    /// This attempt's number, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.info().attempt
    }

    /// How many attempts the task gets in total.
    pub fn max_attempts(&self) -> u32 {
        self.info().max_attempts
    }

    /// True when a failure now will not be retried.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt() >= self.max_attempts()
    }

    /// The queue the task was taken from.
    pub fn queue(&self) -> &str {
        &self.info().queue
    }

    /// This attempt's wall-clock deadline, if it has one.
    pub fn deadline(&self) -> Option<SystemTime> {
        self.deadline_unix_ms()
            .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
    }

    /// This attempt's deadline in milliseconds since the Unix epoch, as the
    /// host reports it.
    pub fn deadline_unix_ms(&self) -> Option<u64> {
        self.info().deadline_unix_ms
    }

    /// Time left until the deadline: `None` without a deadline, zero once it
    /// has passed.
    pub fn time_remaining(&self) -> Option<Duration> {
        let deadline = self.deadline()?;
        Some(
            deadline
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        )
    }

    /// A native test's context (no host behind it).
    pub(crate) fn is_native(&self) -> bool {
        self.recorder.is_some()
    }

    /// Writes a log line, stored with the attempt. The host bounds how much
    /// it keeps.
    pub fn log(&self, level: LogLevel, message: impl AsRef<str>) {
        match &self.recorder {
            Some(r) => r.log(level, message.as_ref()),
            None => host::log(level.into(), message.as_ref()),
        }
    }

    /// [`log`](Self::log) at [`LogLevel::Debug`].
    pub fn log_debug(&self, message: impl AsRef<str>) {
        self.log(LogLevel::Debug, message);
    }

    /// [`log`](Self::log) at [`LogLevel::Info`].
    pub fn log_info(&self, message: impl AsRef<str>) {
        self.log(LogLevel::Info, message);
    }

    /// [`log`](Self::log) at [`LogLevel::Warn`].
    pub fn log_warn(&self, message: impl AsRef<str>) {
        self.log(LogLevel::Warn, message);
    }

    /// [`log`](Self::log) at [`LogLevel::Error`].
    pub fn log_error(&self, message: impl AsRef<str>) {
        self.log(LogLevel::Error, message);
    }

    /// Reports progress; the host clamps `percent` to 0..=100.
    pub fn progress(&self, percent: u8, message: impl AsRef<str>) {
        match &self.recorder {
            Some(r) => r.progress(percent, message.as_ref()),
            None => host::progress(percent, message.as_ref()),
        }
    }

    /// The secret `key` that the operator granted this task's module
    /// (`wasmq secret set KEY`, then `wasmq module grant MODULE --secret
    /// KEY`), read through `wasi:config/store`; `None` when none of that
    /// name is granted. The host takes granted values back out of the
    /// task's logs, output and errors, but a task should not print them.
    pub fn config(&self, key: &str) -> Option<String> {
        match &self.recorder {
            Some(r) => r.config(key),
            None => crate::config_bindings::wasi::config::store::get(key)
                .ok()
                .flatten(),
        }
    }

    /// True once cancellation was requested. A long-running task that checks
    /// this now and then can stop cleanly instead of being killed.
    pub fn is_cancelled(&self) -> bool {
        match &self.recorder {
            Some(r) => r.is_cancelled(),
            None => host::is_cancelled(),
        }
    }
}
