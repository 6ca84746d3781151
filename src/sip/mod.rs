//! SIP: the wire format ([`message`], [`sdp`]), RFC 3261 transactions ([`transaction`]) and
//! dialogs ([`dialog`]), the sockets ([`transport`]), the driver that joins them
//! ([`endpoint`]) and its overload detector ([`overload`]).

pub mod dialog;
pub mod endpoint;
pub mod message;
pub mod overload;
pub mod sdp;
pub mod transaction;
pub mod transport;
