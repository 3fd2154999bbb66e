//! # vpc-worker
//!
//! Creates a VPC and its subnets for each request of `POST /vpcs`, exactly once per request:
//!
//! 1. the request is recorded `QUEUED` (the first delivery writes it; the same request id with
//!    another body is a conflict: recorded beside it as `FAILED`, the message dead-lettered,
//!    the request untouched). A request lasts [`store::REQUEST_TTL`] (30 days) from its
//!    receipt (`expires_at`, the table's TTL attribute): a message received from then on is a
//!    new request under the same id, which replaces the expired record (once no delivery holds
//!    its lease: `request-busy` until then) whether or not TTL has deleted it yet. Resources
//!    are tagged with the record's `incarnation` too, so a request made anew never finds the
//!    expired one's VPC as its own (step 4), nor removes it;
//! 2. what the gateway cannot check (subnets inside the VPC, no overlaps, AZs of the region)
//!    → `FAILED` with the reason, no EC2 call made;
//! 3. a lease makes one delivery at a time work on a request (two workers receiving duplicates
//!    at once: one works, the other comes back later), `IN_PROGRESS`. The delivery renews it
//!    every third of the lease while it works (a heartbeat beside the EC2 calls, stopped when
//!    the handler ends), so a slow EC2 call does not let the other take the request over;
//! 4. `CreateVpc`, checkpoint the id; each `CreateSubnet`, checkpoint its id. Every resource is
//!    created with its tags (`Project`, `RequestId`, `Name`, `SubnetName`), so a resource
//!    made without its id reaching the checkpoint is found (VPC by its `RequestId` tag; subnet
//!    by VPC, CIDR and tag) instead of being created twice: when a delivery takes over from one
//!    that crashed or gave up (before creating), and when a create's answer is lost. EC2 takes
//!    no `ClientToken` on either call, so: `CreateVpc` is sent once, never retried blindly; after
//!    an error that may hide a VPC made all the same (timeout, broken connection, 5xx) the VPC is
//!    looked up by tag. `CreateSubnet` is retried by the SDK; a retry after a lost answer fails
//!    with `InvalidSubnet.Conflict`, and the subnet of this VPC with this CIDR carrying this
//!    request's tag is then ours: checkpointed, not a failure. Look-ups happen only then: a
//!    first delivery that hears every answer makes 1 + subnets EC2 calls;
//! 5. `SUCCEEDED`. A throttled or failing EC2 (5xx, or a lost `CreateVpc` answer whose VPC is
//!    not found) is retried through the queue's backoff; a permanent EC2 error
//!    (`VpcLimitExceeded`, a conflict that is not ours, invalid parameters) removes what the
//!    request created (subnets first) and records `FAILED` with the reason.
//!
//! The handler ([`VpcHandler`]) sees the request records through [`store::RequestStore`]
//! (DynamoDB: [`store::Store`]) and EC2 through [`ec2::Ec2Api`] ([`ec2::Ec2`]); its unit tests
//! run it over fakes of both.

pub mod ec2;
pub mod request;
pub mod store;

use std::num::NonZeroU32;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use clap::Parser;
use fleet::kind;
use fleet::util::sha256_hex;
use fleet::worker::WorkerArgs;
use fleet::{AwsError, Handler, Message, Metrics, Outcome};
use tokio::sync::OnceCell;
use tracing::{info, warn};

use crate::ec2::{may_have_happened, Ec2Api, Tagged, SUBNET_CONFLICT};
use crate::request::{SubnetSpec, VpcRequest};
use crate::store::{status, Claim, Inserted, Origin, Record, RequestStore, StoreError};

/// Retry kind: another delivery took the request over (this one's lease was lost).
pub const LEASE_LOST: &str = "lease-lost";
/// Retry kind: another delivery holds the lease on the request (or on the expired request
/// under its id).
pub const REQUEST_BUSY: &str = "request-busy";
/// Retry kind: the request expired meanwhile and another one was made under its id.
pub const REQUEST_REPLACED: &str = "request-replaced";
/// Retry kind: after a permanent EC2 error, removing what the request created failed.
pub const CLEANUP_FAILED: &str = "cleanup-failed";

