//! The recording session on a fake clock: what the recording server is sent, and that nothing
//! it does reaches the call.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::metadata::{Linkage, Party};
use super::*;
use crate::routing::TransportKind;

const ANSWER: &str = "v=0\r\no=srs 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 30000 RTP/AVP 0\r\na=recvonly\r\na=label:1\r\n\
m=audio 30002 RTP/AVP 0\r\na=recvonly\r\na=label:2\r\n";

fn party(number: &str, peer: &str) -> Party {
    Party {
        number: number.into(),
        host: "127.0.0.1".into(),
        peer: peer.into(),
        platform: None,
    }
}

struct Harness {
    session: RecordingSession,
    now: Instant,
    actions: Vec<SessionAction>,
}

impl Harness {
    fn new() -> Harness {
        let peer = Arc::new(Peer::new(
            "recorder",
            SocketAddr::from(([127, 0, 0, 1], 5100)),
            None,
            TransportKind::Udp,
        ));
        let settings = Arc::new(SiprecSettings {
            peer,
            local: LocalAddresses::single("127.0.0.1:5060".parse().unwrap(), None),
            user_agent: None,
        });
        let mut ids = IdGenerator::new(3);
        let metadata = Metadata::new(
            &mut ids,
            "call-1",
            0,
            party("13800138000", "carrier"),
            party("12345", "hotline"),
        );
        let media = [
            "127.0.0.1:20000".parse().unwrap(),
            "127.0.0.1:20002".parse().unwrap(),
        ];
        let mut harness = Harness {
            session: RecordingSession::new(settings, ids, media, metadata),
            now: Instant::now(),
            actions: Vec::new(),
        };
        harness.drain();
        harness
    }

    fn drain(&mut self) {
        while let Some(action) = self.session.poll_action() {
            self.actions.push(action);
        }
    }

    fn sent(&self, method: Method) -> Vec<Request> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                SessionAction::SendRequest { request, .. } if request.method == method => {
                    Some(request.clone())
                }
                _ => None,
            })
            .collect()
    }

    fn last_invite(&self) -> Request {
        self.sent(Method::Invite)
            .pop()
            .unwrap_or_else(|| panic!("no INVITE"))
    }

    fn respond(&mut self, request: &Request, status: u16, sdp: Option<&str>) -> Option<SipEvent> {
        let mut response = Response::for_request(request, status, Some("srs"));
        response.headers.push("Contact", "<sip:srs@127.0.0.1:5100>");
        if let Some(sdp) = sdp {
            response.headers.push("Content-Type", "application/sdp");
            response.body = Bytes::from(sdp.to_string());
        }
        let branch = request
            .top_via()
            .and_then(|v| v.branch().map(str::to_string))
            .unwrap_or_default();
        let back = self
            .session
            .handle_sip(self.now, SipEvent::Response { branch, response });
        self.drain();
        back
    }

    fn answer(&mut self) {
        let invite = self.last_invite();
        assert!(self.respond(&invite, 200, Some(ANSWER)).is_none());
    }

    fn ended(&self) -> Option<SessionEnd> {
        self.actions.iter().find_map(|a| match a {
            SessionAction::Ended(end) => Some(*end),
            _ => None,
        })
    }

    fn update(&mut self, change: impl FnOnce(&mut Metadata, &mut IdGenerator) -> bool) {
        self.session.update(self.now, change);
        self.drain();
    }

    /// A request from the server in the session's dialog.
    fn server_sends(&mut self, method: &str, sequence: u32) -> Option<SipEvent> {
        let invite = self.last_invite();
        let from = invite.from().map(|f| f.to_string()).unwrap_or_default();
        let text = format!(
            "{method} sip:gw@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5100;branch=z9hG4bKsrs{sequence}\r\n\
             From: <sip:127.0.0.1:5100>;tag=srs\r\nTo: {from}\r\nCall-ID: {}\r\nCSeq: {sequence} {method}\r\n\
             Content-Length: 0\r\n\r\n",
            invite.call_id()
        );
        let Ok(message::Message::Request(request)) = message::parse(text.as_bytes()) else {
            panic!("bad request");
        };
        let back = self.session.handle_sip(
            self.now,
            SipEvent::Request {
                server: ServerTransactionId::new(9),
                request,
                source: "127.0.0.1:5100".parse().unwrap(),
            },
        );
        self.drain();
        back
    }
}

