//! # order-results-worker
//!
//! The step of the auction pipeline whose errors are notified. Each message is one order's
//! result in an auction cycle, `{"cycle", "record_id", "status": "accepted" | "rejected",
//! "reason"?, ...}`:
//! - accepted → written to S3 as `results/{cycle}/{record_id}.json` (server-side encryption
//!   requested); writing it again on a redelivery writes the same object;
//! - rejected → an error, notified on the SNS topic (chat-ready: `text` plus `cycle`,
//!   `record_id`, `reason`; message attributes `event`, `cycle` for subscription filters) and the
//!   message is finished, not retried. Exactly one notification per rejected order: a dedupe
//!   record in DynamoDB (`notifications` table) is claimed before publishing and marked `SENT`
//!   after; a redelivery that finds it `SENT` publishes nothing. (A crash between the publish
//!   and the mark is the one case that sends a second notification.)

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;
use aws_sdk_sns::types::MessageAttributeValue;
use clap::Parser;
use fleet::util::now_ms;
use fleet::worker::WorkerArgs;
use fleet::{classify, Handler, Message, Metrics, Outcome};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tracing::info;

/// Command line and environment of the `order-results-worker` binary.
#[derive(Debug, Parser)]
#[command(
    name = "order-results-worker",
    version,
    about = "Stores accepted order results in S3, notifies rejected ones on SNS"
)]
pub struct Config {
    /// The bucket for accepted results.
    #[arg(long, env = "RESULTS_BUCKET", value_name = "BUCKET")]
    pub bucket: String,
    /// KMS key for the result objects (SSE-KMS); without one, SSE-S3 (AES256).
    #[arg(long, env = "RESULTS_KMS_KEY_ID", value_name = "KEY")]
    pub kms_key_id: Option<String>,
    /// The SNS topic for notifications.
    #[arg(long, env = "NOTIFICATIONS_TOPIC_ARN", value_name = "ARN")]
    pub topic_arn: String,
    /// The dedupe table of notifications (partition key `notification_id`).
    #[arg(long, env = "NOTIFICATIONS_TABLE", value_name = "TABLE")]
    pub notifications_table: String,
    /// What every worker has: the engine, logs, threads.
    #[command(flatten)]
    pub worker: WorkerArgs,
}

/// One order's result in a cycle.
#[derive(Debug, Clone, Deserialize)]
pub struct OrderResult {
    /// The auction cycle (e.g. `2026-11-22T23:10Z`).
    pub cycle: String,
    /// The order.
    pub record_id: String,
    /// `accepted` or `rejected`.
    pub status: String,
    /// Why it was rejected.
    #[serde(default)]
    pub reason: Option<String>,
    /// Everything else the result says, kept in the S3 object.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

impl OrderResult {
    /// `results/{cycle}/{record_id}.json`.
    pub fn object_key(&self) -> String {
        format!("results/{}/{}.json", self.cycle, self.record_id)
    }

    /// The notification: chat-ready text and fields.
    pub fn notification(&self) -> Value {
        let reason = self.reason.as_deref().unwrap_or("no reason given");
        json!({
            "text": format!(":warning: order {} was rejected in auction cycle {}: {}", self.record_id, self.cycle, reason),
            "event": "order-rejected",
            "cycle": self.cycle,
            "record_id": self.record_id,
            "reason": reason,
        })
    }

    fn valid(&self) -> Result<(), String> {
        let safe = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        };
        if !safe(&self.cycle) || !safe(&self.record_id) {
            return Err(
                "cycle and record_id must be 1-128 characters of A-Z a-z 0-9 - _ . :".into(),
            );
        }
        Ok(())
    }
}

/// The handler.
#[derive(Debug)]
pub struct OrderResultsHandler {
    s3: aws_sdk_s3::Client,
    sns: aws_sdk_sns::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    config: Targets,
    stored: Arc<AtomicU64>,
    notified: Arc<AtomicU64>,
}

/// Where results and notifications go.
#[derive(Debug, Clone)]
pub struct Targets {
    /// Results bucket.
    pub bucket: String,
    /// SSE-KMS key, or SSE-S3.
    pub kms_key_id: Option<String>,
    /// Notifications topic.
    pub topic_arn: String,
    /// Dedupe table.
    pub notifications_table: String,
}

