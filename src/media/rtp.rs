//! RTP/RTCP work on one datagram that needs no socket: demultiplexing RTP from RTCP on a shared
//! port, and the stream rewriter that makes everything the gateway sends towards one endpoint
//! look like one continuous RTP stream.
//!
//! - [`classify`]: RFC 5761 §4 (rtcp-mux). rtp-rs would parse an RTCP packet as RTP with payload
//!   type 72..=76 and the marker bit, so the second byte is checked first.
//! - [`StreamRewriter`]: the gateway anchors media, so towards each endpoint it is the RTP
//!   source (RFC 3550 §3, §8: one SSRC of its own). The media behind it changes (a transfer
//!   replaces the far party; a re-INVITE restarts the far stream), but the endpoint must see one
//!   stream: same SSRC, sequence numbers continuing by one (RFC 3550 §5.1), timestamps advancing
//!   with the real time that passed, and the marker bit on the first packet after the
//!   discontinuity (RFC 3550 §5.1, RFC 3551 §4.1) so its jitter buffer resynchronises.
//! - [`set_payload_type`], [`rewrite_rtcp_ssrc`]: the remaining in-place header edits
//!   (RFC 3550 §5.1, §6.1 compound RTCP).
//!
//! Everything edits the datagram's bytes in place: nothing here allocates on the packet path.

use std::time::Instant;

use rtp_rs::RtpReader;

/// Fixed RTP header: V/P/X/CC, M/PT, sequence number, timestamp, SSRC (RFC 3550 §5.1).
const RTP_HEADER: usize = 12;
/// Smallest RTCP packet: the common header plus the sender SSRC (RFC 3550 §6.4).
const RTCP_MINIMUM: usize = 8;

/// What a datagram on a media port is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketKind {
    Rtp,
    Rtcp,
    Unknown,
}

/// Demultiplexes one datagram (RFC 5761 §4): version 2 is required; a second byte of
/// 192..=223 (RTCP packet types, which as RTP would be payload types 64..=95 with the marker
/// bit) is RTCP if it holds at least a common header and SSRC; anything else is RTP if its
/// header, CSRCs, extension and padding fit in the datagram.
pub fn classify(packet: &[u8]) -> PacketKind {
    let [first, second, ..] = *packet else {
        return PacketKind::Unknown;
    };
    if first >> 6 != 2 {
        return PacketKind::Unknown;
    }
    if (192..=223).contains(&second) {
        return if packet.len() >= RTCP_MINIMUM {
            PacketKind::Rtcp
        } else {
            PacketKind::Unknown
        };
    }
    // rtp-rs checks the 12-byte header, the CSRC list, the extension length and the padding
    // count against the datagram's length.
    match RtpReader::new(packet) {
        Ok(_) => PacketKind::Rtp,
        Err(_) => PacketKind::Unknown,
    }
}

/// Why a packet could not be rewritten (it is then left untouched).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RewriteError {
    /// Shorter than the fixed RTP header plus its CSRC list.
    TooShort,
    /// The version field is not 2.
    NotVersion2,
    /// Far out of the source's numbering and not (yet) confirmed as a restart by the next
    /// packet (RFC 3550 A.1): not sent.
    OutOfSequence,
}

impl std::fmt::Display for RewriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RewriteError::TooShort => f.write_str("packet shorter than its RTP header"),
            RewriteError::NotVersion2 => f.write_str("not RTP version 2"),
            RewriteError::OutOfSequence => f.write_str("far out of the source's sequence"),
        }
    }
}

impl std::error::Error for RewriteError {}

/// The stream the gateway sends towards one endpoint: one SSRC of ours, with sequence numbers
/// and timestamps that continue across every change of the source behind the gateway.
///
/// Within one source the output is the input shifted by fixed offsets (wrapping), so the
/// source's own loss gaps, reordering and timestamp jumps (silence suppression) reach the
/// endpoint unchanged. When the source changes, new offsets are chosen so that the stream
/// continues from the newest packet sent: sequence number + 1 and the timestamp advanced by the
/// wall-clock time since that packet, in clock-rate units.
#[derive(Debug, Clone)]
pub struct StreamRewriter {
    ssrc: u32,
    clock_rate: u32,
    /// SSRC of the source being relayed; None before the first packet and after
    /// [`StreamRewriter::mark_source_change`].
    source: Option<u32>,
    sequence_offset: u16,
    timestamp_offset: u32,
    /// The newest packet sent (by sequence number), to continue from after a source change.
    last_sequence: u16,
    last_timestamp: u32,
    last_arrival: Option<Instant>,
    /// After a packet far out of sequence: the number that confirms a restart if it comes next.
    probation: Option<u16>,
    packets: u64,
}

