//! Desks with a capacity (`[[peer]] max_calls`) and a route's line (`[[route]] queue_max`),
//! on the fake clock: a full desk is not sent the call, a queued call goes to a desk as soon
//! as it frees a seat and in the order callers came, a full line overflows at once, and a
//! wait given up on plays the no-desk announcement before the gateway's BYE.

use super::*;
use crate::routing::desks::{Seat, WaitingLine};

/// A router whose 12345 desk takes `max_calls` calls at once, with the contract's police
/// peer for overflow; and the desk as the router shares it.
fn desk_settings(max_calls: Option<u32>) -> (Arc<CallSettings>, Arc<Peer>) {
    desks_settings(max_calls, None)
}

/// As [`desk_settings`], the police peer taking `police_max` calls at once.
fn desks_settings(
    max_calls: Option<u32>,
    police_max: Option<u32>,
) -> (Arc<CallSettings>, Arc<Peer>) {
    let mut desk = Peer::new(
        "hotline",
        SocketAddr::from(([127, 0, 0, 1], 5080)),
        Some("12345".into()),
        TransportKind::Udp,
    );
    desk.seats = crate::routing::desks::Seats::new(max_calls);
    let mut police = Peer::new(
        "police",
        SocketAddr::from(([127, 0, 0, 1], 5090)),
        Some("110".into()),
        TransportKind::Udp,
    );
    police.seats = crate::routing::desks::Seats::new(police_max);
    let route = |number: &str, to: &str| crate::routing::Route {
        number: crate::routing::NumberPattern::Exact(number.into()),
        peers: vec![to.into()],
        record: true,
        schedule: Default::default(),
        queue: None,
    };
    let router = Router::new(
        vec![desk, police],
        vec![route("12345", "hotline"), route("110", "police")],
    );
    let desk = router
        .peer_by_name("hotline")
        .unwrap_or_else(|| unreachable!());
    let mut settings = (*settings()).clone();
    settings.router = Arc::new(router);
    (Arc::new(settings), desk)
}

fn policy(line: &Arc<WaitingLine>, overflow: &[&str]) -> crate::routing::QueuePolicy {
    crate::routing::QueuePolicy {
        wait: Duration::from_secs(60),
        retry: Duration::from_secs(5),
        overflow: overflow.iter().map(|s| s.to_string()).collect(),
        line: Arc::clone(line),
    }
}

fn queued_call(
    settings: &Arc<CallSettings>,
    desk: &Arc<Peer>,
    policy: crate::routing::QueuePolicy,
) -> Harness {
    Harness::build_queued(
        Arc::clone(settings),
        invite(OFFER, 70),
        (peer("carrier", 5070), "12345"),
        vec![Arc::clone(desk)],
        Some(policy),
    )
}

impl Harness {
    fn desks_freed(&mut self, after: Duration) {
        self.now += after;
        self.call.handle_desks_freed(self.now);
        self.drain();
    }
}

/// The desk carries its one call: a new call is not sent to it but queued (as on its 486),
/// and goes to it as soon as its call ends, before the retry interval; the call holds the
/// seat while it talks and gives it back at its end.
#[test]
fn a_full_desk_is_not_sent_the_call_and_a_freed_seat_offers_it_at_once() {
    let (settings, desk) = desk_settings(Some(1));
    let line = Arc::new(WaitingLine::new(None));
    let held = Seat::take(&desk);
    let mut h = queued_call(&settings, &desk, policy(&line, &[]));
    assert!(
        h.sent(Method::Invite).is_empty(),
        "no INVITE to a full desk"
    );
    assert_eq!(statuses(&h.responses(A_SERVER)), vec![200], "queued");
    assert_eq!(
        h.queue_updates(),
        vec![QueueUpdate::Queued {
            status: 486,
            linkage_id: None
        }]
    );
    assert!(
        h.actions
            .iter()
            .any(|a| matches!(a, Action::Attempt { b_peer, .. } if b_peer == "hotline")),
        "the record and the platform's stream name the desk the call is for"
    );
    assert_eq!(line.len(), 1);

    h.desks_freed(Duration::from_secs(2));
    assert!(h.sent(Method::Invite).is_empty(), "still full");
    drop(held);
    h.desks_freed(Duration::from_millis(500));
    let offer = h.last_invite();
    assert_eq!(offer.uri.to_string(), "sip:12345@127.0.0.1:5080");
    assert_eq!(
        offer.from().and_then(|f| f.uri.user),
        Some("13800138000".into()),
        "the citizen's number, as on a direct call"
    );
    assert!(h.queue_updates().contains(&QueueUpdate::Offered {
        to_peer: "hotline".into(),
        waited_ms: 2_500,
    }));
    assert_eq!(desk.seats.taken(), 1, "the offer holds the seat");
    h.respond_to_invite(200, Some(ANSWER));
    assert!(h
        .queue_updates()
        .contains(&QueueUpdate::Answered { waited_ms: 2_500 }));
    assert_eq!(line.len(), 0, "out of the line once answered");
    assert_eq!(desk.seats.taken(), 1, "the call talks at the desk");
    h.caller_sends(30, "BYE", 2, "");
    assert_eq!(h.outcome().map(|o| o.ended_by), Some(EndedBy::Caller));
    assert_eq!(desk.seats.taken(), 0, "given back at the call's end");
}

