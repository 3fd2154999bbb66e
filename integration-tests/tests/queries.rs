//! The query side on LocalStack, through the real mapping templates: page tokens are bound to
//! the query they were issued for (books per author, the public posts list, VPC requests per
//! owner), and an order reads as absent once its 24 h have passed, its `record_id` free again.
//!
//! The listed items are written straight into the tables (the templates are under test here,
//! not the workers that normally write them).

use std::time::Duration;

use anyhow::{Context, Result};
use aws_sdk_dynamodb::types::AttributeValue;
use fleet::dlq::names;
use fleet::kind;
use integration_tests::{api_key_ids, call, eventually, Stack, Worker};
use reqwest::{Method, StatusCode};
use serde_json::Value;

fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_owned())
}

fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

async fn put(stack: &Stack, table: &str, item: Vec<(&str, AttributeValue)>) -> Result<()> {
    let mut request = stack.dynamodb.put_item().table_name(stack.table(table));
    for (name, value) in item {
        request = request.item(name, value);
    }
    request.send().await?;
    Ok(())
}

/// GET `path` with `key` (None: no API key), answering the status and the JSON body.
async fn get_with(stack: &Stack, key: Option<&str>, path: &str) -> Result<(StatusCode, Value)> {
    call(stack.api_as(key, Method::GET, path)).await
}

async fn get(stack: &Stack, path: &str) -> Result<(StatusCode, Value)> {
    get_with(stack, Some(&stack.info.api.key), path).await
}

/// The `next_token` of a page that has one.
fn token_of(path: &str, status: StatusCode, page: &Value) -> Result<String> {
    assert_eq!(status, StatusCode::OK, "{path}: {page}");
    page["next_token"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("{path}: no next_token: {page}"))
}

/// A token used where it was not issued: 400 with a JSON message about the token.
fn assert_refused(what: &str, status: StatusCode, body: &Value) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("next_token"), "{what}: {body}");
}

async fn seed_books(stack: &Stack, author: &str, tag: &str, base: u64) -> Result<()> {
    for i in 0..3 {
        put(
            stack,
            "books",
            vec![
                ("book_id", s(&format!("{tag}-{i}"))),
                ("isbn", s("9780306406157")),
                ("title", s(&format!("{tag} {i}"))),
                ("author", s(author)),
                ("version", n(1)),
                ("created_at", n(base + i)),
                ("updated_at", n(base + i)),
            ],
        )
        .await?;
    }
    Ok(())
}

async fn seed_posts(stack: &Stack, base: u64) -> Result<()> {
    for i in 0..3 {
        put(
            stack,
            "posts",
            vec![
                ("post_id", s(&format!("post-{i}"))),
                ("title", s("t")),
                ("body", s("b")),
                ("author", s("a")),
                ("status", s("APPROVED")),
                ("listing", s("APPROVED")),
                ("created_at", n(base + i)),
                ("approved_at", n(base + i)),
            ],
        )
        .await?;
    }
    Ok(())
}

