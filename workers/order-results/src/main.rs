//! `order-results-worker`: parse configuration, build the clients, run the engine.

use clap::Parser;
use order_results_worker::{Config, OrderResultsHandler, Targets};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let c = Config::parse();
    let targets = Targets {
        bucket: c.bucket,
        kms_key_id: c.kms_key_id,
        topic_arn: c.topic_arn,
        notifications_table: c.notifications_table,
    };
    fleet::worker::run(
        env!("CARGO_PKG_NAME"),
        c.worker,
        |sdk, metrics| async move {
            let keep_alive = fleet::aws::KeepAliveOnPlainHttp;
            let s3 = aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::config::Builder::from(&sdk)
                    // LocalStack answers on one host name: path-style addressing.
                    .force_path_style(true)
                    .interceptor(keep_alive)
                    .build(),
            );
            let sns = aws_sdk_sns::Client::from_conf(
                aws_sdk_sns::config::Builder::from(&sdk)
                    .interceptor(keep_alive)
                    .build(),
            );
            let dynamodb = fleet::dynamodb::client(&sdk);
            OrderResultsHandler::new(s3, sns, dynamodb, targets, &metrics)
        },
    )?;
    Ok(())
}
