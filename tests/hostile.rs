//! Traffic from addresses that are no peer, over real sockets: scanners hear nothing, strangers
//! get a 403 until they flood and are banned, and peers (also a carrier known by a network
//! range) keep placing calls meanwhile.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{establish, Gateway, Ua};
use hotline_gateway::sip::message::{self, Message};

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn options(gateway: SocketAddr, me: SocketAddr, branch: &str, user_agent: &str) -> String {
    format!(
        "OPTIONS sip:100@{gateway} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{branch}\r\n\
From: <sip:100@{me}>;tag=s\r\nTo: <sip:100@{gateway}>\r\nCall-ID: {branch}@scan\r\n\
CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nUser-Agent: {user_agent}\r\nContent-Length: 0\r\n\r\n"
    )
}

/// Responses `ua` gets within a short while, and any merely late: after the silence `witness`
/// (a peer) has a marker OPTIONS answered over the same gateway socket, so an answer to `ua`
/// sent before it is in `ua`'s queue by then.
async fn answers(ua: &mut Ua, witness: &mut Ua) -> Vec<u16> {
    let mut statuses = Vec::new();
    while let Some(message) = ua.recv_within(Duration::from_millis(300)).await {
        if let Message::Response(response) = message {
            statuses.push(response.status);
        }
    }
    witness.marker().await;
    while let Some(bytes) = ua.queued_raw() {
        if let Ok(Message::Response(response)) = message::parse(&bytes) {
            statuses.push(response.status);
        }
    }
    statuses
}

#[tokio::test]
async fn scanners_hear_nothing_floods_are_banned_and_peers_go_on() {
    let mut citizen = Ua::bind("carrier", LOCALHOST).await;
    let mut agent = Ua::bind("hotline", LOCALHOST).await;
    let mut stranger = Ua::bind("stranger", LOCALHOST).await;
    let mut gateway = Gateway::start(
        &[
            ("carrier", citizen.address, ""),
            ("hotline", agent.address, "platform = \"12345\""),
        ],
        &[("12345", &["hotline"])],
        "pike_requests_per_sec = 10\npike_ban_secs = 60\n",
        "",
    )
    .await;
    for ua in [&mut citizen, &mut agent, &mut stranger] {
        ua.set_gateway(gateway.sip);
    }

    // sipvicious' svmap probe: no answer at all.
    let probe = options(gateway.sip, stranger.address, "svmap", "friendly-scanner");
    stranger.send(&probe).await;
    assert_eq!(
        answers(&mut stranger, &mut citizen).await,
        Vec::<u16>::new()
    );

    // A stranger's INVITE: 403, and nothing reaches the agent.
    let invite = stranger.invite("12345", "13800138000", "", "");
    stranger.send_request(&invite).await;
    assert_eq!(answers(&mut stranger, &mut citizen).await, vec![403]);
    agent
        .expect_nothing_then_marker(
            Duration::from_millis(200),
            "a refused INVITE reached the agent",
        )
        .await;

    // It floods: the burst (twice the rate) is answered, then it is banned and hears nothing.
    for n in 0..200 {
        let text = options(gateway.sip, stranger.address, &format!("f{n}"), "sipp");
        stranger.send(&text).await;
    }
    let answered = answers(&mut stranger, &mut citizen).await;
    assert!(
        (10..=20).contains(&answered.len()) && answered.iter().all(|s| *s == 403),
        "{answered:?}"
    );

    // Meanwhile a peer's call goes through as ever.
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    common::caller_hangs_up(&mut citizen, &call, &mut [&mut agent]).await;

    let (_, metrics) = gateway.http_get("/metrics").await;
    for (name, check) in [
        ("hotline_sip_dropped_scanner_total", 1u64),
        ("hotline_sip_bans_total", 1),
    ] {
        assert!(
            metrics.contains(&format!("{name} {check}")),
            "{name}: {metrics}"
        );
    }
    let banned: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hotline_sip_dropped_banned_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(banned >= 150, "dropped while banned: {banned}");
    gateway.stop().await;
}

