//! # payments-worker
//!
//! Consumes the payments queue (fed by `PUT /payments/{paymentId}` through API Gateway) and
//! stores each payment in the payments table with one conditional PutItem that records a hash
//! of the payload:
//! - a new payment is written once ([`Outcome::Done`]);
//! - the same payment again (redelivery, client retry) writes nothing ([`Outcome::Duplicate`]);
//! - the same key with another payload is a conflict: the row is left untouched and the
//!   message goes to the DLQ with the reason ([`Outcome::Permanent`]);
//! - a message that is not a valid payment goes to the DLQ at once;
//! - DynamoDB throttling, timeouts and 5xx are retried with backoff.
//!
//! ## The key: a payment id is unique per owner
//!
//! A payment belongs to the caller that sent it: its owner id, the `ownerId` attribute the
//! gateway sets from its one definition (the JWT's `sub` with Cognito, else the API key id;
//! docs/security.md). The table's partition key is `ownerPaymentId = "<owner id>#<paymentId>"`,
//! with no sort key, because:
//! - `GET /payments/{paymentId}` is a `GetItem` on the full key, built by the gateway from the
//!   caller's owner id: exact (never "the first row a Query finds"), and another owner's payment
//!   is not found, exactly like an unknown id (404, no hint that it exists);
//! - another owner's `PUT` of the same id writes another key: their own payment, which never
//!   touches, conflicts with or shows mine;
//! - the same owner's id with another payload, another `userId` included, hits the same key:
//!   the conditional put fails and the hashes differ, a conflict for the DLQ, never a second
//!   row. (The former key `(paymentId, userId)` let the same id exist once per user, and a
//!   read by id returned whichever row a Query found first.)
//! - one attribute spreads payments over partitions like the payment ids themselves do; a
//!   partition key of the owner alone would put a whole client on one partition.
//!
//! Owner ids never contain `#` (API key ids are alphanumeric, Cognito subs UUIDs; the worker
//! refuses one that does), so no two (owner, id) pairs share a key.

pub mod payment;
pub mod store;

use clap::Parser;
use fleet::kind;
use fleet::worker::WorkerArgs;
use fleet::{Handler, Message, Outcome};

use crate::payment::{Payment, ATTR_PAYMENT_ID, NO_OWNER};
use crate::store::{Insert, PaymentStore, Provenance};

/// Command line and environment of the `payments-worker` binary.
#[derive(Debug, Parser)]
#[command(
    name = "payments-worker",
    version,
    about = "Stores payments from the payments queue in DynamoDB"
)]
pub struct Config {
    /// Name of the payments table (partition key `ownerPaymentId` = `<owner id>#<paymentId>`).
    #[arg(long, env = "PAYMENTS_TABLE", value_name = "PAYMENTS_TABLE")]
    pub table: String,

    /// What every worker has: the engine, logs, threads.
    #[command(flatten)]
    pub worker: WorkerArgs,
}

/// Whose payment a message is: the gateway's `ownerId` attribute; else `apiKeyId` (a message the
/// gateway queued before it sent owners, when the API key id was the only identity); else
/// [`NO_OWNER`] (a message sent straight to the queue, not through the gateway).
pub fn owner_of(message: &Message) -> &str {
    message.owner().unwrap_or(NO_OWNER)
}

/// The payments handler, over any [`PaymentStore`].
#[derive(Debug)]
pub struct PaymentsHandler<S> {
    store: S,
}

impl<S: PaymentStore> PaymentsHandler<S> {
    /// A handler writing to `store`.
    pub fn new(store: S) -> Self {
        Self { store }
    }
}

