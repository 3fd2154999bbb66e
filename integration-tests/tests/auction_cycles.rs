//! Auction cycles on LocalStack: `fleetctl schedule` sends a cycle, `results-worker` asks the
//! results source until the results are ready (growing visibility delays), fans them out to
//! the order-results queue once, gives up past its deadline with one notification, and never
//! fans out part of a bad answer.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, Result};
use aws_sdk_dynamodb::types::AttributeValue;
use fleet::kind;
use integration_tests::{
    dead_letter_kind, fleetctl, number_attribute, Answer, Proxy, ScriptedHttp, Stack, Worker,
};
use serde_json::{json, Value};

const WORKER: &str = "results-worker";

/// The results-worker's environment with short retry delays (1 s visibility at the least).
fn env(stack: &Stack, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let short = [
        ("FLEET_RETRY_BASE_MS", "300"),
        ("FLEET_RETRY_MAX_SECS", "1"),
    ];
    let all: Vec<(&str, &str)> = short.iter().chain(extra).copied().collect();
    stack.worker_env_with(WORKER, &all)
}

/// Takes everything the order-results queue holds: (cycle, record id) → result.
async fn fanned_out(stack: &Stack) -> Result<HashMap<(String, String), Value>> {
    let mut out = HashMap::new();
    for m in stack.drain(&stack.queue("order-results").url, 1000).await? {
        let v: Value = serde_json::from_str(m.body().unwrap_or_default())?;
        let key = (
            v["cycle"].as_str().unwrap_or_default().to_owned(),
            v["record_id"].as_str().unwrap_or_default().to_owned(),
        );
        anyhow::ensure!(out.insert(key.clone(), v).is_none(), "{key:?} sent twice");
    }
    Ok(out)
}

#[tokio::test]
async fn a_scheduled_cycle_not_ready_three_times_is_fetched_four_times_and_fanned_out_once(
) -> Result<()> {
    let stack = Stack::provision().await?;
    let worker = Worker::spawn(
        WORKER,
        &env(
            &stack,
            &[
                ("SIMULATOR_SEED", "42"),
                ("SIMULATOR_NOT_READY_TIMES", "3"),
                ("SIMULATOR_ORDERS", "23"),
            ],
        ),
    )?;
    // The local timer sends the cycle of the current 5-minute period, as the scheduler would.
    let (code, stdout, stderr) = fleetctl(
        &stack,
        &["schedule", "auction-cycles", "--now", "--count", "1"],
    )
    .await?;
    assert_eq!(code, 0, "{stderr}");
    let sent: Value = serde_json::from_str(stdout.lines().next().context("a line")?)?;
    let body: Value = serde_json::from_str(sent["body"].as_str().context("body")?)?;
    let cycle = body["cycle"].as_str().context("cycle")?.to_owned();
    assert!(
        cycle.ends_with(":00Z") && cycle.len() == 20,
        "RFC 3339 on a whole minute: {cycle}"
    );

    worker
        .wait_for_total("cycles_fanned_out", 1, Duration::from_secs(60))
        .await?;
    assert_eq!(worker.total("results_fetches"), 4, "false ×3, then true");
    assert_eq!(worker.total("results_not_ready"), 3);
    assert_eq!(worker.total("results_sent"), 23);
    let results = fanned_out(&stack).await?;
    assert_eq!(results.len(), 23);
    assert!(results.keys().all(|(c, _)| *c == cycle));
    let statuses: HashSet<&str> = results
        .values()
        .filter_map(|v| v["status"].as_str())
        .collect();
    assert!(statuses.is_subset(&HashSet::from(["accepted", "rejected"])));

    let record = stack
        .dynamodb
        .get_item()
        .table_name(stack.table("auction-cycles"))
        .key("cycle", AttributeValue::S(cycle.clone()))
        .send()
        .await?
        .item
        .context("the cycle record")?;
    assert_eq!(record["status"], AttributeValue::S("FANNED_OUT".into()));
    assert_eq!(record["batches_sent"], AttributeValue::N("3".into()));

    // The same cycle again (a redelivery, or the scheduler retrying): nothing is fetched or sent.
    stack
        .sqs
        .send_message()
        .queue_url(&stack.queue("auction-cycles").url)
        .message_body(json!({ "cycle": cycle }).to_string())
        .send()
        .await?;
    worker
        .wait_for_total("duplicates", 1, Duration::from_secs(30))
        .await?;
    assert_eq!(worker.total("results_fetches"), 4);
    assert!(fanned_out(&stack).await?.is_empty(), "no second fan-out");
    let (code, _, _) = worker.stop().await?;
    assert_eq!(code, Some(0));
    Ok(())
}

