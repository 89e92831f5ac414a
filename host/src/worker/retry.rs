//! Which failures are retried, and when.

use super::config::env_duration;
use rand::Rng;
use std::collections::BTreeSet;
use std::time::Duration;

/// First retry delay (before jitter); doubles each attempt.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(600);
/// Failure kinds retried by default. A `task-error` is named by its error
/// kind (`task-error:retryable`); the rest by outcome kind. Deterministic
/// failures (permanent errors, invalid input, running out of fuel or memory,
/// invalid modules and outputs) are not retried: they would fail again.
pub const DEFAULT_RETRY_ON: &[&str] = &[
    "task-error:retryable",
    "trap",
    "timeout",
    "lease-expired",
    "host-error",
];

/// Every failure kind a policy can name: `task-error:<error kind>` or an
/// outcome kind that ends an attempt in failure.
pub const RETRY_KINDS: &[&str] = &[
    "task-error:retryable",
    "task-error:permanent",
    "task-error:invalid-input",
    "trap",
    "timeout",
    "out-of-fuel",
    "out-of-memory",
    "invalid-module",
    "invalid-output",
    "host-error",
    "lease-expired",
];

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub retry_on: BTreeSet<String>,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retry_on: DEFAULT_RETRY_ON.iter().map(|s| s.to_string()).collect(),
            base: DEFAULT_BACKOFF_BASE,
            cap: DEFAULT_BACKOFF_CAP,
        }
    }
}

impl RetryPolicy {
    /// The defaults overridden by `WASMQ_RETRY_ON` (comma-separated kinds
    /// from [`RETRY_KINDS`]; an unknown one is an error, so that a typo
    /// cannot silently turn retries off), `WASMQ_BACKOFF_BASE` and
    /// `WASMQ_BACKOFF_CAP`.
    pub fn from_env() -> Result<Self, String> {
        let mut p = RetryPolicy::default();
        if let Ok(v) = std::env::var("WASMQ_RETRY_ON") {
            p.retry_on = parse_retry_on(&v)?;
        }
        if let Some(d) = env_duration("WASMQ_BACKOFF_BASE") {
            p.base = d;
        }
        if let Some(d) = env_duration("WASMQ_BACKOFF_CAP") {
            p.cap = d;
        }
        Ok(p)
    }

    /// Whether a failure of `kind` (outcome kind, or `task-error:<error kind>`)
    /// is retried at all.
    pub fn retries(&self, kind: &str) -> bool {
        self.retry_on.contains(kind)
    }

    /// `Some(delay)` when attempt number `attempt` (1-based) failing with `kind`
    /// should be retried; `None` when the task fails for good.
    pub fn decide(&self, kind: &str, attempt: u32, max_attempts: u32) -> Option<Duration> {
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

/// A comma-separated list of failure kinds, each one of [`RETRY_KINDS`].
pub fn parse_retry_on(list: &str) -> Result<BTreeSet<String>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|kind| {
            if RETRY_KINDS.contains(&kind) {
                Ok(kind.to_string())
            } else {
                Err(format!(
                    "WASMQ_RETRY_ON: unknown failure kind {kind:?} (known: {})",
                    RETRY_KINDS.join(", ")
                ))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_on_refuses_unknown_kinds() {
        assert_eq!(
            parse_retry_on(" trap, timeout ,").unwrap(),
            BTreeSet::from(["trap".to_string(), "timeout".to_string()])
        );
        let e = parse_retry_on("trap,tmeout").unwrap_err();
        assert!(e.contains("\"tmeout\""), "{e}");
        for kind in DEFAULT_RETRY_ON {
            assert!(RETRY_KINDS.contains(kind), "{kind}");
        }
    }

    #[test]
    fn defaults_follow_the_documented_table() {
        let p = RetryPolicy::default();
        for k in [
            "task-error:retryable",
            "trap",
            "timeout",
            "lease-expired",
            "host-error",
        ] {
            assert!(p.retries(k), "{k}");
        }
        for k in [
            "task-error:permanent",
            "task-error:invalid-input",
            "out-of-fuel",
            "out-of-memory",
            "invalid-module",
            "invalid-output",
        ] {
            assert!(!p.retries(k), "{k}");
        }
    }

    #[test]
    fn attempts_run_out() {
        let p = RetryPolicy::default();
        assert!(p.decide("trap", 1, 3).is_some());
        assert!(p.decide("trap", 3, 3).is_none());
        assert!(p.decide("out-of-fuel", 1, 3).is_none());
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
