//! Long SIP timers at their default values, on paused time: Timer A/B towards a peer that never
//! answers, the ring timeout, a session refresh that times out. The gateway and the user agents
//! share one current-thread runtime whose clock a [`HeldClock`] keeps still while the gateway
//! waits on its store in real time; the test moves it with `tokio::time::advance`, so a 60 s
//! timer takes no real time and fires at the very millisecond it is due, not before.
//!
//! SIP only: the relay's threads run on the OS clock.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{establish, sdp, Gateway, HeldClock, RtpPeer, Ua};
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
    let invite = caller.invite("110", "13800138000", &sdp(rtp.address, &[8], "sendrecv"), "");
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
    assert_eq!(clock.elapsed(), Duration::from_secs(32), "the clock moved by itself");
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
