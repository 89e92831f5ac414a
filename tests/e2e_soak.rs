//! `wasmq bench soak` end to end: the real binary starts three real worker
//! processes on PostgreSQL, feeds them the whole mix for two minutes while
//! one is killed with SIGKILL every 30 s, and checks the attempt history.
//!
//! The schema comes from `tests/common/pg.rs` (so an unreachable server
//! skips the test, or fails it with `CI=true`) and is dropped afterwards.
//! Nothing here is timed: the bench's own drain timeout bounds the run.

mod common;

use common::pg::{drop_schema, pg_env};
use common::{code, example, stderr, stdout, wasmq};

const INVARIANTS: &[&str] = &[
    "invariant every task terminal: ok",
    "invariant no attempt left unfinished: ok",
    "invariant no overlapping attempts of a task: ok",
    "invariant attempt counter = attempt rows numbered 1..N, free runs = released rows: ok",
    "invariant attempts within max_attempts: ok",
    "invariant one success row per succeeded task, none otherwise: ok",
    "invariant final state as the mix expects: ok",
    "invariant workers ran until stopped and exited 0 on SIGTERM: ok",
];

/// The first number after `prefix` on the line that starts with it.
fn number_after(out: &str, prefix: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{out}"));
    line[prefix.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| panic!("no number in {line:?}"))
        .parse()
        .unwrap()
}

#[test]
fn two_minute_soak_with_a_worker_killed_every_30s() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let Some(pg) = rt.block_on(pg_env()) else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let modules = example("hello").parent().unwrap().to_path_buf();
    let out = wasmq(cache.path())
        .args(["bench", "soak", "--duration", "2m", "--kill-every", "30s"])
        .arg("--db")
        .arg(&pg.base_url)
        .arg("--schema")
        .arg(&pg.schema)
        .arg("--modules")
        .arg(&modules)
        .output()
        .unwrap();
    rt.block_on(drop_schema(&pg));
    let (so, se) = (stdout(&out), stderr(&out));
    let context = format!("stdout:\n{so}\nstderr:\n{se}");

    assert_eq!(code(&out), 0, "the soak failed\n{context}");
    for line in INVARIANTS {
        assert!(
            so.lines().any(|l| l == *line),
            "missing {line:?}\n{context}"
        );
    }
    assert!(
        so.lines().any(|l| l.starts_with("soak: PASS (")),
        "{context}"
    );
    // The kills happened and took leased tasks with them, which the reapers
    // of the surviving workers recorded as lease-expired attempts.
    assert!(number_after(&so, "kills: ") >= 1, "{context}");
    assert!(
        number_after(&so, "lease-expired attempts: ") >= 1,
        "no attempt of a killed worker was reaped\n{context}"
    );
    // Every entry of the mix ran, the hostile ones included.
    for entry in [
        "hello",
        "flaky",
        "panic",
        "cancel-queued",
        "cancel-running",
        "out-of-fuel",
        "out-of-memory",
        "timeout",
        "chaos-ok",
        "chaos-error",
        "chaos-panic",
    ] {
        assert!(
            so.lines()
                .any(|l| l.trim_start().starts_with(&format!("{entry} "))),
            "entry {entry} missing from the per-entry counts\n{context}"
        );
    }
    for w in 1..=2 {
        assert!(
            so.contains(&format!("  worker {w}: median RSS 2nd quarter ")),
            "no RSS verdict for worker {w}\n{context}"
        );
    }
}
