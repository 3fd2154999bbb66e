//! `dlq peek`: a few messages with their reasons, left in place.

use std::io::Write;

use anyhow::Result;
use aws_sdk_sqs::types::Message;
use fleet::dlq::names as attr;
use fleet::CancellationToken;

use super::read::{read_once, End, ReadOptions};
use super::time::{now_ms, rfc3339};
use super::{attribute, to_json, Dead, Filter};
use crate::deployment::Deployment;
use crate::status::human_age;

/// Longest body preview printed.
const PREVIEW_CHARS: usize = 160;

/// Up to `n` messages matching `filter`, as text or JSON lines; `false` when Ctrl-C stopped it.
pub(crate) async fn peek(
    fleet: &Deployment,
    key: &str,
    n: usize,
    as_json: bool,
    filter: &Filter,
    read: &ReadOptions,
    interrupt: &CancellationToken,
) -> Result<bool> {
    let dlq = fleet.url(key, true).await?;
    let now = now_ms();
    let mut out = std::io::stdout().lock();
    let mut shown = 0;
    let pass = read_once(fleet, &dlq, read, interrupt, &fleet.name(key, true), |m| {
        if shown >= n {
            return Ok(false);
        }
        if filter.matches(m, now) {
            shown += 1;
            if as_json {
                writeln!(out, "{}", to_json(m))?;
            } else {
                write_text(&mut out, m, now)?;
            }
        }
        Ok(shown < n)
    })
    .await?;
    if !as_json {
        writeln!(out, "{shown} message(s) shown, all left in the queue")?;
    }
    if pass.end != End::Enough {
        pass.warn(&fleet.name(key, true));
    }
    Ok(pass.end != End::Interrupted)
}

fn write_text(out: &mut impl Write, m: &Message, now: u64) -> Result<()> {
    let dead = Dead::of(m);
    let body = m.body().unwrap_or_default();
    let preview: String = body.chars().take(PREVIEW_CHARS).collect();
    writeln!(out, "{}", m.message_id().unwrap_or_default())?;
    writeln!(
        out,
        "  reason:       {} — {}",
        dead.kind.unwrap_or("(none: moved by the redrive policy)"),
        attribute(m, attr::MESSAGE).unwrap_or("-")
    )?;
    writeln!(out, "  worker:       {}", dead.worker.unwrap_or("-"))?;
    writeln!(
        out,
        "  receives:     {} before dead-lettering",
        attribute(m, attr::RECEIVE_COUNT).unwrap_or("?")
    )?;
    match (dead.failed_at_ms, dead.age_secs(now)) {
        (Some(at), Some(age)) => writeln!(
            out,
            "  failed at:    {} ({} ago)",
            rfc3339(at),
            human_age(age)
        )?,
        _ => writeln!(out, "  failed at:    ?")?,
    }
    let more = if body.chars().count() > PREVIEW_CHARS {
        "…"
    } else {
        ""
    };
    writeln!(out, "  body:         {preview}{more}")?;
    Ok(())
}
