//! Test peers on real loopback sockets: a gateway started in-process on ephemeral ports, and
//! small SIP user agents and RTP endpoints that speak to it over UDP or TCP.
//!
//! Every wait is for an event (a message arriving) bounded by a timeout, never a sleep.

#![allow(dead_code)]

pub(crate) mod browser;
pub(crate) mod kamailio;
pub(crate) mod pki;
pub(crate) mod platform;
pub(crate) mod postgres;
pub(crate) mod process;
pub(crate) mod recording;
pub(crate) mod sipp;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hotline_gateway::config::Config;
use hotline_gateway::sip::message::{self, Message, Method, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

/// How long any single expected event may take before the test fails.
pub(crate) const WAIT: Duration = Duration::from_secs(5);

/// Media port ranges for concurrently running tests (each test process takes its own block).
static NEXT_MEDIA_BLOCK: AtomicU16 = AtomicU16::new(0);

pub(crate) fn media_block() -> [u16; 2] {
    // Spread by process id as well, so parallel test binaries rarely collide; a collision is
    // harmless anyway (busy ports are skipped).
    let block = NEXT_MEDIA_BLOCK.fetch_add(1, Ordering::Relaxed);
    let base = 21000 + ((std::process::id() as u16 % 40) * 200 + block * 40) % 8000;
    [base, base + 39]
}

/// A gateway running in this process.
pub(crate) struct Gateway {
    pub sip: SocketAddr,
    /// `sip.tls_listen`'s address, when configured.
    pub sip_tls: Option<SocketAddr>,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub db: PathBuf,
    pub shutdown: CancellationToken,
    config: Config,
    running: Option<hotline_gateway::Running>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts a gateway whose peers are the given UAs. `extra` is appended to the config
    /// (more `[[route]]`s, overrides are given through `sip_extra`).
    pub(crate) async fn start(
        peers: &[(&str, SocketAddr, &str)],
        routes: &[(&str, &[&str])],
        sip_extra: &str,
        media_extra: &str,
    ) -> Gateway {
        Self::start_with_tables(peers, routes, sip_extra, media_extra, "").await
    }

    /// As [`Gateway::start`], with more TOML tables (e.g. `[[hotkey]]`) at the end.
    pub(crate) async fn start_with_tables(
        peers: &[(&str, SocketAddr, &str)],
        routes: &[(&str, &[&str])],
        sip_extra: &str,
        media_extra: &str,
        tables: &str,
    ) -> Gateway {
        Self::start_configured(peers, routes, sip_extra, media_extra, tables, |_| {}).await
    }

    /// As [`Gateway::start_with_tables`], with the parsed configuration edited by `edit`.
    pub(crate) async fn start_configured(
        peers: &[(&str, SocketAddr, &str)],
        routes: &[(&str, &[&str])],
        sip_extra: &str,
        media_extra: &str,
        tables: &str,
        edit: impl FnOnce(&mut Config),
    ) -> Gateway {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("tempdir: {e}"),
        };
        let db = dir.path().join("gateway.db");
        let ip = peers
            .first()
            .map(|p| p.1.ip())
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
        let listen = SocketAddr::new(ip, 0);
        let [low, high] = media_block();
        let mut text = format!(
            "[sip]\nlisten = \"{listen}\"\npeer_response_timeout_ms = 700\n{sip_extra}\n\
             [media]\naddress = \"{}\"\nports = [{low}, {high}]\n{media_extra}\n\
             [store]\npath = \"{}\"\n\
             [api]\ngrpc = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n",
            ip,
            db.display()
        );
        for (name, address, extra) in peers {
            text.push_str(&format!(
                "\n[[peer]]\nname = \"{name}\"\naddress = \"{address}\"\n{extra}\n"
            ));
        }
        for (number, route_peers) in routes {
            let list: Vec<String> = route_peers.iter().map(|p| format!("\"{p}\"")).collect();
            text.push_str(&format!(
                "\n[[route]]\nnumber = \"{number}\"\npeers = [{}]\n",
                list.join(", ")
            ));
        }
        text.push_str(tables);
        let mut config = match Config::parse(Path::new("test.toml"), &text) {
            Ok(c) => c,
            Err(e) => panic!("{e}\n{text}"),
        };
        edit(&mut config);
        let shutdown = CancellationToken::new();
        let running = match hotline_gateway::start(config.clone(), shutdown.clone()).await {
            Ok(r) => r,
            Err(e) => panic!("gateway did not start: {e}"),
        };
        Gateway {
            sip: running.sip,
            sip_tls: running.sip_tls,
            http: running.http,
            grpc: running.grpc,
            db,
            shutdown,
            config,
            running: Some(running),
            _dir: dir,
        }
    }

    /// The configuration it runs on (with its ephemeral ports as 0).
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// Stops the gateway and starts it again on the same configuration and store (its
    /// ephemeral ports change: see `sip`, `http`, `grpc`).
    pub(crate) async fn restart(&mut self) {
        self.stop().await;
        self.shutdown = CancellationToken::new();
        let running = match hotline_gateway::start(self.config.clone(), self.shutdown.clone()).await
        {
            Ok(r) => r,
            Err(e) => panic!("gateway did not start again: {e}"),
        };
        self.sip = running.sip;
        self.sip_tls = running.sip_tls;
        self.http = running.http;
        self.grpc = running.grpc;
        self.running = Some(running);
    }

    /// Stops the gateway and waits until it has ended its calls and flushed the store.
    pub(crate) async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            if tokio::time::timeout(Duration::from_secs(15), running.wait())
                .await
                .is_err()
            {
                panic!("gateway did not stop");
            }
        }
    }

    pub(crate) fn calls(&self) -> Vec<hotline_gateway::store::CallRecord> {
        match hotline_gateway::store::list_calls(&self.db, 1000) {
            Ok(c) => c,
            Err(e) => panic!("store: {e}"),
        }
    }

    /// The transfer attempts recorded for a call (its gateway id), oldest first.
    pub(crate) fn linkages(&self, call_id: &str) -> Vec<hotline_gateway::store::LinkageRecord> {
        match hotline_gateway::store::list_linkages(&self.db, call_id) {
            Ok(l) => l,
            Err(e) => panic!("store: {e}"),
        }
    }

    /// The conference parties recorded for a call (its gateway id), by party.
    pub(crate) fn conference_parties(
        &self,
        call_id: &str,
    ) -> Vec<hotline_gateway::store::ConferencePartyRecord> {
        match hotline_gateway::store::list_conference_parties(&self.db, call_id) {
            Ok(p) => p,
            Err(e) => panic!("store: {e}"),
        }
    }

    /// Waits (bounded) until the store holds an ended record for `a_call_id`.
    pub(crate) async fn ended_record(&self, a_call_id: &str) -> hotline_gateway::store::CallRecord {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(r) = self
                .calls()
                .into_iter()
                .find(|r| r.a_call_id == a_call_id && r.ended_at.is_some())
            {
                return r;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("no ended record for {a_call_id}: {:?}", self.calls());
            }
            // The record is committed before the call's last messages go out, so this loop
            // normally finds it at once; the retry only covers a store on a slow disk.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The value of an unlabelled metric on `/metrics`.
    pub(crate) async fn metric(&self, name: &str) -> Option<f64> {
        let (_, metrics) = self.http_get("/metrics").await;
        metrics.lines().find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse().ok()).flatten()
        })
    }

    /// Waits (bounded) until `name` on `/metrics` reads `value`.
    pub(crate) async fn metric_reaches(&self, name: &str, value: f64) {
        self.metric_until(name, value, |now| now == value).await;
    }

    /// Waits (bounded) until `name` on `/metrics` reads `value` or more.
    pub(crate) async fn metric_reaches_at_least(&self, name: &str, value: f64) {
        self.metric_until(name, value, |now| now >= value).await;
    }

    async fn metric_until(&self, name: &str, value: f64, enough: impl Fn(f64) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.metric(name).await;
            if now.is_some_and(&enough) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} is {now:?}, not {value}"
            );
            // Metrics have no push: look again shortly.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// GET a path on the HTTP endpoint; returns (status, body).
    pub(crate) async fn http_get(&self, path: &str) -> (u16, String) {
        let mut stream = match TcpStream::connect(self.http).await {
            Ok(s) => s,
            Err(e) => panic!("http connect: {e}"),
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.http
        );
        let _ = stream.write_all(request.as_bytes()).await;
        let mut text = String::new();
        let _ = tokio::time::timeout(WAIT, stream.read_to_string(&mut text)).await;
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }
}

