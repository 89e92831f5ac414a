//! The store test suite. Every test in `store_tests!` runs twice, against
//! SQLite (a fresh temp file) and PostgreSQL (a fresh schema), through the
//! one `Store` interface.
//!
//! PostgreSQL: `WASMQ_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). When it is unreachable the
//! PostgreSQL variants are skipped with a notice, or fail when `CI=true`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;
use wasmq::store::*;

use harness::{Backend, Harness};

mod harness {
    use std::future::Future;
    use std::panic::{AssertUnwindSafe, resume_unwind};
    use std::str::FromStr;
    use std::time::Duration;

    use futures::FutureExt;
    use rand::Rng;
    use sqlx::Connection;
    use sqlx::postgres::{PgConnectOptions, PgConnection};
    use wasmq::store::{AnyStore, PgStore, Store};

    const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Backend {
        Sqlite,
        Postgres,
    }

    /// One isolated database for one test.
    pub struct Harness {
        pub backend: Backend,
        sqlite: Option<(tempfile::TempDir, String)>,
        pg: Option<PgEnv>,
    }

    struct PgEnv {
        base: PgConnectOptions,
        schema: String,
    }

    impl Harness {
        /// A new store on this test's database, not migrated.
        pub async fn connect(&self) -> AnyStore {
            self.connect_with(4).await
        }

        pub async fn connect_with(&self, max_connections: u32) -> AnyStore {
            match (&self.sqlite, &self.pg) {
                (Some((_, url)), _) => AnyStore::connect_with(url, max_connections)
                    .await
                    .expect("open SQLite store"),
                (_, Some(pg)) => AnyStore::Postgres(
                    PgStore::open(pg.store_options(), max_connections)
                        .await
                        .expect("open PostgreSQL store"),
                ),
                _ => unreachable!(),
            }
        }

        /// A new, migrated store on this test's database.
        pub async fn store(&self) -> AnyStore {
            let store = self.connect().await;
            store.migrate().await.expect("migrate");
            store
        }

        /// PostgreSQL only: runs `sql` on a separate admin connection.
        pub async fn pg_admin(&self, sql: &str) {
            let pg = self.pg.as_ref().expect("PostgreSQL harness");
            let mut conn = PgConnection::connect_with(&pg.base).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut conn)
                .await
                .unwrap();
        }

        /// PostgreSQL only: the application_name of this test's connections.
        pub fn pg_application_name(&self) -> String {
            let pg = self.pg.as_ref().expect("PostgreSQL harness");
            format!("wasmq_test_{}", pg.schema)
        }
    }

    impl PgEnv {
        fn store_options(&self) -> PgConnectOptions {
            self.base
                .clone()
                .options([("search_path", self.schema.as_str())])
                .application_name(&format!("wasmq_test_{}", self.schema))
        }
    }

    /// Runs `test` on a fresh database of `backend` and cleans up after it,
    /// also when it panics.
    pub async fn run<F, Fut>(backend: Backend, test: F)
    where
        F: FnOnce(Harness) -> Fut,
        Fut: Future<Output = ()>,
    {
        let harness = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}/wasmq.db", dir.path().display());
                Harness {
                    backend,
                    sqlite: Some((dir, url)),
                    pg: None,
                }
            }
            Backend::Postgres => {
                let Some(pg) = pg_env().await else { return };
                Harness {
                    backend,
                    sqlite: None,
                    pg: Some(pg),
                }
            }
        };
        let cleanup = harness
            .pg
            .as_ref()
            .map(|pg| (pg.base.clone(), pg.schema.clone()));
        let outcome = AssertUnwindSafe(test(harness)).catch_unwind().await;
        if let Some((base, schema)) = cleanup {
            drop_schema(&base, &schema).await;
        }
        if let Err(panic) = outcome {
            resume_unwind(panic);
        }
    }

    async fn drop_schema(base: &PgConnectOptions, schema: &str) {
        let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
        let result = async {
            let mut conn = PgConnection::connect_with(base).await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
        }
        .await;
        if let Err(e) = result {
            eprintln!("could not drop test schema {schema}: {e}");
        }
    }

    async fn pg_env() -> Option<PgEnv> {
        let url = std::env::var("WASMQ_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.into());
        let base =
            PgConnectOptions::from_str(&url).expect("WASMQ_TEST_PG_URL is not a PostgreSQL URL");
        // Never print the URL itself: it may carry a password.
        let url = format!(
            "{}:{}/{}",
            base.get_host(),
            base.get_port(),
            base.get_database().unwrap_or_default()
        );
        let conn = tokio::time::timeout(Duration::from_secs(5), PgConnection::connect_with(&base))
            .await
            .map_err(|_| "timed out".to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        let mut conn = match conn {
            Ok(conn) => conn,
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("PostgreSQL at {url} is unreachable ({e}) and CI=true: failing")
            }
            Err(e) => {
                eprintln!(
                    "SKIPPED: PostgreSQL at {url} is unreachable ({e}); set WASMQ_TEST_PG_URL"
                );
                return None;
            }
        };
        let schema = format!("t_{:016x}", rand::thread_rng().r#gen::<u64>());
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&mut conn)
            .await
            .expect("create test schema");
        conn.close().await.ok();
        Some(PgEnv { base, schema })
    }
}

/// Instantiates each test for both backends: `name::sqlite`, `name::postgres`.
macro_rules! store_tests {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {$(
        mod $name {
            $(#[$attr])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                crate::harness::run(crate::harness::Backend::Sqlite, super::$name).await
            }

            $(#[$attr])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                crate::harness::run(crate::harness::Backend::Postgres, super::$name).await
            }
        }
    )*};
}

store_tests! {
    migrate_is_idempotent,
    concurrent_migrate_on_fresh_database,
    modules_push_resolve_versions,
    module_delete_refused_while_in_use,
    enqueue_validation,
    enqueue_and_get_task_roundtrip,
    refused_statements_are_not_transient,
    enqueue_batch_order_and_listing,
    claim_order_priority_run_after_seq,
    future_run_after_not_claimed_until_due,
    claim_respects_queue_selector,
    complete_applies_every_transition,
    illegal_transitions_are_refused,
    stale_worker_is_fenced_off,
    lease_expiry_retry_and_fail,
    heartbeat_extends_leases_and_reports_cancels,
    cancel_queued_and_running,
    manual_retry_from_failed_and_cancelled,
    release_does_not_spend_an_attempt,
    defer_requeues_later_without_spending_the_attempt,
    ray_submission_is_recorded_and_fenced,
    unique_key_dedup,
    concurrent_claims_each_task_exactly_once,
    purge_terminal_tasks,
    queue_stats_counts,
    queue_stats_follow_every_terminal_arrow,
    listings_are_summaries,
    workers_register_heartbeat_stale,
    listen_receives_events,
    listener_reports_missed_events,
    mark_started_is_fenced_and_records_start,
    completion_start_does_not_override_mark_started,
    stale_epoch_of_same_worker_is_fenced,
    heartbeat_extends_only_named_leases,
    guest_text_with_nul_is_stored,
    purge_deletes_in_batches,
    unique_key_held_by_leased_tasks,
    attempt_rows_one_per_epoch_and_closed,
    children_are_stored_once_and_resume_their_parent,
    a_wait_on_finished_children_requeues_at_once,
    cancel_reaches_every_descendant,
    concurrent_child_completions_resume_the_parent_once,
    grants_are_per_name_and_scope_and_go_with_the_last_version,
    secrets_are_kept_sealed_and_take_their_grants_with_them,
    #[ignore = "benchmark; run with --ignored --nocapture"]
    drain_throughput,
}

// ---- helpers ---------------------------------------------------------------

/// A 64-hex-digit stand-in for a SHA-256 (the store does not recompute it).
fn fake_sha(seed: &str) -> String {
    use std::hash::{Hash, Hasher};
    (0..4)
        .map(|i| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (seed, i).hash(&mut h);
            format!("{:016x}", h.finish())
        })
        .collect()
}

async fn push(store: &AnyStore, name: &str, content: &str) -> ModuleRecord {
    store
        .push_module(name, None, content.as_bytes(), &fake_sha(content))
        .await
        .expect("push module")
}

async fn module(store: &AnyStore) -> ModuleRecord {
    push(store, "echo", "echo-module-bytes").await
}

fn task(m: &ModuleRecord) -> NewTask {
    NewTask::new(m, r#"{"n":1}"#)
}

async fn enqueue(store: &AnyStore, t: NewTask) -> Uuid {
    let outcome = store.enqueue(t).await.expect("enqueue");
    assert!(!outcome.deduplicated);
    outcome.id
}

const LONG: Duration = Duration::from_secs(60);

async fn claim_all(store: &AnyStore, worker: &str) -> Vec<ClaimedTask> {
    store
        .claim(worker, &QueueSelector::All, 100, LONG)
        .await
        .expect("claim")
}

async fn claim_one(store: &AnyStore, worker: &str, lease: Duration) -> ClaimedTask {
    let mut claimed = store
        .claim(worker, &QueueSelector::All, 1, lease)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1, "expected one claimable task");
    claimed.remove(0)
}

fn report(outcome: OutcomeKind) -> AttemptReport {
    AttemptReport {
        duration_ms: 7,
        ..AttemptReport::of(outcome)
    }
}

fn completion(t: &ClaimedTask, transition: Transition) -> Completion {
    let outcome = match transition {
        Transition::Succeed { .. } => OutcomeKind::Success,
        Transition::Retry { .. } | Transition::Fail => OutcomeKind::TaskError,
        Transition::Cancel => OutcomeKind::Cancelled,
        Transition::Release => OutcomeKind::Shutdown,
        Transition::Defer { .. } => OutcomeKind::HostError,
        Transition::Wait { .. } => OutcomeKind::Waiting,
    };
    Completion {
        task_id: t.id,
        attempt: t.attempt,
        epoch: t.epoch,
        started_at: None,
        report: report(outcome),
        transition,
        spawns: Vec::new(),
    }
}

/// The child of `parent` at spawn number `seq`, as a worker stores it.
fn child(m: &ModuleRecord, parent: &ClaimedTask, seq: u32, awaited: bool) -> NewTask {
    NewTask {
        id: wasmq::runtime::subtasks::child_id(parent.id, seq),
        parent_id: Some(parent.id),
        child: Some(ChildKey {
            seq,
            digest: format!("digest-{seq}"),
            depth: parent.depth + 1,
            awaited,
        }),
        ..NewTask::new(m, format!("{{\"seq\":{seq}}}"))
    }
}

fn wait_on(seqs: &[u32]) -> Transition {
    Transition::Wait {
        awaited: seqs.to_vec(),
        allowed_unfinished: 0,
    }
}

/// Ends `t`'s run with `tr`, storing `spawns`; true when applied.
async fn complete_spawning(
    store: &AnyStore,
    worker: &str,
    t: &ClaimedTask,
    tr: Transition,
    spawns: Vec<NewTask>,
) -> bool {
    let c = Completion {
        spawns,
        ..completion(t, tr)
    };
    store.complete(worker, &[c]).await.expect("complete")[0]
}

/// Claims exactly the task `id` (others may be claimable too: they are
/// given back by a release).
async fn claim_id(store: &AnyStore, worker: &str, id: Uuid) -> ClaimedTask {
    let claimed = claim_all(store, worker).await;
    let mut found = None;
    let mut others = Vec::new();
    for t in claimed {
        if t.id == id {
            found = Some(t);
        } else {
            others.push(completion(&t, Transition::Release));
        }
    }
    if !others.is_empty() {
        store.complete(worker, &others).await.expect("release");
    }
    found.unwrap_or_else(|| panic!("task {id} was not claimable"))
}

async fn complete1(store: &AnyStore, worker: &str, t: &ClaimedTask, tr: Transition) -> bool {
    store
        .complete(worker, &[completion(t, tr)])
        .await
        .expect("complete")[0]
}

/// Marks `t` started now by `worker`; true when applied.
async fn start1(store: &AnyStore, worker: &str, t: &ClaimedTask) -> bool {
    start_at(store, worker, t.lease(), Utc::now()).await
}

async fn start_at(store: &AnyStore, worker: &str, lease: Lease, at: DateTime<Utc>) -> bool {
    store
        .mark_started(worker, &[Started { lease, at }])
        .await
        .expect("mark started")[0]
}

fn succeed() -> Transition {
    Transition::Succeed {
        result: r#"{"ok":true}"#.into(),
    }
}

/// `t` at the microsecond precision both backends store.
fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).expect("in range")
}

fn now_plus(ms: i64) -> DateTime<Utc> {
    Utc::now() + TimeDelta::milliseconds(ms)
}

async fn state(store: &AnyStore, id: Uuid) -> TaskState {
    store.get_task(id).await.expect("get task").state
}

async fn recv_until(
    listener: &mut Listener,
    mut wanted: impl FnMut(&StoreEvent) -> bool,
) -> StoreEvent {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let event = listener.recv().await.expect("listener recv");
            if wanted(&event) {
                return event;
            }
        }
    })
    .await
    .expect("event did not arrive within 10 s")
}

// ---- tests -----------------------------------------------------------------

