//! `dlq export`: every message as a JSON line, written as it is read, each once.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use fleet::CancellationToken;

use super::read::{read_once, End, ReadOptions};
use super::time::now_ms;
use super::{to_json, Filter};
use crate::deployment::Deployment;

/// Lines written between two flushes of a file (standard output flushes every line).
const FLUSH_EVERY: u64 = 10;

/// Writes the messages matching `filter` to `path` (`-`: standard output); `false` when
/// Ctrl-C stopped it (what was read is written).
pub(crate) async fn export(
    fleet: &Deployment,
    key: &str,
    path: &Path,
    filter: &Filter,
    read: &ReadOptions,
    interrupt: &CancellationToken,
) -> Result<bool> {
    let dlq = fleet.url(key, true).await?;
    let name = fleet.name(key, true);
    let to_stdout = path == Path::new("-");
    let mut out: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        ))
    };
    let now = now_ms();
    let mut written = 0u64;
    let pass = read_once(fleet, &dlq, read, interrupt, &name, |m| {
        if filter.matches(m, now) {
            writeln!(out, "{}", to_json(m))?;
            written += 1;
            if to_stdout || written.is_multiple_of(FLUSH_EVERY) {
                out.flush()?;
            }
        }
        Ok(true)
    })
    .await?;
    out.flush()?;
    let target = if to_stdout {
        "standard output".to_owned()
    } else {
        path.display().to_string()
    };
    eprintln!(
        "{written} message(s) written to {target} ({} read in {} s, {} read again and skipped)",
        pass.read, pass.seconds, pass.again
    );
    pass.warn(&name);
    Ok(pass.end != End::Interrupted)
}
