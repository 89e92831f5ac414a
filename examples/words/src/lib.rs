//! Counts the words of a text: `{"text": "a b a"}` → `{"counts": {"a": 2, "b": 1}}`.
//! The map step of [`wordcount`](../wordcount). Words are runs of
//! alphanumeric characters, lowercased.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use wasmq_guest::{Context, TaskError};

#[derive(Deserialize)]
struct Input {
    text: String,
}

#[derive(Serialize)]
struct Output {
    counts: BTreeMap<String, u64>,
}

fn run(_ctx: &Context, input: Input) -> Result<Output, TaskError> {
    let mut counts = BTreeMap::new();
    for word in input
        .text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        *counts.entry(word.to_lowercase()).or_insert(0) += 1;
    }
    Ok(Output { counts })
}

wasmq_guest::export_task!(run);
