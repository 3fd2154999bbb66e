//! `results-worker`: parse configuration, build the source and the clients, run the engine.

use std::time::Duration;

use auction::cycles::{Config, CyclesHandler, Targets};
use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let c = Config::parse();
    let source = c.source.build()?;
    let targets = Targets {
        order_results_queue_url: c.order_results_queue_url,
        cycles_table: c.cycles_table,
        deadline: Duration::from_secs(c.deadline_secs),
        lease: Duration::from_secs(c.cycle_lease_secs),
    };
    let notifications = c.notifications;
    fleet::worker::run("results-worker", c.worker, |sdk, metrics| async move {
        let dynamodb = fleet::dynamodb::client(&sdk);
        let notifier = notifications.notifier(&sdk, dynamodb.clone(), &metrics);
        let sqs = fleet::aws::sqs_client(&sdk);
        CyclesHandler::new(source, sqs, dynamodb, targets, notifier, &metrics)
    })?;
    Ok(())
}
