//! The fleet's topology (`topology.json`): queues, tables, workers, written once and read by
//! the local provisioner, Terraform and the ops CLI alike.
//!
//! Resource names in the file are suffixes; a deployment prefixes them (`fleet-` locally,
//! `<project>-<env>-` in Terraform). A queue `payments` is `<prefix>payments` with its
//! dead-letter queue `<prefix>payments-dlq`; a FIFO queue `books-commands` is
//! `<prefix>books-commands.fifo` with `<prefix>books-commands-dlq.fifo` (SQS requires the
//! `.fifo` ending, and a FIFO queue's DLQ to be FIFO).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// The topology as shipped with this build.
pub const BUILTIN: &str = include_str!("../../topology.json");

/// Suffix of every dead-letter queue's name (before `.fifo`).
pub const DLQ_SUFFIX: &str = "-dlq";
/// Ending SQS requires of a FIFO queue's name.
pub const FIFO_SUFFIX: &str = ".fifo";

/// Whether a queue name or URL names a FIFO queue (SQS: its name ends in `.fifo`).
pub fn is_fifo(name_or_url: &str) -> bool {
    name_or_url.ends_with(FIFO_SUFFIX)
}

/// The parts of `topology.json` the Rust side reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Topology {
    /// Queues by name (without prefix).
    pub queues: BTreeMap<String, QueueSpec>,
    /// Workers by name: the name of the binary that runs it.
    #[serde(default)]
    pub workers: BTreeMap<String, WorkerSpec>,
    /// Messages sent on a timer (EventBridge Scheduler in AWS, `fleetctl schedule` locally).
    #[serde(default)]
    pub schedules: BTreeMap<String, ScheduleSpec>,
}

/// A message sent to a queue at a fixed rate.
#[derive(Debug, Clone, Deserialize)]
pub struct ScheduleSpec {
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// The period, seconds (a whole number of minutes: EventBridge's `rate()` counts minutes).
    pub every_secs: u64,
    /// The queue (topology name) it sends to.
    pub queue: String,
    /// The message body, with EventBridge Scheduler's context placeholders.
    pub body: serde_json::Value,
}

/// EventBridge Scheduler's placeholder for the time a run was scheduled for.
pub const SCHEDULED_TIME: &str = "<aws.scheduler.scheduled-time>";

impl ScheduleSpec {
    /// The body EventBridge Scheduler sends for a run scheduled at `scheduled_time` (RFC 3339,
    /// UTC, whole seconds): every [`SCHEDULED_TIME`] replaced by it, and
    /// `<aws.scheduler.attempt-number>` by 1.
    pub fn body_at(&self, scheduled_time: &str) -> String {
        self.body
            .to_string()
            .replace(SCHEDULED_TIME, scheduled_time)
            .replace("<aws.scheduler.attempt-number>", "1")
    }
}

/// One worker: the binary of that name, consuming one queue.
#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSpec {
    /// The queue (topology name) it consumes.
    pub queue: String,
}

/// One queue and its dead-letter queue.
#[derive(Debug, Clone, Deserialize)]
pub struct QueueSpec {
    /// What feeds it and what consumes it.
    #[serde(default)]
    pub description: String,
    /// Visibility timeout, seconds.
    pub visibility_timeout_secs: u32,
    /// Receives before SQS moves a message to the DLQ.
    pub max_receive_count: u32,
    /// A FIFO queue (ordered per message group, deduplicated).
    #[serde(default)]
    pub fifo: bool,
    /// How long SQS keeps a message, seconds.
    pub message_retention_secs: u64,
    /// How long its DLQ keeps a message, seconds.
    pub dlq_retention_secs: u64,
}

impl QueueSpec {
    /// The longest a message of this queue can live, seconds, with the engine's default
    /// settings: in the queue, its retention, then, when its last receive fell in a dependency
    /// outage, a fresh copy (sent anew: its retention again, the outage lasting up to
    /// `FLEET_OUTAGE_MAX_SECS`); then the DLQ's retention (the engine dead-letters a copy,
    /// sent anew); then all of the queue's time again after a redrive (sent anew). A record
    /// that dedupes its messages must be kept at least this long.
    pub fn longest_message_life_secs(&self) -> u64 {
        let one_pass = 2 * self.message_retention_secs + crate::config::DEFAULT_OUTAGE_MAX_SECS;
        2 * one_pass + self.dlq_retention_secs
    }

