//! RFC 4475 ("SIP Torture Test Messages") against the gateway over real sockets: every message
//! of §3.1.1 (valid), §3.1.2 (invalid), §3.2, §3.3 and §3.4 gets the answer the RFC asks of a
//! robust element (as a B2BUA answers it: a valid INVITE to a number without a route gets 404,
//! which counts as "handled as valid"), and the gateway keeps serving after each one.
//!
//! The fixtures in `tests/fixtures/rfc4475/` are the messages as the RFC prints them (checked
//! line by line against its text; its bit-exact base64 archive could not be obtained here), each
//! named after its RFC section and short name, with CRLF line ends and the NUL/BEL/DEL and UTF-8
//! bytes the printed text cannot show put back as the sections describe. Content-Length is
//! exact except where it is the point (clerr, ncl, mcl01, the ignored INVITE of dblreq) and
//! inv2543 has none, as printed. The binary part of mpart01 is a stand-in of the printed
//! length (342 bytes, 4 NULs), not the RFC's CMS signature. Hosts
//! are the RFC's: the gateway routes on the Request-URI user part only, and the test's peer is
//! declared by address, so no placeholder is needed.
//!
//! `expected.txt` holds one line per fixture: `file outcome why` (see its header). Responses go
//! where §18.2.2 says: to the source IP and the Via's port (5060 when it has none), so the peer
//! sends from port 5060 of a loopback alias of its own, and listens on any other Via port.
//! Each fixture meets a fresh gateway, because several RFC messages share a branch and sent-by
//! and would be taken for retransmissions of each other (§17.2.3); then the whole corpus goes
//! to one gateway back to back.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use common::{Gateway, Ua};
use hotline_gateway::sip::message::{self, header, Message, ParseError, Via};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

/// The torture peer: a loopback alias of its own, so that its port 5060 is free.
const PEER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 44, 75, 1));
const PEER_PORT: u16 = 5060;
/// How long an answer may take.
const ANSWER: Duration = Duration::from_secs(3);
/// How long a dropped message must stay unanswered.
const SILENCE: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The first final response has this status.
    Status(u16),
    /// Handled as valid: a final response that is not 400.
    Not400,
    /// The RFC allows a 400 or a liberal reading: any final response.
    Answered,
    /// No response at all.
    Dropped,
}

struct Case {
    file: String,
    outcome: Outcome,
    tcp: bool,
    why: String,
    bytes: Vec<u8>,
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rfc4475")
}

/// Every fixture with its manifest line; fails if a fixture has no line or a line no fixture.
fn cases() -> Vec<Case> {
    let dir = fixture_dir();
    let manifest = match std::fs::read_to_string(dir.join("expected.txt")) {
        Ok(m) => m,
        Err(e) => panic!("expected.txt: {e}"),
    };
    let mut expected: BTreeMap<String, (Outcome, bool, String)> = BTreeMap::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(file), Some(outcome)) = (words.next(), words.next()) else {
            panic!("expected.txt: malformed line {line:?}");
        };
        let why = words.collect::<Vec<_>>().join(" ");
        assert!(!why.is_empty(), "expected.txt: {file} has no reason");
        let mut flags = outcome.split(',');
        let outcome = match flags.next().unwrap_or_default() {
            "not-400" => Outcome::Not400,
            "answered" => Outcome::Answered,
            "dropped" => Outcome::Dropped,
            other => match other.strip_prefix("status=").and_then(|s| s.parse().ok()) {
                Some(status) => Outcome::Status(status),
                None => panic!("expected.txt: {file}: unknown outcome {other:?}"),
            },
        };
        let mut tcp = false;
        for flag in flags {
            match flag {
                "tcp" => tcp = true,
                other => panic!("expected.txt: {file}: unknown flag {other:?}"),
            }
        }
        assert!(
            expected
                .insert(file.to_string(), (outcome, tcp, why))
                .is_none(),
            "expected.txt: {file} listed twice"
        );
    }
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    let files: BTreeSet<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".sip"))
        .collect();
    let listed: BTreeSet<String> = expected.keys().cloned().collect();
    let unlisted: Vec<&String> = files.difference(&listed).collect();
    let missing: Vec<&String> = listed.difference(&files).collect();
    assert!(
        unlisted.is_empty(),
        "fixtures without a manifest line: {unlisted:?}"
    );
    assert!(
        missing.is_empty(),
        "manifest lines without a fixture: {missing:?}"
    );
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    expected
        .into_iter()
        .map(|(file, (outcome, tcp, why))| {
            let bytes = match std::fs::read(dir.join(&file)) {
                Ok(b) => b,
                Err(e) => panic!("{file}: {e}"),
            };
            Case {
                file,
                outcome,
                tcp,
                why,
                bytes,
            }
        })
        .collect()
}

