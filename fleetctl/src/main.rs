//! `fleetctl`: operate the queue-fleet.
//!
//! `status` shows every queue of the topology with its DLQ (exit code 2 when any DLQ holds
//! messages, for cron and alerts); `dlq peek|redrive|export|purge` work on one queue's DLQ;
//! `dlq groups|release` show and end the stops of FIFO groups behind a dead-lettered message;
//! `schedule` sends the topology's scheduled messages on a local timer (what EventBridge
//! Scheduler does in AWS); `vpc cleanup` deletes the VPCs and subnets the fleet created.
//! Configured like the workers: the standard AWS environment, plus the name prefix of the
//! deployment (`FLEET_PREFIX`, `fleet-` for the local stack).

mod dlq;
mod fleet;
mod groups;
mod schedule;
mod status;

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::fleet::Fleet;

/// Exit code of `status` when a dead-letter queue holds messages.
const EXIT_DLQ_NOT_EMPTY: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "fleetctl",
    version,
    about = "Operate the queue-fleet: queue status, dead-letter queues, local schedules, VPC cleanup"
)]
struct Cli {
    /// Prefix of every resource name of the deployment (`fleet-` for the local stack).
    #[arg(long, env = "FLEET_PREFIX", default_value = "fleet-", global = true)]
    prefix: String,

    /// The topology file; default: the one built into fleetctl.
    #[arg(long, env = "FLEET_TOPOLOGY", global = true)]
    topology: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every queue with visible / in-flight / delayed counts and its DLQ. Exits 2 when any DLQ
    /// holds messages.
    Status {
        /// One JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Refresh every this many seconds until Ctrl-C.
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
        watch: Option<u64>,
    },
    /// Work on a queue's dead-letter queue.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Provisioned VPCs: delete what the fleet created.
    Vpc {
        #[command(subcommand)]
        command: VpcCommand,
    },
    /// Run the topology's schedules on a local timer, as EventBridge Scheduler does in AWS
    /// (e.g. an auction cycle every 5 minutes). Prints each message sent; runs until Ctrl-C.
    Schedule {
        /// Only these schedules (default: all of the topology's).
        names: Vec<String>,
        /// Every schedule's period in seconds instead of its own (for demos and tests).
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
        every: Option<u64>,
        /// Exit after this many messages of each schedule.
        #[arg(long)]
        count: Option<u64>,
        /// Send the first message at once, for the period that has begun, instead of waiting
        /// for the next one.
        #[arg(long)]
        now: bool,
    },
}

