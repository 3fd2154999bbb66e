//! Isolation between callers, service by service, with the local stack's two API keys: on the
//! local stack a caller's owner id is its API key id (on AWS with a user pool, the JWT's
//! `sub`; see docs/security.md and tests/terraform.rs for that choice). Reads of another
//! owner's records answer 404 exactly as for an unknown id, writes never reach another owner's
//! records, and the same id sent by two owners names two records. Books are a shared
//! catalogue: everyone reads, only the creator changes a book.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use aws_sdk_dynamodb::types::AttributeValue;
use fleet::dlq::names;
use fleet::kind;
use integration_tests::{api_key_ids, call, eventually, fleetctl, Stack, Worker};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// One caller: an API key and the owner id the gateway derives from it.
struct Caller {
    http: reqwest::Client,
    url: String,
    key: String,
    owner: String,
}

impl Caller {
    /// The stack's two callers: (mine, theirs).
    async fn pair(stack: &Stack) -> Result<(Self, Self)> {
        let (mine, theirs) = api_key_ids(stack).await?;
        assert_ne!(mine, theirs);
        let caller = |key: &str, owner: String| Self {
            http: stack.http.clone(),
            url: stack.info.api.url.clone(),
            key: key.to_owned(),
            owner,
        };
        Ok((
            caller(&stack.info.api.key, mine),
            caller(&stack.info.api.other_key, theirs),
        ))
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<(StatusCode, Value)> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("x-api-key", &self.key);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        call(request).await
    }

    async fn get(&self, path: &str) -> Result<(StatusCode, Value)> {
        self.call(Method::GET, path, &[], None).await
    }

    /// Waits until `path` answers 200 (and `ready` holds), and returns the body.
    async fn wait_for(&self, path: &str, ready: impl Fn(&Value) -> bool) -> Result<Value> {
        eventually(Duration::from_secs(60), path, || async {
            let (status, body) = self.get(path).await?;
            Ok((status == StatusCode::OK && ready(&body)).then_some(body))
        })
        .await
    }
}

/// A 404 with nothing in it but the message and the request id: no hint that the record
/// exists for someone else.
fn assert_bare_404(status: StatusCode, body: &Value, unknown: &Value, what: &str) {
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "{what}: another owner's record must be 404, got {body}"
    );
    let keys = |v: &Value| {
        let mut keys: Vec<String> = v
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        keys.sort();
        keys
    };
    assert_eq!(keys(body), keys(unknown), "{what}: {body} vs {unknown}");
    assert_eq!(body["message"], unknown["message"], "{what}");
}

async fn item(
    stack: &Stack,
    table: &str,
    key: &[(&str, &str)],
) -> Result<Option<HashMap<String, AttributeValue>>> {
    let mut get = stack
        .dynamodb
        .get_item()
        .table_name(stack.table(table))
        .consistent_read(true);
    for (name, value) in key {
        get = get.key(*name, AttributeValue::S((*value).to_owned()));
    }
    Ok(get.send().await?.item)
}

fn text<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

