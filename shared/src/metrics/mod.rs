//! Worker metrics through the [`metrics`](::metrics) facade, exported as CloudWatch Embedded
//! Metric Format (EMF) lines on stdout and, when asked, on a Prometheus endpoint.
//!
//! [`Metrics`] is the process's recorder: a `metrics-util` registry whose counters are plain
//! `AtomicU64`s. The engine and the workers keep handles on them (recording is one atomic add,
//! nothing is looked up per message), and [`install`] makes the same registry the facade's
//! global recorder, so `metrics::counter!("x")` anywhere in the process lands there too.
//!
//! Two exporters read it:
//!
//! - **EMF** ([`Metrics::emf_line`], written by [`Metrics::emit`] every
//!   `FLEET_METRICS_INTERVAL_SECS`): on ECS with the `awslogs` driver (or any CloudWatch Logs
//!   destination) the lines become CloudWatch metrics with no agent: namespace `QueueFleet`,
//!   dimensions `Worker` and `Queue`. Counters are the counts since the previous line, gauges
//!   their value now, and histograms (the handler latency) a distribution, `Values` and `Counts`
//!   with `Min`, `Max`, `Count` and `Sum`, which CloudWatch aggregates across tasks and turns
//!   into any percentile. Running totals ride along as the plain property `totals` (scripts, the
//!   benchmark, the tests). Logs go to stderr, so stdout holds nothing but these lines.
//! - **Prometheus** ([`serve_prometheus`], `FLEET_PROMETHEUS_PORT`): the
//!   `metrics-exporter-prometheus` recorder and HTTP listener, kept in step with the registry
//!   (counters and gauges every second, histogram samples as they are recorded), names prefixed
//!   `fleet_`, labels `worker` and `queue`, latency as a bucketed histogram.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use ::metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::PrometheusRecorder;
use metrics_util::registry::{Registry, Storage};
use serde_json::{Map, Value};

use crate::util::now_ms;

mod distribution;
mod emf;
mod prometheus;

pub use distribution::{Distribution, Taken};
pub use prometheus::{serve_prometheus, PrometheusError};

use emf::{cloudwatch_unit, emf_document, EmfMetric, Labels};
use prometheus::{prometheus_key, METADATA};

/// The CloudWatch namespace of every fleet metric.
pub const NAMESPACE: &str = "QueueFleet";
/// The handler latency, in milliseconds: a distribution.
pub const HANDLER_LATENCY: &str = "handler_latency_ms";
/// The prefix of every metric name on the Prometheus endpoint.
pub const PROMETHEUS_PREFIX: &str = "fleet_";
/// Most values CloudWatch takes in one EMF metric (more and it drops the metric).
pub const EMF_MAX_VALUES: usize = 100;
/// Upper bounds of the Prometheus latency histogram's buckets, ms.
const PROMETHEUS_BUCKETS_MS: [f64; 16] = [
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0,
    30_000.0, 60_000.0, 300_000.0,
];
/// How often the Prometheus recorder takes the registry's counters and gauges.
const PROMETHEUS_SYNC: Duration = Duration::from_secs(1);

/// The engine's own counters, in the order of the struct.
const ENGINE_COUNTERS: [&str; 10] = [
    "received",
    "succeeded",
    "retried",
    "dead_lettered",
    "duplicates",
    "held_back",
    "sqs_calls",
    "breaker_opened",
    "requeued",
    "parked",
];

