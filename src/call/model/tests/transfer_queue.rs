//! A transfer to a route with a queue (a 110 operator sending the citizen to 12345 while its
//! desks are busy), on the fake clock: the transfer waits in the route's line, the agent told
//! 182 Queued, and goes to a desk as it frees up or to the overflow's remote seats with the
//! citizen's number and the linkage; with neither, it fails and the citizen is never dropped.

use super::*;
use crate::routing::desks::Seat;

/// A router whose 12345 route (the hotline desk, `max_calls = 1`) has a queue of `wait_secs`
/// (retry 5 s) overflowing to the remote seats; 110 goes to the police. The police desk, the
/// hotline desk.
fn queued_12345(wait_secs: u64) -> (Arc<CallSettings>, Arc<Peer>, Arc<Peer>) {
    let (settings, police, hotline, _) = queued_12345_line(wait_secs);
    (settings, police, hotline)
}

/// As [`queued_12345`], with 12345's line.
fn queued_12345_line(
    wait_secs: u64,
) -> (
    Arc<CallSettings>,
    Arc<Peer>,
    Arc<Peer>,
    Arc<crate::routing::desks::WaitingLine>,
) {
    let peer = |name: &str, port: u16, platform: &str| {
        Peer::new(
            name,
            SocketAddr::from(([127, 0, 0, 1], port)),
            Some(platform.into()),
            TransportKind::Udp,
        )
    };
    let mut hotline = peer("hotline", 5080, "12345");
    hotline.seats = crate::routing::desks::Seats::new(Some(1));
    let route = |number: &str, to: &str, queue| crate::routing::Route {
        number: crate::routing::NumberPattern::Exact(number.into()),
        peers: vec![to.into()],
        record: true,
        schedule: Default::default(),
        queue,
    };
    let queue = crate::routing::QueuePolicy {
        wait: Duration::from_secs(wait_secs),
        retry: Duration::from_secs(5),
        overflow: vec!["remote".into()],
        line: Arc::new(crate::routing::desks::WaitingLine::new(None)),
    };
    let router = Router::new(
        vec![
            peer("police", 5090, "110"),
            hotline,
            peer("remote", 5085, "12345"),
        ],
        vec![
            route("110", "police", None),
            route("12345", "hotline", Some(queue)),
        ],
    );
    let police = router
        .peer_by_name("police")
        .unwrap_or_else(|| unreachable!());
    let hotline = router
        .peer_by_name("hotline")
        .unwrap_or_else(|| unreachable!());
    let line = router
        .queue_at("12345", 0)
        .map(|q| q.line)
        .unwrap_or_else(|| unreachable!());
    let mut settings = (*settings()).clone();
    settings.router = Arc::new(router);
    (Arc::new(settings), police, hotline, line)
}

/// A citizen's call to 110, answered.
fn answered_at_110(settings: &Arc<CallSettings>, police: &Arc<Peer>) -> Harness {
    let mut h = Harness::build_with(
        Arc::clone(settings),
        invite(OFFER, 70),
        peer("carrier", 5070),
        "110",
        vec![Arc::clone(police)],
    );
    h.answer();
    h
}

/// A citizen's call to 110, answered; the operator REFERs it to 12345.
fn referred_to_12345(settings: &Arc<CallSettings>, police: &Arc<Peer>) -> Harness {
    let mut h = answered_at_110(settings, police);
    h.agent_sends(7, "REFER", 2, "Refer-To: <sip:12345@127.0.0.1>\r\n");
    assert_eq!(statuses(&h.responses(7)), vec![202]);
    h
}

