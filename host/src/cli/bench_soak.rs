//! `wasmq bench soak`: real `wasmq worker` processes drain a steady mix of
//! tasks on PostgreSQL for a long time while one of them is killed with
//! SIGKILL and restarted at an interval; afterwards the attempt history is
//! checked against the guarantees the README states, and each worker's RSS
//! curve is printed.
//!
//! The workers run with default flags except a short lease (so the tasks of a
//! killed worker come back quickly). Workers 1..N-1 live through the whole
//! run, so their RSS curves show whether memory stays flat; worker N is the
//! one killed and restarted.

use crate::client::Client;
use crate::kinds::OutcomeKind;
use crate::runtime::{Runtime, RuntimeConfig, parse_duration};
use crate::store::{AnyStore, Fuel, ModuleRecord, NewTask, PgStore, Store, TaskLimits, TaskState};
use anyhow::{Context, bail, ensure};
use chrono::{DateTime, Utc};
use clap::Args;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;
use uuid::Uuid;

#[derive(Debug, Args)]
pub struct SoakBench {
    /// How long tasks are enqueued (the drain comes on top).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub duration: Duration,
    /// Interval between SIGKILLs of the last worker (restarted at once).
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub kill_every: Duration,
    /// PostgreSQL server (a fresh schema is created in it).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pub db: String,
    /// Use this schema (created if missing, never dropped) instead of a
    /// fresh one that is dropped after a passing run.
    #[arg(long)]
    pub schema: Option<String>,
    /// Worker processes (at least 2: one is killed, the others' RSS is judged).
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// The workers' lease (`WASMQ_LEASE`).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub lease: Duration,
    /// One round of the mix (see `MIX`) is enqueued per interval.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub round_every: Duration,
    /// RSS sampling interval.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub sample_every: Duration,
    /// Longest wait for the queue to drain after the last enqueue.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Directory of the built Rust examples.
    #[arg(long, default_value = "examples/target/wasm32-wasip2/release")]
    pub modules: PathBuf,
    /// Entries of the mix to leave out (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
    /// Keep the fresh schema and the worker logs even when the run passes.
    #[arg(long)]
    pub keep: bool,
}

/// What the bench does to a task after enqueueing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cancel {
    No,
    /// Enqueued an hour ahead and cancelled at once: always still queued.
    WhileQueued,
    /// Cancelled as soon as it is seen running.
    WhileRunning,
}

/// One entry of the mix: a module, an input and limits, and how the task
/// must end (state and `error_kind`).
struct Entry {
    name: &'static str,
    module: &'static str,
    input: &'static str,
    per_round: usize,
    max_attempts: u32,
    limits: TaskLimits,
    cancel: Cancel,
    state: TaskState,
    error_kind: Option<&'static str>,
}

const NO_LIMITS: TaskLimits = TaskLimits {
    fuel: None,
    memory_bytes: None,
    timeout_ms: None,
};

