//! [`Proxy`]: a TCP forwarder to LocalStack that a test can cut or slow down.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;

use crate::endpoint;

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
