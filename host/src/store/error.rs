use uuid::Uuid;

use super::model::TaskState;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Errors of the task store. Each message is one line naming the problem.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} not found")]
    NotFound { what: String },

    #[error("cannot {action} task {id}: it is {from}")]
    IllegalTransition {
        id: Uuid,
        from: TaskState,
        action: &'static str,
    },

    #[error(
        "module {module} is used by {tasks} queued or running task(s); wait for them, cancel them, or force the deletion"
    )]
    ModuleInUse { module: String, tasks: u64 },

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The write conflicts with existing data (e.g. `name@version` already
    /// holds other bytes).
    #[error("conflict: {0}")]
    Conflict(String),

    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),

    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    pub(crate) fn not_found(what: impl Into<String>) -> Self {
        StoreError::NotFound { what: what.into() }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        StoreError::InvalidArgument(message.into())
    }

    /// Whether the same write may succeed if tried again unchanged: the
    /// connection or the pool failed, the server is shutting down, or the
    /// write lost a lock race. Anything else (a value the database refuses,
    /// a constraint) fails again the same way, so retrying it is pointless;
    /// a batch that fails so is split instead.
    pub fn is_transient(&self) -> bool {
        let StoreError::Database(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => {
                let Some(code) = db.code() else {
                    return false;
                };
                // Each backend's codes by its own rules: a SQLSTATE such as
                // 22021 (a NUL in text) read as a SQLite code would be BUSY.
                if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                    // BUSY and LOCKED, with their extended codes.
                    code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
                } else {
                    // PostgreSQL: connection exceptions (08…), operator
                    // intervention (57P…: e.g. pg_terminate_backend),
                    // serialization failures and deadlocks (40…).
                    code.starts_with("08") || code.starts_with("57P") || code.starts_with("40")
                }
            }
            _ => false,
        }
    }

    /// A value read from the database that the domain types cannot hold,
    /// e.g. an unknown state string: the row was written by something else.
    pub(crate) fn corrupt(message: impl Into<String>) -> Self {
        StoreError::Database(sqlx::Error::Decode(message.into().into()))
    }
}
