//! Call flows end to end: in-process user agents on loopback sockets talk to a gateway started
//! in this process, exactly as a carrier and a hotline ACD would.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{establish, sdp, Gateway, RtpPeer, Ua};
use hotline_gateway::sip::message::{ack_for_non_2xx, Message, Method};

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// A caller ("carrier") and a callee ("hotline") around a gateway routing 12345 to the callee.
async fn setup(extra_sip: &str, extra_media: &str) -> (Gateway, Ua, Ua) {
    let mut caller = Ua::bind("carrier", LOCALHOST).await;
    let mut callee = Ua::bind("hotline", LOCALHOST).await;
    let gateway = Gateway::start(
        &[
            ("carrier", caller.address, ""),
            ("hotline", callee.address, "platform = \"12345\""),
        ],
        &[("12345", &["hotline"])],
        extra_sip,
        extra_media,
    )
    .await;
    caller.set_gateway(gateway.sip);
    callee.set_gateway(gateway.sip);
    (gateway, caller, callee)
}

#[tokio::test]
async fn basic_call_carries_callers_number_and_audio_both_ways_and_is_recorded() {
    let (mut gateway, mut caller, mut callee) = setup("", "").await;
    let call = establish(&mut caller, &mut callee, &[8, 101], &[8, 101]).await;

    // The callee sees the citizen's number and the gateway's own address in SDP.
    assert_eq!(
        call.incoming.from().and_then(|f| f.uri.user),
        Some("13800138000".to_string())
    );
    assert_eq!(call.incoming.uri.user.as_deref(), Some("12345"));
    assert_ne!(call.incoming.call_id(), call.invite.call_id());
    assert_eq!(call.gateway_b_media.ip(), LOCALHOST);
    assert_ne!(call.gateway_a_media, call.gateway_b_media);

    // Audio: ten packets each way through the gateway's ports.
    for i in 0..10u16 {
        call.caller_rtp
            .send(
                call.gateway_a_media,
                8,
                1000 + i,
                160 * u32::from(i),
                0xAAAA,
                &[0xD5; 160],
            )
            .await;
    }
    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.push(call.callee_rtp.recv().await);
    }
    assert!(seen
        .iter()
        .all(|p| p.payload_type == 8 && p.payload == vec![0xD5; 160]));
    let ssrc = seen[0].ssrc;
    assert!(
        seen.iter().all(|p| p.ssrc == ssrc),
        "one SSRC towards the callee"
    );
    assert_ne!(ssrc, 0xAAAA, "the gateway's own SSRC");
    for pair in seen.windows(2) {
        assert_eq!(pair[1].sequence, pair[0].sequence.wrapping_add(1));
        assert_eq!(pair[1].timestamp, pair[0].timestamp.wrapping_add(160));
    }
    for i in 0..10u16 {
        call.callee_rtp
            .send(
                call.gateway_b_media,
                8,
                50 + i,
                8000 + 160 * u32::from(i),
                0xBBBB,
                &[0x55; 160],
            )
            .await;
    }
    for _ in 0..10 {
        let packet = call.caller_rtp.recv().await;
        assert_eq!(packet.payload, vec![0x55; 160]);
    }

    // The caller hangs up; the callee gets the BYE.
    let bye = caller.in_dialog(&call.invite, &call.ok, "BYE", 2, "");
    caller.send_request(&bye).await;
    let incoming_bye = callee.expect_request("BYE").await;
    callee
        .send_response(&callee.answer(&incoming_bye, 200, None))
        .await;
    caller.expect_response("BYE", 200).await;

    let record = gateway.ended_record(call.invite.call_id()).await;
    assert_eq!(record.caller, "13800138000");
    assert_eq!(record.called, "12345");
    assert_eq!(record.a_peer, "carrier");
    assert_eq!(record.b_peer.as_deref(), Some("hotline"));
    assert_eq!(record.b_call_id.as_deref(), Some(call.incoming.call_id()));
    assert_eq!(record.ended_by.as_deref(), Some("caller"));
    assert_eq!(record.final_status, Some(200));
    assert!(record.answered_at.is_some());
    assert_eq!((record.rtp_a_to_b, record.rtp_b_to_a), (10, 10));

    let (status, metrics) = gateway.http_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("hotline_calls_total{result=\"answered\"} 1"),
        "{metrics}"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn callee_hangs_up() {
    let (mut gateway, mut caller, mut callee) = setup("", "").await;
    let call = establish(&mut caller, &mut callee, &[0], &[0]).await;
    let bye = callee.uas_request(&call.incoming, "BYE", 1);
    callee.send_request(&bye).await;
    callee.expect_response("BYE", 200).await;
    let incoming_bye = caller.expect_request("BYE").await;
    assert_eq!(incoming_bye.call_id(), call.invite.call_id());
    caller
        .send_response(&caller.answer(&incoming_bye, 200, None))
        .await;
    let record = gateway.ended_record(call.invite.call_id()).await;
    assert_eq!(record.ended_by.as_deref(), Some("callee"));
    gateway.stop().await;
}

#[tokio::test]
async fn pcmu_caller_and_pcma_callee_are_transcoded() {
    let (mut gateway, mut caller, mut callee) = setup("", "").await;
    let call = establish(&mut caller, &mut callee, &[0], &[8]).await;
    // μ-law 0x80 is near full scale negative... use a mid-range value and check the A-law
    // code decodes to the same level.
    let ulaw = hotline_gateway::media::g711::linear_to_ulaw(1000);
    call.caller_rtp
        .send(call.gateway_a_media, 0, 1, 0, 7, &[ulaw; 160])
        .await;
    let packet = call.callee_rtp.recv().await;
    assert_eq!(packet.payload_type, 8);
    let level = hotline_gateway::media::g711::alaw_to_linear(packet.payload[0]);
    assert!((i32::from(level) - 1000).abs() < 64, "decoded {level}");
    gateway.stop().await;
}

