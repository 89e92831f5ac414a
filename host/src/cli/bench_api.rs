//! `wasmq bench api`: enqueues through the HTTP API (with a bearer token)
//! while a worker drains, then checks that every enqueued task is accounted
//! for. Runs one configuration per line: the enqueue batcher off (one
//! transaction per request, the baseline) and on.

use crate::api::{self, ApiToken, AppState, ServeConfig};
use crate::client::{BatchConfig, Client};
use crate::runtime::{Limits, Runtime, RuntimeConfig};
use crate::store::{AnyStore, PgStore, QueueSelector, Store, TaskState};
use crate::worker::{Executor, Mode, RetryPolicy, Worker, WorkerConfig};
use anyhow::{Context, bail, ensure};
use clap::Args;
use sqlx::postgres::PgConnectOptions;
use std::collections::HashSet;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Debug, Args)]
pub struct ApiBench {
    /// Tasks enqueued per configuration.
    #[arg(long, default_value_t = 20_000)]
    pub tasks: usize,
    /// Concurrent HTTP clients (keep-alive connections).
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// `postgres` or `sqlite`.
    #[arg(long, default_value = "postgres")]
    pub backend: String,
    /// PostgreSQL server to measure (a private schema is created and dropped).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pub postgres_url: String,
    /// Only the batched configuration (skip the one-commit-per-request baseline).
    #[arg(long)]
    pub no_baseline: bool,
    /// Batcher linger [default: 1ms].
    #[arg(long, value_parser = crate::runtime::parse_duration)]
    pub linger: Option<Duration>,
    /// Worker concurrency [default: number of cores].
    #[arg(long)]
    pub concurrency: Option<u32>,
    #[arg(
        long,
        default_value = "examples/target/wasm32-wasip2/release/hello.wasm"
    )]
    pub module: PathBuf,
}

pub async fn run(b: ApiBench) -> anyhow::Result<()> {
    let bytes = std::fs::read(&b.module)
        .with_context(|| format!("reading {} (build the examples first)", b.module.display()))?;
    ensure!(
        b.clients > 0 && b.tasks > 0,
        "--clients and --tasks must be positive"
    );
    let runtime = Arc::new(Runtime::new(RuntimeConfig::from_env()?)?);
    println!(
        "{} tasks enqueued through POST /api/v1/tasks by {} clients (bearer token), one worker draining, backend {}",
        b.tasks, b.clients, b.backend
    );
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "configuration", "enqueue/s", "p50 ms", "p99 ms", "max ms", "drained in s"
    );
    let mut configs = Vec::new();
    if !b.no_baseline {
        configs.push((
            "one transaction per request",
            BatchConfig {
                max_batch: 1,
                linger: Duration::ZERO,
                max_in_flight: b.clients,
            },
        ));
    }
    let mut batched = BatchConfig::default();
    if let Some(l) = b.linger {
        batched.linger = l;
    }
    configs.push(("batched (default)", batched));
    let mut rates = Vec::new();
    for (name, batch) in configs {
        let rate = with_store(&b, |store| {
            measure(name, store, batch, &b, &bytes, runtime.clone())
        })
        .await?;
        rates.push(rate);
    }
    if rates.len() == 2 {
        println!("batched / baseline: {:.2}x", rates[1] / rates[0]);
    }
    Ok(())
}

/// Runs `f` on a fresh database: a temporary SQLite file or a private
/// PostgreSQL schema, dropped afterwards.
async fn with_store<F, Fut>(b: &ApiBench, f: F) -> anyhow::Result<f64>
where
    F: FnOnce(AnyStore) -> Fut,
    Fut: Future<Output = anyhow::Result<f64>>,
{
    match b.backend.as_str() {
        "sqlite" => {
            let dir = tempfile::tempdir()?;
            let url = format!("sqlite://{}", dir.path().join("bench.db").display());
            f(AnyStore::connect(&url).await?).await
        }
        "postgres" => {
            let schema = format!(
                "wasmq_bench_api_{}_{}",
                std::process::id(),
                &Uuid::new_v4().simple().to_string()[..8]
            );
            let admin = AnyStore::connect(&b.postgres_url).await?;
            let AnyStore::Postgres(pg) = &admin else {
                bail!("--postgres-url must be a postgres:// URL");
            };
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                .execute(pg.pool())
                .await?;
            let opts = PgConnectOptions::from_str(&b.postgres_url)?
                .options([("search_path", schema.as_str())]);
            let r = f(AnyStore::Postgres(PgStore::open(opts, 20).await?)).await;
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .execute(pg.pool())
                .await?;
            r
        }
        other => bail!("--backend must be postgres or sqlite, not {other:?}"),
    }
}

