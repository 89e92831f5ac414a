//! The `wasmq` command line. Commands parse their flags here and call the
//! library; they hold no logic of their own beyond presentation.

mod admin;
mod bench;
mod bench_api;
mod bench_cluster;
mod bench_cold;
mod bench_cpu;
mod bench_fanout;
mod bench_history;
mod bench_http;
mod bench_queue;
mod bench_soak;
mod cluster;
mod dev;
mod exec;
pub mod exit;
mod limits;
mod logging;
mod new;
mod run;
mod secret;
mod serve;
mod table;
mod term;
mod worker;

use crate::runtime::RuntimeConfig;
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// The runtime configuration of every command that loads modules: the
/// environment's, with modules compiled in child processes of this binary
/// within the compile budget.
fn runtime_config() -> anyhow::Result<RuntimeConfig> {
    let exe = std::env::current_exe().context("locating the wasmq binary")?;
    RuntimeConfig::from_env()?.compile_in(exe)
}

/// `wasmq compile-module`: no async runtime, no logging; see
/// [`crate::runtime::compile_module_main`].
fn compile_module() -> ExitCode {
    match crate::runtime::compile_engine() {
        Ok(engine) => ExitCode::from(crate::runtime::compile_module_main(&engine) as u8),
        Err(e) => {
            eprintln!("creating the engine: {e:#}");
            ExitCode::from(exit::INTERNAL)
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "wasmq",
    version,
    about = "Background tasks as sandboxed WebAssembly components"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = logging::LogFormat::Text, env = "WASMQ_LOG_FORMAT")]
    pub log_format: logging::LogFormat,
    /// Database: sqlite://PATH or postgres://… (else DATABASE_URL, else sqlite://wasmq.db).
    #[arg(
        long,
        global = true,
        env = "DATABASE_URL",
        default_value = "sqlite://wasmq.db",
        hide_env_values = true
    )]
    pub database_url: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one task module in this process, without a queue.
    Run(run::RunArgs),
    /// Write a new task project (Rust, Python, JavaScript or C) that builds on its own.
    New(new::NewArgs),
    /// Build the task project here, run inputs on a private queue, print the
    /// results; again on every change of its sources.
    Dev(dev::DevArgs),
    /// Apply database migrations (every command that opens the database also does).
    Migrate,
    /// Manage task modules.
    #[command(subcommand)]
    Module(admin::ModuleCommand),
    /// Enqueue, inspect and steer tasks.
    #[command(subcommand)]
    Task(admin::TaskCommand),
    /// Store secrets for modules granted them (sealed; values never shown).
    #[command(subcommand)]
    Secret(secret::SecretCommand),
    /// Lease tasks from the database and run them.
    Worker(Box<worker::WorkerArgs>),
    /// Run one task module as a Ray job's entrypoint (used by `worker --cluster`).
    #[command(hide = true)]
    Exec(Box<exec::ExecArgs>),
    /// List workers with their heartbeat age.
    Workers {
        #[arg(long)]
        json: bool,
    },
    /// Serve the HTTP API, /metrics and the web dashboard.
    Serve(serve::ServeArgs),
    /// Measure the runtime and the queue.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Compile a component from stdin to an artifact on stdout, for a parent
    /// `wasmq` process that bounds the compilation's time and memory.
    #[command(hide = true)]
    CompileModule,
}

impl Command {
    /// Whether the command runs until stopped (and logs what it does), as
    /// opposed to printing one result and exiting.
    fn is_service(&self) -> bool {
        matches!(
            self,
            Command::Worker(_) | Command::Serve(_) | Command::Bench(_) | Command::Exec(_)
        )
    }
}

