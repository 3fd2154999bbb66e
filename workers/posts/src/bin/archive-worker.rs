//! `archive-worker`: archives expired posts exactly once; also sweeps for them.

use std::time::Duration;

use clap::Parser;
use fleet::worker::WorkerArgs;
use posts::archive::{sweep, ArchiveHandler};
use tracing::{info, warn};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Command line and environment of `archive-worker`.
#[derive(Debug, Parser)]
#[command(
    name = "archive-worker",
    version,
    about = "Moves expired posts to the archive"
)]
struct Config {
    /// The posts table.
    #[arg(long, env = "POSTS_TABLE", value_name = "TABLE")]
    posts_table: String,
    /// The archive table.
    #[arg(long, env = "POSTS_ARCHIVE_TABLE", value_name = "TABLE")]
    archive_table: String,
    /// The archive queue (this worker's own queue), where the sweep sends expired posts.
    #[arg(long, env = "POSTS_ARCHIVE_QUEUE_URL", value_name = "URL")]
    archive_queue_url: String,
    /// Seconds between two sweeps for expired posts; 0 turns the sweep off (in AWS, TTL and
    /// the stream feed the queue; a daily sweep still catches what TTL has not deleted yet).
    #[arg(long, env = "POSTS_SWEEP_INTERVAL_SECS", default_value_t = 60)]
    sweep_interval_secs: u64,
    #[command(flatten)]
    worker: WorkerArgs,
}

fn main() -> anyhow::Result<()> {
    let c = Config::parse();
    let (posts_table, archive_table, queue, every) = (
        c.posts_table,
        c.archive_table,
        c.archive_queue_url,
        c.sweep_interval_secs,
    );
    fleet::worker::run("archive-worker", c.worker, |sdk, metrics| async move {
        let dynamodb = fleet::dynamodb::client(&sdk);
        if every > 0 {
            let (dynamodb, sqs, table) = (
                dynamodb.clone(),
                fleet::aws::sqs_client(&sdk),
                posts_table.clone(),
            );
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(Duration::from_secs(every));
                loop {
                    ticker.tick().await;
                    match sweep(&dynamodb, &sqs, &table, &queue).await {
                        Ok(0) => {}
                        Ok(n) => info!(expired = n, "sweep queued expired posts"),
                        Err(err) => warn!(error = %err, "sweep failed; the next one tries again"),
                    }
                }
            });
        }
        ArchiveHandler::new(dynamodb, posts_table, archive_table, &metrics)
    })?;
    Ok(())
}
