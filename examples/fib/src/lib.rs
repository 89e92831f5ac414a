//! A CPU-bound task: the `n`th Fibonacci number modulo 2^64, computed by
//! stepping the recurrence `n` times. `n` = 10^9 keeps a core busy for about
//! a second.
//!
//! `{"n": 90}` → `{"n": 90, "fib_mod_2_64": "2880067194370816120"}`; the
//! result is a string because JSON readers often hold numbers in an `f64`.

use serde::{Deserialize, Serialize};
use wasmq_guest::{Context, TaskError};

#[derive(Deserialize)]
struct Input {
    n: u64,
}

#[derive(Serialize)]
struct Output {
    n: u64,
    fib_mod_2_64: String,
}

/// Progress reports per run; each is a host call, so not one per step.
const PROGRESS_STEPS: u64 = 10;

fn run(ctx: &Context, Input { n }: Input) -> Result<Output, TaskError> {
    // (fib(i), fib(i + 1)), wrapping: there is no closed form LLVM could
    // substitute for this loop, so the work really is O(n).
    let (mut a, mut b) = (0u64, 1u64);
    let chunk = n.div_ceil(PROGRESS_STEPS).max(1);
    let mut done = 0;
    while done < n {
        let steps = chunk.min(n - done);
        for _ in 0..steps {
            (a, b) = (b, a.wrapping_add(b));
        }
        done += steps;
        let percent = (u128::from(done) * 100 / u128::from(n)) as u8;
        ctx.progress(percent, format!("{done} of {n} steps"));
    }
    Ok(Output {
        n,
        fib_mod_2_64: a.to_string(),
    })
}

wasmq_guest::export_task!(run);
