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
//!
//! The handler ([`CyclesHandler`]) reaches the source through [`ResultsSource`], the cycle
//! records through [`CycleStore`] (DynamoDB: [`DynamoCycles`]), the order-results queue through
//! [`ResultsQueue`] (SQS: [`SqsResults`]) and the notifications through
//! [`crate::notify::Notify`].

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use clap::{Parser, ValueEnum};
use fleet::kind;
use fleet::util::{now_ms, sha256_hex};
use fleet::worker::WorkerArgs;
use fleet::{classify, AwsError, Handler, Message, Metrics, Outcome};
use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn};

use crate::lease::{self, Item, CLAIMED_ELSEWHERE, FREE_OR_MINE};
use crate::notify::{safe_id, Notification, Notify};
use crate::order_results::OrderResult;
use crate::source::{
    AnySource, Fetch, HttpSource, Readiness, ResultsSource, SimulatedSource, SourceError,
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

impl Config {
    /// How long a cycle may wait for its results.
    pub fn deadline(&self) -> Duration {
        Duration::from_secs(self.deadline_secs)
    }

    /// How long a delivery's claim on a cycle's fan-out lasts past its last checkpoint.
    pub fn cycle_lease(&self) -> Duration {
        Duration::from_secs(self.cycle_lease_secs)
    }
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
            SourceKind::Simulator => AnySource::Simulated(SimulatedSource::new(
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

/// The retry kind of a cycle whose results are not ready yet.
pub const RESULTS_NOT_READY: &str = "results-not-ready";
/// The `event` of the notification of a cycle dead-lettered past its deadline (a field of the
/// SNS message and a message attribute, for subscription filters): not a dead-letter kind.
pub const CYCLE_DEADLINE_EVENT: &str = "cycle-deadline-exceeded";

/// A cycle record as a refused claim found it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CycleRecord {
    /// `FANNING_OUT` or `FANNED_OUT`.
    pub status: Option<String>,
    /// The hash of the results whose fan-out began.
    pub results_sha256: Option<String>,
    /// Who holds the lease, and for how long, for messages.
    pub holder: String,
}

impl CycleRecord {
    /// The record of a DynamoDB item.
    pub fn from_item(item: &Item) -> Self {
        Self {
            status: lease::string(item, "status").map(str::to_owned),
            results_sha256: lease::string(item, "results_sha256").map(str::to_owned),
            holder: lease::holder(item),
        }
    }
}

/// What claiming a cycle's fan-out gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CycleClaim {
    /// The delivery holds the lease; this many batches were sent (and checkpointed) already.
    Owned {
        /// Batches already sent, to skip.
        batches_sent: usize,
    },
    /// Refused: the cycle is fanned out, its results changed, or another delivery holds the
    /// lease. The record as it was.
    Refused(CycleRecord),
}

/// The cycle records: what [`CyclesHandler`] needs of them. [`DynamoCycles`] keeps them in
/// DynamoDB. Every write after the claim is made only while `owner` holds the lease (which
/// it extends).
pub trait CycleStore: Send + Sync + 'static {
    /// Whether the cycle is `FANNED_OUT`.
    fn fanned_out(&self, cycle: &str) -> impl Future<Output = Result<bool, AwsError>> + Send;

    /// Claims the cycle's fan-out for `owner` with the hash and number of its results: unless
    /// it is fanned out, began with other results, or another delivery holds the lease.
    fn claim(
        &self,
        cycle: &str,
        results_sha256: &str,
        results_count: usize,
        owner: &str,
    ) -> impl Future<Output = Result<CycleClaim, AwsError>> + Send;

    /// Records that batch `batch` was sent: `false` when `owner` no longer holds the lease
    /// (another delivery took the cycle over).
    fn checkpoint(
        &self,
        cycle: &str,
        batch: usize,
        owner: &str,
    ) -> impl Future<Output = Result<bool, AwsError>> + Send;

    /// Marks the cycle `FANNED_OUT` and ends the lease: `false` when `owner` no longer holds
    /// it.
    fn finish(
        &self,
        cycle: &str,
        owner: &str,
    ) -> impl Future<Output = Result<bool, AwsError>> + Send;

    /// Gives `owner`'s lease up so that a retry need not wait for it to expire. Best effort.
    fn release(&self, cycle: &str, owner: &str) -> impl Future<Output = ()> + Send;
}

/// Where the fanned-out results go: one message per result.
pub trait ResultsQueue: Send + Sync + 'static {
    /// Sends one batch of at most 10 results (an error may leave some of them sent: the batch
    /// is sent again).
    fn send(&self, batch: &[OrderResult]) -> impl Future<Output = Result<(), AwsError>> + Send;
}

