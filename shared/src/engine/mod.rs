//! The receive loop: long-poll a queue, run the handler on each message with a bounded number
//! in flight, then delete, retry later or dead-letter according to its [`Outcome`].
//!
//! ```text
//!  ReceiveMessage(10, 20 s) ──► task per message ──► Handler::handle ──► Outcome
//!        ▲   (semaphore: max_in_flight)   │ heartbeat                 │
//!        └──────── permits back ◄─────────┘ ChangeMessageVisibility   ├─ Done/Duplicate ─► deleter ─► DeleteMessageBatch
//!                                                                     ├─ Retry ─► ChangeMessageVisibility(backoff)
//!                                                                     └─ Permanent ─► SendMessage(DLQ, reason) ─► deleter
//! ```
//!
//! ## FIFO queues
//! A queue whose name ends in `.fifo` is consumed in order per message group: one task per
//! group handles its messages one after the other, in the order SQS returned them, while groups
//! run in parallel. Messages of a group that is already being handled in this process (SQS
//! should not deliver them, but an emulator may once a message became visible again) join the
//! end of that group's line instead of starting a second one. When a message is to be retried,
//! the rest of its line is not handled: it is handed back with a visibility longer than the
//! retried message's, so that the retried message comes first again and nothing overtakes it;
//! other groups keep flowing. The heartbeat extends the whole line, waiting messages included.
//! A message that is dead-lettered (permanent, or out of receives) lets its group go on, as
//! SQS's own redrive does; its copy keeps its `MessageGroupId`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName, QueueAttributeName,
};
use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument};

mod breaker;

pub use breaker::BreakerPolicy;
use breaker::{Admit, Breaker, Signal};

use crate::aws_error::{classify, AwsError};
use crate::backoff::RetrySchedule;
use crate::config::{EngineConfig, SQS_MAX_BATCH};
use crate::message::{Handler, Message};
use crate::metrics::Metrics;
use crate::outcome::{Outcome, Reason};
use crate::scaler::{Limit, Scaler, ScalerPolicy};
use crate::util::now_ms;

/// How long the receive loop waits for a batch's worth of room once some is free.
const BATCH_FILL_WAIT: Duration = Duration::from_millis(50);
/// After the grace period, how long handed-back messages get to reach SQS.
const HAND_BACK_DEADLINE: Duration = Duration::from_secs(5);

/// The dead-letter attribute names (they live in [`crate::dlq`]).
pub use crate::dlq::names as dlq_attributes;

/// Errors that stop the engine from starting.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The queue's attributes could not be read (wrong URL, no permission, endpoint down).
    #[error("cannot read the attributes of queue {queue_url}: {source}")]
    QueueAttributes {
        /// The queue.
        queue_url: String,
        /// Why.
        source: AwsError,
    },
    /// Permanent failures would have nowhere to go.
    #[error("queue {0} has no RedrivePolicy and no --dlq-url/FLEET_DLQ_URL was given: permanent failures would have nowhere to go")]
    NoDeadLetterQueue(String),
    /// The DLQ named by the redrive policy could not be found.
    #[error("cannot resolve the dead-letter queue {arn}: {source}")]
    DeadLetterQueue {
        /// Its ARN, from the redrive policy.
        arn: String,
        /// Why.
        source: AwsError,
    },
}

/// What the engine learned about its queue at start.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// The queue consumed.
    pub queue_url: String,
    /// Its short name, for logs and metrics.
    pub queue_name: String,
    /// Where permanent failures go.
    pub dlq_url: String,
    /// Visibility of a received message.
    pub visibility_timeout: Duration,
    /// The redrive policy's `maxReceiveCount`: the engine dead-letters a message itself (with
    /// its reason) when a retry would exceed it.
    pub max_receive_count: Option<u32>,
    /// A FIFO queue (name ending in `.fifo`): messages are handled in order per group.
    pub fifo: bool,
}

/// What a settled message means for the rest of its FIFO group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Deleted or dead-lettered: the group goes on.
    Next,
    /// Back on the queue, visible again in this many seconds: the rest of the group waits
    /// behind it.
    Hold(i32),
}

/// A worker engine bound to one queue and one handler.
pub struct Engine<H> {
    sqs: aws_sdk_sqs::Client,
    config: EngineConfig,
    handler: Arc<H>,
    metrics: Arc<Metrics>,
}

