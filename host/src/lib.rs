//! wasmq: background tasks as sandboxed WebAssembly components, queued in SQL.
//!
//! Modules, from the bottom up (dependencies point one way):
//! - [`runtime`]: the wasmtime engine, limits, module caches; runs one task.
//! - `store`: the database (SQLite, PostgreSQL) behind one interface.
//! - [`cli`]: the `wasmq` command line.

pub mod cli;
pub mod runtime;