#[tokio::test]
async fn cancel_before_answer_reaches_the_callee() {
    let (mut gateway, mut caller, mut callee) = setup("", "").await;
    let rtp = RtpPeer::bind(LOCALHOST).await;
    let invite = caller.invite(
        "12345",
        "13800138000",
        &sdp(rtp.address, &[8], "sendrecv"),
        "",
    );
    caller.send_request(&invite).await;
    let incoming = callee.expect_request("INVITE").await;
    callee
        .send_response(&callee.answer(&incoming, 180, None))
        .await;
    caller.expect_response("INVITE", 180).await;
    caller.send_request(&caller.cancel(&invite)).await;
    caller.expect_response("CANCEL", 200).await;
    caller.expect_response("INVITE", 487).await;
    let cancel = callee.expect_request("CANCEL").await;
    callee
        .send_response(&callee.answer(&cancel, 200, None))
        .await;
    callee
        .send_response(&callee.answer(&incoming, 487, None))
        .await;
    callee.expect_request("ACK").await;
    let record = gateway.ended_record(invite.call_id()).await;
    assert_eq!(record.final_status, Some(487));
    assert_eq!(record.ended_by.as_deref(), Some("caller"));
    assert!(record.answered_at.is_none());
    gateway.stop().await;
}

#[tokio::test]
async fn hold_and_unhold_are_answered_by_the_gateway() {
    let (mut gateway, mut caller, mut callee) = setup("", "").await;
    let call = establish(&mut caller, &mut callee, &[8], &[8]).await;
    let hold = caller.in_dialog(
        &call.invite,
        &call.ok,
        "INVITE",
        2,
        &sdp(call.caller_rtp.address, &[8], "sendonly"),
    );
    caller.send_request(&hold).await;
    let ok = caller.expect_response("INVITE", 200).await;
    assert!(
        ok.sdp().is_some_and(|s| s.contains("a=recvonly")),
        "{:?}",
        ok.sdp()
    );
    let request = caller.ack(&hold, &ok, "");
    caller.send_request(&request).await;
    // Held: the callee's audio is not sent to the caller.
    call.callee_rtp
        .send(call.gateway_b_media, 8, 1, 0, 9, &[0x55; 160])
        .await;
    assert!(call
        .caller_rtp
        .recv_within(Duration::from_millis(300))
        .await
        .is_none());
    let unhold = caller.in_dialog(
        &call.invite,
        &call.ok,
        "INVITE",
        3,
        &sdp(call.caller_rtp.address, &[8], "sendrecv"),
    );
    caller.send_request(&unhold).await;
    let ok = caller.expect_response("INVITE", 200).await;
    assert!(ok.sdp().is_some_and(|s| s.contains("a=sendrecv")));
    let request = caller.ack(&unhold, &ok, "");
    caller.send_request(&request).await;
    // The marker for the held packet: the first the caller hears is the one sent after the
    // resume, so the held one was not merely late.
    call.callee_rtp
        .send(call.gateway_b_media, 8, 2, 160, 9, &[0x56; 160])
        .await;
    assert_eq!(call.caller_rtp.recv().await.payload, vec![0x56; 160]);
    // The callee was never re-INVITEd.
    callee
        .expect_none_then_marker(
            Duration::from_millis(200),
            "the callee was re-INVITEd",
            |m| matches!(m, Message::Request(r) if r.method == Method::Invite),
        )
        .await;
    gateway.stop().await;
}

#[tokio::test]
async fn failover_to_second_peer_on_503_and_on_silence() {
    let mut caller = Ua::bind("carrier", LOCALHOST).await;
    let mut busy = Ua::bind("first", LOCALHOST).await;
    let silent = Ua::bind("silent", LOCALHOST).await;
    let mut second = Ua::bind("second", LOCALHOST).await;
    let mut gateway = Gateway::start(
        &[
            ("carrier", caller.address, ""),
            ("first", busy.address, ""),
            ("silent", silent.address, ""),
            ("second", second.address, ""),
        ],
        &[
            ("12345", &["first", "second"]),
            ("110", &["silent", "second"]),
        ],
        "",
        "",
    )
    .await;
    caller.set_gateway(gateway.sip);
    busy.set_gateway(gateway.sip);
    second.set_gateway(gateway.sip);
    let rtp = RtpPeer::bind(LOCALHOST).await;

    // First peer answers 503: the second is tried, the caller never sees the 503.
    let invite = caller.invite(
        "12345",
        "13800138000",
        &sdp(rtp.address, &[8], "sendrecv"),
        "",
    );
    caller.send_request(&invite).await;
    let first_try = busy.expect_request("INVITE").await;
    busy.send_response(&busy.answer(&first_try, 503, None))
        .await;
    busy.expect_request("ACK").await;
    let second_try = second.expect_request("INVITE").await;
    assert_eq!(
        second_try.from().and_then(|f| f.uri.user),
        Some("13800138000".to_string())
    );
    second
        .send_response(&second.answer(&second_try, 200, Some(&sdp(rtp.address, &[8], "sendrecv"))))
        .await;
    let ok = caller.expect_response("INVITE", 200).await;
    let request = caller.ack(&invite, &ok, "");
    caller.send_request(&request).await;
    let record_b_peer = {
        let request = caller.in_dialog(&invite, &ok, "BYE", 2, "");
        caller.send_request(&request).await;
        let bye = second.expect_request("BYE").await;
        second.send_response(&second.answer(&bye, 200, None)).await;
        gateway.ended_record(invite.call_id()).await.b_peer
    };
    assert_eq!(record_b_peer.as_deref(), Some("second"));

    // First peer never answers: after peer_response_timeout (700 ms here) the second rings.
    let invite = caller.invite(
        "110",
        "13800138000",
        &sdp(rtp.address, &[8], "sendrecv"),
        "",
    );
    caller.send_request(&invite).await;
    let next = second.expect_request("INVITE").await;
    assert_eq!(next.uri.user.as_deref(), Some("110"));
    second.send_response(&second.answer(&next, 486, None)).await;
    caller.expect_response("INVITE", 486).await;
    gateway.stop().await;
}

