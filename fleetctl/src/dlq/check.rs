//! `dlq check`: whether any DLQ holds messages, from SQS's counts alone (no CloudWatch), for
//! cron jobs and alerts.

use anyhow::Result;

use crate::deployment::Deployment;

/// The DLQ depth (visible + in flight + delayed) of each queue named, or of every queue of
/// the topology, in the topology's order.
pub(crate) async fn check(fleet: &Deployment, keys: &[String]) -> Result<Vec<(String, u64)>> {
    let keys: Vec<String> = if keys.is_empty() {
        fleet.topology.queues.keys().cloned().collect()
    } else {
        for key in keys {
            fleet.check(key)?;
        }
        keys.to_vec()
    };
    let mut depths = Vec::with_capacity(keys.len());
    for key in keys {
        let dlq = fleet.url(&key, true).await?;
        depths.push((key, fleet.counts(&dlq).await?.total()));
    }
    Ok(depths)
}

/// Prints the non-empty DLQs (`QUEUE DEPTH DLQ-NAME`), or every depth as one JSON object.
pub(crate) fn print_check(fleet: &Deployment, depths: &[(String, u64)], as_json: bool) {
    let total: u64 = depths.iter().map(|(_, d)| d).sum();
    if as_json {
        let queues: serde_json::Map<String, serde_json::Value> = depths
            .iter()
            .map(|(key, depth)| (key.clone(), (*depth).into()))
            .collect();
        println!(
            "{}",
            serde_json::json!({"queues": queues, "dlq_total": total})
        );
        return;
    }
    for (key, depth) in depths.iter().filter(|(_, d)| *d > 0) {
        println!("{key:<20} {depth:>9}  {}", fleet.name(key, true));
    }
}
