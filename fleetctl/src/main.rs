//! `fleetctl`: operate the queue-fleet.
//!
//! `status` shows every queue of the topology with its DLQ (exit code 3 when any DLQ holds
//! messages, for cron and alerts; `dlq check` too, from SQS alone);
//! `dlq peek|summary|redrive|export|purge` work on one queue's DLQ; `dlq groups|release` show
//! and end the stops of FIFO groups behind a dead-lettered message; `schedule` sends the
//! topology's scheduled messages on a local timer (what EventBridge Scheduler does in AWS);
//! `vpc cleanup` deletes the VPCs and subnets the fleet created; `completions` prints a shell
//! completion script. Configured like the workers: the standard AWS environment, plus the name
//! prefix of the deployment (`FLEET_PREFIX`, `fleet-` for the local stack). The exit codes are
//! in [`cli`].

mod cli;
mod deployment;
mod dlq;
mod groups;
mod schedule;
mod status;

use std::num::NonZeroU32;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser};

use crate::cli::{
    Cli, Command, DlqCommand, VpcCommand, EXIT_DLQ_NOT_EMPTY, EXIT_INTERRUPTED,
    EXIT_REDRIVE_INCOMPLETE,
};
use crate::deployment::Deployment;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "fleetctl",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
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
    let fleet = Deployment {
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
        Command::Completions { .. } => unreachable!("handled before the runtime starts"),
        Command::Dlq { command } => {
            dlq_command(&fleet, &::fleet::dynamodb::client(&sdk), command).await
        }
    }
}

/// Ctrl-C during a `dlq` command: the token is cancelled, and the command stops cleanly
/// (hands its messages back, cancels its move task) and exits 130. A second Ctrl-C exits at once.
fn interrupt_on_ctrl_c() -> ::fleet::CancellationToken {
    let token = ::fleet::CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            cancel.cancel();
            eprintln!("fleetctl: stopping (Ctrl-C again to quit at once)");
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(EXIT_INTERRUPTED.into());
            }
        }
    });
    token
}

/// 0, or 130 when Ctrl-C cut the command short.
fn finished(completed: bool) -> ExitCode {
    if completed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INTERRUPTED)
    }
}

async fn dlq_command(
    fleet: &Deployment,
    dynamodb: &aws_sdk_dynamodb::Client,
    command: DlqCommand,
) -> Result<ExitCode> {
    // Only the commands that read or move messages stop cleanly on Ctrl-C; the others (a
    // purge waiting for its answer) keep its default: quit at once.
    let interrupt = match &command {
        DlqCommand::Peek { .. }
        | DlqCommand::Summary { .. }
        | DlqCommand::Redrive { .. }
        | DlqCommand::Export { .. } => interrupt_on_ctrl_c(),
        _ => ::fleet::CancellationToken::new(),
    };
    match command {
        DlqCommand::Check { queues, json } => {
            let depths = dlq::check(fleet, &queues).await?;
            dlq::print_check(fleet, &depths, json);
            if depths.iter().any(|(_, depth)| *depth > 0) {
                return Ok(ExitCode::from(EXIT_DLQ_NOT_EMPTY));
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Peek {
            queue,
            n,
            json,
            filter,
            read,
        } => Ok(finished(
            dlq::peek(fleet, &queue, n, json, &filter, &read, &interrupt).await?,
        )),
        DlqCommand::Summary {
            queue,
            json,
            filter,
            read,
        } => {
            let Some(summary) = dlq::summary(fleet, &queue, &filter, &read, &interrupt).await?
            else {
                return Ok(finished(false));
            };
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                print!("{}", dlq::summary_table(&summary));
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Redrive {
            queue,
            max_per_second,
            filter,
            mut select,
            max,
            method,
            force,
            dry_run,
            read,
        } => {
            if filter.is_some() {
                select.reason = filter;
            }
            let opts = dlq::Redrive {
                max_per_second,
                filter: select,
                max,
                method,
                force,
                dry_run,
                read,
            };
            match dlq::redrive(fleet, &queue, &opts, &interrupt).await? {
                dlq::Report::Plan(plan) => {
                    println!("{}", serde_json::to_string(&plan)?);
                    Ok(finished(!plan.interrupted))
                }
                dlq::Report::Done(summary) => {
                    println!("{}", serde_json::to_string(&summary)?);
                    Ok(if summary.cancelled {
                        ExitCode::from(EXIT_INTERRUPTED)
                    } else if summary.incomplete() {
                        ExitCode::from(EXIT_REDRIVE_INCOMPLETE)
                    } else {
                        ExitCode::SUCCESS
                    })
                }
            }
        }
        DlqCommand::Export {
            queue,
            file,
            filter,
            read,
        } => Ok(finished(
            dlq::export(fleet, &queue, &file, &filter, &read, &interrupt).await?,
        )),
        DlqCommand::Groups { queue } => {
            fleet.check(&queue)?;
            for stopped in groups::list(fleet, dynamodb, &queue).await? {
                println!("{}", serde_json::to_string(&stopped)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Release { queue, group } => {
            fleet.check(&queue)?;
            let released = groups::release(fleet, dynamodb, &queue, &group).await?;
            println!("{}", serde_json::to_string(&released)?);
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Purge { queue, yes } => {
            let n = dlq::purge(fleet, &queue, yes).await.context("purge")?;
            eprintln!("purged about {n} message(s)");
            Ok(ExitCode::SUCCESS)
        }
    }
}
