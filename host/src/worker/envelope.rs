//! The envelope `wasmq exec` prints as the last line of a Ray job: one
//! marked line of base64 JSON carrying the run's report back to the cluster
//! worker, through Ray's job logs (stdout and stderr merged, Ray's own lines
//! interleaved, so it is searched from the end).

use crate::runtime::subtasks::{Spawn, Suspension};
use crate::runtime::{CacheSource, Limits, LogRecord, Outcome, RunReport, check_output};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

/// Starts the envelope line; the version changes with the format.
pub const ENVELOPE_MARKER: &str = "WASMQ-ENVELOPE/1 ";

/// What one run reported, as it travels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub outcome: Outcome,
    pub output: Option<String>,
    pub module_sha256: String,
    pub fuel_used: u64,
    pub peak_memory_bytes: u64,
    /// Instantiate + run, microseconds.
    pub wall_time_us: u64,
    /// The runner process from start to this line (load, compile, run), ms.
    pub runner_ms: u64,
    /// `memory`, `disk` or `compiled`: where the compiled module came from.
    pub cache: String,
    pub stdout: String,
    pub stderr: String,
    pub logs: Vec<EnvelopeLog>,
    pub progress: Option<(u8, String)>,
    /// Children the run spawned (checked against the task by the worker
    /// before they are stored: ids, digests, bounds).
    #[serde(default)]
    pub spawns: Vec<Spawn>,
    /// Set when the run ended waiting for children.
    #[serde(default)]
    pub suspension: Option<Suspension>,
    /// The task this run was of, in a job that ran a batch: its envelope is
    /// one of several in the job's logs.
    #[serde(default)]
    pub task_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvelopeLog {
    pub level: String,
    pub message: String,
    pub at_ms: u64,
}

/// Why no envelope could be read from a job's logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the job's logs hold no wasmq envelope line (the runner did not finish)")]
    Missing,
    #[error("the job's envelope line is corrupt: {0}")]
    Corrupt(String),
}

impl Envelope {
    pub fn from_report(r: &RunReport, runner_ms: u64) -> Envelope {
        Envelope {
            outcome: r.outcome.clone(),
            output: r.output.clone(),
            module_sha256: r.module_sha256.clone(),
            fuel_used: r.fuel_used,
            peak_memory_bytes: r.peak_memory_bytes,
            wall_time_us: r.wall_time_us,
            runner_ms,
            cache: match r.cache {
                CacheSource::Memory => "memory",
                CacheSource::Disk => "disk",
                CacheSource::Compiled => "compiled",
            }
            .into(),
            stdout: r.stdout.clone(),
            stderr: r.stderr.clone(),
            logs: r
                .logs
                .iter()
                .map(|l| EnvelopeLog {
                    level: l.level.into(),
                    message: l.message.clone(),
                    at_ms: l.at_ms,
                })
                .collect(),
            progress: r.progress.clone(),
            spawns: r.spawns.clone(),
            suspension: r.suspension.clone(),
            task_id: None,
        }
    }

    /// This envelope, naming the task it reports on.
    pub fn for_task(mut self, task_id: &str) -> Envelope {
        self.task_id = Some(task_id.to_string());
        self
    }

    /// The report the cluster worker completes the task with.
    pub fn into_report(self) -> RunReport {
        RunReport {
            outcome: self.outcome,
            output: self.output,
            module_sha256: self.module_sha256,
            cache: match self.cache.as_str() {
                "memory" => CacheSource::Memory,
                "disk" => CacheSource::Disk,
                _ => CacheSource::Compiled,
            },
            fuel_used: self.fuel_used,
            peak_memory_bytes: self.peak_memory_bytes,
            wall_time_us: self.wall_time_us,
            stdout: self.stdout,
            stderr: self.stderr,
            logs: self
                .logs
                .into_iter()
                .map(|l| LogRecord {
                    level: static_level(&l.level),
                    message: l.message,
                    at_ms: l.at_ms,
                })
                .collect(),
            progress: self.progress,
            spawns: self.spawns,
            suspension: self.suspension,
        }
    }

