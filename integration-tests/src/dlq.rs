//! Dead-letter queues: messages put there the way the engine dead-letters them, and the reason
//! a dead-lettered copy carries (its `fleet.*` attributes, named by [`fleet::dlq::names`]).

use anyhow::Result;
use aws_sdk_sqs::types::Message;
use fleet::dlq::names;

use crate::{send_payments_with, Stack};

/// Puts payment messages straight into the payments DLQ the way the engine dead-letters them,
/// with reason `kind` (one of [`fleet::kind`]).
pub async fn dead_letter_payments(
    stack: &Stack,
    kind: &str,
    payments: &[(String, String)],
) -> Result<()> {
    let queue = stack.queue("payments").clone();
    let reason = [
        (names::KIND, kind),
        (names::MESSAGE, "test"),
        (names::WORKER, "payments-worker"),
        (names::SOURCE_QUEUE, queue.url.as_str()),
    ];
    send_payments_with(&stack.sqs, &queue.dlq_url, payments, &reason).await
}

/// A string attribute of a message (of a dead-lettered copy: one of [`fleet::dlq::names`]),
/// if it has it.
pub fn string_attribute<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
    message
        .message_attributes()?
        .get(name)
        .and_then(|v| v.string_value())
}

/// The kind a dead-lettered copy was dead-lettered with ([`names::KIND`]); `None` for a message
/// the queue's redrive policy moved.
pub fn dead_letter_kind(message: &Message) -> Option<&str> {
    string_attribute(message, names::KIND)
}
