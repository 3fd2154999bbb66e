//! Test harness for black-box tests against LocalStack.
//!
//! Each test provisions its own copy of the fleet's topology with a random name prefix (through
//! the same `localstack/provision.py` the local run uses, so the real OpenAPI document and
//! mapping templates are under test), and runs worker binaries as child processes with the
//! environment the provisioner hands out. Nothing here is a fake: every call goes over HTTP to
//! LocalStack through the real AWS SDK.

#![allow(missing_docs)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Where LocalStack answers (the standard AWS variable, as for the workers).
pub fn endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".to_owned())
}

/// The workspace root: `FLEET_ROOT`, else the crate folder cargo names at run time, else the
/// one it named at build time.
///
/// Run time first: builds share a `CARGO_TARGET_DIR` across clones (CI's fresh clone, a
/// developer's tree), and cargo reuses a test binary built in another clone, whose compile-time
/// path would point the tests at that clone's provisioner and API document.
pub fn root() -> PathBuf {
    if let Some(root) = std::env::var_os("FLEET_ROOT") {
        return PathBuf::from(root);
    }
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    Path::new(&manifest_dir)
        .parent()
        .expect("integration-tests sits in the workspace")
        .to_path_buf()
}

/// A built binary of the workspace: `FLEET_BIN_DIR`, else the profile folder this test
/// executable was built into (`target/<profile>/deps/..`).
pub fn binary(name: &str) -> PathBuf {
    let dir = std::env::var_os("FLEET_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("current exe");
            let parent = exe.parent().expect("exe folder");
            if parent.ends_with("deps") {
                parent.parent().expect("profile folder").to_path_buf()
            } else {
                parent.to_path_buf()
            }
        });
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// The stack's answer from `provision.py --json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Provisioned {
    pub prefix: String,
    pub api: Api,
    pub queues: HashMap<String, Queue>,
    pub tables: HashMap<String, String>,
    /// SNS topic ARNs by topology name.
    #[serde(default)]
    pub topics: HashMap<String, String>,
    /// S3 bucket names by topology name.
    #[serde(default)]
    pub buckets: HashMap<String, String>,
    pub workers: HashMap<String, HashMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Api {
    pub id: String,
    pub url: String,
    pub key: String,
    /// Another client's key.
    pub other_key: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Queue {
    pub name: String,
    pub url: String,
    pub dlq_url: String,
}

/// An isolated copy of the fleet on LocalStack, with clients to look at it.
pub struct Stack {
    pub info: Provisioned,
    pub sqs: aws_sdk_sqs::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub http: reqwest::Client,
}

/// AWS configuration for LocalStack (test credentials unless the environment has others).
pub async fn sdk_config() -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint())
        .region(aws_config::Region::new(
            std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".to_owned()),
        ));
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        loader = loader.credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "static",
        ));
    }
    loader.load().await
}

impl Stack {
    /// Provisions a fresh copy of the topology under a random prefix.
    pub async fn provision() -> Result<Self> {
        let health = format!("{}/_localstack/health", endpoint());
        reqwest::get(&health).await.with_context(|| {
            format!(
                "LocalStack does not answer at {health}: run scripts/test, or localstack/start.sh"
            )
        })?;
        Self::provision_prefix(&format!("t{:08x}-", fastrand::u32(..))).await
    }

    /// Runs the provisioner again over this stack's prefix.
    pub async fn reprovision(&self) -> Result<Self> {
        Self::provision_prefix(&self.info.prefix).await
    }