impl Gateway {
    /// Opens the status page's feed (`/status/events`, from loopback: allowed by default) and
    /// keeps reading it in the background: every board it sends, in order.
    pub(crate) async fn status_feed(&self) -> StatusFeed {
        let mut stream = match TcpStream::connect(self.http).await {
            Ok(s) => s,
            Err(e) => panic!("http connect: {e}"),
        };
        let request = format!("GET /status/events HTTP/1.1\r\nHost: {}\r\n\r\n", self.http);
        let _ = stream.write_all(request.as_bytes()).await;
        let mut received = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        let head_end = loop {
            if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            match tokio::time::timeout(WAIT, stream.read(&mut chunk)).await {
                Ok(Ok(read @ 1..)) => received.extend_from_slice(&chunk[..read]),
                _ => panic!("no answer from the status feed"),
            }
        };
        let head = String::from_utf8_lossy(&received[..head_end]).to_string();
        assert!(head.starts_with("HTTP/1.1 200"), "the status feed: {head}");
        let (boards, arrived) = tokio::sync::mpsc::unbounded_channel();
        let mut body = received.split_off(head_end);
        tokio::spawn(async move {
            // The body comes chunked (RFC 9112 §7.1): size line, data, CRLF; the data are SSE
            // events, each ending in a blank line.
            let mut events = Vec::new();
            loop {
                while let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") {
                    let size = std::str::from_utf8(&body[..line_end])
                        .ok()
                        .and_then(|text| usize::from_str_radix(text.trim(), 16).ok());
                    let Some(size) = size else { return };
                    if body.len() < line_end + 2 + size + 2 {
                        break;
                    }
                    events.extend_from_slice(&body[line_end + 2..line_end + 2 + size]);
                    body.drain(..line_end + 2 + size + 2);
                    while let Some(end) = events.windows(2).position(|w| w == b"\n\n") {
                        let event: Vec<u8> = events.drain(..end + 2).collect();
                        let text = String::from_utf8_lossy(&event).to_string();
                        if let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) {
                            if let Ok(board) = serde_json::from_str(data) {
                                if boards.send(board).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
                match stream.read(&mut chunk).await {
                    Ok(read @ 1..) => body.extend_from_slice(&chunk[..read]),
                    _ => return,
                }
            }
        });
        StatusFeed { arrived }
    }

    /// The first board of a feed opened now for which `wanted` holds (see [`StatusFeed`]).
    pub(crate) async fn board_until(
        &self,
        what: &str,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        self.status_feed().await.until(what, wanted).await
    }
}

/// The boards of the status page's feed, as they came.
pub(crate) struct StatusFeed {
    arrived: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
}

impl StatusFeed {
    /// The next board (of those come, or to come) for which `wanted` holds; fails after
    /// [`WAIT`] with the last board seen.
    pub(crate) async fn until(
        &mut self,
        what: &str,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.arrived.recv()).await {
                Ok(Some(board)) if wanted(&board) => return board,
                Ok(Some(board)) => last = board,
                _ => panic!("the status feed never showed {what}; its last board: {last}"),
            }
        }
    }
}

