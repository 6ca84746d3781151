//! The live status page in a real browser (Debian's Chromium, headless, driven by
//! ChromeDriver) while SIPp plays a citizen, a 12345 agent who transfers by REFER and 110: the
//! page shows the call with the citizen's number masked, then the linkage with its outcome,
//! all without reloading; without its token it is refused. The screenshot taken is kept in
//! `target/tmp/status-page.png`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::browser::Browser;
use common::process::{free_port, GatewayProcess};
use common::sipp::{sipp, sipp_available, sipp_side, Process};

const TOKEN: &str = "wall-screen-7f3a9c2e51";

/// `GET path` on the gateway's HTTP port with `headers`: the status code and the body.
fn get(http: u16, path: &str, headers: &str) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", http)) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n{headers}\r\n").as_bytes());
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    (status, body.unwrap_or_default())
}

#[test]
fn the_status_page_follows_a_sipp_transfer_live_and_masks_the_citizen() {
    assert!(
        sipp_available(),
        "sipp is not installed (apt-get install sip-tester; .ci/run does this)"
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (sip, http, citizen, agent, police) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let config = dir.path().join("gateway.toml");
    let text = format!(
        "[sip]\nlisten = \"127.0.0.1:{sip}\"\n\n[media]\naddress = \"127.0.0.1\"\nports = [33000, 33999]\n\n\
[store]\npath = \"{db}\"\n\n[api]\ngrpc = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:{http}\"\n\n\
[status]\ntoken = \"{TOKEN}\"\nallow = []\n\n\
[[peer]]\nname = \"carrier\"\naddress = \"127.0.0.1:{citizen}\"\nany_port = true\n\n\
[[peer]]\nname = \"hotline\"\naddress = \"127.0.0.1:{agent}\"\nplatform = \"12345\"\n\n\
[[peer]]\nname = \"police\"\naddress = \"127.0.0.1:{police}\"\nplatform = \"110\"\ntrusted = true\n\n\
[[route]]\nnumber = \"12345\"\npeers = [\"hotline\"]\n\n[[route]]\nnumber = \"110\"\npeers = [\"police\"]\n",
        db = dir.path().join("gateway.db").display(),
    );
    std::fs::write(&config, text).unwrap_or_else(|e| panic!("{e}"));
    let _gateway = GatewayProcess::start(&config);

    // Refused without the token (the page, its board and its feed), served with it.
    for path in ["/", "/status.json", "/status/events"] {
        let (status, body) = get(http, path, "");
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(
            get(http, path, "Authorization: Bearer not-the-token\r\n").0,
            401
        );
    }
    let (status, board) = get(
        http,
        "/status.json",
        &format!("Authorization: Bearer {TOKEN}\r\n"),
    );
    assert_eq!(status, 200, "{board}");
    let board: serde_json::Value = serde_json::from_str(&board).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(board["peers"].as_array().map(Vec::len), Some(3), "{board}");

    let browser = Browser::start();
    let page = format!("http://127.0.0.1:{http}/");
    browser.open(&page);
    assert!(
        browser.text().contains("needs its token"),
        "{}",
        browser.text()
    );
    // Once with the token: the cookie keeps it, the address bar loses it.
    browser.open(&format!("{page}?token={TOKEN}"));
    assert_eq!(
        browser.run("return location.href;").as_str(),
        Some(page.as_str())
    );
    browser.wait_for(
        "its feed live",
        "document.getElementById('feed').textContent === 'live'",
        Duration::from_secs(20),
    );
    // Set now, gone if the page ever reloads.
    browser.run("window.notReloaded = true; return true;");

    let transfer_to = ["-m", "1", "-rtp_echo", "-key", "transfer_to", "110"];
    let agents = sipp_side(dir.path(), agent, "agent_refer.xml", &transfer_to);
    let desk = sipp_side(dir.path(), police, "police_uas.xml", &transfer_to);
    let target = format!("127.0.0.1:{sip}");
    let (citizen_port, citizen_media) = (citizen.to_string(), free_port().to_string());
    // The citizen stays on the line 15 s: the page is looked at while the call is up.
    let citizens = match sipp(
        &[
            &target,
            "-s",
            "12345",
            "-i",
            "127.0.0.1",
            "-p",
            &citizen_port,
            "-mi",
            "127.0.0.1",
            "-mp",
            &citizen_media,
            "-m",
            "1",
            "-d",
            "15000",
            "-timeout",
            "60s",
            "-timeout_error",
            "-nostdin",
        ],
        "uac_rtp.xml",
    )
    .spawn()
    {
        Ok(child) => Process(child),
        Err(e) => panic!("sipp citizen: {e}"),
    };

    browser.wait_for(
        "the call with the citizen's number masked",
        "[...document.querySelectorAll('#calls tr')].some(r => r.textContent.includes('138****8000'))",
        Duration::from_secs(20),
    );
    browser.wait_for(
        "the transfer to 110 answered",
        "[...document.querySelectorAll('#linkages tr')].some(r => r.dataset.outcome === 'answered' && r.textContent.includes('12345 → 110'))",
        Duration::from_secs(20),
    );
    browser.wait_for(
        "the call now with 110's desk",
        "[...document.querySelectorAll('#calls tr')].some(r => r.textContent.includes('police (110)'))",
        Duration::from_secs(20),
    );
    assert!(
        !browser.text().contains("13800138000"),
        "the whole number shows:\n{}",
        browser.text()
    );
    // Nor is it anywhere in the board the page is sent.
    let (status, board) = get(
        http,
        "/status.json",
        &format!("Authorization: Bearer {TOKEN}\r\n"),
    );
    assert_eq!(status, 200);
    assert!(
        board.contains("138****8000") && !board.contains("13800138000"),
        "{board}"
    );
    assert_eq!(
        browser.run("return window.notReloaded === true;").as_bool(),
        Some(true),
        "the page reloaded"
    );
    browser.screenshot(&std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png"));

    let mut citizens = citizens;
    let ended = citizens.0.wait();
    assert!(
        ended.as_ref().is_ok_and(|s| s.success()),
        "SIPp citizen: {ended:?}"
    );
    agents.succeeds("agent");
    desk.succeeds("110");
    // The call ended: the page says so by itself, its answer rate counts it.
    browser.wait_for(
        "no calls left and today's answer rate",
        "document.getElementById('calls').children.length === 0 && document.getElementById('kpis').textContent.includes('12345 answer rate100.0%')",
        Duration::from_secs(20),
    );
}

/// Wall screens cannot take the endpoint: the sixteenth status feed is served, the
/// seventeenth refused 503, and `/healthz` still answers at once.
#[tokio::test]
async fn status_feeds_are_capped_and_healthz_still_answers() {
    let carrier = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let address = carrier.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let mut gateway =
        common::Gateway::start_with_tables(&[("carrier", address, "")], &[], "", "", "").await;
    let mut feeds = Vec::new();
    for _ in 0..16 {
        feeds.push(gateway.status_feed().await);
    }
    let (status, body) = gateway.http_get("/status/events").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("16 status feeds"), "{body}");
    assert_eq!(gateway.http_get("/healthz").await.0, 200);
    drop(feeds);
    gateway.stop().await;
}
