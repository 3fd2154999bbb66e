//! The message a handler sees, and the handler trait itself.

use std::collections::HashMap;
use std::future::Future;

use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName};

use crate::outcome::Outcome;

/// The gateway's attributes naming the caller (owned by [`crate::gateway`]).
pub use crate::gateway::{ATTR_API_KEY_ID, ATTR_OWNER_ID};

/// One SQS message, as received.
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// SQS message id (stable across redeliveries).
    pub message_id: String,
    /// Handle for this receive; changes on each delivery.
    pub receipt_handle: String,
    /// The body, exactly as sent.
    pub body: String,
    /// How many times SQS has delivered it, this delivery included (1 for the first).
    pub receive_count: u32,
    /// When it was first sent, in ms since the epoch (from `SentTimestamp`).
    pub sent_at_ms: Option<u64>,
    /// Its message attributes, kept whole so that a dead-lettered copy keeps them. A copy
    /// brought back from the DLQ (by any redrive) has its originals restored here and its
    /// reason dropped (see [`crate::dlq`]).
    pub attributes: HashMap<String, MessageAttributeValue>,
    /// FIFO queues: the message group (messages of one group are handled in order).
    pub group_id: Option<String>,
    /// FIFO queues: the deduplication id it was sent with.
    pub deduplication_id: Option<String>,
    /// A dead-lettered copy brought back by a redrive (it carried a reason when received).
    pub redriven: bool,
    /// The id of the message as first sent, when it was dead-lettered and brought back since
    /// (see [`Self::original_id`]).
    pub first_message_id: Option<String>,
}

impl Message {
    /// Converts an SDK message; `None` when it lacks an id or a receipt handle (never seen
    /// from SQS, but the SDK types make both optional).
    pub fn from_sdk(message: aws_sdk_sqs::types::Message) -> Option<Self> {
        let mut system = message.attributes.unwrap_or_default();
        let number = |name: MessageSystemAttributeName| {
            system.get(&name).and_then(|v| v.parse::<u64>().ok())
        };
        let received = message.message_attributes.unwrap_or_default();
        // A copy moved back as it is carries its reason; fleetctl's batch redrive sends the
        // originals with the original message id.
        let redriven = received.contains_key(crate::dlq::names::KIND)
            || received.contains_key(crate::dlq::names::MESSAGE_ID);
        let first_message_id = received
            .get(crate::dlq::names::MESSAGE_ID)
            .and_then(|v| v.string_value())
            .map(str::to_owned);
        Some(Self {
            redriven,
            first_message_id,
            receive_count: number(MessageSystemAttributeName::ApproximateReceiveCount)
                .map_or(1, |n| n.min(u64::from(u32::MAX)) as u32),
            sent_at_ms: number(MessageSystemAttributeName::SentTimestamp),
            message_id: message.message_id?,
            receipt_handle: message.receipt_handle?,
            body: message.body.unwrap_or_default(),
            attributes: crate::dlq::restore_originals(received),
            group_id: system.remove(&MessageSystemAttributeName::MessageGroupId),
            deduplication_id: system.remove(&MessageSystemAttributeName::MessageDeduplicationId),
        })
    }

    /// The id of the message as first sent: the same across dead-letterings and redrives.
    pub fn original_id(&self) -> &str {
        self.first_message_id.as_deref().unwrap_or(&self.message_id)
    }

    /// The caller's owner id, as the gateway sent it (`ownerId`; `apiKeyId` for a message
    /// queued before the gateway sent owners, when the key id was the identity); `None` for a
    /// message that did not come through the gateway. See docs/security.md.
    pub fn owner(&self) -> Option<&str> {
        crate::gateway::Envelope::owner_of(self)
    }

    /// What the gateway said about this message's request ([`crate::gateway::Envelope`]).
    pub fn envelope(&self) -> crate::gateway::Envelope<'_> {
        crate::gateway::Envelope::of(self)
    }

    /// A string (or number) message attribute by name.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.get(name)?.string_value()
    }
}

/// The business logic of a worker: handles one message and says what became of it.
///
/// Handlers must be idempotent: SQS delivers at least once, and the engine may hand a
/// message back (shutdown, crash) after the work was done.
pub trait Handler: Send + Sync + 'static {
    /// Handles one message. Panics are caught and treated as a retry.
    fn handle(&self, message: &Message) -> impl Future<Output = Outcome> + Send;
}

/// A shared handler is a handler (lets a caller keep a handle on its state).
impl<H: Handler> Handler for std::sync::Arc<H> {
    fn handle(&self, message: &Message) -> impl Future<Output = Outcome> + Send {
        H::handle(self, message)
    }
}
