//! How an attempt ended, named once.
//!
//! The runtime produces most of these kinds, the store records them (the
//! `attempts.outcome` column and a task's `error_kind`), the retry policy
//! decides on them, the metrics label by them and the CLI turns them into
//! exit codes. They live here, beside none of those modules, so that no
//! module depends on another for a name, and each name is spelled once:
//! the same text in the database, the API, the CLI and `WASMQ_RETRY_ON`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A name that is not one of a kind's names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {found:?} (known: {known})")]
pub struct UnknownKind {
    /// What was being named ("outcome kind", …).
    pub what: &'static str,
    pub found: String,
    /// Every name that would have been accepted, comma-separated.
    pub known: String,
}

/// An enum of unit variants, each with its one name: `ALL`, `as_str`,
/// `Display`, `FromStr` and serde as that name.
macro_rules! named_kinds {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
        }

        impl $name {
            /// Every kind, in declaration order (`ALL[k as usize] == k`).
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The stable name, as stored and printed.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )*
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownKind;

            fn from_str(s: &str) -> Result<Self, UnknownKind> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|k| k.as_str() == s)
                    .ok_or_else(|| unknown($what, s, Self::ALL.iter().map(|k| k.as_str())))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = std::borrow::Cow::<str>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

fn unknown<'a>(
    what: &'static str,
    found: &str,
    known: impl Iterator<Item = &'a str>,
) -> UnknownKind {
    UnknownKind {
        what,
        found: found.to_owned(),
        known: known.collect::<Vec<_>>().join(", "),
    }
}

named_kinds! {
    /// How one attempt ended: the `outcome` of its attempt row.
    ///
    /// The runtime ends a run with one of the first ten; the last two are
    /// written by the queue about a run that did not end by itself.
    pub enum OutcomeKind ("outcome kind") {
        /// `run` returned `ok` with valid JSON within the output cap.
        Success = "success",
        /// `run` returned `err`, with a [`TaskErrorKind`].
        TaskError = "task-error",
        Trap = "trap",
        OutOfFuel = "out-of-fuel",
        OutOfMemory = "out-of-memory",
        Timeout = "timeout",
        Cancelled = "cancelled",
        InvalidModule = "invalid-module",
        InvalidOutput = "invalid-output",
        /// The host failed, not the task.
        HostError = "host-error",
        /// The worker holding the lease stopped renewing it; the reaper
        /// ended the attempt.
        LeaseExpired = "lease-expired",
        /// The worker shut down and gave the task back without spending
        /// the attempt.
        Shutdown = "shutdown",
        /// The run ended waiting for children it spawned; the task runs
        /// again when they are done, without spending an attempt.
        Waiting = "waiting",
    }
}

named_kinds! {
    /// The kind of failure a task reported about itself (the WIT `error-kind`).
    pub enum TaskErrorKind ("task error kind") {
        Permanent = "permanent",
        Retryable = "retryable",
        InvalidInput = "invalid-input",
    }
}

/// A failed attempt as the retry policy names it: a task's own error by its
/// error kind (`task-error:retryable`), any other failure by its outcome
/// kind (`trap`). Success, cancellation and shutdown are not failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureKind {
    TaskError(TaskErrorKind),
    Trap,
    Timeout,
    OutOfFuel,
    OutOfMemory,
    InvalidModule,
    InvalidOutput,
    HostError,
    LeaseExpired,
}

/// What prefixes a [`FailureKind::TaskError`] in its name.
const TASK_ERROR_PREFIX: &str = "task-error:";

impl FailureKind {
    /// Every failure kind.
    pub const ALL: [FailureKind; 11] = [
        FailureKind::TaskError(TaskErrorKind::Retryable),
        FailureKind::TaskError(TaskErrorKind::Permanent),
        FailureKind::TaskError(TaskErrorKind::InvalidInput),
        FailureKind::Trap,
        FailureKind::Timeout,
        FailureKind::OutOfFuel,
        FailureKind::OutOfMemory,
        FailureKind::InvalidModule,
        FailureKind::InvalidOutput,
        FailureKind::HostError,
        FailureKind::LeaseExpired,
    ];

