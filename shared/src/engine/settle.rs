//! Settling: each outcome becomes one queue action (delete, retry later through the visibility
//! timeout, ride out an outage, dead-letter).

use aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::breaker::Signal;
use super::dead_letter::dead_letter;
use super::groups::LineStop;
use super::{Flow, Shared};
use crate::aws_error::{classify, AwsError};
use crate::config::SQS_MAX_BATCH;
use crate::message::{Handler, Message};
use crate::metrics::Metrics;
use crate::outcome::{Outcome, Reason};
use crate::util::now_ms;

/// Carries out an outcome on the queue.
pub(super) async fn settle<H: Handler>(
    shared: &Shared<H>,
    message: Message,
    outcome: Outcome,
    elapsed_ms: u64,
    line: Option<&mut LineStop>,
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
            if let (Some(store), Some(line)) = (&shared.group_store, line) {
                if line.stop.is_some() {
                    // Recorded before the delete: a crash in between leaves the message to be
                    // handled again (a duplicate), never a stop that waits for it for ever.
                    match store.applied(&line.key, message.original_id()).await {
                        Ok(now) => line.stop = now,
                        Err(err) => {
                            let reason =
                                Reason::dependency("group-store-unavailable", err.to_string());
                            return retry_later(shared, &message, &reason).await;
                        }
                    }
                }
            }
            // The deleter outlives every task, so the send cannot fail while we run.
            let _ = shared.deletes.send(message.receipt_handle).await;
            Flow::Deleted
        }
        Outcome::Retry(reason) => {
            let signal = if reason.dependency {
                Signal::Down
            } else {
                Signal::Neutral
            };
            let now = Instant::now();
            // An outage spent this message's earlier receives if it is going on or just ended.
            let open = shared.breaker.record(signal, now);
            let outage = reason.dependency && (open || shared.breaker.outage_recent(now));
            // FIFO: receives the message spent held back behind its group's head are not its own.
            let own = message
                .receive_count
                .saturating_sub(shared.waited(&message.message_id));
            let exhausted = shared
                .settings
                .max_receive_count
                .is_some_and(|max| own >= max);
            if exhausted && outage {
                // The outage spent its receives, not the message: keep it going.
                ride_out(shared, message, reason, line).await
            } else if exhausted {
                let reason = Reason::new(
                    crate::kind::RETRIES_EXHAUSTED,
                    format!(
                        "{own} receives of its own ({} in all); last error {reason}",
                        message.receive_count
                    ),
                );
                dead_letter(shared, message, reason, line).await
            } else {
                retry_later(shared, &message, &reason).await
            }
        }
        Outcome::Permanent(reason) => {
            shared.breaker.record(Signal::Neutral, Instant::now());
            dead_letter(shared, message, reason, line).await
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
async fn ride_out<H: Handler>(
    shared: &Shared<H>,
    message: Message,
    reason: Reason,
    line: Option<&mut LineStop>,
) -> Flow {
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
            crate::kind::RETRIES_EXHAUSTED,
            format!(
                "{} receives during a dependency outage ({why}); last error {reason}",
                message.receive_count
            ),
        );
        return dead_letter(shared, message, reason, line).await;
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
            Flow::Deleted
        }
        Err(err) => {
            let err = classify(&err);
            let reason = Reason::new(
                crate::kind::RETRIES_EXHAUSTED,
                format!(
                    "{} receives during a dependency outage; cannot put it back ({err}); last error {reason}",
                    message.receive_count
                ),
            );
            dead_letter(shared, message, reason, line).await
        }
    }
}

/// Puts the message back with a backoff delay; returns the flow for the rest of its group.
pub(super) async fn retry_later<H: Handler>(
    shared: &Shared<H>,
    message: &Message,
    reason: &Reason,
) -> Flow {
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

pub(super) async fn change_visibility<H: Handler>(
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
pub(super) async fn change_visibility_many<H: Handler>(
    shared: &Shared<H>,
    messages: &[Message],
    secs: i32,
) {
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
