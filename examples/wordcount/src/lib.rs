//! Map-reduce word count over durable children: the text is cut into
//! chunks of `lines_per_chunk` lines, each chunk counted by a `words` child,
//! and the counts merged here.
//!
//! `{"text": "...", "lines_per_chunk": 2}` →
//! `{"chunks": 3, "words": 12, "distinct": 5, "top": [["the", 4], ...]}`
//! (`top`: the ten most frequent words, ties in alphabetical order).
//!
//! The chunks, and so the children, depend only on the input: the same
//! children on every run, as a task that waits must spawn them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use wasmq_guest::{Context, SpawnOptions, TaskError};

#[derive(Deserialize)]
struct Input {
    text: String,
    #[serde(default = "default_lines")]
    lines_per_chunk: usize,
    /// Children unfinished at once (default: all).
    max_running: Option<u32>,
}

fn default_lines() -> usize {
    100
}

#[derive(Serialize)]
struct Chunk<'a> {
    text: &'a str,
}

#[derive(Deserialize)]
struct Counts {
    counts: BTreeMap<String, u64>,
}

#[derive(Serialize)]
struct Output {
    chunks: usize,
    words: u64,
    distinct: usize,
    top: Vec<(String, u64)>,
}

fn run(ctx: &Context, input: Input) -> Result<Output, TaskError> {
    if input.lines_per_chunk == 0 {
        return Err(TaskError::invalid_input("lines_per_chunk must be at least 1"));
    }
    let lines: Vec<&str> = input.text.lines().collect();
    let texts: Vec<String> = lines
        .chunks(input.lines_per_chunk)
        .map(|c| c.join("\n"))
        .collect();
    let chunks: Vec<Chunk> = texts.iter().map(|t| Chunk { text: t }).collect();
    let counted: Vec<Counts> =
        ctx.map_with("words", &chunks, &SpawnOptions::default(), input.max_running)?;

    let mut total = BTreeMap::new();
    for c in counted {
        for (word, n) in c.counts {
            *total.entry(word).or_insert(0u64) += n;
        }
    }
    let words = total.values().sum();
    let distinct = total.len();
    let mut top: Vec<(String, u64)> = total.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(10);
    Ok(Output {
        chunks: chunks.len(),
        words,
        distinct,
        top,
    })
}

wasmq_guest::export_task!(run);
