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
use crate::limits::is_out_of_descriptors;
use crate::metrics::{Counter, Metrics};
use crate::routing::charset::Charset;

use super::target::{ConnectionId, Flow, Target};

mod tcp;

/// The transport's clock, read from tokio's like the endpoint's that it is compared with (the
/// queueing delay of [`Inbound::received`], ban expiry), so paused-time tests move both.
fn transport_now() -> Instant {
    tokio::time::Instant::now().into_std()
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
                .is_banned(crate::routing::canonical(source), transport_now())
            {
                self.metrics.increment(Counter::SipDroppedBanned);
                continue;
            }
            let inbound = Inbound {
                received: transport_now(),
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

    /// How the peer at `source` writes header text that is not UTF-8.
    fn charset_of(&self, source: SocketAddr) -> Charset {
        self.router
            .peer_for_source(source)
            .map_or(Charset::Utf8, |peer| peer.charset)
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
mod tests;
