//! The dead-letter format: what a dead-lettered copy carries beside the original message, and
//! how the original comes back from it.
//!
//! A copy keeps the original body and gets the reason as `fleet.*` attributes. SQS allows 10
//! attributes per message, so when the originals do not fit beside the reason they are folded
//! into one JSON attribute, [`names::ORIGINAL_ATTRIBUTES`].
//!
//! Whatever brings a copy back to its queue (SQS's own move task, `fleetctl dlq redrive`, a
//! console redrive, a hand-written `send-message`), the engine calls [`restore_originals`] on
//! receive: the handler sees the original attributes, never the reason, and a second
//! dead-lettering folds the same originals again. Nothing is lost however often a message goes
//! round.

use std::collections::HashMap;

use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::MessageAttributeValue;

use crate::kind;
use crate::message::Message;
use crate::outcome::Reason;

/// SQS allows at most 10 message attributes per message.
pub const SQS_MAX_MESSAGE_ATTRIBUTES: usize = 10;
/// Reason text kept in a dead-letter attribute, in bytes (the whole message must stay < 256 KiB).
pub const MAX_REASON_BYTES: usize = 1024;
/// The prefix of every attribute the engine adds; never an application attribute.
pub const PREFIX: &str = "fleet.";

/// Attribute names the engine puts on dead-lettered messages.
pub mod names {
    /// Stable error kind, e.g. `invalid-json` (filter redrives on it).
    pub const KIND: &str = "fleet.error.kind";
    /// Human-readable reason.
    pub const MESSAGE: &str = "fleet.error.message";
    /// Worker that gave up on the message.
    pub const WORKER: &str = "fleet.worker";
    /// `ApproximateReceiveCount` when it gave up.
    pub const RECEIVE_COUNT: &str = "fleet.receive-count";
    /// When it gave up, ms since the epoch.
    pub const FAILED_AT: &str = "fleet.failed-at";
    /// URL of the queue it came from (where a redrive sends it back).
    pub const SOURCE_QUEUE: &str = "fleet.source-queue";
    /// The original attributes as JSON, when they did not fit beside the reason (SQS allows 10).
    pub const ORIGINAL_ATTRIBUTES: &str = "fleet.original-attributes";
    /// The id of the message as first sent, kept however often it is dead-lettered and brought
    /// back (a redrive sends a new message with a new id).
    pub const MESSAGE_ID: &str = "fleet.message-id";
    /// On a message the engine put back on its queue during a dependency outage (see
    /// `engine::breaker`): when the outage first caught it, ms since the epoch.
    pub const OUTAGE_SINCE: &str = "fleet.outage-since";

    /// The attributes that describe a dead-lettering: dropped when the message comes back.
    pub const REASON: [&str; 8] = [
        KIND,
        MESSAGE,
        WORKER,
        RECEIVE_COUNT,
        FAILED_AT,
        SOURCE_QUEUE,
        ORIGINAL_ATTRIBUTES,
        MESSAGE_ID,
    ];
}

/// Whether a message dead-lettered with reason `kind` can succeed when it is redriven after the
/// cause is fixed: `retries-exhausted` (a dependency failed, an outage outlasted the retries),
/// `dlq-unavailable`, `group-blocked` (a FIFO group stopped behind its head), `deadline-exceeded`,
/// an AWS error code (`AccessDeniedException`, `ResourceNotFoundException`: a permission or a
/// resource was missing), a message moved by the queue's redrive policy (no kind). Not: the
/// kinds of [`kind::REDRIVE_REFUSED`] and [`kind::LEGACY`], and by convention any kind starting
/// with `invalid-`, `malformed-` or `missing-` (the message itself is wrong): they fail again,
/// the same way.
pub fn redrive_is_safe(kind: &str) -> bool {
    !(kind::REDRIVE_REFUSED.contains(&kind)
        || kind::LEGACY.iter().any(|(old, _)| *old == kind)
        || ["invalid-", "malformed-", "missing-"]
            .iter()
            .any(|prefix| kind.starts_with(prefix)))
}

