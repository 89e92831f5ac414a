//! The `subtasks` interface: spawning child tasks and waiting for them, by
//! suspend and replay.
//!
//! A run never touches the database. It starts from a [`SubtaskPlan`]: the
//! children the task recorded in earlier runs (the *ledger*), keyed by the
//! sequence number of the spawn call that made them. During the run:
//! - a spawn at a sequence number the ledger knows returns that child, after
//!   checking that the call asks for the same module and input (else the
//!   run ends with a permanent `non-deterministic` error naming the call);
//!   a new one is recorded in the report ([`Spawn`]) for the worker to store;
//! - a wait whose children are all finished in the ledger returns their
//!   results at once; otherwise the run ends there ([`Suspension`]), and the
//!   worker parks the task in `waiting` until its children are done, then
//!   runs it again from the start.
//!
//! So the same code works wherever the run happens: in a worker, or in a
//! Ray job whose envelope carries the plan in and the spawns out.

use super::maxima::Maxima;
use crate::fuel::Fuel;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

/// Default most children one task may spawn over all its runs.
pub const DEFAULT_MAX_CHILDREN: u32 = 10_000;
/// Default deepest nesting: a top-level task has depth 0, its children 1…
pub const DEFAULT_MAX_DEPTH: u32 = 8;
/// Largest input of one child.
pub const MAX_CHILD_INPUT_BYTES: usize = 1024 * 1024;
/// Most bytes of child inputs one run may spawn (the report holds them until
/// the worker stores them).
pub const MAX_SPAWN_BYTES_PER_RUN: usize = 32 * 1024 * 1024;

/// How a finished child ended, as its parent's `wait` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum ChildEnd {
    /// The child's result, JSON text.
    Succeeded { result: String },
    /// Failed or cancelled: `state` is the task state, `error_kind` its
    /// stored kind (the task's own, or the outcome such as `out-of-fuel`).
    Failed {
        task_state: String,
        error_kind: Option<String>,
        message: Option<String>,
    },
}

/// A child recorded by an earlier run of the parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownChild {
    pub seq: u32,
    pub id: Uuid,
    /// [`spawn_digest`] of the call that made it.
    pub digest: String,
    /// `None` while the child is unfinished.
    pub end: Option<ChildEnd>,
}

/// What a child inherits from its parent unless the spawn says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildDefaults {
    pub queue: String,
    pub priority: i16,
    pub max_attempts: u32,
    /// The parent's own limits (`None` = the worker's default).
    pub fuel: Option<Fuel>,
    pub memory_bytes: Option<u64>,
    pub timeout_ms: Option<u64>,
}

/// Everything a run needs to spawn and wait: who the parent is, what it
/// recorded before, and the bounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubtaskPlan {
    pub parent_id: Uuid,
    /// The parent's depth (0 for a task nobody spawned).
    pub depth: u32,
    pub max_children: u32,
    pub max_depth: u32,
    pub defaults: ChildDefaults,
    pub known: Vec<KnownChild>,
    /// The ceilings a child's limits are checked against (the worker's;
    /// a Ray job checks against its own environment's).
    #[serde(skip)]
    pub maxima: Maxima,
}

/// A child spawned by this run, for the worker to record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spawn {
    pub seq: u32,
    pub id: Uuid,
    /// `name` or `name@version`, as the guest wrote it.
    pub module: String,
    pub input: String,
    pub digest: String,
    /// Inheritance applied: these are the child's own settings.
    pub queue: String,
    pub priority: i16,
    pub max_attempts: u32,
    pub fuel: Option<Fuel>,
    pub memory_bytes: Option<u64>,
    pub timeout_ms: Option<u64>,
    /// The run ended waiting on it.
    pub awaited: bool,
}

/// Why a run ended in `waiting`: the children it waits on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    /// Sequence numbers of the awaited children (recorded ones and new).
    pub awaited: Vec<u32>,
    /// The task resumes once at most this many awaited children are
    /// unfinished (0 for a plain wait; a windowed `map` resumes earlier to
    /// spawn more).
    pub allowed_unfinished: u32,
}

