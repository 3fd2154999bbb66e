//! Queue resolution at start: visibility timeout, redrive policy, dead-letter queue, FIFO.

use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use serde::Deserialize as _;

use super::{EngineError, QueueSettings};
use crate::aws_error::{classify, AwsError};
use crate::config::EngineConfig;

pub(super) async fn resolve_queue(
    sqs: &aws_sdk_sqs::Client,
    config: &EngineConfig,
) -> Result<QueueSettings, EngineError> {
    let queue_url = config.queue_url.clone();
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(QueueAttributeName::VisibilityTimeout)
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .map_err(|e| EngineError::QueueAttributes {
            queue_url: queue_url.clone(),
            source: classify(&e),
        })?
        .attributes
        .unwrap_or_default();
    let queue_visibility = attributes
        .get(&QueueAttributeName::VisibilityTimeout)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(30);
    let visibility_timeout = Duration::from_secs(
        config
            .visibility_timeout_secs
            .map_or(queue_visibility, u64::from),
    );
    let redrive = attributes
        .get(&QueueAttributeName::RedrivePolicy)
        .and_then(|p| serde_json::from_str::<RedrivePolicy>(p).ok());
    let max_receive_count = config
        .max_receives
        .or(redrive.as_ref().map(|r| r.max_receive_count));
    let dlq_url = match (&config.dlq_url, redrive) {
        (Some(url), _) => url.clone(),
        (None, Some(policy)) => dlq_url_from_arn(sqs, &policy.dead_letter_target_arn).await?,
        (None, None) => return Err(EngineError::NoDeadLetterQueue(queue_url)),
    };
    Ok(QueueSettings {
        fifo: crate::topology::is_fifo(&queue_url),
        queue_name: queue_name(&queue_url),
        queue_url,
        dlq_url,
        visibility_timeout,
        max_receive_count,
    })
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RedrivePolicy {
    dead_letter_target_arn: String,
    #[serde(deserialize_with = "number_or_string")]
    max_receive_count: u32,
}

/// SQS returns `maxReceiveCount` as a number or a string depending on who set it.
fn number_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    use serde::de::Error;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n
            .as_u64()
            .map(|n| n as u32)
            .ok_or_else(|| D::Error::custom("not a count")),
        serde_json::Value::String(s) => s.parse().map_err(D::Error::custom),
        _ => Err(D::Error::custom("not a count")),
    }
}

async fn dlq_url_from_arn(sqs: &aws_sdk_sqs::Client, arn: &str) -> Result<String, EngineError> {
    // arn:aws:sqs:REGION:ACCOUNT:NAME
    let mut parts = arn.rsplitn(3, ':');
    let name = parts.next().unwrap_or_default();
    let account = parts.next().unwrap_or_default();
    sqs.get_queue_url()
        .queue_name(name)
        .queue_owner_aws_account_id(account)
        .send()
        .await
        .map_err(|e| EngineError::DeadLetterQueue {
            arn: arn.to_owned(),
            source: classify(&e),
        })?
        .queue_url
        .ok_or_else(|| EngineError::DeadLetterQueue {
            arn: arn.to_owned(),
            source: AwsError {
                class: crate::aws_error::ErrorClass::Permanent,
                code: "no-url".into(),
                message: "GetQueueUrl returned no URL".into(),
            },
        })
}

/// The last path segment of a queue URL.
pub fn queue_name(queue_url: &str) -> String {
    queue_url.rsplit('/').next().unwrap_or(queue_url).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redrive_policy_count_parses_as_number_or_string() {
        for text in [
            r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:1:q-dlq","maxReceiveCount":3}"#,
            r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:1:q-dlq","maxReceiveCount":"3"}"#,
        ] {
            let p: RedrivePolicy = serde_json::from_str(text).unwrap();
            assert_eq!(p.max_receive_count, 3);
        }
    }

    #[test]
    fn queue_name_is_the_last_segment() {
        assert_eq!(
            queue_name("http://127.0.0.1:4566/000000000000/payments"),
            "payments"
        );
    }
}