/// A carrier known by its signalling network (`[[peer]] sources`), not one address: its
/// requests from any address in the range are its own.
#[tokio::test]
async fn a_peer_known_by_its_network_places_calls() {
    let range_member: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
    let mut citizen = Ua::bind("carrier", range_member).await;
    let mut agent = Ua::bind("hotline", LOCALHOST).await;
    let mut gateway = Gateway::start(
        &[
            (
                "carrier",
                "127.0.0.9:5999".parse().unwrap_or_else(|_| unreachable!()),
                "sources = [\"127.0.0.2/32\"]",
            ),
            ("hotline", agent.address, "platform = \"12345\""),
        ],
        &[("12345", &["hotline"])],
        "",
        "",
    )
    .await;
    citizen.set_gateway(gateway.sip);
    agent.set_gateway(gateway.sip);
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    common::caller_hangs_up(&mut citizen, &call, &mut [&mut agent]).await;
    let record = gateway.ended_record(call.invite.call_id()).await;
    assert_eq!(record.a_peer, "carrier");
    gateway.stop().await;
}

/// A peer with `max_calls_per_sec` gets 503 (Retry-After) beyond its rate; the calls within it
/// go through.
#[tokio::test]
async fn a_peer_above_its_call_rate_gets_503() {
    let mut citizen = Ua::bind("carrier", LOCALHOST).await;
    let mut agent = Ua::bind("hotline", LOCALHOST).await;
    let mut gateway = Gateway::start(
        &[
            ("carrier", citizen.address, "max_calls_per_sec = 2"),
            ("hotline", agent.address, "platform = \"12345\""),
        ],
        &[("12345", &["hotline"])],
        "",
        "",
    )
    .await;
    citizen.set_gateway(gateway.sip);
    agent.set_gateway(gateway.sip);
    let sdp = common::sdp(citizen.address, &[8], "sendrecv");
    for _ in 0..5 {
        let invite = citizen.invite("12345", "13800138000", &sdp, "");
        citizen.send_request(&invite).await;
    }
    let mut refused = 0;
    while let Some(message) = citizen.recv_within(Duration::from_millis(300)).await {
        if let Message::Response(response) = message {
            if response.status == 503 {
                assert!(response.headers.get("Retry-After").is_some());
                refused += 1;
            }
        }
    }
    citizen
        .expect_none_then_marker(
            Duration::ZERO,
            "a 503 beyond the three",
            |m| matches!(m, Message::Response(r) if r.status == 503),
        )
        .await;
    assert_eq!(refused, 3);
    for _ in 0..2 {
        let invite = agent.expect_request("INVITE").await;
        agent.send_response(&agent.answer(&invite, 486, None)).await;
    }
    let (_, metrics) = gateway.http_get("/metrics").await;
    assert!(
        metrics.contains("hotline_calls_refused_rate_total 3"),
        "{metrics}"
    );
    gateway.stop().await;
}

/// `sip.max_tcp_connections`: a connection beyond the limit is closed at once; those within
/// keep working.
#[tokio::test]
async fn tcp_connections_beyond_the_limit_are_closed() {
    use tokio::io::AsyncReadExt;
    let mut first = Ua::bind("carrier", LOCALHOST).await;
    let mut gateway = Gateway::start(
        &[("carrier", first.address, "any_port = true")],
        &[],
        "max_tcp_connections = 2\n",
        "",
    )
    .await;
    first.set_gateway(gateway.sip);
    first.connect_tcp().await;
    let mut second = Ua::bind("carrier", LOCALHOST).await;
    second.set_gateway(gateway.sip);
    second.connect_tcp().await;
    for (ua, branch) in [(&mut first, "t1"), (&mut second, "t2")] {
        let text = options(gateway.sip, ua.address, branch, "Linphone");
        ua.send(&text.replace("SIP/2.0/UDP", "SIP/2.0/TCP")).await;
        let answer = ua.recv_within(Duration::from_secs(2)).await;
        assert!(
            matches!(answer, Some(Message::Response(ref r)) if r.status == 200),
            "{answer:?}"
        );
    }
    let mut third = match tokio::net::TcpStream::connect(gateway.sip).await {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    let mut buffer = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(2), third.read(&mut buffer)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "closed at once: {read:?}"
    );
    let (_, metrics) = gateway.http_get("/metrics").await;
    assert!(
        metrics.contains("hotline_tcp_connections_refused_total 1"),
        "{metrics}"
    );
    gateway.stop().await;
}

