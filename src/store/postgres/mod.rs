//! The PostgreSQL engine: the store several gateway nodes share (`[store] url`).
//!
//! The same records as the embedded store, with two things only a shared database needs:
//! - **One ordered stream per platform across nodes.** A platform's sequence is a counter row
//!   (`outbox_sequences`) advanced in the transaction that inserts its events, so its row lock
//!   orders the nodes' commits: sequence `n + 1` cannot commit before `n`, and a reader never
//!   skips an event that commits late (a `SEQUENCE` would leave gaps and allow exactly that).
//!   A batch takes its platforms' rows in name order, so two nodes never deadlock on them. The
//!   commit notifies `hotline_outbox` (`"<latest> <platform>"`) and `hotline_acks`, which every
//!   node listens to ([`super::cluster`]).
//! - **Each call's node** (`calls.node`), so a node whose lease expired has its open records
//!   closed by one survivor ([`close_node`]).
//!
//! The sync client (`postgres`, over tokio-postgres) is used from the writer thread and from
//! blocking readers, as rusqlite is. Its statements are prepared once per connection; a lost
//! connection is a failed write that is held and retried (reconnecting), as a full disk is.
//!
//! | file | holds |
//! |---|---|
//! | `mod.rs` | the URL, the schema and its migrations, the channels |
//! | `engine.rs` | the writer's engine: a batch's writes in one transaction |
//! | `reads.rs` | reads, and closing a node's open records |

mod engine;
mod reads;

use std::str::FromStr;
use std::time::Duration;

use postgres::{Client, NoTls};

use super::StoreError;

pub(super) use engine::PostgresEngine;
pub(super) use reads::{
    active_calls, blocked, calls_since, close_node, find_linkage, linkages_of, list_blocked,
    list_calls, oldest, parties_of, position, positions, read_outbox,
};

/// The channel a commit's newest sequences are announced on.
pub(super) const OUTBOX_CHANNEL: &str = "hotline_outbox";
/// The channel acknowledgements are announced on.
pub(super) const ACKS_CHANNEL: &str = "hotline_acks";
/// The channel blocklist changes are announced on (`"<node> <number>"`).
pub(super) const BLOCKLIST_CHANNEL: &str = "hotline_blocklist";
/// The channel new calls' callers are announced on (the node's name, then a line
/// `"<call id> <caller>"` per call), so every node
/// counts repeat callers over the whole cluster.
pub(super) const ARRIVALS_CHANNEL: &str = "hotline_arrivals";

/// How long a connection attempt may take before the store counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A `postgresql://` URL, checked; shown without its password.
#[derive(Clone)]
pub struct DatabaseUrl {
    config: Box<postgres::Config>,
    shown: String,
    /// The CAs of the database's certificate: with them, TLS (required); without, plain TCP.
    tls: Option<super::database_tls::DatabaseCa>,
}

