//! `wasmq dev`: the one command a task author keeps open while writing a
//! task. Builds the task project in a directory (by its language), pushes it
//! to a private SQLite queue, runs the given inputs on an in-process worker
//! and prints each result as it comes; then rebuilds, pushes and runs them
//! again whenever a source file changes.

use super::admin::connect;
use super::term;
use crate::client::{Client, EnqueueRequest};
use crate::runtime::{Runtime, parse_duration};
use crate::store::{Store, TaskState};
use crate::worker::{Executor, RetryPolicy, Worker, WorkerConfig};
use crate::{runtime, worker};
use anyhow::{Context, bail};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Directories a change in which is not a change of the task's sources.
const IGNORED_DIRS: [&str; 6] = [
    "target",
    "node_modules",
    ".wasmq",
    ".git",
    "__pycache__",
    "adapter",
];

#[derive(Debug, Args)]
pub struct DevArgs {
    /// The task project [default: the current directory].
    #[arg(long, default_value = ".")]
    pub path: PathBuf,
    /// The module's name [default: the directory's name].
    #[arg(long)]
    pub name: Option<String>,
    /// Input of a task to run after each build (repeatable).
    #[arg(long = "input", value_name = "JSON")]
    pub inputs: Vec<String>,
    /// Build, run the inputs, print their results and exit (exit 1 when a
    /// build or a task failed), instead of watching for changes.
    #[arg(long)]
    pub once: bool,
    /// How often the sources are checked for changes.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub poll: Duration,
}

/// How a project is built, by what its directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Build {
    /// `Cargo.toml`: `cargo build --release --target wasm32-wasip2`.
    Cargo,
    /// `package.json`: `npm run build`.
    Npm,
    /// `Makefile` (Python and C projects of `wasmq new`): `make`.
    Make,
}

impl Build {
    fn detect(dir: &Path) -> anyhow::Result<Build> {
        for (file, build) in [
            ("Cargo.toml", Build::Cargo),
            ("package.json", Build::Npm),
            ("Makefile", Build::Make),
        ] {
            if dir.join(file).is_file() {
                return Ok(build);
            }
        }
        bail!(
            "{} holds no Cargo.toml, package.json or Makefile: not a task project \
             (`wasmq new` writes one)",
            dir.display()
        )
    }

    /// Builds, and returns the component the build wrote.
    fn run(self, dir: &Path) -> anyhow::Result<PathBuf> {
        let mut cmd = match self {
            Build::Cargo => {
                let mut c = Command::new("cargo");
                c.args([
                    "build",
                    "--release",
                    "--target",
                    "wasm32-wasip2",
                    "--message-format",
                    "json-render-diagnostics",
                ]);
                c
            }
            Build::Npm => {
                let mut c = Command::new("npm");
                c.args(["run", "--silent", "build"]);
                c
            }
            Build::Make => Command::new("make"),
        };
        let out = cmd
            .current_dir(dir)
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("starting the build ({self:?})"))?;
        if !out.status.success() {
            if self != Build::Cargo {
                print!("{}", String::from_utf8_lossy(&out.stdout));
            }
            bail!("the build failed ({})", out.status);
        }
        match self {
            Build::Cargo => cargo_artifact(&out.stdout),
            Build::Npm | Build::Make => newest_wasm(dir),
        }
    }
}

/// The `.wasm` that cargo's JSON messages name as the build's artifact.
fn cargo_artifact(messages: &[u8]) -> anyhow::Result<PathBuf> {
    let mut found = None;
    for line in messages.split(|&b| b == b'\n') {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" {
            continue;
        }
        for f in v["filenames"].as_array().into_iter().flatten() {
            if let Some(f) = f.as_str().filter(|f| f.ends_with(".wasm")) {
                found = Some(PathBuf::from(f));
            }
        }
    }
    found.context("cargo built no .wasm: is the crate a `cdylib`?")
}

/// The newest `.wasm` in `dir`: what the build wrote, or left as it was
/// when nothing needed building.
fn newest_wasm(dir: &Path) -> anyhow::Result<PathBuf> {
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wasm") {
            let modified = std::fs::metadata(&path)?.modified()?;
            if newest.as_ref().is_none_or(|(t, _)| modified > *t) {
                newest = Some((modified, path));
            }
        }
    }
    newest
        .map(|(_, p)| p)
        .with_context(|| format!("the build wrote no .wasm in {}", dir.display()))
}

/// A fingerprint of the sources: the newest modification time and the
/// number of files, outside the build's own directories.
fn sources_stamp(dir: &Path) -> (Option<SystemTime>, usize) {
    let mut newest = None;
    let mut files = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                if !IGNORED_DIRS.iter().any(|i| name == *i) {
                    stack.push(path);
                }
            } else if path.extension().is_none_or(|e| e != "wasm") {
                files += 1;
                newest = newest.max(meta.modified().ok());
            }
        }
    }
    (newest, files)
}

