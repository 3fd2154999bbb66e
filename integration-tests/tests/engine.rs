//! The engine's queue mechanics against LocalStack's SQS, with small in-process handlers
//! whose timing the tests control: heartbeat, a slow message beside fast ones, hand-back on
//! shutdown, panics, order per group on a FIFO queue. Then what a worker (payments-worker, the
//! binary) tells about its messages: a request followed by its id into the log, the metrics on
//! the Prometheus endpoint and in the EMF lines.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use aws_sdk_sqs::types::{MessageSystemAttributeNameForSends, MessageSystemAttributeValue};
use fleet::dlq::names;
use fleet::kind;
use fleet::{CancellationToken, Engine, EngineConfig, Handler, Message, Metrics, Outcome};
use integration_tests::{
    eventually, payment_body, payments, sdk_config, send_payments, send_payments_with, string_attr,
    Stack, Worker,
};
use serde_json::Value;

/// Sleeps for the number of milliseconds in the body (`panic` panics), counting calls by body.
#[derive(Default)]
struct Scripted {
    calls: Mutex<HashMap<String, u32>>,
    finished: AtomicU32,
}

impl Handler for Scripted {
    async fn handle(&self, message: &Message) -> Outcome {
        *self
            .calls
            .lock()
            .unwrap()
            .entry(message.body.clone())
            .or_default() += 1;
        if message.body == "panic" {
            panic!("scripted panic");
        }
        let ms: u64 = message.body.split(':').next().unwrap().parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.finished.fetch_add(1, Ordering::SeqCst);
        Outcome::Done
    }
}

struct Running<H = Scripted> {
    handler: Arc<H>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(queue: &str, configure: impl FnOnce(&mut EngineConfig)) -> Result<Running> {
    start_with(queue, Arc::new(Scripted::default()), configure).await
}

async fn start_with<H: Handler>(
    queue: &str,
    handler: Arc<H>,
    configure: impl FnOnce(&mut EngineConfig),
) -> Result<Running<H>> {
    let sqs = fleet::aws::sqs_client(&sdk_config().await);
    let mut config = EngineConfig::for_queue(queue);
    config.wait_time_secs = 1;
    config.metrics_interval_secs = 0;
    configure(&mut config);
    let metrics = Metrics::new();
    let shutdown = CancellationToken::new();
    let engine = Engine::new(sqs, config, handler.clone(), metrics.clone());
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        engine.run(token).await.expect("engine starts");
    });
    Ok(Running {
        handler,
        metrics,
        shutdown,
        task,
    })
}

async fn send(stack: &Stack, queue: &str, bodies: &[String]) -> Result<()> {
    for body in bodies {
        stack
            .sqs
            .send_message()
            .queue_url(queue)
            .message_body(body)
            .send()
            .await?;
    }
    Ok(())
}

#[tokio::test]
async fn heartbeat_keeps_a_long_handler_from_being_redelivered() -> Result<()> {
    let stack = Stack::provision().await?;
    let (queue, _) = stack.queue_pair("heartbeat", 5, 2).await?;
    let run = start(&queue, |_| {}).await?;
    send(&stack, &queue, &["6000:long".to_owned()]).await?;
    eventually(Duration::from_secs(30), "the long handler done", || async {
        Ok((run.handler.finished.load(Ordering::SeqCst) == 1).then_some(()))
    })
    .await?;
    // 6 s of work under a 2 s visibility timeout: without the heartbeat it would have been
    // delivered again about three times.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(run.handler.calls.lock().unwrap()["6000:long"], 1);
    assert_eq!(stack.depth(&queue).await?, 0, "deleted after success");
    run.shutdown.cancel();
    run.task.await?;
    Ok(())
}

