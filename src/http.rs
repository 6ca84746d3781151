//! The operations endpoint on `api.http`: `GET /healthz` and `GET /metrics`.
//!
//! Two fixed routes do not need a web framework: a minimal HTTP/1.1 responder with a bounded
//! request head (8 KiB) and a read timeout, one task per connection, `Connection: close`.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::metrics::Metrics;

const MAX_HEAD: usize = 8192;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves until `shutdown` turns true. `health` says whether the gateway takes calls.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<dyn Fn() -> bool + Send + Sync>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let metrics = Arc::clone(&metrics);
                let health = Arc::clone(&health);
                tokio::spawn(async move { handle(stream, &metrics, health.as_ref()).await });
            }
            Err(error) => {
                tracing::debug!(%error, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(
    mut stream: TcpStream,
    metrics: &Metrics,
    health: &(dyn Fn() -> bool + Send + Sync),
) {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let complete = loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break true;
        }
        if head.len() > MAX_HEAD {
            break false;
        }
        match tokio::time::timeout(READ_TIMEOUT, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(n)) => head.extend_from_slice(&chunk[..n]),
        }
    };
    let (status, content_type, body) = if !complete {
        (431, "text/plain", "request header too large\n".to_string())
    } else {
        route(&head, metrics, health)
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn route(
    head: &[u8],
    metrics: &Metrics,
    health: &(dyn Fn() -> bool + Send + Sync),
) -> (u16, &'static str, String) {
    let text = String::from_utf8_lossy(head);
    let mut parts = text.lines().next().unwrap_or_default().split(' ');
    let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return (400, "text/plain", "bad request\n".into());
    };
    if !version.starts_with("HTTP/1.") {
        return (400, "text/plain", "bad request\n".into());
    }
    let path = path.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET", "/healthz") => {
            if health() {
                (200, "text/plain", "ok\n".into())
            } else {
                (503, "text/plain", "unhealthy\n".into())
            }
        }
        ("GET", "/metrics") => (200, "text/plain; version=0.0.4", metrics.render()),
        (_, "/healthz" | "/metrics") => (405, "text/plain", "method not allowed\n".into()),
        _ => (404, "text/plain", "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn request(address: std::net::SocketAddr, raw: &[u8]) -> String {
        let mut stream = match TcpStream::connect(address).await {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let _ = stream.write_all(raw).await;
        let mut text = String::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut text)).await;
        text
    }

    #[tokio::test]
    async fn routes_and_bad_input() {
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
        };
        let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let metrics = Arc::new(Metrics::new());
        metrics.add(crate::metrics::Counter::RtpPacketsRelayed, 7);
        let (_stop, stopped) = watch::channel(false);
        tokio::spawn(serve(listener, metrics, Arc::new(|| true), stopped));
        assert!(request(address, b"GET /healthz HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 200 OK"));
        let metrics_text = request(address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(
            metrics_text.contains("hotline_rtp_packets_relayed_total 7"),
            "{metrics_text}"
        );
        assert!(request(address, b"GET /nope HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 404"));
        assert!(request(address, b"POST /metrics HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 405"));
        assert!(request(address, b"\x00\x01garbage\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 400"));
        let huge = vec![b'a'; 20_000];
        assert!(request(address, &huge).await.starts_with("HTTP/1.1 431"));
        // Still serving after all that.
        assert!(request(address, b"GET /healthz HTTP/1.0\r\n\r\n")
            .await
            .contains("ok"));
    }
}