/// The order-results queue on SQS.
#[derive(Debug, Clone)]
pub struct SqsResults {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsResults {
    /// Sends to `queue_url`.
    pub fn new(sqs: aws_sdk_sqs::Client, queue_url: String) -> Self {
        Self { sqs, queue_url }
    }
}

impl ResultsQueue for SqsResults {
    async fn send(&self, batch: &[OrderResult]) -> Result<(), AwsError> {
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
        fleet::queue::send_all(&self.sqs, &self.queue_url, entries).await
    }
}

/// The cycle records in DynamoDB (partition key `cycle`).
#[derive(Debug, Clone)]
pub struct DynamoCycles {
    dynamodb: aws_sdk_dynamodb::Client,
    table: String,
    lease: Duration,
}

impl DynamoCycles {
    /// The records in `table`; a delivery's lease lasts `lease` past its last checkpoint.
    pub fn new(dynamodb: aws_sdk_dynamodb::Client, table: String, lease: Duration) -> Self {
        Self {
            dynamodb,
            table,
            lease,
        }
    }

    fn key(cycle: &str) -> AttributeValue {
        AttributeValue::S(cycle.to_owned())
    }

    async fn record(&self, cycle: &str) -> Result<Item, AwsError> {
        let out = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .key("cycle", Self::key(cycle))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify(&e))?;
        Ok(out.item.unwrap_or_default())
    }
}

impl CycleStore for DynamoCycles {
    async fn fanned_out(&self, cycle: &str) -> Result<bool, AwsError> {
        let item = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .key("cycle", Self::key(cycle))
            .consistent_read(true)
            .projection_expression("#status")
            .expression_attribute_names("#status", "status")
            .send()
            .await
            .map_err(|e| classify(&e))?;
        Ok(item
            .item
            .and_then(|i| i.get("status")?.as_s().ok().cloned())
            .as_deref()
            == Some(FANNED_OUT))
    }

    async fn claim(
        &self,
        cycle: &str,
        hash: &str,
        count: usize,
        owner: &str,
    ) -> Result<CycleClaim, AwsError> {
        let now = now_ms();
        let n = |v: u64| AttributeValue::N(v.to_string());
        let claimed = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
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
            .expression_attribute_values(":hash", AttributeValue::S(hash.to_owned()))
            .expression_attribute_values(":count", n(count as u64))
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
                return Ok(CycleClaim::Refused(CycleRecord::from_item(&record)));
            }
            Err(err) => return Err(classify(&err)),
        };
        Ok(CycleClaim::Owned {
            batches_sent: record
                .get("batches_sent")
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        })
    }

    async fn checkpoint(&self, cycle: &str, i: usize, owner: &str) -> Result<bool, AwsError> {
        let checkpoint = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
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
            Ok(_) => Ok(true),
            Err(e) if lease::failed_condition(&e) => Ok(false),
            Err(e) => Err(classify(&e)),
        }
    }

    async fn finish(&self, cycle: &str, owner: &str) -> Result<bool, AwsError> {
        let now = now_ms();
        let done = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("cycle", Self::key(cycle))
            .update_expression(
                "SET #status = :done, finished_at = :now, expires_at = :expires \
                 REMOVE lease_owner, lease_until",
            )
            .condition_expression("lease_owner = :me")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":done", AttributeValue::S(FANNED_OUT.into()))
            .expression_attribute_values(":me", AttributeValue::S(owner.to_owned()))
            .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
            .expression_attribute_values(":expires", expires_at(now))
            .send()
            .await;
        match done {
            Ok(_) => Ok(true),
            Err(e) if lease::failed_condition(&e) => Ok(false),
            Err(e) => Err(classify(&e)),
        }
    }

    async fn release(&self, cycle: &str, owner: &str) {
        lease::release(
            &self.dynamodb,
            &self.table,
            ("cycle", Self::key(cycle)),
            owner,
        )
        .await;
    }
}

