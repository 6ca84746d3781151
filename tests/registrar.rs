//! The client side toward a carrier, against a real registrar and proxy: Kamailio (Debian's
//! `kamailio`, `tests/kamailio/registrar.cfg`). The gateway registers its account there
//! (digest 401, 423 Interval Too Brief), refreshes, registers again after the registrar lost
//! its bindings, removes the binding when it stops; a citizen's call for the account reaches
//! the gateway through the registrar's location service; the gateway's own calls through the
//! proxy are challenged (407) on the INVITE and on the BYE, and go through.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use common::kamailio::Kamailio;
use common::{sdp, Gateway, Ua};
use hotline_gateway::sip::message::{ack_for_non_2xx, Request, Response};

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
const USERNAME: &str = "gw";
const PASSWORD: &str = "s3cret-trunk";
const CITIZEN: &str = "13800000001";

/// Kamailio as the carrier's registrar and proxy: calls from `citizen_port` go to the location
/// service, requests from anyone but it and `far` are challenged and go on to `far`.
async fn registrar(citizen_port: u16, far: SocketAddr) -> Kamailio {
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kamailio/registrar.cfg");
    Kamailio::start(
        &config,
        vec![
            format!("PASSWORD=\"{PASSWORD}\""),
            format!("USERNAME=\"{USERNAME}\""),
            format!("CITIZEN_PORT={citizen_port}"),
            format!("FAR_URI=\"sip:{far}\""),
            format!("FAR_PORT={}", far.port()),
        ],
    )
    .await
}

/// The carrier's peer entry: registers as `gw@hotline.test`, the registrar's 423 raising a
/// 2-second ask to its 3-second minimum.
fn carrier_peer(password: &str) -> String {
    format!(
        "outbound_username = \"{USERNAME}\"\noutbound_password = \"{password}\"\n\
register = true\nregister_expires_secs = 2\nregister_domain = \"hotline.test\"\n"
    )
}

/// The gateway between the carrier (Kamailio) and the 12345 desk; 777 goes out to the carrier.
async fn gateway(kamailio: &Kamailio, desk: &Ua, password: &str) -> Gateway {
    Gateway::start(
        &[
            ("carrier", kamailio.address, &carrier_peer(password)),
            ("hotline", desk.address, "platform = \"12345\""),
        ],
        &[("12345", &["hotline"]), ("777", &["carrier"])],
        "",
        "",
    )
    .await
}

/// The value of a labelled metric (the whole `name{labels}` as `/metrics` prints it).
async fn metric(gateway: &Gateway, name: &str) -> f64 {
    gateway.metric(name).await.unwrap_or(0.0)
}

/// Waits (bounded) until `name` is at least `value`.
async fn metric_at_least(gateway: &Gateway, kamailio: &Kamailio, name: &str, value: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let now = metric(gateway, name).await;
        if now >= value {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} is {now}, not {value} or more; kamailio's log:\n{}",
            kamailio.log()
        );
        // Metrics have no push: look again shortly.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const REGISTERED: &str = "hotline_peer_registered{peer=\"carrier\"}";
const REGISTERED_OK: &str = "hotline_peer_registrations_total{peer=\"carrier\",result=\"ok\"}";
const REGISTER_FAILED: &str =
    "hotline_peer_registrations_total{peer=\"carrier\",result=\"failed\"}";

/// The citizen's INVITE to the gateway's account at the registrar, for 12345 (in To, as a
/// registrar forwarding to a registered contact leaves it).
fn citizen_invite(citizen: &mut Ua) -> Request {
    let offer = sdp(SocketAddr::new(LOCALHOST, 40000), &[0], "sendrecv");
    let mut invite = citizen.invite(USERNAME, CITIZEN, &offer, "");
    invite.headers.set("To", "<sip:12345@hotline.test>");
    invite
}

/// The ACK for a 2xx that came through the registrar: to the answer's Contact, by its
/// Record-Route (RFC 3261 §12.2.1.1: the route set of a dialog through a proxy).
fn routed_ack(ua: &mut Ua, invite: &Request, answer: &Response) -> Request {
    let mut ack = ua.ack(invite, answer, "");
    if let Some(route) = answer.headers.get("Record-Route") {
        ack.headers.push_front("Route", route.to_string());
    }
    ack
}

