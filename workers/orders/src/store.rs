//! Where orders are kept: the narrow trait the handler needs, and its DynamoDB implementation.

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use fleet::{AwsError, Metrics};

use crate::order::Order;
use crate::ORDER_TTL_SECS;

/// The table's partition key: `<owner id>#<record_id>` ([`key`]).
pub const KEY: &str = "owner_record_id";
/// Attribute holding the payload hash on a stored order.
pub const PAYLOAD_HASH: &str = "payload_hash";

/// The partition key of `owner`'s record `record_id` (owner ids never contain `#`).
pub fn key(owner: &str, record_id: &str) -> String {
    format!("{owner}#{record_id}")
}

/// One order to store, with what its row records besides the order itself.
#[derive(Debug, Clone, Copy)]
pub struct NewOrder<'a> {
    /// Whose it is: the caller's owner id. With the record id, the row's key.
    pub owner: &'a str,
    /// The record.
    pub order: &'a Order,
    /// [`Order::payload_hash`].
    pub payload_hash: &'a str,
    /// When the gateway received its batch, ms since the epoch: the order expires
    /// [`ORDER_TTL_SECS`] later, and an order expired by then frees its key.
    pub received_at_ms: u64,
    /// The SQS message id that stored it.
    pub message_id: &'a str,
}

/// The result of an insert-if-absent.
pub use fleet::dynamodb::Insert;

/// Stores an order unless its key (owner and record id) is taken by an order that had not
/// expired when the batch was received.
pub trait OrderStore: Send + Sync + 'static {
    /// One conditional write: creates the row (over an expired one), or reports the live one
    /// untouched.
    fn insert(&self, order: NewOrder<'_>) -> impl Future<Output = Result<Insert, AwsError>> + Send;
}

/// The orders table (partition key [`KEY`], TTL on `expires_at`).
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    writes: Arc<AtomicU64>,
}

impl DynamoStore {
    /// A store over `table`, counting its writes in `metrics` as `dynamodb_writes`.
    pub fn new(client: aws_sdk_dynamodb::Client, table: String, metrics: &Metrics) -> Self {
        Self {
            client,
            table,
            writes: metrics.counter("dynamodb_writes"),
        }
    }
}

impl OrderStore for DynamoStore {
    async fn insert(&self, new: NewOrder<'_>) -> Result<Insert, AwsError> {
        let NewOrder {
            owner,
            order,
            payload_hash,
            received_at_ms,
            message_id,
        } = new;
        let received_at_secs = received_at_ms / 1000;
        Metrics::incr(&self.writes);
        let request = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(KEY, AttributeValue::S(key(owner, &order.record_id)))
            .item("owner_id", AttributeValue::S(owner.to_owned()))
            .item("record_id", AttributeValue::S(order.record_id.clone()))
            .item("parameter_1", AttributeValue::S(order.parameter_1.clone()))
            .item("parameter_2", fleet::dynamodb::number(&order.parameter_2))
            .item(PAYLOAD_HASH, AttributeValue::S(payload_hash.to_owned()))
            .item("received_at", AttributeValue::N(received_at_ms.to_string()))
            .item(
                "expires_at",
                AttributeValue::N((received_at_secs + ORDER_TTL_SECS).to_string()),
            )
            .item("message_id", AttributeValue::S(message_id.to_owned()))
            // Absent, or expired when this batch was received (TTL deletes within days, and
            // never on LocalStack): an expired order frees its `record_id`, as GET shows it.
            .condition_expression("attribute_not_exists(owner_record_id) OR expires_at <= :now")
            .expression_attribute_values(":now", AttributeValue::N(received_at_secs.to_string()));
        fleet::dynamodb::put_if_absent(request, PAYLOAD_HASH).await
    }
}
