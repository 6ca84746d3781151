//! The gateway as a digest client (RFC 3261 §22.2, RFC 7616): a SIPp desk challenges the
//! INVITE the gateway places for an in-process citizen; the gateway answers once with the
//! peer's `outbound_username`/`outbound_password`, and a wrong password ends the call with the
//! desk's answer after exactly two INVITEs.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::process::free_port;
use common::{sdp, Gateway, RtpPeer, Ua};

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

struct Sipp {
    child: Child,
    errors: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Sipp {
    /// A SIPp UAS on `port` playing `scenario` for one call.
    fn uas(port: u16, scenario: &str) -> Sipp {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        let errors = dir.path().join("errors.log");
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/sipp")
            .join(scenario);
        let (port, media) = (port.to_string(), free_port().to_string());
        let child = Command::new("sipp")
            .arg("-sf")
            .arg(path)
            .args([
                "-i",
                "127.0.0.1",
                "-p",
                &port,
                "-mi",
                "127.0.0.1",
                "-mp",
                &media,
            ])
            .args(["-m", "1", "-rtp_echo", "-timeout", "30s", "-timeout_error"])
            .args(["-nostdin", "-trace_err", "-error_file"])
            .arg(&errors)
            .args(["-trace_msg", "-message_file"])
            .arg(dir.path().join("messages.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        // Listening once its port is taken.
        for _ in 0..100 {
            if std::net::UdpSocket::bind(("127.0.0.1", port.parse().unwrap_or(0))).is_err() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        match child {
            Ok(child) => Sipp {
                child,
                errors,
                _dir: dir,
            },
            Err(e) => panic!("sipp is not installed ({e}); apt-get install sip-tester"),
        }
    }

    /// Waits for SIPp to end its scenario, the gateway running meanwhile (it shares this
    /// test's thread: a blocking wait would hold it still while SIPp waits for it).
    async fn succeeds(mut self) {
        // Bounded by SIPp's own -timeout (30 s).
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(40);
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) if tokio::time::Instant::now() < deadline => {
                    // A process's end has no event to await here: look again shortly.
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Ok(None) => break Err("SIPp still running"),
                Err(_) => break Err("SIPp's status cannot be read"),
            }
        };
        assert!(
            status.as_ref().is_ok_and(|s| s.success()),
            "SIPp failed ({status:?}):\n{}\nmessages:\n{}",
            std::fs::read_to_string(&self.errors).unwrap_or_default(),
            std::fs::read_to_string(self._dir.path().join("messages.log")).unwrap_or_default()
        );
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway whose hotline is the SIPp desk on `desk`, presenting `password` to it.
async fn gateway(citizen: &Ua, desk: SocketAddr, password: &str) -> Gateway {
    let hotline = format!(
        "platform = \"12345\"\noutbound_username = \"gw\"\noutbound_password = \"{password}\""
    );
    Gateway::start(
        &[
            ("carrier", citizen.address, ""),
            ("hotline", desk, &hotline),
        ],
        &[("12345", &["hotline"])],
        "",
        "",
    )
    .await
}

/// The desk answers 401 (MD5, qop=auth); the INVITE again carries an Authorization SIPp
/// verifies itself, and the call connects; the gateway's BYE is challenged too (a new nonce)
/// and sent again with an Authorization SIPp verifies, and the call ends normally.
#[tokio::test]
async fn a_desk_that_challenges_gets_the_credentials_and_the_call_connects() {
    let port = free_port();
    let desk = SocketAddr::new(LOCALHOST, port);
    let sipp = Sipp::uas(port, "hotline_challenges.xml");
    let mut citizen = Ua::bind("carrier", LOCALHOST).await;
    let mut gateway = gateway(&citizen, desk, "secret-secret").await;
    citizen.set_gateway(gateway.sip);
    let rtp = RtpPeer::bind(LOCALHOST).await;
    let invite = citizen.invite(
        "12345",
        "13800138000",
        &sdp(rtp.address, &[8], "sendrecv"),
        "",
    );
    citizen.send_request(&invite).await;
    let ok = citizen.expect_response("INVITE", 200).await;
    let ack = citizen.ack(&invite, &ok, "");
    citizen.send_request(&ack).await;
    let bye = citizen.in_dialog(&invite, &ok, "BYE", 2, "");
    citizen.send_request(&bye).await;
    citizen.expect_response("BYE", 200).await;
    sipp.succeeds().await;
    let record = gateway.ended_record(invite.call_id()).await;
    assert_eq!(record.final_status, Some(200), "{record:?}");
    gateway.stop().await;
}

/// The desk takes no credentials (407, SHA-256, twice): the citizen gets the desk's 407, and
/// the desk sees exactly two INVITEs (its scenario fails on a third).
#[tokio::test]
async fn wrong_credentials_end_the_call_with_the_desks_answer_after_two_invites() {
    let port = free_port();
    let desk = SocketAddr::new(LOCALHOST, port);
    let sipp = Sipp::uas(port, "hotline_rejects.xml");
    let mut citizen = Ua::bind("carrier", LOCALHOST).await;
    let mut gateway = gateway(&citizen, desk, "not-the-secret").await;
    citizen.set_gateway(gateway.sip);
    let rtp = RtpPeer::bind(LOCALHOST).await;
    let invite = citizen.invite(
        "12345",
        "13800138000",
        &sdp(rtp.address, &[8], "sendrecv"),
        "",
    );
    citizen.send_request(&invite).await;
    citizen.expect_response("INVITE", 407).await;
    sipp.succeeds().await;
    let record = gateway.ended_record(invite.call_id()).await;
    assert_eq!(record.final_status, Some(407), "{record:?}");
    gateway.stop().await;
}
