//! Dead-lettering: a copy with the reason (see [`crate::dlq`]) to the DLQ, then the delete.

use tracing::{error, warn};

use super::groups::{self, GroupStop, LineStop};
use super::settle::retry_later;
use super::{Flow, Shared};
use crate::aws_error::classify;
use crate::message::{Handler, Message};
use crate::metrics::Metrics;
use crate::outcome::Reason;
use crate::util::now_ms;

/// Sends a copy to the DLQ with the reason, then deletes the original. A crash between the two
/// leaves a duplicate in the DLQ, never a loss. If the DLQ send fails, the message is retried.
///
/// In a FIFO line with a group store (`line`): a reason that stops the group
/// ([`groups::STOPS_GROUP`]) is recorded first (a failure to record it is a retry: the group
/// must not go on unrecorded); any other reason, for a message of a stopped group, takes the
/// message out of the group's parked ones once its copy is in the DLQ.
pub(super) async fn dead_letter<H: Handler>(
    shared: &Shared<H>,
    message: Message,
    reason: Reason,
    mut line: Option<&mut LineStop>,
) -> Flow {
    error!(error_kind = %reason.kind, error = %reason.message, "permanent failure, dead-lettering");
    let stops = groups::STOPS_GROUP.contains(&&*reason.kind);
    let original = message.original_id().to_owned();
    if let (Some(store), Some(line), true) = (&shared.group_store, line.as_deref_mut(), stops) {
        if let Err(err) = store.stop(&line.key, &original).await {
            error!(error = %err, "cannot record the stopped group; retrying the message later");
            let reason = Reason::dependency("group-store-unavailable", err.to_string());
            return retry_later(shared, &message, &reason).await;
        }
        warn!(head = %original, "group stopped behind the dead-lettered message");
        let parked = line.stop.as_ref().map_or(0, |s| s.parked) + 1;
        line.stop = Some(GroupStop {
            head: Some(original.clone()),
            parked,
        });
    }
    let flow = send_to_dlq(shared, message, reason).await;
    if let (Some(store), Some(line), false, Flow::DeadLettered) =
        (&shared.group_store, line, stops, flow)
    {
        if line.stop.is_some() {
            match store.applied(&line.key, &original).await {
                Ok(now) => line.stop = now,
                // It stays counted: the group stays stopped until an operator releases it,
                // never flows too early.
                Err(err) => {
                    error!(error = %err, "cannot take a dead-lettered message out of its stopped group")
                }
            }
        }
    }
    flow
}

/// The copy and the delete of [`dead_letter`], with no group bookkeeping (parking uses it).
pub(super) async fn send_to_dlq<H: Handler>(
    shared: &Shared<H>,
    message: Message,
    reason: Reason,
) -> Flow {
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
            Flow::DeadLettered
        }
        Err(err) => {
            let err = classify(&err);
            error!(error = %err, "cannot send to the DLQ; retrying the message later");
            retry_later(
                shared,
                &message,
                &Reason::new(crate::kind::DLQ_UNAVAILABLE, err.to_string()),
            )
            .await
        }
    }
}
