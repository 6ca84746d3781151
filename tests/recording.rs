//! Recording (录音) end to end over loopback: the citizen sends 440 Hz, the agent 880 Hz, 110
//! 1320 Hz; the call's WAV must have 440 Hz on the left throughout and, on the right, what the
//! citizen heard: 880 Hz, then 1320 Hz after a transfer, 880 Hz again after a failed one, both
//! in a three-way call; the JSON's steps where the audio changes; the download only for the
//! platforms the call involved.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::platform::Platform;
use common::process::{free_port, GatewayProcess};
use common::recording::Recorded;
use common::{establish, tone_level, Gateway, RtpPeer, Ua};
use hotline_gateway::media::g711;
use hotline_gateway::media::recording::Sidecar;
use hotline_gateway::sip::message::Message;
use hotline_gateway::workorder::pb;
use pb::EventType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
const CITIZEN_HZ: f64 = 440.0;
const AGENT_HZ: f64 = 880.0;
const POLICE_HZ: f64 = 1320.0;
const LEVEL: f64 = 8000.0;
const TOKEN_12345: &str = "token-of-the-12345-platform";
const TOKEN_110: &str = "token-of-the-110-platform";
const TOKEN_120: &str = "token-of-the-120-platform";

/// Carrier, hotline (12345) and police (110), hotkeys `*1` transfer and `*3` conference to 110,
/// recording into `recordings` with `extra` keys.
async fn setup(recordings: &Path, extra: &str) -> (Gateway, Ua, Ua, Ua) {
    let mut citizen = Ua::bind("carrier", LOCALHOST).await;
    let mut agent = Ua::bind("hotline", LOCALHOST).await;
    let mut police = Ua::bind("police", LOCALHOST).await;
    let gateway = Gateway::start_with_tables(
        &[
            ("carrier", citizen.address, ""),
            ("hotline", agent.address, "platform = \"12345\""),
            (
                "police",
                police.address,
                "platform = \"110\"\ntrusted = true",
            ),
        ],
        &[("12345", &["hotline"]), ("110", &["police"])],
        "transfer_ring_timeout_secs = 2\nhotkey_inter_digit_ms = 500\n",
        "",
        &format!(
            "\n[[hotkey]]\ndtmf = \"*3\"\naction = \"conference\"\ntarget = \"110\"\n\
             \n[[platform]]\nname = \"12345\"\ntoken = \"{TOKEN_12345}\"\n\
             \n[[platform]]\nname = \"110\"\ntoken = \"{TOKEN_110}\"\n\
             \n[[platform]]\nname = \"120\"\ntoken = \"{TOKEN_120}\"\n\
             \n[recording]\npath = \"{}\"\n{extra}\n",
            recordings.display()
        ),
    )
    .await;
    for ua in [&mut citizen, &mut agent, &mut police] {
        ua.set_gateway(gateway.sip);
    }
    (gateway, citizen, agent, police)
}

/// A party streaming its tone (PCMA) every 20 ms; what comes back is read and dropped.
struct Talker<'a> {
    rtp: &'a RtpPeer,
    to: SocketAddr,
    frequency: f64,
    sent: u32,
}

