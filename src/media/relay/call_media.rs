//! One call's media, sans-IO: every party's [`Side`], whether the call relays between two
//! parties or mixes three or more ([`conference`]), and what each packet becomes.
//!
//! The worker hands in what it received, [`CallMedia::on_packet`]`(now, party, socket,
//! source, packet, protected)`, and performs the [`PacketOutcome`]: send bytes of the packet (or of
//! `protected`, where SRTP protected them) from a party's socket to an address, or count why not.
//! Generated packets (ringback or an announcement, a digit we play, the mixer's frames) go out
//! through a `send` function the worker passes in; playbacks and the mixer's frames are due by
//! [`CallMedia::poll_timeout`], a played digit goes at once. No sockets, no clock,
//! no allocation per packet: the packet is rewritten in the worker's buffer.
//!
//! Per relayed RTP packet: latch the party's real source (symmetric RTP, for NAT; another
//! port of the signalled IP may take over), demultiplex RTCP on the RTP
//! port (RFC 5761 §4), take RFC 4733 events out when the party's digits are detected, map the
//! payload type to the other leg's, transcode PCMU<->PCMA where the legs differ, rewrite
//! SSRC/sequence/timestamp into our continuous stream, and protect last (RFC 3711).

mod conference;
mod side;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use super::dtmf::{self, Detected};
use super::playback::{Playback, PLAYBACK_PACKET};
use super::srtp_session::{is_rtcp, SrtpSession};
use super::PACKET_TIME;
use crate::ids::IdGenerator;
use crate::media::codec::Codec;
use crate::media::g711::{transcode_in_place, Transcode};
use crate::media::mixer::JitterBuffer;
use crate::media::prompt::Announcement;
use crate::media::recording::{Channel, RecordingSink, Tap};
use crate::media::rtp::{classify, rewrite_rtcp_ssrc, set_payload_type, PacketKind};
use crate::media::srtp::SrtpError;
use crate::media::{LegMedia, Party};
use crate::metrics::{Counter, Metrics};
use side::Side;

/// Comfort noise (RFC 3389) passes through whatever was negotiated.
const COMFORT_NOISE: u8 = 13;

/// Which of a party's two sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Socket {
    Rtp,
    Rtcp,
}

impl Socket {
    /// Its place in a party's socket pair.
    pub(super) fn index(self) -> usize {
        match self {
            Socket::Rtp => 0,
            Socket::Rtcp => 1,
        }
    }
}

/// Where one packet goes: from `party`'s `socket` to `destination`, with `send` on the
/// connected socket when `connected` (the kernel's cached route), else with `send_to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Transmit {
    pub(super) party: usize,
    pub(super) socket: Socket,
    pub(super) destination: SocketAddr,
    pub(super) connected: bool,
}

/// Which bytes a [`Transmit`] sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Payload {
    /// The first `n` bytes of the packet itself (plain RTP), rewritten in place.
    Plain(usize),
    /// The first `n` bytes of the protection buffer (SRTP protected it there).
    Protected(usize),
}

impl Payload {
    /// The bytes to send, from the packet or the protection buffer.
    pub(super) fn bytes<'a>(self, packet: &'a [u8], protected: &'a [u8]) -> &'a [u8] {
        match self {
            Payload::Plain(n) => packet.get(..n).unwrap_or_default(),
            Payload::Protected(n) => protected.get(..n).unwrap_or_default(),
        }
    }
}

