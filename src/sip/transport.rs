//! UDP and TCP sockets on `sip.listen`: the only signalling I/O.
//!
//! Receiving tasks parse each message (off the endpoint's task, so parsing runs in parallel) and
//! hand [`Inbound`] items to the endpoint through a bounded channel. Sending never blocks the
//! endpoint: UDP uses `try_send_to` (a full socket buffer loses the datagram, which the
//! transaction layer's retransmissions recover, as on any UDP network); TCP hands the bytes to
//! the connection's writer task through a bounded queue.
//!
//! TCP (§18.3): messages are framed by Content-Length, partial and pipelined messages are
//! handled, a message over `max_message_size` closes the connection, and a connection idle for
//! `tcp_idle_timeout` is closed. Requests to a TCP peer reuse an open connection to its address.
//!
//! TLS (§26.2, [`super::tls`]): the same framing over a rustls stream, accepted on
//! `sip.tls_listen` and opened to `transport = "tls"` peers, whose certificates are checked.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::message::{self, Frame, Message, ParseError};
use crate::metrics::{Counter, Metrics};

/// Signalling transport used towards a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    #[default]
    Udp,
    Tcp,
    /// TLS over TCP (needs `sip.tls_ca`).
    Tls,
}

/// Identifies one TCP connection for the life of the process.
pub type ConnectionId = u64;

/// How a message arrived, and so how a response goes back (§18.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flow {
    Udp,
    Tcp(ConnectionId),
    Tls(ConnectionId),
}

impl Flow {
    pub fn is_reliable(&self) -> bool {
        !matches!(self, Flow::Udp)
    }

    /// The Via transport token.
    pub fn via_transport(&self) -> &'static str {
        match self {
            Flow::Udp => "UDP",
            Flow::Tcp(_) => "TCP",
            Flow::Tls(_) => "TLS",
        }
    }

    /// Where a response to a request that came this way from `source` goes (§18.2.2).
    pub fn response_target(&self, source: SocketAddr) -> Target {
        match *self {
            Flow::Udp => Target::Udp(source),
            Flow::Tcp(id) => Target::Connection(id, source),
            Flow::Tls(id) => Target::TlsConnection(id, source),
        }
    }
}

/// Where to send: an address, over UDP, an existing TCP or TLS connection, or a (new or reused)
/// TCP or TLS connection to that address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Udp(SocketAddr),
    Tcp(SocketAddr),
    Connection(ConnectionId, SocketAddr),
    Tls(SocketAddr),
    TlsConnection(ConnectionId, SocketAddr),
}

impl Target {
    /// How requests to `peer` go.
    pub fn for_peer(peer: &crate::routing::Peer) -> Target {
        match peer.transport {
            TransportKind::Udp => Target::Udp(peer.address),
            TransportKind::Tcp => Target::Tcp(peer.address),
            TransportKind::Tls => Target::Tls(peer.address),
        }
    }

    pub fn address(&self) -> SocketAddr {
        match self {
            Target::Udp(a)
            | Target::Tcp(a)
            | Target::Connection(_, a)
            | Target::Tls(a)
            | Target::TlsConnection(_, a) => *a,
        }
    }

    pub fn is_reliable(&self) -> bool {
        !matches!(self, Target::Udp(_))
    }

    pub fn is_secure(&self) -> bool {
        matches!(self, Target::Tls(_) | Target::TlsConnection(..))
    }

    pub fn via_transport(&self) -> &'static str {
        if self.is_secure() {
            "TLS"
        } else if self.is_reliable() {
            "TCP"
        } else {
            "UDP"
        }
    }

    /// The `transport` URI parameter for a Contact reached this way ("" for UDP).
    pub fn uri_transport(&self) -> &'static str {
        if self.is_secure() {
            ";transport=tls"
        } else if self.is_reliable() {
            ";transport=tcp"
        } else {
            ""
        }
    }
}

