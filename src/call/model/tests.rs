//! The call model driven by hand, on a fake clock: each test is a call flow and checks what
//! the two peers would see.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::call::transfer::Trigger;
use crate::media::prompt::Announcement;
use crate::media::{LegMedia, MediaCommand};
use crate::routing::Router;
use crate::routing::TransportKind;
use crate::sip::message::{parse, Message};
use crate::sip::sdp::MediaPolicy;
use crate::sip::target::{Flow, Target};

const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 16070 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\na=sendrecv\r\n";

const ANSWER: &str = "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 16080 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
a=sendrecv\r\n";

fn peer(name: &str, port: u16) -> Arc<Peer> {
    Arc::new(Peer::new(
        name,
        SocketAddr::from(([127, 0, 0, 1], port)),
        None,
        TransportKind::Udp,
    ))
}

/// The contract sample's peers and routes (`config/gateway.toml`; `config`'s tests check
/// that the sample converts into them): carrier 5070, hotline 5080 (12345), police 5090 (110)
/// with `police_srtp`.
fn contract_router(police_srtp: SrtpMode) -> Router {
    let peer = |name: &str, port: u16, platform: Option<&str>| {
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        Peer::new(
            name,
            address,
            platform.map(String::from),
            TransportKind::Udp,
        )
    };
    let mut police = peer("police", 5090, Some("110"));
    police.srtp = police_srtp;
    let route = |number: &str, to: &str| crate::routing::Route {
        number: crate::routing::NumberPattern::Exact(number.into()),
        peers: vec![to.into()],
        record: true,
        schedule: Default::default(),
        queue: None,
    };
    Router::new(
        vec![
            peer("carrier", 5070, None),
            peer("hotline", 5080, Some("12345")),
            police,
        ],
        vec![route("12345", "hotline"), route("110", "police")],
    )
}

/// The contract sample's hotkeys: `*1` transfers to 110, `*3` conferences 110 in.
fn contract_hotkeys() -> Arc<[crate::call::hotkey::Hotkey]> {
    use crate::call::hotkey::{Hotkey, HotkeyAction};
    let hotkey = |dtmf: &str, action| Hotkey {
        dtmf: dtmf.into(),
        action,
        target: "110".into(),
    };
    Arc::from([
        hotkey("*1", HotkeyAction::Transfer),
        hotkey("*3", HotkeyAction::Conference),
    ])
}

fn settings() -> Arc<CallSettings> {
    Arc::new(CallSettings {
        local: crate::sip::target::LocalAddresses::single(
            "127.0.0.1:5060".parse().unwrap_or_else(|_| unreachable!()),
            None,
        ),
        policy: MediaPolicy::default(),
        peer_response_timeout: Duration::from_secs(4),
        ring_timeout: Duration::from_secs(60),
        cleanup_timeout: Duration::from_secs(32),
        user_agent: None,
        router: Arc::new(contract_router(SrtpMode::Optional)),
        transfer_ring_timeout: Duration::from_secs(30),
        transfer_early_media: false,
        hotkeys: contract_hotkeys(),
        hotkey_inter_digit: Duration::from_secs(2),
        directory: Arc::new(crate::call::directory::Directory::default()),
        conference_max_parties: 4,
        conference_ends_with_caller: true,
        session_timers: None,
        transfer_announcement: None,
        no_desk_announcement: None,
        queue_announcement: None,
        whispers: Default::default(),
    })
}

fn request(text: &str) -> Request {
    match parse(text.as_bytes()) {
        Ok(Message::Request(r)) => r,
        other => panic!("not a request: {other:?}\n{text}"),
    }
}

fn invite(sdp: &str, max_forwards: u8) -> Request {
    request(&format!(
        "INVITE sip:12345@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-a1;rport=5070;received=127.0.0.1\r\n\
From: \"Citizen\" <sip:13800138000@127.0.0.1:5070>;tag=citizen\r\n\
To: <sip:12345@127.0.0.1:5060>\r\n\
Call-ID: a-leg@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:13800138000@127.0.0.1:5070>\r\n\
Max-Forwards: {max_forwards}\r\n\
Content-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    ))
}

struct Harness {
    call: Call,
    now: Instant,
    actions: Vec<Action>,
}

const A_SERVER: u64 = 1;

impl Harness {
    fn new(sdp: &str, route: Vec<Arc<Peer>>) -> Harness {
        Self::with_invite(invite(sdp, 70), route)
    }

    fn with_invite(invite: Request, route: Vec<Arc<Peer>>) -> Harness {
        Self::build(invite, peer("carrier", 5070), "12345", route)
    }

    /// A call from `caller_peer` (always at 127.0.0.1:5070 here) to `number`.
    fn build(
        invite: Request,
        caller_peer: Arc<Peer>,
        number: &str,
        route: Vec<Arc<Peer>>,
    ) -> Harness {
        Self::build_with(settings(), invite, caller_peer, number, route)
    }

    fn build_with(
        settings: Arc<CallSettings>,
        invite: Request,
        caller_peer: Arc<Peer>,
        number: &str,
        route: Vec<Arc<Peer>>,
    ) -> Harness {
        Self::build_queued(settings, invite, (caller_peer, number), route, None)
    }

    /// As [`Harness::build_with`], for a route with a queue.
    fn build_queued(
        settings: Arc<CallSettings>,
        invite: Request,
        (caller_peer, number): (Arc<Peer>, &str),
        route: Vec<Arc<Peer>>,
        queue: Option<crate::routing::QueuePolicy>,
    ) -> Harness {
        let now = Instant::now();
        let call = Call::new(
            now,
            settings,
            NewCall {
                id: "call-1".into(),
                invite,
                server: ServerTransactionId::new(A_SERVER),
                source: "127.0.0.1:5070".parse().unwrap_or_else(|_| unreachable!()),
                flow: Flow::Udp(crate::routing::InterfaceId::DEFAULT),
                caller_peer,
                number: number.into(),
                route,
                queue,
                media_a: "127.0.0.1:20000".parse().unwrap_or_else(|_| unreachable!()),
                media_b: "127.0.0.1:20002".parse().unwrap_or_else(|_| unreachable!()),
                ids: IdGenerator::new(42),
            },
        );
        let mut harness = Harness {
            call,
            now,
            actions: Vec::new(),
        };
        harness.drain();
        harness
    }

    fn drain(&mut self) -> &[Action] {
        let start = self.actions.len();
        while let Some(action) = self.call.poll_action() {
            self.actions.push(action);
        }
        &self.actions[start..]
    }

    fn sip(&mut self, event: SipEvent) {
        self.call.handle_sip(self.now, event);
        self.drain();
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.call.handle_timeout(self.now);
        self.drain();
    }

    /// Requests the call sent, in order, with their targets.
    fn sent(&self, method: Method) -> Vec<(Request, Target)> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::SendRequest { request, target } if request.method == method => {
                    Some((request.clone(), *target))
                }
                _ => None,
            })
            .collect()
    }

    /// Responses sent on server transaction `server`.
    fn responses(&self, server: u64) -> Vec<Response> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::SendResponse {
                    server: s,
                    response,
                } if *s == ServerTransactionId::new(server) => Some(response.clone()),
                _ => None,
            })
            .collect()
    }

    fn last_invite(&self) -> Request {
        match self.sent(Method::Invite).last() {
            Some((r, _)) => r.clone(),
            None => panic!("no INVITE sent"),
        }
    }

    fn respond_to_invite(&mut self, status: u16, sdp: Option<&str>) {
        let invite = self.last_invite();
        let mut response = Response::for_request(&invite, status, Some("agent"));
        response
            .headers
            .push("Contact", "<sip:agent@127.0.0.1:5080>");
        if let Some(sdp) = sdp {
            response.headers.push("Content-Type", "application/sdp");
            response.body = Bytes::from(sdp.to_string());
        }
        let branch = branch_of(&invite);
        self.sip(SipEvent::Response { branch, response });
    }

    fn outcome(&self) -> Option<Outcome> {
        self.actions.iter().find_map(|a| match a {
            Action::Ended(o) => Some(o.clone()),
            _ => None,
        })
    }

    fn finished(&self) -> bool {
        self.actions.iter().any(|a| matches!(a, Action::Finished))
    }

    /// Whether the call asked the relay for a command like `wanted`.
    fn sent_media(&self, wanted: impl Fn(&MediaCommand) -> bool) -> bool {
        self.media().iter().any(wanted)
    }

    fn media(&self) -> Vec<MediaCommand> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Media(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    fn answer(&mut self) {
        self.respond_to_invite(180, None);
        self.respond_to_invite(200, Some(ANSWER));
        self.caller_acks(1, "");
    }

    /// The caller's ACK of leg A's 2xx to its INVITE with CSeq `cseq`, with `sdp` (an answer)
    /// unless empty.
    fn caller_acks(&mut self, cseq: u32, sdp: &str) {
        let content_type = if sdp.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        let ack = request(&format!(
            "ACK sip:gw@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-ack{cseq}\r\n\
From: <sip:13800138000@127.0.0.1:5070>;tag=citizen\r\nTo: <sip:12345@127.0.0.1:5060>;tag={}\r\n\
Call-ID: a-leg@127.0.0.1\r\nCSeq: {cseq} ACK\r\n{content_type}Content-Length: {}\r\n\r\n{sdp}",
            self.a_tag(),
            sdp.len()
        ));
        self.sip(SipEvent::Ack { request: ack });
    }

    fn a_tag(&self) -> String {
        self.responses(A_SERVER)
            .iter()
            .find_map(|r| r.to().and_then(|t| t.tag().map(str::to_string)))
            .unwrap_or_default()
    }

    /// An in-dialog request from the caller (leg A).
    fn caller_sends(&mut self, server: u64, method: &str, cseq: u32, body: &str) {
        let extra = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        self.caller_sends_with(server, method, cseq, extra, body);
    }

    /// An in-dialog request from the caller (leg A) with `extra` header lines.
    fn caller_sends_with(&mut self, server: u64, method: &str, cseq: u32, extra: &str, body: &str) {
        let text = format!(
            "{method} sip:gw@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{method}{cseq}\r\n\
From: <sip:13800138000@127.0.0.1:5070>;tag=citizen\r\nTo: <sip:12345@127.0.0.1:5060>;tag={}\r\n\
Call-ID: a-leg@127.0.0.1\r\nCSeq: {cseq} {method}\r\nContact: <sip:13800138000@127.0.0.1:5070>\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            self.a_tag(),
            body.len()
        );
        let event = SipEvent::Request {
            server: ServerTransactionId::new(server),
            request: request(&text),
            source: "127.0.0.1:5070".parse().unwrap_or_else(|_| unreachable!()),
        };
        self.sip(event);
    }

    /// An in-dialog request from the callee (leg B).
    fn callee_sends(&mut self, server: u64, method: &str, cseq: u32) {
        let invite = self.last_invite();
        let from_header = invite.headers.get("From").unwrap_or_default().to_string();
        let to_header = invite.headers.get("To").unwrap_or_default().to_string();
        let text = format!(
            "{method} sip:gw@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-b{cseq}\r\n\
From: {to_header};tag=agent\r\nTo: {from_header}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
            invite.call_id()
        );
        let event = SipEvent::Request {
            server: ServerTransactionId::new(server),
            request: request(&text),
            source: "127.0.0.1:5080".parse().unwrap_or_else(|_| unreachable!()),
        };
        self.sip(event);
    }

    /// A request from the agent in the first leg B dialog (the one answered by `answer`),
    /// with `extra` header lines.
    fn agent_sends(&mut self, server: u64, method: &str, cseq: u32, extra: &str) {
        let invite = match self.sent(Method::Invite).first() {
            Some((invite, _)) => invite.clone(),
            None => panic!("no INVITE to the agent"),
        };
        let from_header = invite.headers.get("From").unwrap_or_default().to_string();
        let to_header = invite.headers.get("To").unwrap_or_default().to_string();
        let text = format!(
            "{method} sip:gw@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-agent{cseq}\r\n\
From: {to_header};tag=agent\r\nTo: {from_header}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\n{extra}Content-Length: 0\r\n\r\n",
            invite.call_id()
        );
        let event = SipEvent::Request {
            server: ServerTransactionId::new(server),
            request: request(&text),
            source: "127.0.0.1:5080".parse().unwrap_or_else(|_| unreachable!()),
        };
        self.sip(event);
    }

    /// The agent (leg B) invites `number` as a conference guest; the task gives it party 2
    /// on 127.0.0.1:20004.
    fn invite_guest(&mut self, number: &str) {
        assert!(
            self.call
                .conference(self.now, Leg::B, number, Trigger::Api)
                .is_ok(),
            "conference refused"
        );
        self.drain();
        assert!(self
            .actions
            .iter()
            .any(|a| matches!(a, Action::OpenParty { .. })));
        let address = "127.0.0.1:20004".parse().unwrap_or_else(|_| unreachable!());
        self.call
            .handle_party_opened(self.now, Party::guest(0).map(|p| (p, address)));
        self.drain();
    }

    /// The queue's updates so far.
    fn queue_updates(&self) -> Vec<QueueUpdate> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Queue(update) => Some(update.clone()),
                _ => None,
            })
            .collect()
    }

    /// The sipfrag status lines of the NOTIFYs sent so far.
    fn notified(&self) -> Vec<(u16, String)> {
        self.sent(Method::Notify)
            .iter()
            .map(|(n, _)| {
                let body = String::from_utf8_lossy(&n.body).to_string();
                let status = body
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_default();
                let state = n.headers.get("Subscription-State").unwrap_or_default();
                (status, state.to_string())
            })
            .collect()
    }

    fn linkage_updates(&self) -> Vec<LinkageUpdate> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Linkage(update) => Some(update.clone()),
                _ => None,
            })
            .collect()
    }

    fn answer_all(&mut self, method: Method, status: u16) {
        for (request, _) in self.sent(method) {
            let branch = branch_of(&request);
            let response = Response::for_request(&request, status, None);
            self.sip(SipEvent::Response { branch, response });
        }
    }
}

