//! Leases on DynamoDB records: at most one delivery at a time works on a notification or on a
//! cycle's fan-out.
//!
//! A record being worked on carries `lease_owner` (a token drawn by each delivery attempt, so
//! two deliveries of one SQS message never share it) and `lease_until` (ms since the epoch).
//! A delivery takes the lease with a conditional update that succeeds only when nobody holds an
//! unexpired one ([`FREE_OR_MINE`]); every later write is conditional on `lease_owner` still
//! being its token. A delivery that crashes keeps its lease until `lease_until`: then the next
//! delivery takes over. Leases compare the hosts' clocks: their skew must stay well below a
//! lease.
//!
//! All of this rests on DynamoDB applying a conditional write atomically. The local stack's
//! DynamoDB (moto, `PROVIDER_OVERRIDE_DYNAMODB=moto` in localstack/env.sh) does not: two claims
//! of one item that reach it in the same few milliseconds can both pass their condition. The
//! tests therefore let the second delivery claim a little after the first, still well inside
//! its lease.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::AttributeValue;
use fleet::classify;
use fleet::util::now_ms;
use tracing::warn;

/// A DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

/// The condition under which a delivery may take a lease: nobody holds one, it has expired, or
/// it is the delivery's own (`:now`, `:me`).
pub const FREE_OR_MINE: &str =
    "(attribute_not_exists(lease_until) OR lease_until < :now OR lease_owner = :me)";

/// The Outcome kind of a delivery that found the record leased by another live delivery.
pub const CLAIMED_ELSEWHERE: &str = "claimed-elsewhere";

/// A fresh owner token for one delivery attempt: the process id and 64 random bits.
pub fn new_owner() -> String {
    format!("{}-{:016x}", std::process::id(), fastrand::u64(..))
}

/// When a lease taken now for `lease` ends, ms since the epoch.
pub fn until(now: u64, lease: Duration) -> u64 {
    now.saturating_add(lease.as_millis() as u64)
}

/// Whether a lease that ends at `until` still leaves `needed` at `now`: the work that follows
/// its taking must end before the lease does, or another delivery may take over meanwhile.
pub fn leaves(until: u64, now: u64, needed: Duration) -> bool {
    until.saturating_sub(now) >= needed.as_millis() as u64
}

/// A string attribute of an item.
pub fn string<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)?.as_s().ok().map(String::as_str)
}

/// Who holds the lease on `item`, and until when, for messages.
pub fn holder(item: &Item) -> String {
    let owner = string(item, "lease_owner").unwrap_or("nobody");
    let left = item
        .get("lease_until")
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |until| until.saturating_sub(now_ms()));
    format!("held by {owner} for {left} ms more")
}

/// Whether an update was refused by its condition.
pub fn failed_condition<R>(err: &SdkError<UpdateItemError, R>) -> bool {
    err.as_service_error()
        .is_some_and(UpdateItemError::is_conditional_check_failed_exception)
}

/// The item as it was when a conditional update was refused (its
/// `ReturnValuesOnConditionCheckFailure`).
pub fn refused_item<R>(err: &SdkError<UpdateItemError, R>) -> Option<Item> {
    match err.as_service_error()? {
        UpdateItemError::ConditionalCheckFailedException(e) => e.item().cloned(),
        _ => None,
    }
}

/// Gives up `owner`'s lease on a record so that the next delivery need not wait for it to
/// expire (after a failure that left nothing half done). A failure is only logged: the lease
/// then expires by itself.
pub async fn release(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    key: (&str, AttributeValue),
    owner: &str,
) {
    let released = dynamodb
        .update_item()
        .table_name(table)
        .key(key.0, key.1)
        .update_expression("REMOVE lease_owner, lease_until")
        .condition_expression("lease_owner = :me")
        .expression_attribute_values(":me", AttributeValue::S(owner.to_owned()))
        .send()
        .await;
    if let Err(err) = released {
        if !failed_condition(&err) {
            warn!(error = %classify(&err), "cannot release the lease; it expires by itself");
        }
    }
}

/// An item of string attributes (for unit tests).
#[cfg(test)]
pub fn test_item(fields: &[(&str, &str)]) -> Item {
    fields
        .iter()
        .map(|(k, v)| ((*k).to_owned(), AttributeValue::S((*v).to_owned())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_differ_per_attempt() {
        let a = new_owner();
        let b = new_owner();
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("{}-", std::process::id())));
    }

    #[test]
    fn a_lease_leaves_time_until_it_ends() {
        let end = until(1_000, Duration::from_secs(15));
        assert_eq!(end, 16_000);
        assert!(leaves(end, 8_000, Duration::from_millis(7_500)));
        assert!(!leaves(end, 9_000, Duration::from_millis(7_500)));
        assert!(leaves(end, 16_000, Duration::ZERO));
    }

    #[test]
    fn the_holder_is_named() {
        let item = Item::from([
            ("lease_owner".to_owned(), AttributeValue::S("42-ab".into())),
            (
                "lease_until".to_owned(),
                AttributeValue::N((now_ms() + 60_000).to_string()),
            ),
        ]);
        let text = holder(&item);
        assert!(text.starts_with("held by 42-ab for "), "{text}");
        assert_eq!(holder(&Item::new()), "held by nobody for 0 ms more");
    }
}
