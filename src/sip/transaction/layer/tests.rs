//! The transaction layer on a fake clock: every test feeds messages and instants, then reads
//! what the layer would send and hand up. Owners are numbers.

use super::*;
use crate::routing::credentials::Algorithm;
use crate::sip::message::{self, Message};
use crate::sip::transaction::matching;

const PEER: &str = "192.0.2.10:5060";
const CALL: u32 = 7;
const DIALOG_OWNER: u32 = 9;

fn peer() -> SocketAddr {
    PEER.parse().unwrap()
}

fn ms(t0: Instant, n: u64) -> Instant {
    t0 + Duration::from_millis(n)
}

fn arrival(at: Instant) -> Arrival {
    Arrival {
        source: peer(),
        flow: Flow::Udp(crate::routing::InterfaceId::DEFAULT),
        received: at,
    }
}

/// A request from the peer; `to_tag` puts it in a dialog.
fn request(method: &str, branch: &str, cseq: u32, to_tag: Option<&str>, extra: &str) -> Request {
    let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    let text = format!(
        "{method} sip:12345@198.51.100.1 SIP/2.0\r\nVia: SIP/2.0/UDP {PEER};branch={branch}\r\n\
         From: <sip:13800000000@192.0.2.10>;tag=caller\r\nTo: <sip:12345@198.51.100.1>{to_tag}\r\n\
         Call-ID: layer-test@192.0.2.10\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n\
         {extra}Content-Length: 0\r\n\r\n"
    );
    match message::parse(text.as_bytes()) {
        Ok(Message::Request(request)) => request,
        other => panic!("{other:?}"),
    }
}

/// `request` in another call.
fn in_call(mut request: Request, call_id: &str) -> Request {
    request.headers.set("Call-ID", call_id);
    request
}

fn invite(branch: &str) -> Request {
    request("INVITE", branch, 1, None, "")
}

fn layer(t0: Instant) -> (TransactionLayer<u32>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let layer = TransactionLayer::new(t0, TimerConfig::default(), Arc::clone(&metrics));
    (layer, metrics)
}

fn no_dialogs() -> HashMap<DialogKey, u32> {
    HashMap::new()
}

/// The status lines of everything the layer would send now.
fn sent(layer: &mut TransactionLayer<u32>) -> Vec<String> {
    std::iter::from_fn(|| layer.poll_transmit())
        .map(|t| {
            let text = String::from_utf8_lossy(&t.bytes).into_owned();
            text.lines().next().unwrap_or_default().to_string()
        })
        .collect()
}

fn events(layer: &mut TransactionLayer<u32>) -> Vec<LayerEvent<u32>> {
    std::iter::from_fn(|| layer.poll_event()).collect()
}

/// A new INVITE, taken by `CALL`; its server transaction id.
fn accepted_invite(layer: &mut TransactionLayer<u32>, now: Instant) -> ServerTransactionId {
    layer.handle_request(now, invite("z9hG4bKinv"), arrival(now), None, &no_dialogs());
    assert_eq!(sent(layer), ["SIP/2.0 100 Trying"]);
    let server = match events(layer).as_slice() {
        [LayerEvent::NewRequest { server, .. }] => *server,
        other => panic!("{other:?}"),
    };
    layer.accept(server, CALL);
    server
}

fn respond(
    layer: &mut TransactionLayer<u32>,
    now: Instant,
    server: ServerTransactionId,
    status: u16,
) {
    let response = Response::for_request(&invite("z9hG4bKinv"), status, Some("gw"));
    let bytes = response.to_bytes();
    layer.send_response(now, server, &response, bytes);
}

#[test]
fn a_retransmitted_invite_gets_the_last_provisional_again_and_reaches_the_call_once() {
    let t0 = Instant::now();
    let (mut layer, metrics) = layer(t0);
    accepted_invite(&mut layer, t0);
    layer.handle_request(
        ms(t0, 500),
        invite("z9hG4bKinv"),
        arrival(ms(t0, 500)),
        None,
        &no_dialogs(),
    );
    assert_eq!(sent(&mut layer), ["SIP/2.0 100 Trying"]);
    assert!(events(&mut layer).is_empty(), "absorbed by the transaction");
    assert_eq!(metrics.counter(Counter::SipRetransmissionsReceived), 1);
    assert_eq!(layer.len(), (0, 1));
}