impl<'a> Talker<'a> {
    fn new(rtp: &'a RtpPeer, to: SocketAddr, frequency: f64) -> Talker<'a> {
        Talker {
            rtp,
            to,
            frequency,
            sent: 0,
        }
    }

    async fn send(&mut self) {
        let mut payload = [0u8; 160];
        for (n, code) in payload.iter_mut().enumerate() {
            let t = f64::from(self.sent * 160 + n as u32) / 8000.0;
            let sample = (LEVEL * (2.0 * std::f64::consts::PI * self.frequency * t).sin()) as i16;
            *code = g711::linear_to_alaw(sample);
        }
        let ssrc = self.frequency as u32;
        let sequence = self.sent as u16;
        self.rtp
            .send(self.to, 8, sequence, self.sent * 160, ssrc, &payload)
            .await;
        self.sent += 1;
    }
}

/// Every talker sends `packets` packets, 20 ms apart; what they receive is drained.
async fn talk(talkers: &mut [&mut Talker<'_>], packets: u32) {
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    for _ in 0..packets {
        pace.tick().await;
        for talker in talkers.iter_mut() {
            talker.send().await;
        }
        for talker in talkers.iter_mut() {
            while talker
                .rtp
                .recv_within(Duration::from_millis(1))
                .await
                .is_some()
            {}
        }
    }
}

/// `channel` between `from_ms` and `to_ms` has `hears` (at least half the level) and not `not`.
fn assert_tones(channel: &[i16], (from_ms, to_ms): (i64, i64), hears: &[f64], not: &[f64]) {
    let at = |ms: i64| ((ms.max(0) as usize) * 8).min(channel.len());
    let window = &channel[at(from_ms)..at(to_ms)];
    assert!(
        window.len() >= 1600,
        "{from_ms}-{to_ms} ms: only {} samples",
        window.len()
    );
    for frequency in hears {
        let level = tone_level(window, *frequency);
        assert!(
            level > 0.5 * LEVEL,
            "{from_ms}-{to_ms} ms should hold {frequency} Hz: level {level:.0}"
        );
    }
    for frequency in not {
        let level = tone_level(window, *frequency);
        assert!(
            level < 0.05 * LEVEL,
            "{from_ms}-{to_ms} ms should not hold {frequency} Hz: level {level:.0}"
        );
    }
}

/// Where in `channel` (ms) `frequency` is first heard in a whole 20 ms frame, from `from_ms`.
fn onset_ms(channel: &[i16], frequency: f64, from_ms: i64) -> i64 {
    let mut at = (from_ms.max(0) as usize) * 8;
    while at + 160 <= channel.len() {
        if tone_level(&channel[at..at + 160], frequency) > 0.5 * LEVEL {
            return (at / 8) as i64;
        }
        at += 80;
    }
    panic!("{frequency} Hz never heard after {from_ms} ms");
}

/// `GET /recordings/<name>` with `token` (and `range`): the status, headers and body.
async fn download(
    gateway: &Gateway,
    name: &str,
    token: Option<&str>,
    range: Option<&str>,
) -> (u16, String, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(gateway.http)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut request = format!("GET /recordings/{name} HTTP/1.1\r\nHost: test\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(range) = range {
        request.push_str(&format!("Range: {range}\r\n"));
    }
    request.push_str("\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes)).await;
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head"));
    let head = String::from_utf8_lossy(&bytes[..split]).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head, bytes[split + 4..].to_vec())
}

/// The citizen hangs up; the gateway's record of the call once ended.
async fn hang_up(
    gateway: &Gateway,
    citizen: &mut Ua,
    call: &common::Established,
    other: &mut Ua,
) -> hotline_gateway::store::CallRecord {
    let bye = citizen.in_dialog(&call.invite, &call.ok, "BYE", 2, "");
    citizen.send_request(&bye).await;
    citizen.expect_response("BYE", 200).await;
    let bye = other.expect_request("BYE").await;
    other.send_response(&other.answer(&bye, 200, None)).await;
    gateway.ended_record(call.invite.call_id()).await
}

#[tokio::test]
async fn a_blind_transfer_is_one_recording_and_only_its_platforms_may_download_it() {
    let recordings = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (gateway, mut citizen, mut agent, mut police) = setup(recordings.path(), "").await;
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    // The platform learns of the recording with the answer, and GetCall says it too.
    let answered = hotline.until(EventType::CallAnswered).await;
    let announced = answered.recording.clone().unwrap_or_default();
    assert_eq!(announced.recording_id, answered.call_id);
    let mut unary = pb::work_order_service_client::WorkOrderServiceClient::connect(format!(
        "http://{}",
        gateway.grpc
    ))
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mut request = tonic::Request::new(pb::GetCallRequest {
        call_id: answered.call_id.clone(),
    });
    let bearer = format!("Bearer {TOKEN_12345}").parse();
    request
        .metadata_mut()
        .insert("authorization", bearer.unwrap_or_else(|e| panic!("{e}")));
    let got = unary
        .get_call(request)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let call_info = got.into_inner().call.unwrap_or_default();
    assert_eq!(call_info.recording, Some(announced.clone()));
    let mut said = Talker::new(&call.caller_rtp, call.gateway_a_media, CITIZEN_HZ);
    let mut desk = Talker::new(&call.callee_rtp, call.gateway_b_media, AGENT_HZ);
    talk(&mut [&mut said, &mut desk], 100).await;

    let mut refer = agent.uas_request(&call.incoming, "REFER", 2);
    refer.headers.push("Refer-To", "<sip:110@gw>");
    agent.send_request(&refer).await;
    agent.expect_response("REFER", 202).await;
    let invite = police.expect_request("INVITE").await;
    police
        .send_response(&police.answer(&invite, 180, None))
        .await;
    let police_rtp = common::answer_with_media(&mut police, &invite, &[8]).await;
    // The agent's NOTIFYs (100, 180, 200) and its release.
    loop {
        if let Message::Request(request) = agent.recv().await {
            agent
                .send_response(&agent.answer(&request, 200, None))
                .await;
            if request.method.as_str() == "BYE" {
                break;
            }
        }
    }
    let mut desk_110 = Talker::new(&police_rtp, call.gateway_b_media, POLICE_HZ);
    talk(&mut [&mut said, &mut desk_110], 100).await;
    let record = hang_up(&gateway, &mut citizen, &call, &mut police).await;

    let path = record
        .recording
        .clone()
        .unwrap_or_else(|| panic!("no recording: {record:?}"));
    assert_eq!(announced.path, path, "the call record and the events agree");
    let transferred = hotline.until(EventType::TransferAnswered).await;
    assert_eq!(transferred.recording, Some(announced.clone()));
    let ended = hotline.until(EventType::CallEnded).await;
    assert_eq!(ended.recording, Some(announced.clone()));
    assert!(path.ends_with(&format!("/{}.wav", record.id)), "{path}");
    let recorded = Recorded::read(&path).await;
    let answered = recorded.step("linkage_answered");
    assert!(recorded.step("transfer_requested") <= answered);
    let end = recorded.end_ms();
    assert_tones(
        &recorded.left,
        (100, end - 100),
        &[CITIZEN_HZ],
        &[AGENT_HZ, POLICE_HZ],
    );
    assert_tones(
        &recorded.right,
        (100, answered - 300),
        &[AGENT_HZ],
        &[CITIZEN_HZ, POLICE_HZ],
    );
    assert_tones(
        &recorded.right,
        (answered + 200, end - 100),
        &[POLICE_HZ],
        &[AGENT_HZ, CITIZEN_HZ],
    );
    let onset = onset_ms(&recorded.right, POLICE_HZ, answered - 1000);
    assert!(
        (onset - answered).abs() <= 100,
        "110 heard at {onset} ms, its answer marked at {answered} ms"
    );
    let sidecar = &recorded.sidecar;
    assert_eq!(sidecar.call_id, record.id);
    assert_eq!(sidecar.caller, "13800138000");
    assert_eq!(sidecar.linkages.len(), 1);
    assert!(sidecar.platforms.contains(&"12345".to_string()));
    assert!(
        sidecar.platforms.contains(&"110".to_string()),
        "{:?}",
        sidecar.platforms
    );

    // Downloads: both platforms of the call, in whole and in part; nobody else.
    let whole = std::fs::read(&recorded.path).unwrap_or_else(|e| panic!("{e}"));
    for token in [TOKEN_12345, TOKEN_110] {
        let (status, head, body) = download(&gateway, &record.id, Some(token), None).await;
        assert_eq!(status, 200, "{head}");
        assert!(head.contains("Content-Type: audio/wav"), "{head}");
        assert_eq!(body, whole);
    }
    let (status, head, body) =
        download(&gateway, &record.id, Some(TOKEN_110), Some("bytes=0-43")).await;
    assert_eq!(status, 206);
    assert!(
        head.contains(&format!("Content-Range: bytes 0-43/{}", whole.len())),
        "{head}"
    );
    assert_eq!(body, whole[..44]);
    let (status, _, body) = download(
        &gateway,
        &format!("{}.json", record.id),
        Some(TOKEN_12345),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(serde_json::from_slice::<Sidecar>(&body).is_ok());
    assert_eq!(
        download(&gateway, &record.id, Some(TOKEN_120), None)
            .await
            .0,
        403
    );
    assert_eq!(download(&gateway, &record.id, None, None).await.0, 401);
    assert_eq!(
        download(&gateway, &record.id, Some("not-a-token-at-all"), None)
            .await
            .0,
        401
    );
    assert_eq!(
        download(&gateway, "0000000000000000", Some(TOKEN_110), None)
            .await
            .0,
        404
    );
    assert_eq!(
        download(&gateway, "..%2F..%2Fetc", Some(TOKEN_110), None)
            .await
            .0,
        404
    );
    let (status, head, _) = download(
        &gateway,
        &record.id,
        Some(TOKEN_110),
        Some(&format!("bytes={}-", whole.len())),
    )
    .await;
    assert_eq!(status, 416, "{head}");
}

#[tokio::test]
async fn a_failed_transfer_goes_back_to_the_agent_and_a_three_way_call_is_mixed() {
    let recordings = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (gateway, mut citizen, mut agent, mut police) = setup(recordings.path(), "").await;
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let mut said = Talker::new(&call.caller_rtp, call.gateway_a_media, CITIZEN_HZ);
    let mut desk = Talker::new(&call.callee_rtp, call.gateway_b_media, AGENT_HZ);
    talk(&mut [&mut said, &mut desk], 50).await;

    // 110 is busy: the citizen stays with the agent.
    let mut refer = agent.uas_request(&call.incoming, "REFER", 2);
    refer.headers.push("Refer-To", "<sip:110@gw>");
    agent.send_request(&refer).await;
    agent.expect_response("REFER", 202).await;
    let invite = police.expect_request("INVITE").await;
    police
        .send_response(&police.answer(&invite, 486, None))
        .await;
    loop {
        let notify = agent.expect_request("NOTIFY").await;
        agent.send_response(&agent.answer(&notify, 200, None)).await;
        if String::from_utf8_lossy(&notify.body).contains("486") {
            break;
        }
    }
    talk(&mut [&mut said, &mut desk], 75).await;

    // Then the agent keys *3 and 110 joins: the citizen hears both.
    for (cseq, digit) in [(3, '*'), (4, '3')] {
        let info = common::dtmf_info(&mut agent, &call, cseq, digit);
        agent.send_request(&info).await;
        agent.expect_response("INFO", 200).await;
    }
    let invite = police.expect_request("INVITE").await;
    let guest_media = common::sdp_address(invite.sdp().unwrap_or_default());
    let police_rtp = common::answer_with_media(&mut police, &invite, &[8]).await;
    let mut guest = Talker::new(&police_rtp, guest_media, POLICE_HZ);
    talk(&mut [&mut said, &mut desk, &mut guest], 100).await;
    // The agent leaves: the citizen and 110 stay.
    let bye = agent.uas_request(&call.incoming, "BYE", 5);
    agent.send_request(&bye).await;
    agent.expect_response("BYE", 200).await;
    talk(&mut [&mut said, &mut guest], 75).await;
    let record = hang_up(&gateway, &mut citizen, &call, &mut police).await;

    let recorded = Recorded::read(&record.recording.unwrap_or_default()).await;
    let failed = recorded.step("linkage_failed");
    let joined = recorded.last_step("conference_joined");
    let left = recorded.step("agent_left");
    let end = recorded.end_ms();
    assert_tones(
        &recorded.left,
        (100, end - 100),
        &[CITIZEN_HZ],
        &[AGENT_HZ, POLICE_HZ],
    );
    assert_tones(
        &recorded.right,
        (100, failed - 100),
        &[AGENT_HZ],
        &[POLICE_HZ, CITIZEN_HZ],
    );
    assert_tones(
        &recorded.right,
        (failed + 100, joined - 200),
        &[AGENT_HZ],
        &[POLICE_HZ, CITIZEN_HZ],
    );
    assert_tones(
        &recorded.right,
        (joined + 300, left - 100),
        &[AGENT_HZ, POLICE_HZ],
        &[CITIZEN_HZ],
    );
    assert_tones(
        &recorded.right,
        (left + 300, end - 100),
        &[POLICE_HZ],
        &[AGENT_HZ, CITIZEN_HZ],
    );
}

#[tokio::test]
async fn a_full_recording_disk_keeps_calls_up_and_counts_what_it_did_not_record() {
    let recordings = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // Two MB of earlier recordings against a budget of one.
    let day = recordings.path().join("2026/01/01");
    std::fs::create_dir_all(&day).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(day.join("old.wav"), vec![0u8; 2 << 20]).unwrap_or_else(|e| panic!("{e}"));
    let (gateway, mut citizen, mut agent, _police) =
        setup(recordings.path(), "max_disk_mb = 1").await;
    let metrics = || async { gateway.http_get("/metrics").await.1 };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !metrics().await.contains("\nhotline_recording_full 1\n") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the budget was never found reached"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let mut said = Talker::new(&call.caller_rtp, call.gateway_a_media, CITIZEN_HZ);
    talk(&mut [&mut said], 10).await;
    // A call that is not recorded cannot be paused.
    let call_id = hotline.until(EventType::CallAnswered).await.call_id;
    let result = hotline
        .command(pb::command::Action::PauseRecording(pb::PauseRecording {
            call_id,
        }))
        .await;
    assert_eq!(
        result.error,
        pb::ErrorCode::NotAllowedNow as i32,
        "{result:?}"
    );
    assert!(
        call.callee_rtp
            .recv_within(Duration::from_secs(2))
            .await
            .is_some(),
        "the call carries audio"
    );
    let record = hang_up(&gateway, &mut citizen, &call, &mut agent).await;
    assert_eq!(record.recording, None);
    assert_eq!(record.ended_by.as_deref(), Some("caller"));
    let text = metrics().await;
    assert!(
        text.contains("\nhotline_recording_refused_total 1\n"),
        "{text}"
    );
    assert!(
        text.contains("\nhotline_recording_started_total 0\n"),
        "{text}"
    );
}

/// The WAV header's data size of the file at `path` (0 until it has one).
fn data_size(path: &Path) -> u64 {
    std::fs::read(path)
        .ok()
        .filter(|b| b.len() >= 44)
        .map_or(0, |b| {
            u64::from(u32::from_le_bytes([b[40], b[41], b[42], b[43]]))
        })
}

/// The one WAV file under `root`.
fn the_wav(root: &Path) -> Option<PathBuf> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "wav") {
                return Some(path);
            }
        }
    }
    None
}

