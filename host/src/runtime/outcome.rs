//! What a run produced: the outcome and the full report.

use super::limits::{
    MAX_BACKTRACE_BYTES, MAX_ERROR_DETAILS_BYTES, MAX_ERROR_MESSAGE_BYTES,
    MAX_PROGRESS_MESSAGE_BYTES,
};
pub use crate::kinds::{FailureKind, OutcomeKind, TaskErrorKind};
use crate::text;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;

/// `s` made storable in place by [`text::storable`]: NUL replaced, cut to
/// `max_bytes` with a mark. No copy when it already was.
pub(crate) fn make_storable(s: &mut String, max_bytes: usize) {
    if let Cow::Owned(fixed) = text::storable(s, max_bytes) {
        *s = fixed;
    }
}

/// How a run ended. Every variant but `Success` is a failure; which of them are
/// retried is the queue's retry policy, not the runtime's business.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Outcome {
    /// `run` returned `ok` with valid JSON within the output cap.
    Success,
    /// `run` returned `err` (or the host refused the input before the call).
    TaskError {
        error_kind: TaskErrorKind,
        message: String,
        details: Option<String>,
    },
    /// The guest trapped: a panic, `unreachable`, a bad memory access, …
    Trap {
        message: String,
        backtrace: Option<String>,
    },
    OutOfFuel {
        message: String,
    },
    OutOfMemory {
        message: String,
    },
    Timeout {
        message: String,
    },
    Cancelled {
        message: String,
    },
    InvalidModule {
        message: String,
    },
    InvalidOutput {
        message: String,
    },
    /// The host itself failed (instantiation, resource exhaustion): not the task's fault.
    HostError {
        message: String,
    },
    /// The task waits for children it spawned ([`RunReport::suspension`]):
    /// not an end, a pause; it runs again when they are done.
    Waiting {
        message: String,
    },
}

impl Outcome {
    /// The stable name of this kind, as stored in the database and printed.
    pub fn kind(&self) -> &'static str {
        self.outcome_kind().as_str()
    }

    /// The failure this outcome stands for, as the retry policy names it;
    /// `None` for success and cancellation.
    pub fn failure_kind(&self) -> Option<FailureKind> {
        FailureKind::of(self.outcome_kind(), self.task_error_kind())
    }

    /// The task's own kind of error, for a task error.
    pub fn task_error_kind(&self) -> Option<TaskErrorKind> {
        match self {
            Outcome::TaskError { error_kind, .. } => Some(*error_kind),
            _ => None,
        }
    }

    pub fn outcome_kind(&self) -> OutcomeKind {
        match self {
            Outcome::Success => OutcomeKind::Success,
            Outcome::TaskError { .. } => OutcomeKind::TaskError,
            Outcome::Trap { .. } => OutcomeKind::Trap,
            Outcome::OutOfFuel { .. } => OutcomeKind::OutOfFuel,
            Outcome::OutOfMemory { .. } => OutcomeKind::OutOfMemory,
            Outcome::Timeout { .. } => OutcomeKind::Timeout,
            Outcome::Cancelled { .. } => OutcomeKind::Cancelled,
            Outcome::InvalidModule { .. } => OutcomeKind::InvalidModule,
            Outcome::InvalidOutput { .. } => OutcomeKind::InvalidOutput,
            Outcome::HostError { .. } => OutcomeKind::HostError,
            Outcome::Waiting { .. } => OutcomeKind::Waiting,
        }
    }

    /// A task this worker will not run as it asks (a limit above what the
    /// worker allows): an `invalid-input` task error, which no retry can
    /// change.
    pub fn refused(why: impl fmt::Display) -> Outcome {
        Outcome::TaskError {
            error_kind: TaskErrorKind::InvalidInput,
            message: format!("refused by this worker: {why}"),
            details: None,
        }
    }

    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }

    /// The human message of a failure; `None` for success.
    pub fn message(&self) -> Option<&str> {
        match self {
            Outcome::Success => None,
            Outcome::TaskError { message, .. }
            | Outcome::Trap { message, .. }
            | Outcome::OutOfFuel { message }
            | Outcome::OutOfMemory { message }
            | Outcome::Timeout { message }
            | Outcome::Cancelled { message }
            | Outcome::InvalidModule { message }
            | Outcome::InvalidOutput { message }
            | Outcome::HostError { message }
            | Outcome::Waiting { message } => Some(message),
        }
    }
}

