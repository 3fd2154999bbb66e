//! `approvals-worker`: applies approval decisions (approve → public, reject → deleted).

use clap::Parser;
use fleet::worker::Setup;
use posts::approvals::store::DynamoDecisionStore;
use posts::approvals::{ApprovalsHandler, Config};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let c = Config::parse();
    fleet::worker::run(
        env!("CARGO_BIN_NAME"),
        c.worker,
        |Setup { sdk, metrics, .. }| async move {
            let dynamodb = fleet::dynamodb::client(&sdk);
            let store = DynamoDecisionStore::new(dynamodb, c.posts_table, c.decisions_table);
            ApprovalsHandler::new(store, &metrics)
        },
    )?;
    Ok(())
}
