//! Helpers shared by the end-to-end tests: the binary, the example modules,
//! and scratch directories.
#![allow(dead_code)]

pub mod httpd;
pub mod pg;

/// The database an end-to-end scenario runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Instantiates each scenario for both backends: `name::sqlite`,
/// `name::postgres`. The test file defines `run_on(Backend, fn(&mut Env))`,
/// which skips (or, with `CI=true`, fails) when PostgreSQL is unreachable.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() {
                super::run_on($crate::common::Backend::Sqlite, super::$name)
            }
            #[test]
            fn postgres() {
                super::run_on($crate::common::Backend::Postgres, super::$name)
            }
        }
    )*};
}

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fresh database for one scenario: a SQLite file in `dir`, or a private
/// PostgreSQL schema whose connections are named `app`. Returns its URL and
/// the schema to drop at the end ([`pg::drop_schema`]); `None` when
/// PostgreSQL is unreachable outside CI (with `CI=true` it panics).
pub fn fresh_database(
    rt: &tokio::runtime::Runtime,
    backend: Backend,
    dir: &Path,
    app: &str,
) -> Option<(String, Option<pg::PgEnv>)> {
    match backend {
        Backend::Sqlite => Some((format!("sqlite://{}/wasmq.db", dir.display()), None)),
        Backend::Postgres => {
            let pg = rt.block_on(pg::pg_env())?;
            Some((pg.url(&format!("{app}-{}", pg.schema)), Some(pg)))
        }
    }
}

/// The async runtime a test drives its store with: one worker thread, so
/// that the binary under test keeps the other core.
pub fn test_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// A migrated store on `url`, with `connections` pooled connections.
pub fn open_store(
    rt: &tokio::runtime::Runtime,
    url: &str,
    connections: u32,
) -> wasmq::store::AnyStore {
    use wasmq::store::Store;
    rt.block_on(async {
        let s = wasmq::store::AnyStore::connect_with(url, connections)
            .await
            .expect("connect");
        s.migrate().await.expect("migrate");
        s
    })
}

/// [`wasmq`] with a cache under `dir` and the database `url`.
pub fn wasmq_on(dir: &Path, url: &str) -> Command {
    let mut c = wasmq(&dir.join("cache"));
    c.arg("--database-url").arg(url);
    c
}

/// Spawns `cmd` with its stdout and stderr in files `NAME.out` and
/// `NAME.err` under `dir`; returns the child and a function that reads both
/// back, for a failure's message.
pub fn spawn_logged(
    mut cmd: Command,
    dir: &Path,
    name: &str,
) -> (std::process::Child, impl Fn() -> String) {
    let out_path = dir.join(format!("{name}.out"));
    let err_path = dir.join(format!("{name}.err"));
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let name = name.to_string();
    let logs = move || {
        format!(
            "--- {name} stdout ---\n{}\n--- {name} stderr ---\n{}",
            std::fs::read_to_string(&out_path).unwrap_or_default(),
            std::fs::read_to_string(&err_path).unwrap_or_default()
        )
    };
    (child, logs)
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The path of a built example module; fails with the command to build them.
pub fn example(name: &str) -> PathBuf {
    let p = repo_root()
        .join("examples/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/build-examples.sh first",
        p.display()
    );
    p
}

/// A `wasmq` command with a private module cache, so tests do not share state.
pub fn wasmq(cache_dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wasmq"));
    // The suite compiles Python and JavaScript components on 2 busy cores:
    // a budget far above the default keeps a slow machine from failing a
    // test that is not about the budget (the budget's own tests set it).
    c.env("WASMQ_CACHE_DIR", cache_dir)
        .env("WASMQ_COMPILE_TIMEOUT", "10m")
        .env_remove("DATABASE_URL")
        .env("WASMQ_LOG", "warn");
    c
}

pub fn code(o: &Output) -> i32 {
    o.status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal: {o:?}"))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            stdout(o),
            stderr(o)
        )
    })
}
pub mod ray;
