//! `vpc-worker`: parse configuration, build the request store and EC2, run the engine.

use clap::Parser;
use vpc::ec2::{self, Ec2};
use vpc::store::Store;
use vpc::{Config, VpcHandler};

/// mimalloc: the SDK allocates many small, short-lived buffers per call.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let (table, lease, crash) = (config.table.clone(), config.lease(), config.crash_after);
    let (rate, project) = (config.ec2_calls_per_second, config.project);
    fleet::worker::run(
        env!("CARGO_PKG_NAME"),
        config.worker,
        |fleet::worker::Setup { sdk, metrics, .. }| async move {
            let ec2 = Ec2::new(ec2::client(&sdk), rate, project, &metrics);
            let store = Store::new(fleet::dynamodb::client(&sdk), table, lease);
            VpcHandler::new(ec2, store, crash, &metrics)
        },
    )?;
    Ok(())
}
