//! Long SIP timers at their default values, on paused time: Timer A/B towards a peer that never
//! answers, the ring timeout, a session refresh that times out, the transfer ring timeout, the
//! hotkey inter-digit timeout. The gateway and the user agents share one current-thread runtime
//! whose clock a [`HeldClock`] keeps still while the gateway waits on its store in real time;
//! the test moves it with `tokio::time::advance`, so a 900 s timer takes no real time and fires
//! at the very millisecond it is due, not before. Before each advance the test waits for proof
//! that the gateway has taken what it was sent (an answer, a NOTIFY, a marker): a message still
//! in flight when the clock jumps would start its timer late.
//!
//! SIP only: the relay's threads run on the OS clock.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{answer_with_media, dtmf_info, establish, sdp, Gateway, HeldClock, RtpPeer, Ua};
use hotline_gateway::sip::message::{Message, Method};

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

const MS: Duration = Duration::from_millis(1);

fn is_request(message: &Message, method: Method) -> bool {
    matches!(message, Message::Request(r) if r.method == method)
}

fn is_final_to_invite(message: &Message) -> bool {
    matches!(message, Message::Response(r)
        if r.status >= 200 && r.cseq().is_some_and(|c| c.method == Method::Invite))
}

/// A peer that never answers: the INVITE is retransmitted at T1 = 500 ms doubling (RFC 3261
/// §17.1.1.2, Timer A), and Timer B (64*T1 = 32 s) gives it up: the route's next peer rings.
#[tokio::test(start_paused = true)]
async fn a_silent_peer_gets_timer_a_retransmissions_and_timer_b_fails_over_at_32_s() {
    let clock = HeldClock::hold();
    let mut caller = Ua::bind("carrier", LOCALHOST).await;
    let mut silent = Ua::bind("silent", LOCALHOST).await;
    let mut second = Ua::bind("second", LOCALHOST).await;
    let mut gateway = Gateway::start_configured(
        &[
            ("carrier", caller.address, ""),
            ("silent", silent.address, ""),
            ("second", second.address, ""),
        ],
        &[("110", &["silent", "second"])],
        "",
        "",
        "",
        // Past Timer B, so that the transaction's own timeout is what gives the peer up.
        |config| config.sip.peer_response_timeout_ms = 60_000,
    )
    .await;
    for ua in [&mut caller, &mut silent, &mut second] {
        ua.set_gateway(gateway.sip);
    }
    let rtp = RtpPeer::bind(LOCALHOST).await;
    let invite = caller.invite(
        "110",
        "13800138000",
        &sdp(rtp.address, &[8], "sendrecv"),
        "",
    );
    caller.send_request(&invite).await;
    caller.expect_response("INVITE", 100).await;
    let first = silent.expect_request("INVITE").await;

    for due in [500, 1500, 3500, 7500, 15_500, 31_500] {
        let due = Duration::from_millis(due);
        clock.advance_to(due - MS).await;
        silent
            .expect_none_then_marker(Duration::ZERO, "an INVITE before Timer A", |m| {
                is_request(m, Method::Invite)
            })
            .await;
        clock.advance_to(due).await;
        let again = silent.expect_request("INVITE").await;
        assert_eq!(clock.elapsed(), due, "the clock moved by itself");
        assert_eq!(
            again.headers.get("Via"),
            first.headers.get("Via"),
            "at {due:?}: a retransmission of the same transaction"
        );
    }

    clock.advance_to(Duration::from_secs(32) - MS).await;
    second
        .expect_none_then_marker(Duration::ZERO, "the next peer before Timer B", |m| {
            is_request(m, Method::Invite)
        })
        .await;
    caller
        .expect_none_then_marker(Duration::ZERO, "a final answer before Timer B", |m| {
            is_final_to_invite(m)
        })
        .await;
    clock.advance_to(Duration::from_secs(32)).await;
    let next = second.expect_request("INVITE").await;
    assert_eq!(
        clock.elapsed(),
        Duration::from_secs(32),
        "the clock moved by itself"
    );
    assert_eq!(next.uri.user.as_deref(), Some("110"));
    assert_eq!(
        next.from().and_then(|f| f.uri.user),
        Some("13800138000".to_string())
    );
    second.send_response(&second.answer(&next, 486, None)).await;
    caller.expect_response("INVITE", 486).await;
    // Timer B ended the silent peer's transaction: nothing more goes to it.
    silent
        .expect_none_then_marker(Duration::ZERO, "an INVITE after Timer B", |m| {
            is_request(m, Method::Invite)
        })
        .await;
    gateway.stop().await;
}

