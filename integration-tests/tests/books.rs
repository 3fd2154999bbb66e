//! Books end to end on LocalStack: commands through the gateway into the FIFO queue, applied in
//! order by books-worker (the real binary) with optimistic concurrency; queries and command
//! outcomes read straight from DynamoDB by the gateway.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result};
use fleet::dlq::names;
use fleet::kind;
use integration_tests::{call, dead_letter_kind, eventually, fleetctl, string_attr, Stack, Worker};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const WORKER: &str = "books-worker";
const ISBN: &str = "978-0-306-40615-7";

/// A client of the books API that tasks can own.
#[derive(Clone)]
struct Books {
    http: reqwest::Client,
    url: String,
    key: String,
}

impl Books {
    fn new(stack: &Stack) -> Self {
        Self {
            http: stack.http.clone(),
            url: stack.info.api.url.clone(),
            key: stack.info.api.key.clone(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
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
                .body(body.to_string());
        }
        call(request).await
    }

    /// POST /books; returns (book id, request id).
    async fn create(&self, book: &Value, key: Option<&str>) -> Result<(String, String)> {
        let headers: Vec<_> = key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
        let (status, body) = self
            .call(Method::POST, "/books", &headers, Some(book))
            .await?;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        Ok((text(&body["book_id"]), text(&body["request_id"])))
    }

    /// PUT /books/{id} at `version`; returns the request id.
    async fn update(&self, id: &str, version: u64, book: &Value) -> Result<String> {
        let version = version.to_string();
        let (status, body) = self
            .call(
                Method::PUT,
                &format!("/books/{id}"),
                &[("If-Match", &version)],
                Some(book),
            )
            .await?;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        Ok(text(&body["request_id"]))
    }

    async fn delete(&self, id: &str, version: Option<u64>) -> Result<String> {
        let version = version.map(|v| v.to_string());
        let headers: Vec<_> = version.iter().map(|v| ("If-Match", v.as_str())).collect();
        let (status, body) = self
            .call(Method::DELETE, &format!("/books/{id}"), &headers, None)
            .await?;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        Ok(text(&body["request_id"]))
    }

    async fn get(&self, id: &str) -> Result<(StatusCode, Value)> {
        self.call(Method::GET, &format!("/books/{id}"), &[], None)
            .await
    }

    /// Waits for the decision on a command (GET /books/{id}/commands/{request id}).
    async fn decision(&self, id: &str, request: &str) -> Result<Value> {
        let path = format!("/books/{id}/commands/{request}");
        eventually(
            Duration::from_secs(60),
            &format!("a decision on {path}"),
            || async {
                let (status, body) = self.call(Method::GET, &path, &[], None).await?;
                Ok((status == StatusCode::OK).then_some(body))
            },
        )
        .await
    }
}

fn text(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .to_owned()
}

fn book(title: &str, author: &str) -> Value {
    json!({"isbn": ISBN, "title": title, "author": author, "year": 1965, "tags": ["sf", "classic"]})
}

#[tokio::test]
async fn commands_on_one_book_sent_back_to_back_apply_in_order() -> Result<()> {
    let stack = Stack::provision().await?;
    let api = Books::new(&stack);
    // All queued before the worker starts: they reach it in one batch, one group per book.
    let (id, created) = api.create(&book("Dune", "Frank Herbert"), None).await?;
    let updated = api
        .update(&id, 1, &book("Dune Messiah", "Frank Herbert"))
        .await?;
    let deleted = api.delete(&id, Some(2)).await?;
    let (kept, kept_created) = api.create(&book("Emma", "Jane Austen"), None).await?;
    let kept_updated = api
        .update(
            &kept,
            1,
            &json!({"isbn": "0-306-40615-2", "title": "Emma (2nd ed.)", "author": "Jane Austen"}),
        )
        .await?;

    let worker = Worker::spawn(WORKER, &stack.worker_env(WORKER))?;
    for (request, version) in [(&created, 1), (&updated, 2), (&deleted, 3)] {
        let decision = api.decision(&id, request).await?;
        assert_eq!(decision["status"], "APPLIED", "{decision}");
        assert_eq!(decision["version"], version, "{decision}");
    }
    assert_eq!(
        api.decision(&kept, &kept_created).await?["status"],
        "APPLIED"
    );
    assert_eq!(
        api.decision(&kept, &kept_updated).await?["status"],
        "APPLIED"
    );

    let (status, _) = api.get(&id).await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "deleted");
    let (status, emma) = api.get(&kept).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(emma["title"], "Emma (2nd ed.)");
    assert_eq!(emma["isbn"], "0306406152", "stored as digits");
    assert_eq!(emma["version"], 2);
    assert_eq!(
        emma["year"],
        Value::Null,
        "a full replacement drops what it omits"
    );
    assert_eq!(emma["tags"], json!([]));
    worker.stop().await?;
    Ok(())
}

