//! The fan-out benchmark's parent: maps `add` over `count` children
//! (`{"a": i, "b": i}` for i in 0..count) and returns how many there were
//! and the sum of their sums.
//!
//! `{"count": 1000}` → `{"children": 1000, "sum": 999000}`; with
//! `"max_running": 50`, at most 50 of them are unfinished at once. With
//! `"sleep_ms": 200` the children are `sleepy` tasks of that length instead
//! and `sum` adds up the time they slept (for tests that need a fan-out to
//! take a while).

use serde::{Deserialize, Serialize};
use wasmq_guest::{Context, SpawnOptions, TaskError};

#[derive(Deserialize)]
struct Input {
    count: u32,
    max_running: Option<u32>,
    sleep_ms: Option<u64>,
}

#[derive(Serialize)]
struct Sleep {
    ms: u64,
}

#[derive(Deserialize)]
struct Slept {
    slept_ms: u64,
}

#[derive(Serialize)]
struct Pair {
    a: u64,
    b: u64,
}

#[derive(Deserialize)]
struct Sum {
    sum: u64,
}

#[derive(Serialize)]
struct Output {
    children: u32,
    sum: u64,
}

fn run(ctx: &Context, input: Input) -> Result<Output, TaskError> {
    let options = SpawnOptions::default();
    if let Some(ms) = input.sleep_ms {
        let sleeps: Vec<Sleep> = (0..input.count).map(|_| Sleep { ms }).collect();
        let slept: Vec<Slept> = ctx.map_with("sleepy", &sleeps, &options, input.max_running)?;
        return Ok(Output {
            children: input.count,
            sum: slept.iter().map(|s| s.slept_ms).sum(),
        });
    }
    let pairs: Vec<Pair> = (0..u64::from(input.count))
        .map(|i| Pair { a: i, b: i })
        .collect();
    let sums: Vec<Sum> =
        ctx.map_with("add", &pairs, &options, input.max_running)?;
    Ok(Output {
        children: input.count,
        sum: sums.iter().map(|s| s.sum).sum(),
    })
}

wasmq_guest::export_task!(run);
