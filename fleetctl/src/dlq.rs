//! `fleetctl dlq …`: look inside a dead-letter queue, move messages back, export, purge.

use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, Message, MessageAttributeValue, MessageSystemAttributeName,
    SendMessageBatchRequestEntry,
};
use fleet::dlq::names as attr;
use governor::{Quota, RateLimiter};
use serde_json::{json, Value};

use crate::fleet::Fleet;

/// Longest body preview printed by `peek`.
const PREVIEW_CHARS: usize = 160;
/// How long a message received by `redrive` stays invisible while it is being moved (a batch
/// takes well under a second; an interrupted run's batch comes back after this).
const REDRIVE_VISIBILITY_SECS: i32 = 30;

fn attribute<'a>(m: &'a Message, name: &str) -> Option<&'a str> {
    m.message_attributes()?.get(name)?.string_value()
}

fn system(m: &Message, name: MessageSystemAttributeName) -> Option<&str> {
    m.attributes()?.get(&name).map(String::as_str)
}

/// A message as `peek --json` and `export` write it.
pub(crate) fn to_json(m: &Message) -> Value {
    let attributes: serde_json::Map<String, Value> = m
        .message_attributes()
        .map(|a| {
            a.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        json!({"data_type": v.data_type(), "string_value": v.string_value()}),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "message_id": m.message_id(),
        "body": m.body(),
        "attributes": attributes,
        "sent_timestamp": system(m, MessageSystemAttributeName::SentTimestamp),
        "receive_count": system(m, MessageSystemAttributeName::ApproximateReceiveCount),
    })
}

/// `dlq peek`: up to `n` messages with their reasons, left in place.
pub(crate) async fn peek(fleet: &Fleet, key: &str, n: usize, as_json: bool) -> Result<()> {
    let dlq = fleet.url(key, true).await?;
    let messages = fleet.read_all(&dlq, n).await?;
    let mut out = std::io::stdout().lock();
    for m in &messages {
        if as_json {
            writeln!(out, "{}", to_json(m))?;
            continue;
        }
        let body = m.body().unwrap_or_default();
        let preview: String = body.chars().take(PREVIEW_CHARS).collect();
        writeln!(out, "{}", m.message_id().unwrap_or_default())?;
        writeln!(
            out,
            "  reason:       {} — {}",
            attribute(m, attr::KIND).unwrap_or("(none: moved by the redrive policy)"),
            attribute(m, attr::MESSAGE).unwrap_or("-")
        )?;
        writeln!(
            out,
            "  worker:       {}",
            attribute(m, attr::WORKER).unwrap_or("-")
        )?;
        writeln!(
            out,
            "  receives:     {} before dead-lettering",
            attribute(m, attr::RECEIVE_COUNT).unwrap_or("?")
        )?;
        writeln!(
            out,
            "  failed at:    {} ms since the epoch",
            attribute(m, attr::FAILED_AT)
                .or_else(|| system(m, MessageSystemAttributeName::SentTimestamp))
                .unwrap_or("?")
        )?;
        let more = if body.chars().count() > PREVIEW_CHARS {
            "…"
        } else {
            ""
        };
        writeln!(out, "  body:         {preview}{more}")?;
    }
    if !as_json {
        writeln!(
            out,
            "{} message(s) shown, all left in the queue",
            messages.len()
        )?;
    }
    Ok(())
}

/// `dlq export`: every message as a JSON line, left in place.
pub(crate) async fn export(fleet: &Fleet, key: &str, path: &std::path::Path) -> Result<usize> {
    let dlq = fleet.url(key, true).await?;
    let messages = fleet.read_all(&dlq, usize::MAX).await?;
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    for m in &messages {
        writeln!(file, "{}", to_json(m))?;
    }
    file.flush()?;
    Ok(messages.len())
}

/// `dlq purge`: deletes everything in the DLQ after a confirmation.
pub(crate) async fn purge(fleet: &Fleet, key: &str, yes: bool) -> Result<u64> {
    let dlq = fleet.url(key, true).await?;
    let depth = fleet.counts(&dlq).await?.total();
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!("refusing to purge {depth} message(s) without confirmation: pass --yes");
        }
        eprint!("purge {depth} message(s) from {dlq}? [y/N] ");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            bail!("not purged");
        }
    }
    fleet
        .sqs
        .purge_queue()
        .queue_url(&dlq)
        .send()
        .await
        .map_err(|e| fleet::classify(&e))?;
    Ok(depth)
}