/// A desk that turns an offer away at once frees its seat again: the call is not offered in
/// a loop, but at most once a second.
#[test]
fn a_desk_refusing_at_once_is_offered_the_call_at_most_once_a_second() {
    let (settings, desk) = desk_settings(Some(1));
    let line = Arc::new(WaitingLine::new(None));
    let held = Seat::take(&desk);
    let mut h = queued_call(&settings, &desk, policy(&line, &[]));
    drop(held);
    h.desks_freed(Duration::from_secs(2));
    assert_eq!(h.sent(Method::Invite).len(), 1);
    let mut signal = settings.router.desk_signal().subscribe();
    h.respond_to_invite(486, None);
    assert_eq!(desk.seats.taken(), 0, "the refusal gave the seat back");
    assert!(
        !signal.has_changed().unwrap_or(true),
        "a busy desk wakes no queued call"
    );
    signal.mark_unchanged();
    h.desks_freed(Duration::ZERO);
    assert_eq!(h.sent(Method::Invite).len(), 1, "not again at once");
    h.advance(Duration::from_secs(1));
    assert_eq!(h.sent(Method::Invite).len(), 2, "a second later");
}

/// Two callers wait for a one-seat desk: when it frees, the first to come is offered it and
/// the second waits on; when the first is answered, the second still waits for a seat.
#[test]
fn callers_go_to_a_freed_desk_in_the_order_they_came() {
    let (settings, desk) = desk_settings(Some(1));
    let line = Arc::new(WaitingLine::new(None));
    let held = Seat::take(&desk);
    let mut first = queued_call(&settings, &desk, policy(&line, &[]));
    let mut second = queued_call(&settings, &desk, policy(&line, &[]));
    assert_eq!(line.len(), 2);
    drop(held);
    second.desks_freed(Duration::from_secs(2));
    assert!(
        second.sent(Method::Invite).is_empty(),
        "one seat, and a caller before it"
    );
    first.desks_freed(Duration::from_secs(2));
    assert_eq!(
        first.sent(Method::Invite).len(),
        1,
        "the first caller's turn"
    );
    first.respond_to_invite(200, Some(ANSWER));
    second.desks_freed(Duration::from_secs(1));
    assert!(
        second.sent(Method::Invite).is_empty(),
        "the desk is full again"
    );
    // Its retry finds the desk full too: no INVITE, it waits on.
    second.advance(Duration::from_secs(5));
    assert!(second.sent(Method::Invite).is_empty());
    assert!(second.outcome().is_none());
}

/// A caller ringing a desk holds its seat there: it does not count before the next caller
/// when another seat frees.
#[test]
fn a_caller_ringing_a_desk_does_not_hold_back_the_next_in_line() {
    let (settings, desk) = desk_settings(Some(2));
    let line = Arc::new(WaitingLine::new(None));
    let held = (Seat::take(&desk), Seat::take(&desk));
    let mut first = queued_call(&settings, &desk, policy(&line, &[]));
    let mut second = queued_call(&settings, &desk, policy(&line, &[]));
    drop(held.0);
    first.desks_freed(Duration::from_secs(2));
    first.respond_to_invite(180, None);
    assert_eq!(
        first.sent(Method::Invite).len(),
        1,
        "the first rings a desk"
    );
    drop(held.1);
    second.desks_freed(Duration::from_secs(1));
    assert_eq!(
        second.sent(Method::Invite).len(),
        1,
        "the second seat is the second caller's"
    );
    // The first's desk turns it down: it waits for a seat again, first in line.
    first.respond_to_invite(486, None);
    let mut third = queued_call(&settings, &desk, policy(&line, &[]));
    assert!(
        third.sent(Method::Invite).is_empty(),
        "the first caller is before it again"
    );
    first.desks_freed(Duration::from_secs(2));
    assert_eq!(
        first.sent(Method::Invite).len(),
        2,
        "the freed seat is the first's"
    );
    drop(second);
    third.desks_freed(Duration::from_secs(1));
    assert_eq!(third.sent(Method::Invite).len(), 1, "then the third's");
}

