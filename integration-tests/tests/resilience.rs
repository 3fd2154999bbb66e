//! The payments worker under faults: a DynamoDB outage, SIGTERM mid-batch, `kill -9` mid-run;
//! and its container health check. The worker is the real binary; faults are real (refused
//! connections, signals).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use integration_tests::{binary, eventually, payments, Proxy, Stack, Worker};

const WORKER: &str = "payments-worker";

#[tokio::test]
async fn a_dynamodb_outage_is_retried_with_growing_delays_then_stored() -> Result<()> {
    let stack = Stack::provision().await?;
    // Our own queue pair, so that the outage can outlast the topology's 3 receives.
    let (queue, dlq) = stack.queue_pair("outage", 10, 30).await?;
    let mut proxy = Proxy::reserve(Duration::ZERO).await?;
    let mut env = stack.worker_env(WORKER);
    env.insert("FLEET_QUEUE_URL".into(), queue.clone());
    env.insert("FLEET_DLQ_URL".into(), dlq.clone());
    env.insert("FLEET_RETRY_BASE_MS".into(), "1000".into());
    env.insert("AWS_ENDPOINT_URL_DYNAMODB".into(), proxy.url());
    env.insert("AWS_MAX_ATTEMPTS".into(), "1".into());
    stack.send_payments(&queue, &payments("outage", 1)).await?;

    let worker = Worker::spawn(WORKER, &env)?;
    worker
        .wait_for_total("retried", 4, Duration::from_secs(60))
        .await?;
    assert_eq!(stack.count_rows(stack.table("payments")).await?, 0);
    proxy.start().await?; // DynamoDB is back
    stack
        .wait_for_rows(stack.table("payments"), 1, Duration::from_secs(60))
        .await?;

    let delays: Vec<u64> = worker
        .log_fields("retry_in_secs")
        .iter()
        .filter_map(|f| f["retry_in_secs"].as_u64())
        .collect();
    assert!(delays.len() >= 4, "{delays:?}");
    assert!(
        delays.windows(2).all(|w| w[0] <= w[1]),
        "delays never shrink: {delays:?}"
    );
    assert!(delays[3] > delays[0], "delays grow: {delays:?}");
    let (code, _, worker) = worker.stop().await?;
    assert_eq!(code, Some(0));
    assert_eq!(worker.total("succeeded"), 1);
    assert_eq!(worker.total("dead_lettered"), 0);
    assert_eq!(stack.depth(&dlq).await?, 0);
    Ok(())
}

#[tokio::test]
async fn sigterm_mid_batch_exits_within_grace_and_loses_nothing() -> Result<()> {
    const N: usize = 200;
    const GRACE_SECS: u64 = 5;
    let stack = Stack::provision().await?;
    let queue = stack.queue("payments").clone();
    stack
        .send_payments(&queue.url, &payments("term", N))
        .await?;

    // DynamoDB through a slow link (150 ms a request) so that SIGTERM lands mid-run.
    let mut proxy = Proxy::reserve(Duration::from_millis(150)).await?;
    proxy.start().await?;
    let mut env = stack.worker_env(WORKER);
    env.insert("AWS_ENDPOINT_URL_DYNAMODB".into(), proxy.url());
    env.insert("FLEET_SHUTDOWN_GRACE_SECS".into(), GRACE_SECS.to_string());
    env.insert("FLEET_VISIBILITY_TIMEOUT_SECS".into(), "5".into());
    env.insert("FLEET_MAX_CONCURRENCY".into(), "20".into());
    let worker = Worker::spawn(WORKER, &env)?;
    worker
        .wait_for_total("succeeded", 1, Duration::from_secs(60))
        .await?;
    let (code, took, first) = worker
        .terminate(Duration::from_secs(GRACE_SECS + 10))
        .await?;
    assert_eq!(code, Some(0), "{}", first.stderr_text());
    assert!(took < Duration::from_secs(GRACE_SECS), "exited in {took:?}");
    let done_before = first.total("succeeded");
    assert!(
        done_before < N as u64,
        "SIGTERM landed after the run ({done_before} done)"
    );

    let second = Worker::spawn(WORKER, &stack.worker_env(WORKER))?;
    stack
        .wait_for_rows(stack.table("payments"), N, Duration::from_secs(60))
        .await?;
    stack.wait_for_empty(&queue.url).await?;
    let (_, _, second) = second.stop().await?;
    assert_eq!(
        done_before + second.total("succeeded"),
        N as u64,
        "each payment written exactly once (the rest were duplicates)"
    );
    assert_eq!(
        stack.depth(&queue.dlq_url).await?,
        0,
        "nothing dead-lettered"
    );
    Ok(())
}

#[tokio::test]
async fn kill_9_mid_run_loses_nothing_after_a_restart() -> Result<()> {
    const N: usize = 1000;
    let stack = Stack::provision().await?;
    let queue = stack.queue("payments").clone();
    stack
        .send_payments(&queue.url, &payments("kill", N))
        .await?;

    let mut env = stack.worker_env(WORKER);
    env.insert("FLEET_VISIBILITY_TIMEOUT_SECS".into(), "5".into());
    let worker = Worker::spawn(WORKER, &env)?;
    worker
        .wait_for_total("succeeded", 50, Duration::from_secs(60))
        .await?;
    let seen = worker.total("succeeded");
    worker.kill9().await?;
    let stored_at_kill = stack.count_rows(stack.table("payments")).await?;
    assert!(
        stored_at_kill < N,
        "the kill landed mid-run (seen {seen}, stored {stored_at_kill})"
    );

    let restarted = Worker::spawn(WORKER, &env)?;
    stack
        .wait_for_rows(stack.table("payments"), N, Duration::from_secs(120))
        .await?;
    stack.wait_for_empty(&queue.url).await?;
    let (code, _, restarted) = restarted.stop().await?;
    assert_eq!(code, Some(0));
    assert_eq!(restarted.total("dead_lettered"), 0);
    assert_eq!(stack.depth(&queue.dlq_url).await?, 0, "nothing in the DLQ");
    assert_eq!(stack.count_rows(stack.table("payments")).await?, N);
    Ok(())
}

