//! `wasmq bench cluster`: what cluster mode gives a user, measured on the
//! real `wasmq worker --cluster` process against a Ray cluster.
//!
//! 1. Latency: tasks enqueued one at a time on an idle worker (after a
//!    warm-up task, which uploads the package), enqueue→succeeded from the
//!    database's timestamps, split into Ray's own time per job (its
//!    `end_time - start_time`) and what wasmq adds.
//! 2. Throughput: `--tasks` tasks enqueued at once, drained by a worker at
//!    its default flags and at each `--batch` size, from the first claim to
//!    the last finish.
//!
//! SQLite in a temp dir; the `hello` example.

use super::bench_cpu::children_cpu;
use super::bench_queue::{Db, QUEUE, Workspace, pct, start_worker, terminate, wait_registered};
use crate::client::{Client, EnqueueRequest};
use crate::ray::{ClientConfig, RayClient, Token};
use crate::store::{AnyStore, NewTask, Store, TaskState};
use crate::worker::shipping::{Runner, RunnerSource};
use anyhow::{Context, ensure};
use clap::Args;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct ClusterBench {
    /// The Ray dashboard address, e.g. http://127.0.0.1:8265.
    #[arg(long, value_name = "URL", env = "WASMQ_RAY_ADDRESS")]
    pub cluster: String,
    /// Tasks enqueued one at a time for the latency figures.
    #[arg(long, default_value_t = 20)]
    pub latency_tasks: usize,
    /// Tasks enqueued at once for each throughput figure.
    #[arg(long, default_value_t = 1000)]
    pub tasks: usize,
    /// Also drain with `--ray-batch N` (repeatable); the defaults are
    /// always measured first.
    #[arg(long = "batch", value_name = "N")]
    pub batches: Vec<u32>,
    /// Runs per throughput figure (the median is printed).
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Extra worker flags for every worker of the bench.
    #[arg(long, allow_hyphen_values = true, default_value = "")]
    pub flags: String,
    /// The wasmq binary whose worker is measured [default: this one].
    #[arg(long)]
    pub bin: Option<PathBuf>,
    #[arg(
        long,
        default_value = "examples/target/wasm32-wasip2/release/hello.wasm"
    )]
    pub module: PathBuf,
}