/// Holds tokio's paused clock still: it moves only by `tokio::time::advance`, never by itself
/// while the runtime waits on another thread (the store's writer, the relay). A running
/// `spawn_blocking` task holds off auto-advance on a current-thread runtime; this one ends when
/// the guard is dropped, or after [`HELD_AT_MOST`] of real time, so a message that never comes
/// fails the test's bounded wait instead of hanging it.
pub(crate) struct HeldClock {
    _release: std::sync::mpsc::Sender<()>,
    start: tokio::time::Instant,
}

/// The longest a [`HeldClock`] holds, in real time.
pub(crate) const HELD_AT_MOST: Duration = Duration::from_secs(20);

impl HeldClock {
    /// Holds the clock (which must be paused, on a current-thread runtime); its time now is the
    /// start [`HeldClock::advance_to`] counts from.
    pub(crate) fn hold() -> HeldClock {
        let (release, released) = std::sync::mpsc::channel::<()>();
        drop(tokio::task::spawn_blocking(move || {
            let _ = released.recv_timeout(HELD_AT_MOST);
        }));
        HeldClock {
            _release: release,
            start: tokio::time::Instant::now(),
        }
    }

    /// How far the clock has moved since the start: exactly what was advanced, while held.
    pub(crate) fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Moves the clock on to `since_start` after the start, firing every timer due by then.
    pub(crate) async fn advance_to(&self, since_start: Duration) {
        let now = tokio::time::Instant::now();
        let target = self.start + since_start;
        assert!(target >= now, "the clock is already past {since_start:?}");
        tokio::time::advance(target - now).await;
    }
}

/// A SIP user agent on a UDP socket (or, with [`Ua::tcp`], one TCP connection).
pub(crate) struct Ua {
    pub socket: UdpSocket,
    pub address: SocketAddr,
    pub gateway: SocketAddr,
    tcp: Option<TcpStream>,
    tcp_buffer: Vec<u8>,
    counter: u32,
    pub tag: String,
    name: String,
}

impl Ua {
    pub(crate) async fn bind(name: &str, gateway_ip: std::net::IpAddr) -> Ua {
        let socket = match UdpSocket::bind(SocketAddr::new(gateway_ip, 0)).await {
            Ok(s) => s,
            Err(e) => panic!("bind: {e}"),
        };
        Ua::with_socket(name, socket)
    }

    /// A UA on a socket bound elsewhere (in another network namespace).
    pub(crate) fn on_socket(name: &str, socket: std::net::UdpSocket) -> Ua {
        let socket = socket
            .set_nonblocking(true)
            .and_then(|()| UdpSocket::from_std(socket));
        match socket {
            Ok(s) => Ua::with_socket(name, s),
            Err(e) => panic!("socket: {e}"),
        }
    }

    fn with_socket(name: &str, socket: UdpSocket) -> Ua {
        let address = socket.local_addr().unwrap_or_else(|e| panic!("{e}"));
        Ua {
            socket,
            address,
            gateway: address,
            tcp: None,
            tcp_buffer: Vec::new(),
            counter: 0,
            tag: format!("{name}-tag"),
            name: name.to_string(),
        }
    }

    pub(crate) fn set_gateway(&mut self, gateway: SocketAddr) {
        self.gateway = gateway;
    }

    /// Switches to TCP: connects to the gateway; `address` becomes the connection's local end.
    pub(crate) async fn connect_tcp(&mut self) {
        let stream = match TcpStream::connect(self.gateway).await {
            Ok(s) => s,
            Err(e) => panic!("tcp connect: {e}"),
        };
        self.address = stream.local_addr().unwrap_or_else(|e| panic!("{e}"));
        self.tcp = Some(stream);
    }

