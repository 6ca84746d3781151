//! Bounded fuzzing of every parser that reads what peers send, beside the SIP parser's own
//! property tests: SDP bodies (SDES `a=crypto` lines too), RTP and RTCP packets (the relay's and
//! the mixer's paths), SRTP and SRTCP packets, DTMF INFO bodies, the jitter buffer. Arbitrary bytes and mutations of valid inputs must never
//! panic; what parses must be used safely. Case counts are kept so the run takes seconds (the
//! CI runs it); raise `PROPTEST_CASES` for a long run.

use std::time::{Duration, Instant};

use hotline_gateway::call::hotkey::dtmf_of_info;
use hotline_gateway::media::codec::Codec;
use hotline_gateway::media::mixer::{self, JitterBuffer, FRAME};
use hotline_gateway::media::rtp::{classify, rewrite_rtcp_ssrc, StreamRewriter};
use hotline_gateway::media::srtp::{MasterKey, Receiver, Sender, Suite};
use hotline_gateway::sip::sdp::{self, MediaPolicy};
use proptest::prelude::*;

const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
m=audio 16070 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n";

const SRTP_OFFER: &str =
    "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
m=audio 16070 RTP/SAVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:4\r\n\
a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n";

const KEY: MasterKey = MasterKey([0x5a; 30]);

/// One protected 20 ms packet of a stream keyed with [`KEY`].
fn protected_packet(sequence: u16) -> Vec<u8> {
    let mut sender = Sender::new(Suite::AesCm128HmacSha1_80, &KEY);
    let mut buffer = [0u8; 200];
    buffer[..12].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]);
    buffer[2..4].copy_from_slice(&sequence.to_be_bytes());
    let length = sender.protect_rtp(&mut buffer, 172).unwrap_or(0);
    buffer[..length].to_vec()
}

fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default);
    ProptestConfig::with_cases(cases)
}

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn sdp_from_arbitrary_text_never_panics(text in "\\PC{0,600}") {
        if let Ok(offer) = sdp::parse(&text) {
            let origin = sdp::Origin::new("192.0.2.9".parse().unwrap_or_else(|_| unreachable!()), 1);
            let _ = sdp::answer(&offer, &MediaPolicy::default(), "192.0.2.9:20000".parse().unwrap_or_else(|_| unreachable!()), &origin, Default::default());
        }
    }

    #[test]
    fn mutated_offers_never_panic(position in 0usize..OFFER.len(), byte in 32u8..127, cut in 0usize..OFFER.len()) {
        let mut bytes = OFFER.as_bytes().to_vec();
        bytes[position] = byte;
        bytes.truncate(cut.max(position + 1));
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(offer) = sdp::parse(&text) {
            let origin = sdp::Origin::new("192.0.2.9".parse().unwrap_or_else(|_| unreachable!()), 1);
            let policy = MediaPolicy::default();
            if let Ok((answer, _)) = sdp::answer(&offer, &policy, "192.0.2.9:20000".parse().unwrap_or_else(|_| unreachable!()), &origin, Default::default()) {
                // Our answer always parses back.
                prop_assert!(sdp::parse(&answer.to_string()).is_ok());
            }
        }
    }

    #[test]
    fn mutated_sdes_offers_never_panic(position in 0usize..SRTP_OFFER.len(), byte in 32u8..127) {
        let mut bytes = SRTP_OFFER.as_bytes().to_vec();
        bytes[position] = byte;
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(offer) = sdp::parse(&text) {
            let origin = sdp::Origin::new("192.0.2.9".parse().unwrap_or_else(|_| unreachable!()), 1);
            let local = "192.0.2.9:20000".parse().unwrap_or_else(|_| unreachable!());
            if let Ok((answer, _)) = sdp::answer(&offer, &MediaPolicy::default(), local, &origin, Default::default()) {
                prop_assert!(sdp::parse(&answer.to_string()).is_ok());
            }
        }
    }

    /// Arbitrary datagrams on an SRTP leg: never a panic, never accepted.
    #[test]
    fn arbitrary_srtp_and_srtcp_never_panic(packet in proptest::collection::vec(any::<u8>(), 0..400), mki in 0u8..5) {
        let mut receiver = Receiver::new(Suite::AesCm128HmacSha1_80, &KEY, mki);
        prop_assert!(receiver.unprotect_rtp(&mut packet.clone()).is_err());
        prop_assert!(receiver.unprotect_rtcp(&mut packet.clone()).is_err());
        let mut sender = Sender::new(Suite::AesCm128HmacSha1_32, &KEY);
        let mut buffer = [0u8; 420];
        buffer[..packet.len()].copy_from_slice(&packet);
        let _ = sender.protect_rtp(&mut buffer, packet.len());
        let _ = sender.protect_rtcp(&mut buffer, packet.len());
    }

    /// One byte changed anywhere in a protected packet and it no longer authenticates.
    #[test]
    fn a_tampered_srtp_packet_is_refused(sequence in any::<u16>(), position in 0usize..182, flip in 1u8..=255) {
        let mut packet = protected_packet(sequence);
        packet[position] ^= flip;
        let mut receiver = Receiver::new(Suite::AesCm128HmacSha1_80, &KEY, 0);
        prop_assert!(receiver.unprotect_rtp(&mut packet).is_err());
        let mut intact = protected_packet(sequence);
        prop_assert_eq!(receiver.unprotect_rtp(&mut intact), Ok(172));
    }

    #[test]
    fn rtp_and_rtcp_packets_never_panic(mut packet in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = classify(&packet);
        let mut rewriter = StreamRewriter::new(1, 2, 3, 8000);
        let _ = rewriter.rewrite(&mut packet, Instant::now());
        rewrite_rtcp_ssrc(&mut packet, 0xdead_beef);
    }

    #[test]
    fn the_jitter_buffer_takes_any_stream(packets in proptest::collection::vec((any::<u16>(), any::<u32>(), 0usize..400, 0u64..2000), 0..200)) {
        let start = Instant::now();
        let mut buffer = JitterBuffer::new();
        let mut frame = [0i16; FRAME];
        let samples = [100i16; 400];
        for (sequence, timestamp, length, at) in packets {
            buffer.push(start + Duration::from_millis(at), sequence, timestamp, &samples[..length]);
            let _ = buffer.pop(&mut frame);
        }
        let frames = [[1i16; FRAME]; 3];
        let mut out = [[0i16; FRAME]; 3];
        mixer::mix_minus(&frames, &[true, false, true], &mut out);
        let mut encoded = [0u8; FRAME];
        mixer::encode(Codec::Pcmu, &frame, &mut encoded);
    }

    #[test]
    fn dtmf_info_bodies_never_panic(content_type in "\\PC{0,40}", body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = dtmf_of_info(Some(&content_type), &body);
        let _ = dtmf_of_info(Some("application/dtmf-relay"), &body);
        let _ = dtmf_of_info(Some("application/dtmf"), &body);
    }
}
