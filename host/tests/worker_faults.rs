//! The worker under faults: a database that refuses a batch, loses a claim's
//! reply, fails writes for a while, or has its connection cut mid-statement;
//! a lease taken away while its task runs; guest text the database cannot
//! store. Each test runs the real worker loops in-process on a real
//! database (SQLite and PostgreSQL) with faults injected through
//! [`FaultPlan`], and checks that nothing is lost or stuck: every task ends
//! in its expected terminal state, and no attempt row is left open.
//!
//! PostgreSQL: `WASMQ_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); unreachable means skipped, or
//! failed when `CI=true`.

#[path = "../../tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection;
use uuid::Uuid;
use wasmq::metrics::FaultKind;
use wasmq::runtime::{Limits, Runtime, RuntimeConfig};
use wasmq::store::*;
use wasmq::worker::{Executor, Mode, RetryPolicy, Worker, WorkerConfig, WorkerStats};

fn example(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    std::fs::read(&p)
        .unwrap_or_else(|e| panic!("{}: {e}: run scripts/build-examples.sh first", p.display()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// One database for one test, either backend.
struct Db {
    store: AnyStore,
    url: String,
    _dir: Option<tempfile::TempDir>,
    pg: Option<pg::PgEnv>,
}

impl Db {
    async fn sqlite() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("q.db").display());
        let store = AnyStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        Db {
            store,
            url,
            _dir: Some(dir),
            pg: None,
        }
    }

    async fn postgres() -> Option<Db> {
        let env = pg::pg_env().await?;
        let url = env.url("worker_faults");
        let store = AnyStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        Some(Db {
            store,
            url,
            _dir: None,
            pg: Some(env),
        })
    }

    async fn push(&self, name: &str) -> ModuleRecord {
        let bytes = example(name);
        self.store
            .push_module(name, None, &bytes, &sha256_hex(&bytes))
            .await
            .unwrap()
    }

    async fn enqueue(&self, module: &ModuleRecord, input: &str) -> Uuid {
        self.store
            .enqueue(NewTask::new(module, input))
            .await
            .unwrap()
            .id
    }

    /// `n` hello tasks with distinct names.
    async fn enqueue_hellos(&self, hello: &ModuleRecord, n: usize) -> Vec<Uuid> {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            ids.push(self.enqueue(hello, &format!(r#"{{"name":"n{i}"}}"#)).await);
        }
        ids
    }

    /// Every attempt row of every task is closed, and no task is live.
    async fn assert_nothing_stuck(&self, ids: &[Uuid]) {
        for &id in ids {
            let t = self.store.get_task(id).await.unwrap();
            assert!(t.state.is_terminal(), "task {id} is {}", t.state);
            for a in self.store.list_attempts(id).await.unwrap() {
                assert!(
                    a.finished_at.is_some() && a.outcome.is_some(),
                    "task {id} has an open attempt row: {a:?}"
                );
            }
        }
    }

    async fn assert_all(&self, ids: &[Uuid], state: TaskState) {
        for &id in ids {
            let t = self.store.get_task(id).await.unwrap();
            assert_eq!(t.state, state, "{t:?}");
        }
    }

    async fn drop(self) {
        self.store.close().await;
        if let Some(env) = &self.pg {
            pg::drop_schema(env).await;
        }
    }
}

/// Runs `test` on SQLite, then on PostgreSQL (skipped outside CI when the
/// server is unreachable).
async fn on_both<F, Fut>(test: F)
where
    F: Fn(Db) -> Fut,
    Fut: Future<Output = ()>,
{
    test(Db::sqlite().await).await;
    if let Some(db) = Db::postgres().await {
        test(db).await;
    }
}

fn config(lease: Duration) -> WorkerConfig {
    let mut c = WorkerConfig::new(Mode::Local);
    c.lease = lease;
    c.reaper_interval = Duration::from_millis(200);
    c.poll_interval = Duration::from_millis(100);
    c.exit_when_idle = true;
    c
}

fn executor(store: AnyStore) -> Executor {
    let grants = Arc::new(wasmq::worker::Grants::from_env(store.clone(), None).unwrap());
    Executor {
        runtime: Arc::new(
            Runtime::new(RuntimeConfig {
                cache_dir: None,
                ..RuntimeConfig::default()
            })
            .unwrap(),
        ),
        store,
        defaults: Limits::default(),
        maxima: wasmq::runtime::Maxima::default(),
        policy: RetryPolicy {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(50),
            ..RetryPolicy::default()
        },
        cluster: None,
        grants,
    }
}

/// Runs a worker on `store` until it finds no work left (bounded, so a
/// stuck task fails the test instead of hanging it).
async fn drain(store: AnyStore, config: WorkerConfig) -> WorkerStats {
    let worker = Worker::new(executor(store), config);
    tokio::time::timeout(
        Duration::from_secs(120),
        worker.run(futures::future::pending()),
    )
    .await
    .expect("the worker drained the queue")
    .expect("the worker ran")
}

fn faults(kind: FaultKind) -> u64 {
    wasmq::metrics::global().faults(kind)
}

/// A completion batch the database refuses is split until the one bad
/// completion is found; that task fails with a host error, every other task
/// of the batch succeeds, and nothing stays leased.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_completion_fails_its_task_and_no_other() {
    on_both(|db| async move {
        let hello = db.push("hello").await;
        let mut ids = db.enqueue_hellos(&hello, 40).await;
        let poisoned = db.enqueue(&hello, r#"{"name":"POISON"}"#).await;
        ids.push(poisoned);
        let plan = FaultPlan::new();
        plan.poison("POISON");
        let store = db.store.clone().with_faults(plan);
        let unstorable = faults(FaultKind::CompletionUnstorable);
        let stats = drain(store.clone(), config(Duration::from_secs(30))).await;
        assert!(store.faults().unwrap().injected() >= 1);
        // Split or not (the bad completion may have come alone), it was
        // found and replaced.
        assert!(faults(FaultKind::CompletionUnstorable) > unstorable);
        db.assert_nothing_stuck(&ids).await;
        let bad = db.store.get_task(poisoned).await.unwrap();
        assert_eq!(bad.state, TaskState::Failed);
        assert_eq!(bad.error_kind.as_deref(), Some("host-error"));
        let message = bad.error_message.unwrap();
        assert!(message.contains("could not be stored"), "{message}");
        db.assert_all(&ids[..40], TaskState::Succeeded).await;
        assert_eq!(stats.fenced, 0);
        db.drop().await;
    })
    .await;
}

/// A guest's NUL bytes (here in a panic message, which reaches the stored
/// error and logs) are stored as U+2400: on PostgreSQL this used to fail the
/// whole completion batch and leave its tasks running forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_nul_bytes_are_stored_and_fail_nothing_else() {
    on_both(|db| async move {
        let hello = db.push("hello").await;
        let panicky = db.push("panicky").await;
        let mut ids = db.enqueue_hellos(&hello, 20).await;
        let nul = db
            .enqueue(&panicky, r#"{"message":"before\u0000after"}"#)
            .await;
        ids.push(nul);
        drain(db.store.clone(), config(Duration::from_secs(30))).await;
        db.assert_nothing_stuck(&ids).await;
        let t = db.store.get_task(nul).await.unwrap();
        assert_eq!(t.state, TaskState::Failed, "{t:?}");
        let message = t.error_message.unwrap();
        assert!(message.contains("before\u{2400}after"), "{message}");
        assert!(!message.contains('\0'));
        db.assert_all(&ids[..20], TaskState::Succeeded).await;
        db.drop().await;
    })
    .await;
}

/// A claim that committed but whose reply never arrived leased tasks the
/// worker does not know of: no heartbeat extends them, their leases run out,
/// and the reaper requeues them. They still all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_of_a_lost_claim_reply_expire_and_run() {
    on_both(|db| async move {
        let hello = db.push("hello").await;
        let ids = db.enqueue_hellos(&hello, 10).await;
        let plan = FaultPlan::new();
        plan.lose_next_reply(Op::Claim, 1);
        let store = db.store.clone().with_faults(plan);
        drain(store.clone(), config(Duration::from_millis(900))).await;
        assert_eq!(store.faults().unwrap().injected(), 1);
        db.assert_nothing_stuck(&ids).await;
        let mut expired = 0;
        for &id in &ids {
            let t = db.store.get_task(id).await.unwrap();
            assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
            let attempts = db.store.list_attempts(id).await.unwrap();
            expired += attempts
                .iter()
                .filter(|a| a.outcome_name() == Some("lease-expired"))
                .count();
            // The run numbers never repeat.
            let mut numbers: Vec<u32> = attempts.iter().map(|a| a.attempt).collect();
            numbers.dedup();
            assert_eq!(numbers.len(), attempts.len(), "{attempts:?}");
        }
        assert!(expired >= 1, "the lost claim's tasks were reaped");
        db.drop().await;
    })
    .await;
}

/// Completion writes that fail for a while (a connection refused) are
/// retried; the tasks succeed and nothing is fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_completion_writes_are_retried() {
    on_both(|db| async move {
        let hello = db.push("hello").await;
        let ids = db.enqueue_hellos(&hello, 10).await;
        let plan = FaultPlan::new();
        plan.fail_next(Op::Complete, 3).fail_next(Op::Heartbeat, 2);
        let store = db.store.clone().with_faults(plan);
        let stats = drain(store.clone(), config(Duration::from_secs(30))).await;
        assert!(store.faults().unwrap().injected() >= 3);
        db.assert_nothing_stuck(&ids).await;
        db.assert_all(&ids, TaskState::Succeeded).await;
        assert_eq!(stats.fenced, 0);
        db.drop().await;
    })
    .await;
}

/// A task reaped while its worker still runs it (the worker was paused, its
/// heartbeats late): the next heartbeat reports the lease lost, the worker
/// stops the guest at once, and its completion is fenced off. The requeued
/// task then runs again and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_stops_the_guest() {
    on_both(|db| async move {
        let sleepy = db.push("sleepy").await;
        let id = db.enqueue(&sleepy, r#"{"ms": 4000}"#).await;
        let lost_before = faults(FaultKind::LeaseLost);
        let mut cfg = config(Duration::from_millis(1500));
        // No reaper in this worker: the test plays the other worker's reaper.
        cfg.reaper_interval = Duration::from_secs(3600);
        cfg.exit_when_idle = false;
        let worker = Worker::new(executor(db.store.clone()), cfg);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(worker.run(async {
            let _ = stop_rx.await;
        }));

        // Wait until it runs, then take the lease away as a reaper would
        // once the lease looks expired.
        let epoch = loop {
            let t = db.store.get_task(id).await.unwrap();
            if t.state == TaskState::Running {
                break t.lease_epoch;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        expire_now(&db, id).await;
        assert!(
            db.store
                .expire(
                    id,
                    epoch,
                    Transition::Retry {
                        run_after: chrono::Utc::now() + chrono::Duration::hours(1)
                    }
                )
                .await
                .unwrap()
        );
        // The worker learns it from its next heartbeat and stops the guest.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while faults(FaultKind::LeaseLost) == lost_before {
            assert!(
                std::time::Instant::now() < deadline,
                "no heartbeat lost the lease"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = stop_tx.send(());
        let stats = run.await.unwrap().unwrap();
        assert_eq!(stats.fenced, 1, "the stopped run's completion was fenced");
        let t = db.store.get_task(id).await.unwrap();
        assert_eq!(t.state, TaskState::Queued, "{t:?}");
        let attempts = db.store.list_attempts(id).await.unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].outcome_name(), Some("lease-expired"));
        db.drop().await;
    })
    .await;
}

/// Moves a live task's lease into the past, as if its worker had been
/// silent for a whole lease.
async fn expire_now(db: &Db, id: Uuid) {
    match &db.pg {
        Some(_) => {
            let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query(
                "UPDATE tasks SET lease_expires_at = now() - interval '1 second' WHERE id = $1",
            )
            .bind(id)
            .execute(&mut c)
            .await
            .unwrap();
        }
        None => {
            let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::query("UPDATE tasks SET lease_expires_at = 0 WHERE id = ?1")
                .bind(id.to_string())
                .execute(&mut c)
                .await
                .unwrap();
        }
    }
}

/// PostgreSQL: the claim's connection is cut (`pg_terminate_backend`) while
/// the claim statement is in flight, and a completion's connection the same
/// way. The claim rolls back, the completion is retried, and every task
/// succeeds with no attempt row left open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_mid_statement_lose_nothing() {
    let Some(db) = Db::postgres().await else {
        return;
    };
    let hello = db.push("hello").await;
    let ids = db.enqueue_hellos(&hello, 20).await;
    let env = db.pg.as_ref().unwrap();
    // The lock makes the worker's statements wait inside the server, where
    // the test can find and cut their connections.
    let mut locker = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut admin = pg::pg_admin(&env.base_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("LOCK TABLE attempts IN EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .unwrap();

    let worker = tokio::spawn(drain(db.store.clone(), config(Duration::from_secs(30))));
    let cut = terminate_waiting(&mut admin, "picked").await;
    assert!(cut, "found the waiting claim and cut its connection");
    sqlx::query("COMMIT").execute(&mut locker).await.unwrap();

    let stats = worker.await.unwrap();
    db.assert_nothing_stuck(&ids).await;
    db.assert_all(&ids, TaskState::Succeeded).await;
    assert_eq!(stats.fenced, 0);
    db.drop().await;
}

/// Terminates a backend of the test's pool that waits on a lock with
/// a statement containing `marker`; false if none showed up in time.
async fn terminate_waiting(admin: &mut sqlx::PgConnection, marker: &str) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity \
             WHERE wait_event_type = 'Lock' AND application_name = 'worker_faults' \
               AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
        )
        .bind(marker)
        .fetch_all(&mut *admin)
        .await
        .unwrap();
        if let Some(&pid) = pids.first() {
            let _: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
                .bind(pid)
                .fetch_one(&mut *admin)
                .await
                .unwrap();
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// SQLite, two processes: `wasmq task purge` of a large history in another
/// process while a worker with a short lease runs tasks. The purge works in
/// short transactions, so the worker's heartbeats get the write lock in time
/// and no lease expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_purge_in_another_process_expires_no_lease() {
    const HISTORY: i64 = 300_000;
    let db = Db::sqlite().await;
    let hello = db.push("hello").await;
    let sleepy = db.push("sleepy").await;
    // A history of finished tasks, written directly: fast, and the same rows
    // the store writes.
    let AnyStore::Sqlite(s) = &db.store else {
        unreachable!()
    };
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
         INSERT INTO tasks (id, module_name, module_version, module_sha256, queue, input, \
             state, run_after, attempt, max_attempts, enqueued_at, started_at, finished_at, \
             updated_at, result, lease_epoch) \
         SELECT printf('00000000-0000-4000-8000-%012d', i), ?2, ?3, ?4, 'default', '{}', \
             'succeeded', 0, 1, 3, 0, 0, 1, 1, '{\"greeting\":\"Hello!\"}', 1 FROM n",
    )
    .bind(HISTORY)
    .bind(&hello.name)
    .bind(&hello.version)
    .bind(&hello.sha256)
    .execute(s.pool())
    .await
    .unwrap();

    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(db.enqueue(&sleepy, r#"{"ms": 300}"#).await);
    }
    let mut cfg = config(Duration::from_millis(1500));
    cfg.exit_when_idle = false;
    let worker = Worker::new(executor(db.store.clone()), cfg);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(worker.run(async {
        let _ = stop_rx.await;
    }));
    let failures_before = faults(FaultKind::HeartbeatFailed);

    let url = db.url.clone();
    let purge = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_wasmq"))
            .args(["--database-url", &url])
            .args([
                "task",
                "purge",
                "--state",
                "succeeded",
                "--older-than",
                "0s",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        purge.status.success(),
        "{}",
        String::from_utf8_lossy(&purge.stderr)
    );
    let printed = String::from_utf8_lossy(&purge.stdout);
    assert!(printed.contains("purged"), "{printed}");

    // Let the worker finish what it holds, then stop it.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    for &id in &ids {
        while !db.store.get_task(id).await.unwrap().state.is_terminal() {
            assert!(
                std::time::Instant::now() < deadline,
                "task {id} never finished"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let _ = stop_tx.send(());
    run.await.unwrap().unwrap();
    db.assert_nothing_stuck(&ids).await;
    for &id in &ids {
        let attempts = db.store.list_attempts(id).await.unwrap();
        assert!(
            attempts
                .iter()
                .all(|a| a.outcome_name() != Some("lease-expired")),
            "a lease expired during the purge: {attempts:?}"
        );
        assert_eq!(
            db.store.get_task(id).await.unwrap().state,
            TaskState::Succeeded
        );
    }
    eprintln!(
        "heartbeat failures during the purge: {}",
        faults(FaultKind::HeartbeatFailed) - failures_before
    );
    db.drop().await;
}