/// What became of one received packet; the worker sends it or counts it.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PacketOutcome {
    /// Relayed: send it.
    Send(Transmit, Payload),
    /// Not relayed (an unlatched source, a payload type the other leg did not negotiate, no
    /// destination, an SRTP sender that may not send): one of the call's drops.
    Dropped,
    /// SRTP did not accept it (forged, replayed, or not SRTP at all): not media, so it neither
    /// counted as activity nor latched. `rtp`: an RTP packet on the RTP port, which counts
    /// among the call's drops too.
    SrtpRejected { error: SrtpError, rtp: bool },
    /// From a party that is not one of the two relayed (a guest that has not joined, or has
    /// left): counted in the gateway's drops, not the call's.
    Unpaired,
    /// Into the party's jitter buffer, for the conference: counted as relayed.
    Mixed,
    /// Too late or a duplicate for the jitter buffer.
    Late,
    /// The first packet of an RFC 4733 event from a party whose digits are reported.
    Digit(Party, char),
    /// Taken out of the stream: an event's repeats, comfort noise or RTCP in a conference.
    Consumed,
    /// Nothing to do and nothing to count.
    Ignored,
}

impl PacketOutcome {
    /// Whether the latch's connection should follow the packet's source: every outcome but
    /// an SRTP rejection, an unpaired party or an ignored packet (a packet the latch itself
    /// turned away is `Dropped` and still counts here, as the relay always did).
    pub(super) fn passed_latch_check(self) -> bool {
        !matches!(
            self,
            PacketOutcome::SrtpRejected { .. } | PacketOutcome::Unpaired | PacketOutcome::Ignored
        )
    }
}

/// Counts flushed to the shared metrics in batches, so the packet path touches no shared
/// cache line per packet.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub(super) relayed: u64,
    pub(super) rtcp: u64,
    pub(super) dropped: u64,
    pub(super) mixer_ticks: u64,
    pub(super) mixer_late_ticks: u64,
    pub(super) mixer_lateness_micros: u64,
    pub(super) jitter_dropped: u64,
    pub(super) jitter_concealed: u64,
    pub(super) srtp_rejected: u64,
}

impl Tally {
    pub(super) fn flush(&mut self, metrics: &Metrics) {
        for (counter, value) in [
            (Counter::MixerTicks, &mut self.mixer_ticks),
            (Counter::MixerLateTicks, &mut self.mixer_late_ticks),
            (
                Counter::MixerLatenessMicroseconds,
                &mut self.mixer_lateness_micros,
            ),
            (Counter::JitterDropped, &mut self.jitter_dropped),
            (Counter::JitterConcealed, &mut self.jitter_concealed),
            (Counter::SrtpRejected, &mut self.srtp_rejected),
        ] {
            if *value > 0 {
                metrics.add(counter, std::mem::take(value));
            }
        }
        metrics.add(
            Counter::RtpPacketsRelayed,
            std::mem::take(&mut self.relayed),
        );
        metrics.add(Counter::RtcpPacketsRelayed, std::mem::take(&mut self.rtcp));
        metrics.add(
            Counter::RtpPacketsDropped,
            std::mem::take(&mut self.dropped),
        );
    }
}

/// One call's media state.
pub(super) struct CallMedia {
    sides: Vec<Side>,
    /// For guests' streams (random SSRC, first sequence number and timestamp).
    ids: IdGenerator,
    /// The two parties relayed to each other (exactly two in the call's audio).
    pair: Option<(usize, usize)>,
    /// Mixing (three or more in): when the next tick is due.
    next_tick: Option<Instant>,
    answered: bool,
    last_activity: Instant,
    inactivity: Duration,
    /// The recording's tap, when the call is recorded: party A's two directions.
    recording: Option<Box<Tap>>,
}

impl CallMedia {
    /// A call of two parties (legs A and B), relayed to each other.
    pub(super) fn new(mut ids: IdGenerator, inactivity: Duration, now: Instant) -> CallMedia {
        // Guests' sides are added with their sockets (most calls never have one).
        let sides = vec![Side::new(&mut ids, now), Side::new(&mut ids, now)];
        CallMedia {
            sides,
            ids,
            pair: Some((0, 1)),
            next_tick: None,
            answered: false,
            last_activity: now,
            inactivity,
            recording: None,
        }
    }

    /// The worker took the call on: inactivity counts from `now`.
    pub(super) fn started(&mut self, now: Instant) {
        self.last_activity = now;
    }