impl StreamRewriter {
    /// A stream with our `ssrc` whose first packet will carry `first_sequence` and
    /// `first_timestamp` (RFC 3550 §5.1 wants both random), with an RTP clock of `clock_rate` Hz.
    pub fn new(ssrc: u32, first_sequence: u16, first_timestamp: u32, clock_rate: u32) -> Self {
        StreamRewriter {
            ssrc,
            // A zero clock would freeze timestamps; no RTP clock is that slow.
            clock_rate: clock_rate.max(1),
            source: None,
            sequence_offset: 0,
            timestamp_offset: 0,
            // So that "last + 1" is the first sequence number.
            last_sequence: first_sequence.wrapping_sub(1),
            last_timestamp: first_timestamp,
            last_arrival: None,
            probation: None,
            packets: 0,
        }
    }

    /// Our SSRC on this stream (also the sender SSRC for RTCP towards the endpoint).
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Packets rewritten so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// The next packet starts a new source even if it keeps the SSRC: a restarted stream or a
    /// new party may reuse an SSRC with unrelated sequence numbers and timestamps.
    pub fn mark_source_change(&mut self) {
        self.source = None;
    }

    /// Rewrites the SSRC, sequence number and timestamp of the RTP `packet` in place (and sets
    /// the marker bit on the first packet of a new source). `arrival` is when it was received.
    ///
    /// # Errors
    /// [`RewriteError`] if the packet is too short or not version 2; it is then left untouched.
    pub fn rewrite(&mut self, packet: &mut [u8], arrival: Instant) -> Result<(), RewriteError> {
        let Some(header) = packet.get_mut(..RTP_HEADER) else {
            return Err(RewriteError::TooShort);
        };
        if header[0] >> 6 != 2 {
            return Err(RewriteError::NotVersion2);
        }
        let csrc_count = usize::from(header[0] & 0x0f);
        if packet.len() < RTP_HEADER + 4 * csrc_count {
            return Err(RewriteError::TooShort);
        }
        let sequence = u16::from_be_bytes([packet[2], packet[3]]);
        let timestamp = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        let source = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);

        let mut new_source = self.source != Some(source);
        if !new_source {
            // RFC 3550 A.1: more than 3,000 ahead or 100 behind, the source restarted its
            // numbering (or jumped), once the next packet follows on; the first is not sent
            // (a stray one would shift the stream). Then our stream continues from here
            // rather than jump with it: an SRTP receiver would take a jump of 2^15 for a
            // rollover, and our SRTP sender must never go back to indexes it used.
            let ahead = sequence
                .wrapping_add(self.sequence_offset)
                .wrapping_sub(self.last_sequence);
            if ahead > MAX_DROPOUT && ahead < 0u16.wrapping_sub(MAX_MISORDER) {
                if self.probation != Some(sequence) {
                    self.probation = Some(sequence.wrapping_add(1));
                    return Err(RewriteError::OutOfSequence);
                }
                new_source = true;
            }
        }
        self.probation = None;
        if new_source {
            let next_sequence = self.last_sequence.wrapping_add(1);
            let next_timestamp = match self.last_arrival {
                Some(last) => self
                    .last_timestamp
                    .wrapping_add(self.samples_between(last, arrival)),
                None => self.last_timestamp,
            };
            self.sequence_offset = next_sequence.wrapping_sub(sequence);
            self.timestamp_offset = next_timestamp.wrapping_sub(timestamp);
            self.source = Some(source);
            // RFC 3550 §5.1: the marker flags the discontinuity, so the receiver resets its
            // playout point instead of treating the jump as jitter.
            packet[1] |= 0x80;
        }

