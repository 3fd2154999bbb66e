//! `payments-worker`: parse configuration, set up logs, the runtime and clients, run the engine.

use anyhow::Context;
use clap::Parser;
use fleet::{aws, shutdown, telemetry, Engine, Metrics};
use payments_worker::store::DynamoStore;
use payments_worker::{Config, PaymentsHandler};

/// mimalloc: the SDK allocates many small, short-lived buffers per call; glibc's allocator
/// spent about an eighth of the worker's CPU on them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let mut config = Config::parse();
    telemetry::init(&config.telemetry);
    config
        .engine
        .worker_name
        .get_or_insert_with(|| env!("CARGO_PKG_NAME").to_owned());
    config
        .runtime
        .build()
        .context("cannot start the tokio runtime")?
        .block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let sdk = aws::load_config().await;
    let dynamodb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk)
            .interceptor(aws::KeepAliveOnPlainHttp)
            .build(),
    );
    let metrics = Metrics::new();
    let handler = PaymentsHandler::new(DynamoStore::new(dynamodb, config.table, &metrics));
    let engine = Engine::new(aws::sqs_client(&sdk), config.engine, handler, metrics);
    engine
        .run(shutdown::signal_token())
        .await
        .context("payments-worker could not start")?;
    Ok(())
}
