//! Payments as a client sends them, and straight into a queue with the attributes the gateway
//! sets.

use anyhow::{bail, Result};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

use crate::{string_attr, Stack};

impl Stack {
    /// Sends payments straight to the queue with the attributes the gateway sets.
    pub async fn send_payments(
        &self,
        queue_url: &str,
        payments: &[(String, String)],
    ) -> Result<()> {
        send_payments(&self.sqs, queue_url, payments).await
    }
}

/// Sends payments straight to a queue, in batches of 10, with the attributes the gateway sets.
pub async fn send_payments(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    payments: &[(String, String)],
) -> Result<()> {
    send_payments_with(sqs, queue_url, payments, &[]).await
}

/// [`send_payments`] with extra string attributes on every message.
pub async fn send_payments_with(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    payments: &[(String, String)],
    extra: &[(&str, &str)],
) -> Result<()> {
    for chunk in payments.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, (id, body))| {
                let mut entry = SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body)
                    .message_attributes("paymentId", string_attr(id))
                    .message_attributes(
                        fleet::gateway::ATTR_REQUEST_ID,
                        string_attr(&format!("direct-{id}")),
                    );
                for (name, value) in extra {
                    entry = entry.message_attributes(*name, string_attr(value));
                }
                entry.build().expect("id and body set")
            })
            .collect();
        let out = sqs
            .send_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await?;
        if !out.failed.is_empty() {
            bail!("send failed: {:?}", out.failed);
        }
    }
    Ok(())
}

/// A payment body as a client would send it.
pub fn payment_body(user: &str, amount: &str) -> String {
    format!(r#"{{"userId":"{user}","amount":{amount},"currency":"EUR","reference":"test"}}"#)
}

/// `n` distinct payments: (payment id, body).
pub fn payments(tag: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            (
                format!("{tag}-{i:05}"),
                payment_body(&format!("user-{}", i % 17), &format!("{}.25", i + 1)),
            )
        })
        .collect()
}