/// Options of `dlq redrive`.
#[derive(Debug, Clone)]
pub(crate) struct Redrive {
    /// Messages moved per second at most.
    pub(crate) max_per_second: NonZeroU32,
    /// Only messages whose `fleet.error.kind` equals this.
    pub(crate) reason: Option<String>,
    /// Stop after this many.
    pub(crate) max: Option<u64>,
    /// How to move them.
    pub(crate) method: Method,
}

/// How `redrive` moves messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Method {
    /// SQS's move task when no filter or limit is given and it works, else `batch`.
    Auto,
    /// SQS's `StartMessageMoveTask` only (keeps the DLQ's attributes as they are).
    MoveTask,
    /// Receive, send back with the original attributes restored, delete; filters and limits.
    Batch,
}

/// What a redrive did.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct Summary {
    /// Sent back to their source queue and deleted from the DLQ.
    pub(crate) moved: u64,
    /// Left in the DLQ because the filter did not match.
    pub(crate) skipped: u64,
    /// Could not be sent back (left in the DLQ).
    pub(crate) failed: u64,
    /// Still in flight in the DLQ at the end (held by another reader) and so not moved.
    pub(crate) left_in_flight: u64,
    /// How: `move-task` or `receive-send-delete`.
    pub(crate) method: &'static str,
    /// Wall time.
    pub(crate) seconds: f64,
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

/// `dlq redrive`: moves messages back to where they came from.
///
/// Without a filter or a limit it first asks SQS to do it (`StartMessageMoveTask`). Otherwise,
/// or when that fails, it receives a batch, sends it to the source queue, then deletes what was
/// sent: an interruption at any point leaves duplicates at most, never a loss.
pub(crate) async fn redrive(fleet: &Fleet, key: &str, opts: &Redrive) -> Result<Summary> {
    let started = Instant::now();
    let source = fleet.url(key, false).await?;
    let dlq = fleet.url(key, true).await?;
    let mut summary = Summary::default();
    let plain = opts.reason.is_none() && opts.max.is_none();
    if opts.method == Method::MoveTask && !plain {
        bail!("--method move-task cannot filter or limit: use --method batch");
    }
    if opts.method != Method::Batch && plain {
        if let Some(moved) = move_task(fleet, &source, &dlq, opts).await? {
            summary.method = "move-task";
            summary.moved = moved;
            summary.seconds = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
            return Ok(summary);
        }
        if opts.method == Method::MoveTask {
            bail!("the move task did not complete");
        }
    }
    summary.method = "receive-send-delete";

    let limiter = RateLimiter::direct(Quota::per_second(opts.max_per_second));
    let batch_size = opts.max_per_second.get().min(10);
    // A progress bar on a terminal, sized by what the DLQ held at the start.
    let progress = if std::io::stderr().is_terminal() {
        Some(fleet.counts(&dlq).await?.total())
    } else {
        None
    };
    let mut skipped: HashMap<String, String> = HashMap::new(); // message id -> receipt
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
        limiter
            .until_n_ready(NonZeroU32::new(n).expect("n >= 1"))
            .await
            .expect("n is within the burst");
        let batch = fleet
            .receive(&dlq, n as i32, 2, REDRIVE_VISIBILITY_SECS)
            .await?;
        let mut to_move = Vec::new();
        let mut new_in_batch = false;
        for m in batch {
            let id = m.message_id().unwrap_or_default().to_owned();
            let matches = opts
                .reason
                .as_deref()
                .is_none_or(|r| attribute(&m, attr::KIND) == Some(r));
            if matches {
                new_in_batch = true;
                to_move.push(m);
            } else {
                new_in_batch |= !skipped.contains_key(&id);
                skipped.insert(id, m.receipt_handle().unwrap_or_default().to_owned());
            }
        }
        if !new_in_batch {
            empty_rounds += 1;
            if empty_rounds < 2 {
                continue;
            }
            // Nothing visible. Messages still in flight (beyond those we skipped) were taken by
            // someone else, typically an interrupted run: wait for them to come back.
            let in_flight = fleet.counts(&dlq).await?.in_flight;
            summary.left_in_flight = in_flight.saturating_sub(skipped.len() as u64);
            let waiting = waiting_since.get_or_insert_with(Instant::now);
            if summary.left_in_flight == 0 || waiting.elapsed() > in_flight_wait {
                break;
            }
            if progress.is_some() {
                eprint!(
                    "\rwaiting for {} message(s) in flight to come back   ",
                    summary.left_in_flight
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        empty_rounds = 0;
        let (moved, failed) = send_back(fleet, &source, &dlq, &to_move).await?;
        summary.moved += moved;
        summary.failed += failed;
        if let Some(total) = progress {
            let done = summary.moved + skipped.len() as u64 + summary.failed;
            eprint!(
                "\r{} moved {} · skipped {} · failed {}   ",
                bar(done, total),
                summary.moved,
                skipped.len(),
                summary.failed
            );
        }
    }
    if progress.is_some() {
        eprintln!();
    }
    summary.skipped = skipped.len() as u64;
    let receipts: Vec<String> = skipped.into_values().collect();
    fleet.hand_back(&dlq, &receipts).await?;
    summary.seconds = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    Ok(summary)
}

/// The `MessageGroupId` a FIFO DLQ message was sent with (every FIFO message has one).
fn group_of(m: &Message) -> String {
    m.attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId))
        .cloned()
        .unwrap_or_else(|| "redrive".to_owned())
}

