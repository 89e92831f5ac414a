//! The process-wide wasmtime engine: configuration, the pooling allocator,
//! and the epoch ticker that makes deadlines and cancellation work.

use super::compiler::{CompileBudget, Compiler, DEFAULT_COMPILE_CONCURRENCY};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances. Deadlines and cancellation are checked, and a
/// long-running guest yields to other tasks, once per tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Component instances the pooling allocator keeps slots for: the most runs
/// that can be in flight at once in one process, unless its owner sizes the
/// pool to its own concurrency ([`RuntimeConfig::sized_for`]).
pub const DEFAULT_POOL_INSTANCES: u32 = 256;
/// Largest linear memory (per memory) a pooled slot can hold; per-run limits
/// may be lower, never higher.
pub const DEFAULT_POOL_MAX_MEMORY: u64 = 4 << 30;
/// See [`RuntimeConfig::pool_keep_resident`]. Larger than a small task's
/// whole memory (a Rust task starts at 17 wasm pages, just over 1 MiB): any
/// part beyond it is handed back with `madvise`, and each of those costs a
/// TLB shootdown on every core running the process, which measured as a
/// third of the queue's drain rate on 2 cores.
pub const DEFAULT_POOL_KEEP_RESIDENT: u64 = 4 << 20;

/// Per-component bounds of a pooled slot. A module over them ends
/// `invalid-module` on every attempt.
const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 64;
const MAX_MEMORIES_PER_COMPONENT: u32 = 16;
const MAX_TABLES_PER_COMPONENT: u32 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    /// Pooling where the OS allows it, on-demand otherwise (with a log line).
    Auto,
    Pooling,
    OnDemand,
}

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub allocator: Allocator,
    pub pool_instances: u32,
    pub pool_max_memory: u64,
    /// Where precompiled components are kept; `None` disables the disk cache.
    pub cache_dir: Option<PathBuf>,
    /// Most bytes of each pooled linear memory kept resident between runs:
    /// the pages a run wrote are reset in place up to this much (memset, or
    /// a copy of the image), the rest are returned to the kernel.
    pub pool_keep_resident: u64,
    /// Where modules compile.
    pub compiler: Compiler,
    /// Most compilations at once.
    pub compile_concurrency: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            allocator: Allocator::Auto,
            pool_instances: DEFAULT_POOL_INSTANCES,
            pool_max_memory: DEFAULT_POOL_MAX_MEMORY,
            cache_dir: default_cache_dir(),
            pool_keep_resident: DEFAULT_POOL_KEEP_RESIDENT,
            compiler: Compiler::InProcess,
            compile_concurrency: DEFAULT_COMPILE_CONCURRENCY,
        }
    }
}

impl RuntimeConfig {
    /// The defaults overridden by `WASMQ_ALLOCATOR` (`auto`, `pooling`,
    /// `on-demand`), `WASMQ_POOL_INSTANCES`, `WASMQ_POOL_MAX_MEMORY` and
    /// `WASMQ_CACHE_DIR` (`off` disables the disk cache).
    pub fn from_env() -> anyhow::Result<Self> {
        let mut c = RuntimeConfig::default();
        if let Ok(v) = std::env::var("WASMQ_ALLOCATOR") {
            c.allocator = match v.as_str() {
                "auto" => Allocator::Auto,
                "pooling" => Allocator::Pooling,
                "on-demand" => Allocator::OnDemand,
                other => {
                    anyhow::bail!("WASMQ_ALLOCATOR=`{other}`: expected auto, pooling or on-demand")
                }
            };
        }
        if let Ok(v) = std::env::var("WASMQ_POOL_INSTANCES") {
            c.pool_instances = v
                .parse()
                .map_err(|_| anyhow::anyhow!("WASMQ_POOL_INSTANCES=`{v}`: expected a number"))?;
        }
        if let Ok(v) = std::env::var("WASMQ_POOL_MAX_MEMORY") {
            c.pool_max_memory = super::limits::parse_size(&v)?;
        }
        if let Ok(v) = std::env::var("WASMQ_POOL_KEEP_RESIDENT") {
            c.pool_keep_resident = super::limits::parse_size(&v)?;
        }
        if let Ok(v) = std::env::var("WASMQ_COMPILE_CONCURRENCY") {
            c.compile_concurrency = v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                anyhow::anyhow!("WASMQ_COMPILE_CONCURRENCY=`{v}`: expected a number above 0")
            })?;
        }
        match std::env::var("WASMQ_CACHE_DIR") {
            Ok(v) if v == "off" => c.cache_dir = None,
            Ok(v) if !v.is_empty() => c.cache_dir = Some(PathBuf::from(v)),
            _ => {}
        }
        Ok(c)
    }
}

