//! The EC2 calls of VPC provisioning: the narrow [`Ec2Api`] the handler needs, and [`Ec2`], its
//! implementation on EC2, rate-limited (one `governor` limiter shared by every task of the
//! process) and counted (also the cleanup of `fleetctl vpc cleanup`). Every resource is created with its tags in the same call
//! (`TagSpecifications`), so a resource whose id was never checkpointed, or whose create
//! answer was lost, can be found again by its tags instead of being created twice.
//!
//! Neither create call is idempotent on EC2: `CreateVpc` and `CreateSubnet` take no
//! `ClientToken` (see their inputs in `aws-sdk-ec2`; EC2's client-token idempotency covers
//! other actions). So:
//! - `CreateVpc` is sent once, without the SDK's retries: a retry after a lost answer (a
//!   timeout, a broken connection, a 5xx) would make a second VPC that nobody records. The
//!   caller looks the VPC up by its `RequestId` tag after such an ambiguous failure
//!   ([`may_have_happened`]) instead;
//! - `CreateSubnet` keeps the SDK's retries: a retry cannot make a second subnet (its CIDR
//!   conflicts with the first one's, `InvalidSubnet.Conflict`), and the caller repairs that
//!   conflict by looking up the subnet of the VPC with the CIDR and the request's tag.
//!
//! A request id names a new request once the one before under it has expired (see
//! [`crate::store::REQUEST_TTL`]), and the old request's resources keep their `RequestId` tag.
//! So each resource is also tagged with its request's incarnation ([`INCARNATION_TAG`]), and
//! the look-ups of a request's own resources ask for both tags ([`Tagged`]): a request made
//! anew never takes the VPC of the one before for its own, nor deletes it.

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use fleet::{classify, AwsError, Metrics};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Tag naming the request a resource was created for.
pub const REQUEST_ID_TAG: &str = "RequestId";
/// Tag naming which request under its id a resource was created for: the record's
/// `incarnation` (the SQS message id that created it).
pub const INCARNATION_TAG: &str = "RequestIncarnation";
/// Tag naming the project (the cleanup command deletes what carries it).
pub const PROJECT_TAG: &str = "Project";
/// The error of a `CreateSubnet` whose CIDR is taken in the VPC (by an earlier attempt whose
/// answer was lost, if the subnet there carries the request's tag).
pub const SUBNET_CONFLICT: &str = "InvalidSubnet.Conflict";

/// Error codes of a throttled call: EC2 refused it, so it did nothing.
const THROTTLED: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
];

/// Whether a failed call may have been carried out all the same: its answer was lost (a
/// timeout, a broken connection, an unreadable response) or EC2 failed while doing it (5xx).
/// A throttled or refused call (4xx) did nothing.
pub fn may_have_happened(err: &AwsError) -> bool {
    err.is_retryable() && !THROTTLED.contains(&err.code.as_str())
}

/// The EC2 calls the handler makes: the narrow trait [`crate::VpcHandler`] is generic over.
/// [`Ec2`] makes them on EC2 (rate-limited, counted); every resource is created with its tags
/// ([`Tagged`]), so that it can be found again by them.
pub trait Ec2Api: Send + Sync + 'static {
    /// The region's availability zones (names).
    fn availability_zones(&self) -> impl Future<Output = Result<Vec<String>, AwsError>> + Send;

    /// Creates the VPC of a request, tagged `Name` = `name`: one attempt, never retried (see
    /// the module documentation); after an error that [`may_have_happened`], the VPC may
    /// exist: look it up with [`Self::vpcs_of_request`].
    fn create_vpc(
        &self,
        who: Tagged<'_>,
        cidr: &str,
        name: &str,
    ) -> impl Future<Output = Result<String, AwsError>> + Send;

    /// Creates a subnet of a request in `vpc_id` (a retry after a lost answer fails with
    /// [`SUBNET_CONFLICT`]; the subnet is then found by [`Self::subnet_of`]).
    fn create_subnet(
        &self,
        who: Tagged<'_>,
        vpc_id: &str,
        cidr: &str,
        az: &str,
        name: Option<&str>,
    ) -> impl Future<Output = Result<String, AwsError>> + Send;

    /// The VPCs of one request: tagged with its id and its incarnation (normally none or one).
    fn vpcs_of_request(
        &self,
        who: Tagged<'_>,
    ) -> impl Future<Output = Result<Vec<String>, AwsError>> + Send;

    /// The subnet of `vpc_id` with exactly `cidr` and tagged as the request's (id and
    /// incarnation), if there is one: created by an earlier attempt or delivery.
    fn subnet_of(
        &self,
        who: Tagged<'_>,
        vpc_id: &str,
        cidr: &str,
    ) -> impl Future<Output = Result<Option<String>, AwsError>> + Send;

    /// Deletes the VPCs `vpc_ids` with every subnet in them, subnets first; one already gone is
    /// fine.
    fn delete_vpcs(&self, vpc_ids: &[String]) -> impl Future<Output = Result<(), AwsError>> + Send;
}

