//! Bounded fuzzing of every parser that reads what peers send, beside the SIP parser's own
//! property tests: SDP bodies, RTP and RTCP packets (the relay's and the mixer's paths), DTMF
//! INFO bodies, the jitter buffer. Arbitrary bytes and mutations of valid inputs must never
//! panic; what parses must be used safely. Case counts are kept so the run takes seconds (the
//! CI runs it); raise `PROPTEST_CASES` for a long run.

use std::time::{Duration, Instant};

use hotline_gateway::call::hotkey::dtmf_of_info;
use hotline_gateway::media::mixer::{self, JitterBuffer, FRAME};
use hotline_gateway::media::rtp::{classify, rewrite_rtcp_ssrc, StreamRewriter};
use hotline_gateway::sip::sdp::Codec;
use hotline_gateway::sip::sdp::{self, MediaPolicy};
use proptest::prelude::*;

const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
m=audio 16070 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n";

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
            let _ = sdp::answer(&offer, &MediaPolicy::default(), "192.0.2.9:20000".parse().unwrap_or_else(|_| unreachable!()), &origin);
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
            if let Ok((answer, _)) = sdp::answer(&offer, &policy, "192.0.2.9:20000".parse().unwrap_or_else(|_| unreachable!()), &origin) {
                // Our answer always parses back.
                prop_assert!(sdp::parse(&answer.to_string()).is_ok());
            }
        }
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
