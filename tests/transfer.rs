//! One-button transfer with caller ID, end to end over loopback: a citizen calls 12345 through
//! the gateway, the agent transfers with an in-dialog REFER, and 110 gets the citizen's number.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{dtmf_info, establish, establish_to, Established, Gateway, RtpPeer, Ua};
use hotline_gateway::sip::message::Request;

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// Carrier (the citizen), hotline (12345's agent) and police (110), with routes
/// 12345 -> hotline, 110 -> police and 13800138000 -> carrier (agents calling the citizen back),
/// and the hotkey `*1` = transfer to 110.
async fn setup(police_extra: &str) -> (Gateway, Ua, Ua, Ua) {
    setup_with(police_extra, "").await
}

async fn setup_with(police_extra: &str, sip_extra: &str) -> (Gateway, Ua, Ua, Ua) {
    let mut citizen = Ua::bind("carrier", LOCALHOST).await;
    let mut agent = Ua::bind("hotline", LOCALHOST).await;
    let mut police = Ua::bind("police", LOCALHOST).await;
    let gateway = Gateway::start_with_tables(
        &[
            ("carrier", citizen.address, ""),
            ("hotline", agent.address, "platform = \"12345\""),
            ("police", police.address, police_extra),
        ],
        &[
            ("12345", &["hotline"]),
            ("110", &["police"]),
            ("13800138000", &["carrier"]),
        ],
        &format!("transfer_ring_timeout_secs = 2\nhotkey_inter_digit_ms = 500\n{sip_extra}"),
        "",
        "\n[[hotkey]]\ndtmf = \"*1\"\naction = \"transfer\"\ntarget = \"110\"\n",
    )
    .await;
    for ua in [&mut citizen, &mut agent, &mut police] {
        ua.set_gateway(gateway.sip);
    }
    (gateway, citizen, agent, police)
}

/// The agent's in-dialog REFER to `refer_to`.
fn refer(agent: &mut Ua, call: &Established, refer_to: &str) -> Request {
    let mut refer = agent.uas_request(&call.incoming, "REFER", 2);
    refer.headers.push("Refer-To", refer_to);
    refer
}

/// The agent REFERs the call to 110, gets 202, and 110 is called: its INVITE.
async fn refer_to_110(agent: &mut Ua, call: &Established, police: &mut Ua) -> Request {
    let request = refer(agent, call, "<sip:110@gw>");
    agent.send_request(&request).await;
    agent.expect_response("REFER", 202).await;
    police.expect_request("INVITE").await
}

/// NOTIFYs of the REFER's subscription: answered 200, their sipfrag status lines returned
/// until a final one.
async fn notifies_until_final(agent: &mut Ua) -> Vec<(u16, String)> {
    let mut seen = Vec::new();
    loop {
        let notify = agent.expect_request("NOTIFY").await;
        assert_eq!(notify.headers.get("Event"), Some("refer;id=2"));
        assert_eq!(
            notify.headers.get("Content-Type"),
            Some("message/sipfrag;version=2.0")
        );
        agent.send_response(&agent.answer(&notify, 200, None)).await;
        let body = String::from_utf8_lossy(&notify.body).to_string();
        let status: u16 = body
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_default();
        let state = notify
            .headers
            .get("Subscription-State")
            .unwrap_or_default()
            .to_string();
        seen.push((status, state));
        if status >= 200 {
            return seen;
        }
    }
}

/// Audio from `from` reaches `to` through the gateway (retried: the relay latches on the first
/// packet of a new source).
async fn audio_flows(
    from: &RtpPeer,
    gateway_side: std::net::SocketAddr,
    to: &RtpPeer,
    ssrc: u32,
) -> common::RtpSeen {
    for sequence in 0..50u16 {
        from.send(
            gateway_side,
            8,
            sequence,
            160 * u32::from(sequence),
            ssrc,
            &[0x55; 160],
        )
        .await;
        if let Some(packet) = to.recv_within(Duration::from_millis(100)).await {
            return packet;
        }
    }
    panic!("no audio through the gateway");
}

