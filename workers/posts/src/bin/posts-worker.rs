//! `posts-worker`: stores new posts as PENDING and requests their approval, once.

use clap::Parser;
use fleet::worker::WorkerArgs;
use posts::intake::{Intake, PostsHandler};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Command line and environment of `posts-worker`.
#[derive(Debug, Parser)]
#[command(
    name = "posts-worker",
    version,
    about = "Stores new posts and requests their approval"
)]
struct Config {
    /// The posts table.
    #[arg(long, env = "POSTS_TABLE", value_name = "TABLE")]
    posts_table: String,
    /// The decisions table (a decided post is never created again).
    #[arg(long, env = "POST_DECISIONS_TABLE", value_name = "TABLE")]
    decisions_table: String,
    /// The approval service's FIFO request queue.
    #[arg(long, env = "APPROVAL_REQUESTS_QUEUE_URL", value_name = "URL")]
    requests_queue_url: String,
    #[command(flatten)]
    worker: WorkerArgs,
}

fn main() -> anyhow::Result<()> {
    let c = Config::parse();
    let (posts_table, decisions_table, requests_queue_url) =
        (c.posts_table, c.decisions_table, c.requests_queue_url);
    fleet::worker::run("posts-worker", c.worker, |sdk, metrics| async move {
        let to = Intake {
            dynamodb: fleet::dynamodb::client(&sdk),
            sqs: fleet::aws::sqs_client(&sdk),
            posts_table,
            decisions_table,
            requests_queue_url,
        };
        PostsHandler::new(to, &metrics)
    })?;
    Ok(())
}
