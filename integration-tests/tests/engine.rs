//! The engine's queue mechanics against LocalStack's SQS, with small in-process handlers
//! whose timing the tests control: heartbeat, a slow message beside fast ones, hand-back on
//! shutdown, panics.

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

struct Running {
    handler: Arc<Scripted>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(queue: &str, configure: impl FnOnce(&mut EngineConfig)) -> Result<Running> {
    let sqs = fleet::aws::sqs_client(&sdk_config().await);
    let mut config = EngineConfig::for_queue(queue);
    config.wait_time_secs = 1;
    config.metrics_interval_secs = 0;
    configure(&mut config);
    let handler = Arc::new(Scripted::default());
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