    async fn provision_prefix(prefix: &str) -> Result<Self> {
        let python = std::env::var_os("FLEET_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join(".localstack/venv/bin/python"));
        let output = Command::new(&python)
            .arg(root().join("localstack/provision.py"))
            .args(["--json", "--prefix", prefix, "--endpoint", &endpoint()])
            .output()
            .await
            .with_context(|| format!("running {}", python.display()))?;
        if !output.status.success() {
            bail!(
                "provision.py failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let info: Provisioned = serde_json::from_slice(&output.stdout)?;
        let sdk = sdk_config().await;
        Ok(Self {
            info,
            sqs: aws_sdk_sqs::Client::new(&sdk),
            dynamodb: aws_sdk_dynamodb::Client::new(&sdk),
            http: reqwest::Client::new(),
        })
    }

    pub fn queue(&self, name: &str) -> &Queue {
        &self.info.queues[name]
    }

    pub fn table(&self, name: &str) -> &str {
        &self.info.tables[name]
    }

    /// The environment a worker gets from the provisioner, plus the AWS variables.
    pub fn worker_env(&self, worker: &str) -> HashMap<String, String> {
        let mut env = self.info.workers[worker].clone();
        env.insert("AWS_ENDPOINT_URL".into(), endpoint());
        env.entry("AWS_REGION".into())
            .or_insert_with(|| "us-east-1".into());
        for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            env.insert(
                var.into(),
                std::env::var(var).unwrap_or_else(|_| "test".into()),
            );
        }
        env.insert("FLEET_LOG_FORMAT".into(), "json".into());
        env.insert("FLEET_METRICS_INTERVAL_SECS".into(), "1".into());
        // Test time: a transient failure comes back in seconds, not the production minute.
        env.entry("FLEET_RETRY_BASE_MS".into())
            .or_insert_with(|| "2000".into());
        env
    }

    /// [`Self::worker_env`] with some variables set or replaced.
    pub fn worker_env_with(&self, worker: &str, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut env = self.worker_env(worker);
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        env
    }

    /// A request to the API, with the stack's API key.
    pub fn api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{}", self.info.api.url, path))
            .header("x-api-key", &self.info.api.key)
    }

    /// Messages visible + in flight + delayed in a queue.
    pub async fn depth(&self, queue_url: &str) -> Result<u64> {
        Ok(fleet::queue::counts(&self.sqs, queue_url).await?.total())
    }

    /// Receives what a queue holds, up to `max`, keeping it invisible for 60 s.
    pub async fn drain(
        &self,
        queue_url: &str,
        max: usize,
    ) -> Result<Vec<aws_sdk_sqs::types::Message>> {
        let mut all = Vec::new();
        while all.len() < max {
            let out = self
                .sqs
                .receive_message()
                .queue_url(queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .visibility_timeout(60)
                .message_attribute_names("All")
                .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
                .send()
                .await?;
            let batch = out.messages.unwrap_or_default();
            if batch.is_empty() {
                break;
            }
            all.extend(batch);
        }
        Ok(all)
    }

    /// Sends payments straight to the queue with the attributes the gateway sets.
    pub async fn send_payments(
        &self,
        queue_url: &str,
        payments: &[(String, String)],
    ) -> Result<()> {
        send_payments(&self.sqs, queue_url, payments).await
    }

    /// Waits until a queue holds messages, and takes them (see [`Self::drain`]).
    pub async fn wait_for_messages(
        &self,
        queue_url: &str,
        what: &str,
    ) -> Result<Vec<aws_sdk_sqs::types::Message>> {
        eventually(Duration::from_secs(30), what, || async {
            let messages = self.drain(queue_url, 10).await?;
            Ok((!messages.is_empty()).then_some(messages))
        })
        .await
    }

    /// Waits until a table holds exactly `n` rows.
    pub async fn wait_for_rows(&self, table: &str, n: usize, limit: Duration) -> Result<()> {
        eventually(limit, &format!("{n} rows in {table}"), || async {
            Ok((self.count_rows(table).await? == n).then_some(()))
        })
        .await
    }

    /// Waits until a queue is empty (nothing visible, in flight or delayed).
    pub async fn wait_for_empty(&self, queue_url: &str) -> Result<()> {
        eventually(Duration::from_secs(30), "the queue empty", || async {
            Ok((self.depth(queue_url).await? == 0).then_some(()))
        })
        .await
    }

    /// A stand-in for a chat channel: a new SQS queue subscribed to the stack's topic `topic`
    /// (raw delivery). Returns its URL.
    pub async fn subscribe_inbox(&self, topic: &str) -> Result<String> {
        let topic_arn = self.info.topics.get(topic).context("no such topic")?;
        let inbox = self
            .sqs
            .create_queue()
            .queue_name(format!(
                "{}inbox-{:06x}",
                self.info.prefix,
                fastrand::u32(..1 << 24)
            ))
            .send()
            .await?
            .queue_url
            .context("inbox url")?;
        let inbox_arn = self
            .sqs
            .get_queue_attributes()
            .queue_url(&inbox)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await?
            .attributes
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .context("inbox arn")?;
        aws_sdk_sns::Client::new(&sdk_config().await)
            .subscribe()
            .topic_arn(topic_arn)
            .protocol("sqs")
            .endpoint(&inbox_arn)
            .attributes("RawMessageDelivery", "true")
            .send()
            .await?;
        Ok(inbox)
    }

    /// Number of rows in a table.
    pub async fn count_rows(&self, table: &str) -> Result<usize> {
        let mut count = 0usize;
        let mut start = None;
        loop {
            let out = self
                .dynamodb
                .scan()
                .table_name(table)
                .select(aws_sdk_dynamodb::types::Select::Count)
                .set_exclusive_start_key(start)
                .send()
                .await?;
            count += out.count as usize;
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(count);
            }
        }
    }

    /// Creates a queue with a DLQ and the given `maxReceiveCount` (for engine tests that need
    /// a redrive policy other than the topology's). A name ending in `.fifo` makes both FIFO
    /// queues. Returns (queue URL, DLQ URL).
    pub async fn queue_pair(
        &self,
        name: &str,
        max_receive_count: u32,
        visibility_secs: u32,
    ) -> Result<(String, String)> {
        let name = format!("{}{name}", self.info.prefix);
        let fifo = name.strip_suffix(".fifo");
        let dlq_name = match fifo {
            Some(base) => format!("{base}-dlq.fifo"),
            None => format!("{name}-dlq"),
        };
        let fifo_attributes =
            || fifo.map(|_| HashMap::from([(QueueAttributeName::FifoQueue, "true".to_owned())]));
        let dlq = self
            .sqs
            .create_queue()
            .queue_name(dlq_name)
            .set_attributes(fifo_attributes())
            .send()
            .await?
            .queue_url
            .context("dlq url")?;
        let dlq_arn = self
            .sqs
            .get_queue_attributes()
            .queue_url(&dlq)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await?
            .attributes
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .context("dlq arn")?;
        let url = self
            .sqs
            .create_queue()
            .queue_name(&name)
            .set_attributes(fifo_attributes())
            .attributes(QueueAttributeName::VisibilityTimeout, visibility_secs.to_string())
            .attributes(
                QueueAttributeName::RedrivePolicy,
                serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count})
                    .to_string(),
            )
            .send()
            .await?
            .queue_url
            .context("queue url")?;
        Ok((url, dlq))
    }
}