/// Everything a message task needs; shared by all of them.
struct Shared<H> {
    sqs: aws_sdk_sqs::Client,
    settings: QueueSettings,
    schedule: RetrySchedule,
    handler: Arc<H>,
    metrics: Arc<Metrics>,
    worker: String,
    deletes: mpsc::Sender<String>,
    /// Cancelled when the grace period is over: tasks hand their message back.
    abort: CancellationToken,
    /// How many messages may be worked on at once; the scaler resizes it.
    limit: Limit,
    /// FIFO: the groups being handled in this process, each with the messages waiting their
    /// turn (each holding its permit).
    groups: Mutex<HashMap<String, VecDeque<(Message, OwnedSemaphorePermit)>>>,
    /// When the engine last made progress (for container health checks).
    progress: Arc<crate::health::Progress>,
    /// Stops receives while the handler's dependency is down (see [`breaker`]).
    breaker: Breaker,
}

impl<H: Handler> Engine<H> {
    /// An engine for `config.queue_url`. `metrics` is shared with the handler, which may add
    /// counters of its own.
    pub fn new(
        sqs: aws_sdk_sqs::Client,
        config: EngineConfig,
        handler: H,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            sqs,
            config,
            handler: Arc::new(handler),
            metrics,
        }
    }

    /// Reads the queue's visibility timeout and redrive policy.
    ///
    /// # Errors
    /// When the queue cannot be read, or it has no dead-letter queue.
    pub async fn resolve_queue(&self) -> Result<QueueSettings, EngineError> {
        resolve_queue(&self.sqs, &self.config).await
    }

    /// Runs until `shutdown` is cancelled, then drains: messages in flight get the grace
    /// period to finish, the rest are handed back (visibility 0). Returns the final counters.
    ///
    /// # Errors
    /// Only at start (see [`Self::resolve_queue`]); once running, AWS errors are retried.
    pub async fn run(
        self,
        shutdown: CancellationToken,
    ) -> Result<crate::metrics::Snapshot, EngineError> {
        let settings = self.resolve_queue().await?;
        let policy = self.config.scaler_policy();
        let worker = self
            .config
            .worker_name
            .clone()
            .unwrap_or_else(|| "worker".to_owned());
        info!(
            queue = %settings.queue_name,
            dlq = %settings.dlq_url,
            visibility_secs = settings.visibility_timeout.as_secs(),
            max_receive_count = ?settings.max_receive_count,
            fifo = settings.fifo,
            min_concurrency = policy.min,
            max_in_flight = self.config.max_in_flight,
            "engine started"
        );

        let (deletes, delete_rx) = mpsc::channel(self.config.max_in_flight as usize * 2);
        let deleter = tokio::spawn(
            run_deleter(
                self.sqs.clone(),
                settings.queue_url.clone(),
                delete_rx,
                Duration::from_millis(self.config.delete_linger_ms),
                self.metrics.clone(),
            )
            .instrument(info_span!("deleter", queue = %settings.queue_name)),
        );
        let shared = Arc::new(Shared {
            sqs: self.sqs.clone(),
            schedule: self.config.retry_schedule(),
            handler: self.handler.clone(),
            metrics: self.metrics.clone(),
            worker: worker.clone(),
            deletes,
            abort: CancellationToken::new(),
            limit: Limit::new(policy.min),
            groups: Mutex::default(),
            progress: Arc::default(),
            breaker: Breaker::new(self.config.breaker_policy(), self.metrics.clone()),
            settings,
        });
        let health = self.config.health_file.clone().map(|path| {
            crate::health::spawn_writer(path, shared.progress.clone(), shutdown.clone())
        });
        let scaler = spawn_scaler(&shared, policy, &self.config, shutdown.clone());
        let reporter = spawn_reporter(
            &self.metrics,
            &worker,
            &shared.settings.queue_name,
            self.config.metrics_interval_secs,
            shutdown.clone(),
        );

        let mut tasks = self.receive_loop(&shared, &shutdown).await;

        // Drain: finish what is in flight within the grace period, hand the rest back.
        while tasks.try_join_next().is_some() {}
        let in_flight = tasks.len();
        let grace = Duration::from_secs(self.config.shutdown_grace_secs);
        info!(in_flight, grace_secs = grace.as_secs(), "draining");
        let drained = timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            warn!(
                remaining = tasks.len(),
                "grace period over, handing messages back"
            );
            shared.abort.cancel();
            if timeout(HAND_BACK_DEADLINE, async {
                while tasks.join_next().await.is_some() {}
            })
            .await
            .is_err()
            {
                tasks.abort_all();
            }
        }
        // The deleter ends when the last sender is gone: the tasks', this one, the scaler's.
        scaler.abort();
        let _ = scaler.await;
        drop(shared);
        if timeout(HAND_BACK_DEADLINE, deleter).await.is_err() {
            warn!("deleter did not finish: undeleted messages will be redelivered");
        }
        if let Some(reporter) = reporter {
            reporter.abort();
        }
        if let Some(health) = health {
            health.abort();
        }
        self.metrics
            .emit(&worker, &queue_name(&self.config.queue_url));
        info!("engine stopped");
        Ok(self.metrics.snapshot())
    }

    /// Receives batches until `shutdown`, spawning a task per message.
    async fn receive_loop(
        &self,
        shared: &Arc<Shared<H>>,
        shutdown: &CancellationToken,
    ) -> JoinSet<()> {
        let mut tasks = JoinSet::new();
        let mut errors = receive_backoff();
        loop {
            while tasks.try_join_next().is_some() {}
            // Room for a full batch keeps receives full (fewer calls per message); a pool that
            // slow messages keep partly busy is not waited on for more than BATCH_FILL_WAIT.
            let batch_size = shared.limit.size().clamp(1, SQS_MAX_BATCH as u32);
            let mut batch = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                permit = shared.limit.acquire_batch(batch_size, BATCH_FILL_WAIT) => permit,
            };
            // While the dependency is down, receive nothing (or one probe).
            let (max, probe) = match shared.breaker.admit(Instant::now()) {
                Admit::Full => (batch.num_permits() as u32, false),
                Admit::Probe => (1, true),
                Admit::Wait(until) => {
                    shared.limit.release_many(batch);
                    // Waiting out an outage is what a healthy worker does now.
                    shared.progress.mark();
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled() => break,
                        () = shared.breaker.changed_or(until) => continue,
                    }
                }
            };
            let received = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                // Ask for no more messages than there are permits for.
                received = self.receive(shared, max) => received,
            };
            if probe {
                shared
                    .breaker
                    .probe_received(received.as_ref().map_or(0, Vec::len));
            }
            match received {
                Ok(messages) => {
                    shared.progress.mark();
                    errors = receive_backoff();
                    if shared.settings.fifo {
                        for (group, messages) in in_groups(messages) {
                            let line = messages
                                .into_iter()
                                .map(|m| (m, batch.split(1).expect("a permit per message")));
                            let mut groups = shared.groups.lock().expect("groups lock");
                            if let Some(waiting) = groups.get_mut(&group) {
                                // Already being handled here: join the end of its line.
                                waiting.extend(line);
                            } else {
                                groups.insert(group.clone(), line.collect());
                                tasks.spawn(process_group(shared.clone(), group));
                            }
                        }
                    } else {
                        for message in messages {
                            let permit = batch.split(1).expect("one permit per message");
                            let shared = shared.clone();
                            tasks.spawn(async move {
                                process(&shared, message, permit, None, &mut Instant::now()).await;
                            });
                        }
                    }
                    if batch.num_permits() > 0 {
                        shared.limit.release_many(batch);
                    }
                }
                Err(err) => {
                    shared.limit.release_many(batch);
                    let delay = errors.next().unwrap_or(Duration::from_secs(20));
                    error!(error = %err, retry_in_ms = delay.as_millis() as u64, "receive failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        tasks
    }

    async fn receive(&self, shared: &Shared<H>, max: u32) -> Result<Vec<Message>, AwsError> {
        Metrics::incr(&self.metrics.sqs_calls);
        // FIFO: an id per receive lets the SDK's retry of a lost answer get the same messages
        // back instead of leaving them (and their groups) invisible until the timeout.
        let attempt_id = shared
            .settings
            .fifo
            .then(|| format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)));
        let output = self
            .sqs
            .receive_message()
            .set_receive_request_attempt_id(attempt_id)
            .queue_url(&shared.settings.queue_url)
            .max_number_of_messages(max as i32)
            .wait_time_seconds(self.config.wait_time_secs as i32)
            .set_visibility_timeout(self.config.visibility_timeout_secs.map(|s| s as i32))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .message_system_attribute_names(MessageSystemAttributeName::MessageDeduplicationId)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| classify(&e))?;
        let messages: Vec<Message> = output
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(Message::from_sdk)
            .collect();
        self.metrics
            .received
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        Ok(messages)
    }
}

