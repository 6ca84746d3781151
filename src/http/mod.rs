//! The operations endpoint on `api.http`: `GET /healthz` and `GET /metrics`. `/healthz` is 200
//! `ok` when the gateway can take calls (503 and the problems otherwise), followed by a
//! `peer down: NAME` line per peer its probes found down (not a problem of the gateway's).
//! With `[recording]`, `GET /recordings/<call id>` too ([`recordings`]); the live status page
//! at `GET /` and its feed ([`status`]).
//!
//! axum's routes on hyper's HTTP/1.1 connections, one request per connection (no keep-alive).
//! It is reachable by whoever reaches the port, so the accept loop bounds it: at most
//! [`HttpLimits::connections`] connections at once (more are closed at once, counted in
//! `hotline_http_connections_refused_total`), a request head of at most [`MAX_HEAD`] bytes
//! (431 beyond) that must be whole within [`HttpLimits::head_deadline`] however it is
//! dripped, no request body taken, and a client that stops reading what it asked for cut off
//! after [`HttpLimits::write_within`].

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::health::HealthCheck;
use crate::metrics::{Counter, Metrics};

mod recordings;
pub mod status;
pub use recordings::RecordingAccess;

/// The longest request head taken (hyper's smallest read buffer).
pub const MAX_HEAD: usize = 8192;
/// The whole request head must arrive within this long of the connection opening.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// A response (a recording's download, the status feed) whose client takes no bytes for this
/// long is cut off.
pub const WRITE_WITHIN: Duration = Duration::from_secs(30);

/// How much of the process one HTTP client can hold.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub connections: usize,
    pub head_deadline: Duration,
    pub write_within: Duration,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            connections: crate::limits::MAX_HTTP_CONNECTIONS,
            head_deadline: HEAD_DEADLINE,
            write_within: WRITE_WITHIN,
        }
    }
}

/// What the endpoint serves.
#[derive(Clone)]
pub struct HttpServices {
    pub metrics: Arc<Metrics>,
    /// Whether the gateway takes calls.
    pub health: Arc<dyn HealthCheck>,
    /// `[recording]`'s files, when calls are recorded.
    pub recordings: Option<Arc<RecordingAccess>>,
    /// The status page and its feed.
    pub status: Option<Arc<status::StatusPage>>,
}

impl HttpServices {
    pub fn new(metrics: Arc<Metrics>, health: Arc<dyn HealthCheck>) -> HttpServices {
        HttpServices {
            metrics,
            health,
            recordings: None,
            status: None,
        }
    }
}

/// The address a request came from (the connection's, put on each request).
#[derive(Debug, Clone, Copy)]
pub struct Source(pub IpAddr);

/// Serves until `shutdown` turns true.
pub async fn serve(listener: TcpListener, services: HttpServices, shutdown: watch::Receiver<bool>) {
    serve_with(listener, services, shutdown, HttpLimits::default()).await;
}

/// As [`serve`], within `limits`.
pub async fn serve_with(
    listener: TcpListener,
    services: HttpServices,
    mut shutdown: watch::Receiver<bool>,
    limits: HttpLimits,
) {
    let metrics = Arc::clone(&services.metrics);
    let routes = routes(services);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.connections));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    metrics.increment(Counter::HttpConnectionsRefused);
                    drop(stream);
                    continue;
                };
                let routes = routes.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    connection(stream, peer, routes, limits, shutdown).await;
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

fn routes(services: HttpServices) -> axum::Router {
    let mut routes = axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics));
    if let Some(access) = services.recordings.clone() {
        routes = routes.merge(recordings::routes(access));
    }
    if let Some(page) = services.status.clone() {
        routes = routes.merge(status::routes(page));
    }
    routes
        .fallback(|| async { plain(StatusCode::NOT_FOUND, "not found\n") })
        .with_state(services)
}

/// One connection: one request, its answer, then closed; the head within the deadline, the
/// answer taken by the client at least every `write_within`; ended at shutdown.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    routes: axum::Router,
    limits: HttpLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let stalled = Arc::new(AtomicU64::new(0));
    let started = tokio::time::Instant::now();
    let io = TokioIo::new(Watched {
        stream,
        started,
        stalled: Arc::clone(&stalled),
    });
    let routes = routes.layer(axum::Extension(Source(peer.ip())));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head_deadline)
        .max_buf_size(MAX_HEAD)
        // `Content-Type:` as the hand-written responder wrote it (scripts grep for it).
        .title_case_headers(true)
        .keep_alive(false);
    let served =
        builder.serve_connection(io, hyper_util::service::TowerToHyperService::new(routes));
    let watchdog = async {
        let tick =
            (limits.write_within / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        loop {
            tokio::time::sleep(tick).await;
            let since = stalled.load(Ordering::Relaxed);
            let now = millis(started.elapsed());
            if since != 0 && now.saturating_sub(since) >= millis(limits.write_within) {
                return;
            }
        }
    };
    tokio::select! {
        _ = served => {}
        () = watchdog => tracing::debug!(%peer, "HTTP client stopped reading: cut off"),
        _ = shutdown.changed() => {}
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The connection's socket, noting since when a write has been waiting for the client to take
/// bytes (0: none waiting), for the watchdog.
struct Watched {
    stream: TcpStream,
    started: tokio::time::Instant,
    stalled: Arc<AtomicU64>,
}

impl Watched {
    /// A write waits for the client (since now, unless it already did), or went through.
    fn note(&self, waiting: bool) {
        if !waiting {
            self.stalled.store(0, Ordering::Relaxed);
        } else if self.stalled.load(Ordering::Relaxed) == 0 {
            let since = millis(self.started.elapsed()).max(1);
            self.stalled.store(since, Ordering::Relaxed);
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.note(written.is_pending());
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.note(written.is_pending());
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A plain-text answer.
pub(crate) fn plain(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

/// 200 `ok` or 503 and the problems, then the peers found down; 503 too when the check itself
/// does not finish within twice its parts' allowance.
async fn healthz(State(services): State<HttpServices>) -> Response {
    let check = services.health.problems();
    let Ok(problems) = tokio::time::timeout(crate::health::ANSWER_WITHIN * 2, check).await else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "health check not answering\n",
        );
    };
    let (status, mut body) = if problems.is_empty() {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, problems.join("\n") + "\n")
    };
    for peer in services.health.peers_down() {
        body.push_str(&format!("peer down: {peer}\n"));
    }
    plain(status, body)
}

async fn metrics(State(services): State<HttpServices>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        services.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests;
