//! `approval-simulator`: the built-in approver (local stack, tests, and every Terraform
//! environment with `approval_service = "builtin"`, the default; docs/deploy.md).

use clap::Parser;
use fleet::worker::Setup;
use posts::approval_queues::SqsApprovalResponses;
use posts::simulator::{ApprovalSimulator, Config};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let c = Config::parse();
    fleet::worker::run(
        env!("CARGO_BIN_NAME"),
        c.worker,
        |Setup { sdk, .. }| async move {
            let responses =
                SqsApprovalResponses::new(fleet::aws::sqs_client(&sdk), c.responses_queue_url);
            ApprovalSimulator::new(responses, c.policy, c.delay_secs)
        },
    )?;
    Ok(())
}