/// One round. Every kind of ending a task can have, plus a slow success so
/// the killed worker always holds leases.
const MIX: &[Entry] = &[
    Entry {
        name: "hello",
        module: "hello",
        input: r#"{"name":"soak"}"#,
        per_round: 6,
        max_attempts: 3,
        limits: NO_LIMITS,
        cancel: Cancel::No,
        state: TaskState::Succeeded,
        error_kind: None,
    },
    Entry {
        name: "add",
        module: "add",
        input: r#"{"a":2,"b":3}"#,
        per_round: 2,
        max_attempts: 3,
        limits: NO_LIMITS,
        cancel: Cancel::No,
        state: TaskState::Succeeded,
        error_kind: None,
    },
    Entry {
        name: "slow",
        module: "sleepy",
        input: r#"{"ms":1500}"#,
        per_round: 1,
        max_attempts: 3,
        limits: NO_LIMITS,
        cancel: Cancel::No,
        state: TaskState::Succeeded,
        error_kind: None,
    },
    Entry {
        name: "flaky",
        module: "flaky",
        input: r#"{"succeed_on_attempt":2}"#,
        per_round: 1,
        max_attempts: 3,
        limits: NO_LIMITS,
        cancel: Cancel::No,
        state: TaskState::Succeeded,
        error_kind: None,
    },
    Entry {
        name: "invalid-input",
        module: "add",
        input: r#"{"a":9223372036854775807,"b":1}"#,
        per_round: 1,
        max_attempts: 3,
        limits: NO_LIMITS,
        cancel: Cancel::No,
        state: TaskState::Failed,
        error_kind: Some("invalid-input"),
    },
    Entry {
        name: "panic",
        module: "panicky",
        input: r#"{"message":"soak panic"}"#,
        per_round: 1,
        max_attempts: 2,
        limits: NO_LIMITS,
        cancel: Cancel::No,
        state: TaskState::Failed,
        error_kind: Some("trap"),
    },
    Entry {
        name: "cancel-queued",
        module: "sleepy",
        input: r#"{"ms":10000}"#,
        per_round: 1,
        max_attempts: 3,
        limits: NO_LIMITS,
        cancel: Cancel::WhileQueued,
        state: TaskState::Cancelled,
        error_kind: Some("cancelled"),
    },
    Entry {
        name: "cancel-running",
        module: "sleepy",
        input: r#"{"ms":20000}"#,
        per_round: 1,
        max_attempts: 3,
        limits: NO_LIMITS,
        cancel: Cancel::WhileRunning,
        state: TaskState::Cancelled,
        error_kind: Some("cancelled"),
    },
    Entry {
        name: "out-of-fuel",
        module: "spin",
        input: "{}",
        per_round: 1,
        max_attempts: 3,
        limits: TaskLimits {
            fuel: Some(Fuel::limited(20_000_000)),
            memory_bytes: None,
            timeout_ms: None,
        },
        cancel: Cancel::No,
        state: TaskState::Failed,
        error_kind: Some("out-of-fuel"),
    },
    Entry {
        name: "out-of-memory",
        module: "hog",
        input: "{}",
        per_round: 1,
        max_attempts: 3,
        limits: TaskLimits {
            fuel: None,
            memory_bytes: Some(32 << 20),
            timeout_ms: None,
        },
        cancel: Cancel::No,
        state: TaskState::Failed,
        error_kind: Some("out-of-memory"),
    },
    Entry {
        name: "timeout",
        module: "sleepy",
        input: r#"{"ms":10000}"#,
        per_round: 1,
        max_attempts: 2,
        limits: TaskLimits {
            fuel: None,
            memory_bytes: None,
            timeout_ms: Some(300),
        },
        cancel: Cancel::No,
        state: TaskState::Failed,
        error_kind: Some("timeout"),
    },
    // Hostile guests (examples/chaos): NUL bytes in log lines, stdout,
    // stderr, progress messages, error messages and details, and floods of
    // log lines and progress reports. PostgreSQL refuses NUL in `text`, so
    // each of these ends as the mix expects only if the host cleans guest
    // text before storing it.
    Entry {
        name: "chaos-ok",
        module: "chaos",
        input: r#"{"nul_log":true,"nul_stdout":true,"log_lines":1000,"progress_flood":10000}"#,
        per_round: 1,
        max_attempts: 3,
        limits: NO_LIMITS,
        cancel: Cancel::No,
        state: TaskState::Succeeded,
        error_kind: None,
    },
    Entry {
        name: "chaos-error",
        module: "chaos",
        input: r#"{"nul_log":true,"nul_stderr":true,"progress_flood":10000,"nul_error":true}"#,
        per_round: 1,
        max_attempts: 3,
        limits: NO_LIMITS,
        cancel: Cancel::No,
        state: TaskState::Failed,
        error_kind: Some("permanent"),
    },
    Entry {
        name: "chaos-panic",
        module: "chaos",
        input: r#"{"nul_panic":true}"#,
        per_round: 1,
        max_attempts: 2,
        limits: NO_LIMITS,
        cancel: Cancel::No,
        state: TaskState::Failed,
        error_kind: Some("trap"),
    },
];

/// Last-quarter median RSS over second-quarter median above this is
/// reported as growth. Not 1.0: allocator arenas and the module cache settle
/// in steps, and a sample is a single reading.
const FLAT_RATIO: f64 = 1.2;

/// A worker slot: one long-lived process, or the victim's current one.
struct Slot {
    child: Child,
    pid: u32,
    generation: u32,
    started: Instant,
    err_path: PathBuf,
}

struct Ctx {
    exe: PathBuf,
    url: String,
    lease: Duration,
    cache: PathBuf,
    logs: PathBuf,
}