#[derive(Debug, Subcommand)]
enum VpcCommand {
    /// Delete the VPCs tagged by the fleet (`Project` tag), each with every subnet in it,
    /// subnets first. Prints one JSON line per resource.
    Cleanup {
        /// The `Project` tag value (vpc-worker's VPC_PROJECT_TAG).
        #[arg(long, env = "VPC_PROJECT_TAG", default_value = "queue-fleet")]
        project: String,
        /// Only the VPC of this request.
        #[arg(long)]
        request_id: Option<String>,
        /// Only list what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Show messages with their failure reasons, without consuming them.
    Peek {
        /// Queue name from the topology (e.g. `payments`).
        queue: String,
        /// How many messages at most.
        #[arg(short, default_value_t = 10)]
        n: usize,
        /// One JSON object per message.
        #[arg(long)]
        json: bool,
    },
    /// Move messages back to their source queue.
    Redrive {
        /// Queue name from the topology (e.g. `payments`).
        queue: String,
        /// Messages per second at most.
        #[arg(long, default_value = "50")]
        max_per_second: NonZeroU32,
        /// Only messages matching `reason=KIND` (their `fleet.error.kind`).
        #[arg(long, value_parser = parse_filter)]
        filter: Option<String>,
        /// Stop after this many messages.
        #[arg(long)]
        max: Option<u64>,
        /// `auto`: SQS's move task when there is no filter or limit (falls back to `batch`).
        #[arg(long, value_enum, default_value_t = dlq::Method::Auto)]
        method: dlq::Method,
    },
    /// Write every message (body, attributes, ids) to a JSON Lines file, leaving them in place.
    Export {
        /// Queue name from the topology (e.g. `payments`).
        queue: String,
        /// The file to write.
        file: PathBuf,
    },
    /// FIFO queues: the message groups stopped behind a dead-lettered message (their later
    /// messages park in the DLQ, in order, until the group is redriven). One JSON line each.
    Groups {
        /// Queue name from the topology (e.g. `books-commands`).
        queue: String,
    },
    /// FIFO queues: end a group's stop at once (after its head was discarded rather than
    /// redriven): its later messages are handled again.
    Release {
        /// Queue name from the topology (e.g. `books-commands`).
        queue: String,
        /// The message group (for books: the book id).
        group: String,
    },
    /// Delete every message of the DLQ (asks first unless --yes).
    Purge {
        /// Queue name from the topology (e.g. `payments`).
        queue: String,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
}

fn parse_filter(text: &str) -> Result<String, String> {
    match text.split_once('=') {
        Some(("reason", kind)) if !kind.is_empty() => Ok(kind.to_owned()),
        _ => Err(format!(
            "expected reason=KIND (e.g. reason=conflict), got '{text}'"
        )),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("fleetctl: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let topology = match &cli.topology {
        Some(path) => ::fleet::topology::Topology::load(path)?,
        None => ::fleet::topology::Topology::builtin(),
    };
    let sdk = ::fleet::aws::load_config().await;
    let fleet = Fleet {
        sqs: ::fleet::aws::sqs_client(&sdk),
        cloudwatch: aws_sdk_cloudwatch::Client::new(&sdk),
        prefix: cli.prefix,
        topology,
    };
    match cli.command {
        Command::Status { json, watch } => loop {
            let rows = status::collect(&fleet).await?;
            let dlq_total: u64 = rows.iter().map(|r| r.dlq_depth).sum();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"queues": rows, "dlq_total": dlq_total})
                );
            } else {
                if watch.is_some() {
                    print!("\x1b[2J\x1b[H"); // clear the screen
                }
                print!("{}", status::table(&rows));
            }
            match watch {
                Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
                None if dlq_total > 0 => return Ok(ExitCode::from(EXIT_DLQ_NOT_EMPTY)),
                None => return Ok(ExitCode::SUCCESS),
            }
        },
        Command::Schedule {
            names,
            every,
            count,
            now,
        } => {
            let opts = schedule::Options {
                names,
                every,
                count,
                now,
            };
            schedule::run(&fleet, &opts).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Vpc {
            command:
                VpcCommand::Cleanup {
                    project,
                    request_id,
                    dry_run,
                },
        } => {
            let client = aws_sdk_ec2::Client::new(&sdk);
            let ec2 = vpc::ec2::Ec2::new(
                client,
                NonZeroU32::new(10).expect("not zero"),
                project,
                &::fleet::Metrics::new(),
            );
            let vpcs = match &request_id {
                Some(id) => ec2.vpcs_of(id).await?,
                None => ec2.project_vpcs().await?,
            };
            for (kind, id) in ec2.remove_vpcs(&vpcs, dry_run).await? {
                let action = if dry_run { "would delete" } else { "deleted" };
                println!(
                    "{}",
                    serde_json::json!({"action": action, "kind": kind, "id": id})
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq { command } => {
            match command {
                DlqCommand::Peek { queue, n, json } => dlq::peek(&fleet, &queue, n, json).await?,
                DlqCommand::Redrive {
                    queue,
                    max_per_second,
                    filter,
                    max,
                    method,
                } => {
                    let opts = dlq::Redrive {
                        max_per_second,
                        reason: filter,
                        max,
                        method,
                    };
                    let summary = dlq::redrive(&fleet, &queue, &opts).await?;
                    println!("{}", serde_json::to_string(&summary)?);
                }
                DlqCommand::Export { queue, file } => {
                    let n = dlq::export(&fleet, &queue, &file).await?;
                    eprintln!("{n} message(s) written to {}", file.display());
                }
                DlqCommand::Groups { queue } => {
                    fleet.check(&queue)?;
                    let dynamodb = ::fleet::dynamodb::client(&sdk);
                    for stopped in groups::list(&fleet, &dynamodb, &queue).await? {
                        println!("{}", serde_json::to_string(&stopped)?);
                    }
                }
                DlqCommand::Release { queue, group } => {
                    fleet.check(&queue)?;
                    let dynamodb = ::fleet::dynamodb::client(&sdk);
                    let released = groups::release(&fleet, &dynamodb, &queue, &group).await?;
                    println!("{}", serde_json::to_string(&released)?);
                }
                DlqCommand::Purge { queue, yes } => {
                    let n = dlq::purge(&fleet, &queue, yes).await.context("purge")?;
                    eprintln!("purged about {n} message(s)");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