impl Outcome {
    /// Every text of this outcome: the message, and a task error's details
    /// or a trap's backtrace.
    pub fn texts_mut(&mut self) -> Vec<&mut String> {
        match self {
            Outcome::Success => Vec::new(),
            Outcome::TaskError {
                message, details, ..
            } => std::iter::once(message).chain(details.as_mut()).collect(),
            Outcome::Trap { message, backtrace } => {
                std::iter::once(message).chain(backtrace.as_mut()).collect()
            }
            Outcome::OutOfFuel { message }
            | Outcome::OutOfMemory { message }
            | Outcome::Timeout { message }
            | Outcome::Cancelled { message }
            | Outcome::InvalidModule { message }
            | Outcome::InvalidOutput { message }
            | Outcome::HostError { message }
            | Outcome::Waiting { message } => vec![message],
        }
    }
}

impl Outcome {
    /// This outcome with every text in it storable and bounded: the message
    /// ([`MAX_ERROR_MESSAGE_BYTES`]), a task error's details
    /// ([`MAX_ERROR_DETAILS_BYTES`]) and a trap's backtrace
    /// ([`MAX_BACKTRACE_BYTES`]). The guest writes much of it (a task
    /// error's message, a panic message), so it is treated as hostile.
    pub fn bounded(mut self) -> Outcome {
        match &mut self {
            Outcome::Success => {}
            Outcome::TaskError {
                message, details, ..
            } => {
                make_storable(message, MAX_ERROR_MESSAGE_BYTES);
                if let Some(d) = details {
                    make_storable(d, MAX_ERROR_DETAILS_BYTES);
                }
            }
            Outcome::Trap { message, backtrace } => {
                make_storable(message, MAX_ERROR_MESSAGE_BYTES);
                if let Some(b) = backtrace {
                    make_storable(b, MAX_BACKTRACE_BYTES);
                }
            }
            Outcome::OutOfFuel { message }
            | Outcome::OutOfMemory { message }
            | Outcome::Timeout { message }
            | Outcome::Cancelled { message }
            | Outcome::InvalidModule { message }
            | Outcome::InvalidOutput { message }
            | Outcome::HostError { message }
            | Outcome::Waiting { message } => make_storable(message, MAX_ERROR_MESSAGE_BYTES),
        }
        self
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::TaskError {
                error_kind,
                message,
                ..
            } => write!(f, "task-error ({}): {message}", error_kind.as_str()),
            other => match other.message() {
                Some(m) => write!(f, "{}: {m}", other.kind()),
                None => f.write_str(other.kind()),
            },
        }
    }
}

/// Room for the marker a capture appends when it dropped bytes.
const DROP_MARK_ROOM: usize = 128;

/// Where the compiled module came from for this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheSource {
    /// Already instantiated-ready in this process.
    Memory,
    /// Loaded from a precompiled artifact on disk (no compilation).
    Disk,
    /// Compiled from the module's bytes by this process.
    Compiled,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogRecord {
    pub level: &'static str,
    pub message: String,
    /// Milliseconds since the run started.
    pub at_ms: u64,
}

/// Everything one run reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub outcome: Outcome,
    /// The task's output, JSON text, on success.
    pub output: Option<String>,
    pub module_sha256: String,
    pub cache: CacheSource,
    /// Fuel consumed, instantiation included.
    pub fuel_used: u64,
    /// Largest total linear memory the instance reached, in bytes.
    pub peak_memory_bytes: u64,
    /// Wall time of instantiate + run, in microseconds.
    pub wall_time_us: u64,
    pub stdout: String,
    pub stderr: String,
    pub logs: Vec<LogRecord>,
    /// The last progress the guest reported.
    pub progress: Option<(u8, String)>,
    /// Children this run spawned that earlier runs had not (whatever the
    /// outcome: a retry or a resume must find them).
    pub spawns: Vec<super::subtasks::Spawn>,
    /// Set with [`Outcome::Waiting`]: what the task waits for.
    pub suspension: Option<super::subtasks::Suspension>,
}

impl RunReport {
    /// A run that ended before the guest ran (the module did not load, the
    /// host failed): no output, nothing used.
    pub fn not_run(outcome: Outcome, module_sha256: String) -> RunReport {
        RunReport {
            outcome,
            output: None,
            module_sha256,
            cache: CacheSource::Compiled,
            fuel_used: 0,
            peak_memory_bytes: 0,
            wall_time_us: 0,
            stdout: String::new(),
            stderr: String::new(),
            logs: Vec::new(),
            progress: None,
            spawns: Vec::new(),
            suspension: None,
        }
    }