#[tokio::test]
async fn a_recording_cut_by_kill_9_is_readable_by_standard_tools_and_repaired_at_start() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let recordings = dir.path().join("recordings");
    let mut citizen = Ua::bind("carrier", LOCALHOST).await;
    let mut agent = Ua::bind("hotline", LOCALHOST).await;
    let sip = SocketAddr::new(LOCALHOST, free_port());
    let [low, high] = common::media_block();
    let config = dir.path().join("gateway.toml");
    let text = format!(
        "[sip]\nlisten = \"{sip}\"\n\n[media]\naddress = \"127.0.0.1\"\nports = [{low}, {high}]\n\n\
         [store]\npath = \"{db}\"\n\n[api]\ngrpc = \"127.0.0.1:{grpc}\"\nhttp = \"127.0.0.1:{http}\"\n\n\
         [[peer]]\nname = \"carrier\"\naddress = \"{carrier}\"\n\n\
         [[peer]]\nname = \"hotline\"\naddress = \"{hotline}\"\nplatform = \"12345\"\n\n\
         [[route]]\nnumber = \"12345\"\npeers = [\"hotline\"]\n\n\
         [recording]\npath = \"{recordings}\"\n",
        db = dir.path().join("gateway.db").display(),
        grpc = free_port(),
        http = free_port(),
        carrier = citizen.address,
        hotline = agent.address,
        recordings = recordings.display(),
    );
    std::fs::write(&config, text).unwrap_or_else(|e| panic!("{e}"));
    for ua in [&mut citizen, &mut agent] {
        ua.set_gateway(sip);
    }
    let gateway = GatewayProcess::start(&config);
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let mut said = Talker::new(&call.caller_rtp, call.gateway_a_media, CITIZEN_HZ);
    let mut desk = Talker::new(&call.callee_rtp, call.gateway_b_media, AGENT_HZ);
    // Talk until the writer has appended a second of the call, then kill it mid-call.
    let mut rounds = 0;
    loop {
        talk(&mut [&mut said, &mut desk], 25).await;
        rounds += 1;
        let written = the_wav(&recordings).map_or(0, |p| data_size(&p));
        if written >= 8000 * 4 {
            break;
        }
        assert!(rounds < 40, "nothing appended after {rounds} rounds");
    }
    gateway.kill_9();
    let wav = the_wav(&recordings).unwrap_or_else(|| panic!("no recording"));

    let sox = std::process::Command::new("sox")
        .arg("--i")
        .arg(&wav)
        .output()
        .unwrap_or_else(|e| panic!("sox: {e}"));
    let info = String::from_utf8_lossy(&sox.stdout);
    assert!(
        sox.status.success(),
        "sox --i: {}",
        String::from_utf8_lossy(&sox.stderr)
    );
    assert!(info.contains("Channels       : 2"), "{info}");
    assert!(info.contains("Sample Rate    : 8000"), "{info}");
    let python = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, wave\nw = wave.open(sys.argv[1])\n\
             assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8000)\n\
             frames = w.readframes(w.getnframes())\nprint(w.getnframes(), len(frames))",
        )
        .arg(&wav)
        .output()
        .unwrap_or_else(|e| panic!("python3: {e}"));
    assert!(
        python.status.success(),
        "wave: {}",
        String::from_utf8_lossy(&python.stderr)
    );
    let printed = String::from_utf8_lossy(&python.stdout);
    let frames: u64 = printed
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(frames >= 8000, "python's wave read {printed}");

    // The next start makes the header cover every sample the killed run wrote.
    let length = std::fs::metadata(&wav).map_or(0, |m| m.len());
    let again = GatewayProcess::start(&config);
    assert_eq!(data_size(&wav), (length - 44) / 4 * 4, "repaired at start");
    drop(again);
}