/// The counters of one worker process, a `metrics` recorder. Cheap to update from any task.
pub struct Metrics {
    /// Messages received from the queue.
    pub received: Arc<AtomicU64>,
    /// Messages handled and deleted.
    pub succeeded: Arc<AtomicU64>,
    /// Messages handed back for a later try.
    pub retried: Arc<AtomicU64>,
    /// Messages sent to the dead-letter queue by this worker.
    pub dead_lettered: Arc<AtomicU64>,
    /// Messages whose work had already been done (redeliveries, replays).
    pub duplicates: Arc<AtomicU64>,
    /// FIFO: messages handed back unhandled behind a retried message of their group.
    pub held_back: Arc<AtomicU64>,
    /// SQS API calls made by the engine.
    pub sqs_calls: Arc<AtomicU64>,
    /// Times the circuit breaker opened.
    pub breaker_opened: Arc<AtomicU64>,
    /// Messages put back on their queue as fresh copies during a dependency outage.
    pub requeued: Arc<AtomicU64>,
    /// FIFO: messages dead-lettered unhandled behind their group's dead-lettered head.
    pub parked: Arc<AtomicU64>,
    /// Messages being handled right now (a gauge).
    pub in_flight: AtomicI64,
    /// How many messages the process may work on at once right now (a gauge, set by the engine).
    pub concurrency: AtomicU64,
    /// 1 while the circuit breaker is open (a dependency is down), else 0 (a gauge).
    pub breaker_open: AtomicU64,
    /// Handler latencies ([`HANDLER_LATENCY`]).
    pub latency: Arc<Distribution>,
    registry: Registry<Key, FleetStorage>,
    /// Units given by `describe_*` calls, by metric name.
    units: RwLock<HashMap<String, Unit>>,
    /// Counter totals at the previous EMF line, to compute deltas.
    last: Mutex<HashMap<Key, u64>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("totals", &self.snapshot())
            .finish_non_exhaustive()
    }
}

/// A point-in-time copy of every counter's total, by name.
pub type Snapshot = BTreeMap<String, u64>;

