//! RTP/RTCP packet handling that needs no socket: demultiplexing (RFC 5761 §4) and the stream
//! rewriter that makes what the gateway sends towards one endpoint one continuous RTP stream.
//!
//! rtp-rs reads headers but happily parses RTCP as RTP (PT 72..76), so packets are classified
//! here first; headers are edited in place (no copy, no allocation).

use std::time::Instant;

use rtp_rs::RtpReader;

/// What a datagram on a media port is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    Rtp,
    Rtcp,
    Unknown,
}

/// RFC 5761 §4: version 2, and the second byte 192..=223 (RTCP packet types 192..223, i.e. RTP
/// payload types 64..95 with the marker bit) is RTCP; anything else long enough is RTP.
pub fn classify(packet: &[u8]) -> PacketKind {
    let Some(&first) = packet.first() else {
        return PacketKind::Unknown;
    };
    if first >> 6 != 2 {
        return PacketKind::Unknown;
    }
    let second = packet.get(1).copied().unwrap_or(0);
    if (192..=223).contains(&second) {
        return if packet.len() >= 8 {
            PacketKind::Rtcp
        } else {
            PacketKind::Unknown
        };
    }
    match RtpReader::new(packet) {
        Ok(_) => PacketKind::Rtp,
        Err(_) => PacketKind::Unknown,
    }
}

/// Why a packet could not be rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewriteError {
    TooShort,
    NotVersion2,
}

impl std::fmt::Display for RewriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RewriteError::TooShort => f.write_str("packet shorter than an RTP header"),
            RewriteError::NotVersion2 => f.write_str("not RTP version 2"),
        }
    }
}

impl std::error::Error for RewriteError {}

/// The stream the gateway sends towards one endpoint: one SSRC of ours, sequence numbers and
/// timestamps that continue across any change of the source behind the gateway (a transfer,
/// a re-INVITE that restarts the far stream), with the marker bit on the first packet after a
/// change (RFC 3550 §5.1).
#[derive(Debug, Clone)]
pub struct StreamRewriter {
    ssrc: u32,
    clock_rate: u32,
    /// The source currently relayed and its offsets to our numbering.
    source: Option<u32>,
    sequence_offset: u16,
    timestamp_offset: u32,
    /// What we last sent, to continue from after a source change.
    last_sequence: u16,
    last_timestamp: u32,
    last_sent: Option<Instant>,
    packets: u64,
}