/// Sends payments straight to a queue, in batches of 10, with the attributes the gateway sets.
pub async fn send_payments(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    payments: &[(String, String)],
) -> Result<()> {
    send_payments_with(sqs, queue_url, payments, &[]).await
}

/// [`send_payments`] with extra string attributes on every message.
pub async fn send_payments_with(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    payments: &[(String, String)],
    extra: &[(&str, &str)],
) -> Result<()> {
    for chunk in payments.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, (id, body))| {
                let mut entry = SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body)
                    .message_attributes("paymentId", string_attr(id))
                    .message_attributes("requestId", string_attr(&format!("direct-{id}")));
                for (name, value) in extra {
                    entry = entry.message_attributes(*name, string_attr(value));
                }
                entry.build().expect("id and body set")
            })
            .collect();
        let out = sqs
            .send_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await?;
        if !out.failed.is_empty() {
            bail!("send failed: {:?}", out.failed);
        }
    }
    Ok(())
}

pub fn string_attr(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .expect("data type set")
}

/// A payment body as a client would send it.
pub fn payment_body(user: &str, amount: &str) -> String {
    format!(r#"{{"userId":"{user}","amount":{amount},"currency":"EUR","reference":"test"}}"#)
}

/// A worker binary running as a child process, its stdout (metric lines) and stderr (JSON logs)
/// collected.
pub struct Worker {
    child: Child,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Worker {
    pub fn spawn(name: &str, env: &HashMap<String, String>) -> Result<Self> {
        let mut child = Command::new(binary(name))
            .env_clear()
            .envs(env)
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        let collect = |stream: Box<dyn tokio::io::AsyncRead + Unpin + Send>, echo: bool| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if echo && std::env::var_os("FLEET_TEST_ECHO").is_some() {
                        eprintln!("{line}");
                    }
                    sink.lock().unwrap().push(line);
                }
            });
            lines
        };
        let stdout = collect(Box::new(child.stdout.take().expect("piped")), false);
        let stderr = collect(Box::new(child.stderr.take().expect("piped")), true);
        Ok(Self {
            child,
            stdout,
            stderr,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Every metric line so far (CloudWatch EMF documents), parsed; lines that are not JSON
    /// are left out.
    pub fn metric_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .collect()
    }

    /// The latest main metric line: the one with the running `totals` (a line of labelled
    /// metrics, when a worker has any, comes before it).
    fn latest_main_line(&self) -> Option<serde_json::Value> {
        let lines = self.stdout.lock().unwrap();
        lines
            .iter()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v.get("totals").is_some())
    }

    /// The running totals of the latest metric line.
    pub fn totals(&self) -> HashMap<String, u64> {
        self.latest_main_line()
            .and_then(|v| serde_json::from_value(v["totals"].clone()).ok())
            .unwrap_or_default()
    }

    pub fn total(&self, name: &str) -> u64 {
        self.totals().get(name).copied().unwrap_or(0)
    }

    /// A point-in-time value (`concurrency`, `in_flight`, `breaker_open`) of the latest metric
    /// line.
    pub fn gauge(&self, name: &str) -> Option<u64> {
        self.latest_main_line().and_then(|v| v[name].as_u64())
    }

    /// Waits until the worker's metric lines report `total(name) >= at_least`.
    pub async fn wait_for_total(&self, name: &str, at_least: u64, limit: Duration) -> Result<()> {
        eventually(limit, &format!("{name} >= {at_least}"), || async {
            Ok((self.total(name) >= at_least).then_some(()))
        })
        .await
    }

    /// Log lines (parsed JSON, whole: `fields`, `target`, `span`...) of a target.
    pub fn log_lines(&self, target: &str) -> Vec<serde_json::Value> {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == target)
            .collect()
    }

    /// Log lines (parsed JSON) whose `fields` contain `key`.
    pub fn log_fields(&self, key: &str) -> Vec<serde_json::Value> {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            // Not the one-line summary of each finished message (`log_lines("fleet::message")`),
            // which repeats the outcome's fields.
            .filter(|v| v["target"] != "fleet::message")
            .filter(|v| v["fields"].get(key).is_some())
            .map(|v| v["fields"].clone())
            .collect()
    }

    pub fn signal(&self, signal: &str) -> Result<()> {
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -{signal} failed");
        }
        Ok(())
    }

    /// SIGTERM, then waits for the exit; returns the exit code and how long the exit took.
    pub async fn terminate(mut self, limit: Duration) -> Result<(Option<i32>, Duration, Self)> {
        let started = Instant::now();
        self.signal("TERM")?;
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .context("worker did not exit in time")??;
        // Let the output readers catch up with the last lines.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok((status.code(), started.elapsed(), self))
    }

    /// SIGKILL: no cleanup at all.
    pub async fn kill9(mut self) -> Result<()> {
        self.signal("KILL")?;
        self.child.wait().await?;
        Ok(())
    }

    /// Waits for the exit without signalling.
    pub async fn wait(&mut self) -> Result<Option<i32>> {
        Ok(self.child.wait().await?.code())
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

/// Polls `check` until it returns `Some`, or fails after `limit` naming `what`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if started.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A TCP forwarder to LocalStack on a port of its own, optionally adding latency to every
/// chunk a client sends: a real network path that a test can break (not started yet: the
/// port refuses connections) or slow down.
pub struct Proxy {
    pub port: u16,
    delay: Duration,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The connections being forwarded, so that [`Proxy::stop`] can cut them.
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    /// Reserves a port; nothing listens on it until [`Proxy::start`].
    pub async fn reserve(delay: Duration) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        drop(listener);
        Ok(Self {
            port,
            delay,
            task: None,
            connections: Arc::default(),
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts forwarding to LocalStack.
    pub async fn start(&mut self) -> Result<()> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await?;
        let target = endpoint()
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let delay = self.delay;
        let connections = self.connections.clone();
        self.task = Some(tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let target = target.clone();
                let mut open = connections.lock().unwrap();
                open.retain(|c| !c.is_finished());
                open.push(
                    tokio::spawn(async move {
                        let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                            return;
                        };
                        let (mut client_read, mut client_write) = client.into_split();
                        let (mut server_read, mut server_write) = server.into_split();
                        let upstream = async {
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            let mut buf = vec![0u8; 64 * 1024];
                            loop {
                                let n = client_read.read(&mut buf).await?;
                                if n == 0 {
                                    return server_write.shutdown().await;
                                }
                                if !delay.is_zero() {
                                    tokio::time::sleep(delay).await;
                                }
                                server_write.write_all(&buf[..n]).await?;
                            }
                        };
                        let downstream = tokio::io::copy(&mut server_read, &mut client_write);
                        let _: (std::io::Result<()>, std::io::Result<u64>) =
                            tokio::join!(upstream, downstream);
                    })
                    .abort_handle(),
                );
            }
        }));
        Ok(())
    }

    /// Stops forwarding: the port refuses new connections and every open one is cut, as when
    /// the dependency behind it goes down. [`Proxy::start`] brings it back.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads one HTTP/1.1 request (head, then a `content-length` body): its bytes and where the
