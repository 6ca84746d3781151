//! One party's media state: what its endpoint negotiated, where it really sends from (the
//! latch, symmetric RTP), the stream we send it, its SRTP, and what it takes part in (digits,
//! a playback, the conference). Pure: no sockets, no clock.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::ids::IdGenerator;
use crate::media::mixer::JitterBuffer;
use crate::media::relay::dtmf::Detector;
use crate::media::relay::playback::Playback;
use crate::media::relay::srtp_session::SrtpSession;
use crate::media::rtp::StreamRewriter;
use crate::media::LegMedia;

/// A leg's RTP socket stays connected to its latched source while RTP keeps coming from it;
/// after this long without any, it is disconnected so that a new source port (a NAT rebinding)
/// can be latched.
pub(super) const RELATCH_AFTER: Duration = Duration::from_secs(2);

/// Per-party state: what the endpoint negotiated, where it really sends from, and the stream
/// we send it.
pub(super) struct Side {
    pub(super) media: Option<LegMedia>,
    pub(super) rtp_source: Option<SocketAddr>,
    pub(super) rtcp_source: Option<SocketAddr>,
    /// The address the party's RTP socket is connected to, if any.
    pub(super) connected: Option<SocketAddr>,
    /// When RTP last arrived from the latched source.
    pub(super) heard: Instant,
    /// The party has its sockets (false once given back, [`crate::media::relay::RelayHandle::remove_party`]).
    pub(super) attached: bool,
    /// Telephone-events from this endpoint are detected, not relayed.
    pub(super) detect_digits: bool,
    pub(super) digits: Detector,
    /// Ringback we play to this endpoint.
    pub(super) playback: Option<Playback>,
    /// The party is in the call's audio (legs A and B from the start, guests once they join).
    pub(super) in_call: bool,
    /// Not heard by the others.
    pub(super) muted: bool,
    /// Hears only what we play it (the other side's audio is dropped on its way here).
    pub(super) isolated: bool,
    /// While mixing: the party's input, and the timestamp of our next mixed packet to it.
    pub(super) jitter: Option<Box<JitterBuffer>>,
    pub(super) mix_timestamp: u32,
    /// The next mixed packet is the first since relaying: marked (RFC 3550 §5.1).
    pub(super) mix_fresh: bool,
    /// The previous endpoint's source after a [`crate::media::MediaCommand::Replace`], refused
    /// until the instant given: its stream must not take over the leg from the new endpoint.
    pub(super) refused: Option<(SocketAddr, Instant)>,
    pub(super) towards: StreamRewriter,
    /// The leg's SRTP contexts, when it is encrypted.
    pub(super) srtp: Option<Box<SrtpSession>>,
}

impl Side {
    pub(super) fn new(ids: &mut IdGenerator, now: Instant) -> Side {
        Side {
            media: None,
            rtp_source: None,
            rtcp_source: None,
            connected: None,
            heard: now,
            attached: true,
            detect_digits: false,
            digits: Detector::default(),
            playback: None,
            in_call: true,
            muted: false,
            isolated: false,
            jitter: None,
            mix_timestamp: 0,
            mix_fresh: false,
            refused: None,
            towards: StreamRewriter::new(ids.ssrc(), ids.u16(), ids.next_u64() as u32, 8000),
            srtp: None,
        }
    }

    /// What the party's RTP socket should be connected to by `now`, when that differs from
    /// what it is: the latched source while it is heard from, else nothing. Why connect at
    /// all: the kernel then sends with the route it cached at connect time instead of looking
    /// one up per datagram (about 10 % of the relay's CPU per packet, measured), and it turns
    /// away datagrams from any other source before they reach us.
    pub(super) fn wanted_connection(&self, now: Instant) -> Option<Option<SocketAddr>> {
        let wanted = self
            .rtp_source
            .filter(|_| now.duration_since(self.heard) < RELATCH_AFTER);
        (wanted != self.connected).then_some(wanted)
    }

    pub(super) fn configure(&mut self, media: LegMedia) {
        let moved =
            self.media.and_then(|m| m.remote).map(|a| a.ip()) != media.remote.map(|a| a.ip());
        if moved {
            // A new address in SDP (re-INVITE from elsewhere): latch afresh.
            self.rtp_source = None;
            self.rtcp_source = None;
        }
        self.srtp = SrtpSession::update(self.srtp.take(), media.srtp);
        self.media = Some(media);
    }

    /// A new endpoint on this leg: forget the old one's sources.
    pub(super) fn replace(&mut self, media: LegMedia, now: Instant) {
        self.refused = self.rtp_source.map(|source| (source, now + RELATCH_AFTER));
        self.rtp_source = None;
        self.rtcp_source = None;
        self.digits.reset();
        self.srtp = SrtpSession::update(self.srtp.take(), media.srtp);
        self.media = Some(media);
    }

    /// The party's media, if an RTP packet from `source` is the party's: it has media, the
    /// source is not the replaced endpoint's while that is refused, and it is latched (see
    /// [`Side::latch`]).
    pub(super) fn accepted_rtp(&mut self, source: SocketAddr, now: Instant) -> Option<LegMedia> {
        let media = self.media?;
        let refused = self
            .refused
            .is_some_and(|(refused, until)| refused == source && now < until);
        (!refused && Side::latch(&mut self.rtp_source, &media, source)).then_some(media)
    }

    /// Symmetric RTP: the first source is latched; a later one only if it has the signalled
    /// IP (the port may change behind NAT). Returns whether to accept the packet.
    pub(super) fn latch(
        latched: &mut Option<SocketAddr>,
        media: &LegMedia,
        source: SocketAddr,
    ) -> bool {
        match *latched {
            Some(current) if current == source => true,
            None => {
                *latched = Some(source);
                true
            }
            Some(_) if media.remote.is_some_and(|r| r.ip() == source.ip()) => {
                *latched = Some(source);
                true
            }
            Some(_) => false,
        }
    }

    pub(super) fn rtp_destination(&self) -> Option<SocketAddr> {
        let media = self.media?;
        if !media.receives {
            return None;
        }
        self.rtp_source.or(media.remote)
    }

    pub(super) fn rtcp_destination(&self) -> Option<SocketAddr> {
        let media = self.media?;
        self.rtcp_source.or_else(|| {
            media
                .remote
                .map(|r| SocketAddr::new(r.ip(), r.port().wrapping_add(1)))
        })
    }
}
