//! Adds two numbers: `{"a": 2, "b": 3}` → `{"sum": 5}`.
//!
//! Integers stay integers (`i64`, failing on overflow rather than wrapping);
//! if either operand has a fraction or exponent, both are added as `f64`.

use serde::{Deserialize, Serialize};
use serde_json::Number;
use wasmq_guest::{Context, TaskError};

#[derive(Deserialize)]
struct Input {
    a: Number,
    b: Number,
}

#[derive(Serialize)]
struct Output {
    sum: Number,
}

fn run(_ctx: &Context, Input { a, b }: Input) -> Result<Output, TaskError> {
    let sum = match (a.as_i64(), b.as_i64()) {
        (Some(a), Some(b)) => a
            .checked_add(b)
            .map(Number::from)
            .ok_or_else(|| TaskError::invalid_input(format!("{a} + {b} overflows i64")))?,
        // Every JSON number converts to f64 (maybe losing precision).
        _ => {
            let sum = a.as_f64().unwrap_or(f64::NAN) + b.as_f64().unwrap_or(f64::NAN);
            Number::from_f64(sum).ok_or_else(|| {
                TaskError::invalid_input(format!("{a} + {b} is not a finite number"))
            })?
        }
    };
    Ok(Output { sum })
}

wasmq_guest::export_task!(run);
