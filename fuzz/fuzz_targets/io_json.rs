//! The input/output JSON path: a task's input as the store accepts it, a
//! guest's output as the runtime accepts it, and guest text made storable.
//! What is accepted must be storable as it is (valid UTF-8, no NUL, which
//! PostgreSQL refuses in `text`) and within its bound.
#![no_main]

use std::borrow::Cow;
use uuid::Uuid;
use wasmq::fuel::Fuel;
use wasmq::runtime::{Limits, LogRecord, Outcome, RunReport, TaskErrorKind, check_output};
use wasmq::store::{NewTask, TaskLimits, validate_new_task};
use wasmq::text::{NUL_REPLACEMENT, TRUNCATION_MARK, storable, storable_bytes};

fn assert_storable(s: &str, max_bytes: usize) {
    assert!(s.len() <= max_bytes, "{} > {max_bytes}", s.len());
    assert!(!s.contains('\0'));
}

fn task(input: String, unique_key: Option<String>) -> NewTask {
    NewTask {
        id: Uuid::nil(),
        module_name: "m".into(),
        module_version: "1".into(),
        module_sha256: "0".repeat(64),
        queue: "default".into(),
        priority: 0,
        input,
        run_after: None,
        max_attempts: 3,
        limits: TaskLimits {
            fuel: Some(Fuel::Unlimited),
            memory_bytes: None,
            timeout_ms: None,
        },
        unique_key,
        parent_id: None,
        child: None,
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((head, bytes)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max_bytes = usize::from(u16::from_le_bytes(*head)) % 4096;
    let text = String::from_utf8_lossy(bytes);

    // Guest bytes (stdout, stderr) and guest text (messages, logs).
    assert_storable(&storable_bytes(bytes, max_bytes), max_bytes);
    let stored = storable(&text, max_bytes);
    assert_storable(&stored, max_bytes);
    let cleaned = text.replace('\0', NUL_REPLACEMENT.encode_utf8(&mut [0; 4]));
    match &stored {
        Cow::Borrowed(s) => assert_eq!(*s, text),
        Cow::Owned(s) => {
            let kept = s.strip_suffix(TRUNCATION_MARK).unwrap_or(s);
            assert!(cleaned.starts_with(kept), "not a prefix: {s:?}");
            assert!(s.len() == cleaned.len() || cleaned.len() > max_bytes);
        }
    }

    // The input of a task: what the store accepts is JSON text it can keep.
    let input = text.clone().into_owned();
    let key = Some(text.chars().take(64).collect::<String>());
    if validate_new_task(&task(input.clone(), None)).is_ok() {
        assert!(!input.contains('\0'));
        assert!(serde_json::from_str::<serde::de::IgnoredAny>(&input).is_ok());
    }
    if validate_new_task(&task("null".into(), key.clone())).is_ok() {
        assert!(!key.unwrap().chars().any(char::is_control));
    }

    // The output of a run: stored verbatim when it is a success.
    match check_output(&text, max_bytes) {
        Outcome::Success => assert_storable(&text, max_bytes),
        Outcome::InvalidOutput { message } => assert!(!message.is_empty()),
        other => panic!("check_output gave {other:?}"),
    }

    // A whole report of guest text, as the runtime returns it.
    let limits = Limits {
        max_stdout_bytes: max_bytes,
        max_stderr_bytes: max_bytes / 2,
        ..Limits::default()
    };
    let mut r = RunReport::not_run(
        Outcome::TaskError {
            error_kind: TaskErrorKind::Permanent,
            message: text.repeat(3),
            details: Some(text.clone().into_owned()),
        },
        String::new(),
    );
    r.stdout = text.clone().into_owned();
    r.stderr = text.clone().into_owned();
    r.logs = vec![LogRecord {
        level: "info",
        message: text.clone().into_owned(),
        at_ms: 0,
    }];
    r.progress = Some((100, text.clone().into_owned()));
    let r = r.bounded(&limits);
    for s in [
        &r.stdout,
        &r.stderr,
        &r.logs[0].message,
        &r.progress.unwrap().1,
    ] {
        assert!(!s.contains('\0'));
    }
    assert!(!r.outcome.message().unwrap().contains('\0'));
});
