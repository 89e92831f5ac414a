//! The process-wide metrics registry, in Prometheus' data model.
//!
//! Workers (through their executor) and the HTTP API update the same
//! [`global`] registry; `wasmq serve` and `wasmq worker --metrics-listen`
//! expose it at `/metrics` (the HTTP side lives in `api`). This module has no
//! HTTP and no database: gauges that come from the database are written by
//! the caller with [`Exposition`] next to the registry's own families.
//!
//! Names follow Prometheus' conventions: counters end in `_total`, units are
//! base units (`_seconds`), and a family keeps its series once seen, so a
//! rate never sees a series vanish.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Buckets of the run-duration and queue-wait histograms, in seconds.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];
/// Buckets of the fuel histogram, in fuel units (decades from 10^3 to 10^11).
pub const FUEL_BUCKETS: &[f64] = &[1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11];

/// A counter family: one monotonically increasing value per label set.
pub struct CounterFamily {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: Mutex<BTreeMap<Vec<String>, u64>>,
}

impl CounterFamily {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Self {
        CounterFamily {
            name,
            help,
            labels,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn inc(&self, values: &[&str]) {
        self.add(values, 1);
    }

    pub fn add(&self, values: &[&str], n: u64) {
        debug_assert_eq!(values.len(), self.labels.len(), "{}", self.name);
        let mut s = self.series.lock().unwrap();
        *s.entry(values.iter().map(|v| v.to_string()).collect())
            .or_default() += n;
    }

    /// The current value of one series (0 when never touched).
    pub fn get(&self, values: &[&str]) -> u64 {
        let key: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        self.series.lock().unwrap().get(&key).copied().unwrap_or(0)
    }

    fn write(&self, out: &mut Exposition) {
        out.header(self.name, self.help, "counter");
        for (values, v) in self.series.lock().unwrap().iter() {
            out.sample(self.name, "", &pairs(self.labels, values), *v as f64);
        }
    }
}

struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// A histogram family with fixed buckets.
pub struct HistogramFamily {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    buckets: &'static [f64],
    series: Mutex<BTreeMap<Vec<String>, Histogram>>,
}

impl HistogramFamily {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        buckets: &'static [f64],
    ) -> Self {
        HistogramFamily {
            name,
            help,
            labels,
            buckets,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn observe(&self, values: &[&str], v: f64) {
        debug_assert_eq!(values.len(), self.labels.len(), "{}", self.name);
        let mut s = self.series.lock().unwrap();
        let h = s
            .entry(values.iter().map(|v| v.to_string()).collect())
            .or_insert_with(|| Histogram {
                counts: vec![0; self.buckets.len()],
                sum: 0.0,
                count: 0,
            });
        // Counts are per bucket here and made cumulative when written.
        if let Some(i) = self.buckets.iter().position(|&b| v <= b) {
            h.counts[i] += 1;
        }
        h.sum += v;
        h.count += 1;
    }

    /// Observations recorded in one series so far.
    pub fn count(&self, values: &[&str]) -> u64 {
        let key: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        self.series.lock().unwrap().get(&key).map_or(0, |h| h.count)
    }

    fn write(&self, out: &mut Exposition) {
        out.header(self.name, self.help, "histogram");
        for (values, h) in self.series.lock().unwrap().iter() {
            let base = pairs(self.labels, values);
            let mut cumulative = 0;
            for (bound, n) in self.buckets.iter().zip(&h.counts) {
                cumulative += n;
                let mut l = base.clone();
                l.push(("le", format_float(*bound)));
                out.sample(self.name, "_bucket", &l, cumulative as f64);
            }
            let mut l = base.clone();
            l.push(("le", "+Inf".into()));
            out.sample(self.name, "_bucket", &l, h.count as f64);
            out.sample(self.name, "_sum", &base, h.sum);
            out.sample(self.name, "_count", &base, h.count as f64);
        }
    }
}

fn pairs(labels: &'static [&'static str], values: &[String]) -> Vec<(&'static str, String)> {
    labels.iter().copied().zip(values.iter().cloned()).collect()
}

/// Everything a worker or the API records. One per process: [`global`].
pub struct Metrics {
    /// Attempts that ended, by outcome kind and module name.
    pub tasks_finished: CounterFamily,
    pub run_duration: HistogramFamily,
    /// From enqueue to the start of the first attempt.
    pub queue_wait: HistogramFamily,
    pub fuel_used: HistogramFamily,
    /// Tasks enqueued through this process (the API), by queue.
    pub tasks_enqueued: CounterFamily,
    pub http_requests: CounterFamily,
    pub http_duration: HistogramFamily,
    /// Faults a worker met and survived, by kind (see `worker::faults`).
    pub worker_faults: CounterFamily,
    in_flight: Mutex<i64>,
    /// Worker id → time of its last successful heartbeat (workers in this process).
    heartbeats: Mutex<BTreeMap<String, Instant>>,
}

impl Metrics {
    const fn new() -> Self {
        Metrics {
            tasks_finished: CounterFamily::new(
                "wasmq_tasks_finished_total",
                "Task attempts that ended, by outcome kind and module.",
                &["outcome", "module"],
            ),
            run_duration: HistogramFamily::new(
                "wasmq_task_run_duration_seconds",
                "Wall time of one attempt, from claim to report, by module.",
                &["module"],
                DURATION_BUCKETS,
            ),
            queue_wait: HistogramFamily::new(
                "wasmq_task_queue_wait_seconds",
                "Time from enqueue to the start of the first attempt, by queue.",
                &["queue"],
                DURATION_BUCKETS,
            ),
            fuel_used: HistogramFamily::new(
                "wasmq_task_fuel_used",
                "Fuel consumed by one attempt, by module.",
                &["module"],
                FUEL_BUCKETS,
            ),
            tasks_enqueued: CounterFamily::new(
                "wasmq_tasks_enqueued_total",
                "Tasks enqueued through this process, by queue.",
                &["queue"],
            ),
            http_requests: CounterFamily::new(
                "wasmq_http_requests_total",
                "HTTP requests served, by method, route and status code.",
                &["method", "route", "status"],
            ),
            http_duration: HistogramFamily::new(
                "wasmq_http_request_duration_seconds",
                "Time to answer an HTTP request, by route.",
                &["route"],
                DURATION_BUCKETS,
            ),
            worker_faults: CounterFamily::new(
                "wasmq_worker_faults_total",
                "Faults a worker met and survived, by kind: heartbeat-failed, lease-lost, \
                 claim-failed, completion-retried, completion-split, completion-unstorable, \
                 completion-abandoned.",
                &["kind"],
            ),
            in_flight: Mutex::new(0),
            heartbeats: Mutex::new(BTreeMap::new()),
        }
    }