impl<S: PaymentStore> Handler for PaymentsHandler<S> {
    async fn handle(&self, message: &Message) -> Outcome {
        let Some(payment_id) = message.attribute(ATTR_PAYMENT_ID) else {
            return Outcome::permanent(
                kind::MISSING_ATTRIBUTE,
                format!("message attribute {ATTR_PAYMENT_ID} is missing"),
            );
        };
        let payment = match Payment::parse_owned(owner_of(message), payment_id, &message.body) {
            Ok(payment) => payment,
            Err(err) => return Outcome::permanent(err.kind(), err.to_string()),
        };
        let hash = payment.payload_hash();
        let envelope = message.envelope();
        let provenance = Provenance {
            request_id: envelope.request_id.map(str::to_owned),
            api_key_id: envelope.api_key_id.map(str::to_owned),
            received_at_ms: envelope.received_at_ms,
            message_id: message.message_id.clone(),
        };
        match self.store.insert(&payment, &hash, &provenance).await {
            Ok(Insert::Created) => Outcome::Done,
            Ok(Insert::Exists { payload_hash }) if payload_hash.as_deref() == Some(hash.as_str()) => {
                Outcome::Duplicate
            }
            Ok(Insert::Exists { payload_hash }) => Outcome::permanent(
                kind::CONFLICT,
                format!(
                    "payment {} of owner {} is already stored with another payload (this one for user {}; stored hash {}, this one {hash})",
                    payment.payment_id,
                    payment.owner,
                    payment.user_id,
                    payload_hash.as_deref().unwrap_or("none"),
                ),
            ),
            Err(err) => err.into_outcome(),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::payment::{ATTR_API_KEY_ID, ATTR_OWNER_ID};
    use std::collections::HashMap;
    use std::sync::Mutex;

    use aws_sdk_sqs::types::MessageAttributeValue;
    use fleet::{AwsError, ErrorClass};

    use super::*;

    /// An in-memory store with an optional injected failure.
    #[derive(Default)]
    struct FakeStore {
        rows: Mutex<HashMap<String, String>>,
        writes: Mutex<u32>,
        fail: Mutex<Option<AwsError>>,
    }

    impl PaymentStore for FakeStore {
        async fn insert(
            &self,
            p: &Payment,
            hash: &str,
            _: &Provenance,
        ) -> Result<Insert, AwsError> {
            if let Some(err) = self.fail.lock().unwrap().clone() {
                return Err(err);
            }
            let mut rows = self.rows.lock().unwrap();
            let key = p.key();
            if let Some(existing) = rows.get(&key) {
                return Ok(Insert::Exists {
                    payload_hash: Some(existing.clone()),
                });
            }
            *self.writes.lock().unwrap() += 1;
            rows.insert(key, hash.to_owned());
            Ok(Insert::Created)
        }
    }

    fn message(payment_id: Option<&str>, body: &str) -> Message {
        owned_message(&[], payment_id, body)
    }

    fn owned_message(owner: &[(&str, &str)], payment_id: Option<&str>, body: &str) -> Message {
        use fleet::dlq::string;
        let mut attributes: HashMap<String, MessageAttributeValue> = owner
            .iter()
            .map(|(k, v)| ((*k).to_owned(), string(v)))
            .collect();
        if let Some(id) = payment_id {
            attributes.insert(ATTR_PAYMENT_ID.to_owned(), string(id));
        }
        Message {
            message_id: "m-1".into(),
            receipt_handle: "r".into(),
            body: body.into(),
            receive_count: 1,
            sent_at_ms: Some(1),
            attributes,
            ..Message::default()
        }
    }

    const BODY: &str = r#"{"userId":"u-1","amount":12.5,"currency":"EUR"}"#;

    #[tokio::test]
    async fn new_then_same_then_different_payload() {
        let handler = PaymentsHandler::new(FakeStore::default());
        assert_eq!(
            handler.handle(&message(Some("p-1"), BODY)).await,
            Outcome::Done
        );
        assert_eq!(
            handler.handle(&message(Some("p-1"), BODY)).await,
            Outcome::Duplicate
        );
        let changed = BODY.replace("12.5", "13");
        match handler.handle(&message(Some("p-1"), &changed)).await {
            Outcome::Permanent(reason) => assert_eq!(reason.kind, kind::CONFLICT),
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(*handler.store.writes.lock().unwrap(), 1);
    }

    #[tokio::test]
    async fn a_payment_id_is_unique_per_owner() {
        let handler = PaymentsHandler::new(FakeStore::default());
        let mine = [(ATTR_OWNER_ID, "owner-a"), (ATTR_API_KEY_ID, "key-1")];
        let theirs = [(ATTR_OWNER_ID, "owner-b"), (ATTR_API_KEY_ID, "key-1")];
        assert_eq!(
            handler
                .handle(&owned_message(&mine, Some("p-1"), BODY))
                .await,
            Outcome::Done
        );
        // Another owner (behind the same API key): their own payment, no conflict.
        let other_user = BODY.replace("u-1", "u-2");
        assert_eq!(
            handler
                .handle(&owned_message(&theirs, Some("p-1"), &other_user))
                .await,
            Outcome::Done
        );
        // The same owner, another user: a conflict, not a second row.
        match handler
            .handle(&owned_message(&mine, Some("p-1"), &other_user))
            .await
        {
            Outcome::Permanent(reason) => assert_eq!(reason.kind, kind::CONFLICT),
            other => panic!("expected a conflict, got {other:?}"),
        }
        let rows = handler.store.rows.lock().unwrap();
        let mut keys: Vec<&String> = rows.keys().collect();
        keys.sort();
        assert_eq!(keys, ["owner-a#p-1", "owner-b#p-1"]);
    }

    #[test]
    fn the_owner_is_the_gateway_s_then_the_api_key_s_then_none() {
        let owner = |attrs: &[(&str, &str)]| owner_of(&owned_message(attrs, None, "")).to_owned();
        assert_eq!(
            owner(&[(ATTR_OWNER_ID, "sub-1"), (ATTR_API_KEY_ID, "key-1")]),
            "sub-1"
        );
        assert_eq!(owner(&[(ATTR_API_KEY_ID, "key-1")]), "key-1");
        assert_eq!(
            owner(&[(ATTR_OWNER_ID, ""), (ATTR_API_KEY_ID, "key-1")]),
            "key-1"
        );
        assert_eq!(owner(&[]), NO_OWNER);
    }

    #[tokio::test]
    async fn malformed_messages_are_permanent_without_a_write() {
        let handler = PaymentsHandler::new(FakeStore::default());
        for (id, body, kind) in [
            (None, BODY, kind::MISSING_ATTRIBUTE),
            (Some("p-1"), "{not json", kind::INVALID_JSON),
            (
                Some("p-1"),
                r#"{"userId":"u","amount":-1,"currency":"EUR"}"#,
                kind::INVALID_MESSAGE,
            ),
        ] {
            match handler.handle(&message(id, body)).await {
                Outcome::Permanent(reason) => assert_eq!(reason.kind, kind),
                other => panic!("{body}: expected permanent, got {other:?}"),
            }
        }
        assert_eq!(*handler.store.writes.lock().unwrap(), 0);
    }

    #[tokio::test]
    async fn store_errors_follow_their_class() {
        let handler = PaymentsHandler::new(FakeStore::default());
        *handler.store.fail.lock().unwrap() = Some(AwsError {
            class: ErrorClass::Retryable,
            code: "ProvisionedThroughputExceededException".into(),
            message: "slow down".into(),
        });
        assert!(matches!(
            handler.handle(&message(Some("p"), BODY)).await,
            Outcome::Retry(_)
        ));
        *handler.store.fail.lock().unwrap() = Some(AwsError {
            class: ErrorClass::Permanent,
            code: "ValidationException".into(),
            message: "bad".into(),
        });
        assert!(matches!(
            handler.handle(&message(Some("p"), BODY)).await,
            Outcome::Permanent(_)
        ));
    }
}
