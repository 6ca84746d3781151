//! SIP: the wire format ([`message`], [`sdp`]), RFC 3261 transactions and the transaction
//! layer ([`transaction`]), dialogs ([`dialog`]), the sockets ([`transport`]), the driver that
//! feeds the layer sockets and time ([`endpoint`]), the layer's overload detector
//! ([`overload`]) and the guard that decides who may talk to it at all ([`guard`]).

pub mod auth;
pub mod dialog;
pub mod digest_client;
pub mod endpoint;
pub mod guard;
pub mod hep;
pub mod message;
pub mod overload;
pub mod registration;
pub mod sdp;
pub mod session_timer;
pub mod target;
pub mod tls;
pub mod transaction;
pub mod transport;
