//! wasmq: background tasks as sandboxed WebAssembly components, queued in SQL.
//!
//! Modules, from the bottom up (dependencies point one way):
//! - [`runtime`]: the wasmtime engine, limits, module caches; runs one task.
//! - [`store`]: the database (SQLite, PostgreSQL) behind one interface.
//! - [`worker`]: the leasing loop and executors (uses runtime and store).
//! - [`client`]: the Rust API to push, enqueue, follow and steer tasks.
//! - [`cli`]: the `wasmq` command line.

pub mod cli;
pub mod client;
pub mod runtime;
pub mod store;
pub mod worker;