/// An SRTP leg is recorded in clear: the gateway records after it decrypts the citizen's
/// packets and before it encrypts what it sends the citizen.
#[tokio::test]
async fn an_srtp_leg_is_recorded_in_clear() {
    use base64::Engine;
    use hotline_gateway::media::srtp::{MasterKey, Sender, Suite};
    let recordings = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (gateway, mut citizen, mut agent, _police) = setup(recordings.path(), "").await;
    let citizen_rtp = RtpPeer::bind(LOCALHOST).await;
    let key = MasterKey([0x11; 30]);
    let offer = common::sdp(citizen_rtp.address, &[8], "sendrecv").replace("RTP/AVP", "RTP/SAVP")
        + &format!(
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{}\r\n",
            base64::engine::general_purpose::STANDARD.encode(key.0)
        );
    let invite = citizen.invite("12345", "13800138000", &offer, "");
    citizen.send_request(&invite).await;
    let incoming = agent.expect_request("INVITE").await;
    let gateway_b = common::sdp_address(incoming.sdp().unwrap_or_default());
    let agent_rtp = RtpPeer::bind(LOCALHOST).await;
    let answer = common::sdp(agent_rtp.address, &[8], "sendrecv");
    agent
        .send_response(&agent.answer(&incoming, 200, Some(&answer)))
        .await;
    let ok = citizen.expect_response("INVITE", 200).await;
    let gateway_a = common::sdp_address(ok.sdp().unwrap_or_default());
    assert!(ok.sdp().unwrap_or_default().contains("RTP/SAVP"));
    let ack = citizen.ack(&invite, &ok, "");
    citizen.send_request(&ack).await;

    let mut sender = Sender::new(Suite::AesCm128HmacSha1_80, &key);
    let mut desk = Talker::new(&agent_rtp, gateway_b, AGENT_HZ);
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    for n in 0..100u32 {
        pace.tick().await;
        let mut buffer = [0u8; 256];
        buffer[..12].copy_from_slice(&[0x80, 8, 0, 0, 0, 0, 0, 0, 0xc1, 0x71, 0, 1]);
        buffer[2..4].copy_from_slice(&(n as u16).to_be_bytes());
        buffer[4..8].copy_from_slice(&(160 * n).to_be_bytes());
        for (i, code) in buffer[12..172].iter_mut().enumerate() {
            let t = f64::from(n * 160 + i as u32) / 8000.0;
            let sample = (LEVEL * (2.0 * std::f64::consts::PI * CITIZEN_HZ * t).sin()) as i16;
            *code = g711::linear_to_alaw(sample);
        }
        let length = sender.protect_rtp(&mut buffer, 172).unwrap_or(0);
        let _ = citizen_rtp
            .socket
            .send_to(&buffer[..length], gateway_a)
            .await;
        desk.send().await;
        while citizen_rtp
            .recv_within(Duration::from_millis(1))
            .await
            .is_some()
        {}
        while agent_rtp
            .recv_within(Duration::from_millis(1))
            .await
            .is_some()
        {}
    }
    let bye = citizen.in_dialog(&invite, &ok, "BYE", 2, "");
    citizen.send_request(&bye).await;
    citizen.expect_response("BYE", 200).await;
    let bye = agent.expect_request("BYE").await;
    agent.send_response(&agent.answer(&bye, 200, None)).await;
    let record = gateway.ended_record(invite.call_id()).await;
    let recorded = Recorded::read(&record.recording.unwrap_or_default()).await;
    let end = recorded.end_ms();
    assert_tones(&recorded.left, (100, end - 100), &[CITIZEN_HZ], &[AGENT_HZ]);
    assert_tones(
        &recorded.right,
        (100, end - 100),
        &[AGENT_HZ],
        &[CITIZEN_HZ],
    );
}