/// A citizen's call through the registrar reaches the desk with the citizen's number and is
/// answered; the desk hangs up and the gateway's BYE (challenged 407 by the proxy) reaches the
/// citizen. Returns the citizen's Call-ID.
async fn citizen_call_reaches_the_desk(
    citizen: &mut Ua,
    desk: &mut Ua,
    kamailio: &Kamailio,
) -> String {
    let invite = citizen_invite(citizen);
    citizen.send_request(&invite).await;
    let offered = desk.expect_request("INVITE").await;
    assert_eq!(offered.uri.user.as_deref(), Some("12345"), "{offered:?}");
    let from = offered.from().and_then(|f| f.uri.number());
    assert_eq!(from.as_deref(), Some(CITIZEN), "the citizen's own number");
    let answer = desk.answer(
        &offered,
        200,
        Some(&sdp(SocketAddr::new(LOCALHOST, 40002), &[0], "sendrecv")),
    );
    desk.send_response(&answer).await;
    let answered = citizen.expect_response("INVITE", 200).await;
    let ack = routed_ack(citizen, &invite, &answered);
    citizen.send_request(&ack).await;
    desk.expect_request("ACK").await;

    let bye = desk.uas_request(&offered, "BYE", 2);
    desk.send_request(&bye).await;
    let bye_out = citizen.expect_request("BYE").await;
    assert!(
        bye_out.headers.get("Proxy-Authorization").is_some(),
        "the BYE answered the proxy's challenge: {bye_out:?}\n{}",
        kamailio.log()
    );
    citizen
        .send_response(&citizen.answer(&bye_out, 200, None))
        .await;
    desk.expect_response("BYE", 200).await;
    invite.call_id().to_string()
}

/// The registrar's answer to a citizen's call when the gateway has no binding there: 404.
async fn citizen_call_is_not_registered(citizen: &mut Ua) {
    let invite = citizen_invite(citizen);
    citizen.send_request(&invite).await;
    let refused = citizen.expect_response("INVITE", 404).await;
    citizen
        .send_request(&ack_for_non_2xx(&invite, &refused))
        .await;
}

#[tokio::test]
async fn gateway_registers_refreshes_and_receives_the_citizens_call_through_the_registrar() {
    let mut citizen = Ua::bind("citizen", LOCALHOST).await;
    let far = Ua::bind("far", LOCALHOST).await;
    let mut desk = Ua::bind("desk", LOCALHOST).await;
    let mut kamailio = registrar(citizen.address.port(), far.address).await;
    citizen.set_gateway(kamailio.address);

    // Before the gateway runs, the account has no contact.
    citizen_call_is_not_registered(&mut citizen).await;

    let mut gateway = gateway(&kamailio, &desk, PASSWORD).await;
    desk.set_gateway(gateway.sip);
    // Registered: asked 2 s, refused 423 (Min-Expires 3), asked 3 s, challenged 401, bound.
    metric_at_least(&gateway, &kamailio, REGISTERED_OK, 1.0).await;
    assert_eq!(metric(&gateway, REGISTERED).await, 1.0);
    let log = kamailio.log();
    assert!(
        log.contains("REGISTER sip:hotline.test"),
        "the REGISTER's Request-URI is the domain (RFC 3261 §10.2):\n{log}"
    );
    // Refreshed before each 3-second grant ends: two refreshes within a few seconds.
    metric_at_least(&gateway, &kamailio, REGISTERED_OK, 3.0).await;
    assert_eq!(metric(&gateway, REGISTERED).await, 1.0);
    assert_eq!(metric(&gateway, REGISTER_FAILED).await, 0.0);

    let call_id = citizen_call_reaches_the_desk(&mut citizen, &mut desk, &kamailio).await;
    let record = gateway.ended_record(&call_id).await;
    assert_eq!(record.called, "12345");
    assert_eq!(record.caller, CITIZEN);
    assert_eq!(record.a_peer, "carrier");

    // The registrar restarts and forgets every binding: the gateway's registration lapses
    // (its refreshes are unanswered while the registrar is down) and comes back once the
    // registrar answers again, without anyone touching the gateway.
    kamailio.stop();
    gateway.metric_reaches(REGISTERED, 0.0).await;
    let before = metric(&gateway, REGISTERED_OK).await;
    kamailio.spawn().await;
    metric_at_least(&gateway, &kamailio, REGISTERED_OK, before + 1.0).await;
    gateway.metric_reaches(REGISTERED, 1.0).await;
    citizen_call_reaches_the_desk(&mut citizen, &mut desk, &kamailio).await;

    // Stopping, the gateway removes its binding (Expires: 0) before it is gone.
    gateway.stop().await;
    citizen_call_is_not_registered(&mut citizen).await;
}

