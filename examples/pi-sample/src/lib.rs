//! Throws `samples` darts at the unit square from a fixed `seed` and counts
//! those inside the quarter circle: `{"seed": 7, "samples": 100000}` →
//! `{"hits": 78512, "samples": 100000}`. The child of [`pi`](../pi).
//!
//! The generator is SplitMix64, so the result is exactly known for a seed:
//! a point is `(next() >> 11, next() >> 11)` scaled to [0, 1), inside when
//! `x² + y² < 1`.

use serde::{Deserialize, Serialize};
use wasmq_guest::{Context, TaskError};

#[derive(Deserialize)]
struct Input {
    seed: u64,
    samples: u64,
}

#[derive(Serialize)]
struct Output {
    hits: u64,
    samples: u64,
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A float in [0, 1) from the top 53 bits.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn run(_ctx: &Context, input: Input) -> Result<Output, TaskError> {
    let mut rng = SplitMix64(input.seed);
    let mut hits = 0;
    for _ in 0..input.samples {
        let (x, y) = (rng.unit(), rng.unit());
        if x * x + y * y < 1.0 {
            hits += 1;
        }
    }
    Ok(Output {
        hits,
        samples: input.samples,
    })
}

wasmq_guest::export_task!(run);
