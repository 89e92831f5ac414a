//! wasmq: background tasks as sandboxed WebAssembly components, queued in SQL.
//!
//! Modules, from the bottom up (dependencies point one way):
//! - [`runtime`]: the wasmtime engine, limits, module caches; runs one task.
//! - [`store`]: the database (SQLite, PostgreSQL) behind one interface.
//! - [`ray`]: a client of Ray's Job Submission REST API.
//! - [`worker`]: the leasing loop and executors, in-process or as Ray jobs
//!   (uses runtime, store and ray).
//! - [`client`]: the Rust API to push, enqueue, follow and steer tasks.
//! - [`api`]: the HTTP API, `/metrics` and the web dashboard (`wasmq serve`).
//! - [`cli`]: the `wasmq` command line.
//!
//! [`metrics`] is the process-wide Prometheus registry that the worker and
//! the API both update; [`text`] makes guest text storable and bounded for
//! the runtime and the store alike; [`kinds`] names how attempts end, for
//! the runtime, the store, the retry policy and the metrics alike; [`fuel`]
//! is a fuel budget as the CLI, the API and a stored task say it;
//! [`secrets`] seals secrets for the store and opens them for a run.

pub mod api;
pub mod cli;
pub mod client;
pub mod fuel;
pub mod kinds;
pub mod metrics;
pub mod ray;
pub mod runtime;
pub mod secrets;
pub mod store;
pub mod text;
pub mod worker;
