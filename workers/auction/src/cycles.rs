//! `results-worker`: one message per auction cycle (`{"cycle": "2026-11-23T00:40:00Z"}`, sent
//! every 5 minutes by EventBridge Scheduler in AWS and by `fleetctl schedule` locally).
//!
//! For each cycle it asks the results source ([`ResultsSource`]):
//! - not ready (`results: false`) or the source failing (timeout, error status, malformed
//!   answer) → a retry: the message comes back after the engine's growing visibility delay
//!   (nothing sleeps in the handler);
//! - still so past the deadline (counted from when the cycle message was sent) → the cycle goes
//!   to the DLQ with the reason, and one notification is published;
//! - ready → each order result is fanned out to the order-results queue, 10 per
//!   `SendMessageBatch`, exactly once per cycle: a cycle record in DynamoDB claims the cycle
//!   with a hash of its results and checkpoints each batch sent, so a redelivered cycle message
//!   resumes after the last batch sent, and one whose cycle is `FANNED_OUT` sends nothing and
//!   does not even ask the source. (A crash between a batch and its checkpoint sends that batch
//!   again; the results' consumer is idempotent.)

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use clap::{Parser, ValueEnum};
use fleet::util::{now_ms, sha256_hex};
use fleet::worker::WorkerArgs;
use fleet::{classify, Handler, Message, Metrics, Outcome};
use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn};

use crate::notify::{safe_id, Notification, Notifier};
use crate::order_results::OrderResult;
use crate::source::{AnySource, Fetch, HttpSource, Readiness, ResultsSource, Simulator};

/// Command line and environment of the `results-worker` binary.
#[derive(Debug, Parser)]
#[command(
    name = "results-worker",
    version,
    about = "Fetches each auction cycle's results until they are ready, fans them out once"
)]
pub struct Config {
    /// Where the order results go (one message each).
    #[arg(long, env = "ORDER_RESULTS_QUEUE_URL", value_name = "URL")]
    pub order_results_queue_url: String,
    /// The cycle records (partition key `cycle`): fan-out progress.
    #[arg(long, env = "AUCTION_CYCLES_TABLE", value_name = "TABLE")]
    pub cycles_table: String,
    /// How long a cycle may wait for its results, seconds from when its message was sent;
    /// after that it goes to the DLQ and is notified.
    #[arg(long, env = "CYCLE_DEADLINE_SECS", default_value_t = 1800,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub deadline_secs: u64,
    /// The results source.
    #[command(flatten)]
    pub source: SourceArgs,
    /// Where notifications go.
    #[command(flatten)]
    pub notifications: crate::NotificationArgs,
    /// What every worker has: the engine, logs, threads.
    #[command(flatten)]
    pub worker: WorkerArgs,
}

/// Which results source, and its settings.
#[derive(Debug, Clone, clap::Args)]
pub struct SourceArgs {
    /// `http` (a JSON endpoint) or `simulator` (built in, for the local stack and tests).
    #[arg(long = "source", env = "RESULTS_SOURCE", value_enum)]
    pub kind: SourceKind,
    /// The endpoint of the `http` source: `GET {url}?cycle={cycle}`.
    #[arg(
        long = "source-url",
        env = "RESULTS_SOURCE_URL",
        value_name = "URL",
        required_if_eq("kind", "http")
    )]
    pub url: Option<String>,
    /// Timeout of one request to the `http` source, milliseconds.
    #[arg(long = "source-timeout-ms", env = "RESULTS_SOURCE_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
    /// Simulator: seed (the same seed and cycle give the same results); random when absent.
    #[arg(long, env = "SIMULATOR_SEED")]
    pub simulator_seed: Option<u64>,
    /// Simulator: say `results: false` this many times per cycle, then true. Without it, each
    /// fetch is ready with --simulator-ready-probability.
    #[arg(long, env = "SIMULATOR_NOT_READY_TIMES")]
    pub simulator_not_ready_times: Option<u32>,
    /// Simulator: probability that a fetch finds the results ready (0-1).
    #[arg(long, env = "SIMULATOR_READY_PROBABILITY", default_value_t = 0.5)]
    pub simulator_ready_probability: f64,
    /// Simulator: orders per cycle.
    #[arg(long, env = "SIMULATOR_ORDERS", default_value_t = 20)]
    pub simulator_orders: usize,
    /// Simulator: share of orders rejected (0-1).
    #[arg(long, env = "SIMULATOR_REJECT_RATIO", default_value_t = 0.2)]
    pub simulator_reject_ratio: f64,
}

/// The shipped results sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceKind {
    /// An HTTP JSON endpoint.
    Http,
    /// The built-in simulator.
    Simulator,
}