#[test]
fn cancel_before_the_final_response_is_answered_200_and_reaches_the_call() {
    let t0 = Instant::now();
    let (mut layer, _) = layer(t0);
    let server = accepted_invite(&mut layer, t0);
    let cancel = request("CANCEL", "z9hG4bKinv", 1, None, "");
    layer.handle_request(
        ms(t0, 100),
        cancel,
        arrival(ms(t0, 100)),
        None,
        &no_dialogs(),
    );
    assert_eq!(sent(&mut layer), ["SIP/2.0 200 OK"]);
    match events(&mut layer).as_slice() {
        [LayerEvent::Deliver {
            owner: CALL,
            event: SipEvent::Cancelled { server: cancelled },
        }] => assert_eq!(*cancelled, server),
        other => panic!("{other:?}"),
    }
}

#[test]
fn cancel_after_the_final_response_is_answered_200_and_the_final_response_stands() {
    let t0 = Instant::now();
    let (mut layer, _) = layer(t0);
    let server = accepted_invite(&mut layer, t0);
    respond(&mut layer, ms(t0, 10), server, 486);
    assert_eq!(sent(&mut layer), ["SIP/2.0 486 Busy Here"]);
    let cancel = request("CANCEL", "z9hG4bKinv", 1, None, "");
    layer.handle_request(ms(t0, 20), cancel, arrival(ms(t0, 20)), None, &no_dialogs());
    assert_eq!(
        sent(&mut layer),
        ["SIP/2.0 200 OK"],
        "§9.2: the CANCEL matched"
    );
    // The call is told, as before the final response; it has nothing left to cancel.
    assert!(matches!(
        events(&mut layer).as_slice(),
        [LayerEvent::Deliver {
            owner: CALL,
            event: SipEvent::Cancelled { .. }
        }]
    ));
    // The 486 is still retransmitted until its ACK (Timer G), not replaced by a 487.
    layer.handle_timeout(ms(t0, 510));
    assert_eq!(sent(&mut layer), ["SIP/2.0 486 Busy Here"]);
}

#[test]
fn cancel_for_no_transaction_is_answered_481() {
    let t0 = Instant::now();
    let (mut layer, _) = layer(t0);
    let cancel = request("CANCEL", "z9hG4bKnone", 1, None, "");
    layer.handle_request(t0, cancel, arrival(t0), None, &no_dialogs());
    assert_eq!(
        sent(&mut layer),
        ["SIP/2.0 481 Call/Transaction Does Not Exist"]
    );
    assert!(events(&mut layer).is_empty());
}

#[test]
fn the_same_request_by_a_second_path_is_merged_482() {
    let t0 = Instant::now();
    let (mut layer, _) = layer(t0);
    accepted_invite(&mut layer, t0);
    // §8.2.2.2: same From tag, Call-ID and CSeq, another branch (a forking proxy's copy).
    layer.handle_request(
        ms(t0, 5),
        invite("z9hG4bKother"),
        arrival(ms(t0, 5)),
        None,
        &no_dialogs(),
    );
    assert_eq!(sent(&mut layer), ["SIP/2.0 482 Loop Detected"]);
    assert!(events(&mut layer).is_empty());
    assert_eq!(layer.len(), (0, 1), "no transaction for the copy");
}