/// The key of a child: its id is derived from its parent and its sequence
/// number, so every run of the parent names the same child.
pub fn child_id(parent: Uuid, seq: u32) -> Uuid {
    let mut h = Sha256::new();
    h.update(parent.as_bytes());
    h.update(seq.to_be_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// What a spawn asked for, as compared across runs: the module reference as
/// written and the input text.
pub fn spawn_digest(module: &str, input: &str) -> String {
    let mut h = Sha256::new();
    h.update(module.as_bytes());
    h.update([0]);
    h.update(input.as_bytes());
    hex::encode(h.finalize())
}

/// A spawn's options as the guest gave them.
#[derive(Debug, Clone, Default)]
pub struct SpawnOptions {
    pub queue: Option<String>,
    pub priority: Option<i16>,
    pub max_attempts: Option<u32>,
    /// 0 = unlimited.
    pub fuel: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub timeout_ms: Option<u64>,
}

/// A spawn refused before anything was recorded: returned to the guest as
/// a permanent task error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

/// Ends the run: the guest asked for something other than what the first
/// run asked at the same spawn.
#[derive(Debug, Clone, thiserror::Error)]
#[error("non-deterministic: {0}")]
pub struct NonDeterministic(pub String);

/// Ends the run: a wait needs children that are not finished.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("waiting for children")]
pub struct Suspended;

/// Why a wait cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error(transparent)]
    Suspended(#[from] Suspended),
    #[error("{0}")]
    Unknown(String),
}

/// The per-run state of the interface.
pub(super) struct Subtasks {
    plan: SubtaskPlan,
    known: BTreeMap<u32, KnownChild>,
    next_seq: u32,
    spawned: Vec<Spawn>,
    spawned_bytes: usize,
    /// Set when a wait ended the run.
    pub(super) suspension: Option<Suspension>,
}

impl Subtasks {
    pub(super) fn new(mut plan: SubtaskPlan) -> Subtasks {
        let known = std::mem::take(&mut plan.known)
            .into_iter()
            .map(|c| (c.seq, c))
            .collect();
        Subtasks {
            plan,
            known,
            next_seq: 0,
            spawned: Vec::new(),
            spawned_bytes: 0,
            suspension: None,
        }
    }

    /// The spawns of this run, with `awaited` set from the suspension.
    pub(super) fn finish(self) -> (Vec<Spawn>, Option<Suspension>) {
        let mut spawned = self.spawned;
        if let Some(s) = &self.suspension {
            for spawn in &mut spawned {
                spawn.awaited = s.awaited.binary_search(&spawn.seq).is_ok();
            }
        }
        (spawned, self.suspension)
    }

    /// One spawn call: the child at the next sequence number.
    pub(super) fn spawn(
        &mut self,
        module: &str,
        input: String,
        options: &SpawnOptions,
    ) -> Result<Result<(Uuid, u32), Refused>, NonDeterministic> {
        let seq = self.next_seq;
        let digest = spawn_digest(module, &input);
        if let Some(known) = self.known.get(&seq) {
            if known.digest != digest {
                return Err(NonDeterministic(format!(
                    "spawn #{seq} asked for module `{module}` with an input that differs from \
                     what the first run spawned there (child {}): a task must spawn the same \
                     children in the same order on every run before it waits",
                    known.id
                )));
            }
            self.next_seq += 1;
            return Ok(Ok((known.id, seq)));
        }
        let spawn = match self.check_new(seq, module, input, digest, options) {
            Ok(spawn) => spawn,
            Err(refused) => return Ok(Err(refused)),
        };
        self.next_seq += 1;
        self.spawned_bytes += spawn.input.len();
        let id = spawn.id;
        self.spawned.push(spawn);
        Ok(Ok((id, seq)))
    }

    fn check_new(
        &self,
        seq: u32,
        module: &str,
        input: String,
        digest: String,
        o: &SpawnOptions,
    ) -> Result<Spawn, Refused> {
        let refuse = |why: String| Err(Refused(format!("cannot spawn child #{seq}: {why}")));
        if seq >= self.plan.max_children {
            return refuse(format!(
                "a task may spawn at most {} children (WASMQ_MAX_CHILDREN)",
                self.plan.max_children
            ));
        }
        if self.plan.depth + 1 > self.plan.max_depth {
            return refuse(format!(
                "this task is at depth {} and children may nest at most {} deep \
                 (WASMQ_MAX_DEPTH)",
                self.plan.depth, self.plan.max_depth
            ));
        }
        if module.is_empty() || module.len() > 400 || module.chars().any(char::is_control) {
            return refuse("the module must be `name` or `name@version`".into());
        }
        if input.len() > MAX_CHILD_INPUT_BYTES {
            return refuse(format!(
                "its input is {} bytes, over the cap of {MAX_CHILD_INPUT_BYTES} bytes",
                input.len()
            ));
        }
        if self.spawned_bytes + input.len() > MAX_SPAWN_BYTES_PER_RUN {
            return refuse(format!(
                "the inputs spawned by one run may total at most {MAX_SPAWN_BYTES_PER_RUN} bytes"
            ));
        }
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&input) {
            return refuse(format!("its input is not valid JSON: {e}"));
        }
        let d = &self.plan.defaults;
        let priority = o.priority.unwrap_or(d.priority);
        if !(-100..=100).contains(&priority) {
            return refuse(format!("priority {priority} is outside -100..=100"));
        }
        let max_attempts = o.max_attempts.unwrap_or(d.max_attempts);
        if max_attempts == 0 {
            return refuse("max-attempts must be at least 1".into());
        }
        let fuel = match o.fuel {
            None => d.fuel,
            Some(0) => Some(Fuel::Unlimited),
            Some(n) => Some(Fuel::limited(n)),
        };
        let memory_bytes = o.memory_bytes.or(d.memory_bytes);
        let timeout_ms = o.timeout_ms.or(d.timeout_ms);
        let checked = [
            fuel.map(|f| self.plan.maxima.check_fuel(f)),
            memory_bytes.map(|m| self.plan.maxima.check_memory(m)),
            timeout_ms.map(|t| self.plan.maxima.check_timeout(Duration::from_millis(t))),
        ];
        if let Some(Err(e)) = checked.into_iter().flatten().find(Result::is_err) {
            return refuse(e.to_string());
        }
        let queue = o.queue.clone().unwrap_or_else(|| d.queue.clone());
        if queue.is_empty()
            || queue.len() > 200
            || queue == "*"
            || queue.contains(',')
            || queue.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return refuse(format!("queue name {queue:?} is not a valid queue name"));
        }
        Ok(Spawn {
            seq,
            id: child_id(self.plan.parent_id, seq),
            module: module.to_owned(),
            input,
            digest,
            queue,
            priority,
            max_attempts,
            fuel,
            memory_bytes,
            timeout_ms,
            awaited: false,
        })
    }

    /// Reserves `n` sequence numbers for a `map` and returns the first.
    pub(super) fn reserve(&mut self, n: u32) -> u32 {
        let first = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(n);
        first
    }

    /// Where the run is before a spawn at `seq` (for `map`, which spawns
    /// inside a reserved range).
    pub(super) fn set_next(&mut self, seq: u32) {
        self.next_seq = seq;
    }

    pub(super) fn is_known(&self, seq: u32) -> bool {
        self.known.contains_key(&seq)
    }

    /// The end of child `seq`, if it is recorded and finished.
    fn end(&self, seq: u32) -> Option<&ChildEnd> {
        self.known.get(&seq).and_then(|c| c.end.as_ref())
    }

    /// The id of child `seq` if this task spawned it, in an earlier run or
    /// this one (`spawned` is in spawn order, which is seq order).
    fn spawned_id(&self, seq: u32) -> Option<Uuid> {
        if let Some(known) = self.known.get(&seq) {
            return Some(known.id);
        }
        self.spawned
            .binary_search_by_key(&seq, |s| s.seq)
            .ok()
            .map(|i| self.spawned[i].id)
    }

    /// The results of `children` (sequence numbers, with the ids the guest
    /// holds), or the suspension of the run.
    pub(super) fn wait(
        &mut self,
        children: &[(String, u32)],
        allowed_unfinished: u32,
    ) -> Result<Vec<&ChildEnd>, WaitError> {
        for (id, seq) in children {
            if self
                .spawned_id(*seq)
                .is_none_or(|known| id.parse() != Ok(known))
            {
                return Err(WaitError::Unknown(format!(
                    "wait: child {id} (#{seq}) was not spawned by this task"
                )));
            }
        }
        let unfinished = children
            .iter()
            .filter(|(_, seq)| self.end(*seq).is_none())
            .count();
        if unfinished > 0 {
            let mut awaited: Vec<u32> = children.iter().map(|(_, s)| *s).collect();
            awaited.sort_unstable();
            awaited.dedup();
            self.suspension = Some(Suspension {
                awaited,
                allowed_unfinished,
            });
            return Err(Suspended.into());
        }
        Ok(children
            .iter()
            .map(|(_, seq)| self.end(*seq).expect("checked above"))
            .collect())
    }

    /// Recorded children in `range` that are not finished.
    pub(super) fn unfinished_known(&self, range: std::ops::Range<u32>) -> u32 {
        self.known
            .range(range)
            .filter(|(_, c)| c.end.is_none())
            .count() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(known: Vec<KnownChild>) -> SubtaskPlan {
        SubtaskPlan {
            parent_id: Uuid::nil(),
            depth: 0,
            max_children: 3,
            max_depth: 1,
            defaults: ChildDefaults {
                queue: "q".into(),
                priority: 5,
                max_attempts: 2,
                fuel: None,
                memory_bytes: None,
                timeout_ms: Some(1000),
            },
            known,
            maxima: Maxima::default(),
        }
    }

    #[test]
    fn child_ids_are_stable_and_distinct() {
        let p = Uuid::now_v7();
        assert_eq!(child_id(p, 3), child_id(p, 3));
        assert_ne!(child_id(p, 3), child_id(p, 4));
        assert_ne!(child_id(p, 3), child_id(Uuid::now_v7(), 3));
    }

    #[test]
    fn a_replayed_spawn_returns_the_recorded_child_or_ends_the_run() {
        let id = child_id(Uuid::nil(), 0);
        let known = KnownChild {
            seq: 0,
            id,
            digest: spawn_digest("add", "{\"a\":1}"),
            end: Some(ChildEnd::Succeeded { result: "2".into() }),
        };
        let mut s = Subtasks::new(plan(vec![known.clone()]));
        let o = SpawnOptions::default();
        assert_eq!(s.spawn("add", "{\"a\":1}".into(), &o).unwrap(), Ok((id, 0)));
        let (spawned, _) = s.finish();
        assert!(spawned.is_empty(), "nothing new to record");

        let mut s = Subtasks::new(plan(vec![known]));
        let e = s.spawn("add", "{\"a\":2}".into(), &o).unwrap_err();
        assert!(e.to_string().contains("spawn #0"), "{e}");
    }

    #[test]
    fn new_spawns_inherit_and_are_bounded() {
        let mut s = Subtasks::new(plan(vec![]));
        let o = SpawnOptions {
            priority: Some(-3),
            ..Default::default()
        };
        let (id, seq) = s.spawn("add@2", "[1]".into(), &o).unwrap().unwrap();
        assert_eq!((id, seq), (child_id(Uuid::nil(), 0), 0));
        assert!(matches!(
            s.spawn("add", "not json".into(), &o).unwrap(),
            Err(Refused(m)) if m.contains("not valid JSON")
        ));
        let big = SpawnOptions {
            timeout_ms: Some(10 * 3600 * 1000),
            ..Default::default()
        };
        assert!(matches!(
            s.spawn("add", "1".into(), &big).unwrap(),
            Err(Refused(m)) if m.contains("--max-timeout")
        ));
        s.spawn("add", "2".into(), &o).unwrap().unwrap();
        s.spawn("add", "3".into(), &o).unwrap().unwrap();
        assert!(matches!(
            s.spawn("add", "4".into(), &o).unwrap(),
            Err(Refused(m)) if m.contains("at most 3 children")
        ));
        let (spawned, _) = s.finish();
        assert_eq!(spawned.len(), 3);
        assert_eq!(spawned[0].queue, "q");
        assert_eq!(spawned[0].priority, -3);
        assert_eq!(spawned[0].timeout_ms, Some(1000));
    }

    #[test]
    fn waiting_on_an_unfinished_child_suspends() {
        let mut s = Subtasks::new(plan(vec![]));
        let (id, seq) = s
            .spawn("add", "1".into(), &SpawnOptions::default())
            .unwrap()
            .unwrap();
        assert!(matches!(
            s.wait(&[(id.to_string(), seq)], 0),
            Err(WaitError::Suspended(_))
        ));
        assert!(matches!(
            s.wait(&[(Uuid::nil().to_string(), 7)], 0),
            Err(WaitError::Unknown(_))
        ));
        let (spawned, suspension) = s.finish();
        assert!(spawned[0].awaited);
        assert_eq!(suspension.unwrap().awaited, vec![0]);
    }
}