impl SourceArgs {
    /// The configured source.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn build(&self) -> anyhow::Result<AnySource> {
        Ok(match self.kind {
            SourceKind::Http => AnySource::Http(HttpSource::new(
                self.url.clone().unwrap_or_default(),
                Duration::from_millis(self.timeout_ms),
            )?),
            SourceKind::Simulator => AnySource::Simulator(Simulator::new(
                self.simulator_seed.unwrap_or_else(|| fastrand::u64(..)),
                match self.simulator_not_ready_times {
                    Some(n) => Readiness::After(n),
                    None => Readiness::Random(self.simulator_ready_probability),
                },
                self.simulator_orders,
                self.simulator_reject_ratio,
            )),
        })
    }
}

/// A cycle message.
#[derive(Debug, Deserialize)]
struct CycleMessage {
    cycle: String,
}

/// Cycle record status once every result was sent.
const FANNED_OUT: &str = "FANNED_OUT";

/// The handler of the cycles queue.
#[derive(Debug)]
pub struct CyclesHandler<S> {
    source: S,
    sqs: aws_sdk_sqs::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    order_results_queue_url: String,
    cycles_table: String,
    deadline: Duration,
    notifier: Notifier,
    fetches: Arc<AtomicU64>,
    not_ready: Arc<AtomicU64>,
    cycles_fanned_out: Arc<AtomicU64>,
    results_sent: Arc<AtomicU64>,
}

/// Where a cycle's results go and how long it may wait for them.
#[derive(Debug, Clone)]
pub struct Targets {
    /// The order-results queue.
    pub order_results_queue_url: String,
    /// The cycle records.
    pub cycles_table: String,
    /// From the cycle message's sending.
    pub deadline: Duration,
}

impl<S: ResultsSource> CyclesHandler<S> {
    /// A handler counting `results_fetches`, `results_not_ready`, `cycles_fanned_out` and
    /// `results_sent`.
    pub fn new(
        source: S,
        sqs: aws_sdk_sqs::Client,
        dynamodb: aws_sdk_dynamodb::Client,
        targets: Targets,
        notifier: Notifier,
        metrics: &Metrics,
    ) -> Self {
        Self {
            source,
            sqs,
            dynamodb,
            order_results_queue_url: targets.order_results_queue_url,
            cycles_table: targets.cycles_table,
            deadline: targets.deadline,
            notifier,
            fetches: metrics.counter("results_fetches"),
            not_ready: metrics.counter("results_not_ready"),
            cycles_fanned_out: metrics.counter("cycles_fanned_out"),
            results_sent: metrics.counter("results_sent"),
        }
    }

    fn key(cycle: &str) -> AttributeValue {
        AttributeValue::S(cycle.to_owned())
    }

    async fn fanned_out(&self, cycle: &str) -> Result<bool, Outcome> {
        let item = self
            .dynamodb
            .get_item()
            .table_name(&self.cycles_table)
            .key("cycle", Self::key(cycle))
            .consistent_read(true)
            .projection_expression("#status")
            .expression_attribute_names("#status", "status")
            .send()
            .await
            .map_err(|e| classify(&e).into_outcome())?;
        Ok(item
            .item
            .and_then(|i| i.get("status")?.as_s().ok().cloned())
            .as_deref()
            == Some(FANNED_OUT))
    }

    /// Past the deadline: one notification, then the DLQ with `why`.
    async fn give_up(&self, cycle: &str, why: String) -> Outcome {
        let text = format!(
            ":rotating_light: auction cycle {cycle} has no results after {} s: {why}",
            self.deadline.as_secs()
        );
        let notification = Notification {
            id: format!("{cycle}/deadline"),
            subject: "Auction results missing",
            body: json!({"text": text, "event": "cycle-deadline-exceeded", "cycle": cycle, "reason": why}),
            attributes: vec![
                ("event", "cycle-deadline-exceeded".to_owned()),
                ("cycle", cycle.to_owned()),
            ],
        };
        match self.notifier.notify_once(&notification).await {
            Outcome::Done | Outcome::Duplicate => Outcome::permanent(
                "deadline-exceeded",
                format!(
                    "no results after the {} s deadline: {why}",
                    self.deadline.as_secs()
                ),
            ),
            retry => retry,
        }
    }

