//! The batch method: receive a batch, send it to its source queue with the original attributes
//! restored, then delete what was sent. Interrupted at any point, it duplicates at most, never
//! loses; Ctrl-C stops it between two batches.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use anyhow::Result;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, Message, MessageAttributeValue, MessageSystemAttributeName,
    SendMessageBatchRequestEntry,
};
use fleet::dlq::names as attr;
use fleet::CancellationToken;
use governor::{Quota, RateLimiter};

use super::{Redrive, Summary};
use crate::deployment::Deployment;
use crate::dlq::time::now_ms;
use crate::dlq::{attribute, progress, system, Dead};

/// How long a message received by `redrive` stays invisible while it is being moved (a batch
/// takes well under a second; an interrupted run's batch comes back after this).
const REDRIVE_VISIBILITY_SECS: i32 = 30;

/// Messages received but not moved, by id: their latest receipt, to hand them back at the end.
type Held = HashMap<String, String>;

/// Moves the messages matching the options, one batch at a time.
pub(super) async fn run(
    fleet: &Deployment,
    source: &str,
    dlq: &str,
    opts: &Redrive,
    interrupt: &CancellationToken,
) -> Result<Summary> {
    let mut summary = Summary::default();
    let limiter = RateLimiter::direct(Quota::per_second(opts.max_per_second));
    let batch_size = opts.max_per_second.get().min(10);
    let at_start = fleet.counts(dlq).await?.total();
    let bar = progress::bar(
        Some(opts.max.map_or(at_start, |max| max.min(at_start))),
        "redrive",
    );
    let now = now_ms();
    let (mut skipped, mut refused, mut failed) = (Held::new(), Held::new(), Held::new());
    let mut empty_rounds = 0;
    // Long enough for an interrupted run's batch to become visible again.
    let in_flight_wait = Duration::from_secs(REDRIVE_VISIBILITY_SECS as u64 + 15);
    let mut waiting_since: Option<Instant> = None;
    loop {
        let remaining = opts
            .max
            .map_or(u64::MAX, |m| m.saturating_sub(summary.moved));
        if remaining == 0 {
            break;
        }
        let n = (batch_size as u64).min(remaining) as u32;
        // Ctrl-C is heard between batches, never during one: a batch received is moved (or
        // handed back) whole.
        tokio::select! {
            biased;
            _ = interrupt.cancelled() => {
                summary.cancelled = true;
                break;
            }
            ready = limiter.until_n_ready(NonZeroU32::new(n).expect("n >= 1")) => {
                ready.expect("n is within the burst");
            }
        }
        let batch = fleet
            .receive(dlq, n as i32, 2, REDRIVE_VISIBILITY_SECS)
            .await?;
        let mut to_move = Vec::new();
        let mut new_in_batch = false;
        for m in batch {
            let id = m.message_id().unwrap_or_default().to_owned();
            let receipt = m.receipt_handle().unwrap_or_default().to_owned();
            // One try per run: a message that could not be sent back stays where it is.
            let held = if failed.contains_key(&id) {
                &mut failed
            } else if !opts.filter.matches(&m, now) {
                &mut skipped
            } else if !opts.force && !Dead::of(&m).redrive_is_safe() {
                &mut refused
            } else {
                new_in_batch = true;
                to_move.push(m);
                continue;
            };
            new_in_batch |= held.insert(id, receipt).is_none();
        }
        let held = (skipped.len() + refused.len() + failed.len()) as u64;
        if !new_in_batch {
            empty_rounds += 1;
            if empty_rounds < 2 {
                continue;
            }
            // Nothing visible. Messages still in flight (beyond those we hold) were taken by
            // someone else, typically an interrupted run: wait for them to come back.
            let in_flight = fleet.counts(dlq).await?.in_flight;
            summary.left_in_flight = in_flight.saturating_sub(held);
            let waiting = waiting_since.get_or_insert_with(Instant::now);
            if summary.left_in_flight == 0 || waiting.elapsed() > in_flight_wait {
                break;
            }
            bar.set_message(format!(
                "waiting for {} message(s) in flight to come back",
                summary.left_in_flight
            ));
            tokio::select! {
                _ = interrupt.cancelled() => {
                    summary.cancelled = true;
                    break;
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
            }
        }
        empty_rounds = 0;
        let sent = send_back(fleet, source, dlq, &to_move).await?;
        summary.moved += sent.len() as u64;
        for (i, m) in to_move.iter().enumerate() {
            if !sent.contains(&i) {
                failed.insert(
                    m.message_id().unwrap_or_default().to_owned(),
                    m.receipt_handle().unwrap_or_default().to_owned(),
                );
            }
        }
        bar.set_position(summary.moved + (skipped.len() + refused.len() + failed.len()) as u64);
        bar.set_message(format!(
            "moved {} · skipped {} · refused {} · failed {}",
            summary.moved,
            skipped.len(),
            refused.len(),
            failed.len()
        ));
    }
    bar.finish();
    summary.skipped = skipped.len() as u64;
    summary.refused = refused.len() as u64;
    summary.failed = failed.len() as u64;
    let receipts: Vec<String> = [skipped, refused, failed]
        .into_iter()
        .flat_map(HashMap::into_values)
        .collect();
    fleet.hand_back(dlq, &receipts).await?;
    Ok(summary)
}

/// The `MessageGroupId` a FIFO DLQ message was sent with (every FIFO message has one).
fn group_of(m: &Message) -> String {
    system(m, MessageSystemAttributeName::MessageGroupId)
        .unwrap_or("redrive")
        .to_owned()
}

/// The attributes a redriven message goes back with: the ones it had before it was
/// dead-lettered (see [`fleet::dlq`]), the reason dropped, plus its original message id
/// (`fleet.message-id`), which tells the engine it is a redriven copy and which message it is (a
/// stopped FIFO group lets its head and its parked messages through by it). With no room left
/// for that id, the copy goes back as it is (the engine restores it on receive all the same).
fn original_attributes(m: &Message) -> HashMap<String, MessageAttributeValue> {
    let received = m.message_attributes().cloned().unwrap_or_default();
    let mut attributes = fleet::dlq::restore_originals(received.clone());
    attributes.retain(|name, _| !name.starts_with(fleet::dlq::PREFIX));
    let id = received
        .get(attr::MESSAGE_ID)
        .cloned()
        .or_else(|| m.message_id().map(fleet::dlq::string));
    match id {
        Some(id) if attributes.len() < fleet::dlq::SQS_MAX_MESSAGE_ATTRIBUTES => {
            attributes.insert(attr::MESSAGE_ID.to_owned(), id);
            attributes
        }
        _ => received,
    }
}

/// Sends a batch to its source queues, then deletes from the DLQ what was sent; the indices
/// of the messages sent. A source queue that refuses them (gone, no permission) fails its
/// messages, not the run: they stay in the DLQ.
async fn send_back(
    fleet: &Deployment,
    default_source: &str,
    dlq: &str,
    batch: &[Message],
) -> Result<HashSet<usize>> {
    // Group by source queue: the engine records it; messages moved by the redrive policy
    // carry none and go to the topology's source.
    let mut by_source: HashMap<String, Vec<(usize, &Message)>> = HashMap::new();
    for (i, m) in batch.iter().enumerate() {
        let source = attribute(m, attr::SOURCE_QUEUE)
            .unwrap_or(default_source)
            .to_owned();
        by_source.entry(source).or_default().push((i, m));
    }
    let mut sent: HashSet<usize> = HashSet::new();
    for (source, messages) in by_source {
        let fifo = fleet::topology::is_fifo(&source);
        let entries = messages
            .iter()
            .map(|(i, m)| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(m.body().unwrap_or_default())
                    .set_message_attributes(Some(original_attributes(m)))
                    // A FIFO source needs the message's group back, and a deduplication id:
                    // the DLQ copy's id, so that a redrive retried within SQS's 5-minute window
                    // sends no second copy.
                    .set_message_group_id(fifo.then(|| group_of(m)))
                    .set_message_deduplication_id(
                        fifo.then(|| m.message_id().unwrap_or_default().to_owned()),
                    )
                    .build()
                    .expect("id and body set")
            })
            .collect();
        let out = match fleet
            .sqs
            .send_message_batch()
            .queue_url(&source)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(out) => out,
            Err(err) => {
                eprintln!(
                    "fleetctl: cannot send {} message(s) back to {source}: {}",
                    messages.len(),
                    fleet::classify(&err)
                );
                continue;
            }
        };
        sent.extend(
            out.successful
                .iter()
                .filter_map(|s| s.id.parse::<usize>().ok()),
        );
        for f in &out.failed {
            eprintln!(
                "fleetctl: cannot send a message back to {source}: {} {}",
                f.code,
                f.message.as_deref().unwrap_or("")
            );
        }
    }
    let deletes: Vec<_> = sent
        .iter()
        .map(|i| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(batch[*i].receipt_handle().unwrap_or_default())
                .build()
                .expect("id and receipt set")
        })
        .collect();
    if !deletes.is_empty() {
        fleet
            .sqs
            .delete_message_batch()
            .queue_url(dlq)
            .set_entries(Some(deletes))
            .send()
            .await
            .map_err(|e| fleet::classify(&e))?;
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_attributes_are_restored_and_reasons_dropped() {
        use fleet::dlq::string;
        let message = Message::builder()
            .message_id("dlq-copy-9")
            .message_attributes("paymentId", string("p-1"))
            .message_attributes(attr::KIND, string("conflict"))
            .message_attributes(attr::MESSAGE_ID, string("m-1"))
            .message_attributes(
                attr::ORIGINAL_ATTRIBUTES,
                string(r#"{"requestId":{"data_type":"String","string_value":"r-1"}}"#),
            )
            .build();
        let restored = original_attributes(&message);
        assert_eq!(restored.len(), 3, "{restored:?}");
        assert_eq!(restored[attr::MESSAGE_ID].string_value(), Some("m-1"));
        assert_eq!(restored["paymentId"].string_value(), Some("p-1"));
        assert_eq!(restored["requestId"].string_value(), Some("r-1"));
    }

    #[test]
    fn a_copy_without_room_for_its_id_goes_back_as_it_is() {
        use fleet::dlq::string;
        let mut builder = Message::builder().message_id("dlq-copy");
        for i in 0..10 {
            builder = builder.message_attributes(format!("a{i}"), string("v"));
        }
        let message = builder.build();
        assert_eq!(
            original_attributes(&message),
            message.message_attributes().cloned().unwrap()
        );
    }
}
