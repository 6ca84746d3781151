//! Unit tests of SDP: parse/print round trips, offer/answer and SDES keying.

use super::*;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

const BARESIP: &str = "v=0\r\no=- 1234 5678 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
m=audio 40000 RTP/AVP 9 0 8 96 101\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:96 telephone-event/8000\r\na=fmtp:96 0-15\r\na=rtpmap:101 opus/48000/2\r\na=ptime:20\r\na=sendrecv\r\n";

/// An SDES offer as a softphone with SRTP mandatory makes it: RTP/SAVP, two suites.
const SRTP_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
m=audio 5004 RTP/SAVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n\
a=crypto:3 AES_256_CM_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBRPS1uQCVeeCFCanVmcjkpPyw=\r\n\
a=crypto:5 AES_CM_128_HMAC_SHA1_32 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n\
a=crypto:7 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:4\r\n";

/// Terms with a fresh key, as the call model draws one from its IdGenerator.
fn fresh_key() -> SrtpTerms {
    SrtpTerms {
        mode: SrtpMode::Optional,
        key: Some(MasterKey::from_ids(&mut crate::ids::IdGenerator::new(7))),
    }
}

/// sdp draws no key itself: with none given, an RTP/SAVP offer is not usable.
#[test]
fn without_a_key_an_sdes_offer_is_not_taken() {
    assert!(answer(
        &parsed(SRTP_OFFER),
        &MediaPolicy::default(),
        local(),
        &origin(),
        SrtpTerms::default(),
    )
    .is_err());
}