/// A peer that rings past `sip.ring_timeout_secs` (default 60 s) is cancelled, and the route's
/// next peer rings and answers; the record names it.
#[tokio::test(start_paused = true)]
async fn a_peer_ringing_past_the_60_s_ring_timeout_is_cancelled_and_the_next_peer_answers() {
    let clock = HeldClock::hold();
    let mut caller = Ua::bind("carrier", LOCALHOST).await;
    let mut first = Ua::bind("first", LOCALHOST).await;
    let mut second = Ua::bind("second", LOCALHOST).await;
    let mut gateway = Gateway::start(
        &[
            ("carrier", caller.address, ""),
            ("first", first.address, ""),
            ("second", second.address, ""),
        ],
        &[("12345", &["first", "second"])],
        "",
        "",
    )
    .await;
    for ua in [&mut caller, &mut first, &mut second] {
        ua.set_gateway(gateway.sip);
    }
    let rtp = RtpPeer::bind(LOCALHOST).await;
    let invite = caller.invite(
        "12345",
        "13800138000",
        &sdp(rtp.address, &[8], "sendrecv"),
        "",
    );
    caller.send_request(&invite).await;
    let ringing = first.expect_request("INVITE").await;
    first
        .send_response(&first.answer(&ringing, 180, None))
        .await;
    caller.expect_response("INVITE", 180).await;

    clock.advance_to(Duration::from_secs(60) - MS).await;
    first
        .expect_none_then_marker(Duration::ZERO, "a CANCEL before the ring timeout", |m| {
            is_request(m, Method::Cancel)
        })
        .await;
    second
        .expect_none_then_marker(
            Duration::ZERO,
            "the next peer before the ring timeout",
            |m| is_request(m, Method::Invite),
        )
        .await;
    clock.advance_to(Duration::from_secs(60)).await;
    let cancel = first.expect_request("CANCEL").await;
    assert_eq!(
        clock.elapsed(),
        Duration::from_secs(60),
        "the clock moved by itself"
    );
    first.send_response(&first.answer(&cancel, 200, None)).await;
    first
        .send_response(&first.answer(&ringing, 487, None))
        .await;
    first.expect_request("ACK").await;

    let next = second.expect_request("INVITE").await;
    assert_eq!(
        next.from().and_then(|f| f.uri.user),
        Some("13800138000".to_string())
    );
    let _media = answer_with_media(&mut second, &next, &[8]).await;
    let ok = caller.expect_response("INVITE", 200).await;
    let ack = caller.ack(&invite, &ok, "");
    caller.send_request(&ack).await;
    let bye = caller.in_dialog(&invite, &ok, "BYE", 2, "");
    caller.send_request(&bye).await;
    caller.expect_response("BYE", 200).await;
    let bye = second.expect_request("BYE").await;
    second.send_response(&second.answer(&bye, 200, None)).await;
    // Committed before the BYE went out: read once, no polling (the clock is held).
    let record = ended(&gateway, invite.call_id());
    assert_eq!(record.b_peer.as_deref(), Some("second"), "{record:?}");
    assert_eq!(record.ended_by.as_deref(), Some("caller"), "{record:?}");
    assert!(record.answered_at.is_some(), "{record:?}");
    gateway.stop().await;
}

/// The ended record of the call `a_call_id`, which must be in the store already.
fn ended(gateway: &Gateway, a_call_id: &str) -> hotline_gateway::store::CallRecord {
    let calls = gateway.calls();
    match calls
        .iter()
        .find(|r| r.a_call_id == a_call_id && r.ended_at.is_some())
    {
        Some(record) => record.clone(),
        None => panic!("no ended record for {a_call_id}: {calls:?}"),
    }
}

