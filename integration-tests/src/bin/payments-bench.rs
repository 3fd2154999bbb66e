//! Benchmark of the payments worker on LocalStack.
//!
//! Enqueues N payments (full batches) into a freshly provisioned stack, starts the worker
//! binary, waits until it has handled all of them, and reports the worker's own cost: drain
//! rate, CPU time per 1000 messages, peak RSS, SQS calls per message and DynamoDB writes per
//! new payment. LocalStack (one Python core) is the ceiling for the drain rate on one machine,
//! so the worker is judged by its own CPU and memory; LocalStack's CPU is printed beside it.
//!
//! It also measures the SDK's own floor: the worker's write (`DynamoStore::insert`, one
//! conditional PutItem built exactly as the worker builds it) against a local HTTP peer that
//! answers at once, with nothing to wait for. That is the least CPU one payment's write can
//! cost through the AWS SDK on this machine, whatever the engine does around it.
//!
//! With `--outage-secs S` it measures an outage instead: DynamoDB (a TCP proxy on the worker's
//! `AWS_ENDPOINT_URL_DYNAMODB`) is cut once a quarter of the payments are stored, for S
//! seconds, then restored; it prints what was stored and dead-lettered and how long the worker
//! took after the recovery to run at its pre-outage rate again.
//!
//! Run with `scripts/bench` (release build); `--help` lists the options.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use integration_tests::{eventually, payments, root, send_payments, Proxy, Stack, Worker};

#[derive(Debug, Parser)]
#[command(about = "Drain N payments through payments-worker on LocalStack and report its cost")]
struct Args {
    /// Number of payments to enqueue and drain.
    #[arg(long, short, default_value_t = 5000)]
    n: usize,
    /// Messages in flight in the worker (FLEET_MAX_IN_FLIGHT).
    #[arg(long, default_value_t = 40)]
    max_in_flight: u32,
    /// Runtime threads in the worker (FLEET_WORKER_THREADS; 1 = single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    worker_threads: u16,
    /// Concurrent senders while enqueueing.
    #[arg(long, default_value_t = 4)]
    senders: usize,
    /// Idle wait before the worker's runtime sleeps on I/O (FLEET_WAKE_COALESCE_MS).
    #[arg(long, default_value_t = 0)]
    wake_coalesce_ms: u64,
    /// PutItem calls for the SDK floor (0 skips it).
    #[arg(long, default_value_t = 5000)]
    floor_calls: usize,
    /// Cut DynamoDB for this many seconds mid-drain and report the outage (0: no outage).
    #[arg(long, default_value_t = 0)]
    outage_secs: u64,
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

    eprintln!("enqueueing {} payments", args.n);
    let all = payments("bench", args.n);
    let per_sender = args.n.div_ceil(args.senders).max(1);
    let mut senders = tokio::task::JoinSet::new();
    for chunk in all.chunks(per_sender) {
        let chunk = chunk.to_vec();
        let sqs = stack.sqs.clone();
        let url = queue.url.clone();
        senders.spawn(async move { send_payments(&sqs, &url, &chunk).await });
    }
    while let Some(sent) = senders.join_next().await {
        sent??;
    }