/// `sip.max_transactions`: once that many server transactions are in progress, a new request
/// outside a dialog gets a stateless 503 with Retry-After instead of a transaction.
#[tokio::test]
async fn beyond_max_transactions_new_requests_get_503() {
    let mut carrier = Ua::bind("carrier", LOCALHOST).await;
    let gateway = Gateway::start(
        &[("carrier", carrier.address, "")],
        &[],
        "max_transactions = 2\n",
        "",
    )
    .await;
    carrier.set_gateway(gateway.sip);
    for n in 0..2 {
        let text = options(gateway.sip, carrier.address, &format!("t{n}"), "sipp");
        carrier.send(&text).await;
        carrier.expect_response("OPTIONS", 200).await;
    }
    // Both stay in Completed (Timer J) a while: the third finds no room.
    let text = options(gateway.sip, carrier.address, "t2", "sipp");
    carrier.send(&text).await;
    let refused = carrier.expect_response("OPTIONS", 503).await;
    assert!(refused.headers.get("Retry-After").is_some());
    assert_eq!(
        gateway
            .metric("hotline_sip_refused_transactions_total")
            .await,
        Some(1.0)
    );
}

/// The Authorization a client computes for `challenge` (a WWW-Authenticate value) and `invite`.
fn authorization(challenge: &str, invite: &message::Request, password: &str, nc: u32) -> String {
    use hotline_gateway::routing::credentials::Algorithm;
    use hotline_gateway::sip::auth::response_digest;
    let param = |name: &str| {
        challenge
            .split(&format!("{name}="))
            .nth(1)
            .map(|rest| rest.trim_start_matches('"'))
            .and_then(|rest| rest.split(['"', ',']).next())
            .unwrap_or_default()
            .to_string()
    };
    let (realm, nonce) = (param("realm"), param("nonce"));
    let Some(algorithm) = Algorithm::parse(&param("algorithm")) else {
        panic!("no algorithm in {challenge}");
    };
    let uri = invite.uri.to_string();
    let nc = format!("{nc:08x}");
    let response = response_digest(
        algorithm, "trunk", &realm, password, "INVITE", &uri, &nonce, &nc, "0a4f113b",
    );
    format!(
        "Authorization: Digest username=\"trunk\", realm=\"{realm}\", nonce=\"{nonce}\", \
         uri=\"{uri}\", response=\"{response}\", algorithm={}, cnonce=\"0a4f113b\", qop=auth, \
         nc={nc}\r\n",
        algorithm.name()
    )
}