#[tokio::test]
async fn recordings_past_the_retention_are_deleted_and_counted() {
    let recordings = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let old = recordings.path().join("2020/01/01");
    std::fs::create_dir_all(&old).unwrap_or_else(|e| panic!("{e}"));
    for name in ["old.wav", "old.json"] {
        std::fs::write(old.join(name), b"x").unwrap_or_else(|e| panic!("{e}"));
    }
    let (gateway, _citizen, _agent, _police) =
        setup(recordings.path(), "retention_days = 30").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = gateway.http_get("/metrics").await.1;
        if text.contains("\nhotline_recording_deleted_total 1\n") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !recordings.path().join("2020").exists(),
        "the day, month and year are gone"
    );
}

#[tokio::test]
async fn a_line_marked_record_false_is_not_recorded() {
    let recordings = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut citizen = Ua::bind("carrier", LOCALHOST).await;
    let mut agent = Ua::bind("hotline", LOCALHOST).await;
    let gateway = Gateway::start_configured(
        &[
            ("carrier", citizen.address, ""),
            (
                "hotline",
                agent.address,
                "platform = \"12345\"\nrecord = false",
            ),
        ],
        &[("12345", &["hotline"])],
        "",
        "",
        &format!(
            "\n[recording]\npath = \"{}\"\n",
            recordings.path().display()
        ),
        |_| {},
    )
    .await;
    citizen.set_gateway(gateway.sip);
    agent.set_gateway(gateway.sip);
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let mut said = Talker::new(&call.caller_rtp, call.gateway_a_media, CITIZEN_HZ);
    talk(&mut [&mut said], 10).await;
    let record = hang_up(&gateway, &mut citizen, &call, &mut agent).await;
    assert_eq!(record.recording, None);
    let text = gateway.http_get("/metrics").await.1;
    assert!(
        text.contains("\nhotline_recording_started_total 0\n"),
        "{text}"
    );
    assert!(
        text.contains("\nhotline_recording_refused_total 0\n"),
        "{text}"
    );
    assert!(the_wav(recordings.path()).is_none());
}