async fn children_are_stored_once_and_resume_their_parent(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    let pid = enqueue(&s, task(&m)).await;
    let p = claim_one(&s, "w", LONG).await;
    assert_eq!((p.depth, p.children), (0, 0));
    let spawns = vec![child(&m, &p, 0, true), child(&m, &p, 1, true)];
    assert!(complete_spawning(&s, "w", &p, wait_on(&[0, 1]), spawns.clone()).await);
    let parent = s.get_task(pid).await.unwrap();
    assert_eq!(parent.state, TaskState::Waiting);
    assert_eq!((parent.children, parent.waiting_on), (2, 2));
    assert_eq!(parent.counted_attempts(), 0, "a wait spends no attempt");
    // A stale completion of the same run stores nothing.
    assert!(!complete_spawning(&s, "w", &p, wait_on(&[0, 1]), spawns).await);
    assert_eq!(s.list_children(pid, 0, 0).await.unwrap().len(), 2);

    let c0 = claim_id(&s, "w", child(&m, &p, 0, true).id).await;
    assert_eq!(c0.depth, 1);
    assert!(complete1(&s, "w", &c0, succeed()).await);
    assert_eq!(state(&s, pid).await, TaskState::Waiting);
    let c1 = claim_id(&s, "w", child(&m, &p, 1, true).id).await;
    assert!(complete1(&s, "w", &c1, Transition::Fail).await);
    let parent = s.get_task(pid).await.unwrap();
    assert_eq!(parent.state, TaskState::Queued, "the last child queued it");
    assert_eq!(parent.waiting_on, 0);

    let p2 = claim_one(&s, "w", LONG).await;
    assert_eq!((p2.id, p2.children), (pid, 2));
    assert_eq!(p2.counted_attempt(), 1, "a resume is not a new attempt");
    let ledger = s.child_ledger(pid).await.unwrap();
    assert_eq!(ledger.len(), 2);
    assert_eq!(ledger[0].state, TaskState::Succeeded);
    assert_eq!(ledger[0].result.as_deref(), Some(r#"{"ok":true}"#));
    assert_eq!(ledger[0].digest, "digest-0");
    assert_eq!(ledger[1].state, TaskState::Failed);
    // Spawning a known key again stores nothing new.
    let again = vec![child(&m, &p2, 0, false)];
    assert!(complete_spawning(&s, "w", &p2, succeed(), again).await);
    let parent = s.get_task(pid).await.unwrap();
    assert_eq!((parent.state, parent.children), (TaskState::Succeeded, 2));
    let usage = s.family_usage(pid).await.unwrap();
    assert_eq!(usage.descendants, 2);
    // Three child runs of 7 ms: claiming child 0 released child 1 once.
    assert_eq!(usage.duration_ms, 21);
}

async fn a_wait_on_finished_children_requeues_at_once(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    let pid = enqueue(&s, task(&m)).await;
    let p = claim_one(&s, "w", LONG).await;
    // The first run spawns without waiting, then fails and is retried: the
    // child is stored all the same.
    let retry = Transition::Retry {
        run_after: Utc::now(),
    };
    assert!(complete_spawning(&s, "w", &p, retry, vec![child(&m, &p, 0, false)]).await);
    let c0 = claim_id(&s, "w", child(&m, &p, 0, false).id).await;
    assert!(complete1(&s, "w", &c0, succeed()).await);
    assert_eq!(
        state(&s, pid).await,
        TaskState::Queued,
        "not awaited: no resume"
    );
    let p2 = claim_one(&s, "w", LONG).await;
    assert_eq!(p2.id, pid);
    assert!(complete_spawning(&s, "w", &p2, wait_on(&[0]), Vec::new()).await);
    let parent = s.get_task(pid).await.unwrap();
    assert_eq!(parent.state, TaskState::Queued, "nothing left to wait for");
    assert_eq!(parent.counted_attempts(), 1, "only the failed run counts");
}

async fn cancel_reaches_every_descendant(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    let pid = enqueue(&s, task(&m)).await;
    let p = claim_one(&s, "w", LONG).await;
    let spawns = vec![
        child(&m, &p, 0, true),
        child(&m, &p, 1, true),
        child(&m, &p, 2, true),
    ];
    assert!(complete_spawning(&s, "w", &p, wait_on(&[0, 1, 2]), spawns).await);
    // Child 0 waits on a grandchild; child 1 is running; child 2 is queued.
    let c0 = claim_id(&s, "w", child(&m, &p, 0, true).id).await;
    let g = child(&m, &c0, 0, true);
    assert!(complete_spawning(&s, "w", &c0, wait_on(&[0]), vec![g.clone()]).await);
    let c1 = claim_id(&s, "w", child(&m, &p, 1, true).id).await;
    assert!(start1(&s, "w", &c1).await);

    assert_eq!(
        s.request_cancel(pid).await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(state(&s, pid).await, TaskState::Cancelled);
    assert_eq!(
        state(&s, c0.id).await,
        TaskState::Cancelled,
        "waiting: at once"
    );
    assert_eq!(state(&s, g.id).await, TaskState::Cancelled, "grandchild");
    assert_eq!(
        state(&s, child(&m, &p, 2, true).id).await,
        TaskState::Cancelled
    );
    let running = s.get_task(c1.id).await.unwrap();
    assert_eq!(running.state, TaskState::Running);
    assert!(running.cancel_requested, "its worker is asked to stop it");
    assert!(complete1(&s, "w", &c1, Transition::Cancel).await);
    assert_eq!(
        state(&s, pid).await,
        TaskState::Cancelled,
        "stays cancelled"
    );
}

async fn concurrent_child_completions_resume_the_parent_once(h: Harness) {
    const CHILDREN: u32 = 40;
    let s = h.store().await;
    let m = module(&s).await;
    let pid = enqueue(&s, task(&m)).await;
    let p = claim_one(&s, "w", LONG).await;
    let seqs: Vec<u32> = (0..CHILDREN).collect();
    let spawns = seqs.iter().map(|&i| child(&m, &p, i, true)).collect();
    assert!(complete_spawning(&s, "w", &p, wait_on(&seqs), spawns).await);
    // Each child claimed by its own worker and all completed at once, each
    // in its own transaction.
    let mut claimed = Vec::new();
    for i in 0..CHILDREN {
        let worker = format!("w{i}");
        let c = s
            .claim(&worker, &QueueSelector::All, 1, LONG)
            .await
            .unwrap()
            .remove(0);
        claimed.push((worker, c));
    }
    let completions = claimed.iter().map(|(worker, c)| {
        let s = s.clone();
        async move { complete1(&s, worker, c, succeed()).await }
    });
    let applied = futures::future::join_all(completions).await;
    assert!(applied.iter().all(|&a| a));
    let parent = s.get_task(pid).await.unwrap();
    assert_eq!(parent.state, TaskState::Queued, "resumed by the last child");
    assert_eq!(parent.waiting_on, 0);
}

async fn migrate_is_idempotent(h: Harness) {
    let store = h.store().await;
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
    let expected = match h.backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    assert_eq!(store.backend_name(), expected);
}

/// Several processes starting at once on a fresh database: every migrate()
/// succeeds and the schema is applied once.
async fn concurrent_migrate_on_fresh_database(h: Harness) {
    // Opening a fresh SQLite file concurrently also races on switching to WAL.
    let stores = futures::future::join_all((0..4).map(|_| h.connect())).await;
    let results = futures::future::join_all(stores.iter().map(|s| s.migrate())).await;
    for r in results {
        r.expect("concurrent migrate");
    }
    let m = module(&stores[0]).await;
    let id = enqueue(&stores[1], task(&m)).await;
    assert_eq!(state(&stores[2], id).await, TaskState::Queued);
    // And again on the migrated database.
    stores[3].migrate().await.unwrap();
}

async fn modules_push_resolve_versions(h: Harness) {
    let s = h.store().await;
    let a = s
        .push_module("resize", None, b"AAAA", &fake_sha("A"))
        .await
        .unwrap();
    assert_eq!((a.version.as_str(), a.created, a.size), ("1", true, 4));
    assert_eq!(a.reference(), "resize@1");

    // Same bytes under the same name: the existing row, not a new version.
    let again = s
        .push_module("resize", None, b"AAAA", &fake_sha("A"))
        .await
        .unwrap();
    assert_eq!((again.version.as_str(), again.created), ("1", false));

    let b = s
        .push_module("resize", None, b"BBBBBB", &fake_sha("B"))
        .await
        .unwrap();
    assert_eq!((b.version.as_str(), b.created), ("2", true));

    // The same bytes under another name are a separate module.
    let other = s
        .push_module("thumb", None, b"AAAA", &fake_sha("A"))
        .await
        .unwrap();
    assert_eq!((other.version.as_str(), other.created), ("1", true));

    assert_eq!(s.resolve_module("resize", None).await.unwrap().version, "2");
    let one = s.resolve_module("resize", Some("1")).await.unwrap();
    assert_eq!(one.sha256, fake_sha("A"));
    assert!(!one.created);

    // Explicit versions; the latest is the newest row.
    let beta = s
        .push_module("resize", Some("v3-beta"), b"CC", &fake_sha("C"))
        .await
        .unwrap();
    assert!(beta.created);
    assert_eq!(
        s.resolve_module("resize", None).await.unwrap().version,
        "v3-beta"
    );
    let d = s
        .push_module("resize", None, b"DD", &fake_sha("D"))
        .await
        .unwrap();
    assert_eq!(
        d.version, "3",
        "next numeric version ignores non-numeric ones"
    );

    // name@version is immutable.
    let same = s
        .push_module("resize", Some("1"), b"AAAA", &fake_sha("A"))
        .await
        .unwrap();
    assert!(!same.created);
    let err = s
        .push_module("resize", Some("1"), b"BBBBBB", &fake_sha("B"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert!(err.to_string().contains("resize@1"), "{err}");

    assert_eq!(s.module_bytes(&fake_sha("B")).await.unwrap(), b"BBBBBB");
    let modules = s.list_modules().await.unwrap();
    let refs: Vec<String> = modules.iter().map(ModuleRecord::reference).collect();
    assert_eq!(
        refs,
        [
            "resize@1",
            "resize@2",
            "resize@v3-beta",
            "resize@3",
            "thumb@1"
        ]
    );

    let err = s.resolve_module("nope", None).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }));
    assert_eq!(err.to_string(), "module nope not found");
    let err = s.resolve_module("resize", Some("9")).await.unwrap_err();
    assert_eq!(err.to_string(), "module resize@9 not found");
    let err = s.module_bytes(&fake_sha("zzz")).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }));

    for (name, version, sha) in [
        ("", None, fake_sha("x")),
        ("a@b", None, fake_sha("x")),
        ("ok", Some("1 2"), fake_sha("x")),
        ("ok", None, "ABC".to_owned()),
    ] {
        let err = s.push_module(name, version, b"x", &sha).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidArgument(_)), "{err}");
    }
}

async fn module_delete_refused_while_in_use(h: Harness) {
    let s = h.store().await;
    let m = push(&s, "img", "img-v1").await;
    let id = enqueue(&s, task(&m)).await;

    let err = s.delete_module("img", Some("1"), false).await.unwrap_err();
    match &err {
        StoreError::ModuleInUse { module, tasks } => {
            assert_eq!((module.as_str(), *tasks), ("img@1", 1));
        }
        other => panic!("expected ModuleInUse, got {other}"),
    }
    assert!(!err.to_string().contains('\n'));
    // Live tasks count too: leased ...
    let claimed = claim_one(&s, "w1", LONG).await;
    assert!(matches!(
        s.delete_module("img", None, false).await,
        Err(StoreError::ModuleInUse { tasks: 1, .. })
    ));
    // ... and running.
    assert!(start1(&s, "w1", &claimed).await);
    assert!(matches!(
        s.delete_module("img", None, false).await,
        Err(StoreError::ModuleInUse { tasks: 1, .. })
    ));
    assert!(complete1(&s, "w1", &claimed, Transition::Fail).await);

    // Finished tasks do not hold the module, but keep its bytes.
    assert_eq!(s.delete_module("img", Some("1"), false).await.unwrap(), 1);
    assert!(s.resolve_module("img", None).await.is_err());
    assert_eq!(s.module_bytes(&m.sha256).await.unwrap(), b"img-v1");
    // Purging the last task referring to them collects the bytes.
    assert_eq!(s.purge(TaskState::Failed, now_plus(1000)).await.unwrap(), 1);
    assert!(matches!(
        s.module_bytes(&m.sha256).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        s.list_attempts(id).await.unwrap_err().to_string(),
        format!("task {id} not found")
    );

    // Forced: queued tasks keep their bytes and still run.
    let m2 = push(&s, "img", "img-v2").await;
    let queued = enqueue(&s, task(&m2)).await;
    assert_eq!(s.delete_module("img", None, true).await.unwrap(), 1);
    let claimed = claim_one(&s, "w1", LONG).await;
    assert_eq!(claimed.id, queued);
    assert_eq!(
        s.module_bytes(&claimed.module_sha256).await.unwrap(),
        b"img-v2"
    );

    let err = s.delete_module("img", None, false).await.unwrap_err();
    assert_eq!(err.to_string(), "module img not found");
}

async fn enqueue_validation(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    let bad = [
        task(&m).priority(101),
        task(&m).priority(-101),
        task(&m).max_attempts(0),
        task(&m).queue(""),
        task(&m).queue("a,b"),
        NewTask::new(&m, "{not json"),
        task(&m).unique_key(""),
    ];
    for t in bad {
        let err = s.enqueue(t.clone()).await.unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidArgument(_)),
            "{t:?} gave {err}"
        );
    }
    // Nothing of a failing batch is stored.
    let batch = vec![task(&m), task(&m).priority(500)];
    assert!(s.enqueue_batch(&batch).await.is_err());
    assert!(s.get_task(batch[0].id).await.is_err());
    assert!(
        s.list_tasks(&TaskFilter::default())
            .await
            .unwrap()
            .is_empty()
    );

    // Bytes that were never pushed.
    let mut ghost = task(&m);
    ghost.module_sha256 = fake_sha("ghost");
    let err = s.enqueue(ghost).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");

    // Edge values are fine.
    enqueue(&s, task(&m).priority(100)).await;
    enqueue(&s, task(&m).priority(-100)).await;
}

/// A statement the database refuses for its content is not retried as if
/// the database were busy: on PostgreSQL a NUL in text is SQLSTATE 22021,
/// whose number once read as SQLite's BUSY.
async fn refused_statements_are_not_transient(h: Harness) {
    let s = h.store().await;
    let err = match &s {
        AnyStore::Postgres(pg) => sqlx::query("SELECT convert_from('\\x00'::bytea, 'UTF8')")
            .execute(pg.pool())
            .await
            .unwrap_err(),
        AnyStore::Sqlite(lite) => sqlx::query("SELECT * FROM no_such_table")
            .execute(lite.pool())
            .await
            .unwrap_err(),
        other => panic!("no such backend: {}", other.backend_name()),
    };
    let err = StoreError::Database(err);
    assert!(!err.is_transient(), "{err}");
}

async fn enqueue_and_get_task_roundtrip(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    let parent = Uuid::now_v7();
    let run_after = now_plus(-5_000);
    let input = "{ \"text\" : \"héllo\",\n  \"n\": [1, 2] }";
    let limits = TaskLimits {
        fuel: Some(Fuel::limited(1_000_000)),
        memory_bytes: Some(64 << 20),
        timeout_ms: Some(30_000),
    };
    let before = Utc::now() - TimeDelta::seconds(1);
    let t = NewTask::new(&m, input)
        .queue("images")
        .priority(-7)
        .run_after(run_after)
        .max_attempts(5)
        .limits(limits)
        .unique_key("img-42")
        .parent(parent);
    let id = enqueue(&s, t.clone()).await;
    assert_eq!(id, t.id);

    let r = s.get_task(id).await.unwrap();
    assert_eq!(r.id, id);
    assert_eq!(
        (r.module_name.as_str(), r.module_version.as_str()),
        ("echo", "1")
    );
    assert_eq!(r.module_sha256, m.sha256);
    assert_eq!((r.queue.as_str(), r.priority), ("images", -7));
    assert_eq!(r.input, input, "input is kept verbatim");
    assert_eq!(r.state, TaskState::Queued);
    assert_eq!(r.run_after.timestamp_micros(), run_after.timestamp_micros());
    assert_eq!((r.attempt, r.max_attempts), (0, 5));
    assert_eq!(
        (r.lease_epoch, r.free_runs, r.counted_attempts()),
        (0, 0, 0)
    );
    assert_eq!(r.limits, limits);
    assert_eq!(r.unique_key.as_deref(), Some("img-42"));
    assert_eq!(r.parent_id, Some(parent));
    assert!(r.lease_owner.is_none() && r.lease_expires_at.is_none());
    assert!(!r.cancel_requested);
    assert!(r.result.is_none() && r.error_kind.is_none() && r.finished_at.is_none());
    assert!(r.started_at.is_none());
    assert!(r.enqueued_at > before && r.enqueued_at < now_plus(1000));
    assert!(r.seq > 0);

    // Defaults: run_after now, no limits.
    let id2 = enqueue(&s, task(&m)).await;
    let r2 = s.get_task(id2).await.unwrap();
    assert!(r2.seq > r.seq);
    assert_eq!(r2.limits, TaskLimits::default());
    assert_eq!(r2.queue, "default");

    // Unlimited fuel is kept apart from "the worker's default".
    let unlimited = TaskLimits {
        fuel: Some(Fuel::Unlimited),
        ..TaskLimits::default()
    };
    let id3 = enqueue(&s, task(&m).limits(unlimited)).await;
    assert_eq!(s.get_task(id3).await.unwrap().limits, unlimited);
    assert!((r2.run_after - r2.enqueued_at).num_milliseconds().abs() < 1000);

    let missing = Uuid::now_v7();
    let err = s.get_task(missing).await.unwrap_err();
    assert_eq!(err.to_string(), format!("task {missing} not found"));
}