#[test]
fn a_2xx_is_retransmitted_until_its_ack_which_reaches_the_call_once() {
    let t0 = Instant::now();
    let (mut layer, _) = layer(t0);
    let server = accepted_invite(&mut layer, t0);
    respond(&mut layer, t0, server, 200);
    assert_eq!(sent(&mut layer), ["SIP/2.0 200 OK"]);
    // §13.3.1.4: T1, then 2*T1.
    layer.handle_timeout(ms(t0, 500));
    assert_eq!(sent(&mut layer), ["SIP/2.0 200 OK"]);
    layer.handle_timeout(ms(t0, 1500));
    assert_eq!(sent(&mut layer), ["SIP/2.0 200 OK"]);
    let ack = request("ACK", "z9hG4bKack", 1, Some("gw"), "");
    // The dialog is known too: an ACK the transaction did not take would fall through to it.
    let dialogs = HashMap::from([(matching::dialog_of_request(&ack).unwrap(), DIALOG_OWNER)]);
    layer.handle_request(
        ms(t0, 1600),
        ack.clone(),
        arrival(ms(t0, 1600)),
        None,
        &dialogs,
    );
    assert!(matches!(
        events(&mut layer).as_slice(),
        [LayerEvent::Deliver {
            owner: CALL,
            event: SipEvent::Ack { .. }
        }]
    ));
    layer.handle_request(ms(t0, 1700), ack, arrival(ms(t0, 1700)), None, &dialogs);
    assert!(
        events(&mut layer).is_empty(),
        "the ACK's retransmission is absorbed"
    );
    layer.handle_timeout(ms(t0, 3500));
    assert!(sent(&mut layer).is_empty(), "no 2xx after the ACK");
}

#[test]
fn a_2xx_never_acknowledged_times_out_to_the_call_after_64_t1() {
    let t0 = Instant::now();
    let (mut layer, metrics) = layer(t0);
    let server = accepted_invite(&mut layer, t0);
    respond(&mut layer, t0, server, 200);
    let _ = sent(&mut layer);
    let mut retransmissions = 0;
    while let Some(at) = layer.poll_timeout().filter(|at| *at < ms(t0, 32_000)) {
        layer.handle_timeout(at);
        retransmissions += sent(&mut layer).len();
    }
    assert!(events(&mut layer).is_empty(), "still waiting before 64*T1");
    // T1 doubling to T2 over 32 s: 0.5, 1.5, 3.5, 7.5, then every 4 s to 31.5.
    assert_eq!(retransmissions, 10);
    layer.handle_timeout(ms(t0, 32_000));
    match events(&mut layer).as_slice() {
        [LayerEvent::Deliver {
            owner: CALL,
            event: SipEvent::AckTimeout { server: timed_out },
        }] => assert_eq!(*timed_out, server),
        other => panic!("{other:?}"),
    }
    assert_eq!(metrics.counter(Counter::TransactionTimeouts), 1);
}

#[test]
fn a_request_in_an_unknown_dialog_gets_481_without_a_transaction() {
    let t0 = Instant::now();
    let (mut layer, metrics) = layer(t0);
    let bye = request("BYE", "z9hG4bKbye", 2, Some("made-up"), "");
    layer.handle_request(t0, bye, arrival(t0), None, &no_dialogs());
    assert_eq!(
        sent(&mut layer),
        ["SIP/2.0 481 Call/Transaction Does Not Exist"]
    );
    assert_eq!(layer.len(), (0, 0));
    assert_eq!(metrics.counter(Counter::SipUnknownDialog), 1);
}

#[test]
fn a_request_in_a_known_dialog_goes_to_the_dialogs_owner() {
    let t0 = Instant::now();
    let (mut layer, _) = layer(t0);
    let bye = request("BYE", "z9hG4bKbye", 2, Some("gw"), "");
    let dialogs = HashMap::from([(matching::dialog_of_request(&bye).unwrap(), DIALOG_OWNER)]);
    layer.handle_request(t0, bye, arrival(t0), None, &dialogs);
    assert!(sent(&mut layer).is_empty());
    assert!(matches!(
        events(&mut layer).as_slice(),
        [LayerEvent::Deliver {
            owner: DIALOG_OWNER,
            event: SipEvent::Request { .. }
        }]
    ));
}

