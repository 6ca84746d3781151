//! Media: what the call model asks of the relay (this file), the pure per-packet parts
//! ([`g711`], [`rtp`]) and the parts that own sockets ([`ports`], [`relay`]).

pub mod g711;
pub mod ports;
pub mod relay;
pub mod rtp;

use std::net::SocketAddr;

use crate::sip::sdp::Codec;

/// The two legs of a bridged call: A is the caller's side, B the called peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Leg {
    A,
    B,
}

impl Leg {
    pub fn other(self) -> Leg {
        match self {
            Leg::A => Leg::B,
            Leg::B => Leg::A,
        }
    }

    pub fn index(self) -> usize {
        match self {
            Leg::A => 0,
            Leg::B => 1,
        }
    }
}

/// What one leg negotiated, as the relay needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegMedia {
    /// Where the endpoint said it receives RTP (None: on hold via 0.0.0.0, or not yet known).
    pub remote: Option<SocketAddr>,
    pub codec: Codec,
    /// The endpoint's payload type for `codec`.
    pub payload_type: u8,
    /// The endpoint's payload type for RFC 4733 telephone-event, if it takes them.
    pub telephone_event: Option<u8>,
    /// Whether the endpoint wants media from us (false when it put the call on hold:
    /// sendonly or inactive, RFC 3264 §8.4).
    pub receives: bool,
}

/// Commands from the call model to its relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaCommand {
    /// A leg's offer/answer completed or changed.
    Configure(Leg, LegMedia),
    /// Another endpoint took over the leg (a transfer target answered): configure it and
    /// latch afresh. The other leg's stream from us goes on unchanged (same SSRC, continuous
    /// sequence numbers and timestamps), so the party who stays notices nothing.
    Replace(Leg, LegMedia),
    /// The call is answered: from now on, silence on both legs for the inactivity timeout
    /// ends the call.
    Answered,
    /// Whether RFC 4733 telephone-events from this leg are taken out of the stream and reported
    /// as [`relay::MediaEvent::Digit`] (an agent's leg with hotkeys) instead of relayed.
    DetectDigits(Leg, bool),
    /// Play one DTMF digit to this leg's endpoint as an RFC 4733 event in our stream to it.
    SendDigit(Leg, char),
    /// Start or stop playing ringback to this leg's endpoint in our stream to it (a citizen
    /// waiting for a transfer target after the agent left).
    Ringback(Leg, bool),
}
