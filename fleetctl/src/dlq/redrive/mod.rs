//! `dlq redrive`: moves messages back to where they came from.
//!
//! Two ways: SQS's own move task ([`move_task`]: server-side, every message, the DLQ's
//! attributes as they are) when no filter or limit is given; else, or when it fails, receive,
//! send back with the original attributes restored, delete ([`batch`]). Reason kinds that
//! cannot succeed again ([`fleet::dlq::redrive_is_safe`]) are refused unless `--force`: asked
//! for by name, the redrive stops at once; found in the DLQ, they are left there (the move task,
//! which would take them too, gives way to the batch method).

mod batch;
mod move_task;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Instant;

use anyhow::{bail, Result};
use fleet::CancellationToken;
use serde::Serialize;

use super::read::{read_once, End, ReadOptions};
use super::time::now_ms;
use super::{reason_is_safe, Dead, Filter};
use crate::deployment::Deployment;

/// Options of `dlq redrive`.
#[derive(Debug, Clone)]
pub(crate) struct Redrive {
    /// Messages moved per second at most.
    pub(crate) max_per_second: NonZeroU32,
    /// Which messages.
    pub(crate) filter: Filter,
    /// Stop after this many.
    pub(crate) max: Option<u64>,
    /// How to move them.
    pub(crate) method: Method,
    /// Also the kinds that cannot succeed again.
    pub(crate) force: bool,
    /// Only tell what would move.
    pub(crate) dry_run: bool,
    /// How the DLQ is read for a dry run, and before a move task.
    pub(crate) read: ReadOptions,
}

impl Redrive {
    /// Neither a filter nor a limit: the move task can do it.
    fn plain(&self) -> bool {
        self.filter.is_empty() && self.max.is_none()
    }
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

const MOVE_TASK: &str = "move-task";
const BATCH: &str = "receive-send-delete";

/// What a redrive did.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Summary {
    /// Sent back to their source queue and deleted from the DLQ.
    pub(crate) moved: u64,
    /// Left in the DLQ because the filter did not match.
    pub(crate) skipped: u64,
    /// Left in the DLQ because their reason kind cannot succeed again (no --force).
    pub(crate) refused: u64,
    /// Could not be sent back (left in the DLQ).
    pub(crate) failed: u64,
    /// Still in flight in the DLQ at the end (held by another reader) and so not moved.
    pub(crate) left_in_flight: u64,
    /// How: `move-task`, `receive-send-delete`, or `none` (stopped before moving anything).
    pub(crate) method: &'static str,
    /// Stopped by Ctrl-C (the move task cancelled, or the batch method stopped between two
    /// batches).
    pub(crate) cancelled: bool,
    /// Wall time.
    pub(crate) seconds: f64,
}

impl Summary {
    /// Messages it was to move are still in the DLQ: sends failed, or they stayed in flight.
    pub(crate) fn incomplete(&self) -> bool {
        self.failed > 0 || self.left_in_flight > 0
    }
}

/// What one reason kind would do in a dry run.
#[derive(Debug, Serialize)]
pub(crate) struct PlanRow {
    pub(crate) reason: String,
    pub(crate) count: u64,
    /// `move`, `refuse` (cannot succeed again, no --force) or `skip` (the filter does not match).
    pub(crate) action: &'static str,
}

/// What `--dry-run` prints.
#[derive(Debug, Serialize)]
pub(crate) struct Plan {
    pub(crate) dry_run: bool,
    /// The method a redrive with the same options would use.
    pub(crate) method: &'static str,
    /// How many it would move (at most --max).
    pub(crate) would_move: u64,
    /// How many it would leave because their kind cannot succeed again.
    pub(crate) refused: u64,
    /// How many the filter leaves.
    pub(crate) skipped: u64,
    /// By reason and action, most frequent first.
    pub(crate) by_reason: Vec<PlanRow>,
    /// Ctrl-C cut the read short (the counts are partial).
    #[serde(skip)]
    pub(crate) interrupted: bool,
}

/// What `redrive` ends with.
#[derive(Debug)]
pub(crate) enum Report {
    /// It moved messages.
    Done(Summary),
    /// A dry run.
    Plan(Plan),
}

fn refusal(what: &str) -> String {
    format!(
        "refusing to redrive {what}: a redrive cannot cure it, it would fail again the same way \
         (see `fleetctl dlq summary`); pass --force to move it all the same"
    )
}