/// `queue_max`: with the line full, the next caller goes straight to the overflow peers
/// (answered, hearing the queue while they ring); with no overflow peer it is turned away
/// as by the desks.
#[test]
fn a_full_line_overflows_at_once_or_turns_the_caller_away() {
    let (settings, desk) = desk_settings(None);
    let line = Arc::new(WaitingLine::new(Some(1)));
    let mut first = queued_call(&settings, &desk, policy(&line, &["police"]));
    first.respond_to_invite(486, None);
    assert_eq!(line.len(), 1);
    let mut second = queued_call(&settings, &desk, policy(&line, &["police"]));
    second.respond_to_invite(486, None);
    assert_eq!(statuses(&second.responses(A_SERVER)), vec![200]);
    assert_eq!(
        second.last_invite().uri.to_string(),
        "sip:12345@127.0.0.1:5090",
        "to the remote seats at once"
    );
    assert_eq!(
        second.queue_updates(),
        vec![
            QueueUpdate::Queued {
                status: 486,
                linkage_id: None
            },
            QueueUpdate::Overflowed {
                to_peer: "police".into(),
                waited_ms: 0
            }
        ]
    );
    assert_eq!(line.len(), 1, "the overflowed caller is not in the line");

    let mut third = queued_call(&settings, &desk, policy(&line, &[]));
    third.respond_to_invite(486, None);
    assert_eq!(statuses(&third.responses(A_SERVER)), vec![486]);
    assert!(third.queue_updates().is_empty());
}

/// With the line full and every overflow peer at its `max_calls`, the caller is refused
/// unanswered (486), not answered and then hung up.
#[test]
fn a_full_line_with_full_overflow_peers_refuses_the_caller_unanswered() {
    let (settings, desk) = desks_settings(None, Some(1));
    let police = settings
        .router
        .peer_by_name("police")
        .unwrap_or_else(|| unreachable!());
    let _talking = Seat::take(&police);
    let line = Arc::new(WaitingLine::new(Some(1)));
    let mut first = queued_call(&settings, &desk, policy(&line, &["police"]));
    first.respond_to_invite(486, None);
    let mut second = queued_call(&settings, &desk, policy(&line, &["police"]));
    second.respond_to_invite(486, None);
    assert_eq!(statuses(&second.responses(A_SERVER)), vec![486]);
    assert!(second.queue_updates().is_empty());
}

/// No desk within the wait and no overflow: with `[announcements] no_desk`, the caller
/// hears it to its end, then the gateway's BYE.
#[test]
fn a_wait_given_up_on_plays_the_no_desk_announcement_before_the_bye() {
    let (settings, desk) = desk_settings(None);
    let prompt = crate::media::prompt::Prompt::from_samples(vec![100; 24_000], 0);
    let mut settings = (*settings).clone();
    settings.no_desk_announcement = Some(prompt.clone());
    let settings = Arc::new(settings);
    let line = Arc::new(WaitingLine::new(None));
    let mut short = policy(&line, &[]);
    short.wait = Duration::from_secs(4);
    let mut h = queued_call(&settings, &desk, short);
    h.respond_to_invite(486, None);
    h.advance(Duration::from_secs(4));
    assert!(h.sent_media(|m| matches!(
        m,
        MediaCommand::Announce(Party::A, Some(Announcement::Prompt(p))) if *p == prompt
    )));
    assert!(h
        .queue_updates()
        .contains(&QueueUpdate::GaveUp { waited_ms: 4_000 }));
    assert!(
        h.sent(Method::Bye).is_empty(),
        "the announcement plays first"
    );
    h.advance(Duration::from_millis(2_999));
    assert!(h.sent(Method::Bye).is_empty());
    h.advance(Duration::from_millis(1));
    assert_eq!(
        h.sent(Method::Bye).len(),
        1,
        "3 s of announcement, then the BYE"
    );
    assert_eq!(h.outcome().map(|o| o.ended_by), Some(EndedBy::Gateway));
    assert_eq!(
        h.queue_updates()
            .iter()
            .filter(|u| matches!(u, QueueUpdate::GaveUp { .. }))
            .count(),
        1
    );
}

