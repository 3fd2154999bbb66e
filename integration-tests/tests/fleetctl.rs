//! `fleetctl` against LocalStack: status, and the dead-letter queue tools.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry};
use fleet::dlq::names;
use fleet::kind;
use integration_tests::{
    binary, dead_letter_payments, eventually, fleetctl, fleetctl_command, payments, string_attr,
    Stack, Worker,
};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The payments queue's row of `status --json`.
fn payments_row(status: &Value) -> &Value {
    status["queues"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["queue"] == "payments"))
        .unwrap_or_else(|| panic!("no payments row: {status}"))
}

#[tokio::test]
async fn status_reports_queue_counts_and_fails_when_a_dlq_holds_messages() -> Result<()> {
    let stack = Stack::provision().await?;
    let queue = stack.queue("payments").clone();
    stack.send_payments(&queue.url, &payments("st", 3)).await?;

    let (code, out, err) = fleetctl(&stack, &["status", "--json"]).await?;
    assert_eq!(code, 0, "{err}");
    let status: Value = serde_json::from_str(&out)?;
    let row = payments_row(&status);
    assert_eq!(row["queue"], "payments");
    assert_eq!(row["visible"], 3);
    assert_eq!(row["in_flight"], 0);
    assert_eq!(row["dlq_depth"], 0);
    assert_eq!(status["dlq_total"], 0);

    assert!(
        row["oldest_age_secs"].is_null(),
        "no CloudWatch data yet: {row}"
    );

    // SQS publishes the age of the oldest message only to CloudWatch (LocalStack does not
    // publish it at all): put the datum AWS would, and status must show it.
    let cloudwatch = aws_sdk_cloudwatch::Client::new(&integration_tests::sdk_config().await);
    cloudwatch
        .put_metric_data()
        .namespace("AWS/SQS")
        .metric_data(
            MetricDatum::builder()
                .metric_name("ApproximateAgeOfOldestMessage")
                .dimensions(
                    Dimension::builder()
                        .name("QueueName")
                        .value(&queue.name)
                        .build(),
                )
                .value(42.0)
                .unit(StandardUnit::Seconds)
                .build(),
        )
        .send()
        .await?;
    let (_, out, _) = fleetctl(&stack, &["status", "--json"]).await?;
    let status: Value = serde_json::from_str(&out)?;
    assert_eq!(payments_row(&status)["oldest_age_secs"], 42, "{status}");
    assert!(
        payments_row(&status)["breaker_open"].is_null(),
        "no breaker data yet: {status}"
    );

    // A worker whose dependency is down reports its breaker open in its EMF lines: put that
    // datum as CloudWatch would make it, and status shows the breaker.
    cloudwatch
        .put_metric_data()
        .namespace(fleet::metrics::NAMESPACE)
        .metric_data(
            MetricDatum::builder()
                .metric_name("breaker_open")
                .dimensions(
                    Dimension::builder()
                        .name("Worker")
                        .value("payments-worker")
                        .build(),
                )
                .dimensions(
                    Dimension::builder()
                        .name("Queue")
                        .value(&queue.name)
                        .build(),
                )
                .value(1.0)
                .unit(StandardUnit::Count)
                .build(),
        )
        .send()
        .await?;
    let (_, out, _) = fleetctl(&stack, &["status", "--json"]).await?;
    let status: Value = serde_json::from_str(&out)?;
    assert_eq!(payments_row(&status)["breaker_open"], true, "{status}");
    assert_eq!(payments_row(&status)["worker"], "payments-worker");
    let (_, table, _) = fleetctl(&stack, &["status"]).await?;
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("payments ") && l.ends_with("OPEN")),
        "{table}"
    );

    dead_letter_payments(&stack, kind::CONFLICT, &payments("dead", 2)).await?;
    let (code, out, _) = fleetctl(&stack, &["status", "--json"]).await?;
    assert_eq!(code, 3, "a non-empty DLQ makes status exit 3");
    let status: Value = serde_json::from_str(&out)?;
    assert_eq!(payments_row(&status)["dlq_depth"], 2);
    assert!(payments_row(&status)["dlq_oldest_age_secs"].is_u64());

    let (code, table, _) = fleetctl(&stack, &["status"]).await?;
    assert_eq!(code, 3);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("payments") && l.contains(" 2 ")),
        "{table}"
    );
    Ok(())
}

#[tokio::test]
async fn peek_and_export_leave_the_messages_in_place() -> Result<()> {
    let stack = Stack::provision().await?;
    let dlq = stack.queue("payments").dlq_url.clone();
    dead_letter_payments(&stack, kind::INVALID_JSON, &payments("peek", 3)).await?;

    let (code, out, err) =
        fleetctl(&stack, &["dlq", "peek", "payments", "-n", "10", "--json"]).await?;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 3);
    assert_eq!(
        lines[0]["attributes"][names::KIND]["string_value"],
        kind::INVALID_JSON
    );
    let (code, text, _) = fleetctl(&stack, &["dlq", "peek", "payments"]).await?;
    assert_eq!(code, 0);
    assert!(
        text.contains(&format!("reason:       {}", kind::INVALID_JSON)),
        "{text}"
    );

    let file = std::env::temp_dir().join(format!("{}export.jsonl", stack.info.prefix));
    let (code, _, err) = fleetctl(
        &stack,
        &["dlq", "export", "payments", file.to_str().unwrap()],
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    let exported = std::fs::read_to_string(&file)?;
    assert_eq!(exported.lines().count(), 3);
    let first: Value = serde_json::from_str(exported.lines().next().unwrap())?;
    assert!(first["body"].as_str().unwrap().contains("userId"));
    std::fs::remove_file(&file)?;

    // Still there, and visible at once.
    assert_eq!(stack.drain(&dlq, 10).await?.len(), 3);
    Ok(())
}

