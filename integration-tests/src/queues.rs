//! The stack's queues: how much they hold, what they hold, an inbox on a topic, and queue
//! pairs of a test's own.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName};
use fleet::topology::{is_fifo, QueueSpec, FIFO_SUFFIX};

use crate::{eventually, sdk_config, Stack};

/// How long SQS keeps a message unless told otherwise: 4 days.
const SQS_DEFAULT_RETENTION_SECS: u64 = 4 * 24 * 3600;

impl Stack {
    /// Messages visible + in flight + delayed in a queue.
    pub async fn depth(&self, queue_url: &str) -> Result<u64> {
        Ok(fleet::queue::counts(&self.sqs, queue_url).await?.total())
    }

    /// Receives what a queue holds, up to `max`, keeping it invisible for 60 s.
    pub async fn drain(
        &self,
        queue_url: &str,
        max: usize,
    ) -> Result<Vec<aws_sdk_sqs::types::Message>> {
        let mut all = Vec::new();
        while all.len() < max {
            let out = self
                .sqs
                .receive_message()
                .queue_url(queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .visibility_timeout(60)
                .message_attribute_names("All")
                .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
                .send()
                .await?;
            let batch = out.messages.unwrap_or_default();
            if batch.is_empty() {
                break;
            }
            all.extend(batch);
        }
        Ok(all)
    }

    /// Waits until a queue holds messages, and takes them (see [`Self::drain`]).
    pub async fn wait_for_messages(
        &self,
        queue_url: &str,
        what: &str,
    ) -> Result<Vec<aws_sdk_sqs::types::Message>> {
        eventually(Duration::from_secs(30), what, || async {
            let messages = self.drain(queue_url, 10).await?;
            Ok((!messages.is_empty()).then_some(messages))
        })
        .await
    }

    /// Waits until a queue is empty (nothing visible, in flight or delayed).
    pub async fn wait_for_empty(&self, queue_url: &str) -> Result<()> {
        eventually(Duration::from_secs(30), "the queue empty", || async {
            Ok((self.depth(queue_url).await? == 0).then_some(()))
        })
        .await
    }

    /// A stand-in for a chat channel: a new SQS queue subscribed to the stack's topic `topic`
    /// (raw delivery). Returns its URL.
    pub async fn subscribe_inbox(&self, topic: &str) -> Result<String> {
        let topic_arn = self.info.topics.get(topic).context("no such topic")?;
        let inbox = self
            .sqs
            .create_queue()
            .queue_name(format!(
                "{}inbox-{:06x}",
                self.info.prefix,
                fastrand::u32(..1 << 24)
            ))
            .send()
            .await?
            .queue_url
            .context("inbox url")?;
        let inbox_arn = self
            .sqs
            .get_queue_attributes()
            .queue_url(&inbox)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await?
            .attributes
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .context("inbox arn")?;
        aws_sdk_sns::Client::new(&sdk_config().await)
            .subscribe()
            .topic_arn(topic_arn)
            .protocol("sqs")
            .endpoint(&inbox_arn)
            .attributes("RawMessageDelivery", "true")
            .send()
            .await?;
        Ok(inbox)
    }

    /// Creates a queue with a DLQ and the given `maxReceiveCount` (for engine tests that need
    /// a redrive policy other than the topology's). A name ending in `.fifo` makes both FIFO
    /// queues. Returns (queue URL, DLQ URL).
    pub async fn queue_pair(
        &self,
        name: &str,
        max_receive_count: u32,
        visibility_secs: u32,
    ) -> Result<(String, String)> {
        // Named by the engine's rule, as the topology's queues are.
        let key = name.strip_suffix(FIFO_SUFFIX).unwrap_or(name);
        let spec = QueueSpec {
            description: format!("a test's own queue {key}"),
            visibility_timeout_secs: visibility_secs,
            max_receive_count,
            fifo: is_fifo(name),
            // SQS's default retention, for both.
            message_retention_secs: SQS_DEFAULT_RETENTION_SECS,
            dlq_retention_secs: SQS_DEFAULT_RETENTION_SECS,
        };
        let prefix = &self.info.prefix;
        let fifo_attributes = || {
            spec.fifo
                .then(|| HashMap::from([(QueueAttributeName::FifoQueue, "true".to_owned())]))
        };
        let dlq = self
            .sqs
            .create_queue()
            .queue_name(spec.name(prefix, key, true))
            .set_attributes(fifo_attributes())
            .send()
            .await?
            .queue_url
            .context("dlq url")?;
        let dlq_arn = self
            .sqs
            .get_queue_attributes()
            .queue_url(&dlq)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await?
            .attributes
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .context("dlq arn")?;
        let url = self
            .sqs
            .create_queue()
            .queue_name(spec.name(prefix, key, false))
            .set_attributes(fifo_attributes())
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                spec.visibility_timeout_secs.to_string(),
            )
            .attributes(
                QueueAttributeName::RedrivePolicy,
                serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": spec.max_receive_count})
                    .to_string(),
            )
            .send()
            .await?
            .queue_url
            .context("queue url")?;
        Ok((url, dlq))
    }
}

/// A `String` message attribute.
pub fn string_attr(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .expect("data type set")
}