impl Ctx {
    fn spawn(&self, slot: usize, generation: u32) -> anyhow::Result<Slot> {
        let base = self.logs.join(format!("worker{}-{generation}", slot + 1));
        let err_path = base.with_extension("err");
        let child = Command::new(&self.exe)
            .arg("--database-url")
            .arg(&self.url)
            .arg("worker")
            .env(
                "WASMQ_LEASE",
                humantime::format_duration(self.lease).to_string(),
            )
            .env("WASMQ_CACHE_DIR", &self.cache)
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(base.with_extension("out"))?)
            .stderr(std::fs::File::create(&err_path)?)
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker")?;
        let pid = child.id().context("worker pid")?;
        Ok(Slot {
            child,
            pid,
            generation,
            started: Instant::now(),
            err_path,
        })
    }
}

/// The running binary, for the workers. `/proc/self/exe` in the child names
/// the inode this process runs, which stays valid when a rebuild replaces the
/// file at `current_exe()`'s path during a long run (a restart would then
/// fail, or start a different build).
fn own_exe() -> anyhow::Result<PathBuf> {
    let proc_exe = PathBuf::from("/proc/self/exe");
    if proc_exe.exists() {
        Ok(proc_exe)
    } else {
        Ok(std::env::current_exe()?)
    }
}

/// One RSS reading of every slot (KiB), `None` when unreadable.
struct Sample {
    at: Duration,
    rss: Vec<Option<(u64, u32)>>,
}

pub async fn run(b: SoakBench) -> anyhow::Result<()> {
    // Dropping the run on Ctrl-C or SIGTERM drops the worker children,
    // which kills them (`kill_on_drop`) instead of leaving them behind.
    tokio::select! {
        r = soak(b) => r,
        () = super::worker::shutdown_signal() => bail!("soak interrupted; its workers were killed"),
    }
}

