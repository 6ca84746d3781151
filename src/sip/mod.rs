//! SIP: the wire format ([`message`], [`sdp`]), RFC 3261 transactions ([`transaction`]), the
//! sockets ([`transport`]) and the driver that joins them ([`endpoint`]).

pub mod message;
