//! `wasmq bench cluster`: enqueue→succeeded latency in cluster mode against
//! local mode (p50 of tasks enqueued one at a time on an idle worker), the
//! split between Ray's own time per job (its start and end times) and what
//! wasmq adds, and throughput with 16 jobs in flight. SQLite in a temp dir,
//! workers in this process, the `hello` example.

use super::bench_queue::pct;
use super::cluster::RayArgs;
use crate::client::{Client, EnqueueRequest};
use crate::runtime::{Runtime, RuntimeConfig};
use crate::store::{AnyStore, NewTask, Store, TaskState};
use crate::worker::cluster::Cluster;
use crate::worker::{Mode, WorkerConfig};
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct ClusterBench {
    /// The Ray dashboard address, e.g. http://127.0.0.1:8265.
    #[arg(long, value_name = "URL", env = "WASMQ_RAY_ADDRESS")]
    pub cluster: String,
    /// Tasks enqueued one at a time for the latency figures (per mode).
    #[arg(long, default_value_t = 20)]
    pub tasks: usize,
    /// Tasks enqueued at once for the throughput figure.
    #[arg(long, default_value_t = 64)]
    pub throughput_tasks: usize,
    /// Jobs in flight for the throughput figure.
    #[arg(long, default_value_t = 16)]
    pub in_flight: u32,
    #[arg(
        long,
        default_value = "examples/target/wasm32-wasip2/release/hello.wasm"
    )]
    pub module: PathBuf,
    #[command(flatten)]
    pub ray: RayArgs,
}

