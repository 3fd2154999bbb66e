//! `fleetctl status`: where messages are piling up.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use aws_sdk_sqs::types::MessageSystemAttributeName;
use serde::Serialize;

use ::fleet::queue::QueueCounts;

use crate::deployment::Deployment;

/// One queue of the fleet and its DLQ.
#[derive(Debug, Serialize)]
pub(crate) struct QueueStatus {
    /// Topology name.
    pub(crate) queue: String,
    /// The queue's counts.
    #[serde(flatten)]
    pub(crate) counts: QueueCounts,
    /// Age of its oldest message, seconds (CloudWatch's `ApproximateAgeOfOldestMessage`).
    pub(crate) oldest_age_secs: Option<u64>,
    /// Messages in its DLQ.
    pub(crate) dlq_depth: u64,
    /// Age of the oldest DLQ message, seconds: CloudWatch's, else the oldest of a sample of 10.
    pub(crate) dlq_oldest_age_secs: Option<u64>,
    /// The worker consuming it.
    pub(crate) worker: String,
    /// Whether that worker's circuit breaker is open (a dependency is down): its `breaker_open`
    /// metric in CloudWatch, `None` without data.
    pub(crate) breaker_open: Option<bool>,
}

/// Status of every queue of the topology.
pub(crate) async fn collect(fleet: &Deployment) -> Result<Vec<QueueStatus>> {
    let mut out = Vec::new();
    let mut cloudwatch_warned = false;
    let mut from_cloudwatch = |result: Result<Option<u64>>| match result {
        Ok(age) => age,
        Err(err) => {
            if !std::mem::replace(&mut cloudwatch_warned, true) {
                eprintln!("fleetctl: cannot read ages from CloudWatch ({err}); showing '-'");
            }
            None
        }
    };
    for key in fleet.topology.queues.keys() {
        let worker = fleet.topology.consumer(key).unwrap_or("-").to_owned();
        let url = fleet.url(key, false).await?;
        let dlq = fleet.url(key, true).await?;
        let counts = fleet.counts(&url).await?;
        let dlq_counts = fleet.counts(&dlq).await?;
        let oldest_age_secs = if counts.total() > 0 {
            from_cloudwatch(
                fleet
                    .oldest_age_from_cloudwatch(&fleet.name(key, false))
                    .await,
            )
        } else {
            None
        };
        let dlq_oldest_age_secs = if dlq_counts.total() > 0 {
            match from_cloudwatch(
                fleet
                    .oldest_age_from_cloudwatch(&fleet.name(key, true))
                    .await,
            ) {
                Some(age) => Some(age),
                None => oldest_age(fleet, &dlq).await?,
            }
        } else {
            None
        };
        let breaker = fleet.breaker_open(&worker, &fleet.name(key, false)).await;
        let breaker_open = from_cloudwatch(breaker.map(|open| open.map(u64::from))).map(|v| v == 1);
        out.push(QueueStatus {
            worker,
            breaker_open,
            queue: key.clone(),
            counts,
            oldest_age_secs,
            dlq_depth: dlq_counts.total(),
            dlq_oldest_age_secs,
        });
    }
    Ok(out)
}

/// Age of the oldest of up to 10 sampled messages. The sample is received with visibility 0,
/// so it stays where it is (its receive count grows; the original one is in
/// `fleet.receive-count`).
async fn oldest_age(fleet: &Deployment, dlq: &str) -> Result<Option<u64>> {
    let sample = fleet.receive(dlq, 10, 0, 0).await?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Ok(sample
        .iter()
        .filter_map(|m| {
            m.attributes()?
                .get(&MessageSystemAttributeName::SentTimestamp)?
                .parse::<u64>()
                .ok()
        })
        .min()
        .map(|sent_ms| now.saturating_sub(Duration::from_millis(sent_ms)).as_secs()))
}

/// `1h02m`, `3m05s`, `12s`.
pub(crate) fn human_age(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

/// The table for people.
pub(crate) fn table(rows: &[QueueStatus]) -> String {
    let mut out = format!(
        "{:<20} {:>9} {:>9} {:>9} {:>9} {:>11} {:>8}\n",
        "QUEUE", "VISIBLE", "IN-FLIGHT", "DELAYED", "DLQ", "DLQ-OLDEST", "BREAKER"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<20} {:>9} {:>9} {:>9} {:>9} {:>11} {:>8}\n",
            r.queue,
            r.counts.visible,
            r.counts.in_flight,
            r.counts.delayed,
            r.dlq_depth,
            r.dlq_oldest_age_secs
                .map_or_else(|| "-".to_owned(), human_age),
            match r.breaker_open {
                Some(true) => "OPEN",
                Some(false) => "closed",
                None => "-",
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_well() {
        assert_eq!(human_age(12), "12s");
        assert_eq!(human_age(185), "3m05s");
        assert_eq!(human_age(3720), "1h02m");
    }
}