/// `dlq redrive`.
pub(crate) async fn redrive(
    fleet: &Deployment,
    key: &str,
    opts: &Redrive,
    interrupt: &CancellationToken,
) -> Result<Report> {
    let started = Instant::now();
    if let Some(reason) = &opts.filter.reason {
        if !opts.force && !reason_is_safe(reason) {
            bail!(refusal(&format!("reason {reason}")));
        }
    }
    if opts.method == Method::MoveTask && !opts.plain() {
        bail!("--method move-task cannot filter or limit: use --method batch");
    }
    let source = fleet.url(key, false).await?;
    let dlq = fleet.url(key, true).await?;
    let name = fleet.name(key, true);
    let seconds = || (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;

    if opts.dry_run {
        return Ok(Report::Plan(
            plan(fleet, &dlq, &name, opts, interrupt).await?,
        ));
    }
    let mut use_move_task = opts.method != Method::Batch && opts.plain();
    if use_move_task && !opts.force {
        // The move task takes everything: only when the DLQ holds nothing refused.
        let census = plan(fleet, &dlq, &name, opts, interrupt).await?;
        if census.interrupted {
            return Ok(Report::Done(Summary {
                method: "none",
                cancelled: true,
                seconds: seconds(),
                ..Summary::default()
            }));
        }
        if census.refused > 0 {
            let kinds = census
                .by_reason
                .iter()
                .filter(|r| r.action == "refuse")
                .map(|r| format!("{}: {}", r.reason, r.count))
                .collect::<Vec<_>>()
                .join(", ");
            let what = format!("the {} message(s) of {name} with {kinds}", census.refused);
            if opts.method == Method::MoveTask {
                bail!(
                    "{}; or --method batch to move the others and leave them",
                    refusal(&what)
                );
            }
            eprintln!("fleetctl: leaving {what}, which cannot succeed again: moving the others one batch at a time");
            use_move_task = false;
        }
    }
    let mut moved_by_task = 0;
    if use_move_task {
        let ended = move_task::run(fleet, &source, &dlq, &name, opts, interrupt).await?;
        match ended.how {
            move_task::How::Completed | move_task::How::Cancelled => {
                return Ok(Report::Done(Summary {
                    moved: ended.moved,
                    method: MOVE_TASK,
                    cancelled: ended.how == move_task::How::Cancelled,
                    seconds: seconds(),
                    ..Summary::default()
                }));
            }
            move_task::How::Unavailable if opts.method == Method::MoveTask => {
                bail!(
                    "the move task did not complete ({} message(s) moved)",
                    ended.moved
                )
            }
            move_task::How::Unavailable => moved_by_task = ended.moved,
        }
    }
    let mut summary = batch::run(fleet, &source, &dlq, opts, interrupt).await?;
    summary.moved += moved_by_task;
    summary.method = BATCH;
    summary.seconds = seconds();
    if summary.refused > 0 {
        eprintln!(
            "fleetctl: {} message(s) left in {name}: their reason cannot succeed again (`fleetctl dlq summary {key}`); --force moves them all the same",
            summary.refused
        );
    }
    Ok(Report::Done(summary))
}

/// Reads the DLQ once and tells what a redrive with these options would do.
async fn plan(
    fleet: &Deployment,
    dlq: &str,
    name: &str,
    opts: &Redrive,
    interrupt: &CancellationToken,
) -> Result<Plan> {
    let now = now_ms();
    let mut rows: HashMap<(String, &'static str), u64> = HashMap::new();
    let pass = read_once(fleet, dlq, &opts.read, interrupt, name, |m| {
        let dead = Dead::of(m);
        let action = if !opts.filter.matches(m, now) {
            "skip"
        } else if !opts.force && !dead.redrive_is_safe() {
            "refuse"
        } else {
            "move"
        };
        *rows.entry((dead.reason().to_owned(), action)).or_default() += 1;
        Ok(true)
    })
    .await?;
    pass.warn(name);
    let count = |action: &str| -> u64 {
        rows.iter()
            .filter(|((_, a), _)| *a == action)
            .map(|(_, n)| n)
            .sum()
    };
    let (eligible, refused, skipped) = (count("move"), count("refuse"), count("skip"));
    let mut by_reason: Vec<PlanRow> = rows
        .into_iter()
        .map(|((reason, action), count)| PlanRow {
            reason,
            count,
            action,
        })
        .collect();
    by_reason.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.reason.cmp(&b.reason)));
    let move_task = opts.method != Method::Batch && opts.plain() && (opts.force || refused == 0);
    Ok(Plan {
        dry_run: true,
        method: if move_task { MOVE_TASK } else { BATCH },
        would_move: opts.max.map_or(eligible, |max| eligible.min(max)),
        refused,
        skipped,
        by_reason,
        interrupted: pass.end == End::Interrupted,
    })
}