/// Backoff between failed receives (endpoint down, throttled): 100 ms doubling to 20 s.
fn receive_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(20))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Splits a FIFO batch into its message groups: groups in order of first appearance, each
/// group's messages in the order SQS returned them (their order in the queue).
fn in_groups(messages: Vec<Message>) -> Vec<(String, Vec<Message>)> {
    let mut groups: Vec<(String, Vec<Message>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for message in messages {
        let group = message.group_id.clone().unwrap_or_default();
        match index.get(&group) {
            Some(&i) => groups[i].1.push(message),
            None => {
                index.insert(group.clone(), groups.len());
                groups.push((group, vec![message]));
            }
        }
    }
    groups
}

/// Handles the line of one FIFO group in order, including messages that join it meanwhile.
/// When one is held back for a retry (or handed back at shutdown), the rest of the line goes
/// back behind it unhandled.
async fn process_group<H: Handler>(shared: Arc<Shared<H>>, group: String) {
    // When the visibility of the whole line was last set (at receive, then by heartbeats);
    // messages that joined later were received later, so this is conservative for them.
    let mut extended = Instant::now();
    loop {
        let next = {
            let mut groups = shared.groups.lock().expect("groups lock");
            let line = groups.get_mut(&group).expect("a running group has a line");
            let next = line.pop_front();
            if next.is_none() {
                groups.remove(&group);
            }
            next
        };
        let Some((message, permit)) = next else {
            return;
        };
        let flow = process(&shared, message, permit, Some(&group), &mut extended).await;
        if let Flow::Hold(secs) = flow {
            hold_back(&shared, &group, secs).await;
            return;
        }
    }
}

/// Puts the unhandled rest of a FIFO line back behind a message that becomes visible in
/// `secs`: one second later, so that the held message is received first again. Messages that
/// join the line meanwhile go back too; then the line ends.
async fn hold_back<H: Handler>(shared: &Shared<H>, group: &str, secs: i32) {
    let behind = if secs == 0 { 0 } else { secs + 1 };
    loop {
        let rest: Vec<(Message, OwnedSemaphorePermit)> = {
            let mut groups = shared.groups.lock().expect("groups lock");
            let line = groups.get_mut(group).expect("a running group has a line");
            if line.is_empty() {
                groups.remove(group);
                return;
            }
            line.drain(..).collect()
        };
        let (messages, permits): (Vec<Message>, Vec<OwnedSemaphorePermit>) =
            rest.into_iter().unzip();
        for permit in permits {
            shared.limit.release(permit);
        }
        shared
            .metrics
            .held_back
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        debug!(
            count = messages.len(),
            visible_in_secs = behind,
            "holding back the rest of the group"
        );
        change_visibility_many(shared, &messages, behind).await;
    }
}

/// The messages waiting in a FIFO line (for the heartbeat).
fn waiting_in<H: Handler>(shared: &Shared<H>, group: Option<&String>) -> Vec<Message> {
    let Some(group) = group else {
        return Vec::new();
    };
    let groups = shared.groups.lock().expect("groups lock");
    groups
        .get(group)
        .map(|line| line.iter().map(|(m, _)| m.clone()).collect())
        .unwrap_or_default()
}

/// Handles one message from start to its final queue action. For a FIFO message, `group` is
/// its line: the heartbeat keeps the messages waiting there invisible too, from `extended`,
/// when their visibility was last set.
async fn process<H: Handler>(
    shared: &Arc<Shared<H>>,
    message: Message,
    permit: OwnedSemaphorePermit,
    group: Option<&String>,
    extended: &mut Instant,
) -> Flow {
    let span = info_span!(
        "message",
        message_id = %message.message_id,
        queue = %shared.settings.queue_name,
        receive_count = message.receive_count,
        group = message.group_id.as_deref(),
    );
    async move {
        shared.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let outcome = run_handler(shared, &message, group, extended).await;
        let elapsed = started.elapsed();
        shared.metrics.latency.record(elapsed);
        shared.limit.release(permit);
        shared.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        shared.progress.mark();
        let Some(outcome) = outcome else {
            return Flow::Hold(0);
        };
        let elapsed_ms = elapsed.as_millis() as u64;
        settle(shared, message, outcome, elapsed_ms).await
    }
    .instrument(span)
    .await
}

/// Runs the handler with a visibility heartbeat (over the message and the rest of its group).
/// `None` when the message was handed back because the grace period ran out.
async fn run_handler<H: Handler>(
    shared: &Arc<Shared<H>>,
    message: &Message,
    group: Option<&String>,
    extended: &mut Instant,
) -> Option<Outcome> {
    let handler = shared.handler.clone();
    let owned = message.clone();
    // A task of its own, so that a panic is caught as a JoinError.
    let mut work = tokio::spawn(async move { handler.handle(&owned).await });
    let visibility = shared.settings.visibility_timeout;
    let period = (visibility / 2).max(Duration::from_secs(1));
    let mut heartbeat = tokio::time::interval_at(*extended + period, period);
    loop {
        tokio::select! {
            joined = &mut work => {
                return Some(match joined {
                    Ok(outcome) => outcome,
                    Err(err) if err.is_panic() => Outcome::retry("panic", "the handler panicked"),
                    Err(_) => Outcome::retry("cancelled", "the handler task was cancelled"),
                });
            }
            _ = heartbeat.tick() => {
                let waiting = waiting_in(shared, group);
                debug!(extend_secs = visibility.as_secs(), waiting = waiting.len(), "heartbeat: extending visibility");
                *extended = Instant::now();
                let secs = visibility.as_secs() as i32;
                if waiting.is_empty() {
                    if let Err(err) = change_visibility(shared, message, secs).await {
                        warn!(error = %err, "heartbeat failed; the message may be delivered twice");
                    }
                } else {
                    let line: Vec<Message> = std::iter::once(message.clone()).chain(waiting).collect();
                    change_visibility_many(shared, &line, secs).await;
                }
            }
            () = shared.abort.cancelled() => {
                work.abort();
                if let Err(err) = change_visibility(shared, message, 0).await {
                    warn!(error = %err, "hand-back failed; the message returns after its visibility timeout");
                }
                return None;
            }
        }
    }
}

/// Carries out an outcome on the queue.
async fn settle<H: Handler>(
    shared: &Shared<H>,
    message: Message,
    outcome: Outcome,
    elapsed_ms: u64,
) -> Flow {
    let metrics = &shared.metrics;
    match outcome {
        Outcome::Done | Outcome::Duplicate => {
            let counter = if outcome == Outcome::Done {
                &metrics.succeeded
            } else {
                &metrics.duplicates
            };
            Metrics::incr(counter);
            shared.breaker.record(Signal::Healthy, Instant::now());
            debug!(outcome = outcome.label(), elapsed_ms, "handled");
            // The deleter outlives every task, so the send cannot fail while we run.
            let _ = shared.deletes.send(message.receipt_handle).await;
            Flow::Next
        }
        Outcome::Retry(reason) => {
            let signal = if reason.dependency {
                Signal::Down
            } else {
                Signal::Neutral
            };
            let outage = shared.breaker.record(signal, Instant::now()) && reason.dependency;
            let exhausted = shared
                .settings
                .max_receive_count
                .is_some_and(|max| message.receive_count >= max);
            if exhausted && outage {
                // The outage spent its receives, not the message: keep it going.
                ride_out(shared, message, reason).await
            } else if exhausted {
                let reason = Reason::new(
                    "retries-exhausted",
                    format!("{} receives; last error {reason}", message.receive_count),
                );
                dead_letter(shared, message, reason).await
            } else {
                retry_later(shared, &message, &reason).await
            }
        }
        Outcome::Permanent(reason) => {
            shared.breaker.record(Signal::Neutral, Instant::now());
            dead_letter(shared, message, reason).await
        }
    }
}

/// A message on its last receive failed during a dependency outage: rather than let the outage
/// dead-letter it, put a fresh copy (same body and attributes, a new receive count) back on the
/// queue after a delay, then delete this one. A crash between the two leaves a duplicate, which
/// handlers absorb (they are idempotent), never a loss.
///
/// Not for FIFO queues (a copy would go to the end of its group, behind later commands), nor
/// past the policy's `max_outage` (counted from [`crate::dlq::names::OUTAGE_SINCE`]), nor when
/// the message has no room for that attribute: those are dead-lettered with the reason.
async fn ride_out<H: Handler>(shared: &Shared<H>, message: Message, reason: Reason) -> Flow {
    use crate::dlq::{names::OUTAGE_SINCE, SQS_MAX_MESSAGE_ATTRIBUTES};
    let now = now_ms();
    let since = message
        .attribute(OUTAGE_SINCE)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(now);
    let max_outage = shared.breaker.policy().max_outage;
    let mut attributes = message.attributes.clone();
    attributes.insert(OUTAGE_SINCE.to_owned(), crate::dlq::number(since));
    let refused = if shared.settings.fifo {
        Some("a FIFO message cannot be put back without losing its place in its group")
    } else if now.saturating_sub(since) > max_outage.as_millis() as u64 {
        Some("the outage outlasted FLEET_OUTAGE_MAX_SECS")
    } else if attributes.len() > SQS_MAX_MESSAGE_ATTRIBUTES {
        Some("no room for the outage attribute")
    } else {
        None
    };
    if let Some(why) = refused {
        let reason = Reason::new(
            "retries-exhausted",
            format!(
                "{} receives during a dependency outage ({why}); last error {reason}",
                message.receive_count
            ),
        );
        return dead_letter(shared, message, reason).await;
    }
    // SQS delays a message by at most 15 minutes.
    let delay = shared
        .schedule
        .visibility_secs(message.receive_count, fastrand::f64())
        .min(900);
    Metrics::incr(&shared.metrics.sqs_calls);
    let sent = shared
        .sqs
        .send_message()
        .queue_url(&shared.settings.queue_url)
        .message_body(&message.body)
        .set_message_attributes(Some(attributes))
        .delay_seconds(delay)
        .send()
        .await;
    match sent {
        Ok(_) => {
            Metrics::incr(&shared.metrics.requeued);
            warn!(
                error_kind = %reason.kind,
                outage_secs = now.saturating_sub(since) / 1000,
                back_in_secs = delay,
                "last receive failed during a dependency outage: a fresh copy goes back on the queue"
            );
            let _ = shared.deletes.send(message.receipt_handle).await;
            Flow::Next
        }
        Err(err) => {
            let err = classify(&err);
            let reason = Reason::new(
                "retries-exhausted",
                format!(
                    "{} receives during a dependency outage; cannot put it back ({err}); last error {reason}",
                    message.receive_count
                ),
            );
            dead_letter(shared, message, reason).await
        }
    }
}

/// Puts the message back with a backoff delay; returns the flow for the rest of its group.
async fn retry_later<H: Handler>(shared: &Shared<H>, message: &Message, reason: &Reason) -> Flow {
    Metrics::incr(&shared.metrics.retried);
    let secs = shared
        .schedule
        .visibility_secs(message.receive_count, fastrand::f64());
    warn!(error_kind = %reason.kind, error = %reason.message, retry_in_secs = secs, "transient failure, retrying later");
    if let Err(err) = change_visibility(shared, message, secs).await {
        warn!(error = %err, "cannot set the retry delay; the message returns after its visibility timeout");
        return Flow::Hold(shared.settings.visibility_timeout.as_secs() as i32);
    }
    Flow::Hold(secs)
}

/// Sends a copy to the DLQ with the reason, then deletes the original. A crash between the two
/// leaves a duplicate in the DLQ, never a loss. If the DLQ send fails, the message is retried.
async fn dead_letter<H: Handler>(shared: &Shared<H>, message: Message, reason: Reason) -> Flow {
    error!(error_kind = %reason.kind, error = %reason.message, "permanent failure, dead-lettering");
    Metrics::incr(&shared.metrics.sqs_calls);
    let attributes = crate::dlq::dead_letter_attributes(
        &message,
        &reason,
        &shared.worker,
        &shared.settings.queue_url,
        now_ms(),
    );
    let sent = shared
        .sqs
        .send_message()
        .queue_url(&shared.settings.dlq_url)
        .message_body(&message.body)
        .set_message_attributes(Some(attributes))
        // A FIFO DLQ needs a group (the original one: order is kept there too) and a
        // deduplication id (the message id: a crash before the delete sends no second copy
        // within SQS's 5-minute window).
        .set_message_group_id(message.group_id.clone())
        .set_message_deduplication_id(shared.settings.fifo.then(|| message.message_id.clone()))
        .send()
        .await;
    match sent {
        Ok(_) => {
            Metrics::incr(&shared.metrics.dead_lettered);
            let _ = shared.deletes.send(message.receipt_handle).await;
            Flow::Next
        }
        Err(err) => {
            let err = classify(&err);
            error!(error = %err, "cannot send to the DLQ; retrying the message later");
            retry_later(
                shared,
                &message,
                &Reason::new("dlq-unavailable", err.to_string()),
            )
            .await
        }
    }
}

async fn change_visibility<H: Handler>(
    shared: &Shared<H>,
    message: &Message,
    secs: i32,
) -> Result<(), AwsError> {
    Metrics::incr(&shared.metrics.sqs_calls);
    shared
        .sqs
        .change_message_visibility()
        .queue_url(&shared.settings.queue_url)
        .receipt_handle(&message.receipt_handle)
        .visibility_timeout(secs)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| classify(&e))
}