    pub(crate) fn transport(&self) -> &'static str {
        if self.tcp.is_some() {
            "TCP"
        } else {
            "UDP"
        }
    }

    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) {
        match &mut self.tcp {
            Some(stream) => {
                if let Err(e) = stream.write_all(bytes).await {
                    panic!("tcp write: {e}");
                }
            }
            None => {
                if let Err(e) = self.socket.send_to(bytes, self.gateway).await {
                    panic!("send: {e}");
                }
            }
        }
    }

    pub(crate) async fn send(&mut self, text: &str) {
        let bytes = text.replace("\r\n", "\n").replace('\n', "\r\n");
        self.send_raw(bytes.as_bytes()).await;
    }

    pub(crate) async fn send_response(&mut self, response: &Response) {
        self.send_raw(&response.to_bytes()).await;
    }

    pub(crate) async fn send_request(&mut self, request: &Request) {
        self.send_raw(&request.to_bytes()).await;
    }

    /// The next SIP message, or None after `within`.
    pub(crate) async fn recv_within(&mut self, within: Duration) -> Option<Message> {
        match &mut self.tcp {
            Some(stream) => loop {
                match message::frame(&self.tcp_buffer, 65535) {
                    Ok(message::Frame::Message { length }) => {
                        let bytes: Vec<u8> = self.tcp_buffer.drain(..length).collect();
                        return message::parse(&bytes).ok();
                    }
                    Ok(message::Frame::KeepAlive { length, .. }) => {
                        self.tcp_buffer.drain(..length);
                        continue;
                    }
                    _ => {}
                }
                let mut chunk = [0u8; 8192];
                match tokio::time::timeout(within, stream.read(&mut chunk)).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                    Ok(Ok(n)) => self.tcp_buffer.extend_from_slice(&chunk[..n]),
                }
            },
            None => {
                let mut buffer = vec![0u8; 65535];
                loop {
                    match tokio::time::timeout(within, self.socket.recv_from(&mut buffer)).await {
                        Ok(Ok((n, _))) => {
                            if let Ok(m) = message::parse(&buffer[..n]) {
                                return Some(m);
                            }
                        }
                        _ => return None,
                    }
                }
            }
        }
    }

    /// The next UDP datagram as bytes (for answers our own parser would refuse, such as a 400
    /// that echoes a request's missing headers).
    pub(crate) async fn recv_raw_within(&mut self, within: Duration) -> Option<Vec<u8>> {
        let mut buffer = vec![0u8; 65535];
        match tokio::time::timeout(within, self.socket.recv_from(&mut buffer)).await {
            Ok(Ok((n, _))) => Some(buffer[..n].to_vec()),
            _ => None,
        }
    }

    /// Asserts that nothing arrives within `within`, then proves the wait crossed the window
    /// in which it would have arrived; see [`Ua::expect_none_then_marker`].
    pub(crate) async fn expect_nothing_then_marker(&mut self, within: Duration, what: &str) {
        self.expect_none_then_marker(within, what, |_| true).await;
    }

    /// Asserts that no message `unwanted` picks arrives within `within` (others are skipped),
    /// then sends a marker, an OPTIONS on the same socket or connection, and waits for its 200,
    /// failing on anything unwanted before it. The gateway sends to a flow from one transport
    /// in the order it handles its work, so a message it had already sent (or queued) for this
    /// UA arrives before the marker's answer: the silence is not merely a late packet.
    pub(crate) async fn expect_none_then_marker(
        &mut self,
        within: Duration,
        what: &str,
        unwanted: impl Fn(&Message) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await {
                Some(message) if unwanted(&message) => panic!("{}: {what}: {message:?}", self.name),
                Some(_) if !left.is_zero() => continue,
                _ => break,
            }
        }
        self.marker_with(what, unwanted).await;
    }

    /// A marker: sends an OPTIONS on this UA's socket or connection and waits for its 200,
    /// skipping other messages. Whatever the gateway had sent (or queued) for this flow, or
    /// over the same UDP socket to anyone, before it handled the OPTIONS has arrived by then.
    pub(crate) async fn marker(&mut self) {
        self.marker_with("", |_| false).await;
    }

    /// As [`Ua::marker`], failing on a message `unwanted` picks that arrives before the 200.
    async fn marker_with(&mut self, what: &str, unwanted: impl Fn(&Message) -> bool) {
        let n = self.next();
        let call_id = format!("{}-marker-{n}@test", self.name);
        let text = format!(
            "OPTIONS sip:{gw} SIP/2.0\r\n\
Via: SIP/2.0/{tr} {me};branch=z9hG4bK{name}m{n};rport\r\n\
From: <sip:{name}@{me}>;tag={tag}\r\nTo: <sip:{gw}>\r\nCall-ID: {call_id}\r\n\
CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            gw = host_port(self.gateway),
            me = host_port(self.address),
            tr = self.transport(),
            name = self.name,
            tag = self.tag,
        );
        self.send(&text).await;
        loop {
            match self.recv().await {
                Message::Response(r) if r.headers.get("Call-ID") == Some(call_id.as_str()) => {
                    assert_eq!(r.status, 200, "{}: the marker OPTIONS: {r:?}", self.name);
                    return;
                }
                message if unwanted(&message) => {
                    panic!("{}: {what} (before the marker): {message:?}", self.name)
                }
                _ => continue,
            }
        }
    }

    /// A UDP datagram already in this UA's socket queue, read without waiting (after a
    /// [`Ua::marker`], what a late packet would be).
    pub(crate) fn queued_raw(&self) -> Option<Vec<u8>> {
        queued_datagram(&self.socket)
    }

    pub(crate) async fn recv(&mut self) -> Message {
        match self.recv_within(WAIT).await {
            Some(m) => m,
            None => panic!("{}: no SIP message within {WAIT:?}", self.name),
        }
    }

    /// Waits for a response with `status` to a request with `method`, skipping others
    /// (retransmissions, provisional responses not asked for).
    pub(crate) async fn expect_response(&mut self, method: &str, status: u16) -> Response {
        loop {
            match self.recv().await {
                Message::Response(r)
                    if r.status == status
                        && r.cseq().is_some_and(|c| c.method.as_str() == method) =>
                {
                    return r
                }
                Message::Response(r)
                    if r.status >= 200
                        && r.status != status
                        && r.cseq().is_some_and(|c| c.method.as_str() == method) =>
                {
                    panic!(
                        "{}: expected {status} to {method}, got {} {}",
                        self.name, r.status, r.reason
                    )
                }
                _ => continue,
            }
        }
    }

    pub(crate) async fn expect_request(&mut self, method: &str) -> Request {
        loop {
            match self.recv().await {
                Message::Request(r) if r.method.as_str() == method => return r,
                Message::Request(r)
                    if r.method.as_str() == "INVITE" || r.method.as_str() == "BYE" =>
                {
                    // A retransmission of something already handled: ignore.
                    if method != r.method.as_str() {
                        continue;
                    }
                }
                _ => continue,
            }
        }
    }

    fn next(&mut self) -> u32 {
        self.counter += 1;
        self.counter
    }

    /// An out-of-dialog INVITE to `number` at the gateway, from `caller`.
    pub(crate) fn invite(
        &mut self,
        number: &str,
        caller: &str,
        sdp: &str,
        extra_headers: &str,
    ) -> Request {
        let n = self.next();
        let call_id = format!("{}-{n}@test", self.name);
        let text = format!(
            "INVITE sip:{number}@{gw} SIP/2.0\r\n\
Via: SIP/2.0/{tr} {me};branch=z9hG4bK{name}{n};rport\r\n\
From: \"Citizen\" <sip:{caller}@{me}>;tag={tag}\r\n\
To: <sip:{number}@{gw}>\r\n\
Call-ID: {call_id}\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:{caller}@{me}>\r\n\
Max-Forwards: 70\r\n{extra_headers}\
Content-Type: application/sdp\r\n\
Content-Length: {len}\r\n\r\n{sdp}",
            gw = host_port(self.gateway),
            me = host_port(self.address),
            tr = self.transport(),
            name = self.name,
            tag = self.tag,
            len = sdp.len()
        );
        parse_request(&text)
    }

    /// An in-dialog request following `invite` and the 2xx `answer` (UAC side).
    pub(crate) fn in_dialog(
        &mut self,
        invite: &Request,
        answer: &Response,
        method: &str,
        cseq: u32,
        sdp: &str,
    ) -> Request {
        let n = self.next();
        let target = answer
            .contact()
            .map(|c| c.uri.to_string())
            .unwrap_or_else(|| invite.uri.to_string());
        let text = format!(
            "{method} {target} SIP/2.0\r\n\
Via: SIP/2.0/{tr} {me};branch=z9hG4bK{name}d{n};rport\r\n\
From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n\
Contact: <sip:citizen@{me}>\r\nMax-Forwards: 70\r\n{ct}Content-Length: {len}\r\n\r\n{sdp}",
            tr = self.transport(),
            me = host_port(self.address),
            name = self.name,
            from = invite.headers.get("From").unwrap_or_default(),
            to = answer.headers.get("To").unwrap_or_default(),
            call_id = invite.call_id(),
            ct = if sdp.is_empty() {
                ""
            } else {
                "Content-Type: application/sdp\r\n"
            },
            len = sdp.len()
        );
        parse_request(&text)
    }

    /// The ACK for a 2xx.
    pub(crate) fn ack(&mut self, invite: &Request, answer: &Response, sdp: &str) -> Request {
        let mut ack = self.in_dialog(
            invite,
            answer,
            "ACK",
            invite.cseq().map_or(1, |c| c.sequence),
            sdp,
        );
        ack.headers.remove("Contact");
        ack
    }

    /// A CANCEL for `invite` (same branch, §9.1).
    pub(crate) fn cancel(&self, invite: &Request) -> Request {
        message::cancel_for(invite)
    }

    /// A response to an incoming request (UAS side), with our tag and Contact.
    pub(crate) fn answer(&self, request: &Request, status: u16, sdp: Option<&str>) -> Response {
        let mut response = Response::for_request(request, status, Some(&self.tag));
        response.reason = message::reason_phrase(status).to_string();
        if (101..300).contains(&status) {
            response.headers.push(
                "Contact",
                format!("<sip:{}@{}>", self.name, host_port(self.address)),
            );
        }
        if let Some(sdp) = sdp {
            response.headers.push("Content-Type", "application/sdp");
            response.body = Bytes::from(sdp.to_string());
        }
        response
    }

    /// A request inside the dialog this UA answered as UAS (e.g. the callee's BYE).
    pub(crate) fn uas_request(&mut self, invite: &Request, method: &str, cseq: u32) -> Request {
        let n = self.next();
        let target = invite
            .contact()
            .map(|c| c.uri.to_string())
            .unwrap_or_default();
        let to_uri = invite.headers.get("To").unwrap_or_default();
        let text = format!(
            "{method} {target} SIP/2.0\r\n\
Via: SIP/2.0/{tr} {me};branch=z9hG4bK{name}u{n};rport\r\n\
From: {to_uri};tag={tag}\r\nTo: {from}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n\
Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            tr = self.transport(),
            me = host_port(self.address),
            name = self.name,
            tag = self.tag,
            from = invite.headers.get("From").unwrap_or_default(),
            call_id = invite.call_id(),
        );
        parse_request(&text)
    }
}

