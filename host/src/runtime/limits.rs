//! Per-run resource limits, their defaults, and parsers for the human forms
//! users type (`256MiB`, `30s`).

pub use crate::fuel::{Fuel, FuelError};
use std::time::Duration;

/// Fuel given to a run when nothing else is said: about a few seconds of
/// straight-line guest code on this class of machine.
pub const DEFAULT_FUEL: u64 = 10_000_000_000;
/// Linear memory a run may grow to, summed over all of its memories.
pub const DEFAULT_MEMORY_BYTES: u64 = 256 * 1024 * 1024;
/// Wall-clock budget of one run, including time spent blocked in host calls.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest output (JSON text) a task may return.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1024 * 1024;
/// How much of the guest's stdout and of its stderr is kept, each.
pub const DEFAULT_MAX_CAPTURE_BYTES: usize = 64 * 1024;
/// How much text from the guest's `log()` calls is kept per run, each record
/// counted with [`LOG_RECORD_OVERHEAD_BYTES`] besides its message.
pub const DEFAULT_MAX_LOG_BYTES: usize = 64 * 1024;
/// Most `log()` records kept per run, whatever their size. Lines past it (or
/// past the byte cap) are counted, not kept, and a marker line says how many.
pub const MAX_LOG_RECORDS: usize = 1024;
/// What each `log()` record costs against the byte cap on top of its
/// message: an empty line still takes a record in memory and a prefixed
/// line in storage, so a guest logging empty lines in a loop must run into
/// the cap like one logging text.
pub const LOG_RECORD_OVERHEAD_BYTES: usize = 32;
/// Longest single `log()` message kept; a longer one is cut, with a mark, so
/// one huge line does not take the whole byte cap.
pub const MAX_LOG_MESSAGE_BYTES: usize = 8 * 1024;
/// Longest `progress()` message kept and passed on to the store.
pub const MAX_PROGRESS_MESSAGE_BYTES: usize = 1024;
/// Longest failure message kept: a task error's message, a trap's message
/// (with the panic message found on stderr), any outcome's message.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 16 * 1024;
/// Longest task-error details kept. Cut details are no longer JSON; they are
/// only shown, never parsed.
pub const MAX_ERROR_DETAILS_BYTES: usize = 64 * 1024;
/// Longest trap backtrace kept (a deep recursion gives thousands of frames).
pub const MAX_BACKTRACE_BYTES: usize = 16 * 1024;

/// Limits applied to one run of a task.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Fuel budget; `None` means unlimited (the wall-clock deadline still applies).
    pub fuel: Option<u64>,
    pub memory_bytes: u64,
    pub timeout: Duration,
    pub max_output_bytes: usize,
    pub max_stdout_bytes: usize,
    pub max_stderr_bytes: usize,
    pub max_log_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: Some(DEFAULT_FUEL),
            memory_bytes: DEFAULT_MEMORY_BYTES,
            timeout: DEFAULT_TIMEOUT,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            max_stdout_bytes: DEFAULT_MAX_CAPTURE_BYTES,
            max_stderr_bytes: DEFAULT_MAX_CAPTURE_BYTES,
            max_log_bytes: DEFAULT_MAX_LOG_BYTES,
        }
    }
}

impl Limits {
    /// The defaults, overridden by `WASMQ_DEFAULT_FUEL`, `WASMQ_DEFAULT_MEMORY`,
    /// `WASMQ_DEFAULT_TIMEOUT` and `WASMQ_MAX_OUTPUT` where set.
    pub fn from_env() -> Result<Limits, LimitError> {
        let mut limits = Limits::default();
        if let Some(v) = env("WASMQ_DEFAULT_FUEL") {
            limits.fuel = parse_fuel(&v)?;
        }
        if let Some(v) = env("WASMQ_DEFAULT_MEMORY") {
            limits.memory_bytes = parse_size(&v)?;
        }
        if let Some(v) = env("WASMQ_DEFAULT_TIMEOUT") {
            limits.timeout = parse_duration(&v)?;
        }
        if let Some(v) = env("WASMQ_MAX_OUTPUT") {
            limits.max_output_bytes = usize::try_from(parse_size(&v)?)
                .map_err(|_| LimitError::Size(v.clone(), "too large".into()))?;
        }
        Ok(limits)
    }
}

