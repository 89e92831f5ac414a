//! What a run produced: the outcome kinds and the full report.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The kind of failure a task reported about itself (mirrors the WIT `error-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskErrorKind {
    Permanent,
    Retryable,
    InvalidInput,
}

impl TaskErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskErrorKind::Permanent => "permanent",
            TaskErrorKind::Retryable => "retryable",
            TaskErrorKind::InvalidInput => "invalid-input",
        }
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
}

impl Outcome {
    /// The stable name of this kind, as stored in the database and printed.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::TaskError { .. } => "task-error",
            Outcome::Trap { .. } => "trap",
            Outcome::OutOfFuel { .. } => "out-of-fuel",
            Outcome::OutOfMemory { .. } => "out-of-memory",
            Outcome::Timeout { .. } => "timeout",
            Outcome::Cancelled { .. } => "cancelled",
            Outcome::InvalidModule { .. } => "invalid-module",
            Outcome::InvalidOutput { .. } => "invalid-output",
            Outcome::HostError { .. } => "host-error",
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
            | Outcome::HostError { message } => Some(message),
        }
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
        }
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
