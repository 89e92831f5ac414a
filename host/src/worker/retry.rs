//! Which failures are retried, and when.

use super::config::env_duration;
use crate::kinds::{FailureKind, TaskErrorKind, UnknownKind};
use rand::Rng;
use std::collections::BTreeSet;
use std::time::Duration;

/// First retry delay (before jitter); doubles each attempt.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(600);
/// Failure kinds retried by default. Deterministic failures (permanent
/// errors, invalid input, running out of fuel or memory, invalid modules and
/// outputs) are not retried: they would fail again.
pub const DEFAULT_RETRY_ON: &[FailureKind] = &[
    FailureKind::TaskError(TaskErrorKind::Retryable),
    FailureKind::Trap,
    FailureKind::Timeout,
    FailureKind::LeaseExpired,
    FailureKind::HostError,
];

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub retry_on: BTreeSet<FailureKind>,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retry_on: DEFAULT_RETRY_ON.iter().copied().collect(),
            base: DEFAULT_BACKOFF_BASE,
            cap: DEFAULT_BACKOFF_CAP,
        }
    }
}

impl RetryPolicy {
    /// The defaults overridden by `WASMQ_RETRY_ON` (comma-separated
    /// [`FailureKind`] names; an unknown one is an error, so that a typo
    /// cannot silently turn retries off), `WASMQ_BACKOFF_BASE` and
    /// `WASMQ_BACKOFF_CAP`.
    pub fn from_env() -> Result<Self, String> {
        let mut p = RetryPolicy::default();
        if let Ok(v) = std::env::var("WASMQ_RETRY_ON") {
            p.retry_on = parse_retry_on(&v).map_err(|e| format!("WASMQ_RETRY_ON: {e}"))?;
        }
        if let Some(d) = env_duration("WASMQ_BACKOFF_BASE") {
            p.base = d;
        }
        if let Some(d) = env_duration("WASMQ_BACKOFF_CAP") {
            p.cap = d;
        }
        Ok(p)
    }

    /// Whether a failure of `kind` is retried at all.
    pub fn retries(&self, kind: FailureKind) -> bool {
        self.retry_on.contains(&kind)
    }

    /// `Some(delay)` when attempt number `attempt` (1-based) failing with `kind`
    /// should be retried; `None` when the task fails for good.
    pub fn decide(&self, kind: FailureKind, attempt: u32, max_attempts: u32) -> Option<Duration> {
        (self.retries(kind) && attempt < max_attempts).then(|| self.backoff(attempt))
    }

    /// Exponential backoff with "equal jitter": half the delay is fixed, half
    /// random, so retries of tasks that failed together spread out.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(32);
        let delay = self.base.saturating_mul(1u32 << exp.min(31)).min(self.cap);
        let half = delay / 2;
        half + half.mul_f64(rand::thread_rng().r#gen::<f64>())
    }
}

/// A comma-separated list of [`FailureKind`] names (`trap,task-error:retryable`).
pub fn parse_retry_on(list: &str) -> Result<BTreeSet<FailureKind>, UnknownKind> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use FailureKind::*;

    #[test]
    fn retry_on_refuses_unknown_kinds() {
        assert_eq!(
            parse_retry_on(" trap, timeout , task-error:retryable,").unwrap(),
            BTreeSet::from([Trap, Timeout, TaskError(TaskErrorKind::Retryable)])
        );
        let e = parse_retry_on("trap,tmeout").unwrap_err();
        assert_eq!(e.found, "tmeout");
        assert!(parse_retry_on("task-error").is_err());
    }

    #[test]
    fn defaults_follow_the_documented_table() {
        let p = RetryPolicy::default();
        for k in FailureKind::ALL {
            let retried = matches!(
                k,
                TaskError(TaskErrorKind::Retryable) | Trap | Timeout | LeaseExpired | HostError
            );
            assert_eq!(p.retries(k), retried, "{k}");
        }
    }

    #[test]
    fn attempts_run_out() {
        let p = RetryPolicy::default();
        assert!(p.decide(Trap, 1, 3).is_some());
        assert!(p.decide(Trap, 3, 3).is_none());
        assert!(p.decide(OutOfFuel, 1, 3).is_none());
    }

    #[test]
    fn backoff_grows_within_jitter_and_cap() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        for _ in 0..100 {
            let d1 = p.backoff(1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d3 = p.backoff(3);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            let d20 = p.backoff(20);
            assert!(d20 >= Duration::from_millis(500) && d20 <= Duration::from_secs(1));
        }
    }
}