impl OrderResultsHandler {
    /// A handler with its clients, counting `results_stored` and `notifications_sent`.
    pub fn new(
        s3: aws_sdk_s3::Client,
        sns: aws_sdk_sns::Client,
        dynamodb: aws_sdk_dynamodb::Client,
        config: Targets,
        metrics: &Metrics,
    ) -> Self {
        Self {
            s3,
            sns,
            dynamodb,
            config,
            stored: metrics.counter("results_stored"),
            notified: metrics.counter("notifications_sent"),
        }
    }

    async fn store(&self, result: &OrderResult, body: &str) -> Outcome {
        let mut put = self
            .s3
            .put_object()
            .bucket(&self.config.bucket)
            .key(result.object_key())
            .content_type("application/json")
            .body(ByteStream::from(body.as_bytes().to_vec()));
        put = match &self.config.kms_key_id {
            Some(key) => put
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .ssekms_key_id(key),
            None => put.server_side_encryption(ServerSideEncryption::Aes256),
        };
        match put.send().await {
            Ok(_) => {
                Metrics::incr(&self.stored);
                Outcome::Done
            }
            Err(err) => classify(&err).into_outcome(),
        }
    }

    async fn notify(&self, result: &OrderResult) -> Outcome {
        let id = format!("{}/{}", result.cycle, result.record_id);
        let key = |id: &str| AttributeValue::S(id.to_owned());
        // Claim (or find) the dedupe record.
        let claimed = self
            .dynamodb
            .update_item()
            .table_name(&self.config.notifications_table)
            .key("notification_id", key(&id))
            .update_expression("SET claimed_at = if_not_exists(claimed_at, :now)")
            .expression_attribute_values(":now", AttributeValue::N(now_ms().to_string()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
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
        let attr = |v: &str| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v)
                .build()
                .expect("data type is set")
        };
        let published = self
            .sns
            .publish()
            .topic_arn(&self.config.topic_arn)
            .subject("Order rejected")
            .message(result.notification().to_string())
            .message_attributes("event", attr("order-rejected"))
            .message_attributes("cycle", attr(&result.cycle))
            .send()
            .await;
        if let Err(err) = published {
            return classify(&err).into_outcome();
        }
        Metrics::incr(&self.notified);
        let marked = self
            .dynamodb
            .update_item()
            .table_name(&self.config.notifications_table)
            .key("notification_id", key(&id))
            .update_expression("SET #status = :sent, sent_at = :now")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":sent", AttributeValue::S("SENT".into()))
            .expression_attribute_values(":now", AttributeValue::N(now_ms().to_string()))
            .send()
            .await;
        if let Err(err) = marked {
            return classify(&err).into_outcome();
        }
        info!(cycle = %result.cycle, record_id = %result.record_id, "rejection notified");
        Outcome::Done
    }
}

impl Handler for OrderResultsHandler {
    async fn handle(&self, message: &Message) -> Outcome {
        let result: OrderResult = match serde_json::from_str(&message.body) {
            Ok(r) => r,
            Err(e) => {
                return Outcome::permanent("invalid-result", format!("not an order result: {e}"))
            }
        };
        if let Err(why) = result.valid() {
            return Outcome::permanent("invalid-result", why);
        }
        match result.status.as_str() {
            "accepted" => self.store(&result, &message.body).await,
            "rejected" => self.notify(&result).await,
            other => Outcome::permanent("invalid-result", format!("unknown status {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(text: &str) -> OrderResult {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn keys_notifications_and_validation() {
        let r = result(
            r#"{"cycle":"c-1","record_id":"r-1","status":"rejected","reason":"price too low","price":2.1}"#,
        );
        assert_eq!(r.object_key(), "results/c-1/r-1.json");
        let n = r.notification();
        assert_eq!(n["record_id"], "r-1");
        assert!(n["text"].as_str().unwrap().contains("price too low"));
        assert_eq!(r.rest["price"], json!(2.1));
        assert!(r.valid().is_ok());
        assert!(
            result(r#"{"cycle":"../x","record_id":"r","status":"accepted"}"#)
                .valid()
                .is_err()
        );
    }
}