/// One received message (or the reason it could not be parsed).
#[derive(Debug)]
pub struct Inbound {
    pub message: Result<Message, ParseError>,
    pub source: SocketAddr,
    pub flow: Flow,
    /// When the bytes were read from the socket (the endpoint measures its queueing delay).
    pub received: Instant,
}

/// What the transport tells the endpoint.
#[derive(Debug)]
// Nearly every event is an Inbound: boxing it would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
pub enum TransportEvent {
    Inbound(Inbound),
    /// A TCP connection to `address` could not be opened, or was reset or closed: requests
    /// sent on it and still unanswered have failed (§17.1.1.2: a transport error).
    ConnectionLost {
        address: SocketAddr,
        secure: bool,
    },
}

/// Transport settings.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub listen: SocketAddr,
    pub max_message_size: usize,
    pub tcp_idle_timeout: Duration,
    /// Inbound TCP connections open at once; a new one beyond is closed at once.
    pub max_tcp_connections: usize,
    /// Inbound connections one address that is no peer's host may hold.
    pub max_tcp_connections_per_source: usize,
    /// Of `max_tcp_connections`, those only peers' hosts may take (capped at half).
    pub tcp_reserved_for_peers: usize,
    /// The first whole message of an inbound connection, and each message from its first byte,
    /// must come within this long.
    pub tcp_request_timeout: Duration,
}

impl TransportConfig {
    /// The slots strangers may fill: all but those kept for peers.
    fn stranger_slots(&self) -> usize {
        let reserved = self
            .tcp_reserved_for_peers
            .min(self.max_tcp_connections / 2);
        self.max_tcp_connections - reserved
    }
}

struct Connections {
    writers: HashMap<ConnectionId, mpsc::Sender<Bytes>>,
    /// Open connections by peer address and whether they are TLS.
    by_address: HashMap<(SocketAddr, bool), ConnectionId>,
    /// Inbound connections (and TLS handshakes) open now, by source host.
    by_source: HashMap<std::net::IpAddr, usize>,
    /// Inbound connections (and handshakes) open now from hosts that are no peer's.
    strangers: usize,
}

/// One inbound connection's claim on its source's slots, given back when it is dropped.
struct SourceSlot {
    connections: Arc<Mutex<Connections>>,
    source: std::net::IpAddr,
    stranger: bool,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut connections = self
            .connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = connections.by_source.get_mut(&self.source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                connections.by_source.remove(&self.source);
            }
        }
        if self.stranger {
            connections.strangers = connections.strangers.saturating_sub(1);
        }
    }
}

/// The handle the endpoint sends through. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    udp: Arc<UdpSocket>,
    connections: Arc<Mutex<Connections>>,
    next_connection: Arc<AtomicU64>,
    inbound: mpsc::Sender<TransportEvent>,
    config: Arc<TransportConfig>,
    tls: Option<Arc<super::tls::TlsSettings>>,
    /// Where TLS is accepted (its port resolved).
    tls_local: Option<SocketAddr>,
    /// Inbound TLS handshakes under way: they count against `max_tcp_connections` too.
    handshaking: Arc<std::sync::atomic::AtomicUsize>,
    bans: Arc<Bans>,
    /// Who the peers are, for the slots kept for them.
    router: Arc<crate::routing::Router>,
    /// When running out of descriptors was last logged (logged once a while, counted always).
    descriptors_logged: Arc<Mutex<Option<Instant>>>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

/// Sources the guard banned, and until when: their datagrams are dropped before they are
/// parsed and their connections closed at accept, so a flood costs a lookup per datagram.
/// The guard decides; the transport only looks.
#[derive(Default)]
pub struct Bans {
    banned: dashmap::DashMap<std::net::IpAddr, Instant>,
    /// Entries in `banned`: the per-datagram check is one atomic load while nobody is banned
    /// (`DashMap::is_empty` would lock every shard).
    entries: std::sync::atomic::AtomicUsize,
    /// A peer sharing a banned IP (another port of it) is never dropped.
    peers: std::sync::OnceLock<Arc<crate::routing::Router>>,
}