    /// A guest's side at `index`: the next one, or one given back earlier. Out of the call's
    /// audio until it joins.
    pub(super) fn add_party(&mut self, index: usize, now: Instant) {
        let mut side = Side::new(&mut self.ids, now);
        side.in_call = false;
        match self.sides.get_mut(index) {
            Some(slot) => *slot = side,
            None => self.sides.push(side),
        }
    }

    /// A party's sockets were given back.
    pub(super) fn remove_party(&mut self, index: usize, now: Instant) {
        if let Some(side) = self.sides.get_mut(index) {
            side.attached = false;
            side.in_call = false;
            side.isolated = false;
            side.media = None;
            side.jitter = None;
            side.playback = None;
        }
        let _ = self.update_mode(now);
    }

    /// [`crate::media::MediaCommand::Configure`] and
    /// [`crate::media::MediaCommand::Replace`]: the worker then follows the latch
    /// ([`CallMedia::wanted_connection`]).
    pub(super) fn configure(&mut self, party: Party, media: LegMedia, replace: bool, now: Instant) {
        let Some(side) = self.sides.get_mut(party.index()) else {
            return;
        };
        if replace {
            side.replace(media, now);
        } else {
            side.configure(media);
        }
    }

    pub(super) fn answered(&mut self, now: Instant) {
        self.answered = true;
        self.last_activity = now;
    }

    pub(super) fn detect_digits(&mut self, party: Party, on: bool) {
        if let Some(side) = self.sides.get_mut(party.index()) {
            side.detect_digits = on;
        }
    }

    /// [`crate::media::MediaCommand::Announce`]: play `announcement` to the party in place
    /// of the other side (None: stop).
    pub(super) fn announce(
        &mut self,
        party: Party,
        announcement: Option<&Announcement>,
        now: Instant,
    ) {
        if let Some(side) = self.sides.get_mut(party.index()) {
            side.playback = match (announcement, side.media) {
                (Some(announcement), Some(media)) => Some(Playback::new(&media, announcement, now)),
                _ => None,
            };
        }
    }

    /// [`crate::media::MediaCommand::Join`] and [`crate::media::MediaCommand::Leave`].
    pub(super) fn join(&mut self, party: Party, join: bool, now: Instant) {
        if let Some(side) = self.sides.get_mut(party.index()) {
            side.in_call = join;
            if !join {
                side.playback = None;
            }
        }
        let _ = self.update_mode(now);
    }

    /// [`crate::media::MediaCommand::Record`].
    pub(super) fn record(&mut self, sink: RecordingSink) {
        self.recording = Some(Box::new(Tap::new(sink)));
    }

    pub(super) fn mute(&mut self, party: Party, on: bool) {
        if let Some(side) = self.sides.get_mut(party.index()) {
            side.muted = on;
        }
    }

    /// [`crate::media::MediaCommand::Isolate`].
    pub(super) fn isolate(&mut self, party: Party, on: bool) {
        if let Some(side) = self.sides.get_mut(party.index()) {
            side.isolated = on;
        }
    }

    /// What `party`'s RTP socket should be connected to by `now`, when that changes (see
    /// [`Side::wanted_connection`]); tell [`CallMedia::connected`] once done.
    pub(super) fn wanted_connection(
        &self,
        party: usize,
        now: Instant,
    ) -> Option<Option<SocketAddr>> {
        self.sides.get(party)?.wanted_connection(now)
    }

    /// `party`'s RTP socket is now connected to `address` (None: disconnected).
    pub(super) fn connected(&mut self, party: usize, address: Option<SocketAddr>) {
        if let Some(side) = self.sides.get_mut(party) {
            side.connected = address;
        }
    }

    /// Whether the call has just gone inactive: answered, and no RTP or RTCP for the
    /// inactivity timeout. Reported once.
    pub(super) fn poll_inactive(&mut self, now: Instant) -> bool {
        if self.answered && now.duration_since(self.last_activity) >= self.inactivity {
            self.answered = false;
            return true;
        }
        false
    }