#[tokio::test]
async fn unknown_source_gets_403_unknown_number_404_bad_media_488() {
    let (mut gateway, mut caller, _callee) = setup("", "").await;
    let rtp = RtpPeer::bind(LOCALHOST).await;
    let mut stranger = Ua::bind("stranger", LOCALHOST).await;
    stranger.set_gateway(gateway.sip);
    let invite = stranger.invite(
        "12345",
        "13900000000",
        &sdp(rtp.address, &[8], "sendrecv"),
        "",
    );
    stranger.send_request(&invite).await;
    stranger.expect_response("INVITE", 403).await;

    let invite = caller.invite(
        "99999",
        "13800138000",
        &sdp(rtp.address, &[8], "sendrecv"),
        "",
    );
    caller.send_request(&invite).await;
    caller.expect_response("INVITE", 404).await;

    let invite = caller.invite(
        "12345",
        "13800138000",
        &sdp(rtp.address, &[18], "sendrecv"),
        "",
    );
    caller.send_request(&invite).await;
    caller.expect_response("INVITE", 488).await;

    let invite = caller.invite(
        "12345",
        "13800138000",
        &sdp(rtp.address, &[8], "sendrecv"),
        "",
    );
    let mut too_far = invite.clone();
    too_far.headers.set("Max-Forwards", "0");
    caller.send_request(&too_far).await;
    caller.expect_response("INVITE", 483).await;

    let (_, metrics) = gateway.http_get("/metrics").await;
    assert!(
        metrics.contains("hotline_sip_rejected_unknown_peer_total 1"),
        "{metrics}"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn options_from_a_peer_is_answered() {
    let (mut gateway, mut caller, _callee) = setup("", "").await;
    let text = format!(
        "OPTIONS sip:{gw} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKopt1\r\nFrom: <sip:ping@{me}>;tag=o1\r\n\
To: <sip:{gw}>\r\nCall-ID: options-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        gw = gateway.sip,
        me = caller.address
    );
    caller.send(&text).await;
    let ok = caller.expect_response("OPTIONS", 200).await;
    assert!(ok
        .headers
        .get("Allow")
        .is_some_and(|a| a.contains("INVITE")));
    gateway.stop().await;
}

#[tokio::test]
async fn tcp_caller_with_partial_and_pipelined_messages() {
    let mut caller = Ua::bind("carrier", LOCALHOST).await;
    let mut callee = Ua::bind("hotline", LOCALHOST).await;
    // A TCP client's source port is ephemeral: the carrier is known by its IP.
    let mut gateway = Gateway::start(
        &[
            ("carrier", caller.address, "any_port = true"),
            ("hotline", callee.address, ""),
        ],
        &[("12345", &["hotline"])],
        "",
        "",
    )
    .await;
    caller.set_gateway(gateway.sip);
    callee.set_gateway(gateway.sip);
    caller.connect_tcp().await;
    let rtp = RtpPeer::bind(LOCALHOST).await;
    let invite = caller.invite(
        "12345",
        "13800138000",
        &sdp(rtp.address, &[8], "sendrecv"),
        "",
    );
    let bytes = invite.to_bytes();
    // Split the INVITE across two writes, then pipeline an OPTIONS behind a keep-alive.
    caller.send_raw(&bytes[..100]).await;
    caller.send_raw(&bytes[100..]).await;
    let options = format!(
        "\r\n\r\nOPTIONS sip:{gw} SIP/2.0\r\nVia: SIP/2.0/TCP {me};branch=z9hG4bKtcpopt\r\nFrom: <sip:ping@{me}>;tag=o1\r\n\
To: <sip:{gw}>\r\nCall-ID: options-tcp\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        gw = gateway.sip,
        me = caller.address
    );
    caller.send_raw(options.as_bytes()).await;
    let incoming = callee.expect_request("INVITE").await;
    callee
        .send_response(&callee.answer(&incoming, 200, Some(&sdp(rtp.address, &[8], "sendrecv"))))
        .await;
    let mut got_ok = false;
    let mut got_options = false;
    while !(got_ok && got_options) {
        match caller.recv().await {
            Message::Response(r)
                if r.status == 200 && r.cseq().is_some_and(|c| c.method == Method::Invite) =>
            {
                got_ok = true
            }
            Message::Response(r)
                if r.status == 200 && r.cseq().is_some_and(|c| c.method == Method::Options) =>
            {
                got_options = true
            }
            _ => {}
        }
    }
    gateway.stop().await;
}

#[tokio::test]
async fn shutdown_ends_active_calls_with_bye_and_records_them() {
    let (mut gateway, mut caller, mut callee) = setup("", "").await;
    let call = establish(&mut caller, &mut callee, &[8], &[8]).await;
    let stop = gateway.shutdown.clone();
    stop.cancel();
    let caller_bye = caller.expect_request("BYE").await;
    caller
        .send_response(&caller.answer(&caller_bye, 200, None))
        .await;
    let callee_bye = callee.expect_request("BYE").await;
    callee
        .send_response(&callee.answer(&callee_bye, 200, None))
        .await;
    gateway.stop().await;
    let record = gateway
        .calls()
        .into_iter()
        .find(|r| r.a_call_id == call.invite.call_id());
    let record = record.unwrap_or_else(|| panic!("no record"));
    assert_eq!(record.ended_by.as_deref(), Some("gateway"));
    assert_eq!(record.end_reason.as_deref(), Some("gateway shutdown"));
}

#[tokio::test]
async fn media_inactivity_ends_the_call() {
    let (mut gateway, mut caller, mut callee) = setup("", "inactivity_timeout_secs = 1").await;
    let call = establish(&mut caller, &mut callee, &[8], &[8]).await;
    let bye = caller.expect_request("BYE").await;
    assert!(bye
        .headers
        .get("Reason")
        .is_some_and(|r| r.contains("media timeout")));
    caller.send_response(&caller.answer(&bye, 200, None)).await;
    let bye = callee.expect_request("BYE").await;
    callee.send_response(&callee.answer(&bye, 200, None)).await;
    let record = gateway.ended_record(call.invite.call_id()).await;
    assert_eq!(record.end_reason.as_deref(), Some("media timeout"));
    gateway.stop().await;
}

#[tokio::test]
async fn source_change_behind_the_gateway_keeps_one_continuous_stream() {
    let (mut gateway, mut caller, mut callee) = setup("", "").await;
    let call = establish(&mut caller, &mut callee, &[8], &[8]).await;
    for i in 0..3u16 {
        call.callee_rtp
            .send(
                call.gateway_b_media,
                8,
                100 + i,
                1000 + 160 * u32::from(i),
                0x1111,
                &[1; 160],
            )
            .await;
    }
    // The far end restarts its stream with new SSRC, sequence and timestamp.
    for i in 0..3u16 {
        call.callee_rtp
            .send(
                call.gateway_b_media,
                8,
                60000 + i,
                9_000_000 + 160 * u32::from(i),
                0x2222,
                &[2; 160],
            )
            .await;
    }
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(call.caller_rtp.recv().await);
    }
    assert!(seen.iter().all(|p| p.ssrc == seen[0].ssrc));
    for pair in seen.windows(2) {
        assert_eq!(
            pair[1].sequence,
            pair[0].sequence.wrapping_add(1),
            "{seen:?}"
        );
        assert!(
            pair[1].timestamp.wrapping_sub(pair[0].timestamp) < 8000,
            "{seen:?}"
        );
    }
    assert!(seen[3].marker, "the switch is marked");
    gateway.stop().await;
}

#[tokio::test]
async fn ipv6_peers_and_tel_uris() {
    let v6: IpAddr = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
    if std::net::UdpSocket::bind((v6, 0)).is_err() {
        eprintln!("no IPv6 loopback on this machine; skipping");
        return;
    }
    let mut caller = Ua::bind("carrier", v6).await;
    let mut callee = Ua::bind("hotline", v6).await;
    let mut gateway = Gateway::start(
        &[
            ("carrier", caller.address, ""),
            ("hotline", callee.address, ""),
        ],
        &[("12345", &["hotline"])],
        "",
        "",
    )
    .await;
    caller.set_gateway(gateway.sip);
    callee.set_gateway(gateway.sip);
    let rtp = RtpPeer::bind(v6).await;
    let mut invite = caller.invite(
        "12345",
        "13800138000",
        &sdp(rtp.address, &[8], "sendrecv"),
        "P-Asserted-Identity: <tel:+8613800138000>\r\n",
    );
    invite.uri =
        hotline_gateway::sip::message::Uri::parse("tel:12345").unwrap_or_else(|e| panic!("{e}"));
    caller.send_request(&invite).await;
    let incoming = callee.expect_request("INVITE").await;
    assert_eq!(
        incoming.headers.get("P-Asserted-Identity"),
        Some("<tel:+8613800138000>")
    );
    assert!(incoming.sdp().is_some_and(|s| s.contains("c=IN IP6 ::1")));
    callee
        .send_response(&callee.answer(&incoming, 200, Some(&sdp(rtp.address, &[8], "sendrecv"))))
        .await;
    let ok = caller.expect_response("INVITE", 200).await;
    assert!(ok
        .headers
        .get("Contact")
        .is_some_and(|c| c.contains("[::1]")));
    gateway.stop().await;
}

#[tokio::test]
async fn merged_request_gets_482() {
    let (mut gateway, mut caller, mut callee) = setup("", "").await;
    let rtp = RtpPeer::bind(LOCALHOST).await;
    let invite = caller.invite(
        "12345",
        "13800138000",
        &sdp(rtp.address, &[8], "sendrecv"),
        "",
    );
    caller.send_request(&invite).await;
    let incoming = callee.expect_request("INVITE").await;
    // The same request again by another path (§8.2.2.2): same From tag, Call-ID and CSeq,
    // another branch.
    let mut copy = invite.clone();
    let via = copy
        .headers
        .get("Via")
        .unwrap_or_default()
        .replace(";branch=z9hG4bK", ";branch=z9hG4bKother");
    copy.headers.set("Via", via);
    caller.send_request(&copy).await;
    caller.expect_response("INVITE", 482).await;
    // The original call is unaffected.
    callee
        .send_response(&callee.answer(&incoming, 200, Some(&sdp(rtp.address, &[8], "sendrecv"))))
        .await;
    caller.expect_response("INVITE", 200).await;
    gateway.stop().await;
}

#[tokio::test]
async fn media_latches_to_the_callee_and_relatches_after_a_nat_rebinding() {
    let (mut gateway, mut caller, mut callee) = setup("", "").await;
    let call = establish(&mut caller, &mut callee, &[8], &[8]).await;
    let b_media = call.gateway_b_media;
    let callee_sends = |sequence: u16, payload: u8| {
        let rtp = &call.callee_rtp;
        async move {
            rtp.send(
                b_media,
                8,
                sequence,
                160 * u32::from(sequence),
                0x1111,
                &[payload; 160],
            )
            .await
        }
    };
    callee_sends(1, 1).await;
    assert_eq!(call.caller_rtp.recv().await.payload, vec![1; 160]);

    // A stranger on another address, and the callee's own IP from a new port while the old
    // one is still talking: neither reaches the caller; the next packet the caller hears is the
    // callee's.
    let stranger = RtpPeer::bind(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2))).await;
    let rebound = RtpPeer::bind(LOCALHOST).await;
    for sequence in 2..5 {
        stranger
            .send(b_media, 8, sequence, 0, 0x6666, &[6; 160])
            .await;
        rebound
            .send(b_media, 8, sequence, 0, 0x7777, &[7; 160])
            .await;
    }
    callee_sends(5, 1).await;
    assert_eq!(call.caller_rtp.recv().await.payload, vec![1; 160]);

    // The caller's audio goes to where the callee really sends from.
    call.caller_rtp
        .send(call.gateway_a_media, 8, 1, 160, 0x2222, &[2; 160])
        .await;
    assert_eq!(call.callee_rtp.recv().await.payload, vec![2; 160]);

    // The callee's NAT rebinds: the old port falls silent and RTP comes from the new one. It is
    // taken once the old source has been quiet for the relatch interval (2 s).
    let mut sequence = 100;
    let heard = loop {
        rebound
            .send(b_media, 8, sequence, 0, 0x7777, &[7; 160])
            .await;
        sequence += 1;
        if let Some(packet) = call
            .caller_rtp
            .recv_within(Duration::from_millis(100))
            .await
        {
            break packet;
        }
        assert!(sequence < 160, "the rebound source was never latched");
    };
    assert_eq!(heard.payload, vec![7; 160]);
    assert!(sequence > 110, "relatched before the old source was quiet");
    call.caller_rtp
        .send(call.gateway_a_media, 8, 2, 320, 0x2222, &[3; 160])
        .await;
    assert_eq!(rebound.recv().await.payload, vec![3; 160]);
    call.callee_rtp
        .expect_nothing_then(
            Duration::from_millis(200),
            "the caller's audio went to the old source",
            async {
                call.caller_rtp
                    .send(call.gateway_a_media, 8, 3, 480, 0x2222, &[4; 160])
                    .await;
                assert_eq!(rebound.recv().await.payload, vec![4; 160]);
            },
        )
        .await;
    gateway.stop().await;
}

