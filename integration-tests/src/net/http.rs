//! Reading and forwarding one HTTP/1.1 request, for the test's own servers and proxies.

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