impl RuntimeConfig {
    /// This configuration compiling in child processes of `program` (the
    /// `wasmq` binary), within the budget `WASMQ_COMPILE_TIMEOUT` and
    /// `WASMQ_COMPILE_MEMORY` set, or the defaults.
    pub fn compile_in(mut self, program: PathBuf) -> anyhow::Result<Self> {
        self.compiler = Compiler::Process {
            program,
            budget: CompileBudget::from_env()?,
        };
        Ok(self)
    }

    /// This configuration with a pool of `runs` instance slots (the most runs
    /// its owner has in flight at once, e.g. a worker's `--concurrency`),
    /// unless `WASMQ_POOL_INSTANCES` chose the size. Every pooled slot
    /// reserves address space for its largest memory and keeps pages
    /// resident between runs, so a pool far larger than the runs wastes both.
    pub fn sized_for(mut self, runs: u32) -> Self {
        if std::env::var_os("WASMQ_POOL_INSTANCES").is_none() {
            self.pool_instances = runs.max(1);
        }
        self
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(x).join("wasmq"));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|h| PathBuf::from(h).join(".cache").join("wasmq"))
}

/// The engine `wasmq compile-module` compiles with: the same code
/// generation as every runtime engine (the allocator does not change what
/// is compiled), so its artifacts load in the parent.
pub fn compile_engine() -> anyhow::Result<Engine> {
    Ok(Engine::new(&base_config())?)
}

fn base_config() -> Config {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .consume_fuel(true)
        .epoch_interruption(true)
        .parallel_compilation(true);
    config
}

fn pooling_config(rc: &RuntimeConfig) -> PoolingAllocationConfig {
    let n = rc.pool_instances.max(1);
    let mut pool = PoolingAllocationConfig::default();
    // Totals are n times the per-component bounds, so that n runs of any
    // module within the bounds always fit: a run waits for one of the n
    // slots (see `Runtime::run`), never for a core instance or a memory.
    pool.total_component_instances(n)
        // componentize-py and -js components hold dozens of core instances each.
        .total_core_instances(n.saturating_mul(MAX_CORE_INSTANCES_PER_COMPONENT))
        .total_memories(n.saturating_mul(MAX_MEMORIES_PER_COMPONENT))
        .total_tables(n.saturating_mul(MAX_TABLES_PER_COMPONENT))
        .total_stacks(n)
        .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
        .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
        .max_memory_size(rc.pool_max_memory as usize)
        // Small tasks reuse the same pages: wiping them with memset is cheaper
        // than handing them back to the kernel and faulting them in again.
        .linear_memory_keep_resident(rc.pool_keep_resident as usize)
        // Reset only the pages a run wrote, found with Linux's PAGEMAP_SCAN
        // (6.7+), instead of the first `keep_resident` bytes whatever they
        // hold: a Rust task's memory starts with 1 MiB of stack that a run
        // barely touches, and wiping all of it every run was a fifth of a
        // worker's CPU. Where the ioctl is missing, wasmtime does the latter.
        .pagemap_scan(Enabled::Auto)
        .table_keep_resident(1 << 16)
        // Same for the fiber stacks async calls run on.
        .async_stack_keep_resident(1 << 17);
    pool
}

/// Builds the engine; reports whether the pooling allocator is in use.
pub(super) fn build_engine(rc: &RuntimeConfig) -> anyhow::Result<(Engine, bool)> {
    if rc.allocator != Allocator::OnDemand {
        let mut config = base_config();
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(rc)));
        match Engine::new(&config) {
            Ok(engine) => {
                if !PoolingAllocationConfig::is_pagemap_scan_available() {
                    tracing::info!(
                        keep_resident = rc.pool_keep_resident,
                        "no PAGEMAP_SCAN (Linux before 6.7): each pooled memory is reset \
                         by wiping its first keep_resident bytes, whatever a run touched"
                    );
                }
                return Ok((engine, true));
            }
            Err(e) if rc.allocator == Allocator::Auto => {
                tracing::warn!(
                    error = %format!("{e:#}"),
                    "pooling allocator unavailable; falling back to the on-demand allocator"
                );
            }
            Err(e) => {
                return Err(anyhow::Error::from(e).context("creating the pooling allocator"));
            }
        }
    }
    Ok((Engine::new(&base_config())?, false))
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
pub(super) struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    pub(super) fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("wasmq-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        EpochTicker { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
