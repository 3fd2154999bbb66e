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
//!   does not even ask the source. The claim is a [`crate::lease`]: one delivery at a time fans
//!   a cycle out. Another delivery of the cycle (a duplicate, the scheduler sending it again)
//!   that finds the lease held comes back later (a retry of kind `claimed-elsewhere`) and then
//!   finds the cycle `FANNED_OUT`, or takes the lease over once it has expired (its holder
//!   died). Every checkpoint, and the `FANNED_OUT` mark, is conditional on still holding the
//!   lease, and extends it. (A crash between a batch and its checkpoint sends that batch
//!   again, and so does a batch whose sending outlasts the lease; the results' consumer is
//!   idempotent.) The claim and the `FANNED_OUT` mark set `expires_at` (s since the epoch, the
//!   table's TTL attribute in topology.json) [`CYCLE_TTL`] ahead: DynamoDB deletes a cycle
//!   record that long after its last write, when no delivery of the cycle can still need it.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use clap::{Parser, ValueEnum};
use fleet::util::{now_ms, sha256_hex};
use fleet::worker::WorkerArgs;
use fleet::{classify, Handler, Message, Metrics, Outcome};
use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn};

use crate::lease::{self, Item, CLAIMED_ELSEWHERE, FREE_OR_MINE};
use crate::notify::{safe_id, Notification, Notifier};
use crate::order_results::OrderResult;
use crate::source::{
    AnySource, Fetch, HttpSource, Readiness, ResultsSource, Simulator, SourceError,
};

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
    /// How long a delivery's claim on a cycle's fan-out lasts past its last checkpoint,
    /// seconds: a delivery that dies fanning out delays the rest of the cycle this long.
    #[arg(long, env = "CYCLE_LEASE_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub cycle_lease_secs: u64,
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

/// How long a cycle record is kept after its last write (`expires_at`, the table's TTL
/// attribute): 35 days.
///
/// The record must outlive every delivery of the cycle's message: one that found no record
/// would fan the cycle out again. The record is written after the message was first sent, and
/// the message lives at most [`fleet::topology::QueueSpec::longest_message_life_secs`]: its
/// queue's retention (1 day) twice and a day of outage, 14 days in the DLQ, and the queue's
/// time again after a redrive: 2 × 3 + 14 = 20 days. 35 days leaves two weeks to spare (a late
/// redrive, clocks) and matches the notifications. EventBridge
/// Scheduler sends each cycle once (its retries end within a day). A fan-out repeated after
/// all would still notify each rejection once while its dedupe records last
/// ([`crate::notify::NOTIFICATION_TTL`]). (A unit test checks it against the queue's
/// retention in topology.json.)
pub const CYCLE_TTL: Duration = Duration::from_secs(35 * 24 * 3600);

/// `expires_at` of a cycle record written at `now_ms` (ms since the epoch): s since the epoch.
fn expires_at(now_ms: u64) -> AttributeValue {
    AttributeValue::N((now_ms / 1000 + CYCLE_TTL.as_secs()).to_string())
}

/// Cycle record status once every result was sent.
const FANNED_OUT: &str = "FANNED_OUT";
/// Cycle record status while its results are being sent.
const FANNING_OUT: &str = "FANNING_OUT";

/// The handler of the cycles queue.
#[derive(Debug)]
pub struct CyclesHandler<S> {
    source: S,
    sqs: aws_sdk_sqs::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    order_results_queue_url: String,
    cycles_table: String,
    deadline: Duration,
    lease: Duration,
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
    /// How long a delivery's claim on a fan-out lasts past its last checkpoint.
    pub lease: Duration,
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
            lease: targets.lease,
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