/// The Call-ID (long or compact name) of the first message in `bytes`, read without our parser.
fn raw_call_id(bytes: &[u8]) -> Option<String> {
    for line in bytes.split(|b| *b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return None;
        }
        let text = String::from_utf8_lossy(line);
        if let Some((name, value)) = text.split_once(':') {
            let name = name.trim();
            if name.eq_ignore_ascii_case("Call-ID") || name.eq_ignore_ascii_case("i") {
                return Some(value.trim().to_string());
            }
        }
    }
    None
}

/// The status of `bytes` if it is a response to the fixture with `call_id`.
fn status_of(bytes: &[u8], call_id: Option<&str>) -> Option<u16> {
    let text = String::from_utf8_lossy(bytes);
    let status: u16 = text
        .strip_prefix("SIP/2.0 ")?
        .split(' ')
        .next()?
        .trim()
        .parse()
        .ok()?;
    (raw_call_id(bytes).as_deref() == call_id).then_some(status)
}

/// The UDP port the gateway answers a fixture on (§18.2.2, RFC 3581): rport means the source
/// port, else the top Via's port or 5060; a Via it cannot read means the source.
fn udp_reply_port(bytes: &[u8]) -> u16 {
    let via = match message::parse(bytes) {
        Ok(Message::Request(request)) => request.top_via(),
        Err(ParseError::Reject { headers, .. }) => headers
            .get("Via")
            .and_then(|v| header::split_list(v).next().map(str::to_string))
            .and_then(|v| Via::parse(&v).ok()),
        _ => None,
    };
    match via {
        Some(via) if via.param("rport").is_none() => via.port.unwrap_or(5060),
        _ => PEER_PORT,
    }
}

/// UDP sockets of the peer by port: the one it sends from, and any a Via names.
struct Peer {
    sockets: HashMap<u16, UdpSocket>,
}

impl Peer {
    async fn bind() -> Peer {
        let mut peer = Peer {
            sockets: HashMap::new(),
        };
        peer.socket(PEER_PORT).await;
        peer
    }

    async fn socket(&mut self, port: u16) -> &UdpSocket {
        if let std::collections::hash_map::Entry::Vacant(entry) = self.sockets.entry(port) {
            match UdpSocket::bind(SocketAddr::new(PEER_IP, port)).await {
                Ok(s) => entry.insert(s),
                Err(e) => panic!("bind {PEER_IP}:{port}: {e}"),
            };
        }
        match self.sockets.get(&port) {
            Some(s) => s,
            None => panic!("socket {port}"),
        }
    }

    /// Sends over UDP; returns the statuses answered to it, up to the first final one or the
    /// end of `within`.
    async fn exchange(&mut self, gateway: SocketAddr, bytes: &[u8], within: Duration) -> Vec<u16> {
        let call_id = raw_call_id(bytes);
        let reply_port = udp_reply_port(bytes);
        // Bind the reply socket first, so no answer can arrive before it exists.
        self.socket(reply_port).await;
        if let Err(e) = self.socket(PEER_PORT).await.send_to(bytes, gateway).await {
            panic!("send: {e}");
        }
        let socket = self.socket(reply_port).await;
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = Vec::new();
        let mut buffer = vec![0u8; 65535];
        loop {
            match tokio::time::timeout_at(deadline, socket.recv_from(&mut buffer)).await {
                Ok(Ok((n, _))) => {
                    if let Some(status) = status_of(&buffer[..n], call_id.as_deref()) {
                        seen.push(status);
                        if status >= 200 {
                            return seen;
                        }
                    }
                }
                _ => return seen,
            }
        }
    }
}

async fn connect_tcp(gateway: SocketAddr) -> TcpStream {
    let socket = match TcpSocket::new_v4() {
        Ok(s) => s,
        Err(e) => panic!("tcp socket: {e}"),
    };
    if let Err(e) = socket.bind(SocketAddr::new(PEER_IP, 0)) {
        panic!("tcp bind: {e}");
    }
    match socket.connect(gateway).await {
        Ok(s) => s,
        Err(e) => panic!("tcp connect: {e}"),
    }
}

