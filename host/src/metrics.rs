//! The process-wide metrics registry, on the `prometheus-client` crate.
//!
//! Workers (through their executor) and the HTTP API update the same
//! [`global`] registry; `wasmq serve` and `wasmq worker --metrics-listen`
//! expose it at `/metrics` (the HTTP side lives in `api`), in Prometheus'
//! text format 0.0.4 ([`CONTENT_TYPE`]). This module has no HTTP and no
//! database: gauges that come from the database are registered by the caller
//! in a [`Registry`] of its own (see [`register`]) and encoded next to this
//! one.
//!
//! Names follow Prometheus' conventions: counters end in `_total` (the
//! encoder adds it: counters are registered without it), units are base
//! units (`_seconds`), and a family keeps its series once seen, so a rate
//! never sees a series vanish.
//!
//! Label sets are typed: closed sets of values are enums ([`OutcomeKind`],
//! [`FaultKind`]); modules, queues and routes are open sets named by
//! strings, whose series are looked up by name under a read lock and created
//! once ([`ByName`]). So recording a task on a module and queue seen before
//! allocates nothing and takes no lock for writing but the histograms' own.

use crate::kinds::OutcomeKind;
use axum::http::Method;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
    prometheus_text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// Buckets of the run-duration and queue-wait histograms, in seconds.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];
/// Buckets of the fuel histogram, in fuel units (decades from 10^3 to 10^11).
pub const FUEL_BUCKETS: &[f64] = &[1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11];

/// The `Content-Type` of what [`Metrics::encode`] and [`encode`] write.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The name and help of the heartbeat-age gauge: written by workers for
/// themselves and by the API for every live worker in the database.
pub const WORKER_HEARTBEAT_AGE: &str = "wasmq_worker_heartbeat_age_seconds";
pub const WORKER_HEARTBEAT_AGE_HELP: &str = "Seconds since the worker's last successful heartbeat.";

/// A fault a worker met and survived: the `kind` label of
/// `wasmq_worker_faults_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    HeartbeatFailed,
    LeaseLost,
    ClaimFailed,
    StartFailed,
    CompletionRetried,
    CompletionSplit,
    CompletionUnstorable,
    CompletionAbandoned,
}

impl FaultKind {
    pub const ALL: [FaultKind; 8] = [
        FaultKind::HeartbeatFailed,
        FaultKind::LeaseLost,
        FaultKind::ClaimFailed,
        FaultKind::StartFailed,
        FaultKind::CompletionRetried,
        FaultKind::CompletionSplit,
        FaultKind::CompletionUnstorable,
        FaultKind::CompletionAbandoned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::HeartbeatFailed => "heartbeat-failed",
            FaultKind::LeaseLost => "lease-lost",
            FaultKind::ClaimFailed => "claim-failed",
            FaultKind::StartFailed => "start-failed",
            FaultKind::CompletionRetried => "completion-retried",
            FaultKind::CompletionSplit => "completion-split",
            FaultKind::CompletionUnstorable => "completion-unstorable",
            FaultKind::CompletionAbandoned => "completion-abandoned",
        }
    }
}

impl EncodeLabelValue for OutcomeKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

impl EncodeLabelValue for FaultKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

/// An HTTP method as a label value: one of the standard methods, or
/// [`OTHER_METHOD`]. A client may send any token as a method; each one kept
/// as it came would be a new series, so a scanner could grow the registry
/// without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct HttpMethod(&'static str);

/// The `method` label of a request whose method is not a standard one.
pub const OTHER_METHOD: &str = "OTHER";

impl HttpMethod {
    fn of(method: &Method) -> HttpMethod {
        const KNOWN: [Method; 9] = [
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
            Method::CONNECT,
            Method::TRACE,
        ];
        HttpMethod(
            KNOWN
                .iter()
                .find(|m| *m == method)
                .map_or(OTHER_METHOD, |m| m.as_str()),
        )
    }
}

