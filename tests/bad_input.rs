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
    for (name, bytes, expected) in cases {
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
            None => assert!(
                ua.recv_raw_within(Duration::from_millis(200))
                    .await
                    .is_none(),
                "{name}: should be dropped"
            ),
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
