//! Posts end to end on LocalStack: create behind the API key, approval through the simulator,
//! the public list and reads without a key, decisions once, and the archive of expired posts
//! by the sweep and by a TTL stream record alike.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, Result};
use aws_sdk_dynamodb::types::AttributeValue;
use integration_tests::{call, eventually, string_attr, Stack, Worker};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Starts a worker of the posts service with extra environment.
fn start(stack: &Stack, worker: &str, extra: &[(&str, &str)]) -> Result<Worker> {
    let mut env = stack.worker_env(worker);
    env.insert("FLEET_WAIT_TIME_SECS".into(), "1".into());
    for (k, v) in extra {
        env.insert((*k).into(), (*v).into());
    }
    Worker::spawn(worker, &env)
}

/// The whole approval flow: intake, the simulator with a policy and a delay, decisions.
fn start_flow(stack: &Stack, policy: &str, delay_secs: &str) -> Result<Vec<Worker>> {
    Ok(vec![
        start(stack, "posts-worker", &[])?,
        start(
            stack,
            "approval-simulator",
            &[
                ("APPROVAL_POLICY", policy),
                ("APPROVAL_DELAY_SECS", delay_secs),
            ],
        )?,
        start(stack, "approvals-worker", &[])?,
    ])
}

async fn create(stack: &Stack, post: &Value) -> Result<String> {
    let (status, body) = stack.call(Method::POST, "/posts", Some(post)).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    Ok(body["post_id"].as_str().context("post_id")?.to_owned())
}

/// A public read: no API key.
async fn public(stack: &Stack, path: &str) -> Result<(StatusCode, Value)> {
    call(stack.api_as(None, Method::GET, path)).await
}

async fn item(
    stack: &Stack,
    table: &str,
    post_id: &str,
) -> Result<Option<HashMap<String, AttributeValue>>> {
    Ok(stack
        .dynamodb
        .get_item()
        .table_name(stack.table(table))
        .key("post_id", AttributeValue::S(post_id.to_owned()))
        .consistent_read(true)
        .send()
        .await?
        .item)
}

fn text<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> &'a str {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map_or("", String::as_str)
}

fn post(title: &str) -> Value {
    json!({"title": title, "body": "Some text.", "author": "Ada"})
}

async fn listed(stack: &Stack) -> Result<Vec<String>> {
    let (status, page) = public(stack, "/posts?limit=50").await?;
    assert_eq!(status, StatusCode::OK, "{page}");
    Ok(page["items"]
        .as_array()
        .context("items")?
        .iter()
        .map(|p| p["post_id"].as_str().unwrap_or_default().to_owned())
        .collect())
}

#[tokio::test]
async fn a_post_waits_pending_is_listed_once_approved_and_is_deleted_when_rejected() -> Result<()> {
    let stack = Stack::provision().await?;
    let _flow = start_flow(&stack, "reject-words:spam", "3")?;

    let id = create(&stack, &post("Hello, world")).await?;
    let pending = eventually(Duration::from_secs(20), "the post stored", || async {
        item(&stack, "posts", &id).await
    })
    .await?;
    assert_eq!(text(&pending, "status"), "PENDING");
    assert!(
        !listed(&stack).await?.contains(&id),
        "a pending post is not public"
    );
    let (status, _) = public(&stack, &format!("/posts/{id}")).await?;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a pending post is not public"
    );

    eventually(Duration::from_secs(30), "the post listed", || async {
        Ok(listed(&stack).await?.contains(&id).then_some(()))
    })
    .await?;
    let (status, body) = public(&stack, &format!("/posts/{id}")).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["title"], "Hello, world");
    assert!(body["approved_at"].is_u64());

    let spam = create(&stack, &post("Cheap spam here")).await?;
    let decision = eventually(
        Duration::from_secs(30),
        "the rejection recorded",
        || async { item(&stack, "post-decisions", &spam).await },
    )
    .await?;
    assert_eq!(text(&decision, "decision"), "REJECTED");
    assert!(text(&decision, "reason").contains("spam"));
    assert!(
        item(&stack, "posts", &spam).await?.is_none(),
        "a rejected post is deleted"
    );
    assert!(!listed(&stack).await?.contains(&spam));
    Ok(())
}

