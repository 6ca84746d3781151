//! Peer health end to end over loopback: the gateway probes 110's desks with OPTIONS every
//! second (`probe_secs = 1`); a desk that stops answering is marked down after 3 probes and
//! skipped at once by transfers and new calls, a route whose desks are all down answers 503 at
//! once, and a desk that answers again is used again after 2 probes. What the tests wait for is
//! what an operator sees (`hotline_peer_up{peer}`, `/healthz`, PEER_DOWN / PEER_UP on the
//! work-order link), polled or awaited with a deadline, never slept for.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::platform::Platform;
use common::{
    answer_with_media, caller_hangs_up, establish, establish_to, sdp, Gateway, RtpPeer, Ua,
};
use hotline_gateway::sip::message::{self, Message, Method, Request};
use hotline_gateway::workorder::pb::EventType;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
const TOKEN_110: &str = "token-of-the-110-cad-system";
/// How quickly a call must reach the desk that is up once the other is known down: far below
/// the 4 s response timeout a dead first desk would cost without probing. It takes about 1 ms
/// here (the issue asks for under 100 ms); the bound is 1 s so that a loaded 2-core CI machine
/// running a debug build cannot fail it, while a wait for the dead desk's timeout still would.
const AT_ONCE: Duration = Duration::from_secs(1);

/// A desk that answers the gateway's OPTIONS probes (200) until `stop`, then is handed back.
/// Anything else it gets meanwhile is let go (an ACK, a retransmission).
fn answer_probes(mut ua: Ua, stop: CancellationToken) -> JoinHandle<Ua> {
    tokio::spawn(async move {
        loop {
            let received = tokio::select! {
                _ = stop.cancelled() => None,
                message = ua.recv_within(Duration::from_secs(60)) => Some(message),
            };
            match received {
                None => return ua,
                Some(Some(Message::Request(probe))) if probe.method == Method::Options => {
                    let answer = ua.answer(&probe, 200, None);
                    ua.send_response(&answer).await;
                }
                Some(_) => {}
            }
        }
    })
}

/// A desk answering probes in the background, and the switch that hands it back.
struct Answering {
    stop: CancellationToken,
    task: JoinHandle<Ua>,
}

impl Answering {
    fn start(ua: Ua) -> Answering {
        let stop = CancellationToken::new();
        let task = answer_probes(ua, stop.clone());
        Answering { stop, task }
    }

    async fn stop(self) -> Ua {
        self.stop.cancel();
        match self.task.await {
            Ok(ua) => ua,
            Err(e) => panic!("the probe answerer failed: {e}"),
        }
    }
}

/// The default response timeout (the tests' gateway has 700 ms): what a dead first desk would
/// cost each call before the next is tried.
fn four_seconds_for_a_peer(config: &mut hotline_gateway::config::Config) {
    config.sip.peer_response_timeout_ms = 4000;
}

fn is_invite(message: &Message) -> bool {
    matches!(message, Message::Request(r) if r.method == Method::Invite)
}

/// The agent's in-dialog REFER of its call to `number`.
fn refer(agent: &mut Ua, incoming: &Request, number: &str) -> Request {
    let mut refer = agent.uas_request(incoming, "REFER", 2);
    refer
        .headers
        .push("Refer-To", format!("<sip:{number}@gateway.invalid>"));
    refer
}

/// Route `110 = [police-a, police-b]`, both probed every second; police-a never answers its
/// probes, so it is down within `probe_secs` plus 3 probes, having been sent one probe (and its
/// retransmissions) only; a transfer to 110 then reaches
/// police-b at once (police-a gets no INVITE); police-a answers again, is up after 2 probes and
/// takes the next call to 110.
#[tokio::test]
async fn a_dead_desk_is_skipped_by_transfers_and_used_again_when_it_returns() {
    let mut citizen = Ua::bind("carrier", LOCALHOST).await;
    let mut agent = Ua::bind("hotline", LOCALHOST).await;
    let mut police_a = Ua::bind("police-a", LOCALHOST).await;
    let mut police_b = Ua::bind("police-b", LOCALHOST).await;
    let desk = "platform = \"110\"\nprobe_secs = 1";
    let gateway = Gateway::start_configured(
        &[
            ("carrier", citizen.address, ""),
            ("hotline", agent.address, "platform = \"12345\""),
            ("police-a", police_a.address, desk),
            ("police-b", police_b.address, desk),
        ],
        &[("12345", &["hotline"]), ("110", &["police-a", "police-b"])],
        "",
        "",
        "",
        four_seconds_for_a_peer,
    )
    .await;
    for ua in [&mut citizen, &mut agent, &mut police_a, &mut police_b] {
        ua.set_gateway(gateway.sip);
    }
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let b_answering = Answering::start(police_b);

    // police-a reads nothing: its probes go unanswered.
    gateway
        .metric_reaches("hotline_peer_up{peer=\"police-a\"}", 0.0)
        .await;
    assert_eq!(
        gateway.metric("hotline_peer_up{peer=\"police-b\"}").await,
        Some(1.0)
    );
    let (status, body) = gateway.http_get("/healthz").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "ok\npeer down: police-a\n"),
        "a dead desk is listed, but the gateway is still healthy"
    );
    // One probe at a time: every OPTIONS the silent desk got is the first one's retransmission
    // (§17.1.2.2), not a transaction more each interval.
    let first_branch = std::cell::RefCell::new(None::<String>);
    police_a
        .expect_none_then_marker(
            Duration::ZERO,
            "a second probe while the first stood unanswered",
            |message| {
                let Message::Request(probe) = message else {
                    return false;
                };
                if probe.method != Method::Options {
                    return false;
                }
                let branch = probe.top_via().and_then(|v| v.branch().map(str::to_string));
                let mut first = first_branch.borrow_mut();
                match first.as_ref() {
                    None => {
                        *first = branch;
                        false
                    }
                    Some(seen) => Some(seen) != branch.as_ref(),
                }
            },
        )
        .await;
    assert!(
        first_branch.borrow().is_some(),
        "the silent desk was probed"
    );

    let mut police_b = b_answering.stop().await;
    let request = refer(&mut agent, &call.incoming, "110");
    let referred = Instant::now();
    agent.send_request(&request).await;
    agent.expect_response("REFER", 202).await;
    let invite = police_b.expect_request("INVITE").await;
    let took = referred.elapsed();
    assert!(
        took < AT_ONCE,
        "the transfer reached police-b {took:?} after the REFER"
    );
    assert_eq!(invite.uri.user.as_deref(), Some("110"));
    // The negative check, closed by a marker: police-a had no INVITE queued before it.
    police_a
        .expect_none_then_marker(
            Duration::ZERO,
            "an INVITE to the desk found down",
            is_invite,
        )
        .await;
    let _rtp = answer_with_media(&mut police_b, &invite, &[8]).await;
    let b_answering = Answering::start(police_b);

    // police-a returns.
    let a_answering = Answering::start(police_a);
    gateway
        .metric_reaches("hotline_peer_up{peer=\"police-a\"}", 1.0)
        .await;
    let (status, body) = gateway.http_get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let mut police_a = a_answering.stop().await;
    let again = establish_to(
        "110",
        "13900139000",
        &mut citizen,
        &mut police_a,
        &[8],
        &[8],
    )
    .await;
    assert_eq!(again.incoming.uri.user.as_deref(), Some("110"));
    let _police_b = b_answering.stop().await;
}