#[tokio::test]
async fn payments_are_unique_per_owner_and_invisible_to_other_owners() -> Result<()> {
    let stack = Stack::provision().await?;
    let (mine, theirs) = Caller::pair(&stack).await?;
    let worker = Worker::spawn("payments-worker", &stack.worker_env("payments-worker"))?;
    let body = |user: &str, amount: &str| {
        json!({"userId": user, "amount": amount.parse::<f64>().unwrap(), "currency": "EUR"})
            .to_string()
    };

    let (status, answer) = mine
        .call(
            Method::PUT,
            "/payments/pay-1",
            &[],
            Some(&body("user-1", "10")),
        )
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let stored = mine.wait_for("/payments/pay-1", |_| true).await?;
    assert_eq!(
        (&stored["userId"], &stored["amount"]),
        (&json!("user-1"), &json!(10))
    );

    // Another owner reads it: 404, the same answer as for an id nobody used.
    let (_, unknown) = theirs.get("/payments/pay-never").await?;
    let (status, seen) = theirs.get("/payments/pay-1").await?;
    assert_bare_404(
        status,
        &seen,
        &unknown,
        "GET /payments/pay-1 by another owner",
    );

    // Another owner's PUT of the same id is their own payment: mine is untouched.
    let (status, answer) = theirs
        .call(
            Method::PUT,
            "/payments/pay-1",
            &[],
            Some(&body("user-2", "99")),
        )
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let theirs_stored = theirs
        .wait_for("/payments/pay-1", |_| true)
        .await
        .context("the other owner's payment pay-1 is theirs to read")?;
    assert_eq!(
        (&theirs_stored["userId"], &theirs_stored["amount"]),
        (&json!("user-2"), &json!(99))
    );
    let (_, again) = mine.get("/payments/pay-1").await?;
    assert_eq!(again, stored, "my payment is untouched and still mine");
    assert_eq!(stack.count_rows(stack.table("payments")).await?, 2);
    for caller in [&mine, &theirs] {
        let row = item(
            &stack,
            "payments",
            &[("ownerPaymentId", &format!("{}#pay-1", caller.owner))],
        )
        .await?
        .with_context(|| format!("{}'s row under the owner-scoped key", caller.owner))?;
        assert_eq!(text(&row, "ownerId"), Some(caller.owner.as_str()));
        assert_eq!(text(&row, "paymentId"), Some("pay-1"));
    }

    // The same owner, the same id, another payload (another userId): a conflict, not a row.
    let (status, _) = mine
        .call(
            Method::PUT,
            "/payments/pay-1",
            &[],
            Some(&body("user-3", "10")),
        )
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    let dlq = stack.queue("payments").dlq_url.clone();
    let dead = stack.wait_for_messages(&dlq, "the conflict").await?;
    let attrs = dead[0].message_attributes().context("attributes")?;
    assert_eq!(attrs[names::KIND].string_value(), Some(kind::CONFLICT));
    assert!(dead[0].body().unwrap_or_default().contains("user-3"));
    assert_eq!(stack.count_rows(stack.table("payments")).await?, 2);
    assert_eq!(mine.get("/payments/pay-1").await?.1, stored);
    assert_eq!(theirs.get("/payments/pay-1").await?.1, theirs_stored);
    worker.stop().await?;
    Ok(())
}

#[tokio::test]
async fn orders_are_scoped_to_their_owner_for_writes_and_reads() -> Result<()> {
    let stack = Stack::provision().await?;
    let (mine, theirs) = Caller::pair(&stack).await?;
    let worker = Worker::spawn("orders-worker", &stack.worker_env("orders-worker"))?;
    let batch = |p1: &str, p2: u32| {
        json!([{"record_id": "o-1", "parameter_1": p1, "parameter_2": p2}]).to_string()
    };

    let (status, answer) = mine
        .call(Method::POST, "/orders", &[], Some(&batch("mine", 1)))
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let stored = mine.wait_for("/orders/o-1", |_| true).await?;
    assert_eq!(stored["parameter_1"], "mine");

    let (_, unknown) = theirs.get("/orders/o-never").await?;
    let (status, seen) = theirs.get("/orders/o-1").await?;
    assert_bare_404(status, &seen, &unknown, "GET /orders/o-1 by another owner");

    let (status, answer) = theirs
        .call(Method::POST, "/orders", &[], Some(&batch("theirs", 2)))
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let theirs_stored = theirs
        .wait_for("/orders/o-1", |_| true)
        .await
        .context("the other owner's o-1 is their own record")?;
    assert_eq!(theirs_stored["parameter_1"], "theirs");
    assert_eq!(mine.get("/orders/o-1").await?.1, stored, "mine untouched");
    assert_eq!(
        stack.depth(&stack.queue("orders").dlq_url).await?,
        0,
        "another owner's same record id is no conflict"
    );
    for caller in [&mine, &theirs] {
        let row = item(
            &stack,
            "orders",
            &[("owner_record_id", &format!("{}#o-1", caller.owner))],
        )
        .await?
        .with_context(|| format!("{}'s order under the owner-scoped key", caller.owner))?;
        assert_eq!(text(&row, "owner_id"), Some(caller.owner.as_str()));
        assert_eq!(text(&row, "record_id"), Some("o-1"));
    }
    worker.stop().await?;
    Ok(())
}

fn book(title: &str) -> String {
    json!({"isbn": "978-0-306-40615-7", "title": title, "author": "Isolde Owner", "year": 2001})
        .to_string()
}

