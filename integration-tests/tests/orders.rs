//! Energy-auction orders on LocalStack: POST /orders → SQS → orders-worker → DynamoDB (24 h
//! TTL, exact numbers) → GET /orders/{record_id}.

use std::time::Duration;

use anyhow::{Context, Result};
use aws_sdk_dynamodb::types::AttributeValue;
use fleet::dlq::names;
use fleet::kind;
use integration_tests::{api_key_ids, eventually, string_attr, Stack, Worker};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const WORKER: &str = "orders-worker";

async fn post_orders(stack: &Stack, body: &str) -> Result<(StatusCode, String)> {
    let response = stack
        .api(Method::POST, "/orders")
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await?;
    Ok((response.status(), response.text().await?))
}

async fn get_order(stack: &Stack, id: &str) -> Result<(StatusCode, String)> {
    let response = stack
        .api(Method::GET, &format!("/orders/{id}"))
        .send()
        .await?;
    Ok((response.status(), response.text().await?))
}

#[tokio::test]
async fn orders_are_kept_24_hours_with_their_numbers_exact() -> Result<()> {
    let stack = Stack::provision().await?;
    let worker = Worker::spawn(WORKER, &stack.worker_env(WORKER))?;
    let sent_at = fleet::util::now_ms();
    let (status, body) = post_orders(
        &stack,
        r#"[{"record_id":"r-1","parameter_1":"buy","parameter_2":2.1},
            {"record_id":"r-2","parameter_1":"sell","parameter_2":1e-7},
            {"record_id":"r-3","parameter_1":"hold","parameter_2":-12.50}]"#,
    )
    .await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let text = eventually(Duration::from_secs(30), "r-2 readable", || async {
        let (status, text) = get_order(&stack, "r-2").await?;
        Ok((status == StatusCode::OK).then_some(text))
    })
    .await?;
    assert!(
        text.contains(r#""parameter_2": 0.0000001"#),
        "1e-7 exactly: {text}"
    );
    let (_, text) = get_order(&stack, "r-1").await?;
    assert!(
        text.contains(r#""parameter_2": 2.1,"#),
        "2.1 exactly: {text}"
    );
    let order: Value = serde_json::from_str(&text)?;
    assert_eq!(order["parameter_1"], "buy");
    let expires = order["expires_at"].as_u64().context("expires_at")?;
    let expected = sent_at / 1000 + 24 * 3600;
    assert!(
        expires.abs_diff(expected) <= 60,
        "expires {expires}, receipt + 24 h = {expected}"
    );
    // Keyed by the caller's owner id (on the local stack: its API key id) and the record id.
    let (owner, _) = api_key_ids(&stack).await?;
    let stored = stack
        .dynamodb
        .get_item()
        .table_name(stack.table("orders"))
        .key("owner_record_id", AttributeValue::S(format!("{owner}#r-3")))
        .send()
        .await?
        .item
        .context("r-3")?;
    assert_eq!(stored["owner_id"], AttributeValue::S(owner.clone()));
    assert_eq!(stored["record_id"], AttributeValue::S("r-3".into()));
    assert_eq!(
        stored["parameter_2"],
        AttributeValue::N("-12.5".into()),
        "a number, exact"
    );
    assert_eq!(
        stack.ttl_attribute(stack.table("orders")).await?,
        "expires_at"
    );
    let (status, _) = get_order(&stack, "never").await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    worker.stop().await?;
    Ok(())
}

#[tokio::test]
async fn invalid_batches_are_refused_at_the_gateway() -> Result<()> {
    let stack = Stack::provision().await?;
    let record =
        |i: usize| json!({"record_id": format!("r-{i}"), "parameter_1": "x", "parameter_2": 1});
    let too_many = Value::Array((0..101).map(record).collect()).to_string();
    for (body, what) in [
        ("[]".to_owned(), "empty"),
        (too_many, "101 records"),
        (
            r#"[{"record_id":"r","parameter_1":"x","parameter_2":"2.1"}]"#.to_owned(),
            "a string number",
        ),
        (
            r#"[{"parameter_1":"x","parameter_2":1}]"#.to_owned(),
            "no record_id",
        ),
        (
            r#"[{"record_id":"r","parameter_1":"x","parameter_2":1,"p3":0}]"#.to_owned(),
            "unknown field",
        ),
        (
            r#"{"record_id":"r","parameter_1":"x","parameter_2":1}"#.to_owned(),
            "not an array",
        ),
        (
            r#"[{"record_id":"a b","parameter_1":"x","parameter_2":1}]"#.to_owned(),
            "bad id",
        ),
    ] {
        let (status, text) = post_orders(&stack, &body).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {text}");
    }
    assert_eq!(
        stack.depth(&stack.queue("orders").url).await?,
        0,
        "nothing refused was queued"
    );
    Ok(())
}

#[tokio::test]
async fn a_redelivered_batch_writes_nothing_and_a_conflicting_record_is_dead_lettered() -> Result<()>
{
    let stack = Stack::provision().await?;
    let queue = stack.queue("orders").clone();
    let worker = Worker::spawn(WORKER, &stack.worker_env(WORKER))?;
    // As the gateway sends them for the stack's key: its owner id is the key's id.
    let (owner, _) = api_key_ids(&stack).await?;
    let send = |body: &'static str| {
        stack
            .sqs
            .send_message()
            .queue_url(&queue.url)
            .message_body(body)
            .message_attributes(
                fleet::gateway::ATTR_RECEIVED_AT,
                string_attr(&fleet::util::now_ms().to_string()),
            )
            .message_attributes(fleet::gateway::ATTR_OWNER_ID, string_attr(&owner))
            .send()
    };
    send(r#"[{"record_id":"d-1","parameter_1":"x","parameter_2":3.0}]"#).await?;
    worker
        .wait_for_total("succeeded", 1, Duration::from_secs(30))
        .await?;
    send(r#"[{"record_id":"d-1","parameter_1":"x","parameter_2":3}]"#).await?;
    worker
        .wait_for_total("duplicates", 1, Duration::from_secs(30))
        .await?;
    send(r#"[{"record_id":"d-2","parameter_1":"y","parameter_2":1},{"record_id":"d-1","parameter_1":"x","parameter_2":4}]"#).await?;
    let dead = stack
        .wait_for_messages(&queue.dlq_url, "the conflict in the DLQ")
        .await?;
    let attrs = dead[0].message_attributes().context("attributes")?;
    assert_eq!(attrs[names::KIND].string_value(), Some(kind::CONFLICT));
    assert!(attrs[names::MESSAGE]
        .string_value()
        .unwrap_or("")
        .contains("d-1"));
    let (_, text) = get_order(&stack, "d-1").await?;
    assert!(
        text.contains(r#""parameter_2": 3,"#),
        "the first order stands: {text}"
    );
    let (status, _) = get_order(&stack, "d-2").await?;
    assert_eq!(status, StatusCode::OK, "the batch's other record is stored");
    assert_eq!(worker.total("orders_stored"), 2);
    worker.stop().await?;
    Ok(())
}