/// RFC 4028 at the defaults (`session_expires_secs` 1800, T1 500 ms): halfway, at 900 s, the
/// gateway refreshes both legs; the agent has vanished and never answers its re-INVITE, so at
/// 932 s (Timer B) the citizen gets a BYE saying why, and the record says so.
#[tokio::test(start_paused = true)]
async fn an_unanswered_session_refresh_at_900_s_ends_the_call_at_932_s() {
    let clock = HeldClock::hold();
    let mut citizen = Ua::bind("carrier", LOCALHOST).await;
    let mut agent = Ua::bind("hotline", LOCALHOST).await;
    let mut gateway = Gateway::start(
        &[
            ("carrier", citizen.address, ""),
            ("hotline", agent.address, ""),
        ],
        &[("12345", &["hotline"])],
        "",
        "",
    )
    .await;
    citizen.set_gateway(gateway.sip);
    agent.set_gateway(gateway.sip);
    let rtp = RtpPeer::bind(LOCALHOST).await;
    let invite = citizen.invite(
        "12345",
        "13800138000",
        &sdp(rtp.address, &[8], "sendrecv"),
        "Allow: INVITE, ACK, BYE, CANCEL, UPDATE\r\nSupported: timer\r\n",
    );
    citizen.send_request(&invite).await;
    let incoming = agent.expect_request("INVITE").await;
    assert_eq!(incoming.headers.get("Session-Expires"), Some("1800"));
    let _agent_media = answer_with_media(&mut agent, &incoming, &[8]).await;
    let ok = citizen.expect_response("INVITE", 200).await;
    assert_eq!(
        ok.headers.get("Session-Expires"),
        Some("1800;refresher=uas")
    );
    let ack = citizen.ack(&invite, &ok, "");
    citizen.send_request(&ack).await;

    clock.advance_to(Duration::from_secs(900) - MS).await;
    agent
        .expect_none_then_marker(Duration::ZERO, "a refresh before halfway", |m| {
            is_request(m, Method::Invite)
        })
        .await;
    citizen
        .expect_none_then_marker(Duration::ZERO, "a refresh before halfway", |m| {
            is_request(m, Method::Update)
        })
        .await;
    clock.advance_to(Duration::from_secs(900)).await;
    let refresh = agent.expect_request("INVITE").await;
    assert_eq!(
        refresh.headers.get("Session-Expires"),
        Some("1800;refresher=uac")
    );
    assert!(
        refresh.sdp().is_some(),
        "a re-INVITE refresh offers our SDP again"
    );
    let update = citizen.expect_request("UPDATE").await;
    assert_eq!(
        clock.elapsed(),
        Duration::from_secs(900),
        "the clock moved by itself"
    );
    let mut refreshed = citizen.answer(&update, 200, None);
    refreshed
        .headers
        .push("Session-Expires", "1800;refresher=uac");
    citizen.send_response(&refreshed).await;
    // The gateway has taken the 200 before the clock moves on.
    citizen.marker().await;

    // The agent's re-INVITE goes unanswered: Timer B, 32 s on.
    clock.advance_to(Duration::from_secs(932) - MS).await;
    citizen
        .expect_none_then_marker(Duration::ZERO, "a BYE before Timer B", |m| {
            is_request(m, Method::Bye)
        })
        .await;
    clock.advance_to(Duration::from_secs(932)).await;
    let bye = citizen.expect_request("BYE").await;
    assert_eq!(
        clock.elapsed(),
        Duration::from_secs(932),
        "the clock moved by itself"
    );
    assert!(
        bye.headers
            .get("Reason")
            .is_some_and(|r| r.contains("session refresh timed out")),
        "{bye:?}"
    );
    citizen
        .send_response(&citizen.answer(&bye, 200, None))
        .await;
    let record = ended(&gateway, invite.call_id());
    assert_eq!(record.ended_by.as_deref(), Some("gateway"), "{record:?}");
    assert_eq!(
        record.end_reason.as_deref(),
        Some("session refresh timed out"),
        "{record:?}"
    );
    assert_eq!(record.final_status, Some(200), "{record:?}");
    assert!(record.answered_at.is_some(), "{record:?}");
    // The BYE to the vanished agent times out too (Timer F), then the gateway stops.
    clock.advance_to(Duration::from_secs(965)).await;
    gateway.stop().await;
}

