//! The request records in DynamoDB (`vpc-requests`, partition key `request_id`): status,
//! checkpoints and the lease that lets one delivery at a time work on a request. The handler
//! sees them through the narrow [`RequestStore`] trait; [`Store`] is its DynamoDB
//! implementation.
//!
//! A record: `request_id`, `client` (the caller's owner id: the JWT's `sub` with Cognito, else
//! the API key id; what `GET /vpcs/{request_id}` compares with the caller's), `owner` (= client;
//! the `by-owner` index that lists a caller's requests newest first), `created_at`, `updated_at`, `status` (`QUEUED`,
//! `IN_PROGRESS`, `SUCCEEDED`, `FAILED`), `body_sha256`, `vpc_cidr`, `subnets` (a list of
//! `{cidr, az, name?, subnet_id?}`), `vpc_id`, `reason`, `expires_at`, `incarnation`, and while
//! a delivery works on it `lease_owner` / `lease_until`. Every checkpoint is conditional on
//! still holding the lease.
//!
//! A request id (`<owner>-<Idempotency-Key>`) names its request for [`REQUEST_TTL`] from the
//! gateway's receipt: `expires_at` (s since the epoch, the table's TTL attribute). From then
//! on the request is gone for the API (`GET` answers 404, the list omits it) and a message
//! received from then on is a new request under the same id: [`RequestStore::insert`] replaces the
//! expired record, whether or not DynamoDB's TTL has deleted it yet (within about 48 h on AWS,
//! never on LocalStack). It waits while a delivery still holds the expired record's lease. A
//! message received before `expires_at` (a redelivery, a client's retry) still belongs to the
//! old request. Each record carries an `incarnation` (the SQS message id that created it),
//! tagged on what its deliveries create, so that a request made anew under an id never takes
//! the resources of the one before for its own.
//!
//! The lease lasts `lease` past its last renewal. A delivery renews it every third of the lease
//! for as long as it works on the request ([`hold`], beside the EC2 calls), not only at
//! checkpoints: one slow EC2 call does not let a duplicate delivery take the request over. Only
//! a delivery that stopped (crashed, or hung without renewing) loses it, after `lease`.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use fleet::util::now_ms;
use fleet::{classify, AwsError};

use crate::request::VpcRequest;

type Item = HashMap<String, AttributeValue>;

/// How long a request (its Idempotency-Key) lasts from the gateway's receipt: 30 days, a
/// month for a client to retry with the same key. From `expires_at` on, a message received
/// makes a new request under the id.
pub const REQUEST_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// How long the row is kept after `expires_at` before DynamoDB's TTL may delete it
/// (`purge_at`, the table's TTL attribute): 35 days, more than the longest a message received
/// before the expiry can still take to be delivered
/// ([`fleet::topology::QueueSpec::longest_message_life_secs`]: 32 days). A delivery that found
/// no row would make a new request, and a second VPC; a late one finds the row and is a
/// duplicate, or superseded when the key has been used anew. (A unit test checks it against
/// the queue's retention in topology.json.)
pub const PURGE_AFTER_EXPIRY: Duration = Duration::from_secs(35 * 24 * 3600);

/// `purge_at` of a request received at `received_at_ms`: s since the epoch.
pub fn purge_at(received_at_ms: u64) -> u64 {
    expires_at(received_at_ms) + PURGE_AFTER_EXPIRY.as_secs()
}

/// `expires_at` of a request received at `received_at_ms` (ms since the epoch): s since the
/// epoch.
pub fn expires_at(received_at_ms: u64) -> u64 {
    received_at_ms / 1000 + REQUEST_TTL.as_secs()
}

/// Whether a record expiring at `expires_at` (s) is expired for a message received at
/// `received_at_ms` (from `expires_at` on, as for `GET`). A record without `expires_at` (written
/// before requests expired) never is.
pub fn expired(expires_at: Option<u64>, received_at_ms: u64) -> bool {
    expires_at.is_some_and(|e| e <= received_at_ms / 1000)
}