#[tokio::test]
async fn redrive_killed_half_way_and_run_again_loses_nothing() -> Result<()> {
    const N: usize = 500;
    let stack = Stack::provision().await?;
    let queue = stack.queue("payments").clone();
    dead_letter_payments(&stack, kind::RETRIES_EXHAUSTED, &payments("rd", N)).await?;

    // First run, slowed to 100/s, killed after about two seconds.
    const BATCH: [&str; 5] = ["dlq", "redrive", "payments", "--method", "batch"];
    let mut first = fleetctl_command(&stack, &[&BATCH[..], &["--max-per-second", "100"]].concat())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.start_kill()?;
    first.wait().await?;
    let moved_before = stack.depth(&queue.url).await?;
    assert!(
        moved_before > 0 && moved_before < N as u64,
        "killed half way: {moved_before} moved"
    );

    let (code, out, err) =
        fleetctl(&stack, &[&BATCH[..], &["--max-per-second", "500"]].concat()).await?;
    assert_eq!(code, 0, "{err}");
    let summary: Value = serde_json::from_str(out.trim())?;
    assert_eq!(summary["method"], "receive-send-delete");
    assert_eq!(summary["failed"], 0);
    assert_eq!(
        summary["left_in_flight"], 0,
        "the killed run's batch came back and was moved"
    );
    assert_eq!(stack.depth(&queue.dlq_url).await?, 0);

    // Every payment is processed; duplicates (moved, then killed before the delete) are counted.
    let worker = Worker::spawn("payments-worker", &stack.worker_env("payments-worker"))?;
    stack
        .wait_for_rows(stack.table("payments"), N, Duration::from_secs(120))
        .await?;
    stack.wait_for_empty(&queue.url).await?;
    let (_, _, worker) = worker.stop().await?;
    assert_eq!(worker.total("succeeded"), N as u64);
    assert_eq!(worker.total("dead_lettered"), 0);
    eprintln!(
        "redrive: {} duplicates after the kill",
        worker.total("duplicates")
    );
    assert_eq!(
        worker.total("received"),
        N as u64 + worker.total("duplicates"),
        "every extra delivery is a counted duplicate"
    );
    Ok(())
}

