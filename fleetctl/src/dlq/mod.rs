//! `fleetctl dlq …`: look inside a dead-letter queue, count, export, move messages back, purge.
//!
//! Every read goes through [`read::read_once`]: each message once, left in place. What a
//! dead-lettered message says (reason, worker, time) is read with [`Dead`], by the attribute
//! names of [`fleet::dlq`].

mod check;
mod export;
mod filter;
mod peek;
mod progress;
mod purge;
mod read;
mod redrive;
mod summary;
mod time;

use aws_sdk_sqs::types::{Message, MessageAttributeValue, MessageSystemAttributeName};
use fleet::dlq::names as attr;
use serde_json::{json, Value};

pub(crate) use check::{check, print_check};
pub(crate) use export::export;
pub(crate) use filter::Filter;
pub(crate) use peek::peek;
pub(crate) use purge::purge;
pub(crate) use read::ReadOptions;
pub(crate) use redrive::{redrive, Method, Redrive, Report};
pub(crate) use summary::{summary, table as summary_table};

/// The reason shown (and filtered on) for a message that carries none: SQS's redrive policy
/// moved it after `maxReceiveCount` receives, before the engine dead-lettered it.
pub(crate) const NO_REASON: &str = "none";
/// The worker shown for a message that names none.
pub(crate) const UNKNOWN_WORKER: &str = "unknown";

pub(crate) fn attribute<'a>(m: &'a Message, name: &str) -> Option<&'a str> {
    m.message_attributes()?.get(name)?.string_value()
}

pub(crate) fn system(m: &Message, name: MessageSystemAttributeName) -> Option<&str> {
    m.attributes()?.get(&name).map(String::as_str)
}

/// What a dead-lettered message says about its failure.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dead<'a> {
    /// `fleet.error.kind`; `None`: moved by the redrive policy.
    pub(crate) kind: Option<&'a str>,
    /// `fleet.worker`.
    pub(crate) worker: Option<&'a str>,
    /// When it failed, ms since the epoch: `fleet.failed-at`, else when it was sent to the DLQ.
    pub(crate) failed_at_ms: Option<u64>,
    /// When it was sent to the DLQ (`SentTimestamp`).
    pub(crate) sent_ms: Option<u64>,
}

impl<'a> Dead<'a> {
    pub(crate) fn of(m: &'a Message) -> Self {
        let sent_ms = system(m, MessageSystemAttributeName::SentTimestamp)
            .and_then(|t| t.parse::<u64>().ok());
        Self {
            kind: attribute(m, attr::KIND),
            worker: attribute(m, attr::WORKER),
            failed_at_ms: attribute(m, attr::FAILED_AT)
                .and_then(|t| t.parse::<u64>().ok())
                .or(sent_ms),
            sent_ms,
        }
    }

    /// The reason kind, [`NO_REASON`] when there is none.
    pub(crate) fn reason(&self) -> &'a str {
        self.kind.unwrap_or(NO_REASON)
    }

    /// The worker, [`UNKNOWN_WORKER`] when none is named.
    pub(crate) fn worker(&self) -> &'a str {
        self.worker.unwrap_or(UNKNOWN_WORKER)
    }

    /// Whether a redrive of it can succeed (see [`fleet::dlq::redrive_is_safe`]); a message
    /// without a reason was retried to exhaustion by SQS: yes.
    pub(crate) fn redrive_is_safe(&self) -> bool {
        self.kind.is_none_or(fleet::dlq::redrive_is_safe)
    }

    /// Seconds since it failed.
    pub(crate) fn age_secs(&self, now_ms: u64) -> Option<u64> {
        self.failed_at_ms.map(|at| now_ms.saturating_sub(at) / 1000)
    }
}

/// Whether a redrive of messages shown with this reason can succeed: [`NO_REASON`] (retried
/// to exhaustion by SQS) yes, else as [`fleet::dlq::redrive_is_safe`] says.
pub(crate) fn reason_is_safe(reason: &str) -> bool {
    reason == NO_REASON || fleet::dlq::redrive_is_safe(reason)
}

/// `safe` or `refused`: what `redrive` does with a reason kind.
pub(crate) fn redrive_label(safe: bool) -> &'static str {
    if safe {
        "safe"
    } else {
        "refused"
    }
}

/// One attribute as JSON, in the shape `fleet::dlq` folds attributes in:
/// `{"data_type", "string_value"}` or `{"data_type", "binary_value"}` (base64).
fn attribute_json(value: &MessageAttributeValue) -> Value {
    let mut out = json!({ "data_type": value.data_type() });
    if let Some(text) = value.string_value() {
        out["string_value"] = text.into();
    }
    if let Some(bytes) = value.binary_value() {
        out["binary_value"] = aws_smithy_types::base64::encode(bytes.as_ref()).into();
    }
    out
}

/// A message as `peek --json` and `export` write it: its ids, body, every attribute (Binary
/// ones in base64), and times as RFC 3339.
pub(crate) fn to_json(m: &Message) -> Value {
    let attributes: serde_json::Map<String, Value> = m
        .message_attributes()
        .map(|a| {
            a.iter()
                .map(|(k, v)| (k.clone(), attribute_json(v)))
                .collect()
        })
        .unwrap_or_default();
    let dead = Dead::of(m);
    let mut out = json!({
        "message_id": m.message_id(),
        "body": m.body(),
        "attributes": attributes,
        "failed_at": dead.failed_at_ms.map(time::rfc3339),
        "sent_at": dead.sent_ms.map(time::rfc3339),
        "receive_count": system(m, MessageSystemAttributeName::ApproximateReceiveCount),
    });
    if let Some(group) = system(m, MessageSystemAttributeName::MessageGroupId) {
        out["message_group_id"] = group.into();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sqs::primitives::Blob;

    #[test]
    fn json_keeps_binary_attributes_and_shows_times_as_rfc3339() {
        let m = Message::builder()
            .message_id("m-1")
            .body("{}")
            .message_attributes(attr::KIND, fleet::dlq::string("conflict"))
            .message_attributes(attr::FAILED_AT, fleet::dlq::number(1_700_000_000_123))
            .message_attributes(
                "blob",
                MessageAttributeValue::builder()
                    .data_type("Binary")
                    .binary_value(Blob::new(vec![0u8, 255, 7]))
                    .build()
                    .unwrap(),
            )
            .attributes(MessageSystemAttributeName::SentTimestamp, "1700000001000")
            .build();
        let json = to_json(&m);
        assert_eq!(
            json["attributes"]["blob"],
            json!({"data_type": "Binary", "binary_value": "AP8H"})
        );
        assert_eq!(
            json["attributes"][attr::KIND],
            json!({"data_type": "String", "string_value": "conflict"})
        );
        assert_eq!(json["failed_at"], "2023-11-14T22:13:20.123Z");
        assert_eq!(json["sent_at"], "2023-11-14T22:13:21.000Z");
        assert!(json.get("message_group_id").is_none());
    }

    #[test]
    fn a_message_without_a_reason_was_moved_by_the_redrive_policy() {
        let m = Message::builder()
            .message_id("m")
            .attributes(MessageSystemAttributeName::SentTimestamp, "5000")
            .build();
        let dead = Dead::of(&m);
        assert_eq!(dead.reason(), NO_REASON);
        assert_eq!(dead.worker(), UNKNOWN_WORKER);
        assert!(dead.redrive_is_safe());
        assert_eq!(dead.failed_at_ms, Some(5000), "the time it reached the DLQ");
        assert_eq!(dead.age_secs(65_000), Some(60));
    }
}
