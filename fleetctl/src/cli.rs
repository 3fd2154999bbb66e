//! The command line: every command, option and exit code, as `--help` shows them.

use std::num::NonZeroU32;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::dlq;

/// Exit code: a dead-letter queue holds messages (`status`, `dlq check`).
pub(crate) const EXIT_DLQ_NOT_EMPTY: u8 = 3;
/// Exit code: `dlq redrive` ended, but messages it was to move are still in the DLQ.
pub(crate) const EXIT_REDRIVE_INCOMPLETE: u8 = 4;
/// Exit code: stopped by Ctrl-C after cleaning up (128 + SIGINT, as shells report it).
pub(crate) const EXIT_INTERRUPTED: u8 = 130;

/// The exit codes, under every `--help` that can end with one of them.
const EXIT_CODES: &str = "\
Exit codes:
  0    success
  1    error (the message on stderr says what)
  2    bad command line (unknown command or option, bad value)
  3    a dead-letter queue holds messages (`status`, `dlq check`): for cron and alerts
  4    `dlq redrive` ended but left messages it was to move in the DLQ (a send failed, or they
       stayed in flight elsewhere); its JSON summary says how many
  130  interrupted by Ctrl-C: `dlq redrive` cancels its move task or stops after the batch in
       hand; the DLQ reads hand their messages back";

#[derive(Debug, Parser)]
#[command(
    name = "fleetctl",
    version,
    about = "Operate the queue-fleet: queue status, dead-letter queues, local schedules, VPC cleanup",
    after_help = EXIT_CODES
)]
pub(crate) struct Cli {
    /// Prefix of every resource name of the deployment (`fleet-` for the local stack).
    #[arg(long, env = "FLEET_PREFIX", default_value = "fleet-", global = true)]
    pub(crate) prefix: String,

    /// The topology file; default: the one built into fleetctl.
    #[arg(long, env = "FLEET_TOPOLOGY", global = true)]
    pub(crate) topology: Option<PathBuf>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Every queue with visible / in-flight / delayed counts and its DLQ. Exits 3 when any DLQ
    /// holds messages.
    #[command(after_help = EXIT_CODES)]
    Status {
        /// One JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Refresh every this many seconds until Ctrl-C (then never exits 3).
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
        watch: Option<u64>,
    },
    /// Work on a queue's dead-letter queue.
    #[command(after_help = EXIT_CODES)]
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
    /// Print a shell completion script: `source <(fleetctl completions bash)`, or save it
    /// where the shell looks (zsh: a `_fleetctl` file on `$fpath`; fish:
    /// `~/.config/fish/completions/fleetctl.fish`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum VpcCommand {
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
pub(crate) enum DlqCommand {
    /// Exit 3 when any of these queues' DLQs holds messages (default: every queue of the
    /// topology); prints each non-empty one with its depth. Only SQS reads (no CloudWatch).
    #[command(after_help = EXIT_CODES)]
    Check {
        /// Queue names from the topology (default: all).
        queues: Vec<String>,
        /// One JSON object with every depth.
        #[arg(long)]
        json: bool,
    },
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
        #[command(flatten)]
        filter: dlq::Filter,
        #[command(flatten)]
        read: dlq::ReadOptions,
    },
    /// Count the messages by reason (and whether a redrive can cure it), worker and age.
    Summary {
        /// Queue name from the topology (e.g. `payments`).
        queue: String,
        /// One JSON object instead of the tables.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        filter: dlq::Filter,
        #[command(flatten)]
        read: dlq::ReadOptions,
    },
    /// Move messages back to their source queue. Refuses reason kinds that cannot succeed
    /// again (`conflict`, `invalid-*`, …; see `dlq summary`) unless --force.
    #[command(after_help = EXIT_CODES)]
    Redrive {
        /// Queue name from the topology (e.g. `payments`).
        queue: String,
        /// Messages per second at most.
        #[arg(long, default_value = "50")]
        max_per_second: NonZeroU32,
        /// Only messages matching `reason=KIND` (the same as --reason KIND).
        #[arg(long, value_parser = parse_filter, conflicts_with = "reason")]
        filter: Option<String>,
        #[command(flatten)]
        select: dlq::Filter,
        /// Stop after this many messages.
        #[arg(long)]
        max: Option<u64>,
        /// `auto`: SQS's move task when there is no filter or limit (falls back to `batch`,
        /// and to `batch` when the DLQ holds kinds it refuses).
        #[arg(long, value_enum, default_value_t = dlq::Method::Auto)]
        method: dlq::Method,
        /// Move messages of every reason kind, also those that cannot succeed again: `conflict`,
        /// `results-changed`, `invalid-*`, `missing-*` and earlier releases' spellings such as
        /// `idempotency-conflict` and `malformed-*` (`fleetctl dlq summary` marks them `refused`).
        #[arg(long)]
        force: bool,
        /// Only print what would move, by reason (reads the DLQ once; moves nothing).
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        read: dlq::ReadOptions,
    },
    /// Write every message (body, attributes with Binary ones in base64, ids, times) as JSON
    /// Lines, as they are read; each once, all left in place.
    Export {
        /// Queue name from the topology (e.g. `payments`).
        queue: String,
        /// The file to write; `-`: standard output.
        file: PathBuf,
        #[command(flatten)]
        filter: dlq::Filter,
        #[command(flatten)]
        read: dlq::ReadOptions,
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn filter_and_reason_are_one_option() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from([&["fleetctl", "dlq", "redrive", "payments"][..], args].concat())
        };
        assert!(parse(&["--filter", "reason=x", "--reason", "y"]).is_err());
        assert!(parse(&["--filter", "kind=x"]).is_err());
        assert!(parse(&["--filter", "reason=x"]).is_ok());
    }
}