/// SIP digest authentication per peer (RFC 8760's SHA-256 preferred, MD5 offered too): a
/// trunk without credentials is challenged, with them its call goes through; the same answer
/// again (a replay) and a wrong password get nothing in.
#[tokio::test]
async fn a_peer_with_credentials_must_prove_them_once_per_nonce_count() {
    use hotline_gateway::sip::message::ack_for_non_2xx;
    let mut trunk = Ua::bind("carrier", LOCALHOST).await;
    let mut agent = Ua::bind("hotline", LOCALHOST).await;
    let gateway = Gateway::start(
        &[
            (
                "carrier",
                trunk.address,
                "auth_username = \"trunk\"\nauth_password = \"trunk-secret-1\"",
            ),
            ("hotline", agent.address, ""),
        ],
        &[("12345", &["hotline"])],
        "auth_realm = \"gw.example\"\n",
        "",
    )
    .await;
    trunk.set_gateway(gateway.sip);
    agent.set_gateway(gateway.sip);
    let sdp = common::sdp(trunk.address, &[8], "sendrecv");

    // No credentials: 401 with a challenge per algorithm, SHA-256 first.
    let bare = trunk.invite("12345", "13800138000", &sdp, "");
    trunk.send_request(&bare).await;
    let challenge = trunk.expect_response("INVITE", 401).await;
    trunk
        .send_request(&ack_for_non_2xx(&bare, &challenge))
        .await;
    let offers: Vec<&str> = challenge.headers.get_all("WWW-Authenticate").collect();
    assert_eq!(offers.len(), 2, "{challenge:?}");
    assert!(offers[0].contains("algorithm=SHA-256") && offers[0].contains("realm=\"gw.example\""));
    assert!(offers[1].contains("algorithm=MD5"));
    agent
        .expect_nothing_then_marker(
            Duration::from_millis(200),
            "a refused INVITE reached the agent",
        )
        .await;

    // With SHA-256 credentials the call rings and is answered.
    let probe = trunk.invite("12345", "13800138000", &sdp, "");
    let credentials = authorization(offers[0], &probe, "trunk-secret-1", 1);
    let invite = trunk.invite("12345", "13800138000", &sdp, &credentials);
    trunk.send_request(&invite).await;
    trunk.expect_response("INVITE", 100).await;
    let incoming = agent.expect_request("INVITE").await;
    let answer = common::sdp(agent.address, &[8], "sendrecv");
    agent
        .send_response(&agent.answer(&incoming, 200, Some(&answer)))
        .await;
    let ok = trunk.expect_response("INVITE", 200).await;
    let ack = trunk.ack(&invite, &ok, "");
    trunk.send_request(&ack).await;
    agent.expect_request("ACK").await;
    // In the dialog no credentials are asked for.
    let bye = trunk.in_dialog(&invite, &ok, "BYE", 2, "");
    trunk.send_request(&bye).await;
    trunk.expect_response("BYE", 200).await;
    let bye = agent.expect_request("BYE").await;
    agent.send_response(&agent.answer(&bye, 200, None)).await;

    // The same answer again is a replay: challenged afresh (stale), nothing rings.
    let replay = trunk.invite("12345", "13800138000", &sdp, &credentials);
    trunk.send_request(&replay).await;
    let stale = trunk.expect_response("INVITE", 401).await;
    trunk.send_request(&ack_for_non_2xx(&replay, &stale)).await;
    assert!(stale
        .headers
        .get("WWW-Authenticate")
        .is_some_and(|v| v.contains("stale=true")));
    // A wrong password: 403.
    let wrong = authorization(offers[1], &probe, "not-the-secret", 1);
    let guess = trunk.invite("12345", "13800138000", &sdp, &wrong);
    trunk.send_request(&guess).await;
    let refused = trunk.expect_response("INVITE", 403).await;
    trunk.send_request(&ack_for_non_2xx(&guess, &refused)).await;
    agent
        .expect_nothing_then_marker(
            Duration::from_millis(200),
            "a refused INVITE reached the agent",
        )
        .await;
    assert_eq!(
        gateway.metric("hotline_sip_auth_challenges_total").await,
        Some(2.0)
    );
    assert_eq!(
        gateway.metric("hotline_sip_auth_failures_total").await,
        Some(1.0)
    );
    assert_eq!(gateway.calls().len(), 1);
}

