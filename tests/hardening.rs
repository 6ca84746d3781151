//! The built binary facing what only a process can show: a second instance started by mistake
//! on the live one's store, a panic in one of its parts, a stuck loop, and strangers holding
//! connections under a tight file-descriptor limit.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use common::process::{free_port, GatewayProcess};
use common::Ua;
use hotline_gateway::store::CallRecord;

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// A gateway's files and addresses: the carrier calls 12345, answered at the hotline.
struct Setup {
    config: PathBuf,
    db: PathBuf,
    sip: SocketAddr,
    http: SocketAddr,
    carrier: Ua,
    hotline: Ua,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn new(sip_extra: &str) -> Setup {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        let mut carrier = Ua::bind("carrier", LOCALHOST).await;
        let mut hotline = Ua::bind("hotline", LOCALHOST).await;
        let sip = SocketAddr::new(LOCALHOST, free_port());
        let http = SocketAddr::new(LOCALHOST, free_port());
        let [low, high] = common::media_block();
        let db = dir.path().join("gateway.db");
        let config = dir.path().join("gateway.toml");
        let text = format!(
            "[sip]\nlisten = \"{sip}\"\n{sip_extra}\n\
             [media]\naddress = \"127.0.0.1\"\nports = [{low}, {high}]\n\n\
             [store]\npath = \"{db}\"\n\n\
             [api]\ngrpc = \"127.0.0.1:{grpc}\"\nhttp = \"{http}\"\n\n\
             [[peer]]\nname = \"carrier\"\naddress = \"{carrier}\"\n\n\
             [[peer]]\nname = \"hotline\"\naddress = \"{hotline}\"\nplatform = \"12345\"\n\n\
             [[route]]\nnumber = \"12345\"\npeers = [\"hotline\"]\n",
            db = db.display(),
            grpc = free_port(),
            carrier = carrier.address,
            hotline = hotline.address,
        );
        if let Err(e) = std::fs::write(&config, text) {
            panic!("{e}");
        }
        carrier.set_gateway(sip);
        hotline.set_gateway(sip);
        Setup {
            config,
            db,
            sip,
            http,
            carrier,
            hotline,
            _dir: dir,
        }
    }

    fn calls(&self) -> Vec<CallRecord> {
        match hotline_gateway::store::list_calls(&self.db, 100) {
            Ok(calls) => calls,
            Err(e) => panic!("{}: {e}", self.db.display()),
        }
    }

    /// An OPTIONS to `sip:fault@` (the fault tests' probe), from the carrier.
    async fn send_fault_probe(&mut self) {
        let me = self.carrier.address;
        let text = format!(
            "OPTIONS sip:fault@{gateway} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKfault\r\n\
             From: <sip:probe@{me}>;tag=f\r\nTo: <sip:fault@{gateway}>\r\nCall-ID: fault@probe\r\n\
             CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            gateway = self.sip
        );
        self.carrier.send(&text).await;
    }
}

