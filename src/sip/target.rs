//! Where a SIP message goes and how one came: the transport-independent addressing the
//! transaction layer and the call model speak (§18.2.2 response routing), without the sockets.

use std::net::SocketAddr;

pub use crate::routing::InterfaceId;
use crate::routing::TransportKind;

/// Identifies one TCP connection for the life of the process.
pub type ConnectionId = u64;

/// How a message arrived (on which of our interfaces, over what), and so how a response goes
/// back (§18.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flow {
    Udp(InterfaceId),
    Tcp(InterfaceId, ConnectionId),
    Tls(InterfaceId, ConnectionId),
}

impl Flow {
    pub fn is_reliable(&self) -> bool {
        !matches!(self, Flow::Udp(_))
    }

    /// The interface it came in on.
    pub fn interface(&self) -> InterfaceId {
        match *self {
            Flow::Udp(interface) | Flow::Tcp(interface, _) | Flow::Tls(interface, _) => interface,
        }
    }

    /// The Via transport token.
    pub fn via_transport(&self) -> &'static str {
        match self {
            Flow::Udp(_) => "UDP",
            Flow::Tcp(..) => "TCP",
            Flow::Tls(..) => "TLS",
        }
    }

    /// Where a response to a request that came this way from `source` goes (§18.2.2).
    pub fn response_target(&self, source: SocketAddr) -> Target {
        match *self {
            Flow::Udp(interface) => Target::Udp(interface, source),
            Flow::Tcp(interface, id) => Target::Connection(interface, id, source),
            Flow::Tls(interface, id) => Target::TlsConnection(interface, id, source),
        }
    }
}

/// Where to send, from which of our interfaces: an address over UDP, an existing TCP or TLS
/// connection, or a (new or reused) TCP or TLS connection to that address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Udp(InterfaceId, SocketAddr),
    Tcp(InterfaceId, SocketAddr),
    Connection(InterfaceId, ConnectionId, SocketAddr),
    Tls(InterfaceId, SocketAddr),
    TlsConnection(InterfaceId, ConnectionId, SocketAddr),
}

/// Our address on one interface as its peers are to see it (Via, Contact): the advertised
/// IP (else the bound one) with the bound SIP port, and likewise the TLS address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalAddress {
    pub sip: SocketAddr,
    pub tls: Option<SocketAddr>,
}

/// Our address on each interface, by [`InterfaceId`] (the default first): what a message to
/// a peer names, so each network sees only the gateway's address on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAddresses(Vec<LocalAddress>);

impl LocalAddresses {
    /// The default interface's address, then the others' in order.
    pub fn new(default: LocalAddress, more: impl IntoIterator<Item = LocalAddress>) -> Self {
        LocalAddresses(std::iter::once(default).chain(more).collect())
    }

    /// One interface only.
    pub fn single(sip: SocketAddr, tls_port: Option<u16>) -> Self {
        let tls = tls_port.map(|port| SocketAddr::new(sip.ip(), port));
        Self::new(LocalAddress { sip, tls }, [])
    }

    /// The interface's address; the default's for one not configured (the configuration's
    /// checks rule that out: a peer names an interface that exists).
    pub fn of(&self, interface: InterfaceId) -> LocalAddress {
        let default = self.0[0];
        self.0
            .get(usize::from(interface.0))
            .copied()
            .unwrap_or(default)
    }

    /// The default interface's address.
    pub fn default_address(&self) -> LocalAddress {
        self.0[0]
    }

    /// Our address as a request to `target` names it (Via, Contact): the SIP address of the
    /// target's interface, its TLS address for TLS.
    pub fn for_target(&self, target: Target) -> SocketAddr {
        let local = self.of(target.interface());
        match local.tls {
            Some(tls) if target.is_secure() => tls,
            _ => local.sip,
        }
    }
}

impl Target {
    /// How requests to `peer` go.
    pub fn for_peer(peer: &crate::routing::Peer) -> Target {
        match peer.transport {
            TransportKind::Udp => Target::Udp(peer.interface, peer.address),
            TransportKind::Tcp => Target::Tcp(peer.interface, peer.address),
            TransportKind::Tls => Target::Tls(peer.interface, peer.address),
        }
    }

    pub fn address(&self) -> SocketAddr {
        match self {
            Target::Udp(_, a)
            | Target::Tcp(_, a)
            | Target::Connection(_, _, a)
            | Target::Tls(_, a)
            | Target::TlsConnection(_, _, a) => *a,
        }
    }

    /// The interface it goes out of.
    pub fn interface(&self) -> InterfaceId {
        match *self {
            Target::Udp(i, _)
            | Target::Tcp(i, _)
            | Target::Connection(i, ..)
            | Target::Tls(i, _)
            | Target::TlsConnection(i, ..) => i,
        }
    }

    pub fn is_reliable(&self) -> bool {
        !matches!(self, Target::Udp(..))
    }

    pub fn is_secure(&self) -> bool {
        matches!(self, Target::Tls(..) | Target::TlsConnection(..))
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
