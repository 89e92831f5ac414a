//! `wasmq bench history`: what listing and queue statistics cost on a table
//! of many finished tasks. Measures the same live work with no history and
//! with `--history` finished tasks, in the store and through a real
//! `wasmq serve` process (`/metrics`, `GET /api/v1/tasks`), beside the
//! whole-table scan that `queue_stats` used to be and a listing of full rows
//! (the baselines, measured in the same run). Medians of `--samples` calls.

use super::bench_queue::{Backends, Db, fill_history};
use crate::store::{AnyStore, NewTask, Store, TaskFilter};
use anyhow::{Context, ensure};
use clap::Args;
use std::future::Future;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// Rows per `enqueue_batch` for the live tasks.
const ENQUEUE_CHUNK: usize = 5_000;

#[derive(Debug, Args)]
pub struct HistoryBench {
    /// Finished tasks (each with an attempt row) in the table.
    #[arg(long, default_value_t = 1_000_000)]
    pub history: usize,
    /// Queued tasks: the live work, the same with and without history.
    #[arg(long, default_value_t = 1_000)]
    pub live: usize,
    /// Bytes of padding in each finished task's input and result.
    #[arg(long, default_value_t = 512)]
    pub payload: usize,
    /// Calls measured per figure (the whole-table scan: a fifth as many).
    #[arg(long, default_value_t = 25)]
    pub samples: usize,
    #[command(flatten)]
    pub backends: Backends,
}

/// One backend's figures, in milliseconds (and bytes for responses).
#[derive(Debug, Default)]
struct Figures {
    stats: f64,
    scan: f64,
    list_summaries: f64,
    list_full_rows: f64,
    metrics: f64,
    api_page: f64,
    api_page_bytes: usize,
    /// The same page as full rows, as the API returned it before summaries.
    full_page_bytes: usize,
    api_big_page: f64,
    api_big_page_bytes: usize,
}

pub async fn run(b: HistoryBench) -> anyhow::Result<()> {
    ensure!(b.samples > 0, "--samples must be at least 1");
    let work = tempfile::Builder::new()
        .prefix("wasmq-bench-history-")
        .tempdir()?;
    println!(
        "wasmq bench history: {} queued tasks, with no history and with {} finished tasks \
         ({} bytes of padding in each input and result); medians of {} calls",
        b.live, b.history, b.payload, b.samples
    );
    for backend in b.backends.selected() {
        let db = Db::create(backend, &b.backends.postgres_url, work.path(), 0).await?;
        let result = measure(&b, &db).await;
        db.remove().await?;
        let (empty, full) = result?;
        print_backend(backend, &b, &empty, &full);
    }
    println!(
        "queue_stats: finished tasks come from trigger-kept counts, unfinished ones from \
         tasks_state_idx; `scan` is the GROUP BY over the whole table it replaced"
    );
    println!(
        "listing: summaries (no input, result or logs) vs the full rows listings returned before"
    );
    Ok(())
}

fn print_backend(backend: &str, b: &HistoryBench, empty: &Figures, full: &Figures) {
    let ratio = |a: f64, b: f64| a / b.max(f64::MIN_POSITIVE);
    println!("\n{backend}");
    println!(
        "  {:<34} {:>14} {:>14} {:>8}",
        "median ms",
        "no history",
        format!("{} finished", b.history),
        "ratio"
    );
    let row = |name: &str, a: f64, z: f64| {
        println!("  {name:<34} {a:>14.2} {z:>14.2} {:>7.2}x", ratio(z, a));
    };
    row("queue_stats", empty.stats, full.stats);
    row("  baseline: whole-table scan", empty.scan, full.scan);
    row(
        "list_tasks, 50 summaries",
        empty.list_summaries,
        full.list_summaries,
    );
    row(
        "  baseline: 50 full rows",
        empty.list_full_rows,
        full.list_full_rows,
    );
    row("GET /metrics", empty.metrics, full.metrics);
    row("GET /api/v1/tasks (50)", empty.api_page, full.api_page);
    row(
        "GET /api/v1/tasks?limit=1000",
        empty.api_big_page,
        full.api_big_page,
    );
    println!(
        "  queue_stats with history: {:.0}x faster than the scan; API pages of {} and {} bytes \
         ({} bytes for 50 full rows)",
        ratio(full.scan, full.stats),
        full.api_page_bytes,
        full.api_big_page_bytes,
        full.full_page_bytes
    );
}