/// Overload control end to end. With a queueing-delay target of 0 every message counts as
/// late, so once one 100 ms window has been observed the queue reads as standing: a new INVITE
/// is answered 503 + Retry-After statelessly and never reaches the callee, while requests that
/// are no new call (OPTIONS here) are still served.
#[tokio::test]
async fn a_standing_queue_sheds_new_invites_with_503_retry_after() {
    let (mut gateway, mut caller, mut callee) = setup("overload_queue_delay_ms = 0", "").await;
    let options = |n: u32, me: SocketAddr, gw: SocketAddr| {
        format!(
            "OPTIONS sip:{gw} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKshed{n}\r\n\
From: <sip:ping@{me}>;tag=s{n}\r\nTo: <sip:{gw}>\r\nCall-ID: shed-{n}\r\nCSeq: 1 OPTIONS\r\n\
Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
    };
    // The first message opens the detector's first window; the first message handled one
    // interval (100 ms) or more later closes it.
    caller.send(&options(1, caller.address, gateway.sip)).await;
    caller.expect_response("OPTIONS", 200).await;
    let rtp = RtpPeer::bind(LOCALHOST).await;
    // No fixed sleep guesses when the window has closed: probe with new INVITEs the gateway
    // refuses before any call exists (an extension it does not do: 420, §8.2.2.3) until one
    // is shed instead, which it does only once the queue reads as standing.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let probe = caller.invite(
            "12345",
            "13800138000",
            &sdp(rtp.address, &[8], "sendrecv"),
            "Require: x-window-probe\r\n",
        );
        caller.send_request(&probe).await;
        let answer = loop {
            match caller.recv().await {
                Message::Response(r)
                    if r.status >= 200 && r.headers.get("Call-ID") == Some(probe.call_id()) =>
                {
                    break r
                }
                _ => continue,
            }
        };
        if answer.status == 503 {
            break;
        }
        assert_eq!(answer.status, 420, "the probe: {answer:?}");
        caller.send_request(&ack_for_non_2xx(&probe, &answer)).await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first overload window never closed"
        );
        // The window is the gateway's own clock and has no signal: probe again shortly.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // That 503 was the overload control's (not another limit's), and only new calls are shed.
    assert_eq!(
        gateway.metric("hotline_sip_shed_overload_total").await,
        Some(1.0)
    );
    caller.send(&options(2, caller.address, gateway.sip)).await;
    caller.expect_response("OPTIONS", 200).await;

    let invite = caller.invite(
        "12345",
        "13800138000",
        &sdp(rtp.address, &[8], "sendrecv"),
        "",
    );
    caller.send_request(&invite).await;
    let busy = caller.expect_response("INVITE", 503).await;
    assert_eq!(busy.headers.get("Retry-After"), Some("2"));
    callee
        .expect_nothing_then_marker(Duration::from_millis(300), "a shed call reached the callee")
        .await;
    // The probe and the call.
    let (_, metrics) = gateway.http_get("/metrics").await;
    assert!(
        metrics.contains("hotline_sip_shed_overload_total 2"),
        "{metrics}"
    );
    assert!(gateway.calls().is_empty(), "a shed call has no record");
    gateway.stop().await;
}

