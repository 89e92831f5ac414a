//! `wasmq bench queue`: what a user gets from `wasmq worker`. Starts the real
//! worker binary as separate processes, at its default flags and optionally
//! with given ones, against SQLite and PostgreSQL, and reports drain
//! throughput, start-to-exit time, CPU per 1,000 tasks (worker and database
//! server apart) and enqueue→start/done latency. Medians of several runs.

use super::bench_cpu::{ServerCpu, children_cpu};
use crate::client::{Client, EnqueueRequest};
use crate::runtime::{Runtime, RuntimeConfig};
use crate::store::{AnyStore, NewTask, Store, TaskState};
use anyhow::{Context, ensure};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// Queue the bench's tasks go to (the workers serve every queue).
pub(super) const QUEUE: &str = "bench";
/// Rows per `enqueue_batch` when filling the table.
const ENQUEUE_CHUNK: usize = 5_000;

#[derive(Debug, Args)]
pub struct QueueBench {
    /// Tasks enqueued before each drain.
    #[arg(long, default_value_t = 20_000)]
    pub tasks: usize,
    /// Tasks enqueued one at a time on an idle worker, for latency.
    #[arg(long, default_value_t = 200)]
    pub latency_tasks: usize,
    /// Runs per backend and flag set; figures are their medians.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Worker processes draining together.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Also measure workers started with these flags (repeatable), e.g.
    /// `--flags "--prefetch 512 --concurrency 2"`. The default flags are
    /// always measured first.
    #[arg(long = "flags", value_name = "FLAGS", allow_hyphen_values = true)]
    pub variants: Vec<String>,
    /// Finished tasks (each with an attempt row) put in the table before
    /// each drain: history the claim must not slow down with.
    #[arg(long, default_value_t = 0)]
    pub history: usize,
    #[command(flatten)]
    pub backends: Backends,
    #[arg(
        long,
        default_value = "examples/target/wasm32-wasip2/release/hello.wasm"
    )]
    pub module: PathBuf,
    /// Input of every task [default: `{"name":"t<i>"}`, for `hello`], e.g.
    /// `--module …/sleepy.wasm --input '{"ms":1000}'` for slow tasks.
    #[arg(long)]
    pub input: Option<String>,
    /// The wasmq binary whose workers are measured [default: this one].
    #[arg(long)]
    pub bin: Option<PathBuf>,
}

/// Which databases a bench measures.
#[derive(Debug, Args)]
pub struct Backends {
    /// PostgreSQL server to measure (a private schema is created and dropped
    /// for each run). Its CPU is read from /proc: run on an otherwise idle
    /// server for a meaningful database figure.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pub postgres_url: String,
    /// Skip PostgreSQL.
    #[arg(long)]
    pub no_postgres: bool,
    /// Skip SQLite.
    #[arg(long)]
    pub no_sqlite: bool,
}

impl Backends {
    /// The selected backends, SQLite first.
    pub fn selected(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if !self.no_sqlite {
            v.push("sqlite");
        }
        if !self.no_postgres {
            v.push("postgres");
        }
        v
    }
}

/// The `wasmq worker` process a bench starts (its binary and extra flags),
/// the databases it runs on, and where the example modules were built.
#[derive(Debug, Args)]
pub struct RealWorker {
    #[command(flatten)]
    pub backends: Backends,
    /// Where the examples the bench uses were built.
    #[arg(long, default_value = "examples/target/wasm32-wasip2/release")]
    pub modules: PathBuf,
    /// The wasmq binary whose worker is measured [default: this one].
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// Extra worker flags [default: none, the defaults are measured].
    #[arg(long, allow_hyphen_values = true, default_value = "")]
    pub flags: String,
}

impl RealWorker {
    /// The bytes of example module `name`.
    pub(super) fn module(&self, name: &str) -> anyhow::Result<Vec<u8>> {
        let path = self.modules.join(format!("{name}.wasm"));
        std::fs::read(&path)
            .with_context(|| format!("reading {} (build the examples first)", path.display()))
    }