fn branch_of(request: &Request) -> String {
    request
        .top_via()
        .and_then(|v| v.branch().map(str::to_string))
        .unwrap_or_default()
}

fn statuses(responses: &[Response]) -> Vec<u16> {
    responses.iter().map(|r| r.status).collect()
}

#[test]
fn basic_call_is_bridged_with_callers_number_and_anchored_media() {
    let mut h = Harness::new(OFFER, vec![peer("hotline", 5080)]);
    let (invite, target) = match h.sent(Method::Invite).first() {
        Some(sent) => sent.clone(),
        None => panic!("no INVITE to the hotline"),
    };
    assert_eq!(
        target,
        Target::Udp(
            crate::routing::InterfaceId::DEFAULT,
            "127.0.0.1:5080".parse().unwrap_or_else(|_| unreachable!())
        )
    );
    assert_eq!(invite.uri.to_string(), "sip:12345@127.0.0.1:5080");
    assert_eq!(
        invite.from().and_then(|f| f.uri.user),
        Some("13800138000".into())
    );
    assert_eq!(invite.headers.get("Max-Forwards"), Some("69"));
    assert_ne!(
        invite.call_id(),
        "a-leg@127.0.0.1",
        "leg B is an independent dialog"
    );
    let offer = invite.sdp().unwrap_or_default();
    assert!(
        offer.contains("c=IN IP4 127.0.0.1") && offer.contains("m=audio 20002 "),
        "{offer}"
    );

    h.respond_to_invite(180, None);
    h.respond_to_invite(200, Some(ANSWER));
    let to_caller = h.responses(A_SERVER);
    assert_eq!(statuses(&to_caller), vec![180, 200]);
    let answer = to_caller[1].sdp().unwrap_or_default();
    assert!(
        answer.contains("m=audio 20000 RTP/AVP 0 101"),
        "answer keeps the caller's PCMU: {answer}"
    );
    assert_eq!(h.sent(Method::Ack).len(), 1);
    let media = h.media();
    assert!(media.contains(&MediaCommand::Answered));
    assert!(media.iter().any(|m| matches!(
        m,
        MediaCommand::Configure(
            Party::B,
            LegMedia {
                codec: crate::media::codec::Codec::Pcma,
                payload_type: 8,
                ..
            }
        )
    )));
    assert!(media.iter().any(|m| matches!(
        m,
        MediaCommand::Configure(
            Party::A,
            LegMedia {
                codec: crate::media::codec::Codec::Pcmu,
                payload_type: 0,
                telephone_event: Some(101),
                ..
            }
        )
    )));
    assert!(h.call.is_answered());

    h.callee_sends(7, "BYE", 1);
    assert_eq!(statuses(&h.responses(7)), vec![200]);
    let byes = h.sent(Method::Bye);
    assert_eq!(byes.len(), 1);
    assert_eq!(byes[0].0.uri.to_string(), "sip:13800138000@127.0.0.1:5070");
    let outcome = h.outcome().unwrap_or_else(|| panic!("no outcome"));
    assert_eq!(
        (outcome.ended_by, outcome.final_status, outcome.answered),
        (EndedBy::Callee, 200, true)
    );
    assert!(!h.finished(), "waits for the caller's answer to BYE");
    h.answer_all(Method::Bye, 200);
    assert!(h.finished());
}

#[test]
fn caller_hangs_up_and_callee_gets_bye() {
    let mut h = Harness::new(OFFER, vec![peer("hotline", 5080)]);
    h.answer();
    h.caller_sends(9, "BYE", 2, "");
    assert_eq!(statuses(&h.responses(9)), vec![200]);
    let byes = h.sent(Method::Bye);
    assert_eq!(byes.len(), 1);
    assert_eq!(byes[0].0.uri.to_string(), "sip:agent@127.0.0.1:5080");
    assert_eq!(byes[0].0.headers.get("CSeq"), Some("2 BYE"));
    assert_eq!(h.outcome().map(|o| o.ended_by), Some(EndedBy::Caller));
    h.answer_all(Method::Bye, 200);
    assert!(h.finished());
}

#[test]
fn failover_to_next_peer_on_503() {
    let mut h = Harness::new(OFFER, vec![peer("hotline", 5080), peer("overflow", 5081)]);
    let first = h.last_invite();
    h.respond_to_invite(503, None);
    assert_eq!(
        h.sent(Method::Ack).len(),
        0,
        "the transaction layer ACKs non-2xx"
    );
    let second = h.last_invite();
    assert_eq!(second.uri.to_string(), "sip:12345@127.0.0.1:5081");
    assert_ne!(second.call_id(), first.call_id());
    assert!(
        h.responses(A_SERVER).is_empty(),
        "caller sees nothing of the failed attempt"
    );
    h.respond_to_invite(200, Some(ANSWER));
    assert_eq!(statuses(&h.responses(A_SERVER)), vec![200]);
    assert!(h
        .actions
        .iter()
        .any(|a| matches!(a, Action::Answered { b_peer, .. } if b_peer == "overflow")));
}

#[test]
fn failover_when_peer_does_not_answer_at_all() {
    let mut h = Harness::new(OFFER, vec![peer("hotline", 5080), peer("overflow", 5081)]);
    h.advance(Duration::from_millis(3999));
    assert_eq!(h.sent(Method::Invite).len(), 1);
    h.advance(Duration::from_millis(1));
    assert_eq!(h.sent(Method::Invite).len(), 2);
    assert_eq!(h.last_invite().uri.to_string(), "sip:12345@127.0.0.1:5081");
    // The second peer is silent too: the caller gets 408.
    h.advance(Duration::from_secs(4));
    assert_eq!(statuses(&h.responses(A_SERVER)), vec![408]);
    assert_eq!(h.outcome().map(|o| o.final_status), Some(408));
}

#[test]
fn busy_is_relayed_not_failed_over() {
    let mut h = Harness::new(OFFER, vec![peer("hotline", 5080), peer("overflow", 5081)]);
    h.respond_to_invite(486, None);
    assert_eq!(h.sent(Method::Invite).len(), 1);
    assert_eq!(statuses(&h.responses(A_SERVER)), vec![486]);
    assert!(h.finished());
}

#[test]
fn cancel_before_answer() {
    let mut h = Harness::new(OFFER, vec![peer("hotline", 5080)]);
    h.respond_to_invite(180, None);
    h.sip(SipEvent::Cancelled {
        server: ServerTransactionId::new(A_SERVER),
    });
    assert_eq!(statuses(&h.responses(A_SERVER)), vec![180, 487]);
    let cancels = h.sent(Method::Cancel);
    assert_eq!(cancels.len(), 1);
    assert_eq!(
        branch_of(&cancels[0].0),
        branch_of(&h.last_invite()),
        "§9.1: same branch"
    );
    assert!(!h.finished());
    h.answer_all(Method::Cancel, 200);
    h.respond_to_invite(487, None);
    assert!(h.finished());
    assert_eq!(
        h.outcome().map(|o| (o.ended_by, o.final_status)),
        Some((EndedBy::Caller, 487))
    );
}

#[test]
fn cancel_waits_for_a_provisional_response() {
    let mut h = Harness::new(OFFER, vec![peer("hotline", 5080)]);
    h.sip(SipEvent::Cancelled {
        server: ServerTransactionId::new(A_SERVER),
    });
    assert!(
        h.sent(Method::Cancel).is_empty(),
        "§9.1: no CANCEL before a provisional"
    );
    h.respond_to_invite(100, None);
    h.respond_to_invite(180, None);
    assert_eq!(h.sent(Method::Cancel).len(), 1);
    assert_eq!(
        statuses(&h.responses(A_SERVER)),
        vec![487],
        "no 180 after the caller cancelled"
    );
}

#[test]
fn a_cancel_goes_once_100_trying_came() {
    let mut h = Harness::new(OFFER, vec![peer("hotline", 5080)]);
    h.sip(SipEvent::Cancelled {
        server: ServerTransactionId::new(A_SERVER),
    });
    assert!(h.sent(Method::Cancel).is_empty());
    h.respond_to_invite(100, None);
    assert_eq!(
        h.sent(Method::Cancel).len(),
        1,
        "§9.1: 100 Trying is a provisional response; the callee must not ring on"
    );
    h.respond_to_invite(180, None);
    assert_eq!(h.sent(Method::Cancel).len(), 1, "one CANCEL");
}

#[test]
fn a_failed_over_attempt_keeps_its_dialog_routed_until_the_call_finishes() {
    let mut h = Harness::new(OFFER, vec![peer("hotline", 5080), peer("overflow", 5081)]);
    let first = h.last_invite();
    let first_tag = first
        .from()
        .and_then(|f| f.tag().map(str::to_string))
        .unwrap_or_default();
    let unregistered = |h: &Harness| {
        h.actions.iter().any(|a| {
            matches!(a, Action::UnregisterDialog(key)
                if key.call_id == first.call_id() && key.local_tag == first_tag)
        })
    };
    h.respond_to_invite(503, None);
    let second = h.last_invite();
    assert!(h
        .actions
        .iter()
        .any(|a| matches!(a, Action::RegisterDialog(key) if key.call_id == second.call_id())));
    assert!(
        !unregistered(&h),
        "a 2xx after the first INVITE's transaction ended comes by its dialog"
    );
    h.respond_to_invite(486, None);
    assert!(h.finished());
    assert!(unregistered(&h), "released when the call finishes");
}