pub async fn run(mut b: ClusterBench) -> anyhow::Result<()> {
    let bytes = std::fs::read(&b.module)
        .with_context(|| format!("reading {} (build the examples first)", b.module.display()))?;
    // Ray's start and end times are read back after each task.
    b.ray.ray_keep_jobs = true;
    let cluster = Arc::new(b.ray.cluster(&b.cluster).await?);
    let runtime = Arc::new(Runtime::new(RuntimeConfig::from_env()?)?);
    let dir = tempfile::tempdir()?;
    let store =
        AnyStore::connect(&format!("sqlite://{}", dir.path().join("b.db").display())).await?;
    store.migrate().await?;
    let client = Client::from_store(store.clone());
    client.push_module(&runtime, "hello", None, bytes).await?;
    println!(
        "{} tasks one at a time per mode, then {} tasks with {} in flight; SQLite; module {}",
        b.tasks,
        b.throughput_tasks,
        b.in_flight,
        b.module.display()
    );

    let local = latencies(&client, &store, &runtime, None, b.tasks).await?;
    let cl = latencies(&client, &store, &runtime, Some(&cluster), b.tasks).await?;
    let (mut local_ms, mut cluster_ms) = (local.total, cl.total.clone());
    let (mut ray_ms, mut added_ms) = (cl.ray, cl.added);
    let lp50 = pct(&mut local_ms, 50);
    let cp50 = pct(&mut cluster_ms, 50);
    println!(
        "{:<44} {:>10}",
        "enqueue→succeeded p50, local mode",
        format!("{lp50:.1} ms")
    );
    println!(
        "{:<44} {:>10}",
        "enqueue→succeeded p50, cluster mode",
        format!("{cp50:.1} ms")
    );
    println!(
        "{:<44} {:>10}",
        "  of which Ray's own time (job start→end) p50",
        format!("{:.1} ms", pct(&mut ray_ms, 50))
    );
    println!(
        "{:<44} {:>10}",
        "  of which wasmq's added time p50",
        format!("{:.1} ms", pct(&mut added_ms, 50))
    );
    println!(
        "{:<44} {:>10}",
        "cluster / local (p50)",
        format!("{:.0}×", cp50 / lp50.max(1e-9))
    );

    // Throughput: everything enqueued at once, `in_flight` jobs at a time.
    let module = store.resolve_module("hello", None).await?;
    let tasks: Vec<NewTask> = (0..b.throughput_tasks)
        .map(|i| NewTask::new(&module, format!(r#"{{"name":"t{i}"}}"#)))
        .collect();
    let t = Instant::now();
    store.enqueue_batch(&tasks).await?;
    let mut cfg = config(Some(b.in_flight));
    cfg.exit_when_idle = true;
    let stats = worker(&store, &runtime, Some(&cluster), cfg)?
        .run(std::future::pending())
        .await?;
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        stats.succeeded as usize == b.throughput_tasks,
        "throughput: {} of {} succeeded",
        stats.succeeded,
        b.throughput_tasks
    );
    println!(
        "{:<44} {:>10}",
        format!("throughput, {} in flight", b.in_flight),
        format!("{:.2} tasks/s", b.throughput_tasks as f64 / secs)
    );
    cleanup(&cluster, &store).await
}

struct Samples {
    total: Vec<f64>,
    ray: Vec<f64>,
    added: Vec<f64>,
}

async fn latencies(
    client: &Client,
    store: &AnyStore,
    runtime: &Arc<Runtime>,
    cluster: Option<&Arc<Cluster>>,
    n: usize,
) -> anyhow::Result<Samples> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let w = worker(store, runtime, cluster, config(cluster.map(|_| 4)))?;
    let handle = tokio::spawn(w.run(async {
        let _ = stop_rx.await;
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut s = Samples {
        total: Vec::new(),
        ray: Vec::new(),
        added: Vec::new(),
    };
    // One warm-up task (compiles the module, builds and uploads the package).
    for i in 0..=n {
        let out = client
            .enqueue(EnqueueRequest::new(
                "hello",
                format!(r#"{{"name":"l{i}"}}"#),
            ))
            .await?;
        let t = client.wait(out.id, |_| {}).await?;
        anyhow::ensure!(t.state == TaskState::Succeeded, "task {} {}", t.id, t.state);
        if i == 0 {
            continue;
        }
        let finished = t.finished_at.context("no finished_at")?;
        let total = (finished - t.enqueued_at).num_microseconds().unwrap_or(0) as f64 / 1000.0;
        s.total.push(total);
        if let Some(c) = cluster {
            let id = t.ray_submission_id.context("no Ray submission id")?;
            let job = c.client.job(&id).await?;
            let ray = job.ray_duration_ms().context("job without times")? as f64;
            s.ray.push(ray);
            s.added.push(total - ray);
            let _ = c.client.delete(&id).await;
        }
    }
    let _ = stop_tx.send(());
    handle.await??;
    Ok(s)
}

fn config(in_flight: Option<u32>) -> WorkerConfig {
    let mut cfg = match in_flight {
        Some(n) => {
            let mut c = WorkerConfig::new(Mode::Cluster);
            c.concurrency = n;
            c
        }
        None => WorkerConfig::new(Mode::Local),
    };
    cfg.queues = crate::store::QueueSelector::All;
    cfg
}

/// Deletes the jobs of this bench's tasks (kept to read their times).
async fn cleanup(cluster: &Cluster, store: &AnyStore) -> anyhow::Result<()> {
    let tasks = store
        .list_tasks(&crate::store::TaskFilter {
            limit: crate::store::MAX_LIST_LIMIT,
            ..Default::default()
        })
        .await?;
    for id in tasks.iter().filter_map(|t| t.ray_submission_id.as_deref()) {
        let _ = cluster.client.delete(id).await;
    }
    Ok(())
}

/// A worker of the bench, in-process (`cluster: None`) or on Ray.
fn worker(
    store: &AnyStore,
    runtime: &Arc<Runtime>,
    cluster: Option<&Arc<Cluster>>,
    cfg: WorkerConfig,
) -> anyhow::Result<crate::worker::Worker> {
    Ok(crate::worker::Worker::new(
        crate::worker::Executor {
            runtime: runtime.clone(),
            store: store.clone(),
            defaults: crate::runtime::Limits::default(),
            maxima: crate::runtime::Maxima::default(),
            policy: crate::worker::RetryPolicy::default(),
            cluster: cluster.cloned(),
            grants: Arc::new(
                crate::worker::Grants::from_env(store.clone(), None).map_err(anyhow::Error::msg)?,
            ),
        },
        cfg,
    ))
}