/// The citizen, the 12345 agent and the 110 desk, the citizen's call up with the agent.
struct Parties {
    citizen: Ua,
    agent: Ua,
    police: Ua,
    gateway: Gateway,
    call: common::Established,
}

/// A gateway routing 12345 to the agent and 110 to the desk (with `tables`, more TOML), and
/// the citizen's call connected to the agent.
async fn citizen_with_the_agent(tables: &str) -> Parties {
    let mut citizen = Ua::bind("carrier", LOCALHOST).await;
    let mut agent = Ua::bind("hotline", LOCALHOST).await;
    let mut police = Ua::bind("police", LOCALHOST).await;
    let gateway = Gateway::start_with_tables(
        &[
            ("carrier", citizen.address, ""),
            ("hotline", agent.address, "platform = \"12345\""),
            ("police", police.address, "platform = \"110\""),
        ],
        &[("12345", &["hotline"]), ("110", &["police"])],
        "",
        "",
        tables,
    )
    .await;
    for ua in [&mut citizen, &mut agent, &mut police] {
        ua.set_gateway(gateway.sip);
    }
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    Parties {
        citizen,
        agent,
        police,
        gateway,
        call,
    }
}

/// A transfer target that rings past `sip.transfer_ring_timeout_secs` (default 30 s) is
/// cancelled; the agent's REFER ends in a 408 NOTIFY and the citizen stays with the agent.
#[tokio::test(start_paused = true)]
async fn a_transfer_target_ringing_past_30_s_is_given_up_and_the_citizen_stays() {
    let clock = HeldClock::hold();
    let Parties {
        mut citizen,
        mut agent,
        mut police,
        mut gateway,
        call,
    } = citizen_with_the_agent("").await;
    let mut refer = agent.uas_request(&call.incoming, "REFER", 2);
    refer.headers.push("Refer-To", "<sip:110@gw>");
    agent.send_request(&refer).await;
    agent.expect_response("REFER", 202).await;
    let invite = police.expect_request("INVITE").await;
    assert_eq!(
        invite.from().and_then(|f| f.uri.user),
        Some("13800138000".to_string())
    );
    police
        .send_response(&police.answer(&invite, 180, None))
        .await;
    // The agent is told 110 rings: the call has taken the 180, the ring timeout runs from now.
    assert_eq!(notified_until(&mut agent, 180).await, 180);

    clock.advance_to(Duration::from_secs(30) - MS).await;
    police
        .expect_none_then_marker(Duration::ZERO, "a CANCEL before the ring timeout", |m| {
            is_request(m, Method::Cancel)
        })
        .await;
    clock.advance_to(Duration::from_secs(30)).await;
    let cancel = police.expect_request("CANCEL").await;
    assert_eq!(
        clock.elapsed(),
        Duration::from_secs(30),
        "the clock moved by itself"
    );
    police
        .send_response(&police.answer(&cancel, 200, None))
        .await;
    police
        .send_response(&police.answer(&invite, 487, None))
        .await;
    police.expect_request("ACK").await;

    // The REFER's subscription ends with the target's failure, 408.
    assert_eq!(notified_until(&mut agent, 200).await, 408);
    // The citizen was not hung up on; the call goes on until the agent ends it.
    citizen
        .expect_none_then_marker(Duration::ZERO, "the citizen was hung up on", |m| {
            is_request(m, Method::Bye)
        })
        .await;
    let bye = agent.uas_request(&call.incoming, "BYE", 3);
    agent.send_request(&bye).await;
    agent.expect_response("BYE", 200).await;
    let bye = citizen.expect_request("BYE").await;
    citizen
        .send_response(&citizen.answer(&bye, 200, None))
        .await;
    let record = ended(&gateway, call.invite.call_id());
    assert_eq!(record.b_peer.as_deref(), Some("hotline"), "{record:?}");
    let linkages = gateway.linkages(&record.id);
    assert_eq!(linkages.len(), 1, "{linkages:?}");
    assert_eq!(
        linkages[0].outcome.as_deref(),
        Some("failed"),
        "{linkages:?}"
    );
    assert_eq!(linkages[0].sip_status, Some(408), "{linkages:?}");
    gateway.stop().await;
}