/// body starts; `None` when the peer closes first.
pub async fn read_request(conn: &mut tokio::net::TcpStream) -> Option<(Vec<u8>, usize)> {
    use tokio::io::AsyncReadExt;
    let mut request = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&request[..head_end]).to_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while request.len() < head_end + length {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    Some((request, head_end))
}

/// Sends one HTTP request (as [`read_request`] read it) to `target` with `Connection: close`,
/// so that the answer ends with the connection, and returns the answer as it came; `None` when
/// `target` cannot be reached.
pub async fn forward_closing(target: &str, request: &[u8], head_end: usize) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let text = String::from_utf8_lossy(&request[..head_end]).into_owned();
    let mut forwarded: Vec<u8> = text
        .split("\r\n")
        .filter(|l| !l.to_lowercase().starts_with("connection:") && !l.is_empty())
        .map(|l| format!("{l}\r\n"))
        .collect::<String>()
        .into_bytes();
    forwarded.extend_from_slice(b"connection: close\r\n\r\n");
    forwarded.extend_from_slice(&request[head_end..]);
    let mut server = tokio::net::TcpStream::connect(target).await.ok()?;
    server.write_all(&forwarded).await.ok()?;
    let mut response = Vec::new();
    let _ = server.read_to_end(&mut response).await;
    Some(response)
}