#[tokio::test]
async fn fifty_books_five_commands_each_interleaved_end_in_their_last_state() -> Result<()> {
    let stack = Stack::provision().await?;
    let api = Books::new(&stack);
    let worker = Worker::spawn(WORKER, &stack.worker_env(WORKER))?;
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..50 {
        let api = api.clone();
        creates.spawn(async move {
            api.create(&book(&format!("book {i} round 0"), "Many"), None)
                .await
        });
    }
    let mut ids = Vec::new();
    while let Some(created) = creates.join_next().await {
        ids.push(created??.0);
    }
    // Four rounds of full replacements; each waits only for the gateway's 202s of the round
    // before, so the worker sees every book's commands interleaved with the others'.
    for round in 1..=4u64 {
        let mut updates = tokio::task::JoinSet::new();
        for (i, id) in ids.iter().enumerate() {
            let (api, id) = (api.clone(), id.clone());
            updates.spawn(async move {
                api.update(
                    &id,
                    round,
                    &book(&format!("book {i} round {round}"), "Many"),
                )
                .await
            });
        }
        while let Some(sent) = updates.join_next().await {
            sent??;
        }
    }
    for (i, id) in ids.iter().enumerate() {
        let expected = format!("book {i} round 4");
        let last = eventually(
            Duration::from_secs(120),
            &format!("book {i} at version 5"),
            || async {
                let (status, body) = api.get(id).await?;
                Ok((status == StatusCode::OK && body["version"] == 5).then_some(body))
            },
        )
        .await?;
        assert_eq!(last["title"], expected.as_str());
    }
    worker
        .wait_for_total("commands_applied", 250, Duration::from_secs(10))
        .await?;
    assert_eq!(
        worker.total("commands_rejected"),
        0,
        "a command was applied out of order"
    );
    assert_eq!(worker.total("dead_lettered"), 0);
    worker.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_stale_if_match_changes_nothing_and_the_reason_is_readable() -> Result<()> {
    let stack = Stack::provision().await?;
    let api = Books::new(&stack);
    let worker = Worker::spawn(WORKER, &stack.worker_env(WORKER))?;
    let (id, created) = api.create(&book("Kindred", "Octavia Butler"), None).await?;
    api.decision(&id, &created).await?;
    // Two clients read version 1 and both write.
    let first = api
        .update(&id, 1, &book("Kindred (first)", "Octavia Butler"))
        .await?;
    let second = api
        .update(&id, 1, &book("Kindred (second)", "Octavia Butler"))
        .await?;
    assert_eq!(api.decision(&id, &first).await?["status"], "APPLIED");
    let rejected = api.decision(&id, &second).await?;
    assert_eq!(rejected["status"], "REJECTED", "{rejected}");
    assert_eq!(rejected["reason"], "stale-version");
    assert!(
        text(&rejected["detail"]).contains("version 2"),
        "{rejected}"
    );
    let (_, now) = api.get(&id).await?;
    assert_eq!(now["title"], "Kindred (first)", "no overwrite");
    assert_eq!(now["version"], 2);

    let missing = api.delete("no-such-book", None).await?;
    let decision = api.decision("no-such-book", &missing).await?;
    assert_eq!(decision["reason"], "not-found", "{decision}");
    assert_eq!(
        worker.total("dead_lettered"),
        0,
        "rejections are answers, not incidents"
    );
    worker.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_duplicate_command_is_applied_once_and_a_reused_key_is_dead_lettered() -> Result<()> {
    let stack = Stack::provision().await?;
    let api = Books::new(&stack);
    let queue = stack.queue("books-commands").clone();
    let (id, request) = api
        .create(&book("Solaris", "Stanislaw Lem"), Some("create-solaris"))
        .await?;
    let (again, request_again) = api
        .create(&book("Solaris", "Stanislaw Lem"), Some("create-solaris"))
        .await?;
    assert_eq!(
        (&again, &request_again),
        (&id, &request),
        "the same key names the same command"
    );
    // The same key with another payload, through the gateway seconds after the first (well
    // within SQS's 5-minute deduplication window): the first command stands, the second is
    // an incident the operator sees, never a silent 202.
    let (_, conflicting) = api
        .create(
            &book("Solaris (other)", "Stanislaw Lem"),
            Some("create-solaris"),
        )
        .await?;
    assert_eq!(
        conflicting, request,
        "the same key names the same request id"
    );

    let worker = Worker::spawn(WORKER, &stack.worker_env(WORKER))?;
    assert_eq!(api.decision(&id, &request).await?["status"], "APPLIED");
    let dead = stack
        .wait_for_messages(&queue.dlq_url, "the reused key in the DLQ")
        .await?;
    let attrs = dead[0].message_attributes().context("attributes")?;
    assert_eq!(attrs[names::KIND].string_value(), Some(kind::CONFLICT));
    assert!(dead[0]
        .body()
        .unwrap_or_default()
        .contains("Solaris (other)"));
    // The exact retry reached the worker too and was recognised as the same command.
    worker
        .wait_for_total("duplicates", 1, Duration::from_secs(30))
        .await?;
    let (_, applied) = api.get(&id).await?;
    assert_eq!(applied["title"], "Solaris");
    assert_eq!(worker.total("commands_applied"), 1, "applied once");

    // A replay after SQS's 5-minute window: same command, new deduplication id.
    // The sender's owner id (the stack's key id): a command without one is malformed.
    let (owner, _) = integration_tests::api_key_ids(&stack).await?;
    stack
        .sqs
        .send_message()
        .queue_url(&queue.url)
        .message_group_id(&id)
        .message_deduplication_id("late-replay")
        .message_body(book("Solaris", "Stanislaw Lem").to_string())
        .message_attributes("command", string_attr("CREATE"))
        .message_attributes("bookId", string_attr(&id))
        .message_attributes(fleet::gateway::ATTR_REQUEST_ID, string_attr(&request))
        .message_attributes(fleet::gateway::ATTR_OWNER_ID, string_attr(&owner))
        .send()
        .await?;
    worker
        .wait_for_total("duplicates", 2, Duration::from_secs(30))
        .await?;
    let (_, after) = api.get(&id).await?;
    assert_eq!(after, applied, "a replay writes nothing");
    assert_eq!(worker.total("commands_applied"), 1);

    let group = dead[0]
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId));
    assert_eq!(group, Some(&id), "the FIFO DLQ copy keeps the book's group");
    let (_, still) = api.get(&id).await?;
    assert_eq!(still["title"], "Solaris");
    assert_eq!(
        stack.count_rows(stack.table("fifo-groups")).await?,
        0,
        "a reused key is never applied: the book's later commands do not wait for it"
    );
    worker.stop().await?;

    // The operator tool redrives a FIFO DLQ (hand back the copy received above first).
    stack
        .sqs
        .change_message_visibility()
        .queue_url(&queue.dlq_url)
        .receipt_handle(dead[0].receipt_handle().context("receipt")?)
        .visibility_timeout(0)
        .send()
        .await?;
    // An idempotency conflict would fail again the same way: refused unless forced.
    let (code, out, err) = fleetctl(
        &stack,
        &["dlq", "redrive", "books-commands", "--method", "batch"],
    )
    .await?;
    assert_eq!(code, 0, "{out}{err}");
    let summary: Value = serde_json::from_str(&out)?;
    assert_eq!(
        (&summary["moved"], &summary["refused"]),
        (&json!(0), &json!(1)),
        "{summary}"
    );
    let (code, out, err) = fleetctl(
        &stack,
        &[
            "dlq",
            "redrive",
            "books-commands",
            "--method",
            "batch",
            "--force",
        ],
    )
    .await?;
    assert_eq!(code, 0, "{out}{err}");
    let summary: Value = serde_json::from_str(&out)?;
    assert_eq!(summary["moved"], 1, "{summary}");
    assert_eq!(stack.depth(&queue.url).await?, 1, "back on the FIFO queue");
    Ok(())
}

