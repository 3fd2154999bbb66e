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
//!
//! The [`Notifier`] keeps this logic over two narrow traits, [`NotificationRecords`] (DynamoDB:
//! [`DynamoNotifications`]) and [`Publisher`] (SNS: [`SnsPublisher`]); the handlers see it as
//! [`Notify`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_sns::types::MessageAttributeValue;
use fleet::util::now_ms;
use fleet::{classify, AwsError, Metrics, Outcome};
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

/// What claiming a notification's dedupe record gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotificationClaim {
    /// The delivery holds the claim: it may publish.
    Taken,
    /// The notification was sent already.
    Sent,
    /// Another live delivery holds the claim (who, and for how long, for messages).
    Held(String),
}

/// The dedupe records of notifications: what a [`Notifier`] needs of its table.
/// [`DynamoNotifications`] keeps them in DynamoDB.
pub trait NotificationRecords: Send + Sync + 'static {
    /// Claims notification `id` for `owner` until `until` (ms since the epoch; `now` is when
    /// the claim is made): unless it was sent, or another delivery holds an unexpired claim.
    fn claim(
        &self,
        id: &str,
        owner: &str,
        now: u64,
        until: u64,
    ) -> impl Future<Output = Result<NotificationClaim, AwsError>> + Send;

    /// Marks notification `id` `SENT` if `owner` still holds its claim: `false` when the
    /// claim passed to another delivery before.
    fn mark_sent(
        &self,
        id: &str,
        owner: &str,
    ) -> impl Future<Output = Result<bool, AwsError>> + Send;

    /// Gives `owner`'s claim up (nothing was published). Best effort.
    fn release(&self, id: &str, owner: &str) -> impl Future<Output = ()> + Send;
}

/// Publishes one notification: the SNS topic ([`SnsPublisher`]).
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `n`.
    fn publish(&self, n: &Notification<'_>) -> impl Future<Output = Result<(), AwsError>> + Send;
}

/// Sends notifications once each: what the handlers need ([`Notifier`]).
pub trait Notify: Send + Sync + 'static {
    /// Publishes `n` unless a notification with its id was already sent: `Done` when it
    /// published, `Duplicate` when it had been sent, a retry (`claimed-elsewhere`) while
    /// another delivery is publishing it, a retry on an AWS error.
    fn notify_once(&self, n: &Notification<'_>) -> impl Future<Output = Outcome> + Send;
}

/// The Outcome kind of a delivery whose claim took so long that too little of its lease is
/// left to publish.
pub const CLAIM_TOO_SLOW: &str = "claim-too-slow";

/// Publishes notifications once each, over its dedupe records and its publisher.
#[derive(Debug, Clone)]
pub struct Notifier<R, P> {
    records: R,
    publisher: P,
    lease: Duration,
    unmarked: Arc<Unmarked>,
    sent: Arc<AtomicU64>,
}

/// The notifier of the workers: records in DynamoDB, published on SNS.
pub type AwsNotifier = Notifier<DynamoNotifications, SnsPublisher>;

impl<R: NotificationRecords, P: Publisher> Notifier<R, P> {
    /// A notifier over `records` and `publisher`, whose claims last `lease`, counting
    /// `notifications_sent`. The publisher should give up on a call after
    /// [`publish_limit`]`(lease)`.
    pub fn new(records: R, publisher: P, lease: Duration, metrics: &Metrics) -> Self {
        Self {
            records,
            publisher,
            lease,
            unmarked: Arc::default(),
            sent: metrics.counter("notifications_sent"),
        }
    }

    /// Takes the claim for `owner`: when its lease ends (ms since the epoch), or what to do
    /// instead of publishing.
    async fn claim(&self, id: &str, owner: &str) -> Result<u64, Outcome> {
        let now = now_ms();
        let until = lease::until(now, self.lease);
        match self.records.claim(id, owner, now, until).await {
            Ok(NotificationClaim::Taken) => Ok(until),
            Ok(NotificationClaim::Sent) => Err(Outcome::Duplicate),
            Ok(NotificationClaim::Held(holder)) => Err(Outcome::retry(
                CLAIMED_ELSEWHERE,
                format!("notification {id} is being published by another delivery ({holder})"),
            )),
            Err(err) => Err(err.into_outcome()),
        }
    }

