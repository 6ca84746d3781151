//! `[hep]`: a Homer capture server (here a UDP socket in the test, decoding HEPv3) gets a
//! copy of every SIP message of a call, both legs, in the order they passed, each with its
//! addresses, the transport, the capture agent id and the call's correlation id: the
//! citizen's leg's Call-ID on both legs, so Homer shows the call as one.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use common::{establish, Gateway, Ua, WAIT};

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// One copy as the collector reads it.
#[derive(Debug)]
struct Copy {
    source: SocketAddr,
    destination: SocketAddr,
    protocol: u8,
    kind: u8,
    capture_id: u32,
    correlation: String,
    /// The message's own Call-ID.
    call_id: String,
    message: String,
    first_line: String,
}

/// The chunks of a HEPv3 packet, or None if it is not one (its header and lengths checked).
fn decode(packet: &[u8]) -> Option<Copy> {
    if packet.get(..4)? != b"HEP3" {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([*packet.get(4)?, *packet.get(5)?]));
    if total != packet.len() {
        return None;
    }
    let mut chunks: HashMap<u16, Vec<u8>> = HashMap::new();
    let mut at = 6;
    while at < packet.len() {
        let header = packet.get(at..at + 6)?;
        if header[..2] != [0, 0] {
            return None;
        }
        let kind = u16::from_be_bytes([header[2], header[3]]);
        let length = usize::from(u16::from_be_bytes([header[4], header[5]]));
        chunks.insert(kind, packet.get(at + 6..at + length)?.to_vec());
        at += length;
    }
    let ip = |kind| -> Option<IpAddr> {
        let octets: [u8; 4] = chunks.get(&kind)?.as_slice().try_into().ok()?;
        Some(IpAddr::from(octets))
    };
    let port = |kind| -> Option<u16> {
        Some(u16::from_be_bytes(
            chunks.get(&kind)?.as_slice().try_into().ok()?,
        ))
    };
    let payload = String::from_utf8_lossy(chunks.get(&15)?).to_string();
    Some(Copy {
        source: SocketAddr::new(ip(3)?, port(7)?),
        destination: SocketAddr::new(ip(4)?, port(8)?),
        protocol: *chunks.get(&2)?.first()?,
        kind: *chunks.get(&11)?.first()?,
        capture_id: u32::from_be_bytes(chunks.get(&12)?.as_slice().try_into().ok()?),
        correlation: String::from_utf8_lossy(chunks.get(&17)?).to_string(),
        first_line: payload.lines().next().unwrap_or_default().to_string(),
        call_id: payload
            .lines()
            .find_map(|l| l.strip_prefix("Call-ID: "))
            .unwrap_or_default()
            .to_string(),
        message: payload,
    })
}

#[tokio::test]
async fn a_homer_collector_gets_every_message_of_a_call_in_order() {
    let collector = tokio::net::UdpSocket::bind((LOCALHOST, 0))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let collector_address = collector.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let mut citizen = Ua::bind("carrier", LOCALHOST).await;
    let mut agent = Ua::bind("hotline", LOCALHOST).await;
    let mut gateway = Gateway::start_configured(
        &[
            ("carrier", citizen.address, ""),
            ("hotline", agent.address, "platform = \"12345\""),
        ],
        &[("12345", &["hotline"])],
        "",
        "",
        "",
        move |config| {
            config.hep = Some(hotline_gateway::config::HepConfig {
                address: collector_address,
                capture_id: 7,
            });
        },
    )
    .await;
    for ua in [&mut citizen, &mut agent] {
        ua.set_gateway(gateway.sip);
    }
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    common::caller_hangs_up(&mut citizen, &call, &mut [&mut agent]).await;

    // What each leg carried, in order: (from, first line) with the SIP address of the
    // gateway as "gw".
    let (leg_a, leg_b) = (
        call.invite.call_id().to_string(),
        call.incoming.call_id().to_string(),
    );
    let expected_a = [
        ("citizen", "INVITE sip:12345@"),
        ("gw", "SIP/2.0 100"),
        ("gw", "SIP/2.0 180"),
        ("gw", "SIP/2.0 200"),
        ("citizen", "ACK "),
        ("citizen", "BYE "),
        ("gw", "SIP/2.0 200"),
    ];
    let expected_b = [
        ("gw", "INVITE sip:12345@"),
        ("agent", "SIP/2.0 180"),
        ("agent", "SIP/2.0 200"),
        ("gw", "ACK "),
        ("gw", "BYE "),
        ("agent", "SIP/2.0 200"),
    ];
    let mut copies: Vec<Copy> = Vec::new();
    let mut buffer = vec![0u8; 65_535];
    let count = |copies: &[Copy], id: &str| copies.iter().filter(|c| c.call_id == id).count();
    while count(&copies, &leg_a) < expected_a.len() || count(&copies, &leg_b) < expected_b.len() {
        let (length, _) = tokio::time::timeout(WAIT, collector.recv_from(&mut buffer))
            .await
            .unwrap_or_else(|_| panic!("the collector waits; it has {copies:#?}"))
            .unwrap_or_else(|e| panic!("{e}"));
        let copy = decode(&buffer[..length]).unwrap_or_else(|| panic!("not HEPv3"));
        // A retransmission (a loaded machine's late ACK) is the same message again.
        if !copies.iter().any(|c| c.message == copy.message) {
            copies.push(copy);
        }
    }
    let name = |address: SocketAddr| {
        if address == citizen.address {
            "citizen"
        } else if address == agent.address {
            "agent"
        } else if address.port() == gateway.sip.port() {
            "gw"
        } else {
            "someone else"
        }
    };
    for (id, expected) in [(&leg_a, &expected_a[..]), (&leg_b, &expected_b[..])] {
        let seen: Vec<(&str, &str)> = copies
            .iter()
            .filter(|c| &c.call_id == id)
            .map(|c| (name(c.source), c.first_line.as_str()))
            .collect();
        assert_eq!(seen.len(), expected.len(), "{seen:?}");
        for ((from, line), (want_from, want_line)) in seen.iter().zip(expected) {
            assert_eq!(from, want_from, "{line}: {seen:?}");
            assert!(
                line.starts_with(want_line),
                "{line} for {want_line}: {seen:?}"
            );
        }
    }
    for copy in &copies {
        assert_eq!(
            (copy.protocol, copy.kind, copy.capture_id),
            (17, 1, 7),
            "{copy:?}"
        );
        assert_ne!(name(copy.source), name(copy.destination), "{copy:?}");
        assert_eq!(
            copy.correlation, leg_a,
            "both legs under the citizen's: {copy:?}"
        );
    }
    assert_ne!(leg_a, leg_b, "two legs, two Call-IDs");
    gateway
        .metric_reaches_at_least("hotline_hep_sent_total", 13.0)
        .await;
    assert_eq!(gateway.metric("hotline_hep_dropped_total").await, Some(0.0));
    gateway.stop().await;
}
