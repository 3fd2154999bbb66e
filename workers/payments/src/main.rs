//! `payments-worker`: parse configuration, build the store, run the engine.

use clap::Parser;
use fleet::aws;
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
        |sdk, metrics| async move {
            let dynamodb = aws_sdk_dynamodb::Client::from_conf(
                aws_sdk_dynamodb::config::Builder::from(&sdk)
                    .interceptor(aws::KeepAliveOnPlainHttp)
                    .build(),
            );
            PaymentsHandler::new(DynamoStore::new(dynamodb, table, &metrics))
        },
    )?;
    Ok(())
}