#[tokio::test]
async fn redeliveries_and_repeated_responses_give_one_request_and_one_decision() -> Result<()> {
    let stack = Stack::provision().await?;
    let posts = stack.queue("posts").clone();
    let intake = start(&stack, "posts-worker", &[])?;
    let send = |id: &'static str| {
        stack
            .sqs
            .send_message()
            .queue_url(&posts.url)
            .message_body(post("Twice").to_string())
            .message_attributes("postId", string_attr(id))
            .message_attributes(
                fleet::gateway::ATTR_RECEIVED_AT,
                string_attr(&fleet::util::now_ms().to_string()),
            )
            .send()
    };
    // A redelivery after the first delivery was handled: the post says its approval was
    // requested, nothing is sent again.
    send("post-twice").await?;
    intake
        .wait_for_total("succeeded", 1, Duration::from_secs(30))
        .await?;
    send("post-twice").await?;
    intake
        .wait_for_total("duplicates", 1, Duration::from_secs(30))
        .await?;
    assert_eq!(
        intake.total("approval_requests_sent"),
        1,
        "one approval request"
    );
    // Two deliveries at once (both before either marks the post): the FIFO queue's
    // deduplication by post id keeps one request.
    tokio::try_join!(send("post-concurrent"), send("post-concurrent"))?;
    intake
        .wait_for_total("received", 4, Duration::from_secs(30))
        .await?;
    let requests = stack.queue("approval-requests").clone();
    eventually(
        Duration::from_secs(10),
        "both deliveries handled",
        || async {
            Ok((intake.total("succeeded") + intake.total("duplicates") == 4).then_some(()))
        },
    )
    .await?;
    assert_eq!(stack.depth(&requests.url).await?, 2, "one request per post");

    let approvals = start(&stack, "approvals-worker", &[])?;
    let responses = stack.queue("approval-responses").clone();
    let respond = |body: Value| {
        stack
            .sqs
            .send_message()
            .queue_url(&responses.url)
            .message_body(body.to_string())
            .send()
    };
    // The same response twice, the second after the first was applied (moto, which serves
    // DynamoDB here, restores whole tables when a transaction fails, so concurrent
    // transactions of which one fails are not emulated faithfully; see docs/localstack.md).
    respond(json!({"post_id": "post-twice", "decision": "APPROVED"})).await?;
    approvals
        .wait_for_total("succeeded", 1, Duration::from_secs(30))
        .await?;
    respond(json!({"post_id": "post-twice", "decision": "APPROVED"})).await?;
    respond(json!({"post_id": "never-created", "decision": "REJECTED", "reason": "x"})).await?;
    approvals
        .wait_for_total("responses_ignored", 1, Duration::from_secs(30))
        .await?;
    approvals
        .wait_for_total("duplicates", 1, Duration::from_secs(30))
        .await?;
    assert_eq!(
        approvals.total("succeeded") - approvals.total("responses_ignored"),
        1,
        "one decision applied"
    );
    let decision = item(&stack, "post-decisions", "post-twice")
        .await?
        .context("decision")?;
    assert_eq!(text(&decision, "decision"), "APPROVED");
    assert!(item(&stack, "post-decisions", "never-created")
        .await?
        .is_none());
    assert_eq!(
        approvals.total("dead_lettered"),
        0,
        "an unknown post is not an error loop"
    );
    let stored = item(&stack, "posts", "post-twice")
        .await?
        .context("the post")?;
    assert_eq!(text(&stored, "status"), "APPROVED");
    assert_eq!(stack.depth(&responses.dlq_url).await?, 0);
    Ok(())
}

#[tokio::test]
async fn reads_are_public_creating_needs_a_key_and_bad_bodies_are_refused() -> Result<()> {
    let stack = Stack::provision().await?;
    let (status, page) = public(&stack, "/posts").await?;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["items"], json!([]));
    let status = stack
        .http
        .post(format!("{}/posts", stack.info.api.url))
        .header("content-type", "application/json")
        .body(post("No key").to_string())
        .send()
        .await?
        .status();
    assert_eq!(status, StatusCode::FORBIDDEN);
    for (body, what) in [
        (json!({"title": "t", "body": "b"}), "no author"),
        (
            json!({"title": "t", "body": "b", "author": "a", "extra": 1}),
            "unknown field",
        ),
        (
            json!({"title": "   ", "body": "b", "author": "a"}),
            "blank title",
        ),
        (
            json!({"title": "t".repeat(201), "body": "b", "author": "a"}),
            "title too long",
        ),
        (
            json!({"title": "t", "body": 5, "author": "a"}),
            "body not a string",
        ),
    ] {
        let response = stack
            .api(Method::POST, "/posts")
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await?;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{what}");
    }
    assert_eq!(
        stack.depth(&stack.queue("posts").url).await?,
        0,
        "nothing refused was queued"
    );
    for path in ["/posts?limit=0", "/posts?next_token=garbage"] {
        let (status, body) = public(&stack, path).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
    }
    Ok(())
}

