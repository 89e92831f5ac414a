//! What both backends share besides the SQL: argument validation, value
//! conversion, and the column values a completion writes.

use std::borrow::Cow;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::error::{Result, StoreError};
use super::model::*;
use crate::fuel::Fuel;
use crate::kinds::stored_error_kind;

/// Upper bound of queue names, unique keys, module names and versions.
const MAX_NAME_LEN: usize = 200;

/// Statements slower than this are logged by sqlx, at debug level: a batch
/// enqueue of 20,000 tasks or a purge legitimately takes seconds, and an
/// operator's log should not warn about it. `WASMQ_LOG=sqlx=debug` shows them.
pub(crate) const SLOW_STATEMENT: Duration = Duration::from_secs(1);
pub(crate) const SLOW_STATEMENT_LEVEL: log::LevelFilter = log::LevelFilter::Debug;

fn validate_name(kind: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(StoreError::invalid(format!("{kind} must not be empty")));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(StoreError::invalid(format!(
            "{kind} is longer than {MAX_NAME_LEN} bytes"
        )));
    }
    // Names are printed on terminals and in logs, and PostgreSQL refuses NUL
    // in `text`: a control character (NUL and escape sequences included) has
    // no business in one.
    if value.chars().any(char::is_control) {
        return Err(StoreError::invalid(format!(
            "{kind} \"{}\" must not contain control characters",
            value.escape_default()
        )));
    }
    Ok(())
}

/// Queue names end up in comma-separated worker queue lists and in
/// notification payloads, so keep them plain.
pub(crate) fn validate_queue(queue: &str) -> Result<()> {
    validate_name("queue name", queue)?;
    if queue == "*" || queue.contains(',') || queue.chars().any(char::is_whitespace) {
        return Err(StoreError::invalid(format!(
            "queue name {queue:?} must not be '*' or contain commas or whitespace"
        )));
    }
    Ok(())
}

/// Most grants one module name may hold, over all scopes and kinds.
pub const MAX_GRANTS_PER_MODULE: usize = 256;
/// Longest grant value (an HTTP grant is a URL prefix).
pub const MAX_GRANT_VALUE_LEN: usize = 2048;

/// A set of grants to add or remove: a valid module name and queue, and
/// values that are non-empty, short and free of control characters.
pub(crate) fn validate_grant_set(set: &GrantSet<'_>) -> Result<()> {
    validate_module_ref(set.module, None)?;
    if let Some(queue) = set.queue {
        validate_queue(queue)?;
    }
    if set.values.len() > MAX_GRANTS_PER_MODULE {
        return Err(StoreError::invalid(format!(
            "{} grants at once; a module holds at most {MAX_GRANTS_PER_MODULE}",
            set.values.len()
        )));
    }
    for value in set.values {
        match set.kind {
            GrantKind::Secret => validate_secret_name(value)?,
            GrantKind::Config => {
                let key = config_entry(value).map_or(value.as_str(), |(k, _)| k);
                validate_key("config key", key)?;
            }
            GrantKind::Http => {}
        }
        if value.is_empty() || value.len() > MAX_GRANT_VALUE_LEN {
            return Err(StoreError::invalid(format!(
                "a grant must have 1 to {MAX_GRANT_VALUE_LEN} bytes"
            )));
        }
        if value.chars().any(char::is_control) {
            return Err(StoreError::invalid(format!(
                "grant {:?} must not contain control characters",
                value.escape_default().to_string()
            )));
        }
    }
    Ok(())
}

/// A grant row's columns as a [`ModuleGrant`]; `None` (with a warning)
/// for a kind this version of wasmq does not know, which a newer one wrote:
/// an older worker then runs without that grant rather than not at all.
pub(crate) fn grant_from_columns(
    module: String,
    queue: String,
    kind: &str,
    value: String,
    created_at: DateTime<Utc>,
) -> Option<ModuleGrant> {
    let Ok(kind) = kind.parse() else {
        tracing::warn!(%module, kind, "ignoring a grant of a kind this wasmq does not know");
        return None;
    };
    Some(ModuleGrant {
        module,
        queue: (!queue.is_empty()).then_some(queue),
        kind,
        value,
        created_at,
    })
}

/// The error of a grant to a name no version of which is stored.
pub(crate) fn no_module_to_grant(module: &str) -> StoreError {
    StoreError::not_found(format!(
        "module {module} (push it before granting it anything)"
    ))
}

/// The error of a grant that would take a name over its bound.
pub(crate) fn too_many_grants(module: &str, held: i64) -> StoreError {
    StoreError::invalid(format!(
        "module {module} would hold {held} grants; at most {MAX_GRANTS_PER_MODULE} are allowed"
    ))
}

