//! The worker's side of subtasks: before a run, the ledger of the children
//! the task recorded in earlier runs; after it, the children it spawned, as
//! tasks to store with its completion.

use super::config::env_u32;
use crate::runtime::subtasks::{
    ChildDefaults, ChildEnd, DEFAULT_MAX_CHILDREN, DEFAULT_MAX_DEPTH, KnownChild,
    MAX_CHILD_INPUT_BYTES, MAX_SPAWN_BYTES_PER_RUN, Spawn, SubtaskPlan, child_id, spawn_digest,
};
use crate::runtime::{Maxima, Outcome, RunReport, TaskErrorKind};
use crate::store::{
    AnyStore, ChildKey, ChildRecord, ClaimedTask, ModuleRecord, NewTask, Store, StoreError,
    TaskLimits, TaskState,
};
use std::collections::HashMap;
use std::sync::OnceLock;

/// Most bytes of children's results one run of a parent is handed (the
/// replay holds them all in the worker's memory).
pub const MAX_LEDGER_RESULT_BYTES: usize = 64 * 1024 * 1024;

/// Bounds on fan-out: `WASMQ_MAX_CHILDREN` (children per task) and
/// `WASMQ_MAX_DEPTH` (nesting), read once.
pub fn bounds() -> (u32, u32) {
    static BOUNDS: OnceLock<(u32, u32)> = OnceLock::new();
    *BOUNDS.get_or_init(|| {
        (
            env_u32("WASMQ_MAX_CHILDREN").unwrap_or(DEFAULT_MAX_CHILDREN),
            env_u32("WASMQ_MAX_DEPTH").unwrap_or(DEFAULT_MAX_DEPTH),
        )
    })
}

/// The plan of `task`'s run: its ledger (read only when it has children)
/// and what its children inherit. An outcome ends the run unrun: the
/// database could not be read (a host error, retried), or the ledger is
/// over [`MAX_LEDGER_RESULT_BYTES`].
pub async fn plan_for(
    store: &AnyStore,
    task: &ClaimedTask,
    maxima: Maxima,
) -> Result<SubtaskPlan, Outcome> {
    let known = if task.children > 0 {
        let records = store
            .child_ledger(task.id)
            .await
            .map_err(|e| Outcome::HostError {
                message: format!("reading the task's children: {e}"),
            })?;
        ledger(records)?
    } else {
        Vec::new()
    };
    let (max_children, max_depth) = bounds();
    Ok(SubtaskPlan {
        parent_id: task.id,
        depth: task.depth,
        max_children,
        max_depth,
        defaults: ChildDefaults {
            queue: task.queue.clone(),
            priority: task.priority,
            max_attempts: task.max_attempts,
            fuel: task.limits.fuel,
            memory_bytes: task.limits.memory_bytes,
            timeout_ms: task.limits.timeout_ms,
        },
        known,
        maxima,
    })
}

/// The runtime's view of the recorded children.
pub fn ledger(records: Vec<ChildRecord>) -> Result<Vec<KnownChild>, Outcome> {
    let mut bytes = 0usize;
    records
        .into_iter()
        .map(|r| {
            bytes += r.result.as_ref().map_or(0, String::len);
            if bytes > MAX_LEDGER_RESULT_BYTES {
                return Err(Outcome::TaskError {
                    error_kind: TaskErrorKind::Permanent,
                    message: format!(
                        "the results of this task's children total more than \
                         {MAX_LEDGER_RESULT_BYTES} bytes, more than one run may hold: \
                         have children return less (a reference to where the data is)"
                    ),
                    details: None,
                });
            }
            let end = match r.state {
                TaskState::Succeeded => Some(ChildEnd::Succeeded {
                    result: r.result.unwrap_or_else(|| "null".into()),
                }),
                TaskState::Failed | TaskState::Cancelled => Some(ChildEnd::Failed {
                    task_state: r.state.as_str().to_owned(),
                    error_kind: r.error_kind,
                    message: r.error_message,
                }),
                _ => None,
            };
            Ok(KnownChild {
                seq: r.seq,
                id: r.id,
                digest: r.digest,
                end,
            })
        })
        .collect()
}

