//! PostgreSQL backend: many workers on many hosts.
//!
//! - Times come from the server (`now()`), so worker clocks do not matter
//!   for leases and due times.
//! - Claims use `FOR UPDATE SKIP LOCKED` so concurrent workers never wait for
//!   each other's rows; claim and completion batches are one statement each
//!   (arrays through `UNNEST`), which keeps commits — the real cost with
//!   durable commits — at one per batch.
//! - Wake-ups use LISTEN/NOTIFY, sent in the same transaction as the change.
//! - Durability settings (fsync, synchronous_commit) are the server's; this
//!   code never relaxes them.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, PgConnection, Postgres, QueryBuilder, Row};
use uuid::Uuid;

mod rows;
#[macro_use]
mod sql;

use self::rows::*;
use self::sql::*;
use super::notify::{CANCEL_CHANNEL, Listener, TASK_CHANNEL};
use super::shared::*;
use super::*;

static MIGRATOR: Migrator = sqlx::migrate!("../migrations/postgres");

/// How often an enqueue re-inserts a task whose unique-key holder finished
/// between the conflict and the lookup (each round sees newer data).
const DEDUP_ROUNDS: usize = 5;

#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, DEFAULT_MAX_CONNECTIONS).await
    }

    pub async fn connect_with(url: &str, max_connections: u32) -> Result<Self> {
        Self::open(PgConnectOptions::from_str(url)?, max_connections).await
    }

    /// Opens a pool with explicit options (e.g. a `search_path`).
    pub async fn open(options: PgConnectOptions, max_connections: u32) -> Result<Self> {
        let options = options.log_slow_statements(SLOW_STATEMENT_LEVEL, SLOW_STATEMENT);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect_with(options)
            .await?;
        Ok(PgStore { pool })
    }

    pub fn from_pool(pool: PgPool) -> Self {
        PgStore { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn task_state(&self, id: Uuid) -> Result<TaskState> {
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM tasks WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        match state {
            Some(state) => parse_state(&state),
            None => Err(StoreError::not_found(format!("task {id}"))),
        }
    }
}

/// Sends one notification per distinct queue, inside the caller's transaction
/// (PostgreSQL delivers them at commit, or never on rollback).
async fn notify_queues(conn: &mut PgConnection, queues: BTreeSet<String>) -> Result<()> {
    if queues.is_empty() {
        return Ok(());
    }
    let queues: Vec<String> = queues.into_iter().collect();
    sqlx::query("SELECT pg_notify($1, q) FROM unnest($2::text[]) AS q")
        .bind(TASK_CHANNEL)
        .bind(queues)
        .execute(conn)
        .await?;
    Ok(())
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn is_fk_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_foreign_key_violation())
}

/// Column arrays for `INSERT_TASKS`.
#[derive(Default)]
struct TaskColumns<'a> {
    id: Vec<Uuid>,
    module_name: Vec<&'a str>,
    module_version: Vec<&'a str>,
    module_sha256: Vec<&'a str>,
    queue: Vec<&'a str>,
    priority: Vec<i16>,
    input: Vec<&'a str>,
    run_after: Vec<Option<DateTime<Utc>>>,
    max_attempts: Vec<i32>,
    fuel: Vec<Option<i64>>,
    memory_bytes: Vec<Option<i64>>,
    timeout_ms: Vec<Option<i64>>,
    unique_key: Vec<Option<&'a str>>,
    parent_id: Vec<Option<Uuid>>,
    spawn_seq: Vec<Option<i32>>,
    spawn_digest: Vec<Option<&'a str>>,
    depth: Vec<i32>,
    awaited: Vec<bool>,
}

impl<'a> TaskColumns<'a> {
    fn new<'t: 'a>(tasks: impl Iterator<Item = &'t NewTask>) -> Result<Self> {
        let mut c = TaskColumns::default();
        for t in tasks {
            c.id.push(t.id);
            c.module_name.push(&t.module_name);
            c.module_version.push(&t.module_version);
            c.module_sha256.push(&t.module_sha256);
            c.queue.push(&t.queue);
            c.priority.push(t.priority);
            c.input.push(&t.input);
            c.run_after.push(t.run_after);
            c.max_attempts.push(to_i32(t.max_attempts, "max_attempts")?);
            c.fuel.push(fuel_to_db(t.limits.fuel)?);
            c.memory_bytes
                .push(limit_to_i64(t.limits.memory_bytes, "memory_bytes")?);
            c.timeout_ms
                .push(limit_to_i64(t.limits.timeout_ms, "timeout_ms")?);
            c.unique_key.push(t.unique_key.as_deref());
            c.parent_id.push(t.parent_id);
            let child = t.child.as_ref();
            c.spawn_seq
                .push(child.map(|k| to_i32(k.seq, "spawn_seq")).transpose()?);
            c.spawn_digest.push(child.map(|k| k.digest.as_str()));
            c.depth
                .push(child.map_or(Ok(0), |k| to_i32(k.depth, "depth"))?);
            c.awaited.push(child.is_some_and(|k| k.awaited));
        }
        Ok(c)
    }