/// An HTTP proxy to LocalStack for AWS query-protocol calls (EC2) that breaks one call of an
/// action where the test wants it, seen by the worker exactly as a real network or EC2 would
/// show it:
///
/// - [`FaultProxy::start`] answers the `nth` call of one action (1 for the first) with an EC2
///   error instead of forwarding it: a permanent failure;
/// - [`FaultProxy::lose_first_answers`] forwards the first call of each given action to
///   LocalStack, waits for its answer (EC2 did the work), and then closes the connection
///   without replying: a lost answer, which the client can only see as a broken connection.
///
/// Every other call is forwarded (one per connection). Calls are counted per action.
pub struct FaultProxy {
    pub port: u16,
    calls: Arc<Mutex<HashMap<String, usize>>>,
    lost: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// What a [`FaultProxy`] does to the calls it breaks.
#[derive(Debug, Clone)]
enum Fault {
    /// The `nth` call of `action` gets EC2 error `code`, not forwarded.
    Error {
        action: String,
        nth: usize,
        code: String,
    },
    /// The first call of each action is forwarded and its answer dropped.
    LoseFirstAnswer(Vec<String>),
}

impl FaultProxy {
    /// Answers the `nth` call of `action` with EC2 error `code`.
    pub async fn start(action: &str, nth: usize, code: &str) -> Result<Self> {
        Self::spawn(Fault::Error {
            action: action.to_owned(),
            nth,
            code: code.to_owned(),
        })
        .await
    }

