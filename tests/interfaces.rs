//! One gateway on three networks (`[[interface]]`), as on the boundary host: the carrier on
//! the default interface, the 12345 ACD on the e-government network, the 110 desk on the
//! police network. Every address the gateway hands a peer, in any header or SDP line, and
//! the source of the RTP it sends there, must be that peer's network's.
//!
//! Two ways to stand for the networks, each scenario run on both:
//! - network namespaces (`ip netns`, a veth pair each; needs root, as `.ci/run` has): each
//!   peer's sockets live in a namespace that reaches only its own network's address of the
//!   gateway, so an address of another network would not even be reachable;
//! - loopback aliases (127.0.0.1, 127.0.0.2, 127.0.0.3), which need nothing.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::process::Command;

use common::{
    dtmf_info, establish_with, media_block, sdp_address, Established, Gateway, RtpPeer, Ua,
};
use hotline_gateway::sip::message::Request;

/// The carrier's, the e-government and the police network, in that order.
const CARRIER: usize = 0;
const EGOV: usize = 1;
const POLICE: usize = 2;

/// One network namespace with a veth pair to the host: the host (the gateway) at `.1`, the
/// namespace at `.2` of a /24 of 198.18.0.0/15 (RFC 2544's benchmarking block, no real
/// network's). Deleted (with its veth pair) when dropped.
struct Namespace {
    name: String,
}

impl Namespace {
    fn create(name: String, host_link: &str, subnet: u8) -> Namespace {
        let namespace = Namespace { name };
        let ns = namespace.name.as_str();
        let peer_link = format!("{host_link}p");
        let host = format!("198.18.{subnet}.1/24");
        let inside = format!("198.18.{subnet}.2/24");
        let steps: [&[&str]; 7] = [
            &["netns", "add", ns],
            &[
                "link", "add", host_link, "type", "veth", "peer", "name", &peer_link,
            ],
            &["link", "set", &peer_link, "netns", ns],
            &["addr", "add", &host, "dev", host_link],
            &["link", "set", host_link, "up"],
            &["-n", ns, "addr", "add", &inside, "dev", &peer_link],
            &["-n", ns, "link", "set", &peer_link, "up"],
        ];
        for step in steps {
            match Command::new("ip").args(step).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => panic!(
                    "ip {}: {} (network namespaces need root: run as root, as .ci/run does)",
                    step.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(e) => panic!("ip is not installed (apt-get install iproute2): {e}"),
            }
        }
        namespace
    }

