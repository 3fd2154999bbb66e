//! The engine's background tasks: the scaler (concurrency from the backlog) and the reporter
//! (a metric line every interval).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Shared;
use crate::config::EngineConfig;
use crate::message::Handler;
use crate::metrics::Metrics;
use crate::scaler::{Scaler, ScalerPolicy};

/// Looks at the backlog every interval and resizes the concurrency limit (see [`crate::scaler`]).
/// With min = max there is nothing to decide and no task.
pub(super) fn spawn_scaler<H: Handler>(
    shared: &Arc<Shared<H>>,
    policy: ScalerPolicy,
    config: &EngineConfig,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    shared
        .metrics
        .concurrency
        .store(u64::from(policy.min), Ordering::Relaxed);
    if policy.min >= policy.max {
        return tokio::spawn(async {});
    }
    let shared = shared.clone();
    let period = Duration::from_secs(config.scaler_interval_secs);
    tokio::spawn(async move {
        let mut scaler = Scaler::new(policy.clone());
        let mut ticker = tokio::time::interval(period);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            Metrics::incr(&shared.metrics.sqs_calls);
            let backlog = match crate::queue::counts(&shared.sqs, &shared.settings.queue_url).await
            {
                Ok(counts) => counts.backlog(),
                Err(err) => {
                    warn!(error = %err, "scaler cannot read the backlog; keeping concurrency");
                    continue;
                }
            };
            if let Some(d) = scaler.observe(backlog, std::time::Instant::now()) {
                shared.limit.resize(d.to);
                shared
                    .metrics
                    .concurrency
                    .store(u64::from(d.to), Ordering::Relaxed);
                info!(
                    from = d.from,
                    to = d.to,
                    backlog = d.backlog,
                    processes = policy.processes,
                    target_backlog_per_unit = policy.target_backlog_per_unit,
                    "scaler decision"
                );
            }
        }
    })
}

pub(super) fn spawn_reporter(
    metrics: &Arc<Metrics>,
    worker: &str,
    queue: &str,
    interval_secs: u64,
    shutdown: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    if interval_secs == 0 {
        return None;
    }
    let (metrics, worker, queue) = (metrics.clone(), worker.to_owned(), queue.to_owned());
    let period = Duration::from_secs(interval_secs);
    Some(tokio::spawn(async move {
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => metrics.emit(&worker, &queue),
            }
        }
    }))
}
