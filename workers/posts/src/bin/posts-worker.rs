//! `posts-worker`: stores new posts as PENDING and requests their approval, once.

use clap::Parser;
use fleet::worker::Setup;
use posts::approval_queues::SqsApprovalRequests;
use posts::intake::store::DynamoIntakeStore;
use posts::intake::{Config, PostsHandler};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let c = Config::parse();
    fleet::worker::run(
        env!("CARGO_BIN_NAME"),
        c.worker,
        |Setup { sdk, metrics, .. }| async move {
            let dynamodb = fleet::dynamodb::client(&sdk);
            let store = DynamoIntakeStore::new(dynamodb, c.posts_table, c.decisions_table);
            let requests =
                SqsApprovalRequests::new(fleet::aws::sqs_client(&sdk), c.requests_queue_url);
            PostsHandler::new(store, requests, &metrics)
        },
    )?;
    Ok(())
}