    /// The failure an attempt that ended in `outcome` stands for (`error_kind`
    /// is the task's own kind, for a task error); `None` when the outcome is
    /// not a failure.
    pub fn of(outcome: OutcomeKind, error_kind: Option<TaskErrorKind>) -> Option<FailureKind> {
        Some(match outcome {
            OutcomeKind::Success
            | OutcomeKind::Cancelled
            | OutcomeKind::Shutdown
            | OutcomeKind::Waiting => return None,
            // A task error whose kind got lost is taken at its word as final.
            OutcomeKind::TaskError => {
                FailureKind::TaskError(error_kind.unwrap_or(TaskErrorKind::Permanent))
            }
            OutcomeKind::Trap => FailureKind::Trap,
            OutcomeKind::Timeout => FailureKind::Timeout,
            OutcomeKind::OutOfFuel => FailureKind::OutOfFuel,
            OutcomeKind::OutOfMemory => FailureKind::OutOfMemory,
            OutcomeKind::InvalidModule => FailureKind::InvalidModule,
            OutcomeKind::InvalidOutput => FailureKind::InvalidOutput,
            OutcomeKind::HostError => FailureKind::HostError,
            OutcomeKind::LeaseExpired => FailureKind::LeaseExpired,
        })
    }

    /// The outcome of an attempt that failed this way.
    pub fn outcome(self) -> OutcomeKind {
        match self {
            FailureKind::TaskError(_) => OutcomeKind::TaskError,
            FailureKind::Trap => OutcomeKind::Trap,
            FailureKind::Timeout => OutcomeKind::Timeout,
            FailureKind::OutOfFuel => OutcomeKind::OutOfFuel,
            FailureKind::OutOfMemory => OutcomeKind::OutOfMemory,
            FailureKind::InvalidModule => OutcomeKind::InvalidModule,
            FailureKind::InvalidOutput => OutcomeKind::InvalidOutput,
            FailureKind::HostError => OutcomeKind::HostError,
            FailureKind::LeaseExpired => OutcomeKind::LeaseExpired,
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureKind::TaskError(k) => write!(f, "{TASK_ERROR_PREFIX}{k}"),
            other => f.write_str(other.outcome().as_str()),
        }
    }
}

impl FromStr for FailureKind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, UnknownKind> {
        FailureKind::ALL
            .into_iter()
            .find(|k| k.to_string() == s)
            .ok_or_else(|| {
                let names: Vec<String> = FailureKind::ALL.iter().map(|k| k.to_string()).collect();
                unknown("failure kind", s, names.iter().map(String::as_str))
            })
    }
}

/// A task's `error_kind` as stored: the task's own error kind for a task
/// error, the outcome kind otherwise.
pub fn stored_error_kind(outcome: OutcomeKind, error_kind: Option<TaskErrorKind>) -> &'static str {
    match (outcome, error_kind) {
        (OutcomeKind::TaskError, Some(k)) => k.as_str(),
        (other, _) => other.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for &k in OutcomeKind::ALL {
            assert_eq!(k.as_str().parse::<OutcomeKind>(), Ok(k));
            assert_eq!(OutcomeKind::ALL[k as usize], k);
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(serde_json::from_str::<OutcomeKind>(&json).unwrap(), k);
        }
        for &k in TaskErrorKind::ALL {
            assert_eq!(k.as_str().parse::<TaskErrorKind>(), Ok(k));
        }
        for k in FailureKind::ALL {
            assert_eq!(k.to_string().parse::<FailureKind>(), Ok(k));
        }
    }

    #[test]
    fn unknown_names_say_what_was_expected() {
        let e = "tmeout".parse::<FailureKind>().unwrap_err();
        assert_eq!(e.found, "tmeout");
        assert!(e.to_string().contains("task-error:retryable"), "{e}");
        assert!(e.to_string().contains("lease-expired"), "{e}");
        // A task error needs its kind; an outcome that is no failure is none.
        assert!("task-error".parse::<FailureKind>().is_err());
        assert!("success".parse::<FailureKind>().is_err());
        assert!(serde_json::from_str::<OutcomeKind>("\"Trap\"").is_err());
    }

    #[test]
    fn every_failure_outcome_is_one_failure_kind() {
        for &outcome in OutcomeKind::ALL {
            match FailureKind::of(outcome, Some(TaskErrorKind::Retryable)) {
                Some(f) => assert_eq!(f.outcome(), outcome),
                None => assert!(matches!(
                    outcome,
                    OutcomeKind::Success
                        | OutcomeKind::Cancelled
                        | OutcomeKind::Shutdown
                        | OutcomeKind::Waiting
                )),
            }
        }
        assert_eq!(
            stored_error_kind(OutcomeKind::TaskError, Some(TaskErrorKind::InvalidInput)),
            "invalid-input"
        );
        assert_eq!(stored_error_kind(OutcomeKind::Trap, None), "trap");
    }
}
