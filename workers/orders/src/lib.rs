//! # orders-worker
//!
//! Consumes the orders queue (fed by `POST /orders`: a JSON array of 1..100 records) and stores
//! each record for 24 hours with ONE conditional PutItem keyed by the caller's owner id and the
//! `record_id` (`owner_record_id = "<owner id>#<record_id>"`, like payments: a record id is
//! unique per owner; another owner's same id is their own order, which `GET /orders/{record_id}`
//! of mine never finds; see docs/security.md):
//! - `expires_at` = the gateway's receive time + 24 h (the table's TTL attribute); an order is
//!   expired once the time (s) reaches `expires_at`: `GET` answers 404 from then on, and a batch
//!   received from then on may store the same `record_id` again (the put's condition allows
//!   overwriting an expired item; a redelivery of the first batch, received before, does not);
//! - numbers keep their exact decimal value (`2.1` stays `2.1`, `1e-7` is `0.0000001`): the JSON
//!   number's text becomes a DynamoDB number, never a float;
//! - a redelivered record writes nothing (its payload hash matches); the same `record_id` with
//!   other content is a conflict: the stored order stands, and after the batch's other records
//!   are stored the message goes to the DLQ naming the conflicting ids;
//! - a message that is not a batch goes to the DLQ at once; throttling and 5xx are retried (the
//!   records stored before the failure are duplicates next time).

pub mod order;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use clap::Parser;
use fleet::worker::WorkerArgs;
use fleet::{classify, Handler, Message, Metrics, Outcome};

use crate::order::{parse_batch, Order};

/// The gateway attributes naming the caller (docs/security.md), defined by the engine.
pub use fleet::message::{ATTR_API_KEY_ID, ATTR_OWNER_ID};

/// How long an order is kept.
pub const ORDER_TTL_SECS: u64 = 24 * 3600;
/// Message attribute: when the gateway received the batch, ms since the epoch.
pub use fleet::gateway::ATTR_RECEIVED_AT;
/// The owner of orders whose message names no caller (sent straight to the queue, not through
/// the gateway): an id no API caller has, so no caller reads them.
pub const NO_OWNER: &str = "-";

/// Whose orders a message carries: the gateway's `ownerId`; else `apiKeyId` (queued before the
/// gateway sent owners, when the API key id was the identity); else [`NO_OWNER`].
pub fn owner_of(message: &Message) -> &str {
    message.owner().unwrap_or(NO_OWNER)
}

/// Command line and environment of the `orders-worker` binary.
#[derive(Debug, Parser)]
#[command(
    name = "orders-worker",
    version,
    about = "Stores auction orders for 24 hours"
)]
pub struct Config {
    /// The orders table (partition key `owner_record_id`, TTL on `expires_at`).
    #[arg(long, env = "ORDERS_TABLE", value_name = "TABLE")]
    pub table: String,

    /// What every worker has: the engine, logs, threads.
    #[command(flatten)]
    pub worker: WorkerArgs,
}

/// The orders handler.
#[derive(Debug)]
pub struct OrdersHandler {
    dynamodb: aws_sdk_dynamodb::Client,
    table: String,
    stored: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
}

enum Stored {
    New,
    Again,
    Conflict,
}

impl OrdersHandler {
    /// A handler over `table`, counting `orders_stored` and `dynamodb_writes`.
    pub fn new(dynamodb: aws_sdk_dynamodb::Client, table: String, metrics: &Metrics) -> Self {
        Self {
            dynamodb,
            table,
            stored: metrics.counter("orders_stored"),
            writes: metrics.counter("dynamodb_writes"),
        }
    }

    async fn store(
        &self,
        owner: &str,
        order: &Order,
        received_at: u64,
        message_id: &str,
    ) -> Result<Stored, Outcome> {
        let hash = order.payload_hash();
        Metrics::incr(&self.writes);
        let result = self
            .dynamodb
            .put_item()
            .table_name(&self.table)
            .item(
                "owner_record_id",
                AttributeValue::S(format!("{owner}#{}", order.record_id)),
            )
            .item("owner_id", AttributeValue::S(owner.to_owned()))
            .item("record_id", AttributeValue::S(order.record_id.clone()))
            .item("parameter_1", AttributeValue::S(order.parameter_1.clone()))
            .item("parameter_2", fleet::dynamodb::number(&order.parameter_2))
            .item("payload_hash", AttributeValue::S(hash.clone()))
            .item("received_at", AttributeValue::N(received_at.to_string()))
            .item(
                "expires_at",
                AttributeValue::N((received_at / 1000 + ORDER_TTL_SECS).to_string()),
            )
            .item("message_id", AttributeValue::S(message_id.to_owned()))
            // Absent, or expired when this batch was received (TTL deletes within days, and
            // never on LocalStack): an expired order frees its `record_id`, as GET shows it.
            .condition_expression("attribute_not_exists(owner_record_id) OR expires_at <= :now")
            .expression_attribute_values(
                ":now",
                AttributeValue::N((received_at / 1000).to_string()),
            )
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(Stored::New),
            Err(err) => match err.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(failed)) => {
                    let same = failed
                        .item()
                        .and_then(|i| i.get("payload_hash"))
                        .and_then(|v| v.as_s().ok())
                        .is_some_and(|h| *h == hash);
                    Ok(if same {
                        Stored::Again
                    } else {
                        Stored::Conflict
                    })
                }
                _ => Err(classify(&err).into_outcome()),
            },
        }
    }
}

impl Handler for OrdersHandler {
    async fn handle(&self, message: &Message) -> Outcome {
        let orders = match parse_batch(&message.body) {
            Ok(orders) => orders,
            Err(why) => return Outcome::permanent("invalid-orders", why),
        };
        let owner = owner_of(message);
        if owner.contains('#') {
            return Outcome::permanent(
                "invalid-orders",
                format!("owner id {owner:?} contains '#', the key's separator"),
            );
        }
        let received_at = message.envelope().received_at_or_now();
        let (mut new, mut conflicts) = (0, Vec::new());
        for order in &orders {
            match self
                .store(owner, order, received_at, &message.message_id)
                .await
            {
                Ok(Stored::New) => new += 1,
                Ok(Stored::Again) => {}
                Ok(Stored::Conflict) => conflicts.push(order.record_id.as_str()),
                Err(outcome) => return outcome,
            }
        }
        self.stored
            .fetch_add(new, std::sync::atomic::Ordering::Relaxed);
        if !conflicts.is_empty() {
            return Outcome::permanent(
                "conflict",
                format!(
                    "records of owner {owner} stored earlier with other content (left untouched): {}",
                    conflicts.join(", ")
                ),
            );
        }
        if new == 0 {
            Outcome::Duplicate
        } else {
            Outcome::Done
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn message(attrs: &[(&str, &str)]) -> Message {
        let attributes = attrs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), fleet::dlq::string(v)))
            .collect();
        Message {
            attributes,
            ..Message::default()
        }
    }

    #[test]
    fn the_owner_is_the_gateway_s_then_the_api_key_s_then_none() {
        let both = message(&[(ATTR_OWNER_ID, "sub-1"), (ATTR_API_KEY_ID, "key-1")]);
        assert_eq!(owner_of(&both), "sub-1");
        assert_eq!(owner_of(&message(&[(ATTR_API_KEY_ID, "key-1")])), "key-1");
        assert_eq!(owner_of(&message(&[])), NO_OWNER);
    }
}