    pub(super) fn flags(&self) -> Vec<String> {
        shell_words(&self.flags)
    }

    /// The flags as the bench's heading names them.
    pub(super) fn flags_label(&self) -> String {
        if self.flags.trim().is_empty() {
            "default flags".to_string()
        } else {
            self.flags.clone()
        }
    }
}

/// One run's figures.
#[derive(Debug, Clone, Default)]
struct Sample {
    /// Tasks per second from the first start to the last finish.
    drain: f64,
    /// Tasks per second from starting the processes to their idle exit.
    wall: f64,
    /// Worker CPU per 1,000 tasks (ms).
    worker_cpu: f64,
    /// Database server CPU per 1,000 tasks (ms); PostgreSQL only.
    db_cpu: Option<f64>,
    start_p50: f64,
    start_p99: f64,
    done_p50: f64,
    done_p99: f64,
    /// Share of the drained tasks that the busiest worker process ran
    /// (1/workers when they shared the queue evenly).
    busiest: f64,
}

/// A bench's scratch space: a module cache the worker processes share, a
/// directory for their logs, the runtime that pushes modules (compiling
/// them into that cache, as `module push` does before `worker` on a real
/// machine), and the binary whose workers are measured.
pub(super) struct Workspace {
    pub(super) work: tempfile::TempDir,
    pub(super) cache: PathBuf,
    pub(super) logs: PathBuf,
    pub(super) runtime: Runtime,
    pub(super) bin: PathBuf,
}

impl Workspace {
    /// `bin`: the binary to measure, by default this one.
    pub(super) fn new(bin: Option<&Path>) -> anyhow::Result<Workspace> {
        let work = tempfile::Builder::new().prefix("wasmq-bench-").tempdir()?;
        let cache = work.path().join("cache");
        let logs = work.path().join("logs");
        std::fs::create_dir_all(&logs)?;
        let runtime = Runtime::new(RuntimeConfig {
            cache_dir: Some(cache.clone()),
            ..RuntimeConfig::from_env()?
        })?;
        let bin = match bin {
            Some(p) => p.to_path_buf(),
            None => std::env::current_exe()?,
        };
        Ok(Workspace {
            work,
            cache,
            logs,
            runtime,
            bin,
        })
    }
}

struct Ctx {
    bin: PathBuf,
    cache: PathBuf,
    logs: PathBuf,
    runtime: Runtime,
    bytes: Vec<u8>,
    server: Option<ServerCpu>,
}

