//! Nested fan-out: a task of `depth` d spawns `fanout` children of depth
//! d - 1 (themselves `tree` tasks) and returns how many tasks its subtree
//! holds, itself included.
//!
//! `{"depth": 3, "fanout": 3}` → `{"tasks": 40}` (1 + 3 + 9 + 27): four
//! levels of durable tasks, each level waiting on the next.

use serde::{Deserialize, Serialize};
use wasmq_guest::{Context, TaskError};

#[derive(Deserialize, Serialize)]
struct Input {
    depth: u32,
    fanout: u32,
}

#[derive(Deserialize, Serialize)]
struct Output {
    tasks: u64,
}

fn run(ctx: &Context, input: Input) -> Result<Output, TaskError> {
    if input.depth == 0 {
        return Ok(Output { tasks: 1 });
    }
    let children: Vec<Input> = (0..input.fanout)
        .map(|_| Input {
            depth: input.depth - 1,
            fanout: input.fanout,
        })
        .collect();
    let below: Vec<Output> = ctx.map("tree", &children)?;
    Ok(Output {
        tasks: 1 + below.iter().map(|o| o.tasks).sum::<u64>(),
    })
}

wasmq_guest::export_task!(run);
