//! Background work beside the queue stops with the worker: `archive-worker`'s sweep (started
//! through `fleet::worker::Setup::spawn`) is handed the shutdown token, ends its loop on
//! SIGTERM and is waited for, instead of being dropped mid-sweep when the runtime goes away.

use std::time::Duration;

use anyhow::Result;
use integration_tests::{eventually, Stack, Worker};

#[tokio::test]
async fn the_archive_sweep_stops_on_sigterm_and_the_worker_waits_for_it() -> Result<()> {
    let stack = Stack::provision().await?;
    let mut env = stack.worker_env("archive-worker");
    env.insert("POSTS_SWEEP_INTERVAL_SECS".into(), "1".into());
    env.insert("RUST_LOG".into(), "info".into());
    let worker = Worker::spawn("archive-worker", &env)?;
    // Running: its engine has reported once, and the sweep has had its first turns.
    eventually(Duration::from_secs(30), "the first metric line", || async {
        Ok(worker.metric_lines().first().map(|_| ()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (code, took, worker) = worker.stop().await?;
    assert_eq!(code, Some(0), "{}", worker.stderr_text());
    let said = |message: &str| {
        worker
            .log_fields("message")
            .iter()
            .any(|f| f["message"] == message)
    };
    assert!(
        said("sweep stopped"),
        "the sweep saw the shutdown: {}",
        worker.stderr_text()
    );
    assert!(
        !said("background tasks still running after the shutdown grace period; leaving them"),
        "{}",
        worker.stderr_text()
    );
    // The engine's long poll ends at once on SIGTERM; so does a sweep between two turns.
    assert!(took < Duration::from_secs(10), "stopped in {took:?}");
    Ok(())
}