/// The lane kept for 110 (`[[platform]] reserved_calls`): with `max_calls = 3` and one call
/// kept for 110, two calls to 12345 take the rest; a third is refused 503 (counted as the
/// reserve's), while a citizen's call to 110 is still put through and shows as the reserve
/// in use.
#[tokio::test]
async fn the_lane_kept_for_110_takes_its_call_when_12345_has_filled_the_rest() {
    let mut citizen = Ua::bind("carrier", LOCALHOST).await;
    let mut agent = Ua::bind("hotline", LOCALHOST).await;
    let mut police = Ua::bind("police", LOCALHOST).await;
    let mut gateway = Gateway::start_with_tables(
        &[
            ("carrier", citizen.address, ""),
            ("hotline", agent.address, "platform = \"12345\""),
            ("police", police.address, "platform = \"110\""),
        ],
        &[("12345", &["hotline"]), ("110", &["police"])],
        "max_calls = 3\n",
        "",
        "\n[[platform]]\nname = \"110\"\ntoken = \"token-of-the-110-platform\"\nreserved_calls = 1\n",
    )
    .await;
    for ua in [&mut citizen, &mut agent, &mut police] {
        ua.set_gateway(gateway.sip);
    }
    gateway.metric_reaches("hotline_reserve_calls", 1.0).await;
    let _first = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let _second = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let rtp = RtpPeer::bind(LOCALHOST).await;
    let third = citizen.invite(
        "12345",
        "13800138009",
        &sdp(rtp.address, &[8], "sendrecv"),
        "",
    );
    citizen.send_request(&third).await;
    citizen.expect_response("INVITE", 503).await;
    assert_eq!(
        gateway.metric("hotline_calls_refused_reserve_total").await,
        Some(1.0)
    );
    let _to_110 =
        common::establish_to("110", "13800138010", &mut citizen, &mut police, &[8], &[8]).await;
    assert_eq!(
        gateway.metric("hotline_reserve_calls_active").await,
        Some(1.0)
    );
    assert_eq!(
        gateway.metric("hotline_calls_refused_overload_total").await,
        Some(0.0)
    );
    gateway.stop().await;
}