        let out_sequence = sequence.wrapping_add(self.sequence_offset);
        let out_timestamp = timestamp.wrapping_add(self.timestamp_offset);
        packet[2..4].copy_from_slice(&out_sequence.to_be_bytes());
        packet[4..8].copy_from_slice(&out_timestamp.to_be_bytes());
        packet[8..12].copy_from_slice(&self.ssrc.to_be_bytes());

        // Continue later from the newest packet only: a late, reordered packet must not pull
        // the stream back (RFC 3550 A.1 treats a forward distance under 2^15 as newer).
        let ahead = out_sequence.wrapping_sub(self.last_sequence);
        if new_source || (ahead != 0 && ahead < 0x8000) {
            self.last_sequence = out_sequence;
            self.last_timestamp = out_timestamp;
            self.last_arrival = Some(arrival);
        }
        self.packets += 1;
        Ok(())
    }

    /// Stamps a packet the gateway generates itself (a DTMF event it sends for the other
    /// party) into this stream: our SSRC, the next sequence number, and `timestamp`. The
    /// relayed packets that follow are numbered after it, so the endpoint sees no repeat.
    pub fn stamp_generated(&mut self, packet: &mut [u8], timestamp: u32, now: Instant) {
        let Some(header) = packet.get_mut(..RTP_HEADER) else {
            return;
        };
        let sequence = self.last_sequence.wrapping_add(1);
        header[2..4].copy_from_slice(&sequence.to_be_bytes());
        header[4..8].copy_from_slice(&timestamp.to_be_bytes());
        header[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        self.last_sequence = sequence;
        // The next relayed source continues from here.
        self.last_timestamp = timestamp;
        self.last_arrival = Some(now);
        self.sequence_offset = self.sequence_offset.wrapping_add(1);
        self.packets += 1;
    }

    /// The timestamp this stream is at by `now`: the newest packet's, advanced by the time since
    /// it was sent (for a generated event that starts now).
    pub fn timestamp_at(&self, now: Instant) -> u32 {
        match self.last_arrival {
            Some(last) => self
                .last_timestamp
                .wrapping_add(self.samples_between(last, now)),
            None => self.last_timestamp,
        }
    }

    /// Media clock ticks between two arrivals, rounded to the nearest tick, at least one so the
    /// new source's first packet never repeats the previous timestamp. Taken modulo 2^32, as
    /// RTP timestamps are.
    fn samples_between(&self, earlier: Instant, later: Instant) -> u32 {
        let nanos = later.saturating_duration_since(earlier).as_nanos();
        let ticks = (nanos * u128::from(self.clock_rate) + 500_000_000) / 1_000_000_000;
        (ticks.max(1) % (1u128 << 32)) as u32
    }
}

/// RFC 3550 A.1's bounds on a source's sequence numbers: further ahead, or further behind, is a
/// restart.
const MAX_DROPOUT: u16 = 3000;
const MAX_MISORDER: u16 = 100;

/// Sets the payload type of an RTP packet in place, keeping the marker bit.
pub fn set_payload_type(packet: &mut [u8], payload_type: u8) {
    if let Some(byte) = packet.get_mut(1) {
        *byte = (*byte & 0x80) | (payload_type & 0x7f);
    }
}