fn linkage_id(h: &Harness) -> String {
    h.linkage_updates()
        .iter()
        .find_map(|u| match u {
            LinkageUpdate::Requested { linkage_id, .. } => Some(linkage_id.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// The hotline is busy: the transfer waits (182 Queued to the operator, the citizen still
/// with it); the desk offered again after the retry answers, and takes the citizen over.
#[test]
fn a_transfer_to_busy_desks_waits_and_the_next_offer_connects() {
    let (settings, police, _) = queued_12345(60);
    let mut h = referred_to_12345(&settings, &police);
    let first = h.last_invite();
    assert_eq!(first.uri.to_string(), "sip:12345@127.0.0.1:5080");
    h.respond_to_invite(486, None);
    let linkage = linkage_id(&h);
    assert_eq!(
        h.queue_updates(),
        vec![QueueUpdate::Queued {
            status: 486,
            linkage_id: Some(linkage.clone())
        }]
    );
    let notified = h.notified();
    assert_eq!(
        notified.iter().map(|n| n.0).collect::<Vec<_>>(),
        vec![100, 182],
        "100 first, then 182 Queued"
    );
    assert_eq!(
        notified[1].1, "active;expires=160",
        "for as long as the wait and the overflow may take"
    );
    assert!(
        !h.linkage_updates()
            .iter()
            .any(|u| matches!(u, LinkageUpdate::Failed { .. })),
        "not failed"
    );
    assert!(
        !h.sent_media(|m| matches!(m, MediaCommand::Announce(Party::A, Some(_)))),
        "the citizen still talks to the operator"
    );
    h.advance(Duration::from_secs(5));
    let again = h.last_invite();
    assert_ne!(again.call_id(), first.call_id(), "a new dialog");
    assert_eq!(again.uri.to_string(), "sip:12345@127.0.0.1:5080");
    assert_eq!(
        again.headers.get("X-Hotline-Linkage"),
        Some(linkage.as_str())
    );
    assert_eq!(
        again.from().and_then(|f| f.uri.user),
        Some("13800138000".into()),
        "the citizen's number"
    );
    h.respond_to_invite(200, Some(ANSWER));
    assert_eq!(h.notified().last().map(|n| n.0), Some(200));
    assert!(matches!(
        h.queue_updates().last(),
        Some(QueueUpdate::Answered { waited_ms: 5000 })
    ));
    assert!(matches!(
        h.linkage_updates().last(),
        Some(LinkageUpdate::Answered { .. })
    ));
    assert!(h.outcome().is_none(), "citizen and 12345 talk");
}

/// The operator leaves while the transfer waits: the citizen hears the queue announcement;
/// the wait over, the remote seats get the INVITE with the citizen's number and the linkage;
/// when they are busy too the transfer fails and the citizen goes back to 110.
#[test]
fn a_waiting_transfer_overflows_then_fails_back_to_the_number_first_called() {
    let (settings, police, _) = queued_12345(20);
    let mut settings = (*settings).clone();
    settings.queue_announcement = Some(crate::media::prompt::Prompt::from_samples(
        vec![1000; 800],
        0,
    ));
    let settings = Arc::new(settings);
    let mut h = referred_to_12345(&settings, &police);
    h.respond_to_invite(486, None);
    h.agent_sends(8, "BYE", 3, "");
    assert!(h.outcome().is_none(), "the citizen stays");
    assert!(h.sent_media(|m| matches!(
        m,
        MediaCommand::Announce(Party::A, Some(Announcement::Prompt(_)))
    )));
    let linkage = linkage_id(&h);
    h.advance(Duration::from_secs(5));
    h.respond_to_invite(486, None);
    h.advance(Duration::from_secs(5));
    h.respond_to_invite(486, None);
    h.advance(Duration::from_secs(5));
    h.respond_to_invite(486, None);
    h.advance(Duration::from_secs(5));
    let overflow = h.last_invite();
    assert_eq!(overflow.uri.to_string(), "sip:12345@127.0.0.1:5085");
    assert_eq!(
        overflow.headers.get("X-Hotline-Linkage"),
        Some(linkage.as_str())
    );
    assert_eq!(
        overflow.from().and_then(|f| f.uri.user),
        Some("13800138000".into())
    );
    assert!(h.queue_updates().iter().any(|u| matches!(
        u,
        QueueUpdate::Overflowed { to_peer, waited_ms: 20_000 } if to_peer == "remote"
    )));
    h.respond_to_invite(486, None);
    assert!(matches!(
        h.queue_updates().last(),
        Some(QueueUpdate::GaveUp { .. })
    ));
    assert!(h
        .linkage_updates()
        .iter()
        .any(|u| matches!(u, LinkageUpdate::Failed { status: 486, .. })));
    assert!(h.outcome().is_none(), "never dropped");
    assert_eq!(
        h.last_invite().uri.to_string(),
        "sip:110@127.0.0.1:5090",
        "back to 110"
    );
}

/// A desk with `max_calls` frees its seat: the waiting transfer is offered it at once.
#[test]
fn a_freed_seat_takes_the_waiting_transfer_at_once() {
    let (settings, police, hotline) = queued_12345(60);
    let held = Seat::take(&hotline);
    let mut h = referred_to_12345(&settings, &police);
    let invites = h.sent(Method::Invite).len();
    assert_eq!(invites, 1, "no INVITE to the full desk");
    assert!(matches!(
        h.queue_updates().first(),
        Some(QueueUpdate::Queued { status: 486, .. })
    ));
    drop(held);
    h.now += Duration::from_secs(2);
    h.call.handle_desks_freed(h.now);
    h.drain();
    assert_eq!(h.sent(Method::Invite).len(), 2);
    assert_eq!(h.last_invite().uri.to_string(), "sip:12345@127.0.0.1:5080");
    assert!(matches!(
        h.queue_updates().last(),
        Some(QueueUpdate::Offered { to_peer, waited_ms: 2000 }) if to_peer == "hotline"
    ));
}

/// The citizen hangs up while its transfer waits: abandoned, the call ends, nothing more
/// goes to the desks.
#[test]
fn the_citizen_leaving_abandons_the_waiting_transfer() {
    let (settings, police, _) = queued_12345(60);
    let mut h = referred_to_12345(&settings, &police);
    h.respond_to_invite(486, None);
    h.advance(Duration::from_secs(3));
    h.caller_sends(9, "BYE", 2, "");
    assert_eq!(h.outcome().map(|o| o.ended_by), Some(EndedBy::Caller));
    assert!(matches!(
        h.queue_updates().last(),
        Some(QueueUpdate::Abandoned { waited_ms: 3000 })
    ));
    let invites = h.sent(Method::Invite).len();
    h.advance(Duration::from_secs(5));
    assert_eq!(h.sent(Method::Invite).len(), invites, "no more offers");
}

/// A desk refusing a waiting transfer for good (404) ends the wait with it: the transfer
/// fails, the citizen (its agent gone) goes back to 110, and nothing of the wait is left to
/// hang it up later.
#[test]
fn a_final_refusal_ends_the_wait_and_the_fallback_stands() {
    let (settings, police, _, line) = queued_12345_line(20);
    let mut h = referred_to_12345(&settings, &police);
    h.respond_to_invite(486, None);
    h.agent_sends(8, "BYE", 3, "");
    assert_eq!(line.len(), 1);
    h.advance(Duration::from_secs(5));
    h.respond_to_invite(404, None);
    assert_eq!(line.len(), 0, "out of the line");
    assert!(matches!(
        h.queue_updates().last(),
        Some(QueueUpdate::GaveUp { waited_ms: 5000 })
    ));
    assert_eq!(h.last_invite().uri.to_string(), "sip:110@127.0.0.1:5090");
    h.respond_to_invite(180, None);
    // Past where the wait would have ended.
    h.advance(Duration::from_secs(20));
    assert!(h.outcome().is_none(), "the citizen waits for 110");
    assert_eq!(h.last_invite().uri.to_string(), "sip:110@127.0.0.1:5090");
    h.respond_to_invite(200, Some(ANSWER));
    assert!(h.outcome().is_none(), "citizen and 110 talk");
}

/// A conference guest from a route whose desks are busy waits in its queue; the next offer
/// (a new dialog, the citizen's number and the linkage) connects and joins it.
#[test]
fn a_conference_guest_waits_in_the_queue_and_joins_on_the_next_offer() {
    let (settings, police, _) = queued_12345(60);
    let mut h = answered_at_110(&settings, &police);
    h.invite_guest("12345");
    let first = h.last_invite();
    h.respond_to_invite(486, None);
    assert!(matches!(
        h.queue_updates().last(),
        Some(QueueUpdate::Queued {
            status: 486,
            linkage_id: Some(_)
        })
    ));
    assert!(
        !h.linkage_updates()
            .iter()
            .any(|u| matches!(u, LinkageUpdate::Failed { .. })),
        "waiting, not failed"
    );
    h.advance(Duration::from_secs(5));
    let again = h.last_invite();
    assert_ne!(again.call_id(), first.call_id(), "a new dialog");
    assert_eq!(again.uri.to_string(), "sip:12345@127.0.0.1:5080");
    assert_eq!(
        again.headers.get("X-Hotline-Linkage"),
        first.headers.get("X-Hotline-Linkage")
    );
    h.respond_to_invite(200, Some(ANSWER));
    assert!(matches!(
        h.queue_updates().last(),
        Some(QueueUpdate::Answered { waited_ms: 5000 })
    ));
    assert!(h.sent_media(|m| matches!(m, MediaCommand::Join(_))));
    assert!(h.outcome().is_none());
}

/// A guest waiting for a full desk (nothing sent to it) when the citizen hangs up: the wait
/// is abandoned and the guest's linkage ends (487), so its record settles.
#[test]
fn a_guest_waiting_with_nothing_sent_ends_its_linkage_with_the_call() {
    let (settings, police, hotline) = queued_12345(60);
    let _held = Seat::take(&hotline);
    let mut h = answered_at_110(&settings, &police);
    h.invite_guest("12345");
    assert_eq!(h.sent(Method::Invite).len(), 1, "nothing to the full desk");
    assert!(matches!(
        h.queue_updates().last(),
        Some(QueueUpdate::Queued { status: 486, .. })
    ));
    h.caller_sends(9, "BYE", 2, "");
    assert_eq!(h.outcome().map(|o| o.ended_by), Some(EndedBy::Caller));
    assert!(matches!(
        h.queue_updates().last(),
        Some(QueueUpdate::Abandoned { .. })
    ));
    assert!(h
        .linkage_updates()
        .iter()
        .any(|u| matches!(u, LinkageUpdate::Failed { status: 487, .. })));
}