#[tokio::test]
async fn a_slow_message_does_not_hold_up_the_next_receives() -> Result<()> {
    let stack = Stack::provision().await?;
    let (queue, _) = stack.queue_pair("slow", 5, 60).await?;
    let run = start(&queue, |c| c.max_concurrency = 20).await?;
    send(&stack, &queue, &["15000:slow".to_owned()]).await?;
    eventually(Duration::from_secs(10), "the slow one started", || async {
        Ok(run
            .handler
            .calls
            .lock()
            .unwrap()
            .contains_key("15000:slow")
            .then_some(()))
    })
    .await?;
    let started = Instant::now();
    let fast: Vec<String> = (0..30).map(|i| format!("10:fast-{i}")).collect();
    send(&stack, &queue, &fast).await?;
    eventually(Duration::from_secs(12), "30 fast messages done", || async {
        Ok((run.handler.finished.load(Ordering::SeqCst) >= 30).then_some(()))
    })
    .await?;
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "fast work waited for the slow message"
    );
    assert_eq!(
        run.metrics.in_flight.load(Ordering::SeqCst),
        1,
        "the slow one still runs"
    );
    run.shutdown.cancel();
    run.task.await?;
    Ok(())
}

#[tokio::test]
async fn shutdown_hands_unfinished_messages_back_at_once() -> Result<()> {
    let stack = Stack::provision().await?;
    let (queue, _) = stack.queue_pair("handback", 5, 300).await?;
    let run = start(&queue, |c| c.shutdown_grace_secs = 1).await?;
    send(
        &stack,
        &queue,
        &["60000:stuck".to_owned(), "10:quick".to_owned()],
    )
    .await?;
    eventually(Duration::from_secs(10), "both started", || async {
        Ok((run.handler.calls.lock().unwrap().len() == 2).then_some(()))
    })
    .await?;
    let started = Instant::now();
    run.shutdown.cancel();
    run.task.await?;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "stopped in {:?}",
        started.elapsed()
    );
    // With a 300 s visibility timeout, only a hand-back makes it visible again now.
    let back = stack.drain(&queue, 10).await?;
    assert_eq!(
        back.len(),
        1,
        "the unfinished message is back, the finished one deleted"
    );
    assert_eq!(back[0].body(), Some("60000:stuck"));
    Ok(())
}

#[tokio::test]
async fn a_panicking_handler_is_retried_then_dead_lettered_with_the_reason() -> Result<()> {
    let stack = Stack::provision().await?;
    let (queue, dlq) = stack.queue_pair("panic", 2, 30).await?;
    let run = start(&queue, |c| c.retry_base_ms = 500).await?;
    send(&stack, &queue, &["panic".to_owned()]).await?;
    let dead = stack
        .wait_for_messages(&dlq, "the message in the DLQ")
        .await?;
    let attrs = dead[0].message_attributes().unwrap();
    assert_eq!(
        attrs[names::KIND].string_value(),
        Some(kind::RETRIES_EXHAUSTED)
    );
    assert!(attrs[names::MESSAGE]
        .string_value()
        .unwrap()
        .contains("panic"));
    assert_eq!(
        run.handler.calls.lock().unwrap()["panic"],
        2,
        "maxReceiveCount tries"
    );
    assert_eq!(run.metrics.retried.load(Ordering::SeqCst), 1);
    run.shutdown.cancel();
    run.task.await?;
    Ok(())
}

/// Records when each message was handled; `X:retry` asks for a retry on the first receive and
/// then takes 3 s, `X:poison` is a permanent failure.
#[derive(Default)]
struct Recorder {
    handled: Mutex<Vec<(String, u32, Instant, &'static str)>>,
}

impl Recorder {
    fn done(&self) -> Vec<String> {
        let handled = self.handled.lock().unwrap();
        handled
            .iter()
            .filter(|(_, _, _, outcome)| *outcome != "retry")
            .map(|(body, ..)| body.clone())
            .collect()
    }

