//! `wasmq run` against the example modules: every outcome kind, the sandbox,
//! bad modules and bad input, and the on-disk compile cache.

mod common;

use common::{code, example, json, stderr, stdout, wasmq};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// `wasmq run MODULE ARGS… --json` → (exit code, report).
fn run_json(
    cache: &std::path::Path,
    module: &std::path::Path,
    args: &[&str],
) -> (i32, serde_json::Value) {
    let out = wasmq(cache)
        .arg("run")
        .arg(module)
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    (code(&out), json(&out))
}

#[test]
fn hello_succeeds_and_prints_its_output() {
    let dir = tmp();
    let out = wasmq(dir.path())
        .args(["run"])
        .arg(example("hello"))
        .args(["--input", r#"{"name":"Ada"}"#])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["greeting"], "Hello, Ada!");
}

#[test]
fn add_reads_input_from_a_file() {
    let dir = tmp();
    let input = dir.path().join("in.json");
    std::fs::write(&input, r#"{"a": 2, "b": 40}"#).unwrap();
    let (c, r) = run_json(
        dir.path(),
        &example("add"),
        &["--input-file", input.to_str().unwrap()],
    );
    assert_eq!(c, 0, "{r}");
    let out: serde_json::Value = serde_json::from_str(r["output"].as_str().unwrap()).unwrap();
    assert_eq!(out["sum"], 42);
}

#[test]
fn report_carries_fuel_memory_time_and_cache() {
    let dir = tmp();
    let (c, r) = run_json(
        dir.path(),
        &example("hello"),
        &["--input", r#"{"name":"x"}"#],
    );
    assert_eq!(c, 0, "{r}");
    assert_eq!(r["outcome"]["kind"], "success");
    assert!(r["fuel_used"].as_u64().unwrap() > 0);
    assert!(r["peak_memory_bytes"].as_u64().unwrap() >= 65536);
    assert!(r["wall_time_us"].as_u64().unwrap() > 0);
    assert_eq!(r["module_sha256"].as_str().unwrap().len(), 64);
}

/// Runs `hello` with JSON output and the stderr that came with it.
fn hello_in(cache: &std::path::Path, name: &str) -> (serde_json::Value, String) {
    let out = wasmq(cache)
        .arg("run")
        .arg(example("hello"))
        .args(["--input", &format!(r#"{{"name":"{name}"}}"#), "--json"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let r = json(&out);
    let greeting: serde_json::Value = serde_json::from_str(r["output"].as_str().unwrap()).unwrap();
    assert_eq!(greeting["greeting"], format!("Hello, {name}!"), "{r}");
    (r, stderr(&out))
}

/// The disk cache runs only what this user wrote for this very module: an
/// artifact of another module put under `hello`'s name is refused and
/// `hello` recompiled; a cache directory others can write is not used.
#[test]
fn a_swapped_or_exposed_artifact_is_not_run() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmp();
    let (first, _) = hello_in(dir.path(), "a");
    assert_eq!(first["cache"], "compiled");
    let hello_sha = first["module_sha256"].as_str().unwrap().to_string();
    let (c, fib) = run_json(dir.path(), &example("fib"), &["--input", r#"{"n":10}"#]);
    assert_eq!(c, 0, "{fib}");
    let artifact_of = |sha: &str| {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                name.starts_with(sha) && name.ends_with(".cwasm")
            })
            .unwrap_or_else(|| panic!("no artifact of {sha}"))
    };
    let hello_path = artifact_of(&hello_sha);
    std::fs::copy(
        artifact_of(fib["module_sha256"].as_str().unwrap()),
        &hello_path,
    )
    .unwrap();

    let (swapped, err) = hello_in(dir.path(), "b");
    assert_eq!(swapped["cache"], "compiled", "{err}");
    assert!(err.contains("another module"), "{err}");
    let (again, _) = hello_in(dir.path(), "c");
    assert_eq!(
        again["cache"], "disk",
        "the recompiled artifact replaced it"
    );

    // A truncated artifact.
    let len = std::fs::metadata(&hello_path).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&hello_path)
        .unwrap();
    f.set_len(len - 1).unwrap();
    drop(f);
    let (truncated, err) = hello_in(dir.path(), "d");
    assert_eq!(truncated["cache"], "compiled", "{err}");
    assert!(err.contains("hash"), "{err}");

    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (exposed, err) = hello_in(dir.path(), "e");
    assert_eq!(exposed["cache"], "compiled", "{err}");
    assert!(err.contains("writable by the group or others"), "{err}");
}

#[test]
fn a_new_cache_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmp();
    let cache = dir.path().join("deeper/cache");
    hello_in(&cache, "p");
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    let artifact = std::fs::read_dir(&cache).unwrap().next().unwrap().unwrap();
    assert_eq!(
        artifact.metadata().unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn second_process_loads_the_precompiled_module_from_disk() {
    let dir = tmp();
    let (_, first) = run_json(
        dir.path(),
        &example("hello"),
        &["--input", r#"{"name":"a"}"#],
    );
    assert_eq!(first["cache"], "compiled");
    let (c, second) = run_json(
        dir.path(),
        &example("hello"),
        &["--input", r#"{"name":"b"}"#],
    );
    assert_eq!(c, 0);
    assert_eq!(second["cache"], "disk");
    let cwasm = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "cwasm")
        })
        .count();
    assert_eq!(cwasm, 1);
}

#[test]
fn task_errors_keep_their_kind() {
    let dir = tmp();
    // flaky on attempt 1 of a task that wants 3: retryable.
    let (c, r) = run_json(
        dir.path(),
        &example("flaky"),
        &["--input", r#"{"succeed_on_attempt":3}"#],
    );
    assert_eq!(c, 11, "{r}");
    assert_eq!(r["outcome"]["kind"], "task-error");
    assert_eq!(r["outcome"]["error_kind"], "retryable");
    // hello without its field: the SDK reports serde's message as invalid input.
    let (c, r) = run_json(dir.path(), &example("hello"), &["--input", "{}"]);
    assert_eq!(c, 12, "{r}");
    assert_eq!(r["outcome"]["error_kind"], "invalid-input");
    assert!(
        r["outcome"]["message"].as_str().unwrap().contains("name"),
        "{r}"
    );
}

#[test]
fn non_json_input_is_refused_before_the_guest_runs() {
    let dir = tmp();
    let (c, r) = run_json(dir.path(), &example("hello"), &["--input", "{not json"]);
    assert_eq!(c, 12, "{r}");
    assert_eq!(r["outcome"]["error_kind"], "invalid-input");
    assert!(
        r["outcome"]["message"]
            .as_str()
            .unwrap()
            .starts_with("input is not valid JSON")
    );
    assert_eq!(r["fuel_used"], 0);
}

#[test]
fn panic_is_a_trap_carrying_the_panic_message() {
    let dir = tmp();
    let (c, r) = run_json(
        dir.path(),
        &example("panicky"),
        &["--input", r#"{"message":"kaboom 42"}"#],
    );
    assert_eq!(c, 20, "{r}");
    assert_eq!(r["outcome"]["kind"], "trap");
    let msg = r["outcome"]["message"].as_str().unwrap();
    assert!(msg.contains("kaboom 42"), "{msg}");
    assert!(r["stderr"].as_str().unwrap().contains("kaboom 42"));
}

#[test]
fn spin_stops_on_fuel() {
    let dir = tmp();
    let (c, r) = run_json(
        dir.path(),
        &example("spin"),
        &["--fuel", "50000000", "--timeout", "60s"],
    );
    assert_eq!(c, 21, "{r}");
    assert_eq!(r["outcome"]["kind"], "out-of-fuel");
    assert_eq!(r["fuel_used"], 50_000_000);
}

#[test]
fn spin_with_unlimited_fuel_stops_at_the_deadline() {
    let dir = tmp();
    let (c, r) = run_json(
        dir.path(),
        &example("spin"),
        &["--fuel", "unlimited", "--timeout", "500ms"],
    );
    assert_eq!(c, 23, "{r}");
    assert_eq!(r["outcome"]["kind"], "timeout");
    // The issue's bound: stopped within about twice the deadline.
    let wall_ms = r["wall_time_us"].as_u64().unwrap() / 1000;
    assert!((500..1000).contains(&wall_ms), "stopped after {wall_ms} ms");
}

#[test]
fn sleepy_blocked_in_a_host_call_stops_at_the_deadline() {
    let dir = tmp();
    let (c, r) = run_json(
        dir.path(),
        &example("sleepy"),
        &["--input", r#"{"ms":10000}"#, "--timeout", "100ms"],
    );
    assert_eq!(c, 23, "{r}");
    assert_eq!(r["outcome"]["kind"], "timeout");
    let wall_ms = r["wall_time_us"].as_u64().unwrap() / 1000;
    assert!(wall_ms < 5000, "stopped after {wall_ms} ms");
}

#[test]
fn sleepy_finishes_within_its_deadline() {
    let dir = tmp();
    let (c, r) = run_json(
        dir.path(),
        &example("sleepy"),
        &["--input", r#"{"ms":50}"#, "--timeout", "10s"],
    );
    assert_eq!(c, 0, "{r}");
}

#[test]
fn hog_runs_out_of_memory_under_32_mib() {
    let dir = tmp();
    let (c, r) = run_json(dir.path(), &example("hog"), &["--memory", "32MiB"]);
    assert_eq!(c, 22, "{r}");
    assert_eq!(r["outcome"]["kind"], "out-of-memory");
    assert!(r["peak_memory_bytes"].as_u64().unwrap() <= 32 << 20);
}

#[test]
fn escape_gets_nothing() {
    let dir = tmp();
    let (c, r) = run_json(dir.path(), &example("escape"), &[]);
    assert_eq!(c, 0, "{r}");
    let probes: serde_json::Value = serde_json::from_str(r["output"].as_str().unwrap()).unwrap();
    let probes = probes.as_object().unwrap();
    assert!(probes.len() >= 5, "{probes:?}");
    for (name, probe) in probes {
        if let Some(ok) = probe.get("ok") {
            assert_eq!(ok, false, "probe {name} escaped the sandbox: {probe}");
        }
    }
    for name in ["read_passwd", "list_root", "env", "tcp_connect"] {
        assert!(
            probes.contains_key(name),
            "missing probe {name}: {probes:?}"
        );
    }
}

#[test]
fn allow_dir_grants_read_only_access() {
    let dir = tmp();
    let (c, r) = run_json(
        dir.path(),
        &example("escape"),
        &["--allow-dir", "/etc:/etc"],
    );
    assert_eq!(c, 0, "{r}");
    let probes: serde_json::Value = serde_json::from_str(r["output"].as_str().unwrap()).unwrap();
    assert_eq!(probes["read_passwd"]["ok"], true, "{probes}");
    assert_eq!(probes["write_file"]["ok"], false, "{probes}");
}

#[test]
fn output_over_the_cap_is_invalid_output() {
    let dir = tmp();
    let out = wasmq(dir.path())
        .env("WASMQ_MAX_OUTPUT", "16")
        .arg("run")
        .arg(example("hello"))
        .args(["--input", r#"{"name":"a rather long name"}"#, "--json"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 31, "{}", stderr(&out));
    assert_eq!(json(&out)["outcome"]["kind"], "invalid-output");
}

#[test]
fn ctrl_c_cancels_a_running_task() {
    let dir = tmp();
    let mut child = wasmq(dir.path())
        .arg("run")
        .arg(example("spin"))
        .args(["--fuel", "unlimited", "--timeout", "60s", "--json"])
        .env("WASMQ_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Signal only once the run has started (a fixed sleep raced the start
    // on a loaded machine); the rest of stderr is kept for the assertion.
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut err, &mut line).unwrap();
        assert!(n > 0, "wasmq run ended before it started the task: {seen}");
        seen.push_str(&line);
        if line.contains("Ctrl-C cancels") {
            break;
        }
    }
    let t = Instant::now();
    unsafe { libc_kill(child.id() as i32, 2) };
    let rest = std::thread::spawn(move || {
        std::io::Read::read_to_string(&mut err, &mut seen).unwrap();
        seen
    });
    let out = child.wait_with_output().unwrap();
    let err = rest.join().unwrap();
    assert_eq!(code(&out), 24, "{err}");
    assert_eq!(json(&out)["outcome"]["kind"], "cancelled");
    assert!(t.elapsed() < Duration::from_secs(10));
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

fn invalid_module(bytes: &[u8]) -> (i32, serde_json::Value, String) {
    let dir = tmp();
    let path = dir.path().join("m.wasm");
    std::fs::write(&path, bytes).unwrap();
    let out = wasmq(dir.path())
        .arg("run")
        .arg(&path)
        .arg("--json")
        .output()
        .unwrap();
    (code(&out), json(&out), stderr(&out))
}

#[test]
fn bad_modules_each_get_their_own_error() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        (
            "not-wasm",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
        ),
        ("core-module", b"\0asm\x01\0\0\0".to_vec()),
        (
            "wrong-export-type",
            std::fs::read(example("other_world")).unwrap(),
        ),
        ("missing-export", std::fs::read(example("no_run")).unwrap()),
        (
            "unsupported-import",
            std::fs::read(example("needs_import")).unwrap(),
        ),
    ];
    let mut messages = std::collections::HashSet::new();
    for (reason, bytes) in cases {
        let (c, r, err) = invalid_module(&bytes);
        assert_eq!(c, 30, "{reason}: {r}");
        assert_eq!(r["outcome"]["kind"], "invalid-module", "{reason}");
        assert_eq!(r["outcome"]["reason"], reason, "{r}");
        assert!(err.contains("invalid-module"), "{err}");
        messages.insert(r["outcome"]["message"].as_str().unwrap().to_string());
    }
    assert_eq!(messages.len(), 6);
}

#[test]
fn a_truncated_component_does_not_compile() {
    let bytes = std::fs::read(example("hello")).unwrap();
    let (c, r, _) = invalid_module(&bytes[..bytes.len() / 2]);
    assert_eq!(c, 30);
    assert_eq!(r["outcome"]["reason"], "compile-error");
}

#[test]
fn usage_errors_exit_2() {
    let dir = tmp();
    let out = wasmq(dir.path())
        .arg("run")
        .arg(example("hello"))
        .args(["--memory", "12 parsecs"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("parsecs"));
    let out = wasmq(dir.path())
        .args(["run", "/nonexistent.wasm"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("/nonexistent.wasm"));
    // No fuel at all is not a way of saying "unlimited".
    let out = wasmq(dir.path())
        .arg("run")
        .arg(example("hello"))
        .args(["--fuel", "0"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("`unlimited`"), "{}", stderr(&out));
}

#[test]
fn the_host_survives_many_bad_runs() {
    // Not a crash-by-signal in any of them: every outcome is an exit code.
    let dir = tmp();
    for m in ["panicky", "hog", "spin"] {
        let out = Command::new(env!("CARGO_BIN_EXE_wasmq"))
            .env("WASMQ_CACHE_DIR", dir.path())
            .arg("run")
            .arg(example(m))
            .args(["--memory", "16MiB", "--fuel", "10000000", "--timeout", "5s"])
            .output()
            .unwrap();
        assert!(out.status.code().is_some(), "{m}: {out:?}");
    }
}

/// `wasmq dev` on a C project of `wasmq new` (the fastest to build): builds,
/// runs the inputs on its private queue and prints the results, then does it
/// again when a source file changes; `--once` exits with the outcome.
#[test]
fn dev_builds_runs_and_rebuilds_on_change() {
    let dir = tmp();
    let project = dir.path().join("greet");
    let out = wasmq(&dir.path().join("cache"))
        .args(["new", "greet", "--lang", "c", "--path"])
        .arg(&project)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    let once = wasmq(&dir.path().join("cache"))
        .args([
            "dev",
            "--once",
            "--input",
            r#"{"name":"Ada"}"#,
            "--input",
            "{}",
        ])
        .current_dir(&project)
        .output()
        .unwrap();
    let printed = stdout(&once);
    assert!(
        printed.contains(r#"✓ {"name":"Ada"} → {"greeting":"Hello, Ada!"}"#),
        "{printed}"
    );
    assert!(
        printed.contains("    [     0ms info ] greeting Ada"),
        "{printed}"
    );
    assert!(printed.contains("✗ {} → failed invalid-input"), "{printed}");
    assert_eq!(code(&once), 1, "a failed task fails --once");

    // Watching: the output goes outside the project, or it would be a change.
    let log = dir.path().join("dev.out");
    let mut dev = wasmq(&dir.path().join("cache"))
        .args(["dev", "--poll", "100ms", "--input", r#"{"name":"Ada"}"#])
        .current_dir(&project)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let wait_for = |text: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let seen = std::fs::read_to_string(&log).unwrap_or_default();
            if seen.contains(text) {
                return;
            }
            assert!(Instant::now() < deadline, "no {text:?} in:\n{seen}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for(r#"→ {"greeting":"Hello, Ada!"}"#);
    let source = project.join("task.c");
    let code_text = std::fs::read_to_string(&source).unwrap();
    std::fs::write(&source, code_text.replace("Hello, ", "Howdy, ")).unwrap();
    wait_for(r#"→ {"greeting":"Howdy, Ada!"}"#);
    let _ = dev.kill();
    let _ = dev.wait();
    let seen = std::fs::read_to_string(&log).unwrap();
    assert!(seen.contains("built and pushed greet@2"), "{seen}");
}

// ---- Outbound HTTP (`--allow-http`), against loopback servers ----

mod http {
    use super::common::httpd::{Reply, Server};
    use super::common::{code, example, json, stderr, wasmq};

    fn routes(path: &str) -> Reply {
        match path {
            "/hello" => Reply::ok("hello world"),
            "/big" => Reply::ok(vec![b'x'; 100_000]),
            "/inside" => Reply::redirect("/hello"),
            "/slow" => {
                std::thread::sleep(std::time::Duration::from_secs(5));
                Reply::ok("late")
            }
            other => match other.strip_prefix("/to/") {
                Some(target) => Reply::redirect(&format!("http://{target}")),
                None => Reply {
                    status: 404,
                    headers: vec![],
                    body: b"not found".to_vec(),
                },
            },
        }
    }

    /// `wasmq run fetch.wasm` on `url` with `args` → (exit code, report, stderr).
    fn fetch(
        dir: &std::path::Path,
        url: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (i32, serde_json::Value, String) {
        let mut cmd = wasmq(dir);
        cmd.arg("run")
            .arg(example("fetch"))
            .args(["--input", &serde_json::json!({ "url": url }).to_string()])
            .args(args)
            .arg("--json");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (code(&out), json(&out), stderr(&out))
    }

    /// `fetch` of `path` on `a`, with `a`'s address granted.
    fn fetch_granted(
        dir: &std::path::Path,
        a: &Server,
        path: &str,
        env: &[(&str, &str)],
    ) -> (i32, serde_json::Value, String) {
        fetch(
            dir,
            &a.url("http", path),
            &["--allow-http", &a.url("http", "")],
            env,
        )
    }

    /// Asserts a success; returns the guest's (status, body bytes, redirects).
    fn fetched((c, r, err): (i32, serde_json::Value, String)) -> (u64, u64, u64) {
        assert_eq!(c, 0, "{r}\n{err}");
        let o: serde_json::Value = serde_json::from_str(r["output"].as_str().unwrap()).unwrap();
        let field = |k: &str| o[k].as_u64().unwrap_or_else(|| panic!("no {k} in {o}"));
        (field("status"), field("bytes"), field("redirects"))
    }

    /// Asserts that the guest failed on a refusal whose message has `needle`.
    fn assert_refused(c: i32, r: &serde_json::Value, needle: &str) {
        assert_eq!(c, 10, "{r}");
        let message = r["outcome"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{needle:?} not in {r}");
    }

    #[test]
    fn a_granted_http_call_works() {
        let dir = tempfile::tempdir().unwrap();
        let a = Server::http(routes);
        let got = fetched(fetch_granted(dir.path(), &a, "/hello", &[]));
        assert_eq!(got, (200, 11, 0));
        // A redirect inside the grant is followed by the guest.
        let got = fetched(fetch_granted(dir.path(), &a, "/inside", &[]));
        assert_eq!(got, (200, 11, 1));
        assert_eq!(a.accepted(), 3);
    }

    #[test]
    fn a_granted_https_call_works_with_the_extra_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (s, ca) = Server::https(routes);
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca).unwrap();
        let grant = s.url("https", "/");
        let url = s.url("https", "/hello");
        let ca_arg = ca_file.to_str().unwrap();
        let with_ca = ["--allow-http", &grant, "--http-ca-file", ca_arg];
        assert_eq!(
            fetched(fetch(dir.path(), &url, &with_ca, &[])),
            (200, 11, 0)
        );
        // Without the CA, the certificate is not trusted.
        let (c, r, _) = fetch(dir.path(), &url, &["--allow-http", &grant], &[]);
        assert_refused(c, &r, "ErrorCode::Tls");
        assert_eq!(s.accepted(), 2);
    }

    #[test]
    fn an_ungranted_host_is_refused_without_a_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Server::http(routes), Server::http(routes));
        // Another host (here: port), then a path outside the grant's prefix.
        let cases = [
            (a.url("http", ""), b.url("http", "/hello")),
            (a.url("http", "/api"), a.url("http", "/hello")),
        ];
        for (grant, url) in cases {
            let (c, r, err) = fetch(dir.path(), &url, &["--allow-http", &grant], &[]);
            assert_refused(c, &r, "is not granted to this run");
            assert!(err.contains("refused an outbound HTTP request"), "{err}");
        }
        assert_eq!((a.accepted(), b.accepted()), (0, 0));
    }

    #[test]
    fn a_redirect_out_of_the_grant_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Server::http(routes), Server::http(routes));
        let away = format!("/to/127.0.0.1:{}/hello", b.port);
        let (c, r, _) = fetch_granted(dir.path(), &a, &away, &[]);
        assert_refused(c, &r, &format!("127.0.0.1:{}/hello is not granted", b.port));
        assert_eq!((a.accepted(), b.accepted()), (1, 0));
    }

    #[test]
    fn a_name_resolving_to_loopback_needs_the_address_granted() {
        let dir = tempfile::tempdir().unwrap();
        let a = Server::http(routes);
        let grant = format!("http://localhost:{}", a.port);
        let url = format!("http://localhost:{}/hello", a.port);
        let (c, r, err) = fetch(dir.path(), &url, &["--allow-http", &grant], &[]);
        assert_refused(c, &r, "localhost resolves to");
        assert_refused(c, &r, "a loopback");
        assert!(err.contains("forbidden-address"), "{err}");
        assert_eq!(a.accepted(), 0);
    }

    #[test]
    fn a_response_over_the_cap_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let a = Server::http(routes);
        let env = [("WASMQ_HTTP_MAX_RESPONSE_BYTES", "1000")];
        let (c, r, _) = fetch_granted(dir.path(), &a, "/big", &env);
        assert_refused(c, &r, "went over the cap of 1000 bytes");
        // Under the cap, the body is read.
        assert_eq!(
            fetched(fetch_granted(dir.path(), &a, "/hello", &env)).0,
            200
        );
    }

    #[test]
    fn too_many_requests_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Server::http(routes);
        let env = [("WASMQ_HTTP_MAX_REQUESTS", "1")];
        let (c, r, _) = fetch_granted(dir.path(), &a, "/inside", &env);
        assert_refused(c, &r, "already made its 1 HTTP requests");
        assert_eq!(a.accepted(), 1);
    }

    #[test]
    fn a_slow_response_times_out_at_the_http_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let a = Server::http(routes);
        let started = std::time::Instant::now();
        let env = [("WASMQ_HTTP_TIMEOUT", "1s")];
        let (c, r, _) = fetch_granted(dir.path(), &a, "/slow", &env);
        assert_refused(c, &r, "ConnectionReadTimeout");
        assert!(started.elapsed() < std::time::Duration::from_secs(4), "{r}");
    }

    #[test]
    fn a_module_importing_wasi_http_needs_a_grant() {
        let dir = tempfile::tempdir().unwrap();
        let (c, r, _) = fetch(dir.path(), "http://127.0.0.1:9/", &[], &[]);
        assert_eq!(c, 30, "{r}");
        assert_eq!(r["outcome"]["kind"], "invalid-module", "{r}");
        let m = r["outcome"]["message"].as_str().unwrap_or_default();
        assert!(m.contains("`wasi:http/outgoing-handler@0.2"), "{r}");
        assert!(m.contains("--allow-http"), "{r}");
    }

    #[test]
    fn bad_grants_are_usage_errors() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            "example.com",
            "ftp://example.com",
            "https://*",
            "https://example.com:0",
        ] {
            let out = wasmq(dir.path())
                .arg("run")
                .arg(example("fetch"))
                .args(["--allow-http", bad])
                .output()
                .unwrap();
            assert_eq!(code(&out), 2, "{bad}: {}", stderr(&out));
            assert!(
                stderr(&out).contains("scheme://host[:port][/path-prefix]"),
                "{}",
                stderr(&out)
            );
        }
        let out = wasmq(dir.path())
            .arg("run")
            .arg(example("fetch"))
            .args([
                "--allow-http",
                "https://example.com",
                "--http-ca-file",
                "/nonexistent.pem",
            ])
            .output()
            .unwrap();
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        assert!(stderr(&out).contains("--http-ca-file"), "{}", stderr(&out));
    }
}