impl DatabaseUrl {
    /// # Errors
    /// Why `url` is no PostgreSQL connection URL.
    pub fn parse(url: &str) -> Result<DatabaseUrl, String> {
        if !(url.starts_with("postgresql://") || url.starts_with("postgres://")) {
            return Err("expected a postgresql:// URL".into());
        }
        let mut config = postgres::Config::from_str(url).map_err(|e| e.to_string())?;
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .application_name("hotline-gateway");
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|host| match host {
                postgres::config::Host::Tcp(name) => name.clone(),
                postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
        let shown = format!(
            "postgresql://{}@{}{}/{}",
            config.get_user().unwrap_or(""),
            hosts.join(","),
            if ports.is_empty() {
                String::new()
            } else {
                format!(":{}", ports.join(","))
            },
            config.get_dbname().unwrap_or("")
        );
        Ok(DatabaseUrl {
            config: Box::new(config),
            shown,
            tls: None,
        })
    }

    /// This URL over TLS, the server's certificate checked against `ca` (None: as it is).
    #[must_use]
    pub fn with_ca(mut self, ca: Option<super::database_tls::DatabaseCa>) -> DatabaseUrl {
        if let Some(ca) = ca {
            self.config.ssl_mode(postgres::config::SslMode::Require);
            self.tls = Some(ca);
        }
        self
    }

    /// Whether the URL asks for TLS (`sslmode=require`).
    pub fn requires_tls(&self) -> bool {
        self.config.get_ssl_mode() == postgres::config::SslMode::Require
    }

    /// A new connection: TLS with a CA (`[store] ca_file`), else plain TCP.
    ///
    /// # Errors
    /// The client's error.
    pub(super) fn connect(&self) -> Result<Client, postgres::Error> {
        match &self.tls {
            Some(ca) => self.config.connect(ca.connector()),
            None => self.config.connect(NoTls),
        }
    }
}

impl<'de> serde::Deserialize<'de> for DatabaseUrl {
    /// `[store] url`, checked as it is read (the error names the key).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let url = String::deserialize(deserializer)?;
        DatabaseUrl::parse(&url).map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// The newest schema this code knows in PostgreSQL.
const SCHEMA_VERSION: i32 = 2;

/// The migrations, version `i + 1` at index `i`. Version 1 is the embedded store's seventh
/// with the cluster's own: each call's node, the nodes' leases, and the requests forwarded
/// between nodes.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
    // 1
    "CREATE TABLE calls (
         id TEXT PRIMARY KEY,
         node TEXT NOT NULL,
         a_call_id TEXT NOT NULL,
         b_call_id TEXT,
         caller TEXT NOT NULL,
         called TEXT NOT NULL,
         a_peer TEXT NOT NULL,
         b_peer TEXT,
         a_interface TEXT NOT NULL,
         b_interface TEXT,
         started_at BIGINT NOT NULL,
         answered_at BIGINT,
         ended_at BIGINT,
         ended_by TEXT,
         end_reason TEXT,
         final_status INTEGER,
         rtp_a_to_b BIGINT NOT NULL DEFAULT 0,
         rtp_b_to_a BIGINT NOT NULL DEFAULT 0,
         rtp_dropped BIGINT NOT NULL DEFAULT 0
     );
     CREATE INDEX calls_started_at ON calls (started_at);
     CREATE INDEX calls_a_call_id ON calls (a_call_id);
     CREATE INDEX calls_open ON calls (node) WHERE ended_at IS NULL;
     CREATE TABLE linkages (
         id TEXT PRIMARY KEY,
         call_id TEXT NOT NULL,
         from_platform TEXT,
         from_peer TEXT NOT NULL,
         to_platform TEXT,
         to_peer TEXT,
         target TEXT NOT NULL,
         trigger TEXT NOT NULL,
         kind TEXT NOT NULL DEFAULT 'transfer',
         requested_at BIGINT NOT NULL,
         ringing_at BIGINT,
         answered_at BIGINT,
         ended_at BIGINT,
         outcome TEXT,
         sip_status INTEGER,
         incident_number TEXT,
         disposition TEXT,
         replied_at BIGINT
     );
     CREATE INDEX linkages_call_id ON linkages (call_id);
     CREATE TABLE conference_parties (
         call_id TEXT NOT NULL,
         party SMALLINT NOT NULL,
         peer TEXT NOT NULL,
         number TEXT NOT NULL,
         joined_at BIGINT NOT NULL,
         left_at BIGINT,
         PRIMARY KEY (call_id, party, joined_at)
     );
     CREATE TABLE outbox (
         platform TEXT NOT NULL,
         sequence BIGINT NOT NULL,
         event_id TEXT NOT NULL,
         call_id TEXT NOT NULL,
         created_at BIGINT NOT NULL,
         body BYTEA NOT NULL,
         PRIMARY KEY (platform, sequence)
     );
     CREATE INDEX outbox_created_at ON outbox (created_at);
     CREATE INDEX outbox_call_id ON outbox (call_id);
     CREATE TABLE outbox_sequences (
         platform TEXT PRIMARY KEY,
         latest BIGINT NOT NULL
     );
     CREATE TABLE outbox_acks (
         platform TEXT PRIMARY KEY,
         sequence BIGINT NOT NULL
     );
     CREATE TABLE blocked_numbers (
         number TEXT PRIMARY KEY,
         platform TEXT NOT NULL,
         reason TEXT NOT NULL,
         blocked_at BIGINT NOT NULL,
         expires_at BIGINT
     );
     CREATE TABLE nodes (
         name TEXT PRIMARY KEY,
         incarnation TEXT NOT NULL,
         started_at BIGINT NOT NULL,
         expires_at TIMESTAMPTZ NOT NULL,
         closed_at TIMESTAMPTZ,
         closed_by TEXT
     );
     CREATE TABLE forwarded (
         key TEXT PRIMARY KEY,
         origin TEXT NOT NULL,
         target TEXT NOT NULL,
         kind TEXT NOT NULL,
         platform TEXT NOT NULL,
         body BYTEA NOT NULL,
         answer BYTEA,
         created_at TIMESTAMPTZ NOT NULL DEFAULT now()
     );
     CREATE INDEX forwarded_created_at ON forwarded (created_at);",
    // 2: the call's recording (`[recording]`).
    "ALTER TABLE calls ADD COLUMN recording TEXT;",
];

/// Any number, the same for every node: the lock under which one node migrates at a time.
const MIGRATION_LOCK: i64 = 0x0068_6f74_6c69_6e65;

/// Brings the database to [`SCHEMA_VERSION`]; nodes starting together migrate one at a time.
pub(super) fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let mut transaction = client.transaction()?;
    transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    transaction
        .batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let found: Option<i32> = transaction
        .query_one("SELECT MAX(version) FROM schema_version", &[])?
        .get(0);
    let found = found.unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found: i64::from(found),
            supported: i64::from(SCHEMA_VERSION),
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate() {
        let version = index as i32 + 1;
        if found < version {
            transaction.batch_execute(sql)?;
            transaction.execute(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[&version],
            )?;
        }
    }
    transaction.commit()?;
    Ok(())
}

/// The error with the server's message, where there is one, else with its causes (a TLS
/// handshake's says which certificate check failed).
pub(super) fn describe(error: &postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{error}: {}", db.message());
    }
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(source) = cause {
        text.push_str(&format!(": {source}"));
        cause = source.source();
    }
    text
}
