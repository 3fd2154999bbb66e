//! Notifications on the SNS topic, each sent once.
//!
//! A record in DynamoDB (`notifications` table, partition key `notification_id`) is claimed
//! before publishing and marked `SENT` after, under a lease ([`crate::lease`]):
//! - the claim is a conditional update: a delivery takes it only if the record is not `SENT`
//!   and nobody holds an unexpired lease on it. One that finds it `SENT` publishes nothing
//!   (`Duplicate`); one that finds it held by another live delivery publishes nothing either and
//!   comes back later (a retry of kind `claimed-elsewhere`): by then it is `SENT`, or its holder
//!   died and the lease has expired, and this delivery takes over;
//! - the publish starts only with half the lease left, and the SNS client gives up on it after
//!   half the lease ([`publish_limit`]): a publish ends while its delivery holds the lease;
//! - the `SENT` mark is conditional on still holding the lease;
//! - a publish that fails gives the lease up (nothing was sent: the retry may go at once); a
//!   `SENT` mark that fails after the publish keeps it, and the process remembers the publish:
//!   its retry, if it lands in the same process, takes its own lease again and only marks.
//!
//! So two deliveries never publish one notification at the same time. A second notification is
//! still possible when a delivery published but could not mark `SENT` before its lease ended
//! (it crashed, or DynamoDB failed for the rest of the lease) and a delivery in another process
//! took the expired lease; and when SNS took a publish whose answer never reached the worker
//! (a timeout): the retry publishes again.
//!
//! Every write of a record (the claim, the `SENT` mark) sets `expires_at` (s since the epoch,
//! the table's TTL attribute in topology.json) [`NOTIFICATION_TTL`] ahead: DynamoDB deletes a
//! record that long after its last write, when no redelivery can still need it.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_sns::types::MessageAttributeValue;
use fleet::util::now_ms;
use fleet::{classify, Metrics, Outcome};
use serde_json::Value;
use tracing::warn;

use crate::lease::{self, Item, CLAIMED_ELSEWHERE, FREE_OR_MINE};

/// Record status once the notification was published.
const SENT: &str = "SENT";
/// Record status while a delivery holds the claim (or died holding it).
const CLAIMED: &str = "CLAIMED";

/// How long a notification's dedupe record is kept after its last write (`expires_at`, the
/// table's TTL attribute): 35 days.
///
/// The record must outlive every delivery of a message that could publish the notification
/// again. A notification comes from an order-results message (a rejected order) or an
/// auction-cycles message (a cycle past its deadline), and the record is written after that
/// message was first sent. Such a message lives at most
/// [`fleet::topology::QueueSpec::longest_message_life_secs`]: twice its queue's retention and a
/// day of outage (a fresh copy at its last receive during an outage), 14 days in the DLQ, and
/// the queue's time again after a redrive: 2 × 9 + 14 = 32 days for order-results (20 for a
/// cycle). 35 days covers that with days to spare (a late redrive, clocks). Only a message redriven
/// again after that could notify a second time: an expiry may repeat a notification, never
/// lose one. (A unit test checks it against the queues' retention in topology.json.)
pub const NOTIFICATION_TTL: Duration = Duration::from_secs(35 * 24 * 3600);

/// `expires_at` of a record written at `now_ms` (ms since the epoch): s since the epoch.
fn expires_at(now_ms: u64) -> AttributeValue {
    AttributeValue::N((now_ms / 1000 + NOTIFICATION_TTL.as_secs()).to_string())
}

/// How long a publish may take under a lease of `lease`: half of it. The SNS client's
/// operation timeout, and the least of the lease a publish must start with.
pub fn publish_limit(lease: Duration) -> Duration {
    lease / 2
}

/// One notification.
#[derive(Debug, Clone)]
pub struct Notification<'a> {
    /// Its dedupe id: the same id is published once.
    pub id: String,
    /// The subject (e-mail subscribers see it).
    pub subject: &'a str,
    /// The chat-ready JSON body (`text` plus fields).
    pub body: Value,
    /// String message attributes, for subscription filter policies.
    pub attributes: Vec<(&'a str, String)>,
}

/// Publishes notifications once each.
#[derive(Debug, Clone)]
pub struct Notifier {
    sns: aws_sdk_sns::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    topic_arn: String,
    table: String,
    lease: Duration,
    unmarked: Arc<Unmarked>,
    sent: Arc<AtomicU64>,
}

