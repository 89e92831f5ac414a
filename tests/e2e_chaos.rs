//! Hostile guests end to end: the `chaos` example writes NUL bytes to its
//! logs, stdout, stderr and error messages, floods log lines and progress
//! reports, and returns huge errors, run by a real `wasmq worker` against a
//! real database (both backends) beside normal `hello` tasks. Every task
//! must end terminal in its expected state with what it stored storable and
//! bounded; a progress flood must not cost a lease or unbounded memory.
//!
//! Assertions are on outcomes and bounds, never on durations; the waits
//! only keep a broken build from hanging the suite.

mod common;

use common::pg::{PgEnv, drop_schema};
use common::{Backend, code, example, fresh_database, stderr, stdout, wasmq};
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use uuid::Uuid;
use wasmq::runtime::{
    DEFAULT_MAX_FUEL, LOG_RECORD_OVERHEAD_BYTES, MAX_LOG_RECORDS, MAX_PROGRESS_MESSAGE_BYTES,
};
use wasmq::store::{
    AnyStore, AttemptRecord, Fuel, NewTask, Store, TaskLimits, TaskRecord, TaskState,
};
use wasmq::text::NUL_REPLACEMENT;
use wasmq::worker::MAX_STORED_LOGS;

/// What the store may hold of one attempt's error message: the runtime's
/// message and backtrace caps (16 KiB each) and a separator.
const MAX_STORED_ERROR: usize = 32 * 1024 + 1;
/// RSS the worker must stay under while a guest floods progress reports.
/// A worker running `hello` and `chaos` needs well under 100 MiB; a worker
/// that keeps one spawned write per report grows by about a GiB per
/// million reports.
const MAX_WORKER_RSS_BYTES: u64 = 400 << 20;

struct Env {
    dir: tempfile::TempDir,
    url: String,
    pg: Option<PgEnv>,
    rt: tokio::runtime::Runtime,
    store: AnyStore,
}

