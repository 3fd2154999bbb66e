//! `dlq purge`: deletes everything in a DLQ, after a confirmation.

use std::io::IsTerminal;

use anyhow::{bail, Result};

use crate::deployment::Deployment;

/// Purges the DLQ of `key`; the number of messages it held (approximately).
pub(crate) async fn purge(fleet: &Deployment, key: &str, yes: bool) -> Result<u64> {
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
