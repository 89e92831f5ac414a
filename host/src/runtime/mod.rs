//! The sandboxed task runtime: one wasmtime [`Engine`] per process, module
//! loading with memory and disk caches, and [`Runtime::run`], which runs one
//! task under fuel, memory and wall-clock limits with nothing granted but
//! clocks and randomness.
//!
//! This module knows nothing of queues or databases: it turns bytes and an
//! input into a [`RunReport`].

mod cache;
mod cancel;
mod capture;
mod compiler;
mod config;
mod engine;
mod http;
mod limits;
mod maxima;
mod module;
mod outcome;
mod run;
mod state;
pub mod subtasks;

pub use cancel::CancelToken;
pub use compiler::{
    CompileBudget, Compiler, DEFAULT_COMPILE_CONCURRENCY, DEFAULT_COMPILE_MEMORY_BYTES,
    DEFAULT_COMPILE_TIMEOUT, compile_module_main,
};
pub use config::RunConfig;
pub use engine::{
    Allocator, DEFAULT_POOL_INSTANCES, DEFAULT_POOL_KEEP_RESIDENT, DEFAULT_POOL_MAX_MEMORY,
    EPOCH_TICK, RuntimeConfig, compile_engine,
};
pub use http::{
    DEFAULT_HTTP_MAX_REQUESTS, DEFAULT_HTTP_MAX_RESPONSE_BYTES, DEFAULT_HTTP_TIMEOUT, GrantHost,
    HttpGrant, HttpLimits, HttpPolicy, forbidden_range, tls_config, tls_config_pem,
};
pub use limits::{
    DEFAULT_FUEL, DEFAULT_MAX_CAPTURE_BYTES, DEFAULT_MAX_LOG_BYTES, DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_MEMORY_BYTES, DEFAULT_TIMEOUT, Fuel, LOG_RECORD_OVERHEAD_BYTES, LimitError, Limits,
    MAX_BACKTRACE_BYTES, MAX_ERROR_DETAILS_BYTES, MAX_ERROR_MESSAGE_BYTES, MAX_LOG_MESSAGE_BYTES,
    MAX_LOG_RECORDS, MAX_PROGRESS_MESSAGE_BYTES, parse_duration, parse_fuel, parse_size,
};
pub use maxima::{
    AboveMaximum, DEFAULT_MAX_FUEL, DEFAULT_MAX_MEMORY_BYTES, DEFAULT_MAX_TIMEOUT, Maxima,
};
pub use module::{LoadedModule, ModuleError, check_header, sha256_hex};
pub use outcome::{
    CacheSource, FailureKind, LogRecord, Outcome, OutcomeKind, RunReport, TaskErrorKind,
};
pub use run::{DirGrant, RunRequest, check_output};
pub use state::{ProgressSink, TaskInfo};

use cache::DiskCache;
use state::HostState;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;
use wasmtime::Engine;
use wasmtime::component::{Component, HasSelf, Linker};

/// The host's imports for a task: WASI (clocks, random, stdio, the granted
/// directories) and the task world, plus `wasi:http` with `http`.
fn task_linker(engine: &Engine, http: bool) -> anyhow::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    if http {
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    }
    state::Task::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
    config::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// Why a module could not be made ready to run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Module(#[from] ModuleError),
    #[error("fetching module {sha256}: {message}")]
    Fetch { sha256: String, message: String },
    #[error("module bytes do not match their sha256: expected {expected}, got {actual}")]
    HashMismatch { expected: String, actual: String },
    /// Not the module's fault: trying again may work.
    #[error("compiling module {sha256}: {message}")]
    Compiler { sha256: String, message: String },
}

type Slot = Arc<OnceCell<Arc<LoadedModule>>>;