async fn soak(b: SoakBench) -> anyhow::Result<()> {
    ensure!(b.workers >= 2, "--workers must be at least 2");
    ensure!(
        !b.kill_every.is_zero() && !b.round_every.is_zero() && !b.sample_every.is_zero(),
        "intervals must be positive"
    );
    let mix: Vec<&'static Entry> = MIX
        .iter()
        .filter(|e| !b.skip.iter().any(|s| s == e.name))
        .collect();
    for s in &b.skip {
        ensure!(
            MIX.iter().any(|e| e.name == s),
            "--skip {s}: no such entry (entries: {})",
            MIX.iter().map(|e| e.name).collect::<Vec<_>>().join(", ")
        );
    }
    ensure!(!mix.is_empty(), "--skip left nothing to enqueue");

    let (schema, own_schema) = match &b.schema {
        Some(s) => (s.clone(), false),
        None => (
            format!("wasmq_soak_{}", &Uuid::new_v4().simple().to_string()[..12]),
            true,
        ),
    };
    ensure!(
        schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "--schema must be lower-case letters, digits and _"
    );
    let admin = PgStore::connect_with(&b.db, 2)
        .await
        .context("connecting to --db")?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}"
    )))
    .execute(admin.pool())
    .await?;
    let opts = PgConnectOptions::from_str(&b.db)?.options([("search_path", schema.as_str())]);
    let pg = PgStore::open(opts, 8).await?;
    let pool = pg.pool().clone();
    let store = AnyStore::Postgres(pg);
    store.migrate().await?;

    let work = tempfile::Builder::new().prefix("wasmq-soak-").tempdir()?;
    let cache = work.path().join("cache");
    let logs = work.path().join("logs");
    std::fs::create_dir_all(&cache)?;
    std::fs::create_dir_all(&logs)?;

    // Pushing compiles each module into the shared cache, so the workers
    // (and every restart) load precompiled artifacts.
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.clone()),
        ..RuntimeConfig::from_env()?
    })?;
    let client = Client::from_store(store.clone());
    let mut modules: HashMap<&str, ModuleRecord> = HashMap::new();
    for e in &mix {
        if modules.contains_key(e.module) {
            continue;
        }
        let path = b.modules.join(format!("{}.wasm", e.module));
        let bytes = std::fs::read(&path)
            .with_context(|| format!("reading {} (build the examples first)", path.display()))?;
        let m = client.push_module(&runtime, e.module, None, bytes).await?;
        modules.insert(e.module, m);
    }
    drop(runtime);

    let sep = if b.db.contains('?') { '&' } else { '?' };
    let ctx = Ctx {
        exe: own_exe()?,
        url: format!(
            "{}{sep}options=-c%20search_path%3D{schema}&application_name=wasmq-soak",
            b.db
        ),
        lease: b.lease,
        cache,
        logs: logs.clone(),
    };
    let per_round: usize = mix.iter().map(|e| e.per_round).sum();
    println!(
        "soak: {} workers (lease {}), worker {} killed with SIGKILL every {}, {per_round} tasks every {} for {}; schema {schema}",
        b.workers,
        humantime::format_duration(b.lease),
        b.workers,
        humantime::format_duration(b.kill_every),
        humantime::format_duration(b.round_every),
        humantime::format_duration(b.duration),
    );
    println!(
        "mix: {}",
        mix.iter()
            .map(|e| format!("{}×{}", e.name, e.per_round))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let mut slots = Vec::new();
    for i in 0..b.workers {
        slots.push(ctx.spawn(i, 1)?);
    }
    let victim = b.workers - 1;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let producer = tokio::spawn(produce(
        store.clone(),
        mix.clone(),
        modules,
        b.round_every,
        stop_rx,
    ));

    let t0 = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut violations: Vec<String> = Vec::new();
    let mut kills: Vec<Kill> = Vec::new();
    let mut killed_pids: HashSet<u32> = HashSet::new();
    let mut next_kill = b.kill_every;
    let mut next_sample = Duration::ZERO;
    let mut next_status = Duration::from_secs(30);
    loop {
        let now = t0.elapsed();
        if now >= b.duration {
            break;
        }
        if now >= next_sample {
            samples.push(sample(now, &slots));
            next_sample += b.sample_every;
        }
        if now >= next_kill {
            let k = kill_and_restart(&ctx, &pool, &mut slots[victim], victim).await?;
            killed_pids.insert(k.pid);
            println!(
                "t={:>4}s killed worker {} (pid {}, {} task(s) leased), restarted as pid {}",
                now.as_secs(),
                victim + 1,
                k.pid,
                k.held,
                slots[victim].pid
            );
            kills.push(k);
            next_kill += b.kill_every;
        }
        if now >= next_status {
            println!("t={:>4}s {}", now.as_secs(), state_line(&pool).await?);
            next_status += Duration::from_secs(30);
        }
        crashed(&ctx, &mut slots, &mut violations)?;
        let wake = next_sample.min(next_kill).min(next_status).min(b.duration);
        tokio::time::sleep(
            wake.saturating_sub(t0.elapsed())
                .min(Duration::from_millis(500)),
        )
        .await;
    }

    // Drain: no more enqueues; the cancellations still pending go on.
    let _ = stop_tx.send(true);
    let (enqueued, mut cancellers) = producer.await??;
    let drain_start = Instant::now();
    let mut drained = false;
    while drain_start.elapsed() < b.drain_timeout {
        while let Some(r) = cancellers.try_join_next() {
            r??;
        }
        if t0.elapsed() >= next_sample {
            samples.push(sample(t0.elapsed(), &slots));
            next_sample += b.sample_every;
        }
        crashed(&ctx, &mut slots, &mut violations)?;
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM tasks WHERE state IN ('queued', 'leased', 'running')",
        )
        .fetch_one(&pool)
        .await?;
        if open == 0 {
            drained = true;
            break;
        }
        if t0.elapsed() >= next_status {
            println!(
                "t={:>4}s draining: {}",
                t0.elapsed().as_secs(),
                state_line(&pool).await?
            );
            next_status += Duration::from_secs(30);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "t={:>4}s enqueueing stopped at {}s; {} after {:.1}s: {}",
        t0.elapsed().as_secs(),
        b.duration.as_secs(),
        if drained { "drained" } else { "NOT drained" },
        drain_start.elapsed().as_secs_f64(),
        state_line(&pool).await?
    );

    cancellers.abort_all();

    // Graceful stop, so nothing changes under the checks.
    for s in &slots {
        // SAFETY: kill(2) on a child we own and have not reaped.
        unsafe {
            libc::kill(s.pid as i32, libc::SIGTERM);
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for (i, s) in slots.iter_mut().enumerate() {
        stop(i, s, deadline, &mut violations).await;
    }

    let mut report = Report::default();
    check(&pool, &enqueued, &killed_pids, &mut report).await?;
    report.fenced = count_in_logs(&logs, "completion refused")?;
    report.crashes = violations.len();
    // Few and telling: before the per-task lines.
    violations.append(&mut report.violations);
    report.violations = violations;

    print_counts(&report, &enqueued);
    println!();
    println!(
        "kills: {} (tasks leased by the killed worker at the kill: {})",
        kills.len(),
        kills.iter().map(|k| k.held).sum::<i64>()
    );
    println!(
        "lease-expired attempts: {} of killed workers, {} of workers not killed (a worker still running may have run such an attempt to the end, concurrently with the next one)",
        report.expired_killed, report.expired_live
    );
    println!(
        "completions refused by fencing (worker logs): {}",
        report.fenced
    );
    println!();
    print_rss(&samples, victim, b.kill_every);
    println!();
    let lines = [
        ("every task terminal", report.not_terminal),
        ("no attempt left unfinished", report.unfinished),
        ("no overlapping attempts of a task", report.overlapping),
        (
            "attempt counter = attempt rows numbered 1..N, free runs = released rows",
            report.counter_mismatch,
        ),
        ("attempts within max_attempts", report.over_max),
        (
            "one success row per succeeded task, none otherwise",
            report.success_mismatch,
        ),
        ("final state as the mix expects", report.unexpected),
        (
            "workers ran until stopped and exited 0 on SIGTERM",
            report.crashes,
        ),
    ];
    let mut failed = 0;
    for (name, n) in lines {
        if n == 0 {
            println!("invariant {name}: ok");
        } else {
            println!("invariant {name}: FAILED ({n})");
            failed += n;
        }
    }
    for v in report.violations.iter().take(30) {
        println!("  violation: {v}");
    }
    if report.violations.len() > 30 {
        println!("  … and {} more", report.violations.len() - 30);
    }

    if failed == 0 {
        println!("soak: PASS ({} tasks)", enqueued.len());
        if own_schema && !b.keep {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "SET client_min_messages = warning; DROP SCHEMA {schema} CASCADE"
            )))
            .execute(admin.pool())
            .await?;
        }
        if b.keep {
            println!("kept: schema {schema}, worker logs in {}", logs.display());
            let _ = work.keep();
        }
        Ok(())
    } else {
        // Evidence for whoever reads the failure.
        let path = work.keep();
        if own_schema {
            println!("kept: schema {schema}");
        }
        println!("kept: worker logs in {}", path.join("logs").display());
        bail!("soak: FAIL ({failed} invariant violation(s))")
    }
}

