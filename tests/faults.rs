//! Faults over real sockets: the store's disk fills up, a TCP connection is reset
//! mid-transaction. Every call ends cleanly and its record is complete. (A peer that vanishes
//! mid-call, found by the session refresh, is in `tests/timers.rs`, on paused time.)

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{establish, Gateway, Ua};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// The citizen's INVITE to 12345 (G.711 A-law offer, `extra` header lines), sent; with the
/// RTP socket its offer names.
async fn citizen_calls(
    citizen: &mut Ua,
    extra: &str,
) -> (hotline_gateway::sip::message::Request, common::RtpPeer) {
    let rtp = common::RtpPeer::bind(LOCALHOST).await;
    let invite = citizen.invite(
        "12345",
        "13800138000",
        &common::sdp(rtp.address, &[8], "sendrecv"),
        extra,
    );
    citizen.send_request(&invite).await;
    (invite, rtp)
}

#[tokio::test]
async fn a_full_disk_never_stops_calls_and_loses_no_record() {
    let mut citizen = Ua::bind("carrier", LOCALHOST).await;
    let mut agent = Ua::bind("hotline", LOCALHOST).await;
    let gateway = Gateway::start_configured(
        &[
            ("carrier", citizen.address, ""),
            ("hotline", agent.address, ""),
        ],
        &[("12345", &["hotline"])],
        "",
        "",
        "",
        |config| {
            config.store.max_size_mb = Some(1);
            common::fill_store(
                config
                    .store
                    .path
                    .as_deref()
                    .unwrap_or_else(|| panic!("the test config has a store path")),
            );
        },
    )
    .await;
    citizen.set_gateway(gateway.sip);
    agent.set_gateway(gateway.sip);

    // The disk is full: every call still connects, talks and hangs up cleanly.
    let mut call_ids = Vec::new();
    for _ in 0..40 {
        let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
        common::caller_hangs_up(&mut citizen, &call, &mut [&mut agent]).await;
        call_ids.push(
            call.invite
                .headers
                .get("Call-ID")
                .unwrap_or_default()
                .to_string(),
        );
    }
    assert_eq!(gateway.metric("hotline_store_degraded").await, Some(1.0));
    assert!(gateway.metric("hotline_store_held_records").await > Some(0.0));
    assert!(gateway.metric("hotline_store_write_errors_total").await > Some(0.0));
    // A balancer hears of it: calls go on, but this node's records are not on disk.
    let (status, body) = gateway.http_get("/healthz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("store cannot write: "), "{body}");

    // Space is freed: the held records land within a retry, and every one is complete.
    common::free_store(&gateway.db);
    gateway.metric_reaches("hotline_store_degraded", 0.0).await;
    assert_eq!(
        gateway.http_get("/healthz").await,
        (200, "ok\n".to_string())
    );
    assert_eq!(
        gateway.metric("hotline_store_held_records").await,
        Some(0.0)
    );
    assert_eq!(
        gateway.metric("hotline_store_records_lost_total").await,
        Some(0.0)
    );
    let records = gateway.calls();
    for call_id in &call_ids {
        let Some(record) = records.iter().find(|r| &r.a_call_id == call_id) else {
            panic!("no record for {call_id}");
        };
        assert!(record.answered_at.is_some(), "{record:?}");
        assert!(record.ended_at.is_some(), "{record:?}");
        assert_eq!(record.ended_by.as_deref(), Some("caller"), "{record:?}");
        assert_eq!(record.final_status, Some(200), "{record:?}");
    }
}

/// A desk on TCP takes the INVITE, says 100 Trying, then its connection is reset: the request
/// fails at once as a 503 (RFC 3261 §8.1.3.1) and the call goes to the route's next desk, rather
/// than waiting for a final answer that cannot come.
#[tokio::test]
async fn a_tcp_connection_reset_mid_transaction_fails_over_at_once() {
    let mut citizen = Ua::bind("carrier", LOCALHOST).await;
    let mut backup = Ua::bind("backup", LOCALHOST).await;
    let desk = match tokio::net::TcpListener::bind((LOCALHOST, 0)).await {
        Ok(l) => l,
        Err(e) => panic!("{e}"),
    };
    let desk_address = match desk.local_addr() {
        Ok(a) => a,
        Err(e) => panic!("{e}"),
    };
    let gateway = Gateway::start(
        &[
            ("carrier", citizen.address, ""),
            ("desk", desk_address, "transport = \"tcp\""),
            ("backup", backup.address, ""),
        ],
        &[("12345", &["desk", "backup"])],
        "",
        "",
    )
    .await;
    citizen.set_gateway(gateway.sip);
    backup.set_gateway(gateway.sip);

    let (invite, _caller_rtp) = citizen_calls(&mut citizen, "").await;
    // The desk: reads the INVITE, answers 100, then resets the connection.
    let (mut stream, _) = match tokio::time::timeout(common::WAIT, desk.accept()).await {
        Ok(Ok(accepted)) => accepted,
        other => panic!("the gateway never connected to the desk: {other:?}"),
    };
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let request = loop {
        let n = match tokio::time::timeout(common::WAIT, stream.read(&mut buffer)).await {
            Ok(Ok(n)) if n > 0 => n,
            other => panic!("no INVITE on the connection: {other:?}"),
        };
        received.extend_from_slice(&buffer[..n]);
        if let Ok(hotline_gateway::sip::message::Message::Request(r)) =
            hotline_gateway::sip::message::parse(&received)
        {
            break r;
        }
    };
    assert_eq!(request.method.as_str(), "INVITE");
    let trying = hotline_gateway::sip::message::Response::for_request(&request, 100, None);
    if let Err(e) = stream.write_all(&trying.to_bytes()).await {
        panic!("{e}");
    }
    citizen.expect_response("INVITE", 100).await;
    if let Err(e) = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)) {
        panic!("{e}");
    }
    drop(stream);

    // The backup desk rings within moments, not after a ring timeout.
    let incoming = match backup.recv_within(Duration::from_secs(2)).await {
        Some(hotline_gateway::sip::message::Message::Request(r))
            if r.method.as_str() == "INVITE" =>
        {
            r
        }
        other => panic!("the call did not go to the backup desk: {other:?}"),
    };
    let callee_rtp = common::RtpPeer::bind(LOCALHOST).await;
    let answer = common::sdp(callee_rtp.address, &[8], "sendrecv");
    backup
        .send_response(&backup.answer(&incoming, 200, Some(&answer)))
        .await;
    let ok = citizen.expect_response("INVITE", 200).await;
    let ack = citizen.ack(&invite, &ok, "");
    citizen.send_request(&ack).await;
    backup.expect_request("ACK").await;
    assert_eq!(
        gateway.metric("hotline_sip_transport_errors_total").await,
        Some(1.0)
    );

    let bye = citizen.in_dialog(&invite, &ok, "BYE", 2, "");
    citizen.send_request(&bye).await;
    citizen.expect_response("BYE", 200).await;
    let bye = backup.expect_request("BYE").await;
    backup.send_response(&backup.answer(&bye, 200, None)).await;
    let call_id = invite
        .headers
        .get("Call-ID")
        .unwrap_or_default()
        .to_string();
    let record = gateway.ended_record(&call_id).await;
    assert_eq!(record.b_peer.as_deref(), Some("backup"), "{record:?}");
    assert_eq!(record.final_status, Some(200), "{record:?}");
}
