//! The registrant on a fake clock against the gateway's own digest server standing in for the
//! registrar: what each REGISTER carries, challenges, 423, grants, refresh, backoff, expiry and
//! the un-REGISTER at shutdown.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::routing::credentials::{Algorithm, Credentials};
use crate::routing::InterfaceId;
use crate::sip::auth::{Digest, Verdict};

const SECRET: &str = "s3cret-trunk";

fn binding() -> Binding {
    let local: SocketAddr = ([10, 0, 0, 5], 5060).into();
    Binding {
        registration: Registration {
            user: "gw".into(),
            domain: "ims.carrier.test".into(),
            expires: Duration::from_secs(3600),
        },
        credentials: OutboundCredentials {
            username: "gw".into(),
            password: SECRET.into(),
        },
        local,
        target: Target::Udp(InterfaceId::DEFAULT, ([10, 0, 0, 9], 5060).into()),
        call_id: "reg-1@10.0.0.5".into(),
        from_tag: "t1".into(),
    }
}

/// The registrar: the gateway's own digest server and the account it expects.
struct Registrar {
    digest: Digest,
    account: Credentials,
}

impl Registrar {
    fn new(t0: Instant) -> Registrar {
        Registrar {
            digest: Digest::new("carrier", [3; 32], Duration::from_secs(300), t0),
            account: Credentials {
                username: "gw".into(),
                password: SECRET.into(),
                algorithms: vec![Algorithm::Sha256],
            },
        }
    }

    fn check(&mut self, now: Instant, request: &Request) -> Verdict {
        self.digest.check(now, request, &self.account)
    }
}

struct Harness {
    registrant: Registrant,
    serial: u32,
}

impl Harness {
    fn new(t0: Instant) -> Harness {
        Harness {
            registrant: Registrant::new(t0, binding()),
            serial: 0,
        }
    }

    /// The REGISTER due now, and its branch.
    fn sent(&mut self, now: Instant) -> (Request, String) {
        self.serial += 1;
        let serial = self.serial;
        let request = self
            .registrant
            .poll_request(now, || (format!("z9hG4bKr{serial}"), format!("c{serial}")));
        let Some(request) = request else {
            panic!("no REGISTER due at {now:?}");
        };
        (request, format!("z9hG4bKr{serial}"))
    }

    fn nothing_due(&mut self, now: Instant) {
        let request = self
            .registrant
            .poll_request(now, || (String::new(), String::new()));
        assert!(request.is_none(), "unexpected {request:?}");
    }

    fn answer(&mut self, now: Instant, branch: &str, response: &Response) -> Option<Event> {
        self.registrant.handle_response(now, branch, response)
    }
}

fn reply(request: &Request, status: u16, headers: &[(&str, &str)]) -> Response {
    let mut response = Response::for_request(request, status, Some("reg"));
    for (name, value) in headers {
        response.headers.push(name, *value);
    }
    response
}

fn challenge(registrar: &mut Registrar, now: Instant, request: &Request, stale: bool) -> Response {
    let values = registrar.digest.challenge(now, &registrar.account, stale);
    let mut response = Response::for_request(request, 401, Some("reg"));
    for value in values {
        response.headers.push("WWW-Authenticate", value);
    }
    response
}

fn header<'a>(request: &'a Request, name: &str) -> &'a str {
    request.headers.get(name).unwrap_or_default()
}

fn ok_with(request: &Request, contact_expires: u64) -> Response {
    let contact = format!("<sip:gw@10.0.0.5:5060>;expires={contact_expires}");
    reply(
        request,
        200,
        &[
            ("Contact", "<sip:other@192.0.2.1>;expires=99"),
            ("Contact", &contact),
        ],
    )
}