impl Bans {
    pub fn ban(&self, source: std::net::IpAddr, until: Instant) {
        if self.banned.insert(source, until).is_none() {
            self.entries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Who the peers are (set once, with the guard).
    pub fn know_peers(&self, router: Arc<crate::routing::Router>) {
        let _ = self.peers.set(router);
    }

    /// `source` is canonical (IPv4-mapped addresses as IPv4).
    pub fn is_banned(&self, source: SocketAddr, now: Instant) -> bool {
        if self.entries.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let banned = match self.banned.get(&source.ip()).map(|until| *until) {
            Some(until) if now < until => true,
            Some(_) => {
                // Only if still expired: a new ban may have come meanwhile.
                if self
                    .banned
                    .remove_if(&source.ip(), |_, until| *until <= now)
                    .is_some()
                {
                    self.entries.fetch_sub(1, Ordering::Relaxed);
                }
                false
            }
            None => false,
        };
        banned
            && self
                .peers
                .get()
                .is_none_or(|router| router.peer_for_source(source).is_none())
    }
}

/// How long a TLS handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(5);

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot bind SIP {protocol} on {address}: {source}")]
    Bind {
        protocol: &'static str,
        address: SocketAddr,
        source: std::io::Error,
    },
}

impl Transport {
    /// Binds UDP and TCP on `config.listen` and starts the receiving tasks.
    ///
    /// # Errors
    /// [`TransportError::Bind`] naming the protocol and address.
    pub async fn bind(
        config: TransportConfig,
        tls: Option<super::tls::TlsSettings>,
        inbound: mpsc::Sender<TransportEvent>,
        router: Arc<crate::routing::Router>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Transport, TransportError> {
        let (udp, tcp) = bind_udp_and_tcp(config.listen).await?;
        let tls_listener =
            match tls.as_ref().and_then(|t| t.listen) {
                Some(address) => Some(TcpListener::bind(address).await.map_err(|source| {
                    TransportError::Bind {
                        protocol: "TLS",
                        address,
                        source,
                    }
                })?),
                None => None,
            };
        let transport = Transport {
            udp: Arc::new(udp),
            connections: Arc::new(Mutex::new(Connections {
                writers: HashMap::new(),
                by_address: HashMap::new(),
                by_source: HashMap::new(),
                strangers: 0,
            })),
            next_connection: Arc::new(AtomicU64::new(1)),
            inbound,
            config: Arc::new(config),
            tls: tls.map(Arc::new),
            tls_local: tls_listener.as_ref().and_then(|l| l.local_addr().ok()),
            handshaking: Arc::default(),
            bans: Arc::default(),
            router,
            descriptors_logged: Arc::default(),
            metrics,
            shutdown,
        };
        // One receiver: messages from a peer reach the endpoint in the order they arrived.
        // (Two receivers on the socket reordered a callee's 180 and 200, and would reorder an
        // agent's DTMF INFOs; parsing in the receiver task still runs beside the endpoint.)
        tokio::spawn(transport.clone().receive_udp());
        tokio::spawn(transport.clone().accept_tcp(tcp, false));
        if let Some(listener) = tls_listener {
            tokio::spawn(transport.clone().accept_tcp(listener, true));
        }
        Ok(transport)
    }

    pub fn local_address(&self) -> SocketAddr {
        self.udp.local_addr().unwrap_or(self.config.listen)
    }

    pub fn tls_local_address(&self) -> Option<SocketAddr> {
        self.tls_local
    }

    /// The sources dropped before parsing (the endpoint's guard fills it).
    pub fn bans(&self) -> &Bans {
        &self.bans
    }

    /// Sends `bytes` to `target` without waiting.
    pub fn send(&self, target: Target, bytes: Bytes) {
        self.metrics.increment(Counter::SipMessagesSent);
        match target {
            Target::Udp(address) => {
                if let Err(e) = self.udp.try_send_to(&bytes, address) {
                    tracing::debug!(%address, error = %e, "UDP send failed");
                }
            }
            Target::Connection(id, address) => {
                if !self.send_on(id, bytes.clone()) {
                    self.send_tcp(address, bytes, false);
                }
            }
            Target::Tcp(address) => self.send_tcp(address, bytes, false),
            Target::TlsConnection(id, address) => {
                if !self.send_on(id, bytes.clone()) {
                    self.send_tcp(address, bytes, true);
                }
            }
            Target::Tls(address) => self.send_tcp(address, bytes, true),
        }
    }

    fn send_on(&self, id: ConnectionId, bytes: Bytes) -> bool {
        let writer = self.lock().writers.get(&id).cloned();
        match writer {
            Some(writer) => writer.try_send(bytes).is_ok(),
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connections> {
        // A panic while holding this lock cannot leave the maps inconsistent (each update is a
        // single insert or remove), so a poisoned lock is safe to keep using.
        self.connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reuses an open connection to `address` (TLS if `secure`) or opens one.
    fn send_tcp(&self, address: SocketAddr, bytes: Bytes, secure: bool) {
        let existing = self.lock().by_address.get(&(address, secure)).copied();
        if let Some(id) = existing {
            if self.send_on(id, bytes.clone()) {
                return;
            }
        }
        let transport = self.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(address)).await {
                Ok(Ok(stream)) if secure => {
                    let _ = stream.set_nodelay(true);
                    match transport.tls_connect(stream, address).await {
                        Ok(stream) => {
                            let id = transport.register(stream, address, true, None);
                            transport.send_on(id, bytes);
                        }
                        Err(reason) => {
                            transport.metrics.increment(Counter::TlsHandshakeFailures);
                            tracing::warn!(%address, %reason, "TLS connection to peer failed");
                            transport.lost(address, true).await;
                        }
                    }
                }
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    let id = transport.register(stream, address, false, None);
                    transport.send_on(id, bytes);
                }
                Ok(Err(e)) => {
                    tracing::warn!(%address, error = %e, "TCP connect failed");
                    transport.lost(address, secure).await;
                }
                Err(_) => {
                    tracing::warn!(%address, "TCP connect timed out");
                    transport.lost(address, secure).await;
                }
            }
        });
    }