/// Tasks' entry names, and the cancellations still waiting for their task
/// to start.
type Produced = (HashMap<Uuid, &'static str>, JoinSet<anyhow::Result<()>>);

/// Enqueues one round per interval until stopped; returns each task's entry
/// name, and the cancellations still pending (the drain keeps them going).
async fn produce(
    store: AnyStore,
    mix: Vec<&'static Entry>,
    modules: HashMap<&'static str, ModuleRecord>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Produced> {
    let mut kinds = HashMap::new();
    let mut cancellers = JoinSet::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let mut batch = Vec::new();
        let mut cancel = Vec::new();
        for e in &mix {
            for _ in 0..e.per_round {
                let mut t = NewTask::new(&modules[e.module], e.input)
                    .max_attempts(e.max_attempts)
                    .limits(e.limits);
                if e.cancel == Cancel::WhileQueued {
                    t = t.run_after(Utc::now() + chrono::Duration::hours(1));
                }
                kinds.insert(t.id, e.name);
                if e.cancel != Cancel::No {
                    cancel.push((t.id, e.cancel));
                }
                batch.push(t);
            }
        }
        store.enqueue_batch(&batch).await?;
        for (id, how) in cancel {
            match how {
                Cancel::WhileQueued => {
                    store.request_cancel(id).await?;
                }
                _ => {
                    cancellers.spawn(cancel_when_running(store.clone(), id));
                }
            }
        }
        while let Some(r) = cancellers.try_join_next() {
            r??;
        }
    }
    Ok((kinds, cancellers))
}