#[test]
fn the_first_register_names_the_aor_and_our_contact() {
    let t0 = Instant::now();
    let mut h = Harness::new(t0);
    assert_eq!(h.registrant.poll_timeout(), Some(t0));
    let (register, branch) = h.sent(t0);
    assert_eq!(register.method, Method::Register);
    // §10.2: the Request-URI is the domain, without user; From and To the AOR.
    assert_eq!(register.uri.to_string(), "sip:ims.carrier.test");
    assert_eq!(header(&register, "To"), "<sip:gw@ims.carrier.test>");
    assert_eq!(
        header(&register, "From"),
        "<sip:gw@ims.carrier.test>;tag=t1"
    );
    assert_eq!(header(&register, "Contact"), "<sip:gw@10.0.0.5:5060>");
    assert_eq!(header(&register, "Expires"), "3600");
    assert_eq!(header(&register, "CSeq"), "1 REGISTER");
    assert_eq!(header(&register, "Call-ID"), "reg-1@10.0.0.5");
    assert!(header(&register, "Via").contains(&format!("10.0.0.5:5060;branch={branch}")));
    assert!(register.headers.get("Authorization").is_none());
    assert!(!h.registrant.is_registered(t0));
    // Nothing else goes out while it is unanswered, and nothing is due.
    h.nothing_due(t0 + Duration::from_secs(60));
    assert_eq!(h.registrant.poll_timeout(), None);
}

#[test]
fn a_challenge_is_answered_the_grant_taken_from_our_contact_and_refreshed_at_half() {
    let t0 = Instant::now();
    let mut registrar = Registrar::new(t0);
    let mut h = Harness::new(t0);
    let (first, branch) = h.sent(t0);
    assert!(matches!(registrar.check(t0, &first), Verdict::Challenge(_)));
    let answer = challenge(&mut registrar, t0, &first, false);
    // A provisional answer and an answer on another branch change nothing.
    assert_eq!(h.answer(t0, &branch, &reply(&first, 100, &[])), None);
    assert_eq!(h.answer(t0, "z9hG4bKother", &answer), None);
    assert_eq!(h.answer(t0, &branch, &answer), None);
    let (second, branch) = h.sent(t0);
    assert_eq!(header(&second, "CSeq"), "2 REGISTER");
    assert_eq!(header(&second, "Call-ID"), "reg-1@10.0.0.5");
    assert_eq!(registrar.check(t0, &second), Verdict::Pass);
    let event = h.answer(t0, &branch, &ok_with(&second, 120));
    assert_eq!(
        event,
        Some(Event::Registered {
            expires: Duration::from_secs(120),
            refresh: false
        })
    );
    assert!(h.registrant.is_registered(t0));
    let half = t0 + Duration::from_secs(60);
    assert_eq!(h.registrant.poll_timeout(), Some(half));
    h.nothing_due(half - Duration::from_millis(1));
    assert_eq!(h.registrant.handle_timeout(half), None);
    let (refresh, branch) = h.sent(half);
    assert_eq!(header(&refresh, "CSeq"), "3 REGISTER");
    assert_eq!(header(&refresh, "Call-ID"), "reg-1@10.0.0.5");
    // The registrar's Expires header counts when our Contact carries none.
    let granted = reply(
        &refresh,
        200,
        &[("Contact", "<sip:gw@10.0.0.5>"), ("Expires", "90")],
    );
    assert_eq!(
        h.answer(half, &branch, &granted),
        Some(Event::Registered {
            expires: Duration::from_secs(90),
            refresh: true
        })
    );
    assert_eq!(
        h.registrant.poll_timeout(),
        Some(half + Duration::from_secs(45))
    );
}

#[test]
fn a_challenge_after_our_answer_is_a_credentials_failure_retried_with_backoff() {
    let t0 = Instant::now();
    let mut registrar = Registrar::new(t0);
    let mut h = Harness::new(t0);
    h.registrant.binding.credentials.password = "guess".into();
    let mut now = t0;
    let mut waits = Vec::new();
    for _ in 0..4 {
        let (register, branch) = h.sent(now);
        let answer = challenge(&mut registrar, now, &register, false);
        assert_eq!(h.answer(now, &branch, &answer), None);
        let (again, branch) = h.sent(now);
        assert_eq!(
            registrar.check(now, &again),
            Verdict::Refuse("wrong credentials")
        );
        let answer = challenge(&mut registrar, now, &again, false);
        let Some(Event::Failed { failure, retry_in }) = h.answer(now, &branch, &answer) else {
            panic!("no failure");
        };
        assert_eq!(failure, Failure::Credentials(401));
        assert!(
            failure.to_string().contains("outbound_password"),
            "{failure}"
        );
        assert!(!failure.to_string().contains("guess"));
        waits.push(retry_in.as_secs());
        h.nothing_due(now + retry_in - Duration::from_millis(1));
        now += retry_in;
        assert_eq!(h.registrant.poll_timeout(), Some(now));
    }
    assert_eq!(waits, [1, 2, 4, 8]);
    assert_eq!(retry_after(9), Duration::from_secs(256));
    assert_eq!(retry_after(10), MAX_RETRY);
    assert_eq!(retry_after(u32::MAX), MAX_RETRY);
}