/// The handler of the cycles queue, over its results source `S`, cycle records `C`,
/// order-results queue `Q` and notifier `N`.
#[derive(Debug)]
pub struct CyclesHandler<S, C, Q, N> {
    source: S,
    cycles: C,
    queue: Q,
    notifier: N,
    deadline: Duration,
    fetches: Arc<AtomicU64>,
    not_ready: Arc<AtomicU64>,
    cycles_fanned_out: Arc<AtomicU64>,
    results_sent: Arc<AtomicU64>,
}

/// The hash a cycle's fan-out is claimed with: of its results, as sent.
fn results_hash(results: &[OrderResult]) -> String {
    sha256_hex(
        serde_json::to_string(results)
            .expect("results serialise")
            .as_bytes(),
    )
}

impl<S: ResultsSource, C: CycleStore, Q: ResultsQueue, N: Notify> CyclesHandler<S, C, Q, N> {
    /// A handler whose cycles may wait `deadline` for their results (from their message's
    /// sending), counting `results_fetches`, `results_not_ready`, `cycles_fanned_out` and
    /// `results_sent`.
    pub fn new(
        source: S,
        cycles: C,
        queue: Q,
        notifier: N,
        deadline: Duration,
        metrics: &Metrics,
    ) -> Self {
        Self {
            source,
            cycles,
            queue,
            notifier,
            deadline,
            fetches: metrics.counter("results_fetches"),
            not_ready: metrics.counter("results_not_ready"),
            cycles_fanned_out: metrics.counter("cycles_fanned_out"),
            results_sent: metrics.counter("results_sent"),
        }
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
            body: json!({"text": text, "event": CYCLE_DEADLINE_EVENT, "cycle": cycle, "reason": why}),
            attributes: vec![
                ("event", CYCLE_DEADLINE_EVENT.to_owned()),
                ("cycle", cycle.to_owned()),
            ],
        };
        match self.notifier.notify_once(&notification).await {
            Outcome::Done | Outcome::Duplicate => Outcome::permanent(
                kind::DEADLINE_EXCEEDED,
                format!(
                    "no results after the {} s deadline: {why}",
                    self.deadline.as_secs()
                ),
            ),
            retry => retry,
        }
    }

    async fn fan_out(&self, cycle: &str, results: Vec<OrderResult>) -> Outcome {
        let owner = lease::new_owner();
        let hash = results_hash(&results);
        let start = match self.cycles.claim(cycle, &hash, results.len(), &owner).await {
            Ok(CycleClaim::Owned { batches_sent }) => batches_sent,
            Ok(CycleClaim::Refused(record)) => return refusal(cycle, &hash, &record),
            Err(e) => return e.into_outcome(),
        };
        // On a failure the checkpoints are true (a batch sent but not checkpointed is sent
        // again anyway): the lease is given up, so the retry need not wait for it to expire.
        for (i, batch) in results.chunks(10).enumerate().skip(start) {
            if let Err(e) = self.queue.send(batch).await {
                self.cycles.release(cycle, &owner).await;
                return e.into_outcome();
            }
            Metrics::add(&self.results_sent, batch.len() as u64);
            let failed = match self.cycles.checkpoint(cycle, i, &owner).await {
                Ok(true) => continue,
                Ok(false) => {
                    // This delivery's lease expired and another one took the cycle over.
                    warn!(cycle, batch = i, "another delivery took this cycle over");
                    Outcome::retry(
                        CLAIMED_ELSEWHERE,
                        format!("the fan-out of cycle {cycle} was taken over by another delivery before batch {i} was checkpointed"),
                    )
                }
                Err(e) => e.into_outcome(),
            };
            // (A no-op when the lease was lost: the release is conditional too.)
            self.cycles.release(cycle, &owner).await;
            return failed;
        }
        match self.cycles.finish(cycle, &owner).await {
            Ok(true) => {}
            Ok(false) => {
                // Every batch is checkpointed; the delivery that took over marks it done.
                return Outcome::retry(
                    CLAIMED_ELSEWHERE,
                    format!("the fan-out of cycle {cycle} was taken over by another delivery before it was marked done"),
                );
            }
            Err(e) => return e.into_outcome(),
        }
        Metrics::incr(&self.cycles_fanned_out);
        info!(cycle, results = results.len(), "cycle fanned out");
        Outcome::Done
    }
}