    /// Forwards the first call of each of `actions`, and loses LocalStack's answer.
    pub async fn lose_first_answers(actions: &[&str]) -> Result<Self> {
        Self::spawn(Fault::LoseFirstAnswer(
            actions.iter().map(|a| (*a).to_owned()).collect(),
        ))
        .await
    }

    /// How many calls of `action` reached the proxy.
    pub fn calls(&self, action: &str) -> usize {
        self.calls.lock().unwrap().get(action).copied().unwrap_or(0)
    }

    /// How many answers were lost (forwarded, done by LocalStack, never replied).
    pub fn lost(&self) -> usize {
        self.lost.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn spawn(fault: Fault) -> Result<Self> {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let target = endpoint()
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let calls = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
        let lost = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (counted, dropped) = (calls.clone(), lost.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (target, fault, calls, lost) = (
                    target.clone(),
                    fault.clone(),
                    counted.clone(),
                    dropped.clone(),
                );
                tokio::spawn(async move {
                    let Some((request, head_end)) = read_request(&mut client).await else {
                        return;
                    };
                    let body = String::from_utf8_lossy(&request[head_end..]);
                    let action = body
                        .split('&')
                        .find_map(|p| p.strip_prefix("Action="))
                        .unwrap_or_default()
                        .to_owned();
                    let nth = {
                        let mut calls = calls.lock().unwrap();
                        let n = calls.entry(action.clone()).or_default();
                        *n += 1;
                        *n
                    };
                    let lose_answer = match &fault {
                        Fault::Error {
                            action: broken,
                            nth: at,
                            code,
                        } if *broken == action && *at == nth => {
                            let xml = format!(
                                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>injected by the test</Message></Error></Errors><RequestID>fault</RequestID></Response>"
                            );
                            let response = format!(
                                "HTTP/1.1 400 Bad Request\r\ncontent-type: text/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{xml}",
                                xml.len()
                            );
                            let _ = client.write_all(response.as_bytes()).await;
                            return;
                        }
                        Fault::Error { .. } => false,
                        Fault::LoseFirstAnswer(actions) => nth == 1 && actions.contains(&action),
                    };
                    // Forward with "Connection: close": the response then ends with the
                    // connection, and goes back as it came.
                    let Some(response) = forward_closing(&target, &request, head_end).await else {
                        return;
                    };
                    if lose_answer {
                        // EC2 did it; the client hears nothing but the connection closing.
                        lost.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        return;
                    }
                    let _ = client.write_all(&response).await;
                    let _ = client.shutdown().await;
                });
            }
        });
        Ok(Self {
            port,
            calls,
            lost,
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One scripted answer of a [`ScriptedHttp`] server.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    /// Wait this long before answering (to make a client time out).
    pub delay: Duration,
}

impl Answer {
    pub fn json(body: impl Into<String>) -> Self {
        Self {
            status: 200,
            body: body.into(),
            delay: Duration::ZERO,
        }
    }
}

/// An HTTP server on a port of its own that gives scripted answers in order (the last one
/// again when the script runs out) and records each request line: a real HTTP peer for a
/// worker's HTTP client.
pub struct ScriptedHttp {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedHttp {
    pub async fn start(script: Vec<Answer>) -> Result<Self> {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(std::collections::VecDeque::from(script)));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (seen, script) = (seen.clone(), script.clone());
                tokio::spawn(async move {
                    let Some((head, _)) = read_request(&mut conn).await else {
                        return;
                    };
                    let line = String::from_utf8_lossy(&head)
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let answer = {
                        let mut script = script.lock().unwrap();
                        seen.lock().unwrap().push(line);
                        if script.len() > 1 {
                            script.pop_front()
                        } else {
                            script.front().cloned()
                        }
                    };
                    let Some(answer) = answer else { return };
                    tokio::time::sleep(answer.delay).await;
                    let response = format!(
                        "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                        answer.status,
                        answer.body.len(),
                        answer.body
                    );
                    let _ = conn.write_all(response.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        Ok(Self {
            port,
            requests,
            task,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn request_lines(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for ScriptedHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `n` distinct payments: (payment id, body).
pub fn payments(tag: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            (
                format!("{tag}-{i:05}"),
                payment_body(&format!("user-{}", i % 17), &format!("{}.25", i + 1)),
            )
        })
        .collect()
}

/// A `fleetctl` command for a stack's prefix, with the AWS environment.
pub fn fleetctl_command(stack: &Stack, args: &[&str]) -> Command {
    let mut command = Command::new(binary("fleetctl"));
    command
        .args(args)
        .env("FLEET_PREFIX", &stack.info.prefix)
        .envs(
            stack
                .worker_env("payments-worker")
                .into_iter()
                .filter(|(k, _)| k.starts_with("AWS_")),
        )
        .stdin(Stdio::null());
    command
}

/// Runs `fleetctl` against a stack's prefix; returns (exit code, stdout, stderr).
pub async fn fleetctl(stack: &Stack, args: &[&str]) -> Result<(i32, String, String)> {
    let out = fleetctl_command(stack, args).output().await?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Puts payment messages straight into a DLQ the way the engine dead-letters them.
pub async fn dead_letter_payments(
    stack: &Stack,
    kind: &str,
    payments: &[(String, String)],
) -> Result<()> {
    let queue = stack.queue("payments").clone();
    let reason = [
        ("fleet.error.kind", kind),
        ("fleet.error.message", "test"),
        ("fleet.worker", "payments-worker"),
        ("fleet.source-queue", queue.url.as_str()),
    ];
    send_payments_with(&stack.sqs, &queue.dlq_url, payments, &reason).await
}

/// How many log lines of these workers have `key` equal to `value`.
pub fn count_logged(workers: &[Worker], key: &str, value: &str) -> usize {
    workers
        .iter()
        .flat_map(|w| w.log_fields(key))
        .filter(|f| f[key] == value)
        .count()
}

/// Stops every worker (SIGTERM) and checks that each exited cleanly.
pub async fn terminate_all(workers: impl IntoIterator<Item = Worker>) -> Result<()> {
    for worker in workers {
        let (code, _, worker) = worker.terminate(Duration::from_secs(30)).await?;
        anyhow::ensure!(code == Some(0), "exit {code:?}: {}", worker.stderr_text());
    }
    Ok(())
}

/// The ids of the stack's two API keys, `(key, other key)`: on the local stack (and in any
/// deployment without a Cognito user pool) a caller's owner id is the id of its API key
/// (`$context.identity.apiKeyId`; see docs/security.md). Asked of API Gateway with the
/// provisioner's Python, the way `provision.py` finds its keys.
pub async fn api_key_ids(stack: &Stack) -> Result<(String, String)> {
    let python = std::env::var_os("FLEET_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".localstack/venv/bin/python"));
    let script = "import boto3, json, os, sys\n\
        c = boto3.client('apigateway', endpoint_url=sys.argv[1], region_name=sys.argv[2],\n\
            aws_access_key_id=os.environ.get('AWS_ACCESS_KEY_ID', 'test'),\n\
            aws_secret_access_key=os.environ.get('AWS_SECRET_ACCESS_KEY', 'test'))\n\
        items = c.get_api_keys(nameQuery=sys.argv[3], includeValues=True, limit=500)['items']\n\
        print(json.dumps({k['value']: k['id'] for k in items if k['name'].startswith(sys.argv[3])}))";
    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".to_owned());
    let output = Command::new(&python)
        .args(["-c", script, &endpoint(), &region, &stack.info.prefix])
        .output()
        .await
        .with_context(|| format!("running {}", python.display()))?;
    if !output.status.success() {
        bail!(
            "listing the API keys failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let ids: HashMap<String, String> = serde_json::from_slice(&output.stdout)?;
    let id = |value: &str| {
        ids.get(value)
            .cloned()
            .with_context(|| format!("no API key of {} has this value", stack.info.prefix))
    };
    Ok((id(&stack.info.api.key)?, id(&stack.info.api.other_key)?))
}