    async fn receive_udp(self) {
        let mut buffer = vec![0u8; 65_535];
        loop {
            let received = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                r = self.udp.recv_from(&mut buffer) => r,
            };
            let (length, source) = match received {
                Ok(r) => r,
                // ICMP port-unreachable surfaces as ConnectionReset on some systems: ignore.
                Err(e) => {
                    tracing::trace!(error = %e, "UDP receive error");
                    continue;
                }
            };
            let datagram = &buffer[..length];
            if datagram.iter().all(|b| matches!(b, b'\r' | b'\n' | 0)) {
                continue; // keep-alive
            }
            if self
                .bans
                .is_banned(crate::routing::canonical(source), Instant::now())
            {
                self.metrics.increment(Counter::SipDroppedBanned);
                continue;
            }
            let inbound = Inbound {
                received: Instant::now(),
                message: message::parse_with(datagram, || self.charset_of(source)),
                source: crate::routing::canonical(source),
                flow: Flow::Udp,
            };
            if self
                .inbound
                .send(TransportEvent::Inbound(inbound))
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// The client side of a TLS connection to a peer: its certificate checked against the CAs
    /// and its `tls_name`.
    async fn tls_connect(
        &self,
        stream: TcpStream,
        address: SocketAddr,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let Some(tls) = self.tls.as_ref() else {
            return Err("no [sip] tls_ca configured".into());
        };
        let name = tls
            .names
            .get(&address)
            .cloned()
            .unwrap_or_else(|| rustls::pki_types::ServerName::IpAddress(address.ip().into()));
        match tokio::time::timeout(HANDSHAKE, tls.connector.connect(name, stream)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("handshake timed out".into()),
        }
    }

    async fn accept_tcp(self, listener: TcpListener, secure: bool) {
        loop {
            let accepted = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((stream, address)) => {
                    let address = crate::routing::canonical(address);
                    if self.bans.is_banned(address, Instant::now()) {
                        self.metrics.increment(Counter::SipDroppedBanned);
                        continue;
                    }
                    let Some(slot) = self.claim_slot(address) else {
                        // Closed at once (dropped): file descriptors and tasks stay bounded.
                        self.metrics.increment(Counter::TcpConnectionsRefused);
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    if !secure {
                        self.register(stream, address, false, Some(slot));
                        continue;
                    }
                    // The handshake runs beside the accept loop: a slow client holds up nobody.
                    let Some(acceptor) = self.tls.as_ref().and_then(|t| t.acceptor.clone()) else {
                        continue;
                    };
                    let transport = self.clone();
                    self.handshaking.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(async move {
                        let handshake =
                            tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await;
                        transport.handshaking.fetch_sub(1, Ordering::Relaxed);
                        match handshake {
                            Ok(Ok(stream)) => {
                                transport.register(stream, address, true, Some(slot));
                            }
                            Ok(Err(e)) => {
                                transport.metrics.increment(Counter::TlsHandshakeFailures);
                                tracing::info!(%address, error = %e, "TLS handshake refused");
                            }
                            Err(_) => {
                                transport.metrics.increment(Counter::TlsHandshakeFailures);
                                tracing::info!(%address, "TLS handshake timed out");
                            }
                        }
                    });
                }
                Err(e) if is_out_of_descriptors(&e) => {
                    // The connection waits in the backlog; what is open must close first.
                    self.out_of_descriptors("accepting a TCP connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// A slot for a new inbound connection from `source`, or `None` when the connection must
    /// be refused: the table is full, or a stranger would take a slot kept for peers or hold
    /// more than its share.
    fn claim_slot(&self, source: SocketAddr) -> Option<SourceSlot> {
        let stranger = !self.router.is_peer_host(source.ip());
        let mut connections = self.lock();
        let open = connections.writers.len() + self.handshaking.load(Ordering::Relaxed);
        let from_source = connections
            .by_source
            .get(&source.ip())
            .copied()
            .unwrap_or(0);
        let refused = if open >= self.config.max_tcp_connections {
            Some("connection limit reached")
        } else if stranger && connections.strangers >= self.config.stranger_slots() {
            Some("the remaining slots are kept for peers")
        } else if stranger && from_source >= self.config.max_tcp_connections_per_source {
            Some("too many connections from this address")
        } else {
            None
        };
        if let Some(reason) = refused {
            tracing::debug!(%source, open, from_source, reason, "TCP connection refused");
            return None;
        }
        *connections.by_source.entry(source.ip()).or_insert(0) += 1;
        if stranger {
            connections.strangers += 1;
        }
        Some(SourceSlot {
            connections: Arc::clone(&self.connections),
            source: source.ip(),
            stranger,
        })
    }

    /// How the peer at `source` writes header text that is not UTF-8.
    fn charset_of(&self, source: SocketAddr) -> message::Charset {
        self.router
            .peer_for_source(source)
            .map_or(message::Charset::Utf8, |peer| peer.charset)
    }

    /// Counts (and now and then logs) that the process ran out of file descriptors: overload,
    /// not a fault of the address or port being tried.
    pub fn out_of_descriptors(&self, doing: &'static str) {
        self.metrics.increment(Counter::DescriptorsExhausted);
        let mut logged = self
            .descriptors_logged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if logged.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(10)) {
            *logged = Some(now);
            tracing::error!(
                doing,
                "out of file descriptors (overload): raise LimitNOFILE or lower sip.max_tcp_connections / sip.max_calls"
            );
        }
    }

    /// Starts the reader and writer tasks of a connection (TLS if `secure`) and returns its id.
    ///
    /// `slot` is the claim of a connection the peer opened (`None`: the gateway opened it).
    fn register<S>(
        &self,
        stream: S,
        address: SocketAddr,
        secure: bool,
        slot: Option<SourceSlot>,
    ) -> ConnectionId
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let (read_half, mut write_half) = tokio::io::split(stream);
        let (writer, mut queue) = mpsc::channel::<Bytes>(1024);
        {
            let mut connections = self.lock();
            connections.writers.insert(id, writer);
            connections.by_address.insert((address, secure), id);
        }
        let closed = CancellationToken::new();
        let writer_closed = closed.clone();
        tokio::spawn(async move {
            loop {
                let bytes = tokio::select! {
                    _ = writer_closed.cancelled() => break,
                    b = queue.recv() => match b { Some(b) => b, None => break },
                };
                if write_half.write_all(&bytes).await.is_err() {
                    break;
                }
                // A TLS stream buffers records until flushed.
                if write_half.flush().await.is_err() {
                    break;
                }
            }
            writer_closed.cancel();
        });
        let transport = self.clone();
        tokio::spawn(async move {
            let flow = if secure { Flow::Tls(id) } else { Flow::Tcp(id) };
            // A peer's host may open a connection and wait in silence for its first call; a
            // stranger must speak at once.
            let stranger = slot.as_ref().is_some_and(|s| s.stranger);
            transport
                .read_connection(read_half, address, flow, stranger, &closed)
                .await;
            drop(slot);
            closed.cancel();
            {
                let mut connections = transport.lock();
                connections.writers.remove(&id);
                if connections.by_address.get(&(address, secure)) == Some(&id) {
                    connections.by_address.remove(&(address, secure));
                }
            }
            if !transport.shutdown.is_cancelled() {
                transport.lost(address, secure).await;
            }
        });
        id
    }

    async fn lost(&self, address: SocketAddr, secure: bool) {
        let _ = self
            .inbound
            .send(TransportEvent::ConnectionLost { address, secure })
            .await;
    }

    /// Whether a connection to `address` (TLS if `secure`) is open now.
    pub fn is_connected(&self, address: SocketAddr, secure: bool) -> bool {
        self.lock().by_address.contains_key(&(address, secure))
    }

    /// Reads and frames one connection until it closes. A `stranger`'s connection (opened by
    /// an address that is no peer's host) must deliver its first whole message within
    /// `tcp_request_timeout`; on every connection a message must be whole within that long of
    /// its first byte.
    async fn read_connection(
        &self,
        mut reader: impl AsyncRead + Unpin,
        address: SocketAddr,
        flow: Flow,
        stranger: bool,
        closed: &CancellationToken,
    ) {
        let id = match flow {
            Flow::Tcp(id) | Flow::Tls(id) => id,
            Flow::Udp => return,
        };
        let mut buffer = BytesMut::with_capacity(8192);
        let mut framer = message::Framer::default();
        let request_timeout = self.config.tcp_request_timeout;
        // Until when the message under way (or, at first, the first message) must be whole.
        let mut deadline = stranger.then(|| Instant::now() + request_timeout);
        loop {
            // Deliver every whole message already buffered (pipelining), then read more.
            loop {
                match framer.next(&buffer, self.config.max_message_size) {
                    Ok(Frame::Incomplete) => break,
                    Ok(Frame::KeepAlive { length, ping }) => {
                        buffer.advance(length);
                        if ping {
                            self.send_on(id, Bytes::from_static(b"\r\n"));
                        }
                    }
                    Ok(Frame::Message { length }) => {
                        deadline = None;
                        let bytes = buffer.split_to(length);
                        let inbound = Inbound {
                            received: Instant::now(),
                            message: message::parse_with(&bytes, || self.charset_of(address)),
                            source: address,
                            flow,
                        };
                        if self
                            .inbound
                            .send(TransportEvent::Inbound(inbound))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        self.metrics.increment(Counter::SipParseErrors);
                        tracing::warn!(%address, error = %e, "closing TCP connection");
                        return;
                    }
                }
            }
            if deadline.is_none() && !buffer.is_empty() {
                deadline = Some(Instant::now() + request_timeout);
            }
            let wait = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => self.config.tcp_idle_timeout,
            };
            let read = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = closed.cancelled() => return,
                r = tokio::time::timeout(wait, reader.read_buf(&mut buffer)) => r,
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => {}
                Err(_) if deadline.is_some() => {
                    self.metrics.increment(Counter::TcpRequestTimeouts);
                    tracing::debug!(%address, "closing TCP connection: no whole message in time");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%address, "closing idle TCP connection");
                    return;
                }
            }
        }
    }
}

/// EMFILE or ENFILE: the process (or the system) has no descriptor left.
pub fn is_out_of_descriptors(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(code) if code == rustix::io::Errno::MFILE.raw_os_error()
            || code == rustix::io::Errno::NFILE.raw_os_error()
    )
}

/// UDP and TCP on the same port. With port 0 (tests, several gateways on one machine) the port
/// the kernel picks for UDP may be held by another TCP socket: another port is tried.
async fn bind_udp_and_tcp(listen: SocketAddr) -> Result<(UdpSocket, TcpListener), TransportError> {
    let (udp, tcp) = bind_pair(listen, |address| {
        let tcp = std::net::TcpListener::bind(address)?;
        tcp.set_nonblocking(true)?;
        Ok(tcp)
    })?;
    let tcp = TcpListener::from_std(tcp).map_err(|source| TransportError::Bind {
        protocol: "TCP",
        address: listen,
        source,
    })?;
    Ok((udp, tcp))
}

fn bind_pair<T>(
    listen: SocketAddr,
    mut bind_tcp: impl FnMut(SocketAddr) -> std::io::Result<T>,
) -> Result<(UdpSocket, T), TransportError> {
    const ATTEMPTS: usize = 32;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let udp = bind_udp(listen).map_err(|source| TransportError::Bind {
            protocol: "UDP",
            address: listen,
            source,
        })?;
        let bound = udp.local_addr().unwrap_or(listen);
        match bind_tcp(bound) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source)
                if listen.port() == 0
                    && attempt < ATTEMPTS
                    && source.kind() == std::io::ErrorKind::AddrInUse => {}
            Err(source) => {
                return Err(TransportError::Bind {
                    protocol: "TCP",
                    address: bound,
                    source,
                })
            }
        }
    }
}