#[tokio::test]
async fn books_are_read_by_all_and_changed_only_by_their_owner() -> Result<()> {
    let stack = Stack::provision().await?;
    let (mine, theirs) = Caller::pair(&stack).await?;
    let worker = Worker::spawn("books-worker", &stack.worker_env("books-worker"))?;

    let (status, created) = mine
        .call(Method::POST, "/books", &[], Some(&book("Mine")))
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let id = created["book_id"].as_str().context("book_id")?.to_owned();
    let create_rid = created["request_id"].as_str().context("request_id")?;
    let decided = mine
        .wait_for(&format!("/books/{id}/commands/{create_rid}"), |_| true)
        .await?;
    assert_eq!(decided["status"], "APPLIED");
    // The catalogue is shared: the other owner reads the book.
    let (status, shared) = theirs.get(&format!("/books/{id}")).await?;
    assert_eq!(status, StatusCode::OK, "{shared}");
    assert_eq!(shared["version"], 1);
    // But not my command's record.
    let (_, unknown) = theirs
        .get(&format!("/books/{id}/commands/no-such-request"))
        .await?;
    let (status, seen) = theirs
        .get(&format!("/books/{id}/commands/{create_rid}"))
        .await?;
    assert_bare_404(
        status,
        &seen,
        &unknown,
        "my command record read by another owner",
    );

    // The other owner's update and delete: rejected, readable by them only.
    for (method, headers, body) in [
        (Method::PUT, [("If-Match", "1")], Some(book("Theirs"))),
        (Method::DELETE, [("If-Match", "1")], None),
    ] {
        let (status, answer) = theirs
            .call(
                method.clone(),
                &format!("/books/{id}"),
                &headers,
                body.as_deref(),
            )
            .await?;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        let rid = answer["request_id"].as_str().context("request_id")?;
        let path = format!("/books/{id}/commands/{rid}");
        let decision = theirs.wait_for(&path, |_| true).await?;
        assert_eq!(
            (&decision["status"], &decision["reason"]),
            (&json!("REJECTED"), &json!("not-owner")),
            "{method} by another owner: {decision}"
        );
        let (status, seen) = mine.get(&path).await?;
        assert_bare_404(status, &seen, &unknown, "their command record read by me");
        let record = item(
            &stack,
            "book-commands",
            &[("book_id", &id), ("request_id", rid)],
        )
        .await?
        .context("their command record")?;
        assert_eq!(text(&record, "owner_id"), Some(theirs.owner.as_str()));
    }
    let (_, after) = mine.get(&format!("/books/{id}")).await?;
    assert_eq!(after, shared, "the book is untouched");

    // The owner's own update applies.
    let (_, answer) = mine
        .call(
            Method::PUT,
            &format!("/books/{id}"),
            &[("If-Match", "1")],
            Some(&book("Mine, revised")),
        )
        .await?;
    let rid = answer["request_id"].as_str().context("request_id")?;
    let decision = mine
        .wait_for(&format!("/books/{id}/commands/{rid}"), |_| true)
        .await?;
    assert_eq!(decision["status"], "APPLIED", "{decision}");
    let row = item(&stack, "books", &[("book_id", &id)])
        .await?
        .context("the book")?;
    assert_eq!(text(&row, "owner_id"), Some(mine.owner.as_str()));
    assert_eq!(text(&row, "title"), Some("Mine, revised"));

    // The same Idempotency-Key from both owners: two books, one each.
    let mut ids = Vec::new();
    for caller in [&mine, &theirs] {
        let (status, answer) = caller
            .call(
                Method::POST,
                "/books",
                &[("Idempotency-Key", "same-key")],
                Some(&book(&caller.owner)),
            )
            .await?;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        let id = answer["book_id"].as_str().context("book_id")?.to_owned();
        let rid = answer["request_id"]
            .as_str()
            .context("request_id")?
            .to_owned();
        let decision = caller
            .wait_for(&format!("/books/{id}/commands/{rid}"), |_| true)
            .await?;
        assert_eq!(decision["status"], "APPLIED", "{decision}");
        let row = item(&stack, "books", &[("book_id", &id)])
            .await?
            .context("the book")?;
        assert_eq!(text(&row, "owner_id"), Some(caller.owner.as_str()));
        assert_eq!(text(&row, "title"), Some(caller.owner.as_str()));
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "two owners' same key names two books");
    worker.stop().await?;
    Ok(())
}

