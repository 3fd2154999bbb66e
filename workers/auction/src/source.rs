//! Where an auction cycle's results come from.
//!
//! A source answers, for one cycle, either "not ready yet" (`"results": false`) or the results:
//! every order's result, accepted or rejected. Two sources ship: [`HttpSource`] (a JSON
//! endpoint, for real use) and [`SimulatedSource`] (generates results the way the replaced system's
//! generator did, seedable for tests). Implement [`ResultsSource`] to plug in another.
//!
//! The document both speak:
//!
//! ```json
//! {"cycle": "2026-11-23T00:40:00Z", "results": true,
//!  "orders": [{"record_id": "o-1", "status": "accepted", "price": 41.27},
//!             {"record_id": "o-2", "status": "rejected", "reason": "price below clearing"}]}
//! ```
//!
//! A document is checked whole before anything is done with it ([`parse_results`]): one bad
//! order makes the whole answer malformed, so a cycle is never fanned out in part.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::order_results::OrderResult;

/// What a source says about a cycle.
#[derive(Debug, Clone, PartialEq)]
pub enum Fetch {
    /// `results` is false: ask again later.
    NotReady,
    /// The cycle's results, sorted by `record_id` (unique), each carrying the cycle.
    Ready(Vec<OrderResult>),
}

/// Why a source could not answer. All of these are worth asking again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The endpoint answered with an error status.
    #[error("HTTP status {0}")]
    Status(u16),
    /// Connection or transfer failure.
    #[error("transport: {0}")]
    Transport(String),
    /// The answer is not a valid results document.
    #[error("malformed results: {0}")]
    Malformed(String),
}

impl SourceError {
    /// A stable kind for reasons and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "source-timeout",
            Self::Status(_) => "source-status",
            Self::Transport(_) => "source-transport",
            Self::Malformed(_) => "source-malformed",
        }
    }
}

/// A source of auction results.
pub trait ResultsSource: Send + Sync + 'static {
    /// The results of `cycle`, or why there are none yet.
    fn fetch(&self, cycle: &str) -> impl Future<Output = Result<Fetch, SourceError>> + Send;
}

#[derive(Debug, Deserialize)]
struct Document {
    #[serde(default)]
    cycle: Option<String>,
    results: bool,
    #[serde(default)]
    orders: Option<Vec<Map<String, Value>>>,
}

/// Parses and checks a results document for `cycle`: `results` a boolean; when true, `orders`
/// an array of order results (`record_id`, `status` accepted|rejected, `reason`?, anything
/// else kept), record ids unique; the document's own `cycle`, when given, the one asked for.
///
/// # Errors
/// [`SourceError::Malformed`] saying what is wrong.
pub fn parse_results(cycle: &str, body: &[u8]) -> Result<Fetch, SourceError> {
    let malformed = |why: String| SourceError::Malformed(why);
    let doc: Document = serde_json::from_slice(body).map_err(|e| malformed(e.to_string()))?;
    if let Some(other) = doc.cycle.as_deref().filter(|c| *c != cycle) {
        return Err(malformed(format!(
            "results of cycle {other:?}, asked for {cycle:?}"
        )));
    }
    if !doc.results {
        return Ok(Fetch::NotReady);
    }
    let orders = doc
        .orders
        .ok_or_else(|| malformed("results is true but orders is missing".into()))?;
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(orders.len());
    for (i, mut order) in orders.into_iter().enumerate() {
        order.insert("cycle".into(), Value::String(cycle.to_owned()));
        let result: OrderResult = serde_json::from_value(Value::Object(order))
            .map_err(|e| malformed(format!("order {i}: {e}")))?;
        result
            .validate()
            .map_err(|e| malformed(format!("order {i}: {e}")))?;
        if !seen.insert(result.record_id.clone()) {
            return Err(malformed(format!(
                "order {i}: record_id {:?} appears twice",
                result.record_id
            )));
        }
        out.push(result);
    }
    out.sort_by(|a, b| a.record_id.cmp(&b.record_id));
    Ok(Fetch::Ready(out))
}

