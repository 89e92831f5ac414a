//! Allocates memory until it runs out, to exercise the host's memory cap.
//! Any input is accepted; the task never returns normally.
//!
//! When the cap refuses to grow linear memory, Rust's allocation-failure
//! handler prints `memory allocation of N bytes failed` to stderr and aborts,
//! which the host sees as a trap.

use std::hint::black_box;

use serde_json::Value;
use wasmq_guest::{Context, TaskError};

const CHUNK: usize = 1 << 20;

fn run(_ctx: &Context, _input: Value) -> Result<Value, TaskError> {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; CHUNK];
        // Touch every page so the memory is really used, and hide the writes
        // from the optimizer so the allocation is not elided.
        for page in chunk.chunks_mut(4096) {
            page[0] = 1;
        }
        hoard.push(black_box(chunk));
    }
}

wasmq_guest::export_task!(run);
