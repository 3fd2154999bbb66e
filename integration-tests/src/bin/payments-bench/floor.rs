//! The SDK floor: what one payment costs through the AWS SDK when nothing waits.
//!
//! A payment is one conditional `PutItem` (the worker's own `DynamoStore::insert`), a tenth of a
//! `ReceiveMessage` of 10 (with the attributes the engine asks for) and a tenth of a
//! `DeleteMessageBatch` of 10, each through the client configuration the worker uses, against a
//! local HTTP peer that answers at once on kept-alive connections. That is the least CPU a
//! payment can cost through the SDK on this machine, whatever the engine does around it: a lower
//! bound that neither the worker nor the hand-written loop ([`crate::naive`]) reaches against
//! LocalStack, whose answers arrive one at a time.

use std::sync::Arc;

use anyhow::Result;
use payments_worker::payment::Payment;
use payments_worker::store::{DynamoStore, PaymentStore, Provenance};

/// Messages per receive and per delete batch (SQS's maximum, the engine's batch).
const BATCH: usize = 10;

/// The queue URL the floor's SQS calls name (the peer answers whatever they name).
const PEER_QUEUE: &str = "http://floor/000000000000/floor";

/// The floor's figures, in µs of CPU.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Floor {
    /// One conditional PutItem.
    pub put_item_us: f64,
    /// One ReceiveMessage of 10 messages.
    pub receive_us: f64,
    /// One DeleteMessageBatch of 10 entries.
    pub delete_batch_us: f64,
}

impl Floor {
    /// The floor of one payment: its write, and its share of a receive and a delete batch.
    pub(crate) fn per_message_us(&self) -> f64 {
        self.put_item_us + (self.receive_us + self.delete_batch_us) / BATCH as f64
    }
}

/// CPU (user + system) of this thread, in ms.
pub(crate) fn thread_cpu_ms() -> Result<f64> {
    Ok(super::stat_cpu_ms("/proc/thread-self/stat")? as f64)
}

/// Ten messages as SQS answers a receive, with the attributes the gateway sets on a payment.
fn receive_answer() -> String {
    let messages: Vec<serde_json::Value> = integration_tests::payments("floor", BATCH)
        .into_iter()
        .enumerate()
        .map(|(i, (id, body))| {
            let attr = |v: &str| serde_json::json!({"DataType": "String", "StringValue": v});
            serde_json::json!({
                "MessageId": format!("00000000-0000-0000-0000-00000000000{i}"),
                "ReceiptHandle": format!("{}{i}", "r".repeat(180)),
                "Body": body,
                "Attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": "1764000000000",
                },
                "MessageAttributes": {
                    "paymentId": attr(&id),
                    "requestId": attr("c5a1f1d2-0000-4000-8000-000000000000"),
                    "apiKeyId": attr("floorkey01"),
                    "ownerId": attr("floorkey01"),
                    "receivedAt": {"DataType": "Number", "StringValue": "1764000000000"},
                },
            })
        })
        .collect();
    serde_json::json!({ "Messages": messages }).to_string()
}

/// The answer to a request, by its `x-amz-target`: an empty object for PutItem, 10 messages
/// for a receive, every entry deleted for a delete batch.
fn answer(head: &str, receive: &str) -> Vec<u8> {
    let target = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("x-amz-target")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    let (content_type, body) = match target.as_str() {
        "AmazonSQS.ReceiveMessage" => ("application/x-amz-json-1.0", receive.to_owned()),
        "AmazonSQS.DeleteMessageBatch" => {
            let ok: Vec<_> = (0..BATCH)
                .map(|i| serde_json::json!({ "Id": i.to_string() }))
                .collect();
            (
                "application/x-amz-json-1.0",
                serde_json::json!({ "Successful": ok, "Failed": [] }).to_string(),
            )
        }
        _ => ("application/x-amz-json-1.0", "{}".to_owned()),
    };
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\nx-amzn-requestid: floor\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Answers every request at once (see [`answer`]), on kept-alive connections, from a thread
/// and runtime of its own until the process ends.
fn serve(listener: std::net::TcpListener) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let receive: Arc<str> = receive_answer().into();
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            while let Ok((mut conn, _)) = listener.accept().await {
                let _ = conn.set_nodelay(true);
                let receive = receive.clone();
                tokio::spawn(async move {
                    // The SDK's client sends one request at a time on a connection.
                    while let Some((request, head_end)) =
                        integration_tests::read_request(&mut conn).await
                    {
                        let head = String::from_utf8_lossy(&request[..head_end]);
                        if conn.write_all(&answer(&head, &receive)).await.is_err() {
                            return;
                        }
                    }
                });
            }
        })
    });
    Ok(())
}