impl StreamRewriter {
    pub fn new(
        ssrc: u32,
        first_sequence: u16,
        first_timestamp: u32,
        clock_rate: u32,
    ) -> StreamRewriter {
        StreamRewriter {
            ssrc,
            clock_rate: clock_rate.max(1),
            source: None,
            sequence_offset: 0,
            timestamp_offset: 0,
            last_sequence: first_sequence.wrapping_sub(1),
            last_timestamp: first_timestamp,
            last_sent: None,
            packets: 0,
        }
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// The next packet starts a new source even if its SSRC is the same (a transfer to a
    /// phone that happens to reuse an SSRC).
    pub fn mark_source_change(&mut self) {
        self.source = None;
    }

    /// Rewrites SSRC, sequence number and timestamp of `packet` in place.
    ///
    /// # Errors
    /// [`RewriteError`] for a packet too short or not version 2 (left untouched).
    pub fn rewrite(&mut self, packet: &mut [u8], arrival: Instant) -> Result<(), RewriteError> {
        if packet.len() < 12 {
            return Err(RewriteError::TooShort);
        }
        if packet[0] >> 6 != 2 {
            return Err(RewriteError::NotVersion2);
        }
        let sequence = u16::from_be_bytes([packet[2], packet[3]]);
        let timestamp = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        let source = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
        if self.source != Some(source) {
            // Continue our numbering: next sequence number, timestamp advanced by the time
            // since our last packet (at least one sample), so the receiver's jitter buffer
            // sees a plausible gap rather than a jump.
            let elapsed = match self.last_sent {
                Some(last) => arrival.saturating_duration_since(last),
                None => std::time::Duration::ZERO,
            };
            let samples =
                (elapsed.as_micros() as u64 * u64::from(self.clock_rate) / 1_000_000).max(1) as u32;
            let next_sequence = self.last_sequence.wrapping_add(1);
            let next_timestamp = if self.last_sent.is_some() {
                self.last_timestamp.wrapping_add(samples)
            } else {
                self.last_timestamp
            };
            self.sequence_offset = next_sequence.wrapping_sub(sequence);
            self.timestamp_offset = next_timestamp.wrapping_sub(timestamp);
            self.source = Some(source);
            packet[1] |= 0x80;
        }
        let out_sequence = sequence.wrapping_add(self.sequence_offset);
        let out_timestamp = timestamp.wrapping_add(self.timestamp_offset);
        packet[2..4].copy_from_slice(&out_sequence.to_be_bytes());
        packet[4..8].copy_from_slice(&out_timestamp.to_be_bytes());
        packet[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        // Remember the newest position only (a reordered older packet must not move us back).
        let ahead = out_sequence.wrapping_sub(self.last_sequence);
        if self.last_sent.is_none() || (ahead != 0 && ahead < 0x8000) {
            self.last_sequence = out_sequence;
            self.last_timestamp = out_timestamp;
        }
        self.last_sent = Some(arrival);
        self.packets += 1;
        Ok(())
    }
}

/// Sets the payload type, keeping the marker bit.
pub fn set_payload_type(packet: &mut [u8], payload_type: u8) {
    if let Some(byte) = packet.get_mut(1) {
        *byte = (*byte & 0x80) | (payload_type & 0x7f);
    }
}

/// Replaces the sender SSRC (bytes 4..8) of every packet of a compound RTCP packet
/// (RFC 3550 §6.1), walking the length fields; stops at the first malformed length.
pub fn rewrite_rtcp_ssrc(packet: &mut [u8], ssrc: u32) {
    let mut offset = 0;
    while offset + 8 <= packet.len() {
        if packet[offset] >> 6 != 2 {
            return;
        }
        let words = usize::from(u16::from_be_bytes([packet[offset + 2], packet[offset + 3]]));
        let length = (words + 1) * 4;
        packet[offset + 4..offset + 8].copy_from_slice(&ssrc.to_be_bytes());
        offset += length;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn packet(payload_type: u8, sequence: u16, timestamp: u32, ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, payload_type];
        p.extend_from_slice(&sequence.to_be_bytes());
        p.extend_from_slice(&timestamp.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xd5; 160]);
        p
    }

    fn header(p: &[u8]) -> (bool, u16, u32, u32) {
        (
            p[1] & 0x80 != 0,
            u16::from_be_bytes([p[2], p[3]]),
            u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
        )
    }

    #[test]
    fn classification_per_rfc_5761() {
        assert_eq!(classify(&packet(0, 1, 1, 1)), PacketKind::Rtp);
        assert_eq!(classify(&packet(8, 1, 1, 1)), PacketKind::Rtp);
        assert_eq!(classify(&packet(101, 1, 1, 1)), PacketKind::Rtp);
        let mut sender_report = vec![0x80, 200, 0, 6];
        sender_report.extend_from_slice(&[0; 24]);
        assert_eq!(classify(&sender_report), PacketKind::Rtcp);
        let receiver_report = [0x81, 201, 0, 1, 0, 0, 0, 1];
        assert_eq!(classify(&receiver_report), PacketKind::Rtcp);
        assert_eq!(
            classify(&[0x40, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]),
            PacketKind::Unknown
        );
        assert_eq!(classify(&[0x80, 0, 0]), PacketKind::Unknown);
        assert_eq!(classify(&[]), PacketKind::Unknown);
    }

    #[test]
    fn one_continuous_stream_across_a_source_change() {
        let t0 = Instant::now();
        let mut rewriter = StreamRewriter::new(0xCAFE, 500, 10_000, 8000);
        let mut out = Vec::new();
        for i in 0..3u16 {
            let mut p = packet(8, 40_000 + i, 7_000_000 + 160 * u32::from(i), 0x1111);
            rewriter
                .rewrite(&mut p, t0 + Duration::from_millis(20 * u64::from(i)))
                .unwrap_or_else(|e| panic!("{e}"));
            out.push(header(&p));
        }
        // A new party (transfer): unrelated numbers, 100 ms later.
        for i in 0..3u16 {
            let mut p = packet(8, 9 + i, 123 + 160 * u32::from(i), 0x2222);
            let at = t0 + Duration::from_millis(140 + 20 * u64::from(i));
            rewriter
                .rewrite(&mut p, at)
                .unwrap_or_else(|e| panic!("{e}"));
            out.push(header(&p));
        }
        assert!(out.iter().all(|h| h.3 == 0xCAFE));
        let sequences: Vec<u16> = out.iter().map(|h| h.1).collect();
        assert_eq!(sequences, vec![500, 501, 502, 503, 504, 505]);
        let timestamps: Vec<u32> = out.iter().map(|h| h.2).collect();
        assert_eq!(&timestamps[..3], &[10_000, 10_160, 10_320]);
        // 100 ms after the last packet = 800 samples later.
        assert_eq!(&timestamps[3..], &[11_120, 11_280, 11_440]);
        let markers: Vec<bool> = out.iter().map(|h| h.0).collect();
        assert_eq!(markers, vec![true, false, false, true, false, false]);
        assert_eq!(rewriter.packets(), 6);
    }

    #[test]
    fn gaps_and_reordering_within_a_source_are_kept() {
        let t0 = Instant::now();
        let mut rewriter = StreamRewriter::new(1, 100, 0, 8000);
        let mut seen = Vec::new();
        for (sequence, at) in [(10u16, 0u64), (12, 40), (11, 41), (13, 60)] {
            let mut p = packet(0, sequence, u32::from(sequence) * 160, 9);
            rewriter
                .rewrite(&mut p, t0 + Duration::from_millis(at))
                .unwrap_or_else(|e| panic!("{e}"));
            seen.push(header(&p).1);
        }
        assert_eq!(seen, vec![100, 102, 101, 103]);
    }

    #[test]
    fn wraps_around() {
        let t0 = Instant::now();
        let mut rewriter = StreamRewriter::new(1, 65_535, u32::MAX - 100, 8000);
        let mut a = packet(0, 7, 0, 5);
        let mut b = packet(0, 8, 160, 5);
        rewriter
            .rewrite(&mut a, t0)
            .unwrap_or_else(|e| panic!("{e}"));
        rewriter
            .rewrite(&mut b, t0 + Duration::from_millis(20))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(header(&a).1, 65_535);
        assert_eq!(header(&b).1, 0);
        assert_eq!(header(&b).2, 59);
    }

    #[test]
    fn payload_type_and_rtcp_rewrites() {
        let mut p = packet(0x80 | 101, 1, 1, 1);
        set_payload_type(&mut p, 96);
        assert_eq!(p[1], 0x80 | 96);
        // Compound: SR (7 words + 1) followed by SDES (2 words + 1).
        let mut compound = vec![0x80, 200, 0, 6, 0, 0, 0, 1];
        compound.extend_from_slice(&[0; 20]);
        compound.extend_from_slice(&[0x81, 202, 0, 2, 0, 0, 0, 1, 1, 2, b'a', b'b']);
        rewrite_rtcp_ssrc(&mut compound, 0xDEAD_BEEF);
        assert_eq!(&compound[4..8], &0xDEAD_BEEFu32.to_be_bytes());
        assert_eq!(&compound[32..36], &0xDEAD_BEEFu32.to_be_bytes());
        // A lying length stops the walk without panicking.
        let mut bad = vec![0x80, 200, 0xff, 0xff, 0, 0, 0, 1];
        rewrite_rtcp_ssrc(&mut bad, 7);
        assert_eq!(&bad[4..8], &7u32.to_be_bytes());
    }

    mod property {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
                let mut copy = bytes.clone();
                let _ = classify(&bytes);
                let mut rewriter = StreamRewriter::new(1, 1, 1, 8000);
                let _ = rewriter.rewrite(&mut copy, Instant::now());
                rewrite_rtcp_ssrc(&mut copy, 3);
                set_payload_type(&mut copy, 8);
            }
        }
    }
}