    /// This report with everything the guest wrote storable and bounded,
    /// as [`Runtime::run`](super::Runtime::run) returns it. The runtime
    /// bounds logs, stdout, stderr and progress as they arrive; this is the
    /// guard over the whole report (a report decoded from elsewhere, an
    /// outcome built from guest text), and costs no copy when nothing needs
    /// changing.
    pub fn bounded(mut self, limits: &super::Limits) -> RunReport {
        self.outcome = self.outcome.bounded();
        make_storable(&mut self.stdout, limits.max_stdout_bytes + DROP_MARK_ROOM);
        make_storable(&mut self.stderr, limits.max_stderr_bytes + DROP_MARK_ROOM);
        self.logs.truncate(super::limits::MAX_LOG_RECORDS + 1);
        for l in &mut self.logs {
            make_storable(&mut l.message, super::limits::MAX_LOG_MESSAGE_BYTES);
        }
        if let Some((_, m)) = &mut self.progress {
            make_storable(m, MAX_PROGRESS_MESSAGE_BYTES);
        }
        self
    }

    /// The guest's `log()` lines as text, one per line, for storage.
    pub fn logs_text(&self) -> String {
        let mut s = String::new();
        for l in &self.logs {
            s.push_str(&format!("[{:>6}ms {:5}] {}\n", l.at_ms, l.level, l.message));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::{NUL_REPLACEMENT, TRUNCATION_MARK};

    #[test]
    fn a_huge_task_error_is_cut_and_made_storable() {
        let huge = "\0x".repeat(8 << 20);
        let o = Outcome::TaskError {
            error_kind: TaskErrorKind::Permanent,
            message: huge.clone(),
            details: Some(huge),
        }
        .bounded();
        let Outcome::TaskError {
            message, details, ..
        } = o
        else {
            unreachable!()
        };
        let details = details.unwrap();
        assert!(
            message.len() <= MAX_ERROR_MESSAGE_BYTES,
            "{}",
            message.len()
        );
        assert!(
            details.len() <= MAX_ERROR_DETAILS_BYTES,
            "{}",
            details.len()
        );
        for text in [&message, &details] {
            assert!(!text.contains('\0'));
            assert!(text.starts_with(NUL_REPLACEMENT));
            assert!(text.ends_with(TRUNCATION_MARK));
        }
    }

    #[test]
    fn traps_and_other_messages_are_bounded_and_short_ones_unchanged() {
        let o = Outcome::Trap {
            message: "panic \0 here".into(),
            backtrace: Some("frame\n".repeat(100_000)),
        }
        .bounded();
        let Outcome::Trap { message, backtrace } = &o else {
            unreachable!()
        };
        assert_eq!(message, &format!("panic {NUL_REPLACEMENT} here"));
        assert!(backtrace.as_ref().unwrap().len() <= MAX_BACKTRACE_BYTES);

        let o = Outcome::InvalidOutput {
            message: "y".repeat(MAX_ERROR_MESSAGE_BYTES + 1),
        }
        .bounded();
        assert!(o.message().unwrap().len() <= MAX_ERROR_MESSAGE_BYTES);

        let short = Outcome::Timeout {
            message: "took too long".into(),
        };
        assert_eq!(short.clone().bounded(), short);
        assert_eq!(Outcome::Success.bounded(), Outcome::Success);
    }

    #[test]
    fn a_report_from_elsewhere_is_bounded_too() {
        let limits = super::super::Limits::default();
        let mut r = RunReport::not_run(Outcome::Success, "sha".into());
        r.stdout = "\0".repeat(1 << 20);
        r.progress = Some((5, "p\0".repeat(10_000)));
        r.logs = (0..100_000)
            .map(|_| LogRecord {
                level: "info",
                message: "\0".into(),
                at_ms: 0,
            })
            .collect();
        let r = r.bounded(&limits);
        assert!(r.stdout.len() <= limits.max_stdout_bytes + DROP_MARK_ROOM);
        assert!(!r.stdout.contains('\0'));
        assert!(r.progress.unwrap().1.len() <= MAX_PROGRESS_MESSAGE_BYTES);
        assert_eq!(r.logs.len(), super::super::limits::MAX_LOG_RECORDS + 1);
        assert!(r.logs.iter().all(|l| !l.message.contains('\0')));
    }
}