#[test]
fn an_owner_with_a_full_inbox_answers_503() {
    let t0 = Instant::now();
    let (mut layer, metrics) = layer(t0);
    let info = request("INFO", "z9hG4bKinfo", 2, Some("gw"), "");
    let dialogs = HashMap::from([(matching::dialog_of_request(&info).unwrap(), DIALOG_OWNER)]);
    layer.handle_request(t0, info, arrival(t0), None, &dialogs);
    let Some(LayerEvent::Deliver {
        event: SipEvent::Request {
            server, request, ..
        },
        ..
    }) = layer.poll_event()
    else {
        panic!("not delivered");
    };
    layer.refuse_busy(t0, server, &request);
    assert_eq!(sent(&mut layer), ["SIP/2.0 503 Service Unavailable"]);
    assert_eq!(metrics.counter(Counter::SipRefusedTransactions), 1);
}

#[test]
fn a_required_extension_we_lack_gets_420() {
    let t0 = Instant::now();
    let (layer, _) = layer(t0);
    let mut layer = layer.with_supported(&["timer"]);
    let invite = request("INVITE", "z9hG4bKreq", 1, None, "Require: 100rel\r\n");
    layer.handle_request(t0, invite, arrival(t0), None, &no_dialogs());
    assert_eq!(sent(&mut layer), ["SIP/2.0 420 Bad Extension"]);
    assert!(events(&mut layer).is_empty());
}

#[test]
fn beyond_the_transaction_cap_new_calls_get_503_and_dialogs_go_on() {
    let t0 = Instant::now();
    let (layer, metrics) = layer(t0);
    let mut layer = layer.with_max_transactions(1);
    accepted_invite(&mut layer, t0);
    let second = in_call(
        request("INVITE", "z9hG4bKsecond", 1, None, ""),
        "second@test",
    );
    layer.handle_request(t0, second, arrival(t0), None, &no_dialogs());
    let refused = sent(&mut layer);
    assert_eq!(refused, ["SIP/2.0 503 Service Unavailable"]);
    assert_eq!(metrics.counter(Counter::SipRefusedTransactions), 1);
    let bye = request("BYE", "z9hG4bKbye", 2, Some("gw"), "");
    let dialogs = HashMap::from([(matching::dialog_of_request(&bye).unwrap(), DIALOG_OWNER)]);
    layer.handle_request(t0, bye, arrival(t0), None, &dialogs);
    assert_eq!(events(&mut layer).len(), 1, "the BYE reaches its call");
}

#[test]
fn under_a_standing_queue_new_invites_are_shed_statelessly() {
    let t0 = Instant::now();
    let (layer, metrics) = layer(t0);
    let mut layer = layer.with_overload_delay(Duration::from_millis(50));
    // Every message waited 80 ms for 200 ms: the queue stands (RFC 8289 §3).
    for (n, at) in [0, 100, 200].into_iter().enumerate() {
        let now = ms(t0, at + 80);
        let options = in_call(
            request("OPTIONS", &format!("z9hG4bKo{n}"), n as u32 + 1, None, ""),
            &format!("options{n}@test"),
        );
        layer.handle_request(now, options, arrival(ms(t0, at)), None, &no_dialogs());
    }
    let _ = (sent(&mut layer), events(&mut layer));
    let invite = invite("z9hG4bKlate");
    layer.handle_request(
        ms(t0, 380),
        invite,
        arrival(ms(t0, 300)),
        None,
        &no_dialogs(),
    );
    let shed = sent(&mut layer);
    assert_eq!(shed, ["SIP/2.0 503 Service Unavailable"]);
    assert!(events(&mut layer).is_empty());
    assert_eq!(layer.len(), (0, 3), "no transaction for the shed INVITE");
    assert_eq!(metrics.counter(Counter::SipShedOverload), 1);
}

