//! Debian's Chromium, headless, driven through Debian's ChromeDriver over the W3C WebDriver
//! protocol (plain HTTP and JSON): what a duty engineer's browser does with the status page.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use super::process::free_port;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A headless Chromium session; the driver (and its browser) ends when dropped.
pub(crate) struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

/// One WebDriver command: `method path` with `body`; the answer's `value`.
fn command(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    // The driver may keep the connection open: read the head, then Content-Length bytes.
    let mut answer = Vec::new();
    let mut chunk = [0u8; 8192];
    let (head_end, length) = loop {
        let read = stream.read(&mut chunk).map_err(|e| e.to_string())?;
        if read == 0 {
            return Err(format!("no answer to {method} {path}"));
        }
        answer.extend_from_slice(&chunk[..read]);
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (end + 4, length);
        }
    };
    while answer.len() < head_end + length {
        let read = stream.read(&mut chunk).map_err(|e| e.to_string())?;
        if read == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..read]);
    }
    let json = String::from_utf8_lossy(&answer[head_end..]).to_string();
    let parsed: Value = serde_json::from_str(json.trim()).map_err(|e| format!("{e}: {json}"))?;
    if parsed["value"]["error"].is_string() {
        return Err(format!("{method} {path}: {}", parsed["value"]));
    }
    Ok(parsed["value"].clone())
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium (panics, saying what to install, when
    /// either is missing).
    pub(crate) fn start() -> Browser {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing (apt-get install chromium chromium-driver; .ci/run does this)"
            );
        }
        let port = free_port();
        let mut driver = match Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => panic!("start chromedriver: {e}"),
        };
        // It says when it listens; what follows is read (and dropped) so it never blocks.
        let Some(out) = driver.stdout.take() else {
            panic!("no chromedriver output")
        };
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(out));
        let mut seen = Vec::new();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("started successfully") => break,
                Some(Ok(line)) => seen.push(line),
                _ => panic!("chromedriver ended before listening:\n{}", seen.join("\n")),
            }
        }
        std::thread::spawn(move || for _ in lines {});
        let profile = match tempfile::tempdir() {
            Ok(dir) => dir,
            Err(e) => panic!("{e}"),
        };
        // As root and on a closed network: no sandbox, nothing fetched in the background.
        let capabilities = json!({
            "capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--window-size=1600,1000",
                        format!("--user-data-dir={}", profile.path().display()),
                    ]
                }
            }}
        });
        let session = match command(port, "POST", "/session", Some(&capabilities)) {
            Ok(value) => value["sessionId"].as_str().unwrap_or_default().to_string(),
            Err(e) => panic!("no Chromium session: {e}"),
        };
        assert!(!session.is_empty(), "no Chromium session id");
        Browser {
            driver,
            port,
            session,
            _profile: profile,
        }
    }

    fn session(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        match command(self.port, method, &path, body) {
            Ok(value) => value,
            Err(e) => panic!("{e}"),
        }
    }

    /// Opens `url` (returns once the page loaded).
    pub(crate) fn open(&self, url: &str) {
        self.session("POST", "/url", Some(&json!({ "url": url })));
    }

    /// Runs `script` in the page; what it returns.
    pub(crate) fn run(&self, script: &str) -> Value {
        self.session(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": [] })),
        )
    }

    /// The page's visible text.
    pub(crate) fn text(&self) -> String {
        self.run("return document.body.innerText;")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits until the JavaScript expression `condition` holds in the page, as the page
    /// changes itself (a MutationObserver in the page tells; nothing polls), failing after
    /// `within`.
    pub(crate) fn wait_for(&self, what: &str, condition: &str, within: Duration) {
        let millis = u64::try_from(within.as_millis()).unwrap_or(u64::MAX);
        self.session("POST", "/timeouts", Some(&json!({ "script": millis })));
        let script = format!(
            "const done = arguments[arguments.length - 1];
             const holds = () => {{ try {{ return Boolean({condition}); }} catch (e) {{ return false; }} }};
             if (holds()) {{ done(true); return; }}
             const seen = new MutationObserver(() => {{
               if (holds()) {{ seen.disconnect(); done(true); }}
             }});
             seen.observe(document.documentElement,
               {{ subtree: true, childList: true, characterData: true, attributes: true }});"
        );
        let path = format!("/session/{}/execute/async", self.session);
        let body = json!({ "script": script, "args": [] });
        if let Err(error) = command(self.port, "POST", &path, Some(&body)) {
            panic!(
                "the page never showed {what} ({error}); it shows:\n{}",
                self.text()
            );
        }
    }

    /// A screenshot of the window, as PNG, written to `path`.
    pub(crate) fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let value = self.session("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(value.as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("screenshot: {e}"));
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        if let Err(e) = std::fs::write(path, png) {
            panic!("write {}: {e}", path.display());
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = command(
            self.port,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
