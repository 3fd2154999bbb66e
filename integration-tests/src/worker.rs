//! Worker binaries run as child processes: spawned with a stack's environment, watched through
//! their metric lines (stdout) and JSON logs (stderr), signalled and stopped.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::{binary, eventually};

/// How long [`Worker::stop`] gives a worker to exit after SIGTERM.
pub const STOP_LIMIT: Duration = Duration::from_secs(30);

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

    /// Stops the worker as its orchestrator would: SIGTERM, then waits up to [`STOP_LIMIT`]
    /// for the exit ([`Self::terminate`]); returns the exit code, how long the exit took, and
    /// the worker (its output, to look at).
    pub async fn stop(self) -> Result<(Option<i32>, Duration, Self)> {
        self.terminate(STOP_LIMIT).await
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

/// How many log lines of these workers have `key` equal to `value`.
pub fn count_logged(workers: &[Worker], key: &str, value: &str) -> usize {
    workers
        .iter()
        .flat_map(|w| w.log_fields(key))
        .filter(|f| f[key] == value)
        .count()
}

/// Stops every worker ([`Worker::stop`]) and checks that each exited cleanly.
pub async fn terminate_all(workers: impl IntoIterator<Item = Worker>) -> Result<()> {
    for worker in workers {
        let (code, _, worker) = worker.stop().await?;
        anyhow::ensure!(code == Some(0), "exit {code:?}: {}", worker.stderr_text());
    }
    Ok(())
}