/// Sets the visibility of messages, 10 per call; failures are logged (the messages then return
/// after their current timeout).
async fn change_visibility_many<H: Handler>(shared: &Shared<H>, messages: &[Message], secs: i32) {
    for chunk in messages.chunks(SQS_MAX_BATCH) {
        Metrics::incr(&shared.metrics.sqs_calls);
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, m)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(&m.receipt_handle)
                    .visibility_timeout(secs)
                    .build()
                    .expect("id and receipt handle are set")
            })
            .collect();
        match shared
            .sqs
            .change_message_visibility_batch()
            .queue_url(&shared.settings.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(output) => {
                for failed in &output.failed {
                    warn!(code = %failed.code, entry = %failed.id, "cannot change a message's visibility; it returns after its current timeout");
                }
            }
            Err(err) => {
                warn!(error = %classify(&err), count = chunk.len(), "cannot change the visibility of messages; they return after their current timeout");
            }
        }
    }
}

/// Collects receipt handles into `DeleteMessageBatch` calls of up to 10, waiting at most
/// `linger` for a batch to fill. Ends when every sender is gone, after a last flush.
async fn run_deleter(
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    mut receipts: mpsc::Receiver<String>,
    linger: Duration,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(SQS_MAX_BATCH);
    while let Some(first) = receipts.recv().await {
        batch.push(first);
        let deadline = Instant::now() + linger;
        while batch.len() < SQS_MAX_BATCH {
            match tokio::time::timeout_at(deadline, receipts.recv()).await {
                Ok(Some(receipt)) => batch.push(receipt),
                Ok(None) | Err(_) => break,
            }
        }
        delete_batch(&sqs, &queue_url, std::mem::take(&mut batch), &metrics).await;
    }
}

