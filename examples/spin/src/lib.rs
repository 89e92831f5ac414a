//! Never returns: a busy loop that does not call the host, so only
//! preemption (epoch interruption or fuel) can stop it. Any input is accepted.

use std::hint::black_box;

use serde_json::Value;
use wasmq_guest::{Context, TaskError};

fn run(_ctx: &Context, _input: Value) -> Result<Value, TaskError> {
    // `black_box` keeps the optimizer from proving the loop side-effect free
    // and deleting it.
    let mut counter = 0u64;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}

wasmq_guest::export_task!(run);
