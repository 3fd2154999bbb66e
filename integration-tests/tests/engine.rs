//! The engine's queue mechanics against LocalStack's SQS, with small in-process handlers
//! whose timing the tests control: heartbeat, a slow message beside fast ones, hand-back on
//! shutdown, panics, order per group on a FIFO queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use fleet::{CancellationToken, Engine, EngineConfig, Handler, Message, Metrics, Outcome};
use integration_tests::{eventually, sdk_config, Stack};

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
    let run = start(&queue, |c| c.max_in_flight = 20).await?;
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
        attrs["fleet.error.kind"].string_value(),
        Some("retries-exhausted")
    );
    assert!(attrs["fleet.error.message"]
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
        c.max_in_flight = 10;
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