    /// A UDP socket bound to `address` inside the namespace (from a thread that enters it:
    /// the socket stays in the namespace it was made in).
    fn bind(&self, address: SocketAddr) -> std::net::UdpSocket {
        let path = format!("/var/run/netns/{}", self.name);
        let bound = std::thread::spawn(move || {
            let file = std::fs::File::open(&path)?;
            rustix::thread::move_into_link_name_space(
                file.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            std::net::UdpSocket::bind(address)
        })
        .join();
        match bound {
            Ok(Ok(socket)) => socket,
            Ok(Err(e)) => panic!("bind {address} in {}: {e}", self.name),
            Err(_) => panic!("the namespace thread panicked"),
        }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The three networks: the gateway's address on each and its peer's.
struct Networks {
    gateway: [IpAddr; 3],
    peer: [IpAddr; 3],
    namespaces: Option<[Namespace; 3]>,
}

impl Networks {
    fn loopback_aliases() -> Networks {
        let ips = [1, 2, 3].map(|n| IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)));
        Networks {
            gateway: ips,
            peer: ips,
            namespaces: None,
        }
    }

    /// Three namespaces for test `test` (each test its own subnets and names).
    fn namespaces(test: u8) -> Networks {
        let pid = std::process::id();
        let subnet = |net: u8| 10 * test + net + 1;
        let namespaces = [0u8, 1, 2].map(|net| {
            Namespace::create(
                format!("hotline-{pid}-{test}-{net}"),
                &format!("h{pid}{test}{net}"),
                subnet(net),
            )
        });
        let ip = |net: usize, host: u8| IpAddr::V4(Ipv4Addr::new(198, 18, subnet(net as u8), host));
        Networks {
            gateway: [0, 1, 2].map(|net| ip(net, 1)),
            peer: [0, 1, 2].map(|net| ip(net, 2)),
            namespaces: Some(namespaces),
        }
    }

    fn socket(&self, net: usize) -> std::net::UdpSocket {
        let address = SocketAddr::new(self.peer[net], 0);
        match &self.namespaces {
            Some(namespaces) => namespaces[net].bind(address),
            None => match std::net::UdpSocket::bind(address) {
                Ok(s) => s,
                Err(e) => panic!("bind {address}: {e}"),
            },
        }
    }

    fn ua(&self, name: &str, net: usize) -> Ua {
        Ua::on_socket(name, self.socket(net))
    }

    fn rtp(&self, net: usize) -> RtpPeer {
        RtpPeer::on_socket(self.socket(net))
    }

    /// Asserts that `text` (a whole message as sent to network `net`) names the gateway's
    /// address there and no address of another network.
    fn only_addresses_of(&self, net: usize, what: &str, text: &str) {
        for other in (0..3).filter(|n| *n != net) {
            for address in [self.gateway[other], self.peer[other]] {
                assert!(
                    !text.contains(&address.to_string()),
                    "{what} names {address}, an address of another network:\n{text}"
                );
            }
        }
        assert!(
            text.contains(&self.gateway[net].to_string()),
            "{what}:\n{text}"
        );
    }
}

fn text_of(bytes: impl AsRef<[u8]>) -> String {
    String::from_utf8_lossy(bytes.as_ref()).into_owned()
}

/// The carrier, the 12345 desk and the 110 desk, each on its network, around a gateway on all
/// three; `*1` transfers to 110, `*3` brings 110 in.
async fn gateway_on(networks: &Networks) -> (Gateway, Ua, Ua, Ua) {
    gateway_on_with(networks, "").await
}

/// As [`gateway_on`], with `egov_extra` in the e-government interface's table.
async fn gateway_on_with(networks: &Networks, egov_extra: &str) -> (Gateway, Ua, Ua, Ua) {
    let mut carrier = networks.ua("carrier", CARRIER);
    let desk = networks.ua("hotline", EGOV);
    let police = networks.ua("police", POLICE);
    let [egov_low, egov_high] = media_block();
    let [police_low, police_high] = media_block();
    let [default_ip, egov_ip, police_ip] = networks.gateway;
    let tables = format!(
        "\n[[interface]]\nname = \"egov\"\nsip = \"{egov_ip}:0\"\nmedia = \"{egov_ip}\"\n\
         ports = [{egov_low}, {egov_high}]\n{egov_extra}\n\
         \n[[interface]]\nname = \"police-net\"\nsip = \"{police_ip}:0\"\nmedia = \"{police_ip}\"\n\
         ports = [{police_low}, {police_high}]\n\
         \n[[hotkey]]\ndtmf = \"*1\"\naction = \"transfer\"\ntarget = \"110\"\n\
         \n[[hotkey]]\ndtmf = \"*3\"\naction = \"conference\"\ntarget = \"110\"\n"
    );
    let gateway = Gateway::start_configured(
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
        |config| {
            // The default interface is the carrier's network's address of the gateway.
            config.sip.listen = SocketAddr::new(default_ip, 0);
            config.media.address = default_ip;
        },
    )
    .await;
    carrier.set_gateway(gateway.sip);
    assert_eq!(gateway.sip.ip(), default_ip);
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
async fn citizen_reaches_the_desk(n: &Networks, carrier: &mut Ua, desk: &mut Ua) -> Established {
    let call = establish_with(
        ("12345", "13800138000"),
        (carrier, n.rtp(CARRIER), &[8]),
        (desk, n.rtp(EGOV), &[8]),
    )
    .await;
    let incoming = text_of(call.incoming.to_bytes());
    n.only_addresses_of(EGOV, "the INVITE to 12345", &incoming);
    n.only_addresses_of(
        CARRIER,
        "the 200 to the carrier",
        &text_of(call.ok.to_bytes()),
    );
    assert_eq!(call.gateway_a_media.ip(), n.gateway[CARRIER]);
    assert_eq!(call.gateway_b_media.ip(), n.gateway[EGOV]);
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

/// The agent brings 110 in (`*3`): 110 is invited from the gateway's police address, the
/// three are mixed; the agent leaves and citizen and 110 talk on; 110 hangs up.
async fn conference_across_networks(n: Networks) {
    let (mut gateway, mut carrier, mut desk, mut police) = gateway_on(&n).await;
    let call = citizen_reaches_the_desk(&n, &mut carrier, &mut desk).await;

    agent_keys(&mut desk, &call, 2, '3').await;
    let invite = police.expect_request("INVITE").await;
    n.only_addresses_of(POLICE, "the INVITE to 110", &text_of(invite.to_bytes()));
    assert_eq!(
        invite.from().and_then(|f| f.uri.number()).as_deref(),
        Some("13800138000"),
        "110 sees the citizen's number"
    );
    let guest_media = sdp_address(invite.sdp().unwrap_or_default());
    assert_eq!(guest_media.ip(), n.gateway[POLICE]);
    police.set_gateway(gateway_address_in(&invite));
    let police_rtp = common::answer_with_rtp(&mut police, &invite, n.rtp(POLICE), &[8]).await;
    // The mix reaches 110 from the gateway's police address, 110's voice reaches the citizen.
    assert_eq!(
        rtp_source(&police_rtp, guest_media, &police_rtp, 1).await,
        guest_media
    );
    assert_eq!(
        rtp_source(&police_rtp, guest_media, &call.caller_rtp, 2).await,
        call.gateway_a_media
    );

    // The agent leaves: the citizen and 110 stay, 110's RTP reaching the citizen.
    let bye = desk.uas_request(&call.incoming, "BYE", 4);
    desk.send_request(&bye).await;
    desk.expect_response("BYE", 200).await;
    let source = rtp_source(&police_rtp, guest_media, &call.caller_rtp, 3).await;
    assert_eq!(source, call.gateway_a_media);

    // 110 hangs up: the citizen gets the BYE from the gateway's carrier-side address.
    let bye = police.uas_request(&invite, "BYE", 1);
    police.send_request(&bye).await;
    police.expect_response("BYE", 200).await;
    let bye = carrier.expect_request("BYE").await;
    n.only_addresses_of(CARRIER, "the BYE to the carrier", &text_of(bye.to_bytes()));
    carrier
        .send_response(&carrier.answer(&bye, 200, None))
        .await;
    let record = gateway.ended_record(call.invite.call_id()).await;
    assert_eq!(
        record.b_peer.as_deref(),
        Some("police"),
        "110 took the agent's place"
    );
    assert_interfaces_recorded(&gateway, &record).await;
    gateway.stop().await;
}

/// The agent transfers the citizen to 110 (`*1`): 110 is called from the gateway's police
/// address and offered a port there (not the agent's, on the e-government network); the
/// agent is released; citizen and 110 talk; the citizen hangs up.
async fn transfer_across_networks(n: Networks) {
    let (mut gateway, mut carrier, mut desk, mut police) = gateway_on(&n).await;
    let call = citizen_reaches_the_desk(&n, &mut carrier, &mut desk).await;

    agent_keys(&mut desk, &call, 2, '1').await;
    let invite = police.expect_request("INVITE").await;
    n.only_addresses_of(
        POLICE,
        "the transfer's INVITE to 110",
        &text_of(invite.to_bytes()),
    );
    assert_eq!(
        invite.from().and_then(|f| f.uri.number()).as_deref(),
        Some("13800138000"),
        "carrying the citizen's own number"
    );
    let target_media = sdp_address(invite.sdp().unwrap_or_default());
    assert_eq!(target_media.ip(), n.gateway[POLICE]);
    police.set_gateway(gateway_address_in(&invite));
    police
        .send_response(&police.answer(&invite, 180, None))
        .await;
    let police_rtp = common::answer_with_rtp(&mut police, &invite, n.rtp(POLICE), &[8]).await;

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

    let bye = carrier.in_dialog(&call.invite, &call.ok, "BYE", 2, "");
    carrier.send_request(&bye).await;
    carrier.expect_response("BYE", 200).await;
    let bye = police.expect_request("BYE").await;
    n.only_addresses_of(POLICE, "the BYE to 110", &text_of(bye.to_bytes()));
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
    assert_interfaces_recorded(&gateway, &record).await;
    gateway.stop().await;
}

/// The call's record names each leg's interface (leg B's the police network's, 110 having
/// taken it over); the metrics count each network's legs, and every port is given back.
async fn assert_interfaces_recorded(
    gateway: &Gateway,
    record: &hotline_gateway::store::CallRecord,
) {
    assert_eq!(record.a_interface, "default");
    assert_eq!(record.b_interface.as_deref(), Some("police-net"));
    for (interface, legs) in [("default", 1.0), ("egov", 1.0), ("police-net", 1.0)] {
        let name = format!("hotline_interface_legs_total{{interface=\"{interface}\"}}");
        assert_eq!(gateway.metric(&name).await, Some(legs), "{name}");
        let in_use = format!("hotline_interface_media_ports_in_use{{interface=\"{interface}\"}}");
        gateway.metric_reaches(&in_use, 0.0).await;
    }
}

#[tokio::test]
async fn conference_across_network_namespaces() {
    conference_across_networks(Networks::namespaces(0)).await;
}

#[tokio::test]
async fn transfer_across_network_namespaces() {
    transfer_across_networks(Networks::namespaces(1)).await;
}

#[tokio::test]
async fn conference_across_loopback_aliases() {
    conference_across_networks(Networks::loopback_aliases()).await;
}

#[tokio::test]
async fn transfer_across_loopback_aliases() {
    transfer_across_networks(Networks::loopback_aliases()).await;
}

/// `advertise`: the e-government side reaches the gateway through NAT as 198.51.100.7. The
/// desk is told that address (Via, Contact, SDP), never the one bound; the INVITE still
/// comes from the bound address. The desk refuses (486) and the carrier gets its answer.
#[tokio::test]
async fn an_advertised_address_is_what_the_desk_is_told() {
    const ADVERTISED: &str = "198.51.100.7";
    let n = Networks::namespaces(2);
    let (mut gateway, mut carrier, desk, _police) =
        gateway_on_with(&n, &format!("advertise = \"{ADVERTISED}\"\n")).await;
    let rtp = n.rtp(CARRIER);
    let invite = carrier.invite(
        "12345",
        "13800138000",
        &common::sdp(rtp.address, &[8], "sendrecv"),
        "",
    );
    carrier.send_request(&invite).await;
    let mut buffer = vec![0u8; 65535];
    let (length, source) =
        match tokio::time::timeout(common::WAIT, desk.socket.recv_from(&mut buffer)).await {
            Ok(Ok(received)) => received,
            _ => panic!("no INVITE at the desk"),
        };
    let text = text_of(&buffer[..length]);
    assert_eq!(source.ip(), n.gateway[EGOV], "sent from the bound address");
    let bound = n.gateway[EGOV].to_string();
    assert!(
        !text.contains(&bound),
        "the bound address {bound} is never told:\n{text}"
    );
    for line in [
        format!("Via: SIP/2.0/UDP {ADVERTISED}:"),
        format!("Contact: <sip:gw@{ADVERTISED}:"),
        format!("c=IN IP4 {ADVERTISED}"),
    ] {
        assert!(text.contains(&line), "{line}:\n{text}");
    }
    let offered = match hotline_gateway::sip::message::parse(&buffer[..length]) {
        Ok(hotline_gateway::sip::message::Message::Request(r)) => r,
        other => panic!("{other:?}"),
    };
    let busy = desk.answer(&offered, 486, None);
    if let Err(e) = desk.socket.send_to(&busy.to_bytes(), source).await {
        panic!("send: {e}");
    }
    let refused = carrier.expect_response("INVITE", 486).await;
    carrier
        .send_request(&hotline_gateway::sip::message::ack_for_non_2xx(
            &invite, &refused,
        ))
        .await;
    gateway.stop().await;
}

/// A peer is recognised only on its own interface: 110's address sending to the default
/// interface (where, on the boundary host, some other network's device could have the same
/// private address) is a stranger there, 403, and nothing rings.
#[tokio::test]
async fn a_peers_address_on_another_interface_is_a_stranger() {
    let n = Networks::loopback_aliases();
    let (mut gateway, _carrier, desk, mut police) = gateway_on(&n).await;
    police.set_gateway(gateway.sip);
    let rtp = n.rtp(POLICE);
    let invite = police.invite(
        "12345",
        "110",
        &common::sdp(rtp.address, &[8], "sendrecv"),
        "",
    );
    police.send_request(&invite).await;
    let refused = police.expect_response("INVITE", 403).await;
    police
        .send_request(&hotline_gateway::sip::message::ack_for_non_2xx(
            &invite, &refused,
        ))
        .await;
    assert_eq!(
        gateway
            .metric("hotline_sip_rejected_unknown_peer_total")
            .await,
        Some(1.0)
    );
    assert!(
        common::queued_datagram(&desk.socket).is_none(),
        "nothing reached the desk"
    );
    gateway.stop().await;
}