#[tokio::test]
async fn refer_transfers_the_citizen_to_110_with_the_citizens_number() {
    let (mut gateway, mut citizen, mut agent, mut police) =
        setup("platform = \"110\"\ntrusted = true\ndiversion = \"both\"").await;
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let before = audio_flows(
        &call.callee_rtp,
        call.gateway_b_media,
        &call.caller_rtp,
        0xa6e7,
    )
    .await;

    let request = refer(&mut agent, &call, "<sip:110@gateway.invalid>");
    agent.send_request(&request).await;
    agent.expect_response("REFER", 202).await;

    let invite = police.expect_request("INVITE").await;
    assert_eq!(invite.uri.user.as_deref(), Some("110"));
    assert_eq!(
        invite.from().and_then(|f| f.uri.user),
        Some("13800138000".into()),
        "From carries the citizen's number, not the agent's"
    );
    assert_eq!(
        invite.headers.get("P-Asserted-Identity"),
        Some(format!("<sip:13800138000@{}>", gateway.sip.ip()).as_str())
    );
    let referred_by = invite.headers.get("Referred-By").unwrap_or_default();
    assert!(
        referred_by.contains("12345"),
        "Referred-By names the agent: {referred_by}"
    );
    let diversion = invite.headers.get("Diversion").unwrap_or_default();
    assert!(diversion.starts_with("<sip:12345@"), "{diversion}");
    assert!(invite
        .headers
        .get("History-Info")
        .is_some_and(|h| h.contains("index=1.1")));
    let linkage = invite
        .headers
        .get("X-Hotline-Linkage")
        .unwrap_or_default()
        .to_string();
    assert!(!linkage.is_empty());
    let offer = invite.sdp().unwrap_or_default().to_string();
    assert!(
        offer.contains(&format!("m=audio {} ", call.gateway_b_media.port())),
        "the target gets leg B's media port: {offer}"
    );

    police
        .send_response(&police.answer(&invite, 180, None))
        .await;
    let police_rtp = common::answer_with_media(&mut police, &invite, &[8]).await;

    let progress = notifies_until_final(&mut agent).await;
    let statuses: Vec<u16> = progress.iter().map(|p| p.0).collect();
    assert_eq!(statuses, vec![100, 180, 200]);
    assert!(progress[0].1.starts_with("active"));
    assert_eq!(progress[2].1, "terminated;reason=noresource");
    let bye = agent.expect_request("BYE").await;
    agent.send_response(&agent.answer(&bye, 200, None)).await;

    // Citizen and 110 talk; the citizen's stream from us goes on unbroken.
    let after = audio_flows(&police_rtp, call.gateway_b_media, &call.caller_rtp, 0x110).await;
    assert_eq!(after.ssrc, before.ssrc, "the citizen sees one stream");
    assert!(after.marker, "the source change is marked");
    let heard = audio_flows(&call.caller_rtp, call.gateway_a_media, &police_rtp, 0xc171).await;
    assert_eq!(heard.payload, vec![0x55; 160]);

    // The citizen hangs up: 110 gets the BYE; the records tell the story.
    let bye = citizen.in_dialog(&call.invite, &call.ok, "BYE", 2, "");
    citizen.send_request(&bye).await;
    citizen.expect_response("BYE", 200).await;
    let bye = police.expect_request("BYE").await;
    police.send_response(&police.answer(&bye, 200, None)).await;
    let record = gateway.ended_record(call.invite.call_id()).await;
    assert_eq!(record.b_peer.as_deref(), Some("police"));
    assert_eq!(record.ended_by.as_deref(), Some("caller"));
    let linkages = gateway.linkages(&record.id);
    assert_eq!(linkages.len(), 1, "{linkages:?}");
    let link = &linkages[0];
    assert_eq!(link.id, linkage);
    assert_eq!(
        (link.from_peer.as_str(), link.from_platform.as_deref()),
        ("hotline", Some("12345"))
    );
    assert_eq!(
        (link.to_peer.as_deref(), link.to_platform.as_deref()),
        (Some("police"), Some("110"))
    );
    assert_eq!(link.trigger, "refer");
    assert_eq!(link.outcome.as_deref(), Some("answered"));
    assert_eq!(link.sip_status, Some(200));
    assert!(link.ringing_at.is_some() && link.answered_at >= link.ringing_at);
    let (_, metrics) = gateway.http_get("/metrics").await;
    assert!(
        metrics.contains("hotline_transfers_answered_total 1"),
        "{metrics}"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn a_busy_target_leaves_the_citizen_with_the_agent() {
    let (mut gateway, mut citizen, mut agent, mut police) = setup("platform = \"110\"").await;
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let invite = refer_to_110(&mut agent, &call, &mut police).await;
    police
        .send_response(&police.answer(&invite, 486, None))
        .await;
    let progress = notifies_until_final(&mut agent).await;
    assert_eq!(progress.last().map(|p| p.0), Some(486));

    // Nobody was hung up: the citizen and the agent still hear each other.
    audio_flows(
        &call.caller_rtp,
        call.gateway_a_media,
        &call.callee_rtp,
        0x1,
    )
    .await;
    audio_flows(
        &call.callee_rtp,
        call.gateway_b_media,
        &call.caller_rtp,
        0x2,
    )
    .await;
    let bye = agent.uas_request(&call.incoming, "BYE", 3);
    agent.send_request(&bye).await;
    agent.expect_response("BYE", 200).await;
    let bye = citizen.expect_request("BYE").await;
    citizen
        .send_response(&citizen.answer(&bye, 200, None))
        .await;
    let record = gateway.ended_record(call.invite.call_id()).await;
    assert_eq!(record.b_peer.as_deref(), Some("hotline"));
    let linkages = gateway.linkages(&record.id);
    assert_eq!(linkages.len(), 1);
    assert_eq!(linkages[0].outcome.as_deref(), Some("failed"));
    assert_eq!(linkages[0].sip_status, Some(486));
    gateway.stop().await;
}

#[tokio::test]
async fn a_target_that_does_not_answer_is_given_up_after_the_ring_timeout() {
    let (mut gateway, mut citizen, mut agent, mut police) = setup("platform = \"110\"").await;
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let invite = refer_to_110(&mut agent, &call, &mut police).await;
    police
        .send_response(&police.answer(&invite, 180, None))
        .await;
    // transfer_ring_timeout_secs = 2: the gateway cancels.
    let cancel = police.expect_request("CANCEL").await;
    police
        .send_response(&police.answer(&cancel, 200, None))
        .await;
    police
        .send_response(&police.answer(&invite, 487, None))
        .await;
    let progress = notifies_until_final(&mut agent).await;
    assert_eq!(progress.last().map(|p| p.0), Some(408));
    audio_flows(
        &call.caller_rtp,
        call.gateway_a_media,
        &call.callee_rtp,
        0x3,
    )
    .await;
    gateway.stop().await;
}

#[tokio::test]
async fn the_citizen_waits_hearing_ringback_when_the_agent_leaves_before_110_answers() {
    let (mut gateway, mut citizen, mut agent, mut police) = setup("platform = \"110\"").await;
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let before = audio_flows(
        &call.callee_rtp,
        call.gateway_b_media,
        &call.caller_rtp,
        0xa6e7,
    )
    .await;
    let invite = refer_to_110(&mut agent, &call, &mut police).await;
    police
        .send_response(&police.answer(&invite, 180, None))
        .await;
    let bye = agent.uas_request(&call.incoming, "BYE", 3);
    agent.send_request(&bye).await;
    agent.expect_response("BYE", 200).await;

    // Ringback: a steady 20 ms A-law stream in the citizen's one stream, a 450 Hz tone
    // (every tone packet the same nine periods), continuously numbered.
    let mut ringback = Vec::new();
    while ringback.len() < 10 {
        let packet = call.caller_rtp.recv().await;
        if packet.payload != vec![0x55; 160] {
            ringback.push(packet);
        }
    }
    assert!(ringback
        .iter()
        .all(|p| p.ssrc == before.ssrc && p.payload_type == 8));
    assert!(
        ringback.iter().all(|p| p.payload == ringback[0].payload),
        "a steady tone"
    );
    // Upward zero crossings around the packet (it repeats, so its end joins its start).
    let mut samples: Vec<i16> = ringback[0]
        .payload
        .iter()
        .map(|&c| alaw_linear(c))
        .collect();
    samples.push(samples[0]);
    let crossings = samples.windows(2).filter(|w| w[0] < 0 && w[1] >= 0).count();
    assert_eq!(crossings, 9, "450 Hz: nine periods in 20 ms");
    for pair in ringback.windows(2) {
        assert_eq!(pair[1].sequence, pair[0].sequence.wrapping_add(1));
        assert_eq!(pair[1].timestamp.wrapping_sub(pair[0].timestamp), 160);
    }

    let police_rtp = common::answer_with_media(&mut police, &invite, &[8]).await;
    audio_flows(&call.caller_rtp, call.gateway_a_media, &police_rtp, 0x4).await;
    audio_flows(&police_rtp, call.gateway_b_media, &call.caller_rtp, 0x5).await;
    citizen
        .expect_nothing_then_marker(
            Duration::from_millis(200),
            "the citizen got a request (BYE?) although 110 answered",
        )
        .await;
    gateway.stop().await;
}

#[tokio::test]
async fn the_citizen_goes_back_to_12345_when_the_agent_left_and_110_fails() {
    let (mut gateway, mut citizen, mut agent, mut police) = setup("platform = \"110\"").await;
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let invite = refer_to_110(&mut agent, &call, &mut police).await;
    let bye = agent.uas_request(&call.incoming, "BYE", 3);
    agent.send_request(&bye).await;
    agent.expect_response("BYE", 200).await;
    police
        .send_response(&police.answer(&invite, 486, None))
        .await;

    // The gateway calls 12345 again, still with the citizen's number.
    let again = agent.expect_request("INVITE").await;
    assert_eq!(again.uri.user.as_deref(), Some("12345"));
    assert_eq!(
        again.from().and_then(|f| f.uri.user),
        Some("13800138000".into())
    );
    let agent_rtp = RtpPeer::bind(LOCALHOST).await;
    let answer = common::sdp(agent_rtp.address, &[8], "sendrecv");
    agent
        .send_response(&agent.answer(&again, 200, Some(&answer)))
        .await;
    agent.expect_request("ACK").await;
    audio_flows(&call.caller_rtp, call.gateway_a_media, &agent_rtp, 0x6).await;
    gateway.stop().await;
    let record_id = gateway
        .calls()
        .first()
        .map(|c| c.id.clone())
        .unwrap_or_default();
    let triggers: Vec<String> = gateway
        .linkages(&record_id)
        .iter()
        .map(|l| l.trigger.clone())
        .collect();
    assert_eq!(triggers, vec!["refer", "fallback"]);
}

#[tokio::test]
async fn refer_errors_have_the_right_answers() {
    let (mut gateway, mut citizen, mut agent, _police) = setup("platform = \"110\"").await;
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let mut cseq = 10;
    for (refer_to, status) in [
        ("<sip:999@gw>", 403),
        ("<sip:police-desk@gw>", 400),
        ("<sip:110@gw", 400),
        // Replaces naming no call through this gateway: nothing to replace.
        ("<sip:110@gw?Replaces=x%3Bto-tag%3Da%3Bfrom-tag%3Db>", 403),
    ] {
        let mut request = agent.uas_request(&call.incoming, "REFER", cseq);
        request.headers.push("Refer-To", refer_to);
        agent.send_request(&request).await;
        agent.expect_response("REFER", status).await;
        cseq += 1;
    }
    // No Refer-To at all.
    let request = agent.uas_request(&call.incoming, "REFER", cseq);
    agent.send_request(&request).await;
    agent.expect_response("REFER", 400).await;
    // Outside any dialog: 481.
    let mut stray = agent.uas_request(&call.incoming, "REFER", 1);
    stray.headers.set("Call-ID", "no-such-call@test");
    stray.headers.push("Refer-To", "<sip:110@gw>");
    agent.send_request(&stray).await;
    agent.expect_response("REFER", 481).await;
    // The call is unharmed.
    audio_flows(
        &call.caller_rtp,
        call.gateway_a_media,
        &call.callee_rtp,
        0x7,
    )
    .await;
    gateway.stop().await;
}

#[tokio::test]
async fn a_private_citizen_is_shown_only_to_a_trusted_target() {
    for trusted in [true, false] {
        let extra = format!("platform = \"110\"\ntrusted = {trusted}");
        let (mut gateway, mut citizen, mut agent, mut police) = setup(&extra).await;
        let caller_rtp = RtpPeer::bind(LOCALHOST).await;
        let invite = citizen.invite(
            "12345",
            "anonymous",
            &common::sdp(caller_rtp.address, &[8], "sendrecv"),
            "P-Asserted-Identity: <sip:13800138000@carrier.example>\r\nPrivacy: id\r\n",
        );
        citizen.send_request(&invite).await;
        let incoming = agent.expect_request("INVITE").await;
        assert!(
            incoming.headers.get("P-Asserted-Identity").is_none(),
            "the hotline peer is not trusted"
        );
        let agent_rtp = RtpPeer::bind(LOCALHOST).await;
        let answer = common::sdp(agent_rtp.address, &[8], "sendrecv");
        agent
            .send_response(&agent.answer(&incoming, 200, Some(&answer)))
            .await;
        let ok = citizen.expect_response("INVITE", 200).await;
        let ack = citizen.ack(&invite, &ok, "");
        citizen.send_request(&ack).await;
        agent.expect_request("ACK").await;
        let mut request = agent.uas_request(&incoming, "REFER", 2);
        request.headers.push("Refer-To", "<sip:110@gw>");
        agent.send_request(&request).await;
        agent.expect_response("REFER", 202).await;
        let to_police = police.expect_request("INVITE").await;
        let asserted = to_police
            .headers
            .get("P-Asserted-Identity")
            .map(str::to_string);
        let from = to_police
            .headers
            .get("From")
            .unwrap_or_default()
            .to_string();
        assert!(!from.contains("13800138000"), "{from}");
        if trusted {
            assert_eq!(
                asserted.as_deref(),
                Some("<sip:13800138000@carrier.example>")
            );
            assert_eq!(to_police.headers.get("Privacy"), Some("id"));
        } else {
            assert_eq!(asserted, None, "identity leaked to an untrusted peer");
        }
        gateway.stop().await;
    }
}

#[tokio::test]
async fn the_110_side_transfers_a_call_to_12345() {
    let (mut gateway, mut citizen, mut agent, mut police) = setup("platform = \"110\"").await;
    let call = establish_to("110", "13900139000", &mut citizen, &mut police, &[8], &[8]).await;
    let request = refer(&mut police, &call, "<sip:12345@gw>");
    police.send_request(&request).await;
    police.expect_response("REFER", 202).await;
    let invite = agent.expect_request("INVITE").await;
    assert_eq!(
        invite.from().and_then(|f| f.uri.user),
        Some("13900139000".into())
    );
    assert!(invite
        .headers
        .get("History-Info")
        .is_some_and(|h| h.starts_with("<sip:110@")));
    let agent_rtp = RtpPeer::bind(LOCALHOST).await;
    let answer = common::sdp(agent_rtp.address, &[8], "sendrecv");
    agent
        .send_response(&agent.answer(&invite, 200, Some(&answer)))
        .await;
    agent.expect_request("ACK").await;
    let progress = notifies_until_final(&mut police).await;
    assert_eq!(progress.last().map(|p| p.0), Some(200));
    police.expect_request("BYE").await;
    audio_flows(&call.caller_rtp, call.gateway_a_media, &agent_rtp, 0x8).await;
    gateway.stop().await;
}

/// The agent placed the call (a call-back to the citizen): it is leg A, the calling leg, and
/// REFERs in its own dialog. 110 gets the citizen's number (the number the agent dialled), the
/// target takes leg A over, and the citizen, never re-INVITEd, hears one stream throughout.
#[tokio::test]
async fn an_agent_calling_back_transfers_the_citizen_from_the_calling_leg() {
    let (mut gateway, mut citizen, mut agent, mut police) =
        setup("platform = \"110\"\ntrusted = true").await;
    let call = establish_to("13800138000", "12345", &mut agent, &mut citizen, &[8], &[8]).await;
    let before = audio_flows(
        &call.caller_rtp,
        call.gateway_a_media,
        &call.callee_rtp,
        0xa6e7,
    )
    .await;

    let mut request = agent.in_dialog(&call.invite, &call.ok, "REFER", 2, "");
    request.headers.push("Refer-To", "<sip:110@gw>");
    agent.send_request(&request).await;
    agent.expect_response("REFER", 202).await;
    let invite = police.expect_request("INVITE").await;
    assert_eq!(
        invite.from().and_then(|f| f.uri.user),
        Some("13800138000".into()),
        "the citizen's number, not the agent's"
    );
    assert_eq!(
        invite.headers.get("P-Asserted-Identity"),
        Some(format!("<sip:13800138000@{}>", gateway.sip.ip()).as_str())
    );
    assert!(
        invite
            .headers
            .get("History-Info")
            .is_some_and(|h| h.starts_with("<sip:12345@")),
        "the line it came from: {:?}",
        invite.headers.get("History-Info")
    );
    let offer = invite.sdp().unwrap_or_default().to_string();
    assert!(
        offer.contains(&format!("m=audio {} ", call.gateway_a_media.port())),
        "the target gets leg A's media port: {offer}"
    );
    police
        .send_response(&police.answer(&invite, 180, None))
        .await;
    let police_rtp = common::answer_with_media(&mut police, &invite, &[8]).await;
    let progress = notifies_until_final(&mut agent).await;
    let statuses: Vec<u16> = progress.iter().map(|p| p.0).collect();
    assert_eq!(statuses, vec![100, 180, 200]);
    let bye = agent.expect_request("BYE").await;
    assert_eq!(bye.call_id(), call.invite.call_id(), "the agent's dialog");
    agent.send_response(&agent.answer(&bye, 200, None)).await;

    let after = audio_flows(&police_rtp, call.gateway_a_media, &call.callee_rtp, 0x110).await;
    assert_eq!(after.ssrc, before.ssrc, "the citizen sees one stream");
    let heard = audio_flows(&call.callee_rtp, call.gateway_b_media, &police_rtp, 0xc171).await;
    assert_eq!(heard.payload, vec![0x55; 160]);
    citizen
        .expect_nothing_then_marker(
            Duration::from_millis(200),
            "nothing was signalled to the citizen",
        )
        .await;

    // The citizen hangs up: 110 gets the BYE in the dialog the gateway made with it.
    let bye = citizen.uas_request(&call.incoming, "BYE", 1);
    citizen.send_request(&bye).await;
    citizen.expect_response("BYE", 200).await;
    let bye = police.expect_request("BYE").await;
    assert_eq!(bye.call_id(), invite.call_id());
    police.send_response(&police.answer(&bye, 200, None)).await;
    let record = gateway.ended_record(call.invite.call_id()).await;
    assert_eq!(record.ended_by.as_deref(), Some("callee"));
    let linkages = gateway.linkages(&record.id);
    assert_eq!(linkages.len(), 1, "{linkages:?}");
    assert_eq!(
        (
            linkages[0].from_peer.as_str(),
            linkages[0].outcome.as_deref()
        ),
        ("hotline", Some("answered"))
    );
    gateway.stop().await;
}

/// The digits of the DTMF INFOs the citizen receives, answered 200, until `count` digits.
async fn digits_at_citizen(citizen: &mut Ua, count: usize) -> String {
    let mut digits = String::new();
    while digits.len() < count {
        let info = citizen.expect_request("INFO").await;
        citizen
            .send_response(&citizen.answer(&info, 200, None))
            .await;
        let body = String::from_utf8_lossy(&info.body).to_string();
        let signal = body
            .lines()
            .find_map(|l| l.strip_prefix("Signal="))
            .unwrap_or_default()
            .trim()
            .to_string();
        digits.push_str(&signal);
    }
    digits
}

#[tokio::test]
async fn hotkey_star_1_by_sip_info_transfers_and_other_digits_pass_through() {
    let (mut gateway, mut citizen, mut agent, mut police) = setup("platform = \"110\"").await;
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    // Ordinary digits, and a * that turns out to start no hotkey, reach the citizen unchanged.
    let mut cseq = 2;
    for digit in ['5', '*', '7'] {
        let info = dtmf_info(&mut agent, &call, cseq, digit);
        agent.send_request(&info).await;
        agent.expect_response("INFO", 200).await;
        cseq += 1;
    }
    assert_eq!(digits_at_citizen(&mut citizen, 3).await, "5*7");
    // A lone * is released by the inter-digit timeout (500 ms here).
    let info = dtmf_info(&mut agent, &call, cseq, '*');
    agent.send_request(&info).await;
    agent.expect_response("INFO", 200).await;
    assert_eq!(digits_at_citizen(&mut citizen, 1).await, "*");
    cseq += 1;

    // *1: the same blind transfer as a REFER, and the citizen hears neither digit.
    for digit in ['*', '1'] {
        let info = dtmf_info(&mut agent, &call, cseq, digit);
        agent.send_request(&info).await;
        agent.expect_response("INFO", 200).await;
        cseq += 1;
    }
    let invite = police.expect_request("INVITE").await;
    assert_eq!(
        invite.from().and_then(|f| f.uri.user),
        Some("13800138000".into())
    );
    assert!(
        invite.headers.get("Referred-By").is_none(),
        "no REFER, no Referred-By"
    );
    let police_rtp = common::answer_with_media(&mut police, &invite, &[8]).await;
    let bye = agent.expect_request("BYE").await;
    agent.send_response(&agent.answer(&bye, 200, None)).await;
    audio_flows(&call.caller_rtp, call.gateway_a_media, &police_rtp, 0x9).await;
    citizen
        .expect_nothing_then_marker(Duration::from_millis(200), "the citizen got a message")
        .await;
    gateway.stop().await;
    let record = gateway
        .calls()
        .into_iter()
        .find(|r| r.a_call_id == call.invite.call_id())
        .unwrap_or_else(|| panic!("no record"));
    let linkages = gateway.linkages(&record.id);
    assert_eq!(linkages.len(), 1);
    assert_eq!(linkages[0].trigger, "hotkey");
    assert_eq!(linkages[0].outcome.as_deref(), Some("answered"));
}

/// One RFC 4733 event as a phone sends it: three packets with the event's timestamp, the
/// last with the end bit.
async fn telephone_event(
    from: &RtpPeer,
    to: std::net::SocketAddr,
    sequence: &mut u16,
    timestamp: u32,
    code: u8,
) {
    for (end, duration) in [(false, 160u16), (false, 320), (true, 480)] {
        let mut payload = vec![code, if end { 0x8a } else { 0x0a }];
        payload.extend_from_slice(&duration.to_be_bytes());
        from.send(to, 101, *sequence, timestamp, 0xa6e7, &payload)
            .await;
        *sequence = sequence.wrapping_add(1);
    }
}

#[tokio::test]
async fn hotkey_star_1_by_rfc_4733_transfers_and_other_digits_reach_the_citizen_as_events() {
    let (mut gateway, mut citizen, mut agent, mut police) = setup("platform = \"110\"").await;
    let call = establish(&mut citizen, &mut agent, &[8, 101], &[8, 101]).await;
    let mut sequence = 1u16;
    // Audio first, so both sides are latched.
    audio_flows(
        &call.callee_rtp,
        call.gateway_b_media,
        &call.caller_rtp,
        0xa6e7,
    )
    .await;
    audio_flows(
        &call.caller_rtp,
        call.gateway_a_media,
        &call.callee_rtp,
        0xc171,
    )
    .await;

    // '5' is no hotkey: the citizen gets one event for it, with the end bit, in its own
    // telephone-event payload type; nothing of the agent's three packets leaks as audio.
    telephone_event(
        &call.callee_rtp,
        call.gateway_b_media,
        &mut sequence,
        8000,
        5,
    )
    .await;
    let mut events = Vec::new();
    while events.len() < 4 {
        let packet = call.caller_rtp.recv().await;
        if packet.payload_type == 101 {
            events.push(packet);
        }
    }
    assert!(events
        .iter()
        .all(|p| p.payload[0] == 5 && p.timestamp == events[0].timestamp));
    assert!(events[0].marker, "the event's first packet is marked");
    assert!(events[3].payload[1] & 0x80 != 0, "and it ends");
    for pair in events.windows(2) {
        assert_eq!(pair[1].sequence, pair[0].sequence.wrapping_add(1));
    }

    // *1 as telephone-events: the transfer starts, and the citizen hears no event for it.
    telephone_event(
        &call.callee_rtp,
        call.gateway_b_media,
        &mut sequence,
        16000,
        10,
    )
    .await;
    telephone_event(
        &call.callee_rtp,
        call.gateway_b_media,
        &mut sequence,
        24000,
        1,
    )
    .await;
    let invite = police.expect_request("INVITE").await;
    assert_eq!(
        invite.from().and_then(|f| f.uri.user),
        Some("13800138000".into())
    );
    match call
        .caller_rtp
        .recv_within(Duration::from_millis(200))
        .await
    {
        Some(packet) if packet.payload_type == 101 => panic!("a hotkey digit leaked: {packet:?}"),
        _ => {}
    }
    // The marker: the agent's next audio on the same stream, relayed after the digits were,
    // reaches the citizen with no event before it.
    call.callee_rtp
        .send(
            call.gateway_b_media,
            8,
            sequence,
            32000,
            0xa6e7,
            &[0x77; 160],
        )
        .await;
    loop {
        let packet = call.caller_rtp.recv().await;
        if packet.payload_type == 101 {
            panic!("a hotkey digit leaked (before the marker): {packet:?}");
        }
        if packet.payload == vec![0x77; 160] {
            break;
        }
    }
    police
        .send_response(&police.answer(&invite, 486, None))
        .await;
    gateway.stop().await;
    let record = gateway
        .calls()
        .into_iter()
        .find(|r| r.a_call_id == call.invite.call_id())
        .unwrap_or_else(|| panic!("no record"));
    let linkages = gateway.linkages(&record.id);
    assert_eq!(linkages.len(), 1);
    assert_eq!(linkages[0].trigger, "hotkey");
}

#[tokio::test]
async fn attended_transfer_replaces_the_agents_consultation_call_with_the_citizen() {
    let (mut gateway, mut citizen, mut agent, mut police) = setup("platform = \"110\"").await;
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;

    // The agent consults 110 through the gateway (a call of its own) and talks to the operator.
    let consult_rtp = RtpPeer::bind(LOCALHOST).await;
    let consult = agent.invite(
        "110",
        "12345",
        &common::sdp(consult_rtp.address, &[8], "sendrecv"),
        "",
    );
    agent.send_request(&consult).await;
    let consult_at_police = police.expect_request("INVITE").await;
    assert_eq!(
        consult_at_police.from().and_then(|f| f.uri.user),
        Some("12345".into())
    );
    let police_rtp = RtpPeer::bind(LOCALHOST).await;
    let answer = common::sdp(police_rtp.address, &[8], "sendrecv");
    police
        .send_response(&police.answer(&consult_at_police, 200, Some(&answer)))
        .await;
    let consult_ok = agent.expect_response("INVITE", 200).await;
    let ack = agent.ack(&consult, &consult_ok, "");
    agent.send_request(&ack).await;
    police.expect_request("ACK").await;

    // REFER on the citizen's call, Replaces naming the agent's consultation dialog with us.
    let gateway_tag = consult_ok
        .to()
        .and_then(|t| t.tag().map(str::to_string))
        .unwrap_or_default();
    let replaces = format!(
        "{}%3Bto-tag%3D{}%3Bfrom-tag%3D{}",
        consult.call_id().replace('@', "%40"),
        gateway_tag,
        agent.tag
    );
    let request = refer(
        &mut agent,
        &call,
        &format!("<sip:110@gw?Replaces={replaces}>"),
    );
    agent.send_request(&request).await;
    agent.expect_response("REFER", 202).await;

    // 110 gets an INVITE that replaces its consultation dialog, with the citizen's identity.
    let joined = police.expect_request("INVITE").await;
    assert_eq!(
        joined.from().and_then(|f| f.uri.user),
        Some("13800138000".into())
    );
    let expected = format!(
        "{};to-tag={};from-tag={}",
        consult_at_police.call_id(),
        police.tag,
        consult_at_police
            .from()
            .and_then(|f| f.tag().map(str::to_string))
            .unwrap_or_default()
    );
    assert_eq!(joined.headers.get("Replaces"), Some(expected.as_str()));
    assert_eq!(joined.headers.get("Require"), Some("replaces"));
    police
        .send_response(&police.answer(&joined, 200, Some(&answer)))
        .await;
    police.expect_request("ACK").await;
    // RFC 3891 §3: 110 ends the replaced dialog; the gateway releases the agent's consultation.
    let bye = police.uas_request(&consult_at_police, "BYE", 2);
    police.send_request(&bye).await;
    police.expect_response("BYE", 200).await;

    // The agent is released from both calls: the consultation (BYE) and the citizen's (NOTIFY
    // 200, then BYE).
    let mut byes = 0;
    let mut final_notify = false;
    while byes < 2 || !final_notify {
        match agent.recv().await {
            hotline_gateway::sip::message::Message::Request(r) if r.method.as_str() == "BYE" => {
                agent.send_response(&agent.answer(&r, 200, None)).await;
                byes += 1;
            }
            hotline_gateway::sip::message::Message::Request(r) if r.method.as_str() == "NOTIFY" => {
                agent.send_response(&agent.answer(&r, 200, None)).await;
                final_notify |= String::from_utf8_lossy(&r.body).contains("SIP/2.0 200");
            }
            _ => {}
        }
    }
    // Citizen and 110 talk.
    let heard = audio_flows(&call.caller_rtp, call.gateway_a_media, &police_rtp, 0xc171).await;
    assert_eq!(heard.payload, vec![0x55; 160]);
    gateway.stop().await;
    let record = gateway
        .calls()
        .into_iter()
        .find(|r| r.a_call_id == call.invite.call_id())
        .unwrap_or_else(|| panic!("no record"));
    assert_eq!(record.b_peer.as_deref(), Some("police"));
    let linkages = gateway.linkages(&record.id);
    assert_eq!(linkages.len(), 1);
    assert_eq!(linkages[0].trigger, "attended");
    assert_eq!(linkages[0].outcome.as_deref(), Some("answered"));
}

#[tokio::test]
async fn early_media_from_the_target_reaches_the_citizen_only_when_configured() {
    for early_media in [true, false] {
        let (mut gateway, mut citizen, mut agent, mut police) = setup_with(
            "platform = \"110\"",
            &format!("transfer_early_media = {early_media}"),
        )
        .await;
        let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
        audio_flows(
            &call.callee_rtp,
            call.gateway_b_media,
            &call.caller_rtp,
            0xa6e7,
        )
        .await;
        let invite = refer_to_110(&mut agent, &call, &mut police).await;
        let police_rtp = RtpPeer::bind(LOCALHOST).await;
        let early = common::sdp(police_rtp.address, &[8], "sendrecv");
        police
            .send_response(&police.answer(&invite, 183, Some(&early)))
            .await;
        // 110's announcement, and the agent still talking: whom does the citizen hear?
        let mut heard_police = false;
        for sequence in 0..20u16 {
            police_rtp
                .send(
                    call.gateway_b_media,
                    8,
                    sequence,
                    160 * u32::from(sequence),
                    0x110,
                    &[0x11; 160],
                )
                .await;
            call.callee_rtp
                .send(
                    call.gateway_b_media,
                    8,
                    500 + sequence,
                    160 * u32::from(sequence),
                    0xa6e7,
                    &[0x22; 160],
                )
                .await;
            while let Some(packet) = call.caller_rtp.recv_within(Duration::from_millis(30)).await {
                heard_police |= packet.payload == vec![0x11; 160];
            }
        }
        if !early_media {
            // The marker: the agent's next packet, relayed after any of 110's on the same
            // gateway port, reaches the citizen; 110's audio merely late would come first.
            call.callee_rtp
                .send(call.gateway_b_media, 8, 520, 160 * 20, 0xa6e7, &[0x23; 160])
                .await;
            loop {
                let packet = call.caller_rtp.recv().await;
                heard_police |= packet.payload == vec![0x11; 160];
                if packet.payload == vec![0x23; 160] {
                    break;
                }
            }
        }
        assert_eq!(
            heard_police, early_media,
            "early media played: {heard_police}"
        );
        // The target fails: the citizen hears the agent again.
        police
            .send_response(&police.answer(&invite, 486, None))
            .await;
        notifies_until_final(&mut agent).await;
        let mut heard_agent = false;
        for sequence in 0..20u16 {
            call.callee_rtp
                .send(
                    call.gateway_b_media,
                    8,
                    600 + sequence,
                    160 * u32::from(sequence),
                    0xa6e7,
                    &[0x33; 160],
                )
                .await;
            if let Some(packet) = call.caller_rtp.recv_within(Duration::from_millis(50)).await {
                if packet.payload == vec![0x33; 160] {
                    heard_agent = true;
                    break;
                }
            }
        }
        assert!(
            heard_agent,
            "the agent is not heard after the failed transfer"
        );
        gateway.stop().await;
    }
}

/// ITU-T G.711 A-law expansion, enough to read a tone's sign.
fn alaw_linear(code: u8) -> i16 {
    let value = code ^ 0x55;
    let magnitude = i16::from(value & 0x0f) << 4 | 8;
    let segment = (value & 0x70) >> 4;
    let magnitude = match segment {
        0 => magnitude,
        s => (magnitude + 0x100) << (s - 1),
    };
    if value & 0x80 != 0 {
        magnitude
    } else {
        -magnitude
    }
}

/// `[announcements] transfer`: a citizen waiting for 110 with no agent left hears the
/// operator's recording (here a 660 Hz test prompt of 600 ms, then its 400 ms gap, then again)
/// in place of the ringback tone, in the one continuous stream; once 110 answers, 110's voice
/// (1320 Hz) and no more of the prompt.
#[tokio::test]
async fn the_citizen_hears_the_transfer_announcement_while_110_rings_then_110() {
    const PROMPT_HZ: f64 = 660.0;
    const POLICE_HZ: f64 = 1320.0;
    let prompts = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = prompts.path().join("transfer.wav");
    let tone = |frequency: f64, from: usize, count: usize| -> Vec<i16> {
        (from..from + count)
            .map(|n| {
                let t = n as f64 / 8000.0;
                (8000.0 * (2.0 * std::f64::consts::PI * frequency * t).sin()) as i16
            })
            .collect()
    };
    std::fs::write(
        &path,
        hotline_gateway::media::prompt::wav_bytes(&tone(PROMPT_HZ, 0, 4800)),
    )
    .unwrap_or_else(|e| panic!("{e}"));
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
        "transfer_ring_timeout_secs = 10\n",
        "",
        &format!(
            "\n[announcements]\ntransfer = \"{}\"\ngap_ms = 400\n",
            path.display()
        ),
    )
    .await;
    for ua in [&mut citizen, &mut agent, &mut police] {
        ua.set_gateway(gateway.sip);
    }
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let invite = refer_to_110(&mut agent, &call, &mut police).await;
    police
        .send_response(&police.answer(&invite, 180, None))
        .await;
    let bye = agent.uas_request(&call.incoming, "BYE", 3);
    agent.send_request(&bye).await;
    agent.expect_response("BYE", 200).await;

    // 1.5 s of what the citizen hears, each packet placed by its RTP timestamp (a stall of the
    // relay skips packets rather than shift the rest): the prompt, its gap, the prompt again.
    let mut heard = vec![0i16; 75 * 160];
    let mut first = None;
    let mut last_sequence: Option<u16> = None;
    loop {
        let packet = call.caller_rtp.recv().await;
        if let Some(last) = last_sequence {
            assert_eq!(packet.sequence, last.wrapping_add(1), "one stream");
        }
        last_sequence = Some(packet.sequence);
        let start = *first.get_or_insert(packet.timestamp);
        let at = packet.timestamp.wrapping_sub(start) as usize;
        if at + 160 > heard.len() {
            break;
        }
        for (n, code) in packet.payload.iter().enumerate() {
            heard[at + n] = alaw_linear(*code);
        }
    }
    let ms = |n: usize| n * 8;
    let level = |from: usize, to: usize, f: f64| common::tone_level(&heard[ms(from)..ms(to)], f);
    assert!(level(0, 600, PROMPT_HZ) > 6000.0, "the prompt first");
    assert!(level(0, 600, 450.0) < 400.0, "not the ringback tone");
    assert!(
        heard[ms(600)..ms(1000)].iter().all(|s| s.abs() < 16),
        "its gap is silence"
    );
    assert!(level(1000, 1500, PROMPT_HZ) > 6000.0, "then again");

    // 110 answers and speaks: the citizen hears 110, the prompt stops.
    let police_rtp = common::answer_with_media(&mut police, &invite, &[8]).await;
    let mut sent = 0u32;
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    let mut after = Vec::new();
    while after.len() < 20 * 160 {
        pace.tick().await;
        let payload: Vec<u8> = tone(POLICE_HZ, sent as usize * 160, 160)
            .iter()
            .map(|s| hotline_gateway::media::g711::linear_to_alaw(*s))
            .collect();
        police_rtp
            .send(
                call.gateway_b_media,
                8,
                sent as u16,
                sent * 160,
                0x110,
                &payload,
            )
            .await;
        sent += 1;
        while let Some(packet) = call.caller_rtp.recv_within(Duration::from_millis(1)).await {
            let samples: Vec<i16> = packet.payload.iter().map(|&c| alaw_linear(c)).collect();
            // From 110's first packet on.
            if !after.is_empty() || common::tone_level(&samples, POLICE_HZ) > 4000.0 {
                after.extend(samples);
            }
        }
        assert!(sent < 250, "110 never heard");
    }
    assert!(common::tone_level(&after, POLICE_HZ) > 6000.0);
    assert!(
        common::tone_level(&after, PROMPT_HZ) < 400.0,
        "the prompt stopped"
    );
    gateway.stop().await;
}
