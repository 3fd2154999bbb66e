//! The example worker (`examples/notes-worker`, docs/adding-a-worker.md) runs on the engine
//! like the real ones: on a queue and a table of its own (made here, without the provisioner),
//! it stores each note once, and dead-letters a conflict with its reason.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use aws_sdk_sqs::types::QueueAttributeName;
use fleet::dlq::names;
use fleet::gateway::ATTR_OWNER_ID;
use integration_tests::{endpoint, eventually, sdk_config, string_attr, Worker};

#[tokio::test]
async fn the_example_worker_stores_each_note_once_and_dead_letters_a_conflict() -> Result<()> {
    let sdk = sdk_config().await;
    let (sqs, dynamodb) = (
        aws_sdk_sqs::Client::new(&sdk),
        aws_sdk_dynamodb::Client::new(&sdk),
    );
    let name = format!("example-notes-{}", fastrand::u32(..));
    let dlq = sqs
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await?;
    let dlq_url = dlq.queue_url().context("dlq url")?.to_owned();
    let queue = sqs
        .create_queue()
        .queue_name(&name)
        .attributes(QueueAttributeName::VisibilityTimeout, "30")
        .send()
        .await?;
    let queue_url = queue.queue_url().context("queue url")?.to_owned();
    dynamodb
        .create_table()
        .table_name(&name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(notes_worker::KEY)
                .attribute_type(ScalarAttributeType::S)
                .build()?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(notes_worker::KEY)
                .key_type(KeyType::Hash)
                .build()?,
        )
        .send()
        .await?;

    let send = |id: &str, text: &str| {
        sqs.send_message()
            .queue_url(&queue_url)
            .message_body(serde_json::json!({ "text": text }).to_string())
            .message_attributes(notes_worker::ATTR_NOTE_ID, string_attr(id))
            .message_attributes(ATTR_OWNER_ID, string_attr("alice"))
            .send()
    };
    send("n-1", "hello").await?;
    send("n-1", "hello").await?;
    send("n-2", "world").await?;

    let env = HashMap::from([
        ("AWS_ENDPOINT_URL".to_owned(), endpoint()),
        ("AWS_REGION".to_owned(), "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID".to_owned(), "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY".to_owned(), "test".to_owned()),
        ("FLEET_QUEUE_URL".to_owned(), queue_url.clone()),
        ("FLEET_DLQ_URL".to_owned(), dlq_url.clone()),
        ("FLEET_LOG_FORMAT".to_owned(), "json".to_owned()),
        ("FLEET_METRICS_INTERVAL_SECS".to_owned(), "1".to_owned()),
        ("NOTES_TABLE".to_owned(), name.clone()),
    ]);
    let worker = Worker::spawn("notes-worker", &env)?;
    let handled = |n: u64| {
        let worker = &worker;
        eventually(
            Duration::from_secs(60),
            "notes handled",
            move || async move {
                let t = worker.totals();
                let done: u64 = ["succeeded", "duplicates", "dead_lettered"]
                    .iter()
                    .map(|k| t.get(*k).copied().unwrap_or(0))
                    .sum();
                Ok((done >= n).then_some(()))
            },
        )
    };
    handled(3).await?;
    // Once n-2 is stored: the same id with another text.
    send("n-2", "another world").await?;
    handled(4).await?;
    let (code, _, worker) = worker.terminate(Duration::from_secs(30)).await?;
    assert_eq!(code, Some(0), "{}", worker.stderr_text());

    let rows = dynamodb.scan().table_name(&name).send().await?;
    let mut texts: Vec<&str> = rows
        .items()
        .iter()
        .filter_map(|item| item.get("text")?.as_s().ok().map(String::as_str))
        .collect();
    texts.sort_unstable();
    // One row per note; the second n-2 changed nothing.
    assert_eq!(texts, ["hello", "world"]);
    let totals = worker.totals();
    assert_eq!(totals.get("succeeded"), Some(&2), "{totals:?}");
    assert_eq!(totals.get("duplicates"), Some(&1), "{totals:?}");

    let dead = sqs
        .receive_message()
        .queue_url(&dlq_url)
        .message_attribute_names("All")
        .wait_time_seconds(5)
        .send()
        .await?;
    let [message] = dead.messages() else {
        panic!("one dead letter expected: {:?}", dead.messages());
    };
    let attrs = message.message_attributes().context("attributes")?;
    assert_eq!(
        attrs[names::KIND].string_value(),
        Some(fleet::kind::CONFLICT)
    );
    assert_eq!(message.body(), Some(r#"{"text":"another world"}"#));

    for url in [&queue_url, &dlq_url] {
        sqs.delete_queue().queue_url(url).send().await?;
    }
    dynamodb.delete_table().table_name(&name).send().await?;
    Ok(())
}
