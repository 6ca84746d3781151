//! A recording's second sink: its two channels sent on as RTP (RFC 3550) to a SIPREC recording
//! server, one stream each (what the caller said, what the caller heard), from the port pairs
//! the SDP offer named. The writer sends each 20 ms frame once it places it in the file's
//! order (so [`super::writer`]'s lag behind the call's clock, silence for the gaps included):
//! the server gets the streams aligned as the WAV has them, paced by the writer's poll.

use std::net::SocketAddr;

use crate::media::codec::Codec;
use crate::media::mixer;
use crate::media::ports::LegSockets;

use super::FRAME;

/// The RTP header without CSRCs (RFC 3550 §5.1).
const HEADER: usize = 12;

/// One stream to the server.
pub struct ForwardStream {
    pub sockets: LegSockets,
    pub to: SocketAddr,
    pub ssrc: u32,
}

/// Where a recording's channels go on to, in which codec.
pub struct Forward {
    /// Index 0 the left channel (said), 1 the right (heard); a stream the server declined is
    /// `None`.
    streams: [Option<ForwardStream>; 2],
    codec: Codec,
    payload_type: u8,
    /// Samples sent so far (each stream's timestamp and sequence follow from it).
    sent: u64,
    /// The first packet carries the marker bit (RFC 3551 §4.1: the start of a talkspurt).
    started: bool,
    packet: [u8; HEADER + FRAME],
}

impl Forward {
    pub fn new(streams: [Option<ForwardStream>; 2], codec: Codec, payload_type: u8) -> Forward {
        Forward {
            streams,
            codec,
            payload_type,
            sent: 0,
            started: false,
            packet: [0; HEADER + FRAME],
        }
    }

    /// Where the samples sent so far end.
    pub(super) fn sent(&self) -> u64 {
        self.sent
    }

    /// Attached to a recording that has written `written` samples already: it starts there.
    pub(super) fn skip_to(&mut self, written: u64) {
        self.sent = self.sent.max(written);
    }

    /// Sends the two channels' samples (from sample `self.sent` on, `left` and `right` of
    /// one length) in packets of at most [`FRAME`] samples. A send the socket refuses is
    /// lost, as a UDP packet would be.
    pub(super) fn send(&mut self, left: &[i16], right: &[i16]) {
        for (left, right) in left.chunks(FRAME).zip(right.chunks(FRAME)) {
            self.packet_out(left, right);
        }
    }

    fn packet_out(&mut self, left: &[i16], right: &[i16]) {
        let length = left.len();
        let marker = if self.started { 0 } else { 0x80 };
        self.started = true;
        // Sequence and timestamp count from 0 per stream: a server tells the streams apart by
        // SSRC and port, and each is new.
        let sequence = (self.sent / FRAME as u64) as u16;
        let timestamp = self.sent as u32;
        for (stream, samples) in self.streams.iter().zip([left, right]) {
            let Some(stream) = stream else {
                continue;
            };
            let packet = &mut self.packet;
            packet[0] = 0x80;
            packet[1] = marker | (self.payload_type & 0x7f);
            packet[2..4].copy_from_slice(&sequence.to_be_bytes());
            packet[4..8].copy_from_slice(&timestamp.to_be_bytes());
            packet[8..12].copy_from_slice(&stream.ssrc.to_be_bytes());
            mixer::encode(self.codec, samples, &mut packet[HEADER..HEADER + length]);
            let _ = stream
                .sockets
                .rtp
                .send_to(&packet[..HEADER + length], stream.to);
        }
        self.sent += length as u64;
    }
}