impl Notifier {
    /// A notifier on `topic_arn` with its dedupe `table`, whose claims last `lease`, counting
    /// `notifications_sent`. The SNS client should give up on a call after
    /// [`publish_limit`]`(lease)`.
    pub fn new(
        sns: aws_sdk_sns::Client,
        dynamodb: aws_sdk_dynamodb::Client,
        topic_arn: String,
        table: String,
        lease: Duration,
        metrics: &Metrics,
    ) -> Self {
        Self {
            sns,
            dynamodb,
            topic_arn,
            table,
            lease,
            unmarked: Arc::default(),
            sent: metrics.counter("notifications_sent"),
        }
    }

    fn key(id: &str) -> (&'static str, AttributeValue) {
        ("notification_id", AttributeValue::S(id.to_owned()))
    }

    /// Publishes `n` unless a notification with its id was already sent: `Done` when it
    /// published, `Duplicate` when it had been sent, a retry (`claimed-elsewhere`) while
    /// another delivery is publishing it, a retry on an AWS error.
    pub async fn notify_once(&self, n: &Notification<'_>) -> Outcome {
        // A retry of a delivery of this process that published but could not mark `SENT`
        // takes that delivery's lease again, and only marks.
        let published_by = self.unmarked.owner(&n.id);
        let owner = published_by.clone().unwrap_or_else(lease::new_owner);
        let until = match self.claim(&n.id, &owner).await {
            Ok(until) => until,
            Err(outcome) => {
                if outcome == Outcome::Duplicate {
                    self.unmarked.forget(&n.id);
                }
                return outcome;
            }
        };
        if published_by.is_none() {
            let limit = publish_limit(self.lease);
            if !lease::leaves(until, now_ms(), limit) {
                self.release(&n.id, &owner).await;
                return Outcome::retry(
                    "claim-too-slow",
                    format!(
                        "the claim of notification {} took so long that less than {} ms of its lease is left to publish",
                        n.id,
                        limit.as_millis()
                    ),
                );
            }
            if let Err(err) = self.publish(n).await {
                self.release(&n.id, &owner).await;
                return classify(&err).into_outcome();
            }
            Metrics::incr(&self.sent);
        }
        self.mark_sent(&n.id, &owner).await
    }

    /// Takes the claim for `owner`: when its lease ends (ms since the epoch), or what to do
    /// instead of publishing.
    async fn claim(&self, id: &str, owner: &str) -> Result<u64, Outcome> {
        let now = now_ms();
        let until = lease::until(now, self.lease);
        let n = |v: u64| AttributeValue::N(v.to_string());
        let (name, key) = Self::key(id);
        let claimed = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key(name, key)
            .update_expression(
                "SET #status = :claimed, lease_owner = :me, lease_until = :until, \
                 claimed_at = if_not_exists(claimed_at, :now), \
                 claims = if_not_exists(claims, :zero) + :one, expires_at = :expires",
            )
            .condition_expression(format!(
                "attribute_not_exists(#status) OR (#status <> :sent AND {FREE_OR_MINE})"
            ))
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":claimed", AttributeValue::S(CLAIMED.into()))
            .expression_attribute_values(":sent", AttributeValue::S(SENT.into()))
            .expression_attribute_values(":me", AttributeValue::S(owner.to_owned()))
            .expression_attribute_values(":until", n(until))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":expires", expires_at(now))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match claimed {
            Ok(_) => Ok(until),
            Err(err) if lease::failed_condition(&err) => {
                let record = match lease::refused_item(&err) {
                    Some(record) => record,
                    None => self.get(id).await?,
                };
                Err(refusal(id, &record))
            }
            Err(err) => Err(classify(&err).into_outcome()),
        }
    }

    async fn get(&self, id: &str) -> Result<Item, Outcome> {
        let (name, key) = Self::key(id);
        let out = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .key(name, key)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify(&e).into_outcome())?;
        Ok(out.item.unwrap_or_default())
    }

    async fn release(&self, id: &str, owner: &str) {
        lease::release(&self.dynamodb, &self.table, Self::key(id), owner).await;
    }

    async fn publish(
        &self,
        n: &Notification<'_>,
    ) -> Result<(), aws_sdk_sns::error::SdkError<aws_sdk_sns::operation::publish::PublishError>>
    {
        let mut publish = self
            .sns
            .publish()
            .topic_arn(&self.topic_arn)
            .subject(n.subject)
            .message(n.body.to_string());
        for (name, value) in &n.attributes {
            let value = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .expect("data type is set");
            publish = publish.message_attributes(*name, value);
        }
        publish.send().await.map(|_| ())
    }

    /// Marks the notification `SENT` if `owner` still holds its claim.
    async fn mark_sent(&self, id: &str, owner: &str) -> Outcome {
        let (name, key) = Self::key(id);
        let now = now_ms();
        let marked = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key(name, key)
            .update_expression(
                "SET #status = :sent, sent_at = :now, expires_at = :expires \
                 REMOVE lease_owner, lease_until",
            )
            .condition_expression("lease_owner = :me")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":sent", AttributeValue::S(SENT.into()))
            .expression_attribute_values(":me", AttributeValue::S(owner.to_owned()))
            .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
            .expression_attribute_values(":expires", expires_at(now))
            .send()
            .await;
        match marked {
            Ok(_) => {
                self.unmarked.forget(id);
                Outcome::Done
            }
            Err(err) if lease::failed_condition(&err) => {
                // The lease ended before the mark, and another delivery took it over.
                self.unmarked.forget(id);
                warn!(
                    notification = id,
                    "published after the claim passed to another delivery: it may publish again"
                );
                Outcome::Done
            }
            Err(err) => {
                self.unmarked.remember(id, owner);
                let err = classify(&err);
                warn!(notification = id, error = %err, "published, but cannot mark it SENT; the retry only marks it");
                err.into_outcome()
            }
        }
    }
}