/// Deletes up to 10 messages, retrying failed entries with backoff. What still fails is logged:
/// those messages come back and are handled again (idempotently).
async fn delete_batch(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    mut pending: Vec<String>,
    metrics: &Metrics,
) {
    let mut delays = crate::queue::entry_retry_backoff();
    loop {
        Metrics::incr(&metrics.sqs_calls);
        let entries: Vec<_> = pending
            .iter()
            .enumerate()
            .map(|(i, handle)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(handle)
                    .build()
                    .expect("id and receipt handle are set")
            })
            .collect();
        let result = sqs
            .delete_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await;
        let retry: Vec<String> = match result {
            Ok(output) => output
                .failed
                .iter()
                .filter_map(|f| {
                    let handle = f.id.parse::<usize>().ok().and_then(|i| pending.get(i))?;
                    if f.sender_fault {
                        warn!(code = %f.code, "delete refused; the message will be redelivered");
                        None
                    } else {
                        Some(handle.clone())
                    }
                })
                .collect(),
            Err(err) => {
                let err = classify(&err);
                if err.is_retryable() {
                    warn!(error = %err, "DeleteMessageBatch failed, retrying");
                    pending
                } else {
                    error!(error = %err, count = pending.len(), "DeleteMessageBatch refused; these messages will be redelivered");
                    Vec::new()
                }
            }
        };
        if retry.is_empty() {
            return;
        }
        let Some(delay) = delays.next() else {
            error!(
                count = retry.len(),
                "giving up on deletes; these messages will be redelivered"
            );
            return;
        };
        pending = retry;
        tokio::time::sleep(delay).await;
    }
}

