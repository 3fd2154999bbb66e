//! [`FaultProxy`]: an HTTP proxy to LocalStack's EC2 that breaks the calls a test picks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Result;

use super::http::{forward_closing, read_request};
use crate::endpoint;

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
