//! The operations endpoint on `api.http`: `GET /healthz` and `GET /metrics`. `/healthz` is 200
//! `ok` when the gateway can take calls (503 and the problems otherwise), followed by a
//! `peer down: NAME` line per peer its probes found down (not a problem of the gateway's).
//! With `[recording]`, `GET /recordings/<call id>` too ([`recordings`]).
//!
//! A few fixed routes do not need a web framework: a minimal HTTP/1.1 responder, one task per
//! connection, `Connection: close`. It is reachable by whoever reaches the port, so it is
//! bounded: at most [`crate::limits::MAX_HTTP_CONNECTIONS`] connections at once (more are
//! closed at once), a request head of 8 KiB that must be whole within [`HEAD_DEADLINE`] of the
//! connection opening, however it is dripped.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::health::HealthCheck;
use crate::metrics::{Counter, Metrics};

mod recordings;
pub use recordings::RecordingAccess;

const MAX_HEAD: usize = 8192;
/// The whole request head must arrive within this long of the connection opening.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(5);

/// How much of the process one HTTP client can hold.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub connections: usize,
    pub head_deadline: Duration,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            connections: crate::limits::MAX_HTTP_CONNECTIONS,
            head_deadline: HEAD_DEADLINE,
        }
    }
}

/// Serves until `shutdown` turns true. `health` says whether the gateway takes calls.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<dyn HealthCheck>,
    shutdown: watch::Receiver<bool>,
    recordings: Option<Arc<RecordingAccess>>,
) {
    let limits = HttpLimits::default();
    serve_with(listener, metrics, health, shutdown, limits, recordings).await;
}

/// As [`serve`], within `limits`.
pub async fn serve_with(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<dyn HealthCheck>,
    mut shutdown: watch::Receiver<bool>,
    limits: HttpLimits,
    recordings: Option<Arc<RecordingAccess>>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.connections));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    metrics.increment(Counter::HttpConnectionsRefused);
                    drop(stream);
                    continue;
                };
                let metrics = Arc::clone(&metrics);
                let health = Arc::clone(&health);
                let recordings = recordings.clone();
                tokio::spawn(async move {
                    let services = (metrics.as_ref(), health.as_ref(), recordings.as_deref());
                    handle(stream, services, limits.head_deadline).await;
                    drop(slot);
                });
            }
            Err(error) => {
                if crate::limits::is_out_of_descriptors(&error) {
                    metrics.increment(Counter::DescriptorsExhausted);
                }
                tracing::debug!(%error, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One connection: the head within `head_deadline`, then the answer (a route's within twice
/// the health check's allowance; a recording's as long as its download takes, up to its own
/// limit).
async fn handle(
    mut stream: TcpStream,
    (metrics, health, recordings): (&Metrics, &dyn HealthCheck, Option<&RecordingAccess>),
    head_deadline: Duration,
) {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + head_deadline;
    let complete = loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break true;
        }
        if head.len() > MAX_HEAD {
            break false;
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(n)) => head.extend_from_slice(&chunk[..n]),
        }
    };
    if complete {
        let text = String::from_utf8_lossy(&head);
        let mut parts = text.lines().next().unwrap_or_default().split(' ');
        let (method, path) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let recording = path
            .split('?')
            .next()
            .and_then(|p| p.strip_prefix("/recordings/"));
        if let (Some(name), Some(access), "GET" | "HEAD") = (recording, recordings, method) {
            recordings::respond(&mut stream, method, name, &text, access).await;
            let _ = stream.shutdown().await;
            return;
        }
    }
    let answer = async {
        if complete {
            route(&head, metrics, health).await
        } else {
            (431, "text/plain", "request header too large\n".to_string())
        }
    };
    let Ok((status, content_type, body)) =
        tokio::time::timeout(crate::health::ANSWER_WITHIN * 2, answer).await
    else {
        return;
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

async fn route(
    head: &[u8],
    metrics: &Metrics,
    health: &dyn HealthCheck,
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
            let problems = health.problems().await;
            let (status, mut body) = if problems.is_empty() {
                (200, "ok\n".to_string())
            } else {
                (503, problems.join("\n") + "\n")
            };
            for peer in health.peers_down() {
                body.push_str(&format!("peer down: {peer}\n"));
            }
            (status, "text/plain", body)
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

    struct Healthy;

    impl HealthCheck for Healthy {
        fn problems(
            &self,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<String>> + Send + '_>> {
            Box::pin(async { Vec::new() })
        }
    }

    #[tokio::test]
    async fn routes_and_bad_input() {
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
        };
        let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let metrics = Arc::new(Metrics::new());
        metrics.add(Counter::RtpPacketsRelayed, 7);
        let (_stop, stopped) = watch::channel(false);
        tokio::spawn(serve(listener, metrics, Arc::new(Healthy), stopped, None));
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

    /// Clients that hold connections (dripping a head a byte at a time) take no more than the
    /// cap, a connection beyond it is closed at once, and a dripped head is cut off at the
    /// deadline however steadily it drips; then the endpoint answers again.
    #[tokio::test]
    async fn holders_and_drippers_are_bounded() {
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
        };
        let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let metrics = Arc::new(Metrics::new());
        let (_stop, stopped) = watch::channel(false);
        let limits = HttpLimits {
            connections: 4,
            head_deadline: Duration::from_millis(500),
        };
        tokio::spawn(serve_with(
            listener,
            Arc::clone(&metrics),
            Arc::new(Healthy),
            stopped,
            limits,
            None,
        ));
        let mut holders = Vec::new();
        for _ in 0..4 {
            let mut stream = TcpStream::connect(address)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let _ = stream.write_all(b"G").await;
            holders.push(stream);
        }
        // The fifth is closed at once (before any deadline could have passed).
        let mut fifth = TcpStream::connect(address)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), fifth.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
        assert!(metrics
            .render()
            .contains("hotline_http_connections_refused_total 1"));
        // One holder drips a byte every 50 ms: cut off at the deadline all the same.
        let mut dripper = holders.remove(0);
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if dripper.write_all(b"E").await.is_err() {
                    return;
                }
                tokio::select! {
                    read = dripper.read(&mut byte) => {
                        if matches!(read, Ok(0) | Err(_)) {
                            return;
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the dripper was cut off");
        drop(holders);
        // The slots are free again.
        let mut answered = false;
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < until {
            if request(address, b"GET /healthz HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 200 OK")
            {
                answered = true;
                break;
            }
        }
        assert!(answered);
    }
}
