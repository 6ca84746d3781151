//! One gateway on three networks (`[[interface]]`), as on the boundary host: the carrier on
//! the default interface (127.0.0.1), the 12345 ACD on the e-government network (127.0.0.2),
//! the 110 desk on the police network (127.0.0.3). Loopback aliases stand for the networks:
//! every address the gateway hands a peer, in any header or SDP line, and the source of the
//! RTP it sends there, must be that peer's network's.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use common::{dtmf_info, establish, media_block, sdp_address, Established, Gateway, RtpPeer, Ua};
use hotline_gateway::sip::message::Request;

const CARRIER_NET: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const EGOV_NET: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const POLICE_NET: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

/// The three networks' addresses, for "none of the others" checks.
const NETWORKS: [IpAddr; 3] = [CARRIER_NET, EGOV_NET, POLICE_NET];

/// Asserts that `text` (a whole message as sent) names no address of another network than
/// `own`.
fn only_addresses_of(own: IpAddr, what: &str, text: &str) {
    for other in NETWORKS.iter().filter(|n| **n != own) {
        assert!(
            !text.contains(&other.to_string()),
            "{what} names {other}, an address of another network:\n{text}"
        );
    }
    assert!(text.contains(&own.to_string()), "{what}:\n{text}");
}

fn text_of(bytes: impl AsRef<[u8]>) -> String {
    String::from_utf8_lossy(bytes.as_ref()).into_owned()
}

/// The carrier, the 12345 desk and the 110 desk, each on its network, around a gateway on all
/// three; `*1` transfers to 110, `*3` brings 110 in.
async fn three_networks() -> (Gateway, Ua, Ua, Ua) {
    let carrier = Ua::bind("carrier", CARRIER_NET).await;
    let desk = Ua::bind("hotline", EGOV_NET).await;
    let police = Ua::bind("police", POLICE_NET).await;
    let [egov_low, egov_high] = media_block();
    let [police_low, police_high] = media_block();
    let tables = format!(
        "\n[[interface]]\nname = \"egov\"\nsip = \"{EGOV_NET}:0\"\nmedia = \"{EGOV_NET}\"\n\
         ports = [{egov_low}, {egov_high}]\n\
         \n[[interface]]\nname = \"police-net\"\nsip = \"{POLICE_NET}:0\"\nmedia = \"{POLICE_NET}\"\n\
         ports = [{police_low}, {police_high}]\n\
         \n[[hotkey]]\ndtmf = \"*1\"\naction = \"transfer\"\ntarget = \"110\"\n\
         \n[[hotkey]]\ndtmf = \"*3\"\naction = \"conference\"\ntarget = \"110\"\n"
    );
    let gateway = Gateway::start_with_tables(
        &[
            ("carrier", carrier.address, ""),
            (
                "hotline",
                desk.address,
                "platform = \"12345\"\ninterface = \"egov\"",
            ),
            (
                "police",
                police.address,
                "platform = \"110\"\ninterface = \"police-net\"",
            ),
        ],
        &[("12345", &["hotline"]), ("110", &["police"])],
        "",
        "",
        &tables,
    )
    .await;
    let mut carrier = carrier;
    carrier.set_gateway(gateway.sip);
    assert_eq!(gateway.sip.ip(), CARRIER_NET);
    (gateway, carrier, desk, police)
}

/// The address a request from the gateway came from, as its Contact names it: where the
/// peer's requests in the dialog go.
fn gateway_address_in(request: &Request) -> SocketAddr {
    let contact = match request.contact() {
        Some(c) => c,
        None => panic!("no Contact: {request:?}"),
    };
    let host = contact.uri.host.to_string();
    match format!("{host}:{}", contact.uri.port.unwrap_or(5060)).parse() {
        Ok(a) => a,
        Err(e) => panic!("Contact {host}: {e}"),
    }
}

/// One RTP packet from `from` to `to`; returns where it came from at `at`.
async fn rtp_source(from: &RtpPeer, to: SocketAddr, at: &RtpPeer, sequence: u16) -> SocketAddr {
    from.send(
        to,
        8,
        sequence,
        u32::from(sequence) * 160,
        0x1234,
        &[0xd5; 160],
    )
    .await;
    let mut buffer = [0u8; 2048];
    match tokio::time::timeout(common::WAIT, at.socket.recv_from(&mut buffer)).await {
        Ok(Ok((_, source))) => source,
        _ => panic!("no RTP at {} within {:?}", at.address, common::WAIT),
    }
}

/// A citizen's call from the carrier to the 12345 desk: the desk sees only e-government
/// addresses, the carrier only its own; RTP both ways from each network's address.
async fn citizen_reaches_the_desk(carrier: &mut Ua, desk: &mut Ua) -> Established {
    let call = establish(carrier, desk, &[8], &[8]).await;
    only_addresses_of(
        EGOV_NET,
        "the INVITE to 12345",
        &text_of(call.incoming.to_bytes()),
    );
    only_addresses_of(
        CARRIER_NET,
        "the 200 to the carrier",
        &text_of(call.ok.to_bytes()),
    );
    assert_eq!(call.gateway_a_media.ip(), CARRIER_NET);
    assert_eq!(call.gateway_b_media.ip(), EGOV_NET);
    desk.set_gateway(gateway_address_in(&call.incoming));
    assert_eq!(
        rtp_source(&call.caller_rtp, call.gateway_a_media, &call.callee_rtp, 1).await,
        call.gateway_b_media,
        "the desk's RTP comes from the gateway's e-government address"
    );
    assert_eq!(
        rtp_source(&call.callee_rtp, call.gateway_b_media, &call.caller_rtp, 1).await,
        call.gateway_a_media,
        "the carrier's RTP comes from the gateway's address on its network"
    );
    call
}