#[tokio::test]
async fn an_expired_post_is_archived_once_whether_the_sweep_or_a_ttl_record_reports_it(
) -> Result<()> {
    let stack = Stack::provision().await?;
    let past = fleet::util::now_ms() / 1000 - 60;
    let s = |v: &str| AttributeValue::S(v.to_owned());
    let n = |v: u64| AttributeValue::N(v.to_string());
    for id in ["old-1", "fresh-1"] {
        let expires = if id == "old-1" {
            past
        } else {
            past + 30 * 24 * 3600
        };
        stack
            .dynamodb
            .put_item()
            .table_name(stack.table("posts"))
            .item("post_id", s(id))
            .item("title", s("Old news"))
            .item("body", s("text"))
            .item("author", s("Ada"))
            .item("status", s("APPROVED"))
            .item("listing", s("APPROVED"))
            .item("created_at", n(1))
            .item("expires_at", n(expires))
            .send()
            .await?;
    }
    // The stream path (as EventBridge Pipes delivers a TTL deletion), and a rejection's
    // deletion, which must not be archived.
    let archive = stack.queue("posts-archive").clone();
    let ttl_record = json!({
        "eventName": "REMOVE",
        "userIdentity": {"type": "Service", "principalId": "dynamodb.amazonaws.com"},
        "dynamodb": {
            "Keys": {"post_id": {"S": "old-1"}},
            "OldImage": {"post_id": {"S": "old-1"}, "title": {"S": "Old news"}, "body": {"S": "text"},
                         "author": {"S": "Ada"}, "status": {"S": "APPROVED"}, "created_at": {"N": "1"},
                         "expires_at": {"N": past.to_string()}}
        }
    });
    let rejection_record =
        json!({"eventName": "REMOVE", "dynamodb": {"Keys": {"post_id": {"S": "fresh-1"}}}});
    for body in [ttl_record, rejection_record] {
        stack
            .sqs
            .send_message()
            .queue_url(&archive.url)
            .message_body(body.to_string())
            .send()
            .await?;
    }
    // And the sweep, every second.
    let worker = start(
        &stack,
        "archive-worker",
        &[("POSTS_SWEEP_INTERVAL_SECS", "1")],
    )?;
    eventually(
        Duration::from_secs(30),
        "the post gone from posts",
        || async {
            Ok(item(&stack, "posts", "old-1")
                .await?
                .is_none()
                .then_some(()))
        },
    )
    .await?;
    let archived = item(&stack, "posts-archive", "old-1")
        .await?
        .context("archived")?;
    assert_eq!(text(&archived, "title"), "Old news");
    worker
        .wait_for_total("duplicates", 1, Duration::from_secs(20))
        .await?;
    assert_eq!(worker.total("posts_archived"), 1, "archived exactly once");
    assert!(
        item(&stack, "posts", "fresh-1").await?.is_some(),
        "an unexpired post stays"
    );
    assert!(item(&stack, "posts-archive", "fresh-1").await?.is_none());
    assert_eq!(worker.total("dead_lettered"), 0);
    Ok(())
}

#[tokio::test]
async fn the_public_list_pages_through_approved_posts_newest_first() -> Result<()> {
    let stack = Stack::provision().await?;
    let _flow = start_flow(&stack, "approve-all", "0")?;
    let mut ids = HashSet::new();
    for i in 0..7 {
        ids.insert(create(&stack, &post(&format!("Post {i}"))).await?);
    }
    eventually(Duration::from_secs(60), "7 posts listed", || async {
        Ok((listed(&stack).await?.len() == 7).then_some(()))
    })
    .await?;
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &token {
            Some(t) => format!("/posts?limit=3&next_token={t}"),
            None => "/posts?limit=3".to_owned(),
        };
        let (status, page) = public(&stack, &path).await?;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages += 1;
        seen.extend(page["items"].as_array().context("items")?.iter().cloned());
        match page["next_token"].as_str() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
        assert!(pages < 10);
    }
    assert!(pages >= 3, "{pages} pages");
    let got: HashSet<String> = seen
        .iter()
        .map(|p| p["post_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, ids, "every approved post exactly once");
    assert_eq!(seen.len(), 7);
    let times: Vec<u64> = seen
        .iter()
        .map(|p| p["created_at"].as_u64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    Ok(())
}