/// A desk still ringing when the wait is over is cancelled and the call overflows then, not
/// a ring timeout later.
#[test]
fn the_wait_ends_on_time_while_a_desk_rings() {
    let (settings, desk) = desk_settings(None);
    let line = Arc::new(WaitingLine::new(None));
    let mut short = policy(&line, &["police"]);
    short.wait = Duration::from_secs(8);
    let mut h = queued_call(&settings, &desk, short);
    h.respond_to_invite(486, None);
    h.advance(Duration::from_secs(5));
    h.respond_to_invite(180, None);
    assert!(h
        .queue_updates()
        .iter()
        .any(|u| matches!(u, QueueUpdate::Offered { .. })));
    h.advance(Duration::from_secs(3));
    assert_eq!(
        h.sent(Method::Cancel).len(),
        1,
        "the ringing desk is cancelled"
    );
    assert_eq!(
        h.last_invite().uri.to_string(),
        "sip:12345@127.0.0.1:5090",
        "overflowed at 8 s"
    );
}

/// The wait ends while a desk rings and no overflow is left: the desk is cancelled before
/// the no-desk announcement, and its late answer is released, never bridged.
#[test]
fn a_desk_ringing_when_the_wait_is_given_up_is_cancelled_not_bridged() {
    let (settings, desk) = desk_settings(None);
    let prompt = crate::media::prompt::Prompt::from_samples(vec![100; 8_000], 0);
    let mut settings = (*settings).clone();
    settings.no_desk_announcement = Some(prompt);
    let settings = Arc::new(settings);
    let line = Arc::new(WaitingLine::new(None));
    let mut short = policy(&line, &[]);
    short.wait = Duration::from_secs(8);
    let mut h = queued_call(&settings, &desk, short);
    h.respond_to_invite(486, None);
    h.advance(Duration::from_secs(5));
    let ringing = h.last_invite();
    h.respond_to_invite(180, None);
    h.advance(Duration::from_secs(3));
    assert_eq!(
        h.sent(Method::Cancel).len(),
        1,
        "cancelled at the wait's end"
    );
    let mut late = Response::for_request(&ringing, 200, Some("late"));
    late.headers.push("Contact", "<sip:agent@127.0.0.1:5080>");
    late.headers.push("Content-Type", "application/sdp");
    late.body = Bytes::from(ANSWER);
    h.sip(SipEvent::Response {
        branch: branch_of(&ringing),
        response: late,
    });
    assert!(
        !h.actions
            .iter()
            .any(|a| matches!(a, Action::Answered { .. })),
        "not bridged during the announcement"
    );
    assert!(h
        .sent(Method::Bye)
        .iter()
        .any(|(bye, _)| bye.call_id() == ringing.call_id()));
}

/// A caller whose INVITE had no SDP (delayed offer, RFC 3261 §13.2.1) is queued too: our
/// offer in the queue's 200, its answer in the ACK configures its media, and a desk's answer
/// later bridges it with nothing more to the caller.
#[test]
fn a_delayed_offer_caller_is_queued_with_our_offer_in_the_200() {
    let (settings, desk) = desk_settings(None);
    let line = Arc::new(WaitingLine::new(None));
    let mut h = Harness::build_queued(
        Arc::clone(&settings),
        invite("", 70),
        (peer("carrier", 5070), "12345"),
        vec![Arc::clone(&desk)],
        Some(policy(&line, &[])),
    );
    h.respond_to_invite(486, None);
    let ok = h.responses(A_SERVER);
    assert_eq!(statuses(&ok), vec![200], "queued");
    assert!(
        ok[0].sdp().is_some_and(|s| s.contains("m=audio 20000")),
        "our offer in the 200"
    );
    assert!(!h.sent_media(|m| matches!(m, MediaCommand::Configure(Party::A, _))));
    h.caller_acks(1, ANSWER);
    assert!(h.sent_media(|m| matches!(m, MediaCommand::Configure(Party::A, _))));
    h.advance(Duration::from_secs(5));
    h.respond_to_invite(200, Some(ANSWER));
    assert_eq!(
        statuses(&h.responses(A_SERVER)),
        vec![200],
        "no second answer"
    );
    assert!(h
        .actions
        .iter()
        .any(|a| matches!(a, Action::Answered { .. })));
    assert!(h.outcome().is_none());
}