#[tokio::test]
async fn redrive_filters_by_reason_and_uses_the_move_task_when_it_can() -> Result<()> {
    let stack = Stack::provision().await?;
    let queue = stack.queue("payments").clone();
    dead_letter_payments(&stack, kind::RETRIES_EXHAUSTED, &payments("cf", 3)).await?;
    dead_letter_payments(&stack, kind::INVALID_JSON, &payments("ij", 2)).await?;

    let (code, out, err) = fleetctl(
        &stack,
        &[
            "dlq",
            "redrive",
            "payments",
            "--filter",
            format!("reason={}", kind::RETRIES_EXHAUSTED).as_str(),
        ],
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    let summary: Value = serde_json::from_str(out.trim())?;
    assert_eq!(
        (summary["moved"].as_u64(), summary["skipped"].as_u64()),
        (Some(3), Some(2)),
        "{summary}"
    );
    let back = stack.drain(&queue.url, 10).await?;
    assert_eq!(back.len(), 3);
    for m in &back {
        let attrs = m.message_attributes().unwrap();
        assert!(attrs["paymentId"]
            .string_value()
            .unwrap()
            .starts_with("cf-"));
        assert!(
            !attrs
                .keys()
                .any(|k| k.starts_with("fleet.") && k != names::MESSAGE_ID),
            "reason attributes removed: {attrs:?}"
        );
        assert!(
            attrs.contains_key(names::MESSAGE_ID),
            "the original message id goes back with it"
        );
    }

    // No filter: SQS's own move task (LocalStack runs it with a destination ARN); `--force`
    // because what is left (`invalid-json`) cannot succeed again.
    let (code, out, err) = fleetctl(&stack, &["dlq", "redrive", "payments", "--force"]).await?;
    assert_eq!(code, 0, "{err}");
    let summary: Value = serde_json::from_str(out.trim())?;
    assert_eq!(summary["method"], "move-task", "{summary}");
    stack.wait_for_empty(&queue.dlq_url).await?;
    Ok(())
}

#[tokio::test]
async fn bad_arguments_and_purge_without_confirmation_are_clear_errors() -> Result<()> {
    let stack = Stack::provision().await?;
    dead_letter_payments(&stack, kind::CONFLICT, &payments("pg", 2)).await?;
    let cases: [(&[&str], &str); 4] = [
        (
            &["dlq", "redrive", "payments", "--max-per-second", "0"],
            "max-per-second",
        ),
        (&["dlq", "redrive", "nope"], "unknown queue 'nope'"),
        (
            &["dlq", "redrive", "payments", "--filter", "kind=x"],
            "reason=KIND",
        ),
        (&["dlq", "purge", "payments"], "--yes"),
    ];
    for (args, expected) in cases {
        let (code, _, err) = fleetctl(&stack, args).await?;
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    assert_eq!(
        stack.depth(&stack.queue("payments").dlq_url).await?,
        2,
        "nothing purged"
    );
    let (code, _, err) = fleetctl(&stack, &["dlq", "purge", "payments", "--yes"]).await?;
    assert_eq!(code, 0, "{err}");
    stack
        .wait_for_empty(&stack.queue("payments").dlq_url)
        .await?;
    Ok(())
}

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// `[raw bytes]` of the Binary attribute every [`dead_letter`] message carries, and its base64.
const BLOB: [u8; 3] = [0, 255, 7];
const BLOB_BASE64: &str = "AP8H";

/// Why a message is in the payments DLQ, as the engine records it.
struct Why<'a> {
    kind: &'a str,
    worker: &'a str,
    /// How long ago it failed (`fleet.failed-at`).
    ago: Duration,
    /// `fleet.source-queue`: the payments queue unless given.
    source: Option<&'a str>,
}

impl<'a> Why<'a> {
    fn new(kind: &'a str, worker: &'a str, ago: Duration) -> Self {
        Self {
            kind,
            worker,
            ago,
            source: None,
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// Puts payments into the payments DLQ as the engine dead-letters them (every `fleet.*`
/// reason attribute, named by `fleet::dlq::names`), each with a Binary attribute beside its
/// string ones; `why: None` as SQS's redrive policy moves them (no reason at all).
async fn dead_letter(
    stack: &Stack,
    batch: &[(String, String)],
    why: Option<Why<'_>>,
) -> Result<()> {
    let queue = stack.queue("payments").clone();
    for chunk in batch.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, (id, body))| {
                let mut entry = SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body)
                    .message_attributes("paymentId", string_attr(id))
                    .message_attributes(
                        fleet::gateway::ATTR_REQUEST_ID,
                        string_attr(&format!("direct-{id}")),
                    )
                    .message_attributes(
                        "blob",
                        MessageAttributeValue::builder()
                            .data_type("Binary")
                            .binary_value(Blob::new(BLOB.to_vec()))
                            .build()
                            .expect("data type set"),
                    );
                if let Some(why) = &why {
                    let failed_at = now_ms() - why.ago.as_millis() as u64;
                    entry = entry
                        .message_attributes(names::KIND, fleet::dlq::string(why.kind))
                        .message_attributes(names::MESSAGE, fleet::dlq::string("test"))
                        .message_attributes(names::WORKER, fleet::dlq::string(why.worker))
                        .message_attributes(names::RECEIVE_COUNT, fleet::dlq::number(3))
                        .message_attributes(names::FAILED_AT, fleet::dlq::number(failed_at))
                        .message_attributes(
                            names::SOURCE_QUEUE,
                            fleet::dlq::string(why.source.unwrap_or(&queue.url)),
                        );
                }
                entry.build().expect("id and body set")
            })
            .collect();
        let out = stack
            .sqs
            .send_message_batch()
            .queue_url(&queue.dlq_url)
            .set_entries(Some(entries))
            .send()
            .await?;
        anyhow::ensure!(out.failed.is_empty(), "send failed: {:?}", out.failed);
    }
    Ok(())
}

/// A DLQ of every sort: 3 `retries-exhausted` of two days ago and 2 `conflict` of three hours
/// ago from payments-worker, 1 `invalid-json` of a minute ago from another worker, 1 moved by
/// the redrive policy (no reason) just now.
async fn mixed_dlq(stack: &Stack) -> Result<()> {
    let worker = "payments-worker";
    dead_letter(
        stack,
        &payments("re", 3),
        Some(Why::new(kind::RETRIES_EXHAUSTED, worker, 2 * DAY)),
    )
    .await?;
    dead_letter(
        stack,
        &payments("cf", 2),
        Some(Why::new(kind::CONFLICT, worker, 3 * HOUR)),
    )
    .await?;
    dead_letter(
        stack,
        &payments("ij", 1),
        Some(Why::new(kind::INVALID_JSON, "other-worker", MINUTE)),
    )
    .await?;
    dead_letter(stack, &payments("rp", 1), None).await
}

/// `2026-05-01T12:03:04.123Z` and the like.
fn is_rfc3339(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && text.ends_with('Z')
        && b[..4].iter().all(u8::is_ascii_digit)
}