impl EncodeLabelValue for HttpMethod {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FinishedLabels {
    outcome: OutcomeKind,
    module: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ModuleLabels {
    module: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HttpLabels {
    method: HttpMethod,
    route: Arc<str>,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    route: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FaultLabels {
    kind: FaultKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct WorkerLabels {
    pub worker: String,
}

/// A histogram of [`DURATION_BUCKETS`] or of [`FUEL_BUCKETS`].
fn durations() -> Histogram {
    Histogram::new(DURATION_BUCKETS.iter().copied())
}

fn fuel() -> Histogram {
    Histogram::new(FUEL_BUCKETS.iter().copied())
}

/// Series handles by a name (a module, a queue, a route): found under a read
/// lock without building a label set; made by the caller, under the write
/// lock, the first time a name is seen. A handle shares its value with its
/// family's series, so the family still writes it.
struct ByName<T>(RwLock<HashMap<Box<str>, T>>);

impl<T> Default for ByName<T> {
    fn default() -> Self {
        ByName(RwLock::default())
    }
}

impl<T> ByName<T> {
    fn with<R>(&self, name: &str, make: impl FnOnce() -> T, f: impl FnOnce(&T) -> R) -> R {
        if let Some(t) = self
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            return f(t);
        }
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        f(map.entry(name.into()).or_insert_with(make))
    }
}

/// What the attempts of one module update.
struct ModuleSeries {
    /// By outcome kind: made when an attempt first ends so, since a series
    /// is written once made.
    finished: [OnceLock<Counter>; OutcomeKind::ALL.len()],
    run_duration: Histogram,
    fuel_used: Histogram,
}

/// What the requests of one route update.
struct RouteSeries {
    route: Arc<str>,
    duration: Histogram,
}

/// The heartbeats of this process's workers, written as their ages when
/// encoded.
#[derive(Debug, Default)]
struct Heartbeats(Mutex<BTreeMap<String, Instant>>);

impl Collector for Heartbeats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let beats = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if beats.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            WORKER_HEARTBEAT_AGE,
            WORKER_HEARTBEAT_AGE_HELP,
            None,
            MetricType::Gauge,
        )?;
        for (id, at) in beats.iter() {
            let labels = WorkerLabels { worker: id.clone() };
            ConstGauge::new(at.elapsed().as_secs_f64()).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Everything a worker or the API records. One per process: [`global`].
pub struct Metrics {
    registry: Registry,
    /// The heartbeat ages of this process's workers: encoded by the worker's
    /// endpoint only (the API writes every worker's from the database).
    local: Registry,
    /// Attempts that ended, by how and module name.
    tasks_finished: Family<FinishedLabels, Counter>,
    run_duration: Family<ModuleLabels, Histogram>,
    fuel_used: Family<ModuleLabels, Histogram>,
    /// From enqueue to the start of the first attempt.
    queue_wait: Family<QueueLabels, Histogram>,
    /// Tasks enqueued through this process (the API), by queue.
    tasks_enqueued: Family<QueueLabels, Counter>,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<RouteLabels, Histogram>,
    /// Faults a worker met and survived, by kind.
    worker_faults: Family<FaultLabels, Counter>,
    in_flight: Gauge,
    heartbeats: Arc<Heartbeats>,
    modules: ByName<ModuleSeries>,
    queue_waits: ByName<Histogram>,
    enqueued: ByName<Counter>,
    routes: ByName<RouteSeries>,
}

/// Registers `metric` in `registry`. `help` is written as it is (the crate
/// adds a full stop to help texts: one ending in one loses it first).
pub fn register(registry: &mut Registry, name: &str, help: &str, metric: impl Metric) {
    registry.register(name, help.strip_suffix('.').unwrap_or(help), metric);
}

/// Appends `registry` to `out` in the format of [`CONTENT_TYPE`].
pub fn encode(out: &mut String, registry: &Registry) -> std::fmt::Result {
    prometheus_text::encode(out, registry)
}

impl Metrics {
    fn new() -> Self {
        let m = Metrics {
            registry: Registry::default(),
            local: Registry::default(),
            tasks_finished: Family::default(),
            run_duration: Family::new_with_constructor(durations),
            fuel_used: Family::new_with_constructor(fuel),
            queue_wait: Family::new_with_constructor(durations),
            tasks_enqueued: Family::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(durations),
            worker_faults: Family::default(),
            in_flight: Gauge::default(),
            heartbeats: Arc::default(),
            modules: ByName::default(),
            queue_waits: ByName::default(),
            enqueued: ByName::default(),
            routes: ByName::default(),
        };
        m.registered()
    }

    fn registered(mut self) -> Self {
        let r = &mut self.registry;
        // Counters without `_total`: the encoder adds it.
        register(
            r,
            "wasmq_tasks_finished",
            "Task attempts that ended, by outcome kind and module.",
            self.tasks_finished.clone(),
        );
        register(
            r,
            "wasmq_task_run_duration_seconds",
            "Wall time of one attempt, from claim to report, by module.",
            self.run_duration.clone(),
        );
        register(
            r,
            "wasmq_task_queue_wait_seconds",
            "Time from enqueue to the start of the first attempt, by queue.",
            self.queue_wait.clone(),
        );
        register(
            r,
            "wasmq_task_fuel_used",
            "Fuel consumed by one attempt, by module.",
            self.fuel_used.clone(),
        );
        register(
            r,
            "wasmq_tasks_enqueued",
            "Tasks enqueued through this process, by queue.",
            self.tasks_enqueued.clone(),
        );
        register(
            r,
            "wasmq_http_requests",
            "HTTP requests served, by method, route and status code.",
            self.http_requests.clone(),
        );
        register(
            r,
            "wasmq_http_request_duration_seconds",
            "Time to answer an HTTP request, by route.",
            self.http_duration.clone(),
        );
        let mut faults = String::from("Faults a worker met and survived, by kind:");
        for (i, kind) in FaultKind::ALL.into_iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            let _ = write!(faults, "{sep}{}", kind.as_str());
        }
        register(
            r,
            "wasmq_worker_faults",
            &faults,
            self.worker_faults.clone(),
        );
        register(
            r,
            "wasmq_tasks_in_flight",
            "Tasks running in this process now.",
            self.in_flight.clone(),
        );
        self.local
            .register_collector(Box::new(self.heartbeats.clone()));
        self
    }

    /// Marks one task running in this process until the guard drops.
    pub fn in_flight_guard(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(self)
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.get()
    }

    /// Records a successful heartbeat of worker `id` (in this process).
    pub fn heartbeat(&self, id: &str) {
        let mut beats = self
            .heartbeats
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match beats.get_mut(id) {
            Some(at) => *at = Instant::now(),
            None => {
                beats.insert(id.to_string(), Instant::now());
            }
        }
    }

    /// Forgets a worker of this process that stopped: its heartbeat-age
    /// series goes.
    pub fn forget_worker(&self, id: &str) {
        self.heartbeats
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    /// Records the time task of `queue` waited for its first attempt.
    pub fn queue_waited(&self, queue: &str, wait: Duration) {
        self.queue_waits.with(
            queue,
            || self.queue_wait.get_or_create_owned(&queue_labels(queue)),
            |h| h.observe(wait.as_secs_f64()),
        );
    }

    /// Records the end of one attempt.
    pub fn attempt_finished(&self, end: OutcomeKind, module: &str, run: Duration, fuel: u64) {
        self.modules.with(
            module,
            || {
                let labels = ModuleLabels {
                    module: module.to_string(),
                };
                ModuleSeries {
                    finished: Default::default(),
                    run_duration: self.run_duration.get_or_create_owned(&labels),
                    fuel_used: self.fuel_used.get_or_create_owned(&labels),
                }
            },
            |series| {
                series.finished[end as usize]
                    .get_or_init(|| {
                        self.tasks_finished.get_or_create_owned(&FinishedLabels {
                            outcome: end,
                            module: module.to_string(),
                        })
                    })
                    .inc();
                series.run_duration.observe(run.as_secs_f64());
                series.fuel_used.observe(fuel as f64);
            },
        );
    }

    /// Records a task enqueued through this process.
    pub fn task_enqueued(&self, queue: &str) {
        self.enqueued.with(
            queue,
            || {
                self.tasks_enqueued
                    .get_or_create_owned(&queue_labels(queue))
            },
            |c| {
                c.inc();
            },
        );
    }

    /// Records an HTTP request answered, by its route template.
    pub fn http_request(&self, method: &Method, route: &str, status: u16, took: Duration) {
        self.routes.with(
            route,
            || {
                let route: Arc<str> = route.into();
                RouteSeries {
                    duration: self.http_duration.get_or_create_owned(&RouteLabels {
                        route: route.clone(),
                    }),
                    route,
                }
            },
            |series| {
                series.duration.observe(took.as_secs_f64());
                self.http_requests
                    .get_or_create(&HttpLabels {
                        method: HttpMethod::of(method),
                        route: series.route.clone(),
                        status,
                    })
                    .inc();
            },
        );
    }

    /// Records a fault a worker met and survived.
    pub fn fault(&self, kind: FaultKind) {
        self.worker_faults
            .get_or_create(&FaultLabels { kind })
            .inc();
    }

    /// The faults of `kind` recorded so far.
    pub fn faults(&self, kind: FaultKind) -> u64 {
        self.worker_faults
            .get(&FaultLabels { kind })
            .map_or(0, |c| c.get())
    }

    /// Appends every family of the registry to `out`, in the format of
    /// [`CONTENT_TYPE`]; the heartbeat ages of this process's workers only
    /// with `local_heartbeats` (the API writes every worker's from the
    /// database instead).
    pub fn encode(&self, out: &mut String, local_heartbeats: bool) -> std::fmt::Result {
        encode(out, &self.registry)?;
        if local_heartbeats {
            encode(out, &self.local)?;
        }
        Ok(())
    }
}

fn queue_labels(queue: &str) -> QueueLabels {
    QueueLabels {
        queue: queue.to_string(),
    }
}

/// See [`Metrics::in_flight_guard`].
pub struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

/// The registry of this process.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Metrics, local_heartbeats: bool) -> String {
        let mut out = String::new();
        m.encode(&mut out, local_heartbeats).unwrap();
        out
    }

    fn has(text: &str, line: &str) {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }

    const SUCCESS: OutcomeKind = OutcomeKind::Success;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::new();
        for ms in [0.2, 0.7, 9000.0] {
            m.attempt_finished(SUCCESS, "a", Duration::from_secs_f64(ms / 1000.0), 0);
        }
        let text = text(&m, false);
        let bucket = |le: &str, n: u64| {
            format!("wasmq_task_run_duration_seconds_bucket{{module=\"a\",le=\"{le}\"}} {n}")
        };
        has(&text, &bucket("0.0005", 1));
        has(&text, &bucket("0.001", 2));
        has(&text, &bucket("5", 2));
        has(&text, &bucket("10", 3));
        has(&text, &bucket("+Inf", 3));
        has(
            &text,
            "wasmq_task_run_duration_seconds_count{module=\"a\"} 3",
        );
        has(
            &text,
            "wasmq_task_fuel_used_bucket{module=\"a\",le=\"1000\"} 3",
        );
        has(
            &text,
            "wasmq_task_fuel_used_bucket{module=\"a\",le=\"1e+11\"} 3",
        );
    }