#[tokio::test]
async fn queries_read_by_id_and_page_through_an_author_newest_first() -> Result<()> {
    let stack = Stack::provision().await?;
    let api = Books::new(&stack);
    let worker = Worker::spawn(WORKER, &stack.worker_env(WORKER))?;
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(
            api.create(&book(&format!("Ancillary {i}"), "Ann Leckie"), None)
                .await?,
        );
    }
    let (other, other_request) = api
        .create(&book("Provenance", "Someone Else"), None)
        .await?;
    for (id, request) in created.iter().chain([&(other.clone(), other_request)]) {
        assert_eq!(api.decision(id, request).await?["status"], "APPLIED");
    }

    let (status, one) = api.get(&created[0].0).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["author"], "Ann Leckie");
    assert_eq!(one["tags"], json!(["sf", "classic"]));
    assert_eq!(one["year"], 1965);

    let mut seen = Vec::new();
    let mut pages = 0;
    let mut token: Option<String> = None;
    loop {
        let mut path = "/books?author=Ann%20Leckie&limit=3".to_owned();
        if let Some(t) = &token {
            path.push_str(&format!("&next_token={t}"));
        }
        let (status, page) = api.call(Method::GET, &path, &[], None).await?;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages += 1;
        let items = page["items"].as_array().context("items")?;
        assert!(items.len() <= 3);
        seen.extend(items.iter().cloned());
        match page["next_token"].as_str() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert!(pages >= 3, "7 books in pages of 3: {pages} pages");
    let ids: HashSet<&str> = seen
        .iter()
        .map(|b| b["book_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 7, "every book exactly once: {seen:?}");
    assert!(
        !ids.contains(other.as_str()),
        "another author's book listed"
    );
    let times: Vec<u64> = seen
        .iter()
        .map(|b| b["created_at"].as_u64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );

    for (path, what) in [
        (
            "/books?author=Ann%20Leckie&next_token=garbage",
            "invalid next_token",
        ),
        ("/books?author=Ann%20Leckie&limit=0", "invalid limit"),
        ("/books?author=Ann%20Leckie&limit=ten", "invalid limit"),
        ("/books", "author"),
    ] {
        let (status, body) = api.call(Method::GET, path, &[], None).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert!(
            body["message"].as_str().unwrap_or("").contains(what),
            "{path}: {body}"
        );
    }
    let (status, _) = api.get("never-created").await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api
        .call(
            Method::GET,
            &format!("/books/{other}/commands/unknown"),
            &[],
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    worker.stop().await?;
    Ok(())
}

#[tokio::test]
async fn bad_requests_are_refused_at_the_gateway_and_a_bad_check_digit_by_the_worker() -> Result<()>
{
    let stack = Stack::provision().await?;
    let api = Books::new(&stack);
    let queue = stack.queue("books-commands").clone();
    let good = book("Dune", "Frank Herbert");
    let mut no_isbn_shape = good.clone();
    no_isbn_shape["isbn"] = json!("12-34");
    let mut unknown_field = good.clone();
    unknown_field["price"] = json!(3);
    let mut blank_title = good.clone();
    blank_title["title"] = json!("   ");
    for (method, path, headers, body, what) in [
        (
            Method::POST,
            "/books",
            vec![],
            Some(&no_isbn_shape),
            "isbn shape",
        ),
        (
            Method::POST,
            "/books",
            vec![],
            Some(&unknown_field),
            "unknown field",
        ),
        (
            Method::POST,
            "/books",
            vec![],
            Some(&blank_title),
            "blank title",
        ),
        (
            Method::POST,
            "/books",
            vec![("Idempotency-Key", "not a key!")],
            Some(&good),
            "bad key",
        ),
        (
            Method::PUT,
            "/books/b-1",
            vec![],
            Some(&good),
            "no If-Match",
        ),
        (
            Method::PUT,
            "/books/b-1",
            vec![("If-Match", "v1")],
            Some(&good),
            "bad If-Match",
        ),
        (Method::DELETE, "/books/b.1", vec![], None, "bad book id"),
    ] {
        let (status, body) = api.call(method, path, &headers, body).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        if what.contains("If-Match") {
            assert!(
                body["message"].as_str().unwrap_or("").contains("If-Match"),
                "{body}"
            );
        }
    }
    let status = stack
        .http
        .post(format!("{}/books", stack.info.api.url))
        .header("content-type", "application/json")
        .body(good.to_string())
        .send()
        .await?
        .status();
    assert_eq!(status, StatusCode::FORBIDDEN, "no API key");
    assert_eq!(
        stack.depth(&queue.url).await?,
        0,
        "nothing refused was queued"
    );

    let mut wrong_digit = good.clone();
    wrong_digit["isbn"] = json!("978-0-306-40615-8");
    let (id, request) = api.create(&wrong_digit, None).await?;
    let worker = Worker::spawn(WORKER, &stack.worker_env(WORKER))?;
    let decision = api.decision(&id, &request).await?;
    assert_eq!(decision["status"], "REJECTED");
    assert_eq!(decision["reason"], "invalid-isbn");
    let (status, _) = api.get(&id).await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing stored");
    worker.stop().await?;
    Ok(())
}

/// Sends a dead-lettered copy back to its source queue exactly as it is (body, every
/// attribute, its group), which is what SQS's own move task (`fleetctl dlq redrive` without
/// `--method`, or `aws sqs start-message-move-task`) and a console redrive do; then deletes it
/// from the DLQ.
async fn redrive_as_a_move_task_does(
    stack: &Stack,
    queue: &integration_tests::Queue,
    copy: &aws_sdk_sqs::types::Message,
) -> Result<()> {
    let group = copy
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId))
        .cloned();
    stack
        .sqs
        .send_message()
        .queue_url(&queue.url)
        .message_body(copy.body().unwrap_or_default())
        .set_message_attributes(copy.message_attributes().cloned())
        .set_message_group_id(group)
        .message_deduplication_id(format!("moved-{:08x}", fastrand::u32(..)))
        .send()
        .await?;
    stack
        .sqs
        .delete_message()
        .queue_url(&queue.dlq_url)
        .receipt_handle(copy.receipt_handle().context("receipt")?)
        .send()
        .await?;
    Ok(())
}

/// Runs books-worker with the command's writes failing (DynamoDB answers 500 to them; the rest
/// of DynamoDB works, the engine's group store included) until the queue's one message is
/// dead-lettered (retries exhausted), and returns that copy.
async fn dead_letter_through_failing_writes(
    stack: &Stack,
    queue: &integration_tests::Queue,
    book_id: &str,
) -> Result<aws_sdk_sqs::types::Message> {
    let faults = FailingWrites::start(book_id).await?;
    let env = faults.worker_env(stack);
    let worker = Worker::spawn(WORKER, &env)?;
    let dead = stack
        .wait_for_messages(&queue.dlq_url, "the command dead-lettered")
        .await
        .with_context(|| worker.stderr_text())?;
    let (_, _, worker) = worker.stop().await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        stack.depth(&queue.url).await?,
        0,
        "the original is gone from the queue: {}",
        worker.stderr_text()
    );
    Ok(dead.into_iter().next().expect("one"))
}

