//! Reading a queue's message counts: the engine's scaler, `fleetctl` and the tests all need
//! the same `GetQueueAttributes` call.

use std::time::Duration;

use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};
use backon::{BackoffBuilder, ExponentialBuilder};
use serde::Serialize;

use crate::aws_error::{classify, AwsError, ErrorClass};

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

/// Backoff between retries of a batch call's failed entries: 50 ms doubling to 2 s, 5 times.
pub(crate) fn entry_retry_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .with_max_times(5)
        .build()
}

/// Sends messages with `SendMessageBatch`, 10 per call, retrying the entries SQS failed (not
/// the ones it sent) with backoff. Entry ids are replaced by their index in the call.
///
/// # Errors
/// The first call that fails for good, or an entry SQS refuses (its sender fault) or keeps
/// failing. Batches sent before it stay sent.
pub async fn send_all(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    entries: Vec<SendMessageBatchRequestEntry>,
) -> Result<(), AwsError> {
    let mut entries = entries.into_iter().peekable();
    while entries.peek().is_some() {
        let mut pending: Vec<_> = entries.by_ref().take(10).collect();
        let mut delays = entry_retry_backoff();
        loop {
            for (i, entry) in pending.iter_mut().enumerate() {
                entry.id = i.to_string();
            }
            let out = sqs
                .send_message_batch()
                .queue_url(queue_url)
                .set_entries(Some(pending.clone()))
                .send()
                .await
                .map_err(|e| classify(&e))?;
            let failed = out.failed();
            if failed.is_empty() {
                break;
            }
            if let Some(refused) = failed.iter().find(|f| f.sender_fault) {
                return Err(AwsError {
                    class: ErrorClass::Permanent,
                    code: refused.code.clone(),
                    message: refused.message.clone().unwrap_or_default(),
                });
            }
            let Some(delay) = delays.next() else {
                let f = &failed[0];
                return Err(AwsError {
                    class: ErrorClass::Retryable,
                    code: f.code.clone(),
                    message: format!(
                        "{} of {} entries still failing: {}",
                        failed.len(),
                        pending.len(),
                        f.message.as_deref().unwrap_or("")
                    ),
                });
            };
            let retry: std::collections::HashSet<&str> =
                failed.iter().map(|f| f.id.as_str()).collect();
            pending.retain(|e| retry.contains(e.id.as_str()));
            tokio::time::sleep(delay).await;
        }
    }
    Ok(())
}
