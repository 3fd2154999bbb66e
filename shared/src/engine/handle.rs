//! One message from start to its queue action: the handler in a task of its own (a panic is a
//! retry), a visibility heartbeat over the message and the rest of its FIFO line, the hand-back
//! when the grace period runs out.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::{debug, info_span, warn, Instrument};

use super::breaker::Signal;
use super::fifo::waiting_in;
use super::groups::LineStop;
use super::settle::{change_visibility, change_visibility_many, settle};
use super::{Flow, Shared};
use crate::message::{Handler, Message};
use crate::outcome::Outcome;

/// Handles one message from start to its final queue action. For a FIFO message, `group` is
/// its line: the heartbeat keeps the messages waiting there invisible too, from `extended`,
/// when their visibility was last set.
pub(super) async fn process<H: Handler>(
    shared: &Arc<Shared<H>>,
    message: Message,
    permit: OwnedSemaphorePermit,
    group: Option<&String>,
    extended: &mut Instant,
    line: Option<&mut LineStop>,
) -> Flow {
    let span = info_span!(
        "message",
        message_id = %message.message_id,
        queue = %shared.settings.queue_name,
        receive_count = message.receive_count,
        group = message.group_id.as_deref(),
    );
    async move {
        shared.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let outcome = run_handler(shared, &message, group, extended).await;
        let elapsed = started.elapsed();
        shared.metrics.latency.record(elapsed);
        shared.limit.release(permit);
        shared.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        shared.progress.mark();
        let Some(outcome) = outcome else {
            // Handed back unhandled: if it was a probe, let another go.
            shared.breaker.record(Signal::Neutral, Instant::now());
            return Flow::Hold(0);
        };
        let elapsed_ms = elapsed.as_millis() as u64;
        let id = message.message_id.clone();
        let flow = settle(shared, message, outcome, elapsed_ms, line).await;
        if !matches!(flow, Flow::Hold(_)) {
            shared.settled(&id);
        }
        flow
    }
    .instrument(span)
    .await
}

/// Runs the handler with a visibility heartbeat (over the message and the rest of its group).
/// `None` when the message was handed back because the grace period ran out.
async fn run_handler<H: Handler>(
    shared: &Arc<Shared<H>>,
    message: &Message,
    group: Option<&String>,
    extended: &mut Instant,
) -> Option<Outcome> {
    let handler = shared.handler.clone();
    let owned = message.clone();
    // A task of its own, so that a panic is caught as a JoinError.
    let mut work = tokio::spawn(async move { handler.handle(&owned).await });
    let visibility = shared.settings.visibility_timeout;
    let period = (visibility / 2).max(Duration::from_secs(1));
    let mut heartbeat = tokio::time::interval_at(*extended + period, period);
    loop {
        tokio::select! {
            joined = &mut work => {
                return Some(match joined {
                    Ok(outcome) => outcome,
                    Err(err) if err.is_panic() => Outcome::retry("panic", "the handler panicked"),
                    Err(_) => Outcome::retry("cancelled", "the handler task was cancelled"),
                });
            }
            _ = heartbeat.tick() => {
                let waiting = waiting_in(shared, group);
                debug!(extend_secs = visibility.as_secs(), waiting = waiting.len(), "heartbeat: extending visibility");
                *extended = Instant::now();
                let secs = visibility.as_secs() as i32;
                if waiting.is_empty() {
                    if let Err(err) = change_visibility(shared, message, secs).await {
                        warn!(error = %err, "heartbeat failed; the message may be delivered twice");
                    }
                } else {
                    let line: Vec<Message> = std::iter::once(message.clone()).chain(waiting).collect();
                    change_visibility_many(shared, &line, secs).await;
                }
            }
            () = shared.abort.cancelled() => {
                work.abort();
                if let Err(err) = change_visibility(shared, message, 0).await {
                    warn!(error = %err, "hand-back failed; the message returns after its visibility timeout");
                }
                return None;
            }
        }
    }
}