    /// Claims the cycle with the hash of its results: the number of batches already sent, or
    /// an outcome when there is nothing (more) to do.
    async fn claim(&self, cycle: &str, results: &[OrderResult]) -> Result<usize, Outcome> {
        let hash = sha256_hex(
            serde_json::to_string(results)
                .expect("results serialise")
                .as_bytes(),
        );
        let n = |v: usize| AttributeValue::N(v.to_string());
        let record = self
            .dynamodb
            .update_item()
            .table_name(&self.cycles_table)
            .key("cycle", Self::key(cycle))
            .update_expression(
                "SET results_sha256 = if_not_exists(results_sha256, :hash), \
                 results_count = if_not_exists(results_count, :count), \
                 batches_sent = if_not_exists(batches_sent, :zero), \
                 #status = if_not_exists(#status, :fanning), \
                 started_at = if_not_exists(started_at, :now)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":hash", AttributeValue::S(hash.clone()))
            .expression_attribute_values(":count", n(results.len()))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":fanning", AttributeValue::S("FANNING_OUT".into()))
            .expression_attribute_values(":now", AttributeValue::N(now_ms().to_string()))
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| classify(&e).into_outcome())?
            .attributes
            .unwrap_or_default();
        let get = |name: &str| record.get(name).and_then(|v| v.as_s().or(v.as_n()).ok());
        if get("status").map(String::as_str) == Some(FANNED_OUT) {
            return Err(Outcome::Duplicate);
        }
        if get("results_sha256") != Some(&hash) {
            return Err(Outcome::permanent(
                "results-changed",
                format!("the results of cycle {cycle} differ from the ones whose fan-out began; an operator must decide"),
            ));
        }
        Ok(get("batches_sent")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    async fn fan_out(&self, cycle: &str, results: Vec<OrderResult>) -> Outcome {
        let start = match self.claim(cycle, &results).await {
            Ok(start) => start,
            Err(outcome) => return outcome,
        };
        for (i, batch) in results.chunks(10).enumerate().skip(start) {
            let entries = batch
                .iter()
                .map(|r| {
                    SendMessageBatchRequestEntry::builder()
                        .id(&r.record_id)
                        .message_body(serde_json::to_string(r).expect("results serialise"))
                        .build()
                        .expect("id and body are set")
                })
                .collect();
            if let Err(e) =
                fleet::queue::send_all(&self.sqs, &self.order_results_queue_url, entries).await
            {
                return e.into_outcome();
            }
            Metrics::add(&self.results_sent, batch.len() as u64);
            let checkpoint = self
                .dynamodb
                .update_item()
                .table_name(&self.cycles_table)
                .key("cycle", Self::key(cycle))
                .update_expression("SET batches_sent = :next")
                .condition_expression("batches_sent = :this")
                .expression_attribute_values(":next", AttributeValue::N((i + 1).to_string()))
                .expression_attribute_values(":this", AttributeValue::N(i.to_string()))
                .send()
                .await;
            match checkpoint {
                Ok(_) => {}
                Err(e)
                    if e.as_service_error()
                        .is_some_and(UpdateItemError::is_conditional_check_failed_exception) =>
                {
                    // Another delivery of this cycle is ahead of this one: let it finish.
                    warn!(
                        cycle,
                        batch = i,
                        "another delivery is fanning this cycle out"
                    );
                    return Outcome::retry(
                        "concurrent-fan-out",
                        format!("batch {i} of cycle {cycle} was checkpointed by another delivery"),
                    );
                }
                Err(e) => return classify(&e).into_outcome(),
            }
        }
        let done = self
            .dynamodb
            .update_item()
            .table_name(&self.cycles_table)
            .key("cycle", Self::key(cycle))
            .update_expression("SET #status = :done, finished_at = :now")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":done", AttributeValue::S(FANNED_OUT.into()))
            .expression_attribute_values(":now", AttributeValue::N(now_ms().to_string()))
            .send()
            .await;
        if let Err(e) = done {
            return classify(&e).into_outcome();
        }
        Metrics::incr(&self.cycles_fanned_out);
        info!(cycle, results = results.len(), "cycle fanned out");
        Outcome::Done
    }
}

impl<S: ResultsSource> Handler for CyclesHandler<S> {
    async fn handle(&self, message: &Message) -> Outcome {
        let cycle = match serde_json::from_str::<CycleMessage>(&message.body) {
            Ok(m) if safe_id(&m.cycle) => m.cycle,
            Ok(_) => {
                return Outcome::permanent(
                    "invalid-cycle",
                    "cycle must be 1-128 characters of A-Z a-z 0-9 - _ . :",
                )
            }
            Err(e) => {
                return Outcome::permanent("invalid-cycle", format!("not a cycle message: {e}"))
            }
        };
        match self.fanned_out(&cycle).await {
            Ok(true) => return Outcome::Duplicate,
            Ok(false) => {}
            Err(outcome) => return outcome,
        }
        Metrics::incr(&self.fetches);
        let fetched = self.source.fetch(&cycle).await;
        let past_deadline = message
            .sent_at_ms
            .is_some_and(|sent| now_ms().saturating_sub(sent) > self.deadline.as_millis() as u64);
        match fetched {
            Ok(Fetch::Ready(results)) => self.fan_out(&cycle, results).await,
            Ok(Fetch::NotReady) => {
                Metrics::incr(&self.not_ready);
                if past_deadline {
                    self.give_up(&cycle, "the source still says results: false".into())
                        .await
                } else {
                    Outcome::retry(
                        "results-not-ready",
                        format!("results of cycle {cycle} not ready"),
                    )
                }
            }
            Err(e) if past_deadline => self.give_up(&cycle, e.to_string()).await,
            Err(e) => Outcome::retry(e.kind(), e.to_string()),
        }
    }
}