/// Look-ups of a subnet after an ambiguous CreateSubnet failure, and the pause between them.
const SUBNET_LOOKUPS: u32 = 3;
const SUBNET_LOOKUP_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// Command line and environment of the `vpc-worker` binary.
#[derive(Debug, Parser)]
#[command(
    name = "vpc-worker",
    version,
    about = "Creates the VPCs and subnets of POST /vpcs, once each"
)]
pub struct Config {
    /// The request records (partition key `request_id`).
    #[arg(long, env = "VPC_REQUESTS_TABLE", value_name = "TABLE")]
    pub table: String,
    /// EC2 calls per second at most, shared by every task of the process.
    #[arg(long, env = "VPC_EC2_CALLS_PER_SECOND", default_value = "5")]
    pub ec2_calls_per_second: NonZeroU32,
    /// Value of the `Project` tag on every resource (what `fleetctl vpc cleanup` deletes).
    #[arg(long, env = "VPC_PROJECT_TAG", default_value = "queue-fleet")]
    pub project: String,
    /// How long a delivery's claim on a request lasts past its last renewal, seconds (a working
    /// delivery renews it every third of it); a crashed delivery's request is taken over after
    /// it. Keep it at most the queue's visibility timeout.
    #[arg(long, env = "VPC_LEASE_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub lease_secs: u64,
    /// Fault injection for tests: abort the process right after this EC2 call, before its
    /// checkpoint: `create-vpc` or `subnet-N` (N from 1).
    #[arg(long, env = "VPC_CRASH_AFTER", hide = true)]
    pub crash_after: Option<String>,
    /// What every worker has: the engine, logs, threads.
    #[command(flatten)]
    pub worker: WorkerArgs,
}

impl Config {
    /// How long a delivery's claim on a request lasts past its last renewal.
    pub fn lease(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.lease_secs)
    }
}

