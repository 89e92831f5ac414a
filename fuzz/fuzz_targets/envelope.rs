//! The result envelope of cluster mode, read back from a Ray job's logs:
//! whatever the logs hold, `find_in` answers with an envelope or an error;
//! an envelope that was written is found again behind any earlier output;
//! and the report made from a found one is storable once bounded.
#![no_main]

use arbitrary::{Result, Unstructured};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use wasmq::runtime::{Limits, Outcome, RunReport, TaskErrorKind};
use wasmq::worker::envelope::{ENVELOPE_MARKER, Envelope, EnvelopeLog};

fn check_report(r: RunReport) {
    let limits = Limits::default();
    let r = r.bounded(&limits);
    let mut texts = vec![r.stdout.as_str(), r.stderr.as_str()];
    texts.extend(r.logs.iter().map(|l| l.message.as_str()));
    texts.extend(r.outcome.message());
    if let Some((_, m)) = &r.progress {
        texts.push(m);
    }
    for t in texts {
        assert!(!t.contains('\0'), "{t:?}");
    }
}

fn outcome(u: &mut Unstructured<'_>) -> Result<Outcome> {
    let message: String = u.arbitrary()?;
    Ok(match u.int_in_range(0..=10)? {
        0 => Outcome::Success,
        1 => Outcome::TaskError {
            error_kind: *u.choose(&[
                TaskErrorKind::Permanent,
                TaskErrorKind::Retryable,
                TaskErrorKind::InvalidInput,
            ])?,
            message,
            details: u.arbitrary()?,
        },
        2 => Outcome::Trap {
            message,
            backtrace: u.arbitrary()?,
        },
        3 => Outcome::OutOfFuel { message },
        4 => Outcome::OutOfMemory { message },
        5 => Outcome::Timeout { message },
        6 => Outcome::Cancelled { message },
        7 => Outcome::InvalidModule { message },
        8 => Outcome::InvalidOutput { message },
        9 => Outcome::Waiting { message },
        _ => Outcome::HostError { message },
    })
}

fn envelope(u: &mut Unstructured<'_>) -> Result<Envelope> {
    Ok(Envelope {
        outcome: outcome(u)?,
        output: u.arbitrary()?,
        module_sha256: u.arbitrary()?,
        fuel_used: u.arbitrary()?,
        peak_memory_bytes: u.arbitrary()?,
        wall_time_us: u.arbitrary()?,
        runner_ms: u.arbitrary()?,
        cache: u.arbitrary()?,
        stdout: u.arbitrary()?,
        stderr: u.arbitrary()?,
        logs: u
            .arbitrary_iter()?
            .take(8)
            .map(|l| {
                let (level, message, at_ms) = l?;
                Ok(EnvelopeLog {
                    level,
                    message,
                    at_ms,
                })
            })
            .collect::<Result<_>>()?,
        progress: u.arbitrary()?,
        // Spawns come from the runtime only, and the cluster worker checks
        // them against the task before storing (worker::spawning): the
        // envelope only carries them.
        spawns: Vec::new(),
        suspension: None,
        task_id: u.arbitrary()?,
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        // Raw logs, the marker included or not.
        0 => {
            let logs = String::from_utf8_lossy(rest);
            if let Ok(e) = Envelope::find_in(&logs) {
                let again = Envelope::find_in(&format!("{logs}\n{}\n", e.to_line()));
                assert_eq!(again.as_ref(), Ok(&e));
                check_report(e.into_report());
            }
        }
        // The marker is easy to find, base64 is not: the bytes after it are
        // what the line decodes to, so the fuzzer works on the JSON.
        1 => {
            let line = format!("noise\n{ENVELOPE_MARKER}{}\r\nmore noise", B64.encode(rest));
            if let Ok(e) = Envelope::find_in(&line) {
                check_report(e.into_report());
            }
        }
        // Any envelope written after any output is the one found.
        _ => {
            let mut u = Unstructured::new(rest);
            let (Ok(before), Ok(e), Ok(after)) = (
                u.arbitrary::<String>(),
                envelope(&mut u),
                u.arbitrary::<String>(),
            ) else {
                return;
            };
            let mut after = after;
            while after.contains(ENVELOPE_MARKER) {
                after = after.replace(ENVELOPE_MARKER, "");
            }
            let logs = format!("{before}\n{}\n{after}", e.to_line());
            assert_eq!(Envelope::find_in(&logs).as_ref(), Ok(&e), "{logs:?}");
            check_report(e.into_report());
        }
    }
});
