//! A transfer target on another network (`[[interface]]`) than the agent's leg, on the fake
//! clock: it is offered a port pair of its own there (asked for with
//! [`Action::OpenParty`]), its INVITE names only that network's addresses, and its answer
//! puts that port in the leg's place; no port there, or a failed target, leaves the citizen
//! with the agent.

use super::*;
use crate::sip::target::{InterfaceId, LocalAddress, LocalAddresses};

/// The police network's interface, and our address on it.
const POLICE_NET: InterfaceId = InterfaceId(1);
const POLICE_GATEWAY: &str = "10.1.0.5";

/// The contract's peers, 110 at 10.1.0.9 on the police network.
fn settings_with_police_network() -> Arc<CallSettings> {
    let mut police = Peer::new(
        "police",
        SocketAddr::from(([10, 1, 0, 9], 5060)),
        Some("110".into()),
        TransportKind::Udp,
    );
    police.interface = POLICE_NET;
    let route = |number: &str, to: &str| crate::routing::Route {
        number: crate::routing::NumberPattern::Exact(number.into()),
        peers: vec![to.into()],
        record: true,
        schedule: Default::default(),
        queue: None,
    };
    let router = Router::new(
        vec![
            Peer::new(
                "carrier",
                SocketAddr::from(([127, 0, 0, 1], 5070)),
                None,
                TransportKind::Udp,
            ),
            Peer::new(
                "hotline",
                SocketAddr::from(([127, 0, 0, 1], 5080)),
                Some("12345".into()),
                TransportKind::Udp,
            ),
            police,
        ],
        vec![route("12345", "hotline"), route("110", "police")],
    );
    let mut settings = (*settings()).clone();
    settings.router = Arc::new(router);
    settings.local = LocalAddresses::new(
        LocalAddress {
            sip: "127.0.0.1:5060".parse().unwrap_or_else(|_| unreachable!()),
            tls: None,
        },
        [LocalAddress {
            sip: SocketAddr::new(
                POLICE_GATEWAY.parse().unwrap_or_else(|_| unreachable!()),
                5060,
            ),
            tls: None,
        }],
    );
    Arc::new(settings)
}

/// An answered call to the hotline whose agent asked to transfer the citizen to 110.
fn transfer_to_the_police_network() -> Harness {
    let mut h = Harness::build_with(
        settings_with_police_network(),
        invite(OFFER, 70),
        peer("carrier", 5070),
        "12345",
        vec![peer_with_platform("hotline", 5080, "12345")],
    );
    h.answer();
    let invites = h.sent(Method::Invite).len();
    assert!(h.call.transfer(h.now, Leg::B, "110", Trigger::Api).is_ok());
    h.drain();
    assert!(
        h.actions
            .iter()
            .any(|a| matches!(a, Action::OpenParty { interface } if *interface == POLICE_NET)),
        "a port pair on the police network is asked for"
    );
    assert_eq!(
        h.sent(Method::Invite).len(),
        invites,
        "no INVITE before its port"
    );
    h
}

fn police_port() -> SocketAddr {
    SocketAddr::new(
        POLICE_GATEWAY.parse().unwrap_or_else(|_| unreachable!()),
        22000,
    )
}

#[test]
fn the_target_gets_a_port_on_its_network_which_takes_the_agents_place_on_answer() {
    let mut h = transfer_to_the_police_network();
    let party = Party::guest(0).unwrap_or(Party::B);
    h.call
        .handle_party_opened(h.now, Some((party, police_port())));
    h.drain();
    let (invite, target) = match h.sent(Method::Invite).last() {
        Some(sent) => sent.clone(),
        None => panic!("no INVITE to 110"),
    };
    assert_eq!(target.interface(), POLICE_NET);
    let text = String::from_utf8_lossy(&invite.to_bytes()).into_owned();
    assert!(
        !text.contains("127.0.0.1"),
        "the police network is never told another network's address:\n{text}"
    );
    assert!(text.contains("m=audio 22000 ") && text.contains("c=IN IP4 10.1.0.5"));
    assert!(text.contains("Via: SIP/2.0/UDP 10.1.0.5:5060"), "{text}");
    h.respond_to_invite(200, Some(ANSWER));
    // The agent's port leaves the audio and goes back; the target's joins.
    let media = h.media();
    let position = |wanted: &dyn Fn(&MediaCommand) -> bool| media.iter().position(wanted);
    let left = position(&|m| matches!(m, MediaCommand::Leave(Party::B)));
    let joined = position(&|m| matches!(m, MediaCommand::Join(p) if *p == party));
    assert!(
        left.is_some() && joined.is_some() && left < joined,
        "{media:?}"
    );
    assert!(h
        .actions
        .iter()
        .any(|a| matches!(a, Action::CloseParty(Party::B))));
    assert!(!h.sent_media(|m| matches!(m, MediaCommand::Replace(..))));
    assert_eq!(h.call.legs[Leg::B].party, party);
    assert_eq!(h.sent(Method::Bye).len(), 1, "the agent is released");
    assert!(h.outcome().is_none(), "citizen and 110 talk");
}

#[test]
fn no_port_on_the_targets_network_fails_the_transfer_503_and_the_citizen_stays() {
    let mut h = transfer_to_the_police_network();
    let invites = h.sent(Method::Invite).len();
    h.call.handle_party_opened(h.now, None);
    h.drain();
    assert_eq!(
        h.sent(Method::Invite).len(),
        invites,
        "nothing rings at 110"
    );
    assert!(matches!(
        h.linkage_updates().last(),
        Some(LinkageUpdate::Failed { status: 503, .. })
    ));
    assert!(h.sent(Method::Bye).is_empty() && h.outcome().is_none());
    assert_eq!(
        h.call.legs[Leg::B].party,
        Party::B,
        "the agent keeps its port"
    );
}

#[test]
fn a_busy_target_gives_its_port_back_and_the_citizen_stays_with_the_agent() {
    let mut h = transfer_to_the_police_network();
    let party = Party::guest(0).unwrap_or(Party::B);
    h.call
        .handle_party_opened(h.now, Some((party, police_port())));
    h.drain();
    h.respond_to_invite(486, None);
    assert!(h
        .actions
        .iter()
        .any(|a| matches!(a, Action::CloseParty(p) if *p == party)));
    assert!(!h.sent_media(|m| matches!(m, MediaCommand::Leave(_) | MediaCommand::Join(_))));
    assert!(h.sent(Method::Bye).is_empty() && h.outcome().is_none());
    assert_eq!(h.call.legs[Leg::B].party, Party::B);
}