/// Sends over a new TCP connection; returns the statuses answered on it, up to the first final
/// one, the connection's end or the end of `within`.
async fn exchange_tcp(gateway: SocketAddr, bytes: &[u8], within: Duration) -> Vec<u16> {
    let call_id = raw_call_id(bytes);
    let mut stream = connect_tcp(gateway).await;
    if let Err(e) = stream.write_all(bytes).await {
        panic!("tcp write: {e}");
    }
    let deadline = tokio::time::Instant::now() + within;
    let mut buffer: Vec<u8> = Vec::new();
    let mut seen = Vec::new();
    loop {
        match message::frame(&buffer, 65535) {
            Ok(message::Frame::Message { length }) => {
                let one: Vec<u8> = buffer.drain(..length).collect();
                if let Some(status) = status_of(&one, call_id.as_deref()) {
                    seen.push(status);
                    if status >= 200 {
                        return seen;
                    }
                }
                continue;
            }
            Ok(message::Frame::KeepAlive { length, .. }) => {
                buffer.drain(..length);
                continue;
            }
            Ok(message::Frame::Incomplete) => {}
            Err(_) => return seen,
        }
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buffer.extend_from_slice(&chunk[..n]),
            _ => return seen,
        }
    }
}

fn options(gateway: SocketAddr, me: SocketAddr, branch: &str) -> String {
    format!(
        "OPTIONS sip:{gateway} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{branch};rport\r\nFrom: <sip:ping@{me}>;tag=p\r\n\
To: <sip:{gateway}>\r\nCall-ID: {branch}@test\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
}

async fn still_serving(ua: &mut Ua, gateway: SocketAddr, branch: &str) {
    ua.set_gateway(gateway);
    let text = options(gateway, ua.address, branch);
    ua.send(&text).await;
    loop {
        match ua.recv().await {
            Message::Response(r) if r.headers.get("Call-ID") == Some(&format!("{branch}@test")) => {
                assert_eq!(
                    r.status, 200,
                    "after {branch}: OPTIONS answered {}",
                    r.status
                );
                return;
            }
            _ => continue,
        }
    }
}

async fn torture_gateway() -> Gateway {
    Gateway::start(
        &[(
            "torture",
            SocketAddr::new(PEER_IP, PEER_PORT),
            "any_port = true",
        )],
        &[],
        "",
        "",
    )
    .await
}

#[tokio::test]
async fn rfc4475_torture_messages_get_the_rfc_answers_and_never_stop_the_gateway() {
    let cases = cases();
    let mut peer = Peer::bind().await;
    let mut prober = Ua::bind("prober", PEER_IP).await;
    let mut failures = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        let mut gateway = torture_gateway().await;
        let within = if case.outcome == Outcome::Dropped {
            SILENCE
        } else {
            ANSWER
        };
        let mut seen = if case.tcp {
            exchange_tcp(gateway.sip, &case.bytes, within).await
        } else {
            peer.exchange(gateway.sip, &case.bytes, within).await
        };
        still_serving(&mut prober, gateway.sip, &format!("alive-{index}")).await;
        if case.outcome == Outcome::Dropped && !case.tcp {
            // The marker for a silence: the prober's OPTIONS was answered from the same gateway
            // socket after any answer to the fixture, so one merely late is queued by now.
            let call_id = raw_call_id(&case.bytes);
            let socket = peer.socket(udp_reply_port(&case.bytes)).await;
            while let Some(bytes) = common::queued_datagram(socket) {
                seen.extend(status_of(&bytes, call_id.as_deref()));
            }
        }
        let last = seen.last().copied().filter(|s| *s >= 200);
        let ok = match case.outcome {
            Outcome::Dropped => seen.is_empty(),
            Outcome::Status(status) => last == Some(status),
            Outcome::Not400 => last.is_some_and(|s| s != 400),
            Outcome::Answered => last.is_some(),
        };
        if !ok {
            failures.push(format!(
                "{}: expected {:?} ({}), got {seen:?}",
                case.file, case.outcome, case.why
            ));
        }
        gateway.stop().await;
    }

    // Then the whole corpus back to back to one gateway (shared branches are now taken for
    // retransmissions, answers are not looked at): it must still serve.
    let mut gateway = torture_gateway().await;
    let mut streams = Vec::new();
    for case in &cases {
        if case.tcp {
            let mut stream = connect_tcp(gateway.sip).await;
            if let Err(e) = stream.write_all(&case.bytes).await {
                panic!("tcp write: {e}");
            }
            streams.push(stream);
        } else {
            let socket = peer.socket(PEER_PORT).await;
            if let Err(e) = socket.send_to(&case.bytes, gateway.sip).await {
                panic!("send: {e}");
            }
        }
    }
    still_serving(&mut prober, gateway.sip, "after-corpus").await;
    drop(streams);
    gateway.stop().await;

    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
