//! The built gateway binary as a process of its own, for what only a process can show: a
//! `kill -9` at a chosen moment, and the next start on the same store.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A port free for UDP and TCP on 127.0.0.1 (the gateway binds both).
pub(crate) fn free_port() -> u16 {
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

/// `hotline-gateway --config config`, under `ulimit -n nofile` if given.
fn gateway(config: &Path, nofile: Option<u32>) -> Command {
    let binary = env!("CARGO_BIN_EXE_hotline-gateway");
    let mut command = match nofile {
        Some(limit) => {
            let mut shell = Command::new("sh");
            shell
                .arg("-c")
                .arg(format!("ulimit -n {limit} && exec \"$0\" --config \"$1\""))
                .arg(binary)
                .arg(config);
            shell
        }
        None => {
            let mut direct = Command::new(binary);
            direct.arg("--config").arg(config);
            direct
        }
    };
    command
        .env("RUST_LOG", "warn,hotline_gateway=info")
        .stdout(Stdio::null());
    command
}

/// The gateway binary running on a config; killed (and waited for) when dropped.
pub(crate) struct GatewayProcess(Child);

impl GatewayProcess {
    /// Starts `hotline-gateway --config config`; returns once it logs that it listens. Its log
    /// goes on being read (so it never blocks on a full pipe) and is dropped.
    pub(crate) fn start(config: &Path) -> GatewayProcess {
        GatewayProcess::start_command(gateway(config, None))
    }

    /// As [`GatewayProcess::start`], with a fault injected (`HOTLINE_FAULT`, debug builds).
    pub(crate) fn start_with_fault(config: &Path, fault: &str) -> GatewayProcess {
        let mut command = gateway(config, None);
        command.env("HOTLINE_FAULT", fault);
        GatewayProcess::start_command(command)
    }

    /// How the process ended, if it ends within `within`.
    pub(crate) fn exits_within(
        &mut self,
        within: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        loop {
            match self.0.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if std::time::Instant::now() < deadline => {
                    // A process's end has no event to await here: look again shortly.
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                _ => return None,
            }
        }
    }

    /// As [`GatewayProcess::start`], under a file-descriptor limit of `nofile` (soft and hard).
    pub(crate) fn start_limited(config: &Path, nofile: u32) -> GatewayProcess {
        GatewayProcess::start_command(gateway(config, Some(nofile)))
    }

    /// Runs a gateway that is expected not to start; returns its exit status and log.
    pub(crate) fn run_to_failure(config: &Path) -> (std::process::ExitStatus, String) {
        let output = match gateway(config, None).stderr(Stdio::piped()).output() {
            Ok(o) => o,
            Err(e) => panic!("run gateway: {e}"),
        };
        (
            output.status,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    fn start_command(mut command: Command) -> GatewayProcess {
        let mut child = match command.stderr(Stdio::piped()).stdout(Stdio::null()).spawn() {
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
    pub(crate) fn terminate(mut self) -> std::io::Result<std::process::ExitStatus> {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.0.wait()
    }

    /// `kill -9`: no shutdown, no flush; returns once the process is gone.
    pub(crate) fn kill_9(mut self) {
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
