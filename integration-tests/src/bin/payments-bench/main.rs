//! Benchmark of the payments worker on LocalStack.
//!
//! Enqueues N payments (full batches) into a freshly provisioned stack, starts the worker
//! binary, waits until it has handled all of them, and reports the worker's own cost: drain
//! rate, CPU time per 1000 messages, peak RSS, SQS calls per message and DynamoDB writes per
//! new payment. LocalStack (one Python core) is the ceiling for the drain rate on one machine,
//! so the worker is judged by its own CPU and memory; LocalStack's CPU is printed beside it.
//!
//! Two yardsticks are measured in the same run. The hand-written SDK loop ([`naive`]) drains as
//! many payments again from the same LocalStack with none of the engine's safety: the worker's
//! CPU per message over the loop's is the engine's overhead, the figure to hold near 1. The
//! SDK's own floor ([`floor`]) is a payment's PutItem and its share of a receive and a delete
//! batch through the worker's own client configuration, against a local peer that answers at
//! once: the least a payment can cost, which neither the worker nor the loop reaches against
//! LocalStack, whose slow answers wake them once per answer with cold caches.
//!
//! The connections matter: LocalStack behind hypercorn closes every connection that does not
//! ask for keep-alive, and a new connection per call doubles a client's CPU. The worker asks
//! (`fleet::aws::KeepAliveOnPlainHttp`); the benchmark counts the TCP connections the worker
//! opened during the drain, so a run that lost keep-alive shows it.
//!
//! `--outage-secs S` measures a DynamoDB outage instead ([`outage`]), `--scaler` the
//! in-process scaler on a backlog ([`scaler`]).
//!
//! Run with `scripts/bench` (release build); `--help` lists the options.

/// The payments worker's allocator (see its `main`): the floor and the hand-written loop run in
/// this process, and the allocator is a visible part of an SDK call's CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod floor;
mod naive;
mod outage;
mod scaler;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use integration_tests::{eventually, payments, root, send_payments, Stack, Worker};

/// The longest a drain may take, the worker's or the hand-written loop's.
pub(crate) const DRAIN_LIMIT: Duration = Duration::from_secs(600);

#[derive(Debug, Parser)]
#[command(about = "Drain N payments through payments-worker on LocalStack and report its cost")]
struct Args {
    /// Number of payments to enqueue and drain.
    #[arg(long, short, default_value_t = 5000)]
    n: usize,
    /// Most messages in flight in the worker (FLEET_MAX_CONCURRENCY).
    #[arg(long, alias = "max-in-flight", default_value_t = 40)]
    max_concurrency: u32,
    /// Runtime threads in the worker (FLEET_WORKER_THREADS; 1 = single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    worker_threads: u16,
    /// Concurrent senders while enqueueing.
    #[arg(long, default_value_t = 4)]
    senders: usize,
    /// Idle wait before the worker's runtime sleeps on I/O (FLEET_WAKE_COALESCE_MS).
    #[arg(long, default_value_t = 0)]
    wake_coalesce_ms: u64,
    /// PutItem calls for the SDK floor, and a tenth as many receives and delete batches (0
    /// skips it).
    #[arg(long, default_value_t = 5000)]
    floor_calls: usize,
    /// Payments for the hand-written SDK loop that yardsticks the worker on the same
    /// LocalStack (default: N; 0 skips it).
    #[arg(long)]
    naive_n: Option<usize>,
    /// Cut DynamoDB for this many seconds mid-drain and report the outage (0: no outage).
    #[arg(long, default_value_t = 0)]
    outage_secs: u64,
    /// Measure the scaler instead: an idle worker with the default scaler settings meets a
    /// backlog of N (use -n 2000).
    #[arg(long, conflicts_with = "outage_secs")]
    scaler: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// utime + stime of a process, in ms (from /proc/PID/stat; clock ticks are 100 Hz on Linux).
fn cpu_ms(pid: u32) -> Result<u64> {
    stat_cpu_ms(&format!("/proc/{pid}/stat"))
}

/// utime + stime in ms from a `stat` file of /proc (a process's or a thread's).
fn stat_cpu_ms(path: &str) -> Result<u64> {
    let stat = std::fs::read_to_string(path)?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').context("stat format")? + 2..]
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks * 10)
}

