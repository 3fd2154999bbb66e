//! One deployment of the fleet as the CLI sees it: the topology's queues under a name prefix,
//! resolved to URLs. (`Deployment`, not `Fleet`: the `fleet` crate is the engine.)

use anyhow::{bail, Context, Result};
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use fleet::queue::QueueCounts;
use fleet::topology::{Topology, DLQ_SUFFIX};

/// The topology's queues under a prefix, with an SQS client.
pub(crate) struct Deployment {
    pub(crate) sqs: aws_sdk_sqs::Client,
    /// For `ApproximateAgeOfOldestMessage`, which SQS publishes only there.
    pub(crate) cloudwatch: aws_sdk_cloudwatch::Client,
    pub(crate) prefix: String,
    pub(crate) topology: Topology,
}

impl Deployment {
    /// Checks that `key` names a queue of the topology.
    pub(crate) fn check(&self, key: &str) -> Result<()> {
        if !self.topology.queues.contains_key(key) {
            let known: Vec<&str> = self.topology.queues.keys().map(String::as_str).collect();
            bail!(
                "unknown queue '{key}': the topology has {}",
                known.join(", ")
            );
        }
        Ok(())
    }

    /// The deployed name of the queue `key` (`dlq` for its dead-letter queue).
    pub(crate) fn name(&self, key: &str, dlq: bool) -> String {
        match self.topology.queues.get(key) {
            Some(spec) => spec.name(&self.prefix, key, dlq),
            None => format!("{}{key}{}", self.prefix, if dlq { DLQ_SUFFIX } else { "" }),
        }
    }

    /// URL of the queue named `key` in the topology (`dlq` for its dead-letter queue).
    pub(crate) async fn url(&self, key: &str, dlq: bool) -> Result<String> {
        self.check(key)?;
        let name = self.name(key, dlq);
        self.sqs
            .get_queue_url()
            .queue_name(&name)
            .send()
            .await
            .map_err(|e| fleet::classify(&e))
            .with_context(|| format!("queue {name} not found (is --prefix / FLEET_PREFIX right?)"))?
            .queue_url
            .context("GetQueueUrl returned no URL")
    }

    /// The queue's ARN.
    pub(crate) async fn arn(&self, url: &str) -> Result<String> {
        self.sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| fleet::classify(&e))?
            .attributes
            .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
            .context("no QueueArn")
    }

    /// CloudWatch's `ApproximateAgeOfOldestMessage` of a queue (SQS publishes it nowhere else):
    /// the latest minute of the last ten, seconds.
    pub(crate) async fn oldest_age_from_cloudwatch(&self, queue_name: &str) -> Result<Option<u64>> {
        let age = self
            .latest_maximum(
                "AWS/SQS",
                "ApproximateAgeOfOldestMessage",
                &[("QueueName", queue_name)],
                600,
            )
            .await?;
        Ok(age.map(|a| a.max(0.0) as u64))
    }

    /// Whether a worker's circuit breaker is open (its `breaker_open` metric in the last five
    /// minutes; `None` without data, e.g. a worker that does not run).
    pub(crate) async fn breaker_open(
        &self,
        worker: &str,
        queue_name: &str,
    ) -> Result<Option<bool>> {
        let open = self
            .latest_maximum(
                fleet::metrics::NAMESPACE,
                "breaker_open",
                &[("Worker", worker), ("Queue", queue_name)],
                300,
            )
            .await?;
        Ok(open.map(|v| v >= 1.0))
    }

    /// The maximum of a metric in its latest one-minute bucket within the last `window_secs`.
    async fn latest_maximum(
        &self,
        namespace: &str,
        metric: &str,
        dimensions: &[(&str, &str)],
        window_secs: u64,
    ) -> Result<Option<f64>> {
        use aws_sdk_cloudwatch::primitives::DateTime;
        use aws_sdk_cloudwatch::types::{Dimension, Statistic};
        let now = std::time::SystemTime::now();
        let out = self
            .cloudwatch
            .get_metric_statistics()
            .namespace(namespace)
            .metric_name(metric)
            .set_dimensions(Some(
                dimensions
                    .iter()
                    .map(|(name, value)| Dimension::builder().name(*name).value(*value).build())
                    .collect(),
            ))
            .start_time(DateTime::from(
                now - std::time::Duration::from_secs(window_secs),
            ))
            // A minute ahead: the current minute's bucket is dated after `now`.
            .end_time(DateTime::from(now + std::time::Duration::from_secs(60)))
            .period(60)
            .statistics(Statistic::Maximum)
            .send()
            .await
            .map_err(|e| fleet::classify(&e))?;
        Ok(out
            .datapoints()
            .iter()
            .filter_map(|d| Some((d.timestamp()?.secs(), d.maximum()?)))
            .max_by_key(|(at, _)| *at)
            .map(|(_, value)| value))
    }

    /// Message counts of a queue.
    pub(crate) async fn counts(&self, url: &str) -> Result<QueueCounts> {
        Ok(fleet::queue::counts(&self.sqs, url).await?)
    }

    /// Receives up to `max` messages, keeping them invisible for `visibility_secs`.
    pub(crate) async fn receive(
        &self,
        url: &str,
        max: i32,
        wait_secs: i32,
        visibility_secs: i32,
    ) -> Result<Vec<aws_sdk_sqs::types::Message>> {
        Ok(self
            .sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(max.clamp(1, 10))
            .wait_time_seconds(wait_secs)
            .visibility_timeout(visibility_secs)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .map_err(|e| fleet::classify(&e))?
            .messages
            .unwrap_or_default())
    }

    /// Makes messages visible again at once (what a non-consuming read ends with).
    pub(crate) async fn hand_back(&self, url: &str, receipts: &[String]) -> Result<()> {
        use aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry as Entry;
        for chunk in receipts.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    Entry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .visibility_timeout(0)
                        .build()
                        .expect("id and receipt set")
                })
                .collect();
            self.sqs
                .change_message_visibility_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| fleet::classify(&e))?;
        }
        Ok(())
    }
}