#[tokio::test]
async fn a_command_dead_lettered_twice_and_moved_back_as_is_is_applied() -> Result<()> {
    let stack = Stack::provision().await?;
    let api = Books::new(&stack);
    let queue = stack.queue("books-commands").clone();
    let (id, request) = api
        .create(&book("The Cyberiad", "Stanislaw Lem"), None)
        .await?;

    // Twice through the DLQ, each time brought back the way SQS's move task does.
    for round in 1..=2 {
        let copy = dead_letter_through_failing_writes(&stack, &queue, &id).await?;
        let attrs = copy.message_attributes().context("attributes")?;
        assert_eq!(
            attrs[names::KIND].string_value(),
            Some(kind::RETRIES_EXHAUSTED),
            "round {round}: {attrs:?}"
        );
        let folded = attrs
            .get(names::ORIGINAL_ATTRIBUTES)
            .and_then(|a| a.string_value())
            .with_context(|| format!("round {round}: the originals are kept: {attrs:?}"))?;
        let folded: Value = serde_json::from_str(folded)?;
        for name in ["command", "bookId", "requestId", "apiKeyId", "receivedAt"] {
            assert!(
                folded.get(name).is_some(),
                "round {round}: {name} kept in {folded}"
            );
        }
        redrive_as_a_move_task_does(&stack, &queue, &copy).await?;
    }

    let worker = Worker::spawn(WORKER, &stack.worker_env(WORKER))?;
    assert_eq!(api.decision(&id, &request).await?["status"], "APPLIED");
    let (status, stored) = api.get(&id).await?;
    assert_eq!(status, StatusCode::OK, "{stored}");
    assert_eq!(stored["title"], "The Cyberiad");
    worker.stop().await?;
    assert_eq!(stack.depth(&queue.dlq_url).await?, 0, "nothing left behind");
    assert_eq!(
        stack.count_rows(stack.table("fifo-groups")).await?,
        0,
        "the book's group flows again"
    );
    Ok(())
}