/// The process-wide runtime. Cheap to share behind an `Arc`.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    /// `linker` plus `wasi:http`, for runs with an HTTP grant.
    http_linker: Linker<HostState>,
    pooling: bool,
    config: RuntimeConfig,
    disk: Option<Arc<DiskCache>>,
    modules: Mutex<HashMap<String, Slot>>,
    /// One permit per compilation allowed at once.
    compile_slots: Arc<tokio::sync::Semaphore>,
    /// One permit per pooled instance slot: a run waits for a permit rather
    /// than failing on a full pool. `None` with the on-demand allocator.
    instance_slots: Option<Arc<tokio::sync::Semaphore>>,
    _ticker: engine::EpochTicker,
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Runtime> {
        let (engine, pooling) = engine::build_engine(&config)?;
        let linker = task_linker(&engine, false)?;
        let http_linker = task_linker(&engine, true)?;
        let disk = config
            .cache_dir
            .clone()
            .map(|dir| Arc::new(DiskCache::new(dir, &engine)));
        let ticker = engine::EpochTicker::start(engine.clone());
        let instance_slots = pooling.then(|| {
            Arc::new(tokio::sync::Semaphore::new(
                config.pool_instances.max(1) as usize
            ))
        });
        let compile_slots = Arc::new(tokio::sync::Semaphore::new(
            config.compile_concurrency.max(1),
        ));
        Ok(Runtime {
            compile_slots,
            instance_slots,
            engine,
            linker,
            http_linker,
            pooling,
            config,
            disk,
            modules: Mutex::new(HashMap::new()),
            _ticker: ticker,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// True when the pooling allocator is in use.
    pub fn pooling(&self) -> bool {
        self.pooling
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Compiles and links `bytes` without caching in memory: the check done
    /// before a module is stored. The precompiled artifact is written to the
    /// disk cache, so the first run elsewhere on this machine does not compile.
    ///
    /// A module already in the disk cache is only linked: its artifact was
    /// compiled from these very bytes (the name binds their hash), and a
    /// Python or JavaScript component takes about 10 s to compile again.
    pub async fn validate(&self, bytes: Vec<u8>) -> Result<String, LoadError> {
        let sha256 = sha256_hex(&bytes);
        let loaded = match self
            .disk
            .as_ref()
            .and_then(|d| d.load(&self.engine, &sha256))
        {
            Some(component) => module::link(
                &self.engine,
                &self.linker,
                &self.http_linker,
                sha256.clone(),
                component,
            )?,
            None => self.compile_and_link(sha256.clone(), bytes).await?,
        };
        // A component importing `wasi:http` is stored like any other (its
        // imports were checked against the host's as it was linked); its
        // tasks run once the operator grants it hosts (`module grant`).
        Ok(loaded.sha256.clone())
    }

    /// The precompiled artifact of module `bytes` for this engine, as the
    /// disk cache stores it: its file name (which names the engine) and
    /// contents, compiled first if the cache has none. `None` without a
    /// disk cache. A Ray job's package carries it, so that a node whose
    /// engine is the same does not compile.
    pub async fn artifact(&self, bytes: Vec<u8>) -> Result<Option<(String, Vec<u8>)>, LoadError> {
        let Some(disk) = self.disk.clone() else {
            return Ok(None);
        };
        let sha256 = self.validate(bytes).await?;
        let read = tokio::task::spawn_blocking({
            let (disk, sha256) = (disk.clone(), sha256.clone());
            move || disk.read(&sha256)
        })
        .await
        .ok()
        .flatten();
        Ok(read.map(|artifact| (disk.file_name(&sha256), artifact)))
    }

    /// Adds the artifact of module `sha256` found at `dir/NAME`, where NAME
    /// is this engine's file name for it (so another engine's is not
    /// found), to the disk cache. True if one was added.
    pub fn seed_disk_cache(&self, sha256: &str, dir: &std::path::Path) -> bool {
        let Some(disk) = &self.disk else {
            return false;
        };
        let Ok(bytes) = std::fs::read(dir.join(disk.file_name(sha256))) else {
            return false;
        };
        match disk.seed(sha256, &bytes) {
            Ok(added) => added,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "ignoring a shipped precompiled module");
                false
            }
        }
    }

    /// Loads a module from its bytes (as `wasmq run` does).
    pub async fn load_bytes(
        &self,
        bytes: Vec<u8>,
    ) -> Result<(Arc<LoadedModule>, CacheSource), LoadError> {
        module::check_header(&bytes)?;
        let sha256 = sha256_hex(&bytes);
        self.load(&sha256, || async move {
            Ok::<_, std::convert::Infallible>(bytes)
        })
        .await
    }

    /// Loads the module `sha256`: from memory, else from the disk cache, else by
    /// calling `fetch` for its bytes and compiling them. Concurrent loads of
    /// the same module compile it once.
    pub async fn load<F, Fut, E>(
        &self,
        sha256: &str,
        fetch: F,
    ) -> Result<(Arc<LoadedModule>, CacheSource), LoadError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, E>>,
        E: std::fmt::Display,
    {
        let slot = {
            let mut map = self.modules.lock().unwrap();
            map.entry(sha256.to_string()).or_default().clone()
        };
        if let Some(m) = slot.get() {
            return Ok((m.clone(), CacheSource::Memory));
        }
        let mut source = CacheSource::Memory;
        let loaded = slot
            .get_or_try_init(|| async {
                if let Some(component) = self
                    .disk
                    .as_ref()
                    .and_then(|d| d.load(&self.engine, sha256))
                {
                    source = CacheSource::Disk;
                    let m = module::link(
                        &self.engine,
                        &self.linker,
                        &self.http_linker,
                        sha256.to_string(),
                        component,
                    )?;
                    return Ok(Arc::new(m));
                }
                source = CacheSource::Compiled;
                let bytes = fetch().await.map_err(|e| LoadError::Fetch {
                    sha256: sha256.to_string(),
                    message: e.to_string(),
                })?;
                let actual = sha256_hex(&bytes);
                if actual != sha256 {
                    return Err(LoadError::HashMismatch {
                        expected: sha256.to_string(),
                        actual,
                    });
                }
                self.compile_and_link(sha256.to_string(), bytes)
                    .await
                    .map(Arc::new)
            })
            .await?
            .clone();
        Ok((loaded, source))
    }

    async fn compile_and_link(
        &self,
        sha256: String,
        bytes: Vec<u8>,
    ) -> Result<LoadedModule, LoadError> {
        let component = self.compile(sha256.clone(), bytes).await?;
        Ok(module::link(
            &self.engine,
            &self.linker,
            &self.http_linker,
            sha256,
            component,
        )?)
    }

    /// Compiles in a task of its own, which also writes the disk cache: a
    /// caller that stops waiting (its task was cancelled or ran out of
    /// time) does not waste the compilation, which goes on within its own
    /// budget and is found on disk by the next load.
    async fn compile(&self, sha256: String, bytes: Vec<u8>) -> Result<Component, LoadError> {
        let engine = self.engine.clone();
        let compiler = self.config.compiler.clone();
        let slots = self.compile_slots.clone();
        let disk = self.disk.clone();
        let sha = sha256.clone();
        let job = tokio::spawn(async move {
            let _slot = slots.acquire_owned().await.expect("never closed");
            let component = compiler::compile(&engine, &compiler, bytes).await?;
            if let Some(disk) = disk {
                let c = component.clone();
                // Writing tens of MB: not on an async worker thread.
                let _ = tokio::task::spawn_blocking(move || disk.store(&sha, &c)).await;
            }
            Ok::<_, compiler::CompileError>(component)
        });
        match job.await {
            Ok(Ok(component)) => Ok(component),
            Ok(Err(compiler::CompileError::Module(e))) => Err(LoadError::Module(e)),
            Ok(Err(compiler::CompileError::Compiler(message))) => {
                Err(LoadError::Compiler { sha256, message })
            }
            Err(e) => Err(LoadError::Compiler {
                sha256,
                message: format!("the compiling task failed: {e}"),
            }),
        }
    }
}
