//! `wasmq worker`: lease and run tasks until SIGTERM/SIGINT.

use super::admin::connect;
use super::exit::Exit;
use super::limits::{LimitArgs, MaximaArgs};
use crate::runtime::{Runtime, parse_duration};
use crate::store::QueueSelector;
use crate::worker::{Executor, Grants, Mode, Prefetch, RetryPolicy, Worker, WorkerConfig};
use clap::Args;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Run up to --concurrency tasks at once in this process (the default).
    #[arg(long, conflicts_with = "sync")]
    pub local: bool,
    /// Run one task at a time on the worker's own thread.
    #[arg(long, conflicts_with = "cluster")]
    pub sync: bool,
    /// Run each task as a job on the Ray cluster whose dashboard is at URL
    /// (e.g. http://HEAD:8265).
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "local",
        env = "WASMQ_RAY_ADDRESS"
    )]
    pub cluster: Option<String>,
    /// Ray jobs in flight at once (cluster mode; each runs up to
    /// --ray-batch tasks) [default: 16].
    #[arg(
        long,
        value_name = "N",
        requires = "cluster",
        conflicts_with = "concurrency"
    )]
    pub max_in_flight: Option<u32>,
    #[command(flatten)]
    pub ray: super::cluster::RayArgs,
    /// Comma-separated queues to serve [default: default].
    #[arg(long, conflicts_with = "all_queues")]
    pub queues: Option<String>,
    /// Serve every queue.
    #[arg(long)]
    pub all_queues: bool,
    /// Tasks running at once [default: number of cores; 1 with --sync].
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// Tasks claimed ahead of free slots, or `auto`: what the runners finish
    /// in WASMQ_PREFETCH_HORIZON (100ms), at most 512 [default: auto].
    #[arg(long, value_parser = parse_prefetch)]
    pub prefetch: Option<Prefetch>,
    /// Lease length [default: 30s, or WASMQ_LEASE].
    #[arg(long, value_parser = parse_duration)]
    pub lease: Option<Duration>,
    /// Grace period for in-flight tasks at shutdown [default: 30s, or WASMQ_GRACE].
    #[arg(long, value_parser = parse_duration)]
    pub grace: Option<Duration>,
    /// Poll interval when no wake-up event arrives [default: 1s].
    #[arg(long, value_parser = parse_duration)]
    pub poll_interval: Option<Duration>,
    /// First retry delay [default: 1s, or WASMQ_BACKOFF_BASE].
    #[arg(long, value_parser = parse_duration)]
    pub backoff_base: Option<Duration>,
    /// Longest retry delay [default: 10m, or WASMQ_BACKOFF_CAP].
    #[arg(long, value_parser = parse_duration)]
    pub backoff_cap: Option<Duration>,
    /// Defaults for tasks that set no limits of their own.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// The most a task may ask for: this worker refuses to run a task above
    /// them (it fails as `task-error` `invalid-input`).
    #[command(flatten)]
    pub maxima: MaximaArgs,
    /// Exit once no task is queued or running on the served queues.
    #[arg(long)]
    pub exit_when_idle: bool,
    /// Serve this worker's Prometheus metrics at http://ADDR/metrics; only
    /// on loopback unless a token is set (then /metrics needs it).
    #[arg(long, env = "WASMQ_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// File holding the bearer token of --metrics-listen (else WASMQ_API_TOKEN).
    #[arg(long, requires = "metrics_listen")]
    pub api_token_file: Option<std::path::PathBuf>,
    /// Also trust the CA certificates in this PEM file for the HTTPS
    /// requests of tasks granted outbound HTTP (`wasmq module grant`).
    #[arg(long, value_name = "PEM", env = "WASMQ_HTTP_CA_FILE")]
    pub http_ca_file: Option<std::path::PathBuf>,
}

impl WorkerArgs {
    pub fn mode(&self) -> Mode {
        if self.cluster.is_some() {
            Mode::Cluster
        } else if self.sync {
            Mode::Sync
        } else {
            Mode::Local
        }
    }
}

