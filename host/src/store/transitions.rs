//! The state machine's transitions, written once for both backends.
//!
//! Each macro expands to a string literal: the `SET` list or the condition
//! of one arrow of the diagram in [`super::model`]. The backends wrap them in
//! their own statements (PostgreSQL: CTEs over `UNNEST` arrays and `now()`;
//! SQLite: `json_each` and a bound time), so what a transition *does* lives
//! here and only the dialect lives there. Arguments are SQL text: `$t` names
//! the tasks table (or its alias), `$c` the relation holding a batch's
//! per-row values, `$now` the dialect's current time, `$owner`/`$epoch`
//! the expressions of the fencing token.

/// The states that hold a lease.
macro_rules! live_states {
    () => {
        "('leased', 'running')"
    };
}

/// The states a unique key and `module rm` care about.
macro_rules! unfinished_states {
    () => {
        "('queued', 'waiting', 'leased', 'running')"
    };
}

/// The states that end a task.
macro_rules! terminal_states {
    () => {
        "('succeeded', 'failed', 'cancelled')"
    };
}

/// The rows among which a unique key is unique: unfinished ones that have
/// a key. The text of the partial index `tasks_unique_key_idx` (migration
/// 0003) and of every `ON CONFLICT` that names it.
macro_rules! unique_key_scope {
    () => {
        "unique_key IS NOT NULL AND state IN ('queued', 'waiting', 'leased', 'running')"
    };
}

/// Fencing: the row is still live under this worker and lease epoch.
macro_rules! fenced {
    ($t:expr, $owner:expr, $epoch:expr) => {
        concat!(
            $t,
            ".state IN ",
            live_states!(),
            " AND ",
            $t,
            ".lease_owner = ",
            $owner,
            " AND ",
            $t,
            ".lease_epoch = ",
            $epoch
        )
    };
}

/// queued → leased: a new run in a new epoch. The attempt row is opened by
/// the backend in the same transaction.
macro_rules! claim_set {
    ($owner:expr, $expires:expr, $now:expr) => {
        concat!(
            "state = 'leased', attempt = attempt + 1, lease_epoch = lease_epoch + 1, \
             lease_owner = ",
            $owner,
            ", lease_expires_at = ",
            $expires,
            ", started_at = NULL, updated_at = ",
            $now
        )
    };
}

/// leased → running, at the moment `$at` a runner started it.
macro_rules! start_set {
    ($at:expr, $now:expr) => {
        concat!(
            "state = 'running', started_at = ",
            $at,
            ", updated_at = ",
            $now
        )
    };
}

/// live → the batch row's `target` (see `FinishPlan`): a requeue (or a
/// wait) of a task whose cancellation was requested ends `cancelled`
/// instead; a free run (release, defer, wait) counts in `free_runs`; the
/// lease is dropped; only terminal rows have `finished_at`. A `waiting`
/// target sets how many awaited children must end before the task is
/// queued again; a run that spawned children recounts them.
macro_rules! finish_set {
    ($t:expr, $c:expr, $now:expr) => {
        concat!(
            "waiting_on = CASE WHEN ",
            $c,
            ".target = 'waiting' THEN ",
            $c,
            ".waiting_on ELSE ",
            $t,
            ".waiting_on END, \
             children = CASE WHEN ",
            $c,
            ".spawned THEN (SELECT count(*) FROM tasks ch WHERE ch.parent_id = ",
            $t,
            ".id) ELSE ",
            $t,
            ".children END, \
             state = CASE WHEN ",
            $c,
            ".target IN ('queued', 'waiting') AND ",
            $t,
            ".cancel_requested \
                          THEN 'cancelled' ELSE ",
            $c,
            ".target END, \
             result = ",
            $c,
            ".result, \
             error_kind = CASE WHEN ",
            $c,
            ".set_error THEN ",
            $c,
            ".error_kind \
                               ELSE ",
            $t,
            ".error_kind END, \
             error_message = CASE WHEN ",
            $c,
            ".set_error THEN ",
            $c,
            ".error_message \
                                  ELSE ",
            $t,
            ".error_message END, \
             error_logs = CASE WHEN ",
            $c,
            ".set_error THEN ",
            $c,
            ".error_logs \
                               ELSE ",
            $t,
            ".error_logs END, \
             run_after = CASE WHEN ",
            $c,
            ".target = 'queued' \
                              THEN coalesce(",
            $c,
            ".run_after, ",
            $now,
            ") \
                              ELSE ",
            $t,
            ".run_after END, \
             free_runs = ",
            $t,
            ".free_runs + CASE WHEN ",
            $c,
            ".free_run THEN 1 ELSE 0 END, \
             started_at = coalesce(",
            $t,
            ".started_at, ",
            $c,
            ".started_at), \
             lease_owner = NULL, lease_expires_at = NULL, \
             finished_at = CASE WHEN ",
            $c,
            ".target IN ('queued', 'waiting') AND NOT ",
            $t,
            ".cancel_requested \
                                THEN NULL ELSE ",
            $now,
            " END, \
             updated_at = ",
            $now
        )
    };
}

