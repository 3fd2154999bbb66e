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
//!
//! The handler is generic over a narrow [`store::OrderStore`] (one idempotent conditional put);
//! [`store::DynamoStore`] is the table.

pub mod order;
pub mod store;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use clap::Parser;
use fleet::kind;
use fleet::worker::WorkerArgs;
use fleet::{Handler, Message, Metrics, Outcome};

use crate::order::parse_batch;
use crate::store::{Insert, NewOrder, OrderStore};

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

/// The orders handler, over any [`OrderStore`].
#[derive(Debug)]
pub struct OrdersHandler<S> {
    store: S,
    stored: Arc<AtomicU64>,
}

impl<S: OrderStore> OrdersHandler<S> {
    /// A handler writing to `store`, counting `orders_stored`.
    pub fn new(store: S, metrics: &Metrics) -> Self {
        Self {
            store,
            stored: metrics.counter("orders_stored"),
        }
    }
}

impl<S: OrderStore> Handler for OrdersHandler<S> {
    async fn handle(&self, message: &Message) -> Outcome {
        let orders = match parse_batch(&message.body) {
            Ok(orders) => orders,
            Err(reason) => return Outcome::Permanent(reason),
        };
        let owner = owner_of(message);
        if owner.contains('#') {
            return Outcome::permanent(
                kind::INVALID_MESSAGE,
                format!("owner id {owner:?} contains '#', the key's separator"),
            );
        }
        let received_at_ms = message.envelope().received_at_or_now();
        let (mut new, mut conflicts) = (0, Vec::new());
        for order in &orders {
            let hash = order.payload_hash();
            let insert = NewOrder {
                owner,
                order,
                payload_hash: &hash,
                received_at_ms,
                message_id: &message.message_id,
            };
            match self.store.insert(insert).await {
                Ok(Insert::Created) => new += 1,
                Ok(Insert::Exists { payload_hash })
                    if payload_hash.as_deref() == Some(hash.as_str()) => {}
                Ok(Insert::Exists { .. }) => conflicts.push(order.record_id.as_str()),
                Err(err) => return err.into_outcome(),
            }
        }
        Metrics::add(&self.stored, new);
        if !conflicts.is_empty() {
            return Outcome::permanent(
                kind::CONFLICT,
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
    use std::collections::HashMap;
    use std::sync::Mutex;

    use fleet::{AwsError, ErrorClass};

    use super::*;

    /// An in-memory table (key → payload hash) with an optional injected failure.
    #[derive(Default)]
    struct FakeStore {
        rows: Mutex<HashMap<String, String>>,
        writes: Mutex<u32>,
        fail: Mutex<Option<AwsError>>,
    }

    impl OrderStore for FakeStore {
        async fn insert(&self, new: NewOrder<'_>) -> Result<Insert, AwsError> {
            if let Some(err) = self.fail.lock().unwrap().clone() {
                return Err(err);
            }
            let mut rows = self.rows.lock().unwrap();
            let key = store::key(new.owner, &new.order.record_id);
            if let Some(existing) = rows.get(&key) {
                return Ok(Insert::Exists {
                    payload_hash: Some(existing.clone()),
                });
            }
            *self.writes.lock().unwrap() += 1;
            rows.insert(key, new.payload_hash.to_owned());
            Ok(Insert::Created)
        }
    }

    fn handler() -> OrdersHandler<FakeStore> {
        OrdersHandler::new(FakeStore::default(), &Metrics::new())
    }

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

    fn batch(owner: &str, body: &str) -> Message {
        Message {
            message_id: "m-1".into(),
            body: body.into(),
            sent_at_ms: Some(1_000),
            ..message(&[(ATTR_OWNER_ID, owner)])
        }
    }

    const BODY: &str = r#"[{"record_id":"r1","parameter_1":"a","parameter_2":2.1},{"record_id":"r2","parameter_1":"b","parameter_2":1e-7}]"#;

    fn kind_of(outcome: Outcome) -> String {
        match outcome {
            Outcome::Permanent(reason) => reason.kind.into_owned(),
            other => panic!("expected a permanent failure, got {other:?}"),
        }
    }

    #[test]
    fn the_owner_is_the_gateway_s_then_the_api_key_s_then_none() {
        let both = message(&[(ATTR_OWNER_ID, "sub-1"), (ATTR_API_KEY_ID, "key-1")]);
        assert_eq!(owner_of(&both), "sub-1");
        assert_eq!(owner_of(&message(&[(ATTR_API_KEY_ID, "key-1")])), "key-1");
        assert_eq!(owner_of(&message(&[])), NO_OWNER);
    }

    #[tokio::test]
    async fn a_new_batch_is_stored_and_the_same_again_is_a_duplicate() {
        let handler = handler();
        assert_eq!(handler.handle(&batch("o-1", BODY)).await, Outcome::Done);
        assert_eq!(
            handler.handle(&batch("o-1", BODY)).await,
            Outcome::Duplicate
        );
        // The same records however their numbers are written.
        let respelled = BODY.replace("2.1", "2.10");
        assert_eq!(
            handler.handle(&batch("o-1", &respelled)).await,
            Outcome::Duplicate
        );
        assert_eq!(*handler.store.writes.lock().unwrap(), 2);
        assert_eq!(handler.stored.load(std::sync::atomic::Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn the_same_id_with_other_content_is_a_conflict_after_the_rest_is_stored() {
        let handler = handler();
        let first = r#"[{"record_id":"r1","parameter_1":"a","parameter_2":2.1}]"#;
        assert_eq!(handler.handle(&batch("o-1", first)).await, Outcome::Done);
        let changed = r#"[{"record_id":"r1","parameter_1":"a","parameter_2":2.2},{"record_id":"r2","parameter_1":"b","parameter_2":1}]"#;
        let Outcome::Permanent(reason) = handler.handle(&batch("o-1", changed)).await else {
            panic!("expected a conflict");
        };
        assert_eq!(reason.kind, kind::CONFLICT);
        assert!(reason.message.ends_with(": r1"), "{}", reason.message);
        let rows = handler.store.rows.lock().unwrap();
        assert_eq!(rows.len(), 2, "r2 is stored, r1 left untouched");
        assert_eq!(
            rows["o-1#r1"],
            parse_batch(first).unwrap()[0].payload_hash()
        );
    }

    #[tokio::test]
    async fn another_owner_s_same_id_is_a_separate_row() {
        let handler = handler();
        assert_eq!(handler.handle(&batch("o-1", BODY)).await, Outcome::Done);
        let other = BODY.replace("2.1", "3");
        assert_eq!(handler.handle(&batch("o-2", &other)).await, Outcome::Done);
        let rows = handler.store.rows.lock().unwrap();
        let mut keys: Vec<&String> = rows.keys().collect();
        keys.sort();
        assert_eq!(keys, ["o-1#r1", "o-1#r2", "o-2#r1", "o-2#r2"]);
    }

    #[tokio::test]
    async fn invalid_batches_are_permanent_without_a_write() {
        let handler = handler();
        assert_eq!(
            kind_of(handler.handle(&batch("o-1", "not json")).await),
            kind::INVALID_JSON
        );
        for body in [
            "[]",
            r#"{"record_id":"r1"}"#,
            r#"[{"record_id":"r1","parameter_1":"a","parameter_2":"2"}]"#,
        ] {
            assert_eq!(
                kind_of(handler.handle(&batch("o-1", body)).await),
                kind::INVALID_MESSAGE,
                "{body}"
            );
        }
        assert_eq!(
            kind_of(handler.handle(&batch("o#1", BODY)).await),
            kind::INVALID_MESSAGE,
            "an owner id with the key's separator"
        );
        assert_eq!(*handler.store.writes.lock().unwrap(), 0);
    }

    #[tokio::test]
    async fn store_errors_follow_their_class() {
        let handler = handler();
        *handler.store.fail.lock().unwrap() = Some(AwsError {
            class: ErrorClass::Retryable,
            code: "ProvisionedThroughputExceededException".into(),
            message: "slow down".into(),
        });
        assert_eq!(
            handler.handle(&batch("o-1", BODY)).await,
            Outcome::unavailable("ProvisionedThroughputExceededException", "slow down"),
        );
        *handler.store.fail.lock().unwrap() = Some(AwsError {
            class: ErrorClass::Permanent,
            code: "ValidationException".into(),
            message: "bad".into(),
        });
        assert_eq!(
            kind_of(handler.handle(&batch("o-1", BODY)).await),
            "ValidationException"
        );
        // Once the table answers again, the batch is stored.
        *handler.store.fail.lock().unwrap() = None;
        assert_eq!(handler.handle(&batch("o-1", BODY)).await, Outcome::Done);
    }
}