/// An attended transfer (REFER with Replaces after the agent's consultation call with 110):
/// still one recording of the citizen's call, the agent before and 110 after.
#[tokio::test]
async fn an_attended_transfer_is_one_recording() {
    let recordings = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (gateway, mut citizen, mut agent, mut police) = setup(recordings.path(), "").await;
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let mut said = Talker::new(&call.caller_rtp, call.gateway_a_media, CITIZEN_HZ);
    let mut desk = Talker::new(&call.callee_rtp, call.gateway_b_media, AGENT_HZ);
    talk(&mut [&mut said, &mut desk], 75).await;

    // The agent consults 110 through the gateway, then REFERs the citizen with Replaces.
    let consult_rtp = RtpPeer::bind(LOCALHOST).await;
    let consult = agent.invite(
        "110",
        "12345",
        &common::sdp(consult_rtp.address, &[8], "sendrecv"),
        "",
    );
    agent.send_request(&consult).await;
    let consult_at_police = police.expect_request("INVITE").await;
    let police_rtp = RtpPeer::bind(LOCALHOST).await;
    let answer = common::sdp(police_rtp.address, &[8], "sendrecv");
    police
        .send_response(&police.answer(&consult_at_police, 200, Some(&answer)))
        .await;
    let consult_ok = agent.expect_response("INVITE", 200).await;
    let ack = agent.ack(&consult, &consult_ok, "");
    agent.send_request(&ack).await;
    police.expect_request("ACK").await;
    let gateway_tag = consult_ok
        .to()
        .and_then(|t| t.tag().map(str::to_string))
        .unwrap_or_default();
    let replaces = format!(
        "{}%3Bto-tag%3D{}%3Bfrom-tag%3D{}",
        consult.call_id().replace('@', "%40"),
        gateway_tag,
        agent.tag
    );
    let mut refer = agent.uas_request(&call.incoming, "REFER", 2);
    refer
        .headers
        .push("Refer-To", format!("<sip:110@gw?Replaces={replaces}>"));
    agent.send_request(&refer).await;
    agent.expect_response("REFER", 202).await;
    let joined = police.expect_request("INVITE").await;
    let gateway_for_110 = common::sdp_address(joined.sdp().unwrap_or_default());
    police
        .send_response(&police.answer(&joined, 200, Some(&answer)))
        .await;
    police.expect_request("ACK").await;
    let bye = police.uas_request(&consult_at_police, "BYE", 2);
    police.send_request(&bye).await;
    police.expect_response("BYE", 200).await;
    let mut byes = 0;
    while byes < 2 {
        if let Message::Request(request) = agent.recv().await {
            agent
                .send_response(&agent.answer(&request, 200, None))
                .await;
            byes += usize::from(request.method.as_str() == "BYE");
        }
    }
    let mut desk_110 = Talker::new(&police_rtp, gateway_for_110, POLICE_HZ);
    talk(&mut [&mut said, &mut desk_110], 100).await;
    let record = hang_up(&gateway, &mut citizen, &call, &mut police).await;

    let recorded = Recorded::read(&record.recording.unwrap_or_default()).await;
    let requested = recorded.step("transfer_requested");
    let answered = recorded.step("linkage_answered");
    let end = recorded.end_ms();
    assert_tones(
        &recorded.left,
        (100, end - 100),
        &[CITIZEN_HZ],
        &[AGENT_HZ, POLICE_HZ],
    );
    assert_tones(
        &recorded.right,
        (100, requested - 100),
        &[AGENT_HZ],
        &[CITIZEN_HZ, POLICE_HZ],
    );
    assert_tones(
        &recorded.right,
        (answered + 300, end - 100),
        &[POLICE_HZ],
        &[CITIZEN_HZ, AGENT_HZ],
    );
}

