//! Worker counters, written as CloudWatch Embedded Metric Format (EMF) lines on stdout.
//!
//! On ECS with the `awslogs` driver (or any CloudWatch Logs destination) EMF lines become
//! CloudWatch metrics with no agent: namespace `QueueFleet`, dimensions `Worker` and `Queue`.
//! Each line carries the counts since the previous line as metrics, and the running totals as
//! plain properties (`totals`) for scripts and the benchmark. Logs go to stderr, so stdout holds
//! nothing but these lines.

use crate::util::now_ms;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// The CloudWatch namespace of every fleet metric.
pub const NAMESPACE: &str = "QueueFleet";

/// The counters of one worker process. Cheap to update from any task.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Messages received from the queue.
    pub received: AtomicU64,
    /// Messages handled and deleted.
    pub succeeded: AtomicU64,
    /// Messages handed back for a later try.
    pub retried: AtomicU64,
    /// Messages sent to the dead-letter queue by this worker.
    pub dead_lettered: AtomicU64,
    /// Messages whose work had already been done (redeliveries, replays).
    pub duplicates: AtomicU64,
    /// FIFO: messages handed back unhandled behind a retried message of their group.
    pub held_back: AtomicU64,
    /// Messages being handled right now.
    pub in_flight: AtomicI64,
    /// SQS API calls made by the engine.
    pub sqs_calls: AtomicU64,
    /// How many messages the process may work on at once right now (set by the engine).
    pub concurrency: AtomicU64,
    /// 1 while the circuit breaker is open (a dependency is down), else 0.
    pub breaker_open: AtomicU64,
    /// Times the circuit breaker opened.
    pub breaker_opened: AtomicU64,
    /// Messages put back on their queue as fresh copies during a dependency outage.
    pub requeued: AtomicU64,
    /// FIFO: messages dead-lettered unhandled behind their group's dead-lettered head.
    pub parked: AtomicU64,
    /// Handler latencies since the previous metric line.
    pub latency: Histogram,
    /// Counters a worker adds for itself (e.g. DynamoDB writes), by name.
    custom: Mutex<BTreeMap<&'static str, Arc<AtomicU64>>>,
    /// Totals at the previous emission, to compute deltas.
    last: Mutex<BTreeMap<&'static str, u64>>,
}

/// A point-in-time copy of every counter, by name.
pub type Snapshot = BTreeMap<&'static str, u64>;

impl Metrics {
    /// New, zeroed counters.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A worker-defined counter, created on first use. Keep the handle: lookups take a lock.
    pub fn counter(&self, name: &'static str) -> Arc<AtomicU64> {
        self.custom
            .lock()
            .expect("metrics lock poisoned")
            .entry(name)
            .or_default()
            .clone()
    }

    /// Adds one to a counter.
    pub fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Every counter's current total (and the in-flight gauge).
    pub fn snapshot(&self) -> Snapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut snap = BTreeMap::from([
            ("received", load(&self.received)),
            ("succeeded", load(&self.succeeded)),
            ("retried", load(&self.retried)),
            ("dead_lettered", load(&self.dead_lettered)),
            ("duplicates", load(&self.duplicates)),
            ("held_back", load(&self.held_back)),
            ("breaker_opened", load(&self.breaker_opened)),
            ("requeued", load(&self.requeued)),
            ("parked", load(&self.parked)),
            ("sqs_calls", load(&self.sqs_calls)),
        ]);
        for (name, counter) in self.custom.lock().expect("metrics lock poisoned").iter() {
            snap.insert(name, load(counter));
        }
        snap
    }

    /// The EMF line for everything since the previous call.
    pub fn emf_line(&self, worker: &str, queue: &str) -> String {
        let totals = self.snapshot();
        let mut last = self.last.lock().expect("metrics lock poisoned");
        let deltas: BTreeMap<&str, u64> = totals
            .iter()
            .map(|(name, total)| (*name, total - last.get(name).copied().unwrap_or(0)))
            .collect();
        *last = totals.clone();
        drop(last);
        let gauges = Gauges {
            in_flight: self.in_flight.load(Ordering::Relaxed).max(0) as u64,
            concurrency: self.concurrency.load(Ordering::Relaxed),
            breaker_open: self.breaker_open.load(Ordering::Relaxed),
            latency: self.latency.take(),
        };
        emf(worker, queue, &deltas, &gauges, &totals, now_ms())
    }

    /// Writes [`Self::emf_line`] to stdout.
    pub fn emit(&self, worker: &str, queue: &str) {
        let line = self.emf_line(worker, queue);
        let mut out = std::io::stdout().lock();
        // A closed stdout must not take the worker down.
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    }
}

/// Handler latencies in milliseconds, in buckets that grow by a quarter: lock-free to record,
/// percentiles accurate to the bucket (±12 %).
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; HISTOGRAM_BUCKETS],
}