/// Secret names are what a guest asks `wasi:config/store` for, and appear
/// in redactions (`[redacted:NAME]`): letters, digits, `_`, `-` and `.`.
pub fn validate_secret_name(name: &str) -> Result<()> {
    validate_key("secret name", name)
}

/// A key of `wasi:config/store` (a secret's name, a config key).
fn validate_key(what: &str, name: &str) -> Result<()> {
    validate_name(what, name)?;
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(StoreError::invalid(format!(
            "{what} {:?} may hold only letters, digits, `_`, `-` and `.`",
            name.escape_default().to_string()
        )));
    }
    Ok(())
}

/// The prefix every stored value of a config grant's key starts with:
/// `KEY=`.
pub(crate) fn config_prefix(value: &str) -> String {
    let key = config_entry(value).map_or(value, |(k, _)| k);
    format!("{key}=")
}

/// The error of a grant of a secret that is not stored.
pub(crate) fn no_secret(name: &str) -> StoreError {
    StoreError::not_found(format!(
        "secret {name} (set it with `wasmq secret set {name}`)"
    ))
}

/// `@` separates name and version on the command line.
pub(crate) fn validate_module_ref(name: &str, version: Option<&str>) -> Result<()> {
    for (kind, value) in [("module name", Some(name)), ("module version", version)] {
        let Some(value) = value else { continue };
        validate_name(kind, value)?;
        if value.contains('@') || value.chars().any(char::is_whitespace) {
            return Err(StoreError::invalid(format!(
                "{kind} {value:?} must not contain '@' or whitespace"
            )));
        }
    }
    Ok(())
}

pub(crate) fn validate_sha256(sha256: &str) -> Result<()> {
    if sha256.len() != 64
        || !sha256
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(StoreError::invalid(format!(
            "sha256 {sha256:?} is not 64 lowercase hex digits"
        )));
    }
    Ok(())
}

/// The checks every backend makes on a task before it is stored: names,
/// ranges, and an input that is JSON (stored verbatim).
pub fn validate_new_task(task: &NewTask) -> Result<()> {
    validate_queue(&task.queue)?;
    validate_module_ref(&task.module_name, Some(&task.module_version))?;
    validate_sha256(&task.module_sha256)?;
    if !(-100..=100).contains(&task.priority) {
        return Err(StoreError::invalid(format!(
            "priority {} is outside -100..=100",
            task.priority
        )));
    }
    if task.max_attempts == 0 {
        return Err(StoreError::invalid("max_attempts must be at least 1"));
    }
    to_i32(task.max_attempts, "max_attempts")?;
    if let Some(key) = &task.unique_key {
        validate_name("unique key", key)?;
    }
    fuel_to_db(task.limits.fuel)?;
    limit_to_i64(task.limits.memory_bytes, "memory_bytes")?;
    limit_to_i64(task.limits.timeout_ms, "timeout_ms")?;
    // Input is stored verbatim, but it must be JSON: the guest gets it as such.
    if serde_json::from_str::<serde::de::IgnoredAny>(&task.input).is_err() {
        return Err(StoreError::invalid(format!(
            "input of task {} is not valid JSON",
            task.id
        )));
    }
    Ok(())
}

pub(crate) fn validate_worker_id(worker_id: &str) -> Result<()> {
    validate_name("worker id", worker_id)
}

/// Terminal states only: purging live tasks would lose work.
pub(crate) fn validate_purge_state(state: TaskState) -> Result<()> {
    if !state.is_terminal() {
        return Err(StoreError::invalid(format!(
            "cannot purge {state} tasks: only succeeded, failed or cancelled tasks can be purged"
        )));
    }
    Ok(())
}

pub(crate) fn list_limit(limit: u32) -> Result<i64> {
    match limit {
        0 => Ok(i64::from(DEFAULT_LIST_LIMIT)),
        1..=MAX_LIST_LIMIT => Ok(i64::from(limit)),
        _ => Err(StoreError::invalid(format!(
            "limit {limit} is above the maximum of {MAX_LIST_LIMIT}"
        ))),
    }
}

/// Queues by name, states in lifecycle order.
pub(crate) fn sort_stats(stats: &mut [QueueStat]) {
    stats.sort_by(|a, b| a.queue.cmp(&b.queue).then(a.state.cmp(&b.state)));
}