/// A command that prints its result and exits dies quietly of SIGPIPE when
/// its reader goes away (`wasmq task list | head`), like any Unix filter,
/// instead of panicking on the failed write. Rust ignores SIGPIPE by
/// default; services keep it ignored, so that a closed log pipe or socket is
/// an error they handle rather than the end of the process.
fn die_quietly_on_closed_pipe() {
    // SAFETY: restores the default disposition of one signal before any
    // other thread exists; no handler of ours is replaced.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The commands of `wasmq-runner`, the binary a Ray job runs: only
/// `wasmq exec` and the compile helper it spawns. Linked without the
/// database, the HTTP server and the dashboard, it is the smaller package.
#[derive(Debug, Parser)]
#[command(
    name = "wasmq-runner",
    version,
    about = "Runs wasmq tasks inside a Ray job (the `exec` command of wasmq)"
)]
struct RunnerCli {
    #[command(subcommand)]
    command: RunnerCommand,
}

#[derive(Debug, Subcommand)]
enum RunnerCommand {
    /// Run a task (or a batch of them) as `wasmq exec` does.
    Exec(Box<exec::ExecArgs>),
    #[command(hide = true)]
    CompileModule,
}

/// `wasmq-runner`'s `main`.
pub fn runner_main() -> ExitCode {
    backtraces_for_panics_only();
    let cli: RunnerCli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let RunnerCommand::Exec(args) = cli.command else {
        return compile_module();
    };
    logging::init(logging::LogFormat::Text, logging::SERVICE_DEFAULT);
    run_async(exec::run(*args))
}

/// wasmtime makes an error value every time a store is dropped (once per
/// run), and with `RUST_BACKTRACE=1` in the environment std captures a
/// backtrace for each: 8% of a worker's CPU on `hello` tasks. Library
/// errors capture backtraces only when `RUST_LIB_BACKTRACE` asks for them;
/// panics still follow `RUST_BACKTRACE`.
fn backtraces_for_panics_only() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: the first thing main does: no other thread exists yet
        // that could read the environment concurrently.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}

/// The command line, or the exit code after clap printed its help,
/// version or usage error.
fn parse<P: Parser>() -> Result<P, ExitCode> {
    P::try_parse().map_err(|e| {
        let _ = e.print();
        ExitCode::from(if e.use_stderr() {
            exit::USAGE
        } else {
            exit::SUCCESS
        })
    })
}

/// Runs a command on a new async runtime; its error, if any, on one line.
fn run_async(command: impl std::future::Future<Output = anyhow::Result<u8>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(exit::INTERNAL);
        }
    };
    let result = rt.block_on(command);
    // Do not wait for blocked host calls of abandoned guests on the way out.
    rt.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // One line, whatever the messages of the chain hold.
            eprintln!("error: {}", term::line(&format!("{e:#}")));
            exit::code_of(&e)
        }
    }
}

pub fn main() -> ExitCode {
    backtraces_for_panics_only();
    let cli: Cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    if matches!(cli.command, Command::CompileModule) {
        return compile_module();
    }
    if cli.command.is_service() {
        logging::init(cli.log_format, logging::SERVICE_DEFAULT);
    } else {
        die_quietly_on_closed_pipe();
        logging::init(cli.log_format, logging::COMMAND_DEFAULT);
    }
    let db = cli.database_url.clone();
    run_async(async move {
        let ok = |r: anyhow::Result<()>| r.map(|()| exit::SUCCESS);
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::New(args) => ok(new::run(args)),
            Command::Dev(args) => dev::run(args).await,
            Command::Migrate => ok(admin::migrate(&db).await),
            Command::Module(cmd) => ok(admin::module(&db, cmd).await),
            Command::Task(cmd) => admin::task(&db, cmd).await,
            Command::Secret(cmd) => ok(secret::run(&db, cmd).await),
            Command::Worker(args) => ok(worker::run(&db, *args).await),
            Command::Exec(args) => exec::run(*args).await,
            Command::Workers { json } => ok(admin::workers(&db, json).await),
            Command::Serve(args) => ok(serve::run(&db, args).await),
            Command::Bench(cmd) => ok(bench::run(cmd, &db).await),
            Command::CompileModule => unreachable!("handled before the async runtime starts"),
        }
    })
}
