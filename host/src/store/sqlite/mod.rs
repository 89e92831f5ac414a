//! SQLite backend: one database file shared by the workers of one machine.
//!
//! - WAL journal, `synchronous=FULL` (a commit is durable when it returns),
//!   foreign keys on, a long busy timeout.
//! - Every multi-statement write runs in a `BEGIN IMMEDIATE` transaction: it
//!   takes the write lock up front, so processes sharing the file wait for
//!   each other (busy timeout) instead of failing with `SQLITE_BUSY` when a
//!   read transaction cannot be upgraded.
//! - Within one process writers also queue on an async mutex: SQLite's busy
//!   handler waits by sleeping (up to 100 ms a turn), which would waste most
//!   of the time a single-writer database has.
//! - Times are INTEGER unix microseconds, taken from this process's clock.
//! - Events reach listeners of this process directly; what other processes
//!   commit is noticed by watching the file's commit counter
//!   ([`CommitWatch`]).

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::Rng;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, QueryBuilder, Row, Sqlite, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};
use uuid::Uuid;

mod rows;
#[macro_use]
mod sql;

use self::rows::*;
use self::sql::*;
use super::notify::{CommitWatch, Listener, LocalEvents};
use super::shared::*;
use super::*;

static MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");

/// How long a writer waits for another process's write transaction.
/// Well under the default lease (30 s): a heartbeat that cannot get the
/// write lock in time fails, is counted and logged, and the next one tries
/// again long before the lease runs out. Long writers (purge) work in short
/// transactions so that this is rarely reached.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one purge transaction aims to hold the write lock: a heartbeat
/// of another process waits about this long, not for the whole purge.
const PURGE_HOLD: Duration = Duration::from_millis(100);

/// Rows of the first purge transaction, before its time is known.
const PURGE_FIRST_BATCH: u32 = 1_000;

/// The pause between two purge transactions. It is longer than the longest
/// sleep of SQLite's busy handler (100 ms), so every writer of another
/// process that waits for the lock gets it before the next batch.
const PURGE_PAUSE: Duration = Duration::from_millis(120);

/// The next purge batch: as many rows as the last one deleted in
/// [`PURGE_HOLD`], between 100 and [`PURGE_BATCH`].
fn next_purge_batch(rows: u32, took: Duration) -> u32 {
    let per_row = took.as_secs_f64() / f64::from(rows.max(1));
    let fit = (PURGE_HOLD.as_secs_f64() / per_row.max(1e-9)) as u64;
    fit.clamp(100, u64::from(PURGE_BATCH)) as u32
}

/// SQLite primary result codes (the low byte of extended codes).
const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    write_gate: Arc<Mutex<()>>,
    events: LocalEvents,
    /// How to open the connection a listener watches other processes'
    /// commits on; `None` for an in-memory database, which no other
    /// process can reach.
    watch_options: Option<Arc<SqliteConnectOptions>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

/// A `BEGIN IMMEDIATE` transaction plus this process's writer turn.
/// Dropping it rolls back.
struct WriteTx {
    // Field order matters: the transaction ends before the turn is passed on.
    tx: Transaction<'static, Sqlite>,
    _turn: OwnedMutexGuard<()>,
}

impl WriteTx {
    async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

impl SqliteStore {
    /// Opens `sqlite://PATH` (created if missing) or `sqlite::memory:`.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, DEFAULT_MAX_CONNECTIONS).await
    }

    pub async fn connect_with(url: &str, max_connections: u32) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?;
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        Self::open(options, in_memory, max_connections).await
    }

    /// Opens with explicit options; the durability settings are applied on
    /// top of them.
    pub async fn open(
        options: SqliteConnectOptions,
        in_memory: bool,
        max_connections: u32,
    ) -> Result<Self> {
        let options = options
            .create_if_missing(true)
            .foreign_keys(true)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .log_slow_statements(SLOW_STATEMENT_LEVEL, SLOW_STATEMENT);
        let pool_options = SqlitePoolOptions::new().acquire_timeout(BUSY_TIMEOUT * 2);
        let watch_options = (!in_memory).then(|| Arc::new(options.clone()));
        let pool = if in_memory {
            // A shared in-memory database lives as long as one connection does.
            pool_options
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await?
        } else {
            enable_wal(&options).await?;
            pool_options
                .max_connections(max_connections.max(1))
                .connect_with(options)
                .await?
        };
        Ok(SqliteStore {
            pool,
            write_gate: Arc::new(Mutex::new(())),
            events: LocalEvents::new(),
            watch_options,
        })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn begin_write(&self) -> Result<WriteTx> {
        let turn = self.write_gate.clone().lock_owned().await;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(WriteTx { tx, _turn: turn })
    }

    async fn task_state(&self, id: Uuid) -> Result<TaskState> {
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM tasks WHERE id = ?1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        match state {
            Some(state) => parse_state(&state),
            None => Err(StoreError::not_found(format!("task {id}"))),
        }
    }
}

