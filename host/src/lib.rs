//! wasmq: background tasks as sandboxed WebAssembly components, queued in SQL.
//!
//! Modules, from the bottom up (dependencies point one way):
//! - [`runtime`]: the wasmtime engine, limits, module caches; runs one task.
//! - [`store`]: the database (SQLite, PostgreSQL) behind one interface.
//! - [`worker`]: the leasing loop and executors (uses runtime and store).
//! - [`client`]: the Rust API to push, enqueue, follow and steer tasks.
//! - [`api`]: the HTTP API, `/metrics` and the web dashboard (`wasmq serve`).
//! - [`cli`]: the `wasmq` command line.
//!
//! [`metrics`] is the process-wide Prometheus registry that the worker and
//! the API both update.

pub mod api;
pub mod cli;
pub mod client;
pub mod metrics;
pub mod runtime;
pub mod store;
pub mod worker;
