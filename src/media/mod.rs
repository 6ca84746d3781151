//! Media: what the call model asks of the relay (this file), the codec vocabulary SDP and the
//! config use too ([`codec`]), the pure per-packet parts ([`g711`], [`rtp`], [`srtp`],
//! [`mixer`]) and the parts that own sockets or files ([`ports`], [`relay`], [`recording`]).
//! Media imports no other room but ids, metrics, limits and calendar: signalling depends on it, never
//! the other way.

pub mod codec;
pub mod g711;
pub mod mixer;
pub mod ports;
pub mod prompt;
pub mod recording;
pub mod relay;
pub mod rtp;
pub mod srtp;

use std::net::SocketAddr;

use crate::media::codec::Codec;

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

/// The most parties one call's media holds: legs A and B and up to six conference guests.
pub const MAX_PARTIES: usize = 8;

/// One party of a call's media, as the relay knows it: 0 and 1 are the call's legs A and B as
/// first set up, 2 and up conference guests. When a guest takes over a leg whose party left,
/// the call model goes on addressing the guest's party; the relay never renumbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Party(u8);

impl Party {
    pub const A: Party = Party(0);
    pub const B: Party = Party(1);

    /// The `n`-th conference guest (0-based), if within [`MAX_PARTIES`].
    pub fn guest(n: usize) -> Option<Party> {
        Party::from_index(n.checked_add(2)?)
    }

    /// The party at relay index `index`, if within [`MAX_PARTIES`].
    pub fn from_index(index: usize) -> Option<Party> {
        (index < MAX_PARTIES).then_some(Party(index as u8))
    }

    pub fn index(self) -> usize {
        usize::from(self.0)
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
    /// SRTP keys (RFC 3711, from SDES), when the leg is encrypted.
    pub srtp: Option<srtp::Keys>,
    /// Whether the endpoint wants media from us (false when it put the call on hold:
    /// sendonly or inactive, RFC 3264 §8.4).
    pub receives: bool,
}

/// Commands from the call model to its relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaCommand {
    /// A party's offer/answer completed or changed.
    Configure(Party, LegMedia),
    /// Another endpoint took over the leg (a transfer target answered): configure it and
    /// latch afresh. The other leg's stream from us goes on unchanged (same SSRC, continuous
    /// sequence numbers and timestamps), so the party who stays notices nothing.
    Replace(Party, LegMedia),
    /// The call is answered: from now on, silence on both legs for the inactivity timeout
    /// ends the call.
    Answered,
    /// Whether RFC 4733 telephone-events from this leg are taken out of the stream and reported
    /// as [`relay::MediaEvent::Digit`] (an agent's leg with hotkeys) instead of relayed.
    DetectDigits(Party, bool),
    /// Play one DTMF digit to this leg's endpoint as an RFC 4733 event in our stream to it.
    SendDigit(Party, char),
    /// Start (Some) or stop (None) playing to this leg's endpoint, in our stream to it, in
    /// place of the other side: ringback or an announcement (a citizen waiting for a transfer
    /// target after the agent left).
    Announce(Party, Option<prompt::Announcement>),
    /// The party joins the call's audio (a conference guest that answered). With three or
    /// more parties in, the relay mixes: each hears the others (N-1), on a 20 ms clock, in its
    /// own continuous stream; with two, it relays between them as usual.
    Join(Party),
    /// The party leaves the call's audio (it hung up, or was handed over).
    Leave(Party),
    /// A muted conference party is not heard by the others (it still hears them); muting
    /// ends with the mixing.
    Mute(Party, bool),
    /// While on, the party hears only what we play it (a whisper, an announcement): the
    /// other side's audio is not relayed to it and does not end the playback.
    Isolate(Party, bool),
    /// Record the call from now on: what party A (the caller) says on the left, what it
    /// hears on the right, into this recording ([`recording`]).
    Record(recording::RecordingSink),
}
