//! `wasmq bench http`: outbound HTTP as a user gets it. One real `wasmq
//! worker` process at its default flags drains N tasks of the `fetch`
//! example, each calling a JSON API on a loopback server that this process
//! runs (granted to the module explicitly, as an operator grants an
//! address); in the same run, as the baseline, it drains N `hello` tasks.
//! Reports requests/s (first start → last finish, from the database's
//! timestamps), the worker's CPU per request, the time a request adds to a
//! task against the baseline, and the grant check's own cost in-process.

use super::bench::grant_check_ns;
use super::bench_cpu::children_cpu;
use super::bench_queue::{Db, QUEUE, RealWorker, Workspace, pct, start_worker};
use crate::client::Client;
use crate::runtime::HttpGrant;
use crate::store::{AnyStore, NewTask, Store};
use anyhow::{Context, ensure};
use clap::Args;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The body every request gets back: a small JSON document, as an API
/// answers.
const BODY: &str = r#"{"id":42,"name":"widget","tags":["a","b"],"price":12.5}"#;

#[derive(Debug, Args)]
pub struct HttpBench {
    /// Tasks per drain (one request each), and `hello` tasks of the baseline.
    #[arg(long, default_value_t = 2_000)]
    pub tasks: usize,
    /// Drains per backend; figures are medians.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    #[command(flatten)]
    pub worker: RealWorker,
}

/// One drain's figures.
struct Drain {
    per_s: f64,
    /// Worker CPU per task, µs.
    cpu_us: f64,
}

pub async fn run(b: HttpBench) -> anyhow::Result<()> {
    ensure!(
        b.runs > 0 && b.tasks > 0,
        "--runs and --tasks must be at least 1"
    );
    let (fetch, hello) = (b.worker.module("fetch")?, b.worker.module("hello")?);
    let ws = Workspace::new(b.worker.bin.as_deref())?;
    let flags = b.worker.flags();

    let served = Arc::new(AtomicU64::new(0));
    let addr = serve(served.clone()).await?;
    let grant: HttpGrant = format!("http://{addr}/")
        .parse()
        .map_err(anyhow::Error::msg)?;
    let input = format!(r#"{{"url":"http://{addr}/item","json":true}}"#);

    println!(
        "wasmq bench http: {} `fetch` tasks, one GET of a JSON API on {addr} each, granted \
         http://{addr}/; baseline {} `hello` tasks; one `wasmq worker --exit-when-idle` ({}); \
         median of {} runs",
        b.tasks,
        b.tasks,
        b.worker.flags_label(),
        b.runs,
    );
    println!(
        "grant check in-process (16 grants): {:.0} ns granted, {:.0} ns refused",
        grant_check_ns(16, 200_000, true)?,
        grant_check_ns(16, 200_000, false)?,
    );
    println!(
        "{:<9} {:>11} {:>13} {:>7} {:>12} {:>16}",
        "backend", "requests/s", "hello tasks/s", "ratio", "+ms/request", "CPU µs fetch/hello"
    );
    for backend in b.worker.backends.selected() {
        let (mut fetch_s, mut hello_s) = (Vec::new(), Vec::new());
        let (mut fetch_cpu, mut hello_cpu) = (Vec::new(), Vec::new());
        for run in 0..b.runs {
            let before = served.load(Ordering::Relaxed);
            let f = drain(
                &ws,
                &b,
                &flags,
                backend,
                run,
                "fetch",
                &fetch,
                &input,
                Some(&grant),
            )
            .await
            .with_context(|| format!("{backend} fetch run {}", run + 1))?;
            let requests = served.load(Ordering::Relaxed) - before;
            ensure!(
                requests == b.tasks as u64,
                "the server saw {requests} requests for {} tasks",
                b.tasks
            );
            let h = drain(
                &ws,
                &b,
                &flags,
                backend,
                run,
                "hello",
                &hello,
                r#"{"name":"bench"}"#,
                None,
            )
            .await
            .with_context(|| format!("{backend} hello run {}", run + 1))?;
            fetch_s.push(f.per_s);
            hello_s.push(h.per_s);
            fetch_cpu.push(f.cpu_us);
            hello_cpu.push(h.cpu_us);
        }
        let (f, h) = (pct(&mut fetch_s, 50), pct(&mut hello_s, 50));
        println!(
            "{backend:<9} {f:>11.0} {h:>13.0} {:>6.2}x {:>12.3} {:>16}",
            f / h.max(f64::MIN_POSITIVE),
            1e3 / f.max(f64::MIN_POSITIVE) - 1e3 / h.max(f64::MIN_POSITIVE),
            format!(
                "{:.0}/{:.0}",
                pct(&mut fetch_cpu, 50),
                pct(&mut hello_cpu, 50)
            ),
        );
    }
    println!(
        "requests/s: fetch tasks drained per second (first start → last finish); +ms/request: \
         the time one request adds to a task at that rate, against `hello`; CPU: the worker \
         process's per task (its database work included; the HTTP server's and PostgreSQL's \
         are not)"
    );
    Ok(())
}

/// Enqueues `b.tasks` tasks of `module` (pushed as `name`, granted `grant`),
/// then drains them with a worker that exits when idle.
#[allow(clippy::too_many_arguments)]
async fn drain(
    ws: &Workspace,
    b: &HttpBench,
    flags: &[String],
    backend: &'static str,
    run: usize,
    name: &str,
    module: &[u8],
    input: &str,
    grant: Option<&HttpGrant>,
) -> anyhow::Result<Drain> {
    let db = Db::create(
        backend,
        &b.worker.backends.postgres_url,
        ws.work.path(),
        run,
    )
    .await?;
    let result = async {
        let store = AnyStore::connect(&db.url).await?;
        store.migrate().await?;
        let client = Client::from_store(store.clone());
        let m = client
            .push_module(&ws.runtime, name, None, module.to_vec())
            .await?;
        if let Some(grant) = grant {
            client
                .grant_http(name, None, std::slice::from_ref(grant))
                .await?;
        }
        let tasks: Vec<NewTask> = (0..b.tasks)
            .map(|_| NewTask::new(&m, input.to_string()).queue(QUEUE))
            .collect();
        for chunk in tasks.chunks(5_000) {
            store.enqueue_batch(chunk).await?;
        }
        let cpu_before = children_cpu();
        let log = format!("{backend}-{name}-{run}");
        let mut worker = start_worker(&ws.bin, &ws.cache, &ws.logs, &db.url, flags, true, &log)?;
        let status = worker.wait().await?;
        ensure!(
            status.success(),
            "the worker exited with {status}; see {}",
            ws.logs.display()
        );
        let cpu = children_cpu().saturating_sub(cpu_before);
        let (succeeded, window) = db.drain_window(&store).await?;
        ensure!(
            succeeded == b.tasks as i64,
            "{succeeded} of {} tasks succeeded; see {}",
            b.tasks,
            ws.logs.display()
        );
        store.close().await;
        anyhow::Ok(Drain {
            per_s: b.tasks as f64 / window.as_secs_f64().max(1e-6),
            cpu_us: cpu.as_secs_f64() * 1e6 / b.tasks as f64,
        })
    }
    .await;
    db.remove().await?;
    result
}

/// A JSON API on an ephemeral loopback port, counting what it serves.
async fn serve(served: Arc<AtomicU64>) -> anyhow::Result<std::net::SocketAddr> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/item",
        get(move || {
            served.fetch_add(1, Ordering::Relaxed);
            async { ([(http::header::CONTENT_TYPE, "application/json")], BODY) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}