/// A TCP connection from `source` (an address of the loopback network) to `gateway`.
async fn connect_from(source: IpAddr, gateway: SocketAddr) -> tokio::net::TcpStream {
    let socket = match tokio::net::TcpSocket::new_v4() {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    if let Err(e) = socket.bind(SocketAddr::new(source, 0)) {
        panic!("bind {source}: {e}");
    }
    match socket.connect(gateway).await {
        Ok(s) => s,
        Err(e) => panic!("connect from {source}: {e}"),
    }
}

/// `ua`'s OPTIONS over its TCP connection is answered 200.
async fn assert_tcp_options_answered(ua: &mut Ua, gateway: SocketAddr, branch: &str) {
    let text = options(gateway, ua.address, branch, "Linphone");
    ua.send(&text.replace("SIP/2.0/UDP", "SIP/2.0/TCP")).await;
    let answer = ua.recv_within(Duration::from_secs(5)).await;
    assert!(
        matches!(answer, Some(Message::Response(ref r)) if r.status == 200),
        "{branch}: {answer:?}"
    );
}

/// Whether the gateway closes `stream` within `within` (a read sees the end or a reset).
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 64];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Idle TCP connections from strangers on many addresses take neither a peer's slot nor more
/// than their share: beyond `max_tcp_connections_per_source` from one address, or into the
/// slots kept for peers, they are closed at once; the carrier still connects and is answered;
/// and the strangers' connections that never send a whole request, or drip a header that never
/// ends, are closed at `tcp_request_timeout_secs`, long before `tcp_idle_timeout_secs`.
#[tokio::test]
async fn idle_and_dripping_strangers_leave_the_peers_their_tcp_slots() {
    let mut carrier = Ua::bind("carrier", LOCALHOST).await;
    let mut gateway = Gateway::start(
        &[("carrier", carrier.address, "any_port = true")],
        &[],
        "max_tcp_connections = 20\ntcp_reserved_for_peers = 8\nmax_tcp_connections_per_source = 4\n\
         tcp_request_timeout_secs = 2\ntcp_idle_timeout_secs = 300\n",
        "",
    )
    .await;
    carrier.set_gateway(gateway.sip);
    // Four strangers, six connections each: 4 per address are let in, and only 12 in all
    // (20 less the 8 kept for peers).
    let mut strangers = Vec::new();
    for host in 2..=5u8 {
        let source = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, host));
        for _ in 0..6 {
            strangers.push(connect_from(source, gateway.sip).await);
        }
    }
    gateway
        .metric_reaches("hotline_tcp_connections_refused_total", 12.0)
        .await;
    // One of those let in drips a header a byte at a time: it still gets no more than 2 s.
    let dripper_source = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 6));
    let mut dripper = connect_from(dripper_source, gateway.sip).await;

    carrier.connect_tcp().await;
    assert_tcp_options_answered(&mut carrier, gateway.sip, "peer-slot").await;
    assert_eq!(
        gateway
            .metric("hotline_tcp_connections_refused_total")
            .await,
        Some(13.0),
        "the dripper found the strangers' slots full"
    );

    // Strangers let in that never send a request are closed at the deadline.
    let started = tokio::time::Instant::now();
    let mut closed = 0;
    for stream in &mut strangers {
        if closed_within(stream, Duration::from_secs(10)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, strangers.len(), "every stranger's connection ends");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "closed at the 2 s request deadline, not the 300 s idle timeout"
    );
    gateway
        .metric_reaches("hotline_tcp_request_timeouts_total", 12.0)
        .await;

    // Now the dripper is let in, and a header that never ends is cut off at the deadline.
    drop(dripper);
    dripper = connect_from(dripper_source, gateway.sip).await;
    let (mut reader, mut writer) = dripper.into_split();
    let drip = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let header = b"OPTIONS sip:100@gateway SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.6;branch=z9hG4bKdrip\r\nX-Drip: ";
        let mut sent = 0usize;
        for byte in header.iter().chain(std::iter::repeat(&b'a')) {
            if writer.write_all(&[*byte]).await.is_err() {
                return sent;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            if sent > 300 {
                return sent;
            }
        }
        sent
    });
    let mut buffer = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        use tokio::io::AsyncReadExt;
        reader.read(&mut buffer).await
    })
    .await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the dripping connection is closed: {read:?}"
    );
    gateway
        .metric_reaches("hotline_tcp_request_timeouts_total", 13.0)
        .await;
    drip.abort();
    // And the carrier's connection, which spoke, is still open and served.
    assert_tcp_options_answered(&mut carrier, gateway.sip, "peer-slot-2").await;
    gateway.stop().await;
}

/// BYEs with made-up To tags (what anyone who can spoof a peer's address can send) are answered
/// 481 without a transaction: 1,000 of them leave `max_transactions` untouched, and the peer's
/// next new request is served, not refused 503.
#[tokio::test]
async fn requests_in_unknown_dialogs_take_no_transaction() {
    let mut carrier = Ua::bind("carrier", LOCALHOST).await;
    let gateway = Gateway::start(
        &[("carrier", carrier.address, "")],
        &[],
        "max_transactions = 5\n",
        "",
    )
    .await;
    carrier.set_gateway(gateway.sip);
    let me = carrier.address;
    for n in 0..1000 {
        let text = format!(
            "BYE sip:100@{gateway} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKbye{n}\r\n\
             From: <sip:13800138000@{me}>;tag=f{n}\r\nTo: <sip:100@{gateway}>;tag=made-up-{n}\r\n\
             Call-ID: spoofed-{n}@carrier\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            gateway = gateway.sip
        );
        carrier.send(&text).await;
        carrier.expect_response("BYE", 481).await;
    }
    assert_eq!(
        gateway.metric("hotline_sip_unknown_dialog_total").await,
        Some(1000.0)
    );
    assert_eq!(
        gateway.metric("hotline_sip_transactions_active").await,
        Some(0.0)
    );
    let text = options(gateway.sip, carrier.address, "after-byes", "sipp");
    carrier.send(&text).await;
    carrier.expect_response("OPTIONS", 200).await;
}
