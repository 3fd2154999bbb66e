//! `order-results-worker`: parse configuration, build the bucket and the notifier, run the
//! engine.

use auction::order_results::{s3_client, Config, OrderResultsHandler, S3Results};
use clap::Parser;

/// mimalloc: the SDK allocates many small, short-lived buffers per call.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let (bucket, kms_key_id, notifications) =
        (config.bucket, config.kms_key_id, config.notifications);
    fleet::worker::run(
        env!("CARGO_BIN_NAME"),
        config.worker,
        |fleet::worker::Setup { sdk, metrics, .. }| async move {
            let results = S3Results::new(s3_client(&sdk), bucket, kms_key_id);
            let notifier = notifications.notifier(&sdk, fleet::dynamodb::client(&sdk), &metrics);
            OrderResultsHandler::new(results, notifier, &metrics)
        },
    )?;
    Ok(())
}