/// What a delivery whose claim on a cycle was refused does, given the record as it was:
/// nothing when the cycle is fanned out, nothing ever when its results changed (an operator
/// decides), later when another delivery holds the lease.
fn refusal(cycle: &str, hash: &str, record: &CycleRecord) -> Outcome {
    if record.status.as_deref() == Some(FANNED_OUT) {
        return Outcome::Duplicate;
    }
    if record.results_sha256.as_deref().is_some_and(|h| h != hash) {
        return Outcome::permanent(
            kind::RESULTS_CHANGED,
            format!("the results of cycle {cycle} differ from the ones whose fan-out began; an operator must decide"),
        );
    }
    Outcome::retry(
        CLAIMED_ELSEWHERE,
        format!(
            "cycle {cycle} is being fanned out by another delivery ({})",
            record.holder
        ),
    )
}

impl<S: ResultsSource, C: CycleStore, Q: ResultsQueue, N: Notify> Handler
    for CyclesHandler<S, C, Q, N>
{
    async fn handle(&self, message: &Message) -> Outcome {
        let cycle = match serde_json::from_str::<CycleMessage>(&message.body) {
            Ok(m) if safe_id(&m.cycle) => m.cycle,
            Ok(_) => {
                return Outcome::permanent(
                    kind::INVALID_MESSAGE,
                    "cycle must be 1-128 characters of A-Z a-z 0-9 - _ . :",
                )
            }
            Err(e) => {
                return Outcome::permanent(
                    kind::of_json_error(&e),
                    format!("not a cycle message: {e}"),
                )
            }
        };
        match self.cycles.fanned_out(&cycle).await {
            Ok(true) => return Outcome::Duplicate,
            Ok(false) => {}
            Err(e) => return e.into_outcome(),
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
                        RESULTS_NOT_READY,
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

    use std::collections::HashMap;
    use std::sync::Mutex;

    use fleet::ErrorClass;

    use crate::fakes::{self, FakeRecords, FakeSns};
    use crate::notify::Notifier;

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
        let record = |fields: &[(&str, &str)]| CycleRecord::from_item(&record(fields));
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
            Outcome::Permanent(r) if r.kind == kind::RESULTS_CHANGED
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

    /// A results source answering what the test sets, counting its fetches.
    struct FakeSource {
        answer: Mutex<Result<Fetch, SourceError>>,
        fetches: Mutex<u32>,
    }

    impl ResultsSource for FakeSource {
        async fn fetch(&self, _cycle: &str) -> Result<Fetch, SourceError> {
            *self.fetches.lock().unwrap() += 1;
            self.answer.lock().unwrap().clone()
        }
    }

    /// A cycle record as the fake keeps it.
    #[derive(Debug, Clone, Default)]
    struct Row {
        status: String,
        hash: String,
        batches_sent: usize,
        lease_owner: Option<String>,
    }

    /// The cycle records in memory, with a failure for the next read.
    #[derive(Default)]
    struct FakeCycles {
        rows: Mutex<HashMap<String, Row>>,
        fail: Mutex<Option<AwsError>>,
    }

    impl FakeCycles {
        fn row(&self, cycle: &str) -> Row {
            self.rows.lock().unwrap()[cycle].clone()
        }

        /// Runs `change` on the row if `owner` holds its lease.
        fn owned(&self, cycle: &str, owner: &str, change: impl FnOnce(&mut Row) -> bool) -> bool {
            let mut rows = self.rows.lock().unwrap();
            let row = rows.get_mut(cycle).expect("claimed");
            row.lease_owner.as_deref() == Some(owner) && change(row)
        }
    }

    impl CycleStore for FakeCycles {
        async fn fanned_out(&self, cycle: &str) -> Result<bool, AwsError> {
            if let Some(err) = self.fail.lock().unwrap().take() {
                return Err(err);
            }
            let rows = self.rows.lock().unwrap();
            Ok(rows.get(cycle).is_some_and(|r| r.status == FANNED_OUT))
        }

        async fn claim(
            &self,
            cycle: &str,
            hash: &str,
            _count: usize,
            owner: &str,
        ) -> Result<CycleClaim, AwsError> {
            let mut rows = self.rows.lock().unwrap();
            let row = rows.entry(cycle.to_owned()).or_insert_with(|| Row {
                status: FANNING_OUT.into(),
                hash: hash.into(),
                ..Row::default()
            });
            let held = row.lease_owner.as_deref().is_some_and(|o| o != owner);
            if row.status == FANNED_OUT || row.hash != hash || held {
                return Ok(CycleClaim::Refused(CycleRecord {
                    status: Some(row.status.clone()),
                    results_sha256: Some(row.hash.clone()),
                    holder: format!("held by {}", row.lease_owner.as_deref().unwrap_or("nobody")),
                }));
            }
            row.lease_owner = Some(owner.to_owned());
            Ok(CycleClaim::Owned {
                batches_sent: row.batches_sent,
            })
        }

        async fn checkpoint(
            &self,
            cycle: &str,
            batch: usize,
            owner: &str,
        ) -> Result<bool, AwsError> {
            Ok(self.owned(cycle, owner, |row| {
                let next = row.batches_sent == batch;
                if next {
                    row.batches_sent += 1;
                }
                next
            }))
        }

        async fn finish(&self, cycle: &str, owner: &str) -> Result<bool, AwsError> {
            Ok(self.owned(cycle, owner, |row| {
                row.status = FANNED_OUT.into();
                row.lease_owner = None;
                true
            }))
        }

        async fn release(&self, cycle: &str, owner: &str) {
            self.owned(cycle, owner, |row| {
                row.lease_owner = None;
                true
            });
        }
    }

    /// The order-results queue in memory: the record ids of each batch sent; fails the send
    /// numbered `fail_on` (from 1) once.
    #[derive(Default)]
    struct FakeQueue {
        batches: Mutex<Vec<Vec<String>>>,
        sends: Mutex<u32>,
        fail_on: Mutex<Option<u32>>,
    }

    impl ResultsQueue for FakeQueue {
        async fn send(&self, batch: &[OrderResult]) -> Result<(), AwsError> {
            let mut sends = self.sends.lock().unwrap();
            *sends += 1;
            if *self.fail_on.lock().unwrap() == Some(*sends) {
                *self.fail_on.lock().unwrap() = None;
                return Err(fakes::error(ErrorClass::Retryable, "ServiceUnavailable"));
            }
            assert!(batch.len() <= 10, "at most 10 per batch");
            let ids = batch.iter().map(|r| r.record_id.clone()).collect();
            self.batches.lock().unwrap().push(ids);
            Ok(())
        }
    }

    type Tested = CyclesHandler<FakeSource, FakeCycles, FakeQueue, Notifier<FakeRecords, FakeSns>>;

    const CYCLE: &str = "2026-11-23T00:40:00Z";

    fn handler(answer: Result<Fetch, SourceError>) -> (Tested, FakeSns) {
        let (notifier, _, sns) = fakes::notifier();
        let source = FakeSource {
            answer: Mutex::new(answer),
            fetches: Mutex::new(0),
        };
        let handler = CyclesHandler::new(
            source,
            FakeCycles::default(),
            FakeQueue::default(),
            notifier,
            Duration::from_secs(60),
            &Metrics::new(),
        );
        (handler, sns)
    }

    /// `n` results of the cycle, every fifth rejected.
    fn results(n: usize, price: f64) -> Fetch {
        Fetch::Ready(
            (0..n)
                .map(|i| OrderResult {
                    cycle: CYCLE.into(),
                    record_id: format!("o-{i:02}"),
                    status: if i % 5 == 0 { "rejected" } else { "accepted" }.into(),
                    reason: (i % 5 == 0).then(|| "late".to_owned()),
                    rest: serde_json::Map::from_iter([("price".to_owned(), json!(price))]),
                })
                .collect(),
        )
    }

    /// The cycle's message, sent `age` ago.
    fn delivery(age: Duration) -> Message {
        Message {
            message_id: "m-1".into(),
            body: json!({ "cycle": CYCLE }).to_string(),
            receive_count: 1,
            sent_at_ms: Some(now_ms() - age.as_millis() as u64),
            ..Message::default()
        }
    }

    fn fresh() -> Message {
        delivery(Duration::from_secs(1))
    }

    fn sent_ids(handler: &Tested) -> Vec<String> {
        handler.queue.batches.lock().unwrap().concat()
    }

    #[tokio::test]
    async fn results_not_ready_are_a_retry_without_a_send() {
        let (handler, sns) = handler(Ok(Fetch::NotReady));
        match handler.handle(&fresh()).await {
            Outcome::Retry(reason) => {
                assert_eq!(reason.kind, RESULTS_NOT_READY);
                assert!(!reason.dependency, "not an outage of the source");
            }
            other => panic!("{other:?}"),
        }
        assert!(sent_ids(&handler).is_empty());
        assert_eq!(sns.count(), 0);
    }

    #[tokio::test]
    async fn ready_results_are_fanned_out_once_in_batches_of_ten() {
        let (handler, _) = handler(Ok(results(23, 1.0)));
        assert_eq!(handler.handle(&fresh()).await, Outcome::Done);
        let sizes: Vec<usize> = handler
            .queue
            .batches
            .lock()
            .unwrap()
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, [10, 10, 3]);
        let row = handler.cycles.row(CYCLE);
        assert_eq!((row.status.as_str(), row.batches_sent), (FANNED_OUT, 3));
        assert_eq!(row.lease_owner, None);
        // A redelivery sends nothing and does not even ask the source.
        assert_eq!(handler.handle(&fresh()).await, Outcome::Duplicate);
        assert_eq!(sent_ids(&handler).len(), 23);
        assert_eq!(*handler.source.fetches.lock().unwrap(), 1);
    }

    #[tokio::test]
    async fn a_redelivery_resumes_after_the_last_batch_checkpointed() {
        let (handler, _) = handler(Ok(results(23, 1.0)));
        *handler.queue.fail_on.lock().unwrap() = Some(2);
        assert_eq!(
            handler.handle(&fresh()).await,
            Outcome::unavailable("ServiceUnavailable", "injected")
        );
        let row = handler.cycles.row(CYCLE);
        assert_eq!((row.batches_sent, row.lease_owner), (1, None));
        assert_eq!(handler.handle(&fresh()).await, Outcome::Done);
        let mut ids = sent_ids(&handler);
        assert_eq!(ids.len(), 23, "each result sent once");
        ids.dedup();
        assert_eq!(ids.len(), 23);
    }

    #[tokio::test]
    async fn results_changed_since_the_fan_out_began_are_permanent() {
        let (handler, _) = handler(Ok(results(23, 1.0)));
        *handler.queue.fail_on.lock().unwrap() = Some(2);
        assert!(matches!(handler.handle(&fresh()).await, Outcome::Retry(_)));
        *handler.source.answer.lock().unwrap() = Ok(results(23, 2.0));
        match handler.handle(&fresh()).await {
            Outcome::Permanent(reason) => assert_eq!(reason.kind, kind::RESULTS_CHANGED),
            other => panic!("{other:?}"),
        }
        assert_eq!(sent_ids(&handler).len(), 10, "nothing more sent");
    }

    #[tokio::test]
    async fn a_fan_out_held_by_another_delivery_is_a_retry() {
        let (handler, _) = handler(Ok(results(3, 1.0)));
        let Ok(Fetch::Ready(ready)) = handler.source.answer.lock().unwrap().clone() else {
            unreachable!()
        };
        handler.cycles.rows.lock().unwrap().insert(
            CYCLE.into(),
            Row {
                status: FANNING_OUT.into(),
                hash: results_hash(&ready),
                batches_sent: 0,
                lease_owner: Some("another".into()),
            },
        );
        match handler.handle(&fresh()).await {
            Outcome::Retry(reason) => {
                assert_eq!(reason.kind, CLAIMED_ELSEWHERE);
                assert!(
                    reason.message.contains("held by another"),
                    "{}",
                    reason.message
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(sent_ids(&handler).is_empty());
    }

    #[tokio::test]
    async fn past_the_deadline_the_cycle_is_dead_lettered_and_notified_once() {
        let (handler, sns) = handler(Ok(Fetch::NotReady));
        let late = delivery(Duration::from_secs(3600));
        for answer in [Ok(Fetch::NotReady), Err(SourceError::Status(503))] {
            *handler.source.answer.lock().unwrap() = answer;
            match handler.handle(&late).await {
                Outcome::Permanent(reason) => assert_eq!(reason.kind, kind::DEADLINE_EXCEEDED),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(sns.count(), 1, "one notification per cycle");
        let (_, body, attributes) = sns.published.lock().unwrap()[0].clone();
        assert_eq!(body["event"], CYCLE_DEADLINE_EVENT);
        assert_eq!(body["cycle"], CYCLE);
        assert!(attributes.contains(&("event".to_owned(), CYCLE_DEADLINE_EVENT.to_owned())));
        assert!(sent_ids(&handler).is_empty());
    }

    #[tokio::test]
    async fn source_failures_are_retries_an_outage_blames_the_source() {
        let (handler, _) = handler(Err(SourceError::Timeout(Duration::from_secs(5))));
        match handler.handle(&fresh()).await {
            Outcome::Retry(reason) => assert!(reason.dependency && reason.kind == "source-timeout"),
            other => panic!("{other:?}"),
        }
        *handler.source.answer.lock().unwrap() = Err(SourceError::Malformed("x".into()));
        match handler.handle(&fresh()).await {
            Outcome::Retry(reason) => {
                assert!(!reason.dependency && reason.kind == "source-malformed")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_transient_dynamodb_error_is_a_retry() {
        let (handler, _) = handler(Ok(results(3, 1.0)));
        *handler.cycles.fail.lock().unwrap() = Some(fakes::error(
            ErrorClass::Retryable,
            "ProvisionedThroughputExceededException",
        ));
        assert_eq!(
            handler.handle(&fresh()).await,
            Outcome::unavailable("ProvisionedThroughputExceededException", "injected")
        );
        assert_eq!(*handler.source.fetches.lock().unwrap(), 0);
    }

    #[tokio::test]
    async fn an_invalid_cycle_message_is_permanent() {
        let (handler, _) = handler(Ok(Fetch::NotReady));
        for (body, expected) in [
            ("not json", kind::INVALID_JSON),
            ("{}", kind::INVALID_MESSAGE),
            (r#"{"cycle":"../etc"}"#, kind::INVALID_MESSAGE),
            (r#"{"cycle":""}"#, kind::INVALID_MESSAGE),
        ] {
            let message = Message {
                body: body.into(),
                ..fresh()
            };
            match handler.handle(&message).await {
                Outcome::Permanent(reason) => assert_eq!(reason.kind, expected, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        assert_eq!(*handler.source.fetches.lock().unwrap(), 0);
    }
}