    /// The names, types and labels that the README documents and dashboards
    /// query, with the values the handles wrote into the families.
    #[test]
    fn every_family_keeps_its_name_labels_and_type() {
        let m = Metrics::new();
        {
            let _running = m.in_flight_guard();
            m.queue_waited("default", Duration::from_millis(3));
            m.attempt_finished(SUCCESS, "hello", Duration::from_millis(1), 5_000);
            m.attempt_finished(SUCCESS, "hello", Duration::from_millis(1), 5_000);
            m.attempt_finished(OutcomeKind::Shutdown, "hello", Duration::ZERO, 0);
            assert_eq!(m.in_flight(), 1);
        }
        m.task_enqueued("default");
        m.http_request(
            &Method::POST,
            "/api/v1/tasks",
            201,
            Duration::from_millis(2),
        );
        m.http_request(
            &Method::POST,
            "/api/v1/tasks",
            201,
            Duration::from_millis(2),
        );
        m.fault(FaultKind::LeaseLost);
        assert_eq!(m.faults(FaultKind::LeaseLost), 1);
        assert_eq!(m.faults(FaultKind::ClaimFailed), 0);
        let text = text(&m, false);
        for (name, kind) in [
            ("wasmq_tasks_finished_total", "counter"),
            ("wasmq_task_run_duration_seconds", "histogram"),
            ("wasmq_task_queue_wait_seconds", "histogram"),
            ("wasmq_task_fuel_used", "histogram"),
            ("wasmq_tasks_enqueued_total", "counter"),
            ("wasmq_http_requests_total", "counter"),
            ("wasmq_http_request_duration_seconds", "histogram"),
            ("wasmq_worker_faults_total", "counter"),
            ("wasmq_tasks_in_flight", "gauge"),
        ] {
            has(&text, &format!("# TYPE {name} {kind}"));
        }
        has(
            &text,
            "# HELP wasmq_tasks_finished_total Task attempts that ended, by outcome kind and module.",
        );
        has(
            &text,
            "# HELP wasmq_worker_faults_total Faults a worker met and survived, by kind: \
             heartbeat-failed, lease-lost, claim-failed, start-failed, completion-retried, \
             completion-split, completion-unstorable, completion-abandoned.",
        );
        has(
            &text,
            r#"wasmq_tasks_finished_total{outcome="success",module="hello"} 2"#,
        );
        has(
            &text,
            r#"wasmq_tasks_finished_total{outcome="shutdown",module="hello"} 1"#,
        );
        has(
            &text,
            r#"wasmq_task_run_duration_seconds_count{module="hello"} 3"#,
        );
        has(&text, r#"wasmq_task_fuel_used_sum{module="hello"} 10000.0"#);
        has(
            &text,
            r#"wasmq_task_queue_wait_seconds_count{queue="default"} 1"#,
        );
        has(&text, r#"wasmq_tasks_enqueued_total{queue="default"} 1"#);
        has(
            &text,
            r#"wasmq_http_requests_total{method="POST",route="/api/v1/tasks",status="201"} 2"#,
        );
        has(
            &text,
            r#"wasmq_http_request_duration_seconds_count{route="/api/v1/tasks"} 2"#,
        );
        has(&text, r#"wasmq_worker_faults_total{kind="lease-lost"} 1"#);
        has(&text, "wasmq_tasks_in_flight 0");
        assert!(!text.contains(WORKER_HEARTBEAT_AGE), "{text}");
    }

    /// Any token is a valid HTTP method: those that are not standard share
    /// one series instead of making one each.
    #[test]
    fn unknown_http_methods_share_one_series() {
        let m = Metrics::new();
        for method in ["FOO", "BAR", "get", "PROPFIND"] {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            m.http_request(&method, "/api/v1/tasks", 405, Duration::from_millis(1));
        }
        m.http_request(
            &Method::PATCH,
            "/api/v1/tasks",
            405,
            Duration::from_millis(1),
        );
        let text = text(&m, false);
        has(
            &text,
            &format!(
                r#"wasmq_http_requests_total{{method="{OTHER_METHOD}",route="/api/v1/tasks",status="405"}} 4"#
            ),
        );
        has(
            &text,
            r#"wasmq_http_requests_total{method="PATCH",route="/api/v1/tasks",status="405"} 1"#,
        );
        for odd in ["FOO", "BAR", "\"get\"", "PROPFIND"] {
            assert!(!text.contains(odd), "{odd} became a label value:\n{text}");
        }
    }

    #[test]
    fn a_forgotten_worker_loses_its_heartbeat_series() {
        let m = Metrics::new();
        m.heartbeat("w1");
        m.heartbeat("w2");
        m.heartbeat("w1");
        let both = text(&m, true);
        let series = |text: &str, id: &str| {
            text.lines()
                .filter(|l| l.starts_with(&format!("{WORKER_HEARTBEAT_AGE}{{worker=\"{id}\"}} ")))
                .count()
        };
        assert_eq!((series(&both, "w1"), series(&both, "w2")), (1, 1), "{both}");
        has(&both, &format!("# TYPE {WORKER_HEARTBEAT_AGE} gauge"));
        assert!(!text(&m, false).contains(WORKER_HEARTBEAT_AGE));
        m.forget_worker("w1");
        let one = text(&m, true);
        assert_eq!((series(&one, "w1"), series(&one, "w2")), (0, 1), "{one}");
        m.forget_worker("w2");
        assert!(!text(&m, true).contains(WORKER_HEARTBEAT_AGE));
    }

    #[test]
    fn labels_are_escaped() {
        let m = Metrics::new();
        m.task_enqueued("a\"b\\c\nd");
        has(
            &text(&m, false),
            r#"wasmq_tasks_enqueued_total{queue="a\"b\\c\nd"} 1"#,
        );
    }

    /// One task's worth of observations, as the executor makes them.
    fn one_task(m: &Metrics, module: &str, queue: &str) {
        let _running = m.in_flight_guard();
        m.queue_waited(queue, Duration::from_millis(12));
        m.attempt_finished(SUCCESS, module, Duration::from_micros(850), 1_234_567);
    }

    /// The cost of [`one_task`] on one thread and on two at once, in ns per
    /// task: `cargo test --release -p wasmq --lib observation_cost --
    /// --ignored --nocapture`.
    #[test]
    #[ignore = "a timing loop: run with --ignored --nocapture"]
    fn observation_cost() {
        const MODULES: [&str; 4] = ["hello", "flaky", "fib", "resize-image"];
        const QUEUES: [&str; 2] = ["default", "emails"];
        const N: usize = 1_000_000;
        let m = Metrics::new();
        let run = |n: usize| {
            let start = Instant::now();
            for i in 0..n {
                let module = std::hint::black_box(MODULES[i % MODULES.len()]);
                let queue = std::hint::black_box(QUEUES[i % QUEUES.len()]);
                one_task(&m, module, queue);
            }
            start.elapsed().as_nanos() as f64 / n as f64
        };
        run(N / 10);
        let single = run(N);
        let both = std::thread::scope(|s| {
            let a = s.spawn(|| run(N));
            let b = s.spawn(|| run(N));
            (a.join().unwrap() + b.join().unwrap()) / 2.0
        });
        println!(
            "observations of one task: {single:.0} ns on one thread, {both:.0} ns each on two"
        );
    }
}