/// Replaces the sender SSRC (bytes 4..8) of every packet of a compound RTCP packet
/// (RFC 3550 §6.1) with `ssrc`, walking the length fields (in 32-bit words minus one,
/// §6.4.1).
///
/// The walk stops at the end of the datagram, at a packet that is not version 2 (a wrong
/// length led into the middle of something else), or after a packet whose length runs past the
/// end. A packet only four bytes long (an SDES or BYE with no items) has no SSRC to replace.
pub fn rewrite_rtcp_ssrc(packet: &mut [u8], ssrc: u32) {
    let mut offset = 0usize;
    while let Some(rest) = packet.get_mut(offset..) {
        let [first, _, high, low, ..] = *rest else {
            return;
        };
        if first >> 6 != 2 {
            return;
        }
        let length = (usize::from(u16::from_be_bytes([high, low])) + 1) * 4;
        if length >= RTCP_MINIMUM {
            if let Some(sender) = rest.get_mut(4..8) {
                sender.copy_from_slice(&ssrc.to_be_bytes());
            }
        }
        offset += length;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const PAYLOAD: usize = 160;

    fn packet(second_byte: u8, sequence: u16, timestamp: u32, ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, second_byte];
        p.extend_from_slice(&sequence.to_be_bytes());
        p.extend_from_slice(&timestamp.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xd5; PAYLOAD]);
        p
    }

    /// (marker, sequence, timestamp, ssrc)
    fn header(p: &[u8]) -> (bool, u16, u32, u32) {
        (
            p[1] & 0x80 != 0,
            u16::from_be_bytes([p[2], p[3]]),
            u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
        )
    }

    fn rewrite(
        rewriter: &mut StreamRewriter,
        mut p: Vec<u8>,
        at: Instant,
    ) -> (bool, u16, u32, u32) {
        rewriter
            .rewrite(&mut p, at)
            .unwrap_or_else(|e| panic!("rewrite failed: {e}"));
        // Only the header is ours to change.
        assert!(p[RTP_HEADER..].iter().all(|&b| b == 0xd5));
        header(&p)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn generated_packets_take_the_next_numbers_and_the_relayed_ones_follow() {
        let start = Instant::now();
        let mut rewriter = StreamRewriter::new(0xabcd, 1000, 50_000, 8000);
        assert_eq!(rewrite(&mut rewriter, packet(8, 7, 700, 9), start).1, 1000);
        let at = start + ms(20);
        let timestamp = rewriter.timestamp_at(at);
        assert_eq!(timestamp, 50_000 + 160);
        let mut event = packet(101, 0, 0, 0);
        rewriter.stamp_generated(&mut event, timestamp, at);
        let mut end = packet(101, 0, 0, 0);
        rewriter.stamp_generated(&mut end, timestamp, at);
        assert_eq!(header(&event), (false, 1001, 50_160, 0xabcd));
        assert_eq!(header(&end), (false, 1002, 50_160, 0xabcd));
        // The relayed stream goes on after them, its timestamps unchanged.
        let next = rewrite(&mut rewriter, packet(8, 8, 860, 9), start + ms(20));
        assert_eq!((next.1, next.2), (1003, 50_160));
    }

    #[test]
    fn classification_per_rfc_5761() {
        for payload_type in [0u8, 8, 101, 0x80 | 101, 13, 96] {
            assert_eq!(
                classify(&packet(payload_type, 1, 1, 1)),
                PacketKind::Rtp,
                "{payload_type}"
            );
        }
        // A minimal RTP packet: header only.
        assert_eq!(classify(&packet(0, 1, 1, 1)[..12]), PacketKind::Rtp);

        let mut sender_report = vec![0x80, 200, 0, 6];
        sender_report.extend_from_slice(&[0; 24]);
        assert_eq!(classify(&sender_report), PacketKind::Rtcp);
        let receiver_report = [0x81, 201, 0, 1, 0, 0, 0, 1];
        assert_eq!(classify(&receiver_report), PacketKind::Rtcp);
        // Every RFC 5761 RTCP value, even ones rtp-rs would accept as RTP.
        for second in 192..=223u8 {
            assert_eq!(
                classify(&[0x80, second, 0, 1, 0, 0, 0, 1]),
                PacketKind::Rtcp
            );
        }

        // Versions 0, 1 and 3.
        for first in [0x00u8, 0x40, 0xc0] {
            let mut p = packet(0, 1, 1, 1);
            p[0] = first;
            assert_eq!(classify(&p), PacketKind::Unknown, "{first:#x}");
            let mut r = sender_report.clone();
            r[0] = first;
            assert_eq!(classify(&r), PacketKind::Unknown, "{first:#x}");
        }
        // Short packets.
        assert_eq!(classify(&[]), PacketKind::Unknown);
        assert_eq!(classify(&[0x80]), PacketKind::Unknown);
        assert_eq!(classify(&packet(0, 1, 1, 1)[..11]), PacketKind::Unknown);
        assert_eq!(classify(&[0x80, 200, 0, 6, 0, 0, 0]), PacketKind::Unknown);
        // CSRCs, extension or padding claimed beyond the datagram.
        let mut csrcs = packet(0, 1, 1, 1)[..20].to_vec();
        csrcs[0] = 0x83;
        assert_eq!(classify(&csrcs), PacketKind::Unknown);
        csrcs[0] = 0x82;
        assert_eq!(classify(&csrcs), PacketKind::Rtp);
        let mut extension = packet(0, 1, 1, 1)[..16].to_vec();
        extension[0] = 0x90;
        extension[14] = 0;
        extension[15] = 1;
        assert_eq!(classify(&extension), PacketKind::Unknown);
        let mut padding = packet(0, 1, 1, 1);
        padding[0] = 0xa0;
        let last = padding.len() - 1;
        padding[last] = 200;
        assert_eq!(classify(&padding), PacketKind::Unknown);
    }

    #[test]
    fn one_continuous_stream_across_a_source_change() {
        let t0 = Instant::now();
        let mut rewriter = StreamRewriter::new(0xcafe, 500, 10_000, 8000);
        let mut out = Vec::new();
        for i in 0..3u16 {
            let p = packet(8, 40_000 + i, 7_000_000 + 160 * u32::from(i), 0x1111);
            out.push(rewrite(&mut rewriter, p, t0 + ms(20 * u64::from(i))));
        }
        // A new party after a transfer: unrelated numbers, 100 ms after the last packet.
        for i in 0..3u16 {
            let p = packet(8, 9 + i, 123 + 160 * u32::from(i), 0x2222);
            out.push(rewrite(&mut rewriter, p, t0 + ms(140 + 20 * u64::from(i))));
        }
        assert!(out.iter().all(|h| h.3 == 0xcafe));
        let sequences: Vec<u16> = out.iter().map(|h| h.1).collect();
        assert_eq!(sequences, [500, 501, 502, 503, 504, 505]);
        let timestamps: Vec<u32> = out.iter().map(|h| h.2).collect();
        assert_eq!(&timestamps[..3], &[10_000, 10_160, 10_320]);
        // 100 ms at 8 kHz = 800 samples after the last packet.
        assert_eq!(&timestamps[3..], &[11_120, 11_280, 11_440]);
        let markers: Vec<bool> = out.iter().map(|h| h.0).collect();
        assert_eq!(markers, [true, false, false, true, false, false]);
        assert_eq!(rewriter.packets(), 6);
        assert_eq!(rewriter.ssrc(), 0xcafe);
    }

    #[test]
    fn a_source_marked_as_changed_restarts_even_with_the_same_ssrc() {
        let t0 = Instant::now();
        let mut rewriter = StreamRewriter::new(7, 1000, 0, 8000);
        rewrite(&mut rewriter, packet(0, 50, 5000, 0x42), t0);
        rewriter.mark_source_change();
        // Restarted stream (re-INVITE) keeps its SSRC but starts from scratch.
        let h = rewrite(&mut rewriter, packet(0, 3, 0, 0x42), t0 + ms(20));
        assert_eq!(h, (true, 1001, 160, 7));
        let h = rewrite(&mut rewriter, packet(0, 4, 160, 0x42), t0 + ms(40));
        assert_eq!(h, (false, 1002, 320, 7));
    }

    #[test]
    fn gaps_reordering_and_timestamp_jumps_within_a_source_are_kept() {
        let t0 = Instant::now();
        let mut rewriter = StreamRewriter::new(1, 100, 0, 8000);
        let mut seen = Vec::new();
        // 11 arrives late, 14..16 are lost, 17 comes after a silence-suppressed gap.
        for (sequence, timestamp, at) in [
            (10u16, 1_600u32, 0u64),
            (12, 1_920, 40),
            (11, 1_760, 41),
            (13, 2_080, 60),
            (17, 9_000, 500),
        ] {
            let h = rewrite(
                &mut rewriter,
                packet(0, sequence, timestamp, 9),
                t0 + ms(at),
            );
            seen.push((h.1, h.2));
        }
        assert_eq!(
            seen,
            [(100, 0), (102, 320), (101, 160), (103, 480), (107, 7_400)]
        );
        // The switch continues from the newest packet (107 at 500 ms), not from the late 101.
        let h = rewrite(&mut rewriter, packet(0, 1, 1, 10), t0 + ms(520));
        assert_eq!((h.1, h.2), (108, 7_560));
    }

    /// The same SSRC starting its numbering again (far ahead or behind): once the next packet
    /// confirms it (RFC 3550 A.1), our stream goes on from where it was, marked, as after a
    /// change of source; the first packet of the jump, and a stray one, are not sent.
    #[test]
    fn a_source_restarting_its_numbering_is_continued_not_followed() {
        let t0 = Instant::now();
        let mut rewriter = StreamRewriter::new(1, 500, 0, 8000);
        assert_eq!(rewrite(&mut rewriter, packet(0, 40_000, 0, 9), t0).1, 500);
        let h = rewrite(&mut rewriter, packet(0, 40_001, 160, 9), t0 + ms(20));
        assert_eq!((h.0, h.1), (false, 501));
        // 25,538 ahead: held until 4 follows 3.
        let mut first = packet(0, 3, 50, 9);
        assert_eq!(
            rewriter.rewrite(&mut first, t0 + ms(40)),
            Err(RewriteError::OutOfSequence)
        );
        let h = rewrite(&mut rewriter, packet(0, 4, 210, 9), t0 + ms(60));
        assert_eq!((h.0, h.1, h.2), (true, 502, 480));
        let h = rewrite(&mut rewriter, packet(0, 5, 370, 9), t0 + ms(80));
        assert_eq!((h.0, h.1, h.2), (false, 503, 640));
        // One stray packet 200 behind is not sent and shifts nothing.
        let mut stray = packet(0, 65_341, 1, 9);
        assert_eq!(
            rewriter.rewrite(&mut stray, t0 + ms(90)),
            Err(RewriteError::OutOfSequence)
        );
        let h = rewrite(&mut rewriter, packet(0, 6, 530, 9), t0 + ms(100));
        assert_eq!((h.0, h.1, h.2), (false, 504, 800));
        // 200 behind and then on from there: a restart.
        assert!(rewriter
            .rewrite(&mut packet(0, 65_342, 9, 9), t0 + ms(110))
            .is_err());
        let h = rewrite(&mut rewriter, packet(0, 65_343, 169, 9), t0 + ms(120));
        assert_eq!((h.0, h.1), (true, 505));
        // Within the bounds a late packet keeps its place in the numbering (here one already
        // used: an SRTP leg's sender refuses it, a plain one passes it on).
        let h = rewrite(&mut rewriter, packet(0, 65_342, 100, 9), t0 + ms(121));
        assert_eq!(h.1, 504);
    }

    #[test]
    fn wraps_sequence_numbers_and_timestamps() {
        let t0 = Instant::now();
        // Our numbering wraps...
        let mut rewriter = StreamRewriter::new(1, 65_535, u32::MAX - 100, 8000);
        let a = rewrite(&mut rewriter, packet(0, 7, 0, 5), t0);
        let b = rewrite(&mut rewriter, packet(0, 8, 160, 5), t0 + ms(20));
        assert_eq!((a.1, a.2), (65_535, u32::MAX - 100));
        assert_eq!((b.1, b.2), (0, 59));
        // ...and so does the source's.
        let mut rewriter = StreamRewriter::new(1, 10, 1_000, 8000);
        let a = rewrite(&mut rewriter, packet(0, 65_535, u32::MAX - 79, 5), t0);
        let b = rewrite(&mut rewriter, packet(0, 0, 80, 5), t0 + ms(20));
        let c = rewrite(&mut rewriter, packet(0, 1, 240, 5), t0 + ms(40));
        assert_eq!([a.1, b.1, c.1], [10, 11, 12]);
        assert_eq!([a.2, b.2, c.2], [1_000, 1_160, 1_320]);
        // A switch across our own wrap point.
        let mut rewriter = StreamRewriter::new(1, 65_535, u32::MAX - 10, 8000);
        rewrite(&mut rewriter, packet(0, 1, 1, 5), t0);
        let h = rewrite(&mut rewriter, packet(0, 900, 7, 6), t0 + ms(20));
        assert_eq!((h.0, h.1, h.2), (true, 0, 149));
    }

    #[test]
    fn elapsed_time_is_rounded_to_the_clock_and_at_least_one_tick() {
        let t0 = Instant::now();
        let mut rewriter = StreamRewriter::new(1, 0, 0, 8000);
        rewrite(&mut rewriter, packet(0, 0, 0, 1), t0);
        // Same instant: still one tick on.
        let h = rewrite(&mut rewriter, packet(0, 0, 0, 2), t0);
        assert_eq!((h.1, h.2), (1, 1));
        // 20.07 ms = 160.56 samples -> 161.
        let h = rewrite(
            &mut rewriter,
            packet(0, 0, 0, 3),
            t0 + Duration::from_micros(20_070),
        );
        assert_eq!((h.1, h.2), (2, 162));
        // An arrival earlier than the last one (clock confusion) does not go backwards.
        let h = rewrite(&mut rewriter, packet(0, 0, 0, 4), t0);
        assert_eq!((h.1, h.2), (3, 163));
        // Other clock rates: 48 kHz, 10 ms.
        let mut rewriter = StreamRewriter::new(1, 0, 0, 48_000);
        rewrite(&mut rewriter, packet(0, 0, 0, 1), t0);
        let h = rewrite(&mut rewriter, packet(0, 0, 0, 2), t0 + ms(10));
        assert_eq!(h.2, 480);
    }

    #[test]
    fn keeps_the_sources_marker_and_rejects_what_is_not_rtp() {
        let t0 = Instant::now();
        let mut rewriter = StreamRewriter::new(1, 0, 0, 8000);
        rewrite(&mut rewriter, packet(0, 0, 0, 1), t0);
        // A talkspurt marker from the source passes through.
        assert!(rewrite(&mut rewriter, packet(0x80, 1, 160, 1), t0 + ms(20)).0);
        assert!(!rewrite(&mut rewriter, packet(0, 2, 320, 1), t0 + ms(40)).0);

        let mut short = packet(0, 3, 480, 1)[..11].to_vec();
        let copy = short.clone();
        assert_eq!(
            rewriter.rewrite(&mut short, t0),
            Err(RewriteError::TooShort)
        );
        assert_eq!(short, copy);
        let mut csrcs = packet(0, 3, 480, 1)[..12].to_vec();
        csrcs[0] = 0x81;
        assert_eq!(
            rewriter.rewrite(&mut csrcs, t0),
            Err(RewriteError::TooShort)
        );
        let mut version1 = packet(0, 3, 480, 1);
        version1[0] = 0x40;
        let copy = version1.clone();
        assert_eq!(
            rewriter.rewrite(&mut version1, t0),
            Err(RewriteError::NotVersion2)
        );
        assert_eq!(version1, copy);
        assert_eq!(rewriter.packets(), 3);
        assert_eq!(
            RewriteError::TooShort.to_string(),
            "packet shorter than its RTP header"
        );
        let error: &dyn std::error::Error = &RewriteError::NotVersion2;
        assert_eq!(error.to_string(), "not RTP version 2");
    }

    #[test]
    fn payload_type_is_replaced_and_the_marker_kept() {
        let mut p = packet(0x80 | 101, 1, 1, 1);
        set_payload_type(&mut p, 96);
        assert_eq!(p[1], 0x80 | 96);
        set_payload_type(&mut p, 0xff);
        assert_eq!(p[1], 0xff);
        let mut p = packet(0, 1, 1, 1);
        set_payload_type(&mut p, 8);
        assert_eq!(p[1], 8);
        set_payload_type(&mut [0x80], 8);
        set_payload_type(&mut [], 8);
    }

    #[test]
    fn compound_rtcp_gets_our_ssrc_in_every_packet() {
        let ours = 0xdead_beefu32.to_be_bytes();
        // SR (28 bytes), SDES with one chunk (12), an empty BYE (4), then a BYE (8).
        let mut compound = vec![0x80, 200, 0, 6, 0, 0, 0, 1];
        compound.extend_from_slice(&[0x11; 20]);
        compound.extend_from_slice(&[0x81, 202, 0, 2, 0, 0, 0, 1, 1, 2, b'a', b'b']);
        compound.extend_from_slice(&[0x80, 203, 0, 0]);
        compound.extend_from_slice(&[0x81, 203, 0, 1, 0, 0, 0, 1]);
        let before = compound.clone();
        rewrite_rtcp_ssrc(&mut compound, 0xdead_beef);
        assert_eq!(compound.len(), before.len());
        assert_eq!(&compound[4..8], &ours);
        assert_eq!(&compound[32..36], &ours);
        assert_eq!(&compound[44..48], &before[44..48], "empty BYE left alone");
        assert_eq!(&compound[48..52], &ours);
        // Nothing but the SSRCs changed.
        let changed: Vec<usize> = (0..before.len())
            .filter(|&i| compound[i] != before[i])
            .collect();
        assert!(changed
            .iter()
            .all(|i| (4..8).contains(i) || (32..36).contains(i) || (48..52).contains(i)));

        // A length running past the end: that packet still gets our SSRC, then the walk stops.
        let mut bad = vec![0x80, 200, 0xff, 0xff, 0, 0, 0, 1, 0, 0];
        rewrite_rtcp_ssrc(&mut bad, 7);
        assert_eq!(&bad[4..8], &7u32.to_be_bytes());
        // A length landing on something that is not RTCP v2 stops the walk there.
        let mut garbage = vec![0x80, 201, 0, 1, 0, 0, 0, 1, 0x00, 201, 0, 1, 0, 0, 0, 2];
        rewrite_rtcp_ssrc(&mut garbage, 7);
        assert_eq!(&garbage[4..8], &7u32.to_be_bytes());
        assert_eq!(&garbage[12..16], &2u32.to_be_bytes());
        rewrite_rtcp_ssrc(&mut [], 7);
        rewrite_rtcp_ssrc(&mut [0x80, 200, 0], 7);
    }

    mod property {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(
                bytes in proptest::collection::vec(any::<u8>(), 0..300),
                version2 in any::<bool>(),
            ) {
                let mut bytes = bytes;
                if version2 {
                    if let Some(first) = bytes.first_mut() {
                        *first = (*first & 0x3f) | 0x80;
                    }
                }
                let _ = classify(&bytes);
                let mut rewriter = StreamRewriter::new(1, 1, 1, 8000);
                let mut copy = bytes.clone();
                let _ = rewriter.rewrite(&mut copy, Instant::now());
                let _ = rewriter.rewrite(&mut copy, Instant::now());
                prop_assert_eq!(copy.len(), bytes.len());
                let mut copy = bytes.clone();
                rewrite_rtcp_ssrc(&mut copy, 3);
                prop_assert_eq!(copy.len(), bytes.len());
                set_payload_type(&mut copy, 8);
            }

            #[test]
            fn continuous_across_a_switch_between_random_sources(
                ours in any::<(u32, u16, u32)>(),
                first in any::<(u32, u16, u32)>(),
                second in any::<(u32, u16, u32)>(),
                gap_ms in 0u64..10_000,
                before in 1u16..20,
                after in 1u16..20,
            ) {
                prop_assume!(first.0 != second.0);
                let t0 = Instant::now();
                let mut rewriter = StreamRewriter::new(ours.0, ours.1, ours.2, 8000);
                let mut out = Vec::new();
                for i in 0..before {
                    let p = packet(
                        0,
                        first.1.wrapping_add(i),
                        first.2.wrapping_add(160 * u32::from(i)),
                        first.0,
                    );
                    out.push(rewrite(&mut rewriter, p, t0 + ms(20 * u64::from(i))));
                }
                let switched = t0 + ms(20 * u64::from(before - 1) + gap_ms);
                for i in 0..after {
                    let p = packet(
                        0,
                        second.1.wrapping_add(i),
                        second.2.wrapping_add(160 * u32::from(i)),
                        second.0,
                    );
                    out.push(rewrite(&mut rewriter, p, switched + ms(20 * u64::from(i))));
                }
                let switch = usize::from(before);
                for (i, h) in out.iter().enumerate() {
                    prop_assert_eq!(h.3, ours.0);
                    prop_assert_eq!(h.0, i == 0 || i == switch, "marker at {}", i);
                    prop_assert_eq!(h.1, ours.1.wrapping_add(i as u16));
                }
                prop_assert_eq!(out[0].2, ours.2);
                for pair in out.windows(2).take(switch - 1) {
                    prop_assert_eq!(pair[1].2.wrapping_sub(pair[0].2), 160);
                }
                let elapsed = (gap_ms * 8).max(1) as u32;
                prop_assert_eq!(out[switch].2.wrapping_sub(out[switch - 1].2), elapsed);
                for pair in out[switch..].windows(2) {
                    prop_assert_eq!(pair[1].2.wrapping_sub(pair[0].2), 160);
                }
            }
        }
    }
}
