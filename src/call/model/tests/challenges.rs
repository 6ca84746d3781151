//! Challenges inside dialogs (RFC 3261 §22.2, §8.1.3.5; RFC 7616 §3.3), on the fake clock: a
//! peer with outbound credentials that challenges our BYE, session refresh (re-INVITE or
//! UPDATE), INFO gets the request again with its answer in the dialog's next CSeq, once (a
//! stale nonce once more); a peer without credentials fails the request as before.

use super::*;
use crate::routing::credentials::Algorithm;

const MD5_QOP: &str = "Digest realm=\"desk\", nonce=\"n1\", algorithm=MD5, qop=\"auth\"";

/// The desk's challenge `value` (401 WWW-Authenticate or 407 Proxy-Authenticate) to `request`.
fn challenge_in_dialog(h: &mut Harness, request: &Request, status: u16, value: &str) {
    let header = if status == 407 {
        "Proxy-Authenticate"
    } else {
        "WWW-Authenticate"
    };
    respond_to(h, request, status, &[(header, value)]);
}

fn cseq(request: &Request) -> u32 {
    request.cseq().map_or(0, |c| c.sequence)
}

/// The requests of `method` sent in leg B's dialog (the desk's).
fn to_desk(h: &Harness, method: Method) -> Vec<Request> {
    let b_call_id = h.call.legs[Leg::B].call_id.clone();
    h.sent(method)
        .into_iter()
        .map(|(r, _)| r)
        .filter(|r| r.call_id() == b_call_id)
        .collect()
}

fn last_to_desk(h: &Harness, method: Method) -> Request {
    match to_desk(h, method.clone()).pop() {
        Some(r) => r,
        None => panic!("no {} to the desk", method.as_str()),
    }
}

/// A citizen's call answered by the desk (the contract's hotline, with or without outbound
/// credentials).
fn answered_by_desk(outbound: bool) -> Harness {
    let mut h = Harness::build(
        invite(OFFER, 70),
        peer("carrier", 5070),
        "12345",
        vec![challenging_hotline(outbound)],
    );
    h.answer();
    assert!(h.call.is_answered());
    h
}

/// The citizen hangs up: the gateway's BYE to the desk.
fn citizen_hangs_up(h: &mut Harness) -> Request {
    h.caller_sends(2, "BYE", 2, "");
    last_to_desk(h, Method::Bye)
}

/// The answer the gateway must send for `method` to a challenge without qop (RFC 2617
/// §3.2.2.1, MD5): H(HA1:nonce:HA2) with the desk's credentials.
fn md5_answer(method: &str, uri: &str, nonce: &str) -> String {
    let ha1 = Algorithm::Md5.hash("gw:desk:secret-secret");
    let ha2 = Algorithm::Md5.hash(&format!("{method}:{uri}"));
    Algorithm::Md5.hash(&format!("{ha1}:{nonce}:{ha2}"))
}

#[test]
fn a_bye_challenged_407_is_sent_again_with_credentials_and_its_200_ends_the_call() {
    let mut h = answered_by_desk(true);
    let first = citizen_hangs_up(&mut h);
    assert_eq!(first.headers.get("Proxy-Authorization"), None);
    challenge_in_dialog(
        &mut h,
        &first,
        407,
        "Digest realm=\"desk\", nonce=\"n-bye\", algorithm=MD5",
    );
    let byes = to_desk(&h, Method::Bye);
    assert_eq!(byes.len(), 2, "the BYE once more");
    let second = &byes[1];
    assert_ne!(branch_of(second), branch_of(&first), "a new transaction");
    assert_eq!(cseq(second), cseq(&first) + 1);
    assert_eq!(
        second.headers.get("CSeq"),
        Some(&*format!("{} BYE", cseq(second)))
    );
    for header in ["Call-ID", "From", "To"] {
        assert_eq!(
            second.headers.get(header),
            first.headers.get(header),
            "{header}"
        );
    }
    assert_eq!(second.uri, first.uri);
    let answer = second
        .headers
        .get("Proxy-Authorization")
        .unwrap_or_default();
    let expected = md5_answer("BYE", &first.uri.to_string(), "n-bye");
    assert!(
        answer.starts_with("Digest username=\"gw\", realm=\"desk\", nonce=\"n-bye\"")
            && answer.contains(&format!("response=\"{expected}\"")),
        "{answer}"
    );
    assert_eq!(second.headers.get("Authorization"), None);
    // The call waits for the answer to the BYE sent again, then finishes.
    assert!(!h.finished());
    respond_to(&mut h, second, 200, &[]);
    assert!(h.finished());
    let outcome = h.outcome().unwrap_or_else(|| panic!("no outcome"));
    assert_eq!(
        (outcome.ended_by, outcome.answered),
        (EndedBy::Caller, true)
    );
}