/// The agent keys `*` and `digit` as SIP INFO.
async fn agent_keys(desk: &mut Ua, call: &Established, cseq: u32, digit: char) {
    for (cseq, digit) in [(cseq, '*'), (cseq + 1, digit)] {
        let info = dtmf_info(desk, call, cseq, digit);
        desk.send_request(&info).await;
        desk.expect_response("INFO", 200).await;
    }
}

#[tokio::test]
async fn each_peer_sees_only_its_own_networks_addresses_in_a_call_and_a_conference() {
    let (mut gateway, mut carrier, mut desk, mut police) = three_networks().await;
    let call = citizen_reaches_the_desk(&mut carrier, &mut desk).await;

    // `*3`: 110, on the police network, is invited from the gateway's police address.
    agent_keys(&mut desk, &call, 2, '3').await;
    let invite = police.expect_request("INVITE").await;
    only_addresses_of(POLICE_NET, "the INVITE to 110", &text_of(invite.to_bytes()));
    assert_eq!(
        invite.from().and_then(|f| f.uri.number()).as_deref(),
        Some("13800138000"),
        "110 sees the citizen's number"
    );
    let guest_media = sdp_address(invite.sdp().unwrap_or_default());
    assert_eq!(guest_media.ip(), POLICE_NET);
    police.set_gateway(gateway_address_in(&invite));
    let police_rtp = common::answer_with_media(&mut police, &invite, &[8]).await;
    // Mixed audio reaches 110 from the gateway's police address.
    assert_eq!(
        rtp_source(&police_rtp, guest_media, &police_rtp, 1).await,
        guest_media
    );

    // The agent leaves: the citizen and 110 stay, 110's RTP reaching the carrier's side.
    let bye = desk.uas_request(&call.incoming, "BYE", 4);
    desk.send_request(&bye).await;
    desk.expect_response("BYE", 200).await;
    let source = rtp_source(&police_rtp, guest_media, &call.caller_rtp, 2).await;
    assert_eq!(source, call.gateway_a_media);

    // 110 hangs up: the citizen gets the BYE from the gateway's carrier-side address.
    let bye = police.uas_request(&invite, "BYE", 1);
    police.send_request(&bye).await;
    police.expect_response("BYE", 200).await;
    let bye = carrier.expect_request("BYE").await;
    only_addresses_of(
        CARRIER_NET,
        "the BYE to the carrier",
        &text_of(bye.to_bytes()),
    );
    carrier
        .send_response(&carrier.answer(&bye, 200, None))
        .await;
    let record = gateway.ended_record(call.invite.call_id()).await;
    assert_eq!(
        record.b_peer.as_deref(),
        Some("police"),
        "110 took the agent's place"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn a_transfer_to_110_on_the_police_network_hands_the_citizen_over_with_police_addresses() {
    let (mut gateway, mut carrier, mut desk, mut police) = three_networks().await;
    let call = citizen_reaches_the_desk(&mut carrier, &mut desk).await;

    // `*1`: 110 is called from the gateway's police address, offered a port there (not the
    // agent's, which is on the e-government network).
    agent_keys(&mut desk, &call, 2, '1').await;
    let invite = police.expect_request("INVITE").await;
    only_addresses_of(
        POLICE_NET,
        "the transfer's INVITE to 110",
        &text_of(invite.to_bytes()),
    );
    assert_eq!(
        invite.from().and_then(|f| f.uri.number()).as_deref(),
        Some("13800138000"),
        "carrying the citizen's own number"
    );
    let target_media = sdp_address(invite.sdp().unwrap_or_default());
    assert_eq!(target_media.ip(), POLICE_NET);
    police.set_gateway(gateway_address_in(&invite));
    police
        .send_response(&police.answer(&invite, 180, None))
        .await;
    let police_rtp = common::answer_with_media(&mut police, &invite, &[8]).await;

    // The agent is released; the citizen and 110 talk, each's RTP from the gateway's address
    // on its own network.
    let bye = desk.expect_request("BYE").await;
    desk.send_response(&desk.answer(&bye, 200, None)).await;
    assert_eq!(
        rtp_source(&call.caller_rtp, call.gateway_a_media, &police_rtp, 1).await,
        target_media,
        "110 hears the citizen from the gateway's police address"
    );
    assert_eq!(
        rtp_source(&police_rtp, target_media, &call.caller_rtp, 1).await,
        call.gateway_a_media,
        "the citizen hears 110 from the gateway's carrier-side address"
    );

    // The citizen hangs up: 110 gets the BYE, from its network's address.
    let bye = carrier.in_dialog(&call.invite, &call.ok, "BYE", 2, "");
    carrier.send_request(&bye).await;
    carrier.expect_response("BYE", 200).await;
    let bye = police.expect_request("BYE").await;
    only_addresses_of(POLICE_NET, "the BYE to 110", &text_of(bye.to_bytes()));
    police.send_response(&police.answer(&bye, 200, None)).await;
    let record = gateway.ended_record(call.invite.call_id()).await;
    assert_eq!(record.b_peer.as_deref(), Some("police"));
    let linkages = gateway.linkages(&record.id);
    assert_eq!(linkages.len(), 1, "{linkages:?}");
    assert_eq!(
        linkages[0].to_peer.as_deref(),
        Some("police"),
        "{linkages:?}"
    );
    gateway.stop().await;
}
