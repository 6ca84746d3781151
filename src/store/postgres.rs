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

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, GenericClient, NoTls, Row, Statement};

use super::outbox::{Interrupted, NewEvent, OutboxRecord, Recovery};
use super::writer::{Change, Engine, EngineError, WriteOp};
use super::{BlockedNumberRecord, CallRecord, ConferencePartyRecord, LinkageRecord, StoreError};

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
const SCHEMA_VERSION: i32 = 1;

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

/// The writer's connection, opened again when lost.
pub(super) struct PostgresEngine {
    url: DatabaseUrl,
    node: String,
    connection: Option<(Client, Statements)>,
}

/// The writes, prepared once per connection.
struct Statements {
    call: Statement,
    answered: Statement,
    linkage: Statement,
    reply: Statement,
    party: Statement,
    block: Statement,
    unblock: Statement,
    event: Statement,
    counter: Statement,
    ack: Statement,
    prune: Statement,
    notify: Statement,
}

impl Statements {
    fn prepare(client: &mut Client) -> Result<Statements, postgres::Error> {
        Ok(Statements {
            // A batch's call records in one statement, each call's newest only (one row may
            // not be changed twice by one statement).
            call: client.prepare(
                "INSERT INTO calls (id, node, a_call_id, b_call_id, caller, called, a_peer,
                     b_peer, started_at, answered_at, ended_at, ended_by, end_reason,
                     final_status, rtp_a_to_b, rtp_b_to_a, rtp_dropped, a_interface,
                     b_interface)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                     $5::text[], $6::text[], $7::text[], $8::text[], $9::bigint[],
                     $10::bigint[], $11::bigint[], $12::text[], $13::text[], $14::integer[],
                     $15::bigint[], $16::bigint[], $17::bigint[], $18::text[], $19::text[])
                 ON CONFLICT (id) DO UPDATE SET b_call_id = excluded.b_call_id,
                     b_peer = excluded.b_peer, b_interface = excluded.b_interface,
                     answered_at = excluded.answered_at,
                     ended_at = excluded.ended_at, ended_by = excluded.ended_by,
                     end_reason = excluded.end_reason, final_status = excluded.final_status,
                     rtp_a_to_b = excluded.rtp_a_to_b, rtp_b_to_a = excluded.rtp_b_to_a,
                     rtp_dropped = excluded.rtp_dropped
                 -- A call a survivor closed for its lost node stays as the platforms were told
                 -- (its node came back late and still writes).
                 WHERE calls.end_reason IS DISTINCT FROM 'node lost'",
            )?,
            answered: client.prepare(
                "UPDATE calls SET b_call_id = $2, b_peer = $3, answered_at = $4,
                     b_interface = $5 WHERE id = $1 AND ended_at IS NULL",
            )?,
            // A reply may have come while the linkage was under way: its columns stay.
            linkage: client.prepare(
                "INSERT INTO linkages (id, call_id, from_platform, from_peer, to_platform,
                     to_peer, target, trigger, requested_at, ringing_at, answered_at, ended_at,
                     outcome, sip_status, kind)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
                 ON CONFLICT (id) DO UPDATE SET call_id = excluded.call_id,
                     from_platform = excluded.from_platform, from_peer = excluded.from_peer,
                     to_platform = excluded.to_platform, to_peer = excluded.to_peer,
                     target = excluded.target, trigger = excluded.trigger,
                     requested_at = excluded.requested_at, ringing_at = excluded.ringing_at,
                     answered_at = excluded.answered_at, ended_at = excluded.ended_at,
                     outcome = excluded.outcome, sip_status = excluded.sip_status,
                     kind = excluded.kind",
            )?,
            reply: client.prepare(
                "UPDATE linkages SET
                     incident_number = COALESCE(NULLIF($2, ''), incident_number),
                     disposition = COALESCE(NULLIF($3, ''), disposition),
                     replied_at = $4
                 WHERE id = $1",
            )?,
            party: client.prepare(
                "INSERT INTO conference_parties (call_id, party, peer, number, joined_at,
                     left_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (call_id, party, joined_at) DO UPDATE SET peer = excluded.peer,
                     number = excluded.number, left_at = excluded.left_at",
            )?,
            block: client.prepare(
                "INSERT INTO blocked_numbers (number, platform, reason, blocked_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (number) DO UPDATE SET platform = excluded.platform,
                     reason = excluded.reason, blocked_at = excluded.blocked_at,
                     expires_at = excluded.expires_at",
            )?,
            unblock: client.prepare("DELETE FROM blocked_numbers WHERE number = $1")?,
            // A batch's events in one statement (a round trip per event was most of a batch's
            // time).
            event: client.prepare(
                "INSERT INTO outbox (platform, sequence, event_id, call_id, created_at, body)
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[],
                     $5::bigint[], $6::bytea[])",
            )?,
            // Takes the platform's counter row for the rest of the transaction: the order of
            // the nodes' commits.
            counter: client.prepare(
                "INSERT INTO outbox_sequences (platform, latest) VALUES ($1, $2)
                 ON CONFLICT (platform) DO UPDATE
                     SET latest = outbox_sequences.latest + excluded.latest
                 RETURNING latest",
            )?,
            ack: client.prepare(
                "INSERT INTO outbox_acks (platform, sequence) VALUES ($1, $2)
                 ON CONFLICT (platform) DO UPDATE
                     SET sequence = GREATEST(outbox_acks.sequence, excluded.sequence)",
            )?,
            // A call still open keeps its events: whoever closes it finds there which
            // platforms saw it.
            prune: client.prepare(
                "DELETE FROM outbox WHERE created_at < $1 AND call_id NOT IN
                     (SELECT id FROM calls WHERE ended_at IS NULL)",
            )?,
            notify: client.prepare("SELECT pg_notify($1, $2)")?,
        })
    }
}