/// What a delivery whose claim was refused does, given the record as it was: nothing when the
/// notification was sent, later when another delivery holds the claim.
fn refusal(id: &str, record: &Item) -> Outcome {
    if lease::string(record, "status") == Some(SENT) {
        Outcome::Duplicate
    } else {
        Outcome::retry(
            CLAIMED_ELSEWHERE,
            format!(
                "notification {id} is being published by another delivery ({})",
                lease::holder(record)
            ),
        )
    }
}

/// The notifications this process published but could not mark `SENT`, with the owner token of
/// the delivery that published each (at most [`Unmarked::MAX`]: past that, a retry publishes
/// again once the lease has expired).
#[derive(Debug, Default)]
struct Unmarked(Mutex<HashMap<String, String>>);

impl Unmarked {
    const MAX: usize = 10_000;

    fn owner(&self, id: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    fn remember(&self, id: &str, owner: &str) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() < Self::MAX || map.contains_key(id) {
            map.insert(id.to_owned(), owner.to_owned());
        }
    }

    fn forget(&self, id: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

/// The characters allowed in a cycle or record id (they become S3 key parts and dedupe ids):
/// 1-128 of `A-Z a-z 0-9 - _ . :`.
pub fn safe_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::lease::test_item as record;

    #[test]
    fn a_refused_claim_is_a_duplicate_once_sent_else_a_retry() {
        assert_eq!(
            refusal("c/r", &record(&[("status", SENT)])),
            Outcome::Duplicate
        );
        let busy = refusal(
            "c/r",
            &record(&[("status", CLAIMED), ("lease_owner", "7-ab")]),
        );
        match busy {
            Outcome::Retry(reason) => {
                assert_eq!(reason.kind, CLAIMED_ELSEWHERE);
                assert!(
                    reason.message.contains("held by 7-ab"),
                    "{}",
                    reason.message
                );
            }
            other => panic!("{other:?}"),
        }
    }

    /// The longest a message of `queue` can live (topology.json).
    fn longest_life(queue: &str) -> u64 {
        fleet::topology::Topology::builtin().queues[queue].longest_message_life_secs()
    }

    #[test]
    fn a_record_outlives_every_message_that_may_notify() {
        for queue in ["order-results", "auction-cycles"] {
            assert!(
                NOTIFICATION_TTL.as_secs() >= longest_life(queue),
                "{queue}: {} s",
                longest_life(queue)
            );
        }
        assert_eq!(longest_life("order-results"), 32 * 24 * 3600);
    }

    #[test]
    fn a_record_expires_35_days_after_its_write_in_seconds() {
        assert_eq!(
            expires_at(1_000_999),
            AttributeValue::N((1_000 + 35 * 24 * 3600).to_string())
        );
    }

    #[test]
    fn publishes_end_within_half_the_lease() {
        assert_eq!(
            publish_limit(Duration::from_secs(10)),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn unmarked_publishes_are_remembered_until_marked() {
        let unmarked = Unmarked::default();
        assert_eq!(unmarked.owner("c/r"), None);
        unmarked.remember("c/r", "1-aa");
        assert_eq!(unmarked.owner("c/r").as_deref(), Some("1-aa"));
        unmarked.forget("c/r");
        assert_eq!(unmarked.owner("c/r"), None);
        for i in 0..Unmarked::MAX + 5 {
            unmarked.remember(&format!("id-{i}"), "o");
        }
        assert_eq!(unmarked.0.lock().unwrap().len(), Unmarked::MAX, "bounded");
    }
}
