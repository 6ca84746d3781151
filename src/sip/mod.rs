//! SIP: the wire format ([`message`], [`sdp`]), RFC 3261 transactions ([`transaction`]) and
//! dialogs ([`dialog`]), the sockets ([`transport`]) and the driver that joins them
//! ([`endpoint`]).

pub mod dialog;
pub mod endpoint;
pub mod message;
pub mod sdp;
pub mod transaction;
pub mod transport;
