//! SIPp (Debian's sip-tester) started by the tests with the scenarios in `tests/sipp/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::process::free_port;

/// Whether SIPp is installed.
pub(crate) fn sipp_available() -> bool {
    Command::new("sipp")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// A child process killed when dropped.
pub(crate) struct Process(pub(crate) Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIPp with `scenario` (from `tests/sipp/`) and `args`, its output discarded.
pub(crate) fn sipp(args: &[&str], scenario: &str) -> Command {
    let mut command = Command::new("sipp");
    command
        .arg("-sf")
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/sipp")
                .join(scenario),
        )
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// A SIPp instance playing one side of a run, writing its errors where [`SippSide::succeeds`]
/// finds them.
pub(crate) struct SippSide {
    pub(crate) process: Process,
    scenario: String,
    errors: PathBuf,
}

impl SippSide {
    /// Waits for the SIPp instance to finish.
    pub(crate) fn wait(mut self) -> std::io::Result<std::process::ExitStatus> {
        self.process.0.wait()
    }

    /// Waits for the SIPp instance to finish and fails the test unless all its calls passed.
    pub(crate) fn succeeds(mut self, role: &str) {
        let status = self.process.0.wait();
        assert!(
            status.as_ref().is_ok_and(|s| s.success()),
            "SIPp {role} ({}) failed calls ({status:?}):\n{}",
            self.scenario,
            std::fs::read_to_string(&self.errors).unwrap_or_default()
        );
    }
}

/// Starts SIPp on `port` with `scenario` and `args` (a UAS unless `args` name a remote host).
pub(crate) fn sipp_side(dir: &Path, port: u16, scenario: &str, args: &[&str]) -> SippSide {
    let (port, media) = (port.to_string(), free_port().to_string());
    let errors = dir.join(format!("{scenario}.errors"));
    let errors_text = errors.display().to_string();
    let mut all = vec![
        "-i",
        "127.0.0.1",
        "-p",
        &port,
        "-mi",
        "127.0.0.1",
        "-mp",
        &media,
        "-timeout",
        "60s",
        "-timeout_error",
        "-nostdin",
        "-trace_err",
        "-error_file",
        &errors_text,
    ];
    all.extend_from_slice(args);
    match sipp(&all, scenario).spawn() {
        Ok(child) => SippSide {
            process: Process(child),
            scenario: scenario.to_string(),
            errors,
        },
        Err(e) => panic!("sipp {scenario}: {e}"),
    }
}
