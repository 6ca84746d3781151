//! hotline-gateway: a SIP/RTP back-to-back user agent that links the 12345 government-service
//! hotline and the 110 police desk.
//!
//! Data flows one way: socket -> [`sip::transport`] -> [`sip::endpoint`] (transactions) ->
//! [`call`] (the B2BUA call model, the only place that decides) -> [`routing`] / [`media`] /
//! [`store`] -> transaction -> transport -> socket.
//!
//! | module | holds |
//! |---|---|
//! | [`config`] | the TOML tree, parsed once, validated with file/key/reason errors |
//! | [`sip`] | message grammar, SDP, sans-IO transactions, UDP/TCP transport, endpoint driver |
//! | [`call`] | legs, dialogs and the call state machine (sans-IO), plus the task that drives it |
//! | [`media`] | G.711, RTP rewriting (pure), port allocation and the relay (sockets) |
//! | [`routing`] | number -> peers, source address -> peer |
//! | [`store`] | SQLite call records |
//! | [`metrics`], [`http`] | Prometheus counters and the /healthz, /metrics endpoint |

pub mod config;
pub mod routing;
pub mod sip;
