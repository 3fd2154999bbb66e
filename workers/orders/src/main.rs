//! `orders-worker`: parse configuration, run the engine with the orders handler.

use clap::Parser;
use orders_worker::{Config, OrdersHandler};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let table = config.table;
    fleet::worker::run(
        env!("CARGO_PKG_NAME"),
        config.worker,
        |sdk, metrics| async move {
            let dynamodb = fleet::dynamodb::client(&sdk);
            OrdersHandler::new(dynamodb, table, &metrics)
        },
    )?;
    Ok(())
}