async fn enqueue_batch_order_and_listing(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    let other = push(&s, "other", "other-bytes").await;
    let tasks: Vec<NewTask> = (0..500)
        .map(|i| {
            let base = if i % 5 == 0 { task(&other) } else { task(&m) };
            base.queue(if i % 2 == 0 { "even" } else { "odd" })
        })
        .collect();
    let outcomes = s.enqueue_batch(&tasks).await.unwrap();
    assert_eq!(outcomes.len(), 500);
    for (t, o) in tasks.iter().zip(&outcomes) {
        assert_eq!((o.id, o.deduplicated), (t.id, false));
    }
    assert!(s.enqueue_batch(&[]).await.unwrap().is_empty());

    // Newest first, seq follows batch order.
    let page1 = s
        .list_tasks(&TaskFilter {
            limit: 200,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page1.len(), 200);
    assert_eq!(page1[0].id, tasks[499].id);
    assert!(page1.windows(2).all(|w| w[0].seq > w[1].seq));
    let page2 = s
        .list_tasks(&TaskFilter {
            limit: 1000,
            before_seq: Some(page1.last().unwrap().seq),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page2.len(), 300);
    assert_eq!(page2.last().unwrap().id, tasks[0].id);
    let ids: Vec<Uuid> = page1.iter().chain(&page2).rev().map(|t| t.id).collect();
    assert!(
        ids == tasks.iter().map(|t| t.id).collect::<Vec<_>>(),
        "pages in enqueue order"
    );

    let even = s
        .list_tasks(&TaskFilter {
            queue: Some("even".into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(even.len(), 250);
    let by_module = s
        .list_tasks(&TaskFilter {
            module: Some("other".into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_module.len(), 100);

    let by_state = |state| {
        let s = s.clone();
        async move {
            s.list_tasks(&TaskFilter {
                state: Some(state),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect::<Vec<_>>()
        }
    };
    let claimed = claim_one(&s, "w", LONG).await;
    assert_eq!(by_state(TaskState::Leased).await, vec![tasks[0].id]);
    assert!(by_state(TaskState::Running).await.is_empty());
    assert!(start1(&s, "w", &claimed).await);
    assert_eq!(by_state(TaskState::Running).await, vec![tasks[0].id]);
    assert!(by_state(TaskState::Leased).await.is_empty());
    let default_limit = s.list_tasks(&TaskFilter::default()).await.unwrap();
    assert_eq!(default_limit.len(), DEFAULT_LIST_LIMIT as usize);
    assert!(matches!(
        s.list_tasks(&TaskFilter {
            limit: MAX_LIST_LIMIT + 1,
            ..Default::default()
        })
        .await,
        Err(StoreError::InvalidArgument(_))
    ));
}

/// Priority first, then run_after (so an old retry is not starved by newer
/// tasks), then enqueue order.
async fn claim_order_priority_run_after_seq(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    let hour_ago = now_plus(-3_600_000);
    let a = enqueue(&s, task(&m)).await; // p0, now
    let b = enqueue(&s, task(&m).priority(5)).await; // p5, now
    let c = enqueue(&s, task(&m).run_after(hour_ago)).await; // p0, old: "a retry"
    let d = enqueue(&s, task(&m).priority(5)).await; // p5, now, later seq
    let e = enqueue(&s, task(&m).priority(-3).run_after(hour_ago)).await;
    let f = enqueue(&s, task(&m)).await; // p0, now, last
    let expected = vec![b, d, c, a, f, e];

    // One batch comes back in claim order ...
    let batch = claim_all(&s, "w1").await;
    assert_eq!(batch.iter().map(|t| t.id).collect::<Vec<_>>(), expected);
    assert!(
        batch
            .iter()
            .all(|t| (t.attempt, t.epoch, t.free_runs, t.counted_attempt()) == (1, 1, 0, 1))
    );

    // ... and so do single claims.
    let x = enqueue(&s, task(&m).queue("q3")).await;
    let y = enqueue(&s, task(&m).queue("q3").priority(5)).await;
    let z = enqueue(&s, task(&m).queue("q3").run_after(hour_ago)).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(claim_one(&s, "w3", LONG).await.id);
    }
    assert_eq!(got, vec![y, z, x]);
}

async fn future_run_after_not_claimed_until_due(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    let due = now_plus(1_500);
    let id = enqueue(&s, task(&m).run_after(due)).await;
    assert!(claim_all(&s, "w").await.is_empty());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(claim_all(&s, "w").await.is_empty());
    let wait = (due - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(100);
    tokio::time::sleep(wait).await;
    let claimed = claim_all(&s, "w").await;
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, id);
}

async fn claim_respects_queue_selector(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    let mut by_queue: HashMap<&str, Vec<Uuid>> = HashMap::new();
    for q in ["a", "b", "c", "a", "b", "c"] {
        by_queue
            .entry(q)
            .or_default()
            .push(enqueue(&s, task(&m).queue(q)).await);
    }
    let lease = LONG;
    assert!(
        s.claim("w", &QueueSelector::Named(vec![]), 10, lease)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.claim("w", &QueueSelector::parse("zzz"), 10, lease)
            .await
            .unwrap()
            .is_empty()
    );
    let a = s
        .claim("w", &QueueSelector::parse("a"), 10, lease)
        .await
        .unwrap();
    assert_eq!(a.iter().map(|t| t.id).collect::<Vec<_>>(), by_queue["a"]);
    let bc = s
        .claim("w", &QueueSelector::parse("b, c"), 10, lease)
        .await
        .unwrap();
    assert_eq!(bc.len(), 4);
    assert!(bc.iter().all(|t| t.queue == "b" || t.queue == "c"));
    // Claim order across queues is still enqueue order.
    let expected: Vec<Uuid> = {
        let mut v: Vec<(i64, Uuid)> = Vec::new();
        for id in by_queue["b"].iter().chain(&by_queue["c"]) {
            v.push((s.get_task(*id).await.unwrap().seq, *id));
        }
        v.sort();
        v.into_iter().map(|(_, id)| id).collect()
    };
    assert_eq!(bc.iter().map(|t| t.id).collect::<Vec<_>>(), expected);

    let last = enqueue(&s, task(&m).queue("d")).await;
    let all = s.claim("w", &QueueSelector::All, 10, lease).await.unwrap();
    assert_eq!(all.iter().map(|t| t.id).collect::<Vec<_>>(), vec![last]);

    assert!(matches!(
        s.claim("w", &QueueSelector::All, 0, lease).await,
        Err(StoreError::InvalidArgument(_))
    ));
    assert!(matches!(
        s.claim("w", &QueueSelector::All, 1, Duration::ZERO).await,
        Err(StoreError::InvalidArgument(_))
    ));
}

async fn complete_applies_every_transition(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            enqueue(
                &s,
                task(&m).limits(TaskLimits {
                    fuel: Some(Fuel::limited(10)),
                    ..Default::default()
                }),
            )
            .await,
        );
    }
    let claimed = claim_all(&s, "w1").await;
    assert_eq!(claimed.len(), 5);
    let t = |i: usize| &claimed[i];
    assert_eq!(t(0).limits.fuel.and_then(Fuel::units), Some(10));
    assert!(t(0).lease_expires_at > Utc::now() + TimeDelta::seconds(50));
    // A claim leases: not started yet.
    let leased = s.get_task(ids[0]).await.unwrap();
    assert_eq!(leased.state, TaskState::Leased);
    assert_eq!(leased.lease_owner.as_deref(), Some("w1"));
    assert_eq!(
        (leased.attempt, leased.lease_epoch, leased.free_runs),
        (1, 1, 0)
    );
    assert_eq!(
        leased.lease_expires_at.map(|t| t.timestamp_micros()),
        Some(t(0).lease_expires_at.timestamp_micros())
    );
    assert!(leased.started_at.is_none());
    assert_eq!((t(0).attempt, t(0).epoch, t(0).free_runs), (1, 1, 0));
    // The runner starts it.
    assert!(start1(&s, "w1", t(0)).await);
    let running = s.get_task(ids[0]).await.unwrap();
    assert_eq!(running.state, TaskState::Running);
    assert_eq!(running.lease_owner.as_deref(), Some("w1"));
    assert_eq!((running.attempt, running.lease_epoch), (1, 1));
    assert!(running.started_at.is_some());

    let retry_at = now_plus(-1);
    let mut fail = completion(t(1), Transition::Fail);
    fail.report = AttemptReport {
        outcome: OutcomeKind::Trap,
        error_kind: None,
        error_message: Some("unreachable executed".into()),
        logs: Some("log line\n".into()),
        fuel_used: Some(1234),
        peak_memory: Some(65536),
        duration_ms: 42,
    };
    let mut retry = completion(
        t(3),
        Transition::Retry {
            run_after: retry_at,
        },
    );
    retry.report.error_kind = Some(TaskErrorKind::Retryable);
    retry.report.error_message = Some("try again".into());
    let batch = vec![
        completion(t(0), succeed()),
        fail,
        completion(t(2), Transition::Cancel),
        retry,
        completion(t(4), Transition::Release),
    ];
    let applied = s.complete("w1", &batch).await.unwrap();
    assert_eq!(applied, vec![true; 5]);

    let r = s.get_task(ids[0]).await.unwrap();
    assert_eq!(r.state, TaskState::Succeeded);
    assert_eq!(r.result.as_deref(), Some(r#"{"ok":true}"#));
    assert!(r.finished_at.is_some() && r.lease_owner.is_none() && r.lease_expires_at.is_none());
    assert!(r.error_kind.is_none());

    let r = s.get_task(ids[1]).await.unwrap();
    assert_eq!(r.state, TaskState::Failed);
    assert_eq!(
        r.error_kind.as_deref(),
        Some("trap"),
        "kind defaults to outcome"
    );
    assert_eq!(r.error_message.as_deref(), Some("unreachable executed"));
    assert_eq!(r.error_logs.as_deref(), Some("log line\n"));
    assert!(r.finished_at.is_some() && r.result.is_none());
    let attempts = s.list_attempts(ids[1]).await.unwrap();
    assert_eq!(attempts.len(), 1);
    let a = &attempts[0];
    assert_eq!((a.attempt, a.worker_id.as_str()), (1, "w1"));
    assert_eq!(a.outcome_name(), Some("trap"));
    assert_eq!(a.error_message.as_deref(), Some("unreachable executed"));
    assert_eq!(a.logs.as_deref(), Some("log line\n"));
    assert_eq!(
        (a.fuel_used, a.peak_memory, a.duration_ms),
        (Some(1234), Some(65536), Some(42))
    );
    assert!(a.finished_at.unwrap() >= a.started_at);

    let r = s.get_task(ids[2]).await.unwrap();
    assert_eq!(r.state, TaskState::Cancelled);
    assert!(r.finished_at.is_some());
    assert_eq!(r.error_kind.as_deref(), Some("cancelled"));

    let r = s.get_task(ids[3]).await.unwrap();
    assert_eq!(r.state, TaskState::Queued);
    assert_eq!(
        (r.attempt, r.free_runs, r.counted_attempts()),
        (1, 0, 1),
        "a retry spends the attempt"
    );
    assert_eq!(r.run_after.timestamp_micros(), retry_at.timestamp_micros());
    assert_eq!(
        r.error_kind.as_deref(),
        Some("retryable"),
        "a task error is stored by its own kind"
    );
    assert_eq!(r.error_message.as_deref(), Some("try again"));
    assert!(r.finished_at.is_none() && r.lease_owner.is_none());

    let r = s.get_task(ids[4]).await.unwrap();
    assert_eq!(r.state, TaskState::Queued);
    assert_eq!(
        (r.attempt, r.free_runs, r.counted_attempts()),
        (1, 1, 0),
        "a release does not spend the attempt (the run is free, nothing rewinds)"
    );
    assert!(r.finished_at.is_none() && r.lease_owner.is_none());
    let a = s.list_attempts(ids[4]).await.unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(
        (a[0].attempt, a[0].lease_epoch, a[0].outcome_name()),
        (1, Some(1), Some("shutdown"))
    );
    assert!(a[0].finished_at.is_some());

    // Both requeued tasks run again, in a new run and epoch; the retry first
    // (older run_after).
    let again = claim_all(&s, "w2").await;
    assert_eq!(
        again
            .iter()
            .map(|t| (t.id, t.attempt, t.epoch, t.free_runs, t.counted_attempt()))
            .collect::<Vec<_>>(),
        vec![(ids[3], 2, 2, 0, 2), (ids[4], 2, 2, 1, 1)]
    );
    assert!(complete1(&s, "w2", &again[0], succeed()).await);
    let r = s.get_task(ids[3]).await.unwrap();
    assert!(
        r.error_kind.is_none() && r.error_message.is_none(),
        "success clears the old error"
    );
    let attempts = s.list_attempts(ids[3]).await.unwrap();
    assert_eq!(
        attempts
            .iter()
            .map(|a| (a.attempt, a.worker_id.as_str(), a.outcome_name()))
            .collect::<Vec<_>>(),
        vec![(1, "w1", Some("task-error")), (2, "w2", Some("success"))]
    );
    assert_eq!(
        attempts.iter().map(|a| a.lease_epoch).collect::<Vec<_>>(),
        vec![Some(1), Some(2)]
    );
    assert!(s.complete("w2", &[]).await.unwrap().is_empty());
}

async fn illegal_transitions_are_refused(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    let queued = enqueue(&s, task(&m)).await;

    let err = s.retry(queued).await.unwrap_err();
    match &err {
        StoreError::IllegalTransition { id, from, action } => {
            assert_eq!((*id, *from, *action), (queued, TaskState::Queued, "retry"));
        }
        other => panic!("expected IllegalTransition, got {other}"),
    }
    assert_eq!(
        err.to_string(),
        format!("cannot retry task {queued}: it is queued")
    );
    assert!(matches!(
        s.retry(Uuid::now_v7()).await,
        Err(StoreError::NotFound { .. })
    ));

    // Completing a task that is not live (never claimed) changes nothing.
    let fake = ClaimedTask {
        id: queued,
        attempt: 0,
        epoch: 0,
        ..claim_template(&m)
    };
    assert!(!complete1(&s, "w1", &fake, succeed()).await);
    assert_eq!(state(&s, queued).await, TaskState::Queued);

    let t = claim_one(&s, "w1", LONG).await;
    assert!(matches!(
        s.retry(t.id).await,
        Err(StoreError::IllegalTransition {
            from: TaskState::Leased,
            ..
        })
    ));
    // Wrong epoch, wrong worker: fenced (the attempt number is only for logs).
    for epoch in [0, 2] {
        let wrong_epoch = ClaimedTask { epoch, ..t.clone() };
        assert!(!complete1(&s, "w1", &wrong_epoch, succeed()).await);
    }
    assert!(!complete1(&s, "w2", &t, succeed()).await);
    // Lease not expired: the reaper cannot take it.
    assert!(!s.expire(t.id, 1, Transition::Fail).await.unwrap());
    assert!(matches!(
        s.expire(t.id, 1, succeed()).await,
        Err(StoreError::InvalidArgument(_))
    ));
    let r = s.get_task(t.id).await.unwrap();
    assert_eq!(
        (r.state, r.lease_owner.as_deref(), r.lease_epoch),
        (TaskState::Leased, Some("w1"), 1)
    );
    assert!(r.result.is_none() && r.finished_at.is_none());
    // Running: retry is still refused.
    assert!(start1(&s, "w1", &t).await);
    assert!(matches!(
        s.retry(t.id).await,
        Err(StoreError::IllegalTransition {
            from: TaskState::Running,
            ..
        })
    ));

    // A batch mixing applied and fenced rows.
    let fake = ClaimedTask {
        id: enqueue(&s, task(&m)).await,
        attempt: 1,
        epoch: 1,
        ..claim_template(&m)
    };
    let applied = s
        .complete(
            "w1",
            &[
                completion(&t, succeed()),
                completion(&fake, Transition::Fail),
            ],
        )
        .await
        .unwrap();
    assert_eq!(applied, vec![true, false]);
    // Terminal: completing again is fenced, cancelling reports the state.
    assert!(!complete1(&s, "w1", &t, Transition::Fail).await);
    assert_eq!(state(&s, t.id).await, TaskState::Succeeded);
    assert_eq!(
        s.request_cancel(t.id).await.unwrap(),
        CancelOutcome::AlreadyFinished(TaskState::Succeeded)
    );
    assert!(matches!(
        s.retry(t.id).await,
        Err(StoreError::IllegalTransition {
            from: TaskState::Succeeded,
            ..
        })
    ));
    for st in [TaskState::Queued, TaskState::Leased, TaskState::Running] {
        assert!(matches!(
            s.purge(st, Utc::now()).await,
            Err(StoreError::InvalidArgument(_))
        ));
    }
    // A task twice in one batch is a caller bug.
    let t2 = {
        enqueue(&s, task(&m)).await;
        claim_one(&s, "w1", LONG).await
    };
    assert!(matches!(
        s.complete(
            "w1",
            &[
                completion(&t2, succeed()),
                completion(&t2, Transition::Fail)
            ]
        )
        .await,
        Err(StoreError::InvalidArgument(_))
    ));
    assert_eq!(state(&s, t2.id).await, TaskState::Leased);
}

fn claim_template(m: &ModuleRecord) -> ClaimedTask {
    ClaimedTask {
        id: Uuid::nil(),
        module_name: m.name.clone(),
        module_version: m.version.clone(),
        module_sha256: m.sha256.clone(),
        queue: "default".into(),
        priority: 0,
        input: "{}".into(),
        attempt: 1,
        epoch: 1,
        max_attempts: 1,
        free_runs: 0,
        limits: TaskLimits::default(),
        enqueued_at: Utc::now(),
        lease_expires_at: Utc::now(),
        cancel_requested: false,
        depth: 0,
        children: 0,
    }
}

/// The django-ray failure: a worker that lost its lease must not overwrite
/// the state written by the worker that took over.
async fn stale_worker_is_fenced_off(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    let id = enqueue(&s, task(&m)).await;
    let stale = claim_one(&s, "worker-a", Duration::from_millis(200)).await;
    tokio::time::sleep(Duration::from_millis(350)).await;

    let expired = s.expired_leases(10).await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!((expired[0].attempt, expired[0].epoch), (1, 1));
    assert!(
        s.expire(
            id,
            expired[0].epoch,
            Transition::Retry {
                run_after: Utc::now()
            }
        )
        .await
        .unwrap()
    );
    let fresh = claim_one(&s, "worker-b", LONG).await;
    assert_eq!((fresh.id, fresh.attempt, fresh.epoch), (id, 2, 2));

    // worker-a wakes up and reports: fenced, nothing changes.
    assert!(!start1(&s, "worker-a", &stale).await);
    assert!(!complete1(&s, "worker-a", &stale, succeed()).await);
    assert!(!complete1(&s, "worker-a", &stale, Transition::Release).await);
    assert!(
        !s.set_progress("worker-a", stale.lease(), 50, "stale")
            .await
            .unwrap()
    );
    assert_eq!(
        s.heartbeat("worker-a", &[stale.lease()], LONG)
            .await
            .unwrap(),
        HeartbeatReply {
            lost: vec![id],
            cancel_requested: vec![]
        }
    );
    let r = s.get_task(id).await.unwrap();
    assert_eq!(r.state, TaskState::Leased);
    assert_eq!(
        (r.lease_owner.as_deref(), r.attempt, r.lease_epoch),
        (Some("worker-b"), 2, 2)
    );
    assert!(r.result.is_none() && r.progress_message.is_none());
    assert_eq!(
        r.lease_expires_at.map(|t| t.timestamp_micros()),
        Some(fresh.lease_expires_at.timestamp_micros())
    );

    assert!(complete1(&s, "worker-b", &fresh, succeed()).await);
    let attempts = s.list_attempts(id).await.unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].outcome_name(), Some("lease-expired"));
    assert_eq!(attempts[0].worker_id, "worker-a");
    assert_eq!(attempts[1].outcome_name(), Some("success"));
    assert_eq!(
        attempts.iter().map(|a| a.lease_epoch).collect::<Vec<_>>(),
        vec![Some(1), Some(2)]
    );
}

async fn lease_expiry_retry_and_fail(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    let retried = enqueue(&s, task(&m).queue("q").max_attempts(4)).await;
    let failed = enqueue(&s, task(&m).queue("q").max_attempts(1)).await;
    let short = Duration::from_millis(150);
    let c = s
        .claim("w-dead", &QueueSelector::All, 2, short)
        .await
        .unwrap();
    assert_eq!(c.len(), 2);
    assert!(s.expired_leases(10).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut expired = s.expired_leases(10).await.unwrap();
    expired.sort_by_key(|e| e.id != retried);
    assert_eq!(expired.len(), 2);
    assert_eq!(
        expired[0],
        ExpiredTask {
            id: retried,
            attempt: 1,
            epoch: 1,
            max_attempts: 4,
            free_runs: 0,
            lease_owner: "w-dead".into(),
            queue: "q".into(),
            module: m.reference(),
        }
    );
    assert_eq!(s.expired_leases(1).await.unwrap().len(), 1);

    assert!(
        s.expire(
            retried,
            1,
            Transition::Retry {
                run_after: now_plus(-1)
            }
        )
        .await
        .unwrap()
    );
    assert!(
        !s.expire(
            retried,
            1,
            Transition::Retry {
                run_after: Utc::now()
            }
        )
        .await
        .unwrap(),
        "second expire is fenced"
    );
    let r = s.get_task(retried).await.unwrap();
    assert_eq!(r.state, TaskState::Queued);
    assert_eq!(
        (r.attempt, r.lease_epoch, r.free_runs),
        (1, 1, 0),
        "a lost run counts"
    );
    assert_eq!(r.error_kind.as_deref(), Some("lease-expired"));
    assert_eq!(
        r.error_message.as_deref(),
        Some("lease expired (worker w-dead stopped heartbeating)")
    );
    assert!(r.lease_owner.is_none() && r.finished_at.is_none());

    assert!(s.expire(failed, 1, Transition::Fail).await.unwrap());
    let r = s.get_task(failed).await.unwrap();
    assert_eq!(r.state, TaskState::Failed);
    assert!(r.finished_at.is_some());
    assert_eq!(r.error_kind.as_deref(), Some("lease-expired"));

    let again = claim_one(&s, "w-alive", LONG).await;
    assert_eq!(
        (
            again.id,
            again.attempt,
            again.epoch,
            again.counted_attempt()
        ),
        (retried, 2, 2, 2)
    );
    let attempts = s.list_attempts(retried).await.unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].outcome_name(), Some("lease-expired"));
    assert_eq!(
        attempts[0].error_message.as_deref(),
        Some("lease expired (worker w-dead stopped heartbeating)")
    );
    assert!(attempts[0].finished_at.is_some());
    assert!(attempts[0].duration_ms.unwrap() >= 100);
    assert!(attempts[1].outcome.is_none() && attempts[1].finished_at.is_none());
    assert!(s.expired_leases(10).await.unwrap().is_empty());
}

async fn heartbeat_extends_leases_and_reports_cancels(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    for w in ["w1", "w2"] {
        s.register_worker(&WorkerInfo {
            id: w.into(),
            hostname: "host".into(),
            pid: 42,
            mode: "local".into(),
            queues: QueueSelector::All,
            concurrency: 4,
        })
        .await
        .unwrap();
    }
    for _ in 0..3 {
        enqueue(&s, task(&m)).await;
    }
    let short = Duration::from_millis(300);
    let mine = s.claim("w1", &QueueSelector::All, 2, short).await.unwrap();
    let theirs = s.claim("w2", &QueueSelector::All, 1, short).await.unwrap();
    // One of mine running, one leased: both live states are extended.
    assert!(start1(&s, "w1", &mine[0]).await);
    let before = s.list_workers().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;

    let leases: Vec<Lease> = mine.iter().map(ClaimedTask::lease).collect();
    assert_eq!(
        s.heartbeat("w1", &leases, LONG).await.unwrap(),
        HeartbeatReply::default()
    );
    let after = s.list_workers().await.unwrap();
    let hb =
        |ws: &[WorkerRecord], id: &str| ws.iter().find(|w| w.id == id).unwrap().last_heartbeat_at;
    assert!(hb(&after, "w1") > hb(&before, "w1"));
    assert_eq!(hb(&after, "w2"), hb(&before, "w2"));
    for t in &mine {
        let r = s.get_task(t.id).await.unwrap();
        assert!(r.lease_expires_at.unwrap() > Utc::now() + TimeDelta::seconds(50));
    }

    tokio::time::sleep(Duration::from_millis(400)).await;
    let expired = s.expired_leases(10).await.unwrap();
    assert_eq!(
        expired.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![theirs[0].id],
        "only the silent worker's lease ran out"
    );

    assert_eq!(
        s.request_cancel(mine[1].id).await.unwrap(),
        CancelOutcome::Requested
    );
    assert_eq!(
        s.heartbeat("w1", &leases, LONG).await.unwrap(),
        HeartbeatReply {
            lost: vec![],
            cancel_requested: vec![mine[1].id]
        }
    );
    let r = s.get_task(mine[1].id).await.unwrap();
    assert!(r.cancel_requested);
    assert_eq!(r.state, TaskState::Leased);
    assert!(complete1(&s, "w1", &mine[1], Transition::Cancel).await);
    assert_eq!(state(&s, mine[1].id).await, TaskState::Cancelled);
    // The finished task is lost to the heartbeat, the other still extended.
    assert_eq!(
        s.heartbeat("w1", &leases, LONG).await.unwrap(),
        HeartbeatReply {
            lost: vec![mine[1].id],
            cancel_requested: vec![]
        }
    );
    assert!(matches!(
        s.heartbeat("w1", &[], Duration::ZERO).await,
        Err(StoreError::InvalidArgument(_))
    ));
}

async fn cancel_queued_and_running(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    let queued = enqueue(&s, task(&m)).await;
    assert_eq!(
        s.request_cancel(queued).await.unwrap(),
        CancelOutcome::Cancelled
    );
    let r = s.get_task(queued).await.unwrap();
    assert_eq!(r.state, TaskState::Cancelled);
    assert!(
        r.finished_at.is_some(),
        "a cancelled queued task is finished"
    );
    assert_eq!(r.error_kind.as_deref(), Some("cancelled"));
    assert_eq!(
        s.request_cancel(queued).await.unwrap(),
        CancelOutcome::AlreadyFinished(TaskState::Cancelled)
    );
    assert!(claim_all(&s, "w").await.is_empty());

    // Live (a leased, b running): only a request; a retry or release
    // afterwards still ends cancelled.
    let a = enqueue(&s, task(&m)).await;
    let b = enqueue(&s, task(&m)).await;
    let claimed = claim_all(&s, "w").await;
    assert_eq!((claimed[0].id, claimed[1].id), (a, b));
    assert!(start1(&s, "w", &claimed[1]).await);
    for (id, live) in [(a, TaskState::Leased), (b, TaskState::Running)] {
        assert_eq!(
            s.request_cancel(id).await.unwrap(),
            CancelOutcome::Requested
        );
        let r = s.get_task(id).await.unwrap();
        assert_eq!((r.state, r.cancel_requested), (live, true));
        assert!(r.finished_at.is_none());
    }
    assert_eq!(s.request_cancel(a).await.unwrap(), CancelOutcome::Requested);
    let applied = s
        .complete(
            "w",
            &[
                completion(
                    &claimed[0],
                    Transition::Retry {
                        run_after: Utc::now(),
                    },
                ),
                completion(&claimed[1], Transition::Release),
            ],
        )
        .await
        .unwrap();
    assert_eq!(applied, vec![true, true]);
    for id in [a, b] {
        let r = s.get_task(id).await.unwrap();
        assert_eq!(r.state, TaskState::Cancelled);
        assert!(r.finished_at.is_some());
    }
    assert!(claim_all(&s, "w").await.is_empty());

    let missing = Uuid::now_v7();
    assert_eq!(
        s.request_cancel(missing).await.unwrap_err().to_string(),
        format!("task {missing} not found")
    );
}

async fn manual_retry_from_failed_and_cancelled(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    let id = enqueue(&s, task(&m).max_attempts(1)).await;
    let t = claim_one(&s, "w", LONG).await;
    let mut c = completion(&t, Transition::Fail);
    c.report.error_message = Some("boom".into());
    assert!(s.complete("w", &[c]).await.unwrap()[0]);

    let r = s.retry(id).await.unwrap();
    assert_eq!(r.state, TaskState::Queued);
    assert_eq!(
        (r.attempt, r.max_attempts),
        (1, 2),
        "one more attempt granted"
    );
    assert!(r.finished_at.is_none() && r.error_message.is_none() && r.result.is_none());
    assert!(r.error_kind.is_none() && !r.cancel_requested);
    assert!((Utc::now() - r.run_after).num_seconds().abs() < 5);
    assert_eq!(r, s.get_task(id).await.unwrap());

    let t = claim_one(&s, "w", LONG).await;
    assert_eq!((t.id, t.attempt, t.max_attempts), (id, 2, 2));
    assert!(complete1(&s, "w", &t, Transition::Cancel).await);
    let r = s.retry(id).await.unwrap();
    assert_eq!(
        (r.state, r.attempt, r.max_attempts),
        (TaskState::Queued, 2, 3)
    );
    assert_eq!(s.list_attempts(id).await.unwrap().len(), 2, "history kept");

    // Free runs do not count: after a release and a failed run the one
    // attempt is used up (2 runs - 1 free run), so one more is granted.
    // (Own queue: the task above is queued again.)
    let free_queue = QueueSelector::parse("free");
    let claim_free = || async {
        s.claim("w", &free_queue, 1, LONG)
            .await
            .unwrap()
            .pop()
            .expect("a claimable task")
    };
    let freed = enqueue(&s, task(&m).queue("free").max_attempts(1)).await;
    let t = claim_free().await;
    assert!(complete1(&s, "w", &t, Transition::Release).await);
    let t = claim_free().await;
    assert_eq!(
        (t.id, t.attempt, t.free_runs, t.counted_attempt()),
        (freed, 2, 1, 1)
    );
    assert!(complete1(&s, "w", &t, Transition::Fail).await);
    let r = s.retry(freed).await.unwrap();
    assert_eq!(
        (r.state, r.attempt, r.free_runs, r.max_attempts),
        (TaskState::Queued, 2, 1, 2)
    );
    let t = claim_free().await;
    assert_eq!(
        (
            t.id,
            t.attempt,
            t.epoch,
            t.counted_attempt(),
            t.max_attempts
        ),
        (freed, 3, 3, 2, 2)
    );
    assert!(complete1(&s, "w", &t, succeed()).await);

    // Attempts left: max_attempts unchanged.
    let roomy = enqueue(&s, task(&m).max_attempts(5)).await;
    assert_eq!(
        s.request_cancel(roomy).await.unwrap(),
        CancelOutcome::Cancelled
    );
    let r = s.retry(roomy).await.unwrap();
    assert_eq!((r.attempt, r.max_attempts), (0, 5));
}

async fn release_does_not_spend_an_attempt(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    let id = enqueue(&s, task(&m).max_attempts(1)).await;
    for round in 0..3u32 {
        let t = claim_one(&s, &format!("w{round}"), LONG).await;
        // Every claim is a new run and epoch; the counted attempt stays 1.
        assert_eq!(
            (t.attempt, t.epoch, t.free_runs, t.counted_attempt()),
            (round + 1, u64::from(round) + 1, round, 1)
        );
        assert!(complete1(&s, &format!("w{round}"), &t, Transition::Release).await);
        let r = s.get_task(id).await.unwrap();
        assert_eq!(
            (r.state, r.attempt, r.free_runs, r.counted_attempts()),
            (TaskState::Queued, round + 1, round + 1, 0)
        );
        assert!(r.run_after <= Utc::now());
    }
    let attempts = s.list_attempts(id).await.unwrap();
    assert_eq!(
        attempts
            .iter()
            .map(|a| (
                a.attempt,
                a.lease_epoch,
                a.worker_id.as_str(),
                a.outcome_name()
            ))
            .collect::<Vec<_>>(),
        vec![
            (1, Some(1), "w0", Some("shutdown")),
            (2, Some(2), "w1", Some("shutdown")),
            (3, Some(3), "w2", Some("shutdown")),
        ]
    );
    assert!(attempts.iter().all(|a| a.finished_at.is_some()));
    let t = claim_one(&s, "w9", LONG).await;
    assert_eq!(
        (t.attempt, t.epoch, t.free_runs, t.counted_attempt()),
        (4, 4, 3, 1)
    );
}

async fn defer_requeues_later_without_spending_the_attempt(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    let id = enqueue(&s, task(&m).max_attempts(1)).await;
    let t = claim_one(&s, "w1", LONG).await;
    let mut c = completion(
        &t,
        Transition::Defer {
            run_after: now_plus(60_000),
        },
    );
    c.report.error_message = Some("Ray cluster unavailable".into());
    assert_eq!(s.complete("w1", &[c]).await.unwrap(), [true]);
    let r = s.get_task(id).await.unwrap();
    assert_eq!(
        (r.state, r.attempt, r.free_runs, r.counted_attempts()),
        (TaskState::Queued, 1, 1, 0)
    );
    assert!(r.run_after > Utc::now() + chrono::Duration::seconds(50));
    assert_eq!(r.error_message.as_deref(), Some("Ray cluster unavailable"));
    assert!(r.lease_owner.is_none() && r.finished_at.is_none());
    let a = s.list_attempts(id).await.unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(
        (a[0].attempt, a[0].lease_epoch, a[0].outcome_name()),
        (1, Some(1), Some("host-error"))
    );
    assert_eq!(
        a[0].error_message.as_deref(),
        Some("Ray cluster unavailable")
    );
    assert!(a[0].finished_at.is_some());
    // Not claimable before run_after.
    assert!(
        s.claim("w2", &QueueSelector::All, 10, LONG)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn ray_submission_is_recorded_and_fenced(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    let id = enqueue(&s, task(&m)).await;
    let t = claim_one(&s, "w1", LONG).await;
    let lease = |epoch| Lease { task_id: id, epoch };
    assert!(
        !s.set_ray_submission("w2", lease(1), "wasmq-x-1")
            .await
            .unwrap()
    );
    assert!(
        !s.set_ray_submission("w1", lease(2), "wasmq-x-2")
            .await
            .unwrap()
    );
    assert!(s.get_task(id).await.unwrap().ray_submission_id.is_none());
    // Leased (submitted before the runner marked it started) is live too.
    assert!(
        s.set_ray_submission("w1", t.lease(), "wasmq-x-1")
            .await
            .unwrap()
    );
    assert_eq!(
        s.get_task(id).await.unwrap().ray_submission_id.as_deref(),
        Some("wasmq-x-1")
    );
    // The job's node, on the attempt of this worker's live run only.
    assert!(!s.set_ray_node("w2", t.lease(), "n2").await.unwrap());
    assert!(!s.set_ray_node("w1", lease(2), "n2").await.unwrap());
    assert!(s.set_ray_node("w1", t.lease(), "n1").await.unwrap());
    assert!(complete1(&s, "w1", &t, succeed()).await);
    assert!(!s.set_ray_node("w1", t.lease(), "n9").await.unwrap());
    // Kept after the end, on the task and on its attempt.
    let r = s.get_task(id).await.unwrap();
    assert_eq!(r.ray_submission_id.as_deref(), Some("wasmq-x-1"));
    let a = s.list_attempts(id).await.unwrap();
    assert_eq!(a[0].ray_submission_id.as_deref(), Some("wasmq-x-1"));
    assert_eq!(a[0].ray_node_id.as_deref(), Some("n1"));
    assert!(
        !s.set_ray_submission("w1", t.lease(), "wasmq-x-9")
            .await
            .unwrap()
    );
}

async fn unique_key_dedup(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    let first = enqueue(&s, task(&m).unique_key("k1")).await;
    let dup = s.enqueue(task(&m).unique_key("k1")).await.unwrap();
    assert_eq!((dup.id, dup.deduplicated), (first, true));

    // Within a batch and against existing rows.
    let batch = vec![
        task(&m).unique_key("k1"),
        task(&m).unique_key("k2"),
        task(&m).unique_key("k2"),
        task(&m),
        task(&m),
    ];
    let out = s.enqueue_batch(&batch).await.unwrap();
    assert_eq!((out[0].id, out[0].deduplicated), (first, true));
    assert_eq!((out[1].id, out[1].deduplicated), (batch[1].id, false));
    assert_eq!((out[2].id, out[2].deduplicated), (batch[1].id, true));
    assert!(!out[3].deduplicated && !out[4].deduplicated);
    assert!(
        s.get_task(batch[2].id).await.is_err(),
        "the duplicate was not stored"
    );

    // Leased and running still hold the key.
    let t = s
        .claim("w", &QueueSelector::All, 1, LONG)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(t.id, first);
    let dup = s.enqueue(task(&m).unique_key("k1")).await.unwrap();
    assert_eq!((dup.id, dup.deduplicated), (first, true));
    assert!(start1(&s, "w", &t).await);
    let dup = s.enqueue(task(&m).unique_key("k1")).await.unwrap();
    assert_eq!((dup.id, dup.deduplicated), (first, true));

    // Finished: the key is free again.
    assert!(complete1(&s, "w", &t, Transition::Fail).await);
    let second = enqueue(&s, task(&m).unique_key("k1")).await;
    assert_ne!(second, first);
    // Retrying the failed one now would make two unfinished tasks with k1.
    let err = s.retry(first).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert_eq!(state(&s, first).await, TaskState::Failed);

    // Racing enqueues of one key: exactly one task.
    let racers = futures::future::join_all((0..8).map(|_| {
        let s = s.clone();
        let t = task(&m).unique_key("race");
        tokio::spawn(async move { s.enqueue(t).await.unwrap() })
    }))
    .await;
    let ids: HashSet<Uuid> = racers.into_iter().map(|r| r.unwrap().id).collect();
    assert_eq!(ids.len(), 1);
}

/// Many claimers on separate connections (and two separate stores, standing
/// in for two processes): every task is claimed exactly once.
async fn concurrent_claims_each_task_exactly_once(h: Harness) {
    const TASKS: usize = 2_000;
    let s = h.store().await;
    let other_process = h.connect().await;
    let m = module(&s).await;
    let tasks: Vec<NewTask> = (0..TASKS)
        .map(|i| task(&m).priority((i % 7) as i16))
        .collect();
    s.enqueue_batch(&tasks).await.unwrap();

    let mut handles = Vec::new();
    for i in 0..8 {
        let store = if i % 2 == 0 {
            s.clone()
        } else {
            other_process.clone()
        };
        handles.push(tokio::spawn(async move {
            let worker = format!("w{i}");
            let mut seen = Vec::new();
            loop {
                let claimed = store
                    .claim(&worker, &QueueSelector::All, 25, LONG)
                    .await
                    .unwrap();
                if claimed.is_empty() {
                    return seen;
                }
                let done: Vec<Completion> =
                    claimed.iter().map(|t| completion(t, succeed())).collect();
                let applied = store.complete(&worker, &done).await.unwrap();
                assert!(applied.iter().all(|a| *a));
                seen.extend(claimed.iter().map(|t| t.id));
            }
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    assert_eq!(all.len(), TASKS, "claimed count");
    let unique: HashSet<Uuid> = all.iter().copied().collect();
    assert_eq!(unique.len(), TASKS, "a task was claimed twice");
    let stats = s.queue_stats().await.unwrap();
    assert_eq!(
        stats.iter().map(|q| (q.state, q.count)).collect::<Vec<_>>(),
        vec![(TaskState::Succeeded, TASKS as u64)]
    );
}

async fn purge_terminal_tasks(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    for _ in 0..4 {
        enqueue(&s, task(&m)).await;
    }
    let queued = enqueue(&s, task(&m).run_after(now_plus(3_600_000))).await;
    let claimed = claim_all(&s, "w").await;
    assert_eq!(claimed.len(), 4);
    let batch: Vec<Completion> = claimed
        .iter()
        .enumerate()
        .map(|(i, t)| completion(t, if i == 0 { Transition::Fail } else { succeed() }))
        .collect();
    s.complete("w", &batch).await.unwrap();

    assert_eq!(
        s.purge(TaskState::Succeeded, now_plus(-60_000))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.purge(TaskState::Succeeded, now_plus(1_000))
            .await
            .unwrap(),
        3
    );
    for t in &claimed[1..] {
        assert!(matches!(
            s.get_task(t.id).await,
            Err(StoreError::NotFound { .. })
        ));
        assert!(s.list_attempts(t.id).await.is_err(), "attempts go too");
    }
    assert_eq!(state(&s, claimed[0].id).await, TaskState::Failed);
    assert_eq!(state(&s, queued).await, TaskState::Queued);
    assert_eq!(
        s.purge(TaskState::Cancelled, now_plus(1_000))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.purge(TaskState::Failed, now_plus(1_000)).await.unwrap(),
        1
    );
    // The queued task keeps the module bytes alive.
    assert!(s.module_bytes(&m.sha256).await.is_ok());
}

async fn queue_stats_counts(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    assert!(s.queue_stats().await.unwrap().is_empty());
    let first = enqueue(&s, task(&m).queue("a")).await;
    for q in ["a", "a", "b", "b"] {
        enqueue(&s, task(&m).queue(q)).await;
    }
    let b = s
        .claim("w", &QueueSelector::parse("b"), 1, LONG)
        .await
        .unwrap();
    assert!(complete1(&s, "w", &b[0], succeed()).await);
    s.claim("w", &QueueSelector::parse("b"), 1, LONG)
        .await
        .unwrap();

    let stats = s.queue_stats().await.unwrap();
    let rows: Vec<(&str, TaskState, u64)> = stats
        .iter()
        .map(|q| (q.queue.as_str(), q.state, q.count))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("a", TaskState::Queued, 3),
            ("b", TaskState::Leased, 1),
            ("b", TaskState::Succeeded, 1),
        ]
    );
    let oldest = s.get_task(first).await.unwrap().enqueued_at;
    assert_eq!(stats[0].oldest_queued_at, Some(oldest));
    assert!(stats[1].oldest_queued_at.is_none() && stats[2].oldest_queued_at.is_none());
}

/// `queue_stats` as a full scan of the table would count it.
async fn recount(s: &AnyStore) -> Vec<(String, TaskState, u64)> {
    let all = s
        .list_tasks(&TaskFilter {
            limit: MAX_LIST_LIMIT,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut counts = std::collections::BTreeMap::new();
    for t in all {
        *counts.entry((t.queue, t.state)).or_insert(0u64) += 1;
    }
    counts.into_iter().map(|((q, st), n)| (q, st, n)).collect()
}

async fn stats(s: &AnyStore) -> Vec<(String, TaskState, u64)> {
    let mut rows: Vec<_> = s
        .queue_stats()
        .await
        .unwrap()
        .into_iter()
        .map(|q| (q.queue, q.state, q.count))
        .collect();
    rows.sort();
    rows
}

/// Finished tasks are counted by triggers (migration 0004), not by a scan:
/// every arrow into or out of a terminal state must keep the counts equal to
/// a recount.
async fn queue_stats_follow_every_terminal_arrow(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    let check = |step: &'static str| {
        let s = s.clone();
        async move {
            let (kept, counted) = (stats(&s).await, recount(&s).await);
            assert_eq!(kept, counted, "after {step}");
        }
    };
    for q in ["a", "a", "a", "b", "b", "b"] {
        enqueue(&s, task(&m).queue(q).max_attempts(1)).await;
    }
    check("enqueue").await;

    // Completion: succeed, fail and cancel in one batch.
    let c = s
        .claim("w", &QueueSelector::parse("a"), 3, LONG)
        .await
        .unwrap();
    let batch: Vec<Completion> = c
        .iter()
        .zip([succeed(), Transition::Fail, Transition::Cancel])
        .map(|(t, tr)| completion(t, tr))
        .collect();
    s.complete("w", &batch).await.unwrap();
    check("a completion batch").await;

    // Cancel of a queued task.
    let b = recount(&s).await;
    assert!(
        b.iter()
            .any(|(q, st, _)| q == "b" && *st == TaskState::Queued)
    );
    let queued_b = s
        .list_tasks(&TaskFilter {
            queue: Some("b".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    s.request_cancel(queued_b[0].id).await.unwrap();
    check("cancel of a queued task").await;

    // The reaper fails a task whose one attempt expired.
    let short = Duration::from_millis(100);
    let leased = s
        .claim("w-dead", &QueueSelector::parse("b"), 1, short)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        s.expire(leased[0].id, leased[0].epoch, Transition::Fail)
            .await
            .unwrap()
    );
    check("lease expiry").await;

    // A manual retry takes a task out of a terminal state.
    s.retry(leased[0].id).await.unwrap();
    s.retry(queued_b[0].id).await.unwrap();
    check("retry").await;

    // Purge deletes finished rows.
    let purged = s
        .purge(TaskState::Succeeded, now_plus(1_000))
        .await
        .unwrap();
    assert_eq!(purged, 1);
    check("purge").await;

    // Everything drains: only terminal counts remain, and they add up.
    while let Ok(c) = s.claim("w", &QueueSelector::All, 10, LONG).await {
        if c.is_empty() {
            break;
        }
        let batch: Vec<Completion> = c.iter().map(|t| completion(t, succeed())).collect();
        s.complete("w", &batch).await.unwrap();
    }
    check("drain").await;
    let total: u64 = stats(&s).await.iter().map(|r| r.2).sum();
    assert_eq!(total, 5, "six enqueued, one purged");
}

/// A listing carries no input, result or logs, only bounded previews.
async fn listings_are_summaries(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    let big = format!("\"{}\"", "x".repeat(100_000));
    let id = enqueue(&s, task(&m).queue("big").max_attempts(1)).await;
    let c = claim_one(&s, "w", LONG).await;
    assert!(
        complete1(
            &s,
            "w",
            &c,
            Transition::Succeed {
                result: big.clone()
            }
        )
        .await
    );
    let t = s.get_task(id).await.unwrap();
    assert_eq!(
        t.result.as_deref(),
        Some(big.as_str()),
        "the task keeps it whole"
    );

    let page = s.list_tasks(&TaskFilter::default()).await.unwrap();
    assert_eq!(page.len(), 1);
    let summary = &page[0];
    assert_eq!((summary.id, summary.state), (id, TaskState::Succeeded));
    let preview = summary.result_preview.as_deref().unwrap();
    assert_eq!(
        preview.chars().count(),
        PREVIEW_CHARS + 1,
        "cut, with a mark"
    );
    assert!(preview.starts_with("\"xxx") && preview.ends_with('…'));
    assert!(summary.error_preview.is_none());
    let json = serde_json::to_string(&page).unwrap();
    assert!(
        json.len() < 2_000,
        "a summary is small: {} bytes",
        json.len()
    );
    assert!(!json.contains("\"input\""));

    // A short error is shown whole.
    let id = enqueue(&s, task(&m).queue("big").max_attempts(1)).await;
    let c = claim_one(&s, "w", LONG).await;
    let mut fail = completion(&c, Transition::Fail);
    fail.report.error_message = Some("boom".into());
    s.complete("w", &[fail]).await.unwrap();
    let page = s.list_tasks(&TaskFilter::default()).await.unwrap();
    assert_eq!(page[0].id, id);
    assert_eq!(page[0].error_preview.as_deref(), Some("boom"));
}

async fn workers_register_heartbeat_stale(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    let info = |id: &str| WorkerInfo {
        id: id.into(),
        hostname: "node-1".into(),
        pid: 4242,
        mode: "local".into(),
        queues: QueueSelector::parse("a,b"),
        concurrency: 8,
    };
    s.register_worker(&info("w1")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    s.register_worker(&info("w2")).await.unwrap();
    enqueue(&s, task(&m).queue("a")).await;
    let claimed = s
        .claim("w1", &QueueSelector::parse("a,b"), 5, LONG)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);

    let workers = s.list_workers().await.unwrap();
    assert_eq!(
        workers.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
        ["w2", "w1"],
        "newest first"
    );
    let w1 = &workers[1];
    assert_eq!(
        (w1.hostname.as_str(), w1.pid, w1.mode.as_str()),
        ("node-1", 4242, "local")
    );
    assert_eq!(
        w1.queues,
        QueueSelector::Named(vec!["a".into(), "b".into()])
    );
    assert_eq!((w1.concurrency, w1.running_tasks), (8, 1), "leased counts");
    assert!(w1.stopped_at.is_none());
    // Running counts the same; a finished task no longer.
    assert!(start1(&s, "w1", &claimed[0]).await);
    let running = |ws: Vec<WorkerRecord>| ws.iter().find(|w| w.id == "w1").unwrap().running_tasks;
    assert_eq!(running(s.list_workers().await.unwrap()), 1);
    assert!(complete1(&s, "w1", &claimed[0], succeed()).await);
    assert_eq!(running(s.list_workers().await.unwrap()), 0);

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.heartbeat("w1", &[], LONG).await.unwrap(),
        HeartbeatReply::default()
    );
    assert_eq!(
        s.mark_stale_workers(Duration::from_millis(200))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.mark_stale_workers(Duration::from_millis(200))
            .await
            .unwrap(),
        0
    );
    let workers = s.list_workers().await.unwrap();
    let get = |id: &str| workers.iter().find(|w| w.id == id).unwrap().clone();
    assert!(get("w2").stopped_at.is_some());
    assert!(get("w1").stopped_at.is_none());

    // A stale worker that comes back is alive again.
    s.heartbeat("w2", &[], LONG).await.unwrap();
    s.stop_worker("w1").await.unwrap();
    s.stop_worker("w1").await.unwrap();
    let workers = s.list_workers().await.unwrap();
    let get = |id: &str| workers.iter().find(|w| w.id == id).unwrap().clone();
    assert!(get("w1").stopped_at.is_some());
    assert!(get("w2").stopped_at.is_none());
    assert!(matches!(
        s.stop_worker("nope").await,
        Err(StoreError::NotFound { .. })
    ));
    // Re-registering resets the row.
    s.register_worker(&WorkerInfo {
        queues: QueueSelector::All,
        ..info("w1")
    })
    .await
    .unwrap();
    let w1 = s
        .list_workers()
        .await
        .unwrap()
        .into_iter()
        .find(|w| w.id == "w1")
        .unwrap();
    assert!(w1.stopped_at.is_none());
    assert_eq!(w1.queues, QueueSelector::All);
}

async fn listen_receives_events(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    let mut listener = s.listen().await.unwrap();
    // Channels are database-wide on PostgreSQL: use names no other test uses.
    let queue = format!("listen-{}", Uuid::new_v4().simple());
    enqueue(&s, task(&m).queue(queue.clone())).await;
    let event = recv_until(
        &mut listener,
        |e| matches!(e, StoreEvent::TaskAvailable { queue: q } if *q == queue),
    )
    .await;
    assert_eq!(
        event,
        StoreEvent::TaskAvailable {
            queue: queue.clone()
        }
    );

    // One event per queue for a batch.
    let q2 = format!("{queue}-2");
    s.enqueue_batch(&[
        task(&m).queue(queue.clone()),
        task(&m).queue(q2.clone()),
        task(&m).queue(queue.clone()),
    ])
    .await
    .unwrap();
    let mut queues = HashSet::new();
    while queues.len() < 2 {
        let event = recv_until(
            &mut listener,
            |e| matches!(e, StoreEvent::TaskAvailable { queue: q } if q.starts_with(&queue)),
        )
        .await;
        if let StoreEvent::TaskAvailable { queue: q } = event {
            queues.insert(q);
        }
    }
    assert_eq!(queues, HashSet::from([queue.clone(), q2.clone()]));

    let t = s
        .claim("w", &QueueSelector::parse(&queue), 1, LONG)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        s.request_cancel(t.id).await.unwrap(),
        CancelOutcome::Requested
    );
    let event = recv_until(
        &mut listener,
        |e| matches!(e, StoreEvent::CancelRequested { id } if *id == t.id),
    )
    .await;
    assert_eq!(event, StoreEvent::CancelRequested { id: t.id });

    assert!(complete1(&s, "w", &t, Transition::Cancel).await);

    // A released task is available again at once.
    let t = s
        .claim("w", &QueueSelector::parse(&queue), 1, LONG)
        .await
        .unwrap()
        .remove(0);
    assert!(complete1(&s, "w", &t, Transition::Release).await);
    recv_until(
        &mut listener,
        |e| matches!(e, StoreEvent::TaskAvailable { queue: q } if *q == queue),
    )
    .await;
}

/// Events are hints; when some may be lost the listener says so.
async fn listener_reports_missed_events(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    let mut listener = s.listen().await.unwrap();
    match h.backend {
        Backend::Postgres => {
            // Kill the listener's connection; it must reconnect by itself.
            h.pg_admin(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = '{}' AND query ILIKE 'LISTEN%'",
                h.pg_application_name()
            ))
            .await;
            recv_until(&mut listener, |e| *e == StoreEvent::Missed).await;
        }
        Backend::Sqlite => {
            // Fall more than the channel capacity behind.
            let tasks: Vec<NewTask> = (0..1100)
                .map(|i| task(&m).queue(format!("lag-{i}")))
                .collect();
            s.enqueue_batch(&tasks).await.unwrap();
            assert_eq!(listener.recv().await.unwrap(), StoreEvent::Missed);
        }
    }
    // Still working afterwards.
    let queue = format!("after-{}", Uuid::new_v4().simple());
    enqueue(&s, task(&m).queue(queue.clone())).await;
    recv_until(
        &mut listener,
        |e| matches!(e, StoreEvent::TaskAvailable { queue: q } if *q == queue),
    )
    .await;
}

/// `leased` → `running`: only the lease holder in its epoch can mark a run
/// started; the start time goes on the task and on the attempt row.
async fn mark_started_is_fenced_and_records_start(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    for _ in 0..3 {
        enqueue(&s, task(&m)).await;
    }
    let claimed = claim_all(&s, "w1").await;
    let (t0, t1, t2) = (&claimed[0], &claimed[1], &claimed[2]);
    let claim_time = s.list_attempts(t0.id).await.unwrap()[0].started_at;
    assert!(s.get_task(t0.id).await.unwrap().started_at.is_none());
    assert!(s.mark_started("w1", &[]).await.unwrap().is_empty());

    // Fenced: another worker, an earlier or a later epoch, an unknown task.
    let at0 = micros(now_plus(-250));
    assert!(!start_at(&s, "w2", t0.lease(), at0).await);
    for epoch in [0, 2] {
        let lease = Lease {
            task_id: t0.id,
            epoch,
        };
        assert!(!start_at(&s, "w1", lease, at0).await);
    }
    let unknown = Lease {
        task_id: Uuid::now_v7(),
        epoch: 1,
    };
    assert!(!start_at(&s, "w1", unknown, at0).await);
    let r = s.get_task(t0.id).await.unwrap();
    assert_eq!(r.state, TaskState::Leased);
    assert!(r.started_at.is_none());
    let a = &s.list_attempts(t0.id).await.unwrap()[0];
    assert_eq!(a.started_at, claim_time);

    // A batch mixing applied and fenced starts; a task twice is a caller bug.
    let at1 = micros(now_plus(-100));
    let applied = s
        .mark_started(
            "w1",
            &[
                Started {
                    lease: t0.lease(),
                    at: at0,
                },
                Started {
                    lease: Lease {
                        task_id: t1.id,
                        epoch: 7,
                    },
                    at: at1,
                },
            ],
        )
        .await
        .unwrap();
    assert_eq!(applied, vec![true, false]);
    let dup = Started {
        lease: t2.lease(),
        at: at1,
    };
    assert!(matches!(
        s.mark_started("w1", &[dup, dup]).await,
        Err(StoreError::InvalidArgument(_))
    ));
    assert_eq!(state(&s, t2.id).await, TaskState::Leased);

    let r = s.get_task(t0.id).await.unwrap();
    assert_eq!(
        (
            r.state,
            r.started_at,
            r.lease_owner.as_deref(),
            r.lease_epoch
        ),
        (TaskState::Running, Some(at0), Some("w1"), 1)
    );
    let a = s.list_attempts(t0.id).await.unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!((a[0].started_at, a[0].lease_epoch), (at0, Some(1)));
    assert!(a[0].finished_at.is_none());
    // Only from `leased`: a second start changes nothing.
    assert!(!start_at(&s, "w1", t0.lease(), now_plus(0)).await);
    assert_eq!(s.get_task(t0.id).await.unwrap().started_at, Some(at0));
    // Neither t1 nor t2 moved.
    for t in [t1, t2] {
        let r = s.get_task(t.id).await.unwrap();
        assert_eq!((r.state, r.started_at), (TaskState::Leased, None));
    }

    // A completion of a still-leased task that carries its start records it
    // (the start and the end are written in one batch).
    let mut c = completion(t1, succeed());
    c.started_at = Some(at1);
    assert_eq!(s.complete("w1", &[c]).await.unwrap(), [true]);
    let r = s.get_task(t1.id).await.unwrap();
    assert_eq!((r.state, r.started_at), (TaskState::Succeeded, Some(at1)));
    let a = &s.list_attempts(t1.id).await.unwrap()[0];
    assert_eq!((a.started_at, a.outcome_name()), (at1, Some("success")));
    // A finished task cannot be started.
    assert!(!start_at(&s, "w1", t1.lease(), at1).await);

    // A run released before it started keeps the claim time on its attempt row.
    let claim_time2 = s.list_attempts(t2.id).await.unwrap()[0].started_at;
    assert!(complete1(&s, "w1", t2, Transition::Release).await);
    let a = &s.list_attempts(t2.id).await.unwrap()[0];
    assert_eq!(
        (a.started_at, a.outcome_name()),
        (claim_time2, Some("shutdown"))
    );
    // The next run is started in its own epoch only.
    let again = claim_one(&s, "w1", LONG).await;
    assert_eq!((again.id, again.epoch), (t2.id, 2));
    assert!(!start_at(&s, "w1", t2.lease(), at1).await);
    assert!(start1(&s, "w1", &again).await);
    assert_eq!(state(&s, t2.id).await, TaskState::Running);
    let a = s.list_attempts(t2.id).await.unwrap();
    assert_eq!(a[0].started_at, claim_time2, "the closed run is untouched");
}

/// "Recorded unless a start write got there first": a completion carrying a
/// start time for a task already marked running keeps the first start, on
/// the task and on the attempt row alike.
async fn completion_start_does_not_override_mark_started(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    enqueue(&s, task(&m)).await;
    let t = claim_one(&s, "w1", LONG).await;
    let at = micros(now_plus(-500));
    assert!(start_at(&s, "w1", t.lease(), at).await);
    let mut c = completion(&t, succeed());
    c.started_at = Some(micros(now_plus(0)));
    assert_eq!(s.complete("w1", &[c]).await.unwrap(), [true]);
    assert_eq!(s.get_task(t.id).await.unwrap().started_at, Some(at));
    let a = &s.list_attempts(t.id).await.unwrap()[0];
    assert_eq!(a.started_at, at, "attempt row started_at");
}

/// The bug epochs fix: the same worker claims a task, releases it and claims
/// it again; a late write about the first run (same worker, same task) must
/// not touch the second.
async fn stale_epoch_of_same_worker_is_fenced(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    let id = enqueue(&s, task(&m)).await;
    let first = claim_one(&s, "w1", LONG).await;
    assert!(complete1(&s, "w1", &first, Transition::Release).await);
    let second = claim_one(&s, "w1", LONG).await;
    assert_eq!(
        (
            second.id,
            second.attempt,
            second.epoch,
            second.free_runs,
            second.counted_attempt()
        ),
        (id, 2, 2, 1, 1)
    );

    // Every write naming epoch 1 is fenced, whatever attempt number it names.
    assert!(!complete1(&s, "w1", &first, succeed()).await);
    assert!(!complete1(&s, "w1", &first, Transition::Fail).await);
    assert!(!complete1(&s, "w1", &first, Transition::Release).await);
    let mut mislabelled = completion(&first, succeed());
    mislabelled.attempt = second.attempt;
    assert_eq!(s.complete("w1", &[mislabelled]).await.unwrap(), [false]);
    assert!(!start1(&s, "w1", &first).await);
    assert!(
        !s.set_progress("w1", first.lease(), 99, "stale")
            .await
            .unwrap()
    );
    assert!(
        !s.set_ray_submission("w1", first.lease(), "stale-job")
            .await
            .unwrap()
    );
    assert!(
        !s.expire(id, first.epoch, Transition::Fail).await.unwrap(),
        "not expired, and not this epoch"
    );
    assert_eq!(
        s.heartbeat("w1", &[first.lease()], LONG).await.unwrap(),
        HeartbeatReply {
            lost: vec![id],
            cancel_requested: vec![]
        }
    );

    let r = s.get_task(id).await.unwrap();
    assert_eq!(
        (r.state, r.attempt, r.lease_epoch, r.free_runs),
        (TaskState::Leased, 2, 2, 1)
    );
    assert_eq!(r.lease_owner.as_deref(), Some("w1"));
    assert!(r.result.is_none() && r.finished_at.is_none());
    assert!(r.progress_percent.is_none() && r.ray_submission_id.is_none());
    assert!(r.started_at.is_none());
    let a = s.list_attempts(id).await.unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(
        (a[1].lease_epoch, a[1].outcome_name(), a[1].finished_at),
        (Some(2), None, None),
        "the live run's row is untouched"
    );

    // The current epoch works.
    assert!(start1(&s, "w1", &second).await);
    assert!(
        s.set_progress("w1", second.lease(), 40, "fine")
            .await
            .unwrap()
    );
    assert!(complete1(&s, "w1", &second, succeed()).await);
    let r = s.get_task(id).await.unwrap();
    assert_eq!(r.state, TaskState::Succeeded);
    assert_eq!(r.result.as_deref(), Some(r#"{"ok":true}"#));
    let a = s.list_attempts(id).await.unwrap();
    assert_eq!(
        a.iter()
            .map(|a| (a.attempt, a.lease_epoch, a.outcome_name()))
            .collect::<Vec<_>>(),
        vec![
            (1, Some(1), Some("shutdown")),
            (2, Some(2), Some("success"))
        ]
    );
}

/// A heartbeat extends exactly the leases it names, and says which of them
/// it could not extend.
async fn heartbeat_extends_only_named_leases(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    for w in ["w1", "w2"] {
        s.register_worker(&WorkerInfo {
            id: w.into(),
            hostname: "host".into(),
            pid: 42,
            mode: "local".into(),
            queues: QueueSelector::All,
            concurrency: 4,
        })
        .await
        .unwrap();
    }
    for _ in 0..4 {
        enqueue(&s, task(&m)).await;
    }
    let short = Duration::from_millis(400);
    let mine = s.claim("w1", &QueueSelector::All, 3, short).await.unwrap();
    let theirs = s
        .claim("w2", &QueueSelector::All, 1, short)
        .await
        .unwrap()
        .remove(0);
    let (a, b, c) = (&mine[0], &mine[1], &mine[2]);
    assert!(start1(&s, "w1", a).await);
    let expiry = |id: Uuid| {
        let s = s.clone();
        async move { s.get_task(id).await.unwrap().lease_expires_at.unwrap() }
    };
    let c_expiry = expiry(c.id).await;
    assert_eq!(
        c_expiry.timestamp_micros(),
        c.lease_expires_at.timestamp_micros()
    );

    // a (running) and b (leased) named; c (mine, live) not.
    assert_eq!(
        s.heartbeat("w1", &[a.lease(), b.lease()], LONG)
            .await
            .unwrap(),
        HeartbeatReply::default()
    );
    for t in [a, b] {
        assert!(expiry(t.id).await > Utc::now() + TimeDelta::seconds(50));
    }
    assert_eq!(
        expiry(c.id).await,
        c_expiry,
        "an unnamed lease is not extended"
    );

    // Lost: a wrong epoch of my own task, another worker's task, an unknown
    // task. A pending cancel is reported for a named, extended lease.
    assert_eq!(
        s.request_cancel(b.id).await.unwrap(),
        CancelOutcome::Requested
    );
    let unknown = Uuid::now_v7();
    let reply = s
        .heartbeat(
            "w1",
            &[
                a.lease(),
                Lease {
                    task_id: c.id,
                    epoch: c.epoch + 1,
                },
                b.lease(),
                theirs.lease(),
                Lease {
                    task_id: unknown,
                    epoch: 1,
                },
            ],
            LONG,
        )
        .await
        .unwrap();
    assert_eq!(
        reply,
        HeartbeatReply {
            lost: vec![c.id, theirs.id, unknown],
            cancel_requested: vec![b.id]
        }
    );
    assert_eq!(
        expiry(c.id).await,
        c_expiry,
        "a wrong epoch extends nothing"
    );
    assert_eq!(
        expiry(theirs.id).await.timestamp_micros(),
        theirs.lease_expires_at.timestamp_micros(),
        "another worker's lease is not extended"
    );

    // The unnamed and the foreign lease run out; the named ones do not.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut expired: Vec<Uuid> = s
        .expired_leases(10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    expired.sort();
    let mut want = vec![c.id, theirs.id];
    want.sort();
    assert_eq!(expired, want);

    // Reaped: lost, and not extended back to life.
    assert!(
        s.expire(
            c.id,
            c.epoch,
            Transition::Retry {
                run_after: now_plus(60_000)
            }
        )
        .await
        .unwrap()
    );
    assert_eq!(
        s.heartbeat("w1", &[c.lease(), a.lease()], LONG)
            .await
            .unwrap(),
        HeartbeatReply {
            lost: vec![c.id],
            cancel_requested: vec![]
        }
    );
    let r = s.get_task(c.id).await.unwrap();
    assert_eq!(r.state, TaskState::Queued);
    assert!(r.lease_owner.is_none() && r.lease_expires_at.is_none());

    // An empty list refreshes only the worker row.
    let a_expiry = expiry(a.id).await;
    let before = s.list_workers().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        s.heartbeat("w1", &[], LONG).await.unwrap(),
        HeartbeatReply::default()
    );
    let after = s.list_workers().await.unwrap();
    let hb =
        |ws: &[WorkerRecord], id: &str| ws.iter().find(|w| w.id == id).unwrap().last_heartbeat_at;
    assert!(hb(&after, "w1") > hb(&before, "w1"));
    assert_eq!(expiry(a.id).await, a_expiry);

    // A task named twice is a caller bug.
    assert!(matches!(
        s.heartbeat("w1", &[a.lease(), a.lease()], LONG).await,
        Err(StoreError::InvalidArgument(_))
    ));
}

/// Guest text with NUL bytes (refused by PostgreSQL's `text`) or beyond the
/// caps is stored, cleaned and bounded, and does not fail its batch.
async fn guest_text_with_nul_is_stored(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    for _ in 0..3 {
        enqueue(&s, task(&m)).await;
    }
    let claimed = claim_all(&s, "w").await;
    let (t0, t1, t2) = (&claimed[0], &claimed[1], &claimed[2]);
    const SYMBOL: &str = "\u{2400}";

    // Progress messages.
    assert!(
        s.set_progress("w", t0.lease(), 50, "half\0way")
            .await
            .unwrap()
    );
    let r = s.get_task(t0.id).await.unwrap();
    assert_eq!(r.progress_percent, Some(50));
    assert_eq!(
        r.progress_message.as_deref(),
        Some(format!("half{SYMBOL}way").as_str())
    );
    let long = format!("\0{}", "p".repeat(MAX_STORED_PROGRESS_MESSAGE + 100));
    assert!(s.set_progress("w", t0.lease(), 60, &long).await.unwrap());
    let r = s.get_task(t0.id).await.unwrap();
    let stored = r.progress_message.unwrap();
    assert!(
        stored.len() <= MAX_STORED_PROGRESS_MESSAGE,
        "{}",
        stored.len()
    );
    assert!(stored.starts_with(&format!("{SYMBOL}ppp")) && !stored.contains('\0'));

    // Completions, in one batch with a clean one.
    let mut fail = completion(t0, Transition::Fail);
    fail.report.error_message = Some("bad\0thing".into());
    fail.report.logs = Some("line 1\0\nline 2\n".into());
    let mut retry = completion(
        t1,
        Transition::Retry {
            run_after: now_plus(60_000),
        },
    );
    retry.report.error_message = Some(format!("\0{}", "e".repeat(MAX_STORED_ERROR * 2)));
    retry.report.logs = Some(format!("{}\0", "l".repeat(MAX_STORED_LOGS * 2)));
    let batch = vec![fail, retry, completion(t2, succeed())];
    assert_eq!(s.complete("w", &batch).await.unwrap(), vec![true; 3]);

    let r = s.get_task(t0.id).await.unwrap();
    assert_eq!(r.state, TaskState::Failed);
    let message = format!("bad{SYMBOL}thing");
    let logs = format!("line 1{SYMBOL}\nline 2\n");
    assert_eq!(r.error_message.as_deref(), Some(message.as_str()));
    assert_eq!(r.error_logs.as_deref(), Some(logs.as_str()));
    let a = &s.list_attempts(t0.id).await.unwrap()[0];
    assert_eq!(a.error_message.as_deref(), Some(message.as_str()));
    assert_eq!(a.logs.as_deref(), Some(logs.as_str()));

    let r = s.get_task(t1.id).await.unwrap();
    assert_eq!(r.state, TaskState::Queued);
    let a = &s.list_attempts(t1.id).await.unwrap()[0];
    for (what, text, cap) in [
        ("task error", r.error_message.unwrap(), MAX_STORED_ERROR),
        ("task logs", r.error_logs.unwrap(), MAX_STORED_LOGS),
        (
            "attempt error",
            a.error_message.clone().unwrap(),
            MAX_STORED_ERROR,
        ),
        ("attempt logs", a.logs.clone().unwrap(), MAX_STORED_LOGS),
    ] {
        assert!(text.len() <= cap, "{what}: {} > {cap}", text.len());
        assert!(text.len() > cap / 2, "{what}: cut too much");
        assert!(!text.contains('\0'), "{what}");
    }
    assert_eq!(state(&s, t2.id).await, TaskState::Succeeded);
}

/// Purge works in batches of PURGE_BATCH rows; all of them go, nothing else.
async fn purge_deletes_in_batches(h: Harness) {
    let total = PURGE_BATCH as usize * 2 + 7;
    let s = h.connect_with(8).await;
    s.migrate().await.unwrap();
    let m = module(&s).await;
    let tasks: Vec<NewTask> = (0..total).map(|_| task(&m)).collect();
    for chunk in tasks.chunks(5_000) {
        s.enqueue_batch(chunk).await.unwrap();
    }
    let mut done = 0;
    loop {
        let claimed = s
            .claim("w", &QueueSelector::All, 2_500, LONG)
            .await
            .unwrap();
        if claimed.is_empty() {
            break;
        }
        let batch: Vec<Completion> = claimed.iter().map(|t| completion(t, succeed())).collect();
        assert!(s.complete("w", &batch).await.unwrap().iter().all(|a| *a));
        done += claimed.len();
    }
    assert_eq!(done, total);

    // Live and unfinished tasks, and another terminal state, stay.
    let queued = enqueue(&s, task(&m)).await;
    let leased = enqueue(&s, task(&m)).await;
    let failed = enqueue(&s, task(&m)).await;
    let c = claim_all(&s, "w").await;
    assert_eq!(c.len(), 3);
    assert!(complete1(&s, "w", &c[2], Transition::Fail).await);
    assert!(complete1(&s, "w", &c[0], Transition::Release).await);
    assert_eq!(c[1].id, leased);
    let late = enqueue(&s, task(&m)).await;
    let cutoff = now_plus(1_000);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let l = claim_all(&s, "w").await;
    assert_eq!(
        l.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![queued, late]
    );
    assert!(complete1(&s, "w", &l[1], succeed()).await); // finished after the cutoff
    assert!(complete1(&s, "w", &l[0], Transition::Release).await);

    assert_eq!(
        s.purge(TaskState::Succeeded, cutoff).await.unwrap(),
        total as u64
    );
    assert!(
        s.list_tasks(&TaskFilter {
            state: Some(TaskState::Succeeded),
            limit: MAX_LIST_LIMIT,
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|t| t.id)
        .eq([late])
    );
    for t in [&tasks[0], &tasks[PURGE_BATCH as usize], &tasks[total - 1]] {
        assert!(matches!(
            s.get_task(t.id).await,
            Err(StoreError::NotFound { .. })
        ));
        assert!(s.list_attempts(t.id).await.is_err(), "attempts go too");
    }
    assert_eq!(state(&s, queued).await, TaskState::Queued);
    assert_eq!(state(&s, leased).await, TaskState::Leased);
    assert_eq!(state(&s, failed).await, TaskState::Failed);
    assert_eq!(s.list_attempts(failed).await.unwrap().len(), 1);
    assert_eq!(s.purge(TaskState::Succeeded, cutoff).await.unwrap(), 0);
    assert!(s.module_bytes(&m.sha256).await.is_ok());
}

/// A leased task holds its unique key like a queued or running one.
async fn unique_key_held_by_leased_tasks(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    let first = enqueue(&s, task(&m).unique_key("k")).await;
    let t = claim_one(&s, "w", LONG).await;
    assert_eq!((t.id, state(&s, first).await), (first, TaskState::Leased));

    let dup = s.enqueue(task(&m).unique_key("k")).await.unwrap();
    assert_eq!((dup.id, dup.deduplicated), (first, true));
    let batch = vec![task(&m).unique_key("k"), task(&m).unique_key("other")];
    let out = s.enqueue_batch(&batch).await.unwrap();
    assert_eq!((out[0].id, out[0].deduplicated), (first, true));
    assert_eq!((out[1].id, out[1].deduplicated), (batch[1].id, false));
    assert!(s.get_task(batch[0].id).await.is_err());

    // A cancelled twin cannot be retried while the leased one holds the key.
    let twin = enqueue(&s, task(&m).unique_key("twin")).await;
    assert_eq!(
        s.request_cancel(twin).await.unwrap(),
        CancelOutcome::Cancelled
    );
    let twin2 = enqueue(&s, task(&m).unique_key("twin")).await;
    let claimed = claim_all(&s, "w").await;
    assert!(claimed.iter().any(|c| c.id == twin2));
    assert_eq!(state(&s, twin2).await, TaskState::Leased);
    assert!(matches!(s.retry(twin).await, Err(StoreError::Conflict(_))));

    // Released back to queued: still held; finished: free.
    assert!(complete1(&s, "w", &t, Transition::Release).await);
    assert!(
        s.enqueue(task(&m).unique_key("k"))
            .await
            .unwrap()
            .deduplicated
    );
    let t = claim_all(&s, "w").await;
    let t = t.iter().find(|c| c.id == first).unwrap();
    assert!(complete1(&s, "w", t, succeed()).await);
    let next = s.enqueue(task(&m).unique_key("k")).await.unwrap();
    assert!(!next.deduplicated && next.id != first);
}

/// Every run has its own attempt row, named by (task, lease_epoch), and every
/// run that ended, however it ended, has its row closed.
async fn attempt_rows_one_per_epoch_and_closed(h: Harness) {
    let s = h.store().await;
    let m = module(&s).await;
    let id = enqueue(&s, task(&m).max_attempts(5)).await;
    let check_rows = |runs: usize| {
        let s = s.clone();
        async move {
            let a = s.list_attempts(id).await.unwrap();
            assert_eq!(a.len(), runs);
            let epochs: HashSet<Option<u64>> = a.iter().map(|a| a.lease_epoch).collect();
            assert_eq!(epochs.len(), runs, "one row per epoch: {a:?}");
            for (i, row) in a.iter().enumerate() {
                assert_eq!(
                    (row.attempt as usize, row.lease_epoch),
                    (i + 1, Some(i as u64 + 1))
                );
            }
            a
        }
    };

    // Run 1: released.
    let t = claim_one(&s, "w1", LONG).await;
    assert!(complete1(&s, "w1", &t, Transition::Release).await);
    // Run 2: deferred.
    let t = claim_one(&s, "w1", LONG).await;
    assert!(start1(&s, "w1", &t).await);
    assert!(
        complete1(
            &s,
            "w1",
            &t,
            Transition::Defer {
                run_after: now_plus(-1)
            }
        )
        .await
    );
    // Run 3: the lease runs out, the reaper requeues it.
    let t = claim_one(&s, "w2", Duration::from_millis(150)).await;
    assert_eq!(check_rows(3).await[2].finished_at, None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let expired = s.expired_leases(10).await.unwrap();
    assert_eq!(expired.len(), 1);
    let e = &expired[0];
    assert_eq!(
        (e.id, e.attempt, e.epoch, e.free_runs, e.counted_attempt()),
        (id, 3, 3, 2, 1)
    );
    assert!(
        s.expire(
            id,
            e.epoch,
            Transition::Retry {
                run_after: now_plus(-1)
            }
        )
        .await
        .unwrap()
    );
    // A late completion of the reaped run changes nothing.
    assert!(!complete1(&s, "w2", &t, succeed()).await);
    // Run 4: fails and retries.
    let t = claim_one(&s, "w1", LONG).await;
    assert!(start1(&s, "w1", &t).await);
    assert!(
        complete1(
            &s,
            "w1",
            &t,
            Transition::Retry {
                run_after: now_plus(-1)
            }
        )
        .await
    );
    // Run 5: succeeds.
    let t = claim_one(&s, "w1", LONG).await;
    assert_eq!(
        (t.attempt, t.epoch, t.free_runs, t.counted_attempt()),
        (5, 5, 2, 3)
    );
    assert!(complete1(&s, "w1", &t, succeed()).await);

    let a = check_rows(5).await;
    assert_eq!(
        a.iter()
            .map(|a| (a.worker_id.as_str(), a.outcome_name()))
            .collect::<Vec<_>>(),
        vec![
            ("w1", Some("shutdown")),
            ("w1", Some("host-error")),
            ("w2", Some("lease-expired")),
            ("w1", Some("task-error")),
            ("w1", Some("success")),
        ]
    );
    for row in &a {
        let finished = row.finished_at.expect("every ended run is closed");
        assert!(finished >= row.started_at, "{row:?}");
        assert!(row.duration_ms.is_some(), "{row:?}");
    }
    let r = s.get_task(id).await.unwrap();
    assert_eq!(
        (
            r.state,
            r.attempt,
            r.lease_epoch,
            r.free_runs,
            r.counted_attempts()
        ),
        (TaskState::Succeeded, 5, 5, 2, 3)
    );
}

/// Pre-load 20,000 tasks, then drain them with claim/complete batches of 100
/// from 2 workers. Prints tasks/s.
async fn drain_throughput(h: Harness) {
    const TASKS: usize = 20_000;
    const BATCH: u32 = 100;
    const WORKERS: usize = 2;
    let s = h.connect_with(8).await;
    s.migrate().await.unwrap();
    let m = module(&s).await;
    let tasks: Vec<NewTask> = (0..TASKS).map(|_| task(&m)).collect();
    let start = std::time::Instant::now();
    for chunk in tasks.chunks(5_000) {
        s.enqueue_batch(chunk).await.unwrap();
    }
    let enqueue_time = start.elapsed();

    let start = std::time::Instant::now();
    let mut handles = Vec::new();
    for w in 0..WORKERS {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            let worker = format!("bench-{w}");
            let (mut n, mut in_claim, mut in_complete) = (0, Duration::ZERO, Duration::ZERO);
            loop {
                let t0 = std::time::Instant::now();
                let claimed = s
                    .claim(&worker, &QueueSelector::parse("default"), BATCH, LONG)
                    .await
                    .unwrap();
                in_claim += t0.elapsed();
                if claimed.is_empty() {
                    return (n, in_claim, in_complete);
                }
                let done: Vec<Completion> =
                    claimed.iter().map(|t| completion(t, succeed())).collect();
                let t0 = std::time::Instant::now();
                s.complete(&worker, &done).await.unwrap();
                in_complete += t0.elapsed();
                n += claimed.len();
            }
        }));
    }
    let (mut drained, mut in_claim, mut in_complete) = (0, Duration::ZERO, Duration::ZERO);
    for h in handles {
        let (n, claim, complete) = h.await.unwrap();
        drained += n;
        in_claim += claim;
        in_complete += complete;
    }
    let drain_time = start.elapsed();
    assert_eq!(drained, TASKS);
    println!(
        "[{:?}] enqueue {TASKS}: {:.2} s ({:.0} tasks/s); drain with {WORKERS} workers, batch {BATCH}: {:.2} s ({:.0} tasks/s)",
        h.backend,
        enqueue_time.as_secs_f64(),
        TASKS as f64 / enqueue_time.as_secs_f64(),
        drain_time.as_secs_f64(),
        TASKS as f64 / drain_time.as_secs_f64()
    );
    println!(
        "[{:?}] time inside claim {:.2} s, inside complete {:.2} s (summed over workers)",
        h.backend,
        in_claim.as_secs_f64(),
        in_complete.as_secs_f64()
    );
}

// ---- backend-independent checks -------------------------------------------

#[test]
fn task_state_strings_roundtrip() {
    for s in TaskState::ALL {
        assert_eq!(s.as_str().parse::<TaskState>().unwrap(), s);
        assert_eq!(s.to_string(), s.as_str());
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            format!("\"{}\"", s.as_str())
        );
    }
    let err = "done".parse::<TaskState>().unwrap_err();
    assert!(err.to_string().contains("\"done\""));
    assert!(TaskState::Failed.is_terminal() && !TaskState::Running.is_terminal());
    let live: Vec<TaskState> = TaskState::ALL.into_iter().filter(|s| s.is_live()).collect();
    assert_eq!(live, [TaskState::Leased, TaskState::Running]);
    let unfinished: Vec<TaskState> = TaskState::ALL
        .into_iter()
        .filter(|s| s.is_unfinished())
        .collect();
    assert_eq!(
        unfinished,
        [
            TaskState::Queued,
            TaskState::Leased,
            TaskState::Running,
            TaskState::Waiting
        ]
    );
    assert!(
        TaskState::ALL.windows(2).all(|w| w[0] < w[1]),
        "lifecycle order"
    );
}

#[test]
fn queue_selector_parse_and_display() {
    assert_eq!(QueueSelector::parse("*"), QueueSelector::All);
    let q = QueueSelector::parse(" a, b ,,c ");
    assert_eq!(
        q,
        QueueSelector::Named(vec!["a".into(), "b".into(), "c".into()])
    );
    assert_eq!(q.to_string(), "a,b,c");
    assert!(q.matches("b") && !q.matches("d") && QueueSelector::All.matches("x"));
}

#[tokio::test]
async fn connect_rejects_unknown_url_without_echoing_it() {
    let err = AnyStore::connect("mysql://root:secret@db/x")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument(_)));
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_in_memory_store_works() {
    let s = AnyStore::connect("sqlite::memory:").await.unwrap();
    s.migrate().await.unwrap();
    let m = module(&s).await;
    let id = enqueue(&s, task(&m)).await;
    let t = claim_one(&s, "w", LONG).await;
    assert_eq!(t.id, id);
    assert!(complete1(&s, "w", &t, succeed()).await);
    assert_eq!(state(&s, id).await, TaskState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file_uses_wal_and_full_sync() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/x.db", dir.path().display());
    let AnyStore::Sqlite(s) = AnyStore::connect(&url).await.unwrap() else {
        panic!("expected SQLite")
    };
    let mut conn = s.pool().acquire().await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(sync, 2, "synchronous=FULL");
    // Well under the default lease (30 s), so that a heartbeat stuck behind
    // another writer fails and is retried long before its lease runs out.
    assert!((1_000..=10_000).contains(&busy), "busy_timeout {busy} ms");
    assert_eq!(fk, 1);
}

#[test]
fn errors_are_one_line() {
    let id = Uuid::nil();
    let errors = [
        StoreError::NotFound {
            what: "task x".into(),
        },
        StoreError::IllegalTransition {
            id,
            from: TaskState::Succeeded,
            action: "retry",
        },
        StoreError::ModuleInUse {
            module: "m@1".into(),
            tasks: 3,
        },
        StoreError::InvalidArgument("x".into()),
        StoreError::Conflict("y".into()),
    ];
    for e in errors {
        let msg = e.to_string();
        assert!(!msg.contains('\n') && !msg.is_empty(), "{msg}");
    }
}

// ---- grants and secrets ------------------------------------------------------

fn grant_set<'a>(
    module: &'a str,
    queue: Option<&'a str>,
    kind: GrantKind,
    values: &'a [String],
) -> GrantSet<'a> {
    GrantSet {
        module,
        queue,
        kind,
        values,
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

async fn grants_are_per_name_and_scope_and_go_with_the_last_version(h: Harness) {
    let s = h.store().await;
    let api = strings(&["https://api.example.com:443/"]);
    // No module of that name: nothing to grant.
    assert!(matches!(
        s.add_grants(grant_set("net", None, GrantKind::Http, &api))
            .await,
        Err(StoreError::NotFound { .. })
    ));
    push(&s, "net", "net-v1").await;
    push(&s, "net", "net-v2").await;
    assert_eq!(
        s.add_grants(grant_set("net", None, GrantKind::Http, &api))
            .await
            .unwrap(),
        1
    );
    // The same grant again is no new row; another scope is.
    assert_eq!(
        s.add_grants(grant_set("net", None, GrantKind::Http, &api))
            .await
            .unwrap(),
        0
    );
    let mail = strings(&["https://mail.example.com:443/send", "http://10.0.0.7:25/"]);
    assert_eq!(
        s.add_grants(grant_set("net", Some("mail"), GrantKind::Http, &mail))
            .await
            .unwrap(),
        2
    );
    let all = s.list_grants(Some("net")).await.unwrap();
    let seen: Vec<(Option<&str>, &str)> = all
        .iter()
        .map(|g| (g.queue.as_deref(), g.value.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (None, "https://api.example.com:443/"),
            (Some("mail"), "http://10.0.0.7:25/"),
            (Some("mail"), "https://mail.example.com:443/send"),
        ]
    );
    assert!(all[1].covers("mail") && !all[1].covers("default") && all[0].covers("x"));
    assert_eq!(s.list_grants(None).await.unwrap().len(), 3);

    // Bad input is refused before any write.
    for bad in [
        grant_set("net", Some("a,b"), GrantKind::Http, &api),
        grant_set("", None, GrantKind::Http, &api),
    ] {
        assert!(matches!(
            s.add_grants(bad).await,
            Err(StoreError::InvalidArgument(_))
        ));
    }
    let control = strings(&["https://x\u{1b}[2J"]);
    assert!(
        s.add_grants(grant_set("net", None, GrantKind::Http, &control))
            .await
            .is_err()
    );
    // At most MAX_GRANTS_PER_MODULE per name, all or nothing.
    let many: Vec<String> = (0..MAX_GRANTS_PER_MODULE)
        .map(|i| format!("https://h{i}.example.com:443/"))
        .collect();
    assert!(matches!(
        s.add_grants(grant_set("net", None, GrantKind::Http, &many))
            .await,
        Err(StoreError::InvalidArgument(_))
    ));
    assert_eq!(s.list_grants(Some("net")).await.unwrap().len(), 3);

    // Removal is per scope; revoke-all per scope or everywhere.
    assert_eq!(
        s.remove_grants(grant_set("net", None, GrantKind::Http, &mail))
            .await
            .unwrap(),
        0,
        "those are in queue mail"
    );
    assert_eq!(
        s.remove_grants(grant_set("net", Some("mail"), GrantKind::Http, &mail[..1]))
            .await
            .unwrap(),
        1
    );
    assert_eq!(s.revoke_all_grants("net", Some("mail")).await.unwrap(), 1);
    assert_eq!(s.list_grants(Some("net")).await.unwrap().len(), 1);

    // Deleting one version keeps the name's grants; the last one takes them.
    s.delete_module("net", Some("1"), false).await.unwrap();
    assert_eq!(s.list_grants(Some("net")).await.unwrap().len(), 1);
    s.delete_module("net", None, false).await.unwrap();
    assert!(s.list_grants(Some("net")).await.unwrap().is_empty());
    push(&s, "net", "net-v3").await;
    assert!(s.list_grants(Some("net")).await.unwrap().is_empty());
}

async fn secrets_are_kept_sealed_and_take_their_grants_with_them(h: Harness) {
    let s = h.store().await;
    let sealed = |name: &str, byte: u8| StoredSecret {
        name: name.to_string(),
        key_id: "00112233aabbccdd".to_string(),
        nonce: vec![byte; 12],
        ciphertext: vec![byte, 0, 255, byte],
    };
    assert!(s.put_secret(&sealed("api-token", 1)).await.unwrap(), "new");
    assert!(
        !s.put_secret(&sealed("api-token", 2)).await.unwrap(),
        "replaced"
    );
    assert!(s.put_secret(&sealed("db.password", 3)).await.unwrap());
    assert!(matches!(
        s.put_secret(&sealed("bad name", 4)).await,
        Err(StoreError::InvalidArgument(_))
    ));
    let listed: Vec<String> = s
        .list_secrets()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(listed, ["api-token", "db.password"]);
    let got = s
        .sealed_secrets(&strings(&["db.password", "api-token", "nope"]))
        .await
        .unwrap();
    assert_eq!(got, [sealed("api-token", 2), sealed("db.password", 3)]);
    assert!(s.sealed_secrets(&[]).await.unwrap().is_empty());

    push(&s, "mailer", "mailer-v1").await;
    let names = strings(&["api-token"]);
    assert_eq!(
        s.add_grants(grant_set("mailer", None, GrantKind::Secret, &names))
            .await
            .unwrap(),
        1
    );
    // A grant of a secret that is not stored, or of a bad name, is refused.
    for missing in [strings(&["nope"]), strings(&["has space"])] {
        assert!(
            s.add_grants(grant_set("mailer", None, GrantKind::Secret, &missing))
                .await
                .is_err()
        );
    }
    let g = s.list_grants(Some("mailer")).await.unwrap();
    assert_eq!((g.len(), g[0].kind), (1, GrantKind::Secret));

    // Config: one value per key and scope; a new value replaces the old.
    let config = |values: &[&str]| strings(values);
    let add = |queue, values: Vec<String>| {
        let s = s.clone();
        async move {
            s.add_grants(grant_set("mailer", queue, GrantKind::Config, &values))
                .await
        }
    };
    assert_eq!(
        add(None, config(&["smtp.host=a", "from=x@y"]))
            .await
            .unwrap(),
        2
    );
    assert_eq!(add(None, config(&["smtp.host=b"])).await.unwrap(), 1);
    assert_eq!(
        add(None, config(&["smtp.host=b"])).await.unwrap(),
        0,
        "unchanged"
    );
    assert_eq!(add(Some("eu"), config(&["smtp.host=eu"])).await.unwrap(), 1);
    assert!(add(None, config(&["bad key=1"])).await.is_err());
    let values = |g: Vec<ModuleGrant>| -> Vec<(Option<String>, String)> {
        g.into_iter()
            .filter(|g| g.kind == GrantKind::Config)
            .map(|g| (g.queue, g.value))
            .collect()
    };
    assert_eq!(
        values(s.list_grants(Some("mailer")).await.unwrap()),
        [
            (None, "from=x@y".to_string()),
            (None, "smtp.host=b".to_string()),
            (Some("eu".to_string()), "smtp.host=eu".to_string()),
        ]
    );
    // Removed by key, in its scope only.
    let keys = strings(&["smtp.host"]);
    assert_eq!(
        s.remove_grants(grant_set("mailer", None, GrantKind::Config, &keys))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        values(s.list_grants(Some("mailer")).await.unwrap()),
        [
            (None, "from=x@y".to_string()),
            (Some("eu".to_string()), "smtp.host=eu".to_string()),
        ]
    );
    // A key that starts another is not removed with it.
    assert_eq!(
        add(None, config(&["smtp=1", "smtp.port=25"]))
            .await
            .unwrap(),
        2
    );
    let keys = strings(&["smtp"]);
    s.remove_grants(grant_set("mailer", None, GrantKind::Config, &keys))
        .await
        .unwrap();
    assert!(
        values(s.list_grants(Some("mailer")).await.unwrap())
            .contains(&(None, "smtp.port=25".to_string()))
    );

    s.delete_secret("api-token").await.unwrap();
    assert!(
        s.list_grants(Some("mailer"))
            .await
            .unwrap()
            .iter()
            .all(|g| g.kind != GrantKind::Secret)
    );
    assert!(matches!(
        s.delete_secret("api-token").await,
        Err(StoreError::NotFound { .. })
    ));
}
