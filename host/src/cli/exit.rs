//! Process exit codes: one per outcome kind, so scripts can branch on them.

use crate::runtime::{Outcome, TaskErrorKind};
use std::process::ExitCode;

pub const SUCCESS: u8 = 0;
/// wasmq itself failed (I/O, database, an unexpected error).
pub const INTERNAL: u8 = 1;
/// Bad usage or input: unknown flag, bad size or duration, unreadable file.
pub const USAGE: u8 = 2;
pub const TASK_PERMANENT: u8 = 10;
pub const TASK_RETRYABLE: u8 = 11;
pub const TASK_INVALID_INPUT: u8 = 12;
pub const TRAP: u8 = 20;
pub const OUT_OF_FUEL: u8 = 21;
pub const OUT_OF_MEMORY: u8 = 22;
pub const TIMEOUT: u8 = 23;
pub const CANCELLED: u8 = 24;
pub const INVALID_MODULE: u8 = 30;
pub const INVALID_OUTPUT: u8 = 31;
pub const HOST_ERROR: u8 = 40;

pub fn for_outcome(outcome: &Outcome) -> u8 {
    match outcome {
        Outcome::Success => SUCCESS,
        Outcome::TaskError { error_kind, .. } => match error_kind {
            TaskErrorKind::Permanent => TASK_PERMANENT,
            TaskErrorKind::Retryable => TASK_RETRYABLE,
            TaskErrorKind::InvalidInput => TASK_INVALID_INPUT,
        },
        Outcome::Trap { .. } => TRAP,
        Outcome::OutOfFuel { .. } => OUT_OF_FUEL,
        Outcome::OutOfMemory { .. } => OUT_OF_MEMORY,
        Outcome::Timeout { .. } => TIMEOUT,
        Outcome::Cancelled { .. } => CANCELLED,
        Outcome::InvalidModule { .. } => INVALID_MODULE,
        Outcome::InvalidOutput { .. } => INVALID_OUTPUT,
        Outcome::HostError { .. } => HOST_ERROR,
    }
}

/// The exit code for a stored failure kind (`error_kind` of a task).
pub fn for_kind(kind: &str) -> u8 {
    match kind {
        "permanent" => TASK_PERMANENT,
        "retryable" => TASK_RETRYABLE,
        "invalid-input" => TASK_INVALID_INPUT,
        "trap" => TRAP,
        "out-of-fuel" => OUT_OF_FUEL,
        "out-of-memory" => OUT_OF_MEMORY,
        "timeout" => TIMEOUT,
        "cancelled" => CANCELLED,
        "invalid-module" => INVALID_MODULE,
        "invalid-output" => INVALID_OUTPUT,
        "host-error" | "lease-expired" => HOST_ERROR,
        _ => INTERNAL,
    }
}

/// An error that ends the command with a specific exit code.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl Exit {
    pub fn usage(message: impl Into<String>) -> Self {
        Exit {
            code: USAGE,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// Maps an error from a command to an exit code: an [`Exit`] keeps its own,
/// anything else is an internal failure.
pub fn code_of(e: &anyhow::Error) -> ExitCode {
    ExitCode::from(e.downcast_ref::<Exit>().map_or(INTERNAL, |x| x.code))
}
