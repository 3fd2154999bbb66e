//! The yardstick: the obvious hand-written SDK loop, on the same LocalStack in the same run.
//!
//! Pollers (a tenth of the worker's concurrency, so the same number of messages in flight)
//! each receive 10, write every payment with the worker's own `DynamoStore::insert`, and delete
//! the batch; nothing else. No visibility extension, no retries or backoff, no breaker, no
//! dead-letter queue, no metrics, no logs: what a payments consumer costs without the engine's
//! safety. It runs on a single-threaded runtime on a thread of its own, so that thread's CPU is
//! its cost, measured against the same LocalStack answering at the same pace as for the worker.
//! The worker's CPU per message over the loop's is the engine's overhead: the figure to hold
//! near 1.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use payments_worker::payment::{Payment, ATTR_PAYMENT_ID};
use payments_worker::store::{DynamoStore, PaymentStore, Provenance};

/// What the loop cost.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NaiveLoop {
    /// CPU of the loop's thread per message, in µs.
    pub cpu_us_per_msg: f64,
    /// Messages per second.
    pub rate: f64,
}

/// Drains `n` payments from `queue_url` into `table` with `in_flight / 10` pollers; run it on a
/// thread and single-threaded runtime of its own ([`crate::on_own_thread`]), whose CPU is its
/// cost.
pub(crate) async fn measure(
    queue_url: String,
    table: String,
    n: usize,
    in_flight: usize,
) -> Result<NaiveLoop> {
    // The worker's client configurations (keep-alive on plain HTTP included), from this
    // process's environment: `scripts/bench` exports the LocalStack endpoint and credentials
    // the worker gets too.
    let sdk = fleet::aws::load_config().await;
    let sqs = aws_sdk_sqs::Client::from_conf(fleet::aws::sqs_config(&sdk).build());
    let dynamodb = aws_sdk_dynamodb::Client::from_conf(fleet::dynamodb::config(&sdk).build());
    let store = Arc::new(DynamoStore::new(dynamodb, table, &fleet::Metrics::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let before = super::floor::thread_cpu_ms()?;
    let started = std::time::Instant::now();
    let mut pollers = tokio::task::JoinSet::new();
    for _ in 0..(in_flight / 10).max(1) {
        let (sqs, store, done, url) = (sqs.clone(), store.clone(), done.clone(), queue_url.clone());
        pollers.spawn(async move {
            while done.load(Ordering::Relaxed) < n {
                done.fetch_add(poll(&sqs, &url, &store).await?, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    tokio::time::timeout(super::DRAIN_LIMIT, async {
        while let Some(poller) = pollers.join_next().await {
            poller??;
        }
        anyhow::Ok(())
    })
    .await
    .with_context(|| {
        let done = done.load(Ordering::Relaxed);
        format!(
            "the hand-written loop drained {done} of {n} in {:?}",
            super::DRAIN_LIMIT
        )
    })??;
    let secs = started.elapsed().as_secs_f64();
    let cpu_ms = super::floor::thread_cpu_ms()? - before;
    Ok(NaiveLoop {
        cpu_us_per_msg: cpu_ms * 1000.0 / n as f64,
        rate: n as f64 / secs,
    })
}

/// One receive of up to 10, their writes at once, one delete batch; the messages handled.
async fn poll(sqs: &aws_sdk_sqs::Client, url: &str, store: &Arc<DynamoStore>) -> Result<usize> {
    let received = sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .message_attribute_names("All")
        .send()
        .await?;
    let messages = received.messages.unwrap_or_default();
    if messages.is_empty() {
        return Ok(0);
    }
    let mut writes = tokio::task::JoinSet::new();
    for message in &messages {
        let id = message
            .message_attributes()
            .and_then(|a| a.get(ATTR_PAYMENT_ID))
            .and_then(|v| v.string_value())
            .context("a payment without paymentId")?;
        let payment = Payment::parse(id, message.body().unwrap_or_default())?;
        let provenance = Provenance {
            request_id: None,
            api_key_id: None,
            received_at_ms: None,
            message_id: message.message_id().unwrap_or_default().to_owned(),
        };
        let store = store.clone();
        writes.spawn(async move {
            let hash = payment.payload_hash();
            store.insert(&payment, &hash, &provenance).await
        });
    }
    while let Some(write) = writes.join_next().await {
        write??;
    }
    let handles = messages
        .iter()
        .map(|m| {
            m.receipt_handle()
                .map(str::to_owned)
                .context("no receipt handle")
        })
        .collect::<Result<_>>()?;
    super::floor::delete_batch(sqs, url, handles).await?;
    Ok(messages.len())
}
