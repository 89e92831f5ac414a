//! Write wasmq tasks in Rust.
//!
//! A wasmq task is a WebAssembly component that implements the `task` world of
//! the `wasmq:task@0.1.1` WIT package: the host hands it its input as JSON
//! text and gets JSON text back, or a `task-error` that says whether retrying
//! could help. This crate hides that plumbing. You write one function over
//! your own [`serde`] types and export it with [`export_task!`]:
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use wasmq_guest::{Context, TaskError};
//!
//! #[derive(Deserialize)]
//! struct In {
//!     name: String,
//! }
//!
//! #[derive(Serialize)]
//! struct Out {
//!     greeting: String,
//! }
//!
//! fn run(ctx: &Context, input: In) -> Result<Out, TaskError> {
//!     if input.name.is_empty() {
//!         return Err(TaskError::invalid_input("`name` must not be empty"));
//!     }
//!     ctx.log_info(format!("greeting {} (attempt {})", input.name, ctx.attempt()));
//!     Ok(Out {
//!         greeting: format!("Hello, {}!", input.name),
//!     })
//! }
//!
//! wasmq_guest::export_task!(run);
//! ```
//!
//! # What the SDK does for you
//!
//! - **Input**: the JSON text is deserialized into your input type. If that
//!   fails, the task fails with [`ErrorKind::InvalidInput`] and serde_json's
//!   message, e.g. ``invalid input: missing field `name` at line 1 column 2``,
//!   without calling your function.
//! - **Output**: your output value is serialized to JSON. If that fails, the
//!   task fails with [`ErrorKind::Permanent`].
//! - **Errors**: return a [`TaskError`] (or any error type that converts
//!   into one) built with [`TaskError::permanent`], [`TaskError::retryable`] or
//!   [`TaskError::invalid_input`]; the host's retry policy keys on its kind.
//! - **Host services**: [`Context`] gives the task's id, attempt number,
//!   queue and deadline, and sends logs and progress to the host. Long tasks
//!   should poll [`Context::is_cancelled`] and stop early.
//!   [`Context::config`] reads the secrets the operator granted the module.
//! - **Subtasks**: [`Context::spawn`], [`Context::wait`] and [`Context::map`]
//!   fan work out to durable child tasks; see [`subtasks`] for how a wait
//!   suspends the task and what must be deterministic.
//! - **Panics** are not caught: a panic aborts the instance, which the host
//!   sees as a trap. The standard panic message still goes to stderr, which
//!   the host attaches to the failure, and the SDK also sends it to the host
//!   as an error-level log line.
//!
//! # Building
//!
//! A task is a `cdylib` built for the `wasm32-wasip2` target, whose output is
//! a component already:
//!
//! ```toml
//! [package]
//! name = "hello"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! serde = { version = "1", features = ["derive"] }
//! wasmq-guest = { path = "../guest-sdk" }
//! ```
//!
//! ```sh
//! rustup target add wasm32-wasip2
//! cargo build --release --target wasm32-wasip2
//! wasmq run target/wasm32-wasip2/release/hello.wasm --input '{"name": "Ada"}'
//! ```
//!
//! `cargo component build --release` works as well. The crate also compiles
//! for native targets, so `cargo check`, `cargo clippy` and `cargo test` work
//! as usual; [`testing::TestContext`] runs a task function natively with a
//! chosen input and attempt, and records its logs, progress and cancellation
//! checks (a [`Context`] outside a component and outside a test has no host
//! to call).

#![warn(missing_docs)]

// The bindings and export macros name this crate by path (see
// `runtime_path` below); this makes the same path resolve inside the crate.
extern crate self as wasmq_guest;

mod context;
mod error;
pub mod subtasks;
pub mod testing;

pub use context::{Context, LogLevel};
pub use error::{ErrorKind, TaskError};
pub use subtasks::{Child, SpawnOptions};