    /// Claims the cycle's fan-out for `owner`, with the hash of its results: the number of
    /// batches already sent, or an outcome when there is nothing (more) to do or another
    /// delivery is at it.
    async fn claim(
        &self,
        cycle: &str,
        results: &[OrderResult],
        owner: &str,
    ) -> Result<usize, Outcome> {
        let hash = sha256_hex(
            serde_json::to_string(results)
                .expect("results serialise")
                .as_bytes(),
        );
        let now = now_ms();
        let n = |v: u64| AttributeValue::N(v.to_string());
        let claimed = self
            .dynamodb
            .update_item()
            .table_name(&self.cycles_table)
            .key("cycle", Self::key(cycle))
            .update_expression(
                "SET results_sha256 = if_not_exists(results_sha256, :hash), \
                 results_count = if_not_exists(results_count, :count), \
                 batches_sent = if_not_exists(batches_sent, :zero), \
                 #status = :fanning, \
                 started_at = if_not_exists(started_at, :now), \
                 lease_owner = :me, lease_until = :until, expires_at = :expires",
            )
            .condition_expression(format!(
                "(attribute_not_exists(#status) OR (#status = :fanning AND {FREE_OR_MINE})) \
                 AND (attribute_not_exists(results_sha256) OR results_sha256 = :hash)"
            ))
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":hash", AttributeValue::S(hash.clone()))
            .expression_attribute_values(":count", n(results.len() as u64))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":fanning", AttributeValue::S(FANNING_OUT.into()))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":me", AttributeValue::S(owner.to_owned()))
            .expression_attribute_values(":until", n(lease::until(now, self.lease)))
            .expression_attribute_values(":expires", expires_at(now))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let record = match claimed {
            Ok(out) => out.attributes.unwrap_or_default(),
            Err(err) if lease::failed_condition(&err) => {
                let record = match lease::refused_item(&err) {
                    Some(record) => record,
                    None => self.record(cycle).await?,
                };
                return Err(refusal(cycle, &hash, &record));
            }
            Err(err) => return Err(classify(&err).into_outcome()),
        };
        Ok(record
            .get("batches_sent")
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    async fn record(&self, cycle: &str) -> Result<Item, Outcome> {
        let out = self
            .dynamodb
            .get_item()
            .table_name(&self.cycles_table)
            .key("cycle", Self::key(cycle))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify(&e).into_outcome())?;
        Ok(out.item.unwrap_or_default())
    }

    /// Records that batch `i` was sent, if `owner` still holds the lease (which it extends).
    async fn checkpoint(&self, cycle: &str, i: usize, owner: &str) -> Outcome {
        let checkpoint = self
            .dynamodb
            .update_item()
            .table_name(&self.cycles_table)
            .key("cycle", Self::key(cycle))
            .update_expression("SET batches_sent = :next, lease_until = :until")
            .condition_expression("batches_sent = :this AND lease_owner = :me")
            .expression_attribute_values(":next", AttributeValue::N((i + 1).to_string()))
            .expression_attribute_values(":this", AttributeValue::N(i.to_string()))
            .expression_attribute_values(":me", AttributeValue::S(owner.to_owned()))
            .expression_attribute_values(
                ":until",
                AttributeValue::N(lease::until(now_ms(), self.lease).to_string()),
            )
            .send()
            .await;
        match checkpoint {
            Ok(_) => Outcome::Done,
            Err(e) if lease::failed_condition(&e) => {
                // This delivery's lease expired and another one took the cycle over.
                warn!(cycle, batch = i, "another delivery took this cycle over");
                Outcome::retry(
                    CLAIMED_ELSEWHERE,
                    format!("the fan-out of cycle {cycle} was taken over by another delivery before batch {i} was checkpointed"),
                )
            }
            Err(e) => classify(&e).into_outcome(),
        }
    }

    async fn fan_out(&self, cycle: &str, results: Vec<OrderResult>) -> Outcome {
        let owner = lease::new_owner();
        let start = match self.claim(cycle, &results, &owner).await {
            Ok(start) => start,
            Err(outcome) => return outcome,
        };
        // On a failure the checkpoints are true (a batch sent but not checkpointed is sent
        // again anyway): the lease is given up, so the retry need not wait for it to expire.
        let release = || {
            lease::release(
                &self.dynamodb,
                &self.cycles_table,
                ("cycle", Self::key(cycle)),
                &owner,
            )
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
                release().await;
                return e.into_outcome();
            }
            Metrics::add(&self.results_sent, batch.len() as u64);
            match self.checkpoint(cycle, i, &owner).await {
                Outcome::Done => {}
                failed => {
                    // (A no-op when the lease was lost: the release is conditional too.)
                    release().await;
                    return failed;
                }
            }
        }
        let now = now_ms();
        let done = self
            .dynamodb
            .update_item()
            .table_name(&self.cycles_table)
            .key("cycle", Self::key(cycle))
            .update_expression(
                "SET #status = :done, finished_at = :now, expires_at = :expires \
                 REMOVE lease_owner, lease_until",
            )
            .condition_expression("lease_owner = :me")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":done", AttributeValue::S(FANNED_OUT.into()))
            .expression_attribute_values(":me", AttributeValue::S(owner.clone()))
            .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
            .expression_attribute_values(":expires", expires_at(now))
            .send()
            .await;
        match done {
            Ok(_) => {}
            Err(e) if lease::failed_condition(&e) => {
                // Every batch is checkpointed; the delivery that took over marks it done.
                return Outcome::retry(
                    CLAIMED_ELSEWHERE,
                    format!("the fan-out of cycle {cycle} was taken over by another delivery before it was marked done"),
                );
            }
            Err(e) => return classify(&e).into_outcome(),
        }
        Metrics::incr(&self.cycles_fanned_out);
        info!(cycle, results = results.len(), "cycle fanned out");
        Outcome::Done
    }
}

