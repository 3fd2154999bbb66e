//! The in-process scaler on a real backlog: up to the max under 2000 messages, back to the min
//! once the queue is empty and the cooldown has passed, without flapping in between.

use std::time::{Duration, Instant};

use anyhow::Result;
use integration_tests::{eventually, payments, Stack, Worker};

#[tokio::test]
async fn concurrency_follows_the_backlog_up_and_down_without_flapping() -> Result<()> {
    const N: usize = 2000;
    let stack = Stack::provision().await?;
    let queue = stack.queue("payments").clone();
    stack.send_payments(&queue.url, &payments("sc", N)).await?;

    let mut env = stack.worker_env("payments-worker");
    for (k, v) in [
        ("FLEET_MIN_CONCURRENCY", "2"),
        ("FLEET_MAX_CONCURRENCY", "40"),
        ("FLEET_TARGET_BACKLOG_PER_UNIT", "10"),
        ("FLEET_SCALER_INTERVAL_SECS", "1"),
        ("FLEET_SCALE_DOWN_COOLDOWN_SECS", "5"),
    ] {
        env.insert(k.into(), v.into());
    }
    let started = Instant::now();
    let worker = Worker::spawn("payments-worker", &env)?;
    eventually(
        Duration::from_secs(10),
        "concurrency at the max",
        || async { Ok((worker.gauge("concurrency") == Some(40)).then_some(())) },
    )
    .await?;
    eprintln!("at the max after {:?}", started.elapsed());

    stack
        .wait_for_rows(stack.table("payments"), N, Duration::from_secs(120))
        .await?;
    stack.wait_for_empty(&queue.url).await?;
    eventually(
        Duration::from_secs(30),
        "concurrency back at the min",
        || async { Ok((worker.gauge("concurrency") == Some(2)).then_some(())) },
    )
    .await?;
    let (code, _, worker) = worker.stop().await?;
    assert_eq!(code, Some(0));

    let decisions: Vec<(u64, u64)> = worker
        .log_fields("to")
        .iter()
        .filter(|f| f["message"] == "scaler decision")
        .map(|f| (f["from"].as_u64().unwrap(), f["to"].as_u64().unwrap()))
        .collect();
    eprintln!("decisions: {decisions:?}");
    let first_down = decisions
        .iter()
        .position(|(from, to)| to < from)
        .expect("a scale-down");
    assert!(
        decisions[first_down..].iter().all(|(from, to)| to < from),
        "no scale-up after the first scale-down: {decisions:?}"
    );
    assert!(
        decisions.len() <= 8,
        "few decisions, no oscillation: {decisions:?}"
    );
    assert_eq!(
        decisions.first().map(|d| d.1),
        Some(40),
        "straight to the max"
    );
    assert_eq!(decisions.last().map(|d| d.1), Some(2), "back to the min");
    Ok(())
}