/// The attributes of a dead-lettered copy: the original ones, plus the reason. When both do
/// not fit in SQS's 10, the originals are folded into one JSON attribute.
pub fn dead_letter_attributes(
    message: &Message,
    reason: &Reason,
    worker: &str,
    source_queue: &str,
    now_ms: u64,
) -> HashMap<String, MessageAttributeValue> {
    let mut attributes: HashMap<String, MessageAttributeValue> = HashMap::from([
        (names::KIND.to_owned(), string(&reason.kind)),
        (
            names::MESSAGE.to_owned(),
            string(truncate(&reason.message, MAX_REASON_BYTES)),
        ),
        (names::WORKER.to_owned(), string(worker)),
        (
            names::RECEIVE_COUNT.to_owned(),
            number(message.receive_count.into()),
        ),
        (names::FAILED_AT.to_owned(), number(now_ms)),
        (names::SOURCE_QUEUE.to_owned(), string(source_queue)),
        (names::MESSAGE_ID.to_owned(), string(message.original_id())),
    ]);
    let originals = message
        .attributes
        .iter()
        .filter(|(name, _)| !name.starts_with(PREFIX));
    if attributes.len() + originals.clone().count() <= SQS_MAX_MESSAGE_ATTRIBUTES {
        attributes.extend(originals.map(|(k, v)| (k.clone(), v.clone())));
    } else {
        let folded: serde_json::Map<String, serde_json::Value> =
            originals.map(|(k, v)| (k.clone(), fold(v))).collect();
        attributes.insert(
            names::ORIGINAL_ATTRIBUTES.to_owned(),
            string(&serde_json::Value::Object(folded).to_string()),
        );
    }
    attributes
}

/// The attributes a message had before it was dead-lettered (the same map when it never was):
/// folded originals unfolded, the reason attributes dropped. Other `fleet.*` attributes (the
/// engine's own bookkeeping) stay.
pub fn restore_originals(
    mut attributes: HashMap<String, MessageAttributeValue>,
) -> HashMap<String, MessageAttributeValue> {
    if !attributes
        .keys()
        .any(|k| names::REASON.contains(&k.as_str()))
    {
        return attributes;
    }
    let folded = attributes
        .get(names::ORIGINAL_ATTRIBUTES)
        .and_then(|v| v.string_value())
        .and_then(|s| serde_json::from_str::<HashMap<String, serde_json::Value>>(s).ok())
        .unwrap_or_default();
    attributes.retain(|k, _| !names::REASON.contains(&k.as_str()));
    for (name, value) in folded {
        if let Some(value) = unfold(&value) {
            // An attribute set beside the folded ones (by hand, after the fact) wins.
            attributes.entry(name).or_insert(value);
        }
    }
    attributes
}

/// One attribute as JSON: `{"data_type", "string_value"}` or `{"data_type", "binary_value"}`
/// (base64).
fn fold(value: &MessageAttributeValue) -> serde_json::Value {
    let mut folded = serde_json::json!({ "data_type": value.data_type() });
    if let Some(text) = value.string_value() {
        folded["string_value"] = text.into();
    }
    if let Some(bytes) = value.binary_value() {
        folded["binary_value"] = aws_smithy_types::base64::encode(bytes.as_ref()).into();
    }
    folded
}

fn unfold(value: &serde_json::Value) -> Option<MessageAttributeValue> {
    let builder = MessageAttributeValue::builder().data_type(value["data_type"].as_str()?);
    let builder = match (
        value["string_value"].as_str(),
        value["binary_value"].as_str(),
    ) {
        (Some(text), _) => builder.string_value(text),
        (None, Some(b64)) => {
            builder.binary_value(Blob::new(aws_smithy_types::base64::decode(b64).ok()?))
        }
        (None, None) => return None,
    };
    builder.build().ok()
}

/// A `String` attribute.
pub fn string(v: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(v)
        .build()
        .expect("data type is set")
}

/// A `Number` attribute.
pub fn number(v: u64) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("Number")
        .string_value(v.to_string())
        .build()
        .expect("data type is set")
}

