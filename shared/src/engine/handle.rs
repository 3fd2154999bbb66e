//! One message from start to its queue action: the handler in a task of its own (a panic is a
//! retry), a visibility heartbeat over the message and the rest of its FIFO line, the hand-back
//! when the grace period runs out. Its span names the message (and the request and X-Ray trace
//! it came from); when it is finished, one line says what became of it (target
//! [`MESSAGE_TARGET`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::{debug, info, info_span, warn, Instrument, Level};

use super::breaker::Signal;
use super::fifo::waiting_in;
use super::groups::LineStop;
use super::settle::{change_visibility, change_visibility_many, settle};
use super::{Delivery, Flow, Shared};
use crate::gateway::Envelope;
use crate::message::{Handler, Message};
use crate::outcome::Outcome;
use crate::telemetry::MESSAGE_TARGET;

/// Handles one message from start to its final queue action. For a FIFO message, `group` is
/// its line: the heartbeat keeps the messages waiting there invisible too, from `extended`,
/// when their visibility was last set.
pub(super) async fn process<H: Handler>(
    shared: &Arc<Shared<H>>,
    delivery: Delivery,
    permit: OwnedSemaphorePermit,
    group: Option<&String>,
    extended: &mut Instant,
    line: Option<&mut LineStop>,
) -> Flow {
    let Delivery {
        message,
        trace_header,
    } = delivery;
    let span = info_span!(
        "message",
        message_id = %message.message_id,
        queue = %shared.settings.queue_name,
        receive_count = message.receive_count,
        group = message.group_id.as_deref(),
        request_id = Envelope::request_id_of(&message),
        trace_header = trace_header.as_deref(),
    );
    async move {
        shared.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let outcome = run_handler(shared, &message, group, extended).await;
        let elapsed = started.elapsed();
        shared.metrics.latency.record_duration(elapsed);
        shared.limit.release(permit);
        shared.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        shared.progress.mark();
        let elapsed_ms = elapsed.as_millis() as u64;
        // The finished line outlives the message (settling consumes it): what it needs is
        // copied, and only when the line is on.
        let logged = tracing::enabled!(target: MESSAGE_TARGET, Level::INFO);
        let request_id = logged
            .then(|| Envelope::request_id_of(&message).map(str::to_owned))
            .flatten();
        let Some(outcome) = outcome else {
            // Handed back unhandled: if it was a probe, let another go.
            shared.breaker.record(Signal::Neutral, Instant::now());
            if logged {
                finished(
                    "handed-back",
                    None,
                    elapsed_ms,
                    request_id.as_deref(),
                    &message.message_id,
                );
            }
            return Flow::Hold(0);
        };
        let label = outcome.label();
        let error_kind = match &outcome {
            Outcome::Retry(reason) | Outcome::Permanent(reason) if logged => {
                Some(reason.kind.clone())
            }
            _ => None,
        };
        let id = message.message_id.clone();
        let flow = settle(shared, message, outcome, elapsed_ms, line).await;
        if !matches!(flow, Flow::Hold(_)) {
            shared.settled(&id);
        }
        if logged {
            finished(
                finished_as(label, flow),
                error_kind.as_deref(),
                elapsed_ms,
                request_id.as_deref(),
                &id,
            );
        }
        flow
    }
    .instrument(span)
    .await
}

/// What became of a message, from its handler's outcome label and its settling.
fn finished_as(label: &'static str, flow: Flow) -> &'static str {
    match flow {
        Flow::DeadLettered => "dead-lettered",
        Flow::Hold(_) => "retry",
        // Deleted after a retry: put back as a fresh copy during an outage.
        Flow::Deleted if label == "retry" => "requeued",
        Flow::Deleted => label,
    }
}

/// The one line a finished message writes: `done`, `duplicate`, `retry`, `requeued`,
/// `dead-lettered` or `handed-back`, with the handler's time.
fn finished(
    outcome: &str,
    error_kind: Option<&str>,
    elapsed_ms: u64,
    request_id: Option<&str>,
    message_id: &str,
) {
    info!(
        target: MESSAGE_TARGET,
        outcome,
        error_kind,
        elapsed_ms,
        request_id,
        message_id,
        "message finished"
    );
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
