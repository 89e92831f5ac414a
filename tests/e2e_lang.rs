//! Tasks in every language: the Rust, Python, JavaScript and C examples built
//! by `scripts/build-examples.sh`, run through the real `wasmq` binary.
//!
//! - the same inputs through each language's `hello` give byte-identical JSON,
//!   with `wasmq run` and through the queue (SQLite and PostgreSQL);
//! - an error raised in each language arrives as a task error carrying that
//!   language's own message;
//! - each language's module is refused the file system, the environment and
//!   the network;
//! - Python and JavaScript components load from the precompiled disk cache in
//!   a new process, under both instance allocators;
//! - Python's and JavaScript's `fanout` spawn children running the Rust `add`
//!   through the queue, wait for them, and resume with their results;
//! - Python's and JavaScript's `fetch` call a JSON API on a loopback server
//!   through the queue, with a granted secret as their bearer token, and are
//!   refused a URL their grant does not cover.
//!
//! Python and JavaScript components take about 10 s each to compile with
//! Cranelift, so every test here shares one module cache (under cargo's
//! target directory, kept between runs) and each module is compiled once, by
//! whichever test needs it first, while the others wait.

mod common;

use common::{code, example, json, repo_root, stderr, stdout, wasmq};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::pg::{PgEnv, drop_schema, pg_env};

const LANGS: [&str; 4] = ["rust", "python", "js", "c"];

/// The module cache every test of this file shares.
fn cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-lang-module-cache")
}