/// Looks at the backlog every interval and resizes the concurrency limit (see [`crate::scaler`]).
/// With min = max there is nothing to decide and no task.
fn spawn_scaler<H: Handler>(
    shared: &Arc<Shared<H>>,
    policy: ScalerPolicy,
    config: &EngineConfig,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    shared
        .metrics
        .concurrency
        .store(u64::from(policy.min), Ordering::Relaxed);
    if policy.min >= policy.max {
        return tokio::spawn(async {});
    }
    let shared = shared.clone();
    let period = Duration::from_secs(config.scaler_interval_secs);
    tokio::spawn(async move {
        let mut scaler = Scaler::new(policy.clone());
        let mut ticker = tokio::time::interval(period);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            Metrics::incr(&shared.metrics.sqs_calls);
            let backlog = match crate::queue::counts(&shared.sqs, &shared.settings.queue_url).await
            {
                Ok(counts) => counts.backlog(),
                Err(err) => {
                    warn!(error = %err, "scaler cannot read the backlog; keeping concurrency");
                    continue;
                }
            };
            if let Some(d) = scaler.observe(backlog, std::time::Instant::now()) {
                shared.limit.resize(d.to);
                shared
                    .metrics
                    .concurrency
                    .store(u64::from(d.to), Ordering::Relaxed);
                info!(
                    from = d.from,
                    to = d.to,
                    backlog = d.backlog,
                    processes = policy.processes,
                    target_backlog_per_unit = policy.target_backlog_per_unit,
                    "scaler decision"
                );
            }
        }
    })
}

