//! Benchmark of VPC provisioning on LocalStack: N two-subnet requests through the gateway, one
//! at a time, each timed from its 202 to `SUCCEEDED` (GET polled every 10 ms), and the EC2
//! calls the worker made per request.
//!
//! Run with `scripts/bench --vpc` (release build); `--help` lists the options.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use integration_tests::{Stack, Worker};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(about = "Time N two-subnet VPC requests from 202 to SUCCEEDED on LocalStack")]
struct Args {
    /// Number of requests.
    #[arg(long, short, default_value_t = 20)]
    n: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let stack = Stack::provision().await?;
    let mut env = stack.worker_env("vpc-worker");
    env.insert("VPC_PROJECT_TAG".into(), stack.info.prefix.clone());
    let worker = Worker::spawn("vpc-worker", &env)?;
    tokio::time::sleep(Duration::from_secs(2)).await; // polling its queue
    let mut times = Vec::with_capacity(args.n);
    for i in 0..args.n {
        let second = 100 + i % 150;
        let body = json!({"vpc": {"cidr": format!("10.{second}.0.0/16")}, "subnets": [
            {"cidr": format!("10.{second}.1.0/24"), "az": "us-east-1a"},
            {"cidr": format!("10.{second}.2.0/24"), "az": "us-east-1b"}]});
        let response = stack
            .api(reqwest::Method::POST, "/vpcs")
            .header("Idempotency-Key", format!("bench-{i}"))
            .json(&body)
            .send()
            .await?;
        let accepted = Instant::now();
        let id = response.json::<serde_json::Value>().await?["request_id"]
            .as_str()
            .context("request_id")?
            .to_owned();
        loop {
            let r = stack
                .api(reqwest::Method::GET, &format!("/vpcs/{id}"))
                .send()
                .await?;
            if r.status() == 200 && r.json::<serde_json::Value>().await?["status"] == "SUCCEEDED" {
                break;
            }
            anyhow::ensure!(
                accepted.elapsed() < Duration::from_secs(60),
                "{id} not done in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        times.push(accepted.elapsed());
    }
    tokio::time::sleep(Duration::from_millis(1500)).await; // one more metric line
    let calls = worker.total("ec2_calls");
    worker.terminate(Duration::from_secs(30)).await?;
    let _ =
        integration_tests::fleetctl(&stack, &["vpc", "cleanup", "--project", &stack.info.prefix])
            .await;
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "vpc requests: {}, 202 -> SUCCEEDED median {:.0} ms, p90 {:.0} ms, max {:.0} ms; EC2 calls {} ({:.2} per request, one DescribeAvailabilityZones per process included)",
        args.n,
        ms(times[args.n / 2]),
        ms(times[args.n * 9 / 10]),
        ms(times[args.n - 1]),
        calls,
        calls as f64 / args.n as f64
    );
    Ok(())
}
