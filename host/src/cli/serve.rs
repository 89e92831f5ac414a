//! `wasmq serve`: the HTTP API, `/metrics` and the dashboard.

use super::admin::connect;
use super::exit::Exit;
use crate::api::{self, ApiToken, ServeConfig};
use crate::runtime::{Runtime, parse_duration, parse_size};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; without a token only loopback addresses are allowed.
    #[arg(long, default_value = api::DEFAULT_LISTEN, env = "WASMQ_LISTEN")]
    pub listen: SocketAddr,
    /// File holding the API token (else WASMQ_API_TOKEN). With a token, /api
    /// and /metrics need `Authorization: Bearer TOKEN`.
    #[arg(long)]
    pub api_token_file: Option<PathBuf>,
    /// Ray's dashboard, e.g. http://127.0.0.1:8265, for links from tasks run on Ray.
    #[arg(long, env = "WASMQ_RAY_DASHBOARD_URL")]
    pub ray_dashboard_url: Option<String>,
    /// Largest module upload [default: 64MiB].
    #[arg(long, env = "WASMQ_API_MAX_MODULE", value_parser = parse_size)]
    pub max_module_size: Option<u64>,
    /// Largest JSON request body [default: 2MiB].
    #[arg(long, env = "WASMQ_API_MAX_BODY", value_parser = parse_size)]
    pub max_body_size: Option<u64>,
    /// A host name clients reach this server by, besides the listen address
    /// (and `localhost` on loopback); requests naming another Host are
    /// refused. Repeatable; `*` allows any.
    #[arg(
        long = "allowed-host",
        value_name = "HOST",
        env = "WASMQ_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,
    /// How long a dashboard login lasts [default: 12h].
    #[arg(long, env = "WASMQ_SESSION_TTL", value_parser = parse_duration)]
    pub session_ttl: Option<std::time::Duration>,
    /// The most a task enqueued here may ask for; more is refused with 400
    /// `above-maximum`.
    #[command(flatten)]
    pub maxima: super::limits::MaximaArgs,
}

/// The token from `--api-token-file`, else `WASMQ_API_TOKEN` (never from a
/// flag's value: it would show in `ps`).
pub fn token(file: Option<&std::path::Path>) -> anyhow::Result<Option<ApiToken>> {
    if let Some(path) = file {
        return Ok(Some(ApiToken::from_file(path).map_err(Exit::usage)?));
    }
    match std::env::var("WASMQ_API_TOKEN") {
        Ok(t) if !t.trim().is_empty() => {
            Ok(Some(ApiToken::new(&t).map_err(|e| {
                Exit::usage(format!("WASMQ_API_TOKEN: {e}"))
            })?))
        }
        _ => Ok(None),
    }
}

pub async fn run(db: &str, a: ServeArgs) -> anyhow::Result<()> {
    let mut config = ServeConfig::new(a.listen);
    config.token = token(a.api_token_file.as_deref())?;
    api::check_listen(&config.listen, config.token.as_ref()).map_err(Exit::usage)?;
    if let Some(u) = &a.ray_dashboard_url {
        anyhow::ensure!(
            u.starts_with("http://") || u.starts_with("https://"),
            Exit::usage("--ray-dashboard-url must start with http:// or https://")
        );
    }
    config.ray_dashboard_url = a.ray_dashboard_url;
    if let Some(n) = a.max_module_size {
        config.max_module_bytes = n as usize;
    }
    if let Some(n) = a.max_body_size {
        config.max_body_bytes = n as usize;
    }
    if let Some(h) = a.allowed_hosts.iter().find(|h| h.contains(['/', '@', ' '])) {
        return Err(Exit::usage(format!(
            "--allowed-host {h:?}: expected a host name, e.g. wasmq.example.com"
        ))
        .into());
    }
    config.allowed_hosts = a.allowed_hosts;
    if let Some(ttl) = a.session_ttl {
        anyhow::ensure!(
            !ttl.is_zero(),
            Exit::usage("--session-ttl must be longer than zero")
        );
        config.session_ttl = ttl;
    }
    let client = connect(db).await?.with_maxima(a.maxima.maxima()?);
    // The API compiles and links uploads; it runs no task.
    let runtime = Arc::new(Runtime::new(super::runtime_config()?.sized_for(1))?);
    api::serve(config, client, runtime, super::worker::shutdown_signal()).await
}
