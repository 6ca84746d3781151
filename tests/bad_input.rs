//! Malformed and hostile input over real sockets: the gateway answers 400 (or the right error)
//! where it can, drops what it cannot answer, never crashes, and keeps serving.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{Gateway, Ua};
use hotline_gateway::sip::message::Message;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use tokio::io::AsyncWriteExt;

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn options(gateway: std::net::SocketAddr, me: std::net::SocketAddr, branch: &str) -> String {
    format!(
        "OPTIONS sip:{gateway} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{branch}\r\nFrom: <sip:ping@{me}>;tag=p\r\n\
To: <sip:{gateway}>\r\nCall-ID: {branch}@test\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
}

async fn still_serving(ua: &mut Ua, gateway: std::net::SocketAddr, branch: &str) {
    let text = options(gateway, ua.address, branch);
    ua.send(&text).await;
    loop {
        match ua.recv().await {
            Message::Response(r) if r.headers.get("Call-ID") == Some(&format!("{branch}@test")) => {
                assert_eq!(r.status, 200);
                return;
            }
            _ => continue,
        }
    }
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_gateway_keeps_serving() {
    let mut ua = Ua::bind("carrier", LOCALHOST).await;
    let mut gateway = Gateway::start(&[("carrier", ua.address, "")], &[], "", "").await;
    ua.set_gateway(gateway.sip);
    let good = options(gateway.sip, ua.address, "base");

    let cases: Vec<(&str, Vec<u8>, Option<u16>)> = vec![
        (
            "bad Content-Length",
            good.replace("Content-Length: 0", "Content-Length: 500")
                .into_bytes(),
            Some(400),
        ),
        (
            "missing Call-ID",
            good.replace("Call-ID: base@test\r\n", "").into_bytes(),
            Some(400),
        ),
        (
            "missing CSeq",
            good.replace("CSeq: 1 OPTIONS\r\n", "").into_bytes(),
            Some(400),
        ),
        (
            "unknown method",
            good.replace("OPTIONS sip", "FROB sip")
                .replace("1 OPTIONS", "1 FROB")
                .into_bytes(),
            Some(501),
        ),
        (
            "urn Request-URI",
            good.replacen(&format!("sip:{}", gateway.sip), "urn:service:sos", 1)
                .into_bytes(),
            Some(416),
        ),
        (
            "SIP/3.0",
            good.replacen("SIP/2.0\r\n", "SIP/3.0\r\n", 1).into_bytes(),
            Some(505),
        ),
        (
            "huge header",
            good.replace(
                "Max-Forwards: 70",
                &format!("X-Huge: {}", "a".repeat(20_000)),
            )
            .into_bytes(),
            Some(400),
        ),
        (
            "too many headers",
            good.replace("Max-Forwards: 70\r\n", &"X-A: 1\r\n".repeat(300))
                .into_bytes(),
            Some(400),
        ),
        (
            "NUL in a header",
            good.replace("tag=p", "tag=\0p").into_bytes(),
            Some(400),
        ),
        (
            "no Via",
            good.replace("Via: ", "X-Via: ").into_bytes(),
            None,
        ),
        ("truncated", good.as_bytes()[..40].to_vec(), None),
        (
            "binary garbage",
            (0..=255u8).cycle().take(1500).collect(),
            None,
        ),
        ("empty lines", b"\r\n\r\n\r\n".to_vec(), None),
    ];
    for (index, (name, bytes, expected)) in cases.into_iter().enumerate() {
        ua.send_raw(&bytes).await;
        match expected {
            Some(status) => match ua.recv_raw_within(Duration::from_secs(2)).await {
                Some(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    assert!(
                        text.starts_with(&format!("SIP/2.0 {status} ")),
                        "{name}: expected {status}, got {text}"
                    );
                }
                None => panic!("{name}: expected {status}, got nothing"),
            },
            None => {
                assert!(
                    ua.recv_raw_within(Duration::from_millis(200))
                        .await
                        .is_none(),
                    "{name}: should be dropped"
                );
                // The marker: the next datagram is the answer to a good OPTIONS sent after it,
                // so an answer to the dropped one was not merely late.
                let branch = format!("dropped-marker-{index}");
                ua.send(&options(gateway.sip, ua.address, &branch)).await;
                let next = ua.recv_raw_within(common::WAIT).await.unwrap_or_default();
                let text = String::from_utf8_lossy(&next);
                assert!(
                    text.starts_with("SIP/2.0 200 ") && text.contains(&format!("{branch}@test")),
                    "{name}: should be dropped, got (before the marker) {text}"
                );
            }
        }
    }
    // Non-UTF-8 in a display name is kept, not refused.
    let mut latin1 = good
        .replace("<sip:ping@", "\"Zh\u{fffd}ng\" <sip:ping@")
        .into_bytes();
    if let Some(position) = latin1.windows(3).position(|w| w == "\u{fffd}".as_bytes()) {
        latin1.splice(position..position + 3, [0xe9]);
    }
    ua.send_raw(&latin1).await;
    assert!(matches!(ua.recv().await, Message::Response(r) if r.status == 200));

    still_serving(&mut ua, gateway.sip, "after").await;
    let (_, metrics) = gateway.http_get("/metrics").await;
    assert!(
        !metrics.contains("hotline_sip_parse_errors_total 0\n"),
        "{metrics}"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn tcp_oversized_message_closes_only_that_connection() {
    let mut ua = Ua::bind("carrier", LOCALHOST).await;
    let mut gateway = Gateway::start(
        &[("carrier", ua.address, "any_port = true")],
        &[],
        "max_message_size = 4096",
        "",
    )
    .await;
    ua.set_gateway(gateway.sip);
    let mut stream = match tokio::net::TcpStream::connect(gateway.sip).await {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    let _ = stream
        .write_all(format!("INVITE sip:x@y SIP/2.0\r\nX-Pad: {}\r\n", "b".repeat(8000)).as_bytes())
        .await;
    let mut buffer = [0u8; 16];
    let closed = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut stream, &mut buffer),
    )
    .await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "connection must be closed: {closed:?}"
    );
    still_serving(&mut ua, gateway.sip, "tcp-after").await;
    gateway.stop().await;
}

#[tokio::test]
async fn arbitrary_datagrams_never_take_the_gateway_down() {
    let mut ua = Ua::bind("carrier", LOCALHOST).await;
    let mut gateway = Gateway::start(&[("carrier", ua.address, "")], &[], "", "").await;
    ua.set_gateway(gateway.sip);
    let good = options(gateway.sip, ua.address, "seed");
    // Random bytes and random mutations of a valid request, generated by proptest.
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 1,
        ..ProptestConfig::default()
    });
    let strategy = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..1400),
        (0..good.len(), any::<u8>(), 1..good.len()).prop_map({
            let good = good.clone();
            move |(at, byte, cut)| {
                let mut bytes = good.clone().into_bytes();
                bytes[at] = byte;
                bytes.truncate(cut.max(at + 1));
                bytes
            }
        }),
    ];
    for _ in 0..1500 {
        let Ok(tree) = strategy.new_tree(&mut runner) else {
            continue;
        };
        ua.send_raw(&tree.current()).await;
    }
    still_serving(&mut ua, gateway.sip, "after-fuzz").await;
    gateway.stop().await;
}

