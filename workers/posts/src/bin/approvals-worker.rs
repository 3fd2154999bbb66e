//! `approvals-worker`: applies approval decisions (approve → public, reject → deleted).

use clap::Parser;
use fleet::worker::WorkerArgs;
use posts::approvals::ApprovalsHandler;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Command line and environment of `approvals-worker`.
#[derive(Debug, Parser)]
#[command(
    name = "approvals-worker",
    version,
    about = "Applies the approval service's decisions to posts"
)]
struct Config {
    /// The posts table.
    #[arg(long, env = "POSTS_TABLE", value_name = "TABLE")]
    posts_table: String,
    /// The decisions table.
    #[arg(long, env = "POST_DECISIONS_TABLE", value_name = "TABLE")]
    decisions_table: String,
    #[command(flatten)]
    worker: WorkerArgs,
}

fn main() -> anyhow::Result<()> {
    let c = Config::parse();
    let (posts_table, decisions_table) = (c.posts_table, c.decisions_table);
    fleet::worker::run("approvals-worker", c.worker, |sdk, metrics| async move {
        ApprovalsHandler::new(
            fleet::dynamodb::client(&sdk),
            posts_table,
            decisions_table,
            &metrics,
        )
    })?;
    Ok(())
}
