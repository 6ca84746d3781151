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
    /// The port pair its m-line offered (the source of its packets).
    pub sockets: LegSockets,
    /// Where it goes; None while the server does not take it (port 0, inactive).
    pub to: Option<SocketAddr>,
    pub ssrc: u32,
    /// Random starts of its sequence numbers and timestamps (RFC 3550 §5.1).
    pub sequence: u16,
    pub timestamp: u32,
}

/// Where a recording's channels go on to, in which codec.
pub struct Forward {
    /// Index 0 the left channel (said), 1 the right (heard).
    streams: [ForwardStream; 2],
    codec: Codec,
    payload_type: u8,
    /// Samples sent so far (each stream's timestamp and sequence follow from it).
    sent: u64,
    /// The first packet carries the marker bit (RFC 3551 §4.1: the start of a talkspurt).
    started: bool,
    packet: [u8; HEADER + FRAME],
}

impl Forward {
    pub fn new(streams: [ForwardStream; 2], codec: Codec, payload_type: u8) -> Forward {
        Forward {
            streams,
            codec,
            payload_type,
            sent: 0,
            started: false,
            packet: [0; HEADER + FRAME],
        }
    }

    /// The server moved the streams (a re-INVITE of its own): they go to `to` from now on.
    pub fn retarget(&mut self, to: [Option<SocketAddr>; 2], codec: Codec, payload_type: u8) {
        for (stream, to) in self.streams.iter_mut().zip(to) {
            stream.to = to;
        }
        self.codec = codec;
        self.payload_type = payload_type;
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
        // Both follow the recording's position from their random starts: a gap (a stream
        // attached late) shows as lost packets, as it is.
        let frames = (self.sent / FRAME as u64) as u16;
        for (stream, samples) in self.streams.iter().zip([left, right]) {
            let Some(to) = stream.to else {
                continue;
            };
            let sequence = stream.sequence.wrapping_add(frames);
            let timestamp = stream.timestamp.wrapping_add(self.sent as u32);
            let packet = &mut self.packet;
            packet[0] = 0x80;
            packet[1] = marker | (self.payload_type & 0x7f);
            packet[2..4].copy_from_slice(&sequence.to_be_bytes());
            packet[4..8].copy_from_slice(&timestamp.to_be_bytes());
            packet[8..12].copy_from_slice(&stream.ssrc.to_be_bytes());
            mixer::encode(self.codec, samples, &mut packet[HEADER..HEADER + length]);
            let _ = stream.sockets.rtp.send_to(&packet[..HEADER + length], to);
        }
        self.sent += length as u64;
    }
}
