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

use super::hep::Carried;
use super::message::{self, Frame, Message, ParseError};
use crate::limits::is_out_of_descriptors;
use crate::metrics::{Counter, Metrics};
use crate::routing::charset::Charset;

use super::target::{ConnectionId, Flow, InterfaceId, Target};

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

/// Where one more interface (`[[interface]]`) listens: SIP over UDP and TCP, and TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterfaceListen {
    pub sip: SocketAddr,
    pub tls: Option<SocketAddr>,
}

/// Transport settings.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// The default interface's UDP and TCP (its TLS is the TLS settings' `listen`).
    pub listen: SocketAddr,
    /// The other interfaces, in order: interface 1, 2, …
    pub interfaces: Vec<InterfaceListen>,
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
    /// `[hep]`: a copy of every message to a capture server.
    pub hep: Option<super::hep::HepSettings>,
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
    /// Each interface's sockets, by [`InterfaceId`] (the default first).
    interfaces: Arc<Interfaces>,
    connections: Arc<Mutex<Connections>>,
    next_connection: Arc<AtomicU64>,
    inbound: mpsc::Sender<TransportEvent>,
    config: Arc<TransportConfig>,
    tls: Option<Arc<super::tls::TlsSettings>>,
    /// Inbound TLS handshakes under way: they count against `max_tcp_connections` too.
    handshaking: Arc<std::sync::atomic::AtomicUsize>,
    bans: Arc<Bans>,
    /// Who the peers are, for the slots kept for them.
    router: Arc<crate::routing::Router>,
    /// When running out of descriptors was last logged (logged once a while, counted always).
    descriptors_logged: Arc<Mutex<Option<Instant>>>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    /// Where copies of the messages go (`[hep]`).
    hep: Option<super::hep::HepTap>,
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

/// One interface's sockets: its UDP socket (sent from and received on) and where it accepts.
struct BoundInterface {
    udp: Arc<UdpSocket>,
    /// The UDP (and TCP) socket's address, its port resolved.
    udp_local: SocketAddr,
    /// Where TLS is accepted (its port resolved).
    tls_local: Option<SocketAddr>,
}

/// Every interface's sockets: the default's, then the others' in order.
struct Interfaces {
    default: BoundInterface,
    more: Vec<BoundInterface>,
}

impl Interfaces {
    fn get(&self, interface: InterfaceId) -> Option<&BoundInterface> {
        match usize::from(interface.0) {
            0 => Some(&self.default),
            n => self.more.get(n - 1),
        }
    }

    /// The interface's sockets; the default's for one not configured (the configuration's
    /// checks rule that out: a peer names an interface that exists).
    fn get_or_default(&self, interface: InterfaceId) -> &BoundInterface {
        self.get(interface).unwrap_or(&self.default)
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
    #[error("cannot open a socket towards the HEP collector {collector}: {source}")]
    Hep {
        collector: SocketAddr,
        source: std::io::Error,
    },
}

impl Transport {
    /// Binds UDP and TCP (and TLS) on every interface and starts the receiving tasks.
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
        let (default, listener) = bind_interface(InterfaceListen {
            sip: config.listen,
            tls: tls.as_ref().and_then(|t| t.listen),
        })
        .await?;
        let mut listeners = vec![listener];
        let mut bound = Vec::with_capacity(config.interfaces.len());
        for listen in &config.interfaces {
            let (interface, listener) = bind_interface(*listen).await?;
            bound.push(interface);
            listeners.push(listener);
        }
        let hep = match config.hep {
            Some(settings) => Some(
                super::hep::HepTap::start(settings, Arc::clone(&metrics), shutdown.clone())
                    .await
                    .map_err(|source| TransportError::Hep {
                        collector: settings.collector,
                        source,
                    })?,
            ),
            None => None,
        };
        let transport = Transport {
            hep,
            interfaces: Arc::new(Interfaces {
                default,
                more: bound,
            }),
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
        for (index, (tcp, tls_listener)) in listeners.into_iter().enumerate() {
            let interface = InterfaceId(u8::try_from(index).unwrap_or(u8::MAX));
            tokio::spawn(transport.clone().receive_udp(interface));
            tokio::spawn(transport.clone().accept_tcp(tcp, interface, false));
            if let Some(listener) = tls_listener {
                tokio::spawn(transport.clone().accept_tcp(listener, interface, true));
            }
        }
        Ok(transport)
    }

    /// With `[hep]`: where the legs of calls are linked to their call's correlation id.
    pub fn hep_correlations(&self) -> Option<Arc<super::hep::Correlations>> {
        self.hep.as_ref().map(super::hep::HepTap::correlations)
    }