#[test]
fn a_bye_challenged_twice_is_not_sent_a_third_time_and_the_call_still_ends() {
    let mut h = answered_by_desk(true);
    let first = citizen_hangs_up(&mut h);
    challenge_in_dialog(&mut h, &first, 407, MD5_QOP);
    let second = last_to_desk(&h, Method::Bye);
    // Not stale: the credentials are wrong. No loop.
    challenge_in_dialog(
        &mut h,
        &second,
        407,
        "Digest realm=\"desk\", nonce=\"n2\", algorithm=MD5, qop=\"auth\"",
    );
    assert_eq!(to_desk(&h, Method::Bye).len(), 2);
    assert!(h.finished(), "the failed BYE ends the wait");
    assert_eq!(h.outcome().map(|o| o.ended_by), Some(EndedBy::Caller));
}

#[test]
fn a_stale_second_challenge_to_a_bye_is_answered_once_more() {
    let mut h = answered_by_desk(true);
    let first = citizen_hangs_up(&mut h);
    challenge_in_dialog(&mut h, &first, 401, MD5_QOP);
    let second = last_to_desk(&h, Method::Bye);
    assert!(second
        .headers
        .get("Authorization")
        .is_some_and(|a| a.contains("nonce=\"n1\"") && a.contains("nc=00000001")));
    challenge_in_dialog(
        &mut h,
        &second,
        401,
        "Digest realm=\"desk\", nonce=\"n2\", algorithm=SHA-256, qop=\"auth\", stale=true",
    );
    let third = last_to_desk(&h, Method::Bye);
    assert_eq!(cseq(&third), cseq(&first) + 2);
    assert_eq!(third.headers.get_all("Authorization").count(), 1);
    assert!(third
        .headers
        .get("Authorization")
        .is_some_and(|a| a.contains("nonce=\"n2\"")
            && a.contains("algorithm=SHA-256")
            && a.contains("nc=00000001")));
    // A third challenge, stale or not, is a failure.
    challenge_in_dialog(
        &mut h,
        &third,
        401,
        "Digest realm=\"desk\", nonce=\"n3\", algorithm=MD5, qop=\"auth\", stale=true",
    );
    assert_eq!(to_desk(&h, Method::Bye).len(), 3);
    assert!(h.finished());
}

/// RFC 7616 §3.4: the desk challenges the INVITE and then the BYE with the same nonce: the
/// BYE's answer counts on from the INVITE's (nc 2).
#[test]
fn the_nonce_count_goes_on_across_the_requests_of_a_call() {
    let mut h = Harness::build(
        invite(OFFER, 70),
        peer("carrier", 5070),
        "12345",
        vec![challenging_hotline(true)],
    );
    let first = h.last_invite();
    challenge(&mut h, &first, 407, MD5_QOP);
    assert!(h
        .last_invite()
        .headers
        .get("Proxy-Authorization")
        .is_some_and(|a| a.contains("nc=00000001")));
    h.answer();
    let bye = citizen_hangs_up(&mut h);
    assert_eq!(
        cseq(&bye),
        3,
        "the dialog counts on from the INVITE's CSeq 2"
    );
    challenge_in_dialog(&mut h, &bye, 407, MD5_QOP);
    let again = last_to_desk(&h, Method::Bye);
    assert_eq!(cseq(&again), 4);
    assert!(again
        .headers
        .get("Proxy-Authorization")
        .is_some_and(|a| a.contains("nonce=\"n1\"") && a.contains("nc=00000002")));
    respond_to(&mut h, &again, 200, &[]);
    assert!(h.finished());
}