pub async fn run(b: QueueBench) -> anyhow::Result<()> {
    ensure!(
        b.runs > 0 && b.workers > 0,
        "--runs and --workers must be at least 1"
    );
    let bytes = std::fs::read(&b.module)
        .with_context(|| format!("reading {} (build the examples first)", b.module.display()))?;
    let Workspace {
        work,
        cache,
        logs,
        runtime,
        bin,
    } = Workspace::new(b.bin.as_deref())?;
    let ctx = Ctx {
        bin,
        cache,
        logs,
        runtime,
        bytes,
        server: ServerCpu::find("postgres"),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "wasmq bench queue: {} `{}` tasks, {} worker process(es) of {}, {} history rows; \
         median of {} runs; {cores} cores; durable commits",
        b.tasks,
        b.module.file_stem().unwrap_or_default().to_string_lossy(),
        b.workers,
        ctx.bin.display(),
        b.history,
        b.runs,
    );
    println!(
        "{:<9} {:<34} {:>8} {:>11} {:>10} {:>9} {:>13} {:>13} {:>8}",
        "backend",
        "worker flags",
        "drain/s",
        "start→exit/s",
        "worker CPU",
        "db CPU",
        "start p50/p99",
        "done p50/p99",
        "busiest"
    );
    println!(
        "{:<9} {:<34} {:>8} {:>11} {:>10} {:>9} {:>13} {:>13} {:>8}",
        "", "", "", "", "ms/1k", "ms/1k", "ms", "ms", "worker"
    );

    let mut variants = vec![String::new()];
    variants.extend(b.variants.iter().cloned());
    let backends = b.backends.selected();
    for backend in backends {
        let mut best = 0f64;
        let mut default_drain = 0f64;
        for (i, flags) in variants.iter().enumerate() {
            let args = shell_words(flags);
            let mut samples = Vec::new();
            for run in 0..b.runs {
                let db = Db::create(backend, &b.backends.postgres_url, work.path(), run).await?;
                let r = measure(&ctx, &b, &db, &args).await;
                db.remove().await?;
                samples.push(r.with_context(|| format!("{backend} {flags:?} run {}", run + 1))?);
            }
            let m = median_sample(&samples);
            if i == 0 {
                default_drain = m.drain;
            }
            best = best.max(m.drain);
            let label = if flags.is_empty() {
                "(defaults)".to_string()
            } else {
                flags.clone()
            };
            println!(
                "{backend:<9} {label:<34} {:>8.1} {:>11.1} {:>10.1} {:>9} {:>13} {:>13} {:>7.0}%",
                m.drain,
                m.wall,
                m.worker_cpu,
                m.db_cpu.map_or("-".into(), |c| format!("{c:.1}")),
                format!("{:.1}/{:.1}", m.start_p50, m.start_p99),
                format!("{:.1}/{:.1}", m.done_p50, m.done_p99),
                100.0 * m.busiest,
            );
        }
        if variants.len() > 1 {
            println!(
                "{backend:<9} defaults reach {:.0}% of the best drain measured",
                100.0 * default_drain / best.max(f64::MIN_POSITIVE)
            );
        }
    }
    if ctx.server.is_none() && !b.backends.no_postgres {
        println!("(no local `postgres` processes found: database CPU not measured)");
    }
    println!("drain: first task started → last finished, from the database's timestamps");
    println!("busiest worker: share of the drained tasks run by the busiest worker process");
    Ok(())
}