    fn at(&self, body: &str, outcome: &str) -> Instant {
        let handled = self.handled.lock().unwrap();
        handled
            .iter()
            .find(|(b, _, _, o)| b == body && *o == outcome)
            .map(|(_, _, at, _)| *at)
            .unwrap_or_else(|| panic!("{body} was never {outcome}"))
    }
}

impl Handler for Recorder {
    async fn handle(&self, message: &Message) -> Outcome {
        let retry = message.body.ends_with(":retry");
        let (outcome, label) = if retry && message.receive_count == 1 {
            (Outcome::retry("scripted", "try again"), "retry")
        } else if message.body.ends_with(":poison") {
            (Outcome::permanent("scripted", "poison"), "poison")
        } else {
            (Outcome::Done, "done")
        };
        let slow = retry && message.receive_count > 1;
        tokio::time::sleep(Duration::from_millis(if slow { 3000 } else { 20 })).await;
        self.handled.lock().unwrap().push((
            message.body.clone(),
            message.receive_count,
            Instant::now(),
            label,
        ));
        outcome
    }
}

#[tokio::test]
async fn fifo_keeps_order_per_group_and_a_retry_holds_back_only_its_group() -> Result<()> {
    let stack = Stack::provision().await?;
    let (queue, dlq) = stack.queue_pair("ordered.fifo", 5, 30).await?;
    // Interleaved groups, all in the queue before the worker starts, so that each group's
    // messages arrive together in one batch.
    let bodies = [
        ("a", "a1:retry"),
        ("b", "b1"),
        ("a", "a2"),
        ("c", "c1:poison"),
        ("b", "b2"),
        ("a", "a3"),
        ("c", "c2"),
        ("b", "b3"),
    ];
    for (i, (group, body)) in bodies.iter().enumerate() {
        stack
            .sqs
            .send_message()
            .queue_url(&queue)
            .message_body(*body)
            .message_group_id(*group)
            .message_deduplication_id(format!("d{i}"))
            .send()
            .await?;
    }
    let recorder = Arc::new(Recorder::default());
    let run = start_with(&queue, recorder.clone(), |c| {
        c.retry_base_ms = 2000;
        c.max_concurrency = 10;
        c.min_concurrency = 10;
    })
    .await?;
    eventually(Duration::from_secs(30), "every message handled", || async {
        Ok((recorder.done().len() == 8).then_some(()))
    })
    .await?;

    let done = recorder.done();
    let order = |group: char| -> Vec<&str> {
        done.iter()
            .filter(|b| b.starts_with(group))
            .map(String::as_str)
            .collect()
    };
    assert_eq!(order('a'), ["a1:retry", "a2", "a3"], "group a in order");
    assert_eq!(order('b'), ["b1", "b2", "b3"], "group b in order");
    assert_eq!(
        order('c'),
        ["c1:poison", "c2"],
        "a poison message lets its group go on"
    );
    // Group b flowed while a1 waited for its retry; nothing of group a ran before a1 succeeded,
    // although a2 and a3 became visible again (one second after a1) while a1's second, slow
    // attempt ran: they joined a1's line instead of running beside it.
    let a1_retried = recorder.at("a1:retry", "done");
    assert!(
        recorder.at("b3", "done") < a1_retried,
        "group b was held back by group a"
    );
    assert!(
        recorder.at("c2", "done") < a1_retried,
        "group c was held back by group a"
    );
    let handled = recorder.handled.lock().unwrap().clone();
    assert!(
        handled
            .iter()
            .filter(|(b, ..)| b == "a2" || b == "a3")
            .all(|(_, _, at, _)| *at > a1_retried),
        "a later message of group a overtook the retried one: {handled:?}"
    );
    assert_eq!(
        run.metrics.held_back.load(Ordering::SeqCst),
        2,
        "a2 and a3 went back behind a1"
    );

    let dead = stack
        .wait_for_messages(&dlq, "the poison message in the DLQ")
        .await?;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body(), Some("c1:poison"));
    let group = dead[0]
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId));
    assert_eq!(
        group.map(String::as_str),
        Some("c"),
        "the DLQ copy keeps its group"
    );
    eventually(Duration::from_secs(10), "the queue empty", || async {
        Ok((stack.depth(&queue).await? == 0).then_some(()))
    })
    .await?;
    run.shutdown.cancel();
    run.task.await?;
    Ok(())
}

// ---- Following a request, and the metrics a worker exports (payments-worker, the binary) ----

const PAYMENTS: &str = "payments-worker";

/// The line a finished message writes (target `fleet::message`) whose field `key` is `value`.
fn finished_line(worker: &Worker, key: &str, value: &str) -> Option<Value> {
    worker
        .log_lines("fleet::message")
        .into_iter()
        .find(|l| l["fields"][key] == value)
}