    /// Marks the notification `SENT` if `owner` still holds its claim.
    async fn mark_sent(&self, id: &str, owner: &str) -> Outcome {
        match self.records.mark_sent(id, owner).await {
            Ok(true) => {
                self.unmarked.forget(id);
                Outcome::Done
            }
            Ok(false) => {
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
                warn!(notification = id, error = %err, "published, but cannot mark it SENT; the retry only marks it");
                err.into_outcome()
            }
        }
    }
}

impl<R: NotificationRecords, P: Publisher> Notify for Notifier<R, P> {
    async fn notify_once(&self, n: &Notification<'_>) -> Outcome {
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
                self.records.release(&n.id, &owner).await;
                return Outcome::retry(
                    CLAIM_TOO_SLOW,
                    format!(
                        "the claim of notification {} took so long that less than {} ms of its lease is left to publish",
                        n.id,
                        limit.as_millis()
                    ),
                );
            }
            if let Err(err) = self.publisher.publish(n).await {
                self.records.release(&n.id, &owner).await;
                return err.into_outcome();
            }
            Metrics::incr(&self.sent);
        }
        self.mark_sent(&n.id, &owner).await
    }
}

/// The dedupe records in DynamoDB (`notifications` table, partition key `notification_id`).
#[derive(Debug, Clone)]
pub struct DynamoNotifications {
    dynamodb: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoNotifications {
    /// The records in `table`.
    pub fn new(dynamodb: aws_sdk_dynamodb::Client, table: String) -> Self {
        Self { dynamodb, table }
    }

    fn key(id: &str) -> (&'static str, AttributeValue) {
        ("notification_id", AttributeValue::S(id.to_owned()))
    }

    async fn get(&self, id: &str) -> Result<Item, AwsError> {
        let (name, key) = Self::key(id);
        let out = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .key(name, key)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify(&e))?;
        Ok(out.item.unwrap_or_default())
    }
}

impl NotificationRecords for DynamoNotifications {
    async fn claim(
        &self,
        id: &str,
        owner: &str,
        now: u64,
        until: u64,
    ) -> Result<NotificationClaim, AwsError> {
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
            Ok(_) => Ok(NotificationClaim::Taken),
            Err(err) if lease::failed_condition(&err) => {
                let record = match lease::refused_item(&err) {
                    Some(record) => record,
                    None => self.get(id).await?,
                };
                Ok(refused(&record))
            }
            Err(err) => Err(classify(&err)),
        }
    }

    async fn mark_sent(&self, id: &str, owner: &str) -> Result<bool, AwsError> {
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
            Ok(_) => Ok(true),
            Err(err) if lease::failed_condition(&err) => Ok(false),
            Err(err) => Err(classify(&err)),
        }
    }

    async fn release(&self, id: &str, owner: &str) {
        lease::release(&self.dynamodb, &self.table, Self::key(id), owner).await;
    }
}

/// The SNS topic notifications are published on.
#[derive(Debug, Clone)]
pub struct SnsPublisher {
    sns: aws_sdk_sns::Client,
    topic_arn: String,
}

impl SnsPublisher {
    /// Publishes on `topic_arn` (the client should give up after [`publish_limit`]).
    pub fn new(sns: aws_sdk_sns::Client, topic_arn: String) -> Self {
        Self { sns, topic_arn }
    }
}

impl Publisher for SnsPublisher {
    async fn publish(&self, n: &Notification<'_>) -> Result<(), AwsError> {
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
        publish.send().await.map(drop).map_err(|e| classify(&e))
    }
}

/// What a refused claim means, given the record as it was: the notification was sent, or
/// another delivery holds the claim.
fn refused(record: &Item) -> NotificationClaim {
    if lease::string(record, "status") == Some(SENT) {
        NotificationClaim::Sent
    } else {
        NotificationClaim::Held(lease::holder(record))
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
    fn a_refused_claim_is_sent_or_held_by_another() {
        assert_eq!(
            refused(&record(&[("status", SENT)])),
            NotificationClaim::Sent
        );
        match refused(&record(&[("status", CLAIMED), ("lease_owner", "7-ab")])) {
            NotificationClaim::Held(holder) => {
                assert!(holder.contains("held by 7-ab"), "{holder}");
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
