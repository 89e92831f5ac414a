//! The `--ray-*` flags of cluster mode, shared by `wasmq worker --cluster`
//! and `wasmq bench cluster`.

use super::exit::Exit;
use crate::ray::{ClientConfig, RayClient, Token};
use crate::runtime::{parse_duration, parse_size};
use crate::worker::batching::{DEFAULT_RAY_BATCH, MAX_RAY_BATCH};
use crate::worker::cluster::{Cluster, ClusterConfig, DEFAULT_RAY_PENDING_TIMEOUT};
use crate::worker::shipping::{Runner, RunnerSource, check_executable};
use crate::worker::wakeup::WakeAddress;
use clap::Args;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Args, Clone)]
pub struct RayArgs {
    /// File holding the Ray auth token [default: RAY_AUTH_TOKEN, else the
    /// file in RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token].
    #[arg(long, value_name = "PATH")]
    pub ray_token_file: Option<PathBuf>,
    /// Ship this `wasmq` executable to the nodes [default: `wasmq-runner`
    /// next to the running binary, else the running binary].
    #[arg(long, value_name = "PATH", conflicts_with = "ray_runner_installed")]
    pub ray_runner: Option<PathBuf>,
    /// The nodes have `wasmq` installed at this absolute path: ship only the module.
    #[arg(long, value_name = "PATH")]
    pub ray_runner_installed: Option<String>,
    /// Keep finished jobs on the cluster instead of deleting them once their logs are read.
    #[arg(long)]
    pub ray_keep_jobs: bool,
    /// First job status poll interval (slower for long jobs).
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "250ms",
          env = "WASMQ_RAY_POLL")]
    pub ray_poll_interval: Duration,
    /// Stop a job that is still PENDING this long after its attempt began
    /// following it, and end the attempt as a (retried) host error [default: 5m].
    #[arg(long, value_name = "DUR", value_parser = parse_duration,
          env = "WASMQ_RAY_PENDING_TIMEOUT")]
    pub ray_pending_timeout: Option<Duration>,
    /// CPUs Ray reserves for each job (`entrypoint_num_cpus`) [default: Ray's, 0].
    #[arg(long, value_name = "N")]
    pub ray_num_cpus: Option<f64>,
    /// Memory Ray reserves for each job (`entrypoint_memory`), e.g. 512MiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub ray_memory: Option<u64>,
    /// Most tasks of one module and queue packed into one Ray job; each
    /// still has its own limits, attempt and result. 1: a process per task.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_RAY_BATCH, env = "WASMQ_RAY_BATCH",
          value_parser = clap::value_parser!(u32).range(1..=MAX_RAY_BATCH as i64))]
    pub ray_batch: u32,
    /// Where runners tell this worker that a run ended, so that it reads
    /// the result at once: `auto` (the local address of the route to the
    /// Ray dashboard, any port), `off` (status polls only), IP or IP:PORT.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "auto",
        env = "WASMQ_RAY_WAKE"
    )]
    pub ray_wake: WakeAddress,
    /// A custom resource each job needs, NAME=AMOUNT (repeatable).
    #[arg(long = "ray-resource", value_name = "NAME=AMOUNT", value_parser = parse_resource)]
    pub ray_resources: Vec<(String, f64)>,
}

fn parse_resource(s: &str) -> Result<(String, f64), String> {
    let (name, amount) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected NAME=AMOUNT"))?;
    let amount: f64 = amount
        .parse()
        .map_err(|_| format!("`{s}`: the amount is not a number"))?;
    if name.is_empty() || amount.is_nan() || amount < 0.0 {
        return Err(format!("`{s}`: expected NAME=AMOUNT with AMOUNT ≥ 0"));
    }
    Ok((name.to_string(), amount))
}

impl RayArgs {
    /// Connects to the cluster at `address` (checking the token with
    /// `/api/version`) and prepares the runner; `max_jobs` Ray jobs run at
    /// once.
    pub async fn cluster(&self, address: &str, max_jobs: u32) -> anyhow::Result<Cluster> {
        let token = Token::discover(self.ray_token_file.as_deref())
            .map_err(|e| Exit::usage(e.to_string()))?;
        let client = RayClient::new(address, token, ClientConfig::default())
            .map_err(|e| Exit::usage(e.to_string()))?;
        let version = client.version().await?;
        tracing::info!(address, ray_version = %version.ray_version,
            token = ?client.token().map(|t| t.source.to_string()), "connected to the Ray cluster");
        let source = match (&self.ray_runner, &self.ray_runner_installed) {
            (_, Some(installed)) => RunnerSource::Installed(installed.clone()),
            (Some(path), None) => {
                check_executable(path).map_err(|e| Exit::usage(e.to_string()))?;
                RunnerSource::Ship(path.clone())
            }
            (None, None) => RunnerSource::Ship(Runner::default_exe()?),
        };
        // Read and hash the runner once (it is tens of MB), off the async threads.
        let runner = tokio::task::spawn_blocking(move || Runner::new(source))
            .await?
            .map_err(|e| Exit::usage(e.to_string()))?;
        let config = ClusterConfig {
            poll_interval: self.ray_poll_interval,
            keep_jobs: self.ray_keep_jobs,
            pending_timeout: self
                .ray_pending_timeout
                .unwrap_or(DEFAULT_RAY_PENDING_TIMEOUT),
            num_cpus: self.ray_num_cpus,
            memory: self.ray_memory,
            resources: self
                .ray_resources
                .iter()
                .cloned()
                .collect::<BTreeMap<_, _>>(),
            batch: self.ray_batch,
            max_jobs,
            wake: self.ray_wake.clone(),
            ..ClusterConfig::default()
        };
        Ok(Cluster::new(client, runner, config))
    }
}
