//! `fleetctl schedule`: the topology's schedules on a local timer, doing what EventBridge
//! Scheduler does in AWS: at every tick, send the schedule's body (its placeholders filled in)
//! to its queue. Ticks fall on multiples of the period since the epoch (UTC), so every process
//! names the same cycle the same way.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use aws_sdk_sqs::primitives::{DateTime, DateTimeFormat};
use fleet::topology::ScheduleSpec;

use crate::deployment::Deployment;

/// How to run the schedules.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Only these schedules (all when empty).
    pub(crate) names: Vec<String>,
    /// A period replacing every schedule's own, seconds.
    pub(crate) every: Option<u64>,
    /// Stop after this many ticks of each schedule.
    pub(crate) count: Option<u64>,
    /// Send a first tick at once (scheduled for the start of the current period).
    pub(crate) now: bool,
}

/// RFC 3339 in UTC, whole seconds: EventBridge's `<aws.scheduler.scheduled-time>`.
pub(crate) fn rfc3339(epoch_secs: u64) -> String {
    DateTime::from_secs(epoch_secs as i64)
        .fmt(DateTimeFormat::DateTime)
        .expect("a time after 1970 formats")
}

/// The first tick at or after `now` (or the current period's start with `immediately`).
fn first_tick(now: u64, every: u64, immediately: bool) -> u64 {
    let start = now - now % every;
    if immediately || start == now {
        start
    } else {
        start + every
    }
}

fn epoch_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs the schedules until SIGTERM or Ctrl-C (or `count` ticks each).
pub(crate) async fn run(fleet: &Deployment, opts: &Options) -> Result<()> {
    let mut chosen: Vec<(String, ScheduleSpec)> = Vec::new();
    for (name, spec) in &fleet.topology.schedules {
        if opts.names.is_empty() || opts.names.contains(name) {
            chosen.push((name.clone(), spec.clone()));
        }
    }
    for name in &opts.names {
        if !fleet.topology.schedules.contains_key(name) {
            let known: Vec<&str> = fleet
                .topology
                .schedules
                .keys()
                .map(String::as_str)
                .collect();
            bail!(
                "unknown schedule '{name}': the topology has {}",
                known.join(", ")
            );
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (name, spec) in chosen {
        let url = fleet.url(&spec.queue, false).await?;
        let sqs = fleet.sqs.clone();
        let every = opts.every.unwrap_or(spec.every_secs).max(1);
        let (count, now) = (opts.count, opts.now);
        eprintln!("schedule {name}: every {every} s to {url}");
        tasks.spawn(async move {
            let mut tick = first_tick(epoch_secs(), every, now);
            let mut sent = 0u64;
            while count != Some(sent) {
                let wait = tick.saturating_sub(epoch_secs());
                tokio::time::sleep(Duration::from_secs(wait)).await;
                let body = spec.body_at(&rfc3339(tick));
                sqs.send_message()
                    .queue_url(&url)
                    .message_body(&body)
                    .send()
                    .await
                    .map_err(|e| fleet::classify(&e))
                    .with_context(|| format!("schedule {name}: sending to {url}"))?;
                println!("{}", serde_json::json!({"schedule": name, "body": body}));
                sent += 1;
                tick += every;
            }
            anyhow::Ok(())
        });
    }
    tokio::select! {
        () = fleet::shutdown::shutdown_signal() => Ok(()),
        done = async {
            while let Some(result) = tasks.join_next().await {
                result.context("schedule task")??;
            }
            anyhow::Ok(())
        } => done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_fall_on_multiples_of_the_period() {
        assert_eq!(first_tick(1000, 300, false), 1200);
        assert_eq!(first_tick(1200, 300, false), 1200);
        assert_eq!(first_tick(1000, 300, true), 900);
        assert_eq!(rfc3339(1_795_394_400), "2026-11-23T00:40:00Z");
    }
}