impl Metrics {
    /// New, zeroed counters.
    pub fn new() -> Arc<Self> {
        let registry = Registry::new(FleetStorage::default());
        let counter = |name: &'static str| {
            registry.get_or_create_counter(&Key::from_static_name(name), Arc::clone)
        };
        let [received, succeeded, retried, dead_lettered, duplicates, held_back, sqs_calls, breaker_opened, requeued, parked] =
            ENGINE_COUNTERS.map(counter);
        let latency =
            registry.get_or_create_histogram(&Key::from_static_name(HANDLER_LATENCY), Arc::clone);
        Arc::new(Self {
            received,
            succeeded,
            retried,
            dead_lettered,
            duplicates,
            held_back,
            sqs_calls,
            breaker_opened,
            requeued,
            parked,
            in_flight: AtomicI64::new(0),
            concurrency: AtomicU64::new(0),
            breaker_open: AtomicU64::new(0),
            latency,
            registry,
            units: RwLock::new(HashMap::from([(
                HANDLER_LATENCY.to_owned(),
                Unit::Milliseconds,
            )])),
            last: Mutex::default(),
        })
    }

    /// A worker-defined counter, created on first use: the facade's `counter!(name)` is the same
    /// one. Keep the handle: lookups hash the name.
    pub fn counter(&self, name: &'static str) -> Arc<AtomicU64> {
        self.registry
            .get_or_create_counter(&Key::from_static_name(name), Arc::clone)
    }

    /// Adds one to a counter.
    pub fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Every counter's current total (labelled ones as `name{label=value,...}`).
    pub fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot::new();
        self.registry.visit_counters(|key, counter| {
            snap.insert(display_name(key), counter.load(Ordering::Relaxed));
        });
        snap
    }

    /// The EMF document(s) for everything since the previous call, one per line: one per set
    /// of labels the facade's metrics carry (the labels become dimensions), then the main one,
    /// last, with the engine's gauges and the running `totals`.
    pub fn emf_line(&self, worker: &str, queue: &str) -> String {
        let timestamp = now_ms();
        let mut groups: BTreeMap<Labels, Vec<EmfMetric>> = BTreeMap::new();
        let group = |key: &Key| -> Labels {
            key.labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect()
        };
        let totals = {
            let mut last = self.last.lock().expect("metrics lock poisoned");
            let mut totals = Map::new();
            self.registry.visit_counters(|key, counter| {
                let total = counter.load(Ordering::Relaxed);
                let before = last.insert(key.clone(), total).unwrap_or(0);
                if key.labels().len() == 0 {
                    totals.insert(key.name().to_owned(), total.into());
                }
                let unit = self.unit(key.name(), "Count");
                groups.entry(group(key)).or_default().push((
                    key.name().to_owned(),
                    total.saturating_sub(before).into(),
                    unit,
                ));
            });
            totals
        };
        self.registry.visit_gauges(|key, gauge| {
            let value = f64::from_bits(gauge.load(Ordering::Relaxed));
            if value.is_finite() {
                let unit = self.unit(key.name(), "None");
                groups.entry(group(key)).or_default().push((
                    key.name().to_owned(),
                    value.into(),
                    unit,
                ));
            }
        });
        self.registry.visit_histograms(|key, histogram| {
            if let Some(taken) = histogram.take() {
                let unit = self.unit(key.name(), "None");
                groups.entry(group(key)).or_default().push((
                    key.name().to_owned(),
                    taken.to_emf(),
                    unit,
                ));
            }
        });
        let mut main = groups.remove(&Vec::new()).unwrap_or_default();
        for (name, value) in [
            (
                "in_flight",
                self.in_flight.load(Ordering::Relaxed).max(0) as u64,
            ),
            ("concurrency", self.concurrency.load(Ordering::Relaxed)),
            ("breaker_open", self.breaker_open.load(Ordering::Relaxed)),
        ] {
            main.push((name.to_owned(), value.into(), "Count"));
        }
        let mut lines: Vec<String> = groups
            .into_iter()
            .map(|(labels, metrics)| {
                emf_document(timestamp, worker, queue, &labels, metrics, None).to_string()
            })
            .collect();
        lines.push(
            emf_document(
                timestamp,
                worker,
                queue,
                &[],
                main,
                Some(Value::Object(totals)),
            )
            .to_string(),
        );
        lines.join("\n")
    }

    /// Writes [`Self::emf_line`] to stdout.
    pub fn emit(&self, worker: &str, queue: &str) {
        let line = self.emf_line(worker, queue);
        let mut out = std::io::stdout().lock();
        // A closed stdout must not take the worker down.
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    }

    /// The CloudWatch unit of a metric: the one it was described with, else `default`.
    fn unit(&self, name: &str, default: &'static str) -> &'static str {
        self.units
            .read()
            .expect("metrics lock poisoned")
            .get(name)
            .map_or(default, cloudwatch_unit)
    }

    fn describe(&self, key: KeyName, unit: Option<Unit>) {
        if let Some(unit) = unit {
            self.units
                .write()
                .expect("metrics lock poisoned")
                .insert(key.as_str().to_owned(), unit);
        }
    }

    /// Gives the Prometheus recorder the registry's counters and gauges as they are now.
    fn sync_prometheus(&self) {
        let Some(prometheus) = self.registry.storage().prometheus.get() else {
            return;
        };
        self.registry.visit_counters(|key, counter| {
            prometheus
                .register_counter(&prometheus_key(key), &METADATA)
                .absolute(counter.load(Ordering::Relaxed));
        });
        self.registry.visit_gauges(|key, gauge| {
            prometheus
                .register_gauge(&prometheus_key(key), &METADATA)
                .set(f64::from_bits(gauge.load(Ordering::Relaxed)));
        });
        for (name, value) in [
            (
                "in_flight",
                self.in_flight.load(Ordering::Relaxed).max(0) as f64,
            ),
            (
                "concurrency",
                self.concurrency.load(Ordering::Relaxed) as f64,
            ),
            (
                "breaker_open",
                self.breaker_open.load(Ordering::Relaxed) as f64,
            ),
        ] {
            prometheus
                .register_gauge(&prometheus_key(&Key::from_static_name(name)), &METADATA)
                .set(value);
        }
    }
}

/// The facade's recorder over a [`Metrics`]: what `metrics::counter!` and friends reach once
/// [`install`]ed.
struct FleetRecorder(Arc<Metrics>);

