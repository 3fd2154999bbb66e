//! `orders-worker`: parse configuration, build the store, run the engine.

use clap::Parser;
use orders_worker::store::DynamoStore;
use orders_worker::{Config, OrdersHandler};

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
            OrdersHandler::new(DynamoStore::new(dynamodb, table, &metrics), &metrics)
        },
    )?;
    Ok(())
}
