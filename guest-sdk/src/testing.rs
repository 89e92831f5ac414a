//! Unit tests of a task without a host: run the task function natively with
//! an input and an attempt of your choosing, and look at what it returned,
//! logged and reported.
//!
//! ```
//! use wasmq_guest::testing::TestContext;
//! use wasmq_guest::{Context, ErrorKind, TaskError};
//!
//! fn run(ctx: &Context, n: u64) -> Result<u64, TaskError> {
//!     if ctx.attempt() < 2 {
//!         return Err(TaskError::retryable("the first attempt always fails"));
//!     }
//!     ctx.progress(50, "halfway");
//!     ctx.log_info(format!("doubling {n}"));
//!     Ok(n * 2)
//! }
//!
//! let first = TestContext::new().run(run, 21);
//! assert_eq!(first.error().kind(), ErrorKind::Retryable);
//!
//! let second = TestContext::new().attempt(2).run(run, 21);
//! assert_eq!(*second.output(), 42);
//! assert_eq!(second.logs[0].message, "doubling 21");
//! assert_eq!(second.progress[0].percent, 50);
//!
//! // Through the JSON the host hands over, as the component would run it:
//! let bad = TestContext::new().attempt(2).run_json(run, r#""not a number""#);
//! assert_eq!(bad.error().kind(), ErrorKind::InvalidInput);
//! ```

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::Info;
use crate::{Context, LogLevel, TaskError};

/// The attempt a test runs a task as. Defaults: task id `test`, attempt 1 of
/// 3, queue `default`, no deadline, never cancelled.
#[derive(Debug, Clone)]
pub struct TestContext {
    info: Info,
    cancelled_after: Option<u32>,
    config: Vec<(String, String)>,
}

impl Default for TestContext {
    fn default() -> Self {
        TestContext {
            info: Info {
                task_id: "test".to_owned(),
                attempt: 1,
                max_attempts: 3,
                queue: "default".to_owned(),
                deadline_unix_ms: None,
            },
            cancelled_after: None,
            config: Vec::new(),
        }
    }
}

impl TestContext {
    /// The defaults above.
    pub fn new() -> Self {
        Self::default()
    }

    /// What [`Context::task_id`] returns.
    pub fn task_id(mut self, id: impl Into<String>) -> Self {
        self.info.task_id = id.into();
        self
    }

    /// What [`Context::attempt`] returns (from 1).
    pub fn attempt(mut self, attempt: u32) -> Self {
        self.info.attempt = attempt;
        self
    }

    /// What [`Context::max_attempts`] returns.
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.info.max_attempts = max_attempts;
        self
    }

    /// What [`Context::queue`] returns.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.info.queue = queue.into();
        self
    }

    /// A deadline this far from now.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        let at = SystemTime::now() + timeout;
        let ms = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        self.info.deadline_unix_ms = Some(u64::try_from(ms).unwrap_or(u64::MAX));
        self
    }

    /// Cancellation is requested after the task has checked
    /// [`Context::is_cancelled`] this many times (`0`: from the start).
    pub fn cancelled_after(mut self, checks: u32) -> Self {
        self.cancelled_after = Some(checks);
        self
    }

    /// A value [`Context::config`] returns for `key`, as a secret the
    /// operator granted the module would be.
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.push((key.into(), value.into()));
        self
    }

    /// Runs `task` with `input` as a typed value.
    pub fn run<I, O, E>(
        &self,
        task: impl FnOnce(&Context, I) -> Result<O, E>,
        input: I,
    ) -> TestRun<O>
    where
        E: Into<TaskError>,
    {
        self.record(|ctx| task(ctx, input).map_err(Into::into))
    }

    /// Runs `task` on JSON text, exactly as the exported component does: the
    /// input is deserialized (a failure is an `invalid-input` error and the
    /// task is not called) and the output serialized to JSON text.
    pub fn run_json<I, O, E>(
        &self,
        task: impl FnOnce(&Context, I) -> Result<O, E>,
        input: &str,
    ) -> TestRun<String>
    where
        I: DeserializeOwned,
        O: Serialize,
        E: Into<TaskError>,
    {
        self.record(|ctx| crate::__private::run_json(ctx, input, task))
    }

    fn record<T>(&self, f: impl FnOnce(&Context) -> Result<T, TaskError>) -> TestRun<T> {
        let recorder = Rc::new(Recorder {
            cancelled_after: self.cancelled_after,
            config: self.config.clone(),
            ..Recorder::default()
        });
        let ctx = Context::recording(self.info.clone(), recorder.clone());
        let result = f(&ctx);
        drop(ctx);
        // The task only ever borrowed the context, which is gone now.
        let recorder = Rc::try_unwrap(recorder).expect("the only handle left");
        TestRun {
            result,
            logs: recorder.logs.into_inner(),
            progress: recorder.progress.into_inner(),
            cancel_checks: recorder.cancel_checks.get(),
        }
    }
}

/// What one run of a task under [`TestContext`] did.
#[derive(Debug)]
pub struct TestRun<T> {
    /// What the task returned (for [`TestContext::run_json`], the JSON text).
    pub result: Result<T, TaskError>,
    /// Its log lines, in order.
    pub logs: Vec<LogLine>,
    /// Its progress reports, in order, `percent` clamped to 0..=100 as the
    /// host clamps it.
    pub progress: Vec<Progress>,
    /// How many times it asked [`Context::is_cancelled`].
    pub cancel_checks: u32,
}

impl<T> TestRun<T> {
    /// The task's output; panics with its error if it failed.
    pub fn output(&self) -> &T {
        match &self.result {
            Ok(out) => out,
            Err(e) => panic!("the task failed: {e}"),
        }
    }

    /// The task's error; panics if it succeeded (without printing the output,
    /// so `T` needs no `Debug`).
    pub fn error(&self) -> &TaskError {
        match &self.result {
            Ok(_) => panic!("the task succeeded"),
            Err(e) => e,
        }
    }
}

/// One [`Context::log`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Its level.
    pub level: LogLevel,
    /// Its text.
    pub message: String,
}

/// One [`Context::progress`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// 0..=100.
    pub percent: u8,
    /// Its text.
    pub message: String,
}

/// Where a [`Context`] under test sends what a component sends to the host.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    logs: RefCell<Vec<LogLine>>,
    progress: RefCell<Vec<Progress>>,
    cancel_checks: Cell<u32>,
    cancelled_after: Option<u32>,
    config: Vec<(String, String)>,
}

impl Recorder {
    pub(crate) fn log(&self, level: LogLevel, message: &str) {
        self.logs.borrow_mut().push(LogLine {
            level,
            message: message.to_owned(),
        });
    }

    pub(crate) fn progress(&self, percent: u8, message: &str) {
        self.progress.borrow_mut().push(Progress {
            percent: percent.min(100),
            message: message.to_owned(),
        });
    }

    pub(crate) fn config(&self, key: &str) -> Option<String> {
        self.config
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        let checked = self.cancel_checks.get();
        self.cancel_checks.set(checked + 1);
        self.cancelled_after.is_some_and(|after| checked >= after)
    }
}