/// Measures the floor (on a single-threaded runtime of its own, as the worker runs: see
/// [`crate::on_own_thread`]): `calls` PutItems `in_flight` at a time, and `calls / 10` receives
/// and delete batches. The peer's own work runs on other threads; the kernel's loopback
/// delivery is charged to the sender, as it is with LocalStack.
pub(crate) async fn measure(calls: usize, in_flight: usize) -> Result<Floor> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    serve(listener)?;
    // The worker's client configurations, pointed at the peer: the endpoint is set on the
    // service's builder, where AWS_ENDPOINT_URL cannot win.
    let sdk = fleet::aws::load_config().await;
    let dynamodb = aws_sdk_dynamodb::Client::from_conf(
        fleet::dynamodb::config(&sdk)
            .endpoint_url(url.clone())
            .build(),
    );
    let sqs =
        aws_sdk_sqs::Client::from_conf(fleet::aws::sqs_config(&sdk).endpoint_url(url).build());
    let put_item_us = put_items(dynamodb, calls, in_flight).await?;
    let batches = (calls / BATCH).max(1);
    let receive_us = per_call(batches, in_flight / BATCH, || receive(sqs.clone())).await?;
    let handles: Vec<String> = (0..BATCH)
        .map(|i| format!("{}{i}", "r".repeat(180)))
        .collect();
    let delete_batch_us = per_call(batches, in_flight / BATCH, || {
        let (sqs, handles) = (sqs.clone(), handles.clone());
        async move { delete_batch(&sqs, PEER_QUEUE, handles).await }
    })
    .await?;
    Ok(Floor {
        put_item_us,
        receive_us,
        delete_batch_us,
    })
}

/// One receive as the engine asks for it (see `fleet::engine::receive`).
async fn receive(sqs: aws_sdk_sqs::Client) -> Result<()> {
    use aws_sdk_sqs::types::MessageSystemAttributeName as Name;
    let output = sqs
        .receive_message()
        .queue_url(PEER_QUEUE)
        .max_number_of_messages(BATCH as i32)
        .wait_time_seconds(20)
        .message_system_attribute_names(Name::ApproximateReceiveCount)
        .message_system_attribute_names(Name::SentTimestamp)
        .message_system_attribute_names(Name::MessageGroupId)
        .message_system_attribute_names(Name::MessageDeduplicationId)
        .message_system_attribute_names(Name::AwsTraceHeader)
        .message_attribute_names("All")
        .send()
        .await?;
    anyhow::ensure!(output.messages().len() == BATCH, "the peer answers 10");
    Ok(())
}

/// One delete batch of the messages behind `handles` (at most 10): a failed entry is an error.
pub(crate) async fn delete_batch(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    handles: Vec<String>,
) -> Result<()> {
    let entries = handles
        .into_iter()
        .enumerate()
        .map(|(i, handle)| {
            aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(handle)
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let deleted = sqs
        .delete_message_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await?;
    anyhow::ensure!(
        deleted.failed.is_empty(),
        "delete failed: {:?}",
        deleted.failed
    );
    Ok(())
}

/// The worker's own write, `calls` times.
async fn put_items(
    client: aws_sdk_dynamodb::Client,
    calls: usize,
    in_flight: usize,
) -> Result<f64> {
    let metrics = fleet::Metrics::new();
    let store = Arc::new(DynamoStore::new(client, "floor".into(), &metrics));
    // The warm-up's calls write too.
    let payments: Vec<Payment> = integration_tests::payments("floor", calls + in_flight.max(1))
        .into_iter()
        .map(|(id, body)| Payment::parse(&id, &body))
        .collect::<Result<_, _>>()?;
    let mut payments = payments.into_iter();
    per_call(calls, in_flight, move || {
        let store = store.clone();
        let payment = payments.next().expect("one payment per call");
        async move {
            let provenance = Provenance {
                request_id: Some("floor-request".into()),
                api_key_id: Some("floor-key".into()),
                received_at_ms: Some(fleet::util::now_ms()),
                message_id: payment.payment_id.clone(),
            };
            let hash = payment.payload_hash();
            store.insert(&payment, &hash, &provenance).await?;
            Ok(())
        }
    })
    .await
}

/// Runs `call` `calls` times (after a warm-up of `in_flight` calls that is not counted),
/// `in_flight` at a time, and returns this thread's CPU per counted call in µs.
async fn per_call<F, Fut>(calls: usize, in_flight: usize, mut call: F) -> Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let in_flight = in_flight.max(1);
    // Warm up: connections, credentials, the allocator.
    for _ in 0..in_flight {
        call().await?;
    }
    let before = thread_cpu_ms()?;
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..calls {
        let permit = permits.clone().acquire_owned().await?;
        let done = call();
        tasks.spawn(async move {
            let result = done.await;
            drop(permit);
            result
        });
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok((thread_cpu_ms()? - before) * 1000.0 / calls as f64)
}
