//! `--scaler`: how fast the in-process scaler follows a backlog, with the worker's default
//! scaler settings. N payments wait on the queue before an idle worker starts; prints the
//! seconds until it runs at its maximum concurrency, and the seconds from the last message
//! handled until it is back at its minimum.

use std::time::{Duration, Instant};

use anyhow::Result;
use integration_tests::{eventually, Stack, Worker};

use crate::{finish, handled, Args};

/// Runs the scaler measurement on the payments already enqueued.
pub(crate) async fn run(args: &Args, stack: &Stack) -> Result<()> {
    let n = args.n as u64;
    let mut env = stack.worker_env("payments-worker");
    env.insert("RUST_LOG".into(), "warn".into());
    // The defaults of `fleet::EngineConfig` (and topology.json's 10..40), not the tests' ones.
    for name in [
        "FLEET_MIN_CONCURRENCY",
        "FLEET_MAX_CONCURRENCY",
        "FLEET_MAX_CONCURRENCY",
        "FLEET_TARGET_BACKLOG_PER_UNIT",
        "FLEET_SCALER_INTERVAL_SECS",
        "FLEET_SCALE_DOWN_COOLDOWN_SECS",
    ] {
        env.remove(name);
    }
    let defaults = fleet::EngineConfig::for_queue("");
    let (min, max) = (
        u64::from(defaults.min_concurrency),
        u64::from(defaults.max_concurrency),
    );
    eprintln!("an idle worker meets a backlog of {n}: concurrency {min}..{max}");
    let started = Instant::now();
    let worker = Worker::spawn("payments-worker", &env)?;
    let at_max = eventually(
        Duration::from_secs(300),
        "concurrency at the max",
        || async { Ok((worker.gauge("concurrency") == Some(max)).then(|| started.elapsed())) },
    )
    .await?;
    eventually(crate::DRAIN_LIMIT, "all payments handled", || async {
        Ok((handled(&worker) >= n).then_some(()))
    })
    .await?;
    let drained = Instant::now();
    let drained_after = started.elapsed();
    let at_min = eventually(
        Duration::from_secs(600),
        "concurrency at the min",
        || async { Ok((worker.gauge("concurrency") == Some(min)).then(|| drained.elapsed())) },
    )
    .await?;
    let (_, rows) = finish(worker, stack).await?;
    let secs = |d: Duration| (d.as_secs_f64() * 10.0).round() / 10.0;
    let report = serde_json::json!({
        "backlog": n,
        "rows_stored": rows,
        "min_concurrency": min,
        "max_concurrency": max,
        "scaler_interval_secs": defaults.scaler_interval_secs,
        "scale_down_cooldown_secs": defaults.scale_down_cooldown_secs,
        "target_backlog_per_unit": defaults.target_backlog_per_unit,
        "secs_to_max_concurrency": secs(at_max),
        "secs_to_drain": secs(drained_after),
        "secs_from_empty_to_min_concurrency": secs(at_min),
        "gauge_resolution_secs": 1,
    });
    crate::print_report(args, "payments-worker scaler", &report);
    anyhow::ensure!(rows == args.n, "{rows} rows stored for {} payments", args.n);
    Ok(())
}