/// Peak resident set size of a process, in KiB (VmHWM).
fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmHWM")
}

fn localstack_pid() -> Option<u32> {
    std::fs::read_to_string(root().join(".localstack/localstack.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let stack = Stack::provision().await?;
    let queue = stack.queue("payments").clone();

    enqueue(&stack, &queue.url, "bench", args.n, args.senders).await?;

    if args.outage_secs > 0 {
        return outage::run(&args, &stack, &queue).await;
    }
    if args.scaler {
        return scaler::run(&args, &stack).await;
    }
    let mut env = stack.worker_env("payments-worker");
    env.insert(
        "FLEET_MAX_CONCURRENCY".into(),
        args.max_concurrency.to_string(),
    );
    env.insert("FLEET_LOG_FORMAT".into(), "json".into());
    env.insert("RUST_LOG".into(), "warn".into());
    env.insert(
        "FLEET_WORKER_THREADS".into(),
        args.worker_threads.to_string(),
    );
    env.insert(
        "FLEET_WAKE_COALESCE_MS".into(),
        args.wake_coalesce_ms.to_string(),
    );
    let ls_pid = localstack_pid();
    let ls_cpu_before = ls_pid.and_then(|p| cpu_ms(p).ok());

    eprintln!("draining with payments-worker");
    let started = Instant::now();
    let worker = Worker::spawn("payments-worker", &env)?;
    let n = args.n as u64;
    let mut sockets = std::collections::HashSet::new();
    eventually(DRAIN_LIMIT, "all payments handled", || {
        sockets.extend(socket_inodes(worker.pid()));
        async { Ok((handled(&worker) >= n).then_some(())) }
    })
    .await?;
    let drain_secs = started.elapsed().as_secs_f64();
    let pid = worker.pid();
    let worker_cpu = cpu_ms(pid)?;
    let rss_kib = peak_rss_kib(pid)?;
    let ls_cpu = match (ls_pid, ls_cpu_before) {
        (Some(p), Some(before)) => cpu_ms(p).ok().map(|after| after - before),
        _ => None,
    };
    let (totals, rows) = finish(worker, &stack).await?;
    let get = |k: &str| totals.get(k).copied().unwrap_or(0);
    let floor = if args.floor_calls > 0 {
        eprintln!("measuring the SDK floor ({} PutItems)", args.floor_calls);
        let (calls, in_flight) = (args.floor_calls, args.max_concurrency as usize);
        Some(on_own_thread(move || floor::measure(calls, in_flight))?)
    } else {
        None
    };
    let naive_n = args.naive_n.unwrap_or(args.n);
    let naive = if naive_n > 0 {
        enqueue(&stack, &queue.url, "naive", naive_n, args.senders).await?;
        eprintln!("draining with the hand-written SDK loop");
        let (url, table) = (queue.url.clone(), stack.table("payments").to_owned());
        let in_flight = args.max_concurrency as usize;
        Some(on_own_thread(move || {
            naive::measure(url, table, naive_n, in_flight)
        })?)
    } else {
        None
    };
    let worker_us_per_msg = worker_cpu as f64 * 1000.0 / args.n as f64;
    let round = |v: f64, places: i32| (v * 10f64.powi(places)).round() / 10f64.powi(places);
    let report = serde_json::json!({
        "n": args.n,
        "rows_stored": rows,
        "drain_rate_msgs_per_s": (args.n as f64 / drain_secs * 10.0).round() / 10.0,
        "drain_secs": (drain_secs * 100.0).round() / 100.0,
        "worker_cpu_ms_per_1000": round(worker_us_per_msg, 1),
        "naive_loop_cpu_ms_per_1000": naive.map(|l| round(l.cpu_us_per_msg, 1)),
        "worker_over_naive_loop": naive.map(|l| round(worker_us_per_msg / l.cpu_us_per_msg, 2)),
        "naive_loop_drain_rate_msgs_per_s": naive.map(|l| round(l.rate, 1)),
        "sdk_floor_cpu_ms_per_1000": floor.map(|f| round(f.per_message_us(), 1)),
        "worker_over_sdk_floor": floor.map(|f| round(worker_us_per_msg / f.per_message_us(), 2)),
        "worker_peak_rss_mb": (rss_kib as f64 / 1024.0 * 10.0).round() / 10.0,
        "sqs_calls_per_msg": (get("sqs_calls") as f64 / args.n as f64 * 1000.0).round() / 1000.0,
        "dynamodb_writes_per_new_payment": if get("succeeded") > 0 { get("dynamodb_writes") as f64 / get("succeeded") as f64 } else { 0.0 },
        "succeeded": get("succeeded"),
        "duplicates": get("duplicates"),
        "dead_lettered": get("dead_lettered"),
        "localstack_cpu_ms_per_msg": ls_cpu.map(|c| (c as f64 / args.n as f64 * 100.0).round() / 100.0),
        "sdk_floor_cpu_us_per_put_item": floor.map(|f| round(f.put_item_us, 1)),
        "sdk_floor_cpu_us_per_receive_of_10": floor.map(|f| round(f.receive_us, 1)),
        "sdk_floor_cpu_us_per_delete_batch_of_10": floor.map(|f| round(f.delete_batch_us, 1)),
        "worker_sockets_seen": sockets.len(),
        "max_concurrency": args.max_concurrency,
        "wake_coalesce_ms": args.wake_coalesce_ms,
        "worker_threads": args.worker_threads,
        "connection": format!(
            "keep-alive (the worker sends Connection: keep-alive on plain HTTP; LocalStack behind {})",
            std::env::var("GATEWAY_SERVER").unwrap_or_else(|_| "hypercorn".into())
        ),
    });
    print_report(
        &args,
        &format!("payments-worker benchmark (release build, N = {})", args.n),
        &report,
    );
    if rows != args.n {
        bail!("{rows} rows stored for {} payments", args.n);
    }
    if naive_n > 0 {
        let all_rows = stack.count_rows(stack.table("payments")).await?;
        if all_rows != args.n + naive_n {
            bail!("{all_rows} rows stored for {} payments", args.n + naive_n);
        }
    }
    Ok(())
}

/// Runs `work` to completion on a thread and single-threaded runtime of its own (the worker's
/// runtime), so that thread's CPU is the work's alone.
fn on_own_thread<T, F, Fut>(work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(work())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("a measurement thread panicked"))?
}

/// Enqueues `n` payments tagged `tag` with `senders` concurrent senders.
async fn enqueue(stack: &Stack, url: &str, tag: &str, n: usize, senders: usize) -> Result<()> {
    eprintln!("enqueueing {n} payments");
    let all = payments(tag, n);
    let per_sender = n.div_ceil(senders).max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in all.chunks(per_sender) {
        let chunk = chunk.to_vec();
        let sqs = stack.sqs.clone();
        let url = url.to_owned();
        tasks.spawn(async move { send_payments(&sqs, &url, &chunk).await });
    }
    while let Some(sent) = tasks.join_next().await {
        sent??;
    }
    Ok(())
}

/// Prints a report: one JSON line with `--json`, else a title and one figure a line.
fn print_report(args: &Args, title: &str, report: &serde_json::Value) {
    if args.json {
        println!("{report}");
    } else {
        println!("{title}");
        for (key, value) in report.as_object().into_iter().flatten() {
            println!("  {key:<40} {value}");
        }
    }
}

/// The inodes of the TCP sockets a process holds now (from /proc/PID/fd); sampled through a
/// drain, their number is the connections it opened, give or take short-lived ones missed.
fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.filter_map(|fd| {
        let target = std::fs::read_link(fd.ok()?.path()).ok()?;
        let target = target.to_str()?;
        target
            .strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()
    })
    .collect()
}

/// Messages the worker is done with (stored, found stored, or dead-lettered).
pub(crate) fn handled(worker: &Worker) -> u64 {
    let totals = worker.totals();
    ["succeeded", "duplicates", "dead_lettered"]
        .iter()
        .map(|k| totals.get(*k).copied().unwrap_or(0))
        .sum()
}

/// Stops the worker (it must exit 0) and returns its final counters and the rows stored.
pub(crate) async fn finish(
    worker: Worker,
    stack: &Stack,
) -> Result<(std::collections::HashMap<String, u64>, usize)> {
    let (code, _, worker) = worker.terminate(Duration::from_secs(60)).await?;
    if code != Some(0) {
        bail!("worker exited with {code:?}: {}", worker.stderr_text());
    }
    let rows = stack.count_rows(stack.table("payments")).await?;
    Ok((worker.totals(), rows))
}