/// Answers the NOTIFYs of the agent's REFER subscription until one whose sipfrag status is
/// `at_least` or more; returns that status.
async fn notified_until(agent: &mut Ua, at_least: u16) -> u16 {
    loop {
        let notify = agent.expect_request("NOTIFY").await;
        agent.send_response(&agent.answer(&notify, 200, None)).await;
        let body = String::from_utf8_lossy(&notify.body).to_string();
        let status: u16 = body
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_default();
        if status >= at_least {
            return status;
        }
    }
}

/// `sip.hotkey_inter_digit_ms` at its default, 2000 ms: the agent's lone `*` is held, then
/// passed on to the citizen when the 2 s run out; `*` and `1` 1.999 s apart are the hotkey, and
/// 110 is called with the citizen's number.
#[tokio::test(start_paused = true)]
async fn a_held_hotkey_digit_is_passed_on_at_2_s_and_a_digit_within_2_s_completes_the_hotkey() {
    let clock = HeldClock::hold();
    let Parties {
        mut citizen,
        mut agent,
        mut police,
        mut gateway,
        call,
    } = citizen_with_the_agent(
        "\n[[hotkey]]\ndtmf = \"*1\"\naction = \"transfer\"\ntarget = \"110\"\n",
    )
    .await;
    // The INFO's 200 comes from the call once it has taken the digit.
    let key = |agent: &mut Ua, cseq: u32, digit: char| dtmf_info(agent, &call, cseq, digit);
    let info = key(&mut agent, 2, '*');
    agent.send_request(&info).await;
    agent.expect_response("INFO", 200).await;

    clock.advance_to(Duration::from_secs(2) - MS).await;
    citizen
        .expect_none_then_marker(
            Duration::ZERO,
            "a digit before the inter-digit timeout",
            |m| is_request(m, Method::Info),
        )
        .await;
    clock.advance_to(Duration::from_secs(2)).await;
    let passed = citizen.expect_request("INFO").await;
    assert_eq!(
        clock.elapsed(),
        Duration::from_secs(2),
        "the clock moved by itself"
    );
    assert!(
        String::from_utf8_lossy(&passed.body).contains("Signal=*"),
        "{passed:?}"
    );
    citizen
        .send_response(&citizen.answer(&passed, 200, None))
        .await;

    let info = key(&mut agent, 3, '*');
    agent.send_request(&info).await;
    agent.expect_response("INFO", 200).await;
    clock.advance_to(Duration::from_secs(4) - MS).await;
    let info = key(&mut agent, 4, '1');
    agent.send_request(&info).await;
    agent.expect_response("INFO", 200).await;
    let invite = police.expect_request("INVITE").await;
    assert_eq!(
        invite.from().and_then(|f| f.uri.user),
        Some("13800138000".to_string())
    );
    citizen
        .expect_none_then_marker(Duration::ZERO, "a hotkey digit reached the citizen", |m| {
            is_request(m, Method::Info)
        })
        .await;
    // 110 is busy: the citizen stays with the agent, who hangs up.
    police
        .send_response(&police.answer(&invite, 486, None))
        .await;
    police.expect_request("ACK").await;
    let bye = agent.uas_request(&call.incoming, "BYE", 5);
    agent.send_request(&bye).await;
    agent.expect_response("BYE", 200).await;
    let bye = citizen.expect_request("BYE").await;
    citizen
        .send_response(&citizen.answer(&bye, 200, None))
        .await;
    let record = ended(&gateway, call.invite.call_id());
    let linkages = gateway.linkages(&record.id);
    assert_eq!(linkages.len(), 1, "{linkages:?}");
    assert_eq!(linkages[0].trigger, "hotkey", "{linkages:?}");
    assert_eq!(linkages[0].sip_status, Some(486), "{linkages:?}");
    gateway.stop().await;
}
