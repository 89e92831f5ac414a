//! The operator's ceilings on what one run may be given.
//!
//! A task can ask for its own fuel, memory and timeout. Without a ceiling, a
//! client of the API could ask for unlimited fuel and an hour-long deadline
//! and get them. [`Maxima`] are checked where a task enters the queue (the
//! API answers 400, the CLI exits 2) and again where it runs, since the
//! process that enqueued it may have had looser ones: a worker never runs a
//! task with more than its own maxima allow.

use super::limits::{DEFAULT_FUEL, LimitError, Limits, parse_duration, parse_size};
use crate::fuel::Fuel;
use std::time::Duration;

/// Most fuel a task may ask for unless the operator says otherwise: 100
/// times the default (minutes of guest code). Unlimited fuel must be allowed
/// explicitly (`--max-fuel unlimited`).
pub const DEFAULT_MAX_FUEL: u64 = 100 * DEFAULT_FUEL;
/// Most linear memory a task may ask for: the pooling allocator's largest
/// slot.
pub const DEFAULT_MAX_MEMORY_BYTES: u64 = super::engine::DEFAULT_POOL_MAX_MEMORY;
/// Longest wall-clock budget a task may ask for.
pub const DEFAULT_MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Ceilings on the limits of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Maxima {
    /// [`Fuel::Unlimited`]: any fuel, unlimited included, may be asked for.
    pub fuel: Fuel,
    pub memory_bytes: u64,
    pub timeout: Duration,
}

impl Default for Maxima {
    fn default() -> Self {
        Maxima {
            fuel: Fuel::limited(DEFAULT_MAX_FUEL),
            memory_bytes: DEFAULT_MAX_MEMORY_BYTES,
            timeout: DEFAULT_MAX_TIMEOUT,
        }
    }
}

/// A limit above the operator's ceiling. The message names the flag and
/// the variable that raise it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AboveMaximum {
    #[error("fuel {asked} is above the maximum of {max} (--max-fuel, WASMQ_MAX_FUEL)")]
    Fuel { asked: Fuel, max: Fuel },
    #[error(
        "memory of {asked} bytes is above the maximum of {max} bytes (--max-memory, WASMQ_MAX_MEMORY)"
    )]
    Memory { asked: u64, max: u64 },
    #[error(
        "a timeout of {} ms is above the maximum of {} ms (--max-timeout, WASMQ_MAX_TIMEOUT)",
        asked.as_millis(),
        max.as_millis()
    )]
    Timeout { asked: Duration, max: Duration },
}

impl Maxima {
    /// The defaults, overridden by `WASMQ_MAX_FUEL` (a number or
    /// `unlimited`), `WASMQ_MAX_MEMORY` and `WASMQ_MAX_TIMEOUT` where set.
    pub fn from_env() -> Result<Maxima, LimitError> {
        let mut m = Maxima::default();
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if let Some(v) = env("WASMQ_MAX_FUEL") {
            m.fuel = v.parse()?;
        }
        if let Some(v) = env("WASMQ_MAX_MEMORY") {
            m.memory_bytes = parse_size(&v)?;
        }
        if let Some(v) = env("WASMQ_MAX_TIMEOUT") {
            m.timeout = parse_duration(&v)?;
        }
        Ok(m)
    }

    pub fn check_fuel(&self, asked: Fuel) -> Result<(), AboveMaximum> {
        let within = match (asked, self.fuel) {
            (_, Fuel::Unlimited) => true,
            (Fuel::Unlimited, Fuel::Units(_)) => false,
            (Fuel::Units(a), Fuel::Units(m)) => a <= m,
        };
        within.then_some(()).ok_or(AboveMaximum::Fuel {
            asked,
            max: self.fuel,
        })
    }

    pub fn check_memory(&self, asked: u64) -> Result<(), AboveMaximum> {
        (asked <= self.memory_bytes)
            .then_some(())
            .ok_or(AboveMaximum::Memory {
                asked,
                max: self.memory_bytes,
            })
    }

    pub fn check_timeout(&self, asked: Duration) -> Result<(), AboveMaximum> {
        (asked <= self.timeout)
            .then_some(())
            .ok_or(AboveMaximum::Timeout {
                asked,
                max: self.timeout,
            })
    }

    /// Whether a run with these limits is within every ceiling.
    pub fn check(&self, limits: &Limits) -> Result<(), AboveMaximum> {
        // `Some(0)` (no fuel at all) is within any ceiling.
        if let Ok(fuel) = Fuel::from_units(limits.fuel) {
            self.check_fuel(fuel)?;
        }
        self.check_memory(limits.memory_bytes)?;
        self.check_timeout(limits.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_fuel_needs_an_unlimited_maximum() {
        let m = Maxima::default();
        assert!(m.check_fuel(Fuel::limited(DEFAULT_MAX_FUEL)).is_ok());
        assert!(m.check_fuel(Fuel::limited(DEFAULT_MAX_FUEL + 1)).is_err());
        let e = m.check_fuel(Fuel::Unlimited).unwrap_err();
        assert!(e.to_string().contains("--max-fuel"), "{e}");
        let open = Maxima {
            fuel: Fuel::Unlimited,
            ..m
        };
        assert!(open.check_fuel(Fuel::Unlimited).is_ok());
    }

    #[test]
    fn the_defaults_fit_under_the_default_maxima() {
        assert_eq!(Maxima::default().check(&Limits::default()), Ok(()));
        let m = Maxima::default();
        let too_long = Limits {
            timeout: DEFAULT_MAX_TIMEOUT + Duration::from_millis(1),
            ..Limits::default()
        };
        assert!(matches!(
            m.check(&too_long),
            Err(AboveMaximum::Timeout { .. })
        ));
        let too_big = Limits {
            memory_bytes: DEFAULT_MAX_MEMORY_BYTES + 1,
            ..Limits::default()
        };
        assert!(matches!(
            m.check(&too_big),
            Err(AboveMaximum::Memory { .. })
        ));
    }
}
