//! Process exit codes: one per outcome kind, so scripts can branch on them.

use crate::kinds::{OutcomeKind, TaskErrorKind};
use crate::runtime::Outcome;
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
    for_outcome_kind(outcome.outcome_kind(), outcome.task_error_kind())
}

fn for_outcome_kind(outcome: OutcomeKind, error_kind: Option<TaskErrorKind>) -> u8 {
    match outcome {
        OutcomeKind::Success => SUCCESS,
        OutcomeKind::TaskError => match error_kind {
            Some(TaskErrorKind::Permanent) | None => TASK_PERMANENT,
            Some(TaskErrorKind::Retryable) => TASK_RETRYABLE,
            Some(TaskErrorKind::InvalidInput) => TASK_INVALID_INPUT,
        },
        OutcomeKind::Trap => TRAP,
        OutcomeKind::OutOfFuel => OUT_OF_FUEL,
        OutcomeKind::OutOfMemory => OUT_OF_MEMORY,
        OutcomeKind::Timeout => TIMEOUT,
        OutcomeKind::Cancelled => CANCELLED,
        OutcomeKind::InvalidModule => INVALID_MODULE,
        OutcomeKind::InvalidOutput => INVALID_OUTPUT,
        // A run outside a queue never waits; a queued one that does is not
        // over, so no command ends on it.
        OutcomeKind::HostError
        | OutcomeKind::LeaseExpired
        | OutcomeKind::Shutdown
        | OutcomeKind::Waiting => HOST_ERROR,
    }
}

/// The exit code for a stored failure kind (`error_kind` of a task: a task
/// error kind or an outcome kind).
pub fn for_kind(kind: &str) -> u8 {
    if let Ok(k) = kind.parse::<TaskErrorKind>() {
        for_outcome_kind(OutcomeKind::TaskError, Some(k))
    } else if let Ok(k) = kind.parse::<OutcomeKind>() {
        for_outcome_kind(k, None)
    } else {
        INTERNAL
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
