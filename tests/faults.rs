//! Faults over real sockets: the store's disk fills up, a peer vanishes mid-call, a TCP
//! connection is reset mid-transaction. Every call ends cleanly and its record is complete.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{establish, Gateway, Ua};

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// Waits (bounded) until `name` on `/metrics` reads `value`.
async fn metric_reaches(gateway: &Gateway, name: &str, value: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = gateway.metric(name).await;
        if now == Some(value) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} is {now:?}, not {value}"
        );
        // Metrics have no push: look again shortly.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
            common::fill_store(&config.store.path);
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

    // Space is freed: the held records land within a retry, and every one is complete.
    common::free_store(&gateway.db);
    metric_reaches(&gateway, "hotline_store_degraded", 0.0).await;
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
