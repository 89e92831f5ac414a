//! `wasmq_guest::testing`: a task function run natively, as the component
//! would run it, with what it sent to the host recorded.

use serde::{Deserialize, Serialize};
use wasmq_guest::testing::{LogLine, Progress, TestContext};
use wasmq_guest::{Context, ErrorKind, LogLevel, TaskError};

#[derive(Deserialize)]
struct In {
    items: u32,
}

#[derive(Serialize)]
struct Out {
    done: u32,
    attempt: u32,
    task: String,
    queue: String,
    last: bool,
}

fn work(ctx: &Context, input: In) -> Result<Out, TaskError> {
    let mut done = 0;
    for i in 0..input.items {
        if ctx.is_cancelled() {
            return Err(TaskError::permanent(format!("cancelled after {done}")));
        }
        done += 1;
        ctx.progress((100 * (i + 1) / input.items) as u8, format!("item {i}"));
    }
    ctx.log(LogLevel::Warn, "done");
    Ok(Out {
        done,
        attempt: ctx.attempt(),
        task: ctx.task_id().to_owned(),
        queue: ctx.queue().to_owned(),
        last: ctx.is_last_attempt(),
    })
}

#[test]
fn records_logs_progress_and_identity() {
    let run = TestContext::new()
        .task_id("t-1")
        .queue("reports")
        .attempt(3)
        .max_attempts(3)
        .run(work, In { items: 2 });
    let out = run.output();
    assert_eq!(
        (
            out.done,
            out.attempt,
            out.task.as_str(),
            out.queue.as_str(),
            out.last
        ),
        (2, 3, "t-1", "reports", true)
    );
    assert_eq!(
        run.progress,
        [
            Progress {
                percent: 50,
                message: "item 0".into()
            },
            Progress {
                percent: 100,
                message: "item 1".into()
            }
        ]
    );
    assert_eq!(
        run.logs,
        [LogLine {
            level: LogLevel::Warn,
            message: "done".into()
        }]
    );
    assert_eq!(run.cancel_checks, 2);
}

#[test]
fn cancellation_arrives_after_the_chosen_number_of_checks() {
    let run = TestContext::new()
        .cancelled_after(1)
        .run(work, In { items: 5 });
    assert_eq!(run.error().message(), "cancelled after 1");
    assert_eq!(run.cancel_checks, 2);
    let run = TestContext::new()
        .cancelled_after(0)
        .run(work, In { items: 5 });
    assert_eq!(run.error().message(), "cancelled after 0");
}

#[test]
fn run_json_takes_the_components_path() {
    let ok = TestContext::new().run_json(work, r#"{"items": 1}"#);
    let out: serde_json::Value = serde_json::from_str(ok.output()).unwrap();
    assert_eq!(
        (out["done"].as_u64(), out["attempt"].as_u64()),
        (Some(1), Some(1))
    );

    let bad = TestContext::new().run_json(work, r#"{"items": "x"}"#);
    let err = bad.error();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(bad.progress.is_empty(), "the task was not called");
}

#[test]
fn progress_is_clamped_as_the_host_clamps_it() {
    let run = TestContext::new().run(
        |ctx: &Context, ()| -> Result<(), TaskError> {
            ctx.progress(250, "over");
            Ok(())
        },
        (),
    );
    assert_eq!(run.progress[0].percent, 100);
}

#[test]
fn a_deadline_is_reported() {
    let run = TestContext::new()
        .timeout(std::time::Duration::from_secs(60))
        .run(
            |ctx: &Context, ()| -> Result<u64, TaskError> {
                Ok(ctx.time_remaining().unwrap().as_secs())
            },
            (),
        );
    let left = *run.output();
    assert!((55..=60).contains(&left), "{left}");
}

#[test]
fn config_answers_what_the_test_granted() {
    fn bearer(ctx: &Context, name: String) -> Result<String, TaskError> {
        let token = ctx
            .config(&name)
            .ok_or_else(|| TaskError::permanent(format!("{name} is not granted")))?;
        Ok(format!("Bearer {token}"))
    }
    let granted = TestContext::new()
        .config("api-token", "old")
        .config("api-token", "t0k3n")
        .run(bearer, "api-token".to_string());
    assert_eq!(
        granted.output(),
        "Bearer t0k3n",
        "the last value given wins"
    );
    let missing = TestContext::new().run(bearer, "api-token".to_string());
    assert_eq!(missing.error().kind(), ErrorKind::Permanent);
}