/// A datagram already in `socket`'s queue, read without waiting: the kernel has it the moment
/// the sender's send on loopback returned, whether or not the runtime has seen it readable.
pub(crate) fn queued_datagram(socket: &UdpSocket) -> Option<Vec<u8>> {
    let mut buffer = vec![0u8; 65535];
    match rustix::net::recv(socket, &mut buffer[..], rustix::net::RecvFlags::DONTWAIT) {
        Ok((n, _)) => Some(buffer[..n].to_vec()),
        Err(rustix::io::Errno::AGAIN) => None,
        Err(e) => panic!("recv: {e}"),
    }
}

/// The top Via's sent-by as an IP address and port (5060 when none is given).
pub(crate) fn via_sent_by(request: &Request) -> Option<SocketAddr> {
    let via = request.top_via()?;
    format!("{}:{}", via.host, via.port.unwrap_or(5060))
        .parse()
        .ok()
}

pub(crate) fn host_port(address: SocketAddr) -> String {
    match address {
        SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
        SocketAddr::V4(v4) => v4.to_string(),
    }
}

pub(crate) fn parse_request(text: &str) -> Request {
    match message::parse(text.as_bytes()) {
        Ok(Message::Request(r)) => r,
        other => panic!("test built a bad request: {other:?}\n{text}"),
    }
}

