//! The move-task method: SQS's `StartMessageMoveTask` does the work, `ListMessageMoveTasks`
//! shows its progress, and Ctrl-C cancels it (`CancelMessageMoveTask`).

use std::time::Duration;

use anyhow::{bail, Result};
use aws_sdk_sqs::types::ListMessageMoveTasksResultEntry;
use fleet::CancellationToken;

use super::Redrive;
use crate::deployment::Deployment;
use crate::dlq::progress;

/// Between two looks at the task.
const POLL: Duration = Duration::from_secs(1);
/// How long a cancelled task may take to stop before we report what it moved so far.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// How the task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum How {
    /// Everything moved.
    Completed,
    /// Cancelled on Ctrl-C.
    Cancelled,
    /// It could not start, or failed: the caller moves the rest itself.
    Unavailable,
}

/// What the task did.
#[derive(Debug)]
pub(super) struct Ended {
    pub(super) moved: u64,
    pub(super) how: How,
}

/// Runs a move task from `dlq` to `source` and follows it to its end.
pub(super) async fn run(
    fleet: &Deployment,
    source: &str,
    dlq: &str,
    name: &str,
    opts: &Redrive,
    interrupt: &CancellationToken,
) -> Result<Ended> {
    let source_arn = fleet.arn(source).await?;
    let dlq_arn = fleet.arn(dlq).await?;
    // The bar's length until the task says how many it will move.
    let visible = fleet.counts(dlq).await?.visible;
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
                "fleetctl: StartMessageMoveTask unavailable ({}); moving messages one batch at a time",
                fleet::classify(&err)
            );
            return Ok(Ended {
                moved: 0,
                how: How::Unavailable,
            });
        }
    };
    let bar = progress::bar(Some(visible), format!("move task {name}"));
    let mut moved = 0;
    loop {
        tokio::select! {
            biased;
            _ = interrupt.cancelled() => {
                bar.abandon();
                return cancel(fleet, &handle, &dlq_arn, moved).await;
            }
            _ = tokio::time::sleep(POLL) => {}
        }
        let Some(task) = task(fleet, &dlq_arn, &handle).await? else {
            bar.abandon();
            eprintln!("fleetctl: the move task is gone; moving the rest one batch at a time");
            return Ok(Ended {
                moved,
                how: How::Unavailable,
            });
        };
        moved = task.approximate_number_of_messages_moved() as u64;
        if let Some(to_move) = task.approximate_number_of_messages_to_move() {
            bar.set_length(to_move as u64);
        }
        bar.set_position(moved);
        bar.set_message(task.status().unwrap_or("?").to_owned());
        match task.status() {
            Some("COMPLETED") => {
                bar.finish();
                return Ok(Ended {
                    moved,
                    how: How::Completed,
                });
            }
            Some("RUNNING") => continue,
            Some("CANCELLING" | "CANCELLED") => {
                bar.abandon();
                bail!("the move task was cancelled by someone else after {moved} message(s)");
            }
            other => {
                bar.abandon();
                eprintln!(
                    "fleetctl: the move task ended {}: {}; moving the rest one batch at a time",
                    other.unwrap_or("?"),
                    task.failure_reason().unwrap_or("no reason given")
                );
                return Ok(Ended {
                    moved,
                    how: How::Unavailable,
                });
            }
        }
    }
}

/// The latest task of the DLQ, when it is ours (a running task shows its handle; a finished one
/// may not).
async fn task(
    fleet: &Deployment,
    dlq_arn: &str,
    handle: &str,
) -> Result<Option<ListMessageMoveTasksResultEntry>> {
    let tasks = fleet
        .sqs
        .list_message_move_tasks()
        .source_arn(dlq_arn)
        .send()
        .await
        .map_err(|e| fleet::classify(&e))?;
    Ok(tasks
        .results
        .unwrap_or_default()
        .into_iter()
        .find(|t| t.task_handle().is_none_or(|h| h == handle)))
}

/// Ctrl-C: cancels the task, waits (a little) for it to stop, and tells what it moved.
async fn cancel(fleet: &Deployment, handle: &str, dlq_arn: &str, mut moved: u64) -> Result<Ended> {
    eprintln!("fleetctl: Ctrl-C: cancelling the move task");
    let out = fleet
        .sqs
        .cancel_message_move_task()
        .task_handle(handle)
        .send()
        .await
        .map_err(|e| fleet::classify(&e))?;
    moved = moved.max(out.approximate_number_of_messages_moved() as u64);
    let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
    while tokio::time::Instant::now() < deadline {
        match task(fleet, dlq_arn, handle).await? {
            Some(task) if task.status() == Some("CANCELLING") => {
                moved = moved.max(task.approximate_number_of_messages_moved() as u64);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Some(task) => {
                moved = moved.max(task.approximate_number_of_messages_moved() as u64);
                break;
            }
            None => break,
        }
    }
    eprintln!("fleetctl: the move task is cancelled after {moved} message(s) moved; the rest stays in the DLQ");
    Ok(Ended {
        moved,
        how: How::Cancelled,
    })
}
