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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::message::{self, Frame, Message, ParseError};
use crate::metrics::{Counter, Metrics};

/// Identifies one TCP connection for the life of the process.
pub type ConnectionId = u64;

/// How a message arrived, and so how a response goes back (§18.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flow {
    Udp,
    Tcp(ConnectionId),
}

impl Flow {
    pub fn is_reliable(&self) -> bool {
        matches!(self, Flow::Tcp(_))
    }

    /// The Via transport token.
    pub fn via_transport(&self) -> &'static str {
        match self {
            Flow::Udp => "UDP",
            Flow::Tcp(_) => "TCP",
        }
    }
}

/// Where to send: an address, over UDP, an existing TCP connection, or a (new or reused)
/// TCP connection to that address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Udp(SocketAddr),
    Tcp(SocketAddr),
    Connection(ConnectionId, SocketAddr),
}

impl Target {
    pub fn address(&self) -> SocketAddr {
        match self {
            Target::Udp(a) | Target::Tcp(a) | Target::Connection(_, a) => *a,
        }
    }

    pub fn is_reliable(&self) -> bool {
        !matches!(self, Target::Udp(_))
    }

    pub fn via_transport(&self) -> &'static str {
        if self.is_reliable() {
            "TCP"
        } else {
            "UDP"
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
}

struct Connections {
    writers: HashMap<ConnectionId, mpsc::Sender<Bytes>>,
    by_address: HashMap<SocketAddr, ConnectionId>,
}

/// The handle the endpoint sends through. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    udp: Arc<UdpSocket>,
    connections: Arc<Mutex<Connections>>,
    next_connection: Arc<AtomicU64>,
    inbound: mpsc::Sender<TransportEvent>,
    config: Arc<TransportConfig>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

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
        inbound: mpsc::Sender<TransportEvent>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Transport, TransportError> {
        let udp = bind_udp(config.listen).map_err(|source| TransportError::Bind {
            protocol: "UDP",
            address: config.listen,
            source,
        })?;
        // TCP on the same port as UDP, also when the configured port is 0 (tests).
        let bound = udp.local_addr().unwrap_or(config.listen);
        let tcp = TcpListener::bind(bound)
            .await
            .map_err(|source| TransportError::Bind {
                protocol: "TCP",
                address: bound,
                source,
            })?;
        let transport = Transport {
            udp: Arc::new(udp),
            connections: Arc::new(Mutex::new(Connections {
                writers: HashMap::new(),
                by_address: HashMap::new(),
            })),
            next_connection: Arc::new(AtomicU64::new(1)),
            inbound,
            config: Arc::new(config),
            metrics,
            shutdown,
        };
        // One receiver: messages from a peer reach the endpoint in the order they arrived.
        // (Two receivers on the socket reordered a callee's 180 and 200, and would reorder an
        // agent's DTMF INFOs; parsing in the receiver task still runs beside the endpoint.)
        tokio::spawn(transport.clone().receive_udp());
        tokio::spawn(transport.clone().accept_tcp(tcp));
        Ok(transport)
    }

    pub fn local_address(&self) -> SocketAddr {
        self.udp.local_addr().unwrap_or(self.config.listen)
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
                    self.send_tcp(address, bytes);
                }
            }
            Target::Tcp(address) => self.send_tcp(address, bytes),
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

    /// Reuses an open connection to `address` or opens one.
    fn send_tcp(&self, address: SocketAddr, bytes: Bytes) {
        let existing = self.lock().by_address.get(&address).copied();
        if let Some(id) = existing {
            if self.send_on(id, bytes.clone()) {
                return;
            }
        }
        let transport = self.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(address)).await {
                Ok(Ok(stream)) => {
                    let id = transport.register(stream, address);
                    transport.send_on(id, bytes);
                }
                Ok(Err(e)) => {
                    tracing::warn!(%address, error = %e, "TCP connect failed");
                    transport.lost(address).await;
                }
                Err(_) => {
                    tracing::warn!(%address, "TCP connect timed out");
                    transport.lost(address).await;
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
            let inbound = Inbound {
                received: Instant::now(),
                message: message::parse(datagram),
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

    async fn accept_tcp(self, listener: TcpListener) {
        loop {
            let accepted = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((stream, address)) => {
                    let open = self.lock().writers.len();
                    if open >= self.config.max_tcp_connections {
                        // Closed at once (dropped): file descriptors and tasks stay bounded.
                        self.metrics.increment(Counter::TcpConnectionsRefused);
                        tracing::debug!(%address, open, "TCP connection refused: limit reached");
                        drop(stream);
                        continue;
                    }
                    self.register(stream, crate::routing::canonical(address));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Starts the reader and writer tasks of a connection and returns its id.
    fn register(&self, stream: TcpStream, address: SocketAddr) -> ConnectionId {
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let (read_half, mut write_half) = stream.into_split();
        let (writer, mut queue) = mpsc::channel::<Bytes>(1024);
        {
            let mut connections = self.lock();
            connections.writers.insert(id, writer);
            connections.by_address.insert(address, id);
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
            }
            writer_closed.cancel();
        });
        let transport = self.clone();
        tokio::spawn(async move {
            transport
                .read_connection(read_half, address, id, &closed)
                .await;
            closed.cancel();
            {
                let mut connections = transport.lock();
                connections.writers.remove(&id);
                if connections.by_address.get(&address) == Some(&id) {
                    connections.by_address.remove(&address);
                }
            }
            if !transport.shutdown.is_cancelled() {
                transport.lost(address).await;
            }
        });
        id
    }

    async fn lost(&self, address: SocketAddr) {
        let _ = self
            .inbound
            .send(TransportEvent::ConnectionLost { address })
            .await;
    }

    async fn read_connection(
        &self,
        mut reader: tokio::net::tcp::OwnedReadHalf,
        address: SocketAddr,
        id: ConnectionId,
        closed: &CancellationToken,
    ) {
        let mut buffer = BytesMut::with_capacity(8192);
        loop {
            // Deliver every whole message already buffered (pipelining), then read more.
            loop {
                match message::frame(&buffer, self.config.max_message_size) {
                    Ok(Frame::Incomplete) => break,
                    Ok(Frame::KeepAlive { length, ping }) => {
                        buffer.advance(length);
                        if ping {
                            self.send_on(id, Bytes::from_static(b"\r\n"));
                        }
                    }
                    Ok(Frame::Message { length }) => {
                        let bytes = buffer.split_to(length);
                        let inbound = Inbound {
                            received: Instant::now(),
                            message: message::parse(&bytes),
                            source: address,
                            flow: Flow::Tcp(id),
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
            let read = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = closed.cancelled() => return,
                r = tokio::time::timeout(self.config.tcp_idle_timeout, reader.read_buf(&mut buffer)) => r,
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => {}
                Err(_) => {
                    tracing::debug!(%address, "closing idle TCP connection");
                    return;
                }
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