pub async fn run(b: ClusterBench) -> anyhow::Result<()> {
    ensure!(b.runs > 0, "--runs must be at least 1");
    let bytes = std::fs::read(&b.module)
        .with_context(|| format!("reading {} (build the examples first)", b.module.display()))?;
    let ws = Workspace::new(b.bin.as_deref())?;
    let token = Token::discover(None)?;
    let ray = RayClient::new(&b.cluster, token, ClientConfig::default())?;
    let version = ray.version().await?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "wasmq bench cluster: Ray {} at {}; workers of {}; module {}; SQLite; {cores} cores",
        version.ray_version,
        b.cluster,
        ws.bin.display(),
        b.module.display()
    );
    package_sizes(&ws.bin, &bytes)?;

    let flags = super::bench_queue::shell_words(&b.flags);
    let cluster_flags = |extra: &[String]| -> Vec<String> {
        let mut f = vec!["--cluster".to_string(), b.cluster.clone()];
        f.extend(flags.iter().cloned());
        f.extend(extra.iter().cloned());
        f
    };

    // Latency, on an idle worker that keeps its jobs (their times are read
    // back, then the jobs are deleted).
    let db = Db::create("sqlite", "", ws.work.path(), 0).await?;
    let store = AnyStore::connect(&db.url).await?;
    store.migrate().await?;
    let client = Client::from_store(store.clone());
    client
        .push_module(&ws.runtime, "hello", None, bytes.clone())
        .await?;
    let mut w = start_worker(
        &ws.bin,
        &ws.cache,
        &ws.logs,
        &db.url,
        &cluster_flags(&["--ray-keep-jobs".into()]),
        false,
        "latency",
    )?;
    wait_registered(&store).await?;
    let (mut total, mut ray_ms, mut added) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..=b.latency_tasks {
        let out = client
            .enqueue(EnqueueRequest::new(
                "hello",
                format!(r#"{{"name":"l{i}"}}"#),
            ))
            .await?;
        let t = tokio::time::timeout(Duration::from_secs(120), client.wait(out.id, |_| {}))
            .await
            .with_context(|| {
                format!(
                    "task {} not done in 120 s; see {}",
                    out.id,
                    ws.logs.display()
                )
            })??;
        ensure!(t.state == TaskState::Succeeded, "task {} {}", t.id, t.state);
        let job_id = t
            .ray_submission_id
            .clone()
            .context("no Ray submission id")?;
        // The task's result comes before its job has ended (the runner
        // wakes the worker, and Ray notices the exit later).
        let deadline = Instant::now() + Duration::from_secs(30);
        let job = loop {
            let job = ray.job(&job_id).await?;
            if job.status.is_terminal() || Instant::now() > deadline {
                break job;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let _ = ray.delete(&job_id).await;
        if i == 0 {
            continue; // the warm-up uploads the package
        }
        let finished = t.finished_at.context("no finished_at")?;
        let ms = (finished - t.enqueued_at).num_microseconds().unwrap_or(0) as f64 / 1000.0;
        let own = job.ray_duration_ms().context("a job without times")? as f64;
        total.push(ms);
        ray_ms.push(own);
        added.push(ms - own);
    }
    terminate(&mut w).await?;
    store.close().await;
    db.remove().await?;
    println!(
        "latency, {} tasks one at a time: enqueue→succeeded p50 {:.0} ms (p99 {:.0}); \
         Ray's own job time p50 {:.0} ms; wasmq adds p50 {:.0} ms (p99 {:.0})",
        b.latency_tasks,
        pct(&mut total.clone(), 50),
        pct(&mut total, 99),
        pct(&mut ray_ms, 50),
        pct(&mut added.clone(), 50),
        pct(&mut added, 99),
    );

    println!(
        "{:<22} {:>7} {:>10} {:>13} {:>12}",
        "worker flags", "tasks", "drain/s", "start→exit/s", "worker CPU"
    );
    println!("{:<22} {:>7} {:>10} {:>13} {:>12}", "", "", "", "", "ms/1k");
    let mut variants: Vec<Vec<String>> = vec![Vec::new()];
    variants.extend(
        b.batches
            .iter()
            .map(|n| vec!["--ray-batch".to_string(), n.to_string()]),
    );
    for (v, extra) in variants.iter().enumerate() {
        let mut runs = Vec::new();
        for run in 0..b.runs {
            let db = Db::create("sqlite", "", ws.work.path(), 1 + v * b.runs + run).await?;
            let r = drain(
                &ws,
                &db,
                &bytes,
                b.tasks,
                &cluster_flags(extra),
                &format!("drain{v}-{run}"),
            )
            .await;
            db.remove().await?;
            runs.push(r?);
        }
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (rate, wall, cpu) = runs[runs.len() / 2];
        let label = if extra.is_empty() {
            "(defaults)".to_string()
        } else {
            extra.join(" ")
        };
        println!(
            "{label:<22} {:>7} {rate:>10.1} {wall:>13.1} {cpu:>12.0}",
            b.tasks
        );
    }
    println!("drain: first task claimed → last finished, from the database's timestamps");
    Ok(())
}

/// One drain of `tasks` tasks by a worker that exits when idle: tasks/s
/// from the first claim to the last finish, from its start to its exit,
/// and its CPU per 1,000 tasks (ms).
async fn drain(
    ws: &Workspace,
    db: &Db,
    bytes: &[u8],
    tasks: usize,
    flags: &[String],
    name: &str,
) -> anyhow::Result<(f64, f64, f64)> {
    let store = AnyStore::connect(&db.url).await?;
    store.migrate().await?;
    let client = Client::from_store(store.clone());
    let module = client
        .push_module(&ws.runtime, "hello", None, bytes.to_vec())
        .await?;
    let batch: Vec<NewTask> = (0..tasks)
        .map(|i| NewTask::new(&module, format!(r#"{{"name":"t{i}"}}"#)).queue(QUEUE))
        .collect();
    store.enqueue_batch(&batch).await?;
    let cpu = children_cpu();
    let t = Instant::now();
    let mut w = start_worker(&ws.bin, &ws.cache, &ws.logs, &db.url, flags, true, name)?;
    let status = w.wait().await?;
    let wall = t.elapsed();
    let cpu = children_cpu().saturating_sub(cpu);
    ensure!(
        status.success(),
        "the worker exited with {status}; see {}",
        ws.logs.join(format!("{name}.err")).display()
    );
    let (succeeded, window) = db.drain_window(&store).await?;
    store.close().await;
    ensure!(
        succeeded as usize == tasks,
        "{succeeded} of {tasks} tasks succeeded; see {}",
        ws.logs.display()
    );
    Ok((
        tasks as f64 / window.as_secs_f64().max(1e-9),
        tasks as f64 / wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / tasks as f64,
    ))
}

/// What the first job of a module uploads: the runner and the module,
/// compressed; for the full binary and, when built, the small runner that
/// workers ship by default.
fn package_sizes(bin: &std::path::Path, module: &[u8]) -> anyhow::Result<()> {
    let small = bin.with_file_name(crate::worker::shipping::SMALL_RUNNER);
    for exe in [bin.to_path_buf(), small] {
        if !exe.exists() {
            continue;
        }
        let runner = Runner::new(RunnerSource::Ship(exe.clone()))?;
        let package = runner.package(&crate::runtime::sha256_hex(module), module, None)?;
        println!(
            "package with {}: {:.1} MB runner + {:.0} KB module = {:.1} MB compressed",
            exe.display(),
            std::fs::metadata(&exe)?.len() as f64 / 1e6,
            module.len() as f64 / 1e3,
            package.bytes.len() as f64 / 1e6
        );
    }
    Ok(())
}