/// The attempt row of a finished run; `$start` is the task's `started_at`
/// after the run's completion was applied (a start write that got there
/// first wins over the completion's own start time).
macro_rules! close_attempt_set {
    ($a:expr, $c:expr, $start:expr, $now:expr) => {
        concat!(
            "finished_at = ",
            $now,
            ", outcome = ",
            $c,
            ".outcome, \
             error_message = ",
            $c,
            ".error_message, logs = ",
            $c,
            ".logs, \
             fuel_used = ",
            $c,
            ".fuel_used, peak_memory = ",
            $c,
            ".peak_memory, \
             duration_ms = ",
            $c,
            ".duration_ms, \
             started_at = coalesce(",
            $start,
            ", ",
            $a,
            ".started_at)"
        )
    };
}

/// live with an expired lease → `$target` (`queued` at `$run_after`, or
/// `failed`), taken back by a reaper; a pending cancel wins over a requeue.
macro_rules! expire_set {
    ($target:expr, $run_after:expr, $now:expr) => {
        concat!(
            "state = CASE WHEN ", $target, " = 'queued' AND cancel_requested THEN 'cancelled' \
                          ELSE ", $target, " END, \
             run_after = CASE WHEN ", $target, " = 'queued' THEN coalesce(", $run_after, ", ", $now, ") \
                              ELSE run_after END, \
             result = NULL, \
             error_kind = 'lease-expired', \
             error_message = 'lease expired (worker ' || lease_owner || ' stopped heartbeating)', \
             error_logs = NULL, \
             lease_owner = NULL, lease_expires_at = NULL, \
             finished_at = CASE WHEN ", $target, " = 'queued' AND NOT cancel_requested THEN NULL \
                                ELSE ", $now, " END, \
             updated_at = ", $now
        )
    };
}

/// The condition of [`expire_set!`]: still live in `$epoch`, lease expired.
macro_rules! expirable {
    ($epoch:expr, $now:expr) => {
        concat!(
            "state IN ",
            live_states!(),
            " AND lease_epoch = ",
            $epoch,
            " AND lease_expires_at < ",
            $now
        )
    };
}

/// An operator's cancel: queued or waiting → cancelled at once; live → the
/// flag the owning worker acts on. `$true` is the dialect's boolean true.
macro_rules! cancel_set {
    ($now:expr, $true:expr) => {
        concat!(
            "state = CASE WHEN state IN ('queued', 'waiting') THEN 'cancelled' ELSE state END, \
             cancel_requested = CASE WHEN state IN ",
            live_states!(),
            " THEN ",
            $true,
            " \
                                     ELSE cancel_requested END, \
             finished_at = CASE WHEN state IN ('queued', 'waiting') THEN ",
            $now,
            " ELSE finished_at END, \
             error_kind = CASE WHEN state IN ('queued', 'waiting') THEN 'cancelled' \
                               ELSE error_kind END, \
             error_message = CASE WHEN state IN ('queued', 'waiting') \
                                  THEN 'cancelled while ' || state \
                                  ELSE error_message END, \
             updated_at = ",
            $now
        )
    };
}

/// A manual retry: failed or cancelled → queued now, with one more attempt
/// granted when the counted ones are used up. `$false` is the dialect's
/// boolean false; `$max` its two-argument maximum function.
macro_rules! retry_set {
    ($now:expr, $false:expr, $max:expr) => {
        concat!(
            "state = 'queued', run_after = ",
            $now,
            ", result = NULL, error_kind = NULL, \
             error_message = NULL, error_logs = NULL, finished_at = NULL, \
             cancel_requested = ",
            $false,
            ", progress_percent = NULL, progress_message = NULL, \
             max_attempts = ",
            $max,
            "(max_attempts, attempt - free_runs + 1), updated_at = ",
            $now
        )
    };
}