#[test]
fn answer_after_cancel_is_acked_and_released() {
    let mut h = Harness::new(OFFER, vec![peer("hotline", 5080)]);
    h.respond_to_invite(180, None);
    h.sip(SipEvent::Cancelled {
        server: ServerTransactionId::new(A_SERVER),
    });
    h.respond_to_invite(200, Some(ANSWER));
    assert_eq!(h.sent(Method::Ack).len(), 1);
    assert_eq!(h.sent(Method::Bye).len(), 1);
    assert_eq!(statuses(&h.responses(A_SERVER)), vec![180, 487]);
}

#[test]
fn unacceptable_offer_gets_488_and_no_call_to_the_peer() {
    let g729 = OFFER
        .replace("RTP/AVP 0 101", "RTP/AVP 18")
        .replace("a=rtpmap:0 PCMU/8000\r\n", "a=rtpmap:18 G729/8000\r\n");
    let h = Harness::new(&g729, vec![peer("hotline", 5080)]);
    assert_eq!(statuses(&h.responses(A_SERVER)), vec![488]);
    assert!(h.sent(Method::Invite).is_empty());
    assert!(h.finished());
}

#[test]
fn max_forwards_zero_gets_483() {
    let h = Harness::with_invite(invite(OFFER, 0), vec![peer("hotline", 5080)]);
    assert_eq!(statuses(&h.responses(A_SERVER)), vec![483]);
    assert!(h.sent(Method::Invite).is_empty());
}

#[test]
fn hold_reinvite_is_answered_by_the_gateway() {
    let mut h = Harness::new(OFFER, vec![peer("hotline", 5080)]);
    h.answer();
    let invites_before = h.sent(Method::Invite).len();
    let hold = OFFER
        .replace("a=sendrecv", "a=sendonly")
        .replace("o=- 1 1", "o=- 1 2");
    h.caller_sends(11, "INVITE", 2, &hold);
    let responses = h.responses(11);
    assert_eq!(statuses(&responses), vec![200]);
    let body = responses[0].sdp().unwrap_or_default();
    assert!(body.contains("a=recvonly"), "{body}");
    assert_eq!(
        h.sent(Method::Invite).len(),
        invites_before,
        "the callee is not re-INVITEd"
    );
    assert!(h.media().iter().any(|m| matches!(
        m,
        MediaCommand::Configure(
            Party::A,
            LegMedia {
                receives: false,
                ..
            }
        )
    )));
    // Unhold: back to sendrecv, and the SDP version moved on (RFC 3264 §8).
    let unhold = OFFER.replace("o=- 1 1", "o=- 1 3");
    h.caller_sends(12, "INVITE", 3, &unhold);
    let body = h.responses(12)[0].sdp().unwrap_or_default().to_string();
    assert!(body.contains("a=sendrecv"), "{body}");
    assert!(h.media().iter().rev().any(|m| matches!(
        m,
        MediaCommand::Configure(Party::A, LegMedia { receives: true, .. })
    )));
}

#[test]
fn session_refresh_without_sdp_gets_our_description() {
    let mut h = Harness::new(OFFER, vec![peer("hotline", 5080)]);
    h.answer();
    h.caller_sends(13, "INVITE", 2, "");
    let responses = h.responses(13);
    assert_eq!(statuses(&responses), vec![200]);
    assert!(responses[0]
        .sdp()
        .is_some_and(|s| s.contains("m=audio 20000")));
}

#[test]
fn out_of_order_cseq_gets_500_and_unknown_method_405() {
    let mut h = Harness::new(OFFER, vec![peer("hotline", 5080)]);
    h.answer();
    h.caller_sends(14, "INFO", 5, "");
    h.caller_sends(15, "INFO", 4, "");
    h.caller_sends(16, "MESSAGE", 6, "");
    assert_eq!(statuses(&h.responses(14)), vec![200]);
    assert_eq!(statuses(&h.responses(15)), vec![500]);
    assert_eq!(statuses(&h.responses(16)), vec![405]);
}

#[test]
fn media_timeout_ends_the_call_with_reason() {
    let mut h = Harness::new(OFFER, vec![peer("hotline", 5080)]);
    h.answer();
    h.call.handle_media_inactive(h.now);
    h.drain();
    let byes = h.sent(Method::Bye);
    assert_eq!(byes.len(), 2);
    assert!(byes.iter().all(|(b, _)| b
        .headers
        .get("Reason")
        .is_some_and(|r| r.contains("media timeout"))));
    assert_eq!(h.outcome().map(|o| o.ended_by), Some(EndedBy::Gateway));
    // Nobody answers the BYEs: the cleanup timer finishes the call.
    h.advance(Duration::from_secs(31));
    assert!(!h.finished());
    h.advance(Duration::from_secs(1));
    assert!(h.finished());
}

#[test]
fn shutdown_before_answer_gives_caller_503_and_cancels_callee() {
    let mut h = Harness::new(OFFER, vec![peer("hotline", 5080)]);
    h.respond_to_invite(180, None);
    h.call.handle_shutdown(h.now);
    h.drain();
    assert_eq!(statuses(&h.responses(A_SERVER)), vec![180, 503]);
    assert_eq!(h.sent(Method::Cancel).len(), 1);
}

#[test]
fn ring_timeout_cancels_and_fails_over() {
    let mut h = Harness::new(OFFER, vec![peer("hotline", 5080), peer("overflow", 5081)]);
    h.respond_to_invite(180, None);
    h.advance(Duration::from_secs(60));
    assert_eq!(h.sent(Method::Cancel).len(), 1);
    h.respond_to_invite(487, None);
    assert_eq!(h.last_invite().uri.to_string(), "sip:12345@127.0.0.1:5081");
}

#[test]
fn delayed_offer_is_answered_in_ack() {
    let mut h = Harness::new("", vec![peer("hotline", 5080)]);
    h.respond_to_invite(200, Some(ANSWER));
    let ok = h.responses(A_SERVER);
    assert!(
        ok[0].sdp().is_some_and(|s| s.contains("m=audio 20000")),
        "our offer in the 200"
    );
    let configured_a_before = h
        .media()
        .iter()
        .filter(|m| matches!(m, MediaCommand::Configure(Party::A, _)))
        .count();
    assert_eq!(configured_a_before, 0);
    h.caller_acks(1, ANSWER);
    assert!(h.media().iter().any(|m| matches!(
        m,
        MediaCommand::Configure(
            Party::A,
            LegMedia {
                codec: crate::media::codec::Codec::Pcma,
                ..
            }
        )
    )));
}

/// An answered call to the hotline, and the agent's REFER to 110 accepted.
fn transfer_under_way() -> Harness {
    let mut h = Harness::new(OFFER, vec![peer_with_platform("hotline", 5080, "12345")]);
    h.answer();
    h.agent_sends(7, "REFER", 2, "Refer-To: <sip:110@127.0.0.1>\r\n");
    assert_eq!(statuses(&h.responses(7)), vec![202]);
    h
}

fn peer_with_platform(name: &str, port: u16, platform: &str) -> Arc<Peer> {
    Arc::new(Peer::new(
        name,
        SocketAddr::from(([127, 0, 0, 1], port)),
        Some(platform.into()),
        TransportKind::Udp,
    ))
}

#[test]
fn refer_subscription_reports_trying_ringing_and_the_answer() {
    let mut h = transfer_under_way();
    let (invite, target) = match h.sent(Method::Invite).last() {
        Some(sent) => sent.clone(),
        None => panic!("no INVITE"),
    };
    assert_eq!(
        target,
        Target::Udp(
            crate::routing::InterfaceId::DEFAULT,
            "127.0.0.1:5090".parse().unwrap_or_else(|_| unreachable!())
        )
    );
    assert_eq!(invite.uri.to_string(), "sip:110@127.0.0.1:5090");
    assert_eq!(
        invite.from().and_then(|f| f.uri.user),
        Some("13800138000".into())
    );
    assert_eq!(
        invite.headers.get("P-Asserted-Identity"),
        Some("<sip:13800138000@127.0.0.1>")
    );
    assert!(
        invite.sdp().is_some_and(|s| s.contains("m=audio 20002 ")),
        "leg B's port"
    );
    // Long enough for the route's one peer: response timeout + ring timeout + 32 s.
    assert_eq!(h.notified(), vec![(100, "active;expires=66".to_string())]);

    h.respond_to_invite(180, None);
    assert_eq!(h.notified().last().map(|n| n.0), Some(180));
    h.respond_to_invite(200, Some(ANSWER));
    let notified = h.notified();
    assert_eq!(
        notified.last(),
        Some(&(200, "terminated;reason=noresource".to_string()))
    );
    // The agent is released, the target took leg B, the citizen was never re-INVITEd.
    assert_eq!(h.sent(Method::Bye).len(), 1);
    assert!(h.sent_media(|m| matches!(m, MediaCommand::Replace(Party::B, _))));
    assert_eq!(
        statuses(&h.responses(A_SERVER)),
        vec![180, 200],
        "nothing new to the citizen"
    );
    assert!(h.outcome().is_none(), "the call goes on");
    let updates = h.linkage_updates();
    assert!(matches!(
        updates.first(),
        Some(LinkageUpdate::Requested {
            trigger: Trigger::Refer,
            ..
        })
    ));
    assert!(matches!(
        updates.last(),
        Some(LinkageUpdate::Answered { .. })
    ));
    // The released agent's late BYE is answered 200 and ends nothing.
    h.agent_sends(8, "BYE", 3, "");
    assert_eq!(statuses(&h.responses(8)), vec![200]);
    assert!(h.outcome().is_none());
}

#[test]
fn an_unanswered_transfer_is_cancelled_at_the_ring_timeout_and_the_call_stays() {
    let mut h = transfer_under_way();
    h.respond_to_invite(180, None);
    h.advance(Duration::from_secs(29));
    assert!(h.sent(Method::Cancel).is_empty());
    h.advance(Duration::from_secs(1));
    assert_eq!(
        h.sent(Method::Cancel).len(),
        1,
        "given up after transfer_ring_timeout"
    );
    h.respond_to_invite(487, None);
    assert_eq!(
        h.notified().last(),
        Some(&(408, "terminated;reason=noresource".to_string()))
    );
    assert!(h.sent(Method::Bye).is_empty(), "nobody is hung up");
    assert!(h.outcome().is_none());
    assert!(matches!(
        h.linkage_updates().last(),
        Some(LinkageUpdate::Failed { status: 408, .. })
    ));
    // A second transfer may follow.
    h.agent_sends(9, "REFER", 4, "Refer-To: <sip:110@127.0.0.1>\r\n");
    assert_eq!(statuses(&h.responses(9)), vec![202]);
}

/// An agent transferring again and again to a busy target: each failed attempt is given up,
/// and the call keeps a bounded few of them, not every INVITE it ever sent.
#[test]
fn repeated_failed_transfers_keep_a_bounded_few_attempts() {
    let mut h = transfer_under_way();
    h.respond_to_invite(486, None);
    for n in 0..40u64 {
        h.agent_sends(
            100 + n,
            "REFER",
            3 + n as u32,
            "Refer-To: <sip:110@127.0.0.1>\r\n",
        );
        assert_eq!(statuses(&h.responses(100 + n)), vec![202], "REFER {n}");
        h.respond_to_invite(486, None);
    }
    assert!(h.outcome().is_none(), "the call goes on");
    assert!(
        h.call.retired.len() <= fork::MAX_STALE,
        "{} kept",
        h.call.retired.len()
    );
}

#[test]
fn a_silent_transfer_target_fails_after_the_peer_response_timeout() {
    let mut h = transfer_under_way();
    h.advance(Duration::from_secs(4));
    assert_eq!(h.notified().last().map(|n| n.0), Some(408));
    assert!(h.outcome().is_none());
}

