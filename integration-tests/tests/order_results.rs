//! The auction pipeline's last step on LocalStack: accepted order results → S3 objects,
//! rejected ones → one SNS notification each, even when the same result is delivered twice,
//! one after the other or at the same time.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use aws_sdk_dynamodb::types::AttributeValue;
use integration_tests::{eventually, number_attribute, sdk_config, Proxy, Stack, Worker};
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
    worker.stop().await?;
    Ok(())
}

/// Sends each body as one message, 10 per batch.
async fn send_all(stack: &Stack, queue_url: &str, bodies: &[String]) -> Result<()> {
    for chunk in bodies.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, body)| {
                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body)
                    .build()
                    .expect("id and body are set")
            })
            .collect();
        let out = stack
            .sqs
            .send_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await?;
        anyhow::ensure!(out.failed.is_empty(), "send failed: {:?}", out.failed);
    }
    Ok(())
}

/// Issue 14: the same rejection delivered twice at once, to two workers, is notified once.
///
/// SNS is reached through a slow link (a publish takes at least a second), and the second
/// copies follow the first ones 400 ms later: each second delivery claims while the first is
/// between its claim and its `SENT` mark. (Not in the same millisecond: LocalStack's DynamoDB
/// here is moto, whose conditional writes are not atomic, so two claims of one item that
/// reach it together can both pass their condition, which DynamoDB never allows.)
#[tokio::test]
async fn a_rejection_delivered_twice_at_once_is_notified_once() -> Result<()> {
    const REJECTIONS: usize = 20;
    let stack = Stack::provision().await?;
    let inbox = stack.subscribe_inbox("notifications").await?;
    let mut slow_sns = Proxy::reserve(Duration::from_millis(1000)).await?;
    slow_sns.start().await?;
    let env = stack.worker_env_with(
        WORKER,
        &[
            ("AWS_ENDPOINT_URL_SNS", &slow_sns.url()),
            // A delivery told to come back later does so within a second or two.
            ("FLEET_RETRY_BASE_MS", "300"),
            ("FLEET_RETRY_MAX_SECS", "1"),
            // Room for every copy at once: the second copies are not held back behind the
            // first ones.
            ("FLEET_MIN_CONCURRENCY", "40"),
        ],
    );
    let workers = [Worker::spawn(WORKER, &env)?, Worker::spawn(WORKER, &env)?];
    let queue = stack.queue("order-results").clone();

    let ids: Vec<String> = (0..REJECTIONS).map(|i| format!("dup-{i:02}")).collect();
    let bodies: Vec<String> = ids
        .iter()
        .map(|id| json!({"cycle": "2026-11-23T00.40Z", "record_id": id, "status": "rejected", "reason": "price below the clearing price"}).to_string())
        .collect();
    send_all(&stack, &queue.url, &bodies).await?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    send_all(&stack, &queue.url, &bodies).await?;

    // Every copy is finished (deleted), the later ones after the first was sent.
    eventually(
        Duration::from_secs(90),
        "both copies of each rejection handled",
        || async { Ok((stack.depth(&queue.url).await? == 0).then_some(())) },
    )
    .await?;
    let mut received = Vec::new();
    let started = std::time::Instant::now();
    while received.len() < REJECTIONS && started.elapsed() < Duration::from_secs(30) {
        received.extend(stack.drain(&inbox, 100).await?);
    }
    // SNS delivers to the inbox asynchronously: give late copies the time to arrive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    received.extend(stack.drain(&inbox, 100).await?);

    let mut per_rejection: HashMap<String, usize> = HashMap::new();
    for m in &received {
        let note: Value = serde_json::from_str(m.body().unwrap_or_default())?;
        *per_rejection
            .entry(note["record_id"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    let wrong: Vec<String> = ids
        .iter()
        .filter_map(|id| {
            let n = per_rejection.get(id).copied().unwrap_or(0);
            (n != 1).then(|| format!("{n} notifications for rejection {id}"))
        })
        .collect();
    let total = |name: &str| workers.iter().map(|w| w.total(name)).sum::<u64>();
    assert!(
        wrong.is_empty(),
        "{} of {REJECTIONS} rejections not notified exactly once ({} notifications in all, \
         notifications_sent {}, duplicates {}, retried {}): {wrong:#?}",
        wrong.len(),
        received.len(),
        total("notifications_sent"),
        total("duplicates"),
        total("retried"),
    );
    assert_eq!(received.len(), REJECTIONS);
    assert_eq!(total("dead_lettered"), 0, "nothing dead-lettered");
    let waited = integration_tests::count_logged(&workers, "error_kind", "claimed-elsewhere");
    assert!(
        waited >= REJECTIONS / 2,
        "the copies overlapped: {waited} deliveries found the claim held"
    );
    integration_tests::terminate_all(workers).await
}

/// How long a notification's dedupe record is kept after it was last written: 35 days.
const NOTIFICATION_TTL_SECS: u64 = 35 * 24 * 3600;

/// Issue 15: the dedupe record of a notification expires (DynamoDB TTL on `expires_at`, in
/// seconds) 35 days after it was marked `SENT`: past every redelivery of the order result
/// that could still need it (4 days in order-results, 14 in its DLQ, 4 again after a redrive).
#[tokio::test]
async fn a_notification_dedupe_record_expires_35_days_after_it_was_sent() -> Result<()> {
    let stack = Stack::provision().await?;
    let worker = Worker::spawn(WORKER, &stack.worker_env(WORKER))?;
    let before = fleet::util::now_ms() / 1000;
    stack
        .sqs
        .send_message()
        .queue_url(&stack.queue("order-results").url)
        .message_body(
            json!({"cycle": "2026-11-24T01.00Z", "record_id": "ttl-1", "status": "rejected", "reason": "price below the clearing price"})
                .to_string(),
        )
        .send()
        .await?;
    let table = stack.table("notifications").to_owned();
    let record = eventually(Duration::from_secs(30), "the record SENT", || async {
        let item = stack
            .item(&table, "notification_id", "2026-11-24T01.00Z/ttl-1")
            .await?;
        Ok(item.filter(|i| i.get("status") == Some(&AttributeValue::S("SENT".into()))))
    })
    .await?;
    let after = fleet::util::now_ms() / 1000;
    let expires = number_attribute(&record, "expires_at")?;
    assert!(
        (before + NOTIFICATION_TTL_SECS..=after + NOTIFICATION_TTL_SECS).contains(&expires),
        "expires_at {expires} not 35 days after the notification ({before}..={after})"
    );
    assert_eq!(stack.ttl_attribute(&table).await?, "expires_at");
    worker.stop().await?;
    Ok(())
}