/// A reserved platform's call (the lane kept for 110) is never shed: it goes on to admission.
#[test]
fn under_a_standing_queue_a_priority_invite_is_not_shed() {
    struct To110;
    impl crate::sip::overload::Priority for To110 {
        fn is_priority(&self, request: &Request, _source: SocketAddr) -> bool {
            request.call_id() == "to110@test"
        }
    }
    let t0 = Instant::now();
    let (layer, metrics) = layer(t0);
    let mut layer = layer
        .with_overload_delay(Duration::from_millis(50))
        .with_priority(Arc::new(To110));
    for (n, at) in [0, 100, 200].into_iter().enumerate() {
        let now = ms(t0, at + 80);
        let options = in_call(
            request("OPTIONS", &format!("z9hG4bKo{n}"), n as u32 + 1, None, ""),
            &format!("options{n}@test"),
        );
        layer.handle_request(now, options, arrival(ms(t0, at)), None, &no_dialogs());
    }
    let _ = (sent(&mut layer), events(&mut layer));
    let late = |branch: &str, call_id: &str| in_call(invite(branch), call_id);
    layer.handle_request(
        ms(t0, 380),
        late("z9hG4bKa", "to12345@test"),
        arrival(ms(t0, 300)),
        None,
        &no_dialogs(),
    );
    layer.handle_request(
        ms(t0, 381),
        late("z9hG4bKb", "to110@test"),
        arrival(ms(t0, 300)),
        None,
        &no_dialogs(),
    );
    let answers = sent(&mut layer);
    assert_eq!(
        answers.iter().filter(|a| a.contains("503")).count(),
        1,
        "{answers:?}"
    );
    assert_eq!(events(&mut layer).len(), 1, "the call to 110 goes on");
    assert_eq!(metrics.counter(Counter::SipShedOverload), 1);
}

#[test]
fn a_peer_with_credentials_is_challenged_before_its_call_is_handed_up() {
    let t0 = Instant::now();
    let (layer, metrics) = layer(t0);
    let digest = Digest::new("hotline", [7; 32], Duration::from_secs(300), t0);
    let mut layer = layer.with_auth(digest);
    let credentials = Credentials {
        username: "pbx".into(),
        password: "secret".into(),
        algorithms: vec![Algorithm::Sha256],
    };
    let claimant = Claimant {
        peer: "pbx",
        credentials: &credentials,
    };
    layer.handle_request(
        t0,
        invite("z9hG4bKauth"),
        arrival(t0),
        Some(claimant),
        &no_dialogs(),
    );
    assert_eq!(sent(&mut layer), ["SIP/2.0 401 Unauthorized"]);
    assert!(events(&mut layer).is_empty(), "no call before the proof");
    assert_eq!(metrics.counter(Counter::SipAuthChallenges), 1);
}

/// An INVITE the gateway sends to `target`, owned by `CALL`.
fn outgoing_invite(layer: &mut TransactionLayer<u32>, now: Instant, target: Target) -> Request {
    let invite = invite("z9hG4bKout");
    let bytes = invite.to_bytes();
    layer.send_request(now, invite.clone(), bytes, target, CALL);
    invite
}

#[test]
fn an_unanswered_invite_is_retransmitted_then_times_out_to_its_owner() {
    let t0 = Instant::now();
    let (mut layer, metrics) = layer(t0);
    outgoing_invite(
        &mut layer,
        t0,
        Target::Udp(crate::routing::InterfaceId::DEFAULT, peer()),
    );
    assert_eq!(sent(&mut layer).len(), 1);
    let mut retransmissions = 0;
    while let Some(at) = layer.poll_timeout().filter(|at| *at < ms(t0, 32_000)) {
        layer.handle_timeout(at);
        retransmissions += sent(&mut layer).len();
    }
    // Timer A: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s.
    assert_eq!(retransmissions, 6);
    assert_eq!(metrics.counter(Counter::SipRetransmissions), 6);
    layer.handle_timeout(ms(t0, 32_000));
    assert!(matches!(
        events(&mut layer).as_slice(),
        [LayerEvent::Deliver {
            owner: CALL,
            event: SipEvent::Timeout { .. }
        }]
    ));
    assert_eq!(layer.len(), (0, 0));
}

