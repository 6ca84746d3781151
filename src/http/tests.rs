use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn request(address: SocketAddr, raw: &[u8]) -> String {
    let mut stream = match TcpStream::connect(address).await {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    let _ = stream.write_all(raw).await;
    let mut text = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut text)).await;
    text
}

struct Healthy;

impl HealthCheck for Healthy {
    fn problems(&self) -> Pin<Box<dyn std::future::Future<Output = Vec<String>> + Send + '_>> {
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
    tokio::spawn(serve(
        listener,
        HttpServices::new(metrics, Arc::new(Healthy)),
        stopped,
    ));
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
        write_within: WRITE_WITHIN,
    };
    tokio::spawn(serve_with(
        listener,
        HttpServices::new(Arc::clone(&metrics), Arc::new(Healthy)),
        stopped,
        limits,
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

/// Serves the next connection on `listener` in a task of its own.
async fn accept_one(
    listener: &TcpListener,
    routes: axum::Router,
    limits: HttpLimits,
    stopped: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let (stream, peer) = listener.accept().await.unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(connection(stream, peer, routes, limits, stopped))
}

/// A client that asks for an answer and never reads it is cut off once its socket's buffers
/// are full and `write_within` passes without it taking a byte (the answer here is endless);
/// one that goes on reading is not, however long the answer.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off() {
    let endless = || async {
        let chunks = std::iter::repeat_with(|| {
            Ok::<_, std::convert::Infallible>(bytes::Bytes::from(vec![0u8; 64 * 1024]))
        });
        axum::body::Body::from_stream(tokio_stream::iter(chunks))
    };
    let routes = axum::Router::new().route("/endless", get(endless));
    let limits = HttpLimits {
        connections: 4,
        head_deadline: HEAD_DEADLINE,
        write_within: Duration::from_secs(1),
    };
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let (_stop, stopped) = watch::channel(false);
    let serve_one = |routes, stopped, limits| accept_one(&listener, routes, limits, stopped);
    // The reader gets more time: a loaded machine may hold its task back a while.
    let patient = HttpLimits {
        write_within: Duration::from_secs(5),
        ..limits
    };
    // The reader: takes 8 MiB, well past the deadline's worth of buffers, and is not cut off.
    let mut reader = TcpStream::connect(address)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let served = serve_one(routes.clone(), stopped.clone(), patient).await;
    let _ = reader
        .write_all(b"GET /endless HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    let mut taken = 0usize;
    let mut chunk = vec![0u8; 64 * 1024];
    while taken < 8 << 20 {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => panic!("a reading client was cut off after {taken} bytes"),
            Ok(n) => taken += n,
        }
    }
    drop(reader);
    let _ = served.await;
    // The stopper: asks, reads nothing; the server's side ends by itself.
    let mut stopper = TcpStream::connect(address)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let served = serve_one(routes, stopped, limits).await;
    let _ = stopper
        .write_all(b"GET /endless HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    let ended = tokio::time::timeout(Duration::from_secs(20), served).await;
    assert!(
        ended.is_ok(),
        "the connection of a client that stopped reading lived on"
    );
    drop(stopper);
}
