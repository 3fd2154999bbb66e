//! `order-results-worker`: parse configuration, build the clients, run the engine.

use auction::order_results::{Config, OrderResultsHandler};
use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let c = Config::parse();
    let (bucket, kms_key_id, notifications) = (c.bucket, c.kms_key_id, c.notifications);
    fleet::worker::run(
        "order-results-worker",
        c.worker,
        |sdk, metrics| async move {
            let s3 = aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::config::Builder::from(&sdk)
                    // LocalStack answers on one host name: path-style addressing.
                    .force_path_style(true)
                    .interceptor(fleet::aws::KeepAliveOnPlainHttp)
                    .build(),
            );
            let notifier = notifications.notifier(&sdk, fleet::dynamodb::client(&sdk), &metrics);
            OrderResultsHandler::new(s3, bucket, kms_key_id, notifier, &metrics)
        },
    )?;
    Ok(())
}
