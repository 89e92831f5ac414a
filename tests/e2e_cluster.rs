//! Cluster mode end to end: real `wasmq worker --cluster` processes against
//! a real Ray head (Ray from the project venv, started by the test on
//! loopback with token auth), SQLite as the queue.
//!
//! The scenarios share one Ray head (starting one takes seconds, and a Ray
//! job costs about a second of overhead), so they run one after another in
//! one test; each prints its name first. Without Ray installed the test
//! skips, unless `CI=true`, where it fails.

mod common;

use common::pg::{PgEnv, drop_schema};
use common::ray::RayHead;
use common::{Backend, fresh_database};
use common::{code, example, stderr, stdout, wasmq};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;
use wasmq::ray::{ClientConfig, JobStatus, RayClient, Token};
use wasmq::store::{AnyStore, AttemptRecord, Store, TaskRecord, TaskState};

struct Env<'a> {
    ray: &'a RayHead,
    dir: tempfile::TempDir,
    url: String,
    /// The PostgreSQL schema to drop at the end.
    pg: Option<PgEnv>,
    rt: tokio::runtime::Runtime,
    store: AnyStore,
    client: RayClient,
    workers: usize,
}

/// A `wasmq worker --cluster` child, killed when dropped.
struct WorkerProc {
    child: Child,
    err_path: PathBuf,
}

