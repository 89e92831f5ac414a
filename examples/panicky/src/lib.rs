//! Panics on purpose, to exercise how the host reports a trapped task.
//!
//! `{"message": "boom"}` panics with "boom"; `{}` uses a default message.

use serde::Deserialize;
use serde_json::Value;
use wasmq_guest::{Context, TaskError};

#[derive(Deserialize)]
struct Input {
    #[serde(default = "default_message")]
    message: String,
}

fn default_message() -> String {
    "panicky task panicked on purpose".to_owned()
}

fn run(_ctx: &Context, input: Input) -> Result<Value, TaskError> {
    panic!("{}", input.message);
}

wasmq_guest::export_task!(run);
