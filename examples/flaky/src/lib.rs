//! Fails with a retryable error until a given attempt, then succeeds: the
//! fixture for the host's retry policy.
//!
//! `{"succeed_on_attempt": 3}` → attempts 1 and 2 fail (retryable), attempt 3
//! returns `{"attempt": 3}`.

use serde::{Deserialize, Serialize};
use wasmq_guest::{Context, TaskError};

#[derive(Deserialize)]
struct Input {
    #[serde(default = "default_succeed_on_attempt")]
    succeed_on_attempt: u32,
}

fn default_succeed_on_attempt() -> u32 {
    3
}

#[derive(Serialize)]
struct Output {
    attempt: u32,
}

fn run(ctx: &Context, input: Input) -> Result<Output, TaskError> {
    let attempt = ctx.attempt();
    // One log line per attempt: stored with the attempt, shown by
    // `wasmq task show` and the dashboard.
    ctx.log_info(format!(
        "flaky: attempt {attempt}, succeeding on attempt {}",
        input.succeed_on_attempt
    ));
    if attempt < input.succeed_on_attempt {
        return Err(TaskError::retryable(format!(
            "attempt {attempt} of {}: not yet (succeeds on attempt {})",
            ctx.max_attempts(),
            input.succeed_on_attempt
        ))
        .with_details(serde_json::json!({ "attempt": attempt })));
    }
    Ok(Output { attempt })
}

wasmq_guest::export_task!(run);