#[tokio::test]
async fn the_health_check_passes_while_the_worker_makes_progress_and_fails_after() -> Result<()> {
    let stack = Stack::provision().await?;
    let dir = std::env::temp_dir().join(format!("fleet-health-{:08x}", fastrand::u32(..)));
    std::fs::create_dir_all(&dir)?;
    let mut env = stack.worker_env(WORKER);
    env.insert(
        "FLEET_HEALTH_FILE".into(),
        dir.join("health").display().to_string(),
    );
    env.insert("FLEET_HEALTH_MAX_AGE_SECS".into(), "4".into());
    env.insert("FLEET_WAIT_TIME_SECS".into(), "1".into());
    // What the container's health check runs: the worker binary with --health-check.
    let healthy = |env: &HashMap<String, String>| {
        std::process::Command::new(binary(WORKER))
            .arg("--health-check")
            .env_clear()
            .envs(env)
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
    };
    assert!(!healthy(&env)?, "unhealthy before the worker ever ran");
    let worker = Worker::spawn(WORKER, &env)?;
    eventually(Duration::from_secs(30), "a healthy worker", || async {
        Ok(healthy(&env)?.then_some(()))
    })
    .await?;
    stack
        .send_payments(&stack.queue("payments").url, &payments("health", 3))
        .await?;
    worker
        .wait_for_total("succeeded", 3, Duration::from_secs(30))
        .await?;
    assert!(healthy(&env)?, "still healthy while working");
    worker.stop().await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !healthy(&env)?,
        "no progress for longer than the maximum age"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Runs payments-worker on the payments queue as provisioned (maxReceiveCount 3) while
/// DynamoDB is unreachable for `outage`, far longer than the whole retry schedule (1 s, then
/// 1–2 s), then brings it back. Returns (stored, dead-lettered, the worker's totals).
async fn drain_through_an_outage(
    n: usize,
    outage: Duration,
    extra: &[(&str, &str)],
) -> Result<(usize, u64, HashMap<String, u64>)> {
    let stack = Stack::provision().await?;
    let queue = stack.queue("payments").clone();
    let mut proxy = Proxy::reserve(Duration::ZERO).await?;
    let mut env = stack.worker_env_with(
        WORKER,
        &[
            ("AWS_ENDPOINT_URL_DYNAMODB", &proxy.url()),
            ("AWS_MAX_ATTEMPTS", "1"),
            ("FLEET_RETRY_BASE_MS", "1000"),
            ("FLEET_RETRY_MAX_SECS", "2"),
            ("FLEET_BREAKER_MAX_OPEN_SECS", "4"),
        ],
    );
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    stack
        .send_payments(&queue.url, &payments("outage", n))
        .await?;
    let worker = Worker::spawn(WORKER, &env)?;
    worker
        .wait_for_total("retried", 5, Duration::from_secs(60))
        .await?;
    tokio::time::sleep(outage).await;
    assert_eq!(stack.count_rows(stack.table("payments")).await?, 0);
    proxy.start().await?; // DynamoDB is back
    let table = stack.table("payments").to_owned();
    eventually(Duration::from_secs(90), "the queue drained", || async {
        Ok((stack.depth(&queue.url).await? == 0).then_some(()))
    })
    .await
    .with_context(|| {
        let log = worker.stderr_text();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        format!(
            "totals {:?}; last log lines (newest first):\n{}",
            worker.totals(),
            tail.join("\n")
        )
    })?;
    let (code, _, worker) = worker.stop().await?;
    assert_eq!(code, Some(0), "{}", worker.stderr_text());
    let stored = stack.count_rows(&table).await?;
    let dead = stack.depth(&queue.dlq_url).await?;
    assert_eq!(
        stored as u64 + dead,
        n as u64,
        "every payment stored or dead-lettered"
    );
    Ok((stored, dead, worker.totals()))
}

#[tokio::test]
async fn an_outage_longer_than_the_retry_schedule_dead_letters_nothing() -> Result<()> {
    const N: usize = 200;
    let (stored, dead, totals) = drain_through_an_outage(N, Duration::from_secs(25), &[]).await?;
    assert_eq!(dead, 0, "nothing dead-lettered by the outage: {totals:?}");
    assert_eq!(stored, N, "{totals:?}");
    assert!(
        totals.get("breaker_opened").copied().unwrap_or(0) >= 1,
        "{totals:?}"
    );
    assert!(
        totals["received"] < 3 * N as u64,
        "the breaker saved receives: {totals:?}"
    );
    Ok(())
}

#[tokio::test]
async fn the_same_outage_without_the_breaker_dead_letters() -> Result<()> {
    // The control: the breaker off, and the test above would fail.
    const N: usize = 200;
    let (_, dead, totals) = drain_through_an_outage(
        N,
        Duration::from_secs(25),
        &[("FLEET_BREAKER_THRESHOLD", "0")],
    )
    .await?;
    assert!(dead > 0, "{totals:?}");
    Ok(())
}