/// An EC2 client from the shared AWS configuration (`fleet::worker::Setup::sdk`), with
/// keep-alive on plain HTTP (LocalStack).
pub fn client<'a, C: ?Sized>(sdk: &'a C) -> aws_sdk_ec2::Client
where
    aws_sdk_ec2::config::Builder: From<&'a C>,
{
    aws_sdk_ec2::Client::from_conf(
        aws_sdk_ec2::config::Builder::from(sdk)
            .interceptor(fleet::aws::KeepAliveOnPlainHttp)
            .build(),
    )
}

/// EC2 with a rate limit and a call counter.
#[derive(Debug, Clone)]
pub struct Ec2 {
    client: aws_sdk_ec2::Client,
    limiter: Arc<DefaultDirectRateLimiter>,
    calls: Arc<AtomicU64>,
    project: String,
}

/// Whose resources: a request, and which incarnation of its id.
#[derive(Debug, Clone, Copy)]
pub struct Tagged<'a> {
    /// The request id (tag `RequestId`).
    pub request_id: &'a str,
    /// The record's incarnation (tag `RequestIncarnation`); `None` for a record older than
    /// incarnations, whose resources carry only `RequestId` (and whose id never expires).
    pub incarnation: Option<&'a str>,
}

impl Tagged<'_> {
    /// The filters that find this request's resources.
    fn filters(&self) -> Vec<Filter> {
        let mut filters = vec![filter(&format!("tag:{REQUEST_ID_TAG}"), self.request_id)];
        if let Some(incarnation) = self.incarnation {
            filters.push(filter(&format!("tag:{INCARNATION_TAG}"), incarnation));
        }
        filters
    }
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

impl Ec2 {
    /// EC2 at most `per_second` calls per second, tagging with `project`, counting
    /// `ec2_calls`.
    pub fn new(
        client: aws_sdk_ec2::Client,
        per_second: NonZeroU32,
        project: String,
        metrics: &Metrics,
    ) -> Self {
        Self {
            client,
            limiter: Arc::new(RateLimiter::direct(Quota::per_second(per_second))),
            calls: metrics.counter("ec2_calls"),
            project,
        }
    }

    async fn turn(&self) {
        self.limiter.until_ready().await;
        Metrics::incr(&self.calls);
    }

    fn tags(
        &self,
        resource: ResourceType,
        who: Tagged<'_>,
        extra: &[(&str, &str)],
    ) -> TagSpecification {
        let mut spec = TagSpecification::builder()
            .resource_type(resource)
            .tags(tag(PROJECT_TAG, &self.project))
            .tags(tag(REQUEST_ID_TAG, who.request_id));
        if let Some(incarnation) = who.incarnation {
            spec = spec.tags(tag(INCARNATION_TAG, incarnation));
        }
        for (k, v) in extra {
            spec = spec.tags(tag(k, v));
        }
        spec.build()
    }

    /// The VPCs of this deployment (tag `Project`) tagged with `request_id`, of every request
    /// made under it (normally none or one; what `fleetctl vpc cleanup --request-id` deletes:
    /// another deployment in the account may use the same request id).
    ///
    /// # Errors
    /// The classified EC2 error.
    pub async fn vpcs_of(&self, request_id: &str) -> Result<Vec<String>, AwsError> {
        let by_id = vec![filter(&format!("tag:{REQUEST_ID_TAG}"), request_id)];
        self.find_vpcs(self.of_this_deployment(by_id)).await
    }

    /// `filters` narrowed to this deployment's resources (tag `Project`): a request id is
    /// unique in one deployment only, and another deployment in the account may use the same.
    fn of_this_deployment(&self, mut filters: Vec<Filter>) -> Vec<Filter> {
        filters.push(filter(&format!("tag:{PROJECT_TAG}"), &self.project));
        filters
    }

    /// The VPCs tagged with the project.
    ///
    /// # Errors
    /// The classified EC2 error.
    pub async fn project_vpcs(&self) -> Result<Vec<String>, AwsError> {
        self.find_vpcs(vec![filter(&format!("tag:{PROJECT_TAG}"), &self.project)])
            .await
    }

