//! Monte-Carlo π over durable children: `children` `pi-sample` children,
//! child `i` seeded with `seed + i`, each throwing `samples` darts.
//!
//! `{"children": 8, "samples": 100000, "seed": 1}` →
//! `{"hits": ..., "samples": 800000, "pi": 3.14...}`. Seeds are fixed per
//! child, so the result is exactly the same on every run and in every mode.

use serde::{Deserialize, Serialize};
use wasmq_guest::{Context, TaskError};

#[derive(Deserialize)]
struct Input {
    children: u32,
    samples: u64,
    #[serde(default)]
    seed: u64,
}

#[derive(Serialize)]
struct Sample {
    seed: u64,
    samples: u64,
}

#[derive(Deserialize)]
struct Hits {
    hits: u64,
}

#[derive(Serialize)]
struct Output {
    hits: u64,
    samples: u64,
    pi: f64,
}

fn run(ctx: &Context, input: Input) -> Result<Output, TaskError> {
    if input.children == 0 {
        return Err(TaskError::invalid_input("children must be at least 1"));
    }
    let jobs: Vec<Sample> = (0..u64::from(input.children))
        .map(|i| Sample {
            seed: input.seed.wrapping_add(i),
            samples: input.samples,
        })
        .collect();
    let results: Vec<Hits> = ctx.map("pi-sample", &jobs)?;
    let hits: u64 = results.iter().map(|h| h.hits).sum();
    let samples = input.samples * u64::from(input.children);
    Ok(Output {
        hits,
        samples,
        pi: 4.0 * hits as f64 / samples as f64,
    })
}

wasmq_guest::export_task!(run);