    /// When the next generated packet (a playback's, a mixer tick) is due, if any is.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.sides
            .iter()
            .filter_map(|side| side.playback.as_ref().map(Playback::next_due))
            .chain(self.next_tick)
            .min()
    }

    /// Sends what is due by `now`: playbacks' packets, then the mixer's ticks. `protected` is
    /// room for SRTP; `send` performs a [`Transmit`] and says whether it went out.
    pub(super) fn handle_timeout(
        &mut self,
        now: Instant,
        protected: &mut [u8],
        send: &mut impl FnMut(&Transmit, &[u8]) -> bool,
        tally: &mut Tally,
    ) {
        self.play(now, protected, send, tally);
        if self.next_tick.is_some() {
            self.mix_due(now, protected, send, tally);
        }
    }

    /// Sends the packets that are due on every side that plays something.
    fn play(
        &mut self,
        now: Instant,
        protected: &mut [u8],
        send: &mut impl FnMut(&Transmit, &[u8]) -> bool,
        tally: &mut Tally,
    ) {
        let recording = &mut self.recording;
        for (index, side) in self.sides.iter_mut().enumerate() {
            let destination = side.rtp_destination().filter(|_| side.attached);
            let connected = side.connected;
            let Some(playback) = side.playback.as_mut() else {
                continue;
            };
            let mut packet = [0u8; PLAYBACK_PACKET];
            while playback.poll_packet(now, &mut side.towards, &mut packet) {
                let Some(destination) = destination else {
                    continue;
                };
                if let (0, Some(tap), Some(media)) = (index, recording.as_deref_mut(), side.media) {
                    // The caller hears it: it is in the recording.
                    record_rtp(tap, now, Channel::Heard, media.codec, &packet);
                }
                let Some(payload) = seal(&mut side.srtp, &packet, protected) else {
                    continue;
                };
                let transmit = rtp_transmit(index, destination, connected);
                if send(&transmit, payload.bytes(&packet, protected)) {
                    tally.relayed += 1;
                }
            }
        }
    }

    /// Plays `digit` to `party`'s endpoint as one RFC 4733 event of 100 ms in our stream to
    /// it ([`dtmf::event_packets`]), all with the event's timestamp, numbered into the stream
    /// so the endpoint sees no gap or repeat.
    pub(super) fn send_digit(
        &mut self,
        party: Party,
        digit: char,
        now: Instant,
        protected: &mut [u8],
        send: &mut impl FnMut(&Transmit, &[u8]) -> bool,
        tally: &mut Tally,
    ) {
        let Some(side) = self.sides.get_mut(party.index()).filter(|s| s.attached) else {
            return;
        };
        let (Some(code), Some(media), Some(destination)) =
            (dtmf::event_code(digit), side.media, side.rtp_destination())
        else {
            return;
        };
        let Some(payload_type) = media.telephone_event else {
            return;
        };
        let timestamp = side.towards.timestamp_at(now);
        for mut packet in dtmf::event_packets(payload_type, code) {
            side.towards.stamp_generated(&mut packet, timestamp, now);
            let transmit = rtp_transmit(party.index(), destination, side.connected);
            let sent = seal(&mut side.srtp, &packet, protected)
                .is_some_and(|payload| send(&transmit, payload.bytes(&packet, protected)));
            if sent {
                tally.relayed += 1;
            } else {
                tally.dropped += 1;
            }
        }
    }

    /// One datagram received on `party`'s `socket` from `source`: `packet` is exactly what
    /// was received, rewritten in place; `protected` is room for SRTP to protect it into.
    pub(super) fn on_packet(
        &mut self,
        now: Instant,
        party: usize,
        socket: Socket,
        source: SocketAddr,
        packet: &mut [u8],
        protected: &mut [u8],
    ) -> PacketOutcome {
        let Some(from) = Party::from_index(party) else {
            return PacketOutcome::Ignored;
        };
        let mut length = packet.len();
        if let Some(srtp) = self
            .sides
            .get_mut(party)
            .and_then(|s| s.srtp.as_mut())
            .filter(|s| s.is_active())
        {
            match srtp.unprotect(packet) {
                Ok(plain) => length = plain,
                Err(error) => {
                    // The call's packet counts are RTP's (RTCP drops never counted there).
                    let rtp = socket == Socket::Rtp && !is_rtcp(packet);
                    return PacketOutcome::SrtpRejected { error, rtp };
                }
            }
        }
        let Some(packet) = packet.get_mut(..length) else {
            return PacketOutcome::Ignored;
        };
        self.last_activity = now;
        if self.next_tick.is_some() {
            // A mixer terminates RTCP (RFC 3550 §7.3): the parties' reports are not passed on.
            if socket == Socket::Rtcp {
                return PacketOutcome::Ignored;
            }
            let outcome = self.conference_rtp(from, packet, source, now);
            self.heard(party, source, now);
            return outcome;
        }
        let to = match self.pair {
            Some((a, b)) if a == party => b,
            Some((a, b)) if b == party => a,
            _ => {
                self.record_alone(party, socket, source, packet, now);
                return PacketOutcome::Unpaired;
            }
        };
        let Some((incoming, outgoing)) = pair_mut(&mut self.sides, party, to) else {
            return PacketOutcome::Ignored;
        };
        if !outgoing.attached {
            self.record_alone(party, socket, source, packet, now);
            return PacketOutcome::Ignored;
        }
        match socket {
            Socket::Rtp => {
                let arrival = Arrival { from, source, now };
                // Only the caller's (party A's) two directions are recorded.
                let tap = self
                    .recording
                    .as_deref_mut()
                    .filter(|_| party == 0 || to == 0);
                let outcome = relay_rtp(incoming, outgoing, to, packet, protected, arrival, tap);
                self.heard(party, source, now);
                outcome
            }
            Socket::Rtcp => relay_rtcp(incoming, outgoing, to, packet, protected, source),
        }
    }

    /// The caller speaking while nobody is there to hear it (the agent left and the transfer
    /// target or guest still rings): recorded all the same, from its latched source only.
    fn record_alone(
        &mut self,
        party: usize,
        socket: Socket,
        source: SocketAddr,
        packet: &[u8],
        now: Instant,
    ) {
        let (0, Socket::Rtp, Some(tap), Some(side)) = (
            party,
            socket,
            self.recording.as_deref_mut(),
            self.sides.first(),
        ) else {
            return;
        };
        let Some(media) = side.media.filter(|_| side.rtp_source == Some(source)) else {
            return;
        };
        let audio = classify(packet) == PacketKind::Rtp
            && packet
                .get(1)
                .is_some_and(|b| b & 0x7f == media.payload_type);
        if audio {
            record_rtp(tap, now, Channel::Said, media.codec, packet);
        }
    }

    /// After an RTP packet from `source` on `party`: it was heard from, if it is the latched
    /// source (the latch's connection stays while it is).
    fn heard(&mut self, party: usize, source: SocketAddr, now: Instant) {
        if let Some(side) = self.sides.get_mut(party) {
            if side.rtp_source == Some(source) {
                side.heard = now;
            }
        }
    }

    /// Relays between the two parties in, or mixes when three or more are: returns true when
    /// mixing has just started.
    fn update_mode(&mut self, now: Instant) -> bool {
        let mut members = self
            .sides
            .iter()
            .enumerate()
            .filter(|(_, s)| s.in_call)
            .map(|(i, _)| i);
        let (first, second, third) = (members.next(), members.next(), members.next());
        if third.is_some() {
            for side in self.sides.iter_mut().filter(|s| s.in_call) {
                if side.jitter.is_none() {
                    side.jitter = Some(Box::new(JitterBuffer::new()));
                    side.mix_timestamp = side.towards.timestamp_at(now);
                    side.mix_fresh = true;
                    side.playback = None;
                }
            }
            self.pair = None;
            let started = self.next_tick.is_none();
            if started {
                self.next_tick = Some(now + PACKET_TIME);
            }
            return started;
        }
        if self.next_tick.take().is_some() {
            for side in &mut self.sides {
                side.jitter = None;
                // Muting is a conference's: relayed again, everyone is heard.
                side.muted = false;
                // Relayed packets continue our stream from the last mixed one.
                side.towards.mark_source_change();
            }
        }
        self.pair = first.zip(second);
        false
    }
}

