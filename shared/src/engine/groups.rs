//! FIFO groups stopped behind a dead-lettered head.
//!
//! On a FIFO queue a message group is one ordered stream (a book's commands). When one of its
//! messages is dead-lettered, the rest must not be applied around it: an UPDATE after a CREATE
//! that never happened is wrong for good. So, with a [`GroupStore`] configured
//! (`FLEET_GROUP_TABLE`), the engine stops the group:
//!
//! ```text
//!  head dead-lettered ─► record {head, parked: 1}          (durable: every process sees it)
//!  later messages of the group (any process) ─► dead-lettered as `group-blocked`, parked += 1
//!  operator redrives the group's DLQ copies (in order: the DLQ is FIFO too)
//!      the head's copy comes first ─► handled; on success the group drains: {head: none}
//!      each redriven copy ─► handled, parked -= 1; new arrivals meanwhile ─► parked behind
//!      parked reaches 0 ─► record deleted: the group flows again
//!  the head fails again ─► dead-lettered again, it stays the head; the rest park again
//! ```
//!
//! A message's identity across redrives is [`Message::original_id`] (a redrive sends a new
//! message). An operator who discards instead of redriving ends the stop with
//! `fleetctl dlq release`. Within one process a line of a group is handled by one task, and SQS
//! delivers a group to nobody else while its messages are in flight, so the record is read
//! once per line and then kept up to date locally.

use std::future::Future;
use std::pin::Pin;

use crate::aws_error::AwsError;
use crate::message::Message;

pub use crate::kind::GROUP_BLOCKED;

/// A boxed future, for the object-safe [`GroupStore`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The stop of one group, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStop {
    /// The original id of the message that must be handled first; `None` while the group
    /// drains (its head was handled, redriven copies are being applied).
    pub head: Option<String>,
    /// How many of the group's messages are in the DLQ, head included (the record keeps their
    /// original ids as a set, so that counting one twice, or forgetting one twice, is
    /// harmless).
    pub parked: u64,
}

/// Where stopped groups are recorded (a DynamoDB table in production:
/// `fleet::group_store`). Keys are `<queue name>#<group id>`; messages are named by their
/// original id ([`Message::original_id`]).
pub trait GroupStore: Send + Sync + 'static {
    /// The group's stop, if it is stopped.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<GroupStop>, AwsError>>;
    /// Message `head` is dead-lettered: the group stops behind it (created, or the head
    /// replaced), `head` among its parked messages.
    fn stop<'a>(&'a self, key: &'a str, head: &'a str) -> BoxFuture<'a, Result<(), AwsError>>;
    /// Message `id` is parked behind the head. `false`: the group is no longer stopped (an
    /// operator released it), and nothing was recorded.
    fn park<'a>(&'a self, key: &'a str, id: &'a str) -> BoxFuture<'a, Result<bool, AwsError>>;
    /// Parked message `id` is out of the DLQ for good: applied, or dead-lettered for a reason
    /// that does not stop its group. When it was the head the group drains; the record goes
    /// when nothing is left parked. Returns the stop as it is now (`None`: the group flows).
    fn applied<'a>(
        &'a self,
        key: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<GroupStop>, AwsError>>;
}

/// Reason kinds that stop a group: a message that could have been applied and was not, for
/// want of retries (a dependency down, throttled, or failing). A redrive after the cause is
/// fixed applies it, and what came after it must wait for that. Every other dead-letter
/// (a command that can never apply: malformed, a reused key, a conflict) lets the group go
/// on, as before: waiting behind it would stop the group for good, and would let any client
/// stop another's group with one bad command.
pub const STOPS_GROUP: &[&str] = &[crate::kind::RETRIES_EXHAUSTED];

/// The group stop a FIFO line works with: its key, and the stop as the line knows it (read once
/// at the line's start, kept up to date by the line's own writes).
#[derive(Debug)]
pub(crate) struct LineStop {
    /// The group's store key.
    pub(crate) key: String,
    /// The stop, if the group is stopped.
    pub(crate) stop: Option<GroupStop>,
}

/// What to do with a message of a group, given the group's stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Run the handler.
    Handle,
    /// Dead-letter it behind the head, unhandled.
    Park,
}

/// The rule: a stopped group handles only its head; a draining one only redriven copies.
pub(crate) fn verdict(stop: Option<&GroupStop>, message: &Message) -> Verdict {
    match stop {
        None => Verdict::Handle,
        Some(GroupStop {
            head: Some(head), ..
        }) if head == message.original_id() => Verdict::Handle,
        Some(GroupStop { head: Some(_), .. }) => Verdict::Park,
        Some(GroupStop { head: None, .. }) if message.redriven => Verdict::Handle,
        Some(GroupStop { head: None, .. }) => Verdict::Park,
    }
}

/// The store key of a group of a queue.
pub(crate) fn key(queue_name: &str, group: &str) -> String {
    format!("{queue_name}#{group}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: &str, redriven_from: Option<&str>) -> Message {
        Message {
            message_id: id.into(),
            redriven: redriven_from.is_some(),
            first_message_id: redriven_from.map(str::to_owned),
            ..Message::default()
        }
    }

    #[test]
    fn a_stopped_group_handles_its_head_only_and_a_draining_one_redriven_copies_only() {
        let stopped = GroupStop {
            head: Some("create".into()),
            parked: 3,
        };
        let draining = GroupStop {
            head: None,
            parked: 2,
        };
        let head_copy = message("m9", Some("create"));
        let update_copy = message("m10", Some("update"));
        let new_arrival = message("m11", None);
        assert_eq!(verdict(None, &new_arrival), Verdict::Handle);
        assert_eq!(verdict(Some(&stopped), &head_copy), Verdict::Handle);
        assert_eq!(verdict(Some(&stopped), &update_copy), Verdict::Park);
        assert_eq!(verdict(Some(&stopped), &new_arrival), Verdict::Park);
        assert_eq!(
            verdict(Some(&stopped), &message("create", None)),
            Verdict::Handle,
            "the head itself, back after a crash before it reached the DLQ"
        );
        assert_eq!(verdict(Some(&draining), &update_copy), Verdict::Handle);
        assert_eq!(verdict(Some(&draining), &new_arrival), Verdict::Park);
    }
}