impl Recorder for FleetRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.0.describe(key, unit);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.0.describe(key, unit);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.0.describe(key, unit);
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.0
            .registry
            .get_or_create_counter(key, |c| Counter::from_arc(c.clone()))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.0
            .registry
            .get_or_create_gauge(key, |g| Gauge::from_arc(g.clone()))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.0
            .registry
            .get_or_create_histogram(key, |h| Histogram::from_arc(h.clone()))
    }
}

/// Makes `metrics` the process's global `metrics` recorder (the facade's `counter!`,
/// `gauge!`, `histogram!` record there). Once per process: a second call changes nothing and
/// says so.
pub fn install(metrics: Arc<Metrics>) -> bool {
    ::metrics::set_global_recorder(FleetRecorder(metrics)).is_ok()
}

/// `name`, or `name{k=v,...}` for a labelled key.
fn display_name(key: &Key) -> String {
    if key.labels().len() == 0 {
        return key.name().to_owned();
    }
    let labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

/// How the registry stores metrics: counters and gauges as atomics (gauges hold an `f64`'s
/// bits), histograms as [`Distribution`]s that also feed the Prometheus endpoint once there is
/// one.
#[derive(Default)]
struct FleetStorage {
    prometheus: OnceLock<PrometheusRecorder>,
}

impl Storage<Key> for FleetStorage {
    type Counter = Arc<AtomicU64>;
    type Gauge = Arc<AtomicU64>;
    type Histogram = Arc<Distribution>;

    fn counter(&self, _: &Key) -> Self::Counter {
        Arc::default()
    }

    fn gauge(&self, _: &Key) -> Self::Gauge {
        Arc::default()
    }

    fn histogram(&self, key: &Key) -> Self::Histogram {
        let distribution = Distribution::default();
        if let Some(prometheus) = self.prometheus.get() {
            distribution.mirror(prometheus.register_histogram(&prometheus_key(key), &METADATA));
        }
        Arc::new(distribution)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use ::metrics::HistogramFn;

    use super::prometheus::prometheus_builder;
    use super::*;

    /// The checks CloudWatch makes of an EMF document, as the specification words them.
    fn assert_valid_emf(line: &str) -> Value {
        let doc: Value = serde_json::from_str(line).expect("an EMF line is JSON");
        let aws = &doc["_aws"];
        assert!(aws["Timestamp"].as_u64().is_some(), "{doc}");
        let directives = aws["CloudWatchMetrics"].as_array().expect("directives");
        assert!(!directives.is_empty());
        for directive in directives {
            assert_eq!(directive["Namespace"], NAMESPACE);
            for set in directive["Dimensions"].as_array().expect("dimension sets") {
                for dimension in set.as_array().expect("a dimension set") {
                    let name = dimension.as_str().expect("a dimension name");
                    assert!(doc[name].is_string(), "dimension {name} at the top level");
                }
            }
            let metrics = directive["Metrics"].as_array().expect("metrics");
            assert!(metrics.len() <= 100);
            for metric in metrics {
                let name = metric["Name"].as_str().expect("a metric name");
                assert!(metric["Unit"].is_string(), "{metric}");
                let value = &doc[name];
                match value {
                    Value::Number(_) => {}
                    Value::Object(d) => {
                        let values = d["Values"].as_array().expect("Values");
                        let counts = d["Counts"].as_array().expect("Counts");
                        assert_eq!(values.len(), counts.len(), "{value}");
                        assert!(!values.is_empty() && values.len() <= EMF_MAX_VALUES);
                        let count: u64 = counts.iter().map(|c| c.as_u64().unwrap()).sum();
                        assert_eq!(d["Count"].as_u64(), Some(count), "{value}");
                        let (min, max) = (d["Min"].as_f64().unwrap(), d["Max"].as_f64().unwrap());
                        let sum = d["Sum"].as_f64().unwrap();
                        assert!(min <= max, "{value}");
                        for v in values {
                            let v = v.as_f64().unwrap();
                            assert!((min..=max).contains(&v), "{v} outside [{min}, {max}]");
                        }
                        let n = count as f64;
                        assert!(sum >= max + min * (n - 1.0) - 1e-9, "{value}");
                        assert!(sum <= min + max * (n - 1.0) + 1e-9, "{value}");
                    }
                    other => panic!("metric {name} at the top level is {other}"),
                }
            }
        }
        doc
    }

    /// The value of the `q` quantile from an EMF distribution.
    fn quantile(d: &Value, q: f64) -> f64 {
        let values = d["Values"].as_array().unwrap();
        let counts = d["Counts"].as_array().unwrap();
        let total: u64 = counts.iter().map(|c| c.as_u64().unwrap()).sum();
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (v, c) in values.iter().zip(counts) {
            seen += c.as_u64().unwrap();
            if seen >= rank {
                return v.as_f64().unwrap();
            }
        }
        unreachable!()
    }

    #[test]
    fn latency_is_a_distribution_within_five_percent() {
        let m = Metrics::new();
        for ms in 1..=1000u64 {
            m.latency.record_duration(Duration::from_millis(ms));
        }
        let line = m.emf_line("w", "q");
        let doc = assert_valid_emf(&line);
        let d = &doc[HANDLER_LATENCY];
        assert_eq!(d["Count"], 1000);
        assert_eq!(d["Min"], 1.0);
        assert_eq!(d["Max"], 1000.0);
        assert!((d["Sum"].as_f64().unwrap() - 500_500.0).abs() < 1e-6);
        for (q, exact) in [(0.5, 500.0), (0.99, 990.0)] {
            let got = quantile(d, q);
            assert!((got / exact - 1.0).abs() <= 0.05, "p{q}: {got} vs {exact}");
        }
        let definition = doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["Name"] == HANDLER_LATENCY)
            .cloned()
            .expect("the latency is a metric");
        assert_eq!(definition["Unit"], "Milliseconds");
        let again = assert_valid_emf(&m.emf_line("w", "q"));
        assert!(
            again.get(HANDLER_LATENCY).is_none(),
            "no latency, no metric"
        );
    }

    #[test]
    fn a_wide_distribution_still_fits_in_100_values() {
        let d = Distribution::default();
        let mut v = 0.002;
        while v < 1e8 {
            d.record(v);
            v *= 1.05;
        }
        let taken = d.take().unwrap();
        assert!(
            taken.values.len() <= EMF_MAX_VALUES,
            "{}",
            taken.values.len()
        );
        assert_eq!(taken.counts.iter().sum::<u64>(), taken.count);
        assert!(taken.values.windows(2).all(|w| w[0] < w[1]));
        assert!(d.take().is_none(), "take resets");
    }

    #[test]
    fn a_single_value_is_its_own_statistics() {
        let d = Distribution::default();
        d.record(7.3);
        let t = d.take().unwrap();
        assert_eq!((t.min, t.max, t.sum, t.count), (7.3, 7.3, 7.3, 1));
        assert_eq!(t.values, vec![7.3]);
    }

    #[test]
    fn emf_lines_carry_deltas_as_metrics_and_totals_as_properties() {
        let m = Metrics::new();
        let writes = m.counter("dynamodb_writes");
        m.received.fetch_add(5, Ordering::Relaxed);
        writes.fetch_add(2, Ordering::Relaxed);
        m.concurrency.store(12, Ordering::Relaxed);
        m.breaker_open.store(1, Ordering::Relaxed);
        let first = assert_valid_emf(&m.emf_line("w", "q"));
        assert_eq!(first["received"], 5);
        assert_eq!(first["dynamodb_writes"], 2);
        assert_eq!(first["concurrency"], 12);
        assert_eq!(first["breaker_open"], 1);
        assert_eq!(first["Worker"], "w");
        assert_eq!(first["Queue"], "q");
        let names: Vec<&str> = first["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["Name"].as_str().unwrap())
            .collect();
        for name in [
            "received",
            "succeeded",
            "retried",
            "dead_lettered",
            "duplicates",
            "held_back",
            "sqs_calls",
            "breaker_open",
            "breaker_opened",
            "requeued",
            "parked",
            "in_flight",
            "concurrency",
            "dynamodb_writes",
        ] {
            assert!(names.contains(&name), "{name} in {names:?}");
        }

        m.received.fetch_add(3, Ordering::Relaxed);
        let second = assert_valid_emf(&m.emf_line("w", "q"));
        assert_eq!(second["received"], 3, "metrics are deltas");
        assert_eq!(second["totals"]["received"], 8, "totals are running");
        assert_eq!(second["dynamodb_writes"], 0);
    }

    #[test]
    fn the_prometheus_recorder_follows_the_registry() {
        let m = Metrics::new();
        m.received.fetch_add(3, Ordering::Relaxed);
        let writes = m.counter("dynamodb_writes");
        m.latency.record_duration(Duration::from_millis(3));
        let recorder = prometheus_builder("payments-worker", "payments")
            .unwrap()
            .build_recorder();
        let handle = recorder.handle();
        m.attach_prometheus(recorder);
        m.latency.record_duration(Duration::from_millis(12));
        writes.fetch_add(2, Ordering::Relaxed);
        m.breaker_open.store(1, Ordering::Relaxed);
        m.sync_prometheus();
        let text = handle.render();
        let labels = r#"worker="payments-worker",queue="payments""#;
        for line in [
            format!("fleet_received_total{{{labels}}} 3"),
            format!("fleet_dynamodb_writes_total{{{labels}}} 2"),
            format!("fleet_breaker_open{{{labels}}} 1"),
            format!("fleet_in_flight{{{labels}}} 0"),
            format!(r#"fleet_handler_latency_ms_bucket{{{labels},le="10"}} 0"#),
            format!(r#"fleet_handler_latency_ms_bucket{{{labels},le="25"}} 1"#),
            format!("fleet_handler_latency_ms_count{{{labels}}} 1"),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert_eq!(
            m.latency.take().map(|t| t.count),
            Some(2),
            "the EMF distribution keeps its own count"
        );
    }

    #[test]
    fn facade_metrics_reach_the_same_registry() {
        let m = Metrics::new();
        let recorder = FleetRecorder(m.clone());
        ::metrics::with_local_recorder(&recorder, || {
            ::metrics::counter!("dynamodb_writes").increment(4);
            ::metrics::counter!("received").increment(1);
            ::metrics::gauge!("pool_size").set(2.5);
            ::metrics::describe_histogram!("payload_bytes", Unit::Bytes, "body sizes");
            ::metrics::histogram!("payload_bytes").record(512.0);
            ::metrics::counter!("calls", "service" => "s3").increment(2);
        });
        assert_eq!(m.counter("dynamodb_writes").load(Ordering::Relaxed), 4);
        assert_eq!(
            m.received.load(Ordering::Relaxed),
            1,
            "the engine's own counter"
        );
        let text = m.emf_line("w", "q");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "one document per label set: {text}");
        let labelled = assert_valid_emf(lines[0]);
        assert_eq!(labelled["service"], "s3");
        assert_eq!(labelled["calls"], 2);
        assert_eq!(
            labelled["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0],
            json!(["Worker", "Queue", "service"])
        );
        let main = assert_valid_emf(lines[1]);
        assert_eq!(main["pool_size"], 2.5);
        assert_eq!(main["payload_bytes"]["Values"], json!([512.0]));
        let units: HashMap<&str, &str> = main["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["Name"].as_str().unwrap(), d["Unit"].as_str().unwrap()))
            .collect();
        assert_eq!(units["payload_bytes"], "Bytes");
        assert_eq!(units["dynamodb_writes"], "Count");
        assert_eq!(main["totals"]["dynamodb_writes"], 4);
    }
}