/// The statuses.
pub mod status {
    /// Accepted, not started.
    pub const QUEUED: &str = "QUEUED";
    /// A delivery is working on it (or crashed while doing so).
    pub const IN_PROGRESS: &str = "IN_PROGRESS";
    /// The VPC and every subnet exist.
    pub const SUCCEEDED: &str = "SUCCEEDED";
    /// Refused or failed for good; nothing left behind.
    pub const FAILED: &str = "FAILED";
}

/// What a record says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Status.
    pub status: String,
    /// Hash of the request body.
    pub body_sha256: String,
    /// The VPC, once created.
    pub vpc_id: Option<String>,
    /// Each subnet's id, once created (by position in the request).
    pub subnet_ids: Vec<Option<String>>,
    /// When the request expires, s since the epoch (none on records older than expiry).
    pub expires_at: Option<u64>,
    /// Which request made under this id (the SQS message id that created the record; none on
    /// records older than incarnations): tagged on its resources, looked up with them.
    pub incarnation: Option<String>,
}

impl Record {
    fn from_item(item: &Item) -> Self {
        let s = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
        let subnet_ids = item
            .get("subnets")
            .and_then(|v| v.as_l().ok())
            .map(|l| {
                l.iter()
                    .map(|s| {
                        s.as_m()
                            .ok()
                            .and_then(|m| m.get("subnet_id")?.as_s().ok().cloned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            status: s("status").unwrap_or_default(),
            body_sha256: s("body_sha256").unwrap_or_default(),
            vpc_id: s("vpc_id"),
            subnet_ids,
            expires_at: item
                .get("expires_at")
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse().ok()),
            incarnation: s("incarnation"),
        }
    }

    /// Whether the request is finished (SUCCEEDED or FAILED).
    pub fn finished(&self) -> bool {
        self.status == status::SUCCEEDED || self.status == status::FAILED
    }
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// DynamoDB failed.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// Another delivery took the request over (this one's lease expired).
    #[error("the lease on the request was lost to another delivery")]
    LeaseLost,
}

/// What recording a request gave.
#[derive(Debug)]
pub enum Inserted {
    /// The record of the request: new, or there already (compare its `body_sha256`).
    Record(Record),
    /// The record under this id is expired, so the message is a new request, but a delivery
    /// of the old one still holds its lease: the new one waits until it is given up or expires.
    ExpiredBusy,
}

/// What claiming a request gave.
#[derive(Debug)]
pub enum Claim {
    /// This delivery holds the lease; the record as it was before (a status of `IN_PROGRESS`
    /// means an earlier delivery may have created resources it did not checkpoint).
    Owned(Record),
    /// Another delivery holds an unexpired lease.
    Busy,
    /// The request is finished.
    Finished,
    /// The record under this id is another request's now (the one this delivery recorded
    /// expired meanwhile, and another message made a new request): come back to find out.
    Replaced,
}

/// Where a new request comes from.
#[derive(Debug, Clone)]
pub struct Origin<'a> {
    /// The caller's owner id (the gateway's `ownerId`; see docs/security.md).
    pub client: &'a str,
    /// When the gateway received it, ms.
    pub received_at_ms: u64,
    /// The SQS message.
    pub message_id: &'a str,
}

/// What the handler needs of the request records: the narrow store [`crate::VpcHandler`] is
/// generic over. [`Store`] keeps them in DynamoDB; every write after [`Self::claim`] is made
/// only while the delivery named `owner` holds the request's lease (which it extends).
pub trait RequestStore: Send + Sync + 'static {
    /// Records a new request as `QUEUED`, or returns the record already there. A record that
    /// expired before the message was received is no longer there: it is replaced (unless a
    /// delivery still holds its lease, [`Inserted::ExpiredBusy`]).
    fn insert(
        &self,
        request_id: &str,
        request: &VpcRequest,
        body_sha256: &str,
        origin: &Origin<'_>,
    ) -> impl Future<Output = Result<Inserted, AwsError>> + Send;

    /// Records a replay with another body under the same request id beside the request
    /// (`FAILED` with `reason`), leaving the request untouched: the id of that record.
    fn conflict(
        &self,
        request_id: &str,
        origin: &Origin<'_>,
        reason: &str,
    ) -> impl Future<Output = Result<String, AwsError>> + Send;

    /// Takes the lease for `owner` (a delivery) if nobody holds an unexpired one, and marks the
    /// request `IN_PROGRESS`; only on the request with the body hash `body_sha256`.
    fn claim(
        &self,
        request_id: &str,
        owner: &str,
        body_sha256: &str,
    ) -> impl Future<Output = Result<Claim, AwsError>> + Send;

    /// How long a lease lasts past its last renewal.
    fn lease(&self) -> Duration;

    /// Extends `owner`'s lease by [`Self::lease`] from now, while it holds it on a request in
    /// progress ([`StoreError::LeaseLost`] otherwise).
    fn renew(
        &self,
        request_id: &str,
        owner: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Checkpoints the VPC id.
    fn vpc_created(
        &self,
        request_id: &str,
        owner: &str,
        vpc_id: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Checkpoints subnet `index`'s id.
    fn subnet_created(
        &self,
        request_id: &str,
        owner: &str,
        index: usize,
        subnet_id: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Marks the request `SUCCEEDED` and ends the lease.
    fn succeeded(
        &self,
        request_id: &str,
        owner: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Marks the request `FAILED` with `reason`: while `owner` holds the lease, or, without an
    /// owner, while nobody has started it ([`StoreError::LeaseLost`] otherwise).
    fn failed(
        &self,
        request_id: &str,
        owner: Option<&str>,
        reason: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Gives the lease up (before a retry), so that the next delivery need not wait for it to
    /// expire. Best effort.
    fn release(&self, request_id: &str, owner: &str) -> impl Future<Output = ()> + Send;
}

/// The heartbeat of `owner`'s lease on `request_id`: renews it every third of the lease, for
/// as long as it is polled. Run it beside the work (`select!`): it stops with it, and it
/// completes only when the work must stop (with the reason): the lease was lost, or renewals
/// have failed for two thirds of the lease, so that this delivery stops before another may take
/// over. A failed renewal before that is tried again at the next beat.
pub async fn hold<S: RequestStore>(store: &S, request_id: &str, owner: &str) -> String {
    let lease = store.lease();
    let period = lease / 3;
    let mut beats = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renewed = tokio::time::Instant::now();
    loop {
        beats.tick().await;
        match store.renew(request_id, owner).await {
            Ok(()) => renewed = tokio::time::Instant::now(),
            Err(StoreError::LeaseLost) => {
                return "another delivery took the request over".to_owned();
            }
            Err(StoreError::Aws(error)) if renewed.elapsed() >= lease * 2 / 3 => {
                // Stop before the lease can expire under us: past it, another delivery may
                // take the request over while this one still creates things.
                return format!(
                    "cannot renew the lease ({error}) for {} s; stopping before it expires",
                    renewed.elapsed().as_secs()
                );
            }
            Err(StoreError::Aws(error)) => {
                tracing::warn!(request_id, %error, "cannot renew the lease; trying again");
            }
        }
    }
}

/// The request records in DynamoDB: the [`RequestStore`] of the worker.
#[derive(Debug, Clone)]
pub struct Store {
    client: aws_sdk_dynamodb::Client,
    table: String,
    lease: Duration,
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// Whether an update was refused by its condition (every update here is conditional).
fn failed_condition<R>(err: &aws_sdk_dynamodb::error::SdkError<UpdateItemError, R>) -> bool {
    err.as_service_error()
        .is_some_and(UpdateItemError::is_conditional_check_failed_exception)
}

impl Store {
    /// The records in `table`; a delivery's lease lasts `lease` past its last renewal.
    pub fn new(client: aws_sdk_dynamodb::Client, table: String, lease: Duration) -> Self {
        Self {
            client,
            table,
            lease,
        }
    }

    fn key(request_id: &str) -> AttributeValue {
        s(request_id)
    }

    fn update(
        &self,
        request_id: &str,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("request_id", Self::key(request_id))
    }

    async fn get(&self, request_id: &str) -> Result<Record, AwsError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("request_id", Self::key(request_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify(&e))?;
        Ok(out.item.as_ref().map(Record::from_item).unwrap_or_default())
    }

    /// An update made only while `owner` holds the lease, which it extends.
    async fn owned_update(
        &self,
        request_id: &str,
        owner: &str,
        set: &str,
        remove: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut update = self
            .update(request_id)
            .update_expression(format!(
                "SET {set}, updated_at = :now, lease_until = :until {remove}"
            ))
            .condition_expression("lease_owner = :me")
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":until", n(now + self.lease.as_millis() as u64));
        if set.contains("#status") {
            update = update.expression_attribute_names("#status", "status");
        }
        for (name, value) in values {
            update = update.expression_attribute_values(name, value);
        }
        match update.send().await {
            Ok(_) => Ok(()),
            Err(err) if failed_condition(&err) => Err(StoreError::LeaseLost),
            Err(err) => Err(StoreError::Aws(classify(&err))),
        }
    }
}

impl RequestStore for Store {
    /// Records a new request as `QUEUED`, or returns the record already there. A record that
    /// expired before the message was received is no longer there: it is replaced (unless a
    /// delivery still holds its lease), whether or not TTL has deleted it yet.
    ///
    /// # Errors
    /// The classified DynamoDB error.
    async fn insert(
        &self,
        request_id: &str,
        request: &VpcRequest,
        body_sha256: &str,
        origin: &Origin<'_>,
    ) -> Result<Inserted, AwsError> {
        let subnets = request
            .subnets
            .iter()
            .map(|sub| {
                let mut m = HashMap::from([
                    ("cidr".to_owned(), s(&sub.cidr)),
                    ("az".to_owned(), s(&sub.az)),
                ]);
                if let Some(name) = &sub.name {
                    m.insert("name".into(), s(name));
                }
                AttributeValue::M(m)
            })
            .collect();
        let now = now_ms();
        let expires = expires_at(origin.received_at_ms);
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("request_id", Self::key(request_id))
            .item("client", s(origin.client))
            .item("owner", s(origin.client))
            .item("created_at", n(origin.received_at_ms))
            .item("updated_at", n(now))
            .item("status", s(status::QUEUED))
            .item("body_sha256", s(body_sha256))
            .item("vpc_cidr", s(&request.vpc.cidr))
            .item("subnets", AttributeValue::L(subnets))
            .item("message_id", s(origin.message_id))
            .item("incarnation", s(origin.message_id))
            .item("expires_at", n(expires))
            .item("purge_at", n(purge_at(origin.received_at_ms)))
            // Absent, or expired when this message was received and held by no delivery (a
            // finished request has no lease_owner; a crashed delivery's lease_until passes).
            .condition_expression(
                "attribute_not_exists(request_id) OR (expires_at <= :received AND \
                 (attribute_not_exists(lease_owner) OR lease_until < :now))",
            )
            .expression_attribute_values(":received", n(origin.received_at_ms / 1000))
            .expression_attribute_values(":now", n(now))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match put {
            Ok(_) => Ok(Inserted::Record(Record {
                status: status::QUEUED.into(),
                body_sha256: body_sha256.into(),
                vpc_id: None,
                subnet_ids: vec![None; request.subnets.len()],
                expires_at: Some(expires),
                incarnation: Some(origin.message_id.to_owned()),
            })),
            Err(err) => match err.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(failed)) => {
                    let record = failed.item().map(Record::from_item).unwrap_or_default();
                    Ok(if expired(record.expires_at, origin.received_at_ms) {
                        Inserted::ExpiredBusy
                    } else {
                        Inserted::Record(record)
                    })
                }
                _ => Err(classify(&err)),
            },
        }
    }

    /// Records a replay with another body under the same request id, beside the request
    /// (`{request_id}.conflict.{message_id}`, `FAILED` with the reason, readable by the same
    /// client, not listed); the request itself is untouched.
    ///
    /// # Errors
    /// The classified DynamoDB error.
    async fn conflict(
        &self,
        request_id: &str,
        origin: &Origin<'_>,
        reason: &str,
    ) -> Result<String, AwsError> {
        let id = format!("{request_id}.conflict.{}", origin.message_id);
        let now = now_ms();
        self.client
            .put_item()
            .table_name(&self.table)
            .item("request_id", s(&id))
            .item("client", s(origin.client))
            .item("created_at", n(origin.received_at_ms))
            .item("updated_at", n(now))
            .item("status", s(status::FAILED))
            .item("reason", s(reason))
            .item("subnets", AttributeValue::L(Vec::new()))
            .item("expires_at", n(expires_at(origin.received_at_ms)))
            .item("purge_at", n(purge_at(origin.received_at_ms)))
            .send()
            .await
            .map_err(|e| classify(&e))?;
        Ok(id)
    }

    /// Takes the lease for `owner` (a delivery) if nobody holds an unexpired one, and marks the
    /// request `IN_PROGRESS`; only on the request with the body hash `body_sha256` (the one the
    /// delivery recorded, not one made anew under the id since).
    ///
    /// # Errors
    /// The classified DynamoDB error.
    async fn claim(
        &self,
        request_id: &str,
        owner: &str,
        body_sha256: &str,
    ) -> Result<Claim, AwsError> {
        let now = now_ms();
        let out = self
            .update(request_id)
            .update_expression(
                "SET #status = :progress, lease_owner = :me, lease_until = :until, \
                 started_at = if_not_exists(started_at, :now), updated_at = :now",
            )
            .condition_expression(
                "#status IN (:queued, :progress) AND body_sha256 = :hash AND \
                 (attribute_not_exists(lease_until) OR lease_until < :now OR lease_owner = :me)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":hash", s(body_sha256))
            .expression_attribute_values(":progress", s(status::IN_PROGRESS))
            .expression_attribute_values(":queued", s(status::QUEUED))
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":until", n(now + self.lease.as_millis() as u64))
            .expression_attribute_values(":now", n(now))
            .return_values(ReturnValue::AllOld)
            .send()
            .await;
        match out {
            Ok(out) => Ok(Claim::Owned(
                out.attributes
                    .as_ref()
                    .map(Record::from_item)
                    .unwrap_or_default(),
            )),
            Err(err) if failed_condition(&err) => {
                let record = self.get(request_id).await?;
                Ok(if record.body_sha256 != body_sha256 {
                    Claim::Replaced
                } else if record.finished() {
                    Claim::Finished
                } else {
                    Claim::Busy
                })
            }
            Err(err) => Err(classify(&err)),
        }
    }

    fn lease(&self) -> Duration {
        self.lease
    }

    /// Extends `owner`'s lease by `lease` from now, while it holds it on a request in progress.
    ///
    /// # Errors
    /// A lost lease (taken over, released, or the request finished), or the classified
    /// DynamoDB error.
    async fn renew(&self, request_id: &str, owner: &str) -> Result<(), StoreError> {
        let now = now_ms();
        let renewed = self
            .update(request_id)
            .update_expression("SET lease_until = :until")
            .condition_expression("lease_owner = :me AND #status = :progress")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":progress", s(status::IN_PROGRESS))
            .expression_attribute_values(":until", n(now + self.lease.as_millis() as u64))
            .send()
            .await;
        match renewed {
            Ok(_) => Ok(()),
            Err(err) if failed_condition(&err) => Err(StoreError::LeaseLost),
            Err(err) => Err(StoreError::Aws(classify(&err))),
        }
    }

    /// Checkpoints the VPC id.
    ///
    /// # Errors
    /// A lost lease, or the classified DynamoDB error.
    async fn vpc_created(
        &self,
        request_id: &str,
        owner: &str,
        vpc_id: &str,
    ) -> Result<(), StoreError> {
        self.owned_update(
            request_id,
            owner,
            "vpc_id = :vpc",
            "",
            vec![(":vpc", s(vpc_id))],
        )
        .await
    }

    /// Checkpoints subnet `index`'s id.
    ///
    /// # Errors
    /// A lost lease, or the classified DynamoDB error.
    async fn subnet_created(
        &self,
        request_id: &str,
        owner: &str,
        index: usize,
        subnet_id: &str,
    ) -> Result<(), StoreError> {
        self.owned_update(
            request_id,
            owner,
            &format!("subnets[{index}].subnet_id = :subnet"),
            "",
            vec![(":subnet", s(subnet_id))],
        )
        .await
    }

    /// Marks the request `SUCCEEDED` and ends the lease.
    ///
    /// # Errors
    /// A lost lease, or the classified DynamoDB error.
    async fn succeeded(&self, request_id: &str, owner: &str) -> Result<(), StoreError> {
        self.owned_update(
            request_id,
            owner,
            "#status = :done, finished_at = :now",
            "REMOVE lease_owner",
            vec![(":done", s(status::SUCCEEDED))],
        )
        .await
    }

    /// Marks the request `FAILED` with `reason`: while `owner` holds the lease, or, without
    /// an owner, while nobody has started it.
    ///
    /// # Errors
    /// A lost lease (or a request started meanwhile), or the classified DynamoDB error.
    async fn failed(
        &self,
        request_id: &str,
        owner: Option<&str>,
        reason: &str,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut update = self
            .update(request_id)
            .update_expression(
                "SET #status = :failed, reason = :reason, updated_at = :now, finished_at = :now \
                 REMOVE lease_owner, lease_until",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":failed", s(status::FAILED))
            .expression_attribute_values(":reason", s(reason))
            .expression_attribute_values(":now", n(now));
        update = match owner {
            Some(me) => update
                .condition_expression("lease_owner = :me")
                .expression_attribute_values(":me", s(me)),
            None => update
                .condition_expression("#status = :queued")
                .expression_attribute_values(":queued", s(status::QUEUED)),
        };
        match update.send().await {
            Ok(_) => Ok(()),
            Err(err) if failed_condition(&err) => Err(StoreError::LeaseLost),
            Err(err) => Err(StoreError::Aws(classify(&err))),
        }
    }

    /// Gives the lease up (before a retry), so that the next delivery need not wait for it to
    /// expire. Best effort.
    async fn release(&self, request_id: &str, owner: &str) {
        let released = self
            .update(request_id)
            .update_expression("REMOVE lease_owner, lease_until")
            .condition_expression("lease_owner = :me")
            .expression_attribute_values(":me", s(owner))
            .send()
            .await;
        if let Err(err) = released {
            if !failed_condition(&err) {
                tracing::warn!(error = %classify(&err), "cannot release the lease; it expires by itself");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The longest a message of `queue` can live (topology.json).
    fn longest_life(queue: &str) -> u64 {
        fleet::topology::Topology::builtin().queues[queue].longest_message_life_secs()
    }

    #[test]
    fn a_request_outlives_every_delivery_of_its_message() {
        assert_eq!(longest_life("vpc-requests"), 32 * 24 * 3600);
        assert!(PURGE_AFTER_EXPIRY.as_secs() >= longest_life("vpc-requests"));
    }

    #[test]
    fn a_request_expires_30_days_after_its_receipt_in_seconds() {
        assert_eq!(expires_at(1_000_999), 1_000 + 30 * 24 * 3600);
    }

    #[test]
    fn a_record_is_expired_for_a_message_received_from_expires_at_on() {
        let e = expires_at(5_000);
        assert!(!expired(Some(e), 5_000));
        assert!(!expired(Some(e), e * 1000 - 1), "received just before");
        assert!(expired(Some(e), e * 1000), "received at expires_at");
        assert!(expired(Some(e), e * 1000 + 86_400_000));
        assert!(!expired(None, u64::MAX), "older records never expire");
    }

    #[test]
    fn a_record_reads_its_expiry_and_incarnation() {
        let item = Item::from([
            ("status".to_owned(), s(status::SUCCEEDED)),
            ("expires_at".to_owned(), n(42)),
            ("incarnation".to_owned(), s("m-1")),
        ]);
        let record = Record::from_item(&item);
        assert_eq!(record.expires_at, Some(42));
        assert_eq!(record.incarnation.as_deref(), Some("m-1"));
        assert_eq!(Record::from_item(&Item::new()).incarnation, None);
    }
}