/// A built example of `lang`; fails with the command to build it.
fn lang_example(lang: &str, name: &str) -> PathBuf {
    if lang == "rust" {
        return example(name);
    }
    let p = repo_root()
        .join("examples/target/wasm")
        .join(format!("{lang}-{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/build-examples.sh first",
        p.display()
    );
    p
}

/// `lang_example`, compiled into the shared cache before it is returned, so
/// that tests running in parallel do not each compile it.
fn module(lang: &str, name: &str) -> PathBuf {
    module_run_with(lang, name, &[])
}

/// `module` for a module that needs `EXTRA` arguments to `wasmq run` (a
/// grant, for one that imports `wasi:http`).
fn module_run_with(lang: &str, name: &str, extra: &[&str]) -> PathBuf {
    static COMPILED: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
    let path = lang_example(lang, name);
    let mut compiled = COMPILED.lock().unwrap_or_else(|e| e.into_inner());
    if compiled.get_or_insert_default().insert(path.clone()) {
        let out = wasmq(&cache())
            .arg("run")
            .arg(&path)
            .args(["--input", "{}", "--json"])
            .args(extra)
            .output()
            .unwrap();
        let report = json(&out);
        assert!(
            ["compiled", "disk"].contains(&report["cache"].as_str().unwrap()),
            "{report}"
        );
    }
    path
}

/// `wasmq run MODULE --input INPUT EXTRA…`.
fn run(module: &Path, input: &str, extra: &[&str]) -> Output {
    wasmq(&cache())
        .arg("run")
        .arg(module)
        .args(["--input", input])
        .args(extra)
        .output()
        .unwrap()
}

/// `wasmq run … --json` → (exit code, report).
fn run_json(module: &Path, input: &str) -> (i32, serde_json::Value) {
    let out = run(module, input, &["--json"]);
    (code(&out), json(&out))
}

const HELLO_INPUTS: [&str; 5] = [
    r#"{"name":"Ada"}"#,
    r#"{"name": "Grace", "unused": [1, 2, {"x": null}]}"#,
    r#"{"name":""}"#,
    r#"{"name":"Zoë \"Z\" Ünal 🦀\\ \n\t\u0001 end"}"#,
    r#"{"name":"\u00e9\ud83e\udd80</script>"}"#,
];

#[test]
fn hello_gives_the_same_json_in_every_language() {
    let modules: Vec<_> = LANGS.iter().map(|l| (*l, module(l, "hello"))).collect();
    for input in HELLO_INPUTS {
        let mut outputs = Vec::new();
        for (lang, m) in &modules {
            let out = run(m, input, &[]);
            assert_eq!(code(&out), 0, "{lang} {input}: {}", stderr(&out));
            outputs.push((lang, stdout(&out)));
        }
        let (_, rust) = &outputs[0];
        let expected: serde_json::Value = serde_json::from_str(input).unwrap();
        let v: serde_json::Value = serde_json::from_str(rust).unwrap();
        assert_eq!(
            v["greeting"],
            format!("Hello, {}!", expected["name"].as_str().unwrap())
        );
        for (lang, text) in &outputs[1..] {
            assert_eq!(text, rust, "{lang} differs from rust for {input}");
        }
    }
}

#[test]
fn errors_arrive_as_task_errors_with_each_languages_own_message() {
    // A missing field: each SDK's or task's own validation message.
    let cases = [
        (
            "rust",
            "invalid input: missing field `name` at line 1 column 2",
        ),
        ("python", "`name` must be a string"),
        ("js", "`name` must be a string"),
        ("c", "`name` must be a string"),
    ];
    for (lang, message) in cases {
        let (c, r) = run_json(&module(lang, "hello"), "{}");
        assert_eq!(c, 12, "{lang}: {r}");
        assert_eq!(r["outcome"]["kind"], "task-error", "{lang}: {r}");
        assert_eq!(r["outcome"]["error_kind"], "invalid-input", "{lang}: {r}");
        assert_eq!(r["outcome"]["message"], message, "{lang}: {r}");
    }

    // An uncaught exception: the language's own message, kind permanent, the
    // traceback or stack in the details and on stderr.
    let cases = [
        (
            "python",
            "RuntimeError: boom from python",
            "traceback",
            "app.py",
        ),
        ("js", "Error: boom from js", "stack", "task.js"),
    ];
    for (lang, message, key, file) in cases {
        let input = format!(r#"{{"raise": "boom from {lang}"}}"#);
        let (c, r) = run_json(&module(lang, "escape"), &input);
        assert_eq!(c, 10, "{lang}: {r}");
        assert_eq!(r["outcome"]["error_kind"], "permanent", "{lang}: {r}");
        assert_eq!(r["outcome"]["message"], message, "{lang}: {r}");
        let details: serde_json::Value =
            serde_json::from_str(r["outcome"]["details"].as_str().unwrap()).unwrap();
        assert!(
            details[key].as_str().unwrap().contains(file),
            "{lang}: {details}"
        );
        assert!(
            r["stderr"].as_str().unwrap().contains(message),
            "{lang}: {r}"
        );
    }

    // C has no exceptions: a libc failure's own message (strerror).
    let (c, r) = run_json(&module("c", "escape"), r#"{"raise": "/no/such/file"}"#);
    assert_eq!(c, 10, "{r}");
    assert_eq!(r["outcome"]["error_kind"], "permanent", "{r}");
    let message = r["outcome"]["message"].as_str().unwrap();
    assert!(message.starts_with("/no/such/file: "), "{r}");
}

#[test]
fn every_language_is_refused_files_env_and_network() {
    let full = &[
        "read_passwd",
        "list_root",
        "env",
        "tcp_connect",
        "write_file",
    ][..];
    let cases = [
        ("rust", full),
        ("python", full),
        // No file, env or socket API in StarlingMonkey; fetch is tried below.
        ("js", &["read_passwd", "env"][..]),
        ("c", full),
    ];
    // A real listener as the network probes' target: nothing may connect.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let canary = tempfile::tempdir().unwrap();
    for (lang, probes) in cases {
        let written = canary.path().join(format!("{lang}-escape"));
        let input = serde_json::json!({
            "tcp_addr": addr,
            "write_path": written.to_str().unwrap(),
        })
        .to_string();
        let (c, r) = run_json(&module(lang, "escape"), &input);
        assert_eq!(c, 0, "{lang}: {r}");
        let report: serde_json::Value =
            serde_json::from_str(r["output"].as_str().unwrap()).unwrap();
        for name in probes {
            let probe = &report[name];
            assert_eq!(probe["ok"], false, "{lang}: probe {name}: {report}");
            assert!(
                !probe["detail"].as_str().unwrap().is_empty(),
                "{lang}: {report}"
            );
        }
        for (name, probe) in report.as_object().unwrap() {
            assert_eq!(probe["ok"], false, "{lang}: probe {name} escaped: {probe}");
        }
        assert!(!written.exists(), "{lang} wrote {}", written.display());
    }
    // JavaScript's fetch has no wasi:http behind it: calling it traps.
    let input = serde_json::json!({ "fetch": addr }).to_string();
    let (c, r) = run_json(&module("js", "escape"), &input);
    assert_eq!(c, 20, "{r}");
    assert_eq!(r["outcome"]["kind"], "trap", "{r}");

    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("a task connected to {addr}: {other:?}"),
    }
}

#[test]
fn python_and_js_load_from_the_disk_cache_in_a_new_process() {
    for lang in ["python", "js"] {
        let m = module(lang, "hello");
        // `module` compiled it (or found it) in an earlier process.
        let (c, r) = run_json(&m, r#"{"name":"warm"}"#);
        assert_eq!(c, 0, "{lang}: {r}");
        assert_eq!(r["cache"], "disk", "{lang}: {r}");
        let sha = r["module_sha256"].as_str().unwrap();
        let cached = std::fs::read_dir(cache())
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with(sha) && name.ends_with(".cwasm")
            });
        assert!(cached, "{lang}: no precompiled artifact for {sha}");
    }
}

#[test]
fn python_and_js_run_under_both_allocators() {
    for lang in ["python", "js"] {
        let m = module(lang, "hello");
        for allocator in ["pooling", "on-demand"] {
            let out = wasmq(&cache())
                .env("WASMQ_ALLOCATOR", allocator)
                .arg("run")
                .arg(&m)
                .args(["--input", r#"{"name":"pool"}"#, "--json"])
                .output()
                .unwrap();
            assert_eq!(code(&out), 0, "{lang} {allocator}: {}", stderr(&out));
            let r = json(&out);
            assert_eq!(r["output"], r#"{"greeting":"Hello, pool!"}"#, "{r}");
            // Both allocators share the artifact: no recompiling.
            assert_eq!(r["cache"], "disk", "{lang} {allocator}: {r}");
        }
    }
}

#[test]
fn python_wordcount_counts_logs_and_reports_progress() {
    let input = r#"{"text": "The cat saw the dog.\nThe dog ran!\nIt's over", "top": 2}"#;
    let (c, r) = run_json(&module("python", "wordcount"), input);
    assert_eq!(c, 0, "{r}");
    assert_eq!(
        r["output"], r#"{"words":10,"unique":7,"top":[["the",3],["dog",2]]}"#,
        "{r}"
    );
    let logs = r["logs"].to_string();
    assert!(logs.contains("10 words, 7 distinct, in 3 lines"), "{logs}");

    let (c, r) = run_json(&module("python", "wordcount"), r#"{"text": 7}"#);
    assert_eq!(c, 12, "{r}");
    assert_eq!(r["outcome"]["message"], "`text` must be a string", "{r}");
}

/// A database for the queue test: a fresh SQLite file or PostgreSQL schema.
struct Db {
    url: String,
    /// The PostgreSQL schema to drop afterwards.
    pg: Option<PgEnv>,
}

impl Db {
    fn sqlite(dir: &Path) -> Db {
        Db {
            url: format!("sqlite://{}/wasmq.db", dir.display()),
            pg: None,
        }
    }

    /// A private schema, or `None` (a skip) when PostgreSQL is unreachable
    /// outside CI; with `CI=true` an unreachable server fails the test.
    fn postgres() -> Option<Db> {
        let pg = block_on(pg_env())?;
        Some(Db {
            url: pg.url("e2e-lang"),
            pg: Some(pg),
        })
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Some(pg) = &self.pg {
            block_on(drop_schema(pg));
        }
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// `wasmq --database-url URL ARGS…`, which must succeed; returns stdout.
fn admin(db: &Db, args: &[&str]) -> String {
    let out = wasmq(&cache())
        .arg("--database-url")
        .arg(&db.url)
        .args(args)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "wasmq {args:?}: {}", stderr(&out));
    stdout(&out)
}

/// Runs one worker with two slots until the queue is idle; it must exit
/// cleanly within two minutes.
fn drain(db: &Db) {
    drain_with(db, &[]);
}

/// `drain` with more environment for the worker; returns its output.
fn drain_with(db: &Db, env: &[(&str, &Path)]) -> Output {
    let t = Instant::now();
    let mut worker = wasmq(&cache());
    worker
        .arg("--database-url")
        .arg(&db.url)
        .args(["worker", "--exit-when-idle", "--concurrency", "2"])
        .stdin(Stdio::null());
    for (k, v) in env {
        worker.env(k, v);
    }
    let worker = worker.output().unwrap();
    assert_eq!(code(&worker), 0, "worker: {}", stderr(&worker));
    assert!(t.elapsed() < Duration::from_secs(120));
    worker
}

/// The task of `task show ID --json`.
fn show(db: &Db, id: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&admin(db, &["task", "show", id, "--json"])).unwrap();
    v["task"].clone()
}

/// Every language's `hello` through the queue: pushed, enqueued with the
/// same inputs (and one bad one), drained by one worker; the stored results
/// are identical across languages and the errors carry each one's message.
fn hello_through_the_queue(db: &Db) {
    let mut tasks = Vec::new(); // (lang, input, id)
    for lang in LANGS {
        let m = module(lang, "hello");
        let name = format!("hello-{lang}");
        admin(
            db,
            &["module", "push", m.to_str().unwrap(), "--name", &name],
        );
        for input in HELLO_INPUTS.iter().chain(&["{}"]) {
            let id = admin(db, &["task", "enqueue", &name, "--input", input]);
            tasks.push((lang, *input, id.trim().to_string()));
        }
    }
    drain(db);

    for input in HELLO_INPUTS {
        let results: Vec<_> = tasks
            .iter()
            .filter(|(_, i, _)| *i == input)
            .map(|(lang, _, id)| (lang, show(db, id)))
            .collect();
        for (lang, t) in &results {
            assert_eq!(t["state"], "succeeded", "{lang} {input}: {t}");
            assert_eq!(t["result"], results[0].1["result"], "{lang} {input}: {t}");
        }
    }
    for (lang, _, id) in tasks.iter().filter(|(_, i, _)| *i == "{}") {
        let t = show(db, id);
        assert_eq!(t["state"], "failed", "{lang}: {t}");
        assert_eq!(t["error_kind"], "invalid-input", "{lang}: {t}");
        assert!(
            t["error_message"].as_str().unwrap().contains("name"),
            "{lang}: {t}"
        );
        assert_eq!(t["attempt"], 1, "invalid input is not retried: {t}");
    }
}

#[test]
fn hello_through_the_queue_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    hello_through_the_queue(&Db::sqlite(dir.path()));
}

#[test]
fn hello_through_the_queue_on_postgres() {
    if let Some(db) = Db::postgres() {
        hello_through_the_queue(&db);
    }
}

/// Python's and JavaScript's `fanout` through the queue: each maps the Rust
/// `add` over its numbers as child tasks with `ctx.map`, ends its first run
/// at the wait, runs again once the children are done, and returns the sum of
/// their sums, still in its first attempt (a resume is not a new attempt).
fn fanout_through_the_queue(db: &Db) {
    let add = module("rust", "add");
    admin(
        db,
        &["module", "push", add.to_str().unwrap(), "--name", "add"],
    );
    let mut tasks = Vec::new(); // (lang, id)
    for lang in ["python", "js"] {
        let m = module(lang, "fanout");
        let name = format!("fanout-{lang}");
        admin(
            db,
            &["module", "push", m.to_str().unwrap(), "--name", &name],
        );
        let id = admin(
            db,
            &[
                "task",
                "enqueue",
                &name,
                "--input",
                r#"{"numbers":[1,2,3]}"#,
            ],
        );
        tasks.push((lang, id.trim().to_string()));
    }
    drain(db);

    for (lang, id) in &tasks {
        let t = &show(db, id);
        assert_eq!(t["state"], "succeeded", "{lang}: {t}");
        let result: serde_json::Value =
            serde_json::from_str(t["result"].as_str().unwrap_or_default()).unwrap();
        assert_eq!(result, serde_json::json!({"total": 12}), "{lang}: {t}");
        // Two runs: the one that spawned and waited (free), and the replay.
        assert_eq!(
            (&t["attempt"], &t["free_runs"]),
            (&2.into(), &1.into()),
            "{lang}: {t}"
        );
        assert_eq!(t["children"], 3, "{lang}: {t}");
    }
}

#[test]
fn fanout_through_the_queue_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    fanout_through_the_queue(&Db::sqlite(dir.path()));
}

#[test]
fn fanout_through_the_queue_on_postgres() {
    if let Some(db) = Db::postgres() {
        fanout_through_the_queue(&db);
    }
}

/// Python's and JavaScript's `fetch` through the queue, against a loopback
/// JSON API: a secret set from stdin and granted with the API's URL reaches
/// the server as the bearer token, never the task's record; the parsed body
/// is the result; a status outside 2xx and a body that is not JSON fail with
/// messages that say so; and a URL outside the grant is refused before any
/// connection (Python's task error carries the host's reason; JavaScript's
/// `fetch` reports a NetworkError, and the worker's log the reason).
fn fetch_through_the_queue(db: &Db) {
    use common::httpd::{Reply, Server};
    use std::io::Write;
    const CANARY: &str = "canary-lang-fetch-5e1f9b2c";
    let api = Server::http(|path: &str| match path {
        "/items" => Reply {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: r#"{"items": [1, 2, {"x": null}], "name": "Zoë"}"#.into(),
        },
        "/html" => Reply::ok("<html>not json</html>"),
        _ => Reply {
            status: 404,
            headers: vec![],
            body: b"not found".to_vec(),
        },
    });
    let other = Server::http(|_: &str| Reply::ok("{}"));

    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("secret.key");
    admin(db, &["secret", "new-key", key.to_str().unwrap()]);
    let mut set = wasmq(&cache())
        .arg("--database-url")
        .arg(&db.url)
        .args(["secret", "set", "api-token"])
        .env("WASMQ_SECRET_KEY_FILE", &key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(set.stdin.take().unwrap(), "{CANARY}").unwrap();
    let out = set.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "secret set: {}", stderr(&out));

    let grant = api.url("http", "/");
    let input = |url: String, secret: bool| {
        let mut v = serde_json::json!({ "url": url });
        if secret {
            v["bearer_secret"] = "api-token".into();
        }
        v.to_string()
    };
    let cases = [
        ("ok", input(api.url("http", "/items"), true)),
        ("missing", input(api.url("http", "/missing"), true)),
        ("not-json", input(api.url("http", "/html"), false)),
        ("refused", input(other.url("http", "/items"), false)),
    ];
    let mut tasks = Vec::new(); // (lang, case, id)
    for lang in ["python", "js"] {
        // A run needs a grant to link wasi:http; `{}` fails as invalid input.
        let m = module_run_with(lang, "fetch", &["--allow-http", &grant]);
        let name = format!("fetch-{lang}");
        admin(
            db,
            &["module", "push", m.to_str().unwrap(), "--name", &name],
        );
        admin(
            db,
            &[
                "module",
                "grant",
                &name,
                "--allow-http",
                &grant,
                "--secret",
                "api-token",
            ],
        );
        for (case, input) in &cases {
            let id = admin(db, &["task", "enqueue", &name, "--input", input]);
            tasks.push((lang, *case, id.trim().to_string()));
        }
    }
    let worker = drain_with(db, &[("WASMQ_SECRET_KEY_FILE", &key)]);
    let logs = stderr(&worker);

    for (lang, case, id) in &tasks {
        let shown = admin(db, &["task", "show", id, "--json"]);
        assert!(!shown.contains(CANARY), "{lang} {case}: {shown}");
        let t: serde_json::Value = serde_json::from_str(&shown).unwrap();
        let t = &t["task"];
        let message = t["error_message"].as_str().unwrap_or_default();
        match *case {
            "ok" => {
                assert_eq!(t["state"], "succeeded", "{lang}: {t}");
                let result: serde_json::Value =
                    serde_json::from_str(t["result"].as_str().unwrap()).unwrap();
                assert_eq!(
                    result,
                    serde_json::json!({
                        "status": 200,
                        "json": {"items": [1, 2, {"x": null}], "name": "Zoë"},
                    }),
                    "{lang}: {t}"
                );
            }
            "missing" => {
                assert_eq!(t["state"], "failed", "{lang}: {t}");
                assert_eq!(t["error_kind"], "permanent", "{lang}: {t}");
                assert!(message.ends_with("/missing: status 404"), "{lang}: {t}");
            }
            "not-json" => {
                assert_eq!(t["state"], "failed", "{lang}: {t}");
                assert_eq!(t["error_kind"], "permanent", "{lang}: {t}");
                assert!(message.contains("the response is not JSON"), "{lang}: {t}");
            }
            _ => {
                assert_eq!(t["state"], "failed", "{lang}: {t}");
                assert_eq!(t["error_kind"], "permanent", "{lang}: {t}");
                assert_eq!(t["attempt"], 1, "{lang}: {t}");
                let url = other.url("http", "/items");
                assert!(message.starts_with(&format!("GET {url}: ")), "{lang}: {t}");
                if *lang == "python" {
                    // The host's refusal, word for word.
                    assert!(
                        message.contains(&format!("wasmq: {url} is not granted to this run")),
                        "{t}"
                    );
                } else {
                    assert!(message.contains("NetworkError"), "{t}");
                }
            }
        }
    }
    // The refusals, one per language, in the worker's log; no connection to
    // the other server.
    let refused = format!(
        "wasmq: {} is not granted to this run",
        other.url("http", "/items")
    );
    let refusals = logs
        .lines()
        .filter(|l| l.contains("refused an outbound HTTP request") && l.contains(&refused))
        .count();
    assert_eq!(refusals, 2, "{logs}");
    assert_eq!(other.accepted(), 0, "a refused request opens no connection");
    assert!(!logs.contains(CANARY), "{logs}");

    // The server saw the token on the requests that asked for it, and only
    // there: one `ok` and one `missing` per language.
    let heads = api.heads();
    assert_eq!(heads.len(), 6, "{heads:?}");
    let bearer = format!("authorization: bearer {}", CANARY.to_ascii_lowercase());
    let with_token: Vec<_> = heads
        .iter()
        .filter(|h| h.to_ascii_lowercase().contains(&bearer))
        .map(|h| h.split(' ').nth(1).unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        with_token.iter().filter(|p| *p == "/items").count(),
        2,
        "{heads:?}"
    );
    assert_eq!(with_token.len(), 4, "{heads:?}");
    assert!(
        heads
            .iter()
            .filter(|h| h.contains("/html"))
            .all(|h| !h.to_ascii_lowercase().contains("authorization")),
        "{heads:?}"
    );
}

#[test]
fn fetch_through_the_queue_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    fetch_through_the_queue(&Db::sqlite(dir.path()));
}

#[test]
fn fetch_through_the_queue_on_postgres() {
    if let Some(db) = Db::postgres() {
        fetch_through_the_queue(&db);
    }
}