/// Figures with the live work only, then with the history added.
async fn measure(b: &HistoryBench, db: &Db) -> anyhow::Result<(Figures, Figures)> {
    let store = AnyStore::connect(&db.url).await?;
    store.migrate().await?;
    // Listings and statistics never read module bytes: any bytes do.
    let bytes = b"history bench".to_vec();
    let module = store
        .push_module("history", None, &bytes, &crate::runtime::sha256_hex(&bytes))
        .await?;
    let mut batch = Vec::with_capacity(ENQUEUE_CHUNK);
    for i in 0..b.live {
        batch.push(NewTask::new(&module, format!(r#"{{"name":"l{i}"}}"#)).queue("live"));
        if batch.len() == ENQUEUE_CHUNK || i + 1 == b.live {
            store.enqueue_batch(&batch).await?;
            batch.clear();
        }
    }
    let empty = figures(b, db, &store).await?;
    let t = Instant::now();
    fill_history(&store, &module, b.history, b.payload).await?;
    println!(
        "{}: {} finished tasks written in {:.0} s",
        db.backend,
        b.history,
        t.elapsed().as_secs_f64()
    );
    let full = figures(b, db, &store).await?;
    store.close().await;
    Ok((empty, full))
}

async fn figures(b: &HistoryBench, db: &Db, store: &AnyStore) -> anyhow::Result<Figures> {
    let n = b.samples;
    let page = TaskFilter {
        limit: 50,
        ..Default::default()
    };
    let mut f = Figures {
        stats: median_ms(n, || async { store.queue_stats().await.map(drop) }).await?,
        scan: median_ms(n.div_ceil(5), || scan(store)).await?,
        list_summaries: median_ms(n, || async { store.list_tasks(&page).await.map(drop) }).await?,
        list_full_rows: median_ms(n, || full_rows(store, 50)).await?,
        full_page_bytes: full_page_bytes(store, &page).await?,
        ..Figures::default()
    };
    let mut serve = Serve::start(&db.url).await?;
    let http = reqwest::Client::new();
    let result = async {
        let (metrics, page) = (serve.url("/metrics"), serve.url("/api/v1/tasks"));
        let big = serve.url("/api/v1/tasks?limit=1000");
        f.metrics = median_ms(n, || body_bytes(&http, &metrics)).await?;
        f.api_page = median_ms(n, || body_bytes(&http, &page)).await?;
        f.api_page_bytes = body_bytes(&http, &page).await?;
        f.api_big_page = median_ms(n, || body_bytes(&http, &big)).await?;
        f.api_big_page_bytes = body_bytes(&http, &big).await?;
        anyhow::Ok(())
    }
    .await;
    serve.stop().await?;
    result.map(|()| f)
}

/// GETs `url` and reads the whole body; its size in bytes.
async fn body_bytes(http: &reqwest::Client, url: &str) -> anyhow::Result<usize> {
    let r = http.get(url).send().await?.error_for_status()?;
    Ok(r.bytes().await?.len())
}

/// Median wall time of `n` sequential calls of `f`, after one warm-up call.
async fn median_ms<F, Fut, T, E>(n: usize, mut f: F) -> anyhow::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Into<anyhow::Error>,
{
    f().await.map_err(Into::into)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await.map_err(Into::into)?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
}

/// What `queue_stats` cost before migration 0004: every row, every scrape.
async fn scan(store: &AnyStore) -> anyhow::Result<()> {
    const SQL: &str = "SELECT queue, state, count(*), \
         min(CASE WHEN state = 'queued' THEN enqueued_at END) FROM tasks GROUP BY queue, state";
    match store {
        AnyStore::Postgres(pg) => drop(sqlx::query(SQL).fetch_all(pg.pool()).await?),
        AnyStore::Sqlite(lite) => drop(sqlx::query(SQL).fetch_all(lite.pool()).await?),
        other => anyhow::bail!("bench history cannot read a {} store", other.backend_name()),
    }
    Ok(())
}

/// What a listing page cost before summaries: whole rows, payloads included.
async fn full_rows(store: &AnyStore, limit: i64) -> anyhow::Result<()> {
    const SQL: &str = "SELECT * FROM tasks ORDER BY seq DESC LIMIT ";
    let sql = sqlx::AssertSqlSafe(format!("{SQL}{limit}"));
    match store {
        AnyStore::Postgres(pg) => drop(sqlx::query(sql).fetch_all(pg.pool()).await?),
        AnyStore::Sqlite(lite) => drop(sqlx::query(sql).fetch_all(lite.pool()).await?),
        other => anyhow::bail!("bench history cannot read a {} store", other.backend_name()),
    }
    Ok(())
}

/// Bytes of a page of `filter` as the API wrote it when listings held full
/// tasks.
async fn full_page_bytes(store: &AnyStore, filter: &TaskFilter) -> anyhow::Result<usize> {
    let mut tasks = Vec::new();
    for t in store.list_tasks(filter).await? {
        tasks.push(crate::api::task_json(&store.get_task(t.id).await?));
    }
    Ok(serde_json::to_vec(&serde_json::json!({ "tasks": tasks }))?.len())
}

/// A `wasmq serve` process of this binary on a free loopback port.
struct Serve {
    child: Child,
    base: String,
}

impl Serve {
    async fn start(db_url: &str) -> anyhow::Result<Serve> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(std::env::current_exe()?)
            .args(["--database-url", db_url, "serve", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .env_remove("WASMQ_API_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting wasmq serve")?;
        let base = format!("http://127.0.0.1:{port}");
        let ready = format!("{base}/readyz");
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(&ready).await
                && r.status().is_success()
            {
                return Ok(Serve { child, base });
            }
            ensure!(Instant::now() < until, "wasmq serve was not ready in 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}