/// An RTP transmit from `party`'s RTP socket.
fn rtp_transmit(party: usize, destination: SocketAddr, connected: Option<SocketAddr>) -> Transmit {
    Transmit {
        party,
        socket: Socket::Rtp,
        destination,
        connected: connected == Some(destination),
    }
}

/// The bytes to send for `packet`: itself when the side's leg is plain, protected into
/// `protected` when it is encrypted; None when its SRTP may not send.
fn seal(
    srtp: &mut Option<Box<SrtpSession>>,
    packet: &[u8],
    protected: &mut [u8],
) -> Option<Payload> {
    match srtp.as_mut().filter(|s| s.is_active()) {
        None => Some(Payload::Plain(packet.len())),
        Some(session) => session.protect(packet, protected).map(Payload::Protected),
    }
}

/// Two distinct sides, mutably.
fn pair_mut(sides: &mut [Side], first: usize, second: usize) -> Option<(&mut Side, &mut Side)> {
    if first == second || first.max(second) >= sides.len() {
        return None;
    }
    if first < second {
        let (low, high) = sides.split_at_mut(second);
        Some((&mut low[first], &mut high[0]))
    } else {
        let (low, high) = sides.split_at_mut(first);
        Some((&mut high[0], &mut low[second]))
    }
}

/// Who sent a packet, from where, when.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    from: Party,
    source: SocketAddr,
    now: Instant,
}