/// `invite` as bytes, its From display name (`"Citizen"`) replaced by `name` as raw bytes.
fn with_display_name(invite: &hotline_gateway::sip::message::Request, name: &[u8]) -> Vec<u8> {
    let text = invite.to_bytes();
    let Some(at) = text.windows(9).position(|w| w == b"\"Citizen\"") else {
        panic!("no display name in the INVITE");
    };
    let mut bytes = text[..at + 1].to_vec();
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(&text[at + 8..]);
    bytes
}

/// A legacy PBX sends the caller's name in GBK: with the peer's `charset = "gbk"` the desk sees
/// the Chinese name; from a peer left at UTF-8 the same bytes arrive as one `?` each, never as
/// U+FFFD (which would triple their length).
#[tokio::test]
async fn a_gbk_display_name_reaches_the_desk_as_chinese() {
    let mut legacy = Ua::bind("legacy", LOCALHOST).await;
    let mut modern = Ua::bind("modern", LOCALHOST).await;
    let mut desk = Ua::bind("hotline", LOCALHOST).await;
    let gateway = Gateway::start(
        &[
            ("legacy", legacy.address, "charset = \"gbk\""),
            ("modern", modern.address, ""),
            ("hotline", desk.address, ""),
        ],
        &[("12345", &["hotline"])],
        "",
        "",
    )
    .await;
    for ua in [&mut legacy, &mut modern, &mut desk] {
        ua.set_gateway(gateway.sip);
    }
    // 张三 in GBK.
    let zhang_san = [0xd5, 0xc5, 0xc8, 0xfd];
    for (caller, shown) in [(&mut legacy, "张三"), (&mut modern, "????")] {
        let invite = caller.invite("12345", "13800138000", "", "");
        caller
            .send_raw(&with_display_name(&invite, &zhang_san))
            .await;
        let incoming = desk.expect_request("INVITE").await;
        let from = incoming.from().unwrap_or_else(|| panic!("no From"));
        assert_eq!(from.display_name.as_deref(), Some(shown));
        desk.send_response(&desk.answer(&incoming, 486, None)).await;
        caller.expect_response("INVITE", 486).await;
    }
}

/// A 6,174-byte ISO-8859-1 display name (each byte invalid UTF-8) leaves as at most 128 bytes:
/// the desk's answers, which echo the From, stay readable, so its 486 reaches the caller at
/// once instead of the INVITE being retransmitted to a desk that answered. A From user part
/// longer than any number is refused 400.
#[tokio::test]
async fn a_hostile_display_name_is_bounded_and_the_desks_answer_is_read() {
    let mut caller = Ua::bind("carrier", LOCALHOST).await;
    let mut desk = Ua::bind("hotline", LOCALHOST).await;
    let gateway = Gateway::start(
        &[
            ("carrier", caller.address, ""),
            ("hotline", desk.address, ""),
        ],
        &[("12345", &["hotline"])],
        "",
        "",
    )
    .await;
    caller.set_gateway(gateway.sip);
    desk.set_gateway(gateway.sip);
    let name = vec![0xe9u8; 6174];
    let invite = caller.invite("12345", "13800138000", "", "");
    caller.send_raw(&with_display_name(&invite, &name)).await;
    let incoming = desk.expect_request("INVITE").await;
    let from = incoming.from().unwrap_or_else(|| panic!("no From"));
    let shown = from.display_name.unwrap_or_default();
    assert!(
        shown.len() <= 128 && shown.chars().all(|c| c == '?'),
        "{shown}"
    );
    desk.send_response(&desk.answer(&incoming, 486, None)).await;
    caller.expect_response("INVITE", 486).await;
    // The gateway read the desk's answer: it acknowledges it (§17.1.1.3), so the transaction
    // is over and the INVITE is not retransmitted.
    desk.expect_request("ACK").await;

    let long_user = "1".repeat(65);
    let invite = caller.invite("12345", &long_user, "", "");
    caller.send_request(&invite).await;
    caller.expect_response("INVITE", 400).await;
    still_serving(&mut caller, gateway.sip, "after-identities").await;
}