async fn measure(
    name: &str,
    store: AnyStore,
    batch: BatchConfig,
    b: &ApiBench,
    bytes: &[u8],
    runtime: Arc<Runtime>,
) -> anyhow::Result<f64> {
    store.migrate().await?;
    let client = Client::from_store(store.clone());
    client
        .push_module(&runtime, "hello", None, bytes.to_vec())
        .await?;

    // The server, with a token, on a free loopback port.
    let secret = Uuid::new_v4().simple().to_string();
    let mut config = ServeConfig::new("127.0.0.1:0".parse()?);
    config.token = Some(ApiToken::new(&secret).map_err(anyhow::Error::msg)?);
    config.batch = batch;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let base = format!("http://{}", listener.local_addr()?);
    let state = AppState::new(client.clone(), runtime.clone(), &config);
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, api::app(state))
            .with_graceful_shutdown(async {
                let _ = server_stopped.await;
            })
            .await
    });

    // The worker drains while the clients enqueue.
    let mut cfg = WorkerConfig::new(Mode::Local);
    cfg.queues = QueueSelector::All;
    if let Some(c) = b.concurrency {
        cfg.concurrency = c;
    }
    let worker = Worker::new(
        Executor {
            runtime: runtime.clone(),
            store: store.clone(),
            defaults: Limits::default(),
            maxima: crate::runtime::Maxima::default(),
            policy: RetryPolicy::default(),
            cluster: None,
            grants: Arc::new(
                crate::worker::Grants::from_env(store.clone(), None).map_err(anyhow::Error::msg)?,
            ),
        },
        cfg,
    );
    let (stop_worker, worker_stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(worker.run(async {
        let _ = worker_stopped.await;
    }));

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(b.clients)
        .build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..b.clients {
        let (http, next, base, secret) = (http.clone(), next.clone(), base.clone(), secret.clone());
        let total = b.tasks;
        clients.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t = Instant::now();
                let r = http
                    .post(format!("{base}/api/v1/tasks"))
                    .bearer_auth(&secret)
                    .json(
                        &serde_json::json!({"module": "hello", "input": {"name": format!("b{i}")}}),
                    )
                    .send()
                    .await?;
                let status = r.status();
                let body: serde_json::Value = r.json().await?;
                ensure!(status.as_u16() == 201, "enqueue answered {status}: {body}");
                latencies.push(t.elapsed());
                ids.push(
                    body["id"]
                        .as_str()
                        .and_then(|s| Uuid::parse_str(s).ok())
                        .context("no id in the answer")?,
                );
            }
            anyhow::Ok((ids, latencies))
        }));
    }
    let mut ids = HashSet::new();
    let mut latencies = Vec::new();
    for c in clients {
        let (i, l) = c.await??;
        ids.extend(i);
        latencies.extend(l);
    }
    let elapsed = t0.elapsed();
    let rate = b.tasks as f64 / elapsed.as_secs_f64();
    ensure!(
        ids.len() == b.tasks,
        "{} distinct ids for {} enqueues",
        ids.len(),
        b.tasks
    );

    // Every enqueued task must run to success: wait for the drain.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stats = store.queue_stats().await?;
        let count =
            |s: TaskState| -> u64 { stats.iter().filter(|q| q.state == s).map(|q| q.count).sum() };
        let total: u64 = stats.iter().map(|q| q.count).sum();
        if count(TaskState::Succeeded) as usize == b.tasks {
            ensure!(
                total as usize == b.tasks,
                "{total} tasks stored, {} enqueued",
                b.tasks
            );
            break;
        }
        let unfinished = count(TaskState::Queued) + count(TaskState::Running);
        if unfinished == 0 || Instant::now() > deadline {
            bail!(
                "not every task succeeded: {} succeeded, {} failed, {} cancelled, {unfinished} unfinished of {}",
                count(TaskState::Succeeded),
                count(TaskState::Failed),
                count(TaskState::Cancelled),
                b.tasks
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained = t0.elapsed();
    // Spot-check: a sample of the returned ids are stored and succeeded.
    for id in ids.iter().take(100) {
        let t = store.get_task(*id).await?;
        ensure!(t.state == TaskState::Succeeded, "task {id} is {}", t.state);
    }

    let _ = stop_worker.send(());
    worker.await??;
    let _ = stop_server.send(());
    server.await??;

    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pct = |p: usize| ms(latencies[(latencies.len() * p / 100).min(latencies.len() - 1)]);
    println!(
        "{name:<28} {rate:>10.0} {:>10.2} {:>10.2} {:>10.2} {:>12.2}",
        pct(50),
        pct(99),
        ms(*latencies.last().unwrap()),
        drained.as_secs_f64()
    );
    Ok(rate)
}