/// An enqueue referred to module bytes that are not stored (never pushed,
/// or deleted meanwhile).
pub(crate) fn unknown_module_bytes(tasks: &[NewTask]) -> StoreError {
    let shas: std::collections::BTreeSet<&str> =
        tasks.iter().map(|t| t.module_sha256.as_str()).collect();
    StoreError::not_found(format!(
        "module bytes with sha256 {}",
        shas.into_iter().collect::<Vec<_>>().join(", ")
    ))
}

pub(crate) fn unique_key_taken(id: Uuid) -> StoreError {
    StoreError::Conflict(format!(
        "cannot retry task {id}: another queued or running task has its unique key"
    ))
}

/// Plans for a completion batch. A task may appear once per batch: a second
/// entry could only be a caller bug, and its outcome would be ambiguous.
pub(crate) fn completion_plans(completions: &[Completion]) -> Result<Vec<FinishPlan<'_>>> {
    let mut seen = std::collections::HashSet::with_capacity(completions.len());
    completions
        .iter()
        .map(|c| {
            if !seen.insert(c.task_id) {
                return Err(StoreError::invalid(format!(
                    "task {} appears twice in one completion batch",
                    c.task_id
                )));
            }
            FinishPlan::new(c)
        })
        .collect()
}

pub(crate) fn validate_limit(limit: u32) -> Result<i64> {
    if limit == 0 {
        return Err(StoreError::invalid("limit must be at least 1"));
    }
    Ok(i64::from(limit))
}

/// Lease lengths in microseconds; zero or absurd leases are caller bugs.
pub(crate) fn lease_micros(lease: Duration) -> Result<i64> {
    let micros = i64::try_from(lease.as_micros()).unwrap_or(i64::MAX);
    if micros <= 0 || lease > Duration::from_secs(7 * 24 * 3600) {
        return Err(StoreError::invalid(format!(
            "lease {lease:?} must be between 1 µs and 7 days"
        )));
    }
    Ok(micros)
}

pub(crate) fn to_i32(value: u32, what: &str) -> Result<i32> {
    i32::try_from(value).map_err(|_| StoreError::invalid(format!("{what} {value} is too large")))
}

pub(crate) fn to_i64(value: u64, what: &str) -> Result<i64> {
    i64::try_from(value).map_err(|_| StoreError::invalid(format!("{what} {value} is too large")))
}

pub(crate) fn limit_to_i64(value: Option<u64>, what: &str) -> Result<Option<i64>> {
    value.map(|v| to_i64(v, what)).transpose()
}

/// A task's fuel as its column holds it: NULL for the worker's default, 0
/// for unlimited (a budget of no fuel at all cannot be asked for), else the
/// budget. The only place where 0 means unlimited.
pub(crate) fn fuel_to_db(fuel: Option<Fuel>) -> Result<Option<i64>> {
    match fuel {
        None => Ok(None),
        Some(Fuel::Unlimited) => Ok(Some(0)),
        Some(Fuel::Units(n)) => to_i64(n.get(), "fuel").map(Some),
    }
}

/// The inverse of [`fuel_to_db`].
pub(crate) fn fuel_from_db(column: Option<i64>) -> Result<Option<Fuel>> {
    match from_i64_opt(column, "fuel")? {
        None => Ok(None),
        Some(0) => Ok(Some(Fuel::Unlimited)),
        Some(n) => Fuel::from_units(Some(n))
            .map(Some)
            .map_err(|e| StoreError::corrupt(e.to_string())),
    }
}

/// Decoding: negative counters in the database mean the row was not written
/// by this code.
pub(crate) fn from_i64(value: i64, what: &str) -> Result<u64> {
    u64::try_from(value).map_err(|_| StoreError::corrupt(format!("negative {what} {value}")))
}

pub(crate) fn from_i64_opt(value: Option<i64>, what: &str) -> Result<Option<u64>> {
    value.map(|v| from_i64(v, what)).transpose()
}

pub(crate) fn to_u32(value: i64, what: &str) -> Result<u32> {
    u32::try_from(value).map_err(|_| StoreError::corrupt(format!("{what} {value} out of range")))
}

pub(crate) fn parse_state(s: &str) -> Result<TaskState> {
    s.parse()
        .map_err(|e: ParseTaskStateError| StoreError::corrupt(e.to_string()))
}

pub(crate) fn parse_outcome(s: Option<&str>) -> Result<Option<OutcomeKind>> {
    s.map(|s| {
        s.parse()
            .map_err(|e: crate::kinds::UnknownKind| StoreError::corrupt(e.to_string()))
    })
    .transpose()
}

pub(crate) fn parse_progress(value: Option<i64>) -> Result<Option<u8>> {
    value
        .map(|v| {
            u8::try_from(v)
                .map_err(|_| StoreError::corrupt(format!("progress_percent {v} out of range")))
        })
        .transpose()
}

