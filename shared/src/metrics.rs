//! Worker counters, written as CloudWatch Embedded Metric Format (EMF) lines on stdout.
//!
//! On ECS with the `awslogs` driver (or any CloudWatch Logs destination) EMF lines become
//! CloudWatch metrics with no agent: namespace `QueueFleet`, dimensions `Worker` and `Queue`.
//! Each line carries the counts since the previous line as metrics, and the running totals as
//! plain properties (`totals`) for scripts and the benchmark. Logs go to stderr, so stdout holds
//! nothing but these lines.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

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
    /// Messages being handled right now.
    pub in_flight: AtomicI64,
    /// SQS API calls made by the engine.
    pub sqs_calls: AtomicU64,
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

    /// Every counter's current total (and the in-flight gauge).
    pub fn snapshot(&self) -> Snapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut snap = BTreeMap::from([
            ("received", load(&self.received)),
            ("succeeded", load(&self.succeeded)),
            ("retried", load(&self.retried)),
            ("dead_lettered", load(&self.dead_lettered)),
            ("duplicates", load(&self.duplicates)),
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
        let in_flight = self.in_flight.load(Ordering::Relaxed).max(0) as u64;
        emf(worker, queue, &deltas, in_flight, &totals, now_ms())
    }

    /// Writes [`Self::emf_line`] to stdout.
    pub fn emit(&self, worker: &str, queue: &str) {
        let line = self.emf_line(worker, queue);
        let mut out = std::io::stdout().lock();
        // A closed stdout must not take the worker down.
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    }
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
    in_flight: u64,
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
    metrics.push(MetricDef {
        name: "in_flight",
        unit: "Count",
    });
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
        "in_flight": in_flight,
        "totals": totals,
    });
    let object = doc.as_object_mut().expect("a JSON object");
    for (name, value) in deltas {
        object.insert((*name).to_owned(), (*value).into());
    }
    doc.to_string()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

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