/// The handler, over any request store and EC2 ([`store::Store`] and [`ec2::Ec2`] in the
/// worker).
#[derive(Debug)]
pub struct VpcHandler<S, E> {
    ec2: E,
    store: S,
    zones: OnceCell<Vec<String>>,
    crash_after: Option<String>,
    succeeded: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl<S: RequestStore, E: Ec2Api> VpcHandler<S, E> {
    /// A handler counting `requests_succeeded` and `requests_failed`.
    pub fn new(ec2: E, store: S, crash_after: Option<String>, metrics: &Metrics) -> Self {
        Self {
            ec2,
            store,
            zones: OnceCell::new(),
            crash_after,
            succeeded: metrics.counter("requests_succeeded"),
            failed: metrics.counter("requests_failed"),
        }
    }

    /// The region's AZs, asked once per process.
    async fn zones(&self) -> Result<&Vec<String>, AwsError> {
        self.zones
            .get_or_try_init(|| self.ec2.availability_zones())
            .await
    }

    fn crash_point(&self, point: &str) {
        if self.crash_after.as_deref() == Some(point) {
            eprintln!("VPC_CRASH_AFTER={point}: aborting");
            std::process::abort();
        }
    }

    /// Creates what `before` does not record yet; `resumed`: an earlier delivery started, so a
    /// resource without its checkpoint may exist and is looked up first.
    async fn provision(
        &self,
        who: Tagged<'_>,
        request: &VpcRequest,
        me: &str,
        before: &Record,
    ) -> Result<(), StoreError> {
        let request_id = who.request_id;
        let resumed = before.status == status::IN_PROGRESS;
        let vpc_id = match &before.vpc_id {
            Some(id) => id.clone(),
            None => {
                let id = self.vpc(who, request, resumed).await?;
                self.store.vpc_created(request_id, me, &id).await?;
                id
            }
        };
        for (i, subnet) in request.subnets.iter().enumerate() {
            if before.subnet_ids.get(i).is_some_and(Option::is_some) {
                continue;
            }
            let id = self.subnet(who, &vpc_id, i, subnet, resumed).await?;
            self.store.subnet_created(request_id, me, i, &id).await?;
        }
        Ok(())
    }

    /// The request's VPC: the one tagged with it if an earlier delivery may have made it, else a
    /// new one. A `CreateVpc` whose answer may have been lost is repaired by a look-up by tag,
    /// never by a second `CreateVpc` (not found: the error, retried through the queue, whose next
    /// delivery looks it up again first).
    async fn vpc(
        &self,
        who: Tagged<'_>,
        request: &VpcRequest,
        resumed: bool,
    ) -> Result<String, AwsError> {
        let request_id = who.request_id;
        if resumed {
            if let Some(id) = self.ec2.vpcs_of_request(who).await?.into_iter().next() {
                return Ok(id);
            }
        }
        let name = format!("fleet-{request_id}");
        match self.ec2.create_vpc(who, &request.vpc.cidr, &name).await {
            Ok(id) => {
                self.crash_point("create-vpc");
                Ok(id)
            }
            Err(lost) if may_have_happened(&lost) => {
                match self.ec2.vpcs_of_request(who).await?.into_iter().next() {
                    Some(id) => {
                        warn!(request_id, vpc_id = %id, error = %lost, "CreateVpc failed, yet made the VPC: found by its tag");
                        Ok(id)
                    }
                    None => Err(lost),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Subnet `index` of the request in `vpc_id`: looked up if an earlier delivery may have made
    /// it, else created. A conflict on its CIDR, or a failure that may hide a subnet made all the
    /// same, is repaired by a look-up: the subnet of this VPC with this CIDR carrying the
    /// request's tag is the request's own (an attempt whose answer was lost).
    async fn subnet(
        &self,
        who: Tagged<'_>,
        vpc_id: &str,
        index: usize,
        subnet: &SubnetSpec,
        resumed: bool,
    ) -> Result<String, AwsError> {
        let request_id = who.request_id;
        if resumed {
            if let Some(id) = self.ec2.subnet_of(who, vpc_id, &subnet.cidr).await? {
                return Ok(id);
            }
        }
        let created = self
            .ec2
            .create_subnet(
                who,
                vpc_id,
                &subnet.cidr,
                &subnet.az,
                subnet.name.as_deref(),
            )
            .await;
        match created {
            Ok(id) => {
                self.crash_point(&format!("subnet-{}", index + 1));
                Ok(id)
            }
            Err(e) if e.code == SUBNET_CONFLICT || may_have_happened(&e) => {
                // EC2's Describe calls are eventually consistent: a subnet made by a lost
                // answer may not show at once. Look a few times before calling it a conflict.
                for attempt in 1..=SUBNET_LOOKUPS {
                    if let Some(id) = self.ec2.subnet_of(who, vpc_id, &subnet.cidr).await? {
                        warn!(request_id, subnet_id = %id, error = %e, "CreateSubnet failed, yet the subnet is the request's: found by VPC, CIDR and tag");
                        return Ok(id);
                    }
                    if attempt < SUBNET_LOOKUPS {
                        tokio::time::sleep(SUBNET_LOOKUP_PAUSE).await;
                    }
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Provisions what `before` lacks and records the end, while `me` holds the lease.
    async fn work(
        &self,
        request_id: &str,
        request: &VpcRequest,
        me: &str,
        before: &Record,
    ) -> Outcome {
        // This request's resources: the ones tagged with its id and the incarnation of the
        // record this delivery holds, not those of an expired request under the same id.
        let who = Tagged {
            request_id,
            incarnation: before.incarnation.as_deref(),
        };
        let provisioned = match self.provision(who, request, me, before).await {
            Ok(()) => self.store.succeeded(request_id, me).await,
            Err(e) => Err(e),
        };
        match provisioned {
            Ok(()) => {
                Metrics::incr(&self.succeeded);
                info!(
                    request_id,
                    subnets = request.subnets.len(),
                    "request succeeded"
                );
                Outcome::Done
            }
            Err(StoreError::LeaseLost) => {
                Outcome::retry(LEASE_LOST, "another delivery took the request over")
            }
            Err(StoreError::Aws(e)) if e.is_retryable() => {
                self.store.release(request_id, me).await;
                Outcome::Retry(fleet::Reason::dependency(e.code, e.message))
            }
            Err(StoreError::Aws(e)) => {
                let reason = format!("{}: {}", e.code, e.message);
                warn!(request_id, %reason, "permanent EC2 error; removing what the request created");
                if let Err(cleanup) = self.remove(who).await {
                    self.store.release(request_id, me).await;
                    return Outcome::retry(
                        CLEANUP_FAILED,
                        format!("after {reason}, the cleanup failed: {cleanup}"),
                    );
                }
                self.fail(request_id, Some(me), &reason).await
            }
        }
    }

    /// Removes every resource tagged with the request (id and incarnation): subnets first, then
    /// the VPC.
    async fn remove(&self, who: Tagged<'_>) -> Result<(), AwsError> {
        let vpcs = self.ec2.vpcs_of_request(who).await?;
        self.ec2.delete_vpcs(&vpcs).await
    }

    async fn fail(&self, request_id: &str, owner: Option<&str>, reason: &str) -> Outcome {
        match self.store.failed(request_id, owner, reason).await {
            Ok(()) => {
                Metrics::incr(&self.failed);
                info!(request_id, reason, "request failed");
                Outcome::Done
            }
            Err(StoreError::LeaseLost) => {
                Outcome::retry(LEASE_LOST, "another delivery took the request over")
            }
            Err(StoreError::Aws(e)) => e.into_outcome(),
        }
    }
}

impl<S: RequestStore, E: Ec2Api> Handler for VpcHandler<S, E> {
    async fn handle(&self, message: &Message) -> Outcome {
        // The caller: the gateway's owner id (its one definition: the JWT's sub with Cognito,
        // else the API key id; docs/security.md), or, for a message queued before the gateway
        // sent it, the API key id, which was the identity then.
        let envelope = message.envelope();
        let (Some(request_id), Some(client)) = (envelope.request_id, envelope.owner) else {
            return Outcome::permanent(
                kind::MISSING_ATTRIBUTE,
                "requestId and ownerId (or apiKeyId) attributes are required (the gateway sets them)",
            );
        };
        let request: VpcRequest = match fleet::json::from_body(&message.body) {
            Ok(r) => r,
            Err(e) => {
                return Outcome::permanent(
                    kind::of_json_error(&e),
                    format!("not a VPC request: {e}"),
                )
            }
        };
        let hash = sha256_hex(request.canonical().as_bytes());
        let origin = Origin {
            client,
            received_at_ms: message.envelope().received_at_or_now(),
            message_id: &message.message_id,
        };
        let record = match self
            .store
            .insert(request_id, &request, &hash, &origin)
            .await
        {
            Ok(Inserted::Record(record)) => record,
            Ok(Inserted::ExpiredBusy) => {
                return Outcome::retry(
                    REQUEST_BUSY,
                    "the expired request under this id is still worked on; the new one waits",
                )
            }
            Err(e) => return e.into_outcome(),
        };
        // A message received before the request under this id was made anew (its key expired
        // and was used again) belongs to the earlier request, which it no longer reaches.
        let made_at = record
            .expires_at
            .map(|e| e.saturating_sub(store::REQUEST_TTL.as_secs()));
        if made_at.is_some_and(|made| origin.received_at_ms / 1000 < made) {
            tracing::info!(
                request_id,
                "superseded: the key was used anew after this message"
            );
            return Outcome::Duplicate;
        }
        if record.body_sha256 != hash {
            let reason = format!(
                "the Idempotency-Key of request {request_id} was reused with another body; the request stands as first sent"
            );
            return match self.store.conflict(request_id, &origin, &reason).await {
                Ok(id) => {
                    Outcome::permanent(kind::CONFLICT, format!("{reason} (recorded as {id})"))
                }
                Err(e) => e.into_outcome(),
            };
        }
        if record.finished() {
            return Outcome::Duplicate;
        }
        let zones = match self.zones().await {
            Ok(zones) => zones,
            Err(e) => return e.into_outcome(),
        };
        if let Err(why) = request.validate(zones) {
            return self.fail(request_id, None, &why).await;
        }
        let me = format!(
            "{}/{}/{:016x}",
            message.message_id,
            message.receive_count,
            fastrand::u64(..)
        );
        let before = match self.store.claim(request_id, &me, &hash).await {
            Ok(Claim::Owned(before)) => before,
            Ok(Claim::Finished) => return Outcome::Duplicate,
            Ok(Claim::Replaced) => {
                return Outcome::retry(
                    REQUEST_REPLACED,
                    "the request expired meanwhile; another one was made under its id",
                )
            }
            Ok(Claim::Busy) => {
                return Outcome::retry(REQUEST_BUSY, "another delivery is working on this request")
            }
            Err(e) => return e.into_outcome(),
        };
        // The heartbeat renews the lease while the work goes on, and stops with it.
        tokio::select! {
            biased;
            outcome = self.work(request_id, &request, &me, &before) => outcome,
            // The lease is gone (or about to be): stop the work before its next create.
            lost = store::hold(&self.store, request_id, &me) => Outcome::retry(LEASE_LOST, lost),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Duration;

    use fleet::dlq::string;
    use fleet::gateway::{ATTR_OWNER_ID, ATTR_REQUEST_ID};
    use fleet::util::now_ms;
    use fleet::ErrorClass;

    use super::*;

    /// A request record as the fake keeps it.
    #[derive(Debug, Clone, Default)]
    struct Row {
        record: Record,
        lease_owner: Option<String>,
        reason: Option<String>,
    }

    /// The request records in memory, with an injected failure and a thief that takes the
    /// lease over at the VPC's checkpoint.
    #[derive(Default)]
    struct FakeStore {
        rows: Mutex<HashMap<String, Row>>,
        conflicts: Mutex<Vec<String>>,
        checkpoints: Mutex<Vec<String>>,
        fail: Mutex<Option<AwsError>>,
        thief: Mutex<Option<&'static str>>,
    }

    impl FakeStore {
        fn row(&self, request_id: &str) -> Row {
            self.rows.lock().unwrap()[request_id].clone()
        }

        fn failure(&self) -> Result<(), AwsError> {
            self.fail.lock().unwrap().clone().map_or(Ok(()), Err)
        }

        /// Runs `change` on the row while `owner` holds its lease.
        fn owned(
            &self,
            request_id: &str,
            owner: &str,
            change: impl FnOnce(&mut Row),
        ) -> Result<(), StoreError> {
            self.failure()?;
            let mut rows = self.rows.lock().unwrap();
            let row = rows.get_mut(request_id).expect("recorded");
            if row.lease_owner.as_deref() != Some(owner) {
                return Err(StoreError::LeaseLost);
            }
            change(row);
            Ok(())
        }
    }

    impl RequestStore for FakeStore {
        async fn insert(
            &self,
            request_id: &str,
            request: &VpcRequest,
            body_sha256: &str,
            origin: &Origin<'_>,
        ) -> Result<Inserted, AwsError> {
            self.failure()?;
            let mut rows = self.rows.lock().unwrap();
            let row = rows.entry(request_id.to_owned()).or_insert_with(|| Row {
                record: Record {
                    status: status::QUEUED.into(),
                    body_sha256: body_sha256.into(),
                    vpc_id: None,
                    subnet_ids: vec![None; request.subnets.len()],
                    expires_at: Some(store::expires_at(origin.received_at_ms)),
                    incarnation: Some(origin.message_id.to_owned()),
                },
                ..Row::default()
            });
            Ok(Inserted::Record(row.record.clone()))
        }

        async fn conflict(
            &self,
            request_id: &str,
            origin: &Origin<'_>,
            reason: &str,
        ) -> Result<String, AwsError> {
            self.failure()?;
            let id = format!("{request_id}.conflict.{}", origin.message_id);
            self.conflicts
                .lock()
                .unwrap()
                .push(format!("{id}: {reason}"));
            Ok(id)
        }

        async fn claim(
            &self,
            request_id: &str,
            owner: &str,
            body_sha256: &str,
        ) -> Result<Claim, AwsError> {
            self.failure()?;
            let mut rows = self.rows.lock().unwrap();
            let row = rows.get_mut(request_id).expect("recorded");
            if row.record.body_sha256 != body_sha256 {
                return Ok(Claim::Replaced);
            }
            if row.record.finished() {
                return Ok(Claim::Finished);
            }
            if row.lease_owner.as_deref().is_some_and(|o| o != owner) {
                return Ok(Claim::Busy);
            }
            let before = row.record.clone();
            row.record.status = status::IN_PROGRESS.into();
            row.lease_owner = Some(owner.to_owned());
            Ok(Claim::Owned(before))
        }

        fn lease(&self) -> Duration {
            Duration::from_secs(60)
        }

        async fn renew(&self, request_id: &str, owner: &str) -> Result<(), StoreError> {
            self.owned(request_id, owner, |_| {})
        }

        async fn vpc_created(
            &self,
            request_id: &str,
            owner: &str,
            vpc_id: &str,
        ) -> Result<(), StoreError> {
            if let Some(thief) = *self.thief.lock().unwrap() {
                let mut rows = self.rows.lock().unwrap();
                rows.get_mut(request_id).expect("recorded").lease_owner = Some(thief.into());
            }
            self.owned(request_id, owner, |row| {
                row.record.vpc_id = Some(vpc_id.to_owned());
            })?;
            self.checkpoints
                .lock()
                .unwrap()
                .push(format!("vpc {vpc_id}"));
            Ok(())
        }

        async fn subnet_created(
            &self,
            request_id: &str,
            owner: &str,
            index: usize,
            subnet_id: &str,
        ) -> Result<(), StoreError> {
            self.owned(request_id, owner, |row| {
                row.record.subnet_ids[index] = Some(subnet_id.to_owned());
            })?;
            self.checkpoints
                .lock()
                .unwrap()
                .push(format!("subnet {index} {subnet_id}"));
            Ok(())
        }

        async fn succeeded(&self, request_id: &str, owner: &str) -> Result<(), StoreError> {
            self.owned(request_id, owner, |row| {
                row.record.status = status::SUCCEEDED.into();
                row.lease_owner = None;
            })
        }

        async fn failed(
            &self,
            request_id: &str,
            owner: Option<&str>,
            reason: &str,
        ) -> Result<(), StoreError> {
            self.failure()?;
            let mut rows = self.rows.lock().unwrap();
            let row = rows.get_mut(request_id).expect("recorded");
            let allowed = match owner {
                Some(me) => row.lease_owner.as_deref() == Some(me),
                None => row.record.status == status::QUEUED,
            };
            if !allowed {
                return Err(StoreError::LeaseLost);
            }
            row.record.status = status::FAILED.into();
            row.reason = Some(reason.to_owned());
            row.lease_owner = None;
            Ok(())
        }

        async fn release(&self, request_id: &str, owner: &str) {
            let mut rows = self.rows.lock().unwrap();
            if let Some(row) = rows.get_mut(request_id) {
                if row.lease_owner.as_deref() == Some(owner) {
                    row.lease_owner = None;
                }
            }
        }
    }

    /// A resource as the fake keeps it: id, VPC (subnets), CIDR, request id, incarnation.
    type Resource = (String, String, String, String, Option<String>);

    /// EC2 in memory: two zones, tagged VPCs and subnets, a failure for the next
    /// `CreateSubnet`.
    #[derive(Default)]
    struct FakeEc2 {
        vpcs: Mutex<Vec<Resource>>,
        subnets: Mutex<Vec<Resource>>,
        vpc_creates: Mutex<u32>,
        subnet_creates: Mutex<u32>,
        fail_subnet: Mutex<Option<AwsError>>,
    }

    fn ours(resource: &Resource, who: Tagged<'_>) -> bool {
        resource.3 == who.request_id
            && (who.incarnation.is_none() || resource.4.as_deref() == who.incarnation)
    }

    impl Ec2Api for FakeEc2 {
        async fn availability_zones(&self) -> Result<Vec<String>, AwsError> {
            Ok(vec!["us-east-1a".into(), "us-east-1b".into()])
        }

        async fn create_vpc(
            &self,
            who: Tagged<'_>,
            cidr: &str,
            _name: &str,
        ) -> Result<String, AwsError> {
            let mut creates = self.vpc_creates.lock().unwrap();
            *creates += 1;
            let id = format!("vpc-{creates}");
            self.vpcs.lock().unwrap().push((
                id.clone(),
                String::new(),
                cidr.into(),
                who.request_id.into(),
                who.incarnation.map(str::to_owned),
            ));
            Ok(id)
        }

        async fn create_subnet(
            &self,
            who: Tagged<'_>,
            vpc_id: &str,
            cidr: &str,
            _az: &str,
            _name: Option<&str>,
        ) -> Result<String, AwsError> {
            if let Some(err) = self.fail_subnet.lock().unwrap().take() {
                return Err(err);
            }
            let mut creates = self.subnet_creates.lock().unwrap();
            *creates += 1;
            let id = format!("subnet-{creates}");
            self.subnets.lock().unwrap().push((
                id.clone(),
                vpc_id.into(),
                cidr.into(),
                who.request_id.into(),
                who.incarnation.map(str::to_owned),
            ));
            Ok(id)
        }

        async fn vpcs_of_request(&self, who: Tagged<'_>) -> Result<Vec<String>, AwsError> {
            let vpcs = self.vpcs.lock().unwrap();
            Ok(vpcs
                .iter()
                .filter(|v| ours(v, who))
                .map(|v| v.0.clone())
                .collect())
        }

        async fn subnet_of(
            &self,
            who: Tagged<'_>,
            vpc_id: &str,
            cidr: &str,
        ) -> Result<Option<String>, AwsError> {
            let subnets = self.subnets.lock().unwrap();
            Ok(subnets
                .iter()
                .find(|s| s.1 == vpc_id && s.2 == cidr && ours(s, who))
                .map(|s| s.0.clone()))
        }

        async fn delete_vpcs(&self, vpc_ids: &[String]) -> Result<(), AwsError> {
            self.subnets
                .lock()
                .unwrap()
                .retain(|s| !vpc_ids.contains(&s.1));
            self.vpcs
                .lock()
                .unwrap()
                .retain(|v| !vpc_ids.contains(&v.0));
            Ok(())
        }
    }

    type Tested = VpcHandler<FakeStore, FakeEc2>;

    fn handler() -> Tested {
        VpcHandler::new(
            FakeEc2::default(),
            FakeStore::default(),
            None,
            &Metrics::new(),
        )
    }

    const REQUEST: &str = "owner-1-key-1";
    const BODY: &str = r#"{"vpc":{"cidr":"10.0.0.0/16"},"subnets":[{"cidr":"10.0.1.0/24","az":"us-east-1a"},{"cidr":"10.0.2.0/24","az":"us-east-1b","name":"b"}]}"#;

    /// Delivery `receive_count` of message `m-1` with the gateway's attributes.
    fn delivery(body: &str, receive_count: u32) -> Message {
        let attributes = HashMap::from([
            (ATTR_REQUEST_ID.to_owned(), string(REQUEST)),
            (ATTR_OWNER_ID.to_owned(), string("owner-1")),
        ]);
        Message {
            message_id: "m-1".into(),
            receipt_handle: format!("r-{receive_count}"),
            body: body.into(),
            receive_count,
            sent_at_ms: Some(now_ms()),
            attributes,
            ..Message::default()
        }
    }

    fn error(class: ErrorClass, code: &str) -> AwsError {
        AwsError {
            class,
            code: code.into(),
            message: "injected".into(),
        }
    }

    fn kind_of(outcome: &Outcome) -> (&'static str, &str) {
        match outcome {
            Outcome::Retry(r) => ("retry", &r.kind),
            Outcome::Permanent(r) => ("permanent", &r.kind),
            other => (other.label(), ""),
        }
    }

    #[tokio::test]
    async fn a_new_request_runs_to_succeeded_with_checkpoints() {
        let handler = handler();
        assert_eq!(handler.handle(&delivery(BODY, 1)).await, Outcome::Done);
        let row = handler.store.row(REQUEST);
        assert_eq!(row.record.status, status::SUCCEEDED);
        assert_eq!(row.record.vpc_id.as_deref(), Some("vpc-1"));
        assert_eq!(
            row.record.subnet_ids,
            [Some("subnet-1".to_owned()), Some("subnet-2".to_owned())]
        );
        assert_eq!(row.lease_owner, None, "the lease ends with the request");
        assert_eq!(
            *handler.store.checkpoints.lock().unwrap(),
            ["vpc vpc-1", "subnet 0 subnet-1", "subnet 1 subnet-2"]
        );
        // Its redelivery: nothing more is created.
        assert_eq!(handler.handle(&delivery(BODY, 2)).await, Outcome::Duplicate);
        assert_eq!(*handler.ec2.vpc_creates.lock().unwrap(), 1);
        assert_eq!(*handler.ec2.subnet_creates.lock().unwrap(), 2);
    }

    #[tokio::test]
    async fn a_redelivery_after_a_checkpoint_resumes_without_creating_the_vpc_again() {
        let handler = handler();
        // The first delivery is throttled on its first subnet: a retry, the VPC checkpointed.
        *handler.ec2.fail_subnet.lock().unwrap() =
            Some(error(ErrorClass::Retryable, "RequestLimitExceeded"));
        let first = handler.handle(&delivery(BODY, 1)).await;
        assert_eq!(
            first,
            Outcome::unavailable("RequestLimitExceeded", "injected"),
            "a transient EC2 error is a retry that blames EC2"
        );
        let row = handler.store.row(REQUEST);
        assert_eq!(row.record.status, status::IN_PROGRESS);
        assert_eq!(row.record.vpc_id.as_deref(), Some("vpc-1"));
        assert_eq!(row.lease_owner, None, "the lease is given up for the retry");

        assert_eq!(handler.handle(&delivery(BODY, 2)).await, Outcome::Done);
        let row = handler.store.row(REQUEST);
        assert_eq!(row.record.status, status::SUCCEEDED);
        assert_eq!(row.record.vpc_id.as_deref(), Some("vpc-1"));
        assert_eq!(*handler.ec2.vpc_creates.lock().unwrap(), 1, "one VPC");
        assert_eq!(handler.ec2.vpcs.lock().unwrap().len(), 1);
        assert_eq!(*handler.ec2.subnet_creates.lock().unwrap(), 2);
    }

    #[tokio::test]
    async fn the_same_idempotency_key_with_another_body_is_a_permanent_conflict() {
        let handler = handler();
        assert_eq!(handler.handle(&delivery(BODY, 1)).await, Outcome::Done);
        let other = BODY.replace("10.0.2.0/24", "10.0.3.0/24");
        let outcome = handler.handle(&delivery(&other, 1)).await;
        assert_eq!(kind_of(&outcome), ("permanent", kind::CONFLICT));
        assert_eq!(handler.store.conflicts.lock().unwrap().len(), 1);
        let row = handler.store.row(REQUEST);
        assert_eq!(row.record.status, status::SUCCEEDED, "the request stands");
        assert_eq!(
            row.record.subnet_ids[1].as_deref(),
            Some("subnet-2"),
            "as first sent"
        );
        assert_eq!(*handler.ec2.subnet_creates.lock().unwrap(), 2);
    }

    #[tokio::test]
    async fn a_lease_held_by_another_delivery_is_a_retry() {
        let handler = handler();
        let request: VpcRequest = serde_json::from_str(BODY).unwrap();
        let hash = sha256_hex(request.canonical().as_bytes());
        let origin = Origin {
            client: "owner-1",
            received_at_ms: now_ms(),
            message_id: "m-1",
        };
        let store = &handler.store;
        store
            .insert(REQUEST, &request, &hash, &origin)
            .await
            .unwrap();
        assert!(matches!(
            store.claim(REQUEST, "another", &hash).await,
            Ok(Claim::Owned(_))
        ));
        let outcome = handler.handle(&delivery(BODY, 2)).await;
        assert_eq!(kind_of(&outcome), ("retry", REQUEST_BUSY));
        assert_eq!(*handler.ec2.vpc_creates.lock().unwrap(), 0);
        assert_eq!(store.row(REQUEST).lease_owner.as_deref(), Some("another"));
    }

    #[tokio::test]
    async fn a_lease_taken_over_during_the_work_is_a_lease_lost_retry() {
        let handler = handler();
        *handler.store.thief.lock().unwrap() = Some("another");
        let outcome = handler.handle(&delivery(BODY, 1)).await;
        assert_eq!(kind_of(&outcome), ("retry", LEASE_LOST));
        assert_eq!(
            *handler.ec2.subnet_creates.lock().unwrap(),
            0,
            "no create after the lease is lost"
        );
        let row = handler.store.row(REQUEST);
        assert_eq!(row.record.status, status::IN_PROGRESS);
        assert_eq!(row.lease_owner.as_deref(), Some("another"));
    }

    #[tokio::test]
    async fn an_invalid_message_is_permanent_without_a_record() {
        let handler = handler();
        for (body, expected) in [
            ("{not json", kind::INVALID_JSON),
            (
                r#"{"vpc":{"cidr":"10.0.0.0/16"},"subnets":[],"extra":1}"#,
                kind::INVALID_MESSAGE,
            ),
            (r#"{"vpc":{},"subnets":[]}"#, kind::INVALID_MESSAGE),
        ] {
            let outcome = handler.handle(&delivery(body, 1)).await;
            assert_eq!(kind_of(&outcome), ("permanent", expected), "{body}");
        }
        let mut anonymous = delivery(BODY, 1);
        anonymous.attributes.remove(ATTR_OWNER_ID);
        let outcome = handler.handle(&anonymous).await;
        assert_eq!(kind_of(&outcome), ("permanent", kind::MISSING_ATTRIBUTE));
        assert!(handler.store.rows.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_request_ec2_cannot_carry_out_fails_without_a_create() {
        let handler = handler();
        let outside = BODY.replace("10.0.2.0/24", "10.9.2.0/24");
        assert_eq!(handler.handle(&delivery(&outside, 1)).await, Outcome::Done);
        let row = handler.store.row(REQUEST);
        assert_eq!(row.record.status, status::FAILED);
        assert!(row.reason.unwrap().contains("not inside"));
        assert_eq!(*handler.ec2.vpc_creates.lock().unwrap(), 0);
    }

    #[tokio::test]
    async fn a_permanent_ec2_error_removes_what_was_made_and_fails_the_request() {
        let handler = handler();
        *handler.ec2.fail_subnet.lock().unwrap() =
            Some(error(ErrorClass::Permanent, "InvalidParameterValue"));
        assert_eq!(handler.handle(&delivery(BODY, 1)).await, Outcome::Done);
        let row = handler.store.row(REQUEST);
        assert_eq!(row.record.status, status::FAILED);
        assert!(row.reason.unwrap().starts_with("InvalidParameterValue"));
        assert!(handler.ec2.vpcs.lock().unwrap().is_empty(), "VPC removed");
    }

    #[tokio::test]
    async fn a_transient_dynamodb_error_is_a_retry() {
        let handler = handler();
        *handler.store.fail.lock().unwrap() = Some(error(
            ErrorClass::Retryable,
            "ProvisionedThroughputExceededException",
        ));
        let outcome = handler.handle(&delivery(BODY, 1)).await;
        assert_eq!(
            outcome,
            Outcome::unavailable("ProvisionedThroughputExceededException", "injected")
        );
        assert_eq!(*handler.ec2.vpc_creates.lock().unwrap(), 0);
        // Once DynamoDB answers again, the redelivery does the work.
        *handler.store.fail.lock().unwrap() = None;
        assert_eq!(handler.handle(&delivery(BODY, 2)).await, Outcome::Done);
    }
}
