//! `wasmq bench cold`: what a task costs before the module is warm in memory.
//!
//! Three figures, medians over `--runs`:
//! - **compile**: a module never seen before, compiled with Cranelift and
//!   written to the disk cache (what the first run on a machine pays);
//! - **disk load**: a fresh runtime (engine, linker) loading the precompiled
//!   artifact from the disk cache, then the first run;
//! - **new process**: a whole `wasmq run MODULE` process, start to exit, with
//!   the disk cache warm (what a one-off CLI run or a new worker pays).

use crate::runtime::{
    CacheSource, CancelToken, Limits, RunRequest, Runtime, RuntimeConfig, TaskInfo, sha256_hex,
};
use anyhow::{Context, bail};
use clap::Args;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct ColdBench {
    /// The module to measure [default: the `hello` example].
    #[arg(
        long,
        default_value = "examples/target/wasm32-wasip2/release/hello.wasm"
    )]
    pub module: PathBuf,
    #[arg(long, default_value = r#"{"name":"bench"}"#)]
    pub input: String,
    /// Runs measured for the disk-cache and new-process figures.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Compiles measured (each of a large component takes seconds).
    #[arg(long, default_value_t = 1)]
    pub compile_runs: usize,
}

pub async fn run(b: ColdBench) -> anyhow::Result<()> {
    if b.runs == 0 || b.compile_runs == 0 {
        bail!("--runs and --compile-runs must be at least 1");
    }
    let bytes = std::fs::read(&b.module)
        .with_context(|| format!("reading {} (build the examples first)", b.module.display()))?;
    println!(
        "module {} ({} bytes); medians of {} compile(s) and {} cold runs",
        b.module.display(),
        bytes.len(),
        b.compile_runs,
        b.runs
    );
    let cache = tempfile::tempdir()?;
    let config = RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..RuntimeConfig::from_env()?
    };

    // 1. First compile: a fresh runtime and an empty cache every time.
    let mut compile = Vec::new();
    for _ in 0..b.compile_runs {
        for entry in std::fs::read_dir(cache.path())? {
            std::fs::remove_file(entry?.path())?;
        }
        let runtime = Runtime::new(config.clone())?;
        let t = Instant::now();
        let (_, source) = runtime.load_bytes(bytes.clone()).await?;
        compile.push(t.elapsed());
        assert_source(source, CacheSource::Compiled)?;
    }

    // 2. Disk cache hit in a fresh runtime: engine + load + first run. A
    // worker knows the module's hash from the database, so loading does not
    // hash the bytes; `wasmq run` does, and pays the hashing row on top.
    let mut hash = Vec::new();
    let mut sha256 = String::new();
    for _ in 0..b.runs {
        let t = Instant::now();
        sha256 = sha256_hex(&bytes);
        hash.push(t.elapsed());
    }
    let (mut engine, mut load, mut first) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..b.runs {
        let t = Instant::now();
        let runtime = Runtime::new(config.clone())?;
        engine.push(t.elapsed());
        let t = Instant::now();
        let (module, source) = runtime
            .load(&sha256, || async {
                Ok::<_, std::convert::Infallible>(bytes.clone())
            })
            .await?;
        load.push(t.elapsed());
        assert_source(source, CacheSource::Disk)?;
        let t = Instant::now();
        let report = runtime
            .run(
                &module,
                source,
                RunRequest {
                    input: &b.input,
                    limits: &Limits::default(),
                    task: TaskInfo::local(),
                    cancel: CancelToken::new(),
                    dirs: &[],
                    progress: None,
                    subtasks: None,
                    http: None,
                    config: None,
                },
            )
            .await;
        first.push(t.elapsed());
        if !report.outcome.is_success() {
            bail!("benchmark task failed: {}", report.outcome);
        }
    }

    // 3. A new `wasmq run` process, disk cache warm.
    let exe = std::env::current_exe().context("locating the wasmq binary")?;
    let mut process = Vec::new();
    for _ in 0..b.runs {
        let t = Instant::now();
        let out = Command::new(&exe)
            .env("WASMQ_CACHE_DIR", cache.path())
            .env("WASMQ_LOG", "warn")
            .arg("run")
            .arg(&b.module)
            .args(["--input", &b.input, "--json"])
            .output()
            .context("starting wasmq run")?;
        process.push(t.elapsed());
        if !out.status.success() {
            bail!(
                "wasmq run failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        if report["cache"] != "disk" {
            bail!("the new process did not load from the disk cache: {report}");
        }
    }

    println!("{:<44} {:>12}", "phase", "median ms");
    let rows = [
        ("first compile (Cranelift + cache write)", &mut compile),
        ("sha256 of the module bytes", &mut hash),
        ("disk hit: new runtime (engine, linker)", &mut engine),
        ("disk hit: load precompiled module", &mut load),
        ("disk hit: first run (instantiate + run)", &mut first),
        ("new `wasmq run` process, start to exit", &mut process),
    ];
    for (name, samples) in rows {
        println!("{name:<44} {:>12.2}", ms(median(samples)));
    }
    Ok(())
}

fn assert_source(got: CacheSource, want: CacheSource) -> anyhow::Result<()> {
    if got != want {
        bail!("expected the module to come from {want:?}, it came from {got:?}");
    }
    Ok(())
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