pub async fn run(a: DevArgs) -> anyhow::Result<u8> {
    let dir = a
        .path
        .canonicalize()
        .with_context(|| format!("{}", a.path.display()))?;
    let build = Build::detect(&dir)?;
    let name = match &a.name {
        Some(n) => n.clone(),
        None => dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .context("the project directory has no name: pass --name")?,
    };
    std::fs::create_dir_all(dir.join(".wasmq"))?;
    let db = format!("sqlite://{}", dir.join(".wasmq/dev.db").display());
    let client = connect(&db).await?;
    let runtime = Arc::new(Runtime::new(super::runtime_config()?)?);

    // An in-process worker serving the dev queue until this command ends.
    let stop = runtime::CancelToken::new();
    let worker = Worker::new(
        Executor {
            runtime: runtime.clone(),
            store: client.store().clone(),
            defaults: runtime::Limits::from_env()?,
            maxima: runtime::Maxima::from_env()?,
            policy: RetryPolicy::from_env().map_err(anyhow::Error::msg)?,
            cluster: None,
            grants: Arc::new(
                worker::Grants::from_env(client.store().clone(), None)
                    .map_err(anyhow::Error::msg)?,
            ),
        },
        WorkerConfig::new(worker::Mode::Local),
    );
    let stopped = stop.clone();
    let worker =
        tokio::spawn(async move { worker.run(async move { stopped.cancelled().await }).await });

    println!(
        "wasmq dev: {} ({build:?} build), module `{name}`, queue {db}",
        dir.display()
    );
    let mut failed = false;
    loop {
        let stamp = sources_stamp(&dir);
        failed |= !cycle(&client, &runtime, &dir, build, &name, &a.inputs).await;
        if a.once {
            break;
        }
        println!("watching for changes (Ctrl-C ends)…");
        loop {
            tokio::select! {
                () = tokio::time::sleep(a.poll) => {}
                () = super::worker::shutdown_signal() => {
                    stop.cancel();
                    let _ = worker.await;
                    return Ok(0);
                }
            }
            if sources_stamp(&dir) != stamp {
                break;
            }
        }
    }
    stop.cancel();
    let _ = worker.await;
    Ok(if failed { 1 } else { 0 })
}

/// One build → push → run of every input. False when something failed.
async fn cycle(
    client: &Client,
    runtime: &Runtime,
    dir: &Path,
    build: Build,
    name: &str,
    inputs: &[String],
) -> bool {
    let dir2 = dir.to_path_buf();
    let built = tokio::task::spawn_blocking(move || build.run(&dir2)).await;
    let wasm = match built {
        Ok(Ok(wasm)) => wasm,
        Ok(Err(e)) => {
            println!("✗ build: {e:#}");
            return false;
        }
        Err(e) => {
            println!("✗ build: {e}");
            return false;
        }
    };
    let pushed = match std::fs::read(&wasm) {
        Ok(bytes) => client.push_module(runtime, name, None, bytes).await,
        Err(e) => {
            println!("✗ reading {}: {e}", wasm.display());
            return false;
        }
    };
    let module = match pushed {
        Ok(m) => m,
        Err(e) => {
            println!("✗ push: {e}");
            return false;
        }
    };
    println!("built and pushed {}", module.reference());
    let mut ok = true;
    for input in inputs {
        let id = match client
            .enqueue(EnqueueRequest::new(module.reference(), input.clone()))
            .await
        {
            Ok(out) => out.id,
            Err(e) => {
                println!("✗ {input}: {e}");
                ok = false;
                continue;
            }
        };
        ok &= report(client, id, input).await;
    }
    ok
}

/// Waits for task `id` and prints how it ended, with its log lines.
async fn report(client: &Client, id: uuid::Uuid, input: &str) -> bool {
    let t = match client.wait(id, |_| {}).await {
        Ok(t) => t,
        Err(e) => {
            println!("✗ {input}: {e}");
            return false;
        }
    };
    let succeeded = t.state == TaskState::Succeeded;
    match (&t.result, &t.error_message) {
        (Some(r), _) if succeeded => println!("✓ {input} → {}", term::text(r)),
        _ => println!(
            "✗ {input} → {} {}: {}",
            t.state,
            term::line(t.error_kind.as_deref().unwrap_or("")),
            term::text(t.error_message.as_deref().unwrap_or(""))
        ),
    }
    if let Ok(attempts) = client.store().list_attempts(id).await {
        for a in attempts {
            if let Some(logs) = a.logs.as_deref().filter(|l| !l.is_empty()) {
                for line in logs.lines() {
                    println!("    {}", term::line(line));
                }
            }
        }
    }
    succeeded
}
