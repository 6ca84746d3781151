//! What the transaction layer hands up to the owners of transactions and dialogs: the
//! [`SipEvent`]s, the keys that name a server transaction ([`ServerTransactionId`]) and a dialog
//! ([`DialogKey`]), and [`via_for`], the top Via a client transaction's request carries.

use std::net::{IpAddr, SocketAddr};

use crate::sip::message::{Method, Request, Response};
use crate::sip::target::Target;

/// Names a server transaction to its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerTransactionId(u64);

impl ServerTransactionId {
    /// Ids are handed out by the endpoint; this exists for drivers of the call model in tests.
    pub fn new(value: u64) -> ServerTransactionId {
        ServerTransactionId(value)
    }
}

/// A dialog as the gateway keys it: Call-ID and the gateway's own tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DialogKey {
    pub call_id: String,
    pub local_tag: String,
}

/// What the endpoint tells a transaction's owner.
#[derive(Debug)]
pub enum SipEvent {
    /// A request inside one of the owner's dialogs (BYE, re-INVITE, INFO, UPDATE, ...), or the
    /// initial INVITE handed over by the dispatcher.
    Request {
        server: ServerTransactionId,
        request: Request,
        source: SocketAddr,
    },
    /// An ACK for a 2xx the owner sent (it has no transaction of its own, §17.1.1.3).
    Ack { request: Request },
    /// A response to one of the owner's client transactions, keyed by its branch.
    Response { branch: String, response: Response },
    /// A client transaction got no final response (Timer B/F): treat as 408 (§8.1.3.1).
    Timeout { branch: String, method: Method },
    /// The INVITE server transaction was cancelled; the endpoint already answered the CANCEL.
    Cancelled { server: ServerTransactionId },
    /// A 2xx was retransmitted for 64*T1 without an ACK (§13.3.1.4): end the session.
    AckTimeout { server: ServerTransactionId },
}

/// A Via for a request the gateway originates over `target` (§8.1.1.7 branch magic cookie,
/// RFC 3581 rport so responses come back to our port through NAT).
pub fn via_for(local: SocketAddr, target: Target, branch: &str) -> String {
    let host = match local.ip() {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    };
    format!(
        "SIP/2.0/{} {}:{};branch={};rport",
        target.via_transport(),
        host,
        local.port(),
        branch
    )
}
