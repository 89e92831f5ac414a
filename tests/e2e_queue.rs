//! The queue end to end: real `wasmq worker` processes leasing tasks from a
//! real database, steered with the real CLI.
//!
//! Every scenario is one function taking an [`Env`]; `on_both_backends!`
//! instantiates it as `NAME::sqlite` (a fresh temp file) and `NAME::postgres`
//! (a fresh schema in `WASMQ_TEST_PG_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`, dropped afterwards). When
//! PostgreSQL is unreachable the PostgreSQL variants print a skip line and
//! pass, unless `CI=true`, where they fail.
//!
//! Workers run as child processes owned by a [`WorkerProc`] guard that kills
//! them when the test ends (also on panic); their stdout and stderr go to files
//! that assertion messages quote.

mod common;

use common::pg::{PgEnv, drop_schema, pg_admin};
use common::{Backend, code, example, fresh_database, stderr, stdout, wasmq};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::Connection;
use uuid::Uuid;
use wasmq::store::{AnyStore, AttemptRecord, NewTask, Store, TaskFilter, TaskRecord, TaskState};

/// The most fuel a task may ask for under the default maxima: minutes of
/// `spin`, where a test needs a task that runs until it is stopped.
const MAX_FUEL: &str = "1_000_000_000_000";

/// One isolated database, a private module cache and a scratch directory.
struct Env {
    backend: Backend,
    dir: tempfile::TempDir,
    /// The URL every `wasmq` process of this test uses.
    url: String,
    pg: Option<PgEnv>,
    rt: tokio::runtime::Runtime,
    /// The test's own view of the database, through the library.
    store: AnyStore,
    workers_started: usize,
}