/// JSON lines, each parsed.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `[{key: name, "count": n}, …]` as a map.
fn counts(rows: &Value, key: &str) -> HashMap<String, u64> {
    rows.as_array()
        .unwrap_or_else(|| panic!("not an array: {rows}"))
        .iter()
        .map(|r| {
            (
                r[key].as_str().unwrap().to_owned(),
                r["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn reason_of(line: &Value) -> &str {
    line["attributes"][names::KIND]["string_value"]
        .as_str()
        .unwrap_or("none")
}

async fn queue_arn(stack: &Stack, url: &str) -> Result<String> {
    stack
        .sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await?
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .context("no QueueArn")
}

#[tokio::test]
async fn help_documents_the_exit_codes() -> Result<()> {
    for args in [
        &["--help"][..],
        &["status", "--help"],
        &["dlq", "check", "--help"],
        &["dlq", "redrive", "--help"],
    ] {
        let out = tokio::process::Command::new(binary("fleetctl"))
            .args(args)
            .output()
            .await?;
        let help = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {help}");
        assert!(help.contains("Exit codes:"), "{args:?}: {help}");
        let code = |n: &str| help.lines().any(|l| l.trim_start().starts_with(n));
        assert!(code("0 ") && code("1 ") && code("2 "), "{args:?}: {help}");
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with("3 ") && l.contains("dead-letter")),
            "{args:?}: {help}"
        );
        if args[0] == "dlq" && args[1] == "redrive" {
            assert!(code("4 ") && code("130 "), "{help}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn completions_are_generated_for_bash_zsh_and_fish() -> Result<()> {
    let run = |shell: &'static str| async move {
        let out = tokio::process::Command::new(binary("fleetctl"))
            .args(["completions", shell])
            .output()
            .await?;
        anyhow::Ok((
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    };
    let (code, bash) = run("bash").await?;
    assert_eq!(code, Some(0), "{bash}");
    assert!(
        bash.contains("redrive") && bash.contains("--older-than"),
        "{bash}"
    );
    // The script loads in bash and registers the completion.
    let script = std::env::temp_dir().join(format!("fleetctl-{}.bash", fastrand::u32(..)));
    std::fs::write(&script, &bash)?;
    let out = tokio::process::Command::new("bash")
        .args([
            "-c",
            &format!("source {} && complete -p fleetctl", script.display()),
        ])
        .output()
        .await?;
    std::fs::remove_file(&script)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("fleetctl"));

    let (code, zsh) = run("zsh").await?;
    assert_eq!(code, Some(0));
    assert!(zsh.starts_with("#compdef fleetctl"), "{zsh}");
    let (code, fish) = run("fish").await?;
    assert_eq!(code, Some(0));
    assert!(fish.contains("complete -c fleetctl"), "{fish}");
    let (code, _) = run("tcsh").await?;
    assert_eq!(code, Some(2), "an unknown shell is a usage error");
    Ok(())
}

#[tokio::test]
async fn dlq_check_exits_3_when_a_dlq_holds_messages() -> Result<()> {
    let stack = Stack::provision().await?;
    let (code, out, err) = fleetctl(&stack, &["dlq", "check"]).await?;
    assert_eq!((code, out.as_str()), (0, ""), "{err}");

    dead_letter_payments(&stack, kind::RETRIES_EXHAUSTED, &payments("ck", 2)).await?;
    let (code, out, err) = fleetctl(&stack, &["dlq", "check"]).await?;
    assert_eq!(code, 3, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("payments") && l.contains(" 2")),
        "{out}"
    );
    let (code, out, _) = fleetctl(&stack, &["dlq", "check", "--json"]).await?;
    assert_eq!(code, 3);
    let check: Value = serde_json::from_str(&out)?;
    assert_eq!(check["queues"]["payments"], 2, "{check}");
    assert_eq!(check["queues"]["books-commands"], 0, "{check}");
    assert_eq!(check["dlq_total"], 2, "{check}");

    // Only the queues named.
    let (code, _, err) = fleetctl(&stack, &["dlq", "check", "books-commands", "orders"]).await?;
    assert_eq!(code, 0, "{err}");
    let (code, _, _) = fleetctl(&stack, &["dlq", "check", "orders", "payments"]).await?;
    assert_eq!(code, 3);
    let (code, _, err) = fleetctl(&stack, &["dlq", "check", "nope"]).await?;
    assert_eq!(
        code, 1,
        "an unknown queue is an error, not an empty DLQ: {err}"
    );
    Ok(())
}

#[tokio::test]
async fn export_reads_each_message_once_when_a_pass_outlasts_the_hide_time() -> Result<()> {
    const N: usize = 1000;
    const HIDE: Duration = Duration::from_secs(1);
    const HELD: Duration = Duration::from_secs(1);
    // Lines read before the test stops reading for a while: the rest (several hundred KB of
    // JSON lines) is far more than a pipe holds.
    const PAUSE_AFTER: usize = 100;
    let stack = Stack::provision().await?;
    let dlq = stack.queue("payments").dlq_url.clone();
    dead_letter(
        &stack,
        &payments("ex", N),
        Some(Why::new(kind::RETRIES_EXHAUSTED, "payments-worker", HOUR)),
    )
    .await?;

    // A few held by another reader for a while: they come back during the pass, after the
    // first messages read have come back too (SQS hands messages out in no fixed order;
    // LocalStack hands expired ones back at the end of its queue, after every unread one).
    let held = stack
        .sqs
        .receive_message()
        .queue_url(&dlq)
        .max_number_of_messages(5)
        .visibility_timeout(HELD.as_secs() as i32)
        .send()
        .await?
        .messages
        .unwrap_or_default()
        .len();
    assert_eq!(held, 5);

    // To stdout, read as it comes.
    let started = Instant::now();
    let mut child = fleetctl_command(
        &stack,
        &["dlq", "export", "payments", "-", "--hide-secs", "1"],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut exported = Vec::new();
    let mut first_at = None;
    let read = tokio::time::timeout(Duration::from_secs(180), async {
        while let Some(line) = lines.next_line().await? {
            first_at.get_or_insert_with(|| started.elapsed());
            exported.push(serde_json::from_str::<Value>(&line)?);
            if exported.len() == PAUSE_AFTER {
                // Stop reading: fleetctl blocks on the full pipe mid-pass while what it has
                // read, and the held messages, come back (hidden 1 s; LocalStack puts them back
                // within a second of that, ahead of the unread ones). However fast the pass
                // would be, it meets both when it goes on.
                tokio::time::sleep(HIDE + HELD + Duration::from_secs(1)).await;
            }
        }
        anyhow::Ok(())
    })
    .await;
    if read.is_err() {
        child.start_kill()?;
        panic!(
            "export did not finish in 180 s ({} lines): it never stops",
            exported.len()
        );
    }
    read.expect("finished in time")?;
    let out = child.wait_with_output().await?;
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        took > HIDE,
        "one pass ({took:?}) must outlast the hide time for this test to mean anything"
    );
    let first_at = first_at.expect("lines");
    assert!(
        first_at + Duration::from_millis(300) < took,
        "lines are streamed as they are read: first after {first_at:?}, exit after {took:?}"
    );

    assert_eq!(exported.len(), N, "each message once: {err}");
    let ids: HashSet<&str> = exported
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), N, "no message twice");
    for m in &exported {
        assert_eq!(
            m["attributes"]["blob"],
            serde_json::json!({"data_type": "Binary", "binary_value": BLOB_BASE64}),
            "binary attributes kept, base64: {m}"
        );
        assert!(
            is_rfc3339(m["failed_at"].as_str().unwrap_or_default()),
            "{m}"
        );
        assert!(is_rfc3339(m["sent_at"].as_str().unwrap_or_default()), "{m}");
    }
    assert!(err.contains(&format!("{N} message(s)")), "{err}");
    let again: u64 = err
        .split(" read again")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("how many came back: {err}"))?;
    assert!(
        again > 0 && took > HELD,
        "messages read came back during the pass ({took:?}) and were skipped: {err}"
    );

    // Left in place: handed back, all visible again.
    eventually(
        Duration::from_secs(10),
        "every message visible again",
        || async {
            let counts = fleet::queue::counts(&stack.sqs, &dlq).await?;
            Ok((counts.visible == N as u64).then_some(()))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn summary_counts_by_reason_worker_and_age() -> Result<()> {
    let stack = Stack::provision().await?;
    mixed_dlq(&stack).await?;

    let (code, out, err) = fleetctl(&stack, &["dlq", "summary", "payments", "--json"]).await?;
    assert_eq!(code, 0, "{err}");
    let summary: Value = serde_json::from_str(&out)?;
    assert_eq!(summary["total"], 7, "{summary}");
    let by_reason = summary["by_reason"].as_array().unwrap();
    assert_eq!(
        counts(&summary["by_reason"], "reason"),
        HashMap::from([
            (kind::RETRIES_EXHAUSTED.to_owned(), 3),
            (kind::CONFLICT.to_owned(), 2),
            (kind::INVALID_JSON.to_owned(), 1),
            ("none".to_owned(), 1),
        ]),
        "{summary}"
    );
    let redrive: HashMap<&str, &str> = by_reason
        .iter()
        .map(|r| {
            (
                r["reason"].as_str().unwrap(),
                r["redrive"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(redrive[kind::RETRIES_EXHAUSTED], "safe");
    assert_eq!(
        redrive["none"], "safe",
        "moved by the redrive policy: retries"
    );
    assert_eq!(redrive[kind::CONFLICT], "refused");
    assert_eq!(redrive[kind::INVALID_JSON], "refused");
    assert_eq!(
        counts(&summary["by_worker"], "worker"),
        HashMap::from([
            ("payments-worker".to_owned(), 5),
            ("other-worker".to_owned(), 1),
            ("unknown".to_owned(), 1),
        ]),
        "{summary}"
    );
    assert_eq!(
        counts(&summary["by_age"], "age"),
        HashMap::from([
            ("<1h".to_owned(), 2),
            ("1h-24h".to_owned(), 2),
            ("1d-7d".to_owned(), 3),
            (">7d".to_owned(), 0),
        ]),
        "{summary}"
    );
    assert!(
        is_rfc3339(summary["oldest_failed_at"].as_str().unwrap_or_default()),
        "{summary}"
    );
    assert!(
        is_rfc3339(summary["newest_failed_at"].as_str().unwrap_or_default()),
        "{summary}"
    );

    // For people: a table, times as RFC 3339.
    let (code, text, err) = fleetctl(&stack, &["dlq", "summary", "payments"]).await?;
    assert_eq!(code, 0, "{err}");
    assert!(
        text.lines().any(|l| l.starts_with(kind::RETRIES_EXHAUSTED)
            && l.contains(" 3 ")
            && l.contains("safe")),
        "{text}"
    );
    assert!(
        text.split_whitespace().any(is_rfc3339),
        "times as RFC 3339: {text}"
    );

    // Filters apply to the summary too.
    let (_, out, _) = fleetctl(
        &stack,
        &["dlq", "summary", "payments", "--json", "--older-than", "1h"],
    )
    .await?;
    let summary: Value = serde_json::from_str(&out)?;
    assert_eq!(summary["total"], 5, "{summary}");
    assert_eq!(stack.depth(&stack.queue("payments").dlq_url).await?, 7);
    Ok(())
}

#[tokio::test]
async fn peek_and_export_filter_by_reason_worker_and_age() -> Result<()> {
    let stack = Stack::provision().await?;
    mixed_dlq(&stack).await?;
    let peek = |args: &'static [&'static str]| {
        let stack = &stack;
        async move {
            let (code, out, err) = fleetctl(
                stack,
                &[&["dlq", "peek", "payments", "--json"][..], args].concat(),
            )
            .await?;
            assert_eq!(code, 0, "{args:?}: {err}");
            anyhow::Ok(json_lines(&out))
        }
    };
    let conflicts = peek(&["--reason", kind::CONFLICT]).await?;
    assert_eq!(conflicts.len(), 2);
    assert!(conflicts.iter().all(|m| reason_of(m) == kind::CONFLICT));
    assert!(conflicts
        .iter()
        .all(|m| is_rfc3339(m["failed_at"].as_str().unwrap_or_default())));
    assert_eq!(peek(&["--worker", "other-worker"]).await?.len(), 1);
    let old = peek(&["--older-than", "1d"]).await?;
    assert_eq!(old.len(), 3);
    assert!(old.iter().all(|m| reason_of(m) == kind::RETRIES_EXHAUSTED));
    assert_eq!(
        peek(&["--older-than", "2h", "--worker", "payments-worker"])
            .await?
            .len(),
        5
    );
    assert_eq!(
        peek(&["--reason", "none"]).await?.len(),
        1,
        "no reason: the redrive policy"
    );
    assert_eq!(peek(&["-n", "2"]).await?.len(), 2, "-n still limits");

    let (code, text, err) = fleetctl(
        &stack,
        &[
            "dlq",
            "peek",
            "payments",
            "--reason",
            kind::RETRIES_EXHAUSTED,
            "--older-than",
            "90m",
        ],
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        text.matches(&format!("reason:       {}", kind::RETRIES_EXHAUSTED))
            .count(),
        3,
        "{text}"
    );
    let failed_at: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("failed at:"))
        .collect();
    assert_eq!(failed_at.len(), 3, "{text}");
    assert!(
        failed_at
            .iter()
            .all(|t| t.split_whitespace().next().is_some_and(is_rfc3339)),
        "RFC 3339, not epoch ms: {text}"
    );

    let (code, out, err) = fleetctl(
        &stack,
        &["dlq", "export", "payments", "-", "--reason", kind::CONFLICT],
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|m| reason_of(m) == kind::CONFLICT));
    let file = std::env::temp_dir().join(format!("{}filtered.jsonl", stack.info.prefix));
    let (code, _, err) = fleetctl(
        &stack,
        &[
            "dlq",
            "export",
            "payments",
            file.to_str().unwrap(),
            "--worker",
            "payments-worker",
            "--older-than",
            "2h",
        ],
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_to_string(&file)?.lines().count(), 5);
    std::fs::remove_file(&file)?;

    let (code, _, err) =
        fleetctl(&stack, &["dlq", "peek", "payments", "--older-than", "5x"]).await?;
    assert_eq!(code, 2, "a bad duration is a usage error");
    assert!(err.contains("older-than"), "{err}");
    assert_eq!(
        stack.depth(&stack.queue("payments").dlq_url).await?,
        7,
        "all left in place"
    );
    Ok(())
}

#[tokio::test]
async fn redrive_dry_run_shows_what_would_move_by_reason() -> Result<()> {
    let stack = Stack::provision().await?;
    let queue = stack.queue("payments").clone();
    mixed_dlq(&stack).await?;

    let (code, out, err) = fleetctl(&stack, &["dlq", "redrive", "payments", "--dry-run"]).await?;
    assert_eq!(code, 0, "{err}");
    let plan: Value = serde_json::from_str(out.trim())?;
    assert_eq!(plan["dry_run"], true, "{plan}");
    assert_eq!(plan["would_move"], 4, "{plan}");
    assert_eq!(plan["refused"], 3, "{plan}");
    assert_eq!(
        plan["method"], "receive-send-delete",
        "some are refused: {plan}"
    );
    let actions: HashMap<&str, (&str, u64)> = plan["by_reason"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["reason"].as_str().unwrap(),
                (r["action"].as_str().unwrap(), r["count"].as_u64().unwrap()),
            )
        })
        .collect();
    assert_eq!(actions[kind::RETRIES_EXHAUSTED], ("move", 3), "{plan}");
    assert_eq!(actions["none"], ("move", 1), "{plan}");
    assert_eq!(actions[kind::CONFLICT], ("refuse", 2), "{plan}");
    assert_eq!(actions[kind::INVALID_JSON], ("refuse", 1), "{plan}");

    let (code, out, err) = fleetctl(
        &stack,
        &["dlq", "redrive", "payments", "--dry-run", "--force"],
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    let plan: Value = serde_json::from_str(out.trim())?;
    assert_eq!(
        (plan["would_move"].as_u64(), plan["refused"].as_u64()),
        (Some(7), Some(0))
    );
    assert_eq!(plan["method"], "move-task", "{plan}");

    let (code, out, err) = fleetctl(
        &stack,
        &[
            "dlq",
            "redrive",
            "payments",
            "--dry-run",
            "--worker",
            "payments-worker",
        ],
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    let plan: Value = serde_json::from_str(out.trim())?;
    assert_eq!(
        (
            plan["would_move"].as_u64(),
            plan["refused"].as_u64(),
            plan["skipped"].as_u64()
        ),
        (Some(3), Some(2), Some(2)),
        "{plan}"
    );

    // Nothing moved.
    assert_eq!(stack.depth(&queue.url).await?, 0);
    assert_eq!(stack.depth(&queue.dlq_url).await?, 7);
    Ok(())
}

#[tokio::test]
async fn redrive_refuses_kinds_that_cannot_succeed_unless_forced() -> Result<()> {
    let stack = Stack::provision().await?;
    let queue = stack.queue("payments").clone();
    dead_letter_payments(&stack, kind::INVALID_JSON, &payments("ij", 2)).await?;
    dead_letter_payments(&stack, kind::RETRIES_EXHAUSTED, &payments("re", 3)).await?;

    // Asked for by name: refused outright.
    for args in [
        &[
            "--filter",
            format!("reason={}", kind::INVALID_JSON).as_str(),
        ][..],
        &["--reason", kind::INVALID_JSON, "--method", "batch"],
    ] {
        let (code, out, err) = fleetctl(
            &stack,
            &[&["dlq", "redrive", "payments"][..], args].concat(),
        )
        .await?;
        assert_eq!(code, 1, "{args:?}: {out}");
        assert!(
            err.contains("--force") && err.contains(kind::INVALID_JSON),
            "{err}"
        );
    }
    // The move task would take everything: refused while the DLQ holds such kinds.
    let (code, _, err) = fleetctl(
        &stack,
        &["dlq", "redrive", "payments", "--method", "move-task"],
    )
    .await?;
    assert_eq!(code, 1);
    assert!(
        err.contains("--force") && err.contains(kind::INVALID_JSON),
        "{err}"
    );
    assert_eq!(stack.depth(&queue.url).await?, 0, "nothing moved");

    // Everything: what can succeed moves, the rest stays.
    let (code, out, err) = fleetctl(&stack, &["dlq", "redrive", "payments"]).await?;
    assert_eq!(code, 0, "{err}");
    let summary: Value = serde_json::from_str(out.trim())?;
    assert_eq!(
        (summary["moved"].as_u64(), summary["refused"].as_u64()),
        (Some(3), Some(2)),
        "{summary}"
    );
    assert!(err.contains("--force"), "says how to move the rest: {err}");
    assert_eq!(stack.depth(&queue.url).await?, 3);
    assert_eq!(stack.depth(&queue.dlq_url).await?, 2);
    let (_, out, _) = fleetctl(&stack, &["dlq", "peek", "payments", "--json"]).await?;
    let left = json_lines(&out);
    assert_eq!(left.len(), 2);
    assert!(
        left.iter().all(|m| reason_of(m) == kind::INVALID_JSON),
        "{out}"
    );

    // Forced.
    let (code, out, err) = fleetctl(
        &stack,
        &[
            "dlq",
            "redrive",
            "payments",
            "--reason",
            kind::INVALID_JSON,
            "--force",
        ],
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    let summary: Value = serde_json::from_str(out.trim())?;
    assert_eq!(summary["moved"], 2, "{summary}");
    stack.wait_for_empty(&queue.dlq_url).await?;
    Ok(())
}

#[tokio::test]
async fn redrive_exits_4_when_messages_cannot_be_sent_back() -> Result<()> {
    let stack = Stack::provision().await?;
    let queue = stack.queue("payments").clone();
    let gone = format!("{}-deleted", queue.url);
    dead_letter(
        &stack,
        &payments("ok", 3),
        Some(Why::new(kind::RETRIES_EXHAUSTED, "payments-worker", MINUTE)),
    )
    .await?;
    dead_letter(
        &stack,
        &payments("gone", 2),
        Some(Why {
            source: Some(&gone),
            ..Why::new(kind::RETRIES_EXHAUSTED, "payments-worker", MINUTE)
        }),
    )
    .await?;

    let (code, out, err) =
        fleetctl(&stack, &["dlq", "redrive", "payments", "--method", "batch"]).await?;
    assert_eq!(code, 4, "{out}{err}");
    let summary: Value = serde_json::from_str(out.trim())
        .with_context(|| format!("a JSON summary even so: {out} {err}"))?;
    assert_eq!(
        (summary["moved"].as_u64(), summary["failed"].as_u64()),
        (Some(3), Some(2)),
        "{summary}"
    );
    assert!(
        err.contains("-deleted"),
        "names the queue it could not send to: {err}"
    );
    assert_eq!(stack.depth(&queue.url).await?, 3);
    // The failed ones are left in the DLQ, visible at once.
    let counts = fleet::queue::counts(&stack.sqs, &queue.dlq_url).await?;
    assert_eq!((counts.visible, counts.in_flight), (2, 0), "{counts:?}");
    Ok(())
}

#[tokio::test]
async fn ctrl_c_cancels_the_move_task_and_stops_a_batch_redrive() -> Result<()> {
    const N: usize = 60;
    let stack = Stack::provision().await?;
    let queue = stack.queue("payments").clone();
    dead_letter_payments(&stack, kind::RETRIES_EXHAUSTED, &payments("cc", N)).await?;
    let dlq_arn = queue_arn(&stack, &queue.dlq_url).await?;

    for method in ["move-task", "batch"] {
        let moved_before = stack.depth(&queue.url).await?;
        let child = fleetctl_command(
            &stack,
            &[
                "dlq",
                "redrive",
                "payments",
                "--method",
                method,
                "--max-per-second",
                "4",
            ],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
        eventually(Duration::from_secs(30), "the redrive under way", || async {
            Ok((stack.depth(&queue.url).await? > moved_before).then_some(()))
        })
        .await?;
        let pid = child.id().context("running")?;
        let status = std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()?;
        assert!(status.success());
        let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
            .await
            .context("fleetctl did not exit after Ctrl-C")??;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(out.status.code(), Some(130), "{method}: {stdout} {stderr}");
        let summary: Value = serde_json::from_str(stdout.trim())
            .with_context(|| format!("{method}: a summary: {stdout} {stderr}"))?;
        assert_eq!(summary["cancelled"], true, "{summary}");

        if method == "move-task" {
            assert!(stderr.contains("cancel"), "{stderr}");
            let tasks = stack
                .sqs
                .list_message_move_tasks()
                .source_arn(&dlq_arn)
                .send()
                .await?;
            let status = tasks.results()[0].status().unwrap_or_default().to_owned();
            assert!(
                status == "CANCELLED" || status == "CANCELLING",
                "the move task was cancelled: {status}"
            );
        }
        // It stopped: nothing moves any more; what is left is in the DLQ, visible at once.
        let moved = stack.depth(&queue.url).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(stack.depth(&queue.url).await?, moved, "{method}: stopped");
        let left = fleet::queue::counts(&stack.sqs, &queue.dlq_url).await?;
        assert!(
            left.visible > 0 && left.in_flight == 0,
            "{method}: {left:?}"
        );
        assert_eq!(moved + left.total(), N as u64, "{method}: nothing lost");
    }
    Ok(())
}

#[tokio::test]
async fn progress_is_drawn_on_a_terminal_only() -> Result<()> {
    let stack = Stack::provision().await?;
    dead_letter_payments(&stack, kind::RETRIES_EXHAUSTED, &payments("pr", 20)).await?;

    // Not a terminal: no progress at all, only the summary.
    let (code, out, err) = fleetctl(
        &stack,
        &[
            "dlq", "redrive", "payments", "--method", "batch", "--max", "5",
        ],
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains('\r') && !err.contains("moved"), "{err:?}");
    serde_json::from_str::<Value>(out.trim())?;

    // On a terminal (a pty from script(1)): both methods draw their progress.
    let on_a_terminal = |args: &[&str]| {
        let command = std::iter::once(binary("fleetctl").display().to_string())
            .chain(args.iter().map(|a| a.to_string()))
            .collect::<Vec<_>>()
            .join(" ");
        let mut script = tokio::process::Command::new("script");
        script
            .args(["-qefc", &command, "/dev/null"])
            .env("FLEET_PREFIX", &stack.info.prefix)
            .env("TERM", "xterm")
            .envs(
                stack
                    .worker_env("payments-worker")
                    .into_iter()
                    .filter(|(k, _)| k.starts_with("AWS_")),
            )
            .stdin(std::process::Stdio::null());
        async move {
            let out = script.output().await?;
            anyhow::Ok((
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            ))
        }
    };
    let (code, tty) = on_a_terminal(&[
        "dlq", "redrive", "payments", "--method", "batch", "--max", "5",
    ])
    .await?;
    assert_eq!(code, Some(0), "{tty}");
    assert!(tty.contains("moved 5"), "batch progress: {tty:?}");
    let (code, tty) = on_a_terminal(&[
        "dlq",
        "redrive",
        "payments",
        "--method",
        "move-task",
        "--max-per-second",
        "5",
    ])
    .await?;
    assert_eq!(code, Some(0), "{tty}");
    assert!(
        tty.contains("move task") && tty.contains("/10"),
        "move-task progress: {tty:?}"
    );
    stack
        .wait_for_empty(&stack.queue("payments").dlq_url)
        .await?;
    Ok(())
}