/// Next automatic version: one more than the highest purely numeric version.
pub(crate) fn next_version<'a>(existing: impl IntoIterator<Item = &'a str>) -> String {
    let max = existing
        .into_iter()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|v| v.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    (max + 1).to_string()
}

/// `name@version`, or `name` for "any/latest version".
pub(crate) fn module_ref(name: &str, version: Option<&str>) -> String {
    match version {
        Some(version) => format!("{name}@{version}"),
        None => name.to_owned(),
    }
}

/// Most bytes of an error message (with its backtrace) stored per attempt.
pub const MAX_STORED_ERROR: usize = 32 * 1024;
/// Most bytes of logs stored per attempt (the worker keeps 64 KiB of guest
/// text plus its own markers; this is the store's own guard).
pub const MAX_STORED_LOGS: usize = 80 * 1024;
/// Most bytes of a progress message.
pub const MAX_STORED_PROGRESS_MESSAGE: usize = 1024;

fn storable_opt(s: Option<&str>, max: usize) -> Option<Cow<'_, str>> {
    s.map(|s| crate::text::storable(s, max))
}

/// Column values for ending one run, the same on every backend.
/// `target` is where the task goes; a `queued` target becomes `cancelled` in
/// SQL when a cancellation is pending. Guest text is storable and bounded.
pub(crate) struct FinishPlan<'a> {
    pub task_id: Uuid,
    pub epoch: i64,
    pub target: TaskState,
    pub result: Option<&'a str>,
    /// False keeps the task's previous error fields (Release).
    pub set_error: bool,
    pub error_kind: Option<&'static str>,
    pub error_message: Option<Cow<'a, str>>,
    pub error_logs: Option<Cow<'a, str>>,
    /// Queued targets only; `None` = now.
    pub run_after: Option<DateTime<Utc>>,
    /// Release and Defer: the run does not spend an attempt (`free_runs + 1`).
    pub free_run: bool,
    /// When the run started, for a task still `leased` in the database.
    pub started_at: Option<DateTime<Utc>>,
    // The attempt row:
    pub outcome: &'static str,
    pub logs: Option<Cow<'a, str>>,
    pub fuel_used: Option<i64>,
    pub peak_memory: Option<i64>,
    pub duration_ms: i64,
    /// A `waiting` target: awaited children that must still end; the
    /// backend counts them in the transaction (see [`FinishPlan::wait`]).
    pub waiting_on: i64,
    /// The run spawned children: the task's `children` is recounted.
    pub spawned: bool,
    /// For `Wait`: the awaited spawn numbers and how many may stay
    /// unfinished.
    pub wait: Option<(&'a [u32], u32)>,
}