/// A long wait at a full desk keeps no dialog per offer: no INVITE went out on them.
#[test]
fn a_long_wait_at_a_full_desk_keeps_no_dialog_per_offer() {
    let (settings, desk) = desk_settings(Some(1));
    let line = Arc::new(WaitingLine::new(None));
    let _held = Seat::take(&desk);
    let mut h = queued_call(&settings, &desk, policy(&line, &[]));
    for _ in 0..11 {
        h.advance(Duration::from_secs(5));
    }
    assert!(h.sent(Method::Invite).is_empty());
    assert!(h.outcome().is_none(), "still waiting at 55 s");
    assert!(
        h.call.stale_dialogs.is_empty(),
        "{} dialogs kept",
        h.call.stale_dialogs.len()
    );
}

/// A direct call answered at the one-seat desk.
fn answered_at_the_desk(settings: &Arc<CallSettings>, desk: &Arc<Peer>) -> Harness {
    let mut h = Harness::build_queued(
        Arc::clone(settings),
        invite(OFFER, 70),
        (peer("carrier", 5070), "12345"),
        vec![Arc::clone(desk)],
        None,
    );
    h.answer();
    assert_eq!(
        desk.seats.free(),
        Some(0),
        "the agent's call holds the seat"
    );
    h
}

/// An agent who hangs up while its transfer's target rings gives its seat back at once: the
/// citizen waits for 110, holding no desk.
#[test]
fn an_agent_leaving_while_its_transfer_rings_frees_its_seat() {
    let (settings, desk) = desk_settings(Some(1));
    let mut h = answered_at_the_desk(&settings, &desk);
    h.agent_sends(7, "REFER", 2, "Refer-To: <sip:110@127.0.0.1>\r\n");
    assert_eq!(statuses(&h.responses(7)), vec![202]);
    h.respond_to_invite(180, None);
    h.agent_sends(8, "BYE", 3, "");
    assert!(h.outcome().is_none(), "the citizen waits for 110");
    assert_eq!(desk.seats.free(), Some(1));
}

/// The agent's blind-transfer phone hangs up and the transfer fails: the citizen goes back
/// to the hotline, whose one seat the agent gave back, so it is not dropped.
#[test]
fn a_failed_transfer_after_the_agent_left_goes_back_to_its_one_seat_desk() {
    let (settings, desk) = desk_settings(Some(1));
    let mut h = answered_at_the_desk(&settings, &desk);
    h.agent_sends(7, "REFER", 2, "Refer-To: <sip:110@127.0.0.1>\r\n");
    h.respond_to_invite(486, None);
    h.agent_sends(8, "BYE", 3, "");
    assert!(h.outcome().is_none(), "never dropped");
    assert_eq!(h.last_invite().uri.to_string(), "sip:12345@127.0.0.1:5080");
    assert_eq!(desk.seats.free(), Some(0), "the fallback holds the seat");
}

/// The agent leaves while the guest it invited rings: its seat is free for the next caller.
#[test]
fn an_agent_leaving_while_its_guest_rings_frees_its_seat() {
    let (settings, desk) = desk_settings(Some(1));
    let mut h = answered_at_the_desk(&settings, &desk);
    h.invite_guest("110");
    h.respond_to_invite(180, None);
    h.agent_sends(8, "BYE", 3, "");
    assert!(h.outcome().is_none(), "the citizen waits for the guest");
    assert_eq!(desk.seats.free(), Some(1));
}

/// A queued caller hung up by the gateway (media timeout) ends its wait: told once, with the
/// wait, so the figures count it.
#[test]
fn a_wait_ended_by_the_gateway_is_told_with_its_length() {
    let (settings, desk) = desk_settings(Some(1));
    let line = Arc::new(WaitingLine::new(None));
    let _held = Seat::take(&desk);
    let mut h = queued_call(&settings, &desk, policy(&line, &[]));
    h.now += Duration::from_secs(3);
    h.call.handle_media_inactive(h.now);
    h.drain();
    assert!(h.outcome().is_some());
    let ends: Vec<_> = h
        .queue_updates()
        .into_iter()
        .filter(|u| matches!(u, QueueUpdate::GaveUp { .. }))
        .collect();
    assert_eq!(ends, vec![QueueUpdate::GaveUp { waited_ms: 3000 }]);
    assert_eq!(line.len(), 0);
}