#[test]
fn a_stale_nonce_gets_one_more_answer() {
    let t0 = Instant::now();
    let mut registrar = Registrar::new(t0);
    let mut h = Harness::new(t0);
    let (register, branch) = h.sent(t0);
    let answer = challenge(&mut registrar, t0, &register, false);
    h.answer(t0, &branch, &answer);
    let (second, branch) = h.sent(t0);
    let stale = challenge(&mut registrar, t0, &second, true);
    assert_eq!(h.answer(t0, &branch, &stale), None);
    let (third, branch) = h.sent(t0);
    assert_eq!(registrar.check(t0, &third), Verdict::Pass);
    let stale = challenge(&mut registrar, t0, &third, true);
    assert!(matches!(
        h.answer(t0, &branch, &stale),
        Some(Event::Failed {
            failure: Failure::Credentials(401),
            ..
        })
    ));
}

#[test]
fn interval_too_brief_is_answered_once_with_min_expires() {
    let t0 = Instant::now();
    let mut h = Harness::new(t0);
    h.registrant.asked = Duration::from_secs(2);
    let (register, branch) = h.sent(t0);
    assert_eq!(header(&register, "Expires"), "2");
    let brief = reply(&register, 423, &[("Min-Expires", "60")]);
    assert_eq!(h.answer(t0, &branch, &brief), None);
    let (again, branch) = h.sent(t0);
    assert_eq!(header(&again, "Expires"), "60");
    let brief = reply(&again, 423, &[("Min-Expires", "120")]);
    assert!(matches!(
        h.answer(t0, &branch, &brief),
        Some(Event::Failed {
            failure: Failure::IntervalTooBrief,
            ..
        })
    ));
    // A 423 without Min-Expires cannot be met either; the raised expiry stays for the next try.
    let later = t0 + Duration::from_secs(1);
    let (next, branch) = h.sent(later);
    assert_eq!(header(&next, "Expires"), "60");
    assert!(matches!(
        h.answer(later, &branch, &reply(&next, 423, &[])),
        Some(Event::Failed {
            failure: Failure::IntervalTooBrief,
            ..
        })
    ));
}

#[test]
fn refusals_silence_and_a_grant_that_runs_out() {
    let t0 = Instant::now();
    let mut h = Harness::new(t0);
    let (register, branch) = h.sent(t0);
    assert_eq!(
        h.answer(t0, &branch, &ok_with(&register, 10)),
        Some(Event::Registered {
            expires: Duration::from_secs(10),
            refresh: false
        })
    );
    // The refresh is refused: still registered until the grant runs out, retried at 1 s.
    let at = t0 + Duration::from_secs(5);
    let (refresh, branch) = h.sent(at);
    assert_eq!(
        h.answer(at, &branch, &reply(&refresh, 403, &[])),
        Some(Event::Failed {
            failure: Failure::Refused(403),
            retry_in: Duration::from_secs(1)
        })
    );
    assert!(h.registrant.is_registered(at));
    let at = at + Duration::from_secs(1);
    let (retry, branch) = h.sent(at);
    assert_eq!(
        h.registrant.handle_no_answer(at, "z9hG4bKnot-this-one"),
        None
    );
    assert_eq!(
        h.registrant.handle_no_answer(at, &branch),
        Some(Event::Failed {
            failure: Failure::NoAnswer,
            retry_in: Duration::from_secs(2)
        })
    );
    // A 2xx without our binding is no registration.
    let at = at + Duration::from_secs(2);
    let (next, branch) = h.sent(at);
    assert!(matches!(
        h.answer(at, &branch, &ok_with(&next, 0)),
        Some(Event::Failed {
            failure: Failure::NotBound,
            ..
        })
    ));
    drop(retry);
    let end = t0 + Duration::from_secs(10);
    assert_eq!(h.registrant.poll_timeout(), Some(end));
    assert_eq!(h.registrant.handle_timeout(end), Some(Event::Expired));
    assert!(!h.registrant.is_registered(end));
    assert_eq!(h.registrant.handle_timeout(end), None);
}

