//! `fleetctl` against LocalStack: status, and the dead-letter queue tools.

use std::time::Duration;

use anyhow::Result;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use integration_tests::{
    dead_letter_payments, fleetctl, fleetctl_command, payments, Stack, Worker,
};
use serde_json::Value;

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

    dead_letter_payments(&stack, "conflict", &payments("dead", 2)).await?;
    let (code, out, _) = fleetctl(&stack, &["status", "--json"]).await?;
    assert_eq!(code, 2, "a non-empty DLQ makes status exit 2");
    let status: Value = serde_json::from_str(&out)?;
    assert_eq!(payments_row(&status)["dlq_depth"], 2);
    assert!(payments_row(&status)["dlq_oldest_age_secs"].is_u64());

    let (code, table, _) = fleetctl(&stack, &["status"]).await?;
    assert_eq!(code, 2);
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
    dead_letter_payments(&stack, "invalid-json", &payments("peek", 3)).await?;

    let (code, out, err) =
        fleetctl(&stack, &["dlq", "peek", "payments", "-n", "10", "--json"]).await?;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 3);
    assert_eq!(
        lines[0]["attributes"]["fleet.error.kind"]["string_value"],
        "invalid-json"
    );
    let (code, text, _) = fleetctl(&stack, &["dlq", "peek", "payments"]).await?;
    assert_eq!(code, 0);
    assert!(text.contains("reason:       invalid-json"), "{text}");

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
    dead_letter_payments(&stack, "conflict", &payments("rd", N)).await?;

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
    let (_, _, worker) = worker.terminate(Duration::from_secs(30)).await?;
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
    dead_letter_payments(&stack, "conflict", &payments("cf", 3)).await?;
    dead_letter_payments(&stack, "invalid-json", &payments("ij", 2)).await?;

    let (code, out, err) = fleetctl(
        &stack,
        &["dlq", "redrive", "payments", "--filter", "reason=conflict"],
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
                .any(|k| k.starts_with("fleet.") && k != fleet::dlq::names::MESSAGE_ID),
            "reason attributes removed: {attrs:?}"
        );
        assert!(
            attrs.contains_key(fleet::dlq::names::MESSAGE_ID),
            "the original message id goes back with it"
        );
    }

    // No filter: SQS's own move task (LocalStack runs it with a destination ARN).
    let (code, out, err) = fleetctl(&stack, &["dlq", "redrive", "payments"]).await?;
    assert_eq!(code, 0, "{err}");
    let summary: Value = serde_json::from_str(out.trim())?;
    assert_eq!(summary["method"], "move-task", "{summary}");
    stack.wait_for_empty(&queue.dlq_url).await?;
    Ok(())
}

#[tokio::test]
async fn bad_arguments_and_purge_without_confirmation_are_clear_errors() -> Result<()> {
    let stack = Stack::provision().await?;
    dead_letter_payments(&stack, "conflict", &payments("pg", 2)).await?;
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
