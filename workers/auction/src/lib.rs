//! # The energy-auction pipeline after the orders
//!
//! ```text
//! every 5 min (EventBridge Scheduler; `fleetctl schedule` locally)
//!   └─► auction-cycles ─► results-worker ─► results source (HTTP JSON | simulator)
//!         ├─ results: false → again after a growing delay; past the deadline → DLQ + notification
//!         └─ ready → order-results (10 per batch, once per cycle; progress in auction-cycles table)
//!                      └─► order-results-worker ─► accepted: S3 results/{cycle}/{record_id}.json
//!                                                 rejected: one SNS notification
//! ```
//!
//! Two binaries share this crate: `results-worker` ([`cycles`]) and `order-results-worker`
//! ([`order_results`]); both notify through [`notify::Notifier`] (once per id). Both claim
//! their work in DynamoDB under a [`lease`]: one delivery at a time publishes a notification or
//! fans a cycle out.
//!
//! Each handler is generic over narrow traits for what it reaches (the results source, the
//! cycle records, the order-results queue, the results bucket, the notifier), implemented on
//! AWS by the workers and by fakes in the unit tests.

use std::time::Duration;

pub mod cycles;
pub mod lease;
pub mod notify;
pub mod order_results;
pub mod source;

#[cfg(test)]
mod fakes;

/// Where notifications go: the topic and the dedupe table that makes each one go once.
#[derive(Debug, Clone, clap::Args)]
pub struct NotificationArgs {
    /// The SNS topic for notifications.
    #[arg(long, env = "NOTIFICATIONS_TOPIC_ARN", value_name = "ARN")]
    pub topic_arn: String,
    /// The dedupe table of notifications (partition key `notification_id`).
    #[arg(long, env = "NOTIFICATIONS_TABLE", value_name = "TABLE")]
    pub notifications_table: String,
    /// How long a delivery's claim on a notification lasts, seconds: a delivery that dies
    /// holding it delays the notification this long. A publish may take half of it. Keep it
    /// well below the time a delivery that waits for the claim spends in its retries before
    /// its queue's redrive policy gives up (order-results: 5 receives, about 15 s at least with
    /// the default 2 s retry base).
    #[arg(long, env = "NOTIFICATION_LEASE_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub notification_lease_secs: u64,
}

impl NotificationArgs {
    /// The notifier, with its own SNS client, which gives up on a publish after
    /// [`notify::publish_limit`] (within the claim's lease).
    pub fn notifier(
        self,
        sdk: &aws_config::SdkConfig,
        dynamodb: aws_sdk_dynamodb::Client,
        metrics: &fleet::Metrics,
    ) -> notify::AwsNotifier {
        let lease = Duration::from_secs(self.notification_lease_secs);
        let limit = notify::publish_limit(lease);
        let sns = aws_sdk_sns::Client::from_conf(
            aws_sdk_sns::config::Builder::from(sdk)
                .interceptor(fleet::aws::KeepAliveOnPlainHttp)
                .timeout_config(
                    aws_config::timeout::TimeoutConfig::builder()
                        .connect_timeout(fleet::aws::CONNECT_TIMEOUT.min(limit))
                        .operation_attempt_timeout(fleet::aws::ATTEMPT_TIMEOUT.min(limit))
                        .operation_timeout(limit)
                        .build(),
                )
                .build(),
        );
        notify::Notifier::new(
            notify::DynamoNotifications::new(dynamodb, self.notifications_table),
            notify::SnsPublisher::new(sns, self.topic_arn),
            lease,
            metrics,
        )
    }
}