#[tokio::test]
async fn a_requests_id_and_trace_follow_it_into_the_workers_log() -> Result<()> {
    let stack = Stack::provision().await?;
    // Short polls: a receive still open on LocalStack when this worker stops would take the
    // next worker's message.
    let worker = Worker::spawn(
        PAYMENTS,
        &stack.worker_env_with(PAYMENTS, &[("FLEET_WAIT_TIME_SECS", "1")]),
    )?;

    // Through the gateway: its 202 names the request; the worker's line for it says what
    // became of that request, and every line logged while it was handled carries the id.
    let accepted: Value = stack
        .api(reqwest::Method::PUT, "/payments/follow-1")
        .header("content-type", "application/json")
        .body(payment_body("user-1", "10.50"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let request_id = accepted["request_id"]
        .as_str()
        .expect("request_id")
        .to_owned();
    let message_id = accepted["message_id"]
        .as_str()
        .expect("message_id")
        .to_owned();
    let line = eventually(Duration::from_secs(30), "the finished line", || async {
        Ok(finished_line(&worker, "request_id", &request_id))
    })
    .await?;
    let fields = &line["fields"];
    assert_eq!(fields["message"], "message finished", "{line}");
    assert_eq!(fields["outcome"], "done", "{line}");
    assert_eq!(fields["message_id"], message_id.as_str(), "{line}");
    assert!(fields["elapsed_ms"].is_u64(), "{line}");
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["span"]["request_id"], request_id.as_str(), "{line}");
    assert_eq!(line["span"]["message_id"], message_id.as_str(), "{line}");

    // Sent with an X-Ray trace header (as SQS keeps it from a traced sender): the span
    // carries it, so the logs join the trace.
    let trace = "Root=1-67891233-abcdef012345678912345678;Parent=53995c3f42cd8ad8;Sampled=1";
    let queue = &stack.queue("payments").url;
    stack
        .sqs
        .send_message()
        .queue_url(queue)
        .message_body(payment_body("user-2", "3"))
        .message_attributes("paymentId", string_attr("follow-2"))
        .message_attributes(fleet::gateway::ATTR_REQUEST_ID, string_attr("req-follow-2"))
        .message_system_attributes(
            MessageSystemAttributeNameForSends::AwsTraceHeader,
            MessageSystemAttributeValue::builder()
                .data_type("String")
                .string_value(trace)
                .build()?,
        )
        .send()
        .await?;
    let line = eventually(Duration::from_secs(30), "the traced line", || async {
        Ok(finished_line(&worker, "request_id", "req-follow-2"))
    })
    .await?;
    assert_eq!(line["span"]["trace_header"], trace, "{line}");
    assert_eq!(line["fields"]["outcome"], "done", "{line}");
    // A repeated payment is a duplicate, and says so.
    send_payments_with(
        &stack.sqs,
        queue,
        &[("follow-2".to_owned(), payment_body("user-2", "3"))],
        &[],
    )
    .await?;
    let line = eventually(Duration::from_secs(30), "the duplicate's line", || async {
        Ok(finished_line(&worker, "request_id", "direct-follow-2"))
    })
    .await?;
    assert_eq!(line["fields"]["outcome"], "duplicate", "{line}");
    worker.stop().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // RUST_LOG=fleet::message=warn turns the line off, and only it.
    let quiet = Worker::spawn(
        PAYMENTS,
        &stack.worker_env_with(PAYMENTS, &[("RUST_LOG", "fleet::message=warn")]),
    )?;
    send_payments(
        &stack.sqs,
        queue,
        &[("follow-3".to_owned(), payment_body("u", "1"))],
    )
    .await?;
    quiet
        .wait_for_total("succeeded", 1, Duration::from_secs(30))
        .await?;
    let (_, _, quiet) = quiet.stop().await?;
    assert!(
        quiet.log_lines("fleet::message").is_empty(),
        "{}",
        quiet.stderr_text()
    );
    assert!(
        quiet.stderr_text().contains("engine started"),
        "other info lines stay: {}",
        quiet.stderr_text()
    );
    Ok(())
}

/// Checks an EMF document as CloudWatch reads it: the `_aws.CloudWatchMetrics` directives,
/// every dimension and every metric they name present at the top level, a metric a number or a
/// distribution (`Values` and `Counts` of the same length, at most 100, that add up to `Count`).
fn check_emf(doc: &Value) {
    let aws = &doc["_aws"];
    assert!(aws["Timestamp"].is_u64(), "{doc}");
    let directives = aws["CloudWatchMetrics"].as_array().expect("directives");
    assert!(!directives.is_empty(), "{doc}");
    for directive in directives {
        assert_eq!(directive["Namespace"], fleet::metrics::NAMESPACE, "{doc}");
        for set in directive["Dimensions"].as_array().expect("dimension sets") {
            for name in set.as_array().expect("a dimension set") {
                let name = name.as_str().expect("a dimension name");
                assert!(doc[name].is_string(), "dimension {name} in {doc}");
            }
        }
        for metric in directive["Metrics"].as_array().expect("metrics") {
            let name = metric["Name"].as_str().expect("a metric name");
            match &doc[name] {
                Value::Number(_) => {}
                Value::Object(d) => {
                    let values = d["Values"].as_array().expect("Values");
                    let counts = d["Counts"].as_array().expect("Counts");
                    assert_eq!(values.len(), counts.len(), "{name} in {doc}");
                    assert!((1..=100).contains(&values.len()), "{name} in {doc}");
                    let total: u64 = counts.iter().filter_map(Value::as_u64).sum();
                    assert_eq!(d["Count"].as_u64(), Some(total), "{name} in {doc}");
                    for stat in ["Min", "Max", "Sum"] {
                        assert!(d[stat].is_number(), "{name}.{stat} in {doc}");
                    }
                }
                other => panic!("metric {name} is {other} in {doc}"),
            }
        }
    }
}

#[tokio::test]
async fn metrics_reach_prometheus_and_cloudwatch_as_distributions() -> Result<()> {
    let stack = Stack::provision().await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let worker = Worker::spawn(
        PAYMENTS,
        &stack.worker_env_with(PAYMENTS, &[("FLEET_PROMETHEUS_PORT", &port.to_string())]),
    )?;
    let queue = stack.queue("payments").clone();
    send_payments(&stack.sqs, &queue.url, &payments("prom", 20)).await?;
    worker
        .wait_for_total("succeeded", 20, Duration::from_secs(60))
        .await?;
    let url = format!("http://127.0.0.1:{port}/metrics");
    let labels = format!(r#"{{worker="{PAYMENTS}",queue="{}"}}"#, queue.name);
    let scraped = eventually(Duration::from_secs(10), "the scrape with 20 stored", || {
        let (url, labels) = (url.clone(), labels.clone());
        async move {
            let text = reqwest::get(&url).await?.error_for_status()?.text().await?;
            let stored = format!("fleet_succeeded_total{labels} 20");
            Ok(text.lines().any(|l| l == stored).then_some(text))
        }
    })
    .await?;
    let value = |name: &str| -> Option<f64> {
        let prefix = format!("{name}{labels} ");
        scraped
            .lines()
            .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
    };
    assert_eq!(value("fleet_received_total"), Some(20.0), "{scraped}");
    assert_eq!(
        value("fleet_dynamodb_writes_total"),
        Some(20.0),
        "{scraped}"
    );
    assert_eq!(
        value("fleet_handler_latency_ms_count"),
        Some(20.0),
        "{scraped}"
    );
    for name in [
        "fleet_dead_lettered_total",
        "fleet_retried_total",
        "fleet_requeued_total",
        "fleet_parked_total",
        "fleet_breaker_opened_total",
        "fleet_breaker_open",
    ] {
        assert_eq!(value(name), Some(0.0), "{name} in {scraped}");
    }
    assert!(
        value("fleet_sqs_calls_total").is_some_and(|v| v >= 2.0),
        "{scraped}"
    );
    assert!(
        scraped.contains("fleet_handler_latency_ms_bucket{"),
        "a histogram Prometheus can sum across pods: {scraped}"
    );
    let (code, _, worker) = worker.stop().await?;
    assert_eq!(code, Some(0));

    let lines = worker.metric_lines();
    assert!(!lines.is_empty());
    for doc in &lines {
        check_emf(doc);
    }
    let handled: u64 = lines
        .iter()
        .filter_map(|d| d[fleet::metrics::HANDLER_LATENCY]["Count"].as_u64())
        .sum();
    assert_eq!(handled, 20, "each handler latency once, as a distribution");
    let succeeded: u64 = lines.iter().filter_map(|d| d["succeeded"].as_u64()).sum();
    assert_eq!(succeeded, 20, "counts since the previous line add up");
    assert_eq!(worker.total("succeeded"), 20);
    Ok(())
}