impl Env {
    /// A fresh environment, or `None` when PostgreSQL is wanted but
    /// unreachable outside CI.
    fn new(backend: Backend) -> Option<Env> {
        let rt = common::test_runtime();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("cache")).unwrap();
        let (url, pg) = fresh_database(&rt, backend, dir.path(), "e2e-test")?;
        let store = common::open_store(&rt, &url, 4);
        Some(Env {
            backend,
            dir,
            url,
            pg,
            rt,
            store,
            workers_started: 0,
        })
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// `wasmq --database-url URL ARGS…`, not yet run.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = wasmq(&self.cache());
        c.arg("--database-url").arg(&self.url).args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            code(&out),
            0,
            "wasmq {args:?} failed\nstdout: {}\nstderr: {}",
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }

    /// `wasmq module push` of example `name` under the same name.
    fn push(&self, name: &str) {
        let file = example(name);
        let out = self.ok(&["module", "push", file.to_str().unwrap(), "--name", name]);
        assert!(out.starts_with(&format!("{name}@1 sha256:")), "{out}");
    }

    /// `wasmq task enqueue MODULE --input INPUT EXTRA…` → the new task's id.
    fn enqueue(&self, module: &str, input: &str, extra: &[&str]) -> Uuid {
        let mut args = vec!["task", "enqueue", module, "--input", input];
        args.extend_from_slice(extra);
        let out = self.ok(&args);
        Uuid::parse_str(out.trim()).unwrap_or_else(|e| panic!("not a task id ({e}): {out:?}"))
    }

    /// `wasmq task enqueue … --json` → (id, deduplicated).
    fn enqueue_json(&self, module: &str, input: &str, extra: &[&str]) -> (Uuid, bool) {
        let mut args = vec!["task", "enqueue", module, "--input", input, "--json"];
        args.extend_from_slice(extra);
        let out = self.ok(&args);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        (
            Uuid::parse_str(v["id"].as_str().unwrap()).unwrap(),
            v["deduplicated"].as_bool().unwrap(),
        )
    }

    fn task(&self, id: Uuid) -> TaskRecord {
        self.rt.block_on(self.store.get_task(id)).unwrap()
    }

    fn attempts(&self, id: Uuid) -> Vec<AttemptRecord> {
        self.rt.block_on(self.store.list_attempts(id)).unwrap()
    }

    /// Every task, whole (a listing holds summaries).
    fn all_tasks(&self) -> Vec<TaskRecord> {
        self.rt.block_on(async {
            let listed = self
                .store
                .list_tasks(&TaskFilter {
                    limit: 10_000,
                    ..TaskFilter::default()
                })
                .await
                .unwrap();
            let mut all = Vec::with_capacity(listed.len());
            for t in listed {
                all.push(self.store.get_task(t.id).await.unwrap());
            }
            all
        })
    }

    /// One integer from SQL that both backends understand.
    fn count(&self, sql: &'static str) -> i64 {
        self.rt.block_on(async {
            match &self.store {
                AnyStore::Sqlite(s) => sqlx::query_scalar::<_, i64>(sql)
                    .fetch_one(s.pool())
                    .await
                    .unwrap(),
                AnyStore::Postgres(s) => sqlx::query_scalar::<_, i64>(sql)
                    .fetch_one(s.pool())
                    .await
                    .unwrap(),
                AnyStore::Faulty(_) => unreachable!("the e2e tests inject no faults"),
            }
        })
    }

    /// Polls task `id` every 50 ms until `pred` holds; panics after `within`.
    fn wait_task(
        &self,
        id: Uuid,
        within: Duration,
        what: &str,
        workers: &[&WorkerProc],
        pred: impl Fn(&TaskRecord) -> bool,
    ) -> TaskRecord {
        let deadline = Instant::now() + within;
        loop {
            let t = self.task(id);
            if pred(&t) {
                return t;
            }
            if Instant::now() > deadline {
                panic!(
                    "task {id} not {what} after {within:?}: {t:#?}\nattempts: {:#?}\n{}",
                    self.attempts(id),
                    logs_of(workers)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until task `id` is running (leased) under some worker.
    fn wait_running(&self, id: Uuid, workers: &[&WorkerProc]) -> TaskRecord {
        self.wait_task(id, Duration::from_secs(20), "running", workers, |t| {
            t.state == TaskState::Running
        })
    }

    /// Starts `wasmq worker ARGS…` with `env` added to its environment.
    fn worker(&mut self, args: &[&str], env: &[(&str, &str)]) -> WorkerProc {
        self.worker_at(&self.url.clone(), args, env)
    }

    /// [`Env::worker`] against an explicit database URL.
    fn worker_at(&mut self, url: &str, args: &[&str], env: &[(&str, &str)]) -> WorkerProc {
        self.workers_started += 1;
        let name = format!("worker-{}", self.workers_started);
        let out_path = self.dir.path().join(format!("{name}.out"));
        let err_path = self.dir.path().join(format!("{name}.err"));
        let mut c = wasmq(&self.cache());
        c.arg("--database-url")
            .arg(url)
            .arg("worker")
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap());
        for (k, v) in env {
            c.env(k, v);
        }
        let child = c.spawn().expect("spawn wasmq worker");
        WorkerProc {
            name,
            args: args.iter().map(|s| s.to_string()).collect(),
            child,
            status: None,
            out_path,
            err_path,
        }
    }

    /// A library handle on the same database, for bulk enqueues.
    fn new_tasks(&self, module: &str, inputs: impl Iterator<Item = String>) -> Vec<NewTask> {
        let m = self
            .rt
            .block_on(self.store.resolve_module(module, None))
            .unwrap();
        inputs.map(|input| NewTask::new(&m, input)).collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let pg = self.pg.take();
        let store = self.store.clone();
        self.rt.block_on(async move {
            store.close().await;
            if let Some(pg) = pg {
                drop_schema(&pg).await;
            }
        });
    }
}

/// A `wasmq worker` child process, killed (SIGKILL) when dropped.
struct WorkerProc {
    name: String,
    args: Vec<String>,
    child: Child,
    status: Option<ExitStatus>,
    out_path: PathBuf,
    err_path: PathBuf,
}

impl WorkerProc {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal(&self, sig: i32) {
        assert!(self.status.is_none(), "{} already exited", self.name);
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid());
    }

    fn is_running(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
        }
        self.status.is_none()
    }

    /// Waits for the process to exit; panics (with its logs) after `within`.
    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        while self.is_running() {
            if Instant::now() > deadline {
                panic!(
                    "{} did not exit within {within:?}\n{}",
                    self.name,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.status.unwrap()
    }

    /// Waits for the process to exit with code 0; returns its stdout.
    fn wait_success(&mut self, within: Duration) -> String {
        let st = self.wait_exit(within);
        assert_eq!(
            st.code(),
            Some(0),
            "{} exited with {st}\n{}",
            self.name,
            self.logs()
        );
        self.stdout()
    }

    /// SIGKILL, like a crashed host.
    fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        let st = self.wait_exit(Duration::from_secs(10));
        assert_eq!(st.code(), None, "{st}");
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out_path).unwrap_or_default()
    }

    fn logs(&self) -> String {
        format!(
            "--- {} {:?} stdout ---\n{}\n--- {} stderr ---\n{}",
            self.name,
            self.args,
            self.stdout(),
            self.name,
            std::fs::read_to_string(&self.err_path).unwrap_or_default()
        )
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn logs_of(workers: &[&WorkerProc]) -> String {
    workers
        .iter()
        .map(|w| w.logs())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `processed N task(s) in …` → N.
fn processed(stdout: &str) -> u64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("processed "))
        .unwrap_or_else(|| panic!("no `processed` line in {stdout:?}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn outcomes(attempts: &[AttemptRecord]) -> Vec<&str> {
    attempts
        .iter()
        .map(|a| a.outcome_name().unwrap_or("(running)"))
        .collect()
}

fn ms(d: TimeDelta) -> i64 {
    d.num_milliseconds()
}

fn run_on(backend: Backend, test: fn(&mut Env)) {
    if let Some(mut env) = Env::new(backend) {
        test(&mut env);
    }
}

on_both_backends!(
    subtasks_give_exact_results_in_every_local_mode,
    killed_worker_mid_fanout_loses_no_child_and_makes_none_twice,
    children_run_no_further_ahead_of_their_written_ends_than_the_backlog,
    cancelling_a_parent_cancels_its_descendants,
    a_replay_that_spawns_differently_fails_as_non_deterministic,
    four_workers_run_2000_tasks_exactly_once,
    default_prefetch_shares_long_tasks,
    another_process_enqueue_wakes_an_idle_worker,
    killed_worker_task_is_reaped_and_rerun,
    cancel_queued_and_running_tasks,
    flaky_task_is_retried_with_backoff,
    sigterm_requeues_unfinished_task_without_spending_an_attempt,
    sigterm_lets_a_short_task_finish_within_grace,
    unique_key_deduplicates_unfinished_tasks,
    run_after_is_honoured,
    progress_is_stored,
    higher_priority_runs_first,
    enqueue_wait_exits_with_the_outcome,
    bad_enqueue_input_is_refused,
    misspelled_retry_kind_stops_the_worker,
    operator_maxima_are_enforced,
    module_grants_let_queued_tasks_reach_granted_hosts_only,
    granted_secrets_reach_the_guest_and_no_row_or_log,
);

// ---- scenarios ------------------------------------------------------------------

/// Four worker processes drain 2,000 `hello` tasks; each task runs exactly once.
fn four_workers_run_2000_tasks_exactly_once(env: &mut Env) {
    const N: usize = 2000;
    env.push("hello");
    let tasks = env.new_tasks("hello", (0..N).map(|i| format!(r#"{{"name":"t{i}"}}"#)));
    let expected: HashMap<Uuid, String> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id, format!(r#"{{"greeting":"Hello, t{i}!"}}"#)))
        .collect();
    let t0 = Instant::now();
    for chunk in tasks.chunks(500) {
        let out = env.rt.block_on(env.store.enqueue_batch(chunk)).unwrap();
        assert!(out.iter().all(|o| !o.deduplicated));
    }
    eprintln!(
        "[{:?}] enqueued {N} tasks in {:?}",
        env.backend,
        t0.elapsed()
    );

    let t0 = Instant::now();
    let mut workers: Vec<WorkerProc> = (0..4)
        .map(|_| {
            env.worker(
                &[
                    "--exit-when-idle",
                    "--concurrency",
                    "2",
                    // A fixed, small prefetch: claims of at most 10 tasks,
                    // so that no worker can take everything (an adaptive
                    // one may hold 100 ms of work, all 2,000 tasks here).
                    "--prefetch",
                    "8",
                    "--poll-interval",
                    "200ms",
                ],
                &[],
            )
        })
        .collect();
    let mut total = 0;
    for w in &mut workers {
        let out = w.wait_success(Duration::from_secs(150));
        total += processed(&out);
    }
    eprintln!(
        "[{:?}] 4 workers drained {N} tasks in {:?}",
        env.backend,
        t0.elapsed()
    );
    let refs: Vec<&WorkerProc> = workers.iter().collect();
    assert_eq!(
        total,
        N as u64,
        "completions reported by the workers\n{}",
        logs_of(&refs)
    );

    let all = env.all_tasks();
    assert_eq!(all.len(), N);
    for t in &all {
        assert!(
            t.state == TaskState::Succeeded && t.attempt == 1,
            "task not succeeded exactly once: {t:#?}"
        );
        assert_eq!(
            t.result.as_deref(),
            Some(expected[&t.id].as_str()),
            "{t:#?}"
        );
    }
    assert_eq!(env.count("SELECT count(*) FROM attempts"), N as i64);
    assert_eq!(
        env.count("SELECT count(*) FROM attempts WHERE outcome = 'success' AND attempt = 1"),
        N as i64
    );
    assert_eq!(
        env.count("SELECT count(*) FROM (SELECT task_id FROM attempts GROUP BY task_id HAVING count(*) <> 1) AS x"),
        0
    );
    assert_eq!(
        env.count("SELECT count(DISTINCT task_id) FROM attempts"),
        N as i64
    );
    // Each worker holds at most concurrency + prefetch (10) tasks, so no
    // worker can take everything: the run really was shared.
    let sharing = env.count("SELECT count(DISTINCT worker_id) FROM attempts");
    assert!(
        sharing >= 2,
        "only {sharing} worker(s) ran tasks\n{}",
        logs_of(&refs)
    );
}

/// At default flags a worker prefetches nothing while its runs are long
/// (one second here), so two workers share a queue of long tasks instead of
/// the first one hoarding them.
fn default_prefetch_shares_long_tasks(env: &mut Env) {
    const N: usize = 16;
    env.push("sleepy");
    let tasks = env.new_tasks("sleepy", (0..N).map(|_| r#"{"ms":1000}"#.to_string()));
    env.rt.block_on(env.store.enqueue_batch(&tasks)).unwrap();
    let mut workers: Vec<WorkerProc> = (0..2)
        .map(|_| env.worker(&["--exit-when-idle", "--poll-interval", "200ms"], &[]))
        .collect();
    let counts: Vec<u64> = workers
        .iter_mut()
        .map(|w| processed(&w.wait_success(Duration::from_secs(120))))
        .collect();
    let refs: Vec<&WorkerProc> = workers.iter().collect();
    assert_eq!(counts.iter().sum::<u64>(), N as u64, "{}", logs_of(&refs));
    assert!(
        counts.iter().all(|&c| c >= (N / 4) as u64),
        "one worker hoarded the long tasks: {counts:?}\n{}",
        logs_of(&refs)
    );
}

/// A task enqueued by another process reaches an idle worker without
/// polling: NOTIFY on PostgreSQL, the file's commit counter on SQLite. The
/// worker polls once an hour here, so only the wake-up can start the task.
fn another_process_enqueue_wakes_an_idle_worker(env: &mut Env) {
    env.push("hello");
    let w = env.worker(&["--poll-interval", "1h"], &[]);
    // Registered and past its first (empty) claim.
    let deadline = Instant::now() + Duration::from_secs(20);
    while env.count("SELECT count(*) FROM workers") == 0 {
        assert!(
            Instant::now() < deadline,
            "worker never registered\n{}",
            w.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..3 {
        let id = env.enqueue("hello", &format!(r#"{{"name":"w{i}"}}"#), &[]);
        env.wait_task(id, Duration::from_secs(30), "succeeded", &[&w], |t| {
            t.state == TaskState::Succeeded
        });
    }
}

/// A worker killed with SIGKILL mid-task: another worker's reaper takes the
/// task back once the lease expires and runs it again.
fn killed_worker_task_is_reaped_and_rerun(env: &mut Env) {
    env.push("sleepy");
    let id = env.enqueue("sleepy", r#"{"ms":3000}"#, &[]);
    let mut first = env.worker(&["--lease", "2s", "--poll-interval", "200ms"], &[]);
    let t = env.wait_running(id, &[&first]);
    assert_eq!(t.attempt, 1);
    let first_owner = t.lease_owner.clone().unwrap();
    std::thread::sleep(Duration::from_millis(300)); // well inside the guest's sleep
    first.kill9();
    assert_eq!(
        env.task(id).state,
        TaskState::Running,
        "still leased by the dead worker"
    );

    let mut second = env.worker(
        &[
            "--exit-when-idle",
            "--lease",
            "2s",
            "--poll-interval",
            "200ms",
            "--backoff-base",
            "100ms",
        ],
        &[("WASMQ_REAPER_INTERVAL", "500ms")],
    );
    second.wait_success(Duration::from_secs(30));
    let t = env.task(id);
    assert_eq!(t.state, TaskState::Succeeded, "{t:#?}\n{}", second.logs());
    assert_eq!(t.attempt, 2);
    assert_eq!(t.result.as_deref(), Some(r#"{"slept_ms":3000}"#));
    let a = env.attempts(id);
    assert_eq!(outcomes(&a), ["lease-expired", "success"], "{a:#?}");
    assert_eq!((a[0].attempt, a[1].attempt), (1, 2));
    assert_eq!(a[0].worker_id, first_owner);
    assert_ne!(a[1].worker_id, first_owner);
    // The same history through `wasmq task show --json`.
    let shown: serde_json::Value =
        serde_json::from_str(&env.ok(&["task", "show", &id.to_string(), "--json"])).unwrap();
    assert_eq!(shown["task"]["state"], "succeeded");
    assert_eq!(shown["task"]["attempt"], 2);
    assert_eq!(shown["attempts"][0]["outcome"], "lease-expired");
    assert_eq!(shown["attempts"][1]["outcome"], "success");
    assert!(
        shown["attempts"][1]["duration_ms"].as_u64().unwrap() >= 3000,
        "{shown}"
    );
    // The lease ran out before the task was taken back.
    assert!(
        a[1].started_at - a[0].started_at >= TimeDelta::milliseconds(1900),
        "{a:#?}"
    );
}

/// A queued task is cancelled at once; a running one is interrupted by its
/// worker, which keeps running.
fn cancel_queued_and_running_tasks(env: &mut Env) {
    env.push("hello");
    env.push("spin");
    let queued = env.enqueue("hello", r#"{"name":"x"}"#, &["--delay", "1h"]);
    let out = env.ok(&["task", "cancel", &queued.to_string()]);
    assert!(out.contains("cancelled"), "{out}");
    let t = env.task(queued);
    assert_eq!(t.state, TaskState::Cancelled);
    assert_eq!(t.attempt, 0);
    assert!(env.attempts(queued).is_empty());

    let id = env.enqueue("spin", "{}", &["--fuel", MAX_FUEL, "--timeout", "60s"]);
    // Heartbeats (lease / 3) carry cancel requests across processes.
    let mut w = env.worker(&["--lease", "3s", "--poll-interval", "200ms"], &[]);
    env.wait_running(id, &[&w]);
    std::thread::sleep(Duration::from_millis(200));
    let out = env.ok(&["task", "cancel", &id.to_string()]);
    assert!(out.contains("asked to stop"), "{out}");
    let t = env.wait_task(id, Duration::from_secs(15), "cancelled", &[&w], |t| {
        t.state.is_terminal()
    });
    assert_eq!(t.state, TaskState::Cancelled, "{t:#?}");
    assert_eq!(t.attempt, 1);
    let a = env.attempts(id);
    assert_eq!(outcomes(&a), ["cancelled"], "{a:#?}");
    assert!(w.is_running(), "the worker died\n{}", w.logs());

    w.signal(libc::SIGTERM);
    w.wait_success(Duration::from_secs(15));

    let listed: serde_json::Value =
        serde_json::from_str(&env.ok(&["task", "list", "--state", "cancelled", "--json"])).unwrap();
    let mut ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut want = [queued.to_string(), id.to_string()];
    want.sort();
    assert_eq!(ids, want);
}

/// `flaky` fails twice with a retryable error, then succeeds; retries wait
/// for the backoff.
fn flaky_task_is_retried_with_backoff(env: &mut Env) {
    env.push("flaky");
    let id = env.enqueue(
        "flaky",
        r#"{"succeed_on_attempt":3}"#,
        &["--max-attempts", "5"],
    );
    let mut w = env.worker(
        &[
            "--exit-when-idle",
            "--backoff-base",
            "200ms",
            "--poll-interval",
            "200ms",
        ],
        &[],
    );
    w.wait_success(Duration::from_secs(30));
    let t = env.task(id);
    assert_eq!(t.state, TaskState::Succeeded, "{t:#?}");
    assert_eq!(t.attempt, 3);
    assert_eq!(t.result.as_deref(), Some(r#"{"attempt":3}"#));
    let a = env.attempts(id);
    assert_eq!(
        outcomes(&a),
        ["task-error", "task-error", "success"],
        "{a:#?}"
    );
    assert_eq!(a.iter().map(|a| a.attempt).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(
        a[0].error_message.as_deref().unwrap().contains("attempt 1"),
        "{a:#?}"
    );
    // Backoff with equal jitter: retry n waits 200ms·2^(n-1) · [0.5, 1].
    let gap1 = ms(a[1].started_at - a[0].started_at);
    let gap2 = ms(a[2].started_at - a[1].started_at);
    assert!(gap1 >= 100, "first retry after {gap1} ms: {a:#?}");
    assert!(gap2 >= 200, "second retry after {gap2} ms: {a:#?}");
}

/// SIGTERM with a task that outlives the grace period: the worker exits 0
/// and the task goes back to the queue without spending its attempt; another
/// worker picks it up.
fn sigterm_requeues_unfinished_task_without_spending_an_attempt(env: &mut Env) {
    env.push("sleepy");
    let id = env.enqueue("sleepy", r#"{"ms":20000}"#, &[]);
    let mut w = env.worker(&["--grace", "1s", "--poll-interval", "200ms"], &[]);
    env.wait_running(id, &[&w]);
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    w.signal(libc::SIGTERM);
    w.wait_success(Duration::from_secs(10));
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "shutdown took {took:?}\n{}",
        w.logs()
    );
    let t = env.task(id);
    assert_eq!(t.state, TaskState::Queued, "{t:#?}\n{}", w.logs());
    // A free run: the run is recorded, the attempt is not spent.
    assert_eq!(
        (t.attempt, t.free_runs, t.counted_attempts()),
        (1, 1, 0),
        "the interrupted attempt must not count: {t:#?}"
    );
    assert!(t.lease_owner.is_none());
    let a = env.attempts(id);
    assert_eq!(outcomes(&a), ["shutdown"], "{a:#?}");
    assert_eq!(a[0].attempt, 1);

    // A new worker takes it as run 2 (still its first counted attempt);
    // stop that one too.
    let mut w2 = env.worker(&["--grace", "1s", "--poll-interval", "200ms"], &[]);
    let t = env.wait_running(id, &[&w2]);
    assert_eq!((t.attempt, t.counted_attempts()), (2, 1));
    assert_ne!(t.lease_owner.as_deref(), Some(a[0].worker_id.as_str()));
    w2.signal(libc::SIGTERM);
    w2.wait_success(Duration::from_secs(10));
    let t = env.task(id);
    assert_eq!(
        (t.state, t.attempt, t.free_runs),
        (TaskState::Queued, 2, 2),
        "{t:#?}"
    );
    assert_eq!(outcomes(&env.attempts(id)), ["shutdown", "shutdown"]);
}

/// SIGTERM while a short task runs, with a long grace period: the task
/// finishes and the worker exits 0.
fn sigterm_lets_a_short_task_finish_within_grace(env: &mut Env) {
    env.push("sleepy");
    let id = env.enqueue("sleepy", r#"{"ms":1500}"#, &[]);
    let mut w = env.worker(&["--grace", "10s", "--poll-interval", "200ms"], &[]);
    env.wait_running(id, &[&w]);
    w.signal(libc::SIGTERM);
    w.wait_success(Duration::from_secs(12));
    let t = env.task(id);
    assert_eq!(t.state, TaskState::Succeeded, "{t:#?}\n{}", w.logs());
    assert_eq!(t.attempt, 1);
    assert_eq!(outcomes(&env.attempts(id)), ["success"]);
}

/// Enqueues with one unique key share the unfinished task; once it has
/// finished, the key is free again.
fn unique_key_deduplicates_unfinished_tasks(env: &mut Env) {
    env.push("hello");
    let (a, dedup) = env.enqueue_json("hello", r#"{"name":"a"}"#, &["--unique-key", "k1"]);
    assert!(!dedup);
    let (b, dedup) = env.enqueue_json("hello", r#"{"name":"b"}"#, &["--unique-key", "k1"]);
    assert!(dedup);
    assert_eq!(a, b);
    // The plain output names the existing id too.
    let out = env.ok(&[
        "task",
        "enqueue",
        "hello",
        "--input",
        "{\"name\":\"c\"}",
        "--unique-key",
        "k1",
    ]);
    assert!(
        out.starts_with(&a.to_string()) && out.contains("deduplicated"),
        "{out}"
    );
    assert_eq!(env.all_tasks().len(), 1);

    let mut w = env.worker(&["--exit-when-idle", "--poll-interval", "200ms"], &[]);
    w.wait_success(Duration::from_secs(30));
    let t = env.task(a);
    assert_eq!(t.state, TaskState::Succeeded);
    assert_eq!(t.result.as_deref(), Some(r#"{"greeting":"Hello, a!"}"#));

    let (c, dedup) = env.enqueue_json("hello", r#"{"name":"c"}"#, &["--unique-key", "k1"]);
    assert!(!dedup);
    assert_ne!(c, a);
    assert_eq!(env.task(c).state, TaskState::Queued);
}

/// A delayed task does not start before its run_after.
fn run_after_is_honoured(env: &mut Env) {
    env.push("hello");
    let delayed = env.enqueue("hello", r#"{"name":"later"}"#, &["--delay", "3s"]);
    let now = env.enqueue("hello", r#"{"name":"now"}"#, &[]);
    let mut w = env.worker(&["--exit-when-idle", "--poll-interval", "200ms"], &[]);
    w.wait_success(Duration::from_secs(30));
    let d = env.task(delayed);
    let n = env.task(now);
    assert_eq!(
        (d.state, n.state),
        (TaskState::Succeeded, TaskState::Succeeded)
    );
    let started = d.started_at.unwrap();
    assert!(started >= d.run_after, "{d:#?}");
    // run_after is taken just before the row is written: allow a little slack.
    assert!(
        started - d.enqueued_at >= TimeDelta::milliseconds(2900),
        "started {} ms after enqueue: {d:#?}",
        ms(started - d.enqueued_at)
    );
    assert!(n.started_at.unwrap() < started);
}

/// A guest's progress() reports are stored on the task row.
fn progress_is_stored(env: &mut Env) {
    env.push("fib");
    let id = env.enqueue("fib", r#"{"n":300000000}"#, &["--fuel", MAX_FUEL]);
    let mut w = env.worker(&["--exit-when-idle", "--poll-interval", "200ms"], &[]);
    w.wait_success(Duration::from_secs(60));
    let t = env.task(id);
    assert_eq!(t.state, TaskState::Succeeded, "{t:#?}");
    let percent = t.progress_percent.expect("progress was stored");
    assert!(percent >= 10, "{t:#?}");
    assert!(t.progress_message.is_some(), "{t:#?}");
}

/// With one slot and no prefetch, tasks run by priority, highest first.
fn higher_priority_runs_first(env: &mut Env) {
    env.push("hello");
    let low = env.enqueue("hello", r#"{"name":"low"}"#, &["--priority", "-10"]);
    let high = env.enqueue("hello", r#"{"name":"high"}"#, &["--priority", "50"]);
    let mid = env.enqueue("hello", r#"{"name":"mid"}"#, &["--priority", "0"]);
    let mut w = env.worker(
        &[
            "--exit-when-idle",
            "--concurrency",
            "1",
            "--prefetch",
            "0",
            "--poll-interval",
            "200ms",
        ],
        &[],
    );
    w.wait_success(Duration::from_secs(30));
    let start = |id| -> DateTime<Utc> {
        let a = env.attempts(id);
        assert_eq!(outcomes(&a), ["success"], "{a:#?}");
        a[0].started_at
    };
    let (h, m, l) = (start(high), start(mid), start(low));
    assert!(h < m && m < l, "high {h}, mid {m}, low {l}");
}

/// `task enqueue --wait` follows the task and exits with its outcome's code.
fn enqueue_wait_exits_with_the_outcome(env: &mut Env) {
    env.push("hello");
    env.push("flaky");
    env.push("spin");
    let w = env.worker(&["--lease", "3s", "--poll-interval", "200ms"], &[]);

    let out = env.run(&[
        "task",
        "enqueue",
        "hello",
        "--input",
        r#"{"name":"W"}"#,
        "--wait",
    ]);
    assert_eq!(code(&out), 0, "{}\n{}", stderr(&out), w.logs());
    assert_eq!(stdout(&out).trim(), r#"{"greeting":"Hello, W!"}"#);

    // A retryable error with no attempts left: exit 11.
    let out = env.run(&[
        "task",
        "enqueue",
        "flaky",
        "--input",
        r#"{"succeed_on_attempt":3}"#,
        "--max-attempts",
        "1",
        "--wait",
    ]);
    assert_eq!(code(&out), 11, "{}\n{}", stderr(&out), w.logs());
    assert!(stderr(&out).contains("retryable"), "{}", stderr(&out));

    // Cancelled while followed: exit 24.
    let mut follower = env
        .cmd(&[
            "task",
            "enqueue",
            "spin",
            "--input",
            "{}",
            "--fuel",
            MAX_FUEL,
            "--timeout",
            "60s",
            "--wait",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let id = loop {
        let running = env
            .all_tasks()
            .into_iter()
            .find(|t| t.module_name == "spin" && t.state == TaskState::Running);
        if let Some(t) = running {
            break t.id;
        }
        if Instant::now() > deadline {
            let _ = follower.kill();
            panic!("spin never ran\n{}", w.logs());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    env.ok(&["task", "cancel", &id.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = follower.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = follower.kill();
            panic!(
                "`enqueue --wait` did not return after the cancel\n{}",
                w.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(24));
}

/// Bad enqueue input: exit 2, one line naming the problem, nothing stored.
fn bad_enqueue_input_is_refused(env: &mut Env) {
    env.push("hello");
    let cases: [(&[&str], &str); 6] = [
        (
            &["task", "enqueue", "nosuchmodule", "--input", "{}"],
            "nosuchmodule",
        ),
        (
            &["task", "enqueue", "hello", "--input", "{not json"],
            "JSON",
        ),
        (
            &[
                "task",
                "enqueue",
                "hello",
                "--input",
                "{}",
                "--priority",
                "500",
            ],
            "priority",
        ),
        (
            &[
                "task",
                "enqueue",
                "hello",
                "--input",
                "{}",
                "--delay",
                "10parsecs",
            ],
            "10parsecs",
        ),
        (&["task", "enqueue", "hello@7", "--input", "{}"], "hello"),
        (
            &["task", "enqueue", "hello", "--input", "{}", "--fuel", "0"],
            "`unlimited`",
        ),
    ];
    for (args, needle) in cases {
        let out = env.run(args);
        let err = stderr(&out);
        assert_eq!(
            code(&out),
            2,
            "{args:?}: stdout {} stderr {err}",
            stdout(&out)
        );
        assert!(
            err.contains(needle),
            "{args:?}: {needle:?} not named in {err:?}"
        );
        assert!(stdout(&out).is_empty(), "{args:?}: {}", stdout(&out));
    }
    // The errors that are not clap's own are one line.
    for args in [&cases[0].0, &cases[1].0, &cases[2].0] {
        let err = stderr(&env.run(args));
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err:?}");
    }
    assert!(env.all_tasks().is_empty());
}

/// Tasks asking for more than the operator's maxima are refused at enqueue;
/// one enqueued by a looser process is refused by the worker, not run; a
/// worker whose own defaults exceed its maxima does not start.
fn operator_maxima_are_enforced(env: &mut Env) {
    env.push("hello");
    let input = r#"{"name":"max"}"#;
    for (flags, needle) in [
        (["--fuel", "unlimited"], "--max-fuel"),
        (["--fuel", "1_000_000_000_001"], "--max-fuel"),
        (["--timeout", "2h"], "--max-timeout"),
        (["--memory", "5GiB"], "--max-memory"),
    ] {
        let mut args = vec!["task", "enqueue", "hello", "--input", input];
        args.extend(flags);
        let out = env.run(&args);
        assert_eq!(code(&out), 2, "{flags:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{flags:?}: {}", stderr(&out));
    }
    assert!(env.all_tasks().is_empty());

    // Enqueued where unlimited fuel is allowed…
    let enqueue_unlimited = |env: &Env| {
        let out = env
            .cmd(&["task", "enqueue", "hello", "--input", input])
            .args(["--fuel", "unlimited"])
            .env("WASMQ_MAX_FUEL", "unlimited")
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        Uuid::parse_str(stdout(&out).trim()).unwrap()
    };
    let refused = enqueue_unlimited(env);
    // …and claimed by a worker that does not allow it.
    let mut w = env.worker(&["--exit-when-idle"], &[]);
    w.wait_success(Duration::from_secs(60));
    let t = env.task(refused);
    assert_eq!(t.state, TaskState::Failed, "{t:#?}");
    assert_eq!(t.error_kind.as_deref(), Some("invalid-input"), "{t:#?}");
    let message = t.error_message.unwrap_or_default();
    assert!(
        message.contains("refused by this worker") && message.contains("--max-fuel"),
        "{message}"
    );
    assert_eq!(t.attempt, 1, "not retried");

    // A worker that allows it runs it.
    let allowed = enqueue_unlimited(env);
    let mut w = env.worker(&["--exit-when-idle", "--max-fuel", "unlimited"], &[]);
    w.wait_success(Duration::from_secs(60));
    assert_eq!(env.task(allowed).state, TaskState::Succeeded);

    // A worker whose own default is above its maxima does not start.
    let out = env.run(&["worker", "--exit-when-idle", "--fuel", "unlimited"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("above its maxima"),
        "{}",
        stderr(&out)
    );
}

/// A misspelled `WASMQ_RETRY_ON` entry stops the worker at start, naming
/// the entry and the known kinds, instead of silently not retrying.
fn misspelled_retry_kind_stops_the_worker(env: &mut Env) {
    let out = env
        .cmd(&["worker", "--exit-when-idle"])
        .env("WASMQ_RETRY_ON", "trap, tmeout")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_ne!(code(&out), 0, "{err}");
    assert!(err.contains("WASMQ_RETRY_ON"), "{err}");
    assert!(err.contains("\"tmeout\""), "{err}");
    assert!(err.contains("task-error:retryable"), "{err}");
    assert!(!stdout(&out).contains("processed"), "{}", stdout(&out));
}

// ---- PostgreSQL only -------------------------------------------------------------

/// Killing the worker's database connections mid-run: it reconnects and every
/// task still runs exactly once.
#[test]
fn postgres_worker_survives_terminated_connections() {
    run_on(Backend::Postgres, |env| {
        const N: usize = 200;
        env.push("sleepy");
        let tasks = env.new_tasks("sleepy", (0..N).map(|_| r#"{"ms":20}"#.to_string()));
        env.rt.block_on(env.store.enqueue_batch(&tasks)).unwrap();

        let pg = env.pg.as_ref().unwrap();
        let app = format!("e2e-worker-{}", pg.schema);
        let url = pg.url(&app);
        let base_url = pg.base_url.clone();
        let mut w = env.worker_at(
            &url,
            &[
                "--exit-when-idle",
                "--concurrency",
                "2",
                "--lease",
                "5s",
                "--poll-interval",
                "200ms",
            ],
            &[("WASMQ_REAPER_INTERVAL", "500ms")],
        );
        let terminate = |env: &Env| -> i64 {
            env.rt.block_on(async {
                let mut conn = pg_admin(&base_url).await.unwrap();
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE application_name = $1 AND pid <> pg_backend_pid()",
                )
                .bind(&app)
                .fetch_one(&mut conn)
                .await
                .unwrap();
                conn.close().await.ok();
                n
            })
        };
        let mut killed = Vec::new();
        for threshold in [30, 90] {
            let deadline = Instant::now() + Duration::from_secs(60);
            while env.count("SELECT count(*) FROM tasks WHERE state = 'succeeded'") < threshold {
                assert!(w.is_running(), "worker exited early\n{}", w.logs());
                assert!(Instant::now() < deadline, "no progress\n{}", w.logs());
                std::thread::sleep(Duration::from_millis(20));
            }
            killed.push(terminate(env));
        }
        eprintln!("terminated {killed:?} worker backends");
        assert!(
            killed.iter().all(|&n| n > 0),
            "found no worker backends: {killed:?}"
        );

        let out = w.wait_success(Duration::from_secs(90));
        assert_eq!(processed(&out), N as u64, "{}", w.logs());
        assert_eq!(
            env.count("SELECT count(*) FROM tasks WHERE state = 'succeeded' AND attempt = 1"),
            N as i64,
            "{}",
            w.logs()
        );
        assert_eq!(
            env.count("SELECT count(*) FROM attempts"),
            N as i64,
            "{}",
            w.logs()
        );
        assert_eq!(
            env.count("SELECT count(*) FROM attempts WHERE outcome = 'success'"),
            N as i64
        );
    });
}

#[test]
fn pg_url_options_select_the_schema() {
    // The mechanism every PostgreSQL test relies on: `options=-c search_path=…`
    // in the URL puts wasmq's tables in the test's schema, not in public.
    run_on(Backend::Postgres, |env| {
        let schema = env.pg.as_ref().unwrap().schema.clone();
        let base_url = env.pg.as_ref().unwrap().base_url.clone();
        env.ok(&["migrate"]);
        let n: i64 = env.rt.block_on(async {
            let mut conn = pg_admin(&base_url).await.unwrap();
            sqlx::query_scalar(
                "SELECT count(*) FROM information_schema.tables \
                 WHERE table_schema = $1 AND table_name IN ('tasks', 'attempts', 'modules')",
            )
            .bind(&schema)
            .fetch_one(&mut conn)
            .await
            .unwrap()
        });
        assert_eq!(n, 3);
    });
}

// ---- subtasks ---------------------------------------------------------------

/// The Monte-Carlo `pi-sample` example's count, computed here the same way
/// (SplitMix64, 53-bit floats), so the fan-out's result is checked against
/// an independent computation.
fn pi_hits(seed: u64, samples: u64) -> u64 {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..samples)
        .filter(|_| {
            let (x, y) = (next(), next());
            x * x + y * y < 1.0
        })
        .count() as u64
}

/// Pushes the subtask examples (file names use `_`, module names `-`).
fn push_subtask_examples(env: &Env) {
    for (file, name) in [
        ("add", "add"),
        ("sleepy", "sleepy"),
        ("fanout", "fanout"),
        ("words", "words"),
        ("wordcount", "wordcount"),
        ("pi_sample", "pi-sample"),
        ("pi", "pi"),
        ("tree", "tree"),
    ] {
        let path = example(file);
        env.ok(&["module", "push", path.to_str().unwrap(), "--name", name]);
    }
}

/// Every child of `parent`, whole.
fn children_of(env: &Env, parent: Uuid) -> Vec<TaskRecord> {
    env.rt.block_on(async {
        let listed = env.store.list_children(parent, 0, 10_000).await.unwrap();
        let mut all = Vec::new();
        for c in listed {
            all.push(env.store.get_task(c.id).await.unwrap());
        }
        all
    })
}

fn subtasks_give_exact_results_in_every_local_mode(env: &mut Env) {
    push_subtask_examples(env);
    let hello = common::repo_root().join("tests/fixtures/wit-0.1.0/hello.wasm");
    env.ok(&[
        "module",
        "push",
        hello.to_str().unwrap(),
        "--name",
        "hello-0.1.0",
    ]);
    let text = "the cat sat on the mat\nthe dog sat\n\nA cat, a dog; THE end\n";
    let expected_pi: u64 = (0..6).map(|i| pi_hits(42 + i, 2_000)).sum();
    for mode in [&["--sync"][..], &["--local", "--concurrency", "1"][..]] {
        let fan = env.enqueue("fanout", r#"{"count": 50}"#, &[]);
        let windowed = env.enqueue("fanout", r#"{"count": 30, "max_running": 4}"#, &[]);
        let wc = env.enqueue(
            "wordcount",
            &serde_json::json!({ "text": text, "lines_per_chunk": 1 }).to_string(),
            &[],
        );
        let pi = env.enqueue("pi", r#"{"children": 6, "samples": 2000, "seed": 42}"#, &[]);
        let tree = env.enqueue("tree", r#"{"depth": 3, "fanout": 3}"#, &[]);
        let old = env.enqueue("hello-0.1.0", r#"{"name": "Ada"}"#, &[]);
        let mut args = vec!["--exit-when-idle", "--poll-interval", "200ms"];
        args.extend_from_slice(mode);
        let mut w = env.worker(&args, &[]);
        w.wait_success(Duration::from_secs(120));

        let result = |id: Uuid| -> serde_json::Value {
            let t = env.task(id);
            assert_eq!(
                t.state,
                TaskState::Succeeded,
                "{mode:?}: {t:#?}\n{}",
                w.logs()
            );
            serde_json::from_str(t.result.as_deref().unwrap()).unwrap()
        };
        assert_eq!(
            result(fan),
            serde_json::json!({"children": 50, "sum": 2450})
        );
        assert_eq!(
            result(windowed),
            serde_json::json!({"children": 30, "sum": 870})
        );
        assert_eq!(
            result(wc),
            serde_json::json!({
                "chunks": 4, "words": 15, "distinct": 8,
                "top": [["the", 4], ["a", 2], ["cat", 2], ["dog", 2], ["sat", 2],
                        ["end", 1], ["mat", 1], ["on", 1]]
            })
        );
        let pi_out = result(pi);
        assert_eq!(pi_out["hits"], expected_pi);
        assert_eq!(pi_out["samples"], 12_000);
        assert_eq!(result(tree), serde_json::json!({"tasks": 40}));
        assert_eq!(result(old), serde_json::json!({"greeting": "Hello, Ada!"}));

        // One child per key, each succeeded; the parent spent one attempt.
        let kids = children_of(env, fan);
        assert_eq!(kids.len(), 50);
        let seqs: std::collections::BTreeSet<u32> =
            kids.iter().map(|k| k.spawn_seq.unwrap()).collect();
        assert_eq!(seqs.len(), 50);
        assert!(
            kids.iter()
                .all(|k| k.state == TaskState::Succeeded && k.depth == 1)
        );
        let parent = env.task(fan);
        assert_eq!(parent.counted_attempts(), 1, "{parent:#?}");
        assert_eq!(parent.children, 50);
        // The window: never more than 4 of those children unfinished, so
        // the parent waited several times.
        let waits = outcomes(&env.attempts(windowed))
            .iter()
            .filter(|o| **o == "waiting")
            .count();
        assert!(waits >= 30 / 4, "{waits} waits");
        // The nested tree: depth 3 below the root.
        let depths =
            env.count("SELECT CAST(max(depth) AS BIGINT) FROM tasks WHERE module_name = 'tree'");
        assert_eq!(depths, 3);
        // The API and `task show` show the tree.
        let shown: serde_json::Value =
            serde_json::from_str(&env.ok(&["task", "show", &fan.to_string(), "--json"])).unwrap();
        assert_eq!(shown["children"].as_array().unwrap().len(), 20);
        assert_eq!(shown["descendants"]["descendants"], 50);
        assert!(shown["descendants"]["fuel_used"].as_u64().unwrap() > 0);
        assert!(
            env.ok(&["task", "show", &fan.to_string()])
                .contains("children  50")
        );
    }
}

/// A child's run starts only while at most `WASMQ_CHILD_BACKLOG` other
/// children's runs have started and not had their end written, with one
/// runner: each run holds one of `concurrency` + backlog slots from before
/// its start until its end is committed. The
/// database's `finished_at` is when the end's transaction began, no later
/// than the slot's release, so the overlap counted here is never more than
/// the worker's. Without the bound, a worker runs `add` children hundreds
/// ahead of their writes.
fn children_run_no_further_ahead_of_their_written_ends_than_the_backlog(env: &mut Env) {
    const BACKLOG: usize = 4;
    push_subtask_examples(env);
    let parent = env.enqueue("fanout", r#"{"count": 200}"#, &[]);
    let backlog = BACKLOG.to_string();
    let mut w = env.worker(
        &[
            "--exit-when-idle",
            "--poll-interval",
            "200ms",
            "--concurrency",
            "1",
        ],
        &[("WASMQ_CHILD_BACKLOG", &backlog)],
    );
    w.wait_success(Duration::from_secs(120));
    let t = env.task(parent);
    assert_eq!(t.state, TaskState::Succeeded, "{t:#?}\n{}", w.logs());
    let result: serde_json::Value = serde_json::from_str(t.result.as_deref().unwrap()).unwrap();
    assert_eq!(result, serde_json::json!({"children": 200, "sum": 39800}));
    let kids = children_of(env, parent);
    assert_eq!(kids.len(), 200);
    let spans: Vec<_> = kids
        .iter()
        .map(|k| (k.started_at.unwrap(), k.finished_at.unwrap()))
        .collect();
    let ahead = spans
        .iter()
        .map(|&(start, _)| {
            spans
                .iter()
                .filter(|&&(s, f)| s < start && f > start)
                .count()
        })
        .max()
        .unwrap();
    assert!(
        ahead <= BACKLOG,
        "a child started while {ahead} earlier children's ends were unwritten (bound {BACKLOG})"
    );
}

fn killed_worker_mid_fanout_loses_no_child_and_makes_none_twice(env: &mut Env) {
    push_subtask_examples(env);
    let parent = env.enqueue("fanout", r#"{"count": 20, "sleep_ms": 150}"#, &[]);
    let lease = [
        "--lease",
        "2s",
        "--poll-interval",
        "200ms",
        "--concurrency",
        "2",
    ];
    let mut first = env.worker(&lease, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = children_of(env, parent)
            .iter()
            .filter(|c| c.state == TaskState::Succeeded)
            .count();
        if done >= 5 {
            break;
        }
        assert!(Instant::now() < deadline, "no progress\n{}", first.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    first.kill9();

    let mut args = vec!["--exit-when-idle"];
    args.extend_from_slice(&lease);
    let mut second = env.worker(&args, &[("WASMQ_REAPER_INTERVAL", "500ms")]);
    second.wait_success(Duration::from_secs(60));
    let t = env.task(parent);
    assert_eq!(t.state, TaskState::Succeeded, "{t:#?}\n{}", second.logs());
    assert_eq!(t.result.as_deref(), Some(r#"{"children":20,"sum":3000}"#));
    let kids = children_of(env, parent);
    assert_eq!(kids.len(), 20, "exactly one child per key");
    assert_eq!(
        env.count("SELECT count(*) FROM tasks WHERE parent_id IS NOT NULL"),
        20
    );
    assert!(kids.iter().all(|k| k.state == TaskState::Succeeded));
}

fn cancelling_a_parent_cancels_its_descendants(env: &mut Env) {
    push_subtask_examples(env);
    // A tree of sleepers two levels deep, so that some descendants are
    // queued, some running, some waiting when the root is cancelled.
    let root = env.enqueue("fanout", r#"{"count": 12, "sleep_ms": 2000}"#, &[]);
    let mut w = env.worker(&["--concurrency", "2", "--poll-interval", "200ms"], &[]);
    env.wait_task(root, Duration::from_secs(30), "waiting", &[&w], |t| {
        t.state == TaskState::Waiting
    });
    let running = children_of(env, root);
    let first = running[0].id;
    env.wait_running(first, &[&w]);
    env.ok(&["task", "cancel", &root.to_string()]);
    assert_eq!(env.task(root).state, TaskState::Cancelled);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let kids = children_of(env, root);
        if kids.iter().all(|k| k.state == TaskState::Cancelled) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "children not all cancelled: {:?}\n{}",
            kids.iter().map(|k| k.state).collect::<Vec<_>>(),
            w.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(w.is_running(), "the worker goes on");
    assert_eq!(env.task(root).state, TaskState::Cancelled, "and stays so");
}

fn a_replay_that_spawns_differently_fails_as_non_deterministic(env: &mut Env) {
    push_subtask_examples(env);
    let parent = env.enqueue("fanout", r#"{"count": 3, "sleep_ms": 1000}"#, &[]);
    // The first run spawns 3 sleepers and waits; then the record of what
    // spawn #1 asked for is altered, as if the parent's code had changed
    // what it spawns between runs.
    let mut w = env.worker(
        &["--sync", "--poll-interval", "100ms", "--lease", "2s"],
        &[],
    );
    env.wait_task(parent, Duration::from_secs(30), "waiting", &[&w], |t| {
        t.free_runs >= 1
    });
    w.kill9();
    env.count(
        "UPDATE tasks SET spawn_digest = 'changed' WHERE spawn_seq = 1 \
         RETURNING CAST(1 AS BIGINT)",
    );
    let mut w = env.worker(
        &[
            "--sync",
            "--exit-when-idle",
            "--poll-interval",
            "100ms",
            "--lease",
            "2s",
        ],
        &[("WASMQ_REAPER_INTERVAL", "500ms")],
    );
    w.wait_success(Duration::from_secs(60));
    let t = env.task(parent);
    assert_eq!(t.state, TaskState::Failed, "{t:#?}\n{}", w.logs());
    let message = t.error_message.unwrap_or_default();
    assert!(message.contains("non-deterministic: spawn #1"), "{message}");
    assert_eq!(t.error_kind.as_deref(), Some("permanent"));
}

// ---- grants (`wasmq module grant`) ------------------------------------------------

/// The outcome a `fetch` task ended with: ("succeeded", status) or
/// (state, error message).
fn fetch_outcome(t: &TaskRecord) -> (TaskState, String) {
    match t.state {
        TaskState::Succeeded => {
            let o: serde_json::Value =
                serde_json::from_str(t.result.as_deref().unwrap_or("null")).unwrap();
            (t.state, o["status"].to_string())
        }
        state => (state, t.error_message.clone().unwrap_or_default()),
    }
}

/// HTTP grants given per module name and queue reach the worker's runs:
/// an ungranted module or queue makes no request, a granted one does, a
/// host outside the grant gets no connection, and grants go with the last
/// version of their module.
fn module_grants_let_queued_tasks_reach_granted_hosts_only(env: &mut Env) {
    use common::httpd::{Reply, Server};
    let routes = |path: &str| match path {
        "/hello" => Reply::ok("hello world"),
        _ => Reply {
            status: 404,
            headers: vec![],
            body: b"not found".to_vec(),
        },
    };
    let (a, b) = (Server::http(routes), Server::http(routes));
    env.push("fetch");
    let input = |s: &Server| serde_json::json!({ "url": s.url("http", "/hello") }).to_string();
    let grant = a.url("http", "");

    // A grant needs a stored module, and bad grants are usage errors.
    let out = env.run(&["module", "grant", "nosuch", "--allow-http", &grant]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("push it before granting"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["module", "grant", "fetch", "--allow-http", "ftp://x"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));

    // Granted in queue `net` only.
    let out = env.ok(&[
        "module",
        "grant",
        "fetch",
        "--allow-http",
        &grant,
        "--queue",
        "net",
    ]);
    assert!(
        out.starts_with("1 new grant(s) for fetch in queue net"),
        "{out}"
    );
    let out = env.ok(&[
        "module",
        "grant",
        "fetch",
        "--allow-http",
        &grant,
        "--queue",
        "net",
    ]);
    assert!(
        out.starts_with("0 new grant(s)"),
        "the same grant twice: {out}"
    );
    let shown = env.ok(&["module", "show", "fetch"]);
    assert!(
        shown.contains(&format!("http {grant}/ (queue net)")),
        "{shown}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&env.ok(&["module", "show", "fetch", "--json"])).unwrap();
    assert_eq!(json["grants"][0]["queue"], "net", "{json}");
    assert_eq!(json["grants"][0]["kind"], "http", "{json}");

    let in_net = env.enqueue("fetch", &input(&a), &["--queue", "net"]);
    let in_default = env.enqueue("fetch", &input(&a), &[]);
    let elsewhere = env.enqueue("fetch", &input(&b), &["--queue", "net"]);
    let mut w = env.worker(&["--queues", "default,net", "--exit-when-idle"], &[]);
    w.wait_success(Duration::from_secs(60));

    let (state, status) = fetch_outcome(&env.task(in_net));
    assert_eq!((state, status.as_str()), (TaskState::Succeeded, "200"));
    let (state, message) = fetch_outcome(&env.task(in_default));
    assert_eq!(state, TaskState::Failed, "{message}");
    assert!(
        message.contains("not granted") && message.contains("wasmq module grant"),
        "{message}"
    );
    let (state, message) = fetch_outcome(&env.task(elsewhere));
    assert_eq!(state, TaskState::Failed, "{message}");
    assert!(message.contains("is not granted to this run"), "{message}");
    assert_eq!(a.accepted(), 1, "only the granted task connected");
    assert_eq!(b.accepted(), 0, "a refused request opens no connection");

    // Config values per scope, read through wasi:config: a queue's own
    // value of a key wins over every queue's.
    let everywhere = format!("api.url={}", a.url("http", "/elsewhere"));
    let in_net = format!("api.url={}", a.url("http", "/hello"));
    let out = env.ok(&["module", "config", "fetch", &everywhere, "other=1"]);
    assert!(out.starts_with("2 config value(s) set, 0 removed"), "{out}");
    env.ok(&["module", "config", "fetch", &in_net, "--queue", "net"]);
    let out = env.ok(&["module", "config", "fetch", "--unset", "other"]);
    assert!(out.starts_with("0 config value(s) set, 1 removed"), "{out}");
    let shown = env.ok(&["module", "show", "fetch"]);
    assert!(
        shown.contains(&format!("config {in_net} (queue net)")),
        "{shown}"
    );
    let out = env.run(&["module", "config", "fetch", "no-equals-sign"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let by_config = r#"{"url_config": "api.url"}"#;
    let configured = env.enqueue("fetch", by_config, &["--queue", "net"]);
    let unset = env.enqueue("fetch", r#"{"url_config": "nope"}"#, &["--queue", "net"]);
    let mut w = env.worker(&["--queues", "net", "--exit-when-idle"], &[]);
    w.wait_success(Duration::from_secs(60));
    let (state, status) = fetch_outcome(&env.task(configured));
    assert_eq!((state, status.as_str()), (TaskState::Succeeded, "200"));
    let (state, message) = fetch_outcome(&env.task(unset));
    assert_eq!(state, TaskState::Failed);
    assert!(message.contains("config key nope is not set"), "{message}");
    assert_eq!(a.accepted(), 2);

    // Revoked: the next worker runs the module without the network.
    let out = env.ok(&["module", "revoke", "fetch", "--all"]);
    assert!(out.starts_with("3 grant(s) of fetch revoked"), "{out}");
    let again = env.enqueue("fetch", &input(&a), &["--queue", "net"]);
    let mut w = env.worker(&["--queues", "net", "--exit-when-idle"], &[]);
    w.wait_success(Duration::from_secs(60));
    assert_eq!(fetch_outcome(&env.task(again)).0, TaskState::Failed);
    assert_eq!(a.accepted(), 2);

    // Grants go with the last version of their name.
    let file = example("fetch");
    let push = [
        "module",
        "push",
        file.to_str().unwrap(),
        "--name",
        "fetch",
        "--allow-http",
        &grant,
    ];
    env.ok(&push);
    assert!(
        env.ok(&["module", "show", "fetch"])
            .contains(&format!("http {grant}/ (every queue)"))
    );
    env.ok(&["module", "rm", "fetch", "--force"]);
    env.push("fetch");
    let shown = env.ok(&["module", "show", "fetch"]);
    assert!(shown.contains("grants   none"), "{shown}");
}

/// Everything the database holds, as bytes to search: SQLite's files
/// (database and write-ahead log), or PostgreSQL's rows of every table that
/// task text, attempts, secrets and grants go to.
fn everything_stored(env: &Env) -> Vec<u8> {
    match &env.store {
        AnyStore::Sqlite(_) => {
            let db = env.url.trim_start_matches("sqlite://");
            let db = db.split('?').next().unwrap();
            ["", "-wal", "-shm"]
                .iter()
                .flat_map(|suffix| std::fs::read(format!("{db}{suffix}")).unwrap_or_default())
                .collect()
        }
        AnyStore::Postgres(s) => env.rt.block_on(async {
            // Each column's value as it is stored (a row's text form
            // would escape quotes and backslashes).
            let text: String = sqlx::query_scalar(
                "SELECT coalesce(string_agg(kv.value, ' '), '') FROM ( \
                   SELECT to_jsonb(t) AS j FROM tasks t UNION ALL \
                   SELECT to_jsonb(a) FROM attempts a UNION ALL \
                   SELECT to_jsonb(s) FROM secrets s UNION ALL \
                   SELECT to_jsonb(g) FROM module_grants g) q, jsonb_each_text(q.j) kv",
            )
            .fetch_one(s.pool())
            .await
            .unwrap();
            text.into_bytes()
        }),
        AnyStore::Faulty(_) => unreachable!("the e2e tests inject no faults"),
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// A secret set from stdin is sealed in the database, reaches a granted
/// task through `wasi:config/store` (here as a bearer token the server
/// sees), and never appears in clear in a row, a log line or the task's
/// output, even when the guest tries to leak it. A worker without the key
/// fails the task as a host error that says so.
fn granted_secrets_reach_the_guest_and_no_row_or_log(env: &mut Env) {
    use common::httpd::{Reply, Server};
    // A quote and a backslash: in JSON text the value is escaped, and must
    // be found there too.
    const CANARY: &str = r#"canary-7f3a"9c1e\d00d"#;
    const CANARY_IN_JSON: &str = r#"canary-7f3a\"9c1e\\d00d"#;
    let a = Server::http(|_: &str| Reply::ok("{}"));
    let key = env.dir.path().join("secret.key");
    let key_path = key.to_str().unwrap().to_string();
    let out = env.ok(&["secret", "new-key", &key_path]);
    assert!(out.contains("wrote a new key"), "{out}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let set = |with_key: bool, name: &str| {
        let mut c = env.cmd(&["secret", "set", name]);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if with_key {
            c.env("WASMQ_SECRET_KEY_FILE", &key);
        } else {
            c.env_remove("WASMQ_SECRET_KEY_FILE");
        }
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        writeln!(child.stdin.take().unwrap(), "{CANARY}").unwrap();
        child.wait_with_output().unwrap()
    };
    let out = set(false, "api-token");
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("WASMQ_SECRET_KEY_FILE"),
        "{}",
        stderr(&out)
    );
    let out = set(true, "api-token");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("secret api-token stored"),
        "{}",
        stdout(&out)
    );
    let out = set(true, "bad name");
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    for list in [
        env.ok(&["secret", "list"]),
        env.ok(&["secret", "list", "--json"]),
    ] {
        assert!(
            list.contains("api-token") && !list.contains(CANARY),
            "{list}"
        );
    }

    env.push("fetch");
    let out = env.run(&["module", "grant", "fetch", "--secret", "nosuch"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("wasmq secret set nosuch"),
        "{}",
        stderr(&out)
    );
    env.ok(&[
        "module",
        "grant",
        "fetch",
        "--secret",
        "api-token",
        "--allow-http",
        &a.url("http", ""),
    ]);
    let shown = env.ok(&["module", "show", "fetch"]);
    assert!(shown.contains("secret api-token (every queue)"), "{shown}");

    let input = serde_json::json!({
        "url": a.url("http", "/items"),
        "bearer_secret": "api-token",
        "leak_token": true,
    })
    .to_string();
    let id = env.enqueue("fetch", &input, &[]);
    let key_env = [
        ("WASMQ_SECRET_KEY_FILE", key_path.as_str()),
        ("WASMQ_LOG", "debug"),
    ];
    let mut w = env.worker(&["--exit-when-idle"], &key_env);
    w.wait_success(Duration::from_secs(60));
    let t = env.task(id);
    assert_eq!(t.state, TaskState::Succeeded, "{t:#?}\n{}", w.logs());
    let heads = a.heads();
    assert!(
        heads.iter().any(|h| h
            .to_ascii_lowercase()
            .contains(&format!("authorization: bearer {CANARY}"))),
        "the server got the token: {heads:?}"
    );
    let out: serde_json::Value = serde_json::from_str(t.result.as_deref().unwrap()).unwrap();
    assert_eq!(out["leaked"], "[redacted:api-token]", "{out}");
    let attempts = env.attempts(id);
    assert!(
        attempts[0]
            .logs
            .as_deref()
            .unwrap_or_default()
            .contains("using token [redacted:api-token]"),
        "{attempts:#?}"
    );

    // A worker without the key: a host error that names it, no run.
    let keyless = env.enqueue("fetch", &input, &["--max-attempts", "1"]);
    let mut w2 = env.worker(&["--exit-when-idle"], &[("WASMQ_LOG", "debug")]);
    w2.wait_success(Duration::from_secs(60));
    let t = env.task(keyless);
    assert_eq!(t.state, TaskState::Failed, "{t:#?}");
    assert_eq!(t.error_kind.as_deref(), Some("host-error"), "{t:#?}");
    let message = t.error_message.unwrap_or_default();
    assert!(message.contains("WASMQ_SECRET_KEY_FILE"), "{message}");

    // Nowhere in clear: rows, files, logs.
    let stored = everything_stored(env);
    for canary in [CANARY, CANARY_IN_JSON] {
        assert!(
            !contains(&stored, canary),
            "the canary is stored in clear: {canary}"
        );
        for w in [&w, &w2] {
            assert!(!w.logs().contains(canary), "{}", w.logs());
        }
    }

    // Deleting the secret takes its grants with it.
    env.ok(&["secret", "rm", "api-token"]);
    let shown = env.ok(&["module", "show", "fetch"]);
    assert!(!shown.contains("secret api-token"), "{shown}");
    assert!(shown.contains("http http://"), "{shown}");
}
