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

pub mod ec2;
pub mod request;
pub mod store;

use std::num::NonZeroU32;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use clap::Parser;
use fleet::util::sha256_hex;
use fleet::worker::WorkerArgs;
use fleet::{AwsError, Handler, Message, Metrics, Outcome};
use tokio::sync::OnceCell;
use tracing::{info, warn};

use crate::ec2::{may_have_happened, Ec2, Tagged, SUBNET_CONFLICT};
use crate::request::{SubnetSpec, VpcRequest};
use crate::store::{status, Claim, Inserted, Origin, Record, Store, StoreError};

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

/// The handler.
#[derive(Debug)]
pub struct VpcHandler {
    ec2: Ec2,
    store: Store,
    zones: OnceCell<Vec<String>>,
    crash_after: Option<String>,
    succeeded: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl VpcHandler {
    /// A handler counting `requests_succeeded` and `requests_failed` (and `ec2_calls`).
    pub fn new(ec2: Ec2, store: Store, crash_after: Option<String>, metrics: &Metrics) -> Self {
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
                Outcome::retry("lease-lost", "another delivery took the request over")
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
                        "cleanup-failed",
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
        self.ec2.remove_vpcs(&vpcs, false).await.map(drop)
    }

    async fn fail(&self, request_id: &str, owner: Option<&str>, reason: &str) -> Outcome {
        match self.store.failed(request_id, owner, reason).await {
            Ok(()) => {
                Metrics::incr(&self.failed);
                info!(request_id, reason, "request failed");
                Outcome::Done
            }
            Err(StoreError::LeaseLost) => {
                Outcome::retry("lease-lost", "another delivery took the request over")
            }
            Err(StoreError::Aws(e)) => e.into_outcome(),
        }
    }
}

impl Handler for VpcHandler {
    async fn handle(&self, message: &Message) -> Outcome {
        // The caller: the gateway's owner id (its one definition: the JWT's sub with Cognito,
        // else the API key id; docs/security.md), or, for a message queued before the gateway
        // sent it, the API key id, which was the identity then.
        let envelope = message.envelope();
        let (Some(request_id), Some(client)) = (envelope.request_id, envelope.owner) else {
            return Outcome::permanent(
                "invalid-message",
                "requestId and ownerId (or apiKeyId) attributes are required (the gateway sets them)",
            );
        };
        let request: VpcRequest = match fleet::json::from_body(&message.body) {
            Ok(r) => r,
            Err(e) => return Outcome::permanent("invalid-body", format!("not a VPC request: {e}")),
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
                    "request-busy",
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
                Ok(id) => Outcome::permanent(
                    "idempotency-conflict",
                    format!("{reason} (recorded as {id})"),
                ),
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
                    "request-replaced",
                    "the request expired meanwhile; another one was made under its id",
                )
            }
            Ok(Claim::Busy) => {
                return Outcome::retry(
                    "request-busy",
                    "another delivery is working on this request",
                )
            }
            Err(e) => return e.into_outcome(),
        };
        // The heartbeat renews the lease while the work goes on, and stops with it.
        tokio::select! {
            biased;
            outcome = self.work(request_id, &request, &me, &before) => outcome,
            // The lease is gone (or about to be): stop the work before its next create.
            lost = self.store.hold(request_id, &me) => Outcome::retry("lease-lost", lost),
        }
    }
}