    /// The deployed name of queue `key` under `prefix` (`dlq` for its dead-letter queue).
    pub fn name(&self, prefix: &str, key: &str, dlq: bool) -> String {
        format!(
            "{prefix}{key}{}{}",
            if dlq { DLQ_SUFFIX } else { "" },
            if self.fifo { FIFO_SUFFIX } else { "" }
        )
    }
}

/// Errors reading a topology.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid topology.
    #[error("invalid topology: {0}")]
    Parse(#[from] serde_json::Error),
}

impl Topology {
    /// The topology built into this binary.
    pub fn builtin() -> Self {
        Self::parse(BUILTIN).expect("the built-in topology.json is valid")
    }

    /// Parses a topology document.
    ///
    /// # Errors
    /// When it is not valid JSON of the topology's shape.
    pub fn parse(text: &str) -> Result<Self, TopologyError> {
        Ok(serde_json::from_str(text)?)
    }

    /// The worker consuming queue `key` (the topology names one consumer per queue; see
    /// [`Topology::check`]).
    pub fn consumer(&self, key: &str) -> Option<&str> {
        self.workers
            .iter()
            .find(|(_, w)| w.queue == key)
            .map(|(name, _)| name.as_str())
    }

    /// What makes a topology inconsistent: a worker on a queue that is not there, a queue no
    /// worker or two workers consume, a schedule to a queue that is not there.
    pub fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, w) in &self.workers {
            if !self.queues.contains_key(&w.queue) {
                problems.push(format!(
                    "worker {name} consumes {}, which is no queue",
                    w.queue
                ));
            }
        }
        for key in self.queues.keys() {
            let consumers: Vec<&str> = self
                .workers
                .iter()
                .filter(|(_, w)| &w.queue == key)
                .map(|(name, _)| name.as_str())
                .collect();
            if consumers.len() != 1 {
                problems.push(format!(
                    "queue {key} has {} consumers: {consumers:?}",
                    consumers.len()
                ));
            }
        }
        for (name, s) in &self.schedules {
            if !self.queues.contains_key(&s.queue) {
                problems.push(format!(
                    "schedule {name} sends to {}, which is no queue",
                    s.queue
                ));
            }
        }
        problems
    }

    /// Reads a topology file.
    ///
    /// # Errors
    /// When the file cannot be read or parsed.
    pub fn load(path: &Path) -> Result<Self, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_topology_parses_and_names_the_payments_queue() {
        let t = Topology::builtin();
        let payments = &t.queues["payments"];
        assert_eq!(payments.max_receive_count, 3);
        assert_eq!(t.consumer("payments"), Some("payments-worker"));
        assert_eq!(
            payments.name("fleet-", "payments", true),
            "fleet-payments-dlq"
        );
        let books = &t.queues["books-commands"];
        assert!(books.fifo);
        assert_eq!(
            books.name("fleet-", "books-commands", true),
            "fleet-books-commands-dlq.fifo"
        );
    }

    #[test]
    fn every_queue_has_one_consumer_and_every_worker_a_queue() {
        assert_eq!(Topology::builtin().check(), Vec::<String>::new());
        let mut broken = Topology::builtin();
        broken.workers.remove("payments-worker");
        broken.workers.insert(
            "stray".into(),
            WorkerSpec {
                queue: "nowhere".into(),
            },
        );
        let problems = broken.check();
        assert!(problems.iter().any(|p| p.contains("stray")), "{problems:?}");
        assert!(
            problems.iter().any(|p| p.contains("queue payments has 0")),
            "{problems:?}"
        );
    }

    #[test]
    fn schedules_name_known_queues_and_fill_in_the_scheduled_time() {
        let t = Topology::builtin();
        for (name, s) in &t.schedules {
            assert!(t.queues.contains_key(&s.queue), "schedule {name}");
            assert!(
                s.every_secs >= 60 && s.every_secs % 60 == 0,
                "schedule {name}: whole minutes"
            );
        }
        let cycles = &t.schedules["auction-cycles"];
        assert_eq!(
            cycles.body_at("2026-11-23T00:40:00Z"),
            r#"{"cycle":"2026-11-23T00:40:00Z"}"#
        );
    }
}
