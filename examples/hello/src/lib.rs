//! The smallest useful task: `{"name": "Ada"}` → `{"greeting": "Hello, Ada!"}`.
//!
//! It is the latency benchmark, so it does nothing but the work: no logging,
//! no context lookup.

use serde::{Deserialize, Serialize};
use wasmq_guest::{Context, TaskError};

#[derive(Deserialize)]
struct Input {
    name: String,
}

#[derive(Serialize)]
struct Output {
    greeting: String,
}

fn run(_ctx: &Context, input: Input) -> Result<Output, TaskError> {
    Ok(Output {
        greeting: format!("Hello, {}!", input.name),
    })
}

wasmq_guest::export_task!(run);