/// The gateway shuts down: its BYE to the desk is challenged and answered, and the answer is
/// never answered: the cleanup timer ends the call all the same.
#[test]
fn a_challenged_bye_at_shutdown_is_bounded_by_the_cleanup_timer() {
    let mut h = answered_by_desk(true);
    h.call.handle_shutdown(h.now);
    h.drain();
    let first = last_to_desk(&h, Method::Bye);
    challenge_in_dialog(&mut h, &first, 407, MD5_QOP);
    let second = last_to_desk(&h, Method::Bye);
    assert!(second.headers.get("Proxy-Authorization").is_some());
    // The caller's BYE is answered; the desk never answers again.
    if let Some((to_caller, _)) = h
        .sent(Method::Bye)
        .into_iter()
        .find(|(r, _)| r.call_id() == "a-leg@127.0.0.1")
    {
        respond_to(&mut h, &to_caller, 200, &[]);
    }
    assert!(!h.finished());
    h.advance(Duration::from_secs(31));
    assert!(!h.finished());
    h.advance(Duration::from_secs(1));
    assert!(
        h.finished(),
        "no BYE keeps the call past the cleanup timeout"
    );
    assert_eq!(
        h.outcome().map(|o| (o.ended_by, o.reason)),
        Some((EndedBy::Gateway, "gateway shutdown".to_string()))
    );
}

#[test]
fn a_challenge_to_a_bye_from_a_peer_without_credentials_fails_it_as_before() {
    let mut h = answered_by_desk(false);
    let first = citizen_hangs_up(&mut h);
    challenge_in_dialog(&mut h, &first, 407, MD5_QOP);
    assert_eq!(to_desk(&h, Method::Bye).len(), 1);
    assert!(h.finished());
}

/// A call with session timers (the gateway refreshes at half of 120 s) to the desk, answered
/// with `allow` (UPDATE in it or not).
fn timed_call_to_desk(outbound: bool, allow: &str) -> Harness {
    let mut settings = (*settings()).clone();
    settings.session_timers = Some(crate::sip::session_timer::SessionTimerSettings {
        session_expires: Duration::from_secs(120),
        min_se: Duration::from_secs(90),
    });
    let mut h = Harness::build_with(
        Arc::new(settings),
        invite(OFFER, 70),
        peer("carrier", 5070),
        "12345",
        vec![challenging_hotline(outbound)],
    );
    answer_with(
        &mut h,
        &[("Allow", allow), ("Session-Expires", "120;refresher=uac")],
    );
    h.caller_acks(1, "");
    h
}

/// Half the session on: the refreshes go out; the caller's is answered at once.
fn refreshes_due(h: &mut Harness) {
    h.advance(Duration::from_secs(60));
    let to_a = refresh_to(h, Leg::A);
    respond_to(h, &to_a, 200, &[("Session-Expires", "120;refresher=uac")]);
}

#[test]
fn a_refresh_reinvite_challenged_401_is_sent_again_and_the_session_goes_on() {
    let mut h = timed_call_to_desk(true, "INVITE, ACK, BYE");
    refreshes_due(&mut h);
    let first = refresh_to(&h, Leg::B);
    assert_eq!(first.method, Method::Invite);
    assert_eq!(cseq(&first), 2);
    challenge_in_dialog(&mut h, &first, 401, MD5_QOP);
    let on_b = refreshes_on(&h, Leg::B);
    assert_eq!(on_b.len(), 2, "{on_b:?}");
    let second = &on_b[1];
    assert_eq!(second.method, Method::Invite);
    assert_eq!(cseq(second), 3);
    assert_ne!(branch_of(second), branch_of(&first));
    assert_eq!(second.body, first.body, "the same offer");
    assert!(second
        .headers
        .get("Authorization")
        .is_some_and(|a| a.contains(&format!("uri=\"{}\"", first.uri))));
    // Its 2xx is acknowledged with the CSeq it went with.
    respond_to(
        &mut h,
        second,
        200,
        &[("Session-Expires", "120;refresher=uac")],
    );
    let ack = last_to_desk(&h, Method::Ack);
    assert_eq!(ack.headers.get("CSeq"), Some("3 ACK"));
    // The session goes on: the next refresh 60 s later, the dialog's CSeq counting on.
    h.advance(Duration::from_secs(60));
    let on_b = refreshes_on(&h, Leg::B);
    assert_eq!(on_b.len(), 3, "{on_b:?}");
    assert_eq!(cseq(&on_b[2]), 4);
    assert!(h.outcome().is_none());
}