#[test]
fn unregister_removes_the_binding_answering_its_challenge() {
    let t0 = Instant::now();
    let mut registrar = Registrar::new(t0);
    let mut h = Harness::new(t0);
    let (register, branch) = h.sent(t0);
    h.answer(t0, &branch, &ok_with(&register, 600));
    let at = t0 + Duration::from_secs(1);
    assert!(h.registrant.unregister(at));
    let (unregister, branch) = h.sent(at);
    assert_eq!(header(&unregister, "Expires"), "0");
    assert_eq!(header(&unregister, "Contact"), "<sip:gw@10.0.0.5:5060>");
    assert_eq!(header(&unregister, "CSeq"), "2 REGISTER");
    let answer = challenge(&mut registrar, at, &unregister, false);
    assert_eq!(h.answer(at, &branch, &answer), None);
    let (proved, branch) = h.sent(at);
    assert_eq!(registrar.check(at, &proved), Verdict::Pass);
    assert_eq!(header(&proved, "Expires"), "0");
    assert_eq!(
        h.answer(at, &branch, &reply(&proved, 200, &[])),
        Some(Event::Unregistered)
    );
    assert!(h.registrant.is_done() && !h.registrant.is_registered(at));
    assert_eq!(h.registrant.poll_timeout(), None);
    h.nothing_due(at + Duration::from_secs(3600));
}

#[test]
fn unregister_sends_nothing_without_a_binding_and_gives_up_on_silence() {
    let t0 = Instant::now();
    let mut never = Harness::new(t0);
    let (_, _) = never.sent(t0);
    assert!(!never.registrant.unregister(t0));
    assert!(never.registrant.is_done());
    never.nothing_due(t0);

    let mut h = Harness::new(t0);
    let (register, branch) = h.sent(t0);
    h.answer(t0, &branch, &ok_with(&register, 600));
    assert!(h.registrant.unregister(t0));
    let (_, branch) = h.sent(t0);
    assert_eq!(
        h.registrant.handle_no_answer(t0, &branch),
        Some(Event::Unregistered)
    );
    assert!(h.registrant.is_done());
}

#[test]
fn a_domain_that_is_an_address_and_a_tcp_peer() {
    let t0 = Instant::now();
    let mut binding = binding();
    binding.registration.domain = "2001:db8::9".into();
    binding.target = Target::Tcp(InterfaceId::DEFAULT, ([10, 0, 0, 9], 5060).into());
    let mut registrant = Registrant::new(t0, binding);
    let Some(register) = registrant.poll_request(t0, || ("z9hG4bKa".into(), "c".into())) else {
        panic!("no REGISTER");
    };
    assert_eq!(register.uri.to_string(), "sip:[2001:db8::9]");
    assert_eq!(
        header(&register, "Contact"),
        "<sip:gw@10.0.0.5:5060;transport=tcp>"
    );
    assert!(header(&register, "Via").starts_with("SIP/2.0/TCP "));
}

/// A registrar granting more than the clock can hold (`Expires: 2^64-1`, or a Contact's
/// `expires` as large) gets a day, refreshed at half: no overflow, no panic.
#[test]
fn an_absurd_grant_is_taken_as_a_day() {
    let t0 = Instant::now();
    let mut h = Harness::new(t0);
    let (first, branch) = h.sent(t0);
    let granted = reply(
        &first,
        200,
        &[
            ("Contact", "<sip:gw@10.0.0.5>"),
            ("Expires", "18446744073709551615"),
        ],
    );
    assert_eq!(
        h.answer(t0, &branch, &granted),
        Some(Event::Registered {
            expires: Duration::from_secs(86_400),
            refresh: false
        })
    );
    let half = t0 + Duration::from_secs(43_200);
    assert_eq!(h.registrant.poll_timeout(), Some(half));
    let (refresh, branch) = h.sent(half);
    let event = h.answer(half, &branch, &ok_with(&refresh, u64::MAX));
    assert!(
        matches!(event, Some(Event::Registered { expires, .. }) if expires == Duration::from_secs(86_400)),
        "{event:?}"
    );
}
