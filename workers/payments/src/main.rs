//! `payments-worker`: parse configuration, build the store, run the engine.

use clap::Parser;
use payments_worker::store::DynamoStore;
use payments_worker::{Config, PaymentsHandler};

/// mimalloc: the SDK allocates many small, short-lived buffers per call; glibc's allocator
/// spent about an eighth of the worker's CPU on them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let table = config.table;
    fleet::worker::run(
        env!("CARGO_PKG_NAME"),
        config.worker,
        |fleet::worker::Setup { sdk, metrics, .. }| async move {
            let dynamodb = fleet::dynamodb::client(&sdk);
            PaymentsHandler::new(DynamoStore::new(dynamodb, table, &metrics))
        },
    )?;
    Ok(())
}