/// Switches the file to WAL once, before the pool opens. Changing the journal
/// mode needs an exclusive lock that SQLite does not wait for with the busy
/// timeout, so two processes opening a fresh file at once must retry here.
/// WAL is persistent; the pool's connections then need no journal pragma.
async fn enable_wal(options: &SqliteConnectOptions) -> Result<()> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        let attempt = async {
            let mut conn = options
                .clone()
                .journal_mode(SqliteJournalMode::Wal)
                .connect()
                .await?;
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(&mut conn)
                .await?;
            conn.close().await?;
            Ok::<_, sqlx::Error>(mode)
        }
        .await;
        match attempt {
            Ok(mode) if mode.eq_ignore_ascii_case("wal") => return Ok(()),
            Ok(mode) => {
                return Err(StoreError::invalid(format!(
                    "SQLite database cannot use WAL journal mode (it reports {mode:?})"
                )));
            }
            Err(e) if is_busy(&e) && Instant::now() < deadline => {
                let pause = Duration::from_millis(rand::thread_rng().gen_range(5..50));
                tokio::time::sleep(pause).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn is_busy(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    db.code()
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, SQLITE_BUSY | SQLITE_LOCKED))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn is_fk_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_foreign_key_violation())
}

/// Stores the children of a completion batch and settles its waits, for
/// the runs still held by this worker (a stale run stores nothing; its
/// completion is fenced off after). The write transaction holds SQLite's
/// one write lock, so no child can end between the count and the
/// completion.
async fn store_children(
    w: &mut WriteTx,
    worker_id: &str,
    completions: &[Completion],
    plans: &mut [FinishPlan<'_>],
    now: i64,
) -> Result<()> {
    let named: Vec<StartRow> = plans
        .iter()
        .map(|p| StartRow {
            id: p.task_id,
            epoch: p.epoch,
            at: now,
        })
        .collect();
    let held: Vec<String> = sqlx::query_scalar(HELD_LEASES)
        .bind(to_json(&named))
        .bind(worker_id)
        .fetch_all(&mut *w.tx)
        .await?;
    let held: HashSet<Uuid> = held.iter().map(|id| uuid(id)).collect::<Result<_>>()?;
    let rows = completions
        .iter()
        .filter(|c| held.contains(&c.task_id))
        .flat_map(|c| &c.spawns)
        .map(|t| TaskRow::new(t, now))
        .collect::<Result<Vec<_>>>()?;
    if !rows.is_empty() {
        let inserted = sqlx::query(INSERT_CHILDREN)
            .bind(to_json(&rows))
            .bind(now)
            .execute(&mut *w.tx)
            .await;
        match inserted {
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
        sqlx::query(MARK_AWAITED)
            .bind(plan.task_id.to_string())
            .bind(to_json(&awaited))
            .execute(&mut *w.tx)
            .await?;
        let unfinished: i64 = sqlx::query_scalar(COUNT_AWAITED)
            .bind(plan.task_id.to_string())
            .fetch_one(&mut *w.tx)
            .await?;
        plan.settle_wait(unfinished);
    }
    Ok(())
}

impl Store for SqliteStore {
    fn backend_name(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> Result<()> {
        // The whole run holds the write lock (sqlx's migration lock is a no-op
        // on SQLite), so a second process starting at the same time waits,
        // then finds every migration applied. sqlx runs each migration in a
        // savepoint of this transaction. `run_direct` is what `Migrator::run`
        // calls once it has a connection; sqlx exposes it because `run` on a
        // borrowed connection inside a `Send` future trips rustc's
        // higher-ranked lifetime check ("Acquire is not general enough").
        let mut w = self.begin_write().await?;
        MIGRATOR.run_direct(None, &mut *w.tx, false).await?;
        w.commit().await
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
        let now = us(Utc::now());
        let mut w = self.begin_write().await?;

        let existing = match version {
            None => {
                sqlx::query(concat!(
                    module_select!(),
                    " WHERE m.name = ?1 AND m.sha256 = ?2 ORDER BY m.id DESC LIMIT 1",
                ))
                .bind(name)
                .bind(sha256)
                .fetch_optional(&mut *w.tx)
                .await?
            }
            Some(version) => {
                sqlx::query(concat!(
                    module_select!(),
                    " WHERE m.name = ?1 AND m.version = ?2",
                ))
                .bind(name)
                .bind(version)
                .fetch_optional(&mut *w.tx)
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
                    sqlx::query_scalar("SELECT version FROM modules WHERE name = ?1")
                        .bind(name)
                        .fetch_all(&mut *w.tx)
                        .await?;
                next_version(versions.iter().map(String::as_str))
            }
        };
        sqlx::query(
            "INSERT INTO module_blobs (sha256, size, bytes, created_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(sha256)
        .bind(size)
        .bind(bytes)
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
        sqlx::query(
            "INSERT INTO modules (name, version, sha256, created_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(name)
        .bind(&version)
        .bind(sha256)
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
        w.commit().await?;
        Ok(ModuleRecord {
            name: name.to_owned(),
            version,
            sha256: sha256.to_owned(),
            size: bytes.len() as u64,
            created_at: ts(now)?,
            created: true,
        })
    }

    async fn resolve_module(&self, name: &str, version: Option<&str>) -> Result<ModuleRecord> {
        validate_module_ref(name, version)?;
        let row = sqlx::query(concat!(
            module_select!(),
            " WHERE m.name = ?1 AND (?2 IS NULL OR m.version = ?2) ORDER BY m.id DESC LIMIT 1",
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
            sqlx::query_scalar("SELECT bytes FROM module_blobs WHERE sha256 = ?1")
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
        let mut w = self.begin_write().await?;
        if !force {
            let in_use: i64 = sqlx::query_scalar(concat!(
                "SELECT count(*) FROM tasks t \
                 WHERE t.state IN ",
                unfinished_states!(),
                " AND t.module_name = ?1 \
                   AND (?2 IS NULL OR t.module_version = ?2) \
                   AND EXISTS (SELECT 1 FROM modules m WHERE m.name = t.module_name \
                               AND m.version = t.module_version AND m.sha256 = t.module_sha256)"
            ))
            .bind(name)
            .bind(version)
            .fetch_one(&mut *w.tx)
            .await?;
            if in_use > 0 {
                return Err(StoreError::ModuleInUse {
                    module: module_ref(name, version),
                    tasks: from_i64(in_use, "task count")?,
                });
            }
        }
        let deleted =
            sqlx::query("DELETE FROM modules WHERE name = ?1 AND (?2 IS NULL OR version = ?2)")
                .bind(name)
                .bind(version)
                .execute(&mut *w.tx)
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
            .execute(&mut *w.tx)
            .await?;
        sqlx::query(GC_BLOBS).execute(&mut *w.tx).await?;
        w.commit().await?;
        Ok(deleted)
    }

    async fn add_grants(&self, set: GrantSet<'_>) -> Result<u64> {
        validate_grant_set(&set)?;
        let mut w = self.begin_write().await?;
        let exists: Option<i64> = sqlx::query_scalar(MODULE_EXISTS)
            .bind(set.module)
            .fetch_optional(&mut *w.tx)
            .await?;
        if exists.is_none() {
            return Err(no_module_to_grant(set.module));
        }
        if set.kind == GrantKind::Secret {
            for name in set.values {
                let found: Option<i64> = sqlx::query_scalar(SECRET_EXISTS)
                    .bind(name)
                    .fetch_optional(&mut *w.tx)
                    .await?;
                if found.is_none() {
                    return Err(no_secret(name));
                }
            }
        }
        let now = us(Utc::now());
        let mut added = 0;
        for value in set.values {
            if set.kind == GrantKind::Config {
                sqlx::query(DELETE_OTHER_CONFIG_VALUE)
                    .bind(set.module)
                    .bind(set.queue.unwrap_or_default())
                    .bind(config_prefix(value))
                    .bind(value)
                    .execute(&mut *w.tx)
                    .await?;
            }
            added += sqlx::query(INSERT_GRANT)
                .bind(set.module)
                .bind(set.queue.unwrap_or_default())
                .bind(set.kind.as_str())
                .bind(value)
                .bind(now)
                .execute(&mut *w.tx)
                .await?
                .rows_affected();
        }
        let held: i64 = sqlx::query_scalar(COUNT_GRANTS)
            .bind(set.module)
            .fetch_one(&mut *w.tx)
            .await?;
        if held > MAX_GRANTS_PER_MODULE as i64 {
            return Err(too_many_grants(set.module, held));
        }
        w.commit().await?;
        Ok(added)
    }

    async fn remove_grants(&self, set: GrantSet<'_>) -> Result<u64> {
        validate_grant_set(&set)?;
        let mut w = self.begin_write().await?;
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
                .execute(&mut *w.tx)
                .await?
                .rows_affected();
        }
        w.commit().await?;
        Ok(removed)
    }

    async fn revoke_all_grants(&self, module: &str, queue: Option<&str>) -> Result<u64> {
        validate_grant_set(&GrantSet {
            module,
            queue,
            kind: GrantKind::Http,
            values: &[],
        })?;
        let mut w = self.begin_write().await?;
        let removed = sqlx::query(DELETE_GRANTS_OF)
            .bind(module)
            .bind(queue)
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        w.commit().await?;
        Ok(removed)
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
                ts(row.try_get("created_at")?)?,
            ));
        }
        Ok(grants)
    }

    async fn put_secret(&self, secret: &StoredSecret) -> Result<bool> {
        validate_secret_name(&secret.name)?;
        let now = us(Utc::now());
        let mut w = self.begin_write().await?;
        let exists: Option<i64> = sqlx::query_scalar(SECRET_EXISTS)
            .bind(&secret.name)
            .fetch_optional(&mut *w.tx)
            .await?;
        let sql = if exists.is_some() {
            UPDATE_SECRET
        } else {
            INSERT_SECRET
        };
        sqlx::query(sql)
            .bind(&secret.name)
            .bind(&secret.key_id)
            .bind(&secret.nonce)
            .bind(&secret.ciphertext)
            .bind(now)
            .execute(&mut *w.tx)
            .await?;
        w.commit().await?;
        Ok(exists.is_none())
    }

    async fn list_secrets(&self) -> Result<Vec<SecretInfo>> {
        let rows = sqlx::query(LIST_SECRETS).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                Ok(SecretInfo {
                    name: row.try_get("name")?,
                    key_id: row.try_get("key_id")?,
                    created_at: ts(row.try_get("created_at")?)?,
                    updated_at: ts(row.try_get("updated_at")?)?,
                })
            })
            .collect()
    }

    async fn delete_secret(&self, name: &str) -> Result<()> {
        validate_secret_name(name)?;
        let mut w = self.begin_write().await?;
        let deleted = sqlx::query(DELETE_SECRET)
            .bind(name)
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::not_found(format!("secret {name}")));
        }
        sqlx::query(DELETE_SECRET_GRANTS)
            .bind(name)
            .execute(&mut *w.tx)
            .await?;
        w.commit().await?;
        Ok(())
    }

    async fn sealed_secrets(&self, names: &[String]) -> Result<Vec<StoredSecret>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(SEALED_SECRETS)
            .bind(to_json(&names))
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
        let now = us(Utc::now());
        let rows = tasks
            .iter()
            .map(|t| TaskRow::new(t, now))
            .collect::<Result<Vec<_>>>()?;
        let mut w = self.begin_write().await?;
        let inserted: Vec<String> = match sqlx::query_scalar(INSERT_TASKS)
            .bind(to_json(&rows))
            .bind(now)
            .fetch_all(&mut *w.tx)
            .await
        {
            Ok(ids) => ids,
            Err(e) if is_fk_violation(&e) => return Err(unknown_module_bytes(tasks)),
            Err(e) => return Err(e.into()),
        };
        let inserted: HashSet<Uuid> = inserted.iter().map(|id| uuid(id)).collect::<Result<_>>()?;
        // Only the unique-key index is an ON CONFLICT target, and this
        // transaction holds the write lock: the holders are still there.
        let keys: Vec<&str> = tasks
            .iter()
            .filter(|t| !inserted.contains(&t.id))
            .filter_map(|t| t.unique_key.as_deref())
            .collect();
        let mut holders = HashMap::new();
        if !keys.is_empty() {
            let rows: Vec<(String, String)> = sqlx::query_as(concat!(
                "SELECT unique_key, id FROM tasks \
                 WHERE unique_key IN (SELECT value FROM json_each(?1)) \
                   AND state IN ",
                unfinished_states!()
            ))
            .bind(to_json(&keys))
            .fetch_all(&mut *w.tx)
            .await?;
            for (key, id) in rows {
                holders.insert(key, uuid(&id)?);
            }
        }
        w.commit().await?;

        let mut outcomes = Vec::with_capacity(tasks.len());
        for task in tasks {
            let outcome = if inserted.contains(&task.id) {
                EnqueueOutcome {
                    id: task.id,
                    deduplicated: false,
                }
            } else {
                let holder = task.unique_key.as_ref().and_then(|k| holders.get(k));
                EnqueueOutcome {
                    id: *holder.ok_or_else(|| {
                        StoreError::corrupt(format!(
                            "task {} was neither inserted nor deduplicated",
                            task.id
                        ))
                    })?,
                    deduplicated: true,
                }
            };
            outcomes.push(outcome);
        }
        let queues: BTreeSet<&str> = tasks
            .iter()
            .filter(|t| inserted.contains(&t.id))
            .map(|t| t.queue.as_str())
            .collect();
        for queue in queues {
            self.events.send(StoreEvent::TaskAvailable {
                queue: queue.to_owned(),
            });
        }
        Ok(outcomes)
    }

    async fn get_task(&self, id: Uuid) -> Result<TaskRecord> {
        let row = sqlx::query(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE id = ?1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => task_from_row(&row),
            None => Err(StoreError::not_found(format!("task {id}"))),
        }
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskSummary>> {
        let limit = list_limit(filter.limit)?;
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(concat!(
            "SELECT ",
            summary_columns!(),
            " FROM tasks WHERE 1 = 1"
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
        /// One child: seq, id, digest, state, result, error kind and message.
        type Entry = (
            u32,
            String,
            Option<String>,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let ledger: String = sqlx::query_scalar(CHILD_LEDGER)
            .bind(parent.to_string())
            .fetch_one(&self.pool)
            .await?;
        let mut entries: Vec<Entry> = serde_json::from_str(&ledger)
            .map_err(|e| StoreError::corrupt(format!("the children's ledger: {e}")))?;
        entries.sort_unstable_by_key(|e| e.0);
        entries
            .into_iter()
            .map(
                |(seq, id, digest, state, result, error_kind, error_message)| {
                    Ok(ChildRecord {
                        seq,
                        id: uuid(&id)?,
                        digest: digest.unwrap_or_default(),
                        state: parse_state(&state)?,
                        result,
                        error_kind,
                        error_message,
                    })
                },
            )
            .collect()
    }

    async fn list_children(&self, parent: Uuid, from: u32, limit: u32) -> Result<Vec<TaskSummary>> {
        let limit = list_limit(limit)?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            summary_columns!(),
            " FROM tasks WHERE parent_id = ?1 AND spawn_seq >= ?2 ORDER BY spawn_seq LIMIT ?3"
        ))
        .bind(parent.to_string())
        .bind(i64::from(from))
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
            .bind(id.to_string())
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
             FROM attempts WHERE task_id = ?1 ORDER BY id",
        )
        .bind(task_id.to_string())
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
        // counts the triggers of migration 0004 keep.
        let rows = sqlx::query(concat!(
            "SELECT queue, state, count(*) AS n, \
                 min(CASE WHEN state = 'queued' THEN enqueued_at END) AS oldest \
             FROM tasks WHERE state IN ",
            unfinished_states!(),
            " GROUP BY queue, state \
             UNION ALL \
             SELECT queue, state, n, NULL FROM task_counts WHERE n > 0"
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
                    oldest_queued_at: ts_opt(row.try_get("oldest")?)?,
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
        let (clause, queue_arg) = match queues {
            QueueSelector::All => ("", None),
            QueueSelector::Named(names) if names.is_empty() => return Ok(Vec::new()),
            QueueSelector::Named(names) if names.len() == 1 => {
                ("AND queue = ?5", Some(names[0].clone()))
            }
            QueueSelector::Named(names) => (
                "AND queue IN (SELECT value FROM json_each(?5))",
                Some(to_json(names)),
            ),
        };
        let sql = CLAIM_TEMPLATE.replace("{queues}", clause);
        let now = us(Utc::now());
        let mut w = self.begin_write().await?;
        let mut query = sqlx::query(AssertSqlSafe(sql))
            .bind(worker_id)
            .bind(now.saturating_add(lease))
            .bind(now)
            .bind(limit);
        if let Some(queue_arg) = queue_arg {
            query = query.bind(queue_arg);
        }
        let rows = query.fetch_all(&mut *w.tx).await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut claimed = Vec::with_capacity(rows.len());
        let mut seqs = Vec::with_capacity(rows.len());
        for row in &rows {
            let seq: i64 = row.try_get("seq")?;
            let run_after = ts(row.try_get("run_after")?)?;
            seqs.push(seq);
            claimed.push((
                seq,
                run_after,
                ClaimedTask {
                    id: uuid(row.try_get("id")?)?,
                    module_name: row.try_get("module_name")?,
                    module_version: row.try_get("module_version")?,
                    module_sha256: row.try_get("module_sha256")?,
                    queue: row.try_get("queue")?,
                    priority: row.try_get("priority")?,
                    input: row.try_get("input")?,
                    attempt: to_u32(row.try_get("attempt")?, "attempt")?,
                    epoch: from_i64(row.try_get("lease_epoch")?, "lease_epoch")?,
                    max_attempts: to_u32(row.try_get("max_attempts")?, "max_attempts")?,
                    free_runs: to_u32(row.try_get("free_runs")?, "free_runs")?,
                    limits: limits_from_row(row)?,
                    enqueued_at: ts(row.try_get("enqueued_at")?)?,
                    lease_expires_at: ts(row.try_get("lease_expires_at")?)?,
                    cancel_requested: row.try_get("cancel_requested")?,
                    depth: to_u32(row.try_get("depth")?, "depth")?,
                    children: to_u32(row.try_get("children")?, "children")?,
                },
            ));
        }
        sqlx::query(OPEN_ATTEMPTS)
            .bind(worker_id)
            .bind(now)
            .bind(to_json(&seqs))
            .execute(&mut *w.tx)
            .await?;
        w.commit().await?;
        // RETURNING has no defined order; hand tasks out in claim order.
        claimed.sort_by_key(|(seq, run_after, task)| (Reverse(task.priority), *run_after, *seq));
        Ok(claimed.into_iter().map(|(_, _, task)| task).collect())
    }

    async fn mark_started(&self, worker_id: &str, starts: &[Started]) -> Result<Vec<bool>> {
        validate_worker_id(worker_id)?;
        let leases: Vec<Lease> = starts.iter().map(|s| s.lease).collect();
        validate_leases(&leases)?;
        if starts.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<StartRow> = starts
            .iter()
            .map(|s| StartRow {
                id: s.lease.task_id,
                epoch: s.lease.epoch as i64,
                at: us(s.at),
            })
            .collect();
        let mut w = self.begin_write().await?;
        let updated: Vec<(String, i64, i64)> = sqlx::query_as(MARK_STARTED)
            .bind(to_json(&rows))
            .bind(us(Utc::now()))
            .bind(worker_id)
            .fetch_all(&mut *w.tx)
            .await?;
        let mut applied = HashSet::with_capacity(updated.len());
        let mut applied_rows = Vec::with_capacity(updated.len());
        for (id, epoch, at) in updated {
            let id = uuid(&id)?;
            applied.insert(Lease {
                task_id: id,
                epoch: from_i64(epoch, "epoch")?,
            });
            applied_rows.push(StartRow { id, epoch, at });
        }
        if !applied_rows.is_empty() {
            sqlx::query(START_ATTEMPTS)
                .bind(to_json(&applied_rows))
                .execute(&mut *w.tx)
                .await?;
        }
        w.commit().await?;
        Ok(applied_flags(leases, &applied))
    }

    async fn complete(&self, worker_id: &str, completions: &[Completion]) -> Result<Vec<bool>> {
        validate_worker_id(worker_id)?;
        let mut plans = completion_plans(completions)?;
        if plans.is_empty() {
            return Ok(Vec::new());
        }
        let now = us(Utc::now());
        let mut w = self.begin_write().await?;
        if plans.iter().any(|p| p.spawned || p.wait.is_some()) {
            store_children(&mut w, worker_id, completions, &mut plans, now).await?;
        }
        let rows: Vec<FinishRow<'_>> = plans.iter().map(|p| FinishRow::new(p, now)).collect();
        let updated = sqlx::query(FINISH_TASKS)
            .bind(to_json(&rows))
            .bind(now)
            .bind(worker_id)
            .fetch_all(&mut *w.tx)
            .await?;
        let mut applied_ids = HashSet::with_capacity(updated.len());
        let mut requeued = BTreeSet::new();
        // A batch of one parent's children names it once per child.
        let mut parents = BTreeSet::new();
        for row in &updated {
            applied_ids.insert(uuid(row.try_get("id")?)?);
            let state: &str = row.try_get("state")?;
            let run_after: i64 = row.try_get("run_after")?;
            if state == TaskState::Queued.as_str() && run_after <= now {
                requeued.insert(row.try_get::<String, _>("queue")?);
            }
            if let Some(parent) = row.try_get::<Option<String>, _>("parent_id")? {
                parents.insert(parent);
            }
        }
        if !applied_ids.is_empty() {
            let applied_rows: Vec<&FinishRow<'_>> = rows
                .iter()
                .filter(|r| applied_ids.contains(&r.id))
                .collect();
            sqlx::query(CLOSE_ATTEMPTS)
                .bind(to_json(&applied_rows))
                .bind(now)
                .execute(&mut *w.tx)
                .await?;
        }
        if !parents.is_empty() {
            // Parents the trigger queued again, for the wake-up.
            let queues: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT queue FROM tasks \
                 WHERE id IN (SELECT value FROM json_each(?1)) AND state = 'queued'",
            )
            .bind(to_json(&parents))
            .fetch_all(&mut *w.tx)
            .await?;
            requeued.extend(queues);
        }
        w.commit().await?;
        for queue in requeued {
            self.events.send(StoreEvent::TaskAvailable { queue });
        }
        // Task ids are unique within a batch and the update was fenced on
        // the epoch, so the id identifies the applied lease.
        let applied = completions
            .iter()
            .filter(|c| applied_ids.contains(&c.task_id))
            .map(Completion::lease)
            .collect();
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
        let now = us(Utc::now());
        let named: Vec<StartRow> = leases
            .iter()
            .map(|l| StartRow {
                id: l.task_id,
                epoch: l.epoch as i64,
                at: now,
            })
            .collect();
        let mut w = self.begin_write().await?;
        sqlx::query("UPDATE workers SET last_heartbeat_at = ?1, stopped_at = NULL WHERE id = ?2")
            .bind(now)
            .bind(worker_id)
            .execute(&mut *w.tx)
            .await?;
        let rows: Vec<(String, bool)> = if leases.is_empty() {
            Vec::new()
        } else {
            sqlx::query_as(EXTEND_LEASES)
                .bind(now.saturating_add(lease))
                .bind(worker_id)
                .bind(to_json(&named))
                .fetch_all(&mut *w.tx)
                .await?
        };
        w.commit().await?;
        let extended = rows
            .iter()
            .map(|(id, cancel)| Ok((uuid(id)?, *cancel)))
            .collect::<Result<Vec<_>>>()?;
        Ok(heartbeat_reply(leases, &extended))
    }

    async fn cancel_requests(&self, worker_id: &str) -> Result<Vec<Uuid>> {
        let ids: Vec<String> = sqlx::query_scalar(concat!(
            "SELECT id FROM tasks WHERE state IN ",
            live_states!(),
            " AND lease_owner = ?1 AND cancel_requested"
        ))
        .bind(worker_id)
        .fetch_all(&self.pool)
        .await?;
        ids.iter().map(|id| uuid(id)).collect()
    }

    async fn expired_leases(&self, limit: u32) -> Result<Vec<ExpiredTask>> {
        let limit = validate_limit(limit)?;
        let rows = sqlx::query(concat!(
            "SELECT id, attempt, lease_epoch, max_attempts, free_runs, lease_owner, queue, \
                 module_name || '@' || module_version AS module FROM tasks \
             WHERE state IN ",
            live_states!(),
            " AND lease_expires_at < ?1 \
             ORDER BY lease_expires_at LIMIT ?2"
        ))
        .bind(us(Utc::now()))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ExpiredTask {
                    id: uuid(row.try_get("id")?)?,
                    attempt: to_u32(row.try_get("attempt")?, "attempt")?,
                    epoch: from_i64(row.try_get("lease_epoch")?, "lease_epoch")?,
                    max_attempts: to_u32(row.try_get("max_attempts")?, "max_attempts")?,
                    free_runs: to_u32(row.try_get("free_runs")?, "free_runs")?,
                    lease_owner: row.try_get("lease_owner")?,
                    queue: row.try_get("queue")?,
                    module: row.try_get("module")?,
                })
            })
            .collect()
    }

    async fn expire(&self, task_id: Uuid, epoch: u64, transition: Transition) -> Result<bool> {
        let (target, run_after) = expire_target(&transition)?;
        let epoch = to_i64(epoch, "epoch")?;
        let now = us(Utc::now());
        let id = task_id.to_string();
        let mut w = self.begin_write().await?;
        let row = sqlx::query(EXPIRE_TASK)
            .bind(target.as_str())
            .bind(run_after.map_or(now, us))
            .bind(now)
            .bind(&id)
            .bind(epoch)
            .fetch_optional(&mut *w.tx)
            .await?;
        let Some(row) = row else { return Ok(false) };
        let message: String = row.try_get("error_message")?;
        sqlx::query(CLOSE_EXPIRED_ATTEMPT)
            .bind(now)
            .bind(&message)
            .bind(&id)
            .bind(epoch)
            .execute(&mut *w.tx)
            .await?;
        w.commit().await?;
        let state: &str = row.try_get("state")?;
        let due: i64 = row.try_get("run_after")?;
        if state == TaskState::Queued.as_str() && due <= now {
            self.events.send(StoreEvent::TaskAvailable {
                queue: row.try_get("queue")?,
            });
        }
        Ok(true)
    }

    async fn request_cancel(&self, id: Uuid) -> Result<CancelOutcome> {
        let now = us(Utc::now());
        let mut w = self.begin_write().await?;
        let changed: Vec<(String, String)> = sqlx::query_as(REQUEST_CANCEL)
            .bind(now)
            .bind(id.to_string())
            .fetch_all(&mut *w.tx)
            .await?;
        w.commit().await?;
        let mut own = None;
        for (changed_id, state) in &changed {
            let changed_id = uuid(changed_id)?;
            let state = parse_state(state)?;
            if state != TaskState::Cancelled {
                // Workers stop the live ones (the task or its descendants).
                self.events
                    .send(StoreEvent::CancelRequested { id: changed_id });
            }
            if changed_id == id {
                own = Some(state);
            }
        }
        match own {
            Some(TaskState::Cancelled) => Ok(CancelOutcome::Cancelled),
            Some(_) => Ok(CancelOutcome::Requested),
            None => Ok(CancelOutcome::AlreadyFinished(self.task_state(id).await?)),
        }
    }

    async fn retry(&self, id: Uuid) -> Result<TaskRecord> {
        let now = us(Utc::now());
        let mut w = self.begin_write().await?;
        let row = sqlx::query(RETRY_TASK)
            .bind(now)
            .bind(id.to_string())
            .fetch_optional(&mut *w.tx)
            .await;
        let row = match row {
            Ok(row) => row,
            Err(e) if is_unique_violation(&e) => return Err(unique_key_taken(id)),
            Err(e) => return Err(e.into()),
        };
        let Some(row) = row else {
            drop(w);
            let from = self.task_state(id).await?;
            return Err(StoreError::IllegalTransition {
                id,
                from,
                action: "retry",
            });
        };
        let task = task_from_row(&row)?;
        w.commit().await?;
        self.events.send(StoreEvent::TaskAvailable {
            queue: task.queue.clone(),
        });
        Ok(task)
    }

    async fn purge(&self, state: TaskState, older_than: DateTime<Utc>) -> Result<u64> {
        validate_purge_state(state)?;
        let mut deleted = 0;
        let mut batch = PURGE_FIRST_BATCH;
        loop {
            // One short write transaction per batch, sized to hold the lock
            // about PURGE_HOLD, then a pause: SQLite's busy handler is not a
            // queue, and a writer of another process that sleeps in it would
            // otherwise keep missing the moments between two batches.
            let t = Instant::now();
            let mut w = self.begin_write().await?;
            let n = sqlx::query(
                "DELETE FROM tasks WHERE seq IN ( \
                     SELECT seq FROM tasks WHERE state = ?1 AND finished_at < ?2 LIMIT ?3)",
            )
            .bind(state.as_str())
            .bind(us(older_than))
            .bind(i64::from(batch))
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
            w.commit().await?;
            deleted += n;
            if n < u64::from(batch) {
                break;
            }
            batch = next_purge_batch(batch, t.elapsed());
            tokio::time::sleep(PURGE_PAUSE).await;
        }
        if deleted > 0 {
            let mut w = self.begin_write().await?;
            sqlx::query(GC_BLOBS).execute(&mut *w.tx).await?;
            w.commit().await?;
        }
        Ok(deleted)
    }

    async fn register_worker(&self, info: &WorkerInfo) -> Result<()> {
        validate_worker_id(&info.id)?;
        let now = us(Utc::now());
        let mut w = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO workers (id, hostname, pid, mode, queues, concurrency, started_at, \
                 last_heartbeat_at, stopped_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, NULL) \
             ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname, pid = excluded.pid, \
                 mode = excluded.mode, queues = excluded.queues, \
                 concurrency = excluded.concurrency, started_at = excluded.started_at, \
                 last_heartbeat_at = excluded.last_heartbeat_at, stopped_at = NULL",
        )
        .bind(&info.id)
        .bind(&info.hostname)
        .bind(i64::from(info.pid))
        .bind(&info.mode)
        .bind(info.queues.to_string())
        .bind(i64::from(info.concurrency))
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
        w.commit().await
    }

    async fn set_progress(
        &self,
        worker_id: &str,
        lease: Lease,
        percent: u8,
        message: &str,
    ) -> Result<bool> {
        let epoch = to_i64(lease.epoch, "epoch")?;
        let mut w = self.begin_write().await?;
        let n = sqlx::query(concat!(
            "UPDATE tasks SET progress_percent = ?1, progress_message = ?2 \
             WHERE id = ?3 AND state IN ",
            live_states!(),
            " AND lease_owner = ?4 \
               AND lease_epoch = ?5"
        ))
        .bind(i64::from(percent.min(100)))
        .bind(progress_message(message))
        .bind(lease.task_id.to_string())
        .bind(worker_id)
        .bind(epoch)
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        w.commit().await?;
        Ok(n == 1)
    }

    async fn set_ray_submission(
        &self,
        worker_id: &str,
        lease: Lease,
        submission_id: &str,
    ) -> Result<bool> {
        let epoch = to_i64(lease.epoch, "epoch")?;
        let mut w = self.begin_write().await?;
        let n = sqlx::query(concat!(
            "UPDATE tasks SET ray_submission_id = ?1 \
             WHERE id = ?2 AND state IN ",
            live_states!(),
            " AND lease_owner = ?3 \
               AND lease_epoch = ?4"
        ))
        .bind(submission_id)
        .bind(lease.task_id.to_string())
        .bind(worker_id)
        .bind(epoch)
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        if n == 1 {
            sqlx::query(
                "UPDATE attempts SET ray_submission_id = ?1 \
                 WHERE task_id = ?2 AND lease_epoch = ?3 AND finished_at IS NULL",
            )
            .bind(submission_id)
            .bind(lease.task_id.to_string())
            .bind(epoch)
            .execute(&mut *w.tx)
            .await?;
        }
        w.commit().await?;
        Ok(n == 1)
    }

    async fn set_ray_node(&self, worker_id: &str, lease: Lease, node_id: &str) -> Result<bool> {
        let epoch = to_i64(lease.epoch, "epoch")?;
        let mut w = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE attempts SET ray_node_id = ?1 \
             WHERE task_id = ?2 AND lease_epoch = ?3 AND worker_id = ?4 \
               AND finished_at IS NULL",
        )
        .bind(node_id)
        .bind(lease.task_id.to_string())
        .bind(epoch)
        .bind(worker_id)
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        w.commit().await?;
        Ok(n == 1)
    }

    async fn stop_worker(&self, id: &str) -> Result<()> {
        let mut w = self.begin_write().await?;
        let found =
            sqlx::query("UPDATE workers SET stopped_at = coalesce(stopped_at, ?1) WHERE id = ?2")
                .bind(us(Utc::now()))
                .bind(id)
                .execute(&mut *w.tx)
                .await?
                .rows_affected();
        w.commit().await?;
        if found == 0 {
            return Err(StoreError::not_found(format!("worker {id}")));
        }
        Ok(())
    }

    async fn mark_stale_workers(&self, silent_for: Duration) -> Result<u64> {
        let now = Utc::now();
        let cutoff = us(now) - i64::try_from(silent_for.as_micros()).unwrap_or(i64::MAX / 2);
        let mut w = self.begin_write().await?;
        let marked = sqlx::query(
            "UPDATE workers SET stopped_at = ?1 \
             WHERE stopped_at IS NULL AND last_heartbeat_at < ?2",
        )
        .bind(us(now))
        .bind(cutoff)
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        w.commit().await?;
        Ok(marked)
    }

    async fn list_workers(&self) -> Result<Vec<WorkerRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT w.id, w.hostname, w.pid, w.mode, w.queues, w.concurrency, w.started_at, \
                 w.last_heartbeat_at, w.stopped_at, \
                 (SELECT count(*) FROM tasks t \
                  WHERE t.state IN ",
            live_states!(),
            " AND t.lease_owner = w.id) \
                 AS running_tasks \
             FROM workers w ORDER BY w.started_at DESC, w.id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(worker_from_row).collect()
    }

    async fn listen(&self) -> Result<Listener> {
        let watch = match &self.watch_options {
            Some(options) => Some(CommitWatch::open(options).await?),
            None => None,
        };
        Ok(self.events.listener(watch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_batches_fit_the_hold_time() {
        // 1,000 rows in 400 ms: 250 fit in 100 ms.
        assert_eq!(next_purge_batch(1_000, Duration::from_millis(400)), 250);
        // Fast deletes grow up to the cap, slow ones shrink to the floor.
        assert_eq!(
            next_purge_batch(1_000, Duration::from_micros(10)),
            PURGE_BATCH
        );
        assert_eq!(next_purge_batch(1_000, Duration::from_secs(60)), 100);
        assert_eq!(next_purge_batch(0, Duration::ZERO), PURGE_BATCH);
    }
}
