//! `wasmq bench fanout`: the cost of durable fan-out as a user gets it. One
//! real `wasmq worker` process at its default flags drains a parent that
//! `map`s `add` over N children, and, in the same run, N plain `add` tasks
//! as the baseline. Reports the cost per child (the parent's enqueue to its
//! finish, over N), the same for plain tasks and their ratio, and the
//! resume latency: the last child's finish to the parent's finish (the
//! requeue, the claim and the replay over N recorded children).

use super::bench_queue::{
    Db, RealWorker, Workspace, pct, start_worker, terminate, wait_registered,
};
use crate::client::{Client, EnqueueRequest};
use crate::store::{AnyStore, NewTask, Store, TaskState};
use anyhow::{Context, ensure};
use chrono::{DateTime, Utc};
use clap::Args;

#[derive(Debug, Args)]
pub struct FanoutBench {
    /// Children of each parent (and plain tasks of the baseline).
    #[arg(long, default_value_t = 1_000)]
    pub children: u32,
    /// Parents per backend, one after the other; figures are medians.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    #[command(flatten)]
    pub worker: RealWorker,
}

/// One parent's figures, in milliseconds.
struct Sample {
    per_child: f64,
    per_plain: f64,
    resume: f64,
    /// Of `resume`: the last child's finish → the parent's last run started
    /// (the child's batch commit, the wake-up, the claim).
    to_start: f64,
    /// Of `resume`: the parent's last run (ledger read and replay).
    replay: f64,
}

fn ms(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or(0) as f64 / 1000.0
}

pub async fn run(b: FanoutBench) -> anyhow::Result<()> {
    ensure!(
        b.runs > 0 && b.children > 0,
        "--runs and --children must be at least 1"
    );
    let (add, fanout) = (b.worker.module("add")?, b.worker.module("fanout")?);
    let Workspace {
        work,
        cache,
        logs,
        runtime,
        bin,
    } = Workspace::new(b.worker.bin.as_deref())?;
    let flags = b.worker.flags();
    println!(
        "wasmq bench fanout: `fanout` maps `add` over {} children, {} parents per backend, \
         one `wasmq worker` process ({}); baseline: {} plain `add` tasks",
        b.children,
        b.runs,
        b.worker.flags_label(),
        b.children,
    );
    println!(
        "{:<9} {:>13} {:>13} {:>7} {:>11} {:>11} {:>13} {:>11}",
        "backend",
        "per child ms",
        "per plain ms",
        "ratio",
        "resume p50",
        "resume max",
        "→ start p50",
        "replay p50"
    );
    for backend in b.worker.backends.selected() {
        let db = Db::create(backend, &b.worker.backends.postgres_url, work.path(), 0).await?;
        let result = async {
            let store = AnyStore::connect(&db.url).await?;
            store.migrate().await?;
            let client = Client::from_store(store.clone());
            client
                .push_module(&runtime, "add", None, add.clone())
                .await?;
            client
                .push_module(&runtime, "fanout", None, fanout.clone())
                .await?;
            let mut worker = start_worker(&bin, &cache, &logs, &db.url, &flags, false, backend)?;
            wait_registered(&store).await?;
            let mut samples = Vec::new();
            for _ in 0..b.runs {
                samples.push(measure(&client, &store, b.children).await?);
            }
            terminate(&mut worker).await?;
            store.close().await;
            anyhow::Ok(samples)
        }
        .await;
        db.remove().await?;
        let samples = result.with_context(|| format!("{backend}; logs in {}", logs.display()))?;
        let mut per_child: Vec<f64> = samples.iter().map(|s| s.per_child).collect();
        let mut per_plain: Vec<f64> = samples.iter().map(|s| s.per_plain).collect();
        let mut resume: Vec<f64> = samples.iter().map(|s| s.resume).collect();
        let mut to_start: Vec<f64> = samples.iter().map(|s| s.to_start).collect();
        let mut replay: Vec<f64> = samples.iter().map(|s| s.replay).collect();
        let (child, plain) = (pct(&mut per_child, 50), pct(&mut per_plain, 50));
        println!(
            "{backend:<9} {child:>13.3} {plain:>13.3} {:>6.2}x {:>11.1} {:>11.1} {:>13.1} {:>11.1}",
            child / plain.max(f64::MIN_POSITIVE),
            pct(&mut resume, 50),
            pct(&mut resume, 100),
            pct(&mut to_start, 50),
            pct(&mut replay, 50),
        );
    }
    println!(
        "per child: the parent's enqueue → its finish, over the children (its runs and the \
         children's); per plain: the first enqueue → the last finish of as many plain tasks"
    );
    println!(
        "resume (ms): the last child's finish → the parent's finish: → start is the last \
         child's finish → the parent's last run started (the child's batch write, the \
         wake-up, the claim), replay that run (ledger read, replay); the rest is its write"
    );
    Ok(())
}

async fn measure(client: &Client, store: &AnyStore, children: u32) -> anyhow::Result<Sample> {
    let out = client
        .enqueue(EnqueueRequest::new(
            "fanout",
            format!(r#"{{"count":{children}}}"#),
        ))
        .await?;
    let parent = client.wait(out.id, |_| {}).await?;
    ensure!(
        parent.state == TaskState::Succeeded,
        "the parent {} ended {}: {:?}",
        parent.id,
        parent.state,
        parent.error_message
    );
    let expected = format!(
        r#"{{"children":{children},"sum":{}}}"#,
        u64::from(children) * (u64::from(children) - 1)
    );
    ensure!(
        parent.result.as_deref() == Some(expected.as_str()),
        "wrong result {:?}",
        parent.result
    );
    let finished = parent.finished_at.context("no finished_at")?;
    let mut last_child = None;
    let mut from = 0;
    loop {
        let page = store.list_children(parent.id, from, 10_000).await?;
        for c in &page {
            last_child = last_child.max(c.finished_at);
        }
        match page.last().and_then(|c| c.spawn_seq) {
            Some(seq) if page.len() == 10_000 => from = seq + 1,
            _ => break,
        }
    }
    let last_child = last_child.context("no child finished")?;
    let attempts = store.list_attempts(parent.id).await?;
    let last_run = attempts.last().context("no attempt")?;

    // The baseline: as many plain tasks, in one batch, on the same worker.
    let m = store.resolve_module("add", None).await?;
    let plain: Vec<NewTask> = (0..children)
        .map(|i| NewTask::new(&m, format!(r#"{{"a":{i},"b":{i}}}"#)))
        .collect();
    let enqueued = Utc::now();
    let ids: Vec<_> = store
        .enqueue_batch(&plain)
        .await?
        .into_iter()
        .map(|o| o.id)
        .collect();
    let mut plain_done = enqueued;
    for id in ids {
        let t = client.wait(id, |_| {}).await?;
        ensure!(
            t.state == TaskState::Succeeded,
            "plain task {id} ended {}",
            t.state
        );
        plain_done = plain_done.max(t.finished_at.context("no finished_at")?);
    }
    Ok(Sample {
        per_child: ms(parent.enqueued_at, finished) / f64::from(children),
        per_plain: ms(enqueued, plain_done) / f64::from(children),
        resume: ms(last_child, finished),
        to_start: ms(last_child, last_run.started_at),
        replay: last_run.duration_ms.unwrap_or(0) as f64,
    })
}