/// `[#########-----------]  45%`, 20 cells wide.
fn bar(done: u64, total: u64) -> String {
    const WIDTH: u64 = 20;
    let total = total.max(1);
    let done = done.min(total);
    let filled = (done * WIDTH / total) as usize;
    format!(
        "[{}{}] {:>3}%",
        "#".repeat(filled),
        "-".repeat(WIDTH as usize - filled),
        done * 100 / total
    )
}

/// Sends a batch to its source queue, then deletes from the DLQ what was sent.
async fn send_back(
    fleet: &Fleet,
    default_source: &str,
    dlq: &str,
    batch: &[Message],
) -> Result<(u64, u64)> {
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
        let fifo = source.ends_with(".fifo");
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
        let out = fleet
            .sqs
            .send_message_batch()
            .queue_url(&source)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| fleet::classify(&e))?;
        sent.extend(
            out.successful
                .iter()
                .filter_map(|s| s.id.parse::<usize>().ok()),
        );
        for f in &out.failed {
            eprintln!(
                "cannot send message back to {source}: {} {}",
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
    Ok((sent.len() as u64, (batch.len() - sent.len()) as u64))
}

/// Tries SQS's own move task: the number moved, or `None` when it is not available or fails
/// (then the caller moves the messages itself).
async fn move_task(fleet: &Fleet, source: &str, dlq: &str, opts: &Redrive) -> Result<Option<u64>> {
    let source_arn = fleet.arn(source).await?;
    let dlq_arn = fleet.arn(dlq).await?;
    let started = fleet
        .sqs
        .start_message_move_task()
        .source_arn(&dlq_arn)
        .destination_arn(&source_arn)
        .max_number_of_messages_per_second(opts.max_per_second.get().min(500) as i32)
        .send()
        .await;
    let handle = match started {
        Ok(out) => out.task_handle.unwrap_or_default(),
        Err(err) => {
            eprintln!(
                "StartMessageMoveTask unavailable ({}); moving messages one batch at a time",
                fleet::classify(&err)
            );
            return Ok(None);
        }
    };
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let tasks = fleet
            .sqs
            .list_message_move_tasks()
            .source_arn(&dlq_arn)
            .send()
            .await
            .map_err(|e| fleet::classify(&e))?;
        let Some(task) = tasks
            .results()
            .iter()
            .find(|t| t.task_handle().is_none_or(|h| h == handle))
        else {
            return Ok(None);
        };
        let moved = task.approximate_number_of_messages_moved() as u64;
        match task.status() {
            Some("COMPLETED") => return Ok(Some(moved)),
            Some("RUNNING") => continue,
            other => {
                eprintln!(
                    "the move task ended {}: {}; moving the rest one batch at a time",
                    other.unwrap_or("?"),
                    task.failure_reason().unwrap_or("no reason given")
                );
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_bar_fills_with_the_work() {
        assert_eq!(bar(0, 500), "[--------------------]   0%");
        assert_eq!(bar(250, 500), "[##########----------]  50%");
        assert_eq!(
            bar(600, 500),
            "[####################] 100%",
            "duplicates do not overflow"
        );
        assert_eq!(bar(0, 0), "[--------------------]   0%");
    }

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