    async fn find_vpcs(&self, filters: Vec<Filter>) -> Result<Vec<String>, AwsError> {
        self.turn().await;
        let out = self
            .client
            .describe_vpcs()
            .set_filters(Some(filters))
            .send()
            .await
            .map_err(|e| classify(&e))?;
        Ok(out
            .vpcs()
            .iter()
            .filter_map(|v| v.vpc_id().map(str::to_owned))
            .collect())
    }

    /// The subnets inside `vpc_id`.
    ///
    /// # Errors
    /// The classified EC2 error.
    pub async fn subnets_in(&self, vpc_id: &str) -> Result<Vec<String>, AwsError> {
        self.find_subnets(vec![filter("vpc-id", vpc_id)]).await
    }

    /// The ids of the subnets matching `filters`.
    async fn find_subnets(&self, filters: Vec<Filter>) -> Result<Vec<String>, AwsError> {
        self.turn().await;
        let out = self
            .client
            .describe_subnets()
            .set_filters(Some(filters))
            .send()
            .await
            .map_err(|e| classify(&e))?;
        Ok(out
            .subnets()
            .iter()
            .filter_map(|s| s.subnet_id().map(str::to_owned))
            .collect())
    }

    /// Deletes a subnet; one already gone is fine.
    ///
    /// # Errors
    /// The classified EC2 error.
    pub async fn delete_subnet(&self, subnet_id: &str) -> Result<(), AwsError> {
        self.turn().await;
        match self
            .client
            .delete_subnet()
            .subnet_id(subnet_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => gone_is_fine(classify(&e)),
        }
    }

    /// Deletes a VPC (its subnets first); one already gone is fine.
    ///
    /// # Errors
    /// The classified EC2 error.
    pub async fn delete_vpc(&self, vpc_id: &str) -> Result<(), AwsError> {
        self.turn().await;
        match self.client.delete_vpc().vpc_id(vpc_id).send().await {
            Ok(_) => Ok(()),
            Err(e) => gone_is_fine(classify(&e)),
        }
    }
}

impl Ec2 {
    /// Deletes the VPCs `vpc_ids` with every subnet in them, subnets first, and returns what it
    /// deleted, as (`subnet` | `vpc`, id); with `dry_run`, only what it would delete.
    ///
    /// # Errors
    /// The first EC2 call that fails (what was deleted before stays deleted).
    pub async fn remove_vpcs(
        &self,
        vpc_ids: &[String],
        dry_run: bool,
    ) -> Result<Vec<(&'static str, String)>, AwsError> {
        let mut removed = Vec::new();
        for vpc_id in vpc_ids {
            for subnet_id in self.subnets_in(vpc_id).await? {
                if !dry_run {
                    self.delete_subnet(&subnet_id).await?;
                }
                removed.push(("subnet", subnet_id));
            }
            if !dry_run {
                self.delete_vpc(vpc_id).await?;
            }
            removed.push(("vpc", vpc_id.clone()));
        }
        Ok(removed)
    }
}

impl Ec2Api for Ec2 {
    /// The region's availability zones (names).
    ///
    /// # Errors
    /// The classified EC2 error.
    async fn availability_zones(&self) -> Result<Vec<String>, AwsError> {
        self.turn().await;
        let out = self
            .client
            .describe_availability_zones()
            .send()
            .await
            .map_err(|e| classify(&e))?;
        Ok(out
            .availability_zones()
            .iter()
            .filter_map(|z| z.zone_name().map(str::to_owned))
            .collect())
    }

    /// Creates the VPC of a request, tagged `Name` = `name`: one attempt, never retried by the
    /// SDK (see the module documentation); after an error that [`may_have_happened`], the VPC
    /// may exist: look it up with [`Ec2Api::vpcs_of_request`].
    ///
    /// # Errors
    /// The classified EC2 error.
    async fn create_vpc(
        &self,
        who: Tagged<'_>,
        cidr: &str,
        name: &str,
    ) -> Result<String, AwsError> {
        self.turn().await;
        let out = self
            .client
            .create_vpc()
            .cidr_block(cidr)
            .tag_specifications(self.tags(ResourceType::Vpc, who, &[("Name", name)]))
            .customize()
            .config_override(
                aws_sdk_ec2::config::Builder::default().retry_config(RetryConfig::disabled()),
            )
            .send()
            .await
            .map_err(|e| classify(&e))?;
        Ok(out
            .vpc()
            .and_then(|v| v.vpc_id())
            .unwrap_or_default()
            .to_owned())
    }

