//! `approval-simulator`: the built-in approver (local stack, tests, and every Terraform
//! environment with `approval_service = "builtin"`, the default; docs/deploy.md).

use clap::Parser;
use fleet::worker::WorkerArgs;
use posts::simulator::{Policy, Simulator};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Command line and environment of `approval-simulator`.
#[derive(Debug, Parser)]
#[command(
    name = "approval-simulator",
    version,
    about = "The built-in approver: answers approval requests by a policy, like an approval service"
)]
struct Config {
    /// Where the answers go.
    #[arg(long, env = "APPROVAL_RESPONSES_QUEUE_URL", value_name = "URL")]
    responses_queue_url: String,
    /// approve-all, reject-words:W1,W2 or random:SEED[:RATIO].
    #[arg(
        long,
        env = "APPROVAL_POLICY",
        default_value = "reject-words:spam,scam"
    )]
    policy: Policy,
    /// Seconds before an answer is visible (0-900; Terraform sets approval_delay_secs, 0 by
    /// default).
    #[arg(long, env = "APPROVAL_DELAY_SECS", default_value_t = 2,
          value_parser = clap::value_parser!(i32).range(0..=900))]
    delay_secs: i32,
    #[command(flatten)]
    worker: WorkerArgs,
}

fn main() -> anyhow::Result<()> {
    let c = Config::parse();
    let (url, policy, delay) = (c.responses_queue_url, c.policy, c.delay_secs);
    fleet::worker::run("approval-simulator", c.worker, |sdk, _metrics| async move {
        Simulator::new(fleet::aws::sqs_client(&sdk), url, policy, delay)
    })?;
    Ok(())
}
