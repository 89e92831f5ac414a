//! How fast this worker's runs finish, and so how many tasks it should hold
//! claimed ahead of its runners (see [`Prefetch::Auto`]).

use super::config::Prefetch;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Weight of the newest run in the moving average, as a shift: 1/64. Small
/// runs vary a lot (a page fault, a slow syscall), and with 1/8 the target
/// swung enough that the worker let its stock run down before claiming
/// again: 78% of a fixed prefetch's drain on PostgreSQL against 86–100%
/// with 1/64 (`wasmq bench queue`). It still follows a change of workload
/// within a few hundred runs, and the first run alone sets it.
const EWMA_SHIFT: u32 = 6;

/// An exponentially weighted moving average of run durations, lock-free:
/// runners record concurrently, and a sample lost to a race is harmless.
#[derive(Debug, Default)]
pub(super) struct Pace {
    /// Nanoseconds; 0 until the first run has been timed.
    average_ns: AtomicU64,
}

impl Pace {
    pub(super) fn record(&self, run: Duration) {
        let sample = u64::try_from(run.as_nanos()).unwrap_or(u64::MAX).max(1);
        let old = self.average_ns.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            // old + (sample - old) / 8, in signed arithmetic.
            let delta = (sample as i128 - old as i128) >> EWMA_SHIFT;
            (old as i128 + delta).max(1) as u64
        };
        self.average_ns.store(new, Ordering::Relaxed);
    }

    /// The average run, once one has been timed.
    pub(super) fn average(&self) -> Option<Duration> {
        match self.average_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// How many tasks to hold beyond the `concurrency` that run: for
    /// [`Prefetch::Auto`], what the runners finish within the horizon.
    pub(super) fn prefetch(&self, setting: Prefetch, concurrency: u32) -> u32 {
        match setting {
            Prefetch::Fixed(n) => n,
            Prefetch::Auto { horizon } => {
                let Some(run) = self.average() else {
                    return 0;
                };
                let per_runner = horizon.as_nanos() / run.as_nanos().max(1);
                let n = per_runner.saturating_mul(u128::from(concurrency));
                u32::try_from(n).unwrap_or(u32::MAX).min(setting.max())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUTO: Prefetch = Prefetch::Auto {
        horizon: Duration::from_millis(100),
    };

    #[test]
    fn nothing_is_prefetched_before_a_run_is_timed() {
        assert_eq!(Pace::default().prefetch(AUTO, 2), 0);
        assert_eq!(Pace::default().prefetch(Prefetch::Fixed(7), 2), 7);
    }

    #[test]
    fn short_runs_fill_the_horizon_up_to_the_cap() {
        let p = Pace::default();
        p.record(Duration::from_millis(10));
        assert_eq!(p.prefetch(AUTO, 2), 20);
        let fast = Pace::default();
        fast.record(Duration::from_micros(50));
        assert_eq!(fast.prefetch(AUTO, 2), AUTO.max());
    }

    #[test]
    fn long_runs_prefetch_nothing() {
        let p = Pace::default();
        p.record(Duration::from_secs(1));
        assert_eq!(p.prefetch(AUTO, 2), 0);
    }

    #[test]
    fn the_average_follows_a_change_of_workload() {
        let p = Pace::default();
        p.record(Duration::from_micros(50));
        for _ in 0..300 {
            p.record(Duration::from_secs(1));
        }
        let avg = p.average().unwrap();
        assert!(avg > Duration::from_millis(900), "{avg:?}");
        assert_eq!(p.prefetch(AUTO, 2), 0);
    }
}