/// One RTP packet received from `incoming`, for `outgoing` (party `to`); `tap` records it
/// when the call is recorded and one of the two is the caller.
fn relay_rtp(
    incoming: &mut Side,
    outgoing: &mut Side,
    to: usize,
    packet: &mut [u8],
    protected: &mut [u8],
    arrival: Arrival,
    mut tap: Option<&mut Tap>,
) -> PacketOutcome {
    let Arrival { from, source, now } = arrival;
    let Some(in_media) = incoming.accepted_rtp(source, now) else {
        return PacketOutcome::Dropped;
    };
    match classify(packet) {
        PacketKind::Rtp => {}
        // RFC 5761 rtcp-mux on the RTP port.
        PacketKind::Rtcp => {
            let Some(destination) = outgoing.rtp_destination() else {
                return PacketOutcome::Dropped;
            };
            rewrite_rtcp_ssrc(packet, outgoing.towards.ssrc());
            return match seal(&mut outgoing.srtp, packet, protected) {
                Some(payload) => {
                    PacketOutcome::Send(rtp_transmit(to, destination, outgoing.connected), payload)
                }
                None => PacketOutcome::Dropped,
            };
        }
        PacketKind::Unknown => return PacketOutcome::Dropped,
    }
    let payload_type = packet[1] & 0x7f;
    if from == Party::A && payload_type == in_media.payload_type {
        if let Some(tap) = tap.as_deref_mut() {
            // What the caller says is recorded whether or not the other side takes it (hold).
            record_rtp(tap, now, Channel::Said, in_media.codec, packet);
        }
    }
    let (Some(out_media), Some(destination)) = (outgoing.media, outgoing.rtp_destination()) else {
        return PacketOutcome::Dropped;
    };
    if incoming.detect_digits && Some(payload_type) == in_media.telephone_event {
        return detected(incoming.digits.detect(packet), from);
    }
    if outgoing.isolated {
        // It hears only what we play it now (a whisper before the bridge).
        return PacketOutcome::Dropped;
    }
    if Some(payload_type) == in_media.telephone_event {
        match out_media.telephone_event {
            Some(out_type) => set_payload_type(packet, out_type),
            None => return PacketOutcome::Dropped,
        }
    } else if payload_type == in_media.payload_type {
        if in_media.codec != out_media.codec {
            let Some(range) = payload_range(packet) else {
                return PacketOutcome::Dropped;
            };
            let direction = match in_media.codec {
                Codec::Pcmu => Transcode::UlawToAlaw,
                Codec::Pcma => Transcode::AlawToUlaw,
            };
            transcode_in_place(&mut packet[range], direction);
        }
        set_payload_type(packet, out_media.payload_type);
    } else if payload_type != COMFORT_NOISE {
        return PacketOutcome::Dropped;
    }
    if outgoing.towards.rewrite(packet, now).is_err() {
        return PacketOutcome::Dropped;
    }
    if to == 0 && packet[1] & 0x7f == out_media.payload_type {
        if let Some(tap) = tap {
            // What the caller hears: the other side's audio, in the caller's codec.
            record_rtp(tap, now, Channel::Heard, out_media.codec, packet);
        }
    }
    // Real media for this endpoint takes over from anything we were playing it.
    outgoing.playback = None;
    match seal(&mut outgoing.srtp, packet, protected) {
        Some(payload) => {
            PacketOutcome::Send(rtp_transmit(to, destination, outgoing.connected), payload)
        }
        None => PacketOutcome::Dropped,
    }
}