    /// Creates a subnet of a request in `vpc_id` (retried by the SDK: a retry after a lost
    /// answer fails with [`SUBNET_CONFLICT`]; the subnet is then found by [`Ec2Api::subnet_of`]).
    ///
    /// # Errors
    /// The classified EC2 error.
    async fn create_subnet(
        &self,
        who: Tagged<'_>,
        vpc_id: &str,
        cidr: &str,
        az: &str,
        name: Option<&str>,
    ) -> Result<String, AwsError> {
        let mut extra = vec![("Name", name.unwrap_or(who.request_id))];
        if let Some(name) = name {
            extra.push(("SubnetName", name));
        }
        self.turn().await;
        let out = self
            .client
            .create_subnet()
            .vpc_id(vpc_id)
            .cidr_block(cidr)
            .availability_zone(az)
            .tag_specifications(self.tags(ResourceType::Subnet, who, &extra))
            .send()
            .await
            .map_err(|e| classify(&e))?;
        Ok(out
            .subnet()
            .and_then(|s| s.subnet_id())
            .unwrap_or_default()
            .to_owned())
    }

    /// The VPCs of one request: tagged with its id and its incarnation (normally none or one).
    ///
    /// # Errors
    /// The classified EC2 error.
    async fn vpcs_of_request(&self, who: Tagged<'_>) -> Result<Vec<String>, AwsError> {
        self.find_vpcs(self.of_this_deployment(who.filters())).await
    }

    /// The subnet of `vpc_id` with exactly `cidr` and tagged as the request's (id and
    /// incarnation), if there is one: created by an earlier attempt or delivery.
    ///
    /// # Errors
    /// The classified EC2 error.
    async fn subnet_of(
        &self,
        who: Tagged<'_>,
        vpc_id: &str,
        cidr: &str,
    ) -> Result<Option<String>, AwsError> {
        let mut filters = vec![filter("vpc-id", vpc_id), filter("cidr-block", cidr)];
        filters.extend(who.filters());
        let found = self.find_subnets(self.of_this_deployment(filters)).await?;
        Ok(found.into_iter().next())
    }

    async fn delete_vpcs(&self, vpc_ids: &[String]) -> Result<(), AwsError> {
        self.remove_vpcs(vpc_ids, false).await.map(drop)
    }
}

fn gone_is_fine(err: AwsError) -> Result<(), AwsError> {
    if err.code.ends_with(".NotFound") {
        Ok(())
    } else {
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use fleet::ErrorClass;

    use super::*;

    #[test]
    fn a_requests_resources_are_found_by_id_and_incarnation() {
        let names = |who: Tagged<'_>| -> Vec<(String, Vec<String>)> {
            who.filters()
                .iter()
                .map(|f| (f.name().unwrap_or("").to_owned(), f.values().to_vec()))
                .collect()
        };
        let now = Tagged {
            request_id: "o-k",
            incarnation: Some("m-2"),
        };
        assert_eq!(
            names(now),
            [
                ("tag:RequestId".to_owned(), vec!["o-k".to_owned()]),
                ("tag:RequestIncarnation".to_owned(), vec!["m-2".to_owned()]),
            ]
        );
        let older = Tagged {
            request_id: "o-k",
            incarnation: None,
        };
        assert_eq!(
            names(older),
            [("tag:RequestId".to_owned(), vec!["o-k".to_owned()])]
        );
    }

    fn error(class: ErrorClass, code: &str) -> AwsError {
        AwsError {
            class,
            code: code.to_owned(),
            message: String::new(),
        }
    }

    #[test]
    fn a_lost_answer_or_a_5xx_may_hide_a_create_a_throttle_or_a_refusal_does_not() {
        for code in [
            "timeout",
            "dispatch",
            "response",
            "InternalError",
            "Unavailable",
        ] {
            assert!(
                may_have_happened(&error(ErrorClass::Retryable, code)),
                "{code}"
            );
        }
        for code in ["RequestLimitExceeded", "Throttling"] {
            assert!(
                !may_have_happened(&error(ErrorClass::Retryable, code)),
                "{code}"
            );
        }
        for code in [SUBNET_CONFLICT, "VpcLimitExceeded", "InvalidParameterValue"] {
            assert!(
                !may_have_happened(&error(ErrorClass::Permanent, code)),
                "{code}"
            );
        }
    }
}
