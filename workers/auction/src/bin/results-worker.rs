//! `results-worker`: parse configuration, build the source, the cycle records, the queue and
//! the notifier, run the engine.

use auction::cycles::{Config, CyclesHandler, DynamoCycles, SqsResults};
use clap::Parser;

/// mimalloc: the SDK allocates many small, short-lived buffers per call.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let (source, deadline, lease) = (
        config.source.build()?,
        config.deadline(),
        config.cycle_lease(),
    );
    let (queue_url, table) = (config.order_results_queue_url, config.cycles_table);
    let notifications = config.notifications;
    fleet::worker::run(
        env!("CARGO_BIN_NAME"),
        config.worker,
        |fleet::worker::Setup { sdk, metrics, .. }| async move {
            let dynamodb = fleet::dynamodb::client(&sdk);
            let notifier = notifications.notifier(&sdk, dynamodb.clone(), &metrics);
            let cycles = DynamoCycles::new(dynamodb, table, lease);
            let queue = SqsResults::new(fleet::aws::sqs_client(&sdk), queue_url);
            CyclesHandler::new(source, cycles, queue, notifier, deadline, &metrics)
        },
    )?;
    Ok(())
}
