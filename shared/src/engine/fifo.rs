//! FIFO lines: one task per message group handles its messages in order; a retried message
//! holds the rest of its line back behind it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::debug;

use tracing::warn;

use super::breaker::Signal;
use super::dead_letter::send_to_dlq;
use super::groups::{self, LineStop, Verdict};
use super::handle::process;
use super::settle::{change_visibility_many, retry_later};
use super::{Delivery, Flow, Shared};
use crate::message::{Handler, Message};
use crate::metrics::Metrics;
use crate::outcome::Reason;

/// Splits a FIFO batch into its message groups: groups in order of first appearance, each
/// group's messages in the order SQS returned them (their order in the queue).
pub(super) fn in_groups(deliveries: Vec<Delivery>) -> Vec<(String, Vec<Delivery>)> {
    let mut groups: Vec<(String, Vec<Delivery>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for delivery in deliveries {
        let group = delivery.message.group_id.clone().unwrap_or_default();
        match index.get(&group) {
            Some(&i) => groups[i].1.push(delivery),
            None => {
                index.insert(group.clone(), groups.len());
                groups.push((group, vec![delivery]));
            }
        }
    }
    groups
}

/// Handles the line of one FIFO group in order, including messages that join it meanwhile.
/// When one is held back for a retry (or handed back at shutdown), the rest of the line goes
/// back behind it unhandled. With a group store, a stopped group's messages are parked behind
/// its head instead of being handled (see `groups.rs`).
pub(super) async fn process_group<H: Handler>(shared: Arc<Shared<H>>, group: String) {
    // When the visibility of the whole line was last set (at receive, then by heartbeats);
    // messages that joined later were received later, so this is conservative for them.
    let mut extended = Instant::now();
    // The group's stop, read once for the line (nobody else handles the group meanwhile).
    let mut line = shared.group_store.as_ref().map(|_| LineStop {
        key: groups::key(&shared.settings.queue_name, &group),
        stop: None,
    });
    let mut first = true;
    loop {
        let next = {
            let mut groups = shared.groups.lock().expect("groups lock");
            let line = groups.get_mut(&group).expect("a running group has a line");
            let next = line.pop_front();
            if next.is_none() {
                groups.remove(&group);
            }
            next
        };
        let Some((
            Delivery {
                message,
                trace_header,
            },
            permit,
        )) = next
        else {
            return;
        };
        if let (Some(store), Some(line), true) = (
            &shared.group_store,
            line.as_mut(),
            std::mem::take(&mut first),
        ) {
            match store.get(&line.key).await {
                Ok(found) => line.stop = found,
                Err(err) => {
                    // Whether the group may go on is unknown: nothing of it is handled.
                    shared.limit.release(permit);
                    let reason = Reason::dependency("group-store-unavailable", err.to_string());
                    shared.breaker.record(Signal::Down, Instant::now());
                    let secs = match retry_later(&shared, &message, &reason).await {
                        Flow::Hold(secs) => secs,
                        _ => 0,
                    };
                    hold_back(&shared, &group, secs).await;
                    return;
                }
            }
        }
        let stop = line.as_ref().and_then(|l| l.stop.as_ref());
        let (message, permit) = if groups::verdict(stop, &message) == Verdict::Park {
            let line = line.as_mut().expect("a stop comes from a line");
            match park(&shared, message, line).await {
                Parked::Done => {
                    shared.limit.release(permit);
                    continue;
                }
                Parked::Held(secs) => {
                    shared.limit.release(permit);
                    hold_back(&shared, &group, secs).await;
                    return;
                }
                // Released meanwhile: handle it after all.
                Parked::Released(message) => (*message, permit),
            }
        } else {
            (message, permit)
        };
        let delivery = Delivery {
            message,
            trace_header,
        };
        let flow = process(
            &shared,
            delivery,
            permit,
            Some(&group),
            &mut extended,
            line.as_mut(),
        )
        .await;
        if let Flow::Hold(secs) = flow {
            hold_back(&shared, &group, secs).await;
            return;
        }
    }
}

/// What became of a message parked behind its group's head.
enum Parked {
    /// In the DLQ behind the head.
    Done,
    /// Back on the queue in this many seconds (the store or the DLQ did not answer).
    Held(i32),
    /// The group is no longer stopped (an operator released it): handle the message.
    Released(Box<Message>),
}

/// Dead-letters a message of a stopped group behind its head, unhandled (kind
/// `group-blocked`). It is counted among the parked first: should the send fail, the group
/// stays stopped longer rather than flowing too early.
async fn park<H: Handler>(shared: &Shared<H>, message: Message, line: &mut LineStop) -> Parked {
    let store = shared.group_store.as_ref().expect("parking needs a store");
    match store.park(&line.key, message.original_id()).await {
        Ok(true) => {}
        Ok(false) => {
            line.stop = None;
            return Parked::Released(Box::new(message));
        }
        Err(err) => {
            let reason = Reason::dependency("group-store-unavailable", err.to_string());
            return match retry_later(shared, &message, &reason).await {
                Flow::Hold(secs) => Parked::Held(secs),
                _ => Parked::Held(0),
            };
        }
    }
    let behind = line
        .stop
        .as_ref()
        .and_then(|s| s.head.as_deref())
        .map_or_else(
            || "the group's redriven messages".to_owned(),
            |head| format!("message {head}"),
        );
    if let Some(stop) = &mut line.stop {
        stop.parked += 1;
    }
    Metrics::incr(&shared.metrics.parked);
    warn!(behind = %behind, "group stopped: parking the message behind its head");
    let reason = Reason::new(
        groups::GROUP_BLOCKED,
        format!(
            "not handled: its group is stopped behind {behind}, which was dead-lettered; redrive the group in order (or release it with fleetctl dlq release)"
        ),
    );
    match send_to_dlq(shared, message, reason).await {
        Flow::Hold(secs) => Parked::Held(secs),
        _ => Parked::Done,
    }
}

/// Puts the unhandled rest of a FIFO line back behind a message that becomes visible in
/// `secs`: one second later, so that the held message is received first again. Messages that
/// join the line meanwhile go back too; then the line ends.
async fn hold_back<H: Handler>(shared: &Shared<H>, group: &str, secs: i32) {
    let behind = if secs == 0 { 0 } else { secs + 1 };
    loop {
        let rest: Vec<(Delivery, OwnedSemaphorePermit)> = {
            let mut groups = shared.groups.lock().expect("groups lock");
            let line = groups.get_mut(group).expect("a running group has a line");
            if line.is_empty() {
                groups.remove(group);
                return;
            }
            line.drain(..).collect()
        };
        let (messages, permits): (Vec<Message>, Vec<OwnedSemaphorePermit>) = rest
            .into_iter()
            .map(|(d, permit)| (d.message, permit))
            .unzip();
        for permit in permits {
            shared.limit.release(permit);
        }
        // A probe among them settles without an outcome: let another go.
        shared.breaker.record(Signal::Neutral, Instant::now());
        shared
            .metrics
            .held_back
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        shared.waited_once_more(&messages);
        debug!(
            count = messages.len(),
            visible_in_secs = behind,
            "holding back the rest of the group"
        );
        change_visibility_many(shared, &messages, behind).await;
    }
}

/// The messages waiting in a FIFO line (for the heartbeat).
pub(super) fn waiting_in<H: Handler>(shared: &Shared<H>, group: Option<&String>) -> Vec<Message> {
    let Some(group) = group else {
        return Vec::new();
    };
    let groups = shared.groups.lock().expect("groups lock");
    groups
        .get(group)
        .map(|line| line.iter().map(|(d, _)| d.message.clone()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_group(id: &str, group: &str) -> Delivery {
        Delivery {
            message: Message {
                message_id: id.into(),
                group_id: Some(group.into()),
                ..Message::default()
            },
            trace_header: None,
        }
    }

    #[test]
    fn a_fifo_batch_splits_into_groups_keeping_order() {
        let batch = ["a1", "b1", "a2", "c1", "b2", "a3"]
            .into_iter()
            .map(|id| in_group(id, &id[..1]))
            .collect();
        let groups: Vec<Vec<String>> = in_groups(batch)
            .into_iter()
            .map(|(_, g)| g.into_iter().map(|d| d.message.message_id).collect())
            .collect();
        assert_eq!(
            groups,
            vec![vec!["a1", "a2", "a3"], vec!["b1", "b2"], vec!["c1"]]
        );
    }
}