/// `[announcements] no_desk`: when every desk of the route is busy, the caller hears the
/// operator's recording once as early media (183 with SDP; here a 660 Hz test prompt of
/// 400 ms, in the caller's codec, PCMU), and only then the busy answer.
#[tokio::test]
async fn a_caller_whose_route_has_no_desk_hears_the_announcement_then_the_failure() {
    const PROMPT_HZ: f64 = 660.0;
    let prompts = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = prompts.path().join("no_desk.wav");
    const PROMPT_SAMPLES: u32 = 3200;
    common::tone_wav(&path, PROMPT_HZ, PROMPT_SAMPLES);
    let mut citizen = Ua::bind("carrier", LOCALHOST).await;
    let mut agent = Ua::bind("hotline", LOCALHOST).await;
    let gateway = Gateway::start_with_tables(
        &[
            ("carrier", citizen.address, ""),
            ("hotline", agent.address, "platform = \"12345\""),
        ],
        &[("12345", &["hotline"])],
        "",
        "",
        &format!("\n[announcements]\nno_desk = \"{}\"\n", path.display()),
    )
    .await;
    citizen.set_gateway(gateway.sip);
    agent.set_gateway(gateway.sip);
    let rtp = RtpPeer::bind(LOCALHOST).await;
    let invite = citizen.invite(
        "12345",
        "13800138000",
        &sdp(rtp.address, &[0], "sendrecv"),
        "",
    );
    citizen.send_request(&invite).await;
    let offered = agent.expect_request("INVITE").await;
    agent
        .send_response(&agent.answer(&offered, 486, None))
        .await;
    let progress = citizen.expect_response("INVITE", 183).await;
    assert!(progress.sdp().is_some(), "early media needs our SDP");
    // The whole prompt, then the busy answer.
    let mut heard = Vec::new();
    while heard.len() < PROMPT_SAMPLES as usize {
        let packet = rtp.recv().await;
        assert_eq!(packet.payload_type, 0, "the caller's codec");
        heard.extend(
            packet
                .payload
                .iter()
                .map(|c| hotline_gateway::media::g711::ulaw_to_linear(*c)),
        );
    }
    assert!(common::tone_level(&heard, PROMPT_HZ) > 6000.0);
    let busy = citizen.expect_response("INVITE", 486).await;
    citizen.send_request(&ack_for_non_2xx(&invite, &busy)).await;
    let record = gateway.ended_record(invite.call_id()).await;
    assert_eq!(record.final_status, Some(486));
    assert_eq!(record.answered_at, None, "nothing was answered");
}