/// Route `110 = [police]`, its only desk silent: once it is down (PEER_DOWN on the 110 CAD's
/// link, `/healthz` listing it), a new call to 110 gets 503 at once and the desk no INVITE, a
/// REFER to 110 gets 503 too; when the desk answers again, PEER_UP, and `/healthz` is `ok` alone;
/// the gateway then stops promptly, its prober with it.
#[tokio::test]
async fn a_route_whose_desks_are_all_down_answers_503_at_once() {
    let mut citizen = Ua::bind("carrier", LOCALHOST).await;
    let mut agent = Ua::bind("hotline", LOCALHOST).await;
    let mut police = Ua::bind("police", LOCALHOST).await;
    let mut gateway = Gateway::start_configured(
        &[
            ("carrier", citizen.address, ""),
            ("hotline", agent.address, "platform = \"12345\""),
            (
                "police",
                police.address,
                "platform = \"110\"\nprobe_secs = 1",
            ),
        ],
        &[("12345", &["hotline"]), ("110", &["police"])],
        "",
        "",
        &format!("\n[[platform]]\nname = \"110\"\ntoken = \"{TOKEN_110}\"\n"),
        four_seconds_for_a_peer,
    )
    .await;
    for ua in [&mut citizen, &mut agent, &mut police] {
        ua.set_gateway(gateway.sip);
    }
    let mut cad = Platform::connect(gateway.grpc, "110", TOKEN_110, None).await;
    let down = tokio::time::timeout(Duration::from_secs(10), cad.until(EventType::PeerDown)).await;
    let down = down.unwrap_or_else(|_| panic!("no PEER_DOWN within 10 s"));
    assert_eq!(down.call_id, "");
    assert_eq!(
        down.target
            .as_ref()
            .map(|t| (t.peer.as_str(), t.platform.as_str())),
        Some(("police", "110"))
    );
    assert!(!down.reason.is_empty());
    let (status, body) = gateway.http_get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\npeer down: police\n"));

    let rtp = RtpPeer::bind(LOCALHOST).await;
    let invite = citizen.invite(
        "110",
        "13800138000",
        &sdp(rtp.address, &[8], "sendrecv"),
        "",
    );
    let sent = Instant::now();
    citizen.send_request(&invite).await;
    let refused = citizen.expect_response("INVITE", 503).await;
    let took = sent.elapsed();
    assert!(took < AT_ONCE, "503 came {took:?} after the INVITE");
    assert_eq!(
        gateway
            .metric("hotline_calls_refused_peers_down_total")
            .await,
        Some(1.0)
    );
    citizen
        .send_request(&message::ack_for_non_2xx(&invite, &refused))
        .await;
    police
        .expect_none_then_marker(
            Duration::ZERO,
            "an INVITE to the desk found down",
            is_invite,
        )
        .await;

    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let request = refer(&mut agent, &call.incoming, "110");
    agent.send_request(&request).await;
    agent.expect_response("REFER", 503).await;
    caller_hangs_up(&mut citizen, &call, &mut [&mut agent]).await;

    let answering = Answering::start(police);
    let up = tokio::time::timeout(Duration::from_secs(10), cad.until(EventType::PeerUp)).await;
    let up = up.unwrap_or_else(|_| panic!("no PEER_UP within 10 s"));
    assert_eq!(up.target.map(|t| t.peer), Some("police".to_string()));
    assert!(up.sequence > down.sequence);
    let (status, body) = gateway.http_get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let _police = answering.stop().await;
    // The prober stops with the gateway (a shutdown waits for it as for a call).
    let stopped = tokio::time::timeout(Duration::from_secs(3), gateway.stop()).await;
    assert!(stopped.is_ok(), "the gateway did not stop within 3 s");
}
