//! `wasmq bench`: the figures the README reports, measured in one run.

use crate::runtime::{
    Allocator, CacheSource, CancelToken, Limits, LoadedModule, RunRequest, Runtime, RuntimeConfig,
    TaskInfo,
};
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Instantiate + run of a task with a warm cache, per allocator, and
    /// tasks/s over all cores.
    Runtime(RuntimeBench),
    /// Drain throughput and enqueue→start/done latency on SQLite and PostgreSQL.
    Queue(super::bench_queue::QueueBench),
    /// Enqueues/s and latency through the HTTP API while workers drain.
    Api(super::bench_api::ApiBench),
    /// Cold starts of one module: the first compile, a load from the disk
    /// cache in a fresh runtime, and a whole new `wasmq run` process.
    Cold(super::bench_cold::ColdBench),
    /// Enqueue→succeeded latency in cluster mode vs local mode, Ray's own
    /// time vs wasmq's, and throughput with 16 jobs in flight.
    Cluster(super::bench_cluster::ClusterBench),
    /// Listing and queue statistics on a table of many finished tasks, in
    /// the store and through a `wasmq serve` process.
    History(super::bench_history::HistoryBench),
    /// Durable fan-out: a parent mapping `add` over 1,000 children, per
    /// child against plain tasks, and the parent's resume latency.
    Fanout(super::bench_fanout::FanoutBench),
    /// Worker processes drain a mix of tasks on PostgreSQL while one is
    /// killed and restarted; then the attempt history is checked.
    Soak(super::bench_soak::SoakBench),
    /// The cost of checking one outbound HTTP request against `--allow-http`
    /// grants and of the address check of an IP literal (no connection).
    HttpGrants(HttpGrantsBench),
    /// Requests/s through one real worker: tasks that each call a JSON API
    /// on a loopback server, against `hello` tasks, and the grant check.
    Http(super::bench_http::HttpBench),
}

#[derive(Debug, Args)]
pub struct HttpGrantsBench {
    /// Grants in the policy; the URL checked matches only the last one.
    #[arg(long, default_value_t = 16)]
    pub grants: u32,
    /// Checks timed per case.
    #[arg(long, default_value_t = 1_000_000)]
    pub iterations: u32,
}

#[derive(Debug, Args)]
pub struct RuntimeBench {
    /// The module to run [default: the `hello` example].
    #[arg(
        long,
        default_value = "examples/target/wasm32-wasip2/release/hello.wasm"
    )]
    pub module: PathBuf,
    #[arg(long, default_value = r#"{"name":"bench"}"#)]
    pub input: String,
    /// Sequential runs measured per allocator.
    #[arg(long, default_value_t = 20_000)]
    pub iterations: usize,
    /// Which allocators to measure: `both`, `pooling` or `on-demand`.
    #[arg(long, default_value = "both")]
    pub allocator: String,
    /// How long the all-cores throughput phase lasts.
    #[arg(long, default_value = "3s", value_parser = crate::runtime::parse_duration)]
    pub duration: Duration,
}

impl RuntimeBench {
    fn allocator_selected(&self, name: &str) -> bool {
        self.allocator == "both" || self.allocator == name
    }
}

pub async fn run(cmd: BenchCommand, _db: &str) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Runtime(b) => runtime_bench(b).await,
        BenchCommand::Queue(b) => super::bench_queue::run(b).await,
        BenchCommand::Api(b) => super::bench_api::run(b).await,
        BenchCommand::Cold(b) => super::bench_cold::run(b).await,
        BenchCommand::Cluster(b) => super::bench_cluster::run(b).await,
        BenchCommand::Soak(b) => super::bench_soak::run(b).await,
        BenchCommand::Fanout(b) => super::bench_fanout::run(b).await,
        BenchCommand::History(b) => super::bench_history::run(b).await,
        BenchCommand::HttpGrants(b) => http_grants_bench(b),
        BenchCommand::Http(b) => super::bench_http::run(b).await,
    }
}

fn http_grants_bench(b: HttpGrantsBench) -> anyhow::Result<()> {
    use crate::runtime::forbidden_range;
    if b.grants == 0 || b.iterations == 0 {
        bail!("--grants and --iterations must be at least 1");
    }
    println!("{} grants, {} checks per case", b.grants, b.iterations);
    for (name, granted) in [
        ("granted (last grant)", true),
        ("refused (no grant)", false),
    ] {
        println!(
            "  grant check, {name:<22} {:>8.1} ns/request",
            grant_check_ns(b.grants, b.iterations, granted)?
        );
    }
    let ips: [std::net::IpAddr; 2] = ["93.184.215.14".parse()?, "::ffff:10.1.2.3".parse()?];
    let start = Instant::now();
    for _ in 0..b.iterations {
        for ip in &ips {
            std::hint::black_box(forbidden_range(std::hint::black_box(*ip)));
        }
    }
    println!(
        "  address check (per address)      {:>8.1} ns",
        start.elapsed().as_nanos() as f64 / f64::from(b.iterations) / ips.len() as f64
    );
    Ok(())
}

