//! `vpc-worker`: parse configuration, build the clients, run the engine.

use std::time::Duration;

use clap::Parser;
use vpc::ec2::Ec2;
use vpc::store::Store;
use vpc::{Config, VpcHandler};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let c = Config::parse();
    let (table, rate, project, lease, crash) = (
        c.table,
        c.ec2_calls_per_second,
        c.project,
        Duration::from_secs(c.lease_secs),
        c.crash_after,
    );
    fleet::worker::run("vpc-worker", c.worker, |sdk, metrics| async move {
        let ec2 = aws_sdk_ec2::Client::from_conf(
            aws_sdk_ec2::config::Builder::from(&sdk)
                .interceptor(fleet::aws::KeepAliveOnPlainHttp)
                .build(),
        );
        let store = Store::new(fleet::dynamodb::client(&sdk), table, lease);
        VpcHandler::new(
            Ec2::new(ec2, rate, project, &metrics),
            store,
            crash,
            &metrics,
        )
    })?;
    Ok(())
}
