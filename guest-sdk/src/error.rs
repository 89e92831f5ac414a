//! The error a task returns, and how it maps onto the WIT `task-error`.

use std::fmt;

use serde::Serialize;

use crate::bindings::wasmq::task::types as wit;

/// What kind of failure a task reports; the host's retry policy keys on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The task will fail the same way again: do not retry.
    Permanent,
    /// A transient failure: the host retries with backoff while attempts remain.
    Retryable,
    /// The input is wrong (does not parse, or fails validation). Not retried.
    InvalidInput,
}

impl ErrorKind {
    /// The kind's name as the WIT spells it (`invalid-input`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Permanent => "permanent",
            ErrorKind::Retryable => "retryable",
            ErrorKind::InvalidInput => "invalid-input",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task failure: a kind that drives the retry policy, a human-readable
/// message, and optional machine-readable details (JSON).
///
/// ```
/// use wasmq_guest::TaskError;
///
/// let err = TaskError::retryable("upstream returned 503")
///     .with_details(serde_json::json!({ "status": 503 }));
/// assert_eq!(err.details(), Some(r#"{"status":503}"#));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    kind: ErrorKind,
    message: String,
    details: Option<String>,
}

impl TaskError {
    /// An error of the given kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        TaskError {
            kind,
            message: message.into(),
            details: None,
        }
    }

    /// The task will fail the same way again; the host does not retry.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Permanent, message)
    }

    /// A transient failure; the host retries while attempts remain.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Retryable, message)
    }

    /// The input is wrong; the host does not retry.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// Attaches machine-readable details, serialized as JSON.
    ///
    /// Details that fail to serialize (a map with non-string keys, say) are
    /// replaced by a JSON string describing that failure, so that the error
    /// itself is never lost.
    pub fn with_details(mut self, details: impl Serialize) -> Self {
        let json = serde_json::to_string(&details).unwrap_or_else(|e| {
            serde_json::Value::String(format!("details could not be serialized: {e}")).to_string()
        });
        self.details = Some(json);
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The details as JSON text, if any were attached.
    pub fn details(&self) -> Option<&str> {
        self.details.as_deref()
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for TaskError {}

/// `?` on `serde_json::from_*` inside a task is almost always about data the
/// task was given, so the error counts as invalid input. Build a
/// [`TaskError`] by hand when that is not what you mean.
impl From<serde_json::Error> for TaskError {
    fn from(err: serde_json::Error) -> Self {
        let details = serde_json::json!({ "line": err.line(), "column": err.column() });
        TaskError::invalid_input(format!("invalid input: {err}")).with_details(details)
    }
}

impl From<TaskError> for wit::TaskError {
    fn from(err: TaskError) -> Self {
        wit::TaskError {
            kind: match err.kind {
                ErrorKind::Permanent => wit::ErrorKind::Permanent,
                ErrorKind::Retryable => wit::ErrorKind::Retryable,
                ErrorKind::InvalidInput => wit::ErrorKind::InvalidInput,
            },
            message: err.message,
            details: err.details,
        }
    }
}

impl From<wit::TaskError> for TaskError {
    fn from(err: wit::TaskError) -> Self {
        TaskError {
            kind: match err.kind {
                wit::ErrorKind::Permanent => ErrorKind::Permanent,
                wit::ErrorKind::Retryable => ErrorKind::Retryable,
                wit::ErrorKind::InvalidInput => ErrorKind::InvalidInput,
            },
            message: err.message,
            details: err.details,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_set_kind() {
        assert_eq!(TaskError::permanent("x").kind(), ErrorKind::Permanent);
        assert_eq!(TaskError::retryable("x").kind(), ErrorKind::Retryable);
        assert_eq!(
            TaskError::invalid_input("x").kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn display_names_kind_and_message() {
        let err = TaskError::invalid_input("bad n");
        assert_eq!(err.to_string(), "invalid-input: bad n");
    }

    #[test]
    fn serde_errors_are_invalid_input() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct In {
            name: String,
        }
        let err: TaskError = serde_json::from_str::<In>("{}").unwrap_err().into();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert_eq!(
            err.message(),
            "invalid input: missing field `name` at line 1 column 2"
        );
        assert_eq!(err.details(), Some(r#"{"column":2,"line":1}"#));
    }

    #[test]
    fn unserializable_details_do_not_lose_the_error() {
        let mut map = std::collections::HashMap::new();
        map.insert((1, 2), "x");
        let err = TaskError::permanent("boom").with_details(map);
        assert_eq!(err.message(), "boom");
        assert!(err.details().unwrap().starts_with("\"details could not"));
    }
}
