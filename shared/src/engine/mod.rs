//! The engine: long-poll a queue, run the handler on each message with a bounded number in
//! flight, then delete, retry later or dead-letter according to its [`crate::Outcome`].
//!
//! ```text
//!  breaker admits? ─► ReceiveMessage(≤10, 20 s) ─► task per message ─► Handler::handle ─► Outcome
//!        ▲               (semaphore: scaler's limit)   │ heartbeat                        │
//!        └──────────── permits back ◄──────────────────┘ ChangeMessageVisibility          │
//!   Done/Duplicate ─► deleter ─► DeleteMessageBatch ◄──────────────────────────────────────┤
//!   Retry ─► ChangeMessageVisibility(backoff)   (last receive during an outage: fresh copy)┤
//!   Permanent / out of receives ─► SendMessage(DLQ, reason) ─► deleter ◄───────────────────┘
//! ```
//!
//! ## Rooms
//! One mechanism a file: `receive.rs` (the loop, and what the breaker admits), `fifo.rs` (group
//! lines and hold-back), `handle.rs` (one message: handler, heartbeat, hand-back), `settle.rs`
//! (outcome → queue action, riding out an outage), `dead_letter.rs`, `deleter.rs` (batched
//! deletes), `breaker.rs` (the circuit breaker), `groups.rs` (FIFO groups stopped behind a
//! dead-lettered head), `background.rs` (scaler and reporter) and
//! `resolve.rs` (the queue's settings at start). This file holds the types they share and
//! [`Engine::run`], which wires them together and drains on shutdown.
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
//! SQS's own redrive does, unless a group store is configured (`FLEET_GROUP_TABLE`): then the
//! group stops behind it until a redrive (`groups.rs`). Its copy keeps its `MessageGroupId`.
//! Receives a message spent held back behind its group's head do not count against it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

mod background;
mod breaker;
mod dead_letter;
mod deleter;
mod fifo;
pub mod groups;
mod handle;
mod receive;
mod resolve;
mod settle;

use breaker::Breaker;
pub use breaker::BreakerPolicy;
pub use resolve::queue_name;

use crate::aws_error::AwsError;
use crate::backoff::RetrySchedule;
use crate::config::EngineConfig;
use crate::message::{Handler, Message};
use crate::metrics::Metrics;
use crate::scaler::Limit;

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

/// A received message, and what the engine keeps beside it for its span.
struct Delivery {
    message: Message,
    /// SQS's `AWSTraceHeader` system attribute (the X-Ray trace it was sent in), when present.
    trace_header: Option<String>,
}

/// What a settled message means for the rest of its FIFO group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Done (deleted, or put back as a fresh copy): the group goes on.
    Deleted,
    /// Dead-lettered: the group goes on, or stops behind it (see `groups.rs`).
    DeadLettered,
    /// Back on the queue, visible again in this many seconds: the rest of the group waits
    /// behind it.
    Hold(i32),
}

/// Messages held back whose count is kept before the count is reset (bounds the memory of a
/// process that holds back messages which never come back to it).
const WAITED_CAPACITY: usize = 100_000;

impl<H> Shared<H> {
    /// Receives `message_id` spent held back behind its group's head in this process.
    fn waited(&self, message_id: &str) -> u32 {
        let waited = self.waited.lock().expect("waited lock");
        waited.get(message_id).copied().unwrap_or(0)
    }

    /// The held-back messages will be received once more for nothing of their own.
    fn waited_once_more(&self, messages: &[Message]) {
        let mut waited = self.waited.lock().expect("waited lock");
        if waited.len() > WAITED_CAPACITY {
            waited.clear();
        }
        for message in messages {
            *waited.entry(message.message_id.clone()).or_default() += 1;
        }
    }

    /// A message settled for good: forget its count.
    fn settled(&self, message_id: &str) {
        self.waited.lock().expect("waited lock").remove(message_id);
    }
}

/// A worker engine bound to one queue and one handler.
pub struct Engine<H> {
    sqs: aws_sdk_sqs::Client,
    config: EngineConfig,
    handler: Arc<H>,
    metrics: Arc<Metrics>,
    /// FIFO queues: where stopped groups are recorded (none: a dead-lettered message lets its
    /// group go on).
    group_store: Option<Arc<dyn groups::GroupStore>>,
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
    groups: Mutex<HashMap<String, VecDeque<(Delivery, OwnedSemaphorePermit)>>>,
    /// When the engine last made progress (for container health checks).
    progress: Arc<crate::health::Progress>,
    /// FIFO queues: stopped groups (see `groups.rs`).
    group_store: Option<Arc<dyn groups::GroupStore>>,
    /// FIFO: how many of each message's receives were spent held back behind its group's
    /// head, by message id (this process's count; a message that moves to another process
    /// starts again there, which only makes the count conservative).
    waited: Mutex<HashMap<String, u32>>,
    /// Stops receives while the handler's dependency is down (see `breaker.rs`).
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
            group_store: None,
        }
    }

    /// On a FIFO queue, stop a group behind its dead-lettered message, recorded in `store`
    /// (see `groups.rs`), instead of letting the rest of the group go on.
    #[must_use]
    pub fn with_group_store(mut self, store: Arc<dyn groups::GroupStore>) -> Self {
        self.group_store = Some(store);
        self
    }

    /// Reads the queue's visibility timeout and redrive policy.
    ///
    /// # Errors
    /// When the queue cannot be read, or it has no dead-letter queue.
    pub async fn resolve_queue(&self) -> Result<QueueSettings, EngineError> {
        resolve::resolve_queue(&self.sqs, &self.config).await
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
            max_concurrency = self.config.max_concurrency,
            "engine started"
        );

        let (deletes, delete_rx) = mpsc::channel(self.config.max_concurrency as usize * 2);
        let deleter = tokio::spawn(
            deleter::run_deleter(
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
            group_store: self.group_store.clone(),
            waited: Mutex::default(),
            breaker: Breaker::new(self.config.breaker_policy(), self.metrics.clone()),
            settings,
        });
        let health = self.config.health_file.clone().map(|path| {
            crate::health::spawn_writer(path, shared.progress.clone(), shutdown.clone())
        });
        let scaler = background::spawn_scaler(&shared, policy, &self.config, shutdown.clone());
        let reporter = background::spawn_reporter(
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
}