async fn seed_vpcs(stack: &Stack, owner: &str, base: u64) -> Result<()> {
    for i in 0..3 {
        put(
            stack,
            "vpc-requests",
            vec![
                ("request_id", s(&format!("{owner}-q{i}"))),
                ("owner", s(owner)),
                ("client", s(owner)),
                ("status", s("SUCCEEDED")),
                ("created_at", n(base + i)),
                ("updated_at", n(base + i)),
                ("vpc_cidr", s("10.0.0.0/16")),
                ("subnets", AttributeValue::L(vec![])),
            ],
        )
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_books_page_token_is_refused_for_another_author() -> Result<()> {
    let stack = Stack::provision().await?;
    let base = fleet::util::now_ms();
    seed_books(&stack, "Ann Leckie", "ann", base).await?;
    seed_books(&stack, "Bob Shaw", "bob", base + 100).await?;

    let first = "/books?author=Ann%20Leckie&limit=1";
    let (status, page) = get(&stack, first).await?;
    let token = token_of(first, status, &page)?;

    // The token goes on with the author it was issued for...
    let (status, next) = get(
        &stack,
        &format!("/books?author=Ann%20Leckie&limit=1&next_token={token}"),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{next}");
    assert_eq!(next["items"][0]["book_id"], "ann-1", "{next}");
    // ...and with no other one.
    let (status, body) = get(
        &stack,
        &format!("/books?author=Bob%20Shaw&limit=1&next_token={token}"),
    )
    .await?;
    assert_refused("Ann's token for Bob", status, &body);

    // Any author: the token stays URL-safe (this one's base64 has '+', '/' and '=').
    seed_books(&stack, "Zoë ~> Ω", "zoe", base + 200).await?;
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut path = "/books?author=Zo%C3%AB%20~%3E%20%CE%A9&limit=1".to_owned();
        if let Some(t) = &token {
            path.push_str(&format!("&next_token={t}"));
        }
        let (status, page) = get(&stack, &path).await?;
        assert_eq!(status, StatusCode::OK, "{path}: {page}");
        for item in page["items"].as_array().context("items")? {
            seen.push(item["book_id"].as_str().context("book_id")?.to_owned());
        }
        match page["next_token"].as_str() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
        assert!(seen.len() < 10, "pagination does not end: {seen:?}");
    }
    assert_eq!(seen, ["zoe-2", "zoe-1", "zoe-0"]);
    Ok(())
}

#[tokio::test]
async fn a_vpcs_page_token_is_refused_for_another_owner() -> Result<()> {
    let stack = Stack::provision().await?;
    let (mine, theirs) = api_key_ids(&stack).await?;
    let base = fleet::util::now_ms();
    seed_vpcs(&stack, &mine, base).await?;
    seed_vpcs(&stack, &theirs, base).await?;

    let first = "/vpcs?limit=1";
    let (status, page) = get(&stack, first).await?;
    let token = token_of(first, status, &page)?;
    let path = format!("/vpcs?limit=1&next_token={token}");
    let (status, next) = get(&stack, &path).await?;
    assert_eq!(status, StatusCode::OK, "{next}");
    assert_eq!(
        next["items"][0]["request_id"],
        format!("{mine}-q1").as_str(),
        "{next}"
    );
    let (status, body) = get_with(&stack, Some(&stack.info.api.other_key), &path).await?;
    assert_refused("my token for the other owner", status, &body);
    Ok(())
}

#[tokio::test]
async fn a_page_token_is_refused_by_the_other_lists() -> Result<()> {
    let stack = Stack::provision().await?;
    let (mine, _) = api_key_ids(&stack).await?;
    let base = fleet::util::now_ms();
    seed_books(&stack, "Ann Leckie", "ann", base).await?;
    seed_posts(&stack, base).await?;
    seed_vpcs(&stack, &mine, base).await?;

    let books = "/books?author=Ann%20Leckie&limit=1";
    let (status, page) = get(&stack, books).await?;
    let books_token = token_of(books, status, &page)?;
    let (status, page) = get_with(&stack, None, "/posts?limit=1").await?;
    let posts_token = token_of("/posts?limit=1", status, &page)?;
    let (status, page) = get(&stack, "/vpcs?limit=1").await?;
    let vpcs_token = token_of("/vpcs?limit=1", status, &page)?;

    let (status, next) = get_with(
        &stack,
        None,
        &format!("/posts?limit=1&next_token={posts_token}"),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{next}");
    assert_eq!(next["items"][0]["post_id"], "post-1", "{next}");

    let (status, body) = get_with(
        &stack,
        None,
        &format!("/posts?limit=1&next_token={books_token}"),
    )
    .await?;
    assert_refused("a books token for /posts", status, &body);
    let (status, body) = get(&stack, &format!("/vpcs?limit=1&next_token={posts_token}")).await?;
    assert_refused("a posts token for /vpcs", status, &body);
    let (status, body) = get(
        &stack,
        &format!("/books?author=Ann%20Leckie&limit=1&next_token={vpcs_token}"),
    )
    .await?;
    assert_refused("a vpcs token for /books", status, &body);
    Ok(())
}

/// An order as orders-worker stores it, received `age_secs` ago (expired when over 24 h).
async fn seed_order(stack: &Stack, owner: &str, id: &str, age_secs: u64) -> Result<()> {
    let received_at = fleet::util::now_ms() - age_secs * 1000;
    put(
        stack,
        "orders",
        vec![
            ("owner_record_id", s(&format!("{owner}#{id}"))),
            ("owner_id", s(owner)),
            ("record_id", s(id)),
            ("parameter_1", s("old")),
            ("parameter_2", AttributeValue::N("1".into())),
            ("payload_hash", s("an-older-payload")),
            ("received_at", n(received_at)),
            ("expires_at", n(received_at / 1000 + 24 * 3600)),
            ("message_id", s("m-old")),
        ],
    )
    .await
}

#[tokio::test]
async fn an_order_past_its_24_hours_reads_as_absent() -> Result<()> {
    let stack = Stack::provision().await?;
    let (owner, _) = api_key_ids(&stack).await?;
    seed_order(&stack, &owner, "expired", 25 * 3600).await?;
    seed_order(&stack, &owner, "live", 23 * 3600).await?;

    let (status, body) = get(&stack, "/orders/live").await?;
    assert_eq!(status, StatusCode::OK, "23 h old: {body}");
    assert_eq!(body["parameter_1"], "old");
    let (status, body) = get(&stack, "/orders/expired").await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "25 h old: {body}");
    let (_, unknown) = get(&stack, "/orders/never-stored").await?;
    assert_eq!(
        body["message"], unknown["message"],
        "as for an unknown id: {body} / {unknown}"
    );
    Ok(())
}

#[tokio::test]
async fn an_expired_record_id_can_be_ordered_again() -> Result<()> {
    let stack = Stack::provision().await?;
    let (owner, _) = api_key_ids(&stack).await?;
    seed_order(&stack, &owner, "again", 25 * 3600).await?;
    seed_order(&stack, &owner, "taken", 23 * 3600).await?;
    let worker = Worker::spawn("orders-worker", &stack.worker_env("orders-worker"))?;

    let response = stack
        .api(Method::POST, "/orders")
        .header("content-type", "application/json")
        .body(r#"[{"record_id":"again","parameter_1":"new","parameter_2":5}]"#)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let key = format!("{owner}#again");
    eventually(
        Duration::from_secs(30),
        "the expired order replaced",
        || {
            let key = key.clone();
            let stack = &stack;
            async move {
                let item = stack
                    .dynamodb
                    .get_item()
                    .table_name(stack.table("orders"))
                    .key("owner_record_id", s(&key))
                    .consistent_read(true)
                    .send()
                    .await?
                    .item
                    .context("the order")?;
                Ok((item["parameter_1"] == s("new")).then_some(()))
            }
        },
    )
    .await?;
    let (status, body) = get(&stack, "/orders/again").await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["parameter_1"], "new", "{body}");
    assert_eq!(body["parameter_2"], 5, "{body}");
    let expires = body["expires_at"].as_u64().context("expires_at")?;
    let now = fleet::util::now_ms() / 1000;
    assert!(expires > now + 23 * 3600, "24 h from now: {body}");

    // An unexpired order with other content is still a conflict: left untouched.
    let response = stack
        .api(Method::POST, "/orders")
        .header("content-type", "application/json")
        .body(r#"[{"record_id":"taken","parameter_1":"new","parameter_2":5}]"#)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let dead = stack
        .wait_for_messages(&stack.queue("orders").dlq_url, "the conflict in the DLQ")
        .await?;
    let attrs = dead[0].message_attributes().context("attributes")?;
    assert_eq!(attrs[names::KIND].string_value(), Some(kind::CONFLICT));
    let (status, body) = get(&stack, "/orders/taken").await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["parameter_1"], "old", "{body}");
    worker.stop().await?;
    Ok(())
}