    /// The default interface's SIP address (its port resolved).
    pub fn local_address(&self) -> SocketAddr {
        self.local_address_of(InterfaceId::DEFAULT)
            .unwrap_or(self.config.listen)
    }

    pub fn tls_local_address(&self) -> Option<SocketAddr> {
        self.tls_local_address_of(InterfaceId::DEFAULT)
    }

    /// An interface's SIP address (its port resolved); None for one not configured.
    pub fn local_address_of(&self, interface: InterfaceId) -> Option<SocketAddr> {
        self.interfaces.get(interface)?.udp.local_addr().ok()
    }

    pub fn tls_local_address_of(&self, interface: InterfaceId) -> Option<SocketAddr> {
        self.interfaces.get(interface)?.tls_local
    }

    fn udp(&self, interface: InterfaceId) -> &UdpSocket {
        &self.interfaces.get_or_default(interface).udp
    }

    /// Our side of a message through the interface, as its HEP copy names it: the address
    /// listened on (UDP and TCP, or TLS). Connections the gateway opens are named by it too,
    /// not by their own port, and a wildcard listen address stays the wildcard.
    fn local_of(&self, interface: InterfaceId, tls: bool) -> SocketAddr {
        let bound = self.interfaces.get_or_default(interface);
        match (tls, bound.tls_local) {
            (true, Some(tls_local)) => tls_local,
            _ => bound.udp_local,
        }
    }

    /// The sources dropped before parsing (the endpoint's guard fills it).
    pub fn bans(&self) -> &Bans {
        &self.bans
    }

    /// Sends `bytes` to `target` without waiting.
    pub fn send(&self, target: Target, bytes: Bytes) {
        self.metrics.increment(Counter::SipMessagesSent);
        if let Some(hep) = &self.hep {
            let (interface, address, carried, tls) = match target {
                Target::Udp(interface, address) => (interface, address, Carried::Udp, false),
                Target::Connection(interface, _, address) | Target::Tcp(interface, address) => {
                    (interface, address, Carried::Tcp, false)
                }
                Target::TlsConnection(interface, _, address) | Target::Tls(interface, address) => {
                    (interface, address, Carried::Tcp, true)
                }
            };
            hep.capture(self.local_of(interface, tls), address, carried, &bytes);
        }
        match target {
            Target::Udp(interface, address) => {
                if let Err(e) = self.udp(interface).try_send_to(&bytes, address) {
                    tracing::debug!(%address, error = %e, "UDP send failed");
                }
            }
            Target::Connection(interface, id, address) => {
                if !self.send_on(id, bytes.clone()) {
                    self.send_tcp(interface, address, bytes, false);
                }
            }
            Target::Tcp(interface, address) => self.send_tcp(interface, address, bytes, false),
            Target::TlsConnection(interface, id, address) => {
                if !self.send_on(id, bytes.clone()) {
                    self.send_tcp(interface, address, bytes, true);
                }
            }
            Target::Tls(interface, address) => self.send_tcp(interface, address, bytes, true),
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

    async fn receive_udp(self, interface: InterfaceId) {
        let mut buffer = vec![0u8; 65_535];
        let udp = Arc::clone(&self.interfaces.get_or_default(interface).udp);
        loop {
            let received = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                r = udp.recv_from(&mut buffer) => r,
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
            if let Some(hep) = &self.hep {
                hep.capture(
                    source,
                    self.local_of(interface, false),
                    Carried::Udp,
                    datagram,
                );
            }
            let inbound = Inbound {
                received: transport_now(),
                message: message::parse_with(datagram, || self.charset_of(source)),
                source: crate::routing::canonical(source),
                flow: Flow::Udp(interface),
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

/// One interface's sockets, and its TCP and TLS listeners for the accepting tasks.
async fn bind_interface(
    listen: InterfaceListen,
) -> Result<(BoundInterface, (TcpListener, Option<TcpListener>)), TransportError> {
    let (udp, tcp) = bind_udp_and_tcp(listen.sip).await?;
    let tls = match listen.tls {
        Some(address) => {
            Some(
                TcpListener::bind(address)
                    .await
                    .map_err(|source| TransportError::Bind {
                        protocol: "TLS",
                        address,
                        source,
                    })?,
            )
        }
        None => None,
    };
    let udp_local = udp
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let bound = BoundInterface {
        udp: Arc::new(udp),
        udp_local,
        tls_local: tls.as_ref().and_then(|l| l.local_addr().ok()),
    };
    Ok((bound, (tcp, tls)))
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
