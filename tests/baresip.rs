//! Real softphones: baresip (Debian's baresip-core), driven through its ctrl_tcp module.
//!
//! As the agent, it answers the citizen's call to 12345 and transfers it with its own
//! `transfer` command (an in-dialog REFER): the 110 side (an in-process UA) must get the
//! citizen's number, and the citizen's audio must reach 110. And three of them (citizen, agent,
//! 110) hold a three-way call that the agent starts with `*3` (RFC 4733 events from its
//! `sndcode`): each plays its own tone (ausine) and records what it hears (sndfile).

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::recording::Recorded;
use common::{sdp, sdp_address, tone_level, Gateway, RtpPeer, Ua};

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
    start_phone(dir, sip, control, "12345", 880)
}

/// Starts baresip as `user` (auto-answer): a `tone` Hz sine as its microphone, what it hears
/// recorded by sndfile under `dir` (8 kHz mono WAV), ctrl_tcp on `control`.
fn start_phone(dir: &std::path::Path, sip: u16, control: u16, user: &str, tone: u32) -> Baresip {
    start_phone_with(dir, sip, control, user, tone, "")
}

/// [`start_phone`] with more account parameters (`;mediaenc=srtp-mand`).
fn start_phone_with(
    dir: &std::path::Path,
    sip: u16,
    control: u16,
    user: &str,
    tone: u32,
    account: &str,
) -> Baresip {
    let config = format!(
        "poll_method epoll\nsip_listen 127.0.0.1:{sip}\nsip_transports udp\n\
audio_source ausine,{tone}\nausrc_srate 48000\nausrc_channels 2\naudio_alert aufile,/dev/null\n\
module_path /usr/lib/baresip/modules\nmodule g711.so\nmodule ausine.so\nmodule aufile.so\n\
module sndfile.so\nsnd_path {heard}\nmodule srtp.so\n\
module account.so\nmodule menu.so\nmodule ctrl_tcp.so\nctrl_tcp_listen 127.0.0.1:{control}\n",
        heard = dir.display()
    );
    let accounts = format!("<sip:{user}@127.0.0.1:{sip}>;regint=0;answermode=auto{account}\n");
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

/// A ctrl_tcp connection kept open: baresip sends it the responses to our commands and its
/// events (CALL_ESTABLISHED, CALL_CLOSED, ...) as netstrings of JSON.
struct Control {
    stream: tokio::net::TcpStream,
    pending: Vec<u8>,
    /// Events that arrived while a command waited for its response.
    events: std::collections::VecDeque<String>,
}

impl Control {
    async fn connect(port: u16) -> Control {
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(stream) => Control {
                stream,
                pending: Vec::new(),
                events: std::collections::VecDeque::new(),
            },
            Err(e) => panic!("ctrl_tcp: {e}"),
        }
    }

    /// The next netstring's text.
    async fn next(&mut self) -> String {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(colon) = self.pending.iter().position(|b| *b == b':') {
                let length: usize = String::from_utf8_lossy(&self.pending[..colon])
                    .trim()
                    .parse()
                    .unwrap_or(0);
                if self.pending.len() > colon + length + 1 {
                    let text =
                        String::from_utf8_lossy(&self.pending[colon + 1..colon + 1 + length])
                            .to_string();
                    self.pending.drain(..colon + length + 2);
                    return text;
                }
            }
            let mut buffer = [0u8; 4096];
            let read = tokio::time::timeout(common::WAIT, self.stream.read(&mut buffer)).await;
            match read {
                Ok(Ok(n)) if n > 0 => self.pending.extend_from_slice(&buffer[..n]),
                _ => panic!("ctrl_tcp said nothing more"),
            }
        }
    }

    async fn command(&mut self, command: &str, params: &str) {
        use tokio::io::AsyncWriteExt;
        let json = format!("{{\"command\":\"{command}\",\"params\":\"{params}\",\"token\":\"c\"}}");
        if self
            .stream
            .write_all(format!("{}:{json},", json.len()).as_bytes())
            .await
            .is_err()
        {
            panic!("ctrl_tcp write failed");
        }
        loop {
            let reply = self.next().await;
            if reply.contains("\"response\":true") {
                assert!(
                    !reply.contains("\"ok\":false"),
                    "baresip refused {command}: {reply}"
                );
                return;
            }
            self.events.push_back(reply);
        }
    }

    /// Waits for an event of `kind` (e.g. `CALL_ESTABLISHED`).
    async fn event(&mut self, kind: &str) {
        let wanted = format!("\"type\":\"{kind}\"");
        while let Some(event) = self.events.pop_front() {
            if event.contains(&wanted) {
                return;
            }
        }
        while !self.next().await.contains(&wanted) {}
    }
}

