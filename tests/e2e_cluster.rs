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
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;
use wasmq::ray::{ClientConfig, JobStatus, RayClient, SubmitRequest, Token};
use wasmq::runtime::{Outcome, RunReport};
use wasmq::store::{AnyStore, AttemptRecord, Store, TaskRecord, TaskState};
use wasmq::worker::envelope::Envelope;

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

    /// SIGTERM, then waits for a clean exit; returns how long it took.
    fn terminate(&mut self, within: Duration) -> Duration {
        let t = Instant::now();
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0);
        self.finish(within);
        t.elapsed()
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
        let rt = common::test_runtime();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("cache")).unwrap();
        let (url, pg) = fresh_database(&rt, backend, dir.path(), "e2e-ray")?;
        let store = common::open_store(&rt, &url, 2);
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
                let jobs: Vec<String> = match self.rt.block_on(self.client.list()) {
                    Ok(jobs) => jobs
                        .iter()
                        .map(|j| {
                            format!(
                                "{:?} {} {:?} {:?}",
                                j.submission_id, j.status, j.error_type, j.message
                            )
                        })
                        .collect(),
                    Err(e) => vec![e.to_string()],
                };
                panic!(
                    "not {what} after {within:?}\nRay jobs:\n{}\nworker logs:\n{}",
                    jobs.join("\n"),
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

    /// Whether `job` ended by a stop: STOPPED, or FAILED because its
    /// supervisor went first (Ray 2.60 reports either after a stop).
    fn stopped(&self, job: &str) -> bool {
        match self.rt.block_on(self.client.job(job)) {
            Ok(j) => {
                j.status == JobStatus::Stopped
                    || (j.status == JobStatus::Failed
                        && j.error_type.as_deref() == Some("JOB_SUPERVISOR_ACTOR_DIED"))
            }
            Err(_) => false,
        }
    }

    /// The Ray jobs that carry `task`'s id in their metadata (a batch's job
    /// lists all its tasks in `wasmq_tasks`).
    fn jobs_of(&self, task: Uuid) -> Vec<String> {
        let jobs = self.rt.block_on(self.client.list()).unwrap();
        let id = task.to_string();
        jobs.into_iter()
            .filter(|j| {
                j.metadata.as_ref().is_some_and(|m| {
                    m.get("wasmq_task_id") == Some(&id)
                        || m.get("wasmq_tasks").is_some_and(|t| t.contains(&id))
                })
            })
            .filter_map(|j| j.submission_id)
            .collect()
    }

    /// The Ray job recorded on `task`, once there is one.
    fn job_of(&self, task: Uuid, w: &[&WorkerProc]) -> String {
        let mut job = None;
        self.wait("given a Ray job", Duration::from_secs(60), w, || {
            job = self.task(task).ray_submission_id;
            job.is_some()
        });
        job.unwrap()
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
    the_shipped_artifact_spares_the_node_a_compile(&ray);
    eprintln!("[{:?}] shipped artifact: ok", t.elapsed());
    subtasks_fan_out_through_ray_jobs(&ray);
    eprintln!("[{:?}] subtasks: ok", t.elapsed());
    granted_http_reaches_the_runner(&ray);
    eprintln!("[{:?}] http grants: ok", t.elapsed());
    cancel_stops_the_ray_job(&ray);
    eprintln!("[{:?}] cancel: ok", t.elapsed());
    batches_share_a_job_and_end_apart(&ray);
    eprintln!("[{:?}] batches: ok", t.elapsed());
    a_crashed_runner_retries_only_unfinished_tasks(&ray);
    eprintln!("[{:?}] runner crash: ok", t.elapsed());
    killed_worker_is_replaced_and_tasks_run_once(&ray);
    eprintln!("[{:?}] kill -9: ok", t.elapsed());
    a_job_under_a_taken_id_is_not_trusted(&ray);
    eprintln!("[{:?}] adopt check: ok", t.elapsed());
    pending_jobs_are_stopped_after_the_deadline(&ray);
    eprintln!("[{:?}] pending deadline: ok", t.elapsed());
    shutdown_is_bounded_and_leaves_no_orphan(&ray);
    eprintln!("[{:?}] shutdown: ok", t.elapsed());
    two_nodes_share_batches_and_a_lost_node_loses_nothing(&ray);
    eprintln!("[{:?}] two nodes: ok", t.elapsed());
    ray_down_requeues_and_tasks_finish_after_restart(&ray);
    eprintln!("[{:?}] Ray restart: ok", t.elapsed());
}

fn outputs_match_local_mode_and_limits_hold(ray: &RayHead) {
    let mut env = Env::new(ray);
    env.push(&["hello", "add", "fib", "spin"]);
    // Above the env-var threshold: shipped as a file.
    let big_name = format!("$HOME ${{NOPE}} {}", "x".repeat(100 * 1024));
    let big_input = format!(r#"{{"name":"{big_name}"}}"#);
    // Ray expands $VAR and ${VAR} in runtime_env values and drops unknown
    // ${VAR}s; none of that may reach the guest. Raw newlines and tabs
    // between the JSON tokens too.
    let tricky_name = "$HOME ${PATH} ${NOPE} $$ $1 $(id) `id` ${HOME:-x} \"dq\" 'sq' \\ \
                       back\\slash\nnewline\ttab \u{e9}\u{1f600} end$";
    let tricky = format!(
        "{{\n\t\"name\" :\r\n {} }}",
        serde_json::to_string(tricky_name).unwrap()
    );
    let escaped_dollar = r#"{"name":"\u0024HOME \\$PATH"}"#.to_string();
    let cases = [
        ("hello", r#"{"name":"Ray"}"#.to_string()),
        ("add", r#"{"a":2,"b":40}"#.to_string()),
        ("fib", r#"{"n":90}"#.to_string()),
        ("hello", big_input),
        ("hello", tricky),
        ("hello", escaped_dollar),
    ];
    // Ray sets up a new package once per job that needs it, over the same
    // directory: concurrent first jobs of one package can find `./wasmq`
    // rewritten under them ("Permission denied"). The `$` cases share the
    // hello package, so they run once the first batch has set it up.
    let first_batch = 4;
    let mut ids: Vec<Uuid> = cases[..first_batch]
        .iter()
        .map(|(m, input)| env.enqueue(m, input, &[]))
        .collect();
    let spin = env.enqueue("spin", "{}", &["--fuel", "200000000"]);
    let mut w = env.worker(&["--exit-when-idle", "--ray-keep-jobs"], &[]);
    w.finish(Duration::from_secs(180));
    ids.extend(
        cases[first_batch..]
            .iter()
            .map(|(m, input)| env.enqueue(m, input, &[])),
    );
    // A queue name is user text that travels to the node as well.
    let dollar_queue = "q$HOME${NOPE}";
    let queued = env.enqueue("hello", r#"{"name":"q"}"#, &["--queue", dollar_queue]);
    let mut w = env.worker(
        &[
            "--exit-when-idle",
            "--ray-keep-jobs",
            "--queues",
            &format!("default,{dollar_queue}"),
        ],
        &[],
    );
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
        // Tasks of one module and queue share a job, named after its first.
        let job = t.ray_submission_id.clone().unwrap_or_default();
        assert!(
            job.starts_with("wasmq-") && job.ends_with("-1"),
            "{module} {input:.200}: {:#?}\n{}",
            env.attempts(*id),
            w.log()
        );
        assert_eq!(env.jobs_of(*id), std::slice::from_ref(&job));
        assert_eq!(
            env.attempts(*id)[0].ray_submission_id.as_deref(),
            Some(job.as_str())
        );
        assert_eq!(env.job_status(&job), Some(JobStatus::Succeeded));
    }
    // The three `hello` tasks of the second worker went in one job: inputs
    // with `$` and one over the environment's limit (the batch travels as a
    // file then).
    let second: BTreeSet<String> = ids[first_batch..]
        .iter()
        .map(|id| env.task(*id).ray_submission_id.unwrap())
        .collect();
    assert_eq!(second.len(), 1, "{second:?}");
    let tricky = env.task(ids[4]).result.unwrap_or_default();
    for kept in [
        "$HOME",
        "${PATH}",
        "${NOPE}",
        "$$",
        "`id`",
        "end$",
        "\u{1f600}",
    ] {
        assert!(tricky.contains(kept), "{kept} in {tricky}");
    }
    let q = env.task(queued);
    assert_eq!(q.state, TaskState::Succeeded, "{q:#?}");
    let job = env
        .rt
        .block_on(env.client.job(&format!("wasmq-{queued}-1")))
        .unwrap();
    assert_eq!(job.metadata.unwrap()["wasmq_queue"], dollar_queue);

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
        assert!(listed.contains(&id.to_string()), "{id} in:\n{listed}");
    }
    assert!(listed.contains("'wasmq_module': 'fib@1'"), "{listed}");
}

/// A parent and its children each run as Ray jobs: the runner gets the
/// parent's recorded children with its job (in the environment, or as a
/// file in the package when the ledger is large), and its envelope brings
/// the spawns and the wait back.
fn subtasks_fan_out_through_ray_jobs(ray: &RayHead) {
    let mut env = Env::new(ray);
    env.push(&["add", "fanout", "words", "wordcount"]);
    let fan = env.enqueue("fanout", r#"{"count": 3}"#, &[]);
    // Three chunks of 4,000 distinct words: each child's counts are about
    // 40 KB, so the parent's replay gets a ledger over the 64 KiB that the
    // environment carries, and the parent's input too.
    let words: Vec<String> = (0..12_000).map(|i| format!("a{i}")).collect();
    let text = words
        .chunks(4_000)
        .map(|c| c.join(" "))
        .collect::<Vec<_>>()
        .join("\n");
    let wc = env.enqueue(
        "wordcount",
        &serde_json::json!({ "text": text, "lines_per_chunk": 1 }).to_string(),
        &[],
    );
    let mut w = env.worker(&["--exit-when-idle"], &[]);
    w.finish(Duration::from_secs(300));

    let t = env.task(fan);
    assert_eq!(t.state, TaskState::Succeeded, "{t:#?}\n{}", w.log());
    assert_eq!(t.result.as_deref(), Some(r#"{"children":3,"sum":6}"#));
    assert_eq!((t.attempt, t.free_runs, t.children), (2, 1, 3));
    let runs = env.attempts(fan);
    assert_eq!(runs[0].outcome_name(), Some("waiting"));
    assert!(
        runs.iter().all(|a| a.ray_submission_id.is_some()),
        "{runs:#?}"
    );

    let t = env.task(wc);
    assert_eq!(t.state, TaskState::Succeeded, "{t:#?}\n{}", w.log());
    let out: serde_json::Value = serde_json::from_str(t.result.as_deref().unwrap()).unwrap();
    let mut sorted = words.clone();
    sorted.sort();
    let top: Vec<serde_json::Value> = sorted[..10]
        .iter()
        .map(|w| serde_json::json!([w, 1]))
        .collect();
    assert_eq!(
        out,
        serde_json::json!({"chunks": 3, "words": 12_000, "distinct": 12_000, "top": top})
    );
}

/// A module's HTTP grants, its secrets (sealed) and the worker's extra CA
/// travel with its Ray job: the granted HTTPS call works from the runner
/// with the secret as its bearer token, an ungranted host gets no
/// connection, and no secret value is in what `ray job list` shows.
fn granted_http_reaches_the_runner(ray: &RayHead) {
    use common::httpd::{Reply, Server};
    let routes = |path: &str| match path {
        "/hello" => Reply::ok("hello world"),
        "/slow" => {
            // Long enough for `ray job list` to see the job running (the
            // worker deletes a job once it has its result).
            std::thread::sleep(Duration::from_secs(8));
            Reply::ok("hello world")
        }
        _ => Reply::redirect("/hello"),
    };
    let mut env = Env::new(ray);
    env.push(&["fetch"]);
    let (s, ca) = Server::https(routes);
    let other = Server::http(routes);
    let ca_file = env.dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    const CANARY: &str = "canary-ray-5be11e";
    let key = env.dir.path().join("secret.key");
    let key_path = key.to_str().unwrap().to_string();
    env.ok(&["secret", "new-key", &key_path]);
    let mut set = env.cmd(&["secret", "set", "api-token", "--from-file", "/dev/stdin"]);
    set.env("WASMQ_SECRET_KEY_FILE", &key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = set.spawn().unwrap();
    {
        use std::io::Write;
        write!(child.stdin.take().unwrap(), "{CANARY}").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    env.ok(&[
        "module",
        "grant",
        "fetch",
        "--allow-http",
        &s.url("https", ""),
        "--secret",
        "api-token",
    ]);
    let input = |url: String| {
        serde_json::json!({ "url": url, "bearer_secret": "api-token", "leak_token": true })
            .to_string()
    };
    let granted = env.enqueue("fetch", &input(s.url("https", "/slow")), &[]);
    // The ungranted URL comes from a config value: the refusal (rather than
    // "not set") shows that config values reach the runner too.
    env.ok(&[
        "module",
        "config",
        "fetch",
        &format!("other.url={}", other.url("http", "/hello")),
    ]);
    let refused = env.enqueue("fetch", r#"{"url_config": "other.url"}"#, &[]);
    let mut w = env.worker(
        &[
            "--exit-when-idle",
            "--http-ca-file",
            ca_file.to_str().unwrap(),
        ],
        &[("WASMQ_SECRET_KEY_FILE", &key_path)],
    );
    // While the granted job runs, Ray's own listing shows its environment:
    // the secrets sealed, never in clear.
    let deadline = Instant::now() + Duration::from_secs(60);
    let jobs = loop {
        let jobs = ray.job_list();
        if jobs.contains("WASMQ_EXEC_SECRETS_B64") {
            break jobs;
        }
        assert!(
            Instant::now() < deadline,
            "no running job with sealed secrets in `ray job list`: {jobs}\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(!jobs.contains(CANARY), "a secret value in `ray job list`");
    assert!(jobs.contains("WASMQ_SECRET_KEY_FILE"), "{jobs}");
    w.finish(Duration::from_secs(120));

    let t = env.task(granted);
    assert_eq!(t.state, TaskState::Succeeded, "{t:#?}\n{}", w.log());
    let out: serde_json::Value = serde_json::from_str(t.result.as_deref().unwrap()).unwrap();
    assert_eq!(
        (out["status"].as_u64(), out["bytes"].as_u64()),
        (Some(200), Some(11))
    );
    assert_eq!(out["leaked"], "[redacted:api-token]", "{out}");
    assert!(
        s.heads()
            .iter()
            .any(|h| h.to_ascii_lowercase().contains(&format!("bearer {CANARY}"))),
        "the server got the token"
    );
    assert!(!w.log().contains(CANARY));
    let t = env.task(refused);
    assert_eq!(t.state, TaskState::Failed, "{t:#?}");
    let message = t.error_message.unwrap_or_default();
    assert!(message.contains("is not granted to this run"), "{message}");
    assert_eq!((s.accepted(), other.accepted()), (1, 0));
    assert!(
        env.attempts(granted)
            .iter()
            .all(|a| a.ray_submission_id.is_some()),
        "ran as a Ray job"
    );
}

/// On PostgreSQL, where the worker learns of the cancel through NOTIFY.
fn cancel_stops_the_ray_job(ray: &RayHead) {
    let Some(mut env) = Env::postgres(ray) else {
        return;
    };
    env.push(&["sleepy"]);
    // The package is set up on the node by one job first: two jobs that set
    // up a package new to the node at the same moment can stall in Ray's
    // runtime-env agent (a Ray race; see "Left alone (a Ray race)" in the
    // README's cluster section).
    let warm = env.enqueue("sleepy", r#"{"ms":10}"#, &[]);
    let w = env.worker(&["--ray-keep-jobs", "--ray-poll-interval", "100ms"], &[]);
    env.wait_state(
        &[warm],
        TaskState::Succeeded,
        Duration::from_secs(120),
        &[&w],
    );
    let id = env.enqueue("sleepy", r#"{"ms":60000}"#, &["--timeout", "120s"]);
    let done = env.enqueue("sleepy", r#"{"ms":10}"#, &[]);
    let job = env.job_of(id, &[&w]);
    env.wait("running on Ray", Duration::from_secs(60), &[&w], || {
        env.job_status(&job) == Some(JobStatus::Running)
    });
    env.ok(&["task", "cancel", &id.to_string()]);
    env.wait_state(&[id], TaskState::Cancelled, Duration::from_secs(30), &[&w]);
    env.wait("job stopped", Duration::from_secs(30), &[&w], || {
        env.stopped(&job)
    });
    assert_eq!(env.attempts(id)[0].outcome_name(), Some("cancelled"));
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

/// Tasks of one module claimed together run in one Ray job, each under its
/// own limits, and each ends when its own run does: a short task's result
/// does not wait for its batch mates. Cancelling one ends it at once while
/// the job runs on for the others, and the job is stopped once no task
/// wants what it still runs.
fn batches_share_a_job_and_end_apart(ray: &RayHead) {
    let mut env = Env::new(ray);
    env.push(&["sleepy"]);
    let fast: Vec<Uuid> = (0..3)
        .map(|_| env.enqueue("sleepy", r#"{"ms":10}"#, &[]))
        .collect();
    let limited = env.enqueue("sleepy", r#"{"ms":30000}"#, &["--timeout", "1s"]);
    let slow = env.enqueue("sleepy", r#"{"ms":25000}"#, &["--timeout", "60s"]);
    let doomed = env.enqueue("sleepy", r#"{"ms":60000}"#, &["--timeout", "120s"]);
    let mut w = env.worker(
        &["--exit-when-idle", "--ray-keep-jobs"],
        &[("WASMQ_LOG", "wasmq=debug")],
    );
    let job = env.job_of(fast[0], &[&w]);
    for id in fast.iter().chain([&limited, &slow, &doomed]) {
        assert_eq!(env.job_of(*id, &[&w]), job, "one job for the batch");
    }
    env.wait_state(&fast, TaskState::Succeeded, Duration::from_secs(90), &[&w]);
    assert_eq!(
        env.job_status(&job),
        Some(JobStatus::Running),
        "the job still runs the slow tasks"
    );
    env.ok(&["task", "cancel", &doomed.to_string()]);
    env.wait_state(
        &[doomed],
        TaskState::Cancelled,
        Duration::from_secs(10),
        &[&w],
    );
    let message = env.attempts(doomed)[0]
        .error_message
        .clone()
        .unwrap_or_default();
    assert!(message.contains("runs on for the other tasks"), "{message}");
    assert_eq!(env.job_status(&job), Some(JobStatus::Running));
    // Its own limit, whatever its batch mates do (a timeout is retried, in
    // jobs of its own).
    env.wait_state(
        &[limited],
        TaskState::Failed,
        Duration::from_secs(60),
        &[&w],
    );
    assert_eq!(env.task(limited).error_kind.as_deref(), Some("timeout"));
    w.finish(Duration::from_secs(120));
    let t = env.task(slow);
    assert_eq!(t.state, TaskState::Succeeded, "{t:#?}\n{}", w.log());
    // The doomed run was still going when the slow one ended.
    env.wait("job stopped", Duration::from_secs(30), &[&w], || {
        env.stopped(&job)
    });
    let slow_end = t.finished_at.unwrap();
    for id in &fast {
        let t = env.task(*id);
        assert!(
            t.finished_at.unwrap() + chrono::Duration::seconds(10) < slow_end,
            "a fast task waited for its batch: {t:#?}\n{}",
            w.log()
        );
        assert_eq!(env.attempts(*id).len(), 1);
    }
}

/// A runner killed in the middle of its batch: the tasks whose envelopes it
/// had printed keep their results, the others are retried in a new job.
fn a_crashed_runner_retries_only_unfinished_tasks(ray: &RayHead) {
    let mut env = Env::new(ray);
    env.push(&["sleepy"]);
    let fast: Vec<Uuid> = (0..2)
        .map(|_| env.enqueue("sleepy", r#"{"ms":10}"#, &[]))
        .collect();
    let slow: Vec<Uuid> = (0..2)
        .map(|_| env.enqueue("sleepy", r#"{"ms":20000}"#, &["--timeout", "60s"]))
        .collect();
    let mut w = env.worker(
        &[
            "--exit-when-idle",
            "--ray-keep-jobs",
            "--backoff-base",
            "100ms",
        ],
        &[],
    );
    let job = env.job_of(fast[0], &[&w]);
    env.wait_state(&fast, TaskState::Succeeded, Duration::from_secs(90), &[&w]);
    let killed = kill_runner_of(&job);
    assert!(killed > 0, "no runner process of {job} found");
    w.finish(Duration::from_secs(180));
    for id in &fast {
        assert_eq!(env.attempts(*id).len(), 1, "{:#?}", env.attempts(*id));
    }
    for id in &slow {
        let t = env.task(*id);
        assert_eq!(t.state, TaskState::Succeeded, "{t:#?}\n{}", w.log());
        let attempts = env.attempts(*id);
        let outcomes: Vec<_> = attempts.iter().map(|a| a.outcome_name()).collect();
        assert_eq!(
            outcomes,
            [Some("host-error"), Some("success")],
            "{attempts:#?}"
        );
        let message = attempts[0].error_message.clone().unwrap_or_default();
        assert!(
            message.contains("crashed before this task's run ended"),
            "{message}"
        );
        assert_ne!(attempts[1].ray_submission_id.as_deref(), Some(job.as_str()));
    }
}

/// The package carries the module precompiled for the runner's engine:
/// on a node whose cache is empty, the runner loads it from there (the
/// envelope says `disk`) instead of compiling (`compiled`), and leaves it
/// in the node's cache for later jobs.
fn the_shipped_artifact_spares_the_node_a_compile(ray: &RayHead) {
    let cache = ray.node_cache().join("wasmq");
    let _ = std::fs::remove_dir_all(&cache);
    let mut env = Env::new(ray);
    env.push(&["hello"]);
    let id = env.enqueue("hello", r#"{"name":"artifact"}"#, &[]);
    let mut w = env.worker(&["--exit-when-idle", "--ray-keep-jobs"], &[]);
    w.finish(Duration::from_secs(120));
    let t = env.task(id);
    assert_eq!(t.state, TaskState::Succeeded, "{t:#?}\n{}", w.log());
    let job = t.ray_submission_id.unwrap();
    let logs = env.rt.block_on(env.client.logs(&job)).unwrap();
    let envelopes = Envelope::all_in(&logs);
    let envelope = &envelopes[&id.to_string()];
    assert_eq!(envelope.cache, "disk", "the node compiled:\n{logs}");
    let seeded = walk_files(&cache);
    assert!(!seeded.is_empty(), "nothing left in {}", cache.display());
}

/// Every file under `dir`, recursively.
fn walk_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files.extend(walk_files(&p));
        } else {
            files.push(p);
        }
    }
    files
}

/// A second node joins the cluster (loopback, ports of its own, the head's
/// token). Jobs that ask for 3 CPUs fit one per node, so two batches run
/// on both nodes at once: every attempt names its job's node, and the
/// results are local mode's. Then the second node is lost (its raylet and
/// every process under it killed) while its batch runs: the task it had
/// finished keeps its one attempt, the unfinished ones are retried on the
/// head and succeed, and nothing is lost.
fn two_nodes_share_batches_and_a_lost_node_loses_nothing(ray: &RayHead) {
    let node = ray.add_node(4);
    let second = node.id();
    let until = Instant::now() + Duration::from_secs(60);
    while !ray.node_alive(&second) {
        assert!(Instant::now() < until, "node {second} never listed ALIVE");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut env = Env::new(ray);
    env.push(&["sleepy"]);
    let flags = [
        "--exit-when-idle",
        "--ray-batch",
        "3",
        "--ray-num-cpus",
        "3",
        "--backoff-base",
        "100ms",
    ];

    let input = r#"{"ms":3000}"#;
    let ids: Vec<Uuid> = (0..6).map(|_| env.enqueue("sleepy", input, &[])).collect();
    let mut w = env.worker(&flags, &[]);
    w.finish(Duration::from_secs(180));
    let expected = local_output(&env, "sleepy", input);
    let mut node_of_job: BTreeMap<String, String> = BTreeMap::new();
    for id in &ids {
        let t = env.task(*id);
        assert_eq!(t.state, TaskState::Succeeded, "{t:#?}\n{}", w.log());
        assert_eq!(t.result.as_deref(), Some(expected.as_str()));
        let a = &env.attempts(*id)[0];
        let (job, node) = (a.ray_submission_id.clone(), a.ray_node_id.clone());
        let (Some(job), Some(node)) = (job, node) else {
            panic!("the attempt names no job or node: {a:#?}");
        };
        assert_eq!(
            node_of_job.entry(job).or_insert(node.clone()),
            &node,
            "one node per job"
        );
    }
    let nodes: BTreeSet<&String> = node_of_job.values().collect();
    assert_eq!(nodes.len(), 2, "both nodes ran a batch: {node_of_job:?}");
    assert!(nodes.contains(&second), "{node_of_job:?} lacks {second}");
    let on_second = ids
        .iter()
        .find(|id| env.attempts(**id)[0].ray_node_id.as_deref() == Some(second.as_str()))
        .unwrap();
    let shown = env.ok(&["task", "show", &on_second.to_string()]);
    assert!(shown.contains(&format!("on node {second}")), "{shown}");

    // Each batch: one short task, two long ones.
    let ids: Vec<(Uuid, bool)> = (0..6)
        .map(|i| {
            let short = i % 3 == 0;
            let input = if short {
                r#"{"ms":500}"#
            } else {
                r#"{"ms":30000}"#
            };
            (env.enqueue("sleepy", input, &["--timeout", "120s"]), short)
        })
        .collect();
    let mut w = env.worker(&flags, &[]);
    // The batch on the second node, once its short task has ended.
    let mut lost_batch: Vec<Uuid> = Vec::new();
    env.wait(
        "a batch on the second node half done",
        Duration::from_secs(120),
        &[&w],
        || {
            let Some(job) = ids.iter().find_map(|(id, short)| {
                let a = env.attempts(*id);
                let first = a.first()?;
                (*short
                    && first.outcome_name() == Some("success")
                    && first.ray_node_id.as_deref() == Some(second.as_str()))
                .then(|| first.ray_submission_id.clone())
                .flatten()
            }) else {
                return false;
            };
            lost_batch = ids
                .iter()
                .filter(|(id, _)| {
                    env.attempts(*id)
                        .first()
                        .is_some_and(|a| a.ray_submission_id.as_deref() == Some(job.as_str()))
                })
                .map(|(id, _)| *id)
                .collect();
            true
        },
    );
    assert_eq!(lost_batch.len(), 3, "a batch is 3 tasks");
    node.lose();
    w.finish(Duration::from_secs(300));
    for (id, short) in &ids {
        let t = env.task(*id);
        assert_eq!(t.state, TaskState::Succeeded, "{t:#?}\n{}", w.log());
        let attempts = env.attempts(*id);
        let outcomes: Vec<_> = attempts.iter().map(|a| a.outcome_name()).collect();
        if !lost_batch.contains(id) || *short {
            assert_eq!(outcomes, [Some("success")], "{attempts:#?}");
            continue;
        }
        // Unfinished when its node was lost: retried once, elsewhere.
        assert_eq!(
            outcomes,
            [Some("host-error"), Some("success")],
            "{attempts:#?}"
        );
        assert_eq!(attempts[0].ray_node_id.as_deref(), Some(second.as_str()));
        assert!(
            attempts[1]
                .ray_node_id
                .as_deref()
                .is_some_and(|n| n != second),
            "{attempts:#?}"
        );
    }
}

/// SIGKILLs the runner process of Ray job `job`; how many were killed.
fn kill_runner_of(job: &str) -> usize {
    let marker = format!("WASMQ_EXEC_JOB={job}");
    let mut killed = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        // The runner itself: not Ray's supervisor, which shares the
        // job's environment.
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let runner = args.first().is_some_and(|a| a.ends_with(b"wasmq"))
            && args.get(1) == Some(&&b"exec"[..]);
        if runner
            && environ
                .split(|b| *b == 0)
                .any(|var| var == marker.as_bytes())
            && unsafe { libc::kill(pid, libc::SIGKILL) } == 0
        {
            killed += 1;
        }
    }
    killed
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
    let jobs: Vec<String> = ids.iter().map(|id| env.job_of(*id, &[&first])).collect();
    env.wait("submitted", Duration::from_secs(60), &[&first], || {
        jobs.iter().all(|job| env.job_status(job).is_some())
    });
    first.kill9();

    let mut second = env.worker(&[&args[..], &["--ray-keep-jobs"]].concat(), &fast);
    second.finish(Duration::from_secs(120));
    for (id, first_job) in ids.iter().zip(&jobs) {
        let t = env.task(*id);
        assert_eq!(t.state, TaskState::Succeeded, "{t:#?}\n{}", second.log());
        let first_job = first_job.clone();
        // One Ray job per run: the second worker attached to the first job.
        assert_eq!(env.jobs_of(*id), std::slice::from_ref(&first_job));
        let attempts = env.attempts(*id);
        let outcomes: Vec<_> = attempts.iter().map(|a| a.outcome_name()).collect();
        assert_eq!(
            outcomes,
            [Some("lease-expired"), Some("success")],
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
            .contains("attaching to the job of the previous run"),
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
    let jobs: Vec<String> = ids.iter().map(|id| env.job_of(*id, &[&w])).collect();
    env.wait("running on Ray", Duration::from_secs(60), &[&w], || {
        jobs.iter()
            .all(|job| env.job_status(job) == Some(JobStatus::Running))
    });
    ray.down();
    env.wait_state(&ids, TaskState::Queued, Duration::from_secs(60), &[&w]);
    for id in &ids {
        let t = env.task(*id);
        let err = t.error_message.clone().unwrap_or_default();
        assert!(err.contains("unavailable"), "{t:#?}");
        // Each run while Ray is down is free: none spent an attempt.
        assert!(
            t.free_runs >= 1 && t.attempt == t.free_runs,
            "free runs: no attempt was spent: {t:#?}"
        );
    }
    ray.up();
    w.finish(Duration::from_secs(180));
    for id in &ids {
        let t = env.task(*id);
        assert_eq!(t.state, TaskState::Succeeded, "{t:#?}");
        let attempts = env.attempts(*id);
        assert_eq!(attempts.last().unwrap().outcome_name(), Some("success"));
        assert!(
            attempts
                .iter()
                .any(|a| a.outcome_name() == Some("host-error")
                    && a.error_message
                        .as_deref()
                        .unwrap_or("")
                        .contains("unavailable")),
            "{attempts:#?}"
        );
    }
}

/// A job that takes the submission id the worker will use, with another
/// module's sha256 in its metadata and a forged success envelope in its
/// logs: the worker must not attach to it nor believe it.
fn a_job_under_a_taken_id_is_not_trusted(ray: &RayHead) {
    let mut env = Env::new(ray);
    env.push(&["hello"]);
    let input = r#"{"name":"adopt"}"#;
    let id = env.enqueue("hello", input, &[]);
    let taken = format!("wasmq-{id}-1");
    let mut forged = RunReport::not_run(Outcome::Success, "00".repeat(32));
    forged.output = Some(r#"{"greeting":"forged"}"#.into());
    let line = Envelope::from_report(&forged, 1).to_line();
    let req = SubmitRequest {
        entrypoint: format!("echo '{line}'"),
        submission_id: Some(taken.clone()),
        metadata: BTreeMap::from([
            ("wasmq_task_id".to_string(), id.to_string()),
            ("wasmq_attempt".to_string(), "1".to_string()),
            ("wasmq_module_sha256".to_string(), "00".repeat(32)),
        ]),
        ..Default::default()
    };
    env.rt.block_on(env.client.submit(&req)).unwrap();
    env.wait("forged job done", Duration::from_secs(60), &[], || {
        env.job_status(&taken) == Some(JobStatus::Succeeded)
    });

    let mut w = env.worker(&["--exit-when-idle", "--backoff-base", "100ms"], &[]);
    w.finish(Duration::from_secs(120));
    let t = env.task(id);
    assert_eq!(t.state, TaskState::Succeeded, "{t:#?}\n{}", w.log());
    assert_eq!(
        t.result.as_deref(),
        Some(local_output(&env, "hello", input).as_str())
    );
    let attempts = env.attempts(id);
    assert_eq!(attempts.len(), 2, "{attempts:#?}");
    let first = &attempts[0];
    assert_eq!(first.outcome_name(), Some("host-error"), "{first:#?}");
    let msg = first.error_message.as_deref().unwrap_or("");
    assert!(
        msg.contains("not this attempt's job") && msg.contains("wasmq_module_sha256"),
        "{msg}"
    );
    assert_eq!(
        attempts[1].ray_submission_id.as_deref(),
        Some(format!("wasmq-{id}-2").as_str())
    );
    // Not ours: left as it was, neither stopped nor deleted.
    assert_eq!(env.job_status(&taken), Some(JobStatus::Succeeded));
}

/// A job asking for a resource no node has stays PENDING: the worker stops
/// it at the deadline and the attempt fails as a host error.
fn pending_jobs_are_stopped_after_the_deadline(ray: &RayHead) {
    let mut env = Env::new(ray);
    env.push(&["hello"]);
    let id = env.enqueue("hello", r#"{"name":"never"}"#, &["--max-attempts", "1"]);
    let mut w = env.worker(
        &[
            "--exit-when-idle",
            "--ray-keep-jobs",
            "--ray-resource",
            "wasmq_no_such_resource=1",
        ],
        &[("WASMQ_RAY_PENDING_TIMEOUT", "3s")],
    );
    w.finish(Duration::from_secs(90));
    let t = env.task(id);
    assert_eq!(t.state, TaskState::Failed, "{t:#?}\n{}", w.log());
    assert_eq!(t.error_kind.as_deref(), Some("host-error"), "{t:#?}");
    let msg = t.error_message.clone().unwrap_or_default();
    assert!(
        msg.contains("still PENDING after the pending timeout of 3s")
            && msg.contains("--ray-pending-timeout")
            && msg.contains("its stop was requested"),
        "{msg}"
    );
    let job = format!("wasmq-{id}-1");
    eprintln!("pending job after the stop: {:?}", env.job_status(&job));
}

/// After the grace period the worker exits within a bounded time even while
/// Ray does not answer; the job keeps running for the next worker, unless
/// the task was cancelled, in which case its job is stopped (by the worker
/// at shutdown, or by the next worker's sweep once the task ended queued).
fn shutdown_is_bounded_and_leaves_no_orphan(ray: &RayHead) {
    let mut env = Env::new(ray);
    env.push(&["sleepy"]);
    let grace = Duration::from_secs(1);
    let bound = grace + Duration::from_secs(15);

    // 1. Ray hangs (its dashboard frozen) when the grace period ends.
    let id = env.enqueue("sleepy", r#"{"ms":8000}"#, &[]);
    let job = format!("wasmq-{id}-1");
    let mut w = env.worker(&["--grace", "1s", "--ray-poll-interval", "100ms"], &[]);
    env.wait("running on Ray", Duration::from_secs(60), &[&w], || {
        env.job_status(&job) == Some(JobStatus::Running)
    });
    let took = {
        let _frozen = ray.freeze_dashboard();
        w.terminate(bound)
    };
    eprintln!("worker exited {took:?} after SIGTERM with Ray frozen");
    let t = env.task(id);
    assert_eq!(t.state, TaskState::Queued, "{t:#?}\n{}", w.log());
    assert_eq!(
        (t.attempt, t.free_runs),
        (1, 1),
        "released as a free run, without spending the attempt: {t:#?}"
    );
    assert_eq!(env.attempts(id)[0].outcome_name(), Some("shutdown"));
    let mut next = env.worker(&["--exit-when-idle", "--ray-keep-jobs"], &[]);
    next.finish(Duration::from_secs(120));
    let t = env.task(id);
    assert_eq!(t.state, TaskState::Succeeded, "{t:#?}\n{}", next.log());
    // The next run (attempt 2) adopted the released run's job: one job.
    assert_eq!(t.attempt, 2, "{t:#?}");
    assert_eq!(env.jobs_of(id), std::slice::from_ref(&job));
    assert!(
        next.log()
            .contains("attaching to the job of the previous run"),
        "{}",
        next.log()
    );

    // 2. Cancelled just before the shutdown, too late for the worker to
    // hear of it (SQLite: at its next heartbeat, 20 s away with a 60 s
    // lease): released, the task would end cancelled with its job running.
    let id = env.enqueue("sleepy", r#"{"ms":60000}"#, &["--timeout", "120s"]);
    let job = format!("wasmq-{id}-1");
    // Kept once ended: the worker deletes a job it stopped once it has
    // ended, which can be before the check below.
    let mut w = env.worker(&["--grace", "1s", "--lease", "60s", "--ray-keep-jobs"], &[]);
    env.wait("running on Ray", Duration::from_secs(60), &[&w], || {
        env.job_status(&job) == Some(JobStatus::Running)
    });
    env.ok(&["task", "cancel", &id.to_string()]);
    w.terminate(bound);
    let t = env.task(id);
    assert_eq!(t.state, TaskState::Cancelled, "{t:#?}\n{}", w.log());
    env.wait("job stopped", Duration::from_secs(30), &[&w], || {
        env.stopped(&job)
    });

    // 3. Released at shutdown, then cancelled while queued: no worker will
    // claim it, so the next worker's sweep stops its job.
    let id = env.enqueue("sleepy", r#"{"ms":60000}"#, &["--timeout", "120s"]);
    let job = format!("wasmq-{id}-1");
    let mut w = env.worker(&["--grace", "1s"], &[]);
    env.wait("running on Ray", Duration::from_secs(60), &[&w], || {
        env.job_status(&job) == Some(JobStatus::Running)
    });
    w.terminate(bound);
    assert_eq!(env.task(id).state, TaskState::Queued);
    env.ok(&["task", "cancel", &id.to_string()]);
    assert_eq!(env.task(id).state, TaskState::Cancelled);
    assert_eq!(env.job_status(&job), Some(JobStatus::Running));
    let other = env.enqueue("sleepy", r#"{"ms":3000}"#, &[]);
    let mut w = env.worker(&["--exit-when-idle"], &[]);
    env.wait("orphan stopped", Duration::from_secs(60), &[&w], || {
        env.stopped(&job)
    });
    w.finish(Duration::from_secs(60));
    assert_eq!(env.task(other).state, TaskState::Succeeded);
    assert!(
        w.log()
            .contains("stopped a Ray job whose task no worker follows"),
        "{}",
        w.log()
    );
}