#[tokio::test]
async fn gateway_answers_the_proxys_challenges_on_its_calls_out() {
    let citizen = Ua::bind("citizen", LOCALHOST).await;
    let mut far = Ua::bind("far", LOCALHOST).await;
    let mut desk = Ua::bind("desk", LOCALHOST).await;
    let kamailio = registrar(citizen.address.port(), far.address).await;
    far.set_gateway(kamailio.address);
    let mut gateway = gateway(&kamailio, &desk, PASSWORD).await;
    desk.set_gateway(gateway.sip);
    metric_at_least(&gateway, &kamailio, REGISTERED_OK, 1.0).await;

    // The desk calls out through the carrier: the proxy challenges the INVITE (407).
    let offer = sdp(SocketAddr::new(LOCALHOST, 40004), &[0], "sendrecv");
    let invite = desk.invite("777", "12345", &offer, "");
    desk.send_request(&invite).await;
    let offered = far.expect_request("INVITE").await;
    let authorization = offered
        .headers
        .get("Proxy-Authorization")
        .unwrap_or_default();
    assert!(
        authorization.contains(&format!("username=\"{USERNAME}\"")),
        "the INVITE answered the challenge with the peer's outbound credentials: {offered:?}"
    );
    let mut answer = far.answer(
        &offered,
        200,
        Some(&sdp(SocketAddr::new(LOCALHOST, 40006), &[0], "sendrecv")),
    );
    // A UAS copies Record-Route into its 2xx (RFC 3261 §12.1.1): the gateway's ACK and BYE
    // then go through the proxy.
    if let Some(route) = offered.headers.get("Record-Route") {
        answer.headers.push("Record-Route", route.to_string());
    }
    far.send_response(&answer).await;
    let answered = desk.expect_response("INVITE", 200).await;
    let ack = desk.ack(&invite, &answered, "");
    desk.send_request(&ack).await;
    far.expect_request("ACK").await;

    // The desk hangs up: the gateway's BYE is challenged too, and answered.
    let bye = desk.in_dialog(&invite, &answered, "BYE", 2, "");
    desk.send_request(&bye).await;
    let bye_out = far.expect_request("BYE").await;
    assert!(
        bye_out.headers.get("Proxy-Authorization").is_some(),
        "{bye_out:?}"
    );
    far.send_response(&far.answer(&bye_out, 200, None)).await;
    desk.expect_response("BYE", 200).await;

    let log = kamailio.log();
    assert!(log.contains("challenging INVITE"), "{log}");
    assert!(log.contains("challenging BYE"), "{log}");
    let record = gateway.ended_record(invite.call_id()).await;
    assert_eq!(record.called, "777");
    gateway.stop().await;
}

/// What the gateway logs, kept for the test to read (the gateway's tasks run on the test's
/// thread, whose default subscriber this is).
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut kept) = self.0.lock() {
            kept.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[tokio::test]
async fn wrong_password_fails_the_registration_and_tries_again_with_backoff() {
    const WRONG: &str = "not-the-password";
    let log = Captured::default();
    let _logging = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(log.clone())
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .finish(),
    );
    let mut citizen = Ua::bind("citizen", LOCALHOST).await;
    let far = Ua::bind("far", LOCALHOST).await;
    let mut desk = Ua::bind("desk", LOCALHOST).await;
    let kamailio = registrar(citizen.address.port(), far.address).await;
    citizen.set_gateway(kamailio.address);
    let mut gateway = gateway(&kamailio, &desk, WRONG).await;
    desk.set_gateway(gateway.sip);

    // Refused (the answer to the challenge is challenged again), tried again after 1 s, and
    // again: never registered, and the carrier has no contact for the account.
    metric_at_least(&gateway, &kamailio, REGISTER_FAILED, 2.0).await;
    assert_eq!(metric(&gateway, REGISTERED).await, 0.0);
    assert_eq!(metric(&gateway, REGISTERED_OK).await, 0.0);
    citizen_call_is_not_registered(&mut citizen).await;
    // No retry storm: each attempt is a REGISTER and its one answer to the challenge, and the
    // next waits (1 s, then 2 s, ...): at most the attempt after the ones counted has begun.
    let failed = metric(&gateway, REGISTER_FAILED).await;
    let registers = kamailio.log().matches("REGISTER sip:hotline.test").count() as f64;
    assert!(
        registers <= 2.0 * (failed + 1.0),
        "{registers} REGISTERs for {failed} failed attempts:\n{}",
        kamailio.log()
    );

    // A call out with the wrong password: the proxy's second 407 is the desk's answer, after
    // exactly two INVITEs.
    let offer = sdp(SocketAddr::new(LOCALHOST, 40008), &[0], "sendrecv");
    let invite = desk.invite("777", "12345", &offer, "");
    desk.send_request(&invite).await;
    let refused = desk.expect_response("INVITE", 407).await;
    desk.send_request(&ack_for_non_2xx(&invite, &refused)).await;
    assert_eq!(
        kamailio.log().matches("INVITE sip:777@").count(),
        2,
        "{}",
        kamailio.log()
    );
    gateway.stop().await;

    let logged = log.text();
    assert!(logged.contains("registration failed"), "{logged}");
    assert!(
        !logged.contains(WRONG),
        "the password is never logged:\n{logged}"
    );
}