#[test]
fn a_second_refer_while_one_is_under_way_gets_491() {
    let mut h = transfer_under_way();
    h.agent_sends(8, "REFER", 3, "Refer-To: <sip:110@127.0.0.1>\r\n");
    assert_eq!(statuses(&h.responses(8)), vec![491]);
}

#[test]
fn the_citizen_hanging_up_cancels_a_ringing_transfer() {
    let mut h = transfer_under_way();
    h.respond_to_invite(180, None);
    h.caller_sends(9, "BYE", 2, "");
    assert_eq!(h.sent(Method::Cancel).len(), 1);
    assert_eq!(h.sent(Method::Bye).len(), 1, "the agent is hung up");
    assert_eq!(h.outcome().map(|o| o.ended_by), Some(EndedBy::Caller));
    assert!(matches!(
        h.linkage_updates().last(),
        Some(LinkageUpdate::Failed { status: 487, .. })
    ));
}

#[test]
fn a_transfer_target_answering_after_the_citizen_left_is_acked_and_released() {
    let mut h = transfer_under_way();
    h.respond_to_invite(180, None);
    let police_invite = h.last_invite();
    h.caller_sends(9, "BYE", 2, "");
    assert_eq!(
        h.notified().last().map(|n| n.0),
        Some(487),
        "the subscription ends"
    );
    h.answer_all(Method::Bye, 200);
    assert!(
        !h.finished(),
        "the call waits for the abandoned transfer's answer"
    );
    // The target answers the INVITE anyway (crossing the CANCEL).
    let mut late = Response::for_request(&police_invite, 200, Some("police"));
    late.headers.push("Contact", "<sip:110@127.0.0.1:5090>");
    let branch = branch_of(&police_invite);
    h.sip(SipEvent::Response {
        branch,
        response: late,
    });
    let to_police: Vec<_> = h
        .sent(Method::Ack)
        .into_iter()
        .chain(h.sent(Method::Bye))
        .filter(|(r, _)| r.call_id() == police_invite.call_id())
        .map(|(r, _)| r.method)
        .collect();
    assert_eq!(to_police, vec![Method::Ack, Method::Bye]);
    assert!(!h.finished(), "the BYE to the late target is waited for");
    h.answer_all(Method::Bye, 200);
    assert!(h.finished());
    // The task stops at Finished: everything for the target must come before it.
    let finished_at = h.actions.iter().position(|a| matches!(a, Action::Finished));
    let last_to_police = h.actions.iter().rposition(|a| {
        matches!(a, Action::SendRequest { request, .. } if request.call_id() == police_invite.call_id())
    });
    assert!(
        last_to_police < finished_at,
        "{last_to_police:?} {finished_at:?}"
    );
}

#[test]
fn an_agent_bye_crossing_the_failure_notify_does_not_drop_the_citizen() {
    let mut h = transfer_under_way();
    h.respond_to_invite(486, None);
    assert_eq!(h.notified().last().map(|n| n.0), Some(486));
    // The blind-transfer phone hangs up before it has seen (answered) that NOTIFY.
    h.agent_sends(8, "BYE", 3, "");
    assert_eq!(statuses(&h.responses(8)), vec![200]);
    assert!(h.outcome().is_none(), "the citizen stays");
    let again = h.last_invite();
    assert_eq!(
        again.uri.to_string(),
        "sip:12345@127.0.0.1:5080",
        "back to the hotline"
    );
    assert!(matches!(
        h.linkage_updates()
            .iter()
            .rev()
            .find(|u| matches!(u, LinkageUpdate::Requested { .. })),
        Some(LinkageUpdate::Requested {
            trigger: Trigger::Fallback,
            ..
        })
    ));
}

#[test]
fn requests_in_the_targets_early_dialog_do_not_touch_the_agent() {
    let mut h = transfer_under_way();
    let police_invite = h.last_invite();
    let text = format!(
        "BYE sip:gw@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK-p1\r\n\
From: {};tag=police\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 5 BYE\r\nContent-Length: 0\r\n\r\n",
        police_invite.headers.get("To").unwrap_or_default(),
        police_invite.headers.get("From").unwrap_or_default(),
        police_invite.call_id()
    );
    h.sip(SipEvent::Request {
        server: ServerTransactionId::new(11),
        request: request(&text),
        source: "127.0.0.1:5090".parse().unwrap_or_else(|_| unreachable!()),
    });
    assert_eq!(statuses(&h.responses(11)), vec![481]);
    // The agent's dialog is intact: its BYE ends the agent's part as usual.
    h.agent_sends(12, "INFO", 3, "");
    assert_eq!(statuses(&h.responses(12)), vec![200]);
}

/// An answered call the agent placed (leg A, from the hotline) to a citizen (leg B, through
/// the carrier): a call-back. The agent is on leg A.
fn agent_calls_citizen_back() -> Harness {
    let invite = request(&format!(
        "INVITE sip:13900139000@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-cb1;rport=5070;received=127.0.0.1\r\n\
From: \"Agent 8001\" <sip:8001@127.0.0.1:5070>;tag=citizen\r\n\
To: <sip:13900139000@127.0.0.1:5060>\r\n\
Call-ID: a-leg@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:8001@127.0.0.1:5070>\r\n\
Max-Forwards: 70\r\n\
Content-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{OFFER}",
        OFFER.len()
    ));
    let mut h = Harness::build(
        invite,
        peer_with_platform("hotline", 5070, "12345"),
        "13900139000",
        vec![peer("carrier", 5080)],
    );
    h.answer();
    h
}

fn refer_from_the_calling_leg(h: &mut Harness, server: u64) {
    h.caller_sends_with(
        server,
        "REFER",
        2,
        "Refer-To: <sip:110@127.0.0.1>\r\nReferred-By: <sip:8001@127.0.0.1>\r\n",
        "",
    );
}

#[test]
fn a_refer_from_the_calling_leg_hands_leg_a_to_the_target_with_the_citizens_number() {
    let mut h = agent_calls_citizen_back();
    refer_from_the_calling_leg(&mut h, 7);
    assert_eq!(statuses(&h.responses(7)), vec![202]);
    let police = h.last_invite();
    assert_eq!(police.uri.to_string(), "sip:110@127.0.0.1:5090");
    assert_eq!(
        police.from().and_then(|f| f.uri.user),
        Some("13900139000".into()),
        "the citizen's number, not the agent's"
    );
    assert_eq!(
        police.headers.get("P-Asserted-Identity"),
        Some("<sip:13900139000@127.0.0.1>")
    );
    assert_eq!(
        police.headers.get("Referred-By"),
        Some("<sip:8001@127.0.0.1>")
    );
    assert!(
        police
            .headers
            .get("History-Info")
            .is_some_and(|h| h.contains("sip:8001@127.0.0.1")),
        "the agent's line is the diverting party: {:?}",
        police.headers.get("History-Info")
    );
    assert!(
        police.sdp().is_some_and(|s| s.contains("m=audio 20000 ")),
        "leg A's port"
    );
    // The NOTIFYs go to the agent, in leg A's dialog.
    let notifies = h.sent(Method::Notify);
    assert_eq!(notifies.len(), 1);
    let (notify, to) = &notifies[0];
    assert_eq!(notify.call_id(), "a-leg@127.0.0.1");
    assert_eq!(
        notify.to().and_then(|t| t.tag().map(str::to_string)),
        Some("citizen".into())
    );
    assert_eq!(
        *to,
        Target::Udp(
            crate::routing::InterfaceId::DEFAULT,
            "127.0.0.1:5070".parse().unwrap_or_else(|_| unreachable!())
        )
    );

    h.respond_to_invite(180, None);
    h.respond_to_invite(200, Some(ANSWER));
    assert_eq!(
        h.notified().last(),
        Some(&(200, "terminated;reason=noresource".to_string()))
    );
    // The agent is released on leg A; the citizen on leg B is never re-INVITEd.
    let byes = h.sent(Method::Bye);
    assert_eq!(byes.len(), 1);
    assert_eq!(byes[0].0.call_id(), "a-leg@127.0.0.1");
    let b_call_id = match h.sent(Method::Invite).first() {
        Some((invite, _)) => invite.call_id().to_string(),
        None => panic!("no INVITE to the citizen"),
    };
    assert_eq!(
        h.sent(Method::Invite)
            .iter()
            .filter(|(r, _)| r.call_id() == b_call_id)
            .count(),
        1
    );
    assert!(h.sent_media(|m| matches!(m, MediaCommand::Replace(Party::A, _))));
    assert!(matches!(
        h.linkage_updates().first(),
        Some(LinkageUpdate::Requested { from_peer, from_platform: Some(platform), .. })
            if from_peer == "hotline" && platform == "12345"
    ));

    // A retransmitted 200 is ACKed again, and nothing else happens.
    let acks = h.sent(Method::Ack).len();
    h.respond_to_invite(200, Some(ANSWER));
    assert_eq!(h.sent(Method::Ack).len(), acks + 1);
    assert_eq!(h.sent(Method::Bye).len(), 1);

    // The agent's late BYE is answered and ends nothing.
    h.caller_sends(8, "BYE", 3, "");
    assert_eq!(statuses(&h.responses(8)), vec![200]);
    assert!(h.outcome().is_none());

    // 110 is leg A now: its BYE ends the call and the citizen gets one.
    h.callee_sends(9, "BYE", 1);
    assert_eq!(statuses(&h.responses(9)), vec![200]);
    assert_eq!(h.outcome().map(|o| o.ended_by), Some(EndedBy::Caller));
    let byes = h.sent(Method::Bye);
    assert_eq!(byes.len(), 2);
    assert_eq!(byes[1].0.call_id(), b_call_id);
}

#[test]
fn a_failed_transfer_from_the_calling_leg_keeps_the_citizen_with_the_agent() {
    let mut h = agent_calls_citizen_back();
    refer_from_the_calling_leg(&mut h, 7);
    h.respond_to_invite(486, None);
    assert_eq!(
        h.notified().last(),
        Some(&(486, "terminated;reason=noresource".to_string()))
    );
    assert!(h.sent(Method::Bye).is_empty());
    assert!(h.outcome().is_none());
    assert!(!h.sent_media(|m| matches!(m, MediaCommand::Replace(..))));
}

#[test]
fn the_citizen_hears_ringback_when_the_agent_on_leg_a_leaves_during_the_transfer() {
    let mut h = agent_calls_citizen_back();
    refer_from_the_calling_leg(&mut h, 7);
    h.respond_to_invite(180, None);
    h.caller_sends(8, "BYE", 3, "");
    assert_eq!(statuses(&h.responses(8)), vec![200]);
    assert!(h.outcome().is_none(), "the citizen waits for 110");
    assert!(h.sent_media(|m| matches!(
        m,
        MediaCommand::Announce(Party::B, Some(Announcement::Ringback))
    )));
    h.respond_to_invite(200, Some(ANSWER));
    assert!(h.sent_media(|m| matches!(m, MediaCommand::Announce(Party::B, None))));
    assert!(h.outcome().is_none(), "citizen and 110 talk");
    assert!(h.sent(Method::Bye).is_empty(), "the agent had left already");
}

/// An answered call to the hotline whose agent keyed `*3`: 110 is being invited on party 2.
fn conference_under_way() -> Harness {
    let mut h = Harness::new(OFFER, vec![peer_with_platform("hotline", 5080, "12345")]);
    h.answer();
    h.invite_guest("110");
    h
}