/// A recording server's RTP port, read as the packets come (a socket left unread for the
/// whole call could overflow its buffer and lose some).
struct ServerPort {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    reader: std::thread::JoinHandle<Vec<(u16, Vec<u8>)>>,
    port: String,
}

impl ServerPort {
    fn bind() -> ServerPort {
        let socket = std::net::UdpSocket::bind((LOCALHOST, 0)).unwrap_or_else(|e| panic!("{e}"));
        let port = socket
            .local_addr()
            .map(|a| a.port().to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap_or_else(|e| panic!("{e}"));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = std::sync::Arc::clone(&stop);
        let reader = std::thread::spawn(move || {
            let mut packets = Vec::new();
            let mut buffer = [0u8; 2048];
            loop {
                match socket.recv(&mut buffer) {
                    Ok(length) => {
                        assert!(length > 12, "an RTP packet");
                        assert_eq!(buffer[1] & 0x7f, 0, "PCMU, as the server answered");
                        let sequence = u16::from_be_bytes([buffer[2], buffer[3]]);
                        packets.push((sequence, buffer[12..length].to_vec()));
                    }
                    // Told to stop, and nothing came for 100 ms since: all is in.
                    Err(_) if stopped.load(std::sync::atomic::Ordering::Relaxed) => break,
                    Err(_) => {}
                }
            }
            packets
        });
        ServerPort { stop, reader, port }
    }

    /// What the port received, decoded, in order; the sequence numbers must run on from the
    /// first without a gap.
    fn received(self) -> Vec<i16> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let packets = self.reader.join().unwrap_or_else(|_| panic!("reader"));
        let first = packets.first().map_or(0, |(sequence, _)| *sequence);
        for (n, (sequence, _)) in packets.iter().enumerate() {
            assert_eq!(
                sequence.wrapping_sub(first),
                n as u16,
                "no packet lost or out of turn"
            );
        }
        packets
            .iter()
            .flat_map(|(_, payload)| payload.iter().map(|code| g711::ulaw_to_linear(*code)))
            .collect()
    }
}

