//! The auction pipeline's last step on LocalStack: accepted order results → S3 objects,
//! rejected ones → one SNS notification each, even when the same result is delivered twice.

use std::time::Duration;

use anyhow::{Context, Result};
use integration_tests::{eventually, sdk_config, Stack, Worker};
use serde_json::{json, Value};

const WORKER: &str = "order-results-worker";

#[tokio::test]
async fn accepted_results_go_to_s3_and_each_rejection_is_notified_once() -> Result<()> {
    let stack = Stack::provision().await?;
    let sdk = sdk_config().await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );
    // A chat channel's stand-in: an SQS queue subscribed to the notifications topic.
    let inbox = stack.subscribe_inbox("notifications").await?;

    let worker = Worker::spawn(WORKER, &stack.worker_env(WORKER))?;
    let queue = stack.queue("order-results").clone();
    let send = |body: Value| {
        stack
            .sqs
            .send_message()
            .queue_url(&queue.url)
            .message_body(body.to_string())
            .send()
    };
    let accepted = json!({"cycle": "2026-11-22T23.10Z", "record_id": "a-1", "status": "accepted", "price": 2.1, "volume_mwh": 12.5});
    send(accepted.clone()).await?;
    let bucket = stack.info.buckets.get("results").context("bucket")?.clone();
    let object = eventually(Duration::from_secs(30), "the result in S3", || async {
        Ok(s3
            .get_object()
            .bucket(&bucket)
            .key("results/2026-11-22T23.10Z/a-1.json")
            .send()
            .await
            .ok())
    })
    .await?;
    assert!(
        object.server_side_encryption().is_some(),
        "encryption requested"
    );
    let stored: Value = serde_json::from_slice(&object.body.collect().await?.into_bytes())?;
    assert_eq!(stored, accepted);

    let rejected = json!({"cycle": "2026-11-22T23.10Z", "record_id": "x-1", "status": "rejected", "reason": "price below the clearing price"});
    send(rejected.clone()).await?;
    worker
        .wait_for_total("notifications_sent", 1, Duration::from_secs(30))
        .await?;
    send(rejected).await?; // a redelivery
    worker
        .wait_for_total("duplicates", 1, Duration::from_secs(30))
        .await?;
    assert_eq!(worker.total("notifications_sent"), 1);

    let received = stack.drain(&inbox, 10).await?;
    assert_eq!(received.len(), 1, "exactly one notification: {received:?}");
    let note: Value = serde_json::from_str(received[0].body().unwrap_or_default())?;
    assert_eq!(note["record_id"], "x-1");
    assert_eq!(note["event"], "order-rejected");
    assert!(note["text"]
        .as_str()
        .unwrap_or("")
        .contains("clearing price"));
    assert_eq!(
        worker.total("dead_lettered"),
        0,
        "a rejection is finished, not retried"
    );
    worker.terminate(Duration::from_secs(30)).await?;
    Ok(())
}