/// A UDP socket with large buffers: a burst of INVITEs must not be lost in the kernel.
fn bind_udp(address: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(address);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    UdpSocket::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// EMFILE and ENFILE read as running out of descriptors (overload), other errors not.
    #[test]
    fn out_of_descriptors_is_told_apart() {
        let emfile = std::io::Error::from_raw_os_error(rustix::io::Errno::MFILE.raw_os_error());
        let enfile = std::io::Error::from_raw_os_error(rustix::io::Errno::NFILE.raw_os_error());
        let in_use = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        assert!(is_out_of_descriptors(&emfile) && is_out_of_descriptors(&enfile));
        assert!(!is_out_of_descriptors(&in_use));
    }

    /// Port 0: a UDP port whose TCP twin is taken is given back and another one tried.
    #[tokio::test]
    async fn port_zero_finds_a_port_free_for_both() {
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}"));
        let mut tried = Vec::new();
        let (udp, port) = match bind_pair(listen, |address| {
            tried.push(address.port());
            if tried.len() < 3 {
                Err(std::io::Error::from(std::io::ErrorKind::AddrInUse))
            } else {
                Ok(address.port())
            }
        }) {
            Ok(pair) => pair,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(tried.len(), 3);
        assert_eq!(udp.local_addr().map(|a| a.port()).ok(), Some(port));
        // A configured port is never swapped for another.
        let fixed: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap_or(listen);
        drop(udp);
        let refused = bind_pair(fixed, |_| -> std::io::Result<()> {
            Err(std::io::Error::from(std::io::ErrorKind::AddrInUse))
        });
        assert!(matches!(
            refused,
            Err(TransportError::Bind {
                protocol: "TCP",
                ..
            })
        ));
    }
}