pub async fn run(db: &str, a: WorkerArgs) -> anyhow::Result<()> {
    let metrics_token = match a.metrics_listen {
        Some(addr) => {
            let token = super::serve::token(a.api_token_file.as_deref())?;
            crate::api::check_listen(&addr, token.as_ref())
                .map_err(|e| super::exit::Exit::usage(format!("--metrics-listen: {e}")))?;
            Some((addr, token))
        }
        None => None,
    };
    let client = connect(db).await?;
    let _metrics = match metrics_token {
        Some((addr, token)) => Some(crate::api::serve_worker_metrics(addr, token).await?),
        None => None,
    };
    let mut cfg = WorkerConfig::new(a.mode());
    if a.all_queues {
        cfg.queues = QueueSelector::All;
    } else if let Some(q) = &a.queues {
        cfg.queues = QueueSelector::parse(q);
    }
    if let Some(n) = a.max_in_flight {
        anyhow::ensure!(n > 0, Exit::usage("--max-in-flight must be at least 1"));
        cfg.concurrency = n;
    }
    if let Some(c) = a.concurrency {
        anyhow::ensure!(c > 0, Exit::usage("--concurrency must be at least 1"));
        cfg.concurrency = if a.sync { 1 } else { c };
    }
    if let Some(p) = a.prefetch {
        cfg.prefetch = p;
    }
    if let Some(l) = a.lease {
        cfg.lease = l;
    }
    if let Some(g) = a.grace {
        cfg.grace = g;
    }
    if let Some(p) = a.poll_interval {
        cfg.poll_interval = p;
    }
    cfg.exit_when_idle = a.exit_when_idle;

    let mut policy = RetryPolicy::from_env().map_err(anyhow::Error::msg)?;
    if let Some(b) = a.backoff_base {
        policy.base = b;
    }
    if let Some(c) = a.backoff_cap {
        policy.cap = c;
    }
    let defaults = a.limits.limits()?;
    let maxima = a.maxima.maxima()?;
    maxima.check(&defaults).map_err(|e| {
        Exit::usage(format!(
            "the worker's own defaults are above its maxima: {e}"
        ))
    })?;

    let cluster = match &a.cluster {
        Some(url) => {
            // `concurrency` counts Ray jobs here; each job runs a batch, and
            // every task of it holds a slot of the worker.
            let jobs = cfg.concurrency;
            cfg.concurrency = jobs.saturating_mul(a.ray.ray_batch);
            Some(Arc::new(a.ray.cluster(url, jobs).await?))
        }
        None => None,
    };
    let following = cluster.clone();
    // A cluster worker runs nothing itself; a local one at most
    // `concurrency` runs at once.
    let local_runs = if cluster.is_some() {
        1
    } else {
        cfg.concurrency
    };
    let runtime = Arc::new(Runtime::new(
        super::runtime_config()?.sized_for(local_runs),
    )?);
    let grants =
        Grants::from_env(client.store().clone(), a.http_ca_file.as_deref()).map_err(Exit::usage)?;
    let worker = Worker::new(
        Executor {
            runtime,
            store: client.store().clone(),
            defaults,
            maxima,
            policy,
            cluster,
            grants: Arc::new(grants),
        },
        cfg,
    );
    let stats = worker.run(shutdown_signal()).await?;
    if let Some(cluster) = &following {
        cluster.settle(crate::worker::cluster::SETTLE_AT_EXIT).await;
    }
    if a.exit_when_idle {
        let secs = stats.elapsed.as_secs_f64();
        println!(
            "processed {} task(s) in {secs:.2}s ({:.0} tasks/s), {} succeeded",
            stats.completed,
            stats.completed as f64 / secs.max(1e-9),
            stats.succeeded
        );
    }
    Ok(())
}

/// `auto` or a number of tasks.
fn parse_prefetch(s: &str) -> Result<Prefetch, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(Prefetch::auto());
    }
    s.parse()
        .map(Prefetch::Fixed)
        .map_err(|_| format!("invalid prefetch `{s}`: expected a whole number or `auto`"))
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
