//! A hostile task: everything it writes is what a careless or malicious
//! guest could write (NUL bytes, floods of log lines and progress reports,
//! huge error messages), so that the host's bounds and its sanitising of
//! guest text can be tested against the real thing.
//!
//! The input selects behaviours; all are off by default, so `{}` succeeds
//! with `{"chaos": "survived"}`. After the selected behaviours the task
//! succeeds with `output` (when given), or fails with a task error when
//! `nul_error`, `big_error_bytes` or `big_details_bytes` asks for one, or
//! panics when `nul_panic` or `panic_bytes` does.

use serde::Deserialize;
use serde_json::Value;
use std::io::Write;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use wasmq_guest::{Context, ErrorKind, TaskError};

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Input {
    /// Logs one line with NUL bytes in it.
    nul_log: bool,
    /// Writes a line with NUL bytes to stdout.
    nul_stdout: bool,
    /// Writes a line with NUL bytes to stderr.
    nul_stderr: bool,
    /// Writes this many bytes (NUL bytes among them) to stdout.
    stdout_bytes: u64,
    /// Logs this many empty lines.
    empty_log_lines: u64,
    /// Logs this many short non-empty lines.
    log_lines: u64,
    /// Logs one line of this many bytes.
    big_log_bytes: u64,
    /// Reports progress this many times (0 to 99 %, messages with NUL),
    /// then reports 100 % once.
    progress_flood: u64,
    /// Bytes of each progress message of the flood (at least the marker).
    progress_message_bytes: u64,
    /// Reports this percent every time in the flood instead of 0 to 99 %
    /// (100 is what a host that never throttles 100 % is weak against).
    progress_flood_percent: Option<u8>,
    /// Fails with a message (and details) with NUL bytes in them.
    nul_error: bool,
    /// Fails with a message of this many bytes (NUL bytes among them).
    big_error_bytes: u64,
    /// Fails with details of this many bytes.
    big_details_bytes: u64,
    /// The kind of the error: `permanent` (default), `retryable`,
    /// `invalid-input`.
    error_kind: Option<String>,
    /// Panics with a message with NUL bytes in it.
    nul_panic: bool,
    /// Panics with a message of this many bytes.
    panic_bytes: u64,
    /// Returned on success instead of `{"chaos": "survived"}`.
    output: Option<Value>,
    /// Returns at once with `{"leftovers": N}`: N is how many of the marks
    /// an earlier run left in this instance's memory are still there (every
    /// run leaves them). A host that resets memory between runs always
    /// reports 0.
    leftovers: bool,
}

/// Host pages (4 KiB) of scratch memory in `.bss`; `leftovers` marks one
/// byte on every other page, so that a memory reset must find many
/// separate dirty regions (the pooling allocator's page scan reports at
/// most 32 at a time, and must reset the rest another way).
const SCRATCH_PAGES: usize = 256;
static SCRATCH: [AtomicU8; SCRATCH_PAGES * 4096] =
    [const { AtomicU8::new(0) }; SCRATCH_PAGES * 4096];
/// Initialised data (`.data`, part of the memory image): a reset must put
/// the image's value back, not zero.
static IMAGE_MARK: AtomicU64 = AtomicU64::new(7);

fn leftovers() -> Value {
    let marked = (0..SCRATCH_PAGES).step_by(2).map(|p| &SCRATCH[p * 4096]);
    let mut found = marked
        .clone()
        .filter(|b| b.load(Ordering::Relaxed) != 0)
        .count();
    found += usize::from(IMAGE_MARK.load(Ordering::Relaxed) != 7);
    for b in marked {
        b.store(0xab, Ordering::Relaxed);
    }
    IMAGE_MARK.store(99, Ordering::Relaxed);
    serde_json::json!({ "leftovers": found })
}

/// `len` bytes of text, a NUL byte every 64 bytes, so that a cut anywhere
/// still has NUL bytes before it.
fn nul_text(len: u64) -> String {
    (0..len)
        .map(|i| if i % 64 == 0 { '\0' } else { 'x' })
        .collect()
}

fn run(ctx: &Context, input: Input) -> Result<Value, TaskError> {
    if input.leftovers {
        return Ok(leftovers());
    }
    if input.nul_log {
        ctx.log_info("chaos: NUL here \0 and here \0 in a log line");
    }
    if input.nul_stdout {
        println!("chaos: NUL here \0 on stdout");
    }
    if input.nul_stderr {
        eprintln!("chaos: NUL here \0 on stderr");
    }
    if input.stdout_bytes > 0 {
        let mut out = std::io::stdout().lock();
        let chunk = nul_text(4096);
        let mut left = input.stdout_bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            // The host accepts every write; a failure here would be a host bug
            // the test should see, hence the panic.
            out.write_all(&chunk.as_bytes()[..n]).expect("stdout write");
            left -= n as u64;
        }
        out.flush().expect("stdout flush");
    }
    for _ in 0..input.empty_log_lines {
        ctx.log_info("");
    }
    for i in 0..input.log_lines {
        ctx.log_info(format!("chaos: line {i}"));
    }
    if input.big_log_bytes > 0 {
        ctx.log_warn(nul_text(input.big_log_bytes));
    }
    if input.progress_flood > 0 {
        let mut message = String::from("chaos \0 progress");
        while (message.len() as u64) < input.progress_message_bytes {
            message.push_str(" \0 padding");
        }
        for i in 0..input.progress_flood {
            let percent = input
                .progress_flood_percent
                .unwrap_or((i * 100 / input.progress_flood).min(99) as u8);
            ctx.progress(percent, &message);
        }
        ctx.progress(100, "chaos: flood done");
    }
    if input.nul_panic {
        panic!("chaos: NUL here \0 in a panic");
    }
    if input.panic_bytes > 0 {
        panic!("{}", nul_text(input.panic_bytes));
    }

    let fail = input.nul_error || input.big_error_bytes > 0 || input.big_details_bytes > 0;
    if fail {
        let kind = match input.error_kind.as_deref() {
            None | Some("permanent") => ErrorKind::Permanent,
            Some("retryable") => ErrorKind::Retryable,
            Some("invalid-input") => ErrorKind::InvalidInput,
            Some(other) => {
                return Err(TaskError::invalid_input(format!(
                    "error_kind `{other}`: expected permanent, retryable or invalid-input"
                )));
            }
        };
        let mut message = String::from("chaos: NUL here \0 in an error");
        if input.big_error_bytes > 0 {
            message = nul_text(input.big_error_bytes);
        }
        let details = if input.big_details_bytes > 0 {
            serde_json::json!({ "padding": "d".repeat(input.big_details_bytes as usize) })
        } else {
            serde_json::json!({ "note": "NUL here \0 in the details" })
        };
        return Err(TaskError::new(kind, message).with_details(details));
    }
    Ok(input
        .output
        .unwrap_or_else(|| serde_json::json!({ "chaos": "survived" })))
}

wasmq_guest::export_task!(run);

#[cfg(test)]
mod tests {
    use super::*;

    /// What the host's test relies on: a second run in memory that was not
    /// reset finds every mark (128 pages and the image's value).
    #[test]
    fn leftovers_finds_every_mark_in_memory_that_was_not_reset() {
        assert_eq!(leftovers(), serde_json::json!({ "leftovers": 0 }));
        assert_eq!(leftovers(), serde_json::json!({ "leftovers": 129 }));
    }
}
