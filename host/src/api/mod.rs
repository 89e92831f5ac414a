//! The operator's side over HTTP: the JSON API under `/api/v1`, Prometheus
//! metrics at `/metrics`, health probes, and the web dashboard at `/`.
//!
//! Layers: [`routes`] (one file per resource, each endpoint described once in
//! a table that both the router and the OpenAPI document are built from),
//! [`errors`] (the JSON error body), [`auth`] (bearer token, dashboard
//! sessions and CSRF tokens, loopback-only without a token), [`guard`] (the
//! `Host`, `Origin` and `Content-Type` checks every request passes),
//! [`metrics`] (exposition and request metrics), [`ui`] (server-rendered
//! HTML). Everything goes through
//! [`crate::client`] and the [`crate::store::Store`] trait: no SQL here.

pub mod auth;
pub mod errors;
pub mod guard;
pub mod metrics;
mod openapi;
mod routes;
mod ui;
mod unread_body;

use crate::client::{BatchConfig, Client, EnqueueBatcher};
use crate::runtime::Runtime;
use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use auth::{ApiToken, DEFAULT_SESSION_TTL, Sessions, check_listen};
pub use guard::AllowedHosts;
/// A task as `GET /api/v1/tasks/{id}` shows it.
pub use routes::tasks::task_json;

/// Where `wasmq serve` listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Largest JSON request body (an enqueue with its input).
pub const DEFAULT_MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
/// Largest module upload.
pub const DEFAULT_MAX_MODULE_BYTES: usize = 64 * 1024 * 1024;

/// Settings of `wasmq serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub token: Option<ApiToken>,
    /// Base URL of Ray's dashboard, for links from tasks that ran there.
    pub ray_dashboard_url: Option<String>,
    pub max_body_bytes: usize,
    pub max_module_bytes: usize,
    pub batch: BatchConfig,
    /// Host names served besides the listen address (`--allowed-host`).
    pub allowed_hosts: Vec<String>,
    /// How long a dashboard login lasts.
    pub session_ttl: Duration,
}

impl ServeConfig {
    pub fn new(listen: SocketAddr) -> Self {
        ServeConfig {
            listen,
            token: None,
            ray_dashboard_url: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_module_bytes: DEFAULT_MAX_MODULE_BYTES,
            batch: BatchConfig::default(),
            allowed_hosts: Vec::new(),
            session_ttl: DEFAULT_SESSION_TTL,
        }
    }
}

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub client: Client,
    pub runtime: Arc<Runtime>,
    pub batcher: EnqueueBatcher,
    pub token: Option<ApiToken>,
    pub ray_dashboard_url: Option<String>,
    pub max_body_bytes: usize,
    pub max_module_bytes: usize,
    pub allowed_hosts: AllowedHosts,
    pub sessions: Sessions,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Must be called inside a tokio runtime (it starts the enqueue batcher).
    /// `config.listen` must be the bound address.
    pub fn new(client: Client, runtime: Arc<Runtime>, config: &ServeConfig) -> AppState {
        let batcher = EnqueueBatcher::spawn(client.clone(), config.batch);
        AppState(Arc::new(Inner {
            client,
            runtime,
            batcher,
            token: config.token.clone(),
            ray_dashboard_url: config
                .ray_dashboard_url
                .as_ref()
                .map(|u| u.trim_end_matches('/').to_string()),
            max_body_bytes: config.max_body_bytes,
            max_module_bytes: config.max_module_bytes,
            allowed_hosts: AllowedHosts::new(config.listen, &config.allowed_hosts),
            sessions: Sessions::new(config.token.as_ref(), config.session_ttl),
        }))
    }
}

/// The whole application: API, metrics, probes and dashboard.
pub fn app(state: AppState) -> Router {
    let api = routes::router()
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_bearer,
        ))
        // Bodies are read with explicit limits where they are taken.
        .layer(DefaultBodyLimit::disable());
    Router::new()
        .merge(api)
        .merge(metrics::router(state.clone()))
        .merge(routes::probes())
        .merge(ui::router(state.clone()))
        .fallback(routes::no_route)
        // Innermost first: the origin check runs once the Host is known good.
        .layer(axum::middleware::from_fn(guard::refuse_cross_origin))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::check_host,
        ))
        .layer(axum::middleware::from_fn(errors::catch_panics))
        .layer(axum::middleware::from_fn(metrics::record_request))
        .layer(axum::middleware::from_fn(unread_body::close_if_unread))
        .with_state(state)
}

/// Binds `config.listen` and serves until `shutdown` resolves. Prints the
/// bound address on stdout (useful with port 0).
pub async fn serve(
    config: ServeConfig,
    client: Client,
    runtime: Arc<Runtime>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    check_listen(&config.listen, config.token.as_ref()).map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    if config.token.is_some() {
        tracing::info!(%addr, "API token set: /api and /metrics need `Authorization: Bearer`, the dashboard a login");
    } else {
        tracing::warn!(%addr, "no API token (WASMQ_API_TOKEN or --api-token-file): listening on loopback only, without authentication");
    }
    println!("wasmq serve: listening on http://{addr}");
    let config = ServeConfig {
        listen: addr,
        ..config
    };
    let state = AppState::new(client, runtime, &config);
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// `wasmq worker --metrics-listen`: `/metrics` and `/healthz` of this
/// process's registry. Like `wasmq serve`, it binds only loopback addresses
/// unless `token` is set, and then `/metrics` needs it as a bearer token.
/// Prints the bound address on stdout.
pub async fn serve_worker_metrics(
    addr: SocketAddr,
    token: Option<ApiToken>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    check_listen(&addr, token.as_ref()).map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr} for metrics"))?;
    let bound = listener.local_addr()?;
    println!("wasmq worker: metrics on http://{bound}/metrics");
    tracing::info!(addr = %bound, token = token.is_some(), "serving worker metrics");
    let router = metrics::worker_router(token, AllowedHosts::new(bound, &[]));
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    }))
}