impl<'a> FinishPlan<'a> {
    pub(crate) fn new(c: &'a Completion) -> Result<FinishPlan<'a>> {
        let r = &c.report;
        let error_kind = Some(stored_error_kind(r.outcome, r.error_kind));
        let error_message = storable_opt(r.error_message.as_deref(), MAX_STORED_ERROR);
        let logs = storable_opt(r.logs.as_deref(), MAX_STORED_LOGS);
        let mut plan = FinishPlan {
            task_id: c.task_id,
            epoch: to_i64(c.epoch, "epoch")?,
            target: TaskState::Failed,
            result: None,
            set_error: true,
            error_kind,
            error_message,
            error_logs: logs.clone(),
            run_after: None,
            free_run: false,
            started_at: c.started_at,
            outcome: r.outcome.as_str(),
            logs,
            fuel_used: limit_to_i64(r.fuel_used, "fuel_used")?,
            peak_memory: limit_to_i64(r.peak_memory, "peak_memory")?,
            duration_ms: to_i64(r.duration_ms, "duration_ms")?,
            waiting_on: 0,
            spawned: !c.spawns.is_empty(),
            wait: None,
        };
        for spawn in &c.spawns {
            validate_spawn(c.task_id, spawn)?;
        }
        match &c.transition {
            Transition::Succeed { result } => {
                plan.target = TaskState::Succeeded;
                plan.result = Some(result);
                // A success clears the error of an earlier attempt.
                plan.error_kind = None;
                plan.error_message = None;
                plan.error_logs = None;
            }
            Transition::Retry { run_after } => {
                plan.target = TaskState::Queued;
                plan.run_after = Some(*run_after);
            }
            Transition::Fail => plan.target = TaskState::Failed,
            Transition::Cancel => plan.target = TaskState::Cancelled,
            Transition::Release => {
                plan.target = TaskState::Queued;
                plan.set_error = false;
                plan.free_run = true;
                plan.outcome = OutcomeKind::Shutdown.as_str();
            }
            Transition::Defer { run_after } => {
                plan.target = TaskState::Queued;
                plan.run_after = Some(*run_after);
                plan.free_run = true;
            }
            Transition::Wait {
                awaited,
                allowed_unfinished,
            } => {
                plan.target = TaskState::Waiting;
                plan.set_error = false;
                plan.free_run = true;
                plan.wait = Some((awaited, *allowed_unfinished));
            }
        }
        Ok(plan)
    }

    /// Settles a `Wait` given the awaited children unfinished right now
    /// (counted in the completion's transaction, after its spawns were
    /// stored and marked): waiting for as many as must still end, or
    /// queued at once when none must.
    pub(crate) fn settle_wait(&mut self, unfinished: i64) {
        if let Some((_, allowed)) = self.wait {
            let needed = unfinished - i64::from(allowed);
            if needed > 0 {
                self.waiting_on = needed;
            } else {
                self.target = TaskState::Queued;
                self.waiting_on = 0;
            }
        }
    }
}

/// A child stored with its parent's completion: keyed under that parent.
fn validate_spawn(parent: Uuid, spawn: &NewTask) -> Result<()> {
    validate_new_task(spawn)?;
    if spawn.parent_id != Some(parent) || spawn.child.is_none() {
        return Err(StoreError::invalid(format!(
            "a spawn stored with task {parent}'s completion must be its child, with a key"
        )));
    }
    Ok(())
}

/// The completion that replaces one the database refused even alone: the
/// task fails with a host error that says why, without any of the guest's
/// text, so that a completion that cannot be stored never leaves its task
/// live.
pub fn unstorable_completion(c: &Completion, error: &StoreError) -> Completion {
    Completion {
        task_id: c.task_id,
        attempt: c.attempt,
        epoch: c.epoch,
        started_at: c.started_at,
        report: AttemptReport {
            outcome: OutcomeKind::HostError,
            error_kind: None,
            error_message: Some(
                crate::text::storable(
                    &format!(
                        "the attempt's result could not be stored ({} ended it): {error}",
                        c.report.outcome
                    ),
                    MAX_STORED_ERROR,
                )
                .into_owned(),
            ),
            logs: None,
            fuel_used: c.report.fuel_used,
            peak_memory: c.report.peak_memory,
            duration_ms: c.report.duration_ms,
        },
        transition: Transition::Fail,
        spawns: Vec::new(),
    }
}

/// Where an expired task goes: `queued` at a time, or `failed`.
pub(crate) fn expire_target(transition: &Transition) -> Result<(TaskState, Option<DateTime<Utc>>)> {
    match transition {
        Transition::Retry { run_after } => Ok((TaskState::Queued, Some(*run_after))),
        Transition::Fail => Ok((TaskState::Failed, None)),
        other => Err(StoreError::invalid(format!(
            "an expired lease can only be retried or failed, not {other:?}"
        ))),
    }
}

/// Maps each lease to "applied?" given the applied leases.
pub(crate) fn applied_flags(
    leases: impl IntoIterator<Item = Lease>,
    applied: &std::collections::HashSet<Lease>,
) -> Vec<bool> {
    leases.into_iter().map(|l| applied.contains(&l)).collect()
}

/// The reply to a heartbeat over `leases`, given those extended (with their
/// cancel flags).
pub(crate) fn heartbeat_reply(leases: &[Lease], extended: &[(Uuid, bool)]) -> HeartbeatReply {
    let kept: std::collections::HashSet<Uuid> = extended.iter().map(|(id, _)| *id).collect();
    HeartbeatReply {
        lost: leases
            .iter()
            .filter(|l| !kept.contains(&l.task_id))
            .map(|l| l.task_id)
            .collect(),
        cancel_requested: extended
            .iter()
            .filter(|(_, cancel)| *cancel)
            .map(|(id, _)| *id)
            .collect(),
    }
}

/// Leases are unique per task within one call: a task has one live epoch.
pub(crate) fn validate_leases(leases: &[Lease]) -> Result<()> {
    let mut seen = std::collections::HashSet::with_capacity(leases.len());
    for l in leases {
        if !seen.insert(l.task_id) {
            return Err(StoreError::invalid(format!(
                "task {} appears twice in one batch",
                l.task_id
            )));
        }
        to_i64(l.epoch, "epoch")?;
    }
    Ok(())
}

/// The storable form of a progress message.
pub(crate) fn progress_message(message: &str) -> Cow<'_, str> {
    crate::text::storable(message, MAX_STORED_PROGRESS_MESSAGE)
}
