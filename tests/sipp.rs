//! The built binary under SIPp load (Debian's sip-tester): a carrier UAC calls 12345 through the
//! gateway, a hotline UAS answers and echoes RTP. Every call must succeed and every call record
//! must show audio relayed both ways.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::process::{free_port, GatewayProcess};
use common::sipp::{sipp, sipp_available, sipp_side, Process};

struct Ports {
    gateway: u16,
    uac: u16,
    uas: u16,
    http: u16,
}

/// A SIPp run's working directory and free ports (SIPp must be installed).
fn prepare() -> (tempfile::TempDir, Ports) {
    if !sipp_available() {
        panic!("sipp is not installed (apt-get install sip-tester; .ci/run does this)");
    }
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("{e}"),
    };
    let ports = Ports {
        gateway: free_port(),
        uac: free_port(),
        uas: free_port(),
        http: free_port(),
    };
    (dir, ports)
}

/// Starts the gateway binary on a config naming the SIPp ports; returns once it listens.
fn start_gateway(
    dir: &Path,
    ports: &Ports,
    transport: &str,
    media: [u16; 2],
) -> (GatewayProcess, PathBuf) {
    start_gateway_with(dir, ports, transport, media, "")
}

/// As [`start_gateway`], with more config (peers, routes) appended.
fn start_gateway_with(
    dir: &Path,
    ports: &Ports,
    transport: &str,
    media: [u16; 2],
    extra: &str,
) -> (GatewayProcess, PathBuf) {
    start_gateway_carrier(dir, ports, transport, media, "", extra)
}

/// As [`start_gateway_with`], with more keys for the carrier's `[[peer]]`.
fn start_gateway_carrier(
    dir: &Path,
    ports: &Ports,
    transport: &str,
    media: [u16; 2],
    carrier: &str,
    extra: &str,
) -> (GatewayProcess, PathBuf) {
    let db = dir.join("gateway.db");
    let config = dir.join("gateway.toml");
    let text = format!(
        "[sip]\nlisten = \"127.0.0.1:{gw}\"\ntransfer_ring_timeout_secs = 2\n\n[media]\naddress = \"127.0.0.1\"\nports = [{lo}, {hi}]\n\n\
[store]\npath = \"{db}\"\n\n[api]\ngrpc = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:{http}\"\n\n\
[[peer]]\nname = \"carrier\"\naddress = \"127.0.0.1:{uac}\"\nany_port = true\n{carrier}\n\
[[peer]]\nname = \"hotline\"\naddress = \"127.0.0.1:{uas}\"\nplatform = \"12345\"\ntransport = \"{transport}\"\n\n\
[[route]]\nnumber = \"12345\"\npeers = [\"hotline\"]\n{extra}",
        gw = ports.gateway,
        lo = media[0],
        hi = media[1],
        db = db.display(),
        http = ports.http,
        uac = ports.uac,
        uas = ports.uas,
        extra = extra,
        carrier = carrier,
    );
    if let Err(e) = std::fs::write(&config, text) {
        panic!("write config: {e}");
    }
    (GatewayProcess::start(&config), db)
}

/// The gateway's `/metrics` text on `http` (empty if it cannot be read).
fn metrics(http: u16) -> String {
    let mut text = String::new();
    if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", http)) {
        use std::io::{Read, Write};
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
        let _ = stream.read_to_string(&mut text);
    }
    text
}