    /// The report the cluster worker completes the task with, held to the
    /// worker's `limits` as if the run had been local: the envelope crossed
    /// Ray's log store, so every text is bounded again and a success's
    /// output checked again.
    pub fn into_checked_report(self, limits: &Limits) -> RunReport {
        let mut report = self.into_report();
        if report.outcome.is_success() {
            let checked = match &report.output {
                Some(output) => check_output(output, limits.max_output_bytes),
                None => Outcome::InvalidOutput {
                    message: "the runner reported a success without an output".into(),
                },
            };
            if !checked.is_success() {
                report.outcome = checked;
            }
        }
        if !report.outcome.is_success() {
            report.output = None;
        }
        report.bounded(limits)
    }

    /// The marked line, without a newline.
    pub fn to_line(&self) -> String {
        let json = serde_json::to_vec(self).expect("plain data serializes");
        format!("{ENVELOPE_MARKER}{}", B64.encode(json))
    }

    /// Finds the last envelope line in a job's logs.
    pub fn find_in(logs: &str) -> Result<Envelope, EnvelopeError> {
        let at = logs.rfind(ENVELOPE_MARKER).ok_or(EnvelopeError::Missing)?;
        Self::decode_at(&logs[at + ENVELOPE_MARKER.len()..])
    }

    /// Finds the last envelope of `task_id` in the logs of a batch's job.
    /// Lines that do not decode are skipped (a guest may print the marker
    /// on its own stdout, which the runner captures, but a node's own
    /// output could carry anything); the error says whether any was seen.
    pub fn find_for(logs: &str, task_id: &str) -> Result<Envelope, EnvelopeError> {
        let mut corrupt = None;
        let mut rest = logs;
        while let Some(at) = rest.rfind(ENVELOPE_MARKER) {
            match Self::decode_at(&rest[at + ENVELOPE_MARKER.len()..]) {
                Ok(e) if e.task_id.as_deref() == Some(task_id) => return Ok(e),
                Ok(_) => {}
                Err(e) => corrupt = corrupt.or(Some(e)),
            }
            rest = &rest[..at];
        }
        Err(corrupt.unwrap_or(EnvelopeError::Missing))
    }

    /// Every envelope in a batch's logs that names its task, by task id
    /// (the last one of each task); lines that do not decode are skipped
    /// (a line still being written, say).
    pub fn all_in(logs: &str) -> std::collections::HashMap<String, Envelope> {
        let mut found = std::collections::HashMap::new();
        for (at, _) in logs.match_indices(ENVELOPE_MARKER) {
            if let Ok(e) = Self::decode_at(&logs[at + ENVELOPE_MARKER.len()..])
                && let Some(id) = e.task_id.clone()
            {
                found.insert(id, e);
            }
        }
        found
    }

    /// Decodes the base64 JSON that follows a marker, up to the line's end.
    fn decode_at(rest: &str) -> Result<Envelope, EnvelopeError> {
        let b64 = rest.split(['\n', '\r']).next().unwrap_or("").trim();
        let json = B64
            .decode(b64)
            .map_err(|e| EnvelopeError::Corrupt(format!("base64: {e}")))?;
        serde_json::from_slice(&json).map_err(|e| EnvelopeError::Corrupt(format!("JSON: {e}")))
    }
}