/// The run's spawns as tasks to store with its completion. A spawn naming a
/// module that is not stored fails the parent (permanently: its code names
/// a module that does not exist) and nothing is stored; a database error
/// is a host error, which the retry policy may retry.
pub async fn resolve(
    store: &AnyStore,
    task: &ClaimedTask,
    mut report: RunReport,
) -> (RunReport, Vec<NewTask>) {
    let spawns = std::mem::take(&mut report.spawns);
    if spawns.is_empty() {
        return (report, Vec::new());
    }
    // A report from a Ray job crossed its logs: hold it to what the
    // runtime would have produced before storing anything of it.
    if let Err(why) = check_spawns(task, &spawns) {
        report.outcome = Outcome::HostError {
            message: format!("the run's report of its children is not valid: {why}"),
        };
        report.suspension = None;
        report.output = None;
        return (report, Vec::new());
    }
    let mut modules: HashMap<&str, ModuleRecord> = HashMap::new();
    for spawn in &spawns {
        if modules.contains_key(spawn.module.as_str()) {
            continue;
        }
        let (name, version) = match spawn.module.split_once('@') {
            Some((n, v)) => (n, Some(v)),
            None => (spawn.module.as_str(), None),
        };
        match store.resolve_module(name, version).await {
            Ok(m) => {
                modules.insert(&spawn.module, m);
            }
            Err(e) => {
                report.outcome = match e {
                    StoreError::NotFound { .. } | StoreError::InvalidArgument(_) => {
                        Outcome::TaskError {
                            error_kind: TaskErrorKind::Permanent,
                            message: format!(
                                "spawn #{} names module `{}`, which is not stored: {e}",
                                spawn.seq, spawn.module
                            ),
                            details: None,
                        }
                    }
                    other => Outcome::HostError {
                        message: format!("storing the task's children: {other}"),
                    },
                };
                report.suspension = None;
                report.output = None;
                return (report, Vec::new());
            }
        }
    }
    let tasks = spawns
        .iter()
        .map(|s| child_task(task, &modules[s.module.as_str()], s))
        .collect();
    (report, tasks)
}

/// What the runtime guarantees of its spawns, checked again.
fn check_spawns(task: &ClaimedTask, spawns: &[Spawn]) -> Result<(), String> {
    let (max_children, max_depth) = bounds();
    if task.depth + 1 > max_depth {
        return Err(format!("children at depth {} are too deep", task.depth + 1));
    }
    let mut bytes = 0usize;
    for s in spawns {
        bytes += s.input.len();
        if s.seq >= max_children
            || s.id != child_id(task.id, s.seq)
            || s.digest != spawn_digest(&s.module, &s.input)
            || s.input.len() > MAX_CHILD_INPUT_BYTES
            || bytes > MAX_SPAWN_BYTES_PER_RUN
            || serde_json::from_str::<serde::de::IgnoredAny>(&s.input).is_err()
        {
            return Err(format!("spawn #{} does not match what was asked", s.seq));
        }
    }
    Ok(())
}

fn child_task(parent: &ClaimedTask, module: &ModuleRecord, s: &Spawn) -> NewTask {
    NewTask {
        id: s.id,
        queue: s.queue.clone(),
        priority: s.priority,
        max_attempts: s.max_attempts,
        limits: TaskLimits {
            fuel: s.fuel,
            memory_bytes: s.memory_bytes,
            timeout_ms: s.timeout_ms,
        },
        parent_id: Some(parent.id),
        child: Some(ChildKey {
            seq: s.seq,
            digest: s.digest.clone(),
            depth: parent.depth + 1,
            awaited: s.awaited,
        }),
        ..NewTask::new(module, s.input.clone())
    }
}