impl Env {
    fn new(backend: Backend) -> Option<Env> {
        let rt = common::test_runtime();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("cache")).unwrap();
        let (url, pg) = fresh_database(&rt, backend, dir.path(), "e2e-chaos")?;
        let store = common::open_store(&rt, &url, 4);
        Some(Env {
            dir,
            url,
            pg,
            rt,
            store,
        })
    }

    fn cmd(&self) -> Command {
        common::wasmq_on(self.dir.path(), &self.url)
    }

    fn push(&self, name: &str) {
        let out = self
            .cmd()
            .args([
                "module",
                "push",
                example(name).to_str().unwrap(),
                "--name",
                name,
            ])
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    }

    /// Enqueues one task per input, in one batch, with `max_attempts` 1 so
    /// that a failure is final at once; returns their ids in order.
    fn enqueue(&self, module: &str, inputs: &[String], priority: i16) -> Vec<Uuid> {
        let m = self
            .rt
            .block_on(self.store.resolve_module(module, None))
            .unwrap();
        let tasks: Vec<NewTask> = inputs
            .iter()
            .map(|input| NewTask {
                priority,
                max_attempts: 1,
                // The floods run for seconds of guest code.
                limits: TaskLimits {
                    fuel: Some(Fuel::limited(DEFAULT_MAX_FUEL)),
                    memory_bytes: None,
                    timeout_ms: Some(120_000),
                },
                ..NewTask::new(&m, input.clone())
            })
            .collect();
        self.rt.block_on(self.store.enqueue_batch(&tasks)).unwrap();
        tasks.iter().map(|t| t.id).collect()
    }

    fn task(&self, id: Uuid) -> TaskRecord {
        self.rt.block_on(self.store.get_task(id)).unwrap()
    }

    fn attempts(&self, id: Uuid) -> Vec<AttemptRecord> {
        self.rt.block_on(self.store.list_attempts(id)).unwrap()
    }

    /// Runs one `wasmq worker --exit-when-idle` to the end, sampling its
    /// RSS; returns the largest sample. A worker over
    /// [`MAX_WORKER_RSS_BYTES`] is killed at once (so that a broken build
    /// cannot take the machine's memory) and the test fails.
    fn drain(&self, args: &[&str]) -> u64 {
        let mut cmd = self.cmd();
        cmd.arg("worker")
            .args(["--exit-when-idle", "--poll-interval", "200ms"])
            .args(args);
        let (mut child, logs) = common::spawn_logged(cmd, self.dir.path(), "worker");
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut max_rss = 0;
        loop {
            if let Some(rss) = vm_rss(&child) {
                max_rss = max_rss.max(rss);
                if rss > MAX_WORKER_RSS_BYTES {
                    kill(&mut child);
                    panic!("the worker's RSS reached {rss} bytes\n{}", logs());
                }
            }
            if let Some(status) = child.try_wait().unwrap() {
                assert_eq!(status.code(), Some(0), "worker: {status}\n{}", logs());
                return max_rss;
            }
            if Instant::now() > deadline {
                kill(&mut child);
                panic!("the worker did not drain the queue\n{}", logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let pg = self.pg.take();
        let store = self.store.clone();
        self.rt.block_on(async move {
            store.close().await;
            if let Some(pg) = pg {
                drop_schema(&pg).await;
            }
        });
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The process's resident set size from /proc/PID/status, in bytes.
fn vm_rss(child: &Child) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn run_on(backend: Backend, test: fn(&mut Env)) {
    if let Some(mut env) = Env::new(backend) {
        test(&mut env);
    }
}

on_both_backends!(
    hostile_tasks_end_terminal_with_storable_bounded_text,
    progress_flood_beside_100_tasks_keeps_leases_and_memory_bounded,
);

/// Everything stored about `id` holds no NUL and stays within its bound.
fn assert_stored_text_is_bounded(env: &Env, id: Uuid) -> (TaskRecord, Vec<AttemptRecord>) {
    let t = env.task(id);
    let attempts = env.attempts(id);
    let texts = [
        (
            "error_message",
            t.error_message.as_deref(),
            MAX_STORED_ERROR,
        ),
        ("error_logs", t.error_logs.as_deref(), MAX_STORED_LOGS),
        (
            "progress_message",
            t.progress_message.as_deref(),
            MAX_PROGRESS_MESSAGE_BYTES,
        ),
    ]
    .into_iter()
    .chain(attempts.iter().flat_map(|a| {
        [
            (
                "attempt error_message",
                a.error_message.as_deref(),
                MAX_STORED_ERROR,
            ),
            ("attempt logs", a.logs.as_deref(), MAX_STORED_LOGS),
        ]
    }));
    for (what, text, max) in texts {
        let Some(text) = text else { continue };
        assert!(!text.contains('\0'), "{what} of {id} holds NUL");
        assert!(text.len() <= max, "{what} of {id} is {} bytes", text.len());
    }
    (t, attempts)
}

/// NUL in logs, stdout, stderr, errors and panics; floods of empty log
/// lines, log lines and progress; huge errors: beside `hello` tasks, every
/// task ends in its expected terminal state and none stays running.
fn hostile_tasks_end_terminal_with_storable_bounded_text(env: &mut Env) {
    env.push("chaos");
    env.push("hello");
    let nul_outputs = env.enqueue(
        "chaos",
        &[r#"{"nul_log":true,"nul_stdout":true,"nul_stderr":true}"#.into()],
        0,
    )[0];
    let nul_error = env.enqueue("chaos", &[r#"{"nul_error":true,"nul_log":true}"#.into()], 0)[0];
    let big_error = env.enqueue(
        "chaos",
        &[
            r#"{"big_error_bytes":4000000,"big_details_bytes":1000000,"error_kind":"retryable"}"#
                .into(),
        ],
        0,
    )[0];
    let empty_lines = env.enqueue("chaos", &[r#"{"empty_log_lines":1000000}"#.into()], 0)[0];
    let log_lines = env.enqueue(
        "chaos",
        &[r#"{"log_lines":200000,"big_log_bytes":1000000,"stdout_bytes":1000000}"#.into()],
        0,
    )[0];
    let progress = env.enqueue(
        "chaos",
        &[r#"{"progress_flood":300000,"progress_message_bytes":5000}"#.into()],
        0,
    )[0];
    let panic = env.enqueue("chaos", &[r#"{"nul_panic":true}"#.into()], 0)[0];
    let hellos = env.enqueue(
        "hello",
        &(0..50)
            .map(|i| format!(r#"{{"name":"h{i}"}}"#))
            .collect::<Vec<_>>(),
        0,
    );

    env.drain(&["--concurrency", "2"]);

    let nul = NUL_REPLACEMENT.to_string();
    for id in &hellos {
        let (t, _) = assert_stored_text_is_bounded(env, *id);
        assert_eq!(t.state, TaskState::Succeeded, "{t:#?}");
    }

    let (t, a) = assert_stored_text_is_bounded(env, nul_outputs);
    assert_eq!(t.state, TaskState::Succeeded, "{t:#?}");
    let logs = a[0].logs.as_deref().unwrap();
    assert!(
        logs.contains(&format!(
            "chaos: NUL here {nul} and here {nul} in a log line"
        )),
        "{logs}"
    );
    assert!(
        logs.contains(&format!("chaos: NUL here {nul} on stdout")),
        "{logs}"
    );
    assert!(
        logs.contains(&format!("chaos: NUL here {nul} on stderr")),
        "{logs}"
    );

    let (t, a) = assert_stored_text_is_bounded(env, nul_error);
    assert_eq!(t.state, TaskState::Failed, "{t:#?}");
    assert_eq!(t.error_kind.as_deref(), Some("permanent"), "{t:#?}");
    assert_eq!(
        t.error_message.as_deref(),
        Some(format!("chaos: NUL here {nul} in an error").as_str())
    );
    assert_eq!(a[0].outcome_name(), Some("task-error"));

    let (t, _) = assert_stored_text_is_bounded(env, big_error);
    assert_eq!(t.state, TaskState::Failed, "max_attempts 1: {t:#?}");
    assert_eq!(t.error_kind.as_deref(), Some("retryable"), "{t:#?}");
    let message = t.error_message.unwrap();
    assert!(message.starts_with(&nul), "{:?}", &message[..100]);
    assert!(message.ends_with(wasmq::text::TRUNCATION_MARK));

    // The flood of empty lines: a bounded number of records and the marker.
    let (t, a) = assert_stored_text_is_bounded(env, empty_lines);
    assert_eq!(t.state, TaskState::Succeeded, "{t:#?}");
    let logs = a[0].logs.as_deref().unwrap();
    let kept = logs.lines().count() - 1;
    assert!(kept <= MAX_LOG_RECORDS, "{kept} lines stored");
    assert!(kept * LOG_RECORD_OVERHEAD_BYTES <= 64 * 1024);
    assert!(
        logs.contains(&format!("[wasmq: {} log lines dropped", 1_000_000 - kept)),
        "{}",
        &logs[logs.len().saturating_sub(300)..]
    );

    let (t, _) = assert_stored_text_is_bounded(env, log_lines);
    assert_eq!(t.state, TaskState::Succeeded, "{t:#?}");

    // The last report of the flood (100 %) is stored although it came
    // within the throttle interval of the one before.
    let (t, _) = assert_stored_text_is_bounded(env, progress);
    assert_eq!(t.state, TaskState::Succeeded, "{t:#?}");
    assert_eq!(t.progress_percent, Some(100), "{t:#?}");
    assert_eq!(t.progress_message.as_deref(), Some("chaos: flood done"));

    let (t, a) = assert_stored_text_is_bounded(env, panic);
    assert_eq!(t.state, TaskState::Failed, "{t:#?}");
    assert_eq!(a[0].outcome_name(), Some("trap"));
    let message = t.error_message.unwrap();
    assert!(
        message.contains(&format!("chaos: NUL here {nul} in a panic")),
        "{message}"
    );

    let running = env
        .rt
        .block_on(env.store.list_tasks(&wasmq::store::TaskFilter {
            state: Some(TaskState::Running),
            limit: 1000,
            ..Default::default()
        }));
    assert_eq!(running.unwrap().len(), 0);
}

/// A guest reporting 100 % a million times, beside 100 `hello` tasks on a
/// short lease: no lease expires, every task succeeds once, and the
/// worker's memory stays bounded.
fn progress_flood_beside_100_tasks_keeps_leases_and_memory_bounded(env: &mut Env) {
    env.push("chaos");
    env.push("hello");
    let flood = env.enqueue(
        "chaos",
        &[r#"{"progress_flood":1000000,"progress_message_bytes":1000,"progress_flood_percent":100}"#
            .into()],
        10,
    )[0];
    let hellos = env.enqueue(
        "hello",
        &(0..100)
            .map(|i| format!(r#"{{"name":"h{i}"}}"#))
            .collect::<Vec<_>>(),
        0,
    );

    // A lease of 10 s is renewed every 3.3 s: a worker whose progress
    // writes starve its heartbeat loses it.
    let max_rss = env.drain(&["--concurrency", "2", "--lease", "10s"]);
    eprintln!("worker RSS peaked at {} MiB", max_rss >> 20);

    for id in hellos.iter().chain([&flood]) {
        let (t, attempts) = assert_stored_text_is_bounded(env, *id);
        assert_eq!(t.state, TaskState::Succeeded, "{t:#?}");
        let outcomes: Vec<_> = attempts.iter().map(|a| a.outcome_name()).collect();
        assert_eq!(outcomes, [Some("success")], "{id}: {attempts:#?}");
    }
    let t = env.task(flood);
    assert_eq!(t.progress_percent, Some(100), "{t:#?}");
    assert_eq!(t.progress_message.as_deref(), Some("chaos: flood done"));
}

/// `wasmq run --json` stays small whatever the guest writes.
#[test]
fn run_json_report_stays_small_whatever_the_guest_does() {
    let cache = tempfile::tempdir().unwrap();
    for input in [
        r#"{"empty_log_lines":1000000,"stdout_bytes":2000000,"nul_stderr":true}"#,
        r#"{"log_lines":100000,"big_log_bytes":3000000}"#,
        r#"{"big_error_bytes":8000000,"big_details_bytes":8000000}"#,
        r#"{"progress_flood":100000,"progress_message_bytes":100000}"#,
    ] {
        let out = wasmq(cache.path())
            .args(["run", example("chaos").to_str().unwrap(), "--json"])
            .args(["--fuel", "unlimited", "--input", input])
            .output()
            .unwrap();
        assert!(
            out.stdout.len() < 512 * 1024,
            "{input}: a report of {} bytes",
            out.stdout.len()
        );
        let report = common::json(&out);
        let text = report.to_string();
        assert!(!text.contains("\\u0000"), "{input}: NUL in the report");
        if let Some(details) = report["outcome"]["details"].as_str() {
            assert!(details.len() <= 64 * 1024, "{input}");
        }
        if let Some(message) = report["outcome"]["message"].as_str() {
            assert!(message.len() <= 16 * 1024, "{input}");
        }
        assert!(report["logs"].as_array().unwrap().len() <= MAX_LOG_RECORDS + 1);
    }
}
