//! Stopped FIFO groups in DynamoDB (feature `dynamodb`): the [`GroupStore`] the engine uses
//! when `FLEET_GROUP_TABLE` is set (see `engine/groups.rs` for the rule).
//!
//! One item per stopped group, key `group_key` = `<queue name>#<group id>`: `head` (the
//! original id of the message that must go first; absent while the group drains),
//! `parked_ids` (the original ids of its messages in the DLQ, a string set), `updated_at` (ms). `fleetctl dlq groups` lists them and
//! `fleetctl dlq release` deletes one.

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};

use crate::aws_error::{classify, AwsError};
use crate::engine::groups::{BoxFuture, GroupStop, GroupStore};
use crate::util::now_ms;

/// The table's partition key.
pub const KEY: &str = "group_key";

/// Stopped groups in a DynamoDB table.
#[derive(Debug, Clone)]
pub struct DynamoGroupStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoGroupStore {
    /// The store in `table`.
    pub fn new(client: aws_sdk_dynamodb::Client, table: String) -> Self {
        Self { client, table }
    }
}

/// A stop as stored.
pub fn stop_of(item: &std::collections::HashMap<String, AttributeValue>) -> GroupStop {
    GroupStop {
        head: item.get("head").and_then(|v| v.as_s().ok()).cloned(),
        parked: item
            .get(PARKED)
            .and_then(|v| v.as_ss().ok())
            .map_or(0, |ids| ids.len() as u64),
    }
}

/// The attribute holding the original ids of the group's messages in the DLQ (a string set:
/// adding an id twice, or removing it twice, changes nothing).
pub const PARKED: &str = "parked_ids";

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn ids(id: &str) -> AttributeValue {
    AttributeValue::Ss(vec![id.to_owned()])
}

impl GroupStore for DynamoGroupStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<GroupStop>, AwsError>> {
        Box::pin(async move {
            let out = self
                .client
                .get_item()
                .table_name(&self.table)
                .key(KEY, AttributeValue::S(key.to_owned()))
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| classify(&e))?;
            Ok(out.item.as_ref().map(stop_of))
        })
    }

    fn stop<'a>(&'a self, key: &'a str, head: &'a str) -> BoxFuture<'a, Result<(), AwsError>> {
        Box::pin(async move {
            self.client
                .update_item()
                .table_name(&self.table)
                .key(KEY, AttributeValue::S(key.to_owned()))
                .update_expression("SET head = :head, updated_at = :now ADD #parked :id")
                .expression_attribute_names("#parked", PARKED)
                .expression_attribute_values(":head", AttributeValue::S(head.to_owned()))
                .expression_attribute_values(":now", n(now_ms() as i64))
                .expression_attribute_values(":id", ids(head))
                .send()
                .await
                .map_err(|e| classify(&e))?;
            Ok(())
        })
    }

    fn park<'a>(&'a self, key: &'a str, id: &'a str) -> BoxFuture<'a, Result<bool, AwsError>> {
        Box::pin(async move {
            let parked = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(KEY, AttributeValue::S(key.to_owned()))
                .update_expression("SET updated_at = :now ADD #parked :id")
                // Released meanwhile: no phantom stop is made.
                .condition_expression("attribute_exists(group_key)")
                .expression_attribute_names("#parked", PARKED)
                .expression_attribute_values(":now", n(now_ms() as i64))
                .expression_attribute_values(":id", ids(id))
                .send()
                .await;
            match parked {
                Ok(_) => Ok(true),
                Err(e) if is_condition_failure(&e) => Ok(false),
                Err(e) => Err(classify(&e)),
            }
        })
    }

    fn applied<'a>(
        &'a self,
        key: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<GroupStop>, AwsError>> {
        Box::pin(async move {
            let updated = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(KEY, AttributeValue::S(key.to_owned()))
                .update_expression("SET updated_at = :now DELETE #parked :id")
                .condition_expression("attribute_exists(group_key)")
                .expression_attribute_names("#parked", PARKED)
                .expression_attribute_values(":now", n(now_ms() as i64))
                .expression_attribute_values(":id", ids(id))
                .return_values(ReturnValue::AllNew)
                .send()
                .await;
            let item = match updated {
                Ok(out) => out.attributes.unwrap_or_default(),
                Err(e) if is_condition_failure(&e) => return Ok(None),
                Err(e) => return Err(classify(&e)),
            };
            let mut stop = stop_of(&item);
            if stop.head.as_deref() == Some(id) {
                // The head is out: the group drains.
                let removed = self
                    .client
                    .update_item()
                    .table_name(&self.table)
                    .key(KEY, AttributeValue::S(key.to_owned()))
                    .update_expression("REMOVE head")
                    .condition_expression("head = :id")
                    .expression_attribute_values(":id", AttributeValue::S(id.to_owned()))
                    .send()
                    .await;
                match removed {
                    Ok(_) => {}
                    // Another head meanwhile: it stays.
                    Err(e) if is_condition_failure(&e) => return self.get(key).await,
                    Err(e) => return Err(classify(&e)),
                }
                stop.head = None;
            }
            if stop.parked > 0 || stop.head.is_some() {
                return Ok(Some(stop));
            }
            let deleted = self
                .client
                .delete_item()
                .table_name(&self.table)
                .key(KEY, AttributeValue::S(key.to_owned()))
                // Not if a message was parked (or the group stopped again) meanwhile.
                .condition_expression(
                    "attribute_not_exists(#parked) AND attribute_not_exists(head)",
                )
                .expression_attribute_names("#parked", PARKED)
                .send()
                .await;
            match deleted {
                Ok(_) => Ok(None),
                Err(e) if is_condition_failure(&e) => self.get(key).await,
                Err(e) => Err(classify(&e)),
            }
        })
    }
}

fn is_condition_failure<E, R>(err: &aws_sdk_dynamodb::error::SdkError<E, R>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    err.as_service_error()
        .and_then(|e| e.code())
        .is_some_and(|c| c == "ConditionalCheckFailedException")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_stop_reads_back_and_a_draining_one_has_no_head() {
        let item = std::collections::HashMap::from([
            ("group_key".to_owned(), AttributeValue::S("q#g".into())),
            ("head".to_owned(), AttributeValue::S("m1".into())),
            (
                PARKED.to_owned(),
                AttributeValue::Ss(vec!["m1".into(), "m2".into(), "m3".into()]),
            ),
        ]);
        assert_eq!(
            stop_of(&item),
            GroupStop {
                head: Some("m1".into()),
                parked: 3
            }
        );
        let draining = std::collections::HashMap::from([("updated_at".to_owned(), n(1))]);
        assert_eq!(
            stop_of(&draining),
            GroupStop {
                head: None,
                parked: 0
            }
        );
    }
}
