//! A throwaway PostgreSQL server of the test's own (Debian's `postgresql`): `initdb` in a
//! temporary directory, the server on a free loopback port, as the `postgres` user when the
//! test runs as root (the server refuses root). Stopped and deleted when dropped.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Postgres {
    pub port: u16,
    server: Option<Child>,
    bin: PathBuf,
    user: Option<(u32, u32)>,
    dir: tempfile::TempDir,
    /// With TLS: the server's certificate and key files (TLS required of every client).
    tls: Option<(PathBuf, PathBuf)>,
}

/// The newest server binaries Debian installed (`/usr/lib/postgresql/<version>/bin`).
fn binaries() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap_or_else(|e| {
            panic!("PostgreSQL's server is not installed (.ci/run installs postgresql): {e}")
        })
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!("no /usr/lib/postgresql/*/bin/initdb: .ci/run installs postgresql"),
    }
}

/// The uid and gid the server runs as: `postgres` when we are root, else ourselves.
fn server_user() -> Option<(u32, u32)> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .unwrap_or_else(|| {
            panic!("no postgres user (installed with postgresql) to run the server as")
        });
    let fields: Vec<&str> = line.split(':').collect();
    let uid = fields.get(2).and_then(|f| f.parse().ok());
    let gid = fields.get(3).and_then(|f| f.parse().ok());
    match (uid, gid) {
        (Some(uid), Some(gid)) => Some((uid, gid)),
        _ => panic!("unreadable postgres entry in /etc/passwd: {line}"),
    }
}

fn as_server_user(command: &mut Command, user: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
}

impl Postgres {
    /// A new server with a superuser `gateway` (trust on loopback); returns once it accepts
    /// connections.
    pub(crate) fn start() -> Postgres {
        Postgres::start_with(None)
    }

    /// As [`Postgres::start`], speaking TLS only, with this certificate and key (PEM).
    pub(crate) fn start_tls(cert_pem: &str, key_pem: &str) -> Postgres {
        Postgres::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> Postgres {
        let bin = binaries();
        let user = server_user();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let data = dir.path().join("data");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {}: {e}", dir.path().display()));
        }
        let _ = std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700));
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-A",
                "trust",
                "-U",
                "gateway",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_server_user(&mut initdb, user);
        let output = initdb.output().unwrap_or_else(|e| panic!("initdb: {e}"));
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let tls = tls.map(|(cert, key)| {
            let (cert_path, key_path) =
                (dir.path().join("server.crt"), dir.path().join("server.key"));
            for (path, text) in [(&cert_path, cert), (&key_path, key)] {
                std::fs::write(path, text).unwrap_or_else(|e| panic!("{e}"));
                let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
                if let Some((uid, gid)) = user {
                    let _ = std::os::unix::fs::chown(path, Some(uid), Some(gid));
                }
            }
            // Plain connections refused, before initdb's trust lines.
            let hba = data.join("pg_hba.conf");
            let rules = std::fs::read_to_string(&hba).unwrap_or_default();
            std::fs::write(&hba, format!("hostnossl all all all reject\n{rules}"))
                .unwrap_or_else(|e| panic!("{e}"));
            (cert_path, key_path)
        });
        let mut postgres = Postgres {
            port: super::process::free_port(),
            server: None,
            bin,
            user,
            dir,
            tls,
        };
        postgres.spawn();
        postgres
    }

    /// Starts the server (again) on its data directory and port; returns once it accepts
    /// connections.
    pub(crate) fn spawn(&mut self) {
        let mut server = Command::new(self.bin.join("postgres"));
        server
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-k")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            // A throwaway server: no fsync (the machine does not crash under it), but every
            // commit in the WAL before it is answered, so a server stopped at once (an
            // outage) loses nothing it confirmed.
            .args(["-c", "fsync=off"])
            .args(["-c", "max_connections=200"])
            .args(self.tls.iter().flat_map(|(cert, key)| {
                [
                    "-c".to_string(),
                    "ssl=on".to_string(),
                    "-c".to_string(),
                    format!("ssl_cert_file={}", cert.display()),
                    "-c".to_string(),
                    format!("ssl_key_file={}", key.display()),
                ]
            }))
            .stdout(Stdio::null())
            .stderr(self.log_file());
        as_server_user(&mut server, self.user);
        self.server = Some(server.spawn().unwrap_or_else(|e| panic!("postgres: {e}")));
        self.wait_ready();
    }

    fn log_file(&self) -> Stdio {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
        {
            Ok(file) => file.into(),
            Err(_) => Stdio::null(),
        }
    }

    /// The server's log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Stops the server at once (SIGQUIT, its immediate shutdown: every connection is cut, as
    /// when the database host goes down), and waits until it has gone.
    pub(crate) fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            if let Some(pid) = rustix::process::Pid::from_raw(server.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::QUIT);
            }
            let _ = server.wait();
        }
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "gateway",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start within 30 s"
            );
            // The server has no event to await from here: ask again shortly.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A new empty database on the server; returns its URL.
    pub(crate) fn database(&self, name: &str) -> String {
        self.sql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(name)
    }

    pub(crate) fn url(&self, database: &str) -> String {
        format!("postgresql://gateway@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs `query` on `database` (in a thread of its own: the sync client must not run on
    /// a tokio worker); returns the rows of its last statement, each column as text.
    pub(crate) fn sql(&self, database: &str, query: &str) -> Vec<Vec<Option<String>>> {
        // Through the server's Unix socket: a test's own queries need no TLS.
        let url = format!(
            "host={} port={} user=gateway dbname={database}",
            self.dir.path().display(),
            self.port
        );
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let mut client = postgres::Client::connect(&url, postgres::NoTls)
                        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
                    let mut rows = Vec::new();
                    for message in client.simple_query(query).unwrap_or_else(|e| {
                        panic!("{query}: {e}: {:?}", e.as_db_error().map(|d| d.message()))
                    }) {
                        if let postgres::SimpleQueryMessage::Row(row) = message {
                            rows.push(
                                (0..row.len())
                                    .map(|i| row.get(i).map(str::to_string))
                                    .collect(),
                            );
                        }
                    }
                    rows
                })
                .join()
                .unwrap_or_else(|_| panic!("{query} panicked"))
        })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
