//! `dlq summary`: what a DLQ holds, counted by reason, worker and age.

use std::collections::HashMap;
use std::fmt::Write as _;

use anyhow::Result;
use fleet::CancellationToken;
use serde::Serialize;

use super::read::{read_once, End, ReadOptions};
use super::time::{now_ms, rfc3339};
use super::{reason_is_safe, redrive_label, Dead, Filter};
use crate::deployment::Deployment;

/// The age buckets: a name and the age (seconds) below which a message falls in it.
const AGES: [(&str, u64); 4] = [
    ("<1h", 3600),
    ("1h-24h", 86_400),
    ("1d-7d", 7 * 86_400),
    (">7d", u64::MAX),
];

/// The counts of one reason kind.
#[derive(Debug, Serialize)]
pub(crate) struct ByReason {
    pub(crate) reason: String,
    pub(crate) count: u64,
    /// `safe`: a redrive can succeed once the cause is fixed; `refused`: it would fail again
    /// (`redrive` leaves it unless --force).
    pub(crate) redrive: &'static str,
}

/// The counts of one worker.
#[derive(Debug, Serialize)]
pub(crate) struct ByWorker {
    pub(crate) worker: String,
    pub(crate) count: u64,
}

/// The counts of one age bucket.
#[derive(Debug, Serialize)]
pub(crate) struct ByAge {
    pub(crate) age: &'static str,
    pub(crate) count: u64,
}

/// What `dlq summary` prints.
#[derive(Debug, Serialize)]
pub(crate) struct Summary {
    /// Topology name.
    pub(crate) queue: String,
    /// The DLQ's name.
    pub(crate) dlq: String,
    /// Messages counted (those matching the filter).
    pub(crate) total: u64,
    /// When the oldest failed, RFC 3339.
    pub(crate) oldest_failed_at: Option<String>,
    /// When the newest failed, RFC 3339.
    pub(crate) newest_failed_at: Option<String>,
    /// Most frequent first.
    pub(crate) by_reason: Vec<ByReason>,
    /// Most frequent first.
    pub(crate) by_worker: Vec<ByWorker>,
    /// Every bucket, youngest first.
    pub(crate) by_age: Vec<ByAge>,
}

/// The bucket of an age.
fn age_bucket(age_secs: u64) -> usize {
    AGES.iter()
        .position(|(_, below)| age_secs < *below)
        .unwrap_or(AGES.len() - 1)
}

/// Counts, most frequent first (then by name).
fn sorted(counts: HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut rows: Vec<(String, u64)> = counts.into_iter().collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    rows
}

/// Reads the DLQ once and counts; `None` when Ctrl-C stopped it.
pub(crate) async fn summary(
    fleet: &Deployment,
    key: &str,
    filter: &Filter,
    read: &ReadOptions,
    interrupt: &CancellationToken,
) -> Result<Option<Summary>> {
    let dlq = fleet.url(key, true).await?;
    let name = fleet.name(key, true);
    let now = now_ms();
    let mut reasons: HashMap<String, u64> = HashMap::new();
    let mut workers: HashMap<String, u64> = HashMap::new();
    let mut ages = [0u64; AGES.len()];
    let (mut oldest, mut newest): (Option<u64>, Option<u64>) = (None, None);
    let mut total = 0;
    let pass = read_once(fleet, &dlq, read, interrupt, &name, |m| {
        if !filter.matches(m, now) {
            return Ok(true);
        }
        let dead = Dead::of(m);
        total += 1;
        *reasons.entry(dead.reason().to_owned()).or_default() += 1;
        *workers.entry(dead.worker().to_owned()).or_default() += 1;
        if let Some(age) = dead.age_secs(now) {
            ages[age_bucket(age)] += 1;
        }
        if let Some(at) = dead.failed_at_ms {
            oldest = Some(oldest.map_or(at, |o| o.min(at)));
            newest = Some(newest.map_or(at, |n| n.max(at)));
        }
        Ok(true)
    })
    .await?;
    pass.warn(&name);
    if pass.end == End::Interrupted {
        return Ok(None);
    }
    Ok(Some(Summary {
        queue: key.to_owned(),
        dlq: name,
        total,
        oldest_failed_at: oldest.map(rfc3339),
        newest_failed_at: newest.map(rfc3339),
        by_reason: sorted(reasons)
            .into_iter()
            .map(|(reason, count)| ByReason {
                redrive: redrive_label(reason_is_safe(&reason)),
                reason,
                count,
            })
            .collect(),
        by_worker: sorted(workers)
            .into_iter()
            .map(|(worker, count)| ByWorker { worker, count })
            .collect(),
        by_age: AGES
            .iter()
            .zip(ages)
            .map(|((age, _), count)| ByAge { age, count })
            .collect(),
    }))
}

/// The tables for people.
pub(crate) fn table(s: &Summary) -> String {
    let mut out = String::new();
    let _ = write!(out, "{}: {} message(s)", s.dlq, s.total);
    if let (Some(oldest), Some(newest)) = (&s.oldest_failed_at, &s.newest_failed_at) {
        let _ = write!(out, ", failed from {oldest} to {newest}");
    }
    out.push_str("\n\n");
    let _ = writeln!(out, "{:<28} {:>7}  REDRIVE", "REASON", "COUNT");
    for r in &s.by_reason {
        let redrive = if r.redrive == "safe" {
            "safe"
        } else {
            "refused (--force to move)"
        };
        let _ = writeln!(out, "{:<28} {:>7}  {redrive}", r.reason, r.count);
    }
    let _ = writeln!(out, "\n{:<28} {:>7}", "WORKER", "COUNT");
    for w in &s.by_worker {
        let _ = writeln!(out, "{:<28} {:>7}", w.worker, w.count);
    }
    let _ = writeln!(out, "\n{:<28} {:>7}", "AGE (SINCE FAILED)", "COUNT");
    for a in &s.by_age {
        let _ = writeln!(out, "{:<28} {:>7}", a.age, a.count);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_fall_in_their_bucket() {
        assert_eq!(age_bucket(0), 0);
        assert_eq!(age_bucket(3599), 0);
        assert_eq!(age_bucket(3600), 1);
        assert_eq!(age_bucket(86_399), 1);
        assert_eq!(age_bucket(86_400), 2);
        assert_eq!(age_bucket(7 * 86_400), 3);
        assert_eq!(age_bucket(u64::MAX), 3);
    }

    #[test]
    fn counts_come_most_frequent_first() {
        let rows = sorted(HashMap::from([
            ("b".to_owned(), 2),
            ("a".to_owned(), 2),
            ("c".to_owned(), 5),
        ]));
        assert_eq!(
            rows,
            [
                ("c".to_owned(), 5),
                ("a".to_owned(), 2),
                ("b".to_owned(), 2)
            ]
        );
    }
}