/// Samples per second in sndfile's recordings (8 kHz mono).
const RECORDED_RATE: usize = 8000;

/// How many samples a phone has recorded so far: sndfile writes what it hears as it hears it
/// (0 before its call has started).
fn recorded(dir: &std::path::Path) -> usize {
    let file = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-dec.wav"));
    let Some(bytes) = file.and_then(|f| std::fs::read(f).ok()) else {
        return 0;
    };
    bytes
        .windows(4)
        .position(|w| w == b"data")
        .map_or(0, |data| bytes.len().saturating_sub(data + 8) / 2)
}

/// Waits (bounded) until each phone of `dirs` has recorded `seconds` more than it had: the
/// stretch of conversation the test then reads.
async fn recordings_grow(dirs: &[&std::path::Path], seconds: usize) {
    let wanted: Vec<usize> = dirs
        .iter()
        .map(|dir| recorded(dir) + seconds * RECORDED_RATE)
        .collect();
    let deadline = tokio::time::Instant::now() + common::WAIT + Duration::from_secs(5);
    loop {
        let now: Vec<usize> = dirs.iter().map(|dir| recorded(dir)).collect();
        if now.iter().zip(&wanted).all(|(now, wanted)| now >= wanted) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "recorded {now:?} samples, waiting for {wanted:?}"
        );
        // A file's growth has no event to await: look again shortly.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a phone heard: the 8 kHz mono samples sndfile wrote of its one call.
fn heard(dir: &std::path::Path) -> Vec<i16> {
    let file = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-dec.wav"));
    let Some(bytes) = file.and_then(|f| std::fs::read(f).ok()) else {
        panic!("no recording under {}", dir.display());
    };
    let Some(data) = bytes.windows(4).position(|w| w == b"data") else {
        panic!("not a WAV file");
    };
    bytes
        .get(data + 8..)
        .unwrap_or_default()
        .chunks_exact(2)
        .map(|pair| i16::from_le_bytes([pair[0], pair[1]]))
        .collect()
}

/// `samples` hold each of `present` at a usable level and none of `absent`. Levels are averaged
/// over half-second windows: the tones' phase jumps where the mix starts or stops.
fn assert_tones(samples: &[i16], who: &str, present: &[f64], absent: &[f64]) {
    assert!(
        samples.len() >= 8000,
        "{who} heard {} samples",
        samples.len()
    );
    let windows: Vec<&[i16]> = samples.chunks_exact(4000).collect();
    let levels: Vec<(f64, f64)> = [440.0, 880.0, 1320.0]
        .iter()
        .map(|f| {
            let sum: f64 = windows.iter().map(|w| tone_level(w, *f)).sum();
            (*f, sum / windows.len() as f64)
        })
        .collect();
    for (frequency, level) in &levels {
        if present.contains(frequency) {
            assert!(
                *level > 2000.0,
                "{who} should hear {frequency} Hz: {levels:?}"
            );
        }
        if absent.contains(frequency) {
            assert!(
                *level < 500.0,
                "{who} should not hear {frequency} Hz: {levels:?}"
            );
        }
    }
}

/// Three baresip phones: the citizen (440 Hz) calls 12345, the agent (880 Hz) answers and keys
/// `*3`, 110 (1320 Hz) answers the gateway's INVITE. Each hears the other two and not itself;
/// after the agent hangs up, citizen and 110 still hear each other.
#[tokio::test]
async fn three_baresip_phones_hold_a_three_way_call_and_the_agent_leaves() {
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        })
        .collect();
    let ports: Vec<(u16, u16)> = (0..3).map(|_| free_ports()).collect();
    let address = |i: usize| SocketAddr::new(LOCALHOST, ports[i].0);
    let recordings = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut gateway = Gateway::start_with_tables(
        &[
            ("carrier", address(0), ""),
            ("hotline", address(1), "platform = \"12345\""),
            ("police", address(2), "platform = \"110\"\ntrusted = true"),
        ],
        &[("12345", &["hotline"]), ("110", &["police"])],
        "",
        "",
        &format!(
            "\n[[hotkey]]\ndtmf = \"*3\"\naction = \"conference\"\ntarget = \"110\"\n\
             \n[recording]\npath = \"{}\"\n",
            recordings.path().display()
        ),
    )
    .await;
    let phones = [("13800138000", 440), ("12345", 880), ("110", 1320)];
    let _running: Vec<Baresip> = phones
        .iter()
        .enumerate()
        .map(|(i, (user, tone))| start_phone(dirs[i].path(), ports[i].0, ports[i].1, user, *tone))
        .collect();
    let mut citizen = Control::connect(ports[0].1).await;
    let mut agent = Control::connect(ports[1].1).await;
    let mut police = Control::connect(ports[2].1).await;

    citizen
        .command("dial", &format!("sip:12345@{}", gateway.sip))
        .await;
    agent.event("CALL_ESTABLISHED").await;
    // The agent keys *3 (baresip sends RFC 4733 events); the gateway invites 110.
    agent.command("sndcode", "*").await;
    agent.command("sndcode", "3").await;
    police.event("CALL_ESTABLISHED").await;
    // Two seconds of the three of them, recorded by each.
    let all: Vec<&std::path::Path> = dirs.iter().map(|d| d.path()).collect();
    recordings_grow(&all, 2).await;
    agent.command("hangup", "").await;
    agent.event("CALL_CLOSED").await;
    // Two seconds of citizen and 110 alone, recorded by both.
    recordings_grow(&[dirs[0].path(), dirs[2].path()], 2).await;
    citizen.command("hangup", "").await;
    police.event("CALL_CLOSED").await;

    let citizen_heard = heard(dirs[0].path());
    let agent_heard = heard(dirs[1].path());
    let police_heard = heard(dirs[2].path());
    assert_tones(&citizen_heard, "the citizen", &[880.0, 1320.0], &[440.0]);
    assert_tones(&agent_heard, "the agent", &[440.0, 1320.0], &[880.0]);
    assert_tones(&police_heard, "110", &[440.0, 880.0], &[1320.0]);
    // The last second: the agent has gone, citizen and 110 talk on.
    let last = |samples: &[i16]| samples[samples.len().saturating_sub(8000)..].to_vec();
    assert_tones(
        &last(&citizen_heard),
        "the citizen at the end",
        &[1320.0],
        &[440.0, 880.0],
    );
    assert_tones(
        &last(&police_heard),
        "110 at the end",
        &[440.0],
        &[880.0, 1320.0],
    );

    let record = gateway
        .calls()
        .into_iter()
        .next()
        .map(|r| r.id)
        .unwrap_or_default();
    let parties = gateway.conference_parties(&record);
    assert_eq!(parties.len(), 3, "{parties:?}");

    // The gateway's recording of the citizen's call: the citizen on the left throughout; on
    // the right the agent, then agent and 110 mixed, then 110 alone.
    let recorded = Recorded::read(&ended_recording(&gateway).await).await;
    let joined = recorded.last_step("conference_joined");
    let left = recorded.step("agent_left");
    let end = recorded.end_ms();
    let span = |channel: &[i16], from: i64, to: i64| -> Vec<i16> {
        let at = |ms: i64| ((ms.max(0) as usize) * 8).min(channel.len());
        channel[at(from)..at(to)].to_vec()
    };
    let said = span(&recorded.left, joined + 300, end - 300);
    assert_tones(&said, "the recording's left", &[440.0], &[880.0, 1320.0]);
    let mixed = span(&recorded.right, joined + 300, left - 300);
    assert_tones(
        &mixed,
        "the recording's right, in conference",
        &[880.0, 1320.0],
        &[440.0],
    );
    let alone = span(&recorded.right, left + 300, end - 300);
    assert_tones(
        &alone,
        "the recording's right, after the agent",
        &[1320.0],
        &[440.0, 880.0],
    );
    gateway.stop().await;
}

