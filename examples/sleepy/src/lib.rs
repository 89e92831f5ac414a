//! Sleeps, to exercise timeouts and cancellation of a guest that is blocked
//! in a host call rather than computing.
//!
//! `{"ms": 500}` → `{"slept_ms": 500}`. With `"cooperative": true` it sleeps
//! in 10 ms steps and gives up with a permanent "cancelled" error as soon as
//! the host asks it to stop.

use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wasmq_guest::{Context, TaskError};

#[derive(Deserialize)]
struct Input {
    ms: u64,
    #[serde(default)]
    cooperative: bool,
}

#[derive(Serialize)]
struct Output {
    slept_ms: u64,
}

const STEP: Duration = Duration::from_millis(10);

fn run(ctx: &Context, input: Input) -> Result<Output, TaskError> {
    let total = Duration::from_millis(input.ms);
    if !input.cooperative {
        thread::sleep(total);
        return Ok(Output { slept_ms: input.ms });
    }

    let start = Instant::now();
    loop {
        let elapsed = start.elapsed();
        if elapsed >= total {
            break;
        }
        if ctx.is_cancelled() {
            return Err(TaskError::permanent(format!(
                "cancelled after {} ms",
                elapsed.as_millis()
            )));
        }
        thread::sleep(STEP.min(total - elapsed));
    }
    Ok(Output { slept_ms: input.ms })
}

wasmq_guest::export_task!(run);

/// Native unit tests: `cargo test -p sleepy` in `examples/` (no host needed).
#[cfg(test)]
mod tests {
    use super::*;
    use wasmq_guest::testing::TestContext;

    #[test]
    fn a_cooperative_sleep_stops_when_cancelled() {
        let input = Input {
            ms: 10_000,
            cooperative: true,
        };
        let run = TestContext::new().cancelled_after(3).run(run, input);
        let err = run.error();
        assert!(err.message().starts_with("cancelled after"), "{err:?}");
        assert_eq!(
            run.cancel_checks, 4,
            "stopped at the first check that said so"
        );
    }
}
