//! Reading a DLQ without consuming it, each message once.
//!
//! A message received stays hidden for the hide time, then comes back. A pass that outlasts
//! the hide time therefore receives messages it has read already: they are recognised by id and
//! skipped, and the pass stops by count, once it has read as many messages as the queue held at
//! its start (`ApproximateNumberOfMessages` + `…NotVisible`: messages another reader holds are
//! read when they come back), or when nothing is visible any more, or when only messages read
//! already come back for a while. Every message read is handed back at the end (visibility 0):
//! all left in place, visible at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use aws_sdk_sqs::types::Message;
use fleet::CancellationToken;

use super::progress;
use crate::deployment::Deployment;

/// How a command reads a DLQ.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ReadOptions {
    /// Seconds a message read stays hidden from other readers before it comes back (all are
    /// handed back at the end anyway); a pass slower than this still reads each message once.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u32).range(1..=43_200)
    )]
    pub(crate) hide_secs: u32,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self { hide_secs: 60 }
    }
}

/// Why a pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum End {
    /// As many messages read as were visible at the start.
    #[default]
    AllRead,
    /// Nothing visible any more (every message is read, hidden, or gone).
    Empty,
    /// The caller had enough.
    Enough,
    /// Only messages read already came back for a while: the rest is out of reach (held by
    /// another reader, or deleted meanwhile).
    Stalled,
    /// Ctrl-C.
    Interrupted,
}

/// What a pass did.
#[derive(Debug, Default)]
pub(crate) struct Pass {
    /// Distinct messages read.
    pub(crate) read: u64,
    /// Receives of a message read already (it came back after the hide time), skipped.
    pub(crate) again: u64,
    /// Visible and in flight at the start: the pass stops once it has read as many.
    pub(crate) at_start: u64,
    /// Why it ended.
    pub(crate) end: End,
    /// Wall time, seconds.
    pub(crate) seconds: f64,
}

impl Pass {
    /// Tells on stderr when the pass read fewer messages than the queue held at its start.
    pub(crate) fn warn(&self, dlq: &str) {
        if matches!(self.end, End::Empty | End::Stalled) && self.read < self.at_start {
            eprintln!(
                "fleetctl: read {} of the {} message(s) {dlq} held at the start: the others \
                 stayed in flight (another reader, or an interrupted run, holds them) or were \
                 deleted meanwhile",
                self.read, self.at_start
            );
        }
    }
}

/// Reads the queue at `url` once, calling `visit` on each message the first time it is
/// received (`visit` returns whether to go on), then hands every message back.
pub(crate) async fn read_once(
    fleet: &Deployment,
    url: &str,
    opts: &ReadOptions,
    interrupt: &CancellationToken,
    label: &str,
    mut visit: impl FnMut(&Message) -> Result<bool>,
) -> Result<Pass> {
    let started = Instant::now();
    let counts = fleet.counts(url).await?;
    let mut pass = Pass {
        at_start: counts.visible + counts.in_flight,
        ..Pass::default()
    };
    let bar = progress::bar(Some(pass.at_start), format!("reading {label}"));
    let mut receipts: HashMap<String, String> = HashMap::new();
    let result = read(
        fleet,
        url,
        opts,
        interrupt,
        &bar,
        &mut receipts,
        &mut pass,
        &mut visit,
    )
    .await;
    bar.finish_and_clear();
    let receipts: Vec<String> = receipts.into_values().collect();
    let handed_back = fleet.hand_back(url, &receipts).await;
    result?;
    handed_back?;
    pass.seconds = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    Ok(pass)
}

#[allow(clippy::too_many_arguments)]
async fn read(
    fleet: &Deployment,
    url: &str,
    opts: &ReadOptions,
    interrupt: &CancellationToken,
    bar: &indicatif::ProgressBar,
    receipts: &mut HashMap<String, String>,
    pass: &mut Pass,
    visit: &mut impl FnMut(&Message) -> Result<bool>,
) -> Result<()> {
    let hide = i32::try_from(opts.hide_secs).unwrap_or(i32::MAX);
    // Only repeats for this long: the rest is out of reach.
    let stall = Duration::from_secs(u64::from(opts.hide_secs).saturating_mul(2).max(30));
    let mut last_new = Instant::now();
    loop {
        if pass.read >= pass.at_start {
            pass.end = End::AllRead;
            return Ok(());
        }
        // Checked between receives, never during one: a receive cut short would leave its
        // messages hidden without a receipt to hand them back with.
        if interrupt.is_cancelled() {
            pass.end = End::Interrupted;
            return Ok(());
        }
        let batch = fleet.receive(url, 10, 1, hide).await?;
        if batch.is_empty() {
            pass.end = End::Empty;
            return Ok(());
        }
        let mut fresh = Vec::new();
        for m in batch {
            let id = m.message_id().unwrap_or_default().to_owned();
            let receipt = m.receipt_handle().unwrap_or_default().to_owned();
            if receipts.insert(id, receipt).is_none() {
                fresh.push(m);
            } else {
                pass.again += 1;
            }
        }
        if fresh.is_empty() {
            if last_new.elapsed() > stall {
                pass.end = End::Stalled;
                return Ok(());
            }
            continue;
        }
        last_new = Instant::now();
        for m in &fresh {
            pass.read += 1;
            bar.inc(1);
            if !visit(m)? {
                pass.end = End::Enough;
                return Ok(());
            }
        }
        if pass.again > 0 {
            bar.set_message(format!("{} read again, skipped", pass.again));
        }
    }
}
