//! Notifications on the SNS topic, each sent once.
//!
//! A dedupe record in DynamoDB (`notifications` table, partition key `notification_id`) is
//! claimed before publishing and marked `SENT` after; a redelivery that finds it `SENT`
//! publishes nothing. A crash between the publish and the mark is the one case that sends a
//! second notification.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use aws_sdk_sns::types::MessageAttributeValue;
use fleet::util::now_ms;
use fleet::{classify, Metrics, Outcome};
use serde_json::Value;

/// One notification.
#[derive(Debug, Clone)]
pub struct Notification<'a> {
    /// Its dedupe id: the same id is published once.
    pub id: String,
    /// The subject (e-mail subscribers see it).
    pub subject: &'a str,
    /// The chat-ready JSON body (`text` plus fields).
    pub body: Value,
    /// String message attributes, for subscription filter policies.
    pub attributes: Vec<(&'a str, String)>,
}

/// Publishes notifications once each.
#[derive(Debug, Clone)]
pub struct Notifier {
    sns: aws_sdk_sns::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    topic_arn: String,
    table: String,
    sent: Arc<AtomicU64>,
}

impl Notifier {
    /// A notifier on `topic_arn` with its dedupe `table`, counting `notifications_sent`.
    pub fn new(
        sns: aws_sdk_sns::Client,
        dynamodb: aws_sdk_dynamodb::Client,
        topic_arn: String,
        table: String,
        metrics: &Metrics,
    ) -> Self {
        Self {
            sns,
            dynamodb,
            topic_arn,
            table,
            sent: metrics.counter("notifications_sent"),
        }
    }

    /// Publishes `n` unless a notification with its id was already sent: `Done` when it
    /// published, `Duplicate` when it had been sent, a retry on an AWS error.
    pub async fn notify_once(&self, n: &Notification<'_>) -> Outcome {
        let key = AttributeValue::S(n.id.clone());
        let claimed = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("notification_id", key.clone())
            .update_expression("SET claimed_at = if_not_exists(claimed_at, :now)")
            .expression_attribute_values(":now", AttributeValue::N(now_ms().to_string()))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        let record = match claimed {
            Ok(out) => out.attributes.unwrap_or_default(),
            Err(err) => return classify(&err).into_outcome(),
        };
        if record
            .get("status")
            .and_then(|v| v.as_s().ok())
            .map(String::as_str)
            == Some("SENT")
        {
            return Outcome::Duplicate;
        }
        let mut publish = self
            .sns
            .publish()
            .topic_arn(&self.topic_arn)
            .subject(n.subject)
            .message(n.body.to_string());
        for (name, value) in &n.attributes {
            let value = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .expect("data type is set");
            publish = publish.message_attributes(*name, value);
        }
        if let Err(err) = publish.send().await {
            return classify(&err).into_outcome();
        }
        Metrics::incr(&self.sent);
        let marked = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("notification_id", key)
            .update_expression("SET #status = :sent, sent_at = :now")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":sent", AttributeValue::S("SENT".into()))
            .expression_attribute_values(":now", AttributeValue::N(now_ms().to_string()))
            .send()
            .await;
        match marked {
            Ok(_) => Outcome::Done,
            Err(err) => classify(&err).into_outcome(),
        }
    }
}

/// The characters allowed in a cycle or record id (they become S3 key parts and dedupe ids):
/// 1-128 of `A-Z a-z 0-9 - _ . :`.
pub fn safe_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}
