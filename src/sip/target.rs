//! Where a SIP message goes and how one came: the transport-independent addressing the
//! transaction layer and the call model speak (§18.2.2 response routing), without the sockets.

use std::net::SocketAddr;

use crate::routing::TransportKind;

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

/// Our address as a request to `target` names it (Via, Contact): the SIP address, with the
/// TLS port for TLS.
pub fn local_for(local_sip: SocketAddr, local_tls_port: Option<u16>, target: Target) -> SocketAddr {
    match local_tls_port {
        Some(port) if target.is_secure() => SocketAddr::new(local_sip.ip(), port),
        _ => local_sip,
    }
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
