//! `--outage-secs S`: DynamoDB (a TCP proxy on the worker's `AWS_ENDPOINT_URL_DYNAMODB`) is cut
//! once a quarter of the payments are stored, for S seconds, then restored; prints what was
//! stored and dead-lettered and how long the worker took after the recovery to run at its
//! pre-outage rate again.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use integration_tests::{eventually, Proxy, Queue, Stack, Worker};

use crate::{finish, handled, Args};

/// Drains the payments through an outage of DynamoDB (see the module doc) with the worker's
/// default retry and breaker settings, and prints the figures.
/// Runs the outage measurement on the payments already enqueued.
pub(crate) async fn run(args: &Args, stack: &Stack, queue: &Queue) -> Result<()> {
    let n = args.n as u64;
    let mut proxy = Proxy::reserve(Duration::ZERO).await?;
    proxy.start().await?;
    let mut env = stack.worker_env("payments-worker");
    env.insert(
        "FLEET_MAX_CONCURRENCY".into(),
        args.max_concurrency.to_string(),
    );
    env.insert("RUST_LOG".into(), "warn,fleet::engine=info".into());
    env.insert("AWS_ENDPOINT_URL_DYNAMODB".into(), proxy.url());
    // The production schedule, not the test harness's short one.
    env.remove("FLEET_RETRY_BASE_MS");
    let worker = Worker::spawn("payments-worker", &env)?;
    let succeeded = |w: &Worker| w.totals().get("succeeded").copied().unwrap_or(0);
    eprintln!(
        "draining {n} payments; DynamoDB is cut once {} are stored",
        n / 4
    );
    let started = Instant::now();
    eventually(Duration::from_secs(600), "a quarter stored", || async {
        Ok((succeeded(&worker) >= n / 4).then_some(()))
    })
    .await?;
    let before_rate = succeeded(&worker) as f64 / started.elapsed().as_secs_f64();
    proxy.stop();
    eprintln!("DynamoDB cut for {} s", args.outage_secs);
    // The metric lines lag a second: what was stored before the cut shows by then.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stored_at_cut = succeeded(&worker);
    tokio::time::sleep(Duration::from_secs(args.outage_secs.saturating_sub(2))).await;
    let stored_during = succeeded(&worker);
    proxy.start().await?;
    let back = Instant::now();
    eprintln!("DynamoDB back");
    // Recovered: a second in which the worker stored at least 80 % of its pre-outage rate
    // (or nothing was left to store).
    let mut last = succeeded(&worker);
    let recovered_after = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = succeeded(&worker);
        if now - last >= (before_rate * 0.8) as u64 || handled(&worker) >= n {
            break back.elapsed().as_secs_f64();
        }
        if back.elapsed() > Duration::from_secs(900) {
            bail!("no recovery within 15 minutes");
        }
        last = now;
    };
    eventually(
        Duration::from_secs(1800),
        "all payments handled",
        || async { Ok((handled(&worker) >= n).then_some(())) },
    )
    .await?;
    let (totals, rows) = finish(worker, stack).await?;
    let get = |k: &str| totals.get(k).copied().unwrap_or(0);
    let report = serde_json::json!({
        "n": args.n,
        "outage_secs": args.outage_secs,
        "rows_stored": rows,
        "dead_lettered": stack.depth(&queue.dlq_url).await?,
        "stored_during_outage": stored_during.saturating_sub(stored_at_cut),
        "rate_before_msgs_per_s": (before_rate * 10.0).round() / 10.0,
        "full_rate_again_after_secs": (recovered_after * 10.0).round() / 10.0,
        "total_secs": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "retried": get("retried"),
        "requeued": get("requeued"),
        "breaker_opened": get("breaker_opened"),
        "received": get("received"),
    });
    crate::print_report(
        args,
        &format!(
            "payments-worker outage (N = {}, DynamoDB cut for {} s)",
            args.n, args.outage_secs
        ),
        &report,
    );
    if rows != args.n {
        bail!("{rows} rows stored for {} payments", args.n);
    }
    Ok(())
}