/// Results from an HTTP JSON endpoint: `GET {url}?cycle={cycle}`, answered with a results
/// document; anything but a 2xx with a valid document within the timeout is an error.
#[derive(Debug, Clone)]
pub struct HttpSource {
    client: reqwest::Client,
    url: String,
    timeout: Duration,
}

impl HttpSource {
    /// A source at `url`, each request bounded by `timeout`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built (no TLS roots).
    pub fn new(url: String, timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!(
                "queue-fleet-results-worker/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()?;
        Ok(Self {
            client,
            url,
            timeout,
        })
    }
}

impl ResultsSource for HttpSource {
    async fn fetch(&self, cycle: &str) -> Result<Fetch, SourceError> {
        let error = |e: reqwest::Error| {
            if e.is_timeout() {
                SourceError::Timeout(self.timeout)
            } else {
                SourceError::Transport(e.to_string())
            }
        };
        let response = self
            .client
            .get(&self.url)
            .query(&[("cycle", cycle)])
            .header("accept", "application/json")
            .send()
            .await
            .map_err(error)?;
        if !response.status().is_success() {
            return Err(SourceError::Status(response.status().as_u16()));
        }
        let body = response.bytes().await.map_err(error)?;
        parse_results(cycle, &body)
    }
}

/// When the simulator says a cycle's results are ready.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Readiness {
    /// `results: false` this many times per cycle, then true (for tests).
    After(u32),
    /// True with this probability at each fetch, like the replaced system's generator.
    Random(f64),
}

/// Generates results like the replaced system's generator: a random `results` flag and a
/// number of orders, each `accepted` or `rejected` (with a reason) at random, a price and a
/// volume. Deterministic for a seed and a cycle, so a cycle asked for again gets the same
/// results. It counts the fetches of each cycle (in memory).
#[derive(Debug)]
pub struct SimulatedSource {
    seed: u64,
    readiness: Readiness,
    orders: usize,
    reject_ratio: f64,
    fetches: Mutex<HashMap<String, u32>>,
}

const REJECTIONS: &[&str] = &[
    "price below the clearing price",
    "volume above the declared capacity",
    "submitted after the gate closure",
];

impl SimulatedSource {
    /// A simulator with its seed, readiness rule, `orders` per cycle and share of rejections.
    pub fn new(seed: u64, readiness: Readiness, orders: usize, reject_ratio: f64) -> Self {
        Self {
            seed,
            readiness,
            orders,
            reject_ratio: reject_ratio.clamp(0.0, 1.0),
            fetches: Mutex::new(HashMap::new()),
        }
    }

