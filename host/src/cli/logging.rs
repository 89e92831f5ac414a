//! tracing setup: human text or JSON lines on stderr, filtered by `WASMQ_LOG`
//! (or `RUST_LOG`). The default depends on the command: a service (`worker`,
//! `serve`) logs what it does at `info`; a command that runs once prints its
//! result and, on failure, one line of error, so it logs only warnings.
//! Either way PostgreSQL's notices (e.g. `relation "_sqlx_migrations"
//! already exists` on every start after the first) are logged only from
//! `warn` up.

use tracing_subscriber::EnvFilter;

/// The default filter of a service.
pub const SERVICE_DEFAULT: &str = "info,sqlx::postgres::notice=warn";
/// The default filter of a command that runs once.
pub const COMMAND_DEFAULT: &str = "warn";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the subscriber; `default` is the filter unless the environment
/// sets one.
pub fn init(format: LogFormat, default: &str) {
    let filter = EnvFilter::try_from_env("WASMQ_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}
