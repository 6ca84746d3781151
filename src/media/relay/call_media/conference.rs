//! A call of three or more parties: each party's RTP into its jitter buffer, and every 20 ms
//! a frame from each, mixed N-1 ([`crate::media::mixer`]), sent each party in its codec and in
//! the same continuous stream (SSRC, sequence numbers, timestamps) it had while relayed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{
    detected, payload_range, rtp_transmit, seal, CallMedia, PacketOutcome, Side, Tally, Transmit,
    COMFORT_NOISE,
};
use crate::media::mixer::{self, Arrival, Playout, FRAME};
use crate::media::recording::Channel;
use crate::media::relay::PACKET_TIME;
use crate::media::rtp::{classify, PacketKind};
use crate::media::{Party, MAX_PARTIES};

impl CallMedia {
    /// An RTP packet from a conference party: into its jitter buffer, or, for a
    /// telephone-event, reported as a digit (in a conference every party's digits go through
    /// the call model: hotkeys from the agent, the rest played to the other parties).
    pub(super) fn conference_rtp(
        &mut self,
        from: Party,
        packet: &mut [u8],
        source: SocketAddr,
        now: Instant,
    ) -> PacketOutcome {
        let Some(side) = self.sides.get_mut(from.index()) else {
            return PacketOutcome::Dropped;
        };
        let Some(media) = side.accepted_rtp(source, now) else {
            return PacketOutcome::Dropped;
        };
        match classify(packet) {
            PacketKind::Rtp => {}
            PacketKind::Rtcp => return PacketOutcome::Consumed,
            PacketKind::Unknown => return PacketOutcome::Dropped,
        }
        if !side.in_call {
            // A party that left (or has not joined) is neither heard nor lets digits through.
            return PacketOutcome::Consumed;
        }
        let payload_type = packet[1] & 0x7f;
        if Some(payload_type) == media.telephone_event {
            return detected(side.digits.detect(packet), from);
        }
        if payload_type != media.payload_type {
            return if payload_type == COMFORT_NOISE {
                PacketOutcome::Consumed
            } else {
                PacketOutcome::Dropped
            };
        }
        let (Some(jitter), Some(range)) = (side.jitter.as_mut(), payload_range(packet)) else {
            return PacketOutcome::Consumed;
        };
        let mut samples = [0i16; 1024];
        let payload = &packet[range];
        let count = payload.len().min(samples.len());
        mixer::decode(media.codec, &payload[..count], &mut samples[..count]);
        if from == Party::A {
            if let Some(tap) = self.recording.as_deref_mut() {
                tap.record_linear(now, Channel::Said, &samples[..count]);
            }
        }
        let sequence = u16::from_be_bytes([packet[2], packet[3]]);
        let timestamp = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        match jitter.push(now, sequence, timestamp, &samples[..count]) {
            Arrival::Stored | Arrival::Resynced => PacketOutcome::Mixed,
            Arrival::Late | Arrival::Duplicate => PacketOutcome::Late,
        }
    }

    /// Runs the mixer ticks that are due.
    pub(super) fn mix_due(
        &mut self,
        now: Instant,
        protected: &mut [u8],
        send: &mut impl FnMut(&Transmit, &[u8]) -> bool,
        tally: &mut Tally,
    ) {
        let Some(mut due) = self.next_tick else {
            return;
        };
        // After a stall, skip what is long overdue rather than burst it.
        let behind = now.saturating_duration_since(due);
        if behind > PACKET_TIME * 5 {
            let missed = (behind.as_micros() / PACKET_TIME.as_micros()) as u32;
            due += PACKET_TIME * missed;
            tally.mixer_late_ticks += u64::from(missed);
        }
        while due <= now {
            let lateness = now.duration_since(due);
            tally.mixer_ticks += 1;
            tally.mixer_lateness_micros += lateness.as_micros() as u64;
            if lateness > Duration::from_millis(5) {
                tally.mixer_late_ticks += 1;
            }
            self.mix_once(now, protected, send, tally);
            due += PACKET_TIME;
        }
        self.next_tick = Some(due);
    }

    /// One 20 ms tick of a conference: a frame from every party's jitter buffer, N-1 mixing,
    /// and each party's frame sent in its codec in its continuous stream.
    fn mix_once(
        &mut self,
        now: Instant,
        protected: &mut [u8],
        send: &mut impl FnMut(&Transmit, &[u8]) -> bool,
        tally: &mut Tally,
    ) {
        let mut frames = [[0i16; FRAME]; MAX_PARTIES];
        let mut contributing = [false; MAX_PARTIES];
        let mut members = [0usize; MAX_PARTIES];
        let mut count = 0;
        for (index, side) in self.sides.iter_mut().enumerate() {
            if !side.in_call || !side.attached || count == MAX_PARTIES {
                continue;
            }
            contributing[count] = contributes(side, &mut frames[count], tally);
            members[count] = index;
            count += 1;
        }
        let mut outputs = [[0i16; FRAME]; MAX_PARTIES];
        mixer::mix_minus(
            &frames[..count],
            &contributing[..count],
            &mut outputs[..count],
        );
        for (output, index) in outputs.iter().zip(members).take(count) {
            let side = &mut self.sides[index];
            let timestamp = side.mix_timestamp;
            // The stream's clock runs on while the party is on hold.
            side.mix_timestamp = timestamp.wrapping_add(FRAME as u32);
            let (Some(media), Some(destination)) = (side.media, side.rtp_destination()) else {
                continue;
            };
            if let (0, Some(tap)) = (index, self.recording.as_deref_mut()) {
                // What the caller hears in the conference: everyone else, mixed.
                tap.record_linear(now, Channel::Heard, output);
            }
            let mut packet = [0u8; 12 + FRAME];
            packet[0] = 0x80;
            packet[1] = media.payload_type;
            if std::mem::take(&mut side.mix_fresh) {
                packet[1] |= 0x80;
            }
            mixer::encode(media.codec, output, &mut packet[12..]);
            side.towards.stamp_generated(&mut packet, timestamp, now);
            let transmit = rtp_transmit(index, destination, side.connected);
            let sent = seal(&mut side.srtp, &packet, protected)
                .is_some_and(|payload| send(&transmit, payload.bytes(&packet, protected)));
            if sent {
                tally.relayed += 1;
            } else {
                tally.dropped += 1;
            }
        }
    }
}

/// Takes the party's frame for this tick from its jitter buffer into `frame`: whether the
/// others hear it.
fn contributes(side: &mut Side, frame: &mut [i16; FRAME], tally: &mut Tally) -> bool {
    let playout = match side.jitter.as_mut() {
        Some(jitter) => {
            let skipped = jitter.stats().skipped;
            let playout = jitter.pop(frame);
            tally.jitter_dropped += jitter.stats().skipped - skipped;
            playout
        }
        None => Playout::Silence,
    };
    if playout == Playout::Concealed {
        tally.jitter_concealed += 1;
    }
    // On hold (sendonly or inactive, RFC 3264 §8.4) or muted: not heard.
    playout != Playout::Silence && !side.muted && side.media.is_some_and(|m| m.receives)
}
