//! Payments end to end on LocalStack: API Gateway (the real OpenAPI document and mapping
//! templates) → SQS → payments-worker (the real binary) → DynamoDB.

use std::time::Duration;

use anyhow::Result;
use aws_sdk_dynamodb::types::AttributeValue;
use fleet::dlq::names;
use fleet::kind;
use integration_tests::{api_key_ids, call, eventually, payment_body, string_attr, Stack, Worker};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const WORKER: &str = "payments-worker";

async fn get_payment(stack: &Stack, id: &str) -> Result<(StatusCode, Value)> {
    stack
        .call(Method::GET, &format!("/payments/{id}"), None)
        .await
}

/// PUT /payments/{id} with `body` as it is (not necessarily valid JSON).
async fn put_payment(stack: &Stack, id: &str, body: &str) -> Result<(StatusCode, Value)> {
    call(
        stack
            .api(Method::PUT, &format!("/payments/{id}"))
            .header("content-type", "application/json")
            .body(body.to_owned()),
    )
    .await
}

async fn wait_stored(stack: &Stack, id: &str) -> Result<Value> {
    eventually(
        Duration::from_secs(30),
        &format!("payment {id} readable"),
        || async {
            let (status, body) = get_payment(stack, id).await?;
            Ok((status == StatusCode::OK).then_some(body))
        },
    )
    .await
}

