//! The built gateway binary as a process of its own, for what only a process can show: a
//! `kill -9` at a chosen moment, and the next start on the same store.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A port free for UDP and TCP on 127.0.0.1 (the gateway binds both).
pub fn free_port() -> u16 {
    loop {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
            .unwrap_or(0);
        if port != 0 && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The gateway binary running on a config; killed (and waited for) when dropped.
pub struct GatewayProcess(Child);

impl GatewayProcess {
    /// Starts `hotline-gateway --config config`; returns once it logs that it listens. Its log
    /// goes on being read (so it never blocks on a full pipe) and is dropped.
    pub fn start(config: &Path) -> GatewayProcess {
        let mut child = match Command::new(env!("CARGO_BIN_EXE_hotline-gateway"))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn,hotline_gateway=info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => panic!("start gateway: {e}"),
        };
        let Some(stderr) = child.stderr.take() else {
            panic!("no stderr")
        };
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("gateway listening") => break,
                Some(Ok(line)) => seen.push(line),
                _ => panic!("gateway exited before listening:\n{}", seen.join("\n")),
            }
        }
        std::thread::spawn(move || for _ in lines {});
        GatewayProcess(child)
    }

    /// SIGTERM: the gateway ends its calls and stops; returns how it exited.
    pub fn terminate(mut self) -> std::io::Result<std::process::ExitStatus> {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.0.wait()
    }

    /// `kill -9`: no shutdown, no flush; returns once the process is gone.
    pub fn kill_9(mut self) {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-KILL", &pid]).status();
        let _ = self.0.wait();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