/// An audio SDP offering `codecs` (payload types) at `address`.
pub(crate) fn sdp(address: SocketAddr, payload_types: &[u8], direction: &str) -> String {
    let ip_kind = if address.is_ipv6() { "IP6" } else { "IP4" };
    let mut text = format!(
        "v=0\r\no=test 1 1 IN {ip_kind} {ip}\r\ns=-\r\nc=IN {ip_kind} {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP",
        ip = address.ip(),
        port = address.port()
    );
    for pt in payload_types {
        text.push_str(&format!(" {pt}"));
    }
    text.push_str("\r\n");
    for pt in payload_types {
        match pt {
            0 => text.push_str("a=rtpmap:0 PCMU/8000\r\n"),
            8 => text.push_str("a=rtpmap:8 PCMA/8000\r\n"),
            18 => text.push_str("a=rtpmap:18 G729/8000\r\n"),
            101 => text.push_str("a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n"),
            _ => {}
        }
    }
    text.push_str(&format!("a=ptime:20\r\na={direction}\r\n"));
    text
}

/// The RTP address in an SDP body.
pub(crate) fn sdp_address(body: &str) -> SocketAddr {
    let ip = body
        .lines()
        .find_map(|l| {
            l.strip_prefix("c=IN IP4 ")
                .or_else(|| l.strip_prefix("c=IN IP6 "))
        })
        .and_then(|ip| ip.trim().parse().ok());
    let port = body
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|p| p.parse().ok());
    match (ip, port) {
        (Some(ip), Some(port)) => SocketAddr::new(ip, port),
        _ => panic!("no media address in SDP:\n{body}"),
    }
}

/// An RTP endpoint: sends numbered G.711 packets, receives and parses them.
pub(crate) struct RtpPeer {
    pub socket: UdpSocket,
    pub address: SocketAddr,
}

/// What a received RTP packet said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RtpSeen {
    pub payload_type: u8,
    pub marker: bool,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: Vec<u8>,
}

impl RtpPeer {
    pub(crate) async fn bind(ip: std::net::IpAddr) -> RtpPeer {
        let socket = match UdpSocket::bind(SocketAddr::new(ip, 0)).await {
            Ok(s) => s,
            Err(e) => panic!("bind: {e}"),
        };
        let address = socket.local_addr().unwrap_or_else(|e| panic!("{e}"));
        RtpPeer { socket, address }
    }

    /// An RTP endpoint on a socket bound elsewhere (in another network namespace).
    pub(crate) fn on_socket(socket: std::net::UdpSocket) -> RtpPeer {
        let socket = socket
            .set_nonblocking(true)
            .and_then(|()| UdpSocket::from_std(socket));
        let socket = match socket {
            Ok(s) => s,
            Err(e) => panic!("socket: {e}"),
        };
        let address = socket.local_addr().unwrap_or_else(|e| panic!("{e}"));
        RtpPeer { socket, address }
    }

