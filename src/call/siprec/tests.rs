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
        self.server_sends_sdp(method, sequence, None)
    }

    /// ... with an SDP body.
    fn server_sends_sdp(
        &mut self,
        method: &str,
        sequence: u32,
        sdp: Option<&str>,
    ) -> Option<SipEvent> {
        let invite = self.sent(Method::Invite).remove(0);
        let from = invite.from().map(|f| f.to_string()).unwrap_or_default();
        let body = sdp.unwrap_or_default();
        let content_type = if sdp.is_some() {
            "Content-Type: application/sdp\r\n"
        } else {
            ""
        };
        let text = format!(
            "{method} sip:gw@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5100;branch=z9hG4bKsrs{sequence}\r\n\
             From: <sip:127.0.0.1:5100>;tag=srs\r\nTo: {from}\r\nCall-ID: {}\r\nCSeq: {sequence} {method}\r\n\
             {content_type}Content-Length: {}\r\n\r\n{body}",
            invite.call_id(),
            body.len()
        );
        let Ok(message::Message::Request(request)) = message::parse(text.as_bytes()) else {
            panic!("bad request");
        };
        // As the endpoint hands them: an ACK has no transaction of its own.
        let event = if method == "ACK" {
            SipEvent::Ack { request }
        } else {
            SipEvent::Request {
                server: ServerTransactionId::new(9),
                request,
                source: "127.0.0.1:5100".parse().unwrap(),
            }
        };
        let back = self.session.handle_sip(self.now, event);
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

impl Harness {
    fn responses(&self) -> Vec<Response> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                SessionAction::SendResponse { response, .. } => Some(response.clone()),
                _ => None,
            })
            .collect()
    }

    fn last_streams(&self) -> Option<StreamsTo> {
        self.actions.iter().rev().find_map(|a| match a {
            SessionAction::Stream(Some(streams)) => Some(*streams),
            _ => None,
        })
    }
}

#[test]
fn a_2xx_sent_again_is_acked_again() {
    let mut harness = Harness::new();
    harness.answer();
    harness.answer();
    assert_eq!(
        harness.sent(Method::Ack).len(),
        2,
        "§13.2.2.4: each 2xx its ACK"
    );
    let acks = harness.sent(Method::Ack);
    assert_eq!(acks[1].cseq().map(|c| c.sequence), Some(1));
    // A re-INVITE's 2xx likewise, with its own CSeq.
    harness.update(|m, _| m.ticket("GD-1"));
    let reinvite = harness.last_invite();
    harness.respond(&reinvite, 200, Some(ANSWER));
    harness.respond(&reinvite, 200, Some(ANSWER));
    let acks = harness.sent(Method::Ack);
    assert_eq!(acks.len(), 4);
    assert_eq!(acks[3].cseq().map(|c| c.sequence), Some(2));
}

#[test]
fn the_servers_offer_moves_the_streams_and_is_answered_stream_by_stream() {
    let mut harness = Harness::new();
    harness.answer();
    // Another node of the server takes stream 1; stream 2 it no longer wants.
    let offer = "v=0\r\no=srs 1 2 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n\
m=audio 31000 RTP/AVP 8\r\na=recvonly\r\nm=audio 31002 RTP/AVP 8\r\na=inactive\r\n";
    assert!(harness.server_sends_sdp("INVITE", 1, Some(offer)).is_none());
    assert_eq!(
        harness.last_streams(),
        Some(StreamsTo {
            addresses: [Some("127.0.0.2:31000".parse().unwrap()), None],
            codec: Codec::Pcma,
            payload_type: 8,
        })
    );
    let response = harness.responses().pop().unwrap();
    assert_eq!(response.status, 200);
    let answer = sdp::parse(response.sdp().unwrap()).unwrap();
    assert_eq!(answer.media.len(), 2);
    assert_eq!(answer.media[0].formats, ["8"]);
    assert_eq!(answer.media[0].direction, Some(Direction::SendOnly));
    assert_eq!(answer.media[0].port, 20000, "from where it was offered");
    assert_eq!(answer.media[1].direction, Some(Direction::Inactive));
    assert_eq!(harness.ended(), None);
}

#[test]
fn a_reinvite_without_an_offer_gets_ours_and_its_ack_the_answer() {
    let mut harness = Harness::new();
    harness.answer();
    harness.server_sends("INVITE", 1);
    let response = harness.responses().pop().unwrap();
    assert_eq!(response.status, 200);
    let offer = response.sdp().unwrap_or_default().to_string();
    assert!(offer.contains("a=label:1") && offer.contains("a=sendonly"));
    // Its ACK answers: stream 2 moves.
    let answer = ANSWER.replace("30002", "30010");
    harness.server_sends_sdp("ACK", 1, Some(&answer));
    assert_eq!(
        harness.last_streams().map(|s| s.addresses[1]),
        Some(Some("127.0.0.1:30010".parse().unwrap()))
    );
}

#[test]
fn the_servers_reinvite_crossing_ours_gets_491() {
    let mut harness = Harness::new();
    harness.answer();
    harness.update(|m, _| m.ticket("GD-1"));
    harness.server_sends_sdp("INVITE", 1, Some(ANSWER));
    assert_eq!(harness.responses().pop().map(|r| r.status), Some(491));
}

#[test]
fn the_bye_waits_for_a_reinvite_under_way() {
    let mut harness = Harness::new();
    harness.answer();
    harness.update(|m, _| m.ticket("GD-1"));
    let reinvite = harness.last_invite();
    harness.session.end(harness.now);
    harness.now += FLUSH;
    harness.session.handle_timeout(harness.now);
    harness.drain();
    assert_eq!(
        harness.sent(Method::Bye).len(),
        0,
        "its 2xx must be ACKed first"
    );
    harness.respond(&reinvite, 200, Some(ANSWER));
    assert_eq!(harness.sent(Method::Ack).len(), 2);
    assert_eq!(harness.sent(Method::Bye).len(), 1);
    assert_eq!(harness.ended(), Some(SessionEnd::WithCall));
}

#[test]
fn a_reinvite_finding_no_dialog_ends_the_session_with_a_bye() {
    let mut harness = Harness::new();
    harness.answer();
    harness.update(|m, _| m.ticket("GD-1"));
    let reinvite = harness.last_invite();
    harness.respond(&reinvite, 481, None);
    assert_eq!(harness.sent(Method::Bye).len(), 1);
    assert_eq!(harness.ended(), Some(SessionEnd::Lost(481)));
}

#[test]
fn a_refused_update_goes_again_with_the_next_change() {
    let mut harness = Harness::new();
    harness.answer();
    harness.update(|m, _| m.ticket("GD-1"));
    let reinvite = harness.last_invite();
    harness.respond(&reinvite, 500, None);
    harness.update(|m, _| m.ticket("GD-1"));
    assert_eq!(
        harness.sent(Method::Invite).len(),
        2,
        "no change, nothing sent"
    );
    harness.update(|m, ids| m.joined(ids, 9000, 1, party("110", "police")));
    let body = body(&harness.last_invite());
    assert!(body.contains("GD-1") && body.contains("sip:110@"));
}

#[test]
fn a_call_ending_after_only_100_trying_cancels() {
    let mut harness = Harness::new();
    let invite = harness.last_invite();
    harness.respond(&invite, 100, None);
    harness.session.end(harness.now);
    harness.drain();
    assert_eq!(harness.sent(Method::Cancel).len(), 1);
    harness.respond(&invite, 487, None);
    assert_eq!(
        harness.ended(),
        Some(SessionEnd::WithCall),
        "no failure: the call ended"
    );
}