/// One RTCP packet received on `incoming`'s RTCP port, for `outgoing` (party `to`).
fn relay_rtcp(
    incoming: &mut Side,
    outgoing: &mut Side,
    to: usize,
    packet: &mut [u8],
    protected: &mut [u8],
    source: SocketAddr,
) -> PacketOutcome {
    let Some(in_media) = incoming.media else {
        return PacketOutcome::Ignored;
    };
    if classify(packet) != PacketKind::Rtcp
        || !Side::latch(&mut incoming.rtcp_source, &in_media, source)
    {
        return PacketOutcome::Ignored;
    }
    let Some(destination) = outgoing.rtcp_destination() else {
        return PacketOutcome::Ignored;
    };
    rewrite_rtcp_ssrc(packet, outgoing.towards.ssrc());
    let transmit = Transmit {
        party: to,
        socket: Socket::Rtcp,
        destination,
        connected: false,
    };
    match seal(&mut outgoing.srtp, packet, protected) {
        Some(payload) => PacketOutcome::Send(transmit, payload),
        None => PacketOutcome::Ignored,
    }
}

/// An RTP packet's G.711 payload into the recording.
fn record_rtp(tap: &mut Tap, now: Instant, channel: Channel, codec: Codec, packet: &[u8]) {
    if let Some(range) = payload_range(packet) {
        tap.record(now, channel, codec, &packet[range]);
    }
}

/// The outcome of a telephone-event packet from `from`.
fn detected(detected: Detected, from: Party) -> PacketOutcome {
    match detected {
        Detected::Digit(digit) => PacketOutcome::Digit(from, digit),
        Detected::Continued => PacketOutcome::Consumed,
        Detected::Malformed => PacketOutcome::Dropped,
    }
}

/// The payload bytes of an RTP packet: after CSRCs and header extension, before padding
/// (RFC 3550 §5.1, §5.3.1).
pub(super) fn payload_range(packet: &[u8]) -> Option<Range<usize>> {
    let first = *packet.first()?;
    let csrc_count = usize::from(first & 0x0f);
    let mut start = 12 + 4 * csrc_count;
    if first & 0x10 != 0 {
        let words = packet.get(start + 2..start + 4)?;
        start += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    let mut end = packet.len();
    if first & 0x20 != 0 {
        let padding = usize::from(*packet.last()?);
        end = end.checked_sub(padding)?;
    }
    (start <= end).then_some(start..end)
}