    fn rng(&self, cycle: &str, salt: u64) -> fastrand::Rng {
        let digest = fleet::util::sha256_hex(cycle.as_bytes());
        let cycle_hash = u64::from_str_radix(&digest[..16], 16).unwrap_or(0);
        fastrand::Rng::with_seed(self.seed ^ cycle_hash ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// The document the simulator answers for `cycle` at its `fetch`-th fetch (1 for the first).
    pub fn document(&self, cycle: &str, fetch: u32) -> Value {
        let ready = match self.readiness {
            Readiness::After(n) => fetch > n,
            Readiness::Random(p) => self.rng(cycle, u64::from(fetch)).f64() < p,
        };
        if !ready {
            return json!({"cycle": cycle, "results": false});
        }
        let mut rng = self.rng(cycle, 0);
        let orders: Vec<Value> = (0..self.orders)
            .map(|i| {
                let price = (rng.f64() * 20_000.0).round() / 100.0;
                let volume = f64::from(rng.u32(1..=500)) / 10.0;
                if rng.f64() < self.reject_ratio {
                    json!({"record_id": format!("sim-{i:04}"), "status": "rejected",
                           "reason": REJECTIONS[rng.usize(..REJECTIONS.len())],
                           "price": price, "volume_mwh": volume})
                } else {
                    json!({"record_id": format!("sim-{i:04}"), "status": "accepted",
                           "price": price, "volume_mwh": volume})
                }
            })
            .collect();
        json!({"cycle": cycle, "results": true, "orders": orders})
    }
}

impl ResultsSource for SimulatedSource {
    async fn fetch(&self, cycle: &str) -> Result<Fetch, SourceError> {
        let fetch = {
            let mut fetches = self.fetches.lock().unwrap_or_else(|e| e.into_inner());
            let n = fetches.entry(cycle.to_owned()).or_default();
            *n += 1;
            *n
        };
        let body = self.document(cycle, fetch).to_string();
        parse_results(cycle, body.as_bytes())
    }
}

/// One of the shipped sources, chosen by configuration.
#[derive(Debug)]
pub enum AnySource {
    /// An HTTP endpoint.
    Http(HttpSource),
    /// The simulator.
    Simulated(SimulatedSource),
}

impl ResultsSource for AnySource {
    async fn fetch(&self, cycle: &str) -> Result<Fetch, SourceError> {
        match self {
            Self::Http(s) => s.fetch(cycle).await,
            Self::Simulated(s) => s.fetch(cycle).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(f: Fetch) -> Vec<OrderResult> {
        match f {
            Fetch::Ready(r) => r,
            Fetch::NotReady => panic!("not ready"),
        }
    }

    #[test]
    fn documents_are_checked_whole() {
        assert_eq!(
            parse_results("c", br#"{"results": false}"#),
            Ok(Fetch::NotReady)
        );
        let r = ready(
            parse_results(
                "c",
                br#"{"cycle":"c","results":true,"orders":[
                    {"record_id":"b","status":"rejected","reason":"late"},
                    {"record_id":"a","status":"accepted","price":2.1}]}"#,
            )
            .unwrap(),
        );
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].record_id, "a", "sorted by record id");
        assert_eq!(r[0].cycle, "c");
        assert_eq!(r[0].rest["price"], json!(2.1));
        for bad in [
            &b"{not json"[..],
            br#"{"results": "yes"}"#,
            br#"{"results": true}"#,
            br#"{"cycle":"other","results":false}"#,
            br#"{"results":true,"orders":[{"record_id":"a","status":"accepted"},{"record_id":"b","status":"maybe"}]}"#,
            br#"{"results":true,"orders":[{"record_id":"a","status":"accepted"},{"record_id":"a","status":"rejected"}]}"#,
            br#"{"results":true,"orders":[{"record_id":"../a","status":"accepted"}]}"#,
            br#"{"results":true,"orders":[{"status":"accepted"}]}"#,
        ] {
            let err = parse_results("c", bad).unwrap_err();
            assert_eq!(err.kind(), "source-malformed", "{}", String::from_utf8_lossy(bad));
        }
    }

    #[tokio::test]
    async fn the_simulator_is_ready_after_n_fetches_and_repeats_itself() {
        let sim = SimulatedSource::new(7, Readiness::After(3), 25, 0.3);
        for _ in 0..3 {
            assert_eq!(sim.fetch("c-1").await, Ok(Fetch::NotReady));
        }
        let first = ready(sim.fetch("c-1").await.unwrap());
        assert_eq!(first.len(), 25);
        let rejected = first.iter().filter(|r| r.status == "rejected").count();
        assert!((1..25).contains(&rejected), "{rejected} rejected of 25");
        assert!(first
            .iter()
            .filter(|r| r.status == "rejected")
            .all(|r| r.reason.is_some()));
        assert_eq!(
            ready(sim.fetch("c-1").await.unwrap()),
            first,
            "same results"
        );
        assert_eq!(
            sim.fetch("c-2").await,
            Ok(Fetch::NotReady),
            "counted per cycle"
        );
        let other_seed = SimulatedSource::new(8, Readiness::After(0), 25, 0.3);
        assert_ne!(ready(other_seed.fetch("c-1").await.unwrap()), first);
    }

    #[test]
    fn random_readiness_follows_its_probability() {
        let sim = SimulatedSource::new(1, Readiness::Random(0.25), 1, 0.0);
        let ready = (1..=2000)
            .filter(|n| sim.document("c", *n)["results"] == json!(true))
            .count();
        assert!((400..600).contains(&ready), "{ready} of 2000");
    }
}
