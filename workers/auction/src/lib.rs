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
//! ([`order_results`]); both notify through [`notify::Notifier`] (once per id).

pub mod cycles;
pub mod notify;
pub mod order_results;
pub mod source;

/// Where notifications go: the topic and the dedupe table that makes each one go once.
#[derive(Debug, Clone, clap::Args)]
pub struct NotificationArgs {
    /// The SNS topic for notifications.
    #[arg(long, env = "NOTIFICATIONS_TOPIC_ARN", value_name = "ARN")]
    pub topic_arn: String,
    /// The dedupe table of notifications (partition key `notification_id`).
    #[arg(long, env = "NOTIFICATIONS_TABLE", value_name = "TABLE")]
    pub notifications_table: String,
}

impl NotificationArgs {
    /// The notifier, with its own SNS client.
    pub fn notifier(
        self,
        sdk: &aws_config::SdkConfig,
        dynamodb: aws_sdk_dynamodb::Client,
        metrics: &fleet::Metrics,
    ) -> notify::Notifier {
        let sns = aws_sdk_sns::Client::from_conf(
            aws_sdk_sns::config::Builder::from(sdk)
                .interceptor(fleet::aws::KeepAliveOnPlainHttp)
                .build(),
        );
        notify::Notifier::new(
            sns,
            dynamodb,
            self.topic_arn,
            self.notifications_table,
            metrics,
        )
    }
}