fn run_load(transport: &str, calls: u32, rate: u32, hold_ms: u32, media: [u16; 2], stop: Stop) {
    let (dir, ports) = prepare();
    let (gateway, db) = start_gateway(dir.path(), &ports, transport, media);
    let sipp_transport = if transport == "tcp" { "t1" } else { "u1" };
    let uas_media = free_port().to_string();
    let uac_media = free_port().to_string();
    let uas_port = ports.uas.to_string();
    let uac_port = ports.uac.to_string();
    let uas = sipp(
        &[
            "-i",
            "127.0.0.1",
            "-p",
            &uas_port,
            "-t",
            sipp_transport,
            "-mi",
            "127.0.0.1",
            "-mp",
            &uas_media,
            "-rtp_echo",
            "-timeout",
            "120s",
            "-nostdin",
        ],
        "uas.xml",
    )
    .spawn();
    let _uas = match uas {
        Ok(c) => Process(c),
        Err(e) => panic!("sipp uas: {e}"),
    };
    let target = format!("127.0.0.1:{}", ports.gateway);
    let (calls_text, rate_text, hold_text) =
        (calls.to_string(), rate.to_string(), hold_ms.to_string());
    let status = sipp(
        &[
            &target,
            "-s",
            "12345",
            "-i",
            "127.0.0.1",
            "-p",
            &uac_port,
            "-t",
            sipp_transport,
            "-mi",
            "127.0.0.1",
            "-mp",
            &uac_media,
            "-m",
            &calls_text,
            "-r",
            &rate_text,
            "-l",
            &calls_text,
            "-d",
            &hold_text,
            "-timeout",
            "120s",
            "-timeout_error",
            "-max_socket",
            "2000",
            "-nostdin",
        ],
        "uac_rtp.xml",
    )
    .status();
    let status = match status {
        Ok(s) => s,
        Err(e) => panic!("sipp uac: {e}"),
    };
    assert!(
        status.success(),
        "SIPp UAC reported failed calls ({status})"
    );

    // Every call is recorded, answered, ended by the caller, with audio relayed both ways.
    let records = match hotline_gateway::store::list_calls(&db, calls as usize + 10) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(records.len(), calls as usize);
    for record in &records {
        assert_eq!(record.final_status, Some(200), "{record:?}");
        assert_eq!(record.ended_by.as_deref(), Some("caller"), "{record:?}");
        assert!(
            record.rtp_a_to_b > 0 && record.rtp_b_to_a > 0,
            "no audio both ways: {record:?}"
        );
    }
    // The operations endpoint saw them too.
    let metrics = metrics(ports.http);
    assert!(
        metrics.contains(&format!(
            "hotline_calls_total{{result=\"answered\"}} {calls}"
        )),
        "{metrics}"
    );

    if stop == Stop::Kill {
        // kill -9 right after the last call: every ended call's record is already on disk.
        gateway.kill_9();
        let after = hotline_gateway::store::list_calls(&db, calls as usize + 10)
            .map(|r| r.iter().filter(|c| c.ended_at.is_some()).count())
            .ok();
        assert_eq!(after, Some(calls as usize), "records lost by kill -9");
    } else {
        // SIGTERM: clean exit 0.
        let exit = gateway.terminate();
        assert!(
            exit.as_ref().is_ok_and(|s| s.success()),
            "gateway did not exit 0 on SIGTERM: {exit:?}"
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Terminate,
    Kill,
}

#[test]
fn sipp_200_calls_at_20_per_second_with_rtp_over_udp_records_survive_kill_9() {
    run_load("udp", 200, 20, 1500, [24000, 24999], Stop::Kill);
}

#[test]
fn sipp_50_concurrent_calls_over_tcp_then_sigterm_exits_0() {
    run_load("tcp", 50, 50, 3000, [25000, 25999], Stop::Terminate);
}

/// A SIPp transfer run: which scenarios play which part, and what it must end with.
struct TransferRun {
    /// The citizens' scenario.
    citizen_scenario: &'static str,
    /// The number the citizens dial (12345, or 110 for 110 -> 12345).
    dial: &'static str,
    /// `trusted` of the 110 peer (RFC 3325).
    police_trusted: bool,
    /// Where the referring agent sits: the peer the citizens' calls reach.
    agent_scenario: &'static str,
    /// The number the agents transfer to (`-key transfer_to`).
    transfer_to: &'static str,
    /// The desk the transfer reaches.
    desk_scenario: &'static str,
    /// More gateway config.
    extra: &'static str,
    /// The call's final leg-B peer.
    b_peer: &'static str,
    trigger: &'static str,
    outcome: &'static str,
    sip_status: u16,
    to_platform: &'static str,
    /// `transfer` or `conference` (then each call has three conference parties on record).
    kind: &'static str,
    calls: u32,
    /// Citizens' calls per second.
    rate: &'static str,
}

/// 20 citizens' calls (SIPp, 5/s, each hung up by the citizen after 3 s) to SIPp agents running
/// `agent_scenario`, transferring to a SIPp desk running `desk_scenario` (which, in
/// `police_uas.xml`, fails any INVITE without the citizen's number in From and
/// P-Asserted-Identity, the History-Info entry of the line it came from or the linkage
/// header). Every SIPp side must succeed on every call, and each call must be recorded with one
/// linkage as `run` says.
fn run_transfers(run: TransferRun) {
    let (dir, ports) = prepare();
    let police_port = free_port();
    let config = format!(
        "\n[[peer]]\nname = \"police\"\naddress = \"127.0.0.1:{police_port}\"\nplatform = \"110\"\n\
trusted = {}\n\n[[route]]\nnumber = \"110\"\npeers = [\"police\"]\n{}",
        run.police_trusted, run.extra
    );
    let (_gateway, db) = start_gateway_with(dir.path(), &ports, "udp", [26000, 26999], &config);
    let calls = run.calls;
    let calls_text = calls.to_string();
    let uas_side = |port: u16, scenario: &str| {
        sipp_side(
            dir.path(),
            port,
            scenario,
            &[
                "-rtp_echo",
                "-m",
                &calls_text,
                "-key",
                "transfer_to",
                run.transfer_to,
            ],
        )
    };
    let (agent_port, desk_port) = if run.dial == "110" {
        (police_port, ports.uas)
    } else {
        (ports.uas, police_port)
    };
    let agents = uas_side(agent_port, run.agent_scenario);
    let desk = uas_side(desk_port, run.desk_scenario);
    let target = format!("127.0.0.1:{}", ports.gateway);
    let (uac_port, uac_media) = (ports.uac.to_string(), free_port().to_string());
    let citizens = sipp(
        &[
            &target,
            "-s",
            run.dial,
            "-i",
            "127.0.0.1",
            "-p",
            &uac_port,
            "-mi",
            "127.0.0.1",
            "-mp",
            &uac_media,
            "-m",
            &calls_text,
            "-r",
            run.rate,
            "-d",
            "3000",
            "-timeout",
            "60s",
            "-timeout_error",
            "-nostdin",
        ],
        run.citizen_scenario,
    )
    .status();
    assert!(
        citizens.as_ref().is_ok_and(|s| s.success()),
        "SIPp citizens reported failed calls ({citizens:?})"
    );
    agents.succeeds("agents");
    desk.succeeds("desk");
    let records = match hotline_gateway::store::list_calls(&db, 100) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(records.len(), calls as usize);
    for record in &records {
        assert_eq!(record.b_peer.as_deref(), Some(run.b_peer), "{record:?}");
        assert_eq!(record.ended_by.as_deref(), Some("caller"), "{record:?}");
        let linkages = match hotline_gateway::store::list_linkages(&db, &record.id) {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(linkages.len(), 1, "{linkages:?}");
        assert_eq!(linkages[0].trigger, run.trigger);
        assert_eq!(linkages[0].outcome.as_deref(), Some(run.outcome));
        assert_eq!(linkages[0].sip_status, Some(run.sip_status));
        assert_eq!(linkages[0].to_platform.as_deref(), Some(run.to_platform));
        assert_eq!(linkages[0].kind, run.kind);
        if run.kind == "conference" {
            let parties = match hotline_gateway::store::list_conference_parties(&db, &record.id) {
                Ok(p) => p,
                Err(e) => panic!("{e}"),
            };
            assert_eq!(parties.len(), 3, "{parties:?}");
            assert!(parties.iter().all(|p| p.left_at.is_some()), "{parties:?}");
        }
    }
}

const HOTKEY: &str = "\n[[hotkey]]\ndtmf = \"*1\"\naction = \"transfer\"\ntarget = \"110\"\n";

/// The usual run: citizens call 12345, agents transfer to 110, 110 answers.
const TO_110: TransferRun = TransferRun {
    citizen_scenario: "uac_rtp.xml",
    dial: "12345",
    police_trusted: true,
    agent_scenario: "agent_refer.xml",
    transfer_to: "110",
    desk_scenario: "police_uas.xml",
    extra: "",
    b_peer: "police",
    trigger: "refer",
    outcome: "answered",
    sip_status: 200,
    to_platform: "110",
    kind: "transfer",
    calls: 20,
    rate: "5",
};

/// SIPp agents transfer every call to 110 by REFER (checking the 202 and the NOTIFYs); the
/// citizens end up talking to 110.
#[test]
fn sipp_agents_transfer_20_calls_to_110_with_the_citizens_number() {
    run_transfers(TO_110);
}

/// 110 is busy: every agent gets a final failure NOTIFY (486) and keeps its citizen.
#[test]
fn sipp_busy_110_leaves_every_citizen_with_the_agent() {
    run_transfers(TransferRun {
        agent_scenario: "agent_refer_fails.xml",
        desk_scenario: "police_busy.xml",
        b_peer: "hotline",
        outcome: "failed",
        sip_status: 486,
        ..TO_110
    });
}

/// 110 rings and nobody answers: the gateway gives up after the ring timeout (2 s here), the
/// agents get NOTIFY 408 and keep their citizens.
#[test]
fn sipp_unanswered_110_is_given_up_and_the_citizen_stays() {
    run_transfers(TransferRun {
        agent_scenario: "agent_refer_fails.xml",
        desk_scenario: "police_noanswer.xml",
        extra: "",
        b_peer: "hotline",
        outcome: "failed",
        sip_status: 408,
        ..TO_110
    });
}

/// Agents hang up right after the 202, before 110 (slow to ring) rings: the citizens wait and
/// are connected to 110.
#[test]
fn sipp_agents_leaving_at_once_leave_the_citizens_with_110() {
    run_transfers(TransferRun {
        agent_scenario: "agent_refer_leave.xml",
        desk_scenario: "police_slow.xml",
        ..TO_110
    });
}

/// The other direction: citizens call 110, the 110 desk transfers them to 12345.
#[test]
fn sipp_110_transfers_citizens_to_12345() {
    run_transfers(TransferRun {
        dial: "110",
        transfer_to: "12345",
        b_peer: "hotline",
        to_platform: "12345",
        ..TO_110
    });
}

/// Desk phones pressing *1 as SIP INFO.
#[test]
fn sipp_hotkey_star_1_by_sip_info_transfers_to_110() {
    run_transfers(TransferRun {
        agent_scenario: "agent_hotkey_info.xml",
        extra: HOTKEY,
        trigger: "hotkey",
        ..TO_110
    });
}

/// Three-way calls under load: 60 citizens' calls at 10/s, each agent pressing *3 as SIP INFO;
/// 110 joins each call with the citizen's number (`police_uas.xml` checks) and all three stay
/// until the citizen hangs up (up to 30 conferences mixed at once).
#[test]
fn sipp_hotkey_star_3_by_sip_info_brings_110_into_60_calls() {
    run_transfers(TransferRun {
        agent_scenario: "agent_conference_info.xml",
        extra: "\n[[hotkey]]\ndtmf = \"*3\"\naction = \"conference\"\ntarget = \"110\"\n",
        trigger: "hotkey",
        b_peer: "hotline",
        kind: "conference",
        calls: 60,
        rate: "10",
        ..TO_110
    });
}

/// Phones pressing *1 as RFC 4733 telephone-events (sip-tester's recorded DTMF).
#[test]
fn sipp_hotkey_star_1_by_rfc_4733_transfers_to_110() {
    run_transfers(TransferRun {
        agent_scenario: "agent_hotkey_rfc4733.xml",
        extra: HOTKEY,
        trigger: "hotkey",
        ..TO_110
    });
}

/// A citizen who withholds the number (Privacy: id): a trusted 110 still gets it in
/// P-Asserted-Identity (From anonymous)...
#[test]
fn sipp_private_citizens_are_identified_to_a_trusted_110() {
    run_transfers(TransferRun {
        citizen_scenario: "uac_private.xml",
        desk_scenario: "police_private_trusted.xml",
        ..TO_110
    });
}

/// ...and an untrusted desk gets no trace of the number.
#[test]
fn sipp_private_citizens_stay_anonymous_to_an_untrusted_desk() {
    run_transfers(TransferRun {
        citizen_scenario: "uac_private.xml",
        desk_scenario: "police_private_untrusted.xml",
        police_trusted: false,
        ..TO_110
    });
}

/// The agent is on the calling leg: SIPp agents of the hotline call citizens back (leg A is the
/// agent's, leg B the citizen's) and REFER them to 110 in their own dialog. 110 must see the
/// citizen's number (the number the agent dialled) and the line 12345 it came from
/// (`police_uas.xml` checks), the citizens talk to 110 until they hang up.
#[test]
fn sipp_agents_calling_back_transfer_the_citizen_to_110_from_the_calling_leg() {
    let (dir, ports) = prepare();
    let police_port = free_port();
    // The citizens' phones answer behind the carrier's address.
    let config = format!(
        "\n[[peer]]\nname = \"police\"\naddress = \"127.0.0.1:{police_port}\"\nplatform = \"110\"\n\
trusted = true\n\n[[route]]\nnumber = \"110\"\npeers = [\"police\"]\n\n\
[[route]]\nnumber = \"13800138000\"\npeers = [\"carrier\"]\n"
    );
    let (_gateway, db) = start_gateway_with(dir.path(), &ports, "udp", [27000, 27999], &config);
    let calls = "20";
    let citizens = sipp_side(
        dir.path(),
        ports.uac,
        "citizen_uas.xml",
        &["-rtp_echo", "-m", calls],
    );
    let desk = sipp_side(
        dir.path(),
        police_port,
        "police_uas.xml",
        &["-rtp_echo", "-m", calls],
    );
    let gateway = format!("127.0.0.1:{}", ports.gateway);
    let agents = sipp_side(
        dir.path(),
        ports.uas,
        "agent_callback_refer.xml",
        &[
            &gateway,
            "-s",
            "13800138000",
            "-m",
            calls,
            "-r",
            "5",
            "-key",
            "transfer_to",
            "110",
        ],
    );
    agents.succeeds("agents");
    citizens.succeeds("citizens");
    desk.succeeds("desk");
    let records = match hotline_gateway::store::list_calls(&db, 100) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(records.len(), 20);
    for record in &records {
        // Leg B stays the citizen's; the citizen hung up on 110.
        assert_eq!(record.a_peer, "hotline", "{record:?}");
        assert_eq!(record.b_peer.as_deref(), Some("carrier"), "{record:?}");
        assert_eq!(record.ended_by.as_deref(), Some("callee"), "{record:?}");
        let linkages = match hotline_gateway::store::list_linkages(&db, &record.id) {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(linkages.len(), 1, "{linkages:?}");
        let linkage = &linkages[0];
        assert_eq!(linkage.trigger, "refer");
        assert_eq!(linkage.outcome.as_deref(), Some("answered"));
        assert_eq!(linkage.sip_status, Some(200));
        assert_eq!(linkage.from_platform.as_deref(), Some("12345"));
        assert_eq!(linkage.to_platform.as_deref(), Some("110"));
    }
}

/// A call in progress when the gateway is killed (`kill -9`) is closed at the next start:
/// ended by the gateway, reason "gateway restart", its answer kept.
#[test]
fn sipp_a_call_cut_by_kill_9_is_closed_at_the_next_start() {
    let (dir, ports) = prepare();
    let (gateway, db) = start_gateway(dir.path(), &ports, "udp", [28000, 28999]);
    let _uas = sipp_side(dir.path(), ports.uas, "uas.xml", &["-rtp_echo", "-m", "1"]);
    let target = format!("127.0.0.1:{}", ports.gateway);
    let _citizen = sipp_side(
        dir.path(),
        ports.uac,
        "uac_rtp.xml",
        &[&target, "-s", "12345", "-m", "1", "-d", "60000"],
    );
    // The call's record says it was answered (committed before the 200 went on).
    let mut answered = false;
    for _ in 0..200 {
        answered = hotline_gateway::store::list_calls(&db, 10)
            .map(|calls| calls.iter().any(|c| c.answered_at.is_some()))
            .unwrap_or(false);
        if answered {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(answered, "the call was never answered");
    gateway.kill_9();
    let (_again, db) = start_gateway(dir.path(), &ports, "udp", [28000, 28999]);
    let calls = match hotline_gateway::store::list_calls(&db, 10) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(
        (
            call.ended_by.as_deref(),
            call.end_reason.as_deref(),
            call.final_status
        ),
        (Some("gateway"), Some("gateway restart"), Some(200)),
        "{call:?}"
    );
}

/// A carrier trunk that must authenticate: SIPp answers each 401 with MD5 digest credentials
/// (SIPp 3.6 knows no other algorithm, so the peer is challenged with MD5 only) and all 20
/// calls go through; with a wrong password the call is refused 403 and never rings.
#[test]
fn sipp_a_trunk_with_digest_credentials_gets_through_and_a_wrong_password_does_not() {
    let (dir, ports) = prepare();
    let carrier = "auth_username = \"trunk\"\nauth_password = \"trunk-secret-1\"\nauth_algorithms = [\"MD5\"]\n";
    let (_gateway, db) =
        start_gateway_carrier(dir.path(), &ports, "udp", [29000, 29999], carrier, "");
    let hotline = sipp_side(dir.path(), ports.uas, "uas.xml", &["-rtp_echo", "-m", "20"]);
    let target = format!("127.0.0.1:{}", ports.gateway);
    let trunk = sipp_side(
        dir.path(),
        ports.uac,
        "uac_auth.xml",
        &[
            &target,
            "-s",
            "12345",
            "-m",
            "20",
            "-r",
            "10",
            "-d",
            "500",
            "-au",
            "trunk",
            "-ap",
            "trunk-secret-1",
        ],
    );
    trunk.succeeds("carrier");
    hotline.succeeds("hotline");
    let calls = match hotline_gateway::store::list_calls(&db, 100) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(calls.len(), 20, "{calls:?}");
    assert!(
        calls.iter().all(|c| c.final_status == Some(200)),
        "{calls:?}"
    );

    let wrong = sipp_side(
        dir.path(),
        ports.uac,
        "uac_auth.xml",
        &[
            &target,
            "-s",
            "12345",
            "-m",
            "1",
            "-au",
            "trunk",
            "-ap",
            "not-the-secret",
        ],
    );
    let status = wrong.wait();
    assert!(
        status.is_ok_and(|s| !s.success()),
        "a wrong password got through"
    );
    let calls = hotline_gateway::store::list_calls(&db, 100)
        .map(|c| c.len())
        .ok();
    assert_eq!(calls, Some(20), "the refused call never started");
    let metrics = metrics(ports.http);
    assert!(
        metrics.contains("hotline_sip_auth_challenges_total 21"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hotline_sip_auth_failures_total 1"),
        "{metrics}"
    );
}
