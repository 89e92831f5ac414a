//! Module loading and validation from arbitrary bytes: whatever is pushed,
//! the runtime says which way it is not a task module, and never panics.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::validate(data));
