//! The post model shared by the four binaries: item attributes, messages, and their parsing.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use serde::{Deserialize, Serialize};

/// The gateway attributes naming the caller (docs/security.md), defined by the engine.
pub use fleet::message::{ATTR_API_KEY_ID, ATTR_OWNER_ID};

/// How long a post lives before it is archived.
pub const POST_LIFETIME_SECS: u64 = 30 * 24 * 3600;
/// `status` of a post waiting for its decision (not public).
pub const PENDING: &str = "PENDING";
/// `status` (and `listing`, the key of the public index) of an approved post.
pub const APPROVED: &str = "APPROVED";
/// A decision that deletes the post.
pub const REJECTED: &str = "REJECTED";

/// Retry kind (a label on the retry metric and the log, not a dead-letter kind): a DynamoDB
/// transaction was cancelled for a reason other than its conditions (a conflict with another
/// transaction, throttling), so trying again may succeed.
pub const TRANSACTION_CANCELLED: &str = "transaction-cancelled";

/// Message attribute set by the gateway: the post's id.
pub const ATTR_POST_ID: &str = "postId";
/// Message attribute set by the gateway: when it received the post, ms since the epoch.
pub use fleet::gateway::ATTR_RECEIVED_AT;
/// The owner of a post whose message names no caller (sent straight to the queue, not through
/// the gateway): an id no API caller has.
pub const NO_OWNER: &str = "-";

/// Whose post a message carries: the gateway's `ownerId`; else `apiKeyId` (queued before the
/// gateway sent owners, when the API key id was the identity); else [`NO_OWNER`].
pub fn owner_of(message: &fleet::Message) -> &str {
    message.owner().unwrap_or(NO_OWNER)
}

/// The body of `POST /posts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostRequest {
    /// Title.
    pub title: String,
    /// Text.
    pub body: String,
    /// Author's name.
    pub author: String,
}

/// What the approval service receives (approval-requests queue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// The post to decide on.
    pub post_id: String,
    /// Its content.
    #[serde(flatten)]
    pub post: PostRequest,
}

/// What the approval service answers (approval-responses queue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalResponse {
    /// The post decided on.
    pub post_id: String,
    /// `APPROVED` or `REJECTED`.
    pub decision: String,
    /// Why, for a rejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

/// A string attribute.
pub fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

/// A number attribute.
pub fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// A number attribute of an item, when present and whole.
pub fn number(item: &Item, name: &str) -> Option<u64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

/// The row of `post_id` in `table` (posts, decisions or archive: each keyed by `post_id`),
/// read consistently.
///
/// # Errors
/// The classified AWS error.
pub async fn get_post(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    post_id: &str,
) -> Result<Option<Item>, fleet::AwsError> {
    Ok(client
        .get_item()
        .table_name(table)
        .key("post_id", s(post_id))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| fleet::classify(&e))?
        .item)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approval_messages_round_trip() {
        let request = ApprovalRequest {
            post_id: "p-1".into(),
            post: PostRequest {
                title: "t".into(),
                body: "b".into(),
                author: "a".into(),
            },
        };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(
            text,
            r#"{"post_id":"p-1","title":"t","body":"b","author":"a"}"#
        );
        assert_eq!(
            serde_json::from_str::<ApprovalRequest>(&text).unwrap(),
            request
        );
        let response: ApprovalResponse =
            serde_json::from_str(r#"{"post_id":"p-1","decision":"APPROVED"}"#).unwrap();
        assert_eq!(response.reason, None);
    }

    #[test]
    fn the_owner_is_the_gateway_s_then_the_api_key_s_then_none() {
        let message = |attrs: &[(&str, &str)]| fleet::Message {
            attributes: attrs
                .iter()
                .map(|(k, v)| {
                    let value = aws_sdk_sqs::types::MessageAttributeValue::builder()
                        .data_type("String")
                        .string_value(*v)
                        .build()
                        .unwrap();
                    ((*k).to_owned(), value)
                })
                .collect(),
            ..fleet::Message::default()
        };
        let both = message(&[(ATTR_OWNER_ID, "sub-1"), (ATTR_API_KEY_ID, "key-1")]);
        assert_eq!(owner_of(&both), "sub-1");
        assert_eq!(owner_of(&message(&[(ATTR_API_KEY_ID, "key-1")])), "key-1");
        assert_eq!(owner_of(&message(&[])), NO_OWNER);
    }

    #[test]
    fn a_post_request_refuses_unknown_fields() {
        assert!(serde_json::from_str::<PostRequest>(
            r#"{"title":"t","body":"b","author":"a","x":1}"#
        )
        .is_err());
    }
}