#[test]
fn a_non_2xx_final_is_acknowledged_by_the_layer_and_its_retransmission_absorbed() {
    let t0 = Instant::now();
    let (mut layer, _) = layer(t0);
    let invite = outgoing_invite(
        &mut layer,
        t0,
        Target::Udp(crate::routing::InterfaceId::DEFAULT, peer()),
    );
    let _ = sent(&mut layer);
    let busy = Response::for_request(&invite, 486, Some("callee"));
    layer.handle_response(ms(t0, 50), ms(t0, 50), busy.clone(), &no_dialogs());
    assert_eq!(events(&mut layer).len(), 1, "the 486 goes to the call");
    let ack = sent(&mut layer);
    assert_eq!(ack.len(), 1);
    assert!(ack[0].starts_with("ACK "), "{ack:?}");
    layer.handle_response(ms(t0, 60), ms(t0, 60), busy, &no_dialogs());
    assert!(
        events(&mut layer).is_empty(),
        "the retransmission is absorbed"
    );
    assert_eq!(sent(&mut layer).len(), 1, "and acknowledged again");
}

#[test]
fn a_2xx_retransmitted_after_the_transaction_ended_goes_to_the_dialog() {
    let t0 = Instant::now();
    let (mut layer, _) = layer(t0);
    let invite = outgoing_invite(
        &mut layer,
        t0,
        Target::Udp(crate::routing::InterfaceId::DEFAULT, peer()),
    );
    let ok = Response::for_request(&invite, 200, Some("callee"));
    let dialogs = HashMap::from([(matching::dialog_of_response(&ok), DIALOG_OWNER)]);
    layer.handle_response(ms(t0, 50), ms(t0, 50), ok.clone(), &dialogs);
    assert!(matches!(
        events(&mut layer).as_slice(),
        [LayerEvent::Deliver { owner: CALL, .. }]
    ));
    // RFC 6026: the client stays Accepted for 64*T1, absorbing retransmissions for the call.
    let end = ms(t0, 50 + 32_000);
    layer.handle_timeout(end);
    assert_eq!(layer.len(), (0, 0));
    layer.handle_response(end, end, ok, &dialogs);
    assert!(matches!(
        events(&mut layer).as_slice(),
        [LayerEvent::Deliver {
            owner: DIALOG_OWNER,
            event: SipEvent::Response { .. }
        }]
    ));
}

#[test]
fn a_lost_connection_fails_its_requests_at_once_with_503() {
    let t0 = Instant::now();
    let (mut layer, metrics) = layer(t0);
    outgoing_invite(
        &mut layer,
        t0,
        Target::Tcp(crate::routing::InterfaceId::DEFAULT, peer()),
    );
    let _ = sent(&mut layer);
    assert!(layer.has_reliable_clients(peer()));
    layer.handle_connection_lost(peer(), false);
    match events(&mut layer).as_slice() {
        [LayerEvent::Deliver {
            owner: CALL,
            event: SipEvent::Response { response, .. },
        }] => assert_eq!(response.status, 503),
        other => panic!("{other:?}"),
    }
    assert_eq!(layer.len(), (0, 0));
    assert!(!layer.has_reliable_clients(peer()));
    assert_eq!(metrics.counter(Counter::SipTransportErrors), 1);
}

/// After a peak, a table keeps only about twice what it holds; one at least a quarter
/// full is left alone.
#[test]
fn a_sparse_table_gives_its_room_back() {
    let mut table: HashMap<u32, [u8; 600]> = (0..20_000).map(|n| (n, [0; 600])).collect();
    let peak = table.capacity();
    table.retain(|n, _| *n < 10);
    shrink_sparse(&mut table);
    assert!(table.capacity() < 64, "{} of {peak}", table.capacity());
    assert_eq!(table.len(), 10);
    let mut busy: HashMap<u32, u8> = (0..1000).map(|n| (n, 0)).collect();
    busy.retain(|n, _| *n < 500);
    let capacity = busy.capacity();
    shrink_sparse(&mut busy);
    assert_eq!(busy.capacity(), capacity);
}