/// An environment variable's value, unless unset or blank.
pub(super) fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    #[error("invalid size `{0}`: {1} (examples: 65536, 64KiB, 256MiB, 1GiB)")]
    Size(String, String),
    #[error("invalid duration `{0}`: {1} (examples: 500ms, 30s, 2m)")]
    Duration(String, String),
    #[error(transparent)]
    Fuel(#[from] FuelError),
}

/// Parses `unlimited` as no fuel limit (`None`), otherwise a whole number
/// of at least 1 (see [`Fuel`]).
pub fn parse_fuel(text: &str) -> Result<Option<u64>, LimitError> {
    Ok(text.parse::<Fuel>()?.units())
}

/// Parses a byte size: a bare number of bytes, or a number followed by one of
/// `B`, `K`/`KB`/`KiB`, `M`/`MB`/`MiB`, `G`/`GB`/`GiB` (all binary multiples:
/// memory is counted in 64 KiB wasm pages, so decimal units would only mislead).
pub fn parse_size(text: &str) -> Result<u64, LimitError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '_'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: u64 = num
        .replace('_', "")
        .parse()
        .map_err(|_| LimitError::Size(text.to_string(), "expected a number".into()))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(LimitError::Size(
                text.to_string(),
                format!("unknown unit `{other}`"),
            ));
        }
    };
    num.checked_mul(mult)
        .ok_or_else(|| LimitError::Size(text.to_string(), "too large".into()))
}

/// The longest duration [`parse_duration`] accepts: as many milliseconds as
/// a task's stored timeout holds (a signed 64-bit column), some 292 million
/// years. Anything longer is a typo, and would overflow `now + timeout` (a
/// panic) or wrap in the conversion to milliseconds.
const MAX_DURATION: Duration = Duration::from_millis(i64::MAX as u64);

/// Parses a duration such as `500ms`, `30s`, `2m` or `1h 30m`; a bare number
/// means seconds.
pub fn parse_duration(text: &str) -> Result<Duration, LimitError> {
    let t = text.trim();
    let parsed = if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        t.parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|e| e.to_string())
    } else {
        humantime::parse_duration(t).map_err(|e| e.to_string())
    };
    match parsed {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        Ok(_) => Err(LimitError::Duration(text.to_string(), "too long".into())),
        Err(e) => Err(LimitError::Duration(text.to_string(), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_size("32m"), Ok(32 << 20));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn durations_too_long_for_a_deadline_are_refused() {
        // Found by fuzzing (cli_parsers): accepted, then `now + timeout`
        // panicked, or the task's timeout in milliseconds wrapped around.
        for text in [
            "18446744073709551615",
            "65553655555356366",
            "300000000 years",
        ] {
            let e = parse_duration(text).unwrap_err();
            assert!(e.to_string().contains("too long"), "{text}: {e}");
        }
        let longest = parse_duration(&MAX_DURATION.as_secs().to_string()).unwrap();
        assert!(std::time::Instant::now().checked_add(longest).is_some());
        assert!(std::time::SystemTime::now().checked_add(longest).is_some());
        assert!(i64::try_from(longest.as_millis()).is_ok());
    }

    #[test]
    fn fuel() {
        assert_eq!(parse_fuel("unlimited"), Ok(None));
        assert!(parse_fuel("0").is_err(), "no 0 that means unlimited");
        assert_eq!(parse_fuel("1_000_000"), Ok(Some(1_000_000)));
        assert!(parse_fuel("-1").is_err());
    }
}