fn spawn_reporter(
    metrics: &Arc<Metrics>,
    worker: &str,
    queue: &str,
    interval_secs: u64,
    shutdown: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    if interval_secs == 0 {
        return None;
    }
    let (metrics, worker, queue) = (metrics.clone(), worker.to_owned(), queue.to_owned());
    let period = Duration::from_secs(interval_secs);
    Some(tokio::spawn(async move {
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => metrics.emit(&worker, &queue),
            }
        }
    }))
}

async fn resolve_queue(
    sqs: &aws_sdk_sqs::Client,
    config: &EngineConfig,
) -> Result<QueueSettings, EngineError> {
    let queue_url = config.queue_url.clone();
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(QueueAttributeName::VisibilityTimeout)
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .map_err(|e| EngineError::QueueAttributes {
            queue_url: queue_url.clone(),
            source: classify(&e),
        })?
        .attributes
        .unwrap_or_default();
    let queue_visibility = attributes
        .get(&QueueAttributeName::VisibilityTimeout)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(30);
    let visibility_timeout = Duration::from_secs(
        config
            .visibility_timeout_secs
            .map_or(queue_visibility, u64::from),
    );
    let redrive = attributes
        .get(&QueueAttributeName::RedrivePolicy)
        .and_then(|p| serde_json::from_str::<RedrivePolicy>(p).ok());
    let max_receive_count = redrive.as_ref().map(|r| r.max_receive_count);
    let dlq_url = match (&config.dlq_url, redrive) {
        (Some(url), _) => url.clone(),
        (None, Some(policy)) => dlq_url_from_arn(sqs, &policy.dead_letter_target_arn).await?,
        (None, None) => return Err(EngineError::NoDeadLetterQueue(queue_url)),
    };
    Ok(QueueSettings {
        fifo: queue_name(&queue_url).ends_with(".fifo"),
        queue_name: queue_name(&queue_url),
        queue_url,
        dlq_url,
        visibility_timeout,
        max_receive_count,
    })
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RedrivePolicy {
    dead_letter_target_arn: String,
    #[serde(deserialize_with = "number_or_string")]
    max_receive_count: u32,
}

/// SQS returns `maxReceiveCount` as a number or a string depending on who set it.
fn number_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    use serde::de::Error;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n
            .as_u64()
            .map(|n| n as u32)
            .ok_or_else(|| D::Error::custom("not a count")),
        serde_json::Value::String(s) => s.parse().map_err(D::Error::custom),
        _ => Err(D::Error::custom("not a count")),
    }
}
use serde::Deserialize as _;