#[test]
fn a_refresh_update_challenged_407_is_sent_again_and_the_session_goes_on() {
    let mut h = timed_call_to_desk(true, "INVITE, ACK, BYE, UPDATE");
    refreshes_due(&mut h);
    let first = refresh_to(&h, Leg::B);
    assert_eq!(first.method, Method::Update);
    challenge_in_dialog(
        &mut h,
        &first,
        407,
        "Digest realm=\"desk\", nonce=\"n-up\", algorithm=MD5",
    );
    let on_b = refreshes_on(&h, Leg::B);
    assert_eq!(on_b.len(), 2, "{on_b:?}");
    let second = &on_b[1];
    assert_eq!(second.method, Method::Update);
    assert_eq!(cseq(second), cseq(&first) + 1);
    let expected = md5_answer("UPDATE", &first.uri.to_string(), "n-up");
    assert!(second
        .headers
        .get("Proxy-Authorization")
        .is_some_and(|a| a.contains(&expected)));
    respond_to(
        &mut h,
        second,
        200,
        &[("Session-Expires", "120;refresher=uac")],
    );
    h.advance(Duration::from_secs(60));
    let on_b = refreshes_on(&h, Leg::B);
    assert_eq!(on_b.len(), 3, "{on_b:?}");
    assert_eq!(cseq(&on_b[2]), cseq(second) + 1);
    assert!(h.outcome().is_none());
    // And the BYE at the end counts on too.
    respond_to(&mut h, &on_b[2], 200, &[]);
    let bye = citizen_hangs_up(&mut h);
    assert_eq!(cseq(&bye), cseq(&on_b[2]) + 1);
}

#[test]
fn a_challenge_to_a_refresh_from_a_peer_without_credentials_is_not_answered() {
    let mut h = timed_call_to_desk(false, "INVITE, ACK, BYE, UPDATE");
    refreshes_due(&mut h);
    let first = refresh_to(&h, Leg::B);
    challenge_in_dialog(&mut h, &first, 401, MD5_QOP);
    let on_b = refreshes_on(&h, Leg::B);
    assert_eq!(
        on_b.len(),
        1,
        "as any failure: tried again later, not answered"
    );
    assert!(h.outcome().is_none());
}

/// The agent's digits to a desk that challenges INFO: the INFO again with its answer.
#[test]
fn a_challenged_dtmf_info_is_sent_again_with_credentials() {
    let mut h = answered_by_desk(true);
    h.call.send_dtmf_info(Leg::B, '5', None);
    h.drain();
    let first = last_to_desk(&h, Method::Info);
    challenge_in_dialog(&mut h, &first, 401, MD5_QOP);
    let second = last_to_desk(&h, Method::Info);
    assert_eq!(cseq(&second), cseq(&first) + 1);
    assert_eq!(second.body, first.body);
    assert!(second.headers.get("Authorization").is_some());
    respond_to(&mut h, &second, 200, &[]);
    assert!(h.call.in_dialog.is_empty(), "nothing kept once answered");
}

/// The desk challenged the INVITE (401, MD5, qop) and, later, the BYE (401, a new nonce): the
/// BYE is sent again with an answer to the new nonce (as a SIPp desk does).
#[test]
fn a_bye_challenged_after_the_invite_was_is_sent_again() {
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
        401,
        "Digest realm=\"hotline.test\", nonce=\"n1\", opaque=\"op-1\", algorithm=MD5, qop=\"auth\"",
    );
    assert_eq!(h.sent(Method::Invite).len(), 2);
    h.answer();
    assert!(h.call.is_answered());
    let bye = citizen_hangs_up(&mut h);
    challenge_in_dialog(
        &mut h,
        &bye,
        401,
        "Digest realm=\"hotline.test\", nonce=\"n2\", algorithm=MD5, qop=\"auth\"",
    );
    let byes = to_desk(&h, Method::Bye);
    assert_eq!(byes.len(), 2, "the BYE once more: {:?}", h.actions);
    let answer = byes[1].headers.get("Authorization").unwrap_or_default();
    assert!(answer.contains("nonce=\"n2\""), "{answer}");
}
