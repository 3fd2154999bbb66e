//! Where payments are kept: the narrow trait the handler needs, and its DynamoDB implementation.

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use fleet::util::now_ms;
use fleet::{AwsError, Metrics};

use crate::payment::Payment;

/// Attribute holding the payload hash on a stored payment.
pub const PAYLOAD_HASH: &str = "payloadHash";
/// The table's partition key: `<owner id>#<payment id>` ([`Payment::key`]).
pub const KEY: &str = "ownerPaymentId";

/// What a payment row records besides the payment itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provenance {
    /// API Gateway's request id.
    pub request_id: Option<String>,
    /// The caller's API key id.
    pub api_key_id: Option<String>,
    /// When the gateway received it, ms since the epoch.
    pub received_at_ms: Option<u64>,
    /// The SQS message id that stored it.
    pub message_id: String,
}

/// The result of an insert-if-absent.
pub use fleet::dynamodb::Insert;

/// Stores a payment unless its key (owner and payment id) is taken.
pub trait PaymentStore: Send + Sync + 'static {
    /// One conditional write: creates the row, or reports the existing one untouched.
    fn insert(
        &self,
        payment: &Payment,
        payload_hash: &str,
        provenance: &Provenance,
    ) -> impl Future<Output = Result<Insert, AwsError>> + Send;
}

/// The payments table (partition key [`KEY`] = `<owner id>#<payment id>`, no sort key).
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

impl PaymentStore for DynamoStore {
    async fn insert(
        &self,
        payment: &Payment,
        payload_hash: &str,
        provenance: &Provenance,
    ) -> Result<Insert, AwsError> {
        let s = |v: &str| AttributeValue::S(v.to_owned());
        let n = |v: u64| AttributeValue::N(v.to_string());
        let mut request = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(KEY, s(&payment.key()))
            .item("ownerId", s(&payment.owner))
            .item("paymentId", s(&payment.payment_id))
            .item("userId", s(&payment.user_id))
            .item("amount", fleet::dynamodb::number(&payment.amount))
            .item("currency", s(&payment.currency))
            .item(PAYLOAD_HASH, s(payload_hash))
            .item("messageId", s(&provenance.message_id))
            .item("storedAt", n(now_ms()))
            .condition_expression("attribute_not_exists(ownerPaymentId)");
        if let Some(reference) = &payment.reference {
            request = request.item("reference", s(reference));
        }
        if let Some(id) = &provenance.request_id {
            request = request.item("requestId", s(id));
        }
        if let Some(id) = &provenance.api_key_id {
            request = request.item("apiKeyId", s(id));
        }
        if let Some(at) = provenance.received_at_ms {
            request = request.item("receivedAt", n(at));
        }
        Metrics::incr(&self.writes);
        fleet::dynamodb::put_if_absent(request, PAYLOAD_HASH).await
    }
}