    pub(crate) async fn send(
        &self,
        to: SocketAddr,
        payload_type: u8,
        sequence: u16,
        timestamp: u32,
        ssrc: u32,
        payload: &[u8],
    ) {
        let mut packet = vec![0x80, payload_type & 0x7f];
        packet.extend_from_slice(&sequence.to_be_bytes());
        packet.extend_from_slice(&timestamp.to_be_bytes());
        packet.extend_from_slice(&ssrc.to_be_bytes());
        packet.extend_from_slice(payload);
        if let Err(e) = self.socket.send_to(&packet, to).await {
            panic!("rtp send: {e}");
        }
    }

    pub(crate) async fn recv_within(&self, within: Duration) -> Option<RtpSeen> {
        let mut buffer = [0u8; 2048];
        match tokio::time::timeout(within, self.socket.recv_from(&mut buffer)).await {
            Ok(Ok((n, _))) if n >= 12 => Some(RtpSeen {
                payload_type: buffer[1] & 0x7f,
                marker: buffer[1] & 0x80 != 0,
                sequence: u16::from_be_bytes([buffer[2], buffer[3]]),
                timestamp: u32::from_be_bytes([buffer[4], buffer[5], buffer[6], buffer[7]]),
                ssrc: u32::from_be_bytes([buffer[8], buffer[9], buffer[10], buffer[11]]),
                payload: buffer[12..n].to_vec(),
            }),
            _ => None,
        }
    }

    /// Asserts that no packet arrives within `within`, nor by the time `marker` is done.
    /// `marker` sends a packet the gateway must relay after the unwanted one would have been
    /// (a relay handles a stream's packets in order) and waits for it where it must go, so a
    /// packet merely late is in this socket's queue by then; the queue is read without waiting.
    pub(crate) async fn expect_nothing_then(
        &self,
        within: Duration,
        what: &str,
        marker: impl std::future::Future<Output = ()>,
    ) {
        if let Some(packet) = self.recv_within(within).await {
            panic!("{what}: {packet:?}");
        }
        marker.await;
        if let Some(packet) = queued_datagram(&self.socket) {
            panic!("{what} (before the marker): {packet:?}");
        }
    }

    pub(crate) async fn recv(&self) -> RtpSeen {
        match self.recv_within(WAIT).await {
            Some(p) => p,
            None => panic!("no RTP within {WAIT:?}"),
        }
    }
}

/// Another program fills the volume: the store's file at `path` grows by 1 MB of ballast (with
/// `store.max_size_mb = 1`, the store is full).
pub(crate) fn fill_store(path: &Path) {
    let filled = rusqlite::Connection::open(path).and_then(|other| {
        other.execute_batch(
            "CREATE TABLE ballast (b BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 128)
             INSERT INTO ballast SELECT zeroblob(8192) FROM n;",
        )
    });
    if let Err(e) = filled {
        panic!("{}: {e}", path.display());
    }
}

/// The ballast of [`fill_store`] goes: the store has space again.
pub(crate) fn free_store(path: &Path) {
    let freed =
        rusqlite::Connection::open(path).and_then(|c| c.execute_batch("DROP TABLE ballast"));
    if let Err(e) = freed {
        panic!("{}: {e}", path.display());
    }
}

/// Places a call from `caller` and answers it at `callee`; returns the dialog pieces.
pub(crate) struct Established {
    pub invite: Request,
    pub ok: Response,
    pub incoming: Request,
    pub caller_rtp: RtpPeer,
    pub callee_rtp: RtpPeer,
    pub gateway_a_media: SocketAddr,
    pub gateway_b_media: SocketAddr,
}

pub(crate) async fn establish(
    caller: &mut Ua,
    callee: &mut Ua,
    caller_codecs: &[u8],
    callee_codecs: &[u8],
) -> Established {
    establish_to(
        "12345",
        "13800138000",
        caller,
        callee,
        caller_codecs,
        callee_codecs,
    )
    .await
}

/// As [`establish`], dialling `number` as `caller_number`.
pub(crate) async fn establish_to(
    number: &str,
    caller_number: &str,
    caller: &mut Ua,
    callee: &mut Ua,
    caller_codecs: &[u8],
    callee_codecs: &[u8],
) -> Established {
    let caller_rtp = RtpPeer::bind(caller.address.ip()).await;
    let callee_rtp = RtpPeer::bind(callee.address.ip()).await;
    establish_with(
        (number, caller_number),
        (caller, caller_rtp, caller_codecs),
        (callee, callee_rtp, callee_codecs),
    )
    .await
}

