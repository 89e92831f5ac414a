//! The HTTP API, `/metrics`, JSON logs and the web dashboard end to end: the
//! real `wasmq serve` and `wasmq worker` binaries against a real database.
//!
//! Scenarios run on both backends (`NAME::sqlite`, `NAME::postgres`, as in
//! `e2e_queue`); PostgreSQL variants skip when the server is unreachable,
//! except with `CI=true`, where they fail. Servers listen on port 0 and print
//! the address they got. `promtool` (Debian's `prometheus`) and Chromium with
//! ChromeDriver (`chromium`, `chromium-driver`) are installed by
//! scripts/setup.sh; when missing, their checks fail under `CI=true` and
//! skip otherwise.

mod common;

use common::pg::{PgEnv, drop_schema};
use common::{Backend, example, fresh_database, wasmq};
use reqwest::blocking::{Client as Http, multipart};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The API token of the servers started here; must never reach a log.
const TOKEN: &str = "e2e-secret-token-5f0c2a9d41b7";

struct Env {
    backend: Backend,
    dir: tempfile::TempDir,
    url: String,
    pg: Option<PgEnv>,
    rt: tokio::runtime::Runtime,
    started: usize,
}

impl Env {
    fn new(backend: Backend) -> Option<Env> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("cache")).unwrap();
        let (url, pg) = fresh_database(&rt, backend, dir.path(), "e2e-api")?;
        Some(Env {
            backend,
            dir,
            url,
            pg,
            rt,
            started: 0,
        })
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = wasmq(&self.dir.path().join("cache"));
        c.arg("--database-url").arg(&self.url).args(args);
        c.env_remove("WASMQ_API_TOKEN");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Starts `wasmq ARGS…` in the background, output to files.
    fn spawn(&mut self, args: &[&str], env: &[(&str, &str)]) -> Proc {
        self.started += 1;
        let name = format!("{}-{}", args[0], self.started);
        let out_path = self.dir.path().join(format!("{name}.out"));
        let err_path = self.dir.path().join(format!("{name}.err"));
        let mut c = self.cmd(args);
        c.stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap());
        for (k, v) in env {
            c.env(k, v);
        }
        Proc {
            name,
            child: c.spawn().expect("spawn wasmq"),
            out_path,
            err_path,
        }
    }

    /// `wasmq serve --listen 127.0.0.1:0 ARGS…` with the test token.
    fn serve(&mut self, args: &[&str]) -> Server {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let proc = self.spawn(&all, &[("WASMQ_API_TOKEN", TOKEN), ("WASMQ_LOG", "debug")]);
        let base = proc.wait_line("listening on ", Duration::from_secs(60));
        Server {
            base: base.trim().to_string(),
            proc,
            http: Http::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    /// `wasmq worker --all-queues --metrics-listen 127.0.0.1:0 ARGS…`.
    fn worker(&mut self, args: &[&str], env: &[(&str, &str)]) -> (Proc, String) {
        let mut all = vec![
            "worker",
            "--all-queues",
            "--metrics-listen",
            "127.0.0.1:0",
            "--backoff-base",
            "50ms",
            "--backoff-cap",
            "100ms",
        ];
        all.extend_from_slice(args);
        let p = self.spawn(&all, env);
        let metrics = p.wait_line("metrics on ", Duration::from_secs(60));
        (p, metrics.trim().to_string())
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(pg) = self.pg.take() {
            self.rt.block_on(drop_schema(&pg));
        }
    }
}

/// A child process, killed when dropped.
struct Proc {
    name: String,
    child: Child,
    out_path: PathBuf,
    err_path: PathBuf,
}

impl Proc {
    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out_path).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err_path).unwrap_or_default()
    }

    /// The rest of the first stdout line containing `marker`, once it appears.
    fn wait_line(&self, marker: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.stdout().lines().find(|l| l.contains(marker)) {
                let rest = &l[l.find(marker).unwrap() + marker.len()..];
                return rest.trim_end_matches("/metrics").to_string();
            }
            assert!(
                Instant::now() < deadline,
                "{} printed no {marker:?} within {within:?}\nstdout: {}\nstderr: {}",
                self.name,
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Server {
    base: String,
    proc: Proc,
    http: Http,
}

/// A response: status and body (JSON when it parses, else a string).
#[derive(Debug)]
struct Resp {
    status: u16,
    body: Value,
    headers: reqwest::header::HeaderMap,
}

impl Resp {
    fn kind(&self) -> &str {
        self.body["error"]["kind"].as_str().unwrap_or("")
    }
}

impl Server {
    fn send(&self, r: reqwest::blocking::RequestBuilder) -> Resp {
        let resp = r.send().expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().unwrap();
        Resp {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
            headers,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn get(&self, path: &str) -> Resp {
        self.send(self.http.get(self.url(path)).bearer_auth(TOKEN))
    }

    fn post(&self, path: &str, body: Value) -> Resp {
        self.send(
            self.http
                .post(self.url(path))
                .bearer_auth(TOKEN)
                .json(&body),
        )
    }

    fn delete(&self, path: &str) -> Resp {
        self.send(self.http.delete(self.url(path)).bearer_auth(TOKEN))
    }

    fn upload_raw(&self, name: &str, bytes: Vec<u8>) -> Resp {
        self.send(
            self.http
                .post(self.url(&format!("/api/v1/modules?name={name}")))
                .bearer_auth(TOKEN)
                .header("content-type", "application/wasm")
                .body(bytes),
        )
    }

    fn upload_form(&self, name: &str, bytes: Vec<u8>) -> Resp {
        let form = multipart::Form::new()
            .text("name", name.to_string())
            .part("file", multipart::Part::bytes(bytes).file_name("m.wasm"));
        self.send(
            self.http
                .post(self.url("/api/v1/modules"))
                .bearer_auth(TOKEN)
                .multipart(form),
        )
    }

    fn enqueue(&self, body: Value) -> String {
        let r = self.post("/api/v1/tasks", body);
        assert_eq!(r.status, 201, "{r:?}");
        r.body["id"].as_str().unwrap().to_string()
    }

    /// Polls a task until `pred` holds (30 s).
    fn wait_task(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.get(&format!("/api/v1/tasks/{id}"));
            assert_eq!(r.status, 200, "{r:?}");
            if pred(&r.body) {
                return r.body;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} not {what}: {:#}\nserver stderr: {}",
                r.body,
                self.proc.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_state(&self, id: &str, state: &str) -> Value {
        self.wait_task(id, state, |t| t["state"] == state)
    }
}

fn read(path: PathBuf) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// A tool the test needs: its path, or `None` (skip) outside CI.
fn tool(path: &str, package: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    if p.exists() {
        return Some(p.to_path_buf());
    }
    if ci() {
        panic!("{path} is missing and CI=true: run scripts/setup.sh (Debian package {package})");
    }
    eprintln!(
        "SKIPPED: {path} is missing (Debian package {package}; scripts/setup.sh installs it)"
    );
    None
}

fn run_on(backend: Backend, test: fn(&mut Env)) {
    if let Some(mut env) = Env::new(backend) {
        test(&mut env);
    }
}

on_both_backends!(
    api_auth_modules_tasks_and_errors,
    metrics_pass_promtool,
    dashboard_in_headless_chromium,
    names_refuse_control_characters_and_a_bad_enqueue_fails_alone,
);

// ---- scenarios ------------------------------------------------------------------

/// The whole API surface with auth, the error statuses, and a real worker.
fn api_auth_modules_tasks_and_errors(env: &mut Env) {
    let s = env.serve(&[
        "--log-format",
        "json",
        "--max-module-size",
        "1MiB",
        "--max-body-size",
        "64KiB",
    ]);

    // Auth: none → 401, wrong → 403, another scheme → 401; probes are open.
    let r = s.send(s.http.get(s.url("/api/v1/modules")));
    assert_eq!((r.status, r.kind()), (401, "unauthorized"), "{r:?}");
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    let r = s.send(
        s.http
            .get(s.url("/api/v1/tasks"))
            .bearer_auth("not-the-token"),
    );
    assert_eq!((r.status, r.kind()), (403, "forbidden"), "{r:?}");
    let r = s.send(
        s.http
            .get(s.url("/api/v1/tasks"))
            .basic_auth("u", Some(TOKEN)),
    );
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(s.send(s.http.get(s.url("/metrics"))).status, 401);
    assert_eq!(s.send(s.http.get(s.url("/healthz"))).status, 200);
    let r = s.send(s.http.get(s.url("/readyz")));
    assert_eq!(
        (r.status, &r.body["status"]),
        (200, &json!("ready")),
        "{r:?}"
    );

    // Modules: raw and multipart uploads, idempotent by content.
    let r = s.upload_raw("hello", read(example("hello")));
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(
        (&r.body["version"], &r.body["created"]),
        (&json!("1"), &json!(true))
    );
    let r = s.upload_raw("hello", read(example("hello")));
    assert_eq!(
        (r.status, &r.body["created"]),
        (200, &json!(false)),
        "{r:?}"
    );
    let r = s.upload_form("flaky", read(example("flaky")));
    assert_eq!((r.status, &r.body["name"]), (201, &json!("flaky")), "{r:?}");
    // Bad modules: 400 naming the reason.
    let r = s.upload_raw("junk", b"this is not webassembly".to_vec());
    assert_eq!((r.status, r.kind()), (400, "invalid-module"), "{r:?}");
    assert!(
        r.body["error"]["message"].as_str().unwrap().len() > 20,
        "{r:?}"
    );
    let r = s.upload_form("other", read(example("other_world")));
    assert_eq!((r.status, r.kind()), (400, "invalid-module"), "{r:?}");
    let r = s.upload_raw("", read(example("hello")));
    assert_eq!(r.status, 400, "{r:?}");
    // Over the size limit, raw and multipart: 413.
    let r = s.upload_raw("big", vec![0u8; 2 << 20]);
    assert_eq!((r.status, r.kind()), (413, "too-large"), "{r:?}");
    let r = s.upload_form("big", vec![0u8; 2 << 20]);
    assert_eq!((r.status, r.kind()), (413, "too-large"), "{r:?}");

    let r = s.get("/api/v1/modules");
    let names: Vec<&str> = r.body["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["flaky", "hello"], "{r:?}");
    assert_eq!(s.get("/api/v1/modules/hello@1").body["version"], "1");
    let r = s.get("/api/v1/modules/nope");
    assert_eq!((r.status, r.kind()), (404, "not-found"), "{r:?}");

    // Enqueue: bad input is 400, unknown module 404, too large 413.
    let r = s.post("/api/v1/tasks", json!({"module": "nope"}));
    assert_eq!((r.status, r.kind()), (404, "not-found"), "{r:?}");
    let r = s.post("/api/v1/tasks", json!({"module": "hello", "colour": 1}));
    assert_eq!(r.status, 400, "{r:?}");
    let r = s.post(
        "/api/v1/tasks",
        json!({"module": "hello", "priority": 1000}),
    );
    assert_eq!(r.status, 400, "{r:?}");
    let r = s.send(
        s.http
            .post(s.url("/api/v1/tasks"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body("{\"module\": "),
    );
    assert_eq!(r.status, 400, "{r:?}");
    let r = s.post(
        "/api/v1/tasks",
        json!({"module": "hello", "input": {"name": "x".repeat(100_000)}}),
    );
    assert_eq!((r.status, r.kind()), (413, "too-large"), "{r:?}");

    // Six queued tasks; list them two pages of four, newest first.
    let mut ids: Vec<String> = (0..6)
        .map(|i| s.enqueue(json!({"module": "hello", "input": {"name": format!("t{i}")}})))
        .collect();
    let p1 = s.get("/api/v1/tasks?limit=4");
    assert_eq!(p1.status, 200, "{p1:?}");
    let before = p1.body["next_before"].as_i64().expect("a next page");
    let p2 = s.get(&format!("/api/v1/tasks?limit=4&before={before}"));
    assert!(p2.body["next_before"].is_null(), "{p2:?}");
    let listed: Vec<String> = [&p1, &p2]
        .iter()
        .flat_map(|p| p.body["tasks"].as_array().unwrap().clone())
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    ids.reverse();
    assert_eq!(listed, ids, "pages, newest first");
    let r = s.get("/api/v1/tasks?state=queued&module=hello&queue=default");
    assert_eq!(r.body["tasks"].as_array().unwrap().len(), 6);
    assert_eq!(s.get("/api/v1/tasks?state=bogus").status, 400);
    assert_eq!(s.get("/api/v1/tasks?limit=0").status, 400);

    let t = s.get(&format!("/api/v1/tasks/{}", ids[0]));
    assert_eq!(
        (&t.body["state"], &t.body["input"]),
        (&json!("queued"), &json!({"name": "t5"}))
    );
    let r = s.get("/api/v1/tasks/0191d6a4-0000-7000-8000-000000000000");
    assert_eq!((r.status, r.kind()), (404, "not-found"), "{r:?}");
    assert_eq!(s.get("/api/v1/tasks/not-a-uuid").status, 400);
    let r = s.get("/api/v1/nothing-here");
    assert_eq!((r.status, r.kind()), (404, "no-route"), "{r:?}");

    // Cancel and retry, and their illegal transitions (409).
    let id = &ids[0];
    let r = s.post(&format!("/api/v1/tasks/{id}/cancel"), json!({}));
    assert_eq!(
        (r.status, &r.body["outcome"]),
        (200, &json!("cancelled")),
        "{r:?}"
    );
    let r = s.post(&format!("/api/v1/tasks/{id}/cancel"), json!({}));
    assert_eq!((r.status, r.kind()), (409, "illegal-transition"), "{r:?}");
    let r = s.post(&format!("/api/v1/tasks/{id}/retry"), json!({}));
    assert_eq!(
        (r.status, &r.body["state"]),
        (200, &json!("queued")),
        "{r:?}"
    );
    let r = s.post(&format!("/api/v1/tasks/{id}/retry"), json!({}));
    assert_eq!((r.status, r.kind()), (409, "illegal-transition"), "{r:?}");
    let r = s.delete("/api/v1/modules/hello");
    assert_eq!((r.status, r.kind()), (409, "module-in-use"), "{r:?}");

    // A real worker drains them; a flaky task leaves two attempts with logs.
    let flaky = s.enqueue(json!({"module": "flaky", "input": {"succeed_on_attempt": 2}}));
    let (worker, _) = env.worker(&[], &[]);
    for id in &ids {
        let t = s.wait_state(id, "succeeded");
        assert!(
            t["result"]["greeting"]
                .as_str()
                .unwrap()
                .starts_with("Hello, t"),
            "{t}"
        );
    }
    s.wait_state(&flaky, "succeeded");
    // Listings carry summaries: no input, no result, a preview of the result.
    let r = s.get("/api/v1/tasks?state=succeeded&module=hello&limit=1");
    let first = &r.body["tasks"][0];
    assert!(
        first.get("input").is_none() && first.get("result").is_none(),
        "{r:?}"
    );
    assert!(
        first["result_preview"]
            .as_str()
            .unwrap()
            .contains("Hello, t"),
        "{r:?}"
    );
    let a = s.get(&format!("/api/v1/tasks/{flaky}/attempts"));
    let outcomes: Vec<&str> = a.body["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["task-error", "success"], "{a:?}");
    let l = s.get(&format!("/api/v1/tasks/{flaky}/logs"));
    for (i, attempt) in l.body["attempts"].as_array().unwrap().iter().enumerate() {
        assert!(
            attempt["logs"]
                .as_str()
                .unwrap()
                .contains(&format!("flaky: attempt {}", i + 1)),
            "{l:?}"
        );
    }
    assert_eq!(
        s.get("/api/v1/tasks/00000000-0000-0000-0000-000000000000/logs")
            .status,
        404
    );

    let w = s.get("/api/v1/workers");
    let workers = w.body["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{w:?}");
    assert_eq!(workers[0]["alive"], true);
    assert!(workers[0]["heartbeat_age_seconds"].as_f64().unwrap() < 60.0);
    let q = s.get("/api/v1/queues");
    let default = &q.body["queues"][0];
    assert_eq!(
        (&default["queue"], &default["counts"]["succeeded"]),
        (&json!("default"), &json!(7)),
        "{q:?}"
    );
    assert_eq!(default["counts"]["queued"], 0);

    // A batch is stored whole or not at all; an error names the item.
    let r = s.post(
        "/api/v1/tasks/batch",
        json!({"tasks": [
            {"module": "hello", "input": {"name": "b0"}},
            {"module": "hello", "input": {"name": "b1"}, "priority": 5},
        ]}),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let batch: Vec<String> = r.body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(batch.len(), 2, "{r:?}");
    for (i, id) in batch.iter().enumerate() {
        let t = s.wait_state(id, "succeeded");
        assert_eq!(t["input"], json!({"name": format!("b{i}")}), "{t}");
    }
    let count = |s: &Server| {
        s.get("/api/v1/tasks?limit=10000").body["tasks"]
            .as_array()
            .unwrap()
            .len()
    };
    let stored = count(&s);
    for (body, status, kind, item) in [
        (
            json!({"tasks": [{"module": "hello"}, {"module": "nope"}]}),
            404,
            "not-found",
            "tasks[1]",
        ),
        (
            json!({"tasks": [{"module": "hello"}, {"module": "hello", "priority": 500}]}),
            400,
            "invalid-argument",
            "tasks[1]",
        ),
        (
            json!({"tasks": [{"module": "hello", "fuel": "unlimited"}]}),
            400,
            "above-maximum",
            "tasks[0]",
        ),
        (
            json!({"tasks": [{"module": "hello"}, {"module": "hello", "input": "x", "delay_ms": 1, "run_after": "2030-01-01T00:00:00Z"}]}),
            400,
            "bad-request",
            "tasks[1]",
        ),
        (json!({"tasks": []}), 400, "bad-request", "1..=1000"),
    ] {
        let r = s.post("/api/v1/tasks/batch", body);
        assert_eq!((r.status, r.kind()), (status, kind), "{r:?}");
        assert!(r.body.to_string().contains(item), "{r:?}");
    }
    assert_eq!(count(&s), stored, "a refused batch stored nothing");

    // Fuel is a number of at least 1 or "unlimited", down to the runtime:
    // no 0 that secretly means "no limit".
    let r = s.post("/api/v1/tasks", json!({"module": "hello", "fuel": 0}));
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.to_string().contains("fuel"), "{r:?}");
    // Above the server's maxima (unlimited fuel is not allowed by default).
    for (body, flag) in [
        (
            json!({"module": "hello", "fuel": "unlimited"}),
            "--max-fuel",
        ),
        (
            json!({"module": "hello", "timeout_ms": 7_200_000}),
            "--max-timeout",
        ),
    ] {
        let r = s.post("/api/v1/tasks", body);
        assert_eq!((r.status, r.kind()), (400, "above-maximum"), "{r:?}");
        assert!(r.body.to_string().contains(flag), "{r:?}");
    }
    let big =
        s.enqueue(json!({"module": "hello", "input": {"name": "u"}, "fuel": 1_000_000_000_000u64}));
    let t = s.wait_state(&big, "succeeded");
    assert_eq!(t["limits"]["fuel"], json!(1_000_000_000_000u64), "{t}");
    let starved =
        s.enqueue(json!({"module": "hello", "input": {"name": "s"}, "fuel": 5, "max_attempts": 1}));
    let t = s.wait_state(&starved, "failed");
    assert_eq!(
        (&t["limits"]["fuel"], &t["error_kind"]),
        (&json!(5), &json!("out-of-fuel")),
        "{t}"
    );

    // Every documented operation without path parameters answers.
    let doc = s.get("/api/v1/openapi.json");
    assert_eq!(doc.body["openapi"], "3.1.0");
    for (path, ops) in doc.body["paths"].as_object().unwrap() {
        if ops.get("get").is_some() && !path.contains('{') {
            assert_eq!(s.get(path).status, 200, "GET {path}");
        }
    }
    for p in [
        "/api/v1/tasks/{id}/cancel",
        "/api/v1/modules/{reference}",
        "/api/v1/queues",
    ] {
        assert!(doc.body["paths"][p].is_object(), "{p} undocumented");
    }

    drop(worker);
    let logs = s.proc.stderr();
    assert!(!logs.is_empty());
    assert!(!logs.contains(TOKEN), "the token reached the server's log");
    for line in logs.lines() {
        serde_json::from_str::<Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
    }
}

/// Both `/metrics` documents pass `promtool check metrics` and hold the
/// series the issue asks for, zero-valued ones included.
fn metrics_pass_promtool(env: &mut Env) {
    let Some(promtool) = tool("/usr/bin/promtool", "prometheus") else {
        return;
    };
    let s = env.serve(&[]);
    assert_eq!(s.upload_raw("hello", read(example("hello"))).status, 201);
    assert_eq!(s.upload_raw("flaky", read(example("flaky"))).status, 201);
    let (_worker, metrics_base) = env.worker(&[], &[]);
    let mut ids: Vec<String> = (0..3)
        .map(|i| s.enqueue(json!({"module": "hello", "input": {"name": format!("m{i}")}})))
        .collect();
    ids.push(s.enqueue(json!({"module": "flaky", "input": {"succeed_on_attempt": 2}})));
    for id in &ids {
        s.wait_state(id, "succeeded");
    }

    let api = s.get("/metrics");
    assert_eq!(api.status, 200, "{api:?}");
    assert!(
        api.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let api = api.body.as_str().unwrap().to_string();
    let worker = s
        .http
        .get(format!("{metrics_base}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for (name, text) in [("api", &api), ("worker", &worker)] {
        let mut p = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = p.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool rejects the {name} metrics: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let has = |text: &str, line: &str| {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in\n{text}"
        );
    };
    let has_prefix = |text: &str, prefix: &str| {
        assert!(
            text.lines().any(|l| l.starts_with(prefix)),
            "no {prefix:?} in\n{text}"
        );
    };
    has(&api, r#"wasmq_tasks{queue="default",state="succeeded"} 4"#);
    has(&api, r#"wasmq_tasks{queue="default",state="running"} 0"#);
    has(&api, r#"wasmq_tasks{queue="default",state="cancelled"} 0"#);
    has(
        &api,
        r#"wasmq_queue_oldest_queued_age_seconds{queue="default"} 0.0"#,
    );
    has(
        &api,
        r#"wasmq_http_requests_total{method="POST",route="/api/v1/tasks",status="201"} 4"#,
    );
    has(&api, r#"wasmq_tasks_enqueued_total{queue="default"} 4"#);
    has(&api, "wasmq_workers_alive 1");
    has_prefix(&api, "wasmq_worker_heartbeat_age_seconds{worker=\"");
    has_prefix(
        &api,
        "wasmq_http_request_duration_seconds_bucket{route=\"/api/v1/tasks\",le=\"+Inf\"}",
    );

    has(
        &worker,
        r#"wasmq_tasks_finished_total{outcome="success",module="hello"} 3"#,
    );
    has(
        &worker,
        r#"wasmq_tasks_finished_total{outcome="success",module="flaky"} 1"#,
    );
    has(
        &worker,
        r#"wasmq_tasks_finished_total{outcome="task-error",module="flaky"} 1"#,
    );
    has(
        &worker,
        r#"wasmq_task_run_duration_seconds_count{module="hello"} 3"#,
    );
    has(
        &worker,
        r#"wasmq_task_queue_wait_seconds_count{queue="default"} 4"#,
    );
    has(&worker, r#"wasmq_task_fuel_used_count{module="flaky"} 2"#);
    has_prefix(
        &worker,
        r#"wasmq_task_fuel_used_bucket{module="hello",le="+Inf"} 3"#,
    );
    has(&worker, "wasmq_tasks_in_flight 0");
    has_prefix(&worker, "wasmq_worker_heartbeat_age_seconds{worker=\"");
}

/// The dashboard in headless Chromium: log in, see a task enqueued through
/// the API (with markup in its input and queue that must stay text), cancel
/// it with the button, and see its state change. Saves a screenshot.
fn dashboard_in_headless_chromium(env: &mut Env) {
    let (Some(chromium), Some(driver)) = (
        tool("/usr/bin/chromium", "chromium"),
        tool("/usr/bin/chromedriver", "chromium-driver"),
    ) else {
        return;
    };
    let s = env.serve(&["--ray-dashboard-url", "http://127.0.0.1:8265"]);
    assert_eq!(s.upload_raw("hello", read(example("hello"))).status, 201);
    let xss =
        "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>";
    let queue = "q<i>x</i>";
    let id = s.enqueue(json!({"module": "hello", "queue": queue, "input": {"name": xss}}));

    let wd = WebDriver::start(&driver, &chromium, env.dir.path());
    // Not logged in: the dashboard asks for the token.
    wd.go(&format!("{}/", s.base));
    assert!(wd.current_url().contains("/login"), "{}", wd.current_url());
    wd.type_into("#token", TOKEN);
    wd.click("#login");
    wd.wait_for("h1", |t| t == "Overview");
    let cell = format!(r#"a[data-queue="{queue}"][data-state="queued"]"#);
    assert_eq!(wd.text(&cell), "1");

    wd.go(&format!("{}/tasks", s.base));
    wd.click(&format!(r#"a[data-task="{id}"]"#));
    wd.wait_for("#task-state", |t| t == "queued");
    let (title, injected, shown): (String, u64, String) = {
        let v = wd.script(
            "return [document.title, document.querySelectorAll('main img, main script, main i').length, \
             document.querySelector('pre').textContent]",
        );
        (
            v[0].as_str().unwrap().into(),
            v[1].as_u64().unwrap(),
            v[2].as_str().unwrap().into(),
        )
    };
    assert!(!title.contains("pwned"), "{title}");
    assert_eq!(injected, 0, "user data became markup");
    assert!(
        shown.contains("<img src=x"),
        "the input is shown as text: {shown}"
    );

    wd.click("#cancel");
    wd.wait_for("#task-state", |t| t == "cancelled");
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("dashboard-task-{:?}.png", env.backend).to_lowercase());
    wd.screenshot(&shot);
    println!("dashboard screenshot: {}", shot.display());

    // The API agrees, and the overview moved the task to `cancelled`.
    assert_eq!(
        s.get(&format!("/api/v1/tasks/{id}")).body["state"],
        "cancelled"
    );
    wd.go(&format!("{}/", s.base));
    let cell = format!(r#"a[data-queue="{queue}"][data-state="cancelled"]"#);
    assert_eq!(wd.text(&cell), "1");
    for page in ["/modules", "/workers", "/tasks?state=cancelled"] {
        wd.go(&format!("{}{page}", s.base));
        wd.wait_for("h1", |t| !t.is_empty() && t != "Error");
    }
    wd.screenshot(
        &shot.with_file_name(format!("dashboard-overview-{:?}.png", env.backend).to_lowercase()),
    );
}

/// Queue names, module names and unique keys with control characters (NUL,
/// an escape sequence, a bell) are refused as bad input on both backends,
/// and a refused request among concurrent enqueues (which share one
/// transaction) fails alone.
fn names_refuse_control_characters_and_a_bad_enqueue_fails_alone(env: &mut Env) {
    let s = env.serve(&[]);
    assert_eq!(s.upload_raw("hello", read(example("hello"))).status, 201);
    for body in [
        json!({"module": "hello", "queue": "q\u{0}x"}),
        json!({"module": "hello", "queue": "q\u{1b}[31mred"}),
        json!({"module": "hello", "unique_key": "k\u{0}"}),
        json!({"module": "hello", "unique_key": "k\u{7}"}),
    ] {
        let r = s.post("/api/v1/tasks", body.clone());
        assert_eq!(
            (r.status, r.kind()),
            (400, "invalid-argument"),
            "{body}: {r:?}"
        );
    }
    for name in ["he%00llo", "he%1B%5B2Jllo", "he%0Allo"] {
        let r = s.upload_raw(name, read(example("hello")));
        assert_eq!(
            (r.status, r.kind()),
            (400, "invalid-argument"),
            "{name}: {r:?}"
        );
    }
    let r = s.get("/api/v1/tasks?queue=a%00b");
    assert_eq!(r.status, 400, "{r:?}");
    let r = s.get("/api/v1/modules");
    assert_eq!(r.body["modules"].as_array().unwrap().len(), 1, "{r:?}");

    // Rounds of 16 good enqueues and one bad one, sent at the same moment.
    for round in 0..5 {
        let barrier = std::sync::Barrier::new(17);
        let results: Vec<(bool, Resp)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..17)
                .map(|i| {
                    let (s, barrier) = (&s, &barrier);
                    scope.spawn(move || {
                        let bad = i == 8;
                        let queue = if bad { "bad\u{0}queue" } else { "good" };
                        let body = json!({"module": "hello", "queue": queue,
                            "input": {"name": format!("r{round}-{i}")}});
                        barrier.wait();
                        (bad, s.post("/api/v1/tasks", body))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (bad, r) in results {
            if bad {
                assert_eq!((r.status, r.kind()), (400, "invalid-argument"), "{r:?}");
            } else {
                assert_eq!(r.status, 201, "a good enqueue failed with a bad one: {r:?}");
            }
        }
    }
    let r = s.get("/api/v1/tasks?queue=good&limit=1000");
    assert_eq!(r.body["tasks"].as_array().unwrap().len(), 80, "{r:?}");
}

// ---- plain-process checks (no database server needed) ---------------------------

/// Without a token, `serve` refuses non-loopback addresses and says why; on
/// loopback it starts and warns that it has no authentication.
#[test]
fn serve_refuses_non_loopback_without_token() {
    let mut env = Env::new(Backend::Sqlite).unwrap();
    for addr in ["0.0.0.0:0", "[::]:0"] {
        let out = env.run(&["serve", "--listen", addr]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("refusing to listen") && err.contains("loopback"),
            "{err}"
        );
    }
    let p = env.spawn(&["serve", "--listen", "127.0.0.1:0"], &[]);
    p.wait_line("listening on ", Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.stderr().contains("no API token") {
        assert!(Instant::now() < deadline, "no warning: {}", p.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `--log-format json`: every line about a task carries its id, attempt,
/// module, queue and worker; `task show` prints each attempt's guest logs.
#[test]
fn json_logs_carry_task_fields_and_task_show_prints_logs() {
    let mut env = Env::new(Backend::Sqlite).unwrap();
    let push = env.run(&[
        "module",
        "push",
        example("flaky").to_str().unwrap(),
        "--name",
        "flaky",
    ]);
    assert!(push.status.success(), "{push:?}");
    let out = env.run(&[
        "task",
        "enqueue",
        "flaky",
        "--input",
        r#"{"succeed_on_attempt":3}"#,
    ]);
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut w = env.spawn(
        &[
            "--log-format",
            "json",
            "worker",
            "--exit-when-idle",
            "--backoff-base",
            "20ms",
            "--backoff-cap",
            "50ms",
        ],
        &[("WASMQ_LOG", "debug")],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while w.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "worker did not exit: {}",
            w.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let logs = w.stderr();
    let mut about_task = 0;
    for line in logs.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if !line.contains(&id) {
            continue;
        }
        about_task += 1;
        let span = &v["span"];
        for field in ["task_id", "attempt", "module", "queue", "worker"] {
            assert!(!span[field].is_null(), "no {field} in {line}");
        }
        assert_eq!(span["task_id"], id.as_str());
        assert_eq!(span["module"], "flaky@1");
    }
    assert!(
        about_task >= 3,
        "{about_task} lines about the task:\n{logs}"
    );

    let show = env.run(&["task", "show", &id]);
    let text = String::from_utf8_lossy(&show.stdout);
    for n in 1..=3 {
        assert!(
            text.contains(&format!("flaky: attempt {n}, succeeding on attempt 3")),
            "{text}"
        );
    }
}

// ---- a minimal WebDriver client (ChromeDriver speaks it over HTTP) -------------

struct WebDriver {
    http: Http,
    /// `http://127.0.0.1:PORT/session/ID`.
    base: String,
    driver: Child,
}

impl WebDriver {
    fn start(driver: &Path, chromium: &Path, scratch: &Path) -> WebDriver {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let http = Http::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while http
            .get(format!("{base}/status"))
            .send()
            .map(|r| !r.status().is_success())
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = scratch.join("chromium-profile");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let v: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .unwrap()
            .json()
            .unwrap();
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        WebDriver {
            http,
            base: format!("{base}/session/{session}"),
            driver: child,
        }
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let v: Value = r.send().unwrap().json().unwrap();
        if v["value"]["error"].is_string() {
            panic!("webdriver {path}: {}", v["value"]);
        }
        v["value"].clone()
    }

    fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })));
    }

    fn current_url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .as_str()
            .unwrap()
            .to_string()
    }

    fn find(&self, css: &str) -> Option<String> {
        let mut r = self.http.post(format!("{}/element", self.base));
        r = r.json(&json!({"using": "css selector", "value": css}));
        let v: Value = r.send().unwrap().json().unwrap();
        v["value"]["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .map(str::to_string)
    }

    fn element(&self, css: &str) -> String {
        self.find(css)
            .unwrap_or_else(|| panic!("no element {css} on {}", self.current_url()))
    }

    fn text(&self, css: &str) -> String {
        let e = self.element(css);
        self.call(reqwest::Method::GET, &format!("/element/{e}/text"), None)
            .as_str()
            .unwrap()
            .to_string()
    }

    fn click(&self, css: &str) {
        let e = self.element(css);
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        );
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css);
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        );
    }

    fn script(&self, js: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": js, "args": []})),
        )
    }

    /// Polls until the element exists and its text satisfies `pred` (10 s).
    /// The element's text, or `None` if it is missing or went stale.
    fn try_text(&self, css: &str) -> Option<String> {
        let e = self.find(css)?;
        let url = format!("{}/element/{e}/text", self.base);
        let v: Value = self.http.get(url).send().ok()?.json().ok()?;
        v["value"].as_str().map(str::to_string)
    }

    fn wait_for(&self, css: &str, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Polled while a click's navigation may still be replacing the
            // page: a missing or stale element is "not yet", not a failure.
            if self.try_text(css).is_some_and(|t| pred(&t)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{css} never matched on {}",
                self.current_url()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self, path: &Path) {
        let b64 = self.call(reqwest::Method::GET, "/screenshot", None);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, base64_decode(b64.as_str().unwrap())).unwrap();
    }
}

impl Drop for WebDriver {
    fn drop(&mut self) {
        let _ = self.http.delete(&self.base).send();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = s
        .bytes()
        .filter(|&c| c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

// ---- the HTTP guards, sessions and the CLI's output ------------------------------

/// An `application/x-www-form-urlencoded` body, as a browser's form sends
/// it (this build of reqwest has no `form`).
trait WithForm {
    fn with_form(self, pairs: &[(&str, &str)]) -> Self;
}

impl WithForm for reqwest::blocking::RequestBuilder {
    fn with_form(self, pairs: &[(&str, &str)]) -> Self {
        let encode = |s: &str| {
            s.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                        (b as char).to_string()
                    }
                    b' ' => "+".to_string(),
                    b => format!("%{b:02X}"),
                })
                .collect::<String>()
        };
        let body: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        self.header("content-type", "application/x-www-form-urlencoded")
            .body(body.join("&"))
    }
}

/// A raw request with the test token: `Host`, `Origin` and the like are the
/// test's to set.
fn raw(s: &Server, method: &str, path: &str) -> reqwest::blocking::RequestBuilder {
    s.http
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            s.url(path),
        )
        .bearer_auth(TOKEN)
}

/// `Host` is one the server is known by; requests that change something from
/// another origin are refused, token or not; bodies have the declared types;
/// odd methods and paths do not become metric series; an internal error
/// answers with an id and logs its details.
#[test]
fn http_guards_hosts_origins_content_types_metrics_and_internal_errors() {
    let mut env = Env::new(Backend::Sqlite).unwrap();
    let s = env.serve(&["--allowed-host", "wasmq.test"]);
    let port = s.base.rsplit(':').next().unwrap().to_string();
    assert_eq!(s.upload_raw("hello", read(example("hello"))).status, 201);

    // Host: the listen address, localhost on loopback, the allowed names.
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "wasmq.test".to_string(),
        "WASMQ.test:8443".to_string(),
    ] {
        let r = s.send(raw(&s, "GET", "/api/v1/queues").header("host", &host));
        assert_eq!(r.status, 200, "{host}: {r:?}");
    }
    for host in [
        format!("evil.example:{port}"),
        "10.9.8.7".to_string(),
        "wasmq.test.evil.example".to_string(),
    ] {
        for path in ["/api/v1/queues", "/healthz", "/", "/login"] {
            let r = s.send(raw(&s, "GET", path).header("host", &host));
            assert_eq!(
                (r.status, r.kind()),
                (400, "host-not-allowed"),
                "{host}{path}: {r:?}"
            );
        }
    }

    // Origin: reads from anywhere, writes only from this origin (or no page).
    let enqueue = json!({"module": "hello"});
    let origin = format!("http://127.0.0.1:{port}");
    for (name, value) in [
        ("origin", "http://evil.example"),
        ("origin", "null"),
        ("origin", "http://127.0.0.1:1"),
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
    ] {
        let r = s.send(
            raw(&s, "POST", "/api/v1/tasks")
                .header(name, value)
                .json(&enqueue),
        );
        assert_eq!(
            (r.status, r.kind()),
            (403, "cross-origin"),
            "{name}: {value}: {r:?}"
        );
        let r = s.send(raw(&s, "DELETE", "/api/v1/modules/hello").header(name, value));
        assert_eq!(r.status, 403, "{name}: {value}: {r:?}");
        let r = s.send(raw(&s, "GET", "/api/v1/tasks").header(name, value));
        assert_eq!(r.status, 200, "reads stay open: {name}: {value}: {r:?}");
    }
    let r = s.send(
        raw(&s, "POST", "/api/v1/tasks")
            .header("origin", &origin)
            .header("sec-fetch-site", "same-origin")
            .json(&enqueue),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.body["id"].as_str().unwrap().to_string();
    // A foreign form posting to the dashboard is refused too.
    let r = s.send(
        s.http
            .post(s.url(&format!("/tasks/{id}/cancel")))
            .header("origin", "http://evil.example")
            .with_form(&[("csrf", "x")]),
    );
    assert_eq!(r.status, 403, "{r:?}");

    // Content-Type: JSON where JSON is read, the declared types for uploads.
    let text = enqueue.to_string();
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut req = raw(&s, "POST", "/api/v1/tasks").body(text.clone());
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let r = s.send(req);
        assert_eq!(
            (r.status, r.kind()),
            (415, "unsupported-media-type"),
            "{ct:?}: {r:?}"
        );
    }
    let r = s.send(
        raw(&s, "POST", "/api/v1/tasks")
            .header("content-type", "application/json; charset=utf-8")
            .body(text.clone()),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let r = s.send(
        raw(&s, "POST", &format!("/api/v1/tasks/{id}/cancel"))
            .header("content-type", "text/plain")
            .body("{}"),
    );
    assert_eq!(r.status, 415, "{r:?}");
    let r = s.send(
        raw(&s, "POST", "/api/v1/modules?name=other")
            .header("content-type", "text/plain")
            .body(read(example("hello"))),
    );
    assert_eq!(r.status, 415, "{r:?}");
    let r = s.send(raw(&s, "POST", "/api/v1/modules?name=other").body(read(example("hello"))));
    assert_eq!(r.status, 415, "an upload without a type: {r:?}");

    // Metric labels: an odd method or an unknown path adds no series.
    for method in ["FOO", "BREW", "PROPFIND"] {
        let r = s.send(raw(&s, method, "/api/v1/tasks"));
        assert!(r.status >= 400, "{method}: {r:?}");
    }
    for path in ["/no/such/page-1", "/api/v1/nope-2", "/api/v1/tasks/x/y/z"] {
        assert_eq!(s.get(path).status, 404, "{path}");
    }
    let metrics = s.get("/metrics").body.as_str().unwrap().to_string();
    for odd in ["FOO", "BREW", "PROPFIND", "no/such", "nope-2", "x/y/z"] {
        assert!(
            !metrics.contains(odd),
            "{odd} became a label value:\n{metrics}"
        );
    }
    assert!(
        metrics
            .lines()
            .any(|l| l
                .starts_with(r#"wasmq_http_requests_total{method="OTHER",route="/api/v1/tasks","#)),
        "{metrics}"
    );

    // An internal error: the client gets an id, the log has the details.
    let db = env.dir.path().join("wasmq.db");
    env.rt.block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        sqlx::raw_sql("ALTER TABLE workers RENAME TO workers_gone")
            .execute(&mut c)
            .await
            .unwrap();
    });
    let r = s.get("/api/v1/workers");
    assert_eq!((r.status, r.kind()), (500, "internal"), "{r:?}");
    let error_id = r.body["error"]["id"]
        .as_str()
        .expect("an error id")
        .to_string();
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(message.contains(&error_id), "{message}");
    assert!(
        !r.body.to_string().contains("workers"),
        "details leaked: {r:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = s.proc.stderr();
        if log
            .lines()
            .any(|l| l.contains(&error_id) && l.contains("no such table"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {error_id}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of the `wasmq_session` cookie a response sets, and the rest of
/// its `Set-Cookie`.
fn session_cookie(r: &Resp) -> (String, String) {
    let set = r.headers["set-cookie"].to_str().unwrap().to_string();
    let (pair, attributes) = set.split_once(';').unwrap_or((&set, ""));
    let value = pair
        .strip_prefix("wasmq_session=")
        .expect("the session cookie");
    (value.to_string(), attributes.to_string())
}

/// The dashboard's session: a signed cookie that expires, a logout that
/// ends it, a CSRF token in every form that changes something, and a
/// `next=` that stays on this site.
#[test]
fn dashboard_sessions_csrf_logout_and_next() {
    let mut env = Env::new(Backend::Sqlite).unwrap();
    let mut s = env.serve(&["--session-ttl", "1h"]);
    s.http = Http::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    assert_eq!(s.upload_raw("hello", read(example("hello"))).status, 201);
    let id = s.enqueue(json!({"module": "hello"}));
    let login = |next: &str| {
        s.send(
            s.http
                .post(s.url("/login"))
                .with_form(&[("token", TOKEN), ("next", next)]),
        )
    };

    // next=: only paths of this site.
    for (next, to) in [
        ("/tasks?state=queued", "/tasks?state=queued"),
        ("//evil.example/", "/"),
        ("/\\\\evil.example/", "/"),
        ("/\t/evil.example/", "/"),
        ("/\n/evil.example/", "/"),
        ("https://evil.example/", "/"),
        ("/ok\u{0}", "/"),
    ] {
        let r = login(next);
        assert_eq!(r.status, 303, "{next:?}: {r:?}");
        assert_eq!(r.headers["location"], to, "{next:?}");
    }
    let r = s.send(s.http.get(s.url("/login?next=%2F%09%2Fevil.example")));
    assert!(
        r.body
            .as_str()
            .unwrap()
            .contains(r#"name="next" value="/""#),
        "{r:?}"
    );

    // The cookie: signed, expiring, a new one per login.
    let (cookie, attributes) = session_cookie(&login("/"));
    let (other, _) = session_cookie(&login("/"));
    assert_ne!(cookie, other, "every login is its own session");
    for a in ["HttpOnly", "SameSite=Strict", "Max-Age=3600", "Path=/"] {
        assert!(attributes.contains(a), "{a} missing: {attributes}");
    }
    assert!(!cookie.contains(TOKEN));
    let page = |cookie: &str, path: &str| {
        s.send(
            s.http
                .get(s.url(path))
                .header("cookie", format!("wasmq_session={cookie}")),
        )
    };
    assert_eq!(page(&cookie, "/").status, 200);
    let parts: Vec<&str> = cookie.split('.').collect();
    assert_eq!(parts.len(), 4, "{cookie}");
    let forged = format!("{}.{}.{}.{}", parts[0], parts[1], u32::MAX, parts[3]);
    let r = page(&forged, "/");
    assert_eq!(
        (r.status, r.headers["location"].to_str().unwrap()),
        (303, "/login?next=%2F")
    );

    // CSRF: the task page's forms carry the session's token; a form
    // without it, or with another session's, is refused.
    let task_page = page(&cookie, &format!("/tasks/{id}"));
    let html = task_page.body.as_str().unwrap();
    let marker = r#"name="csrf" value=""#;
    let start = html.find(marker).expect("a CSRF field") + marker.len();
    let csrf = &html[start..start + html[start..].find('"').unwrap()];
    assert!(html.contains(r#"id="logout""#), "a logout button");
    let other_page = page(&other, &format!("/tasks/{id}"));
    assert!(
        !other_page.body.as_str().unwrap().contains(csrf),
        "one token per session"
    );
    let post = |cookie: &str, path: &str, form: &[(&str, &str)]| {
        s.send(
            s.http
                .post(s.url(path))
                .header("cookie", format!("wasmq_session={cookie}"))
                .with_form(form),
        )
    };
    let cancel = format!("/tasks/{id}/cancel");
    for form in [vec![], vec![("csrf", "0123")], vec![("csrf", "")]] {
        let r = post(&cookie, &cancel, &form);
        assert_eq!(r.status, 403, "{form:?}: {r:?}");
    }
    let r = post(&other, &cancel, &[("csrf", csrf)]);
    assert_eq!(r.status, 403, "another session's token: {r:?}");
    assert_eq!(
        s.get(&format!("/api/v1/tasks/{id}")).body["state"],
        "queued"
    );
    let r = post(&cookie, &cancel, &[("csrf", csrf)]);
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(
        s.get(&format!("/api/v1/tasks/{id}")).body["state"],
        "cancelled"
    );

    // Logout: needs the token, clears the cookie, and the old cookie is dead.
    assert_eq!(post(&cookie, "/logout", &[]).status, 403);
    let r = post(&cookie, "/logout", &[("csrf", csrf)]);
    assert_eq!(
        (r.status, r.headers["location"].to_str().unwrap()),
        (303, "/login")
    );
    let (cleared, attributes) = session_cookie(&r);
    assert!(
        cleared.is_empty() && attributes.contains("Max-Age=0"),
        "{attributes}"
    );
    assert_eq!(
        page(&cookie, "/").status,
        303,
        "a logged-out cookie still works"
    );
    assert_eq!(
        page(&other, "/").status,
        200,
        "another session is not logged out"
    );
    drop(s);

    // Expiry.
    let mut short = env.serve(&["--session-ttl", "3s"]);
    short.http = Http::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = short.send(
        short
            .http
            .post(short.url("/login"))
            .with_form(&[("token", TOKEN)]),
    );
    let (cookie, _) = session_cookie(&r);
    let at = |c: &str| {
        short
            .send(
                short
                    .http
                    .get(short.url("/"))
                    .header("cookie", format!("wasmq_session={c}")),
            )
            .status
    };
    assert_eq!(at(&cookie), 200);
    std::thread::sleep(Duration::from_millis(3100));
    assert_eq!(at(&cookie), 303, "an expired session still works");

    // Without a token there is no login, but forms still carry a CSRF token.
    let p = env.spawn(&["serve", "--listen", "127.0.0.1:0"], &[]);
    let base = p.wait_line("listening on ", Duration::from_secs(60));
    let http = Http::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let id = http
        .post(format!("{}/api/v1/tasks", base.trim()))
        .json(&json!({"module": "hello", "delay_ms": 3_600_000}))
        .send()
        .unwrap()
        .json::<Value>()
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = http
        .post(format!("{}/tasks/{id}/cancel", base.trim()))
        .with_form(&[("x", "y")])
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let html = http
        .get(format!("{}/tasks/{id}", base.trim()))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        html.contains(marker) && !html.contains(r#"id="logout""#),
        "{html}"
    );
}

/// `--metrics-listen` binds a non-loopback address only with a token, which
/// `/metrics` then needs; without one it answers loopback names only.
#[test]
fn worker_metrics_are_loopback_only_without_a_token() {
    let mut env = Env::new(Backend::Sqlite).unwrap();
    // (`--exit-when-idle`: a worker that started anyway would not hang the test.)
    let out = env.run(&[
        "worker",
        "--metrics-listen",
        "0.0.0.0:0",
        "--exit-when-idle",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--metrics-listen") && err.contains("loopback"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    let http = Http::new();
    let (_open, base) = env.worker(&[], &[]);
    assert_eq!(
        http.get(format!("{base}/metrics")).send().unwrap().status(),
        200
    );
    let r = http
        .get(format!("{base}/metrics"))
        .header("host", "evil.example")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400, "a rebound name reached the metrics");

    let p = env.spawn(
        &["worker", "--metrics-listen", "0.0.0.0:0"],
        &[("WASMQ_API_TOKEN", TOKEN)],
    );
    let addr = p.wait_line("metrics on http://", Duration::from_secs(60));
    let port = addr.trim().rsplit(':').next().unwrap().to_string();
    let url = format!("http://127.0.0.1:{port}/metrics");
    assert_eq!(http.get(&url).send().unwrap().status(), 401);
    assert_eq!(
        http.get(&url)
            .bearer_auth("wrong-token-0123456789")
            .send()
            .unwrap()
            .status(),
        403
    );
    let r = http.get(&url).bearer_auth(TOKEN).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().unwrap().contains("wasmq_tasks_in_flight"));
}

/// A `wasmq` command as a user runs it: no `WASMQ_LOG`.
fn user_cmd(env: &Env, args: &[&str]) -> Command {
    let mut c = env.cmd(args);
    c.env_remove("WASMQ_LOG").env_remove("RUST_LOG");
    c
}

/// What the CLI prints: guest text with its escape sequences shown, not
/// obeyed; errors on one line, without log lines (PostgreSQL's migration
/// notice included); a closed stdout ends `wasmq run` and `task list`
/// quietly.
#[test]
fn cli_output_is_safe_quiet_and_survives_a_closed_pipe() {
    let env = Env::new(Backend::Sqlite).unwrap();
    let hostile = "\u{1b}]0;pwned\u{7}\u{1b}[2J\u{1b}[31mred\r\u{9b}31m\u{202e}desrever";
    let input = json!({ "message": hostile }).to_string();
    let panicky = example("panicky");
    let out = user_cmd(&env, &["run", panicky.to_str().unwrap(), "--input", &input])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(20), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("␛]0;pwned␇␛[2J␛[31mred␍\\u{9b}31m\\u{202e}desrever"),
        "{err}"
    );
    for c in ['\u{1b}', '\u{7}', '\r', '\u{9b}', '\u{202e}'] {
        assert!(!err.contains(c), "{c:?} reached the terminal: {err:?}");
    }

    // `wasmq run` prints the output and nothing else.
    let hello = example("hello");
    let out = user_cmd(
        &env,
        &["run", hello.to_str().unwrap(), "--input", r#"{"name":"x"}"#],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "stderr of a successful run"
    );

    // The same through the queue: `task show` and `task list`.
    let push = env.run(&[
        "module",
        "push",
        panicky.to_str().unwrap(),
        "--name",
        "panicky",
    ]);
    assert!(push.status.success(), "{push:?}");
    let out = env.run(&[
        "task",
        "enqueue",
        "panicky",
        "--input",
        &input,
        "--max-attempts",
        "1",
    ]);
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let w = env.run(&["worker", "--exit-when-idle"]);
    assert!(w.status.success(), "{w:?}");
    for args in [vec!["task", "show", &id], vec!["task", "list"]] {
        let out = user_cmd(&env, &args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        // (`task list` shows the first line of the error only.)
        assert!(
            args[1] == "list" || text.contains("␛[31mred"),
            "{args:?}: {text}"
        );
        for c in ['\u{1b}', '\u{7}', '\r', '\u{9b}', '\u{202e}'] {
            assert!(
                !text.contains(c),
                "{args:?}: {c:?} reached the terminal: {text:?}"
            );
        }
    }

    // A command's error is one line.
    let out = user_cmd(
        &env,
        &["task", "show", "0191d6a4-0000-7000-8000-000000000000"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("not found"),
        "{err}"
    );

    // A reader that goes away: no panic, no message.
    let name = r#"{"name":"x"}"#;
    for args in [
        vec!["run", hello.to_str().unwrap(), "--input", name],
        vec!["task", "list"],
    ] {
        let mut child = user_cmd(&env, &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        use std::os::unix::process::ExitStatusExt;
        assert!(
            out.status.success() || out.status.signal() == Some(libc_sigpipe()),
            "{args:?}: {:?} {err}",
            out.status
        );
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
    }

    // PostgreSQL: a command on a migrated database says nothing else.
    let Some(pg) = env.rt.block_on(common::pg::pg_env()) else {
        return;
    };
    let url = pg.url("e2e-cli");
    let run_pg = |args: &[&str]| {
        let mut c = wasmq(&env.dir.path().join("cache"));
        c.arg("--database-url").arg(&url).args(args);
        c.env_remove("WASMQ_LOG").env_remove("RUST_LOG");
        c.output().unwrap()
    };
    let first = run_pg(&["migrate"]);
    assert!(first.status.success(), "{first:?}");
    let again = run_pg(&["migrate"]);
    assert!(again.status.success(), "{again:?}");
    assert_eq!(
        String::from_utf8_lossy(&again.stderr),
        "",
        "notices of a second migrate"
    );
    let out = run_pg(&["task", "show", "0191d6a4-0000-7000-8000-000000000000"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    env.rt.block_on(drop_schema(&pg));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// SIGPIPE's number on Linux.
fn libc_sigpipe() -> i32 {
    13
}

/// A secret granted to a module reaches its task, and its value is in no
/// API answer, no `/metrics` (the server's and the worker's), and no log
/// line of the server or the worker, even from a guest that leaks it.
#[test]
fn a_granted_secret_is_in_no_api_answer_metrics_or_log() {
    use common::httpd::{Reply, Server as Httpd};
    const CANARY: &str = "canary-api-9e4b71c2";
    let mut env = Env::new(Backend::Sqlite).unwrap();
    let upstream = Httpd::http(|_: &str| Reply::ok("{}"));
    let key = env.dir.path().join("secret.key");
    let value = env.dir.path().join("value.txt");
    std::fs::write(&value, CANARY).unwrap();
    let key_path = key.to_str().unwrap().to_string();
    let with_key = [("WASMQ_SECRET_KEY_FILE", key_path.as_str())];
    for args in [
        vec!["secret", "new-key", &key_path],
        vec![
            "module",
            "push",
            example("fetch").to_str().unwrap(),
            "--name",
            "fetch",
        ],
    ] {
        let out = env.run(&args);
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    let out = env
        .cmd(&[
            "secret",
            "set",
            "api-token",
            "--from-file",
            value.to_str().unwrap(),
        ])
        .envs(with_key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let grant = upstream.url("http", "");
    let out = env.run(&[
        "module",
        "grant",
        "fetch",
        "--secret",
        "api-token",
        "--allow-http",
        &grant,
    ]);
    assert!(out.status.success(), "{out:?}");

    let s = env.serve(&[]);
    let (worker, worker_metrics) = env.worker(&[], &[with_key[0], ("WASMQ_LOG", "debug")]);
    let id = s.enqueue(json!({
        "module": "fetch",
        "input": {
            "url": upstream.url("http", "/items"),
            "bearer_secret": "api-token",
            "leak_token": true,
        },
    }));
    let task = s.wait_task(&id, "succeeded", |t| t["state"] == "succeeded");
    assert!(
        upstream.heads().iter().any(|h| h.contains(CANARY)),
        "the upstream got the token"
    );
    let mut seen = vec![task.to_string()];
    for path in [
        format!("/api/v1/tasks/{id}"),
        format!("/api/v1/tasks/{id}/attempts"),
        format!("/api/v1/tasks/{id}/logs"),
        "/api/v1/tasks".to_string(),
        "/metrics".to_string(),
    ] {
        let r = s.get(&path);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        seen.push(r.body.to_string());
    }
    assert!(
        seen.iter().any(|t| t.contains("[redacted:api-token]")),
        "the guest's leak, redacted: {seen:?}"
    );
    let http = Http::new();
    seen.push(
        http.get(format!("{worker_metrics}/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap(),
    );
    seen.push(s.proc.stdout() + &s.proc.stderr());
    seen.push(worker.stdout() + &worker.stderr());
    for text in &seen {
        assert!(!text.contains(CANARY), "the secret leaked: {text}");
    }
}