/// A DynamoDB endpoint in front of LocalStack that answers `InternalServerError` to every
/// `TransactWriteItems` whose body contains `marker` while `failing` is set, and forwards
/// everything else: one command's writes fail, the rest of DynamoDB works.
struct FailingWrites {
    port: u16,
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl FailingWrites {
    async fn start(marker: &str) -> Result<Self> {
        use std::sync::atomic::Ordering;
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (marker, flag) = (marker.to_owned(), failing.clone());
        let target = integration_tests::endpoint()
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (marker, flag, target) = (marker.clone(), flag.clone(), target.clone());
                tokio::spawn(async move {
                    // One request per connection: the answer says `connection: close`.
                    let Some((request, head_end)) =
                        integration_tests::read_request(&mut client).await
                    else {
                        return;
                    };
                    let head = String::from_utf8_lossy(&request[..head_end]).to_lowercase();
                    let body = String::from_utf8_lossy(&request[head_end..]);
                    if flag.load(Ordering::SeqCst)
                        && head.contains("x-amz-target: dynamodb_20120810.transactwriteitems")
                        && body.contains(&marker)
                    {
                        let json = r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"injected by the test"}"#;
                        let answer = format!(
                            "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
                            json.len()
                        );
                        let _ = client.write_all(answer.as_bytes()).await;
                        return;
                    }
                    let Some(answer) =
                        integration_tests::forward_closing(&target, &request, head_end).await
                    else {
                        return;
                    };
                    let _ = client.write_all(&answer).await;
                    let _ = client.shutdown().await;
                });
            }
        });
        Ok(Self {
            port,
            failing,
            task,
        })
    }

    /// books-worker's environment with its DynamoDB behind these faults, every failure
    /// retried fast and counted against the message alone (no breaker), and short long polls
    /// (one left open at exit would take a redriven copy to a dead process).
    fn worker_env(&self, stack: &Stack) -> std::collections::HashMap<String, String> {
        stack.worker_env_with(
            WORKER,
            &[
                (
                    "AWS_ENDPOINT_URL_DYNAMODB",
                    &format!("http://127.0.0.1:{}", self.port),
                ),
                ("AWS_MAX_ATTEMPTS", "1"),
                ("FLEET_RETRY_BASE_MS", "100"),
                ("FLEET_RETRY_MAX_SECS", "1"),
                ("FLEET_BREAKER_THRESHOLD", "0"),
                ("FLEET_WAIT_TIME_SECS", "1"),
            ],
        )
    }
}