#[tokio::test]
async fn posts_are_public_and_each_belongs_to_its_author() -> Result<()> {
    let stack = Stack::provision().await?;
    let (mine, theirs) = Caller::pair(&stack).await?;
    let mut workers = Vec::new();
    for (name, extra) in [
        ("posts-worker", vec![]),
        (
            "approval-simulator",
            vec![
                ("APPROVAL_POLICY", "approve-all"),
                ("APPROVAL_DELAY_SECS", "0"),
            ],
        ),
        ("approvals-worker", vec![]),
    ] {
        let mut env = stack.worker_env_with(name, &extra);
        env.insert("FLEET_WAIT_TIME_SECS".into(), "1".into());
        workers.push(Worker::spawn(name, &env)?);
    }
    let post = json!({"title": "Same key", "body": "text", "author": "A. Author"}).to_string();
    let mut ids = Vec::new();
    for caller in [&mine, &theirs] {
        let (status, answer) = caller
            .call(
                Method::POST,
                "/posts",
                &[("Idempotency-Key", "post-key")],
                Some(&post),
            )
            .await?;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        ids.push(answer["post_id"].as_str().context("post_id")?.to_owned());
    }
    assert_ne!(ids[0], ids[1], "two owners' same key names two posts");
    for (caller, id) in [&mine, &theirs].into_iter().zip(&ids) {
        // Public once approved: read without any key.
        eventually(Duration::from_secs(60), "the post public", || async {
            let response = stack
                .http
                .get(format!("{}/posts/{id}", stack.info.api.url))
                .send()
                .await?;
            Ok((response.status() == StatusCode::OK).then_some(()))
        })
        .await?;
        let row = item(&stack, "posts", &[("post_id", id)])
            .await?
            .context("the post")?;
        assert_eq!(
            text(&row, "owner_id"),
            Some(caller.owner.as_str()),
            "the post records its owner"
        );
    }
    let (_, page) = call(stack.api_as(None, Method::GET, "/posts?limit=50")).await?;
    let listed: Vec<&str> = page["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|p| p["post_id"].as_str())
        .collect();
    for id in &ids {
        assert!(listed.contains(&id.as_str()), "{id} listed: {listed:?}");
    }
    integration_tests::terminate_all(workers).await
}

#[tokio::test]
async fn vpc_requests_are_seen_by_their_owner_only() -> Result<()> {
    let stack = Stack::provision().await?;
    let (mine, theirs) = Caller::pair(&stack).await?;
    let env = stack.worker_env_with("vpc-worker", &[("VPC_PROJECT_TAG", &stack.info.prefix)]);
    let worker = Worker::spawn("vpc-worker", &env)?;
    let body = |second: u8| {
        json!({"vpc": {"cidr": format!("10.{second}.0.0/16")},
               "subnets": [{"cidr": format!("10.{second}.1.0/24"), "az": "us-east-1a"}]})
        .to_string()
    };
    let mut ids = Vec::new();
    for (caller, second) in [(&mine, 41), (&theirs, 42)] {
        let (status, answer) = caller
            .call(
                Method::POST,
                "/vpcs",
                &[("Idempotency-Key", "same-key")],
                Some(&body(second)),
            )
            .await?;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        let id = answer["request_id"]
            .as_str()
            .context("request_id")?
            .to_owned();
        assert_eq!(id, format!("{}-same-key", caller.owner));
        caller
            .wait_for(&format!("/vpcs/{id}"), |v| v["status"] == "SUCCEEDED")
            .await?;
        let row = item(&stack, "vpc-requests", &[("request_id", &id)])
            .await?
            .context("the request")?;
        assert_eq!(text(&row, "owner"), Some(caller.owner.as_str()));
        ids.push(id);
    }
    let (_, unknown) = theirs.get("/vpcs/nobody-s-request").await?;
    for (reader, id) in [(&theirs, &ids[0]), (&mine, &ids[1])] {
        let (status, seen) = reader.get(&format!("/vpcs/{id}")).await?;
        assert_bare_404(status, &seen, &unknown, "another owner's VPC request");
        let (_, page) = reader.get("/vpcs?limit=50").await?;
        let listed: Vec<&str> = page["items"]
            .as_array()
            .context("items")?
            .iter()
            .filter_map(|r| r["request_id"].as_str())
            .collect();
        assert!(!listed.contains(&id.as_str()), "{listed:?}");
        assert_eq!(listed.len(), 1, "only the reader's own request: {listed:?}");
    }
    worker.stop().await?;
    let (code, _, err) =
        fleetctl(&stack, &["vpc", "cleanup", "--project", &stack.info.prefix]).await?;
    assert_eq!(code, 0, "{err}");
    Ok(())
}