fn body(request: &Request) -> String {
    String::from_utf8_lossy(&request.body).into_owned()
}

#[test]
fn the_invite_is_a_siprec_offer_with_two_labelled_streams_and_the_metadata() {
    let harness = Harness::new();
    let invite = harness.last_invite();
    assert_eq!(invite.headers.get("Require"), Some("siprec"));
    assert!(invite
        .headers
        .get("Contact")
        .is_some_and(|c| c.ends_with(";+sip.src")));
    assert_eq!(
        invite.content_type(),
        Some("multipart/mixed;boundary=hotline-siprec-boundary")
    );
    let body = body(&invite);
    assert!(body.contains("Content-Type: application/sdp\r\n\r\nv=0"));
    assert!(body.contains("m=audio 20000 RTP/AVP 8 0\r\n"));
    assert!(body.contains("m=audio 20002 RTP/AVP 8 0\r\n"));
    assert_eq!(body.matches("a=sendonly").count(), 2);
    assert!(body.contains("a=label:1\r\n") && body.contains("a=label:2\r\n"));
    assert!(body.contains(
        "Content-Type: application/rs-metadata+xml\r\nContent-Disposition: recording-session\r\n"
    ));
    assert!(body.contains("<hl:call-id>call-1</hl:call-id>"));
    assert!(body.ends_with("--hotline-siprec-boundary--\r\n"));
}

#[test]
fn the_answer_is_acked_and_the_streams_go_where_it_says() {
    let mut harness = Harness::new();
    harness.answer();
    assert_eq!(harness.sent(Method::Ack).len(), 1);
    let streams = harness.actions.iter().find_map(|a| match a {
        SessionAction::Stream(Some(streams)) => Some(*streams),
        _ => None,
    });
    assert_eq!(
        streams,
        Some(StreamsTo {
            addresses: [
                Some("127.0.0.1:30000".parse().unwrap()),
                Some("127.0.0.1:30002".parse().unwrap())
            ],
            codec: Codec::Pcmu,
            payload_type: 0,
        })
    );
    assert!(harness
        .actions
        .iter()
        .any(|a| matches!(a, SessionAction::RegisterDialog(_))));
}

#[test]
fn each_participant_change_is_a_reinvite_one_at_a_time() {
    let mut harness = Harness::new();
    // A change before the answer waits for it.
    harness.update(|m, _| {
        m.linkage(Linkage {
            id: "l1".into(),
            kind: "transfer".into(),
            target: "110".into(),
            outcome: None,
        })
    });
    assert_eq!(harness.sent(Method::Invite).len(), 1);
    harness.answer();
    let reinvite = harness.last_invite();
    assert_eq!(harness.sent(Method::Invite).len(), 2);
    assert_eq!(reinvite.cseq().map(|c| c.sequence), Some(2));
    assert_eq!(reinvite.headers.get("Require"), Some("siprec"));
    assert!(body(&reinvite).contains("<hl:linkage id=\"l1\""));
    // Two changes while it is under way: one more re-INVITE, with both.
    harness.update(|m, ids| m.joined(ids, 5000, 1, party("110", "police")));
    harness.update(|m, _| m.ticket("GD-1"));
    assert_eq!(harness.sent(Method::Invite).len(), 2);
    assert!(harness.update_unchanged());
    harness.respond(&reinvite, 200, Some(ANSWER));
    let third = harness.last_invite();
    assert_eq!(harness.sent(Method::Invite).len(), 3);
    assert!(body(&third).contains("aor=\"sip:110@127.0.0.1\""));
    assert!(body(&third).contains("<hl:ticket>GD-1</hl:ticket>"));
    assert_eq!(harness.sent(Method::Ack).len(), 2);
}

