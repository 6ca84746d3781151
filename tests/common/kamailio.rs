//! Kamailio (Debian's `kamailio`) started by a test on a config of its own, in its own process
//! group (it forks its workers, and they must go with it).

use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::net::UdpSocket;

use super::process::free_port;

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// Kamailio on a config of the test's; stopped (and waited for) when dropped.
pub(crate) struct Kamailio {
    child: Option<Child>,
    pub address: SocketAddr,
    args: Vec<String>,
    pub dir: tempfile::TempDir,
}

impl Kamailio {
    /// Starts Kamailio on `config` listening on a free loopback UDP port (`LISTEN`), with its
    /// runtime directory a temporary one, and `defines` (`NAME=VALUE`, each a `-A`).
    pub(crate) async fn start(config: &Path, defines: Vec<String>) -> Kamailio {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("tempdir: {e}"),
        };
        let address = SocketAddr::new(LOCALHOST, free_port());
        let mut args = vec![
            "-f".to_string(),
            config.display().to_string(),
            "-DD".into(),
            "-E".into(),
            "-Y".into(),
            dir.path().display().to_string(),
            "-w".into(),
            dir.path().display().to_string(),
            "-m".into(),
            "16".into(),
            "-M".into(),
            "4".into(),
            "-A".into(),
            format!("LISTEN=udp:{address}"),
        ];
        for define in defines {
            args.push("-A".into());
            args.push(define.replace("{dir}", &dir.path().display().to_string()));
        }
        let mut kamailio = Kamailio {
            child: None,
            address,
            args,
            dir,
        };
        kamailio.spawn().await;
        kamailio
    }

    /// Its log so far (stderr), for a failure's message and for what it challenged.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kamailio.log")).unwrap_or_default()
    }

    /// Starts it again (after [`Kamailio::stop`]) on the same arguments.
    pub(crate) async fn spawn(&mut self) {
        let log = match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("kamailio.log"))
        {
            Ok(f) => f,
            Err(e) => panic!("kamailio's log: {e}"),
        };
        // Its own process group: Kamailio forks its workers, and they must go with it.
        let child = Command::new("kamailio")
            .process_group(0)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn();
        match child {
            Ok(c) => self.child = Some(c),
            Err(e) => panic!("kamailio is not installed (apt-get install kamailio): {e}"),
        }
        self.wait_ready().await;
    }

    /// Waits until Kamailio answers an OPTIONS (whatever it answers), sent again
    /// every 100 ms as a UDP client would until the first answer.
    async fn wait_ready(&self) {
        let socket = match UdpSocket::bind((LOCALHOST, 0)).await {
            Ok(s) => s,
            Err(e) => panic!("bind: {e}"),
        };
        let me = socket.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let options = format!(
            "OPTIONS sip:{kam} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKready\r\n\
From: <sip:test@{me}>;tag=ready\r\nTo: <sip:{kam}>\r\nCall-ID: ready@test\r\n\
CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            kam = self.address
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut buffer = [0u8; 4096];
        while tokio::time::Instant::now() < deadline {
            let _ = socket.send_to(options.as_bytes(), self.address).await;
            let answer =
                tokio::time::timeout(Duration::from_millis(100), socket.recv_from(&mut buffer))
                    .await;
            if matches!(answer, Ok(Ok(_))) {
                return;
            }
        }
        panic!("kamailio never answered:\n{}", self.log());
    }

    /// Kills it and its workers (the whole process group), and waits until it is gone: its
    /// port free, its bindings forgotten.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let group = format!("-{}", child.id());
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            let _ = child.wait();
        }
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        self.stop();
    }
}