#[tokio::test]
async fn a_cycle_past_its_deadline_goes_to_the_dlq_with_one_notification() -> Result<()> {
    let stack = Stack::provision().await?;
    let inbox = stack.subscribe_inbox("notifications").await?;
    let worker = Worker::spawn(
        WORKER,
        &env(
            &stack,
            &[
                ("SIMULATOR_READY_PROBABILITY", "0"),
                ("CYCLE_DEADLINE_SECS", "4"),
            ],
        ),
    )?;
    let queue = stack.queue("auction-cycles").clone();
    stack
        .sqs
        .send_message()
        .queue_url(&queue.url)
        .message_body(r#"{"cycle":"late-1"}"#)
        .send()
        .await?;
    worker
        .wait_for_total("dead_lettered", 1, Duration::from_secs(60))
        .await?;
    assert!(worker.total("results_not_ready") >= 2, "re-checked first");
    assert_eq!(worker.total("results_sent"), 0);

    let dead = stack
        .wait_for_messages(&queue.dlq_url, "the cycle in the DLQ")
        .await?;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body(), Some(r#"{"cycle":"late-1"}"#));
    assert_eq!(dead_letter_kind(&dead[0]), Some(kind::DEADLINE_EXCEEDED));

    let notes = stack.wait_for_messages(&inbox, "the notification").await?;
    // Anything late would have arrived by now: the DLQ copy is written after the publish.
    let late = stack.drain(&inbox, 10).await?;
    assert_eq!(notes.len() + late.len(), 1, "exactly one notification");
    let note: Value = serde_json::from_str(notes[0].body().unwrap_or_default())?;
    assert_eq!(note["event"], "cycle-deadline-exceeded");
    assert_eq!(note["cycle"], "late-1");
    assert!(fanned_out(&stack).await?.is_empty());
    worker.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_source_that_times_out_or_answers_garbage_is_retried_and_never_fanned_out_in_part(
) -> Result<()> {
    let stack = Stack::provision().await?;
    let orders = |bad: bool| {
        let orders: Vec<Value> = (0..12)
            .map(|i| {
                let status = if bad && i == 7 { "maybe" } else { "accepted" };
                json!({"record_id": format!("o-{i:02}"), "status": status, "price": 2.1})
            })
            .collect();
        json!({"cycle": "http-1", "results": true, "orders": orders}).to_string()
    };
    let source = ScriptedHttp::start(vec![
        Answer {
            delay: Duration::from_secs(3),
            ..Answer::json(orders(false))
        },
        Answer {
            status: 503,
            ..Answer::json("{}")
        },
        Answer::json("{\"results\": tru"),
        Answer::json(orders(true)), // ready, but one order is invalid: nothing may be sent
        Answer::json(r#"{"cycle":"http-1","results":false}"#),
        Answer::json(orders(false)),
    ])
    .await?;
    let url = source.url("/auction/results");
    let worker = Worker::spawn(
        WORKER,
        &env(
            &stack,
            &[
                ("RESULTS_SOURCE", "http"),
                ("RESULTS_SOURCE_URL", &url),
                ("RESULTS_SOURCE_TIMEOUT_MS", "500"),
            ],
        ),
    )?;
    stack
        .sqs
        .send_message()
        .queue_url(&stack.queue("auction-cycles").url)
        .message_body(r#"{"cycle":"http-1"}"#)
        .send()
        .await?;
    worker
        .wait_for_total("cycles_fanned_out", 1, Duration::from_secs(90))
        .await?;
    assert_eq!(worker.total("results_fetches"), 6);
    assert_eq!(worker.total("results_sent"), 12);
    let requests = source.request_lines();
    assert_eq!(requests.len(), 6, "{requests:?}");
    assert!(requests
        .iter()
        .all(|r| r.starts_with("GET /auction/results?cycle=http-1 ")));
    let results = fanned_out(&stack).await?;
    assert_eq!(results.len(), 12);
    assert_eq!(
        results[&("http-1".into(), "o-07".into())]["price"],
        json!(2.1)
    );
    let kinds: Vec<String> = worker
        .log_fields("error_kind")
        .iter()
        .filter_map(|f| f["error_kind"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        kinds,
        [
            "source-timeout",
            "source-status",
            "source-malformed",
            "source-malformed",
            "results-not-ready"
        ],
        "each retried"
    );
    assert_eq!(worker.total("dead_lettered"), 0);
    let (code, _, _) = worker.stop().await?;
    assert_eq!(code, Some(0), "never a crash");
    Ok(())
}

/// Issue 14: a cycle delivered twice at once (two workers) is fanned out once: one delivery
/// fans it out, the other comes back later and finds it `FANNED_OUT`.
///
/// DynamoDB is reached through a slow link (300 ms a call: a fan-out of 3 batches takes about
/// 2 s), and the second copies follow the first ones 400 ms later: each second delivery claims
/// while the first is fanning out. (Not in the same millisecond: LocalStack's DynamoDB here is
/// moto, whose conditional writes are not atomic, so two claims of one item that reach it
/// together can both pass their condition, which DynamoDB never allows.)
#[tokio::test]
async fn a_cycle_delivered_twice_at_once_is_fanned_out_once() -> Result<()> {
    const CYCLES: usize = 4;
    const ORDERS: usize = 25; // 3 batches: 10, 10, 5
    let stack = Stack::provision().await?;
    let mut slow_dynamodb = Proxy::reserve(Duration::from_millis(300)).await?;
    slow_dynamodb.start().await?;
    let env = env(
        &stack,
        &[
            ("AWS_ENDPOINT_URL_DYNAMODB", &slow_dynamodb.url()),
            ("SIMULATOR_SEED", "7"),
            ("SIMULATOR_NOT_READY_TIMES", "0"),
            ("SIMULATOR_ORDERS", &ORDERS.to_string()),
        ],
    );
    let workers = [Worker::spawn(WORKER, &env)?, Worker::spawn(WORKER, &env)?];
    let queue = stack.queue("auction-cycles").clone();
    let cycles: Vec<String> = (0..CYCLES).map(|i| format!("twice-{i}")).collect();
    let send = || {
        let entries = cycles
            .iter()
            .map(|cycle| {
                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(cycle)
                    .message_body(json!({ "cycle": cycle }).to_string())
                    .build()
                    .expect("id and body are set")
            })
            .collect();
        stack
            .sqs
            .send_message_batch()
            .queue_url(&queue.url)
            .set_entries(Some(entries))
            .send()
    };
    for copy in 0..2 {
        if copy > 0 {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        let out = send().await?;
        anyhow::ensure!(out.failed.is_empty(), "send failed: {:?}", out.failed);
    }

    // Both copies of every cycle finished (deleted).
    integration_tests::eventually(
        Duration::from_secs(120),
        "both copies of each cycle handled",
        || async { Ok((stack.depth(&queue.url).await? == 0).then_some(())) },
    )
    .await?;
    let total = |name: &str| workers.iter().map(|w| w.total(name)).sum::<u64>();

    let mut copies: HashMap<(String, String), usize> = HashMap::new();
    for m in stack
        .drain(&stack.queue("order-results").url, 10 * CYCLES * ORDERS)
        .await?
    {
        let v: Value = serde_json::from_str(m.body().unwrap_or_default())?;
        let key = (
            v["cycle"].as_str().unwrap_or_default().to_owned(),
            v["record_id"].as_str().unwrap_or_default().to_owned(),
        );
        *copies.entry(key).or_default() += 1;
    }
    let mut wrong: Vec<String> = cycles
        .iter()
        .map(|cycle| {
            let results: Vec<usize> = copies
                .iter()
                .filter(|((c, _), _)| c == cycle)
                .map(|(_, n)| *n)
                .collect();
            (cycle, results.len(), results.iter().sum::<usize>())
        })
        .filter(|(_, distinct, sent)| *distinct != ORDERS || *sent != ORDERS)
        .map(|(cycle, distinct, sent)| {
            format!("cycle {cycle}: {sent} order results sent for {distinct} distinct (want {ORDERS} once each)")
        })
        .collect();
    wrong.sort();
    assert!(
        wrong.is_empty(),
        "{} of {CYCLES} cycles not fanned out exactly once (cycles_fanned_out {}, results_sent {}, \
         duplicates {}, retried {}): {wrong:#?}",
        wrong.len(),
        total("cycles_fanned_out"),
        total("results_sent"),
        total("duplicates"),
        total("retried"),
    );
    assert_eq!(total("cycles_fanned_out"), CYCLES as u64);
    assert_eq!(total("results_sent"), (CYCLES * ORDERS) as u64);
    assert_eq!(total("dead_lettered"), 0);
    let waited = integration_tests::count_logged(&workers, "error_kind", "claimed-elsewhere");
    assert!(
        waited >= CYCLES / 2,
        "the copies overlapped: {waited} deliveries found the cycle claimed"
    );
    integration_tests::terminate_all(workers).await
}

/// How long a cycle record is kept after it was last written: 35 days.
const CYCLE_TTL_SECS: u64 = 35 * 24 * 3600;

/// Issue 15: a cycle record expires (DynamoDB TTL on `expires_at`, in seconds) 35 days after
/// the cycle was fanned out: past every redelivery of the cycle message that could still need
/// it (1 day in auction-cycles, 14 in its DLQ, 1 again after a redrive).
#[tokio::test]
async fn a_cycle_record_expires_35_days_after_its_fan_out() -> Result<()> {
    let stack = Stack::provision().await?;
    let worker = Worker::spawn(
        WORKER,
        &env(
            &stack,
            &[
                ("SIMULATOR_SEED", "7"),
                ("SIMULATOR_NOT_READY_TIMES", "0"),
                ("SIMULATOR_ORDERS", "3"),
            ],
        ),
    )?;
    let before = fleet::util::now_ms() / 1000;
    stack
        .sqs
        .send_message()
        .queue_url(&stack.queue("auction-cycles").url)
        .message_body(r#"{"cycle":"ttl-1"}"#)
        .send()
        .await?;
    worker
        .wait_for_total("cycles_fanned_out", 1, Duration::from_secs(60))
        .await?;
    let after = fleet::util::now_ms() / 1000;
    let table = stack.table("auction-cycles");
    let record = stack
        .item(table, "cycle", "ttl-1")
        .await?
        .context("the cycle record")?;
    assert_eq!(record["status"], AttributeValue::S("FANNED_OUT".into()));
    let expires = number_attribute(&record, "expires_at")?;
    assert!(
        (before + CYCLE_TTL_SECS..=after + CYCLE_TTL_SECS).contains(&expires),
        "expires_at {expires} not 35 days after the fan-out ({before}..={after})"
    );
    assert_eq!(stack.ttl_attribute(table).await?, "expires_at");
    worker.stop().await?;
    Ok(())
}