impl PostgresEngine {
    pub(super) fn new(url: DatabaseUrl, node: String, client: Client) -> PostgresEngine {
        let mut engine = PostgresEngine {
            url,
            node,
            connection: None,
        };
        let mut client = client;
        if let Ok(statements) = Statements::prepare(&mut client) {
            engine.connection = Some((client, statements));
        }
        engine
    }

    fn connection(&mut self) -> Result<&mut (Client, Statements), postgres::Error> {
        if self
            .connection
            .as_ref()
            .is_some_and(|(client, _)| client.is_closed())
        {
            self.connection = None;
        }
        if self.connection.is_none() {
            let mut client = self.url.connect()?;
            let statements = Statements::prepare(&mut client)?;
            self.connection = Some((client, statements));
        }
        match self.connection.as_mut() {
            Some(connection) => Ok(connection),
            None => unreachable!("connected just above"),
        }
    }
}

impl Engine for PostgresEngine {
    fn write_batch(
        &mut self,
        batch: &[WriteOp],
        sequences: &mut HashMap<String, u64>,
    ) -> Result<Vec<u64>, EngineError> {
        let node = self.node.clone();
        let result = self
            .connection()
            .and_then(|(client, statements)| write_batch(client, statements, &node, batch));
        match result {
            Ok((numbers, latest)) => {
                sequences.extend(latest);
                Ok(numbers)
            }
            Err(error) => {
                let (retry, cause) = classify(&error);
                if retry {
                    // A connection that failed mid-transaction is not trusted again.
                    self.connection = None;
                }
                Err(EngineError {
                    message: describe(&error),
                    retry,
                    cause,
                })
            }
        }
    }
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

/// Whether another attempt may succeed, and what an operator should look at first.
fn classify(error: &postgres::Error) -> (bool, &'static str) {
    let Some(code) = error.code() else {
        // No answer from the server: the connection is gone or was never made.
        return (
            true,
            "the database is unreachable or the connection was lost",
        );
    };
    let class = &code.code()[..2.min(code.code().len())];
    match class {
        "08" => (
            true,
            "the database is unreachable or the connection was lost",
        ),
        "53" => (
            true,
            "the database server is out of disk, memory or connections",
        ),
        "57" => (true, "the database server is shutting down or starting"),
        "40" => (true, "a conflict with another node's transaction"),
        "58" => (true, "the database server reports I/O errors"),
        "28" => (true, "the database refuses the gateway's user or password"),
        _ if *code == SqlState::READ_ONLY_SQL_TRANSACTION => {
            (true, "the database is read-only (a standby?)")
        }
        _ if *code == SqlState::INSUFFICIENT_PRIVILEGE => (
            true,
            "the database user lacks a privilege on the gateway's tables",
        ),
        _ => (false, "see the error"),
    }
}

/// Writes `batch` in one transaction; returns its events' sequences, in order, and each
/// platform's newest after it.
fn write_batch(
    client: &mut Client,
    statements: &Statements,
    node: &str,
    batch: &[WriteOp],
) -> Result<(Vec<u64>, HashMap<String, u64>), postgres::Error> {
    let mut transaction = client.transaction()?;
    // The counter rows first, in name order: every node takes them in the same order.
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for op in batch {
        if let WriteOp::Write { events, .. } = op {
            for event in events {
                *counts.entry(event.platform.as_str()).or_insert(0) += 1;
            }
        }
    }
    let mut next: HashMap<&str, u64> = HashMap::new();
    let mut latest: HashMap<String, u64> = HashMap::new();
    for (platform, count) in &counts {
        let newest: i64 = transaction
            .query_one(&statements.counter, &[platform, count])?
            .get(0);
        next.insert(platform, (newest - count + 1).max(1) as u64);
        latest.insert((*platform).to_string(), newest.max(0) as u64);
    }
    let mut numbers = Vec::new();
    let mut blocklist: Vec<&str> = Vec::new();
    let mut arrivals: Vec<(&str, &str)> = Vec::new();
    // Each platform's newest Ack of the batch, applied in name order after the rest (rows
    // taken in one order on every node).
    let mut acks: BTreeMap<&str, u64> = BTreeMap::new();
    let mut rows: Vec<(&NewEvent, i64)> = Vec::new();
    write_calls(&mut transaction, statements, node, batch)?;
    for op in batch {
        match op {
            WriteOp::Write {
                changes, events, ..
            } => {
                for change in changes {
                    write_change(&mut transaction, statements, change)?;
                    match change {
                        Change::Started(call) => arrivals.push((&call.id, &call.caller)),
                        Change::Block(b) => blocklist.push(&b.number),
                        Change::Unblock(number) => blocklist.push(number),
                        _ => {}
                    }
                }
                for event in events {
                    let Some(sequence) = next.get_mut(event.platform.as_str()) else {
                        continue;
                    };
                    rows.push((event, *sequence as i64));
                    numbers.push(*sequence);
                    *sequence += 1;
                }
            }
            WriteOp::Ack { platform, sequence } => {
                let newest = acks.entry(platform.as_str()).or_insert(0);
                *newest = (*newest).max(*sequence);
            }
            WriteOp::Prune(before) => {
                transaction.execute(&statements.prune, &[before])?;
            }
            WriteOp::Flush(_) | WriteOp::Ping(_) => {}
        }
    }
    if !rows.is_empty() {
        let platforms: Vec<&str> = rows.iter().map(|(e, _)| e.platform.as_str()).collect();
        let sequences: Vec<i64> = rows.iter().map(|(_, s)| *s).collect();
        let ids: Vec<&str> = rows.iter().map(|(e, _)| e.event_id.as_str()).collect();
        let calls: Vec<&str> = rows.iter().map(|(e, _)| e.call_id.as_str()).collect();
        let created: Vec<i64> = rows.iter().map(|(e, _)| e.created_at).collect();
        let bodies: Vec<&[u8]> = rows.iter().map(|(e, _)| &*e.body).collect();
        transaction.execute(
            &statements.event,
            &[&platforms, &sequences, &ids, &calls, &created, &bodies],
        )?;
    }
    for (platform, sequence) in &acks {
        transaction.execute(&statements.ack, &[platform, &(*sequence as i64)])?;
        transaction.execute(
            &statements.notify,
            &[&ACKS_CHANNEL, &format!("{sequence} {platform}")],
        )?;
    }
    // Delivered to every listening node once this commits, in commit order.
    for (platform, newest) in &latest {
        transaction.execute(
            &statements.notify,
            &[&OUTBOX_CHANNEL, &format!("{newest} {platform}")],
        )?;
    }
    for number in blocklist {
        transaction.execute(
            &statements.notify,
            &[&BLOCKLIST_CHANNEL, &format!("{node} {number}")],
        )?;
    }
    // The new calls' callers, a line each after the node's name, in notifications of at
    // most 7,000 bytes (the limit is 8,000); the call's id keeps two calls of one caller
    // apart; a caller no phone number could be is not told.
    let mut payload = String::new();
    for (id, caller) in arrivals.iter().filter(|(_, caller)| caller.len() <= 64) {
        if payload.is_empty() {
            payload.push_str(node);
        }
        payload.push('\n');
        payload.push_str(id);
        payload.push(' ');
        payload.push_str(caller);
        if payload.len() > 7_000 {
            transaction.execute(&statements.notify, &[&ARRIVALS_CHANNEL, &payload])?;
            payload.clear();
        }
    }
    if !payload.is_empty() {
        transaction.execute(&statements.notify, &[&ARRIVALS_CHANNEL, &payload])?;
    }
    transaction.commit()?;
    Ok((numbers, latest))
}

/// The batch's call records (starts and ends), each call's newest, in one statement; before
/// the batch's answers, which then find the row (an answer to a call whose end is in the
/// batch changes nothing: the end has it).
fn write_calls(
    transaction: &mut postgres::Transaction<'_>,
    statements: &Statements,
    node: &str,
    batch: &[WriteOp],
) -> Result<(), postgres::Error> {
    let mut newest: HashMap<&str, &CallRecord> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for op in batch {
        if let WriteOp::Write { changes, .. } = op {
            for change in changes {
                if let Change::Started(r) | Change::Ended(r) = change {
                    if newest.insert(r.id.as_str(), r).is_none() {
                        order.push(r.id.as_str());
                    }
                }
            }
        }
    }
    if order.is_empty() {
        return Ok(());
    }
    let records: Vec<&CallRecord> = order
        .iter()
        .filter_map(|id| newest.get(id).copied())
        .collect();
    let text = |f: fn(&CallRecord) -> &str| records.iter().map(|r| f(r)).collect::<Vec<&str>>();
    let optional =
        |f: fn(&CallRecord) -> Option<&str>| records.iter().map(|r| f(r)).collect::<Vec<_>>();
    let number = |f: fn(&CallRecord) -> i64| records.iter().map(|r| f(r)).collect::<Vec<i64>>();
    let maybe =
        |f: fn(&CallRecord) -> Option<i64>| records.iter().map(|r| f(r)).collect::<Vec<_>>();
    let nodes: Vec<&str> = records.iter().map(|_| node).collect();
    let statuses: Vec<Option<i32>> = records
        .iter()
        .map(|r| r.final_status.map(i32::from))
        .collect();
    transaction.execute(
        &statements.call,
        &[
            &text(|r| &r.id),
            &nodes,
            &text(|r| &r.a_call_id),
            &optional(|r| r.b_call_id.as_deref()),
            &text(|r| &r.caller),
            &text(|r| &r.called),
            &text(|r| &r.a_peer),
            &optional(|r| r.b_peer.as_deref()),
            &number(|r| r.started_at),
            &maybe(|r| r.answered_at),
            &maybe(|r| r.ended_at),
            &optional(|r| r.ended_by.as_deref()),
            &optional(|r| r.end_reason.as_deref()),
            &statuses,
            &number(|r| r.rtp_a_to_b as i64),
            &number(|r| r.rtp_b_to_a as i64),
            &number(|r| r.rtp_dropped as i64),
            &text(|r| &r.a_interface),
            &optional(|r| r.b_interface.as_deref()),
        ],
    )?;
    Ok(())
}

fn write_change(
    transaction: &mut postgres::Transaction<'_>,
    statements: &Statements,
    change: &Change,
) -> Result<(), postgres::Error> {
    match change {
        // Written before the batch's other changes, all at once (write_calls).
        Change::Started(_) | Change::Ended(_) => {}
        Change::Answered {
            id,
            b_call_id,
            b_peer,
            b_interface,
            answered_at,
        } => {
            transaction.execute(
                &statements.answered,
                &[id, b_call_id, b_peer, answered_at, b_interface],
            )?;
        }
        Change::Linkage(l) => {
            transaction.execute(
                &statements.linkage,
                &[
                    &l.id,
                    &l.call_id,
                    &l.from_platform,
                    &l.from_peer,
                    &l.to_platform,
                    &l.to_peer,
                    &l.target,
                    &l.trigger,
                    &l.requested_at,
                    &l.ringing_at,
                    &l.answered_at,
                    &l.ended_at,
                    &l.outcome,
                    &l.sip_status.map(i32::from),
                    &l.kind,
                ],
            )?;
        }
        Change::LinkageReply {
            linkage_id,
            incident_number,
            disposition,
            replied_at,
        } => {
            transaction.execute(
                &statements.reply,
                &[linkage_id, incident_number, disposition, replied_at],
            )?;
        }
        Change::ConferenceParty(p) => {
            transaction.execute(
                &statements.party,
                &[
                    &p.call_id,
                    &i16::from(p.party),
                    &p.peer,
                    &p.number,
                    &p.joined_at,
                    &p.left_at,
                ],
            )?;
        }
        Change::Block(b) => {
            transaction.execute(
                &statements.block,
                &[
                    &b.number,
                    &b.platform,
                    &b.reason,
                    &b.blocked_at,
                    &b.expires_at,
                ],
            )?;
        }
        Change::Unblock(number) => {
            transaction.execute(&statements.unblock, &[number])?;
        }
    }
    Ok(())
}

const CALL_COLUMNS: &str = "id, a_call_id, b_call_id, caller, called, a_peer, b_peer, started_at,
    answered_at, ended_at, ended_by, end_reason, final_status, rtp_a_to_b, rtp_b_to_a, rtp_dropped,
    a_interface, b_interface, node";

fn call_row(row: &Row) -> CallRecord {
    CallRecord {
        id: row.get(0),
        a_call_id: row.get(1),
        b_call_id: row.get(2),
        caller: row.get(3),
        called: row.get(4),
        a_peer: row.get(5),
        b_peer: row.get(6),
        started_at: row.get(7),
        answered_at: row.get(8),
        ended_at: row.get(9),
        ended_by: row.get(10),
        end_reason: row.get(11),
        final_status: row
            .get::<_, Option<i32>>(12)
            .and_then(|s| u16::try_from(s).ok()),
        rtp_a_to_b: row.get::<_, i64>(13).max(0) as u64,
        rtp_b_to_a: row.get::<_, i64>(14).max(0) as u64,
        rtp_dropped: row.get::<_, i64>(15).max(0) as u64,
        a_interface: row.get(16),
        b_interface: row.get(17),
        node: row.get(18),
    }
}

/// The newest `limit` calls of every node, newest first.
pub(super) fn list_calls(
    client: &mut impl GenericClient,
    limit: usize,
) -> Result<Vec<CallRecord>, StoreError> {
    let rows = client.query(
        &format!("SELECT {CALL_COLUMNS} FROM calls ORDER BY started_at DESC, id DESC LIMIT $1"),
        &[&(limit as i64)],
    )?;
    Ok(rows.iter().map(call_row).collect())
}

/// The calls of every node not ended, oldest first.
pub(super) fn active_calls(client: &mut impl GenericClient) -> Result<Vec<CallRecord>, StoreError> {
    let rows = client.query(
        &format!("SELECT {CALL_COLUMNS} FROM calls WHERE ended_at IS NULL ORDER BY started_at, id"),
        &[],
    )?;
    Ok(rows.iter().map(call_row).collect())
}

pub(super) fn linkages_of(
    client: &mut impl GenericClient,
    call_id: &str,
) -> Result<Vec<LinkageRecord>, StoreError> {
    let rows = client.query(
        "SELECT id, call_id, from_platform, from_peer, to_platform, to_peer, target, trigger,
                requested_at, ringing_at, answered_at, ended_at, outcome, sip_status, kind,
                incident_number, disposition, replied_at
         FROM linkages WHERE call_id = $1 ORDER BY requested_at, id",
        &[&call_id],
    )?;
    Ok(rows
        .iter()
        .map(|row| LinkageRecord {
            id: row.get(0),
            call_id: row.get(1),
            from_platform: row.get(2),
            from_peer: row.get(3),
            to_platform: row.get(4),
            to_peer: row.get(5),
            target: row.get(6),
            trigger: row.get(7),
            requested_at: row.get(8),
            ringing_at: row.get(9),
            answered_at: row.get(10),
            ended_at: row.get(11),
            outcome: row.get(12),
            sip_status: row
                .get::<_, Option<i32>>(13)
                .and_then(|s| u16::try_from(s).ok()),
            kind: row.get(14),
            incident_number: row.get(15),
            disposition: row.get(16),
            replied_at: row.get(17),
        })
        .collect())
}

/// One linkage by its id.
pub(super) fn find_linkage(
    client: &mut impl GenericClient,
    linkage_id: &str,
) -> Result<Option<LinkageRecord>, StoreError> {
    let call_id: Option<String> = client
        .query_opt("SELECT call_id FROM linkages WHERE id = $1", &[&linkage_id])?
        .map(|row| row.get(0));
    let Some(call_id) = call_id else {
        return Ok(None);
    };
    Ok(linkages_of(client, &call_id)?
        .into_iter()
        .find(|l| l.id == linkage_id))
}

pub(super) fn parties_of(
    client: &mut impl GenericClient,
    call_id: &str,
) -> Result<Vec<ConferencePartyRecord>, StoreError> {
    let rows = client.query(
        "SELECT call_id, party, peer, number, joined_at, left_at
         FROM conference_parties WHERE call_id = $1 ORDER BY joined_at, party",
        &[&call_id],
    )?;
    Ok(rows
        .iter()
        .map(|row| ConferencePartyRecord {
            call_id: row.get(0),
            party: u8::try_from(row.get::<_, i16>(1)).unwrap_or(u8::MAX),
            peer: row.get(2),
            number: row.get(3),
            joined_at: row.get(4),
            left_at: row.get(5),
        })
        .collect())
}

fn blocked_row(row: &Row) -> BlockedNumberRecord {
    BlockedNumberRecord {
        number: row.get(0),
        platform: row.get(1),
        reason: row.get(2),
        blocked_at: row.get(3),
        expires_at: row.get(4),
    }
}

/// The numbers blocked through the API that have not expired at `now` (Unix ms).
pub(super) fn list_blocked(
    client: &mut impl GenericClient,
    now: i64,
) -> Result<Vec<BlockedNumberRecord>, StoreError> {
    let rows = client.query(
        "SELECT number, platform, reason, blocked_at, expires_at FROM blocked_numbers
         WHERE expires_at IS NULL OR expires_at > $1 ORDER BY number",
        &[&now],
    )?;
    Ok(rows.iter().map(blocked_row).collect())
}

/// One number's entry on the API's blocklist, if it has one.
pub(super) fn blocked(
    client: &mut impl GenericClient,
    number: &str,
) -> Result<Option<BlockedNumberRecord>, StoreError> {
    Ok(client
        .query_opt(
            "SELECT number, platform, reason, blocked_at, expires_at FROM blocked_numbers
             WHERE number = $1",
            &[&number],
        )?
        .as_ref()
        .map(blocked_row))
}

/// Up to `limit` events of `platform`'s outbox after `after`, in order.
pub(super) fn read_outbox(
    client: &mut impl GenericClient,
    platform: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<OutboxRecord>, StoreError> {
    let rows = client.query(
        "SELECT platform, sequence, event_id, call_id, created_at, body FROM outbox
         WHERE platform = $1 AND sequence > $2 ORDER BY sequence LIMIT $3",
        &[&platform, &(after as i64), &(limit as i64)],
    )?;
    Ok(rows
        .iter()
        .map(|row| OutboxRecord {
            platform: row.get(0),
            sequence: row.get::<_, i64>(1).max(0) as u64,
            event_id: row.get(2),
            call_id: row.get(3),
            created_at: row.get(4),
            body: row.get::<_, Vec<u8>>(5).into(),
        })
        .collect())
}

/// The oldest sequence of `platform` still kept (0: none).
pub(super) fn oldest(client: &mut impl GenericClient, platform: &str) -> Result<u64, StoreError> {
    let oldest: Option<i64> = client
        .query_one(
            "SELECT MIN(sequence) FROM outbox WHERE platform = $1",
            &[&platform],
        )?
        .get(0);
    Ok(oldest.map_or(0, |s| s.max(0) as u64))
}

/// `platform`'s newest sequence and its last acknowledgement.
pub(super) fn position(
    client: &mut impl GenericClient,
    platform: &str,
) -> Result<(u64, u64), StoreError> {
    let row = client.query_one(
        "SELECT (SELECT latest FROM outbox_sequences WHERE platform = $1),
                (SELECT sequence FROM outbox_acks WHERE platform = $1)",
        &[&platform],
    )?;
    let latest: Option<i64> = row.get(0);
    let acked: Option<i64> = row.get(1);
    Ok((
        latest.unwrap_or(0).max(0) as u64,
        acked.unwrap_or(0).max(0) as u64,
    ))
}

/// Each platform's newest sequence and its last acknowledgement.
pub(super) fn positions(
    client: &mut impl GenericClient,
) -> Result<HashMap<String, (u64, u64)>, StoreError> {
    let mut positions: HashMap<String, (u64, u64)> = HashMap::new();
    for row in client.query("SELECT platform, latest FROM outbox_sequences", &[])? {
        positions.insert(row.get(0), (row.get::<_, i64>(1).max(0) as u64, 0));
    }
    for row in client.query("SELECT platform, sequence FROM outbox_acks", &[])? {
        let acked = row.get::<_, i64>(1).max(0) as u64;
        let entry = positions.entry(row.get(0)).or_insert((acked, 0));
        entry.0 = entry.0.max(acked);
        entry.1 = acked;
    }
    Ok(positions)
}

/// Each platform that has events of `call_id`, with the body of its newest.
fn seen(
    client: &mut impl GenericClient,
    call_id: &str,
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let rows = client.query(
        "SELECT DISTINCT ON (platform) platform, body FROM outbox WHERE call_id = $1
         ORDER BY platform, sequence DESC",
        &[&call_id],
    )?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Closes what `node` left open, in `transaction`: its calls not ended get `ended_by =
/// 'gateway'` and `end_reason = reason` (200 if they were answered, else 503); their linkages
/// under way fail (503) and their conference parties still in leave; the events `recovery`
/// makes of each go to the outbox, numbered as any commit's, and are announced. Returns how
/// many calls were closed.
pub(super) fn close_node(
    transaction: &mut postgres::Transaction<'_>,
    node: &str,
    now: i64,
    reason: &str,
    recovery: Option<&Recovery>,
) -> Result<usize, StoreError> {
    // The counter rows first, in name order, as every writer takes them; then the calls, so
    // none of them ends meanwhile (its ending would be sent twice).
    transaction.execute(
        "SELECT platform FROM outbox_sequences ORDER BY platform FOR UPDATE",
        &[],
    )?;
    let calls = {
        let rows = transaction.query(
            &format!(
                "SELECT {CALL_COLUMNS} FROM calls WHERE ended_at IS NULL AND node = $1
                 ORDER BY started_at, id FOR UPDATE"
            ),
            &[&node],
        )?;
        rows.iter().map(call_row).collect::<Vec<_>>()
    };
    let mut events: Vec<NewEvent> = Vec::new();
    for call in &calls {
        let interrupted = Interrupted {
            linkages: linkages_of(transaction, &call.id)?
                .into_iter()
                .filter(|l| l.ended_at.is_none())
                .collect(),
            parties: parties_of(transaction, &call.id)?
                .into_iter()
                .filter(|p| p.left_at.is_none())
                .collect(),
            seen: seen(transaction, &call.id)?,
            call: call.clone(),
            reason: reason.to_string(),
        };
        if let Some(recovery) = recovery {
            events.extend(recovery(&interrupted, now));
        }
    }
    transaction.execute(
        "UPDATE linkages SET ended_at = $1, outcome = 'failed', sip_status = 503
         WHERE ended_at IS NULL AND call_id IN
             (SELECT id FROM calls WHERE node = $2 AND ended_at IS NULL)",
        &[&now, &node],
    )?;
    transaction.execute(
        "UPDATE conference_parties SET left_at = $1 WHERE left_at IS NULL AND call_id IN
             (SELECT id FROM calls WHERE node = $2 AND ended_at IS NULL)",
        &[&now, &node],
    )?;
    transaction.execute(
        "UPDATE calls SET ended_at = $1, ended_by = 'gateway', end_reason = $3,
             final_status = COALESCE(final_status,
                 CASE WHEN answered_at IS NOT NULL THEN 200 ELSE 503 END)
         WHERE ended_at IS NULL AND node = $2",
        &[&now, &node, &reason],
    )?;
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for event in &events {
        *counts.entry(event.platform.as_str()).or_insert(0) += 1;
    }
    let mut next: HashMap<&str, i64> = HashMap::new();
    for (platform, count) in &counts {
        let newest: i64 = transaction
            .query_one(
                "INSERT INTO outbox_sequences (platform, latest) VALUES ($1, $2)
                 ON CONFLICT (platform) DO UPDATE
                     SET latest = outbox_sequences.latest + excluded.latest
                 RETURNING latest",
                &[platform, count],
            )?
            .get(0);
        next.insert(platform, newest - count + 1);
        transaction.execute(
            "SELECT pg_notify($1, $2)",
            &[&OUTBOX_CHANNEL, &format!("{newest} {platform}")],
        )?;
    }
    for event in &events {
        let Some(sequence) = next.get_mut(event.platform.as_str()) else {
            continue;
        };
        transaction.execute(
            "INSERT INTO outbox (platform, sequence, event_id, call_id, created_at, body)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &event.platform,
                &*sequence,
                &event.event_id,
                &event.call_id,
                &event.created_at,
                &&*event.body,
            ],
        )?;
        *sequence += 1;
    }
    Ok(calls.len())
}