impl Harness {
    /// An update that changes nothing sends nothing.
    fn update_unchanged(&mut self) -> bool {
        let before = self.actions.len();
        self.update(|_, _| false);
        self.actions.len() == before
    }
}

#[test]
fn glare_is_retried_after_2_1_seconds() {
    let mut harness = Harness::new();
    harness.answer();
    harness.update(|m, _| m.ticket("GD-1"));
    let reinvite = harness.last_invite();
    harness.respond(&reinvite, 491, None);
    assert_eq!(
        harness.session.poll_timeout(),
        Some(harness.now + Duration::from_millis(2100))
    );
    harness.now += Duration::from_millis(2099);
    harness.session.handle_timeout(harness.now);
    harness.drain();
    assert_eq!(harness.sent(Method::Invite).len(), 2);
    harness.now += Duration::from_millis(1);
    harness.session.handle_timeout(harness.now);
    harness.drain();
    assert_eq!(harness.sent(Method::Invite).len(), 3);
    assert!(body(&harness.last_invite()).contains("GD-1"));
    assert_eq!(harness.ended(), None);
}

#[test]
fn a_refusing_server_ends_only_the_session() {
    let mut harness = Harness::new();
    let invite = harness.last_invite();
    assert!(harness.respond(&invite, 503, None).is_none());
    assert_eq!(harness.ended(), Some(SessionEnd::Refused(503)));
    assert!(harness.session.is_done());
    // What is not the session's goes back to the call.
    let mut other = invite.clone();
    other.headers.set("Call-ID", "the-citizens-call");
    assert!(harness.respond(&other, 200, None).is_some());
}

#[test]
fn the_servers_bye_is_answered_and_stops_the_streams() {
    let mut harness = Harness::new();
    harness.answer();
    assert!(harness.server_sends("BYE", 1).is_none());
    let answered = harness.actions.iter().any(
        |a| matches!(a, SessionAction::SendResponse { response, .. } if response.status == 200),
    );
    assert!(answered);
    assert!(harness
        .actions
        .iter()
        .any(|a| matches!(a, SessionAction::Stream(None))));
    assert_eq!(harness.ended(), Some(SessionEnd::ByServer));
    // The call's end then sends nothing more.
    let before = harness.actions.len();
    harness.session.end(harness.now);
    harness.drain();
    assert_eq!(harness.actions.len(), before);
}

#[test]
fn the_calls_end_is_a_bye_once_the_last_frames_are_out() {
    let mut harness = Harness::new();
    harness.answer();
    harness.session.end(harness.now);
    harness.drain();
    assert_eq!(harness.sent(Method::Bye).len(), 0);
    assert!(!harness.session.is_done());
    // No more metadata once the call is over.
    harness.update(|m, _| m.ticket("GD-9"));
    assert_eq!(harness.sent(Method::Invite).len(), 1);
    assert_eq!(harness.session.poll_timeout(), Some(harness.now + FLUSH));
    harness.now += FLUSH;
    harness.session.handle_timeout(harness.now);
    harness.drain();
    assert_eq!(harness.sent(Method::Bye).len(), 1);
    assert!(harness.session.is_done());
    assert_eq!(harness.ended(), Some(SessionEnd::WithCall));
}

#[test]
fn a_call_ending_while_the_server_rings_cancels_and_releases_a_late_answer() {
    let mut harness = Harness::new();
    let invite = harness.last_invite();
    harness.respond(&invite, 180, None);
    harness.session.end(harness.now);
    harness.drain();
    let cancels = harness.sent(Method::Cancel);
    assert_eq!(cancels.len(), 1);
    // The CANCEL's own 200 shares the INVITE's branch: it is no answer to the INVITE.
    assert!(harness.respond(&cancels[0], 200, None).is_none());
    assert_eq!(harness.sent(Method::Ack).len(), 0);
    harness.respond(&invite, 200, Some(ANSWER));
    assert_eq!(harness.sent(Method::Ack).len(), 1);
    assert_eq!(harness.sent(Method::Bye).len(), 1);
    assert_eq!(harness.ended(), Some(SessionEnd::WithCall));
}
