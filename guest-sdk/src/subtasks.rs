//! Durable fan-out: spawn child tasks and wait for their results.
//!
//! Children are tasks of their own, stored by the host: queued, retried and
//! cancelled like any other, and durable. A wait whose children are not done
//! yet ends the run there (the task is `waiting`, holding no worker), and the
//! task runs again *from the start* once they are. On that run every spawn
//! returns the child it made the first time (children are keyed by the order
//! of the spawn calls) and a wait returns the stored results at once.
//!
//! So **everything a task does before a wait must be deterministic**: the
//! same spawns, in the same order, with the same modules and inputs (no
//! clock, no randomness, no iteration over a `HashMap` in them). A spawn that
//! differs from the first run's ends the task with a permanent
//! `non-deterministic` error that names the call. Work done before a wait
//! runs again on every resume, so keep it cheap; logs and progress are those
//! of each run. A resume is not a new attempt.
//!
//! ```no_run
//! use wasmq_guest::{Context, TaskError};
//!
//! #[derive(serde::Deserialize)]
//! struct In { chunks: Vec<String> }
//!
//! fn run(ctx: &Context, input: In) -> Result<u64, TaskError> {
//!     let inputs: Vec<_> = input.chunks.iter().map(|c| serde_json::json!({ "text": c })).collect();
//!     let counts: Vec<u64> = ctx.map("count-words", &inputs)?;
//!     Ok(counts.iter().sum())
//! }
//! # wasmq_guest::export_task!(run);
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::wasmq::task::subtasks as wit;
use crate::{Context, TaskError};

/// A spawned child task.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Child {
    /// The child task's id: the same on every run of the parent.
    pub id: String,
    /// Its key: the number of the spawn, from 0 in call order.
    pub seq: u32,
}

impl From<wit::Child> for Child {
    fn from(c: wit::Child) -> Self {
        Child {
            id: c.id,
            seq: c.seq,
        }
    }
}

impl From<&Child> for wit::Child {
    fn from(c: &Child) -> Self {
        wit::Child {
            id: c.id.clone(),
            seq: c.seq,
        }
    }
}

/// What a child gets; every field left unset is inherited from the parent.
/// The host refuses limits above what its workers allow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpawnOptions {
    /// The queue the child goes to.
    pub queue: Option<String>,
    /// -100..=100, higher runs first.
    pub priority: Option<i16>,
    /// Attempts before the child fails for good.
    pub max_attempts: Option<u32>,
    /// Fuel units; 0 means unlimited (where the worker allows it).
    pub fuel: Option<u64>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// Wall-clock limit in milliseconds.
    pub timeout_ms: Option<u64>,
}

impl SpawnOptions {
    fn to_wit(&self) -> wit::SpawnOptions {
        wit::SpawnOptions {
            queue: self.queue.clone(),
            priority: self.priority,
            max_attempts: self.max_attempts,
            fuel: self.fuel,
            memory_bytes: self.memory_bytes,
            timeout_ms: self.timeout_ms,
        }
    }
}

fn to_json(value: &impl Serialize) -> Result<String, TaskError> {
    serde_json::to_string(value)
        .map_err(|e| TaskError::permanent(format!("child input could not be serialized: {e}")))
}

/// A child's JSON output as `O`; a child whose output does not fit `O` fails
/// the parent (permanently: it would not fit on a retry either).
fn from_json<O: DeserializeOwned>(child: usize, text: &str) -> Result<O, TaskError> {
    serde_json::from_str(text).map_err(|e| {
        TaskError::permanent(format!(
            "the output of child {child} does not have the expected shape: {e}"
        ))
    })
}

/// The host's results of children as the caller's values.
fn child_results<O: DeserializeOwned>(
    results: Vec<Result<String, crate::bindings::wasmq::task::types::TaskError>>,
) -> impl Iterator<Item = Result<O, TaskError>> {
    results.into_iter().enumerate().map(|(i, r)| match r {
        Ok(text) => from_json(i, &text),
        Err(e) => Err(TaskError::from(e)),
    })
}

/// Outside a component (a native test) there is no host to spawn on.
fn native() -> TaskError {
    TaskError::permanent(
        "subtasks need the wasmq host: they cannot run natively (test the parent's logic \
         around them, and each child's task on its own)",
    )
}

impl Context {
    /// Spawns a child task running `module` (`name` or `name@version`) with
    /// `input`, inheriting this task's queue, priority, attempts and limits.
    pub fn spawn(&self, module: &str, input: &impl Serialize) -> Result<Child, TaskError> {
        self.spawn_with(module, input, &SpawnOptions::default())
    }

    /// [`spawn`](Self::spawn) with options.
    pub fn spawn_with(
        &self,
        module: &str,
        input: &impl Serialize,
        options: &SpawnOptions,
    ) -> Result<Child, TaskError> {
        if self.is_native() {
            return Err(native());
        }
        wit::spawn(module, &to_json(input)?, &options.to_wit())
            .map(Child::from)
            .map_err(TaskError::from)
    }

    /// Spawns one child per input, in order.
    pub fn spawn_many<T: Serialize>(
        &self,
        module: &str,
        inputs: &[T],
        options: &SpawnOptions,
    ) -> Result<Vec<Child>, TaskError> {
        if self.is_native() {
            return Err(native());
        }
        let inputs = inputs.iter().map(to_json).collect::<Result<Vec<_>, _>>()?;
        wit::spawn_many(module, &inputs, &options.to_wit())
            .map(|c| c.into_iter().map(Child::from).collect())
            .map_err(TaskError::from)
    }

    /// The results of `children` in order, as JSON values, once all are
    /// done. A child that failed, ran out of a limit, trapped or was
    /// cancelled gives an error whose message starts with how it ended.
    /// If some are not done, the run ends here and the task resumes later.
    pub fn wait(&self, children: &[Child]) -> Vec<Result<serde_json::Value, TaskError>> {
        if self.is_native() {
            return children.iter().map(|_| Err(native())).collect();
        }
        let wit_children: Vec<wit::Child> = children.iter().map(wit::Child::from).collect();
        child_results(wit::wait(&wit_children)).collect()
    }

    /// Runs `module` over every input as children and returns their outputs
    /// in order; the first failed child fails the call with its error.
    pub fn map<I: Serialize, O: DeserializeOwned>(
        &self,
        module: &str,
        inputs: &[I],
    ) -> Result<Vec<O>, TaskError> {
        self.map_with(module, inputs, &SpawnOptions::default(), None)
    }

    /// [`map`](Self::map) with options, and with at most `max_running` of
    /// these children unfinished at once (the rest are spawned as earlier
    /// ones finish).
    pub fn map_with<I: Serialize, O: DeserializeOwned>(
        &self,
        module: &str,
        inputs: &[I],
        options: &SpawnOptions,
        max_running: Option<u32>,
    ) -> Result<Vec<O>, TaskError> {
        if self.is_native() {
            return Err(native());
        }
        let inputs = inputs.iter().map(to_json).collect::<Result<Vec<_>, _>>()?;
        child_results(wit::map(module, &inputs, &options.to_wit(), max_running)?).collect()
    }
}
