//! SRTP (RFC 3711) keyed by SDES (RFC 4568), end to end on loopback: in-process user agents
//! that protect and check their media with the gateway's own SRTP contexts (the interop with
//! another implementation, libre's, is in `tests/baresip.rs`). What an engineer checks: keys in
//! SDP, decrypted media on a plain leg, forgeries and replays dropped and counted, a forged
//! packet latching nothing, `srtp = "mandatory"` enforced both ways, a re-INVITE keeping keys.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::{sdp, sdp_address, Gateway, RtpPeer, Ua};
use hotline_gateway::media::srtp::{MasterKey, Receiver, Sender, Suite};
use tokio::net::UdpSocket;

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// The citizen's master key (its own, sent in its offer).
const CITIZEN_KEY: MasterKey = MasterKey([0x11; 30]);

/// An SDES offer at `address`: RTP/SAVP, PCMA, one AES_CM_128_HMAC_SHA1_80 line with `key`.
fn srtp_offer(address: SocketAddr, key: &MasterKey) -> String {
    sdp(address, &[8], "sendrecv").replace("RTP/AVP", "RTP/SAVP")
        + &format!(
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{}\r\n",
            STANDARD.encode(key.0)
        )
}

/// The key of the first `a=crypto` line of `body`, and that line's tag and suite.
fn crypto_of(body: &str) -> Option<(u32, String, MasterKey)> {
    let line = body.lines().find_map(|l| l.strip_prefix("a=crypto:"))?;
    let mut fields = line.split_ascii_whitespace();
    let tag = fields.next()?.parse().ok()?;
    let suite = fields.next()?.to_string();
    let inline = fields.next()?.strip_prefix("inline:")?;
    let bytes = STANDARD.decode(inline.split('|').next()?).ok()?;
    Some((tag, suite, MasterKey(<[u8; 30]>::try_from(bytes).ok()?)))
}

/// A 20 ms PCMA packet, protected with `sender` (None: plain RTP).
fn packet(sender: Option<&mut Sender>, sequence: u16, fill: u8) -> Vec<u8> {
    let mut buffer = [0u8; 256];
    buffer[..12].copy_from_slice(&[0x80, 8, 0, 0, 0, 0, 0, 0, 0xc1, 0x71, 0, 1]);
    buffer[2..4].copy_from_slice(&sequence.to_be_bytes());
    buffer[4..8].copy_from_slice(&(160 * u32::from(sequence)).to_be_bytes());
    buffer[12..172].fill(fill);
    let length = match sender {
        Some(sender) => sender.protect_rtp(&mut buffer, 172).unwrap_or(0),
        None => 172,
    };
    buffer[..length].to_vec()
}

async fn send(socket: &UdpSocket, packet: &[u8], to: SocketAddr) {
    if let Err(e) = socket.send_to(packet, to).await {
        panic!("rtp send: {e}");
    }
}

/// The next datagram on `socket`, within `within`.
async fn datagram(socket: &UdpSocket, within: Duration) -> Option<Vec<u8>> {
    let mut buffer = [0u8; 2048];
    match tokio::time::timeout(within, socket.recv_from(&mut buffer)).await {
        Ok(Ok((n, _))) => Some(buffer[..n].to_vec()),
        _ => None,
    }
}

async fn setup(carrier_extra: &str, hotline_extra: &str) -> (Gateway, Ua, Ua) {
    let mut caller = Ua::bind("carrier", LOCALHOST).await;
    let mut callee = Ua::bind("hotline", LOCALHOST).await;
    let hotline = format!("platform = \"12345\"\n{hotline_extra}");
    let gateway = Gateway::start(
        &[
            ("carrier", caller.address, carrier_extra),
            ("hotline", callee.address, &hotline),
        ],
        &[("12345", &["hotline"])],
        "",
        "",
    )
    .await;
    caller.set_gateway(gateway.sip);
    callee.set_gateway(gateway.sip);
    (gateway, caller, callee)
}