#[test]
fn an_sdes_offer_is_answered_with_its_first_usable_line_and_our_own_key() {
    let offer = parsed(SRTP_OFFER);
    let (answer, negotiated) = answer(
        &offer,
        &MediaPolicy::default(),
        local(),
        &origin(),
        fresh_key(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let keys = negotiated.srtp.unwrap_or_else(|| panic!("no SRTP"));
    assert_eq!(keys.suite, Suite::AesCm128HmacSha1_32);
    assert_eq!(offer.media[0].crypto().map(|c| c.key), Some(keys.theirs));
    assert_ne!(keys.ours, keys.theirs, "our key is our own");
    let text = answer.to_string();
    assert!(text.contains("m=audio 20000 RTP/SAVP 0 101\r\n"), "{text}");
    let line = format!(
        "a=crypto:5 AES_CM_128_HMAC_SHA1_32 inline:{}\r\n",
        STANDARD.encode(keys.ours.0)
    );
    assert!(text.contains(&line), "{text}");
    assert_eq!(text.matches("a=crypto").count(), 1);

    // A re-answer with the key given keeps it.
    let (again, n) = super::answer(
        &offer,
        &MediaPolicy::default(),
        local(),
        &origin(),
        SrtpTerms {
            mode: SrtpMode::Optional,
            key: Some(keys.ours),
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.to_string(), text);
    assert_eq!(n.srtp, Some(keys));
    assert_eq!(key_in(&text), Some(keys.ours));
}

#[test]
fn best_effort_srtp_in_rtp_avp_is_taken_and_mandatory_refuses_plain() {
    let best_effort = SRTP_OFFER.replace("RTP/SAVP", "RTP/AVP");
    let (answer_sdp, n) = answer(
        &parsed(&best_effort),
        &MediaPolicy::default(),
        local(),
        &origin(),
        fresh_key(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(n.srtp.is_some());
    assert!(answer_sdp.to_string().contains("RTP/AVP 0 101"));
    let mandatory = SrtpTerms {
        mode: SrtpMode::Mandatory,
        ..fresh_key()
    };
    let plain = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\n";
    assert_eq!(
        answer(
            &parsed(plain),
            &MediaPolicy::default(),
            local(),
            &origin(),
            mandatory
        )
        .err(),
        Some(NegotiationError::SrtpRequired)
    );
    let (_, n) = answer(
        &parsed(SRTP_OFFER),
        &MediaPolicy::default(),
        local(),
        &origin(),
        mandatory,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(n.srtp.is_some());
    // Only suites and keys we cannot use: RTP/SAVP is refused.
    let unusable = SRTP_OFFER
        .lines()
        .filter(|l| !l.contains("AES_CM_128"))
        .collect::<Vec<_>>()
        .join("\r\n");
    assert_eq!(
        answer(
            &parsed(&unusable),
            &MediaPolicy::default(),
            local(),
            &origin(),
            SrtpTerms::default()
        )
        .err(),
        Some(NegotiationError::NoAcceptableMedia)
    );
}

#[test]
fn our_srtp_offer_takes_only_an_answer_with_its_tag_and_suite() {
    let mut ours = offer(
        &MediaPolicy::default(),
        local(),
        &origin(),
        Direction::SendRecv,
    );
    let key = MasterKey([9; 30]);
    set_offer_key(&mut ours, Some(key));
    let text = ours.to_string();
    assert!(text.contains("RTP/SAVP 8 0 101"), "{text}");
    assert!(
        text.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"),
        "{text}"
    );
    let theirs = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR";
    let reply = |crypto: &str| {
        format!("v=0\r\no=- 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\nm=audio 6000 RTP/SAVP 8\r\n{crypto}")
    };
    let good = reply(&format!(
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{theirs}\r\n"
    ));
    let n = accept_answer(&ours, &parsed(&good), &MediaPolicy::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let keys = n.srtp.unwrap_or_else(|| panic!("no SRTP"));
    assert_eq!((keys.suite, keys.ours), (Suite::AesCm128HmacSha1_80, key));
    for bad in [
        String::new(),
        format!("a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{theirs}\r\n"),
        format!("a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:{theirs}\r\n"),
    ] {
        assert_eq!(
            accept_answer(&ours, &parsed(&reply(&bad)), &MediaPolicy::default()).err(),
            Some(NegotiationError::NoCryptoInAnswer),
            "{bad}"
        );
    }
    // Made plain again for a peer that takes RTP.
    set_offer_key(&mut ours, None);
    let text = ours.to_string();
    assert!(
        text.contains("RTP/AVP") && !text.contains("crypto"),
        "{text}"
    );
}

fn parsed(text: &str) -> SessionDescription {
    parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn local() -> SocketAddr {
    "127.0.0.1:20000".parse().unwrap_or_else(|_| unreachable!())
}

fn origin() -> Origin {
    Origin::new(
        "127.0.0.1".parse().unwrap_or(IpAddr::from([127, 0, 0, 1])),
        7,
    )
}

#[test]
fn answer_takes_offerers_first_supported_codec_and_its_event_type() {
    let (answer, negotiated) = answer(
        &parsed(BARESIP),
        &MediaPolicy::default(),
        local(),
        &origin(),
        SrtpTerms::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        negotiated.codec,
        Codec::Pcmu,
        "offerer listed PCMU before PCMA"
    );
    assert_eq!(negotiated.payload_type, 0);
    assert_eq!(
        negotiated.telephone_event,
        Some(96),
        "the offer's number, not ours"
    );
    assert_eq!(
        negotiated.remote,
        Some(
            "192.0.2.10:40000"
                .parse()
                .unwrap_or_else(|_| unreachable!())
        )
    );
    let text = answer.to_string();
    assert!(text.contains("m=audio 20000 RTP/AVP 0 96\r\n"), "{text}");
    assert!(text.contains("c=IN IP4 127.0.0.1\r\n"));
    assert!(text.contains("a=rtpmap:96 telephone-event/8000\r\n"));
    assert!(text.contains("a=sendrecv"));
}

#[test]
fn no_telephone_event_unless_offered() {
    let offer = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 5004 RTP/AVP 8\r\n";
    let (answer, negotiated) = answer(
        &parsed(offer),
        &MediaPolicy::default(),
        local(),
        &origin(),
        SrtpTerms::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(negotiated.telephone_event, None);
    assert!(!answer.to_string().contains("telephone-event"));
}

#[test]
fn g729_only_or_video_only_is_not_acceptable() {
    let g729 = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 5004 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n";
    assert_eq!(
        answer(
            &parsed(g729),
            &MediaPolicy::default(),
            local(),
            &origin(),
            SrtpTerms::default()
        )
        .err(),
        Some(NegotiationError::NoAcceptableMedia)
    );
    let video = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=video 5006 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n";
    assert_eq!(
        answer(
            &parsed(video),
            &MediaPolicy::default(),
            local(),
            &origin(),
            SrtpTerms::default()
        )
        .err(),
        Some(NegotiationError::NoAcceptableMedia)
    );
    let srtp = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 5004 RTP/SAVP 0\r\n";
    assert!(answer(
        &parsed(srtp),
        &MediaPolicy::default(),
        local(),
        &origin(),
        SrtpTerms::default()
    )
    .is_err());
}

#[test]
fn other_streams_are_rejected_with_port_zero() {
    let offer = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
m=video 5006 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\nm=audio 5004 RTP/AVP 8\r\nm=audio 5008 RTP/AVP 0\r\n";
    let (answer, _) = answer(
        &parsed(offer),
        &MediaPolicy::default(),
        local(),
        &origin(),
        SrtpTerms::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let ports: Vec<u16> = answer.media.iter().map(|m| m.port).collect();
    assert_eq!(ports, vec![0, 20000, 0]);
    assert_eq!(answer.media[0].formats, vec!["96"]);
}

#[test]
fn hold_directions() {
    let base = "v=0\r\no=- 1 2 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 5004 RTP/AVP 8\r\n";
    for (attribute, theirs, ours) in [
        ("a=sendonly\r\n", Direction::SendOnly, "a=recvonly"),
        ("a=recvonly\r\n", Direction::RecvOnly, "a=sendonly"),
        ("a=inactive\r\n", Direction::Inactive, "a=inactive"),
    ] {
        let (answer, n) = answer(
            &parsed(&format!("{base}{attribute}")),
            &MediaPolicy::default(),
            local(),
            &origin(),
            SrtpTerms::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n.direction, theirs);
        assert!(answer.to_string().contains(ours));
    }
    let old_hold = base.replace("c=IN IP4 10.0.0.1", "c=IN IP4 0.0.0.0");
    let (answer, n) = answer(
        &parsed(&old_hold),
        &MediaPolicy::default(),
        local(),
        &origin(),
        SrtpTerms::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((n.direction, n.remote), (Direction::SendOnly, None));
    assert!(answer.to_string().contains("a=recvonly"));
}

#[test]
fn ipv6_lf_only_and_round_trip() {
    let text = "v=0\no=- 1 1 IN IP6 2001:db8::1\ns=-\nc=IN IP6 2001:db8::1\nt=0 0\nm=audio 5004 RTP/AVP 0 101\na=rtpmap:101 telephone-event/8000\na=fmtp:101 0-15\na=ptime:20\na=rtcp:5005\na=sendrecv\n";
    let sdp = parsed(text);
    assert_eq!(sdp.media[0].rtcp_port, Some(5005));
    let printed = sdp.to_string();
    assert!(printed.contains("c=IN IP6 2001:db8::1\r\n"));
    assert_eq!(parsed(&printed), sdp);
    let ours = offer(
        &MediaPolicy::default(),
        "[::1]:20000".parse().unwrap_or_else(|_| unreachable!()),
        &origin(),
        Direction::SendRecv,
    );
    assert_eq!(parsed(&ours.to_string()), ours);
    assert!(ours
        .to_string()
        .contains("m=audio 20000 RTP/AVP 8 0 101\r\n"));
}

#[test]
fn accept_answer_checks_the_answer() {
    let ours = offer(
        &MediaPolicy::default(),
        local(),
        &origin(),
        Direction::SendRecv,
    );
    let good = "v=0\r\no=- 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\nm=audio 6000 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\n";
    let n = accept_answer(&ours, &parsed(good), &MediaPolicy::default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((n.codec, n.telephone_event), (Codec::Pcma, Some(101)));
    let rejected = good.replace("6000", "0");
    assert_eq!(
        accept_answer(&ours, &parsed(&rejected), &MediaPolicy::default()).err(),
        Some(NegotiationError::Rejected)
    );
    let only_pcmu = MediaPolicy {
        codecs: vec![Codec::Pcmu],
        ..MediaPolicy::default()
    };
    let ours = offer(&only_pcmu, local(), &origin(), Direction::SendRecv);
    assert_eq!(
        accept_answer(&ours, &parsed(good), &MediaPolicy::default()).err(),
        Some(NegotiationError::AnswerNotInOffer)
    );
}

#[test]
fn malformed_sdp_names_the_line() {
    assert_eq!(
        parse("o=x"),
        Err(SdpError::Invalid {
            line: 1,
            reason: "SDP must start with v=0"
        })
    );
    assert!(matches!(
        parse("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 nowhere\r\n"),
        Err(SdpError::Invalid { line: 3, .. })
    ));
    assert!(matches!(
        parse("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio x RTP/AVP 0\r\n"),
        Err(SdpError::Invalid { line: 3, .. })
    ));
    assert!(parse("v=0\r\n").is_err());
}

mod property {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,400}") {
            if let Ok(sdp) = parse(&text) {
                let _ = answer(&sdp, &MediaPolicy::default(), local(), &origin(), SrtpTerms::default());
            }
        }

        #[test]
        fn mutated_offers_never_panic(position in 0usize..BARESIP.len(), byte in 32u8..127) {
            let mut bytes = BARESIP.as_bytes().to_vec();
            bytes[position] = byte;
            let text = String::from_utf8_lossy(&bytes).to_string();
            if let Ok(sdp) = parse(&text) {
                let _ = answer(&sdp, &MediaPolicy::default(), local(), &origin(), SrtpTerms::default());
                let _ = parse(&sdp.to_string());
            }
        }
    }
}