/// A route with a queue (`queue_secs`, `queue_retry_secs = 1`) and `[announcements] queue`:
/// the only desk answers 486; the citizen is answered (200) and hears the queue prompt (a
/// 660 Hz test recording); a second later the desk is offered the call again, answers, and
/// the citizen hears the desk; the record says answered.
#[tokio::test]
async fn a_queued_citizen_hears_the_queue_prompt_and_is_put_through_when_the_desk_frees_up() {
    const PROMPT_HZ: f64 = 660.0;
    let prompts = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = prompts.path().join("queue.wav");
    common::tone_wav(&path, PROMPT_HZ, 8000);
    let mut citizen = Ua::bind("carrier", LOCALHOST).await;
    let mut agent = Ua::bind("hotline", LOCALHOST).await;
    let mut gateway = Gateway::start_with_tables(
        &[
            ("carrier", citizen.address, ""),
            ("hotline", agent.address, "platform = \"12345\""),
        ],
        &[],
        "",
        "",
        &format!(
            "\n[[route]]\nnumber = \"12345\"\npeers = [\"hotline\"]\nqueue_secs = 20\nqueue_retry_secs = 1\n\
             \n[announcements]\nqueue = \"{}\"\n\
             \n[[platform]]\nname = \"12345\"\ntoken = \"token-of-the-12345-platform\"\n",
            path.display()
        ),
    )
    .await;
    citizen.set_gateway(gateway.sip);
    agent.set_gateway(gateway.sip);
    let mut platform = common::platform::Platform::connect(
        gateway.grpc,
        "12345",
        "token-of-the-12345-platform",
        None,
    )
    .await;
    let rtp = RtpPeer::bind(LOCALHOST).await;
    let invite = citizen.invite(
        "12345",
        "13800138000",
        &sdp(rtp.address, &[8], "sendrecv"),
        "",
    );
    citizen.send_request(&invite).await;
    let offered = agent.expect_request("INVITE").await;
    agent
        .send_response(&agent.answer(&offered, 486, None))
        .await;
    agent.expect_request("ACK").await;
    let ok = citizen.expect_response("INVITE", 200).await;
    let ack = citizen.in_dialog(&invite, &ok, "ACK", 1, "");
    citizen.send_request(&ack).await;
    // The queue prompt, in the citizen's codec.
    let mut heard = Vec::new();
    while heard.len() < 4000 {
        let packet = rtp.recv().await;
        heard.extend(
            packet
                .payload
                .iter()
                .map(|c| hotline_gateway::media::g711::alaw_to_linear(*c)),
        );
    }
    assert!(
        common::tone_level(&heard, PROMPT_HZ) > 6000.0,
        "the queue prompt"
    );
    // Offered again: the desk answers and speaks.
    let again = agent.expect_request("INVITE").await;
    assert_eq!(
        again.from().and_then(|f| f.uri.user),
        Some("13800138000".into()),
        "with the citizen's number"
    );
    let gateway_b = gateway_media(&again);
    let desk = common::answer_with_media(&mut agent, &again, &[8]).await;
    let from_desk = citizen_hears(&rtp, &desk, gateway_b, 0xde5c).await;
    assert!(from_desk >= 10, "the citizen hears the desk");
    // The platform saw it queued (the desk's 486), then answered after the wait.
    use hotline_gateway::workorder::pb::EventType;
    let queued = platform.until(EventType::Queued).await;
    assert_eq!(queued.sip_status, 486);
    let answered = platform.until(EventType::CallAnswered).await;
    assert!(answered.queue_wait_ms >= 900, "{}", answered.queue_wait_ms);
    assert_eq!(
        gateway.metric("hotline_queue_answered_total").await,
        Some(1.0)
    );
    assert_eq!(gateway.metric("hotline_queue_waiting").await, Some(0.0));
    let bye = citizen.in_dialog(&invite, &ok, "BYE", 2, "");
    citizen.send_request(&bye).await;
    citizen.expect_response("BYE", 200).await;
    let desk_bye = agent.expect_request("BYE").await;
    agent
        .send_response(&agent.answer(&desk_bye, 200, None))
        .await;
    let record = gateway.ended_record(invite.call_id()).await;
    assert!(record.answered_at.is_some(), "answered by the desk");
    gateway.stop().await;
}