    /// Marks one task running in this process until the guard drops.
    pub fn in_flight_guard(&self) -> InFlight<'_> {
        *self.in_flight.lock().unwrap() += 1;
        InFlight(self)
    }

    pub fn in_flight(&self) -> i64 {
        *self.in_flight.lock().unwrap()
    }

    /// Records a successful heartbeat of worker `id` (in this process).
    pub fn heartbeat(&self, id: &str) {
        self.heartbeats
            .lock()
            .unwrap()
            .insert(id.to_string(), Instant::now());
    }

    /// Forgets a worker of this process that stopped.
    pub fn forget_worker(&self, id: &str) {
        self.heartbeats.lock().unwrap().remove(id);
    }

    /// Records the end of one attempt.
    pub fn attempt_finished(&self, outcome: &str, module: &str, run: Duration, fuel: u64) {
        self.tasks_finished.inc(&[outcome, module]);
        self.run_duration.observe(&[module], run.as_secs_f64());
        self.fuel_used.observe(&[module], fuel as f64);
    }

    /// Writes every family of the registry; the heartbeat ages of this
    /// process's workers only with `local_heartbeats` (the API writes every
    /// worker's from the database instead).
    pub fn write(&self, out: &mut Exposition, local_heartbeats: bool) {
        self.tasks_finished.write(out);
        self.run_duration.write(out);
        self.queue_wait.write(out);
        self.fuel_used.write(out);
        self.tasks_enqueued.write(out);
        self.http_requests.write(out);
        self.http_duration.write(out);
        self.worker_faults.write(out);
        out.header(
            "wasmq_tasks_in_flight",
            "Tasks running in this process now.",
            "gauge",
        );
        out.sample("wasmq_tasks_in_flight", "", &[], self.in_flight() as f64);
        let beats = self.heartbeats.lock().unwrap();
        if local_heartbeats {
            out.header(WORKER_HEARTBEAT_AGE, WORKER_HEARTBEAT_AGE_HELP, "gauge");
            for (id, at) in beats.iter() {
                out.sample(
                    WORKER_HEARTBEAT_AGE,
                    "",
                    &[("worker", id.clone())],
                    at.elapsed().as_secs_f64(),
                );
            }
        }
    }
}

/// The name and help of the heartbeat-age gauge: written by workers for
/// themselves and by the API for every live worker in the database.
pub const WORKER_HEARTBEAT_AGE: &str = "wasmq_worker_heartbeat_age_seconds";
pub const WORKER_HEARTBEAT_AGE_HELP: &str = "Seconds since the worker's last successful heartbeat.";

/// See [`Metrics::in_flight_guard`].
pub struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        *self.0.in_flight.lock().unwrap() -= 1;
    }
}

/// The registry of this process.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// A Prometheus text-format (0.0.4) document being written.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

/// The `Content-Type` of [`Exposition::finish`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// `# HELP` and `# TYPE` lines; write each family's header once, before
    /// its samples.
    pub fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, suffix: &str, labels: &[(&str, String)], value: f64) {
        self.text.push_str(name);
        self.text.push_str(suffix);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape_label(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", format_float(value));
    }

    pub fn finish(self) -> String {
        self.text
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn format_float(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else if v.is_nan() {
        "NaN".into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        static H: HistogramFamily = HistogramFamily::new("h", "help", &["m"], &[1.0, 2.0]);
        H.observe(&["a"], 0.5);
        H.observe(&["a"], 1.5);
        H.observe(&["a"], 9.0);
        let mut e = Exposition::new();
        H.write(&mut e);
        let text = e.finish();
        assert!(text.contains("h_bucket{m=\"a\",le=\"1\"} 1\n"), "{text}");
        assert!(text.contains("h_bucket{m=\"a\",le=\"2\"} 2\n"), "{text}");
        assert!(text.contains("h_bucket{m=\"a\",le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("h_count{m=\"a\"} 3\n"), "{text}");
        assert!(text.contains("h_sum{m=\"a\"} 11\n"), "{text}");
    }

    /// One task's worth of observations, as the executor makes them.
    fn one_task(m: &Metrics, module: &str, queue: &str) {
        let _running = m.in_flight_guard();
        m.queue_wait.observe(&[queue], 0.012);
        m.attempt_finished("success", module, Duration::from_micros(850), 1_234_567);
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

    #[test]
    fn labels_are_escaped() {
        let mut e = Exposition::new();
        e.sample("x", "", &[("l", "a\"b\\c\nd".into())], 1.0);
        assert_eq!(e.finish(), "x{l=\"a\\\"b\\\\c\\nd\"} 1\n");
    }
}
