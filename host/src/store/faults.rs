//! Fault injection for tests: a [`FaultPlan`] attached to a store with
//! [`AnyStore::with_faults`](super::AnyStore::with_faults) makes chosen calls
//! fail, the way a flaky network or a database that refuses a value would,
//! so that tests can show what the worker does then. Nothing in the product
//! attaches one.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use super::error::{Result, StoreError};
use super::model::Completion;

/// The store calls a plan can break.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Claim,
    MarkStarted,
    Complete,
    Heartbeat,
}

impl Op {
    const ALL: [Op; 4] = [Op::Claim, Op::MarkStarted, Op::Complete, Op::Heartbeat];

    fn index(self) -> usize {
        Op::ALL.iter().position(|&o| o == self).unwrap()
    }
}

/// Which calls fail. Counters arm the next N calls of an operation; every
/// injected failure is counted in [`FaultPlan::injected`].
#[derive(Debug, Default)]
pub struct FaultPlan {
    /// The next N calls fail before reaching the database (a connection
    /// refused).
    fail_before: [AtomicU32; 4],
    /// The next N calls reach the database and commit, but their reply is
    /// lost (a connection cut after the commit).
    lose_reply: [AtomicU32; 4],
    /// A completion batch that contains a result, logs or an error message
    /// with one of these markers fails as a whole, like a value the database
    /// refuses: the worker must split the batch.
    poison: Mutex<Vec<String>>,
    injected: AtomicU32,
}

impl FaultPlan {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next `n` calls of `op` fail before they reach the database.
    pub fn fail_next(&self, op: Op, n: u32) -> &Self {
        self.fail_before[op.index()].store(n, Ordering::SeqCst);
        self
    }

    /// The next `n` calls of `op` commit, and then fail as if the reply was
    /// lost.
    pub fn lose_next_reply(&self, op: Op, n: u32) -> &Self {
        self.lose_reply[op.index()].store(n, Ordering::SeqCst);
        self
    }

    /// Completion batches holding text with `marker` are refused.
    pub fn poison(&self, marker: impl Into<String>) -> &Self {
        self.poison.lock().unwrap().push(marker.into());
        self
    }

    /// How many failures were injected so far.
    pub fn injected(&self) -> u32 {
        self.injected.load(Ordering::SeqCst)
    }

    fn take(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn fail(&self, what: String) -> Result<()> {
        self.injected.fetch_add(1, Ordering::SeqCst);
        Err(StoreError::Database(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            what,
        ))))
    }

    pub(super) fn before(&self, op: Op) -> Result<()> {
        if Self::take(&self.fail_before[op.index()]) {
            return self.fail(format!("injected fault: {op:?} failed before the database"));
        }
        Ok(())
    }

    pub(super) fn after(&self, op: Op) -> Result<()> {
        if Self::take(&self.lose_reply[op.index()]) {
            return self.fail(format!("injected fault: the reply of {op:?} was lost"));
        }
        Ok(())
    }

    pub(super) fn check_completions(&self, completions: &[Completion]) -> Result<()> {
        let poison = self.poison.lock().unwrap();
        let poisoned = completions.iter().any(|c| {
            let r = &c.report;
            let result = match &c.transition {
                super::model::Transition::Succeed { result } => Some(result.as_str()),
                _ => None,
            };
            [r.logs.as_deref(), r.error_message.as_deref(), result]
                .into_iter()
                .flatten()
                .any(|text| poison.iter().any(|m| text.contains(m.as_str())))
        });
        if poisoned {
            self.injected.fetch_add(1, Ordering::SeqCst);
            // Not transient, like PostgreSQL's "invalid byte sequence".
            return Err(StoreError::Database(sqlx::Error::Decode(
                "injected fault: the database refused a value of this batch".into(),
            )));
        }
        Ok(())
    }
}
