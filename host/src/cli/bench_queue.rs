//! `wasmq bench queue`: drain throughput and enqueue→start/done latency, on
//! SQLite and PostgreSQL, with a real worker in this process.

use crate::client::{Client, EnqueueRequest};
use crate::runtime::{Limits, Runtime, RuntimeConfig};
use crate::store::{AnyStore, NewTask, PgStore, Store, TaskState};
use crate::worker::{Executor, Mode, RetryPolicy, Worker, WorkerConfig};
use anyhow::Context;
use clap::Args;
use sqlx::postgres::PgConnectOptions;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct QueueBench {
    /// Tasks pre-enqueued for the drain phase.
    #[arg(long, default_value_t = 20_000)]
    pub tasks: usize,
    /// Tasks enqueued one at a time for the latency phase.
    #[arg(long, default_value_t = 200)]
    pub latency_tasks: usize,
    /// PostgreSQL server to measure (a private schema is created and dropped).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pub postgres_url: String,
    /// Skip PostgreSQL.
    #[arg(long)]
    pub no_postgres: bool,
    #[arg(
        long,
        default_value = "examples/target/wasm32-wasip2/release/hello.wasm"
    )]
    pub module: PathBuf,
    /// Worker concurrency [default: number of cores].
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// Tasks claimed ahead of free slots [default: 512].
    #[arg(long, default_value_t = 512)]
    pub prefetch: u32,
}

pub async fn run(b: QueueBench) -> anyhow::Result<()> {
    let bytes = std::fs::read(&b.module)
        .with_context(|| format!("reading {} (build the examples first)", b.module.display()))?;
    let runtime = Arc::new(Runtime::new(RuntimeConfig::from_env()?)?);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let concurrency = b.concurrency.unwrap_or(cores);
    println!(
        "{} tasks drained by one worker (concurrency {concurrency}, prefetch {}), {} latency samples; durable commits",
        b.tasks, b.prefetch, b.latency_tasks
    );
    println!(
        "{:<10} {:>12} {:>14} {:>14} {:>14} {:>14}",
        "backend", "drain tasks/s", "start p50 ms", "start p99 ms", "done p50 ms", "done p99 ms"
    );

    let dir = tempfile::tempdir()?;
    let sqlite = AnyStore::connect(&format!(
        "sqlite://{}",
        dir.path().join("bench.db").display()
    ))
    .await?;
    measure("sqlite", sqlite, &b, &bytes, &runtime, concurrency).await?;

    if !b.no_postgres {
        let schema = format!("wasmq_bench_{}", std::process::id());
        let admin = AnyStore::connect(&b.postgres_url).await?;
        let AnyStore::Postgres(pg) = &admin else {
            anyhow::bail!("--postgres-url must be a postgres:// URL");
        };
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(pg.pool())
            .await?;
        let opts = PgConnectOptions::from_str(&b.postgres_url)?
            .options([("search_path", schema.as_str())]);
        let store = AnyStore::Postgres(PgStore::open(opts, 10).await?);
        let r = measure("postgres", store, &b, &bytes, &runtime, concurrency).await;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(pg.pool())
            .await?;
        r?;
    }
    Ok(())
}

async fn measure(
    name: &str,
    store: AnyStore,
    b: &QueueBench,
    bytes: &[u8],
    runtime: &Arc<Runtime>,
    concurrency: u32,
) -> anyhow::Result<()> {
    store.migrate().await?;
    let client = Client::from_store(store.clone());
    client
        .push_module(runtime, "hello", None, bytes.to_vec())
        .await?;

    // (a) Drain: everything enqueued first, then one worker until idle.
    let module = store.resolve_module("hello", None).await?;
    let mut batch = Vec::with_capacity(1000);
    for i in 0..b.tasks {
        batch.push(NewTask::new(&module, format!(r#"{{"name":"t{i}"}}"#)));
        if batch.len() == 1000 || i + 1 == b.tasks {
            store.enqueue_batch(&batch).await?;
            batch.clear();
        }
    }
    let mut cfg = worker_config(concurrency, b.prefetch);
    cfg.exit_when_idle = true;
    let t = Instant::now();
    let stats = worker(&store, runtime, None, cfg)
        .run(std::future::pending())
        .await?;
    let drain = stats.completed as f64 / t.elapsed().as_secs_f64();
    anyhow::ensure!(
        stats.succeeded as usize == b.tasks,
        "drain: {} of {} tasks succeeded",
        stats.succeeded,
        b.tasks
    );

    // (b) Latency on an idle worker: one task at a time.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let w = worker(
        &store,
        runtime,
        None,
        worker_config(concurrency, concurrency * 4),
    );
    let handle = tokio::spawn(w.run(async {
        let _ = stop_rx.await;
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut start = Vec::new();
    let mut done = Vec::new();
    for i in 0..b.latency_tasks {
        let out = client
            .enqueue(EnqueueRequest::new(
                "hello",
                format!(r#"{{"name":"l{i}"}}"#),
            ))
            .await?;
        let t = client.wait(out.id, |_| {}).await?;
        anyhow::ensure!(
            t.state == TaskState::Succeeded,
            "latency task {} {}",
            t.id,
            t.state
        );
        let started = t.started_at.context("no started_at")?;
        let finished = t.finished_at.context("no finished_at")?;
        start.push((started - t.enqueued_at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        done.push((finished - t.enqueued_at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
    }
    let _ = stop_tx.send(());
    handle.await??;
    println!(
        "{name:<10} {drain:>12.0} {:>14.2} {:>14.2} {:>14.2} {:>14.2}",
        pct(&mut start, 50),
        pct(&mut start, 99),
        pct(&mut done, 50),
        pct(&mut done, 99)
    );
    Ok(())
}

fn worker_config(concurrency: u32, prefetch: u32) -> WorkerConfig {
    let mut cfg = WorkerConfig::new(Mode::Local);
    cfg.queues = crate::store::QueueSelector::All;
    cfg.concurrency = concurrency;
    cfg.prefetch = prefetch;
    cfg
}

/// A worker of the bench, in-process (`cluster: None`) or on Ray.
pub(super) fn worker(
    store: &AnyStore,
    runtime: &Arc<Runtime>,
    cluster: Option<&Arc<crate::worker::Cluster>>,
    cfg: WorkerConfig,
) -> Worker {
    Worker::new(
        Executor {
            runtime: runtime.clone(),
            store: store.clone(),
            defaults: Limits::default(),
            policy: RetryPolicy::default(),
            cluster: cluster.cloned(),
        },
        cfg,
    )
}

pub(super) fn pct(v: &mut [f64], p: usize) -> f64 {
    v.sort_by(f64::total_cmp);
    v[(v.len() * p / 100).min(v.len() - 1)]
}