    /// Inserts the rows with `sql` ([`INSERT_TASKS`] or [`INSERT_CHILDREN`]).
    async fn insert(
        self,
        conn: &mut PgConnection,
        sql: &'static str,
    ) -> std::result::Result<Vec<Uuid>, sqlx::Error> {
        sqlx::query_scalar(sql)
            .bind(self.id)
            .bind(self.module_name)
            .bind(self.module_version)
            .bind(self.module_sha256)
            .bind(self.queue)
            .bind(self.priority)
            .bind(self.input)
            .bind(self.run_after)
            .bind(self.max_attempts)
            .bind(self.fuel)
            .bind(self.memory_bytes)
            .bind(self.timeout_ms)
            .bind(self.unique_key)
            .bind(self.parent_id)
            .bind(self.spawn_seq)
            .bind(self.spawn_digest)
            .bind(self.depth)
            .bind(self.awaited)
            .fetch_all(conn)
            .await
    }
}

/// The statement that ends a batch of runs ([`COMPLETE`]).
fn complete_statement<'q>(
    worker_id: &'q str,
    plans: &'q [FinishPlan<'q>],
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(COMPLETE)
        .bind(worker_id)
        .bind(plans.iter().map(|p| p.task_id).collect::<Vec<_>>())
        .bind(plans.iter().map(|p| p.epoch).collect::<Vec<_>>())
        .bind(plans.iter().map(|p| p.target.as_str()).collect::<Vec<_>>())
        .bind(plans.iter().map(|p| p.result).collect::<Vec<_>>())
        .bind(plans.iter().map(|p| p.set_error).collect::<Vec<_>>())
        .bind(plans.iter().map(|p| p.error_kind).collect::<Vec<_>>())
        .bind(
            plans
                .iter()
                .map(|p| p.error_message.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            plans
                .iter()
                .map(|p| p.error_logs.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(plans.iter().map(|p| p.run_after).collect::<Vec<_>>())
        .bind(plans.iter().map(|p| p.free_run).collect::<Vec<_>>())
        .bind(plans.iter().map(|p| p.started_at).collect::<Vec<_>>())
        .bind(plans.iter().map(|p| p.outcome).collect::<Vec<_>>())
        .bind(plans.iter().map(|p| p.logs.as_deref()).collect::<Vec<_>>())
        .bind(plans.iter().map(|p| p.fuel_used).collect::<Vec<_>>())
        .bind(plans.iter().map(|p| p.peak_memory).collect::<Vec<_>>())
        .bind(plans.iter().map(|p| p.duration_ms).collect::<Vec<_>>())
        .bind(TASK_CHANNEL)
        .bind(
            plans
                .iter()
                .map(|p| i32::try_from(p.waiting_on).unwrap_or(i32::MAX))
                .collect::<Vec<_>>(),
        )
        .bind(plans.iter().map(|p| p.spawned).collect::<Vec<_>>())
}

/// Stores the children of a completion batch and settles its waits, for
/// the runs still held by this worker (a stale run stores nothing; its
/// completion is fenced off after). Children are written and locked before
/// the parents are (by the completion), in the order the resume trigger
/// locks them, so the two never deadlock.
async fn store_children(
    tx: &mut PgConnection,
    worker_id: &str,
    completions: &[Completion],
    plans: &mut [FinishPlan<'_>],
) -> Result<()> {
    let held: HashSet<Uuid> = sqlx::query_scalar(STILL_HELD)
        .bind(worker_id)
        .bind(plans.iter().map(|p| p.task_id).collect::<Vec<_>>())
        .bind(plans.iter().map(|p| p.epoch).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
    let spawns = completions
        .iter()
        .filter(|c| held.contains(&c.task_id))
        .flat_map(|c| &c.spawns);
    let columns = TaskColumns::new(spawns)?;
    if !columns.id.is_empty() {
        match columns.insert(&mut *tx, INSERT_CHILDREN).await {
            Err(e) if is_fk_violation(&e) => {
                let all: Vec<NewTask> = completions
                    .iter()
                    .flat_map(|c| c.spawns.iter().cloned())
                    .collect();
                return Err(unknown_module_bytes(&all));
            }
            other => {
                other?;
            }
        }
    }
    for plan in plans.iter_mut().filter(|p| held.contains(&p.task_id)) {
        let Some((awaited, _)) = plan.wait else {
            continue;
        };
        let seqs = awaited
            .iter()
            .map(|&s| to_i32(s, "spawn_seq"))
            .collect::<Result<Vec<_>>>()?;
        sqlx::query(MARK_AWAITED)
            .bind(plan.task_id)
            .bind(seqs)
            .execute(&mut *tx)
            .await?;
        let unfinished: i64 = sqlx::query_scalar(COUNT_AWAITED)
            .bind(plan.task_id)
            .fetch_one(&mut *tx)
            .await?;
        plan.settle_wait(unfinished);
    }
    Ok(())
}

impl Store for PgStore {
    fn backend_name(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self) -> Result<()> {
        // sqlx holds a session advisory lock for the whole run, so concurrent
        // starts apply each migration once.
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn push_module(
        &self,
        name: &str,
        version: Option<&str>,
        bytes: &[u8],
        sha256: &str,
    ) -> Result<ModuleRecord> {
        validate_module_ref(name, version)?;
        validate_sha256(sha256)?;
        let size = to_i64(bytes.len() as u64, "module size")?;
        let mut tx = self.pool.begin().await?;
        // Serialises pushes of one name, so "next version" cannot be taken twice.
        sqlx::query(LOCK_MODULE_NAME)
            .bind(name)
            .execute(&mut *tx)
            .await?;

        let existing = match version {
            None => {
                sqlx::query(concat!(
                    module_select!(),
                    " WHERE m.name = $1 AND m.sha256 = $2 ORDER BY m.id DESC LIMIT 1"
                ))
                .bind(name)
                .bind(sha256)
                .fetch_optional(&mut *tx)
                .await?
            }
            Some(version) => {
                sqlx::query(concat!(
                    module_select!(),
                    " WHERE m.name = $1 AND m.version = $2"
                ))
                .bind(name)
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?
            }
        };
        if let Some(row) = existing {
            let record = module_from_row(&row, false)?;
            if record.sha256 == sha256 {
                return Ok(record);
            }
            return Err(StoreError::Conflict(format!(
                "module {} already exists with sha256 {}; the pushed bytes have sha256 {sha256}",
                record.reference(),
                record.sha256
            )));
        }

        let version = match version {
            Some(version) => version.to_owned(),
            None => {
                let versions: Vec<String> =
                    sqlx::query_scalar("SELECT version FROM modules WHERE name = $1")
                        .bind(name)
                        .fetch_all(&mut *tx)
                        .await?;
                next_version(versions.iter().map(String::as_str))
            }
        };
        sqlx::query(
            "INSERT INTO module_blobs (sha256, size, bytes) VALUES ($1, $2, $3) \
             ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(sha256)
        .bind(size)
        .bind(bytes)
        .execute(&mut *tx)
        .await?;
        let created_at: DateTime<Utc> = sqlx::query_scalar(
            "INSERT INTO modules (name, version, sha256) VALUES ($1, $2, $3) RETURNING created_at",
        )
        .bind(name)
        .bind(&version)
        .bind(sha256)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ModuleRecord {
            name: name.to_owned(),
            version,
            sha256: sha256.to_owned(),
            size: bytes.len() as u64,
            created_at,
            created: true,
        })
    }

    async fn resolve_module(&self, name: &str, version: Option<&str>) -> Result<ModuleRecord> {
        validate_module_ref(name, version)?;
        let row = sqlx::query(concat!(
            module_select!(),
            " WHERE m.name = $1 AND ($2::text IS NULL OR m.version = $2) \
              ORDER BY m.id DESC LIMIT 1"
        ))
        .bind(name)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => module_from_row(&row, false),
            None => Err(StoreError::not_found(format!(
                "module {}",
                module_ref(name, version)
            ))),
        }
    }

    async fn module_bytes(&self, sha256: &str) -> Result<Vec<u8>> {
        let bytes: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT bytes FROM module_blobs WHERE sha256 = $1")
                .bind(sha256)
                .fetch_optional(&self.pool)
                .await?;
        bytes.ok_or_else(|| StoreError::not_found(format!("module bytes with sha256 {sha256}")))
    }

    async fn list_modules(&self) -> Result<Vec<ModuleRecord>> {
        let rows = sqlx::query(concat!(module_select!(), " ORDER BY m.name, m.id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| module_from_row(row, false)).collect()
    }

    async fn delete_module(&self, name: &str, version: Option<&str>, force: bool) -> Result<u64> {
        validate_module_ref(name, version)?;
        let mut tx = self.pool.begin().await?;
        sqlx::query(LOCK_MODULE_NAME)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if !force {
            let in_use: i64 = sqlx::query_scalar(concat!(
                "SELECT count(*) FROM tasks t \
                 WHERE t.state IN ",
                unfinished_states!(),
                " AND t.module_name = $1 \
                   AND ($2::text IS NULL OR t.module_version = $2) \
                   AND EXISTS (SELECT 1 FROM modules m WHERE m.name = t.module_name \
                               AND m.version = t.module_version AND m.sha256 = t.module_sha256)"
            ))
            .bind(name)
            .bind(version)
            .fetch_one(&mut *tx)
            .await?;
            if in_use > 0 {
                return Err(StoreError::ModuleInUse {
                    module: module_ref(name, version),
                    tasks: from_i64(in_use, "task count")?,
                });
            }
        }
        let deleted = sqlx::query(
            "DELETE FROM modules WHERE name = $1 AND ($2::text IS NULL OR version = $2)",
        )
        .bind(name)
        .bind(version)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if deleted == 0 {
            return Err(StoreError::not_found(format!(
                "module {}",
                module_ref(name, version)
            )));
        }
        sqlx::query(DELETE_ORPHAN_GRANTS)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query(GC_BLOBS).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(deleted)
    }

    async fn add_grants(&self, set: GrantSet<'_>) -> Result<u64> {
        validate_grant_set(&set)?;
        let mut tx = self.pool.begin().await?;
        sqlx::query(LOCK_MODULE_NAME)
            .bind(set.module)
            .execute(&mut *tx)
            .await?;
        let exists: Option<i32> = sqlx::query_scalar(MODULE_EXISTS)
            .bind(set.module)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(no_module_to_grant(set.module));
        }
        if set.kind == GrantKind::Secret {
            for name in set.values {
                let found: Option<i32> = sqlx::query_scalar(SECRET_EXISTS)
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?;
                if found.is_none() {
                    return Err(no_secret(name));
                }
            }
        }
        let mut added = 0;
        for value in set.values {
            if set.kind == GrantKind::Config {
                sqlx::query(DELETE_OTHER_CONFIG_VALUE)
                    .bind(set.module)
                    .bind(set.queue.unwrap_or_default())
                    .bind(config_prefix(value))
                    .bind(value)
                    .execute(&mut *tx)
                    .await?;
            }
            added += sqlx::query(INSERT_GRANT)
                .bind(set.module)
                .bind(set.queue.unwrap_or_default())
                .bind(set.kind.as_str())
                .bind(value)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        let held: i64 = sqlx::query_scalar(COUNT_GRANTS)
            .bind(set.module)
            .fetch_one(&mut *tx)
            .await?;
        if held > MAX_GRANTS_PER_MODULE as i64 {
            return Err(too_many_grants(set.module, held));
        }
        tx.commit().await?;
        Ok(added)
    }

    async fn remove_grants(&self, set: GrantSet<'_>) -> Result<u64> {
        validate_grant_set(&set)?;
        let mut tx = self.pool.begin().await?;
        let mut removed = 0;
        for value in set.values {
            let key = match set.kind {
                GrantKind::Config => config_prefix(value),
                GrantKind::Http | GrantKind::Secret => String::new(),
            };
            removed += sqlx::query(DELETE_GRANT)
                .bind(set.module)
                .bind(set.queue.unwrap_or_default())
                .bind(set.kind.as_str())
                .bind(value)
                .bind(key)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(removed)
    }

    async fn revoke_all_grants(&self, module: &str, queue: Option<&str>) -> Result<u64> {
        validate_grant_set(&GrantSet {
            module,
            queue,
            kind: GrantKind::Http,
            values: &[],
        })?;
        Ok(sqlx::query(DELETE_GRANTS_OF)
            .bind(module)
            .bind(queue)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    async fn list_grants(&self, module: Option<&str>) -> Result<Vec<ModuleGrant>> {
        let rows = sqlx::query(LIST_GRANTS)
            .bind(module)
            .fetch_all(&self.pool)
            .await?;
        let mut grants = Vec::with_capacity(rows.len());
        for row in &rows {
            let kind: String = row.try_get("kind")?;
            grants.extend(grant_from_columns(
                row.try_get("module_name")?,
                row.try_get("queue")?,
                &kind,
                row.try_get("value")?,
                row.try_get("created_at")?,
            ));
        }
        Ok(grants)
    }

    async fn put_secret(&self, secret: &StoredSecret) -> Result<bool> {
        validate_secret_name(&secret.name)?;
        Ok(sqlx::query_scalar(UPSERT_SECRET)
            .bind(&secret.name)
            .bind(&secret.key_id)
            .bind(&secret.nonce)
            .bind(&secret.ciphertext)
            .fetch_one(&self.pool)
            .await?)
    }

    async fn list_secrets(&self) -> Result<Vec<SecretInfo>> {
        let rows = sqlx::query(LIST_SECRETS).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                Ok(SecretInfo {
                    name: row.try_get("name")?,
                    key_id: row.try_get("key_id")?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                })
            })
            .collect()
    }

    async fn delete_secret(&self, name: &str) -> Result<()> {
        validate_secret_name(name)?;
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query(DELETE_SECRET)
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::not_found(format!("secret {name}")));
        }
        sqlx::query(DELETE_SECRET_GRANTS)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn sealed_secrets(&self, names: &[String]) -> Result<Vec<StoredSecret>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(SEALED_SECRETS)
            .bind(names)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredSecret {
                    name: row.try_get("name")?,
                    key_id: row.try_get("key_id")?,
                    nonce: row.try_get("nonce")?,
                    ciphertext: row.try_get("ciphertext")?,
                })
            })
            .collect()
    }

    async fn enqueue(&self, task: NewTask) -> Result<EnqueueOutcome> {
        let mut outcomes = self.enqueue_batch(std::slice::from_ref(&task)).await?;
        Ok(outcomes.remove(0))
    }

    async fn enqueue_batch(&self, tasks: &[NewTask]) -> Result<Vec<EnqueueOutcome>> {
        for task in tasks {
            validate_new_task(task)?;
        }
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        let mut outcomes: Vec<Option<EnqueueOutcome>> = vec![None; tasks.len()];
        let mut pending: Vec<usize> = (0..tasks.len()).collect();
        for _ in 0..DEDUP_ROUNDS {
            let columns = TaskColumns::new(pending.iter().map(|&i| &tasks[i]))?;
            let inserted: HashSet<Uuid> = match columns.insert(&mut tx, INSERT_TASKS).await {
                Ok(ids) => ids.into_iter().collect(),
                Err(e) if is_fk_violation(&e) => return Err(unknown_module_bytes(tasks)),
                Err(e) => return Err(e.into()),
            };
            let mut conflicted = Vec::new();
            for &i in &pending {
                if inserted.contains(&tasks[i].id) {
                    outcomes[i] = Some(EnqueueOutcome {
                        id: tasks[i].id,
                        deduplicated: false,
                    });
                } else {
                    conflicted.push(i);
                }
            }
            if conflicted.is_empty() {
                pending.clear();
                break;
            }
            // Only the unique-key index is an ON CONFLICT target.
            let keys: Vec<&str> = conflicted
                .iter()
                .filter_map(|&i| tasks[i].unique_key.as_deref())
                .collect();
            let holders: HashMap<String, Uuid> = sqlx::query_as(concat!(
                "SELECT unique_key, id FROM tasks \
                 WHERE unique_key = ANY($1) AND state IN ",
                unfinished_states!()
            ))
            .bind(keys)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
            pending.clear();
            for i in conflicted {
                match tasks[i].unique_key.as_ref().and_then(|k| holders.get(k)) {
                    Some(&id) => {
                        outcomes[i] = Some(EnqueueOutcome {
                            id,
                            deduplicated: true,
                        })
                    }
                    // The holder finished meanwhile: insert again.
                    None => pending.push(i),
                }
            }
            if pending.is_empty() {
                break;
            }
        }
        if !pending.is_empty() {
            return Err(StoreError::Conflict(format!(
                "unique key {:?} keeps changing hands; try again",
                tasks[pending[0]].unique_key
            )));
        }
        let outcomes: Vec<EnqueueOutcome> = outcomes
            .into_iter()
            .map(|o| o.expect("every task has an outcome"))
            .collect();
        let queues: BTreeSet<String> = tasks
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| !outcome.deduplicated)
            .map(|(task, _)| task.queue.clone())
            .collect();
        notify_queues(&mut tx, queues).await?;
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn get_task(&self, id: Uuid) -> Result<TaskRecord> {
        let row = sqlx::query(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => task_from_row(&row),
            None => Err(StoreError::not_found(format!("task {id}"))),
        }
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskSummary>> {
        let limit = list_limit(filter.limit)?;
        let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(concat!(
            "SELECT ",
            summary_columns!(),
            " FROM tasks WHERE true"
        ));
        if let Some(state) = filter.state {
            qb.push(" AND state = ").push_bind(state.as_str());
        }
        if let Some(queue) = &filter.queue {
            qb.push(" AND queue = ").push_bind(queue.clone());
        }
        if let Some(module) = &filter.module {
            qb.push(" AND module_name = ").push_bind(module.clone());
        }
        if let Some(before) = filter.before_seq {
            qb.push(" AND seq < ").push_bind(before);
        }
        qb.push(" ORDER BY seq DESC LIMIT ").push_bind(limit);
        let rows = qb.build().fetch_all(&self.pool).await?;
        rows.iter().map(summary_from_row).collect()
    }

    async fn child_ledger(&self, parent: Uuid) -> Result<Vec<ChildRecord>> {
        let row = sqlx::query(CHILD_LEDGER)
            .bind(parent)
            .fetch_one(&self.pool)
            .await?;
        let Some(seqs) = row.try_get::<Option<Vec<i32>>, _>("seqs")? else {
            return Ok(Vec::new());
        };
        let column = |name: &str| row.try_get::<Vec<Option<String>>, _>(name);
        let ids: Vec<Uuid> = row.try_get("ids")?;
        let states: Vec<String> = row.try_get("states")?;
        let (digests, results) = (column("digests")?, column("results")?);
        let (kinds, messages) = (column("error_kinds")?, column("error_messages")?);
        let n = seqs.len();
        if [
            ids.len(),
            states.len(),
            digests.len(),
            results.len(),
            kinds.len(),
            messages.len(),
        ]
        .iter()
        .any(|&len| len != n)
        {
            return Err(StoreError::corrupt(
                "the children's ledger arrays differ in length",
            ));
        }
        let mut out = Vec::with_capacity(n);
        let rest = ids.into_iter().zip(states).zip(digests).zip(results);
        for ((seq, (((id, state), digest), result)), (error_kind, error_message)) in seqs
            .into_iter()
            .zip(rest)
            .zip(kinds.into_iter().zip(messages))
        {
            out.push(ChildRecord {
                seq: u32::try_from(seq)
                    .map_err(|_| StoreError::corrupt(format!("spawn_seq {seq} out of range")))?,
                id,
                digest: digest.unwrap_or_default(),
                state: parse_state(&state)?,
                result,
                error_kind,
                error_message,
            });
        }
        out.sort_by_key(|c| c.seq);
        Ok(out)
    }

    async fn list_children(&self, parent: Uuid, from: u32, limit: u32) -> Result<Vec<TaskSummary>> {
        let limit = list_limit(limit)?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            summary_columns!(),
            " FROM tasks WHERE parent_id = $1 AND spawn_seq >= $2 ORDER BY spawn_seq LIMIT $3"
        ))
        .bind(parent)
        .bind(to_i32(from, "from")?)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            self.task_state(parent).await?;
        }
        rows.iter().map(summary_from_row).collect()
    }

    async fn family_usage(&self, id: Uuid) -> Result<FamilyUsage> {
        let (descendants, fuel, ms): (i64, i64, i64) = sqlx::query_as(FAMILY_USAGE)
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        Ok(FamilyUsage {
            descendants: from_i64(descendants, "descendants")?,
            fuel_used: from_i64(fuel, "fuel_used")?,
            duration_ms: from_i64(ms, "duration_ms")?,
        })
    }

    async fn list_attempts(&self, task_id: Uuid) -> Result<Vec<AttemptRecord>> {
        let rows = sqlx::query(
            "SELECT id, task_id, attempt, lease_epoch, worker_id, started_at, finished_at, \
                 outcome, error_message, logs, fuel_used, peak_memory, duration_ms, \
                 ray_submission_id, ray_node_id \
             FROM attempts WHERE task_id = $1 ORDER BY id",
        )
        .bind(task_id)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            // Distinguish "never ran" from "no such task".
            self.task_state(task_id).await?;
        }
        rows.iter().map(attempt_from_row).collect()
    }

    async fn queue_stats(&self) -> Result<Vec<QueueStat>> {
        // Unfinished rows through tasks_state_idx; finished ones from the
        // counts the trigger of migration 0004 keeps, one row per shard.
        let rows = sqlx::query(concat!(
            "SELECT queue, state, count(*) AS n, \
                 min(enqueued_at) FILTER (WHERE state = 'queued') AS oldest \
             FROM tasks WHERE state IN ",
            unfinished_states!(),
            " GROUP BY queue, state \
             UNION ALL \
             SELECT queue, state, sum(n)::bigint, NULL FROM task_counts \
             GROUP BY queue, state HAVING sum(n) <> 0"
        ))
        .fetch_all(&self.pool)
        .await?;
        let mut stats = rows
            .iter()
            .map(|row| {
                Ok(QueueStat {
                    queue: row.try_get("queue")?,
                    state: parse_state(row.try_get("state")?)?,
                    count: from_i64(row.try_get("n")?, "count")?,
                    oldest_queued_at: row.try_get("oldest")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        sort_stats(&mut stats);
        Ok(stats)
    }

    async fn claim(
        &self,
        worker_id: &str,
        queues: &QueueSelector,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<ClaimedTask>> {
        validate_worker_id(worker_id)?;
        let limit = validate_limit(limit)?;
        let lease = lease_micros(lease)?;
        // A single queue gets `queue = $4` so the claim index also yields the
        // order; `= ANY` over several queues needs a top-N sort instead.
        let clause = match queues {
            QueueSelector::All => "",
            QueueSelector::Named(names) if names.is_empty() => return Ok(Vec::new()),
            QueueSelector::Named(names) if names.len() == 1 => "AND queue = $4",
            QueueSelector::Named(_) => "AND queue = ANY($4)",
        };
        let sql = CLAIM_TEMPLATE.replace("{queues}", clause);
        let mut query = sqlx::query(AssertSqlSafe(sql))
            .bind(worker_id)
            .bind(lease)
            .bind(limit);
        match queues {
            QueueSelector::Named(names) if names.len() == 1 => query = query.bind(&names[0]),
            QueueSelector::Named(names) => query = query.bind(names),
            QueueSelector::All => {}
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                Ok(ClaimedTask {
                    id: row.try_get("id")?,
                    module_name: row.try_get("module_name")?,
                    module_version: row.try_get("module_version")?,
                    module_sha256: row.try_get("module_sha256")?,
                    queue: row.try_get("queue")?,
                    priority: row.try_get("priority")?,
                    input: row.try_get("input")?,
                    attempt: int4(row, "attempt")?,
                    epoch: from_i64(row.try_get("lease_epoch")?, "lease_epoch")?,
                    max_attempts: int4(row, "max_attempts")?,
                    free_runs: int4(row, "free_runs")?,
                    limits: limits_from_row(row)?,
                    enqueued_at: row.try_get("enqueued_at")?,
                    lease_expires_at: row.try_get("lease_expires_at")?,
                    cancel_requested: row.try_get("cancel_requested")?,
                    depth: int4(row, "depth")?,
                    children: int4(row, "children")?,
                })
            })
            .collect()
    }

    async fn mark_started(&self, worker_id: &str, starts: &[Started]) -> Result<Vec<bool>> {
        validate_worker_id(worker_id)?;
        let leases: Vec<Lease> = starts.iter().map(|s| s.lease).collect();
        validate_leases(&leases)?;
        if starts.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(MARK_STARTED)
            .bind(worker_id)
            .bind(leases.iter().map(|l| l.task_id).collect::<Vec<_>>())
            .bind(leases.iter().map(|l| l.epoch as i64).collect::<Vec<_>>())
            .bind(starts.iter().map(|s| s.at).collect::<Vec<_>>())
            .fetch_all(&self.pool)
            .await?;
        let applied = leases_from_rows(&rows)?;
        Ok(applied_flags(leases, &applied))
    }

    async fn complete(&self, worker_id: &str, completions: &[Completion]) -> Result<Vec<bool>> {
        validate_worker_id(worker_id)?;
        let mut plans = completion_plans(completions)?;
        if plans.is_empty() {
            return Ok(Vec::new());
        }
        let rows = if plans.iter().any(|p| p.spawned || p.wait.is_some()) {
            // Children and waits: a transaction that stores the children and
            // settles the waits before the completion statement.
            let mut tx = self.pool.begin().await?;
            store_children(&mut tx, worker_id, completions, &mut plans).await?;
            let rows = complete_statement(worker_id, &plans)
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            rows
        } else {
            // One statement, and so one round trip and one commit.
            complete_statement(worker_id, &plans)
                .fetch_all(&self.pool)
                .await?
        };
        let applied = leases_from_rows(&rows)?;
        Ok(applied_flags(
            completions.iter().map(Completion::lease),
            &applied,
        ))
    }

    async fn heartbeat(
        &self,
        worker_id: &str,
        leases: &[Lease],
        lease: Duration,
    ) -> Result<HeartbeatReply> {
        validate_worker_id(worker_id)?;
        validate_leases(leases)?;
        let lease = lease_micros(lease)?;
        let rows: Vec<(Uuid, bool, bool)> = sqlx::query_as(HEARTBEAT)
            .bind(worker_id)
            .bind(lease)
            .bind(leases.iter().map(|l| l.task_id).collect::<Vec<_>>())
            .bind(leases.iter().map(|l| l.epoch as i64).collect::<Vec<_>>())
            .fetch_all(&self.pool)
            .await?;
        // Held but locked rows are still ours: not lost, not (yet) extended.
        let ours: Vec<(Uuid, bool)> = rows.iter().map(|&(id, cancel, _)| (id, cancel)).collect();
        Ok(heartbeat_reply(leases, &ours))
    }

    async fn cancel_requests(&self, worker_id: &str) -> Result<Vec<Uuid>> {
        Ok(sqlx::query_scalar(concat!(
            "SELECT id FROM tasks WHERE state IN ",
            live_states!(),
            " AND lease_owner = $1 AND cancel_requested"
        ))
        .bind(worker_id)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn expired_leases(&self, limit: u32) -> Result<Vec<ExpiredTask>> {
        let limit = validate_limit(limit)?;
        let rows = sqlx::query(concat!(
            "SELECT id, attempt, lease_epoch, max_attempts, free_runs, lease_owner, queue, \
                 module_name || '@' || module_version AS module FROM tasks \
             WHERE state IN ",
            live_states!(),
            " AND lease_expires_at < now() \
             ORDER BY lease_expires_at LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ExpiredTask {
                    id: row.try_get("id")?,
                    attempt: int4(row, "attempt")?,
                    epoch: from_i64(row.try_get("lease_epoch")?, "lease_epoch")?,
                    max_attempts: int4(row, "max_attempts")?,
                    free_runs: int4(row, "free_runs")?,
                    lease_owner: row.try_get("lease_owner")?,
                    queue: row.try_get("queue")?,
                    module: row.try_get("module")?,
                })
            })
            .collect()
    }

    async fn expire(&self, task_id: Uuid, epoch: u64, transition: Transition) -> Result<bool> {
        let (target, run_after) = expire_target(&transition)?;
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(EXPIRE)
            .bind(task_id)
            .bind(to_i64(epoch, "epoch")?)
            .bind(target.as_str())
            .bind(run_after)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else { return Ok(false) };
        let state: &str = row.try_get("state")?;
        if state == TaskState::Queued.as_str() && row.try_get::<bool, _>("due")? {
            notify_queues(&mut tx, BTreeSet::from([row.try_get("queue")?])).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn request_cancel(&self, id: Uuid) -> Result<CancelOutcome> {
        let mut tx = self.pool.begin().await?;
        let changed: Vec<(Uuid, String)> = sqlx::query_as(REQUEST_CANCEL)
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
        // Workers stop the live ones (the task or its descendants).
        let live: Vec<String> = changed
            .iter()
            .filter(|(_, state)| state != TaskState::Cancelled.as_str())
            .map(|(id, _)| id.to_string())
            .collect();
        if !live.is_empty() {
            sqlx::query("SELECT pg_notify($1, i) FROM unnest($2::text[]) AS i")
                .bind(CANCEL_CHANNEL)
                .bind(live)
                .execute(&mut *tx)
                .await?;
        }
        let own = changed.iter().find(|(changed, _)| *changed == id);
        let outcome = match own.map(|(_, s)| parse_state(s)).transpose()? {
            Some(TaskState::Cancelled) => CancelOutcome::Cancelled,
            Some(_) => CancelOutcome::Requested,
            None => {
                drop(tx);
                return Ok(CancelOutcome::AlreadyFinished(self.task_state(id).await?));
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn retry(&self, id: Uuid) -> Result<TaskRecord> {
        let mut tx = self.pool.begin().await?;
        let row = match sqlx::query(RETRY_TASK)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
        {
            Ok(row) => row,
            Err(e) if is_unique_violation(&e) => return Err(unique_key_taken(id)),
            Err(e) => return Err(e.into()),
        };
        let Some(row) = row else {
            drop(tx);
            let from = self.task_state(id).await?;
            return Err(StoreError::IllegalTransition {
                id,
                from,
                action: "retry",
            });
        };
        let task = task_from_row(&row)?;
        notify_queues(&mut tx, BTreeSet::from([task.queue.clone()])).await?;
        tx.commit().await?;
        Ok(task)
    }

    async fn purge(&self, state: TaskState, older_than: DateTime<Utc>) -> Result<u64> {
        validate_purge_state(state)?;
        let mut deleted = 0;
        loop {
            let n = sqlx::query(
                "DELETE FROM tasks WHERE id = ANY(ARRAY( \
                     SELECT id FROM tasks WHERE state = $1 AND finished_at < $2 LIMIT $3))",
            )
            .bind(state.as_str())
            .bind(older_than)
            .bind(i64::from(PURGE_BATCH))
            .execute(&self.pool)
            .await?
            .rows_affected();
            deleted += n;
            if n < u64::from(PURGE_BATCH) {
                break;
            }
        }
        if deleted > 0 {
            sqlx::query(GC_BLOBS).execute(&self.pool).await?;
        }
        Ok(deleted)
    }

    async fn register_worker(&self, info: &WorkerInfo) -> Result<()> {
        validate_worker_id(&info.id)?;
        sqlx::query(
            "INSERT INTO workers (id, hostname, pid, mode, queues, concurrency) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname, pid = excluded.pid, \
                 mode = excluded.mode, queues = excluded.queues, \
                 concurrency = excluded.concurrency, started_at = now(), \
                 last_heartbeat_at = now(), stopped_at = NULL",
        )
        .bind(&info.id)
        .bind(&info.hostname)
        .bind(i64::from(info.pid))
        .bind(&info.mode)
        .bind(info.queues.to_string())
        .bind(to_i32(info.concurrency, "concurrency")?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_progress(
        &self,
        worker_id: &str,
        lease: Lease,
        percent: u8,
        message: &str,
    ) -> Result<bool> {
        let n = sqlx::query(concat!(
            "UPDATE tasks SET progress_percent = $1, progress_message = $2 \
             WHERE id = $3 AND state IN ",
            live_states!(),
            " AND lease_owner = $4 \
               AND lease_epoch = $5"
        ))
        .bind(i16::from(percent.min(100)))
        .bind(progress_message(message))
        .bind(lease.task_id)
        .bind(worker_id)
        .bind(to_i64(lease.epoch, "epoch")?)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn set_ray_submission(
        &self,
        worker_id: &str,
        lease: Lease,
        submission_id: &str,
    ) -> Result<bool> {
        let epoch = to_i64(lease.epoch, "epoch")?;
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query(concat!(
            "UPDATE tasks SET ray_submission_id = $1 \
             WHERE id = $2 AND state IN ",
            live_states!(),
            " AND lease_owner = $3 \
               AND lease_epoch = $4"
        ))
        .bind(submission_id)
        .bind(lease.task_id)
        .bind(worker_id)
        .bind(epoch)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 1 {
            sqlx::query(
                "UPDATE attempts SET ray_submission_id = $1 \
                 WHERE task_id = $2 AND lease_epoch = $3 AND finished_at IS NULL",
            )
            .bind(submission_id)
            .bind(lease.task_id)
            .bind(epoch)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn set_ray_node(&self, worker_id: &str, lease: Lease, node_id: &str) -> Result<bool> {
        let epoch = to_i64(lease.epoch, "epoch")?;
        let n = sqlx::query(
            "UPDATE attempts SET ray_node_id = $1 \
             WHERE task_id = $2 AND lease_epoch = $3 AND worker_id = $4 \
               AND finished_at IS NULL",
        )
        .bind(node_id)
        .bind(lease.task_id)
        .bind(epoch)
        .bind(worker_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn stop_worker(&self, id: &str) -> Result<()> {
        let found = sqlx::query(
            "UPDATE workers SET stopped_at = coalesce(stopped_at, now()) WHERE id = $1",
        )
        .bind(id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if found == 0 {
            return Err(StoreError::not_found(format!("worker {id}")));
        }
        Ok(())
    }

    async fn mark_stale_workers(&self, silent_for: Duration) -> Result<u64> {
        let micros = i64::try_from(silent_for.as_micros()).unwrap_or(i64::MAX / 2);
        let marked = sqlx::query(
            "UPDATE workers SET stopped_at = now() \
             WHERE stopped_at IS NULL \
               AND last_heartbeat_at < now() - $1::float8 * interval '1 microsecond'",
        )
        .bind(micros)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(marked)
    }

    async fn list_workers(&self) -> Result<Vec<WorkerRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT w.id, w.hostname, w.pid, w.mode, w.queues, w.concurrency, w.started_at, \
                 w.last_heartbeat_at, w.stopped_at, \
                 (SELECT count(*) FROM tasks t \
                  WHERE t.state IN ",
            live_states!(),
            " AND t.lease_owner = w.id) AS running_tasks \
             FROM workers w ORDER BY w.started_at DESC, w.id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(worker_from_row).collect()
    }

    async fn listen(&self) -> Result<Listener> {
        Listener::postgres(PgListener::connect_with(&self.pool).await?).await
    }
}