fn truncate(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message_with(attrs: usize) -> Message {
        let attributes = (0..attrs)
            .map(|i| (format!("a{i}"), string(&format!("v{i}"))))
            .collect();
        Message {
            message_id: "m".into(),
            receipt_handle: "r".into(),
            body: "{}".into(),
            receive_count: 2,
            attributes,
            ..Message::default()
        }
    }

    #[test]
    fn dead_letter_keeps_original_attributes_beside_the_reason() {
        let reason = Reason::new(kind::CONFLICT, "different payload");
        let attrs = dead_letter_attributes(&message_with(3), &reason, "w", "http://q/x", 7);
        assert_eq!(attrs.len(), 10, "7 reason attributes and 3 originals fit");
        assert_eq!(attrs["a2"].string_value(), Some("v2"));
        assert_eq!(attrs[names::KIND].string_value(), Some(kind::CONFLICT));
        assert_eq!(attrs[names::RECEIVE_COUNT].string_value(), Some("2"));
        assert_eq!(attrs[names::FAILED_AT].data_type(), "Number");
    }

    #[test]
    fn dead_letter_folds_originals_when_they_do_not_fit() {
        let reason = Reason::new(kind::CONFLICT, "x".repeat(5000));
        let attrs = dead_letter_attributes(&message_with(5), &reason, "w", "q", 7);
        assert!(attrs.len() <= SQS_MAX_MESSAGE_ATTRIBUTES);
        let folded: serde_json::Value =
            serde_json::from_str(attrs[names::ORIGINAL_ATTRIBUTES].string_value().unwrap())
                .unwrap();
        assert_eq!(folded["a4"]["string_value"], "v4");
        assert_eq!(
            attrs[names::MESSAGE].string_value().unwrap().len(),
            MAX_REASON_BYTES
        );
    }

    #[test]
    fn folded_or_not_the_originals_come_back_whole_however_often_they_go_round() {
        for count in [2, 5, 9] {
            let mut message = message_with(count);
            message.attributes.insert(
                "blob".into(),
                MessageAttributeValue::builder()
                    .data_type("Binary")
                    .binary_value(Blob::new(vec![0u8, 255, 7]))
                    .build()
                    .unwrap(),
            );
            let originals = message.attributes.clone();
            for round in 0..3 {
                let reason = Reason::new(kind::RETRIES_EXHAUSTED, "down");
                let copy = dead_letter_attributes(&message, &reason, "w", "q", round);
                assert!(copy.len() <= SQS_MAX_MESSAGE_ATTRIBUTES);
                // Moved back as it is: the engine restores it on receive.
                message.attributes = restore_originals(copy);
                assert_eq!(
                    message.attributes, originals,
                    "{count} attributes, round {round}"
                );
            }
        }
    }

    #[test]
    fn a_message_that_never_was_dead_lettered_is_left_alone() {
        let mut attrs = message_with(2).attributes;
        attrs.insert(names::OUTAGE_SINCE.into(), number(5));
        assert_eq!(restore_originals(attrs.clone()), attrs);
    }

    #[test]
    fn only_kinds_that_a_fix_can_cure_are_safe_to_redrive() {
        // Every kind the engine and the workers dead-letter with, and AWS codes.
        for kind in [
            kind::RETRIES_EXHAUSTED,
            kind::DLQ_UNAVAILABLE,
            kind::GROUP_BLOCKED,
            kind::DEADLINE_EXCEEDED,
            "AccessDeniedException",
            "ResourceNotFoundException",
        ] {
            assert!(redrive_is_safe(kind), "{kind}");
        }
        for kind in kind::REDRIVE_REFUSED {
            assert!(!redrive_is_safe(kind), "{kind}");
        }
        for (old, _) in kind::LEGACY {
            assert!(
                !redrive_is_safe(old),
                "written by an earlier release: {old}"
            );
        }
        for kind in ["invalid-anything-new", "malformed-x", "missing-header"] {
            assert!(!redrive_is_safe(kind), "by convention: {kind}");
        }
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("ééé", 3), "é");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