impl Drop for FailingWrites {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn updates_behind_a_dead_lettered_create_wait_for_it_and_apply_in_order_after_a_redrive(
) -> Result<()> {
    let stack = Stack::provision().await?;
    let api = Books::new(&stack);
    let queue = stack.queue("books-commands").clone();
    // CREATE, then two UPDATEs of the same book, queued before any worker runs.
    let (id, created) = api.create(&book("Ubik", "Philip K. Dick"), None).await?;
    let first = api
        .update(&id, 1, &book("Ubik (2nd ed.)", "Philip K. Dick"))
        .await?;
    let second = api
        .update(&id, 2, &book("Ubik (3rd ed.)", "Philip K. Dick"))
        .await?;

    // The CREATE's write fails (DynamoDB answers 500 to it alone) until it is dead-lettered.
    let faults = FailingWrites::start(&created).await?;
    let env = faults.worker_env(&stack);
    let worker = Worker::spawn(WORKER, &env)?;
    eventually(
        Duration::from_secs(60),
        "the book's queue empty",
        || async { Ok((stack.depth(&queue.url).await? == 0).then_some(())) },
    )
    .await?;
    let (_, _, worker) = worker.stop().await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    faults
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);

    // Nothing behind the CREATE was applied or rejected: it waits in the DLQ, in order.
    for request in [&first, &second] {
        let path = format!("/books/{id}/commands/{request}");
        let (status, decision) = api.call(Method::GET, &path, &[], None).await?;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "an update behind the dead-lettered CREATE was decided: {decision}\n{}",
            worker.stderr_text()
        );
    }
    let parked = stack.drain(&queue.dlq_url, 10).await?;
    let kinds: Vec<&str> = parked
        .iter()
        .map(|m| dead_letter_kind(m).unwrap_or("-"))
        .collect();
    assert_eq!(
        kinds,
        [
            kind::RETRIES_EXHAUSTED,
            kind::GROUP_BLOCKED,
            kind::GROUP_BLOCKED
        ],
        "the CREATE, then the updates parked behind it"
    );
    assert_eq!(
        stack.count_rows(stack.table("fifo-groups")).await?,
        1,
        "the group is stopped"
    );
    // Back in the DLQ (a FIFO group in flight there would hide what parks behind it).
    for copy in &parked {
        stack
            .sqs
            .change_message_visibility()
            .queue_url(&queue.dlq_url)
            .receipt_handle(copy.receipt_handle().context("receipt")?)
            .visibility_timeout(0)
            .send()
            .await?;
    }

    // A new command of the book arriving now parks too (a new process: the stop is durable).
    let third = api
        .update(&id, 3, &book("Ubik (4th ed.)", "Philip K. Dick"))
        .await?;
    let worker = Worker::spawn(
        WORKER,
        &stack.worker_env_with(WORKER, &[("FLEET_WAIT_TIME_SECS", "1")]),
    )?;
    eventually(
        Duration::from_secs(30),
        "the late update parked",
        || async { Ok((stack.depth(&queue.dlq_url).await? == 4).then_some(())) },
    )
    .await?;
    let (_, _, _) = worker.stop().await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, out, err) = fleetctl(&stack, &["dlq", "groups", "books-commands"]).await?;
    assert_eq!(code, 0, "{err}");
    let stopped: Value = serde_json::from_str(out.trim())?;
    assert_eq!(stopped["group"], id.as_str(), "{stopped}");
    assert_eq!(stopped["parked"], 4, "{stopped}");
    assert!(stopped["head"].is_string(), "{stopped}");

    // A redrive too early: the CREATE fails again and stays the head; the rest park again,
    // counted once each.
    faults
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    for copy in &stack.drain(&queue.dlq_url, 10).await? {
        redrive_as_a_move_task_does(&stack, &queue, copy).await?;
    }
    let worker = Worker::spawn(WORKER, &env)?;
    eventually(
        Duration::from_secs(60),
        "the group parked again",
        || async {
            Ok(
                (stack.depth(&queue.url).await? == 0 && stack.depth(&queue.dlq_url).await? == 4)
                    .then_some(()),
            )
        },
    )
    .await?;
    worker.stop().await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    faults
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let (_, out, _) = fleetctl(&stack, &["dlq", "groups", "books-commands"]).await?;
    let again: Value = serde_json::from_str(out.trim())?;
    assert_eq!(
        again["parked"], 4,
        "each parked message counted once: {again}"
    );
    assert_eq!(
        again["head"], stopped["head"],
        "the CREATE is still the head"
    );

    // The operator moves the group back as SQS's move task does, in order, until the DLQ is
    // empty. LocalStack (unlike SQS) delivers a FIFO group's later messages while its head is in
    // flight for a retry, so in the early redrive above the updates may have parked ahead of
    // the head's new copy: they then park again behind it and need one more pass. Whatever the
    // passes, nothing is applied out of order (the versions below).
    let worker = Worker::spawn(WORKER, &stack.worker_env(WORKER))?;
    for _pass in 0..3 {
        let group = stack.drain(&queue.dlq_url, 10).await?;
        if group.is_empty() {
            break;
        }
        for copy in &group {
            redrive_as_a_move_task_does(&stack, &queue, copy).await?;
        }
        eventually(
            Duration::from_secs(60),
            "the redriven group handled",
            || async { Ok((stack.depth(&queue.url).await? == 0).then_some(())) },
        )
        .await?;
    }
    for (request, version) in [(&created, 1), (&first, 2), (&second, 3), (&third, 4)] {
        let decision = api.decision(&id, request).await?;
        assert_eq!(decision["status"], "APPLIED", "{decision}");
        assert_eq!(
            decision["version"], version,
            "applied in the original order: {decision}"
        );
    }
    let (status, stored) = api.get(&id).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        stored["title"], "Ubik (4th ed.)",
        "as if nothing had failed"
    );
    eventually(
        Duration::from_secs(30),
        "the group flowing again",
        || async { Ok((stack.count_rows(stack.table("fifo-groups")).await? == 0).then_some(())) },
    )
    .await?;
    let fourth = api
        .update(&id, 4, &book("Ubik (5th ed.)", "Philip K. Dick"))
        .await?;
    assert_eq!(api.decision(&id, &fourth).await?["status"], "APPLIED");
    worker.stop().await?;
    assert_eq!(stack.depth(&queue.dlq_url).await?, 0);
    let (_, out, _) = fleetctl(&stack, &["dlq", "groups", "books-commands"]).await?;
    assert_eq!(out.trim(), "", "nothing stopped any more");

    // An operator who discarded a head ends its group's stop by hand.
    stack
        .dynamodb
        .put_item()
        .table_name(stack.table("fifo-groups"))
        .item(
            "group_key",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("{}#other", queue.name)),
        )
        .item(
            "head",
            aws_sdk_dynamodb::types::AttributeValue::S("m-1".into()),
        )
        .item(
            "parked_ids",
            aws_sdk_dynamodb::types::AttributeValue::Ss(vec!["m-1".into()]),
        )
        .send()
        .await?;
    let (code, out, err) = fleetctl(&stack, &["dlq", "release", "books-commands", "other"]).await?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(r#""head":"m-1""#), "{out}");
    assert_eq!(stack.count_rows(stack.table("fifo-groups")).await?, 0);
    let (code, _, err) = fleetctl(&stack, &["dlq", "release", "books-commands", "other"]).await?;
    assert_eq!(code, 1, "releasing a group that is not stopped is an error");
    assert!(err.contains("not stopped"), "{err}");
    Ok(())
}