/// `GET path` on `http` (blocking, for a process's endpoint): status and body, or None when
/// the connection is refused, reset or gets no answer within 10 s.
fn http_get(http: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect_timeout(&http, Duration::from_secs(5)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.get(9..12)?.parse().ok()?;
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Some((status, body))
}

fn open_calls(calls: &[CallRecord]) -> usize {
    calls.iter().filter(|c| c.ended_at.is_none()).count()
}

fn aborted(status: std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(6)
}

/// A second instance on the live one's store (and addresses) stops before it touches
/// anything: it says who holds the store, the live call's record stays open, and the first
/// instance goes on handling the call to its end.
#[tokio::test]
async fn a_second_instance_leaves_the_live_ones_calls_alone() {
    let mut setup = Setup::new("").await;
    let _first = GatewayProcess::start(&setup.config);
    let call = common::establish(&mut setup.carrier, &mut setup.hotline, &[8], &[8]).await;
    assert_eq!(open_calls(&setup.calls()), 1);

    let (status, log) = GatewayProcess::run_to_failure(&setup.config);
    assert!(!status.success());
    assert!(
        log.contains("held by another gateway") && log.contains(".lock"),
        "{log}"
    );
    let calls = setup.calls();
    assert_eq!(
        open_calls(&calls),
        1,
        "the live call is still open: {calls:?}"
    );

    // The first instance still carries the call: the caller's BYE reaches the desk.
    common::caller_hangs_up(&mut setup.carrier, &call, &mut [&mut setup.hotline]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while open_calls(&setup.calls()) > 0 {
        assert!(std::time::Instant::now() < deadline, "{:?}", setup.calls());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ended = setup.calls();
    assert_eq!(ended[0].ended_by.as_deref(), Some("caller"), "{ended:?}");
}

/// A panic in the endpoint's loop ends the process (abort, for the supervisor to restart),
/// rather than leaving it up with no SIP handled; the next start closes the call it left.
#[tokio::test]
async fn a_panic_in_the_endpoint_ends_the_process_and_the_next_start_closes_its_calls() {
    let mut setup = Setup::new("").await;
    let mut gateway = GatewayProcess::start_with_fault(&setup.config, "endpoint-panic");
    let _call = common::establish(&mut setup.carrier, &mut setup.hotline, &[8], &[8]).await;
    setup.send_fault_probe().await;
    let status = gateway.exits_within(Duration::from_secs(10));
    assert!(status.is_some_and(aborted), "{status:?}");

    let _again = GatewayProcess::start(&setup.config);
    let calls = setup.calls();
    assert_eq!(open_calls(&calls), 0, "{calls:?}");
    assert_eq!(calls[0].end_reason.as_deref(), Some("gateway restart"));
}

/// A panic in a relay worker or the store writer (threads of their own) ends the process too.
#[tokio::test]
async fn a_panic_in_a_relay_worker_or_the_store_writer_ends_the_process() {
    for fault in ["relay-panic", "store-panic"] {
        let setup = Setup::new("").await;
        let mut gateway = GatewayProcess::start_with_fault(&setup.config, fault);
        // /healthz asks each part whether it runs: the faulty one panics on the question.
        let _ = http_get(setup.http, "/healthz");
        let status = gateway.exits_within(Duration::from_secs(10));
        assert!(status.is_some_and(aborted), "{fault}: {status:?}");
    }
}

/// A stuck endpoint loop (alive, not panicking, handling nothing) turns `/healthz` to 503 with
/// the reason, for the balancer to move calls away.
#[tokio::test]
async fn a_stuck_endpoint_loop_fails_the_health_check() {
    let mut setup = Setup::new("").await;
    let _gateway = GatewayProcess::start_with_fault(&setup.config, "endpoint-stall");
    assert_eq!(http_get(setup.http, "/healthz"), Some((200, "ok\n".into())));
    setup.send_fault_probe().await;
    // The probe and the health check race to the loop: ask until the check comes after it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = http_get(setup.http, "/healthz");
        if matches!(&answer, Some((503, body)) if body.contains("SIP endpoint loop not answering"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline && answer == Some((200, "ok\n".into())),
            "{answer:?}"
        );
    }
}

/// Under a tight descriptor limit (`ulimit -n 400`), strangers holding idle TCP connections
/// from many addresses take no descriptor the media need: the gateway holds TCP to what the
/// limit leaves, and the carrier's UDP calls all go through, /healthz answering 200.
#[tokio::test]
async fn strangers_connections_take_no_descriptor_from_the_media() {
    let mut setup = Setup::new("max_calls = 20\n").await;
    let _gateway = GatewayProcess::start_limited(&setup.config, 400);
    let mut strangers = Vec::new();
    for host in 2..=21u8 {
        let source = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, host));
        for _ in 0..20 {
            if let Some(stream) = connect_from(source, setup.sip) {
                strangers.push(stream);
            }
        }
    }
    assert!(
        strangers.len() > 300,
        "{} connections opened",
        strangers.len()
    );
    for _ in 0..5 {
        let call = common::establish(&mut setup.carrier, &mut setup.hotline, &[8], &[8]).await;
        common::caller_hangs_up(&mut setup.carrier, &call, &mut [&mut setup.hotline]).await;
    }
    assert_eq!(http_get(setup.http, "/healthz"), Some((200, "ok\n".into())));
    let metrics = http_get(setup.http, "/metrics").map(|(_, body)| body);
    let metrics = metrics.unwrap_or_default();
    assert!(
        !metrics.contains("hotline_calls_refused_overload_total 1"),
        "{metrics}"
    );
    drop(strangers);
}

fn connect_from(source: IpAddr, gateway: SocketAddr) -> Option<std::net::TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    socket.bind(&SocketAddr::new(source, 0).into()).ok()?;
    socket
        .connect_timeout(&gateway.into(), Duration::from_secs(5))
        .ok()?;
    Some(socket.into())
}