    if args.outage_secs > 0 {
        return outage(&args, &stack, &queue).await;
    }
    let mut env = stack.worker_env("payments-worker");
    env.insert("FLEET_MAX_IN_FLIGHT".into(), args.max_in_flight.to_string());
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
    eventually(Duration::from_secs(600), "all payments handled", || async {
        Ok((handled(&worker) >= n).then_some(()))
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
        let (calls, in_flight) = (args.floor_calls, args.max_in_flight as usize);
        // A thread of its own: its CPU is the floor's alone, and it runs its own runtime.
        let measured = std::thread::spawn(move || floor::put_item_cpu_us(calls, in_flight));
        Some(
            measured
                .join()
                .map_err(|_| anyhow::anyhow!("the floor panicked"))??,
        )
    } else {
        None
    };

    let report = serde_json::json!({
        "n": args.n,
        "rows_stored": rows,
        "drain_rate_msgs_per_s": (args.n as f64 / drain_secs * 10.0).round() / 10.0,
        "drain_secs": (drain_secs * 100.0).round() / 100.0,
        "worker_cpu_ms_per_1000": (worker_cpu as f64 * 1000.0 / args.n as f64 * 10.0).round() / 10.0,
        "worker_peak_rss_mb": (rss_kib as f64 / 1024.0 * 10.0).round() / 10.0,
        "sqs_calls_per_msg": (get("sqs_calls") as f64 / args.n as f64 * 1000.0).round() / 1000.0,
        "dynamodb_writes_per_new_payment": if get("succeeded") > 0 { get("dynamodb_writes") as f64 / get("succeeded") as f64 } else { 0.0 },
        "succeeded": get("succeeded"),
        "duplicates": get("duplicates"),
        "dead_lettered": get("dead_lettered"),
        "localstack_cpu_ms_per_msg": ls_cpu.map(|c| (c as f64 / args.n as f64 * 100.0).round() / 100.0),
        "sdk_floor_cpu_us_per_put_item": floor.map(|us| (us * 10.0).round() / 10.0),
        "max_in_flight": args.max_in_flight,
        "wake_coalesce_ms": args.wake_coalesce_ms,
        "worker_threads": args.worker_threads,
        "connection": "keep-alive (the worker sends Connection: keep-alive on plain HTTP; LocalStack behind hypercorn)",
    });
    if args.json {
        println!("{report}");
    } else {
        println!("payments-worker benchmark (release build, N = {})", args.n);
        for (key, value) in report.as_object().unwrap() {
            println!("  {key:<34} {value}");
        }
    }
    if rows != args.n {
        bail!("{rows} rows stored for {} payments", args.n);
    }
    Ok(())
}

/// Messages the worker is done with (stored, found stored, or dead-lettered).
fn handled(worker: &Worker) -> u64 {
    let totals = worker.totals();
    ["succeeded", "duplicates", "dead_lettered"]
        .iter()
        .map(|k| totals.get(*k).copied().unwrap_or(0))
        .sum()
}

/// Stops the worker (it must exit 0) and returns its final counters and the rows stored.
async fn finish(
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

/// Drains the payments through an outage of DynamoDB (see the module doc) with the worker's
/// default retry and breaker settings, and prints the figures.
async fn outage(args: &Args, stack: &Stack, queue: &integration_tests::Queue) -> Result<()> {
    let n = args.n as u64;
    let mut proxy = Proxy::reserve(Duration::ZERO).await?;
    proxy.start().await?;
    let mut env = stack.worker_env("payments-worker");
    env.insert("FLEET_MAX_IN_FLIGHT".into(), args.max_in_flight.to_string());
    env.insert("RUST_LOG".into(), "warn,fleet::engine=info".into());
    env.insert("AWS_ENDPOINT_URL_DYNAMODB".into(), proxy.url());
    // The production schedule, not the test harness's short one.
    env.remove("FLEET_RETRY_BASE_MS");
    let worker = Worker::spawn("payments-worker", &env)?;
    let succeeded = |w: &Worker| w.totals().get("succeeded").copied().unwrap_or(0);
    eprintln!(
        "draining {n} payments; DynamoDB is cut once {} are stored",
        n / 4
    );
    let started = Instant::now();
    eventually(Duration::from_secs(600), "a quarter stored", || async {
        Ok((succeeded(&worker) >= n / 4).then_some(()))
    })
    .await?;
    let before_rate = succeeded(&worker) as f64 / started.elapsed().as_secs_f64();
    proxy.stop();
    eprintln!("DynamoDB cut for {} s", args.outage_secs);
    // The metric lines lag a second: what was stored before the cut shows by then.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stored_at_cut = succeeded(&worker);
    tokio::time::sleep(Duration::from_secs(args.outage_secs.saturating_sub(2))).await;
    let stored_during = succeeded(&worker);
    proxy.start().await?;
    let back = Instant::now();
    eprintln!("DynamoDB back");
    // Recovered: a second in which the worker stored at least 80 % of its pre-outage rate
    // (or nothing was left to store).
    let mut last = succeeded(&worker);
    let recovered_after = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = succeeded(&worker);
        if now - last >= (before_rate * 0.8) as u64 || handled(&worker) >= n {
            break back.elapsed().as_secs_f64();
        }
        if back.elapsed() > Duration::from_secs(900) {
            bail!("no recovery within 15 minutes");
        }
        last = now;
    };
    eventually(
        Duration::from_secs(1800),
        "all payments handled",
        || async { Ok((handled(&worker) >= n).then_some(())) },
    )
    .await?;
    let (totals, rows) = finish(worker, stack).await?;
    let get = |k: &str| totals.get(k).copied().unwrap_or(0);
    let report = serde_json::json!({
        "n": args.n,
        "outage_secs": args.outage_secs,
        "rows_stored": rows,
        "dead_lettered": stack.depth(&queue.dlq_url).await?,
        "stored_during_outage": stored_during.saturating_sub(stored_at_cut),
        "rate_before_msgs_per_s": (before_rate * 10.0).round() / 10.0,
        "full_rate_again_after_secs": (recovered_after * 10.0).round() / 10.0,
        "total_secs": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "retried": get("retried"),
        "requeued": get("requeued"),
        "breaker_opened": get("breaker_opened"),
        "received": get("received"),
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "payments-worker outage (N = {}, DynamoDB cut for {} s)",
            args.n, args.outage_secs
        );
        for (key, value) in report.as_object().unwrap() {
            println!("  {key:<34} {value}");
        }
    }
    if rows != args.n {
        bail!("{rows} rows stored for {} payments", args.n);
    }
    Ok(())
}

/// The SDK floor: the worker's own write against a peer that costs nothing.
mod floor {
    use std::sync::Arc;