async fn cancel_when_running(store: AnyStore, id: Uuid) -> anyhow::Result<()> {
    loop {
        let t = store.get_task(id).await?;
        if t.state.is_terminal() {
            return Ok(());
        }
        if t.state == TaskState::Running {
            store.request_cancel(id).await?;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Kill {
    pid: u32,
    held: i64,
}

/// Waits (up to 10 s) until the victim holds a lease, so the kill takes
/// tasks with it, then SIGKILLs it and starts its successor.
async fn kill_and_restart(
    ctx: &Ctx,
    pool: &PgPool,
    slot: &mut Slot,
    index: usize,
) -> anyhow::Result<Kill> {
    let until = Instant::now() + Duration::from_secs(10);
    let mut held = 0;
    while Instant::now() < until {
        held = sqlx::query_scalar(
            "SELECT count(*) FROM tasks t JOIN workers w ON w.id = t.lease_owner \
             WHERE t.state IN ('leased', 'running') AND w.pid = $1",
        )
        .bind(i64::from(slot.pid))
        .fetch_one(pool)
        .await?;
        if held > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = slot.pid;
    slot.child.start_kill()?;
    slot.child.wait().await?;
    *slot = ctx.spawn(index, slot.generation + 1)?;
    Ok(Kill { pid, held })
}

/// A worker that exited without being told to is a violation; it is
/// restarted so the run goes on.
fn crashed(ctx: &Ctx, slots: &mut [Slot], violations: &mut Vec<String>) -> anyhow::Result<()> {
    for (i, s) in slots.iter_mut().enumerate() {
        if let Some(status) = s.child.try_wait()? {
            violations.push(format!(
                "worker {} (pid {}) exited on its own after {:.0}s with {status}; log {}",
                i + 1,
                s.pid,
                s.started.elapsed().as_secs_f64(),
                s.err_path.display()
            ));
            *s = ctx.spawn(i, s.generation + 1)?;
        }
    }
    Ok(())
}

/// Waits for a worker sent SIGTERM: it must exit 0 (nothing is in flight).
async fn stop(
    i: usize,
    s: &mut Slot,
    deadline: tokio::time::Instant,
    violations: &mut Vec<String>,
) {
    match tokio::time::timeout_at(deadline, s.child.wait()).await {
        Ok(Ok(st)) if st.success() => {}
        Ok(Ok(st)) => violations.push(format!(
            "worker {} (pid {}) exited with {st} on SIGTERM; log {}",
            i + 1,
            s.pid,
            s.err_path.display()
        )),
        Ok(Err(e)) => violations.push(format!("worker {}: {e}", i + 1)),
        Err(_) => {
            violations.push(format!(
                "worker {} (pid {}) did not exit within 60s of SIGTERM",
                i + 1,
                s.pid
            ));
            let _ = s.child.start_kill();
        }
    }
}

fn sample(at: Duration, slots: &[Slot]) -> Sample {
    Sample {
        at,
        rss: slots
            .iter()
            .map(|s| rss_kib(s.pid).map(|k| (k, s.generation)))
            .collect(),
    }
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn state_line(pool: &PgPool) -> anyhow::Result<String> {
    let rows = sqlx::query("SELECT state, count(*) AS n FROM tasks GROUP BY state ORDER BY state")
        .fetch_all(pool)
        .await?;
    let mut s = String::new();
    for r in rows {
        let state: String = r.try_get("state")?;
        let n: i64 = r.try_get("n")?;
        let _ = write!(s, "{state} {n}  ");
    }
    Ok(s.trim_end().to_string())
}

#[derive(Default)]
struct Report {
    not_terminal: usize,
    unfinished: usize,
    overlapping: usize,
    counter_mismatch: usize,
    over_max: usize,
    success_mismatch: usize,
    unexpected: usize,
    crashes: usize,
    violations: Vec<String>,
    /// Final state per entry.
    by_entry: BTreeMap<&'static str, BTreeMap<String, u64>>,
    by_state: BTreeMap<String, u64>,
    by_outcome: BTreeMap<String, u64>,
    /// Tasks whose attempts were used up by lease expiries: allowed by
    /// at-least-once with a bounded number of attempts.
    lost_to_expiry: u64,
    expired_killed: u64,
    expired_live: u64,
    fenced: usize,
}

struct AttemptRow {
    attempt: i32,
    worker_id: String,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    outcome: Option<String>,
}

async fn check(
    pool: &PgPool,
    enqueued: &HashMap<Uuid, &'static str>,
    killed_pids: &HashSet<u32>,
    r: &mut Report,
) -> anyhow::Result<()> {
    let killed: HashSet<String> = sqlx::query("SELECT id, pid FROM workers")
        .fetch_all(pool)
        .await?
        .iter()
        .filter(|row| {
            row.try_get::<i64, _>("pid")
                .is_ok_and(|p| killed_pids.contains(&(p as u32)))
        })
        .map(|row| row.try_get::<String, _>("id"))
        .collect::<Result<_, _>>()?;

    let mut attempts: HashMap<Uuid, Vec<AttemptRow>> = HashMap::new();
    for row in sqlx::query(
        "SELECT task_id, attempt, worker_id, started_at, finished_at, outcome \
         FROM attempts ORDER BY task_id, started_at, id",
    )
    .fetch_all(pool)
    .await?
    {
        let outcome: Option<String> = row.try_get("outcome")?;
        let worker_id: String = row.try_get("worker_id")?;
        if outcome.as_deref() == Some(OutcomeKind::LeaseExpired.as_str()) {
            if killed.contains(&worker_id) {
                r.expired_killed += 1;
            } else {
                r.expired_live += 1;
            }
        }
        *r.by_outcome
            .entry(outcome.clone().unwrap_or_else(|| "(unfinished)".into()))
            .or_default() += 1;
        attempts
            .entry(row.try_get("task_id")?)
            .or_default()
            .push(AttemptRow {
                attempt: row.try_get("attempt")?,
                worker_id,
                started_at: row.try_get("started_at")?,
                finished_at: row.try_get("finished_at")?,
                outcome,
            });
    }

    let tasks = sqlx::query(
        "SELECT id, state, attempt, free_runs, max_attempts, error_kind, lease_owner FROM tasks",
    )
    .fetch_all(pool)
    .await?;
    let mut seen = 0;
    let no_rows = Vec::new();
    for row in &tasks {
        let id: Uuid = row.try_get("id")?;
        let state = TaskState::from_str(row.try_get("state")?)?;
        let attempt: i32 = row.try_get("attempt")?;
        let free_runs: i32 = row.try_get("free_runs")?;
        let max_attempts: i32 = row.try_get("max_attempts")?;
        let error_kind: Option<String> = row.try_get("error_kind")?;
        let rows = attempts.get(&id).unwrap_or(&no_rows);
        *r.by_state.entry(state.to_string()).or_default() += 1;
        let Some(entry) = enqueued.get(&id) else {
            r.violations
                .push(format!("task {id} is stored but was never enqueued"));
            r.unexpected += 1;
            continue;
        };
        seen += 1;
        *r.by_entry
            .entry(entry)
            .or_default()
            .entry(state.to_string())
            .or_default() += 1;

        if !state.is_terminal() {
            r.not_terminal += 1;
            let owner: Option<String> = row.try_get("lease_owner")?;
            r.violations.push(format!(
                "task {id} ({entry}) is {state} after the drain (attempt {attempt}, lease owner {owner:?})"
            ));
            continue;
        }

        for a in rows {
            if a.finished_at.is_none() || a.outcome.is_none() {
                r.unfinished += 1;
                r.violations.push(format!(
                    "task {id} ({entry}) is {state} but its attempt {} (worker {}) never finished",
                    a.attempt, a.worker_id
                ));
            }
        }
        // Sorted by start: each attempt must end before the next starts.
        for w in rows.windows(2) {
            if let Some(end) = w[0].finished_at
                && end > w[1].started_at
            {
                r.overlapping += 1;
                r.violations.push(format!(
                    "task {id} ({entry}): attempt {} [{} → {end}] overlaps attempt {} started {}",
                    w[0].attempt, w[0].started_at, w[1].attempt, w[1].started_at
                ));
            }
        }
        // Every claim is a run with its own row, numbered 1..N where N is
        // the task's attempt counter; a run released at shutdown (outcome
        // `shutdown`) is free and counted in `free_runs` (local workers
        // never defer).
        let mut numbers: Vec<i32> = rows.iter().map(|a| a.attempt).collect();
        numbers.sort_unstable();
        let released = rows
            .iter()
            .filter(|a| a.outcome.as_deref() == Some("shutdown"))
            .count() as i32;
        if numbers != (1..=attempt).collect::<Vec<_>>() || released != free_runs {
            r.counter_mismatch += 1;
            r.violations.push(format!(
                "task {id} ({entry}): attempt counter {attempt} with {free_runs} free runs, \
                 attempt rows numbered {numbers:?} of which {released} released"
            ));
        }
        if attempt - free_runs > max_attempts {
            r.over_max += 1;
            r.violations.push(format!(
                "task {id} ({entry}): {} counted attempts of at most {max_attempts}",
                attempt - free_runs
            ));
        }
        let successes = rows
            .iter()
            .filter(|a| a.outcome.as_deref() == Some("success"))
            .count();
        let want = usize::from(state == TaskState::Succeeded);
        if successes != want {
            r.success_mismatch += 1;
            r.violations.push(format!(
                "task {id} ({entry}) is {state} with {successes} successful attempt(s)"
            ));
        }

        let e = MIX
            .iter()
            .find(|e| e.name == *entry)
            .expect("entries come from MIX");
        let as_expected = state == e.state && error_kind.as_deref() == e.error_kind;
        if !as_expected {
            if error_kind.as_deref() == Some("lease-expired") && state != TaskState::Succeeded {
                r.lost_to_expiry += 1;
            } else {
                r.unexpected += 1;
                let outcomes: Vec<&str> = rows
                    .iter()
                    .map(|a| a.outcome.as_deref().unwrap_or("(unfinished)"))
                    .collect();
                r.violations.push(format!(
                    "task {id} ({entry}) ended {state} ({}) instead of {} ({}); attempts {outcomes:?}",
                    error_kind.as_deref().unwrap_or("-"),
                    e.state,
                    e.error_kind.unwrap_or("-")
                ));
            }
        }
    }
    if seen != enqueued.len() {
        r.unexpected += enqueued.len() - seen;
        r.violations.push(format!(
            "{} enqueued task(s) are missing from the database",
            enqueued.len() - seen
        ));
    }
    Ok(())
}

fn count_in_logs(dir: &Path, needle: &str) -> anyhow::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "err") {
            let text = String::from_utf8_lossy(&std::fs::read(&path)?).into_owned();
            n += text.matches(needle).count();
        }
    }
    Ok(n)
}

fn print_counts(r: &Report, enqueued: &HashMap<Uuid, &'static str>) {
    println!();
    println!("{} tasks enqueued; final states:", enqueued.len());
    for (state, n) in &r.by_state {
        println!("  {state:<12} {n:>8}");
    }
    println!("per entry:");
    for (entry, states) in &r.by_entry {
        let s: Vec<String> = states.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("  {entry:<16} {}", s.join(", "));
    }
    if r.lost_to_expiry > 0 {
        println!(
            "  ({} task(s) ended by a lease expiry, attempts used up or a cancel pending: allowed)",
            r.lost_to_expiry
        );
    }
    println!("attempt outcomes:");
    for (outcome, n) in &r.by_outcome {
        println!("  {outcome:<16} {n:>8}");
    }
}

fn median(v: &[u64]) -> Option<u64> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

fn print_rss(samples: &[Sample], victim: usize, kill_every: Duration) {
    let Some(first) = samples.first() else {
        return;
    };
    let n = first.rss.len();
    println!(
        "RSS per worker, MiB (sampled every {}s; worker {} is restarted every {}, its generation in brackets):",
        samples.get(1).map_or(0, |s| (s.at - first.at).as_secs()),
        victim + 1,
        humantime::format_duration(kill_every)
    );
    let mut header = format!("  {:>6}", "t");
    for i in 0..n {
        let _ = write!(header, " {:>12}", format!("worker {}", i + 1));
    }
    println!("{header}");
    // At most ~16 rows: every k-th sample, and always the last.
    let step = samples.len().div_ceil(16).max(1);
    for (j, s) in samples.iter().enumerate() {
        if j % step != 0 && j + 1 != samples.len() {
            continue;
        }
        let mut line = format!("  {:>5}s", s.at.as_secs());
        for (i, v) in s.rss.iter().enumerate() {
            let cell = match v {
                Some((kib, g)) if i == victim => format!("{:.1} [{g}]", *kib as f64 / 1024.0),
                Some((kib, _)) => format!("{:.1}", *kib as f64 / 1024.0),
                None => "-".into(),
            };
            let _ = write!(line, " {cell:>12}");
        }
        println!("{line}");
    }
    for i in 0..n {
        // One process only: the last generation seen in this slot.
        let last_gen = samples.iter().rev().find_map(|s| s.rss[i].map(|(_, g)| g));
        let series: Vec<u64> = samples
            .iter()
            .filter_map(|s| s.rss[i])
            .filter(|(_, g)| Some(*g) == last_gen)
            .map(|(k, _)| k)
            .collect();
        let q = series.len() / 4;
        if i == victim && last_gen != Some(1) {
            println!(
                "  worker {}: restarted (generation {}), {} samples of its last process: not judged",
                i + 1,
                last_gen.unwrap_or(0),
                series.len()
            );
            continue;
        }
        if q < 2 {
            println!(
                "  worker {}: {} samples, too few to judge",
                i + 1,
                series.len()
            );
            continue;
        }
        let (Some(second), Some(last)) = (median(&series[q..2 * q]), median(&series[3 * q..]))
        else {
            continue;
        };
        let ratio = last as f64 / second as f64;
        println!(
            "  worker {}: median RSS 2nd quarter {:.1} MiB, last quarter {:.1} MiB, ratio {ratio:.3}: {}",
            i + 1,
            second as f64 / 1024.0,
            last as f64 / 1024.0,
            if ratio <= FLAT_RATIO {
                "flat"
            } else {
                "GROWING"
            }
        );
    }
}
