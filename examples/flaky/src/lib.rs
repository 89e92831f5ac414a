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

/// Native unit tests: `cargo test -p flaky` in `examples/` (no host needed).
#[cfg(test)]
mod tests {
    use super::*;
    use wasmq_guest::ErrorKind;
    use wasmq_guest::testing::TestContext;

    #[test]
    fn fails_retryably_until_its_attempt_then_succeeds() {
        let input = r#"{"succeed_on_attempt": 2}"#;
        let first = TestContext::new().run_json(run, input);
        let err = first.error();
        assert_eq!(err.kind(), ErrorKind::Retryable);
        assert_eq!(
            err.message(),
            "attempt 1 of 3: not yet (succeeds on attempt 2)"
        );
        assert_eq!(
            first.logs[0].message,
            "flaky: attempt 1, succeeding on attempt 2"
        );

        let second = TestContext::new().attempt(2).run_json(run, input);
        assert_eq!(second.output(), r#"{"attempt":2}"#);
    }
}