/// The recording of the one call the gateway carried, once its record is ended.
async fn ended_recording(gateway: &Gateway) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ended = gateway.calls().into_iter().find(|r| r.ended_at.is_some());
        if let Some(record) = ended {
            return match record.recording.clone() {
                Some(path) => path,
                None => panic!("not recorded: {record:?}"),
            };
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the call never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SRTP on both legs, each with its own keys: two baresip phones with SRTP mandatory (libre's
/// own SRTP, not ours). The citizen (440 Hz) offers RTP/SAVP with SDES and the gateway answers
/// it; the gateway offers RTP/SAVP to the agent (880 Hz) because the hotline peer's `srtp` is
/// `mandatory`. Each phone decrypts what the gateway re-encrypted for it, and hears the other.
#[tokio::test]
async fn two_baresip_phones_talk_over_srtp_on_both_legs() {
    let dirs: Vec<tempfile::TempDir> = (0..2)
        .map(|_| match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        })
        .collect();
    let ports: Vec<(u16, u16)> = (0..2).map(|_| free_ports()).collect();
    let address = |i: usize| SocketAddr::new(LOCALHOST, ports[i].0);
    let recordings = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut gateway = Gateway::start_with_tables(
        &[
            ("carrier", address(0), ""),
            (
                "hotline",
                address(1),
                "platform = \"12345\"\nsrtp = \"mandatory\"",
            ),
        ],
        &[("12345", &["hotline"])],
        "",
        "",
        &format!(
            "\n[recording]\npath = \"{}\"\n",
            recordings.path().display()
        ),
    )
    .await;
    let phones = [("13800138000", 440), ("12345", 880)];
    let _running: Vec<Baresip> = phones
        .iter()
        .enumerate()
        .map(|(i, (user, tone))| {
            start_phone_with(
                dirs[i].path(),
                ports[i].0,
                ports[i].1,
                user,
                *tone,
                ";mediaenc=srtp-mand",
            )
        })
        .collect();
    let mut citizen = Control::connect(ports[0].1).await;
    let mut agent = Control::connect(ports[1].1).await;
    citizen
        .command("dial", &format!("sip:12345@{}", gateway.sip))
        .await;
    agent.event("CALL_ESTABLISHED").await;
    citizen.event("CALL_ESTABLISHED").await;
    // Two seconds of conversation, recorded by both.
    recordings_grow(&[dirs[0].path(), dirs[1].path()], 2).await;
    citizen.command("hangup", "").await;
    agent.event("CALL_CLOSED").await;

    // The SDP each phone got from the gateway, in baresip's SIP trace (blocks of
    // "#\nUDP <from> -> <to>\n<message>"): the answer to the citizen, the offer to the agent,
    // each RTP/SAVP with one key.
    let from_gateway = format!("UDP {} -> ", gateway.sip);
    for (dir, who, first_line) in [
        (&dirs[0], "the citizen", "SIP/2.0 200 OK"),
        (&dirs[1], "the agent", "INVITE "),
    ] {
        let trace = std::fs::read_to_string(dir.path().join("baresip.log")).unwrap_or_default();
        let got = trace.split("#\n").any(|block| {
            let mut lines = block.lines();
            lines.next().is_some_and(|l| l.starts_with(&from_gateway))
                && lines.next().is_some_and(|l| l.starts_with(first_line))
                && block.contains("RTP/SAVP")
                && block.matches("a=crypto:").count() == 1
        });
        assert!(got, "{who} got no SDES from the gateway: {trace}");
    }
    assert_tones(&heard(dirs[0].path()), "the citizen", &[880.0], &[440.0]);
    assert_tones(&heard(dirs[1].path()), "the agent", &[440.0], &[880.0]);
    assert_eq!(
        gateway.metric("hotline_srtp_rejected_total").await,
        Some(0.0)
    );
    let relayed = gateway.metric("hotline_rtp_packets_relayed_total").await;
    // Flushed once a second: at least the first second's.
    assert!(relayed.is_some_and(|n| n >= 50.0), "{relayed:?}");
    // Both legs encrypted, each with its own keys: the gateway's recording is in clear.
    let recorded = Recorded::read(&ended_recording(&gateway).await).await;
    let end = recorded.sidecar.duration_ms.unwrap_or_default() as usize * 8;
    let middle = |channel: &[i16]| channel[4000.min(end)..end.saturating_sub(4000)].to_vec();
    assert_tones(
        &middle(&recorded.left),
        "the recording's left",
        &[440.0],
        &[880.0],
    );
    assert_tones(
        &middle(&recorded.right),
        "the recording's right",
        &[880.0],
        &[440.0],
    );
    gateway.stop().await;
}
