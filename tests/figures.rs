//! The assessed figures as labelled series on `/metrics`: per desk and platform, calls
//! offered, answered, answered within the service level and abandoned; transfers by kind,
//! direction and outcome.

mod common;

use std::net::IpAddr;

use common::{establish, Gateway, Ua};

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// A citizen's call answered at the hotline and transferred to 110, and one the citizen gives
/// up on while the desk rings: offered 2, answered 1 (within 20 s), abandoned 1 at the
/// hotline; one transfer 12345 → 110 answered.
#[tokio::test]
async fn desks_and_linkages_are_counted_by_their_labels() {
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
        "",
        "",
        "",
    )
    .await;
    for ua in [&mut citizen, &mut agent, &mut police] {
        ua.set_gateway(gateway.sip);
    }
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let _police_rtp = common::refer_to_110_answered(&mut agent, &call, &mut police).await;
    common::caller_hangs_up(&mut citizen, &call, &mut [&mut police]).await;

    // The second citizen gives up while the desk rings.
    let rtp = common::RtpPeer::bind(LOCALHOST).await;
    let second = citizen.invite(
        "12345",
        "13900139000",
        &common::sdp(rtp.address, &[8], "sendrecv"),
        "",
    );
    citizen.send_request(&second).await;
    let ringing = agent.expect_request("INVITE").await;
    agent
        .send_response(&agent.answer(&ringing, 180, None))
        .await;
    citizen.expect_response("INVITE", 180).await;
    citizen.send_request(&citizen.cancel(&second)).await;
    citizen.expect_response("CANCEL", 200).await;
    let cancel = agent.expect_request("CANCEL").await;
    agent.send_response(&agent.answer(&cancel, 200, None)).await;
    agent
        .send_response(&agent.answer(&ringing, 487, None))
        .await;
    agent.expect_request("ACK").await;
    citizen.expect_response("INVITE", 487).await;

    let desk = "{peer=\"hotline\",platform=\"12345\"}";
    gateway
        .metric_reaches(&format!("hotline_desk_calls_offered_total{desk}"), 2.0)
        .await;
    for (name, value) in [
        ("hotline_desk_calls_answered_total", 1.0),
        ("hotline_desk_calls_answered_within_total", 1.0),
        ("hotline_desk_calls_abandoned_total", 1.0),
    ] {
        assert_eq!(
            gateway.metric(&format!("{name}{desk}")).await,
            Some(value),
            "{name}"
        );
    }
    assert_eq!(
        gateway
            .metric("hotline_linkages_total{kind=\"transfer\",from=\"12345\",to=\"110\",outcome=\"answered\"}")
            .await,
        Some(1.0)
    );
    // The answered call's answer and ring times, each in the first bucket (loopback).
    for name in ["hotline_desk_answer_seconds", "hotline_desk_ring_seconds"] {
        assert_eq!(
            gateway
                .metric(&format!("{name}_count{{platform=\"12345\"}}"))
                .await,
            Some(1.0),
            "{name}"
        );
        assert_eq!(
            gateway
                .metric(&format!("{name}_bucket{{platform=\"12345\",le=\"+Inf\"}}"))
                .await,
            Some(1.0),
            "{name}"
        );
    }
    // The transfer's time from the REFER to 110's answer: one observation.
    assert_eq!(
        gateway
            .metric(
                "hotline_linkage_answer_seconds_count{kind=\"transfer\",from=\"12345\",to=\"110\"}"
            )
            .await,
        Some(1.0)
    );
    // Both calls dialled 12345: its route's figures.
    for (name, value) in [
        ("hotline_route_calls_offered_total", 2.0),
        ("hotline_route_calls_answered_total", 1.0),
        ("hotline_route_calls_answered_within_total", 1.0),
        ("hotline_route_calls_abandoned_total", 1.0),
    ] {
        let series = format!("{name}{{route=\"12345\"}}");
        assert_eq!(gateway.metric(&series).await, Some(value), "{name}");
    }
    // The citizen who gave up while the desk rang: one wait before abandoning.
    assert_eq!(
        gateway
            .metric("hotline_desk_abandon_seconds_count{platform=\"12345\"}")
            .await,
        Some(1.0)
    );
    gateway.stop().await;
}
