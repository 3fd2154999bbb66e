//! Reading a queue's message counts: the engine's scaler, `fleetctl` and the tests all need
//! the same `GetQueueAttributes` call.

use aws_sdk_sqs::types::QueueAttributeName;
use serde::Serialize;

use crate::aws_error::{classify, AwsError};

/// Visible, in-flight and delayed messages of one queue (SQS's approximate counts).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct QueueCounts {
    /// Ready to be received (`ApproximateNumberOfMessages`).
    pub visible: u64,
    /// Received, not yet deleted or visible again (`ApproximateNumberOfMessagesNotVisible`).
    pub in_flight: u64,
    /// Sent with a delay not yet passed (`ApproximateNumberOfMessagesDelayed`).
    pub delayed: u64,
}

impl QueueCounts {
    /// The backlog the scaling rule uses: visible + in flight.
    pub fn backlog(&self) -> u64 {
        self.visible + self.in_flight
    }

    /// Everything the queue holds.
    pub fn total(&self) -> u64 {
        self.visible + self.in_flight + self.delayed
    }
}

/// Reads a queue's counts.
///
/// # Errors
/// The classified AWS error when the attributes cannot be read.
pub async fn counts(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Result<QueueCounts, AwsError> {
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .map_err(|e| classify(&e))?
        .attributes
        .unwrap_or_default();
    let get = |name: QueueAttributeName| attrs.get(&name).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok(QueueCounts {
        visible: get(QueueAttributeName::ApproximateNumberOfMessages),
        in_flight: get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        delayed: get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
    })
}
