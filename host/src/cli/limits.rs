//! The `--fuel`, `--memory` and `--timeout` flags shared by `run`, `worker`
//! and `task enqueue`, and the `--max-*` ceilings of `worker` and `serve`.

use super::exit::Exit;
use crate::fuel::Fuel;
use crate::runtime::{Limits, Maxima, parse_duration, parse_size};
use crate::store::TaskLimits;
use clap::Args;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Fuel per run, or `unlimited` [default: WASMQ_DEFAULT_FUEL, else 10_000_000_000].
    #[arg(long)]
    pub fuel: Option<Fuel>,
    /// Memory per run, e.g. 64MiB [default: WASMQ_DEFAULT_MEMORY, else 256MiB].
    #[arg(long, value_parser = parse_size)]
    pub memory: Option<u64>,
    /// Wall clock per run, e.g. 500ms, 30s [default: WASMQ_DEFAULT_TIMEOUT, else 30s].
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
}

impl LimitArgs {
    /// The environment's defaults with these flags applied.
    pub fn limits(&self) -> anyhow::Result<Limits> {
        let mut limits = Limits::from_env().map_err(|e| Exit::usage(e.to_string()))?;
        if let Some(f) = self.fuel {
            limits.fuel = f.units();
        }
        if let Some(m) = self.memory {
            limits.memory_bytes = m;
        }
        if let Some(t) = self.timeout {
            limits.timeout = t;
        }
        Ok(limits)
    }

    /// Per-task overrides as stored with a task (`None` = the worker's default).
    pub fn task_limits(&self) -> TaskLimits {
        TaskLimits {
            fuel: self.fuel,
            memory_bytes: self.memory,
            timeout_ms: self.timeout.map(|d| d.as_millis() as u64),
        }
    }
}

/// Ceilings on what a task may ask for (`worker` and `serve`).
#[derive(Debug, Args)]
pub struct MaximaArgs {
    /// Most fuel a task may ask for, or `unlimited` to allow unlimited fuel
    /// [default: WASMQ_MAX_FUEL, else 1_000_000_000_000].
    #[arg(long)]
    pub max_fuel: Option<Fuel>,
    /// Most memory a task may ask for [default: WASMQ_MAX_MEMORY, else 4GiB].
    #[arg(long, value_parser = parse_size)]
    pub max_memory: Option<u64>,
    /// Longest timeout a task may ask for [default: WASMQ_MAX_TIMEOUT, else 1h].
    #[arg(long, value_parser = parse_duration)]
    pub max_timeout: Option<Duration>,
}

impl MaximaArgs {
    /// The environment's maxima with these flags applied.
    pub fn maxima(&self) -> anyhow::Result<Maxima> {
        let mut m = env_maxima()?;
        if let Some(f) = self.max_fuel {
            m.fuel = f;
        }
        if let Some(b) = self.max_memory {
            m.memory_bytes = b;
        }
        if let Some(t) = self.max_timeout {
            m.timeout = t;
        }
        Ok(m)
    }
}

/// [`Maxima::from_env`], a bad value being a usage error.
pub fn env_maxima() -> anyhow::Result<Maxima> {
    Ok(Maxima::from_env().map_err(|e| Exit::usage(e.to_string()))?)
}