/// As [`establish_to`] (`number`, `caller_number`), each side's RTP on a given endpoint.
pub(crate) async fn establish_with(
    (number, caller_number): (&str, &str),
    (caller, caller_rtp, caller_codecs): (&mut Ua, RtpPeer, &[u8]),
    (callee, callee_rtp, callee_codecs): (&mut Ua, RtpPeer, &[u8]),
) -> Established {
    let invite = caller.invite(
        number,
        caller_number,
        &sdp(caller_rtp.address, caller_codecs, "sendrecv"),
        "",
    );
    caller.send_request(&invite).await;
    caller.expect_response("INVITE", 100).await;
    let incoming = callee.expect_request("INVITE").await;
    // Responses go where the Via says it was sent from (§18.2.2): the gateway's address on
    // the callee's interface.
    if let Some(sent_by) = via_sent_by(&incoming) {
        callee.set_gateway(sent_by);
    }
    let offer = incoming.sdp().unwrap_or_default().to_string();
    let gateway_b_media = sdp_address(&offer);
    callee
        .send_response(&callee.answer(&incoming, 180, None))
        .await;
    caller.expect_response("INVITE", 180).await;
    let answer = sdp(callee_rtp.address, callee_codecs, "sendrecv");
    callee
        .send_response(&callee.answer(&incoming, 200, Some(&answer)))
        .await;
    let ok = caller.expect_response("INVITE", 200).await;
    let gateway_a_media = sdp_address(ok.sdp().unwrap_or_default());
    let ack = caller.ack(&invite, &ok, "");
    caller.send_request(&ack).await;
    callee.expect_request("ACK").await;
    Established {
        invite,
        ok,
        incoming,
        caller_rtp,
        callee_rtp,
        gateway_a_media,
        gateway_b_media,
    }
}

/// Amplitude of `frequency` Hz in 8 kHz `samples` (Goertzel): a sine of peak A over whole
/// periods gives A.
pub(crate) fn tone_level(samples: &[i16], frequency: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let coefficient = 2.0 * (2.0 * std::f64::consts::PI * frequency / 8000.0).cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for sample in samples {
        let s = f64::from(*sample) + coefficient * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let power = s1 * s1 + s2 * s2 - coefficient * s1 * s2;
    2.0 * power.max(0.0).sqrt() / samples.len() as f64
}

/// Writes `length` samples of a `frequency` Hz sine (8 kHz, 16-bit mono WAV) at `path`: an
/// announcement the test can tell by its tone.
pub(crate) fn tone_wav(path: &Path, frequency: f64, length: u32) {
    let samples: Vec<i16> = (0..length)
        .map(|n| {
            let t = f64::from(n) / 8000.0;
            (8000.0 * (2.0 * std::f64::consts::PI * frequency * t).sin()) as i16
        })
        .collect();
    std::fs::write(path, hotline_gateway::media::prompt::wav_bytes(&samples))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// A DTMF INFO (`application/dtmf-relay`) from the callee of `call` (the agent, UAS of leg B).
pub(crate) fn dtmf_info(agent: &mut Ua, call: &Established, cseq: u32, digit: char) -> Request {
    let mut info = agent.uas_request(&call.incoming, "INFO", cseq);
    info.headers.set("Content-Type", "application/dtmf-relay");
    info.body = Bytes::from(format!("Signal={digit}\r\nDuration=160\r\n"));
    info
}

/// `ua` answers `invite` 200 with SDP for a fresh RTP peer (offering `payload_types`) and takes
/// the ACK; returns the RTP peer.
pub(crate) async fn answer_with_media(
    ua: &mut Ua,
    invite: &Request,
    payload_types: &[u8],
) -> RtpPeer {
    let rtp = RtpPeer::bind(ua.address.ip()).await;
    answer_with_rtp(ua, invite, rtp, payload_types).await
}

/// As [`answer_with_media`], with the given RTP endpoint.
pub(crate) async fn answer_with_rtp(
    ua: &mut Ua,
    invite: &Request,
    rtp: RtpPeer,
    payload_types: &[u8],
) -> RtpPeer {
    let answer = sdp(rtp.address, payload_types, "sendrecv");
    ua.send_response(&ua.answer(invite, 200, Some(&answer)))
        .await;
    ua.expect_request("ACK").await;
    rtp
}

/// The agent of `call` REFERs it to 110 (202), `police` answers the gateway's INVITE with
/// media, and the agent answers its NOTIFYs until the gateway releases it with BYE; returns
/// 110's RTP peer.
pub(crate) async fn refer_to_110_answered(
    agent: &mut Ua,
    call: &Established,
    police: &mut Ua,
) -> RtpPeer {
    let mut refer = agent.uas_request(&call.incoming, "REFER", 2);
    refer.headers.push("Refer-To", "<sip:110@gw>");
    agent.send_request(&refer).await;
    agent.expect_response("REFER", 202).await;
    let invite = police.expect_request("INVITE").await;
    let rtp = answer_with_media(police, &invite, &[8]).await;
    loop {
        let Message::Request(request) = agent.recv().await else {
            continue;
        };
        agent
            .send_response(&agent.answer(&request, 200, None))
            .await;
        if request.method == Method::Bye {
            return rtp;
        }
    }
}

/// The caller of `call` hangs up; every other party answers the gateway's BYE.
pub(crate) async fn caller_hangs_up(caller: &mut Ua, call: &Established, others: &mut [&mut Ua]) {
    let bye = caller.in_dialog(&call.invite, &call.ok, "BYE", 2, "");
    caller.send_request(&bye).await;
    caller.expect_response("BYE", 200).await;
    for ua in others.iter_mut() {
        let bye = ua.expect_request("BYE").await;
        ua.send_response(&ua.answer(&bye, 200, None)).await;
    }
}