    use anyhow::Result;
    use payments_worker::payment::Payment;
    use payments_worker::store::{DynamoStore, PaymentStore, Provenance};

    /// CPU (user + system) of this thread, in ms.
    fn thread_cpu_ms() -> Result<f64> {
        Ok(super::stat_cpu_ms("/proc/thread-self/stat")? as f64)
    }

    /// Answers every request at once with DynamoDB's `{}` (what a successful PutItem returns),
    /// on kept-alive connections, from a thread and runtime of its own until the process ends.
    fn serve(listener: std::net::TcpListener) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.0\r\nx-amzn-requestid: floor\r\ncontent-length: 2\r\n\r\n{}";
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::spawn(move || {
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                while let Ok((mut conn, _)) = listener.accept().await {
                    let _ = conn.set_nodelay(true);
                    tokio::spawn(async move {
                        // The SDK's client sends one request at a time on a connection.
                        while integration_tests::read_request(&mut conn).await.is_some() {
                            if conn.write_all(ANSWER).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            })
        });
        Ok(())
    }

    /// Runs `calls` inserts, `in_flight` at a time, on a single-threaded runtime (as the
    /// worker does) and returns this thread's CPU per call in µs. The peer's own work runs on
    /// other threads; the kernel's loopback delivery is charged to the sender, as it is with
    /// LocalStack.
    pub(crate) fn put_item_cpu_us(calls: usize, in_flight: usize) -> Result<f64> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        serve(listener)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            // The worker's client configuration, pointed at the peer: the endpoint is set on
            // the service's builder, where AWS_ENDPOINT_URL cannot win.
            let sdk = fleet::aws::load_config().await;
            let client = aws_sdk_dynamodb::Client::from_conf(
                fleet::dynamodb::config(&sdk).endpoint_url(url).build(),
            );
            let metrics = fleet::Metrics::new();
            let store = Arc::new(DynamoStore::new(client, "floor".into(), &metrics));
            let payments: Vec<Payment> = integration_tests::payments("floor", calls)
                .into_iter()
                .map(|(id, body)| Payment::parse(&id, &body))
                .collect::<Result<_, _>>()?;
            let write = |payment: Payment| {
                let store = store.clone();
                async move {
                    let provenance = Provenance {
                        request_id: Some("floor-request".into()),
                        api_key_id: Some("floor-key".into()),
                        received_at_ms: Some(fleet::util::now_ms()),
                        message_id: payment.payment_id.clone(),
                    };
                    let hash = payment.payload_hash();
                    store.insert(&payment, &hash, &provenance).await
                }
            };
            // Warm up: connections, credentials, the allocator.
            for payment in payments.iter().take(in_flight).cloned() {
                write(payment).await?;
            }
            let before = thread_cpu_ms()?;
            let permits = Arc::new(tokio::sync::Semaphore::new(in_flight));
            let mut tasks = tokio::task::JoinSet::new();
            for payment in payments {
                let permit = permits.clone().acquire_owned().await?;
                let write = write(payment);
                tasks.spawn(async move {
                    let written = write.await;
                    drop(permit);
                    written
                });
                while let Some(done) = tasks.try_join_next() {
                    done??;
                }
            }
            while let Some(done) = tasks.join_next().await {
                done??;
            }
            Ok((thread_cpu_ms()? - before) * 1000.0 / calls as f64)
        })
    }
}