/// SIPREC (RFC 7866): a recording server (SIPp) gets the call as a recording session with
/// the metadata (it checks the INVITE's multipart body) and a re-INVITE when 110 takes the
/// call over from the agent; its two ports get the two streams the WAV holds: 440 Hz on the
/// first throughout, 880 Hz then 1320 Hz on the second, each as long as the WAV.
#[tokio::test]
async fn a_siprec_server_gets_both_streams_and_a_reinvite_at_the_transfer() {
    let recordings = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sipp_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (said, heard) = (ServerPort::bind(), ServerPort::bind());
    assert!(common::sipp::sipp_available(), "sipp is not installed");
    let srs_port = free_port();
    let (said_port, heard_port) = (said.port.clone(), heard.port.clone());
    let srs = common::sipp::sipp_side(
        sipp_dir.path(),
        srs_port,
        "siprec_srs.xml",
        &[
            "-m",
            "1",
            "-set",
            "said",
            &said_port,
            "-set",
            "heard",
            &heard_port,
        ],
    );
    let extra = format!(
        "siprec = \"recorder\"\n\n[[peer]]\nname = \"recorder\"\naddress = \"127.0.0.1:{srs_port}\"\n"
    );
    let (gateway, mut citizen, mut agent, mut police) = setup(recordings.path(), &extra).await;
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let mut citizen_talks = Talker::new(&call.caller_rtp, call.gateway_a_media, CITIZEN_HZ);
    let mut desk = Talker::new(&call.callee_rtp, call.gateway_b_media, AGENT_HZ);
    talk(&mut [&mut citizen_talks, &mut desk], 100).await;
    let mut refer = agent.uas_request(&call.incoming, "REFER", 2);
    refer.headers.push("Refer-To", "<sip:110@gw>");
    agent.send_request(&refer).await;
    agent.expect_response("REFER", 202).await;
    let invite = police.expect_request("INVITE").await;
    let police_rtp = common::answer_with_media(&mut police, &invite, &[8]).await;
    loop {
        if let Message::Request(request) = agent.recv().await {
            agent
                .send_response(&agent.answer(&request, 200, None))
                .await;
            if request.method.as_str() == "BYE" {
                break;
            }
        }
    }
    let mut desk_110 = Talker::new(&police_rtp, call.gateway_b_media, POLICE_HZ);
    talk(&mut [&mut citizen_talks, &mut desk_110], 100).await;
    let record = hang_up(&gateway, &mut citizen, &call, &mut police).await;
    // SIPp exits 0 only if every check passed and the BYE came.
    tokio::task::spawn_blocking(move || srs.succeeds("recording server"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    gateway
        .metric_reaches("hotline_recording_siprec_sessions_total", 1.0)
        .await;
    assert_eq!(
        gateway
            .metric("hotline_recording_siprec_failures_total")
            .await,
        Some(0.0)
    );

    let path = record.recording.unwrap_or_else(|| panic!("no recording"));
    let recorded = Recorded::read(&path).await;
    let answered = recorded.step("linkage_answered");
    let end = recorded.end_ms();
    let (said, heard) = (said.received(), heard.received());
    // The streams are the WAV's channels, from its start to its end (the BYE waited).
    for stream in [&said, &heard] {
        assert_eq!(stream.len(), recorded.left.len(), "as long as the WAV");
    }
    assert_tones(
        &said,
        (100, end - 100),
        &[CITIZEN_HZ],
        &[AGENT_HZ, POLICE_HZ],
    );
    assert_tones(
        &heard,
        (100, answered - 300),
        &[AGENT_HZ],
        &[CITIZEN_HZ, POLICE_HZ],
    );
    assert_tones(
        &heard,
        (answered + 200, end - 100),
        &[POLICE_HZ],
        &[AGENT_HZ, CITIZEN_HZ],
    );
}

/// A platform pauses the recording while the citizen reads out an ID card number, then
/// resumes it: both channels are silence between the JSON's `recording_paused` and
/// `recording_resumed`, and the tones are there before and after.
#[tokio::test]
async fn a_paused_recording_is_silence_until_it_is_resumed() {
    let recordings = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (gateway, mut citizen, mut agent, _police) = setup(recordings.path(), "").await;
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let call_id = hotline.until(EventType::CallAnswered).await.call_id;
    let mut said = Talker::new(&call.caller_rtp, call.gateway_a_media, CITIZEN_HZ);
    let mut desk = Talker::new(&call.callee_rtp, call.gateway_b_media, AGENT_HZ);
    talk(&mut [&mut said, &mut desk], 50).await;
    use pb::command::Action;
    for action in [
        Action::PauseRecording(pb::PauseRecording {
            call_id: call_id.clone(),
        }),
        // Twice: nothing more happens.
        Action::PauseRecording(pb::PauseRecording {
            call_id: call_id.clone(),
        }),
    ] {
        let result = hotline.command(action).await;
        assert_eq!(
            result.error,
            pb::ErrorCode::Unspecified as i32,
            "{result:?}"
        );
    }
    talk(&mut [&mut said, &mut desk], 75).await;
    let result = hotline
        .command(Action::ResumeRecording(pb::ResumeRecording {
            call_id: call_id.clone(),
        }))
        .await;
    assert_eq!(
        result.error,
        pb::ErrorCode::Unspecified as i32,
        "{result:?}"
    );
    talk(&mut [&mut said, &mut desk], 50).await;
    let record = hang_up(&gateway, &mut citizen, &call, &mut agent).await;

    let path = record.recording.unwrap_or_else(|| panic!("no recording"));
    let recorded = Recorded::read(&path).await;
    let paused = recorded.step("recording_paused");
    let resumed = recorded.step("recording_resumed");
    assert!(resumed - paused >= 1000, "{paused}..{resumed} ms");
    let marks = recorded
        .sidecar
        .steps
        .iter()
        .filter(|s| s.step.starts_with("recording_"))
        .count();
    assert_eq!(marks, 2, "the second pause marked nothing");
    let at = |ms: i64| (ms.max(0) as usize) * 8;
    for channel in [&recorded.left, &recorded.right] {
        // The JSON has whole milliseconds: the pause began within the first one.
        let window = &channel[at(paused + 1)..at(resumed)];
        assert!(window.iter().all(|s| *s == 0), "silence while paused");
    }
    let end = recorded.end_ms();
    assert_tones(
        &recorded.left,
        (100, paused - 100),
        &[CITIZEN_HZ],
        &[AGENT_HZ],
    );
    assert_tones(
        &recorded.right,
        (100, paused - 100),
        &[AGENT_HZ],
        &[CITIZEN_HZ],
    );
    assert_tones(
        &recorded.left,
        (resumed + 100, end - 100),
        &[CITIZEN_HZ],
        &[AGENT_HZ],
    );
    assert_tones(
        &recorded.right,
        (resumed + 100, end - 100),
        &[AGENT_HZ],
        &[CITIZEN_HZ],
    );
}