impl WorkerProc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.err_path).unwrap_or_default()
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    /// Waits for a `--exit-when-idle` worker to exit 0.
    fn finish(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                assert!(s.success(), "worker exited with {s}\n{}", self.log());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "worker still running after {within:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl<'a> Env<'a> {
    /// SQLite in a temp dir.
    fn new(ray: &'a RayHead) -> Env<'a> {
        Self::with_db(ray, Backend::Sqlite).unwrap()
    }

    /// A fresh schema in `WASMQ_TEST_PG_URL` (default: the local server);
    /// `None` when unreachable outside CI.
    fn postgres(ray: &'a RayHead) -> Option<Env<'a>> {
        Self::with_db(ray, Backend::Postgres)
    }

    fn with_db(ray: &'a RayHead, backend: Backend) -> Option<Env<'a>> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("cache")).unwrap();
        let (url, pg) = fresh_database(&rt, backend, dir.path(), "e2e-ray")?;
        let store = rt.block_on(async {
            let s = AnyStore::connect_with(&url, 2).await.unwrap();
            s.migrate().await.unwrap();
            s
        });
        let token = Token::from_file(&ray.token_file).unwrap();
        let client = RayClient::new(&ray.address, Some(token), ClientConfig::default()).unwrap();
        Some(Env {
            ray,
            dir,
            url,
            pg,
            rt,
            store,
            client,
            workers: 0,
        })
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = wasmq(&self.dir.path().join("cache"));
        c.arg("--database-url").arg(&self.url).args(args);
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out: Output = self.cmd(args).output().unwrap();
        assert_eq!(
            code(&out),
            0,
            "wasmq {args:?}: {}\n{}",
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }

    fn push(&self, names: &[&str]) {
        for n in names {
            self.ok(&["module", "push", example(n).to_str().unwrap(), "--name", n]);
        }
    }

    fn enqueue(&self, module: &str, input: &str, extra: &[&str]) -> Uuid {
        let mut args = vec!["task", "enqueue", module, "--input", input];
        args.extend_from_slice(extra);
        Uuid::parse_str(self.ok(&args).trim()).unwrap()
    }

    /// `wasmq worker --cluster …`; the token comes from RAY_AUTH_TOKEN_PATH,
    /// the way Ray's own tools find it.
    fn worker(&mut self, extra: &[&str], env: &[(&str, &str)]) -> WorkerProc {
        self.workers += 1;
        let err_path = self.dir.path().join(format!("worker-{}.err", self.workers));
        let mut c = self.cmd(&["worker", "--cluster", &self.ray.address]);
        c.args(extra)
            .env("RAY_AUTH_TOKEN_PATH", &self.ray.token_file)
            .env_remove("RAY_AUTH_TOKEN")
            .env("WASMQ_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err_path).unwrap());
        for (k, v) in env {
            c.env(k, v);
        }
        WorkerProc {
            child: c.spawn().unwrap(),
            err_path,
        }
    }

    fn task(&self, id: Uuid) -> TaskRecord {
        self.rt.block_on(self.store.get_task(id)).unwrap()
    }

    fn attempts(&self, id: Uuid) -> Vec<AttemptRecord> {
        self.rt.block_on(self.store.list_attempts(id)).unwrap()
    }

    fn wait(&self, what: &str, within: Duration, w: &[&WorkerProc], mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !ok() {
            if Instant::now() > deadline {
                let logs: Vec<String> = w.iter().map(|w| w.log()).collect();
                panic!(
                    "not {what} after {within:?}\nworker logs:\n{}",
                    logs.join("\n---\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_state(&self, ids: &[Uuid], state: TaskState, within: Duration, w: &[&WorkerProc]) {
        self.wait(&format!("{state}"), within, w, || {
            ids.iter().all(|id| self.task(*id).state == state)
        });
    }

    fn job_status(&self, id: &str) -> Option<JobStatus> {
        match self.rt.block_on(self.client.job(id)) {
            Ok(j) => Some(j.status),
            Err(wasmq::ray::RayError::NotFound { .. }) => None,
            Err(e) => panic!("{e}"),
        }
    }

    /// The Ray jobs that carry `task`'s id in their metadata.
    fn jobs_of(&self, task: Uuid) -> Vec<String> {
        let jobs = self.rt.block_on(self.client.list()).unwrap();
        jobs.into_iter()
            .filter(|j| {
                j.metadata
                    .as_ref()
                    .is_some_and(|m| m.get("wasmq_task_id") == Some(&task.to_string()))
            })
            .filter_map(|j| j.submission_id)
            .collect()
    }
}

impl Drop for Env<'_> {
    fn drop(&mut self) {
        let store = self.store.clone();
        let pg = self.pg.take();
        self.rt.block_on(async move {
            store.close().await;
            if let Some(pg) = pg {
                drop_schema(&pg).await;
            }
        });
    }
}

/// `wasmq run` of an example in this process's way: the local-mode output.
fn local_output(env: &Env, module: &str, input: &str) -> String {
    env.ok(&["run", example(module).to_str().unwrap(), "--input", input])
        .trim()
        .to_string()
}

#[test]
fn cluster_mode_against_a_real_ray_head() {
    let Some(ray) = RayHead::start() else { return };
    let t = Instant::now();
    outputs_match_local_mode_and_limits_hold(&ray);
    eprintln!("[{:?}] outputs and limits: ok", t.elapsed());
    cancel_stops_the_ray_job(&ray);
    eprintln!("[{:?}] cancel: ok", t.elapsed());
    killed_worker_is_replaced_and_tasks_run_once(&ray);
    eprintln!("[{:?}] kill -9: ok", t.elapsed());
    ray_down_requeues_and_tasks_finish_after_restart(&ray);
    eprintln!("[{:?}] Ray restart: ok", t.elapsed());
}

fn outputs_match_local_mode_and_limits_hold(ray: &RayHead) {
    let mut env = Env::new(ray);
    env.push(&["hello", "add", "fib", "spin"]);
    let big_name = "x".repeat(100 * 1024); // above the env-var threshold: shipped as a file
    let big_input = format!(r#"{{"name":"{big_name}"}}"#);
    let cases = [
        ("hello", r#"{"name":"Ray"}"#.to_string()),
        ("add", r#"{"a":2,"b":40}"#.to_string()),
        ("fib", r#"{"n":90}"#.to_string()),
        ("hello", big_input),
    ];
    let ids: Vec<Uuid> = cases
        .iter()
        .map(|(m, input)| env.enqueue(m, input, &[]))
        .collect();
    let spin = env.enqueue("spin", "{}", &["--fuel", "200000000"]);
    let mut w = env.worker(&["--exit-when-idle", "--ray-keep-jobs"], &[]);
    w.finish(Duration::from_secs(180));

    for ((module, input), id) in cases.iter().zip(&ids) {
        let t = env.task(*id);
        assert_eq!(
            t.state,
            TaskState::Succeeded,
            "{module}: {t:#?}\n{}",
            w.log()
        );
        let local = local_output(&env, module, input);
        assert_eq!(t.result.as_deref(), Some(local.as_str()), "{module}");
        let job = format!("wasmq-{id}-1");
        assert_eq!(t.ray_submission_id.as_deref(), Some(job.as_str()));
        assert_eq!(
            env.attempts(*id)[0].ray_submission_id.as_deref(),
            Some(job.as_str())
        );
        assert_eq!(env.job_status(&job), Some(JobStatus::Succeeded));
    }
    let s = env.task(spin);
    assert_eq!(s.state, TaskState::Failed, "{s:#?}");
    assert_eq!(s.error_kind.as_deref(), Some("out-of-fuel"), "{s:#?}");
    assert_eq!(env.attempts(spin).len(), 1, "out-of-fuel is not retried");

    // `task show` names the job; Ray's own CLI lists it with wasmq's metadata.
    let shown = env.ok(&["task", "show", &ids[0].to_string()]);
    assert!(
        shown.contains(&format!("ray job   wasmq-{}-1", ids[0])),
        "{shown}"
    );
    let listed = ray.job_list();
    for id in ids.iter().chain([&spin]) {
        assert!(
            listed.contains(&format!("'wasmq_task_id': '{id}'")),
            "{id} in:\n{listed}"
        );
    }
    assert!(listed.contains("'wasmq_module': 'fib@1'"), "{listed}");
}

/// On PostgreSQL, where the worker learns of the cancel through NOTIFY.
fn cancel_stops_the_ray_job(ray: &RayHead) {
    let Some(mut env) = Env::postgres(ray) else {
        return;
    };
    env.push(&["sleepy"]);
    let id = env.enqueue("sleepy", r#"{"ms":60000}"#, &["--timeout", "120s"]);
    let done = env.enqueue("sleepy", r#"{"ms":10}"#, &[]);
    let w = env.worker(&["--ray-keep-jobs", "--ray-poll-interval", "100ms"], &[]);
    let job = format!("wasmq-{id}-1");
    env.wait("running on Ray", Duration::from_secs(60), &[&w], || {
        env.job_status(&job) == Some(JobStatus::Running)
    });
    env.ok(&["task", "cancel", &id.to_string()]);
    env.wait_state(&[id], TaskState::Cancelled, Duration::from_secs(30), &[&w]);
    assert_eq!(env.job_status(&job), Some(JobStatus::Stopped));
    assert_eq!(env.attempts(id)[0].outcome.as_deref(), Some("cancelled"));
    env.wait_state(
        &[done],
        TaskState::Succeeded,
        Duration::from_secs(60),
        &[&w],
    );
    drop(w);

    // Without --ray-keep-jobs, jobs are deleted once read.
    let gone = env.enqueue("sleepy", r#"{"ms":10}"#, &[]);
    let mut w = env.worker(&["--exit-when-idle"], &[]);
    w.finish(Duration::from_secs(60));
    assert_eq!(env.task(gone).state, TaskState::Succeeded);
    assert_eq!(
        env.job_status(&format!("wasmq-{gone}-1")),
        None,
        "job not deleted"
    );
}

fn killed_worker_is_replaced_and_tasks_run_once(ray: &RayHead) {
    let mut env = Env::new(ray);
    env.push(&["sleepy"]);
    let ids: Vec<Uuid> = (0..3)
        .map(|_| env.enqueue("sleepy", r#"{"ms":6000}"#, &[]))
        .collect();
    let fast = [("WASMQ_REAPER_INTERVAL", "500ms")];
    let args = [
        "--lease",
        "2s",
        "--backoff-base",
        "100ms",
        "--exit-when-idle",
    ];
    let mut first = env.worker(&args, &fast);
    env.wait("submitted", Duration::from_secs(60), &[&first], || {
        ids.iter()
            .all(|id| env.job_status(&format!("wasmq-{id}-1")).is_some())
    });
    first.kill9();

    let mut second = env.worker(&[&args[..], &["--ray-keep-jobs"]].concat(), &fast);
    second.finish(Duration::from_secs(120));
    for id in &ids {
        let t = env.task(*id);
        assert_eq!(t.state, TaskState::Succeeded, "{t:#?}\n{}", second.log());
        let first_job = format!("wasmq-{id}-1");
        // One Ray job per task: the second worker attached to the first job.
        assert_eq!(env.jobs_of(*id), std::slice::from_ref(&first_job));
        let attempts = env.attempts(*id);
        let outcomes: Vec<_> = attempts.iter().map(|a| a.outcome.clone()).collect();
        assert_eq!(
            outcomes,
            [Some("lease-expired".into()), Some("success".into())],
            "{attempts:#?}"
        );
        for a in &attempts {
            assert_eq!(
                a.ray_submission_id.as_deref(),
                Some(first_job.as_str()),
                "{a:#?}"
            );
        }
    }
    assert!(
        second
            .log()
            .contains("attaching to the job of the previous attempt"),
        "{}",
        second.log()
    );
}

fn ray_down_requeues_and_tasks_finish_after_restart(ray: &RayHead) {
    let mut env = Env::new(ray);
    env.push(&["sleepy"]);
    let ids: Vec<Uuid> = (0..2)
        .map(|_| env.enqueue("sleepy", r#"{"ms":8000}"#, &[]))
        .collect();
    let mut w = env.worker(&["--exit-when-idle", "--ray-poll-interval", "100ms"], &[]);
    env.wait("running on Ray", Duration::from_secs(60), &[&w], || {
        ids.iter()
            .all(|id| env.job_status(&format!("wasmq-{id}-1")) == Some(JobStatus::Running))
    });
    ray.down();
    env.wait_state(&ids, TaskState::Queued, Duration::from_secs(60), &[&w]);
    for id in &ids {
        let t = env.task(*id);
        let err = t.error_message.clone().unwrap_or_default();
        assert!(err.contains("unavailable"), "{t:#?}");
        assert_eq!(t.attempt, 0, "the attempt was not spent: {t:#?}");
    }
    ray.up();
    w.finish(Duration::from_secs(180));
    for id in &ids {
        let t = env.task(*id);
        assert_eq!(t.state, TaskState::Succeeded, "{t:#?}");
        let attempts = env.attempts(*id);
        assert_eq!(attempts.last().unwrap().outcome.as_deref(), Some("success"));
        assert!(
            attempts
                .iter()
                .any(|a| a.outcome.as_deref() == Some("host-error")
                    && a.error_message
                        .as_deref()
                        .unwrap_or("")
                        .contains("unavailable")),
            "{attempts:#?}"
        );
    }
}
