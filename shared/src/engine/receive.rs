//! The receive loop: long polls for as many messages as there is room for (or one probe, or
//! none while the breaker is open), and a task per message or per FIFO group line.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::MessageSystemAttributeName;
use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::error;

use super::breaker::Admit;
use super::fifo::{in_groups, process_group};
use super::handle::process;
use super::{Delivery, Engine, Shared, BATCH_FILL_WAIT};
use crate::aws_error::{classify, AwsError};
use crate::config::SQS_MAX_BATCH;
use crate::message::{Handler, Message};
use crate::metrics::Metrics;

impl<H: Handler> Engine<H> {
    /// Receives batches until `shutdown`, spawning a task per message.
    pub(super) async fn receive_loop(
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
            let admit = shared.breaker.admit(Instant::now());
            let (max, probe) = match admit {
                Admit::Full => (batch.num_permits() as u32, false),
                Admit::Probe => (1, true),
                Admit::Paused(until) | Admit::ProbeOut(until) => {
                    shared.limit.release_many(batch);
                    if matches!(admit, Admit::Paused(_)) {
                        // Waiting out an outage is what a healthy worker does now; waiting on
                        // a probe is not (its deadline bounds that).
                        shared.progress.mark();
                    }
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
                Ok(deliveries) => {
                    shared.progress.mark();
                    errors = receive_backoff();
                    if shared.settings.fifo {
                        for (group, messages) in in_groups(deliveries) {
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
                        for delivery in deliveries {
                            let permit = batch.split(1).expect("one permit per message");
                            let shared = shared.clone();
                            tasks.spawn(async move {
                                process(&shared, delivery, permit, None, &mut Instant::now(), None)
                                    .await;
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

    async fn receive(&self, shared: &Shared<H>, max: u32) -> Result<Vec<Delivery>, AwsError> {
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
            // An X-Ray trace the message was sent in goes on with it (on its span).
            .message_system_attribute_names(MessageSystemAttributeName::AwsTraceHeader)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| classify(&e))?;
        let messages: Vec<Delivery> = output
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|mut message| {
                let trace_header = message
                    .attributes
                    .as_mut()
                    .and_then(|system| system.remove(&MessageSystemAttributeName::AwsTraceHeader));
                let message = Message::from_sdk(message)?;
                Some(Delivery {
                    message,
                    trace_header,
                })
            })
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