#[tokio::test]
async fn put_is_stored_and_readable_through_the_gateway() -> Result<()> {
    let stack = Stack::provision().await?;
    let (status, _) = get_payment(&stack, "pay-1").await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "not stored yet");

    let worker = Worker::spawn(WORKER, &stack.worker_env(WORKER))?;
    let (status, accepted) = put_payment(&stack, "pay-1", &payment_body("user-1", "12.50")).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert!(
        accepted["request_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{accepted}"
    );
    assert!(
        accepted["message_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{accepted}"
    );

    let stored = wait_stored(&stack, "pay-1").await?;
    assert_eq!(stored["paymentId"], "pay-1");
    assert_eq!(stored["userId"], "user-1");
    assert_eq!(stored["amount"], json!(12.5));
    assert_eq!(stored["currency"], "EUR");
    assert_eq!(
        stored["requestId"], accepted["request_id"],
        "the gateway's request id is kept"
    );

    // Keyed by the caller's owner id (on the local stack: its API key id) and the payment id.
    let (key_id, _) = api_key_ids(&stack).await?;
    let row = stack
        .dynamodb
        .get_item()
        .table_name(stack.table("payments"))
        .key(
            "ownerPaymentId",
            AttributeValue::S(format!("{key_id}#pay-1")),
        )
        .send()
        .await?
        .item
        .expect("row stored");
    assert_eq!(row["amount"].as_n().unwrap(), "12.5");
    assert_eq!(row["payloadHash"].as_s().unwrap().len(), 64);
    assert_eq!(row["ownerId"].as_s().unwrap(), &key_id, "owner recorded");
    assert_eq!(row["paymentId"].as_s().unwrap(), "pay-1");
    assert_eq!(row["userId"].as_s().unwrap(), "user-1");
    assert_eq!(
        row["apiKeyId"].as_s().unwrap(),
        &key_id,
        "API key id recorded"
    );
    let (code, _, _) = worker.stop().await?;
    assert_eq!(code, Some(0));
    Ok(())
}

#[tokio::test]
async fn gateway_rejects_bad_requests_and_enqueues_nothing() -> Result<()> {
    let stack = Stack::provision().await?;
    let queue = stack.queue("payments").url.clone();
    let good = payment_body("user-1", "10");

    // No API key.
    let response = stack
        .http
        .put(format!("{}/payments/p-1", stack.info.api.url))
        .header("content-type", "application/json")
        .body(good.clone())
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // A wrong API key.
    let response = stack
        .http
        .put(format!("{}/payments/p-1", stack.info.api.url))
        .header("x-api-key", "not-a-key")
        .header("content-type", "application/json")
        .body(good.clone())
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    // One body per schema rule.
    let bad_bodies = [
        ("not JSON", "{not json".to_owned()),
        (
            "userId missing",
            r#"{"amount":1,"currency":"EUR"}"#.to_owned(),
        ),
        (
            "amount missing",
            r#"{"userId":"u","currency":"EUR"}"#.to_owned(),
        ),
        (
            "currency missing",
            r#"{"userId":"u","amount":1}"#.to_owned(),
        ),
        (
            "amount is a string",
            r#"{"userId":"u","amount":"1","currency":"EUR"}"#.to_owned(),
        ),
        (
            "amount zero",
            r#"{"userId":"u","amount":0,"currency":"EUR"}"#.to_owned(),
        ),
        (
            "amount negative",
            r#"{"userId":"u","amount":-3,"currency":"EUR"}"#.to_owned(),
        ),
        (
            "amount too large",
            r#"{"userId":"u","amount":1000000001,"currency":"EUR"}"#.to_owned(),
        ),
        (
            "currency lower case",
            r#"{"userId":"u","amount":1,"currency":"eur"}"#.to_owned(),
        ),
        (
            "currency too long",
            r#"{"userId":"u","amount":1,"currency":"EURO"}"#.to_owned(),
        ),
        (
            "unknown property",
            r#"{"userId":"u","amount":1,"currency":"EUR","admin":true}"#.to_owned(),
        ),
        (
            "userId empty",
            r#"{"userId":"","amount":1,"currency":"EUR"}"#.to_owned(),
        ),
        (
            "userId bad characters",
            r#"{"userId":"u 1","amount":1,"currency":"EUR"}"#.to_owned(),
        ),
        (
            "userId too long",
            format!(
                r#"{{"userId":"{}","amount":1,"currency":"EUR"}}"#,
                "u".repeat(65)
            ),
        ),
        (
            "reference too long",
            format!(
                r#"{{"userId":"u","amount":1,"currency":"EUR","reference":"{}"}}"#,
                "r".repeat(257)
            ),
        ),
        (
            "userId a number",
            r#"{"userId":7,"amount":1,"currency":"EUR"}"#.to_owned(),
        ),
    ];
    for (rule, body) in &bad_bodies {
        let (status, answer) = put_payment(&stack, "p-1", body).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{rule}: {answer}");
        assert!(answer.is_object(), "{rule}: the error is JSON: {answer}");
    }

    // Path ids the worker could not store: API Gateway cannot check path patterns, so the
    // mapping template does (and SQS refuses what it then sends).
    let long_id = "i".repeat(65);
    for bad_id in [
        "bad%20id",
        "quote%27s",
        "new%0Aline",
        "caf%C3%A9",
        long_id.as_str(),
    ] {
        let (status, answer) = put_payment(&stack, bad_id, &good).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad_id}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains("paymentId"),
            "{answer}"
        );
    }

    // A non-JSON content type: AWS answers 415 (no template for it, passthrough never);
    // LocalStack answers 400. Either way a 4xx and nothing queued.
    let response = stack
        .api(Method::PUT, "/payments/p-1")
        .header("content-type", "text/plain")
        .body(good.clone())
        .send()
        .await?;
    assert!(
        [StatusCode::UNSUPPORTED_MEDIA_TYPE, StatusCode::BAD_REQUEST].contains(&response.status()),
        "text/plain → {}",
        response.status()
    );

    assert!(
        stack.drain(&queue, 1).await?.is_empty(),
        "nothing may be enqueued"
    );
    assert_eq!(stack.depth(&queue).await?, 0);

    // The same request with a key, a valid body and a valid id (64 characters) gets through.
    let max_id = "m".repeat(64);
    let (status, _) = put_payment(&stack, &max_id, &good).await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(stack.drain(&queue, 10).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn special_characters_arrive_byte_identical() -> Result<()> {
    let stack = Stack::provision().await?;
    let queue = stack.queue("payments").url.clone();
    let reference =
        "a&b=c+d%20e%zz \"quoted\" 'single' \\ back / slash é ü 中文 🚀 <tag> #hash ?q=1";
    let body =
        json!({"userId": "user-2", "amount": 99.99, "currency": "JPY", "reference": reference});
    let text = format!("{{ \"userId\" : \"user-2\",\n \"amount\": 99.99, \"currency\":\"JPY\", \"reference\": {} }}", json!(reference));
    assert_eq!(serde_json::from_str::<Value>(&text)?, body);

    let (status, _) = put_payment(&stack, "pay-special", &text).await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    let messages = stack.drain(&queue, 1).await?;
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(
        message.body(),
        Some(text.as_str()),
        "the body is byte-identical"
    );
    let attrs = message.message_attributes().expect("attributes");
    assert_eq!(attrs["paymentId"].string_value(), Some("pay-special"));
    assert!(attrs[fleet::gateway::ATTR_REQUEST_ID]
        .string_value()
        .is_some_and(|v| !v.is_empty()));
    let (key_id, _) = api_key_ids(&stack).await?;
    assert_eq!(
        attrs[fleet::gateway::ATTR_API_KEY_ID].string_value(),
        Some(key_id.as_str())
    );
    assert_eq!(
        attrs[fleet::gateway::ATTR_OWNER_ID].string_value(),
        Some(key_id.as_str()),
        "the owner: the API key id without Cognito"
    );
    assert!(attrs[fleet::gateway::ATTR_RECEIVED_AT]
        .string_value()
        .is_some_and(|v| v.parse::<u64>().is_ok()));

    // Make it visible again and let the worker store it; the reference reads back the same.
    stack
        .sqs
        .change_message_visibility()
        .queue_url(&queue)
        .receipt_handle(message.receipt_handle().unwrap())
        .visibility_timeout(0)
        .send()
        .await?;
    let worker = Worker::spawn(WORKER, &stack.worker_env(WORKER))?;
    let stored = wait_stored(&stack, "pay-special").await?;
    assert_eq!(stored["reference"], reference);
    assert_eq!(stored["currency"], "JPY");
    worker.stop().await?;
    Ok(())
}

#[tokio::test]
async fn the_same_put_twice_stores_one_row() -> Result<()> {
    let stack = Stack::provision().await?;
    let worker = Worker::spawn(WORKER, &stack.worker_env(WORKER))?;
    let body = payment_body("user-3", "5");
    let (first, _) = put_payment(&stack, "pay-twice", &body).await?;
    let (second, _) = put_payment(&stack, "pay-twice", &body).await?;
    assert_eq!(
        (first, second),
        (StatusCode::ACCEPTED, StatusCode::ACCEPTED)
    );
    wait_stored(&stack, "pay-twice").await?;
    eventually(Duration::from_secs(30), "both messages handled", || async {
        Ok((worker.total("succeeded") + worker.total("duplicates") >= 2).then_some(()))
    })
    .await?;
    let (code, _, worker) = worker.stop().await?;
    assert_eq!(code, Some(0));
    assert_eq!(worker.total("succeeded"), 1);
    assert_eq!(worker.total("duplicates"), 1);
    assert_eq!(stack.count_rows(stack.table("payments")).await?, 1);
    assert_eq!(
        stack.depth(&stack.queue("payments").dlq_url).await?,
        0,
        "nothing in the DLQ"
    );
    assert_eq!(
        stack.depth(&stack.queue("payments").url).await?,
        0,
        "both deleted"
    );
    Ok(())
}

#[tokio::test]
async fn same_id_with_another_payload_is_a_conflict_in_the_dlq() -> Result<()> {
    let stack = Stack::provision().await?;
    let worker = Worker::spawn(WORKER, &stack.worker_env(WORKER))?;
    let (status, _) = put_payment(&stack, "pay-c", &payment_body("user-4", "10")).await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    let original = wait_stored(&stack, "pay-c").await?;

    let (status, _) = put_payment(&stack, "pay-c", &payment_body("user-4", "11")).await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    let dlq = stack.queue("payments").dlq_url.clone();
    let dead = stack
        .wait_for_messages(&dlq, "the conflict in the DLQ")
        .await?;
    assert_eq!(dead.len(), 1);
    let attrs = dead[0].message_attributes().unwrap();
    assert_eq!(attrs[names::KIND].string_value(), Some(kind::CONFLICT));
    assert!(attrs[names::MESSAGE]
        .string_value()
        .unwrap()
        .contains("pay-c"));
    assert_eq!(attrs[names::WORKER].string_value(), Some(WORKER));
    assert_eq!(
        attrs[names::RECEIVE_COUNT].string_value(),
        Some("1"),
        "at once, not after 3 receives"
    );
    // Five original attributes and six reasons exceed SQS's ten: the engine folds the originals.
    let originals: Value = serde_json::from_str(
        attrs[names::ORIGINAL_ATTRIBUTES]
            .string_value()
            .expect("original attributes kept"),
    )?;
    assert_eq!(originals["paymentId"]["string_value"], "pay-c");
    assert!(originals["ownerId"]["string_value"].is_string());
    assert!(dead[0].body().unwrap().contains("11"));

    let (_, after) = get_payment(&stack, "pay-c").await?;
    assert_eq!(after, original, "the stored row is untouched");
    assert_eq!(after["amount"], json!(10));
    worker.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_message_that_is_not_json_goes_to_the_dlq_at_once() -> Result<()> {
    let stack = Stack::provision().await?;
    let queue = stack.queue("payments").clone();
    stack
        .sqs
        .send_message()
        .queue_url(&queue.url)
        .message_body("this is not JSON")
        .message_attributes("paymentId", string_attr("pay-x"))
        .send()
        .await?;
    let worker = Worker::spawn(WORKER, &stack.worker_env(WORKER))?;
    let dead = stack
        .wait_for_messages(&queue.dlq_url, "the poison message in the DLQ")
        .await?;
    let attrs = dead[0].message_attributes().unwrap();
    assert_eq!(attrs[names::KIND].string_value(), Some(kind::INVALID_JSON));
    assert_eq!(attrs[names::RECEIVE_COUNT].string_value(), Some("1"));
    assert!(attrs[names::FAILED_AT]
        .string_value()
        .unwrap()
        .parse::<u64>()
        .is_ok());
    assert_eq!(
        attrs[names::SOURCE_QUEUE].string_value(),
        Some(queue.url.as_str())
    );
    assert_eq!(dead[0].body(), Some("this is not JSON"));
    let (_, _, worker) = worker.stop().await?;
    assert_eq!(worker.total("dead_lettered"), 1);
    assert_eq!(worker.total("dynamodb_writes"), 0);
    assert_eq!(
        stack.depth(&queue.url).await?,
        0,
        "removed from the source queue"
    );
    Ok(())
}

#[tokio::test]
async fn an_sqs_failure_is_a_5xx_json_answer_never_a_2xx() -> Result<()> {
    let stack = Stack::provision().await?;
    // Take the queue away from under the API.
    stack
        .sqs
        .delete_queue()
        .queue_url(&stack.queue("payments").url)
        .send()
        .await?;
    let (status, body) = put_payment(&stack, "pay-lost", &payment_body("user-5", "1")).await?;
    assert!(status.is_server_error(), "got {status}: {body}");
    assert!(body["message"].is_string(), "a JSON error body: {body}");
    assert!(body.get("message_id").is_none(), "{body}");
    Ok(())
}

#[tokio::test]
async fn provisioning_twice_converges_to_the_same_stack() -> Result<()> {
    let first = Stack::provision().await?;
    let again = first.reprovision().await?;
    assert_eq!(again.info.api.id, first.info.api.id, "same API");
    assert_eq!(again.info.api.key, first.info.api.key, "same API key");
    assert_eq!(again.queue("payments").url, first.queue("payments").url);
    assert_eq!(again.table("payments"), first.table("payments"));
    // And the API still works after the re-import.
    let (status, _) = put_payment(&again, "pay-re", &payment_body("user-6", "2")).await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    Ok(())
}
