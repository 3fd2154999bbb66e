//! Dead-lettering: a copy with the reason (see [`crate::dlq`]) to the DLQ, then the delete.

use tracing::error;

use super::settle::retry_later;
use super::{Flow, Shared};
use crate::aws_error::classify;
use crate::message::{Handler, Message};
use crate::metrics::Metrics;
use crate::outcome::Reason;
use crate::util::now_ms;

/// Sends a copy to the DLQ with the reason, then deletes the original. A crash between the two
/// leaves a duplicate in the DLQ, never a loss. If the DLQ send fails, the message is retried.
pub(super) async fn dead_letter<H: Handler>(
    shared: &Shared<H>,
    message: Message,
    reason: Reason,
) -> Flow {
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