/// The citizen offers SRTP; the hotline takes plain RTP. The gateway answers with its own key,
/// decrypts the citizen's media for the hotline and encrypts the hotline's for the citizen.
/// A forged packet sent first from another port latches nothing; forgeries and a replay are
/// dropped and counted; a re-INVITE with the same offer gets the same key back.
#[tokio::test]
async fn srtp_caller_and_plain_callee_forgeries_and_replays_dropped() {
    let (mut gateway, mut caller, mut callee) = setup("", "").await;
    let citizen_rtp = RtpPeer::bind(LOCALHOST).await;
    let invite = caller.invite(
        "12345",
        "13800138000",
        &srtp_offer(citizen_rtp.address, &CITIZEN_KEY),
        "",
    );
    caller.send_request(&invite).await;
    let incoming = callee.expect_request("INVITE").await;
    let offer = incoming.sdp().unwrap_or_default().to_string();
    assert!(
        offer.contains("RTP/AVP") && !offer.contains("a=crypto"),
        "the hotline (srtp optional) gets a plain offer:\n{offer}"
    );
    let hotline_rtp = RtpPeer::bind(LOCALHOST).await;
    let answer = sdp(hotline_rtp.address, &[8], "sendrecv");
    callee
        .send_response(&callee.answer(&incoming, 200, Some(&answer)))
        .await;
    let ok = caller.expect_response("INVITE", 200).await;
    let body = ok.sdp().unwrap_or_default().to_string();
    assert!(body.contains("RTP/SAVP 8"), "{body}");
    let Some((tag, suite, gateway_key)) = crypto_of(&body) else {
        panic!("no a=crypto in the gateway's answer:\n{body}");
    };
    assert_eq!((tag, suite.as_str()), (1, "AES_CM_128_HMAC_SHA1_80"));
    assert_ne!(gateway_key, CITIZEN_KEY, "the gateway's own key");
    let ack = caller.ack(&invite, &ok, "");
    caller.send_request(&ack).await;
    callee.expect_request("ACK").await;
    let gateway_a = sdp_address(&body);
    let gateway_b = sdp_address(&offer);

    // Before the citizen's first packet, a forgery from elsewhere: it must not latch.
    let attacker = match UdpSocket::bind((LOCALHOST, 0)).await {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    let mut wrong_key = Sender::new(Suite::AesCm128HmacSha1_80, &MasterKey([0x66; 30]));
    send(&attacker, &packet(Some(&mut wrong_key), 1, 0x99), gateway_a).await;

    // The citizen's SRTP reaches the hotline decrypted.
    let mut citizen = Sender::new(Suite::AesCm128HmacSha1_80, &CITIZEN_KEY);
    let mut sent = Vec::new();
    for sequence in 1..=5u16 {
        let srtp = packet(Some(&mut citizen), sequence, 0x2a);
        send(&citizen_rtp.socket, &srtp, gateway_a).await;
        sent.push(srtp);
        let heard = hotline_rtp.recv().await;
        assert_eq!(
            heard.payload,
            vec![0x2a; 160],
            "decrypted for the plain leg"
        );
    }
    // The hotline's plain RTP reaches the citizen encrypted with the gateway's key, at the
    // citizen's own port (the forgery latched nothing).
    let mut from_gateway = Receiver::new(Suite::AesCm128HmacSha1_80, &gateway_key, 0);
    for sequence in 1..=5u16 {
        send(
            &hotline_rtp.socket,
            &packet(None, sequence, 0x55),
            gateway_b,
        )
        .await;
        let Some(mut srtp) = datagram(&citizen_rtp.socket, common::WAIT).await else {
            panic!("no media reached the citizen");
        };
        assert_ne!(srtp[12..172], [0x55; 160], "encrypted on the SRTP leg");
        let length = from_gateway.unprotect_rtp(&mut srtp);
        assert_eq!(
            length,
            Ok(172),
            "the citizen authenticates the gateway's packet"
        );
        assert_eq!(srtp[12..172], [0x55; 160]);
    }
    assert_eq!(
        datagram(&attacker, Duration::from_millis(200)).await,
        None,
        "nothing went to the forger"
    );
    // The marker: one more of the hotline's packets reaches the citizen, so one for the
    // forger sent before it would be in the forger's queue by now.
    send(&hotline_rtp.socket, &packet(None, 6, 0x56), gateway_b).await;
    let Some(mut srtp) = datagram(&citizen_rtp.socket, common::WAIT).await else {
        panic!("the marker did not reach the citizen");
    };
    assert_eq!(from_gateway.unprotect_rtp(&mut srtp), Ok(172));
    assert_eq!(srtp[12..172], [0x56; 160]);
    assert_eq!(
        common::queued_datagram(&attacker),
        None,
        "nothing went to the forger (before the marker)"
    );

    // A replay, a flipped payload bit and a plain packet: none reaches the hotline.
    send(&citizen_rtp.socket, &sent[2], gateway_a).await;
    let mut flipped = packet(Some(&mut citizen), 6, 0x2a);
    flipped[40] ^= 1;
    send(&citizen_rtp.socket, &flipped, gateway_a).await;
    send(&citizen_rtp.socket, &packet(None, 7, 0x2a), gateway_a).await;
    // Then a genuine one, which does; anything before it would be one of the three.
    send(
        &citizen_rtp.socket,
        &packet(Some(&mut citizen), 8, 0x3b),
        gateway_a,
    )
    .await;
    let next = hotline_rtp.recv().await;
    assert_eq!(
        next.payload,
        vec![0x3b; 160],
        "only the genuine packet passed"
    );
    // The forgery, the replay, the flipped packet and the plain one (rejected as a failed
    // tag) are counted.
    gateway
        .metric_reaches("hotline_srtp_rejected_total", 4.0)
        .await;

    // A re-INVITE repeating the offer keeps the gateway's key (RFC 4568 §7.1.4).
    let reinvite = caller.in_dialog(
        &invite,
        &ok,
        "INVITE",
        2,
        &srtp_offer(citizen_rtp.address, &CITIZEN_KEY),
    );
    caller.send_request(&reinvite).await;
    let reok = caller.expect_response("INVITE", 200).await;
    assert_eq!(
        crypto_of(reok.sdp().unwrap_or_default()).map(|c| c.2),
        Some(gateway_key)
    );
    let ack = caller.ack(&reinvite, &reok, "");
    caller.send_request(&ack).await;
    // The stream goes on under the same contexts: the next packet passes, and a replay of
    // one from before the re-INVITE is still refused (a fresh context would take it).
    send(&citizen_rtp.socket, &sent[4], gateway_a).await;
    send(
        &citizen_rtp.socket,
        &packet(Some(&mut citizen), 9, 0x4c),
        gateway_a,
    )
    .await;
    assert_eq!(hotline_rtp.recv().await.payload, vec![0x4c; 160]);
    gateway
        .metric_reaches("hotline_srtp_rejected_total", 5.0)
        .await;
    // And our stream to the citizen goes on: its receiver context takes the next packet.
    send(&hotline_rtp.socket, &packet(None, 7, 0x66), gateway_b).await;
    let Some(mut srtp) = datagram(&citizen_rtp.socket, common::WAIT).await else {
        panic!("no media reached the citizen after the re-INVITE");
    };
    assert_eq!(from_gateway.unprotect_rtp(&mut srtp), Ok(172));

    let bye = caller.in_dialog(&invite, &ok, "BYE", 3, "");
    caller.send_request(&bye).await;
    caller.expect_response("BYE", 200).await;
    let bye = callee.expect_request("BYE").await;
    callee.send_response(&callee.answer(&bye, 200, None)).await;
    let record = gateway.ended_record(invite.call_id()).await;
    assert_eq!(record.rtp_a_to_b, 7, "the citizen's genuine packets");
    gateway.stop().await;
}

/// `srtp = "mandatory"` on the hotline: its INVITE is RTP/SAVP with a key of the gateway's, and
/// a plain answer fails the call (488 to the citizen, BYE to the hotline). On the carrier: a
/// plain offer is refused with 488 before anything rings.
#[tokio::test]
async fn srtp_mandatory_peers_get_savp_offers_and_plain_sdp_is_refused() {
    let (mut gateway, mut caller, mut callee) = setup("", "srtp = \"mandatory\"").await;
    let citizen_rtp = RtpPeer::bind(LOCALHOST).await;
    let invite = caller.invite(
        "12345",
        "13800138000",
        &sdp(citizen_rtp.address, &[8], "sendrecv"),
        "",
    );
    caller.send_request(&invite).await;
    let incoming = callee.expect_request("INVITE").await;
    let offer = incoming.sdp().unwrap_or_default().to_string();
    assert!(
        offer.contains("m=audio") && offer.contains("RTP/SAVP"),
        "{offer}"
    );
    assert!(
        crypto_of(&offer)
            .is_some_and(|(tag, suite, _)| tag == 1 && suite == "AES_CM_128_HMAC_SHA1_80"),
        "{offer}"
    );
    let hotline_rtp = RtpPeer::bind(LOCALHOST).await;
    let plain = sdp(hotline_rtp.address, &[8], "sendrecv");
    callee
        .send_response(&callee.answer(&incoming, 200, Some(&plain)))
        .await;
    callee.expect_request("ACK").await;
    let bye = callee.expect_request("BYE").await;
    callee.send_response(&callee.answer(&bye, 200, None)).await;
    caller.expect_response("INVITE", 488).await;
    gateway.stop().await;

    let (mut gateway, mut caller, mut callee) = setup("srtp = \"mandatory\"", "").await;
    let invite = caller.invite(
        "12345",
        "13800138000",
        &sdp(citizen_rtp.address, &[8], "sendrecv"),
        "",
    );
    caller.send_request(&invite).await;
    caller.expect_response("INVITE", 488).await;
    callee
        .expect_nothing_then_marker(Duration::from_millis(300), "something rang")
        .await;
    // With SDES it goes through.
    let invite = caller.invite(
        "12345",
        "13800138000",
        &srtp_offer(citizen_rtp.address, &CITIZEN_KEY),
        "",
    );
    caller.send_request(&invite).await;
    let incoming = callee.expect_request("INVITE").await;
    assert!(!incoming.sdp().unwrap_or_default().contains("a=crypto"));
    gateway.stop().await;
}

/// A route of two desks that must have SRTP and one that takes RTP: each gets the offer its
/// setting asks for, the two SRTP desks each a key of its own.
#[tokio::test]
async fn failover_offers_each_peer_what_it_takes() {
    let mut caller = Ua::bind("carrier", LOCALHOST).await;
    let mut secure = Ua::bind("secure", LOCALHOST).await;
    let mut other = Ua::bind("other", LOCALHOST).await;
    let mut plain = Ua::bind("plain", LOCALHOST).await;
    let mut gateway = Gateway::start(
        &[
            ("carrier", caller.address, ""),
            ("secure", secure.address, "srtp = \"mandatory\""),
            ("other", other.address, "srtp = \"mandatory\""),
            ("plain", plain.address, ""),
        ],
        &[("12345", &["secure", "other", "plain"])],
        "",
        "",
    )
    .await;
    caller.set_gateway(gateway.sip);
    secure.set_gateway(gateway.sip);
    other.set_gateway(gateway.sip);
    plain.set_gateway(gateway.sip);
    let citizen_rtp = RtpPeer::bind(LOCALHOST).await;
    let invite = caller.invite(
        "12345",
        "13800138000",
        &sdp(citizen_rtp.address, &[8], "sendrecv"),
        "",
    );
    caller.send_request(&invite).await;
    let mut keys = Vec::new();
    for desk in [&mut secure, &mut other] {
        let offer = desk.expect_request("INVITE").await;
        let body = offer.sdp().unwrap_or_default().to_string();
        assert!(body.contains("RTP/SAVP"), "{body}");
        keys.push(crypto_of(&body).map(|c| c.2));
        desk.send_response(&desk.answer(&offer, 503, None)).await;
        desk.expect_request("ACK").await;
    }
    assert!(keys[0].is_some() && keys[1].is_some());
    assert_ne!(keys[0], keys[1], "a key per desk");
    let second = plain.expect_request("INVITE").await;
    let offer = second.sdp().unwrap_or_default();
    assert!(
        offer.contains("RTP/AVP") && !offer.contains("a=crypto"),
        "{offer}"
    );
    gateway.stop().await;
}
