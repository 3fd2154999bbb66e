//! The envelope API Gateway puts around a client's body: the message attributes every write
//! route's mapping template sets (api-gateway-mappings/services/*.yaml), named once here and read
//! through [`Envelope`] by every worker.
//!
//! | attribute | what |
//! |---|---|
//! | `requestId` | API Gateway's request id, the `request_id` of the client's 202 (or, for a command with an `Idempotency-Key`, `<owner>-<key>`) |
//! | `receivedAt` | when the gateway received the request, ms since the epoch |
//! | `ownerId` | the caller: the JWT's `sub` with a user pool, else the API key id (docs/security.md) |
//! | `apiKeyId` | which client application called (its API key id) |

use crate::message::Message;

/// API Gateway's request id.
pub const ATTR_REQUEST_ID: &str = "requestId";
/// The gateway's receive time, ms since the epoch.
pub const ATTR_RECEIVED_AT: &str = "receivedAt";
/// The caller's owner id.
pub const ATTR_OWNER_ID: &str = "ownerId";
/// The calling application's API key id.
pub const ATTR_API_KEY_ID: &str = "apiKeyId";

/// What the gateway said about a message's request; every field is `None` for a message that
/// did not come through the gateway (sent straight to the queue by a test, a benchmark or an
/// operator), except [`Envelope::received_at_ms`], which falls back to SQS's `SentTimestamp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// `requestId`.
    pub request_id: Option<&'a str>,
    /// `receivedAt`, else SQS's `SentTimestamp` (always set by SQS).
    pub received_at_ms: Option<u64>,
    /// `ownerId`; `apiKeyId` for a message queued before the gateway sent owners, when the key
    /// id was the identity.
    pub owner: Option<&'a str>,
    /// `apiKeyId`.
    pub api_key_id: Option<&'a str>,
}

/// A non-empty string attribute of `message`.
fn text<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
    message.attribute(name).filter(|v| !v.is_empty())
}

impl<'a> Envelope<'a> {
    /// The envelope of `message`.
    pub fn of(message: &'a Message) -> Self {
        Self {
            request_id: Self::request_id_of(message),
            received_at_ms: text(message, ATTR_RECEIVED_AT)
                .and_then(|v| v.parse().ok())
                .or(message.sent_at_ms),
            owner: Self::owner_of(message),
            api_key_id: text(message, ATTR_API_KEY_ID),
        }
    }

    /// [`Envelope::owner`] alone, without reading the rest (the hot path of every handler).
    pub fn owner_of(message: &'a Message) -> Option<&'a str> {
        text(message, ATTR_OWNER_ID).or_else(|| text(message, ATTR_API_KEY_ID))
    }

    /// [`Envelope::request_id`] alone (the engine's span of every message).
    pub fn request_id_of(message: &'a Message) -> Option<&'a str> {
        text(message, ATTR_REQUEST_ID)
    }

    /// When the request was received, or now for a message that says neither (never seen:
    /// SQS always sets `SentTimestamp`).
    pub fn received_at_or_now(&self) -> u64 {
        self.received_at_ms.unwrap_or_else(crate::util::now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sqs::types::MessageAttributeValue;

    fn message(attributes: &[(&str, &str)], sent_at_ms: Option<u64>) -> Message {
        let mut m = Message {
            sent_at_ms,
            ..Message::default()
        };
        for (name, value) in attributes {
            let v = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(*value)
                .build()
                .expect("typed");
            m.attributes.insert((*name).to_owned(), v);
        }
        m
    }

    #[test]
    fn the_gateway_s_attributes_and_their_fallbacks() {
        let full = message(
            &[
                (ATTR_REQUEST_ID, "r-1"),
                (ATTR_RECEIVED_AT, "1700000000000"),
                (ATTR_OWNER_ID, "sub-1"),
                (ATTR_API_KEY_ID, "key-1"),
            ],
            Some(5),
        );
        assert_eq!(
            Envelope::of(&full),
            Envelope {
                request_id: Some("r-1"),
                received_at_ms: Some(1_700_000_000_000),
                owner: Some("sub-1"),
                api_key_id: Some("key-1"),
            }
        );
        // Before owners: the key id is the owner. Without receivedAt: SQS's send time.
        let old = message(&[(ATTR_API_KEY_ID, "key-1"), (ATTR_OWNER_ID, "")], Some(5));
        let envelope = Envelope::of(&old);
        assert_eq!(
            (envelope.owner, envelope.received_at_ms),
            (Some("key-1"), Some(5))
        );
        // Not through the gateway.
        let none = Message::default();
        let bare = Envelope::of(&none);
        assert_eq!(
            (bare.request_id, bare.owner, bare.received_at_ms),
            (None, None, None)
        );
        assert!(bare.received_at_or_now() > 1_700_000_000_000);
    }
}