/// `[[route]] overflow`: the local desk stays busy; once the queue's wait (1 s) is over, the
/// call goes to another centre's remote seat, with the citizen's number, and the citizen is
/// put through to it.
#[tokio::test]
async fn a_queued_citizen_overflows_to_a_remote_seat_when_the_wait_is_over() {
    let mut citizen = Ua::bind("carrier", LOCALHOST).await;
    let mut agent = Ua::bind("hotline", LOCALHOST).await;
    let mut remote = Ua::bind("remote", LOCALHOST).await;
    let mut gateway = Gateway::start_with_tables(
        &[
            ("carrier", citizen.address, ""),
            ("hotline", agent.address, "platform = \"12345\""),
            ("remote", remote.address, "platform = \"12345\""),
        ],
        &[],
        "",
        "",
        "\n[[route]]\nnumber = \"12345\"\npeers = [\"hotline\"]\nqueue_secs = 1\nqueue_retry_secs = 1\noverflow = [\"remote\"]\n",
    )
    .await;
    for ua in [&mut citizen, &mut agent, &mut remote] {
        ua.set_gateway(gateway.sip);
    }
    let rtp = RtpPeer::bind(LOCALHOST).await;
    let _queued = queue_the_citizen(&mut citizen, &mut agent, &rtp).await;
    let overflowed = remote.expect_request("INVITE").await;
    assert_eq!(overflowed.uri.user.as_deref(), Some("12345"));
    assert_eq!(
        overflowed.from().and_then(|f| f.uri.user),
        Some("13800138000".into()),
        "the citizen's number"
    );
    let seat = common::answer_with_media(&mut remote, &overflowed, &[8]).await;
    let from_seat = citizen_hears(&rtp, &seat, gateway_media(&overflowed), 0x5ea7).await;
    assert!(from_seat >= 10, "the citizen hears the remote seat");
    gateway.stop().await;
}

/// A citizen who hangs up while queued abandons the queue: 12345's stream says
/// `QUEUE_ABANDONED` with the wait, then `CALL_ENDED` (by the caller); the record has no
/// answer; the queue's gauge is back to 0 and the abandon counted.
#[tokio::test]
async fn a_citizen_hanging_up_in_the_queue_abandons_it() {
    let mut citizen = Ua::bind("carrier", LOCALHOST).await;
    let mut agent = Ua::bind("hotline", LOCALHOST).await;
    let mut gateway = Gateway::start_with_tables(
        &[
            ("carrier", citizen.address, ""),
            ("hotline", agent.address, "platform = \"12345\""),
        ],
        &[],
        "",
        "",
        "\n[[route]]\nnumber = \"12345\"\npeers = [\"hotline\"]\nqueue_secs = 60\nqueue_retry_secs = 30\n\
         \n[[platform]]\nname = \"12345\"\ntoken = \"token-of-the-12345-platform\"\n",
    )
    .await;
    citizen.set_gateway(gateway.sip);
    agent.set_gateway(gateway.sip);
    let mut platform = common::platform::Platform::connect(
        gateway.grpc,
        "12345",
        "token-of-the-12345-platform",
        None,
    )
    .await;
    let rtp = RtpPeer::bind(LOCALHOST).await;
    let (invite, ok) = queue_the_citizen(&mut citizen, &mut agent, &rtp).await;
    use hotline_gateway::workorder::pb::EventType;
    platform.until(EventType::Queued).await;
    gateway.metric_reaches("hotline_queue_waiting", 1.0).await;
    let bye = citizen.in_dialog(&invite, &ok, "BYE", 2, "");
    citizen.send_request(&bye).await;
    citizen.expect_response("BYE", 200).await;
    let abandoned = platform.until(EventType::QueueAbandoned).await;
    assert_eq!(
        abandoned.call_id,
        platform.until(EventType::CallEnded).await.call_id
    );
    let record = gateway.ended_record(invite.call_id()).await;
    assert_eq!(record.answered_at, None, "no desk answered");
    assert_eq!(record.ended_by.as_deref(), Some("caller"));
    gateway.metric_reaches("hotline_queue_waiting", 0.0).await;
    assert_eq!(
        gateway.metric("hotline_queue_abandons_total").await,
        Some(1.0)
    );
    gateway.stop().await;
}

/// The gateway's media address in the SDP of `request` (an INVITE it sent).
fn gateway_media(request: &hotline_gateway::sip::message::Request) -> SocketAddr {
    hotline_gateway::sip::sdp::parse(request.sdp().unwrap_or_default())
        .ok()
        .and_then(|s| Some(SocketAddr::new(s.connection?, s.media.first()?.port)))
        .unwrap_or_else(|| panic!("no media in the INVITE"))
}

/// `talker` speaks (a marked payload, every 20 ms) to the gateway at `gateway_b` until the
/// citizen's `rtp` has received 10 of its packets (at most 2 s): how many it received.
async fn citizen_hears(rtp: &RtpPeer, talker: &RtpPeer, gateway_b: SocketAddr, ssrc: u32) -> usize {
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    let mut heard = 0;
    for sequence in 0..100u16 {
        pace.tick().await;
        talker
            .send(
                gateway_b,
                8,
                sequence,
                u32::from(sequence) * 160,
                ssrc,
                &[0x33; 160],
            )
            .await;
        while let Some(packet) = rtp.recv_within(Duration::from_millis(1)).await {
            if packet.payload == [0x33; 160] {
                heard += 1;
            }
        }
        if heard >= 10 {
            break;
        }
    }
    heard
}

/// The citizen calls 12345 from `rtp`; the desk answers 486; the queue answers the citizen,
/// who ACKs: its INVITE and the 200.
async fn queue_the_citizen(
    citizen: &mut Ua,
    agent: &mut Ua,
    rtp: &RtpPeer,
) -> (
    hotline_gateway::sip::message::Request,
    hotline_gateway::sip::message::Response,
) {
    let invite = citizen.invite(
        "12345",
        "13800138000",
        &sdp(rtp.address, &[8], "sendrecv"),
        "",
    );
    citizen.send_request(&invite).await;
    let offered = agent.expect_request("INVITE").await;
    agent
        .send_response(&agent.answer(&offered, 486, None))
        .await;
    let ok = citizen.expect_response("INVITE", 200).await;
    let ack = citizen.in_dialog(&invite, &ok, "ACK", 1, "");
    citizen.send_request(&ack).await;
    (invite, ok)
}
