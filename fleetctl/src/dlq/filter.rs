//! Which messages of a DLQ a command works on: by reason, worker and age.

use std::time::Duration;

use aws_sdk_sqs::types::Message;

use super::time::parse_age;
use super::Dead;

/// `--reason`, `--worker`, `--older-than`: every one given must match.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct Filter {
    /// Only messages with this reason kind (`fleet.error.kind`, e.g. `retries-exhausted`);
    /// `none`: moved by the queue's redrive policy, without a reason.
    #[arg(long, value_name = "KIND")]
    pub(crate) reason: Option<String>,
    /// Only messages dead-lettered by this worker (`fleet.worker`, e.g. `payments-worker`;
    /// also `<prefix>payments-worker`, the name earlier deployments wrote on AWS).
    #[arg(long, value_name = "NAME")]
    pub(crate) worker: Option<String>,
    /// Only messages that failed longer ago than this: 90s, 30m, 2h, 7d, 1w (`fleet.failed-at`,
    /// else the time they reached the DLQ).
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    pub(crate) older_than: Option<Duration>,
}

impl Filter {
    /// Whether no option is given (every message matches).
    pub(crate) fn is_empty(&self) -> bool {
        self.reason.is_none() && self.worker.is_none() && self.older_than.is_none()
    }

    /// Whether `m` matches at `now_ms`.
    pub(crate) fn matches(&self, m: &Message, now_ms: u64) -> bool {
        let dead = Dead::of(m);
        self.reason.as_deref().is_none_or(|r| dead.reason() == r)
            && self
                .worker
                .as_deref()
                .is_none_or(|w| same_worker(dead.worker(), w))
            && self.older_than.is_none_or(|age| {
                dead.age_secs(now_ms)
                    .is_some_and(|secs| secs >= age.as_secs())
            })
    }
}

/// Whether `recorded` (a dead letter's `fleet.worker`) names the worker `wanted`: the same
/// name, or the name earlier deployments wrote on AWS, `<prefix><worker>` (the prefix ends
/// with `-`), so that older dead letters are not left behind by a filtered redrive.
fn same_worker(recorded: &str, wanted: &str) -> bool {
    recorded == wanted
        || recorded
            .strip_suffix(wanted)
            .is_some_and(|prefix| prefix.ends_with('-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet::dlq::names as attr;

    fn message(kind: Option<&str>, worker: &str, failed_at_ms: u64) -> Message {
        let mut m = Message::builder()
            .message_id("m")
            .message_attributes(attr::WORKER, fleet::dlq::string(worker))
            .message_attributes(attr::FAILED_AT, fleet::dlq::number(failed_at_ms));
        if let Some(kind) = kind {
            m = m.message_attributes(attr::KIND, fleet::dlq::string(kind));
        }
        m.build()
    }

    #[test]
    fn every_option_given_must_match() {
        let now = 10_000_000;
        let m = message(Some("conflict"), "payments-worker", now - 3_600_000);
        let filter = |reason: Option<&str>, worker: Option<&str>, older: Option<u64>| Filter {
            reason: reason.map(str::to_owned),
            worker: worker.map(str::to_owned),
            older_than: older.map(Duration::from_secs),
        };
        assert!(filter(None, None, None).matches(&m, now));
        assert!(filter(None, None, None).is_empty());
        assert!(filter(Some("conflict"), Some("payments-worker"), Some(3600)).matches(&m, now));
        assert!(!filter(Some("invalid-json"), None, None).matches(&m, now));
        assert!(!filter(None, Some("books-worker"), None).matches(&m, now));
        // What an earlier deployment wrote on AWS.
        let old = message(Some("conflict"), "queue-fleet-prod-payments-worker", now);
        assert!(filter(None, Some("payments-worker"), None).matches(&old, now));
        assert!(!filter(None, Some("ments-worker"), None).matches(&m, now));
        assert!(!filter(None, None, Some(3601)).matches(&m, now));
        assert!(!filter(Some("none"), None, None).matches(&m, now));
        let policy = message(None, "payments-worker", now);
        assert!(filter(Some("none"), None, None).matches(&policy, now));
    }
}