/// What a delivery whose claim on a cycle was refused does, given the record as it was:
/// nothing when the cycle is fanned out, nothing ever when its results changed (an operator
/// decides), later when another delivery holds the lease.
fn refusal(cycle: &str, hash: &str, record: &Item) -> Outcome {
    if lease::string(record, "status") == Some(FANNED_OUT) {
        return Outcome::Duplicate;
    }
    if lease::string(record, "results_sha256").is_some_and(|h| h != hash) {
        return Outcome::permanent(
            "results-changed",
            format!("the results of cycle {cycle} differ from the ones whose fan-out began; an operator must decide"),
        );
    }
    Outcome::retry(
        CLAIMED_ELSEWHERE,
        format!(
            "cycle {cycle} is being fanned out by another delivery ({})",
            lease::holder(record)
        ),
    )
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
            // The source did not answer (timeout, 5xx, transport): the circuit breaker counts
            // it; a malformed answer is the source's content, not an outage.
            Err(e @ SourceError::Malformed(_)) => Outcome::retry(e.kind(), e.to_string()),
            Err(e) => Outcome::unavailable(e.kind(), e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::lease::test_item as record;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Config::command().debug_assert();
    }

    /// The longest a message of `queue` can live (topology.json).
    fn longest_life(queue: &str) -> u64 {
        fleet::topology::Topology::builtin().queues[queue].longest_message_life_secs()
    }

    #[test]
    fn a_record_outlives_every_delivery_of_its_cycle() {
        assert_eq!(longest_life("auction-cycles"), 20 * 24 * 3600);
        assert!(CYCLE_TTL.as_secs() >= longest_life("auction-cycles"));
    }

    #[test]
    fn a_record_expires_35_days_after_its_write_in_seconds() {
        assert_eq!(
            expires_at(2_000_500),
            AttributeValue::N((2_000 + 35 * 24 * 3600).to_string())
        );
    }

    #[test]
    fn a_refused_claim_is_a_duplicate_a_conflict_or_a_retry() {
        let done = record(&[("status", FANNED_OUT), ("results_sha256", "h1")]);
        assert_eq!(refusal("c", "h1", &done), Outcome::Duplicate);
        assert_eq!(
            refusal("c", "h2", &done),
            Outcome::Duplicate,
            "done is done"
        );
        let changed = record(&[("status", FANNING_OUT), ("results_sha256", "h1")]);
        assert!(matches!(
            refusal("c", "h2", &changed),
            Outcome::Permanent(r) if r.kind == "results-changed"
        ));
        let busy = record(&[
            ("status", FANNING_OUT),
            ("results_sha256", "h1"),
            ("lease_owner", "9-cd"),
        ]);
        match refusal("c", "h1", &busy) {
            Outcome::Retry(r) => {
                assert_eq!(r.kind, CLAIMED_ELSEWHERE);
                assert!(r.message.contains("held by 9-cd"), "{}", r.message);
            }
            other => panic!("{other:?}"),
        }
    }
}
