//! The deleter: finished messages' receipt handles, batched into `DeleteMessageBatch` calls.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{error, warn};

use crate::aws_error::classify;
use crate::config::SQS_MAX_BATCH;
use crate::metrics::Metrics;

/// Collects receipt handles into `DeleteMessageBatch` calls of up to 10, waiting at most
/// `linger` for a batch to fill. Ends when every sender is gone, after a last flush.
pub(super) async fn run_deleter(
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