/// Raw bindings generated from `wit/task.wit`. Use [`Context`] and
/// [`export_task!`] instead.
#[doc(hidden)]
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "task",
        path: "wit",
        // Task crates depend on this crate only, so everything the export
        // macro expands to has to be reachable through it.
        runtime_path: "wasmq_guest::__private::rt",
        pub_export_macro: true,
        export_macro_name: "export_raw",
        default_bindings_module: "wasmq_guest::bindings",
    });
}

/// Bindings of `wasi:config/store`, through which [`Context::config`]
/// reads granted secrets. A component imports it only if it calls that.
#[doc(hidden)]
#[allow(missing_docs)]
pub mod config_bindings {
    wit_bindgen::generate!({
        world: "wasi:config/imports",
        path: "wit",
    });
}

/// Exports a function as the task's `run`.
///
/// The function has the shape
/// `fn(&Context, I) -> Result<O, E>` where `I: DeserializeOwned`,
/// `O: Serialize` and `E: Into<TaskError>`. Use the macro once per crate.
///
/// ```no_run
/// # use wasmq_guest::{Context, TaskError};
/// fn run(_ctx: &Context, n: u64) -> Result<u64, TaskError> {
///     n.checked_mul(2)
///         .ok_or_else(|| TaskError::invalid_input("n is too large"))
/// }
///
/// wasmq_guest::export_task!(run);
/// ```
#[macro_export]
macro_rules! export_task {
    ($run:path) => {
        const _: () = {
            struct WasmqTask;

            impl $crate::bindings::Guest for WasmqTask {
                fn run(
                    input: ::std::string::String,
                ) -> ::core::result::Result<::std::string::String, $crate::bindings::TaskError>
                {
                    $crate::__private::run(&input, $run)
                }
            }

            $crate::bindings::export_raw! { WasmqTask with_types_in $crate::bindings }
        };
    };
}

/// Support for [`export_task!`]; not public API.
#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen::rt;

    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use crate::bindings::wasmq::task::types as wit;
    use crate::{Context, TaskError};

    /// The body of the exported `run`: JSON in, the task, JSON out.
    pub fn run<I, O, E>(
        input: &str,
        task: impl FnOnce(&Context, I) -> Result<O, E>,
    ) -> Result<String, wit::TaskError>
    where
        I: DeserializeOwned,
        O: Serialize,
        E: Into<TaskError>,
    {
        crate::panic::install_hook();
        run_json(&Context::new(), input, task).map_err(Into::into)
    }

    /// JSON in, the task, JSON out, under `ctx`: what a component's `run`
    /// does, and what [`crate::testing::TestContext::run_json`] runs natively.
    pub(crate) fn run_json<I, O, E>(
        ctx: &Context,
        input: &str,
        task: impl FnOnce(&Context, I) -> Result<O, E>,
    ) -> Result<String, TaskError>
    where
        I: DeserializeOwned,
        O: Serialize,
        E: Into<TaskError>,
    {
        let input = serde_json::from_str(input).map_err(TaskError::from)?;
        let output = task(ctx, input).map_err(Into::into)?;
        serde_json::to_string(&output)
            .map_err(|e| TaskError::permanent(format!("task output could not be serialized: {e}")))
    }
}

mod panic {
    /// Forwards panic messages to the host's log as well as to stderr.
    ///
    /// The previous (default) hook runs first so the stderr report that the
    /// host attaches to the trap is written even if logging fails.
    pub(crate) fn install_hook() {
        // Host imports only exist inside a component; natively they are stubs.
        #[cfg(target_family = "wasm")]
        {
            static INSTALLED: std::sync::Once = std::sync::Once::new();
            INSTALLED.call_once(|| {
                let previous = std::panic::take_hook();
                std::panic::set_hook(Box::new(move |info| {
                    previous(info);
                    crate::bindings::wasmq::task::host::log(
                        crate::bindings::wasmq::task::types::LogLevel::Error,
                        &format!("task {info}"),
                    );
                }));
            });
        }
    }
}