/// Nanoseconds per check of one URL against a policy of `grants` grants:
/// one that only the last grant allows (`granted`), or one none allows.
pub(super) fn grant_check_ns(grants: u32, iterations: u32, granted: bool) -> anyhow::Result<f64> {
    use crate::runtime::{HttpGrant, HttpLimits, HttpPolicy};
    let list = (0..grants)
        .map(|i| format!("https://api{i}.example.com/v{i}/").parse::<HttpGrant>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let policy = HttpPolicy::new(list, None, HttpLimits::default()).map_err(anyhow::Error::msg)?;
    let last = grants.saturating_sub(1);
    let uri: http::Uri = if granted {
        format!("https://api{last}.example.com/v{last}/items?page=2").parse()?
    } else {
        "https://other.example.net/v1/items".parse()?
    };
    let start = Instant::now();
    let mut allowed = !granted;
    for _ in 0..iterations {
        allowed = policy.allows(std::hint::black_box(&uri));
    }
    let elapsed = start.elapsed();
    if allowed != granted {
        bail!("the check of {uri} gave {allowed}");
    }
    Ok(elapsed.as_nanos() as f64 / f64::from(iterations.max(1)))
}

async fn runtime_bench(b: RuntimeBench) -> anyhow::Result<()> {
    if !["both", "pooling", "on-demand"].contains(&b.allocator.as_str()) {
        bail!(
            "--allocator `{}`: expected both, pooling or on-demand",
            b.allocator
        );
    }
    let bytes = std::fs::read(&b.module)
        .with_context(|| format!("reading {} (build the examples first)", b.module.display()))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "module {} ({} bytes), {} sequential runs per allocator, {cores} cores",
        b.module.display(),
        bytes.len(),
        b.iterations
    );
    println!(
        "{:<12} {:>10} {:>10} {:>10} {:>12}",
        "allocator", "median µs", "p99 µs", "mean µs", "tasks/s"
    );
    // A private disk cache: a large (Python, JavaScript) component is
    // compiled once for both allocators, and nothing outside is reused.
    let cache = tempfile::tempdir()?;
    for (name, allocator) in [
        ("on-demand", Allocator::OnDemand),
        ("pooling", Allocator::Pooling),
    ] {
        if !b.allocator_selected(name) {
            continue;
        }
        let runtime = Arc::new(Runtime::new(RuntimeConfig {
            allocator,
            cache_dir: Some(cache.path().to_path_buf()),
            ..RuntimeConfig::default()
        })?);
        let (module, _) = runtime.load_bytes(bytes.clone()).await?;
        let limits = Limits::default();
        // Warm up: first instantiations fault pages and fill pools.
        for _ in 0..500 {
            once(&runtime, &module, &b.input, &limits).await?;
        }
        let mut samples = Vec::with_capacity(b.iterations);
        for _ in 0..b.iterations {
            let t = Instant::now();
            once(&runtime, &module, &b.input, &limits).await?;
            samples.push(t.elapsed());
        }
        samples.sort();
        let median = samples[samples.len() / 2];
        let p99 = samples[samples.len() * 99 / 100];
        let mean = samples.iter().sum::<Duration>() / samples.len() as u32;

        let tput = throughput(&runtime, &module, &b.input, cores, b.duration).await?;
        println!(
            "{name:<12} {:>10.1} {:>10.1} {:>10.1} {:>12.0}",
            us(median),
            us(p99),
            us(mean),
            tput
        );
    }
    Ok(())
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn once(
    runtime: &Runtime,
    module: &LoadedModule,
    input: &str,
    limits: &Limits,
) -> anyhow::Result<()> {
    let report = runtime
        .run(
            module,
            CacheSource::Memory,
            RunRequest {
                input,
                limits,
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
    if !report.outcome.is_success() {
        bail!("benchmark task failed: {}", report.outcome);
    }
    Ok(())
}

/// Runs `workers` loops of back-to-back tasks on the multi-thread runtime.
async fn throughput(
    runtime: &Arc<Runtime>,
    module: &Arc<LoadedModule>,
    input: &str,
    workers: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..workers {
        let (runtime, module, input) = (runtime.clone(), module.clone(), input.to_string());
        handles.push(tokio::spawn(async move {
            let limits = Limits::default();
            let mut n = 0u64;
            while start.elapsed() < duration {
                once(&runtime, &module, &input, &limits).await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}