fn static_level(level: &str) -> &'static str {
    match level {
        "trace" => "trace",
        "debug" => "debug",
        "warn" => "warn",
        "error" => "error",
        _ => "info",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::TaskErrorKind;

    fn sample() -> Envelope {
        Envelope {
            outcome: Outcome::TaskError {
                error_kind: TaskErrorKind::Retryable,
                message: "try \"again\"\nlater".into(),
                details: None,
            },
            output: None,
            module_sha256: "ab".repeat(32),
            fuel_used: 42,
            peak_memory_bytes: 1 << 20,
            wall_time_us: 1234,
            runner_ms: 5,
            cache: "disk".into(),
            stdout: "out".into(),
            stderr: "err\n".into(),
            logs: vec![EnvelopeLog {
                level: "warn".into(),
                message: "careful".into(),
                at_ms: 1,
            }],
            progress: Some((50, "half".into())),
            spawns: Vec::new(),
            suspension: None,
            task_id: None,
        }
    }

    #[test]
    fn round_trips_through_noisy_logs() {
        let e = sample();
        let logs = format!(
            "2026-11-26 10:33:51,321\tINFO job_manager.py:581 -- Runtime env is setting up.\n\
             {}\nguest said {ENVELOPE_MARKER}nonsense? no: this line is older\n{}\n\
             Running entrypoint for job wasmq-x-1: ./wasmq exec\n",
            "noise",
            e.to_line()
        );
        assert_eq!(Envelope::find_in(&logs).unwrap(), e);
        let r = e.clone().into_report();
        assert_eq!(r.outcome, e.outcome);
        assert_eq!(r.logs[0].level, "warn");
        assert_eq!(r.cache, CacheSource::Disk);
    }

    #[test]
    fn a_batch_job_holds_one_envelope_per_task() {
        let mut a = sample().for_task("a");
        let b = sample().for_task("b");
        let logs = format!(
            "{}\n{ENVELOPE_MARKER}garbage\n{}\nRay's own line\n",
            a.to_line(),
            b.to_line()
        );
        assert_eq!(Envelope::find_for(&logs, "b").unwrap(), b);
        assert_eq!(Envelope::find_for(&logs, "a").unwrap(), a);
        // The last of a task's envelopes counts; one of another task never.
        a.fuel_used = 7;
        let logs = format!("{logs}{}\n", a.to_line());
        assert_eq!(Envelope::find_for(&logs, "a").unwrap().fuel_used, 7);
        let missing = Envelope::find_for(&format!("{}\n", b.to_line()), "a");
        assert_eq!(missing, Err(EnvelopeError::Missing));
        let all = Envelope::all_in(&logs);
        assert_eq!((all.len(), all["a"].fuel_used), (2, 7));
        let corrupt = Envelope::find_for(&format!("{ENVELOPE_MARKER}!!\n"), "a");
        assert!(
            matches!(corrupt, Err(EnvelopeError::Corrupt(_))),
            "{corrupt:?}"
        );
    }

    #[test]
    fn missing_and_corrupt() {
        assert_eq!(Envelope::find_in("hello\n"), Err(EnvelopeError::Missing));
        let err = Envelope::find_in(&format!("{ENVELOPE_MARKER}!!!\n")).unwrap_err();
        assert!(matches!(err, EnvelopeError::Corrupt(_)), "{err}");
    }

    #[test]
    fn a_decoded_report_is_held_to_the_limits() {
        let limits = Limits {
            max_output_bytes: 8,
            ..Limits::default()
        };
        let mut e = sample();
        e.outcome = Outcome::Success;
        e.output = Some("\"far too long\"".into());
        e.stdout = "\0".repeat(1 << 20);
        let r = e.clone().into_checked_report(&limits);
        assert_eq!(r.outcome.kind(), "invalid-output");
        assert_eq!(r.output, None);
        assert!(!r.stdout.contains('\0'));
        assert!(r.stdout.len() < 2 * limits.max_stdout_bytes);

        e.output = Some("{}".into());
        let r = e.clone().into_checked_report(&limits);
        assert!(r.outcome.is_success(), "{:?}", r.outcome);
        e.output = None;
        assert_eq!(
            e.into_checked_report(&limits).outcome.kind(),
            "invalid-output"
        );
    }
}