fn conference_updates(h: &Harness) -> Vec<ConferenceUpdate> {
    h.actions
        .iter()
        .filter_map(|a| match a {
            Action::Conference(update) => Some(update.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_guest_joins_with_the_citizens_identity_on_a_port_of_its_own() {
    let mut h = conference_under_way();
    let invite = h.last_invite();
    assert_eq!(invite.uri.to_string(), "sip:110@127.0.0.1:5090");
    assert_eq!(
        invite.from().and_then(|f| f.uri.user),
        Some("13800138000".into())
    );
    assert!(invite.sdp().is_some_and(|s| s.contains("m=audio 20004 ")));
    assert!(h.conference_updates_are_empty());
    h.respond_to_invite(180, None);
    h.respond_to_invite(200, Some(ANSWER));
    let guest = Party::guest(0).unwrap_or(Party::B);
    assert!(h.sent_media(|m| matches!(m, MediaCommand::Join(p) if *p == guest)));
    let updates = conference_updates(&h);
    assert_eq!(updates.first(), Some(&ConferenceUpdate::Started));
    assert_eq!(updates.len(), 4, "{updates:?}");
    assert!(matches!(
        updates.last(),
        Some(ConferenceUpdate::Joined { party, number, .. }) if *party == guest && number == "110"
    ));
    assert!(matches!(
        h.linkage_updates().first(),
        Some(LinkageUpdate::Requested {
            kind: LinkageKind::Conference,
            ..
        })
    ));
    // No transfer while three talk; the citizen was never re-INVITEd.
    h.agent_sends(8, "REFER", 3, "Refer-To: <sip:120@127.0.0.1>\r\n");
    assert_eq!(statuses(&h.responses(8)), vec![403]);
    assert_eq!(statuses(&h.responses(A_SERVER)), vec![180, 200]);
}

impl Harness {
    fn conference_updates_are_empty(&self) -> bool {
        conference_updates(self).is_empty()
    }
}

#[test]
fn a_busy_guest_changes_nothing() {
    let mut h = conference_under_way();
    h.respond_to_invite(486, None);
    assert!(matches!(
        h.linkage_updates().last(),
        Some(LinkageUpdate::Failed { status: 486, .. })
    ));
    assert!(h.conference_updates_are_empty());
    assert!(h.sent(Method::Bye).is_empty());
    assert!(h.outcome().is_none());
    assert!(
        h.actions
            .iter()
            .any(|a| matches!(a, Action::CloseParty(p) if Some(*p) == Party::guest(0))),
        "the guest's ports go back"
    );
    // The agent may try again.
    assert!(h
        .call
        .conference(h.now, Leg::B, "110", Trigger::Api)
        .is_ok());
}

#[test]
fn the_agent_leaving_hands_leg_b_to_the_guest() {
    let mut h = conference_under_way();
    h.respond_to_invite(200, Some(ANSWER));
    let police = h.last_invite();
    h.agent_sends(8, "BYE", 3, "");
    assert_eq!(statuses(&h.responses(8)), vec![200]);
    assert!(h.outcome().is_none(), "citizen and 110 stay");
    assert!(h.sent_media(|m| matches!(m, MediaCommand::Leave(Party::B))));
    assert_eq!(
        conference_updates(&h).last(),
        Some(&ConferenceUpdate::Ended)
    );
    // 110 is leg B now: its BYE ends the call, the citizen gets one.
    h.callee_sends(9, "BYE", 1);
    assert_eq!(statuses(&h.responses(9)), vec![200]);
    assert_eq!(h.outcome().map(|o| o.ended_by), Some(EndedBy::Callee));
    let byes = h.sent(Method::Bye);
    assert_eq!(byes.len(), 1);
    assert_eq!(byes[0].0.call_id(), "a-leg@127.0.0.1");
    assert_ne!(police.call_id(), "a-leg@127.0.0.1");
}

#[test]
fn the_caller_leaving_a_conference_ends_it_for_everybody() {
    let mut h = conference_under_way();
    h.respond_to_invite(200, Some(ANSWER));
    h.caller_sends(9, "BYE", 2, "");
    assert_eq!(h.outcome().map(|o| o.ended_by), Some(EndedBy::Caller));
    assert_eq!(h.sent(Method::Bye).len(), 2, "the agent and 110");
    assert_eq!(
        conference_updates(&h).last(),
        Some(&ConferenceUpdate::Ended)
    );
}

#[test]
fn a_conference_holds_at_most_its_configured_parties() {
    let mut h = conference_under_way();
    h.respond_to_invite(200, Some(ANSWER));
    // Four allowed: one more guest, then full.
    assert!(h
        .call
        .conference(h.now, Leg::B, "110", Trigger::Api)
        .is_ok());
    h.drain();
    let address = "127.0.0.1:20006".parse().unwrap_or_else(|_| unreachable!());
    h.call
        .handle_party_opened(h.now, Party::guest(1).map(|p| (p, address)));
    h.drain();
    assert_eq!(
        h.call.conference(h.now, Leg::B, "110", Trigger::Api),
        Err(TransferError::InProgress)
    );
    h.respond_to_invite(200, Some(ANSWER));
    assert_eq!(
        h.call.conference(h.now, Leg::B, "110", Trigger::Api),
        Err(TransferError::ConferenceFull(4))
    );
}

#[test]
fn no_port_for_a_guest_fails_the_invitation_only() {
    let mut h = Harness::new(OFFER, vec![peer_with_platform("hotline", 5080, "12345")]);
    h.answer();
    assert!(h
        .call
        .conference(h.now, Leg::B, "110", Trigger::Api)
        .is_ok());
    h.call.handle_party_opened(h.now, None);
    h.drain();
    assert!(matches!(
        h.linkage_updates().last(),
        Some(LinkageUpdate::Failed { status: 503, .. })
    ));
    assert_eq!(h.sent(Method::Invite).len(), 1, "only the agent's");
    assert!(h.outcome().is_none());
}

#[test]
fn the_agent_leaving_while_the_guest_rings_leaves_the_citizen_waiting_for_it() {
    let mut h = conference_under_way();
    h.respond_to_invite(180, None);
    h.agent_sends(8, "BYE", 3, "");
    assert_eq!(statuses(&h.responses(8)), vec![200]);
    assert!(h.outcome().is_none(), "the citizen stays");
    assert!(h.sent_media(|m| matches!(
        m,
        MediaCommand::Announce(Party::A, Some(Announcement::Ringback))
    )));
    h.respond_to_invite(200, Some(ANSWER));
    assert!(h.sent_media(|m| matches!(m, MediaCommand::Announce(Party::A, None))));
    assert!(h.outcome().is_none(), "citizen and 110 talk");
    // 110 is leg B now: its BYE ends the call.
    h.callee_sends(9, "BYE", 1);
    assert_eq!(h.outcome().map(|o| o.ended_by), Some(EndedBy::Callee));
}

#[test]
fn a_failed_guest_after_the_agent_left_sends_the_citizen_back_to_the_hotline() {
    let mut h = conference_under_way();
    h.respond_to_invite(180, None);
    h.agent_sends(8, "BYE", 3, "");
    h.respond_to_invite(486, None);
    assert!(h.outcome().is_none(), "never dropped");
    assert_eq!(h.last_invite().uri.to_string(), "sip:12345@127.0.0.1:5080");
}

/// Session timers of 120 s (Min-SE 90) on a call whose caller INVITE carries `extra` headers.
fn timed_call(extra: &str) -> Harness {
    let mut settings = (*settings()).clone();
    settings.session_timers = Some(crate::sip::session_timer::SessionTimerSettings {
        session_expires: Duration::from_secs(120),
        min_se: Duration::from_secs(90),
    });
    let mut invite = invite(OFFER, 70);
    for line in extra.split("\r\n").filter(|l| !l.is_empty()) {
        if let Some((name, value)) = line.split_once(": ") {
            invite.headers.push(name, value);
        }
    }
    Harness::build_with(
        Arc::new(settings),
        invite,
        peer("carrier", 5070),
        "12345",
        vec![peer("hotline", 5080)],
    )
}

/// The callee's answer with `extra` header lines.
fn answer_with(h: &mut Harness, extra: &[(&str, &str)]) {
    let invite = h.last_invite();
    let mut response = Response::for_request(&invite, 200, Some("agent"));
    response
        .headers
        .push("Contact", "<sip:agent@127.0.0.1:5080>");
    for (name, value) in extra {
        response.headers.push(name, *value);
    }
    response.headers.push("Content-Type", "application/sdp");
    response.body = Bytes::from(ANSWER);
    let branch = branch_of(&invite);
    h.sip(SipEvent::Response { branch, response });
}

/// The refreshes sent so far (re-INVITEs and UPDATEs after the first INVITE), with targets.
fn refreshes(h: &Harness) -> Vec<(Request, Target)> {
    let mut sent: Vec<(Request, Target)> = h
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::SendRequest { request, target }
                if request.method == Method::Update
                    || (request.method == Method::Invite
                        && request.headers.get("Session-Expires") == Some("120;refresher=uac")) =>
            {
                Some((request.clone(), *target))
            }
            _ => None,
        })
        .collect();
    sent.retain(|(r, _)| r.to().and_then(|t| t.tag().map(str::to_string)).is_some());
    sent
}

/// The refreshes sent so far on the caller's leg (`Leg::A`) or the callee's, in order.
fn refreshes_on(h: &Harness, leg: Leg) -> Vec<Request> {
    refreshes(h)
        .into_iter()
        .map(|(r, _)| r)
        .filter(|r| (r.call_id() == "a-leg@127.0.0.1") == (leg == Leg::A))
        .collect()
}

/// The first refresh on `leg`; there must be one.
fn refresh_to(h: &Harness, leg: Leg) -> Request {
    match refreshes_on(h, leg).into_iter().next() {
        Some(r) => r,
        None => panic!("no refresh on leg {leg:?}: {:?}", refreshes(h)),
    }
}

fn respond_to(h: &mut Harness, request: &Request, status: u16, extra: &[(&str, &str)]) {
    let mut response = Response::for_request(request, status, None);
    for (name, value) in extra {
        response.headers.push(name, *value);
    }
    let branch = branch_of(request);
    h.sip(SipEvent::Response { branch, response });
}

#[test]
fn session_timers_are_offered_granted_and_refreshed_halfway() {
    let mut h = timed_call("");
    let invite = h.last_invite();
    assert_eq!(invite.headers.get("Supported"), Some("timer"));
    assert_eq!(invite.headers.get("Session-Expires"), Some("120"));
    assert_eq!(invite.headers.get("Min-SE"), Some("90"));
    // The callee allows UPDATE and leaves the refreshing to us; the caller said nothing.
    answer_with(
        &mut h,
        &[
            ("Allow", "INVITE, ACK, BYE, UPDATE"),
            ("Session-Expires", "120;refresher=uac"),
        ],
    );
    let ok = h
        .responses(A_SERVER)
        .pop()
        .unwrap_or_else(|| panic!("no 200"));
    assert_eq!(ok.status, 200);
    assert_eq!(ok.headers.get("Session-Expires"), Some("120;refresher=uas"));
    assert_eq!(ok.headers.get("Require"), None);

    h.advance(Duration::from_secs(59));
    assert!(refreshes(&h).is_empty());
    h.advance(Duration::from_secs(1));
    let sent = refreshes(&h);
    assert_eq!(sent.len(), 2, "{sent:?}");
    // Leg A (no Allow in the caller's INVITE): a re-INVITE with our SDP unchanged.
    let to_a = refresh_to(&h, Leg::A);
    assert_eq!(to_a.method, Method::Invite);
    assert_eq!(
        to_a.sdp(),
        h.responses(A_SERVER).last().and_then(|r| r.sdp())
    );
    // Leg B: UPDATE without a body.
    let to_b = refresh_to(&h, Leg::B);
    assert_eq!(to_b.method, Method::Update);
    assert!(to_b.body.is_empty());

    // Both answer: the re-INVITE's 2xx is acknowledged (again when retransmitted).
    respond_to(
        &mut h,
        &to_a,
        200,
        &[("Session-Expires", "120;refresher=uac")],
    );
    respond_to(
        &mut h,
        &to_a,
        200,
        &[("Session-Expires", "120;refresher=uac")],
    );
    let acks_to_a = h
        .sent(Method::Ack)
        .iter()
        .filter(|(r, _)| r.call_id() == "a-leg@127.0.0.1")
        .count();
    assert_eq!(acks_to_a, 2);
    respond_to(
        &mut h,
        &to_b,
        200,
        &[("Session-Expires", "120;refresher=uac")],
    );
    // The next refreshes come 60 s after these answers.
    h.advance(Duration::from_secs(59));
    assert_eq!(refreshes(&h).len(), 2);
    h.advance(Duration::from_secs(1));
    assert_eq!(refreshes(&h).len(), 4);
    assert!(h.outcome().is_none());
}

#[test]
fn a_callee_that_stops_answering_refreshes_ends_the_call() {
    let mut h = timed_call("Allow: INVITE, ACK, BYE, UPDATE\r\n");
    answer_with(&mut h, &[("Allow", "INVITE, ACK, BYE")]);
    h.advance(Duration::from_secs(60));
    let to_b = refresh_to(&h, Leg::B);
    assert_eq!(
        to_b.method,
        Method::Invite,
        "no UPDATE in the callee's Allow"
    );
    // The caller's refresh is an UPDATE (its Allow has it) and is answered.
    if let Some(to_a) = refreshes_on(&h, Leg::A).into_iter().next() {
        assert_eq!(to_a.method, Method::Update);
        respond_to(&mut h, &to_a, 200, &[]);
    }
    // The callee is gone: Timer B fires on our re-INVITE.
    let branch = branch_of(&to_b);
    h.sip(SipEvent::Timeout {
        branch,
        method: Method::Invite,
    });
    let outcome = h
        .outcome()
        .unwrap_or_else(|| panic!("the call did not end"));
    assert_eq!(
        (outcome.ended_by, outcome.reason.as_str(), outcome.answered),
        (EndedBy::Gateway, "session refresh timed out", true)
    );
    let byes = h.sent(Method::Bye);
    assert!(
        byes.iter().any(|(b, _)| b.call_id() == "a-leg@127.0.0.1"),
        "the caller is told with BYE"
    );
    assert!(byes.iter().all(|(b, _)| b
        .headers
        .get("Reason")
        .is_some_and(|r| r.contains("session refresh"))));
}

#[test]
fn a_refresh_answered_481_or_refused_update_is_handled() {
    let mut h = timed_call("Allow: INVITE, ACK, BYE, UPDATE\r\n");
    answer_with(&mut h, &[("Allow", "INVITE, ACK, BYE, UPDATE")]);
    h.advance(Duration::from_secs(60));
    let to_a = refresh_to(&h, Leg::A);
    let to_b = refresh_to(&h, Leg::B);
    // The callee refuses UPDATE after all: the same refresh again as a re-INVITE.
    respond_to(&mut h, &to_b, 501, &[]);
    let again = refreshes(&h);
    assert!(
        again
            .iter()
            .any(|(r, _)| r.method == Method::Invite && r.call_id() == to_b.call_id()),
        "{again:?}"
    );
    // The caller's dialog is unknown there (481): the call ends.
    respond_to(&mut h, &to_a, 481, &[]);
    let outcome = h
        .outcome()
        .unwrap_or_else(|| panic!("the call did not end"));
    assert_eq!(outcome.reason, "session refresh failed");
}

#[test]
fn a_caller_that_was_to_refresh_and_did_not_is_hung_up() {
    let mut h = timed_call("Supported: timer\r\nSession-Expires: 120;refresher=uac\r\n");
    answer_with(&mut h, &[("Session-Expires", "120;refresher=uac")]);
    let ok = h
        .responses(A_SERVER)
        .pop()
        .unwrap_or_else(|| panic!("no 200"));
    assert_eq!(ok.headers.get("Session-Expires"), Some("120;refresher=uac"));
    assert_eq!(ok.headers.get("Require"), Some("timer"));

    // The caller refreshes at 50 s with UPDATE: our 2xx confirms it stays the refresher.
    h.advance(Duration::from_secs(50));
    h.caller_sends_with(
        9,
        "UPDATE",
        2,
        "Supported: timer\r\nSession-Expires: 120;refresher=uac\r\n",
        "",
    );
    let update_ok = h.responses(9).pop().unwrap_or_else(|| panic!("no answer"));
    assert_eq!(update_ok.status, 200);
    assert_eq!(
        update_ok.headers.get("Session-Expires"),
        Some("120;refresher=uac")
    );
    // Keep leg B refreshed (our job there) so only leg A can expire.
    for _ in 0..2 {
        h.advance(Duration::from_secs(10));
        if let Some(last) = refreshes_on(&h, Leg::B).pop() {
            respond_to(&mut h, &last, 200, &[]);
        }
    }
    assert!(h.outcome().is_none());
    // Its next refresh was due by 50 + 120 s; the BYE goes 32 s before the end (§10).
    h.advance(Duration::from_secs(50 + 88 - 70 - 1));
    assert!(h.outcome().is_none());
    h.advance(Duration::from_secs(1));
    let outcome = h
        .outcome()
        .unwrap_or_else(|| panic!("the call did not end"));
    assert_eq!(
        (outcome.ended_by, outcome.reason.as_str()),
        (EndedBy::Gateway, "session expired")
    );
}

#[test]
fn too_short_a_session_interval_gets_422_with_our_minimum() {
    let h = timed_call("Session-Expires: 30\r\n");
    let responses = h.responses(A_SERVER);
    let refused = responses.last().unwrap_or_else(|| panic!("no answer"));
    assert_eq!(refused.status, 422);
    assert_eq!(refused.headers.get("Min-SE"), Some("90"));
    assert!(h.sent(Method::Invite).is_empty(), "nothing rang");
}

#[test]
fn a_peer_reinvite_crossing_our_refresh_gets_491_and_our_refresh_is_still_acknowledged() {
    let mut h = timed_call("");
    answer_with(&mut h, &[]);
    h.advance(Duration::from_secs(60));
    let ours = refresh_to(&h, Leg::B);
    assert_eq!(ours.method, Method::Invite);
    // Glare: the agent's own re-INVITE meanwhile.
    h.agent_sends(20, "INVITE", 5, "");
    assert_eq!(statuses(&h.responses(20)), vec![491]);
    // An UPDATE from it is a refresh like any (answered 200 with the interval).
    h.agent_sends(21, "UPDATE", 6, "Session-Expires: 120\r\n");
    let update_ok = h.responses(21).pop().unwrap_or_else(|| panic!("no answer"));
    assert_eq!(update_ok.status, 200);
    assert_eq!(
        update_ok.headers.get("Session-Expires"),
        Some("120;refresher=uas")
    );
    // Our re-INVITE's 2xx is still acknowledged.
    let acks_before = h.sent(Method::Ack).len();
    respond_to(&mut h, &ours, 200, &[]);
    assert_eq!(h.sent(Method::Ack).len(), acks_before + 1);
    assert!(h.outcome().is_none());
}

#[test]
fn a_422_without_a_larger_min_se_is_not_retried_at_once() {
    let mut h = timed_call("Allow: INVITE, ACK, BYE, UPDATE\r\n");
    answer_with(&mut h, &[("Allow", "INVITE, ACK, BYE, UPDATE")]);
    h.advance(Duration::from_secs(60));
    let to_b = refresh_to(&h, Leg::B);
    let before = refreshes(&h).len();
    respond_to(&mut h, &to_b, 422, &[("Min-SE", "60")]);
    assert_eq!(refreshes(&h).len(), before, "no storm of refreshes");
    // A larger Min-SE is honoured at once.
    h.advance(Duration::from_secs(2));
    let Some(again) = refreshes_on(&h, Leg::B).pop() else {
        panic!("no second refresh");
    };
    respond_to(&mut h, &again, 422, &[("Min-SE", "600")]);
    let last = refreshes(&h).pop().map(|(r, _)| r);
    assert_eq!(
        last.and_then(|r| r.headers.get("Session-Expires").map(str::to_string)),
        Some("600;refresher=uac".to_string())
    );
}

#[test]
fn a_callee_asking_a_longer_interval_gets_the_invite_again_once() {
    let mut h = timed_call("");
    let first = h.last_invite();
    let mut refused = Response::for_request(&first, 422, Some("agent"));
    refused.headers.push("Min-SE", "600");
    h.sip(SipEvent::Response {
        branch: branch_of(&first),
        response: refused,
    });
    let again = h.last_invite();
    assert_ne!(branch_of(&again), branch_of(&first), "a new transaction");
    assert_eq!(again.call_id(), first.call_id());
    assert_eq!(again.headers.get("CSeq"), Some("2 INVITE"));
    assert_eq!(again.headers.get("Session-Expires"), Some("600"));
    assert!(
        h.responses(A_SERVER).iter().all(|r| r.status < 200),
        "the caller waits"
    );
    answer_with(&mut h, &[("Session-Expires", "600;refresher=uac")]);
    assert!(h.call.is_answered());
    let ack = h.sent(Method::Ack).pop().map(|(a, _)| a);
    assert_eq!(
        ack.and_then(|a| a.headers.get("CSeq").map(str::to_string)),
        Some("2 ACK".to_string())
    );

    // A second 422 is not retried: the caller gets 500, not a 422 it could not act on.
    let mut h = timed_call("");
    for _ in 0..2 {
        let invite = h.last_invite();
        let mut refused = Response::for_request(&invite, 422, Some("agent"));
        refused.headers.push("Min-SE", "900");
        h.sip(SipEvent::Response {
            branch: branch_of(&invite),
            response: refused,
        });
    }
    assert_eq!(statuses(&h.responses(A_SERVER)).last(), Some(&500));
}

/// A transfer target asking a longer session interval gets the transfer's INVITE again, once,
/// with its Min-SE (RFC 4028 §7.3), and takes the leg when it answers; a second 422 fails the
/// transfer and the citizen stays with the agent.
#[test]
fn a_transfer_target_asking_a_longer_interval_gets_the_invite_again_once() {
    let refuse = |h: &mut Harness| {
        let invite = h.last_invite();
        let mut refused = Response::for_request(&invite, 422, Some("police"));
        refused.headers.push("Min-SE", "600");
        h.sip(SipEvent::Response {
            branch: branch_of(&invite),
            response: refused,
        });
    };
    let transfer = || {
        let mut h = timed_call("");
        h.answer();
        h.agent_sends(7, "REFER", 2, "Refer-To: <sip:110@127.0.0.1>\r\n");
        assert_eq!(statuses(&h.responses(7)), vec![202]);
        h
    };
    let mut h = transfer();
    let first = h.last_invite();
    assert_eq!(first.uri.to_string(), "sip:110@127.0.0.1:5090");
    refuse(&mut h);
    let again = h.last_invite();
    assert_ne!(branch_of(&again), branch_of(&first), "a new transaction");
    assert_eq!(again.call_id(), first.call_id());
    assert_eq!(again.headers.get("CSeq"), Some("2 INVITE"));
    assert_eq!(again.headers.get("Session-Expires"), Some("600"));
    assert_eq!(again.headers.get("Min-SE"), Some("600"));
    assert!(h.notified().iter().all(|(status, _)| *status < 300));
    h.respond_to_invite(200, Some(ANSWER));
    assert!(h.sent_media(|m| matches!(m, MediaCommand::Replace(Party::B, _))));
    assert_eq!(h.notified().last().map(|n| n.0), Some(200));
    let ack = h.sent(Method::Ack).pop().map(|(a, _)| a);
    assert_eq!(
        ack.and_then(|a| a.headers.get("CSeq").map(str::to_string)),
        Some("2 ACK".to_string()),
        "the ACK of the INVITE it answered"
    );

    let mut h = transfer();
    refuse(&mut h);
    refuse(&mut h);
    assert_eq!(h.notified().last().map(|n| n.0), Some(422));
    assert!(h.outcome().is_none(), "the citizen stays");
}

/// Settings whose 110 desk has `srtp = "mandatory"`.
fn srtp_desk_settings() -> Arc<CallSettings> {
    let mut settings = (*settings()).clone();
    settings.router = Arc::new(contract_router(SrtpMode::Mandatory));
    Arc::new(settings)
}

/// An SDES answer from the desk.
fn srtp_answer() -> String {
    ANSWER.replace("RTP/AVP", "RTP/SAVP")
        + "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n"
}

/// A transfer to an SRTP desk: its INVITE is RTP/SAVP with a key of ours, and its answer
/// hands the relay the new endpoint with both keys (the citizen's leg stays plain).
#[test]
fn a_transfer_to_an_srtp_desk_offers_a_key_and_replaces_leg_b_with_its_keys() {
    let mut h = Harness::build_with(
        srtp_desk_settings(),
        invite(OFFER, 70),
        peer("carrier", 5070),
        "12345",
        vec![peer_with_platform("hotline", 5080, "12345")],
    );
    h.answer();
    assert!(
        !h.sent(Method::Invite)[0]
            .0
            .sdp()
            .unwrap_or_default()
            .contains("a=crypto"),
        "the hotline's srtp is optional: a plain offer"
    );
    h.agent_sends(7, "REFER", 2, "Refer-To: <sip:110@127.0.0.1>\r\n");
    let invite = h.last_invite();
    let offer = invite.sdp().unwrap_or_default().to_string();
    assert!(offer.contains("RTP/SAVP"), "{offer}");
    let Some(ours) = sdp::key_in(&offer) else {
        panic!("no key in {offer}");
    };
    h.respond_to_invite(200, Some(&srtp_answer()));
    assert!(h.sent_media(|m| matches!(
        m,
        MediaCommand::Replace(Party::B, LegMedia { srtp: Some(keys), .. }) if keys.ours == ours
    )));
    assert!(!h.sent_media(|m| matches!(
        m,
        MediaCommand::Configure(Party::A, LegMedia { srtp: Some(_), .. })
    )));
}

/// A conference guest at an SRTP desk: offered RTP/SAVP, and its plain answer refused (the
/// guest is released; the call goes on).
#[test]
fn a_conference_guest_at_an_srtp_desk_must_answer_with_keys() {
    let mut h = Harness::build_with(
        srtp_desk_settings(),
        invite(OFFER, 70),
        peer("carrier", 5070),
        "12345",
        vec![peer_with_platform("hotline", 5080, "12345")],
    );
    h.answer();
    h.invite_guest("110");
    let offer = h.last_invite().sdp().unwrap_or_default().to_string();
    assert!(
        offer.contains("RTP/SAVP") && offer.contains("a=crypto:1 "),
        "{offer}"
    );
    h.respond_to_invite(200, Some(ANSWER));
    assert!(!h.sent_media(|m| matches!(m, MediaCommand::Join(_))));
    assert_eq!(h.sent(Method::Bye).len(), 1, "the guest is released");
    assert!(h.outcome().is_none(), "the call goes on");
}

/// The ACK of a delayed-offer call from a caller whose `srtp` is mandatory: our offer in the
/// 200 is RTP/SAVP, and a plain answer in the ACK ends the call with BYE (RFC 3261 §13.2.1).
#[test]
fn a_mandatory_caller_answering_our_srtp_offer_with_plain_rtp_is_hung_up() {
    let mut carrier = Peer::new(
        "carrier",
        SocketAddr::from(([127, 0, 0, 1], 5070)),
        None,
        TransportKind::Udp,
    );
    carrier.srtp = SrtpMode::Mandatory;
    let mut h = Harness::build(
        invite("", 70),
        Arc::new(carrier),
        "12345",
        vec![peer("hotline", 5080)],
    );
    h.respond_to_invite(200, Some(ANSWER));
    let ok = h.responses(A_SERVER);
    let offer = ok[0].sdp().unwrap_or_default().to_string();
    assert!(
        offer.contains("RTP/SAVP") && offer.contains("a=crypto:1 "),
        "{offer}"
    );
    h.caller_acks(1, ANSWER);
    assert_eq!(h.sent(Method::Bye).len(), 2, "both legs released");
    assert!(!h.sent_media(|m| matches!(m, MediaCommand::Configure(Party::A, _))));
    assert_eq!(h.outcome().map(|o| o.ended_by), Some(EndedBy::Gateway));
}

/// An ACK of leg B's (to our 2xx of its re-INVITE) arriving before the delayed-offer caller's
/// own ACK leaves the caller's answer to the caller's ACK.
#[test]
fn only_the_callers_ack_answers_its_delayed_offer() {
    let mut h = Harness::new("", vec![peer("hotline", 5080)]);
    h.respond_to_invite(200, Some(ANSWER));
    let b_call_id = h.last_invite().call_id().to_string();
    let b_ack = request(&format!(
        "ACK sip:gw@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-back\r\n\
From: <sip:12345@127.0.0.1:5080>;tag=agent\r\nTo: <sip:13800138000@127.0.0.1>;tag=x\r\n\
Call-ID: {b_call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    ));
    h.sip(SipEvent::Ack { request: b_ack });
    assert!(h.outcome().is_none(), "the call goes on");
    h.caller_acks(1, ANSWER);
    assert!(h.sent_media(|m| matches!(m, MediaCommand::Configure(Party::A, _))));
    assert!(h.outcome().is_none());
}

/// A caller with SDES sends a re-INVITE without SDP: our 200 offers our description again
/// (with our key), and its ACK answers with a key of its own, new: the relay gets it
/// (RFC 4568 §7.1.4 lets each answer re-key).
#[test]
fn an_ack_answering_our_offer_may_bring_a_new_key() {
    let line = |key: &str| format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}\r\n");
    let offer =
        OFFER.replace("RTP/AVP", "RTP/SAVP") + &line("PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR");
    let mut h = Harness::new(&offer, vec![peer("hotline", 5080)]);
    h.answer();
    let first = h.responses(A_SERVER)[1]
        .sdp()
        .unwrap_or_default()
        .to_string();
    let Some(ours) = sdp::key_in(&first) else {
        panic!("no key in our answer: {first}");
    };
    h.caller_sends(9, "INVITE", 2, "");
    let ok = h.responses(9);
    assert_eq!(statuses(&ok), vec![200]);
    assert_eq!(
        ok[0].sdp().and_then(sdp::key_in),
        Some(ours),
        "our key again in our offer"
    );
    // "ABCDEFGHIJKLMNOPQRSTUVWXYZabcd", base64.
    let answer =
        OFFER.replace("RTP/AVP", "RTP/SAVP") + &line("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNk");
    h.caller_acks(2, &answer);
    let new = MasterKey(*b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcd");
    assert!(h.sent_media(|m| matches!(
        m,
        MediaCommand::Configure(Party::A, LegMedia { srtp: Some(k), .. }) if k.theirs == new && k.ours == ours
    )));
}

fn challenging_hotline(outbound: bool) -> Arc<Peer> {
    let mut hotline = Peer::new(
        "hotline",
        SocketAddr::from(([127, 0, 0, 1], 5080)),
        Some("12345".into()),
        TransportKind::Udp,
    );
    if outbound {
        hotline.outbound = Some(crate::routing::credentials::OutboundCredentials {
            username: "gw".into(),
            password: "secret-secret".into(),
        });
    }
    Arc::new(hotline)
}

fn challenge(h: &mut Harness, invite: &Request, status: u16, value: &str) {
    let mut response = Response::for_request(invite, status, Some("desk"));
    let header = if status == 407 {
        "Proxy-Authenticate"
    } else {
        "WWW-Authenticate"
    };
    response.headers.push(header, value);
    h.sip(SipEvent::Response {
        branch: branch_of(invite),
        response,
    });
}

/// §22.2: a challenge to leg B's INVITE is answered once (same Call-ID, From tag and body,
/// CSeq + 1, a new branch), a stale nonce once more, then the peer's 407 reaches the caller.
#[test]
fn a_challenged_invite_is_sent_again_with_credentials_once() {
    let mut h = Harness::build(
        invite(OFFER, 70),
        peer("carrier", 5070),
        "12345",
        vec![challenging_hotline(true)],
    );
    let first = h.last_invite();
    challenge(
        &mut h,
        &first,
        407,
        "Digest realm=\"desk\", nonce=\"n1\", algorithm=MD5, qop=\"auth\"",
    );
    let second = h.last_invite();
    assert_ne!(branch_of(&second), branch_of(&first), "a new transaction");
    assert_eq!(second.call_id(), first.call_id());
    assert_eq!(second.headers.get("From"), first.headers.get("From"));
    assert_eq!(second.headers.get("CSeq"), Some("2 INVITE"));
    assert_eq!(second.body, first.body);
    let answer = second
        .headers
        .get("Proxy-Authorization")
        .unwrap_or_default();
    assert!(
        answer.starts_with("Digest username=\"gw\", realm=\"desk\", nonce=\"n1\""),
        "{answer}"
    );
    assert!(
        answer.contains("qop=auth, nc=00000001, cnonce=\""),
        "{answer}"
    );
    assert!(
        h.responses(A_SERVER).iter().all(|r| r.status < 200),
        "the caller waits"
    );
    // Stale: the credentials were right, the nonce old; once more with the new one.
    challenge(
        &mut h,
        &second,
        407,
        "Digest realm=\"desk\", nonce=\"n2\", algorithm=SHA-256, qop=\"auth\", stale=true",
    );
    let third = h.last_invite();
    assert_eq!(third.headers.get("CSeq"), Some("3 INVITE"));
    assert_eq!(third.headers.get_all("Proxy-Authorization").count(), 1);
    assert!(third
        .headers
        .get("Proxy-Authorization")
        .is_some_and(|a| a.contains("nonce=\"n2\"") && a.contains("algorithm=SHA-256")));
    // Challenged again: wrong credentials; no fourth INVITE, the peer's answer passed on.
    challenge(
        &mut h,
        &third,
        407,
        "Digest realm=\"desk\", nonce=\"n3\", algorithm=MD5, qop=\"auth\"",
    );
    assert_eq!(h.sent(Method::Invite).len(), 3);
    assert_eq!(statuses(&h.responses(A_SERVER)).last(), Some(&407));
}

/// A peer without outbound credentials that challenges: the call fails with its 401, once.
#[test]
fn a_challenge_from_a_peer_without_credentials_fails_the_call() {
    let mut h = Harness::build(
        invite(OFFER, 70),
        peer("carrier", 5070),
        "12345",
        vec![challenging_hotline(false)],
    );
    let first = h.last_invite();
    challenge(
        &mut h,
        &first,
        401,
        "Digest realm=\"desk\", nonce=\"n1\", algorithm=MD5, qop=\"auth\"",
    );
    assert_eq!(h.sent(Method::Invite).len(), 1);
    assert_eq!(statuses(&h.responses(A_SERVER)).last(), Some(&401));
}

mod challenges;
mod desks;
mod interfaces;
mod transfer_queue;
mod whisper;

/// `[announcements] transfer`: the citizen waiting for 110 after the agent left hears the
/// announcement; when 110 fails and the call goes back to 12345, the ringback tone instead
/// (the announcement named the transfer that failed).
#[test]
fn the_transfer_announcement_is_for_the_transfer_and_the_fallback_rings() {
    let prompt = crate::media::prompt::Prompt::from_samples(vec![100; 800], 0);
    let mut settings = (*settings()).clone();
    settings.transfer_announcement = Some(prompt.clone());
    let mut h = Harness::build_with(
        Arc::new(settings),
        invite(OFFER, 70),
        peer("carrier", 5070),
        "12345",
        vec![peer_with_platform("hotline", 5080, "12345")],
    );
    h.answer();
    h.agent_sends(7, "REFER", 2, "Refer-To: <sip:110@127.0.0.1>\r\n");
    h.respond_to_invite(180, None);
    h.agent_sends(8, "BYE", 3, "");
    let announced = Announcement::Prompt(prompt);
    assert!(
        h.sent_media(|m| matches!(m, MediaCommand::Announce(Party::A, Some(a)) if *a == announced))
    );
    assert!(!h.sent_media(|m| matches!(
        m,
        MediaCommand::Announce(Party::A, Some(Announcement::Ringback))
    )));
    h.respond_to_invite(486, None);
    assert!(h.outcome().is_none(), "the citizen stays");
    assert!(h.sent_media(|m| matches!(
        m,
        MediaCommand::Announce(Party::A, Some(Announcement::Ringback))
    )));
}

/// A route with a queue: every desk busy, the caller is answered and hears ringback; the desk
/// is offered the call again after the retry interval, and its answer bridges the call with
/// no second answer to the caller.
#[test]
fn a_queued_caller_is_answered_waits_and_is_bridged_when_a_desk_frees_up() {
    let policy = crate::routing::QueuePolicy {
        wait: Duration::from_secs(30),
        retry: Duration::from_secs(5),
        overflow: Vec::new(),
        line: Default::default(),
    };
    let mut h = Harness::build_queued(
        settings(),
        invite(OFFER, 70),
        (peer("carrier", 5070), "12345"),
        vec![peer_with_platform("hotline", 5080, "12345")],
        Some(policy),
    );
    let first = h.last_invite();
    h.respond_to_invite(486, None);
    assert_eq!(
        statuses(&h.responses(A_SERVER)),
        vec![200],
        "answered, not busy"
    );
    assert!(h.sent_media(|m| matches!(
        m,
        MediaCommand::Announce(Party::A, Some(Announcement::Ringback))
    )));
    assert!(h.outcome().is_none());
    h.advance(Duration::from_secs(4));
    assert_eq!(h.sent(Method::Invite).len(), 1, "not offered again yet");
    h.advance(Duration::from_secs(1));
    let again = h.last_invite();
    assert_eq!(h.sent(Method::Invite).len(), 2, "offered again after 5 s");
    assert_ne!(again.call_id(), first.call_id(), "a new dialog");
    h.respond_to_invite(200, Some(ANSWER));
    assert_eq!(
        statuses(&h.responses(A_SERVER)),
        vec![200],
        "no second answer"
    );
    assert!(h.sent_media(|m| matches!(m, MediaCommand::Announce(Party::A, None))));
    assert!(h
        .actions
        .iter()
        .any(|a| matches!(a, Action::Answered { .. })));
    assert!(h.outcome().is_none(), "citizen and desk talk");
}

/// A queued caller's wait ends with a BYE from the gateway; one who hangs up first abandons.
#[test]
fn a_queue_wait_ends_with_a_bye_and_a_caller_may_abandon_it() {
    let policy = crate::routing::QueuePolicy {
        wait: Duration::from_secs(12),
        retry: Duration::from_secs(5),
        overflow: Vec::new(),
        line: Default::default(),
    };
    let queued = || {
        let mut h = Harness::build_queued(
            settings(),
            invite(OFFER, 70),
            (peer("carrier", 5070), "12345"),
            vec![peer_with_platform("hotline", 5080, "12345")],
            Some(policy.clone()),
        );
        h.respond_to_invite(486, None);
        h
    };
    let mut h = queued();
    for _ in 0..2 {
        h.advance(Duration::from_secs(5));
        h.respond_to_invite(486, None);
    }
    assert_eq!(h.sent(Method::Invite).len(), 3);
    h.advance(Duration::from_secs(2));
    assert_eq!(h.sent(Method::Bye).len(), 1, "the wait is over");
    assert!(h
        .actions
        .iter()
        .any(|a| matches!(a, Action::Queue(QueueUpdate::GaveUp { waited_ms: 12_000 }))));
    assert_eq!(h.outcome().map(|o| o.ended_by), Some(EndedBy::Gateway));

    let mut h = queued();
    h.caller_sends(30, "BYE", 2, "");
    assert_eq!(statuses(&h.responses(30)), vec![200]);
    assert_eq!(h.outcome().map(|o| o.ended_by), Some(EndedBy::Caller));
    h.advance(Duration::from_secs(5));
    assert_eq!(
        h.sent(Method::Invite).len(),
        1,
        "not offered again after it left"
    );
    assert!(h
        .actions
        .iter()
        .any(|a| matches!(a, Action::Queue(QueueUpdate::Abandoned { .. }))));
}

/// Once the wait is over the call overflows to the route's overflow peers (another centre's
/// remote seats: here the router's police peer), with the citizen's number; if they turn it
/// away too, the gateway hangs up.
#[test]
fn a_queued_call_overflows_to_the_remote_seats_when_the_wait_is_over() {
    let policy = crate::routing::QueuePolicy {
        wait: Duration::from_secs(6),
        retry: Duration::from_secs(5),
        overflow: vec!["police".into()],
        line: Default::default(),
    };
    let queued = || {
        let mut h = Harness::build_queued(
            settings(),
            invite(OFFER, 70),
            (peer("carrier", 5070), "12345"),
            vec![peer_with_platform("hotline", 5080, "12345")],
            Some(policy.clone()),
        );
        h.respond_to_invite(486, None);
        h.advance(Duration::from_secs(5));
        h.respond_to_invite(486, None);
        h.advance(Duration::from_secs(1));
        h
    };
    let mut h = queued();
    let overflow = h.last_invite();
    assert_eq!(
        overflow.uri.to_string(),
        "sip:12345@127.0.0.1:5090",
        "to the remote seats"
    );
    assert_eq!(
        overflow.from().and_then(|f| f.uri.user),
        Some("13800138000".into())
    );
    h.respond_to_invite(200, Some(ANSWER));
    assert_eq!(statuses(&h.responses(A_SERVER)), vec![200]);
    assert!(h.outcome().is_none(), "citizen and remote seat talk");

    let mut h = queued();
    h.respond_to_invite(486, None);
    assert_eq!(
        h.sent(Method::Bye).len(),
        1,
        "the remote seats are busy too"
    );
    assert_eq!(h.outcome().map(|o| o.ended_by), Some(EndedBy::Gateway));
}

fn queued_harness(route: Vec<Arc<Peer>>, wait_secs: u64) -> Harness {
    let policy = crate::routing::QueuePolicy {
        wait: Duration::from_secs(wait_secs),
        retry: Duration::from_secs(5),
        overflow: Vec::new(),
        line: Default::default(),
    };
    Harness::build_queued(
        settings(),
        invite(OFFER, 70),
        (peer("carrier", 5070), "12345"),
        route,
        Some(policy),
    )
}

/// A busy desk's 486 is final, so each offer of a queued call begins at the next desk: with
/// two desks, the second is offered it at the first retry.
#[test]
fn each_offer_of_a_queued_call_begins_at_the_next_desk() {
    let desk = |name: &str, port: u16| {
        Peer::new(
            name,
            SocketAddr::from(([127, 0, 0, 1], port)),
            Some("12345".into()),
            TransportKind::Udp,
        )
    };
    let router = Router::new(
        vec![desk("hotline", 5080), desk("hotline-2", 5081)],
        vec![crate::routing::Route {
            number: crate::routing::NumberPattern::Exact("12345".into()),
            peers: vec!["hotline".into(), "hotline-2".into()],
            record: true,
            schedule: Default::default(),
            queue: None,
        }],
    );
    let mut two_desks = (*settings()).clone();
    two_desks.router = Arc::new(router);
    let policy = crate::routing::QueuePolicy {
        wait: Duration::from_secs(60),
        retry: Duration::from_secs(5),
        overflow: Vec::new(),
        line: Default::default(),
    };
    let mut h = Harness::build_queued(
        Arc::new(two_desks),
        invite(OFFER, 70),
        (peer("carrier", 5070), "12345"),
        vec![
            peer_with_platform("hotline", 5080, "12345"),
            peer_with_platform("hotline-2", 5081, "12345"),
        ],
        Some(policy),
    );
    h.respond_to_invite(486, None);
    h.advance(Duration::from_secs(5));
    assert_eq!(h.last_invite().uri.to_string(), "sip:12345@127.0.0.1:5081");
}

/// A refusal that would not change (404) fails the call at once: no queue.
#[test]
fn a_desk_that_refuses_for_good_does_not_queue_the_caller() {
    let mut h = queued_harness(vec![peer_with_platform("hotline", 5080, "12345")], 60);
    h.respond_to_invite(404, None);
    assert_eq!(statuses(&h.responses(A_SERVER)), vec![404]);
}

/// A desk that answers a queued call unusably (no SDP): the caller, answered already, gets a
/// BYE, not a final response it could no longer take.
#[test]
fn a_queued_call_failing_at_the_desks_answer_is_hung_up_with_a_bye() {
    let mut h = queued_harness(vec![peer_with_platform("hotline", 5080, "12345")], 60);
    h.respond_to_invite(486, None);
    h.advance(Duration::from_secs(5));
    h.respond_to_invite(200, None);
    assert_eq!(
        statuses(&h.responses(A_SERVER)),
        vec![200],
        "only the queue's answer"
    );
    let byes = h.sent(Method::Bye);
    assert!(
        byes.iter()
            .any(|(bye, _)| bye.call_id() == h.call.caller.invite.call_id()),
        "a BYE to the caller"
    );
    assert_eq!(h.outcome().map(|o| o.ended_by), Some(EndedBy::Gateway));
}

/// A desk that never answered an offer (its INVITE still running) answers after the next
/// offer went out: its 2xx is ACKed and released, never bridged to the citizen.
#[test]
fn a_late_answer_to_an_earlier_offer_is_released() {
    let mut h = queued_harness(vec![peer_with_platform("hotline", 5080, "12345")], 60);
    h.respond_to_invite(486, None);
    h.advance(Duration::from_secs(5));
    let silent = h.last_invite();
    // No response within the peer response timeout (4 s): the next offer at the retry.
    h.advance(Duration::from_secs(4));
    h.advance(Duration::from_secs(5));
    let next = h.last_invite();
    assert_ne!(next.call_id(), silent.call_id());
    let mut late = Response::for_request(&silent, 200, Some("late"));
    late.headers.push("Contact", "<sip:agent@127.0.0.1:5080>");
    late.headers.push("Content-Type", "application/sdp");
    late.body = Bytes::from(ANSWER);
    h.sip(SipEvent::Response {
        branch: branch_of(&silent),
        response: late,
    });
    let to_silent: Vec<Method> = h
        .sent(Method::Ack)
        .into_iter()
        .chain(h.sent(Method::Bye))
        .filter(|(r, _)| r.call_id() == silent.call_id())
        .map(|(r, _)| r.method)
        .collect();
    assert_eq!(to_silent, vec![Method::Ack, Method::Bye]);
    assert!(
        !h.actions
            .iter()
            .any(|a| matches!(a, Action::Answered { .. })),
        "not bridged"
    );
}