async fn dlq_url_from_arn(sqs: &aws_sdk_sqs::Client, arn: &str) -> Result<String, EngineError> {
    // arn:aws:sqs:REGION:ACCOUNT:NAME
    let mut parts = arn.rsplitn(3, ':');
    let name = parts.next().unwrap_or_default();
    let account = parts.next().unwrap_or_default();
    sqs.get_queue_url()
        .queue_name(name)
        .queue_owner_aws_account_id(account)
        .send()
        .await
        .map_err(|e| EngineError::DeadLetterQueue {
            arn: arn.to_owned(),
            source: classify(&e),
        })?
        .queue_url
        .ok_or_else(|| EngineError::DeadLetterQueue {
            arn: arn.to_owned(),
            source: AwsError {
                class: crate::aws_error::ErrorClass::Permanent,
                code: "no-url".into(),
                message: "GetQueueUrl returned no URL".into(),
            },
        })
}

/// The last path segment of a queue URL.
pub fn queue_name(queue_url: &str) -> String {
    queue_url.rsplit('/').next().unwrap_or(queue_url).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_group(id: &str, group: &str) -> Message {
        Message {
            message_id: id.into(),
            group_id: Some(group.into()),
            ..Message::default()
        }
    }

    #[test]
    fn a_fifo_batch_splits_into_groups_keeping_order() {
        let batch = ["a1", "b1", "a2", "c1", "b2", "a3"]
            .map(|id| in_group(id, &id[..1]))
            .to_vec();
        let groups: Vec<Vec<String>> = in_groups(batch)
            .into_iter()
            .map(|(_, g)| g.into_iter().map(|m| m.message_id).collect())
            .collect();
        assert_eq!(
            groups,
            vec![vec!["a1", "a2", "a3"], vec!["b1", "b2"], vec!["c1"]]
        );
    }

    #[test]
    fn redrive_policy_count_parses_as_number_or_string() {
        for text in [
            r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:1:q-dlq","maxReceiveCount":3}"#,
            r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:1:q-dlq","maxReceiveCount":"3"}"#,
        ] {
            let p: RedrivePolicy = serde_json::from_str(text).unwrap();
            assert_eq!(p.max_receive_count, 3);
        }
    }

    #[test]
    fn queue_name_is_the_last_segment() {
        assert_eq!(
            queue_name("http://127.0.0.1:4566/000000000000/payments"),
            "payments"
        );
    }
}
