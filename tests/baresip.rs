//! A real softphone as the agent: baresip (Debian's baresip-core) answers the citizen's call to
//! 12345 and transfers it with its own `transfer` command (sent through its ctrl_tcp module),
//! which makes it send an in-dialog REFER. The 110 side (an in-process UA) must get the
//! citizen's number, and the citizen's audio must reach 110.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{sdp, sdp_address, Gateway, RtpPeer, Ua};

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

struct Baresip(Child);

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two free ports: baresip's SIP port (it also binds TLS on the next one) and ctrl_tcp's.
fn free_ports() -> (u16, u16) {
    loop {
        let Ok(socket) = std::net::UdpSocket::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(address) = socket.local_addr() else {
            continue;
        };
        let sip = address.port();
        if sip > 60000 || sip % 2 == 1 {
            continue;
        }
        drop(socket);
        let free = |port: u16| {
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        };
        if free(sip) && free(sip + 1) && free(sip + 2) {
            return (sip, sip + 2);
        }
    }
}

/// Starts baresip as the 12345 agent: auto-answer, a 880 Hz tone as its microphone, ctrl_tcp
/// for commands. Returns once ctrl_tcp accepts connections.
fn start_baresip(dir: &std::path::Path, sip: u16, control: u16) -> Baresip {
    let config = format!(
        "poll_method epoll\nsip_listen 127.0.0.1:{sip}\nsip_transports udp\n\
audio_player aufile,{heard}\naudio_source ausine,880\nausrc_srate 48000\nausrc_channels 2\naudio_alert aufile,/dev/null\n\
module_path /usr/lib/baresip/modules\nmodule g711.so\nmodule ausine.so\nmodule aufile.so\n\
module account.so\nmodule menu.so\nmodule ctrl_tcp.so\nctrl_tcp_listen 127.0.0.1:{control}\n",
        heard = dir.join("heard.wav").display()
    );
    let accounts = format!("<sip:12345@127.0.0.1:{sip}>;regint=0;answermode=auto\n");
    if std::fs::write(dir.join("config"), config).is_err()
        || std::fs::write(dir.join("accounts"), accounts).is_err()
    {
        panic!("cannot write baresip's config");
    }
    let child = Command::new("baresip")
        .arg("-f")
        .arg(dir)
        .args(["-t", "60", "-s"])
        .stdin(Stdio::null())
        // Its SIP trace (-s), for reading after a failure.
        .stdout(
            std::fs::File::create(dir.join("baresip.log"))
                .map(Stdio::from)
                .unwrap_or(Stdio::null()),
        )
        .stderr(Stdio::null())
        .spawn();
    let baresip = match child {
        Ok(c) => Baresip(c),
        Err(e) => panic!("baresip is not installed (apt-get install baresip-core): {e}"),
    };
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", control)).is_ok() {
            return baresip;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("baresip's ctrl_tcp never listened");
}

/// One ctrl_tcp command (a netstring of JSON); returns baresip's response text.
fn baresip_command(control: u16, command: &str, params: &str) -> String {
    let json = format!("{{\"command\":\"{command}\",\"params\":\"{params}\",\"token\":\"t1\"}}");
    let mut stream = match TcpStream::connect(("127.0.0.1", control)) {
        Ok(s) => s,
        Err(e) => panic!("ctrl_tcp: {e}"),
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream
        .write_all(format!("{}:{json},", json.len()).as_bytes())
        .is_err()
    {
        panic!("ctrl_tcp write failed");
    }
    let mut reply = vec![0u8; 4096];
    let n = stream.read(&mut reply).unwrap_or(0);
    String::from_utf8_lossy(&reply[..n]).to_string()
}

#[tokio::test]
async fn baresip_agent_transfers_the_citizen_to_110_with_its_own_transfer_command() {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("{e}"),
    };
    let (sip_port, control) = free_ports();
    let agent_address = SocketAddr::new(LOCALHOST, sip_port);
    let mut citizen = Ua::bind("carrier", LOCALHOST).await;
    let mut police = Ua::bind("police", LOCALHOST).await;
    let mut gateway = Gateway::start(
        &[
            ("carrier", citizen.address, ""),
            ("hotline", agent_address, "platform = \"12345\""),
            (
                "police",
                police.address,
                "platform = \"110\"\ntrusted = true",
            ),
        ],
        &[("12345", &["hotline"]), ("110", &["police"])],
        "",
        "",
    )
    .await;
    citizen.set_gateway(gateway.sip);
    police.set_gateway(gateway.sip);
    let _baresip = start_baresip(dir.path(), sip_port, control);

    // The citizen calls 12345; baresip answers by itself.
    let citizen_rtp = RtpPeer::bind(LOCALHOST).await;
    let invite = citizen.invite(
        "12345",
        "13800138000",
        &sdp(citizen_rtp.address, &[8, 0], "sendrecv"),
        "",
    );
    citizen.send_request(&invite).await;
    let ok = citizen.expect_response("INVITE", 200).await;
    let gateway_a_media = sdp_address(ok.sdp().unwrap_or_default());
    let ack = citizen.ack(&invite, &ok, "");
    citizen.send_request(&ack).await;
    // baresip's tone reaches the citizen through the gateway.
    let tone = citizen_rtp.recv().await;
    assert!(!tone.payload.is_empty());

    // The agent presses "transfer" on the softphone.
    let target = format!("sip:110@{}", gateway.sip);
    let reply = tokio::task::spawn_blocking(move || baresip_command(control, "transfer", &target))
        .await
        .unwrap_or_default();
    assert!(!reply.contains("\"ok\":false"), "baresip refused: {reply}");

    let to_police = police.expect_request("INVITE").await;
    assert_eq!(
        to_police.from().and_then(|f| f.uri.user),
        Some("13800138000".into()),
        "110 sees the citizen's number, not the agent's"
    );
    assert!(to_police
        .headers
        .get("P-Asserted-Identity")
        .is_some_and(|p| p.contains("13800138000")));
    let police_rtp = RtpPeer::bind(LOCALHOST).await;
    let answer = sdp(police_rtp.address, &[8], "sendrecv");
    police
        .send_response(&police.answer(&to_police, 200, Some(&answer)))
        .await;
    police.expect_request("ACK").await;

    // The citizen's audio reaches 110 (and the relay latched 110 for the way back).
    let mut heard = None;
    for sequence in 0..50u16 {
        citizen_rtp
            .send(
                gateway_a_media,
                8,
                sequence,
                160 * u32::from(sequence),
                0xc171,
                &[0x2a; 160],
            )
            .await;
        if let Some(packet) = police_rtp.recv_within(Duration::from_millis(100)).await {
            if packet.payload == vec![0x2a; 160] {
                heard = Some(packet);
                break;
            }
        }
    }
    assert!(heard.is_some(), "the citizen's audio never reached 110");

    // baresip's leg is released: once it has hung up, the record names 110.
    let bye = citizen.in_dialog(&invite, &ok, "BYE", 2, "");
    citizen.send_request(&bye).await;
    citizen.expect_response("BYE", 200).await;
    let bye = police.expect_request("BYE").await;
    police.send_response(&police.answer(&bye, 200, None)).await;
    let record = gateway.ended_record(invite.call_id()).await;
    assert_eq!(record.b_peer.as_deref(), Some("police"));
    let linkages = gateway.linkages(&record.id);
    assert_eq!(linkages.len(), 1, "{linkages:?}");
    assert_eq!(linkages[0].trigger, "refer");
    assert_eq!(linkages[0].outcome.as_deref(), Some("answered"));
    gateway.stop().await;
}