/// Buckets of [`Histogram`]: upper bounds from 1 ms growing ×1.25 reach about 26 hours.
const HISTOGRAM_BUCKETS: usize = 80;

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Percentiles of the latencies since the previous [`Histogram::take`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Percentiles {
    /// How many latencies were recorded.
    pub count: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
}

impl Histogram {
    fn upper_bound_ms(bucket: usize) -> f64 {
        1.25f64.powi(bucket as i32)
    }

    fn bucket(ms: f64) -> usize {
        if ms <= 1.0 {
            return 0;
        }
        ((ms.ln() / 1.25f64.ln()).ceil() as usize).min(HISTOGRAM_BUCKETS - 1)
    }

    /// Records one latency.
    pub fn record(&self, elapsed: std::time::Duration) {
        let bucket = Self::bucket(elapsed.as_secs_f64() * 1000.0);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// The percentiles since the previous call, and a reset.
    pub fn take(&self) -> Percentiles {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.swap(0, Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        if count == 0 {
            return Percentiles::default();
        }
        let quantile = |q: f64| {
            let rank = (q * count as f64).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (bucket, n) in counts.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return Self::upper_bound_ms(bucket);
                }
            }
            Self::upper_bound_ms(HISTOGRAM_BUCKETS - 1)
        };
        Percentiles {
            count,
            p50_ms: (quantile(0.50) * 10.0).round() / 10.0,
            p99_ms: (quantile(0.99) * 10.0).round() / 10.0,
        }
    }
}

/// Point-in-time values of an EMF line.
struct Gauges {
    in_flight: u64,
    concurrency: u64,
    breaker_open: u64,
    latency: Percentiles,
}

#[derive(Serialize)]
struct MetricDef<'a> {
    #[serde(rename = "Name")]
    name: &'a str,
    #[serde(rename = "Unit")]
    unit: &'a str,
}

fn emf(
    worker: &str,
    queue: &str,
    deltas: &BTreeMap<&str, u64>,
    gauges: &Gauges,
    totals: &Snapshot,
    timestamp_ms: u64,
) -> String {
    let mut metrics: Vec<MetricDef<'_>> = deltas
        .keys()
        .map(|name| MetricDef {
            name,
            unit: "Count",
        })
        .collect();
    for name in ["in_flight", "concurrency", "breaker_open"] {
        metrics.push(MetricDef {
            name,
            unit: "Count",
        });
    }
    if gauges.latency.count > 0 {
        for name in ["handler_latency_p50_ms", "handler_latency_p99_ms"] {
            metrics.push(MetricDef {
                name,
                unit: "Milliseconds",
            });
        }
    }
    let mut doc = serde_json::json!({
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [["Worker", "Queue"]],
                "Metrics": metrics,
            }],
        },
        "Worker": worker,
        "Queue": queue,
        "in_flight": gauges.in_flight,
        "concurrency": gauges.concurrency,
        "breaker_open": gauges.breaker_open,
        "totals": totals,
    });
    let object = doc.as_object_mut().expect("a JSON object");
    if gauges.latency.count > 0 {
        object.insert(
            "handler_latency_p50_ms".into(),
            gauges.latency.p50_ms.into(),
        );
        object.insert(
            "handler_latency_p99_ms".into(),
            gauges.latency.p99_ms.into(),
        );
    }
    for (name, value) in deltas {
        object.insert((*name).to_owned(), (*value).into());
    }
    doc.to_string()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn histogram_percentiles_are_within_a_bucket() {
        let h = Histogram::default();
        for ms in 1..=1000u64 {
            h.record(Duration::from_millis(ms));
        }
        let p = h.take();
        assert_eq!(p.count, 1000);
        assert!((500.0..=625.0).contains(&p.p50_ms), "{p:?}");
        assert!((990.0..=1240.0).contains(&p.p99_ms), "{p:?}");
        assert_eq!(h.take(), Percentiles::default(), "take resets");
    }

    #[test]
    fn latency_reaches_the_emf_line() {
        let m = Metrics::new();
        m.latency.record(Duration::from_millis(40));
        m.concurrency.store(12, Ordering::Relaxed);
        let line: serde_json::Value = serde_json::from_str(&m.emf_line("w", "q")).unwrap();
        assert!(line["handler_latency_p50_ms"].as_f64().unwrap() >= 40.0);
        assert_eq!(line["concurrency"], 12);
        let again: serde_json::Value = serde_json::from_str(&m.emf_line("w", "q")).unwrap();
        assert!(
            again.get("handler_latency_p50_ms").is_none(),
            "no latency, no metric"
        );
    }

    #[test]
    fn emf_lines_carry_deltas_as_metrics_and_totals_as_properties() {
        let m = Metrics::new();
        let writes = m.counter("dynamodb_writes");
        m.received.fetch_add(5, Ordering::Relaxed);
        writes.fetch_add(2, Ordering::Relaxed);
        let first: serde_json::Value = serde_json::from_str(&m.emf_line("w", "q")).unwrap();
        assert_eq!(first["received"], 5);
        assert_eq!(first["dynamodb_writes"], 2);
        assert_eq!(
            first["_aws"]["CloudWatchMetrics"][0]["Namespace"],
            NAMESPACE
        );
        let names: Vec<&str> = first["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["Name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"received") && names.contains(&"dynamodb_writes"));

        m.received.fetch_add(3, Ordering::Relaxed);
        let second: serde_json::Value = serde_json::from_str(&m.emf_line("w", "q")).unwrap();
        assert_eq!(second["received"], 3, "metrics are deltas");
        assert_eq!(second["totals"]["received"], 8, "totals are running");
        assert_eq!(second["dynamodb_writes"], 0);
    }
}