async fn measure(ctx: &Ctx, b: &QueueBench, db: &Db, flags: &[String]) -> anyhow::Result<Sample> {
    let store = AnyStore::connect(&db.url).await?;
    store.migrate().await?;
    let client = Client::from_store(store.clone());
    let module = client
        .push_module(&ctx.runtime, "hello", None, ctx.bytes.clone())
        .await?;
    if b.history > 0 {
        fill_history(&store, &module, b.history, 0).await?;
    }
    let mut batch = Vec::with_capacity(ENQUEUE_CHUNK);
    for i in 0..b.tasks {
        let input = b
            .input
            .clone()
            .unwrap_or_else(|| format!(r#"{{"name":"t{i}"}}"#));
        batch.push(NewTask::new(&module, input).queue(QUEUE));
        if batch.len() == ENQUEUE_CHUNK || i + 1 == b.tasks {
            store.enqueue_batch(&batch).await?;
            batch.clear();
        }
    }

    // Drain: the processes start after everything is enqueued, and exit idle.
    let cpu_before = children_cpu();
    // SQLite runs inside the worker: its CPU is the worker's.
    let server = ctx.server.as_ref().filter(|_| db.backend == "postgres");
    let server_before = server.map(ServerCpu::total);
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for i in 0..b.workers {
        workers.push(ctx.worker(&db.url, flags, true, &format!("drain{i}"))?);
    }
    for (i, w) in workers.iter_mut().enumerate() {
        let status = w.wait().await?;
        ensure!(
            status.success(),
            "worker {i} exited with {status}; see {}",
            ctx.logs.display()
        );
    }
    let wall = t0.elapsed();
    let worker_cpu = children_cpu().saturating_sub(cpu_before);
    let db_cpu = match (server, server_before) {
        (Some(s), Some(before)) => Some(s.total().saturating_sub(before)),
        _ => None,
    };
    let (succeeded, window) = db.drain_window(&store).await?;
    let busiest = db.busiest_worker(&store).await? as f64 / b.tasks.max(1) as f64;
    ensure!(
        succeeded == b.tasks as i64,
        "{succeeded} of {} tasks succeeded",
        b.tasks
    );
    let per_1k = |d: Duration| d.as_secs_f64() * 1e3 * 1000.0 / b.tasks as f64;

    // Latency: one idle worker, one task at a time.
    let mut worker = ctx.worker(&db.url, flags, false, "latency")?;
    wait_registered(&store).await?;
    let mut start = Vec::new();
    let mut done = Vec::new();
    for i in 0..b.latency_tasks {
        let out = client
            .enqueue(EnqueueRequest {
                queue: "latency".into(),
                ..EnqueueRequest::new(
                    "hello",
                    b.input
                        .clone()
                        .unwrap_or_else(|| format!(r#"{{"name":"l{i}"}}"#)),
                )
            })
            .await?;
        let t = client.wait(out.id, |_| {}).await?;
        ensure!(
            t.state == TaskState::Succeeded,
            "latency task {} {}",
            t.id,
            t.state
        );
        let ms = |end: chrono::DateTime<chrono::Utc>| {
            (end - t.enqueued_at).num_microseconds().unwrap_or(0) as f64 / 1000.0
        };
        start.push(ms(t.started_at.context("no started_at")?));
        done.push(ms(t.finished_at.context("no finished_at")?));
    }
    terminate(&mut worker).await?;
    store.close().await;

    Ok(Sample {
        drain: b.tasks as f64 / window.as_secs_f64().max(1e-6),
        wall: b.tasks as f64 / wall.as_secs_f64(),
        worker_cpu: per_1k(worker_cpu),
        db_cpu: db_cpu.map(per_1k),
        start_p50: pct(&mut start, 50),
        start_p99: pct(&mut start, 99),
        done_p50: pct(&mut done, 50),
        done_p99: pct(&mut done, 99),
        busiest,
    })
}

impl Ctx {
    fn worker(
        &self,
        url: &str,
        flags: &[String],
        exit_when_idle: bool,
        name: &str,
    ) -> anyhow::Result<Child> {
        start_worker(
            &self.bin,
            &self.cache,
            &self.logs,
            url,
            flags,
            exit_when_idle,
            name,
        )
    }
}

/// Starts `bin worker --all-queues FLAGS` on `url`, its module cache in
/// `cache`, its output in `logs/NAME.out` and `.err`; killed if dropped.
pub(super) fn start_worker(
    bin: &Path,
    cache: &Path,
    logs: &Path,
    url: &str,
    flags: &[String],
    exit_when_idle: bool,
    name: &str,
) -> anyhow::Result<Child> {
    let mut cmd = Command::new(bin);
    cmd.arg("--database-url")
        .arg(url)
        .arg("worker")
        .arg("--all-queues")
        .args(flags);
    if exit_when_idle {
        cmd.arg("--exit-when-idle");
    }
    let log = |ext: &str| std::fs::File::create(logs.join(format!("{name}.{ext}")));
    cmd.env("WASMQ_CACHE_DIR", cache)
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(log("out")?)
        .stderr(log("err")?)
        .kill_on_drop(true);
    cmd.spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

/// Until a worker has registered (so that the first latency sample does
/// not include the process start).
pub(super) async fn wait_registered(store: &AnyStore) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let workers = store.list_workers().await?;
        if workers.iter().any(|w| w.stopped_at.is_none()) {
            // Registered comes before the first claim: give it that moment.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the latency worker did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGTERM, then wait for the graceful exit.
pub(super) async fn terminate(child: &mut Child) -> anyhow::Result<()> {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .context("the latency worker did not exit after SIGTERM")??;
    ensure!(status.success(), "the latency worker exited with {status}");
    Ok(())
}

/// A fresh database for one run.
pub(super) struct Db {
    pub(super) url: String,
    pub(super) backend: &'static str,
    /// PostgreSQL: the private schema and a connection to drop it with.
    schema: Option<(String, AnyStore)>,
}

impl Db {
    pub(super) async fn create(
        backend: &'static str,
        postgres_url: &str,
        dir: &Path,
        run: usize,
    ) -> anyhow::Result<Db> {
        if backend == "sqlite" {
            let path = dir.join(format!("run{run}-{}.db", uuid::Uuid::new_v4().simple()));
            return Ok(Db {
                url: format!("sqlite://{}", path.display()),
                backend,
                schema: None,
            });
        }
        let schema = format!(
            "wasmq_bench_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let admin = AnyStore::connect_with(postgres_url, 1)
            .await
            .context("connecting to --postgres-url")?;
        let AnyStore::Postgres(pg) = &admin else {
            anyhow::bail!("--postgres-url must be a postgres:// URL");
        };
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(pg.pool())
            .await?;
        let sep = if postgres_url.contains('?') { '&' } else { '?' };
        Ok(Db {
            url: format!(
                "{postgres_url}{sep}options=-c%20search_path%3D{schema}&application_name=wasmq-bench"
            ),
            backend,
            schema: Some((schema, admin)),
        })
    }

    pub(super) async fn remove(self) -> anyhow::Result<()> {
        if let Some((schema, admin)) = self.schema
            && let AnyStore::Postgres(pg) = &admin
        {
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .execute(pg.pool())
                .await?;
            admin.close().await;
        } else if let Some(path) = self.url.strip_prefix("sqlite://") {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{path}{suffix}"));
            }
        }
        Ok(())
    }

    /// Succeeded tasks of the drain, and the time from the first start to
    /// the last finish.
    pub(super) async fn drain_window(&self, store: &AnyStore) -> anyhow::Result<(i64, Duration)> {
        let (n, micros): (i64, Option<f64>) = match store {
            AnyStore::Postgres(pg) => {
                sqlx::query_as(
                    "SELECT count(*), extract(epoch FROM max(finished_at) - min(started_at))::float8 * 1e6 \
                     FROM tasks WHERE queue = $1 AND state = 'succeeded'",
                )
                .bind(QUEUE)
                .fetch_one(pg.pool())
                .await?
            }
            AnyStore::Sqlite(lite) => {
                sqlx::query_as(
                    "SELECT count(*), CAST(max(finished_at) - min(started_at) AS REAL) \
                     FROM tasks WHERE queue = ?1 AND state = 'succeeded'",
                )
                .bind(QUEUE)
                .fetch_one(lite.pool())
                .await?
            }
            other => anyhow::bail!("bench queue cannot measure a {} store", other.backend_name()),
        };
        Ok((
            n,
            Duration::from_secs_f64(micros.unwrap_or(0.0).max(0.0) / 1e6),
        ))
    }
}

impl Db {
    /// Attempts of the drain run by the busiest worker process.
    async fn busiest_worker(&self, store: &AnyStore) -> anyhow::Result<i64> {
        // QUEUE is a constant: no user text reaches this statement.
        let sql = format!(
            "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM attempts a \
             JOIN tasks t ON t.id = a.task_id WHERE t.queue = '{QUEUE}' GROUP BY a.worker_id) w"
        );
        let sql = sqlx::AssertSqlSafe(sql);
        Ok(match store {
            AnyStore::Postgres(pg) => sqlx::query_scalar(sql).fetch_one(pg.pool()).await?,
            AnyStore::Sqlite(lite) => sqlx::query_scalar(sql).fetch_one(lite.pool()).await?,
            other => anyhow::bail!(
                "bench queue cannot measure a {} store",
                other.backend_name()
            ),
        })
    }
}

/// `n` succeeded tasks with one attempt each, as years of use leave them.
/// Each task's input (and result: the same text) carries `pad` bytes of padding.
pub(super) async fn fill_history(
    store: &AnyStore,
    module: &crate::store::ModuleRecord,
    n: usize,
    pad: usize,
) -> anyhow::Result<()> {
    let pad = "x".repeat(pad);
    let mut batch = Vec::with_capacity(ENQUEUE_CHUNK);
    for i in 0..n {
        let input = format!(r#"{{"name":"h{i}","pad":"{pad}"}}"#);
        batch.push(NewTask::new(module, input).queue("history"));
        if batch.len() == ENQUEUE_CHUNK || i + 1 == n {
            store.enqueue_batch(&batch).await?;
            batch.clear();
        }
    }
    match store {
        AnyStore::Postgres(pg) => {
            let mut tx = pg.pool().begin().await?;
            sqlx::query(
                "UPDATE tasks SET state = 'succeeded', attempt = 1, lease_epoch = 1, \
                 started_at = now(), finished_at = now(), result = input WHERE queue = 'history'",
            )
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO attempts (task_id, attempt, lease_epoch, worker_id, started_at, \
                 finished_at, outcome, duration_ms) \
                 SELECT id, 1, 1, 'history', now(), now(), 'success', 0 FROM tasks \
                 WHERE queue = 'history'",
            )
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            sqlx::query("VACUUM ANALYZE tasks")
                .execute(pg.pool())
                .await?;
            sqlx::query("VACUUM ANALYZE attempts")
                .execute(pg.pool())
                .await?;
        }
        AnyStore::Sqlite(lite) => {
            let now = chrono::Utc::now().timestamp_micros();
            let mut tx = lite.pool().begin().await?;
            sqlx::query(
                "UPDATE tasks SET state = 'succeeded', attempt = 1, lease_epoch = 1, \
                 started_at = ?1, finished_at = ?1, result = input WHERE queue = 'history'",
            )
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO attempts (task_id, attempt, lease_epoch, worker_id, started_at, \
                 finished_at, outcome, duration_ms) \
                 SELECT id, 1, 1, 'history', ?1, ?1, 'success', 0 FROM tasks \
                 WHERE queue = 'history'",
            )
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            sqlx::query("ANALYZE").execute(lite.pool()).await?;
        }
        other => anyhow::bail!("bench queue cannot fill a {} store", other.backend_name()),
    }
    Ok(())
}

/// The element-wise median of the runs' figures.
fn median_sample(samples: &[Sample]) -> Sample {
    let med = |f: &dyn Fn(&Sample) -> f64| {
        let mut v: Vec<f64> = samples.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Sample {
        drain: med(&|s| s.drain),
        wall: med(&|s| s.wall),
        worker_cpu: med(&|s| s.worker_cpu),
        db_cpu: samples
            .iter()
            .all(|s| s.db_cpu.is_some())
            .then(|| med(&|s| s.db_cpu.unwrap_or(0.0))),
        start_p50: med(&|s| s.start_p50),
        start_p99: med(&|s| s.start_p99),
        done_p50: med(&|s| s.done_p50),
        done_p99: med(&|s| s.done_p99),
        busiest: med(&|s| s.busiest),
    }
}

/// Splits `--flags` on whitespace (no quoting: worker flags need none).
pub(super) fn shell_words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

pub(super) fn pct(v: &mut [f64], p: usize) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[(v.len() * p / 100).min(v.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_are_taken_per_figure() {
        let s = |drain, db| Sample {
            drain,
            db_cpu: db,
            ..Default::default()
        };
        let m = median_sample(&[s(3.0, Some(1.0)), s(1.0, Some(9.0)), s(2.0, Some(5.0))]);
        assert_eq!(m.drain, 2.0);
        assert_eq!(m.db_cpu, Some(5.0));
        assert_eq!(
            median_sample(&[s(1.0, None), s(2.0, Some(1.0))]).db_cpu,
            None
        );
    }
}
