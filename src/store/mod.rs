//! The embedded store: one SQLite file (WAL mode) holding a record per call and one per
//! transfer attempt (the linkage between platforms).
//!
//! Writes never block call tasks: a dedicated writer thread owns the write connection and drains
//! a bounded queue, committing everything queued in one transaction per batch (how it keeps up
//! with thousands of calls per second). [`Store::call_ended`] resolves only after the COMMIT,
//! so a call that has ended is on disk: with WAL and `synchronous=NORMAL` a committed
//! transaction survives a crash of the process (`kill -9`); only a power loss can take the last
//! commits, which `synchronous=FULL` would also cover at the price of an fsync per batch.
//!
//! Readers (`hotline-gateway calls`, tests) open their own read-only connection: WAL lets them
//! read while the gateway writes.
//!
//! When the disk is full or read-only the calls go on: the writer holds what it could not
//! commit in memory (up to [`HELD_LIMIT`] records), tries again every [`RETRY`], raises
//! `hotline_store_degraded` and says so once in the log; the held records land, in order, as
//! soon as a commit succeeds. Work-order events are held the same way and sent only once
//! committed, so the platforms get them late but complete.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::{Counter, Gauge, Metrics};

/// The newest schema this code knows.
const SCHEMA_VERSION: i64 = 5;

/// Queue length between call tasks and the writer.
const QUEUE: usize = 16_384;

/// Records held in memory while the store cannot write; beyond, the oldest are given up (at
/// some hundred bytes each, about 100 MB; several minutes of calls at full load).
pub const HELD_LIMIT: usize = 500_000;

/// How often a failing store is tried again.
pub const RETRY: Duration = Duration::from_secs(1);

/// How the store is opened.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// Largest the database file may grow (SQLite `max_page_count`); at the cap writes fail
    /// as on a full disk (default: no cap but the disk's).
    pub max_size_bytes: Option<u64>,
    /// Where the writer reports its health (default: a private set nobody reads).
    pub metrics: Option<Arc<Metrics>>,
}

/// What became of a write that is waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Committed,
    /// The store cannot write now: the record is held in memory and retried.
    Held,
}

type Reply = oneshot::Sender<Result<Written, String>>;

/// Events queued for the outbox: resolves when they are committed (late, if the store was
/// failing), or fails if they were given up.
#[must_use = "events may be sent only once committed"]
pub struct EventsCommit(oneshot::Receiver<Result<Written, String>>);

impl EventsCommit {
    /// # Errors
    /// [`StoreError::Write`] if the store refused them for good, [`StoreError::Closed`] if they
    /// were given up (the hold was full, or the gateway stopped first).
    pub async fn committed(self) -> Result<(), StoreError> {
        match self.0.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(reason)) => Err(StoreError::Write {
                path: PathBuf::new(),
                reason,
            }),
            Err(_) => Err(StoreError::Closed),
        }
    }
}

/// One call, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// The gateway's own call id.
    pub id: String,
    pub a_call_id: String,
    pub b_call_id: Option<String>,
    pub caller: String,
    pub called: String,
    pub a_peer: String,
    pub b_peer: Option<String>,
    /// Unix milliseconds.
    pub started_at: i64,
    pub answered_at: Option<i64>,
    pub ended_at: Option<i64>,
    /// `caller`, `callee` or `gateway`.
    pub ended_by: Option<String>,
    pub end_reason: Option<String>,
    pub final_status: Option<u16>,
    pub rtp_a_to_b: u64,
    pub rtp_b_to_a: u64,
    pub rtp_dropped: u64,
}

/// One transfer attempt (a linkage between platforms), as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkageRecord {
    /// The linkage id, also sent to the target in `X-Hotline-Linkage`.
    pub id: String,
    /// The gateway's id of the call that was transferred.
    pub call_id: String,
    pub from_platform: Option<String>,
    pub from_peer: String,
    pub to_platform: Option<String>,
    /// The peer of the attempt under way, or the last one tried.
    pub to_peer: Option<String>,
    pub target: String,
    /// `refer`, `attended`, `hotkey`, `api` or `fallback` (the citizen sent back to the number
    /// first called).
    pub trigger: String,
    /// `transfer` (the target takes the agent's place) or `conference` (the target joins a
    /// three-way call).
    pub kind: String,
    /// Unix milliseconds.
    pub requested_at: i64,
    pub ringing_at: Option<i64>,
    pub answered_at: Option<i64>,
    pub ended_at: Option<i64>,
    /// `answered` or `failed` once settled.
    pub outcome: Option<String>,
    pub sip_status: Option<u16>,
}

/// One party's time in a conference (a three-way call or more), as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConferencePartyRecord {
    /// The gateway's id of the call.
    pub call_id: String,
    /// The relay's party number: 0 and 1 the call's first legs, 2 and up the guests.
    pub party: u8,
    pub peer: String,
    /// The number it was reached at, or the caller's number for party 0.
    pub number: String,
    /// Unix milliseconds.
    pub joined_at: i64,
    pub left_at: Option<i64>,
}

/// A number blocked through the work-order API (the config's blocklist is not stored).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlockedNumberRecord {
    pub number: String,
    /// The platform whose system blocked it.
    pub platform: String,
    pub reason: String,
    /// Unix milliseconds.
    pub blocked_at: i64,
    /// None: until taken off.
    pub expires_at: Option<i64>,
}

/// One event in a platform's outbox: stored before it is sent, sent again from here to a client
/// that reconnects.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutboxRecord {
    pub platform: String,
    /// The platform stream's sequence, from 1.
    pub sequence: u64,
    pub event_id: String,
    pub call_id: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// The event as sent (the gateway's encoding of it; protobuf for the work-order link).
    pub body: Vec<u8>,
}

/// Store failures, with the path where it helps.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("schema version {found} is newer than this gateway knows ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("cannot write to {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("the store's writer has stopped")]
    Closed,
}

enum WriteOp {
    Started(CallRecord),
    Answered {
        id: String,
        b_call_id: String,
        b_peer: String,
        answered_at: i64,
    },
    /// The reply goes as soon as the record is committed or held.
    Ended(CallRecord, Option<Reply>),
    Linkage(LinkageRecord),
    ConferenceParty(ConferencePartyRecord),
    /// The reply goes only once they are committed: events are sent after that.
    Events(Vec<OutboxRecord>, Option<Reply>),
    Ack {
        platform: String,
        sequence: u64,
    },
    /// Deletes outbox events older than this (Unix ms).
    Prune(i64),
    Block(BlockedNumberRecord),
    Unblock(String),
    Flush(Reply),
}

impl WriteOp {
    /// How many records it carries (for the hold's limit).
    fn records(&self) -> usize {
        match self {
            WriteOp::Events(events, _) => events.len(),
            WriteOp::Flush(_) => 0,
            _ => 1,
        }
    }
}

/// The store handle; cheap to clone.
#[derive(Clone)]
pub struct Store {
    queue: mpsc::Sender<WriteOp>,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the database, migrates it and starts the writer thread.
    ///
    /// # Errors
    /// [`StoreError`] naming the path.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with(path, StoreOptions::default())
    }

    /// As [`Store::open`], with `options`.
    ///
    /// # Errors
    /// [`StoreError`] naming the path.
    pub fn open_with(path: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let connection = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&connection)?;
        // Blocked numbers whose time is up are of no use any more (best effort: a full disk
        // must not keep the gateway from starting).
        if let Err(error) = connection.execute(
            "DELETE FROM blocked_numbers WHERE expires_at IS NOT NULL AND expires_at <= ?1",
            params![unix_millis(SystemTime::now())],
        ) {
            tracing::warn!(path = %path.display(), %error, "expired blocked numbers not deleted");
        }
        if let Some(bytes) = options.max_size_bytes {
            let page_size: i64 = connection.query_row("PRAGMA page_size", [], |row| row.get(0))?;
            let pages = (bytes as i64 / page_size.max(1)).max(1);
            // SQLite keeps the current size if the cap is below it.
            connection.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
        }
        let (queue, receiver) = mpsc::channel(QUEUE);
        let writer = Writer {
            connection,
            path: path.to_path_buf(),
            metrics: options.metrics.unwrap_or_default(),
            held: VecDeque::new(),
            held_records: 0,
            failing_since: None,
            last_attempt: Instant::now(),
            last_report: Instant::now(),
        };
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|source| StoreError::CreateDir {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Store {
            queue,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues the insert of a new call (does not wait for the commit).
    ///
    /// # Errors
    /// [`StoreError::Closed`] if the writer has stopped.
    pub async fn call_started(&self, record: CallRecord) -> Result<(), StoreError> {
        self.queue
            .send(WriteOp::Started(record))
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Queues the answer time of a call (does not wait for the commit).
    ///
    /// # Errors
    /// [`StoreError::Closed`] if the writer has stopped.
    pub async fn call_answered(
        &self,
        id: &str,
        b_call_id: &str,
        b_peer: &str,
        answered_at: i64,
    ) -> Result<(), StoreError> {
        self.queue
            .send(WriteOp::Answered {
                id: id.to_string(),
                b_call_id: b_call_id.to_string(),
                b_peer: b_peer.to_string(),
                answered_at,
            })
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Queues a conference party's record as it now stands (inserted or replaced; does not
    /// wait).
    ///
    /// # Errors
    /// [`StoreError::Closed`] if the writer has stopped.
    pub async fn conference_party(&self, record: ConferencePartyRecord) -> Result<(), StoreError> {
        self.queue
            .send(WriteOp::ConferenceParty(record))
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Queues the current state of a transfer attempt (inserted or replaced; does not wait).
    ///
    /// # Errors
    /// [`StoreError::Closed`] if the writer has stopped.
    pub async fn linkage(&self, record: LinkageRecord) -> Result<(), StoreError> {
        self.queue
            .send(WriteOp::Linkage(record))
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Writes the final record; resolves once it is committed, or held in memory because the
    /// store cannot write now ([`Written::Held`]: it lands when the store recovers).
    ///
    /// # Errors
    /// [`StoreError::Closed`] if the writer stopped, [`StoreError::Write`] if the store refused
    /// the record for good (not for a full or read-only disk: that holds it).
    pub async fn call_ended(&self, record: CallRecord) -> Result<Written, StoreError> {
        self.until_committed(|done| WriteOp::Ended(record, Some(done)))
            .await
    }

    /// Resolves when everything queued before it is committed.
    ///
    /// # Errors
    /// [`StoreError::Write`] if that could not be done now (records are held and retried).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.until_committed(WriteOp::Flush).await.map(|_| ())
    }

    async fn until_committed(
        &self,
        operation: impl FnOnce(Reply) -> WriteOp,
    ) -> Result<Written, StoreError> {
        let (done, committed) = oneshot::channel();
        self.queue
            .send(operation(done))
            .await
            .map_err(|_| StoreError::Closed)?;
        match committed.await {
            Ok(Ok(written)) => Ok(written),
            Ok(Err(reason)) => Err(StoreError::Write {
                path: self.path.clone(),
                reason,
            }),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Queues events for their platforms' outboxes; [`EventsCommit::committed`] resolves when
    /// they are committed: only then may they be sent.
    ///
    /// # Errors
    /// [`StoreError::Closed`] if the writer has stopped.
    pub async fn append_events(
        &self,
        events: Vec<OutboxRecord>,
    ) -> Result<EventsCommit, StoreError> {
        let (done, committed) = oneshot::channel();
        self.queue
            .send(WriteOp::Events(events, Some(done)))
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(EventsCommit(committed))
    }

    /// Records that `platform`'s client has every event up to `sequence` (does not wait).
    ///
    /// # Errors
    /// [`StoreError::Closed`] if the writer has stopped.
    pub async fn acknowledge(&self, platform: &str, sequence: u64) -> Result<(), StoreError> {
        self.queue
            .send(WriteOp::Ack {
                platform: platform.to_string(),
                sequence,
            })
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Deletes outbox events created before `before` (Unix ms), acknowledged or not, but each
    /// platform's newest.
    ///
    /// # Errors
    /// [`StoreError::Closed`] if the writer has stopped.
    pub async fn prune_outbox(&self, before: i64) -> Result<(), StoreError> {
        self.queue
            .send(WriteOp::Prune(before))
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Queues a blocked number (inserted or renewed; does not wait).
    ///
    /// # Errors
    /// [`StoreError::Closed`] if the writer has stopped.
    pub async fn block_number(&self, record: BlockedNumberRecord) -> Result<(), StoreError> {
        self.queue
            .send(WriteOp::Block(record))
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Queues taking a number off the blocklist (does not wait).
    ///
    /// # Errors
    /// [`StoreError::Closed`] if the writer has stopped.
    pub async fn unblock_number(&self, number: &str) -> Result<(), StoreError> {
        self.queue
            .send(WriteOp::Unblock(number.to_string()))
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Flushes everything queued; the writer thread ends when the last handle is dropped.
    ///
    /// # Errors
    /// The flush's error.
    pub async fn shutdown(self) -> Result<(), StoreError> {
        self.flush().await
    }
}

fn migrate(connection: &Connection) -> Result<(), StoreError> {
    connection
        .execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let found: Option<i64> = connection
        .query_row("SELECT MAX(version) FROM schema_version", [], |row| {
            row.get(0)
        })
        .optional()?
        .flatten();
    let found = found.unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found < 1 {
        connection.execute_batch(
            "BEGIN;
             CREATE TABLE calls (
                 id TEXT PRIMARY KEY,
                 a_call_id TEXT NOT NULL,
                 b_call_id TEXT,
                 caller TEXT NOT NULL,
                 called TEXT NOT NULL,
                 a_peer TEXT NOT NULL,
                 b_peer TEXT,
                 started_at INTEGER NOT NULL,
                 answered_at INTEGER,
                 ended_at INTEGER,
                 ended_by TEXT,
                 end_reason TEXT,
                 final_status INTEGER,
                 rtp_a_to_b INTEGER NOT NULL DEFAULT 0,
                 rtp_b_to_a INTEGER NOT NULL DEFAULT 0,
                 rtp_dropped INTEGER NOT NULL DEFAULT 0
             );
             CREATE INDEX calls_started_at ON calls (started_at);
             CREATE INDEX calls_a_call_id ON calls (a_call_id);
             INSERT INTO schema_version (version) VALUES (1);
             COMMIT;",
        )?;
    }
    if found < 2 {
        connection.execute_batch(
            "BEGIN;
             CREATE TABLE linkages (
                 id TEXT PRIMARY KEY,
                 call_id TEXT NOT NULL,
                 from_platform TEXT,
                 from_peer TEXT NOT NULL,
                 to_platform TEXT,
                 to_peer TEXT,
                 target TEXT NOT NULL,
                 trigger TEXT NOT NULL,
                 requested_at INTEGER NOT NULL,
                 ringing_at INTEGER,
                 answered_at INTEGER,
                 ended_at INTEGER,
                 outcome TEXT,
                 sip_status INTEGER
             );
             CREATE INDEX linkages_call_id ON linkages (call_id);
             INSERT INTO schema_version (version) VALUES (2);
             COMMIT;",
        )?;
    }
    if found < 3 {
        connection.execute_batch(
            "BEGIN;
             ALTER TABLE linkages ADD COLUMN kind TEXT NOT NULL DEFAULT 'transfer';
             CREATE TABLE conference_parties (
                 call_id TEXT NOT NULL,
                 party INTEGER NOT NULL,
                 peer TEXT NOT NULL,
                 number TEXT NOT NULL,
                 joined_at INTEGER NOT NULL,
                 left_at INTEGER,
                 PRIMARY KEY (call_id, party, joined_at)
             );
             INSERT INTO schema_version (version) VALUES (3);
             COMMIT;",
        )?;
    }
    if found < 4 {
        connection.execute_batch(
            "BEGIN;
             CREATE TABLE outbox (
                 platform TEXT NOT NULL,
                 sequence INTEGER NOT NULL,
                 event_id TEXT NOT NULL,
                 call_id TEXT NOT NULL,
                 created_at INTEGER NOT NULL,
                 body BLOB NOT NULL,
                 PRIMARY KEY (platform, sequence)
             );
             CREATE INDEX outbox_created_at ON outbox (created_at);
             CREATE TABLE outbox_acks (
                 platform TEXT PRIMARY KEY,
                 sequence INTEGER NOT NULL
             );
             INSERT INTO schema_version (version) VALUES (4);
             COMMIT;",
        )?;
    }
    if found < 5 {
        connection.execute_batch(
            "BEGIN;
             CREATE TABLE blocked_numbers (
                 number TEXT PRIMARY KEY,
                 platform TEXT NOT NULL,
                 reason TEXT NOT NULL,
                 blocked_at INTEGER NOT NULL,
                 expires_at INTEGER
             );
             INSERT INTO schema_version (version) VALUES (5);
             COMMIT;",
        )?;
    }
    Ok(())
}

/// The writer thread: owns the write connection and whatever it could not commit yet.
struct Writer {
    connection: Connection,
    path: PathBuf,
    metrics: Arc<Metrics>,
    /// Operations whose commit failed, oldest first: retried, in order, before anything newer.
    held: VecDeque<WriteOp>,
    held_records: usize,
    /// Since when commits fail (None: the store is healthy).
    failing_since: Option<Instant>,
    last_attempt: Instant,
    last_report: Instant,
}

/// Most operations taken from the queue at once.
const BATCH: usize = 4096;

/// Most operations in one transaction (a long hold is committed in several).
const CHUNK: usize = 8192;

/// While failing, how often the log says so again.
const REPORT: Duration = Duration::from_secs(60);

impl Writer {
    /// Batches whatever is queued into one transaction until every handle is dropped.
    fn run(mut self, mut queue: mpsc::Receiver<WriteOp>) {
        // A clock of its own, for waiting on the queue until the next retry is due.
        let clock = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(clock) => Some(clock),
            Err(error) => {
                tracing::error!(%error, "store writer without a timer: retries only when records come");
                None
            }
        };
        let mut batch = Vec::new();
        loop {
            let mut closed = false;
            let next = match (&clock, self.held.is_empty()) {
                (Some(clock), false) => {
                    let wait = RETRY.saturating_sub(self.last_attempt.elapsed());
                    clock
                        .block_on(async { tokio::time::timeout(wait, queue.recv()).await })
                        .ok()
                }
                _ => Some(queue.blocking_recv()),
            };
            match next {
                Some(Some(op)) => batch.push(op),
                Some(None) => closed = true,
                None => {} // the retry is due
            }
            while !closed && batch.len() < BATCH {
                match queue.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            let flush = batch.iter().any(|op| matches!(op, WriteOp::Flush(_)));
            if self.held.is_empty() || flush || closed || self.last_attempt.elapsed() >= RETRY {
                self.commit(&mut batch);
            } else {
                // Not yet time to try again: hold these behind the others.
                for op in batch.drain(..) {
                    self.hold(op);
                }
            }
            if closed {
                if self.held_records > 0 {
                    tracing::error!(path = %self.path.display(), records = self.held_records,
                        "gateway stopping while the store cannot write: held records lost");
                    self.metrics
                        .add(Counter::StoreRecordsLost, self.held_records as u64);
                }
                return;
            }
        }
    }

    /// Commits the hold and `batch`, in order, in transactions of at most [`CHUNK`]
    /// operations: a long hold lands in pieces, as far as the space that came back allows.
    /// When a commit fails for want of space or permission (it may come back), that chunk and
    /// everything after it are held again; any other error (it would fail again) costs only
    /// the operations that cause it, found by committing that chunk one by one.
    fn commit(&mut self, batch: &mut Vec<WriteOp>) {
        let mut ops: VecDeque<WriteOp> = std::mem::take(&mut self.held);
        ops.extend(batch.drain(..));
        let held_before = std::mem::take(&mut self.held_records);
        let mut failure = None;
        // Replies go once the health is updated: whoever hears of a commit sees it already.
        let mut replies: Vec<(WriteOp, Result<Written, String>)> = Vec::new();
        while !ops.is_empty() {
            let chunk: Vec<WriteOp> = ops.drain(..ops.len().min(CHUNK)).collect();
            match write_batch(&mut self.connection, &chunk) {
                Ok(()) => {
                    replies.extend(chunk.into_iter().map(|op| (op, Ok(Written::Committed))));
                }
                Err(error) if worth_retrying(&error) => {
                    for (position, op) in chunk.into_iter().enumerate() {
                        ops.insert(position, op);
                    }
                    failure = Some(error);
                    break;
                }
                Err(error) => {
                    tracing::error!(path = %self.path.display(), %error,
                        "store refused a batch: committing it one by one");
                    for op in chunk {
                        match write_batch(&mut self.connection, std::slice::from_ref(&op)) {
                            Ok(()) => replies.push((op, Ok(Written::Committed))),
                            Err(error) => {
                                self.metrics.increment(Counter::StoreWriteErrors);
                                self.metrics
                                    .add(Counter::StoreRecordsLost, op.records() as u64);
                                tracing::error!(path = %self.path.display(), %error,
                                    "store refused a record: not written");
                                replies.push((op, Err(error.to_string())));
                            }
                        }
                    }
                }
            }
        }
        self.last_attempt = Instant::now();
        let Some(error) = failure else {
            if let Some(since) = self.failing_since.take() {
                tracing::warn!(path = %self.path.display(), records = held_before,
                    failing_secs = since.elapsed().as_secs(),
                    "store writing again: held records committed");
            }
            self.report();
            for (op, result) in replies {
                reply(op, result);
            }
            return;
        };
        self.metrics.increment(Counter::StoreWriteErrors);
        let now = Instant::now();
        let first = self.failing_since.is_none();
        self.failing_since.get_or_insert(now);
        let mut flushes = Vec::new();
        for op in ops {
            match op {
                WriteOp::Flush(done) => flushes.push(done),
                op => self.hold(op),
            }
        }
        // The health first: whoever hears of the failure sees it already.
        self.report();
        for (op, result) in replies {
            reply(op, result);
        }
        for done in flushes {
            let _ = done.send(Err(format!(
                "{error} ({} records held in memory, not yet written)",
                self.held_records
            )));
        }
        if first {
            self.last_report = now;
            tracing::error!(path = %self.path.display(), %error,
                "store cannot write (disk full or read-only?): calls go on, their records are held in memory and retried every second");
        } else if now.duration_since(self.last_report) >= REPORT {
            self.last_report = now;
            tracing::error!(path = %self.path.display(), %error, records = self.held_records,
                "store still cannot write; records held in memory");
        }
    }

    /// Keeps `op` for the next attempt; a waiting call is told its record is held. Beyond
    /// [`HELD_LIMIT`] the oldest are given up.
    fn hold(&mut self, mut op: WriteOp) {
        let waiting = match &mut op {
            WriteOp::Ended(_, done) => done.take(),
            _ => None,
        };
        self.held_records += op.records();
        self.held.push_back(op);
        let mut lost = 0;
        while self.held_records > HELD_LIMIT {
            let Some(oldest) = self.held.pop_front() else {
                break;
            };
            self.held_records -= oldest.records();
            lost += oldest.records();
        }
        if lost > 0 {
            self.metrics.add(Counter::StoreRecordsLost, lost as u64);
            tracing::error!(path = %self.path.display(), records = lost,
                "store hold full: oldest records given up");
        }
        self.report();
        if let Some(done) = waiting {
            let _ = done.send(Ok(Written::Held));
        }
    }

    fn report(&self) {
        self.metrics.set_gauge(
            Gauge::StoreDegraded,
            i64::from(self.failing_since.is_some()),
        );
        self.metrics
            .set_gauge(Gauge::StoreHeldRecords, self.held_records as i64);
    }
}

fn reply(op: WriteOp, result: Result<Written, String>) {
    match op {
        WriteOp::Ended(_, Some(done)) | WriteOp::Flush(done) | WriteOp::Events(_, Some(done)) => {
            let _ = done.send(result);
        }
        WriteOp::Ended(_, None)
        | WriteOp::Events(_, None)
        | WriteOp::Started(_)
        | WriteOp::Answered { .. }
        | WriteOp::Linkage(_)
        | WriteOp::ConferenceParty(_)
        | WriteOp::Ack { .. }
        | WriteOp::Prune(_)
        | WriteOp::Block(_)
        | WriteOp::Unblock(_) => {}
    }
}

/// Errors that another attempt may not meet: no space, no write permission, I/O, a lock.
fn worth_retrying(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(
            ErrorCode::DiskFull
                | ErrorCode::ReadOnly
                | ErrorCode::SystemIoFailure
                | ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::CannotOpen
                | ErrorCode::OutOfMemory
        )
    )
}

fn write_batch(connection: &mut Connection, batch: &[WriteOp]) -> Result<(), rusqlite::Error> {
    let transaction = connection.transaction()?;
    {
        let mut upsert = transaction.prepare_cached(
            "INSERT INTO calls (id, a_call_id, b_call_id, caller, called, a_peer, b_peer, started_at,
                 answered_at, ended_at, ended_by, end_reason, final_status, rtp_a_to_b, rtp_b_to_a, rtp_dropped)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
             ON CONFLICT(id) DO UPDATE SET b_call_id = excluded.b_call_id, b_peer = excluded.b_peer,
                 answered_at = excluded.answered_at, ended_at = excluded.ended_at,
                 ended_by = excluded.ended_by, end_reason = excluded.end_reason,
                 final_status = excluded.final_status, rtp_a_to_b = excluded.rtp_a_to_b,
                 rtp_b_to_a = excluded.rtp_b_to_a, rtp_dropped = excluded.rtp_dropped",
        )?;
        let mut linkage = transaction.prepare_cached(
            "INSERT OR REPLACE INTO linkages (id, call_id, from_platform, from_peer, to_platform,
                 to_peer, target, trigger, requested_at, ringing_at, answered_at, ended_at, outcome,
                 sip_status, kind)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        )?;
        let mut event = transaction.prepare_cached(
            "INSERT OR REPLACE INTO outbox (platform, sequence, event_id, call_id, created_at, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut ack = transaction.prepare_cached(
            "INSERT INTO outbox_acks (platform, sequence) VALUES (?1, ?2)
             ON CONFLICT(platform) DO UPDATE SET sequence = MAX(sequence, excluded.sequence)",
        )?;
        // Each platform's newest event stays, whatever its age: its sequence goes on from there.
        let mut prune = transaction.prepare_cached(
            "DELETE FROM outbox WHERE created_at < ?1 AND sequence <
                 (SELECT MAX(newest.sequence) FROM outbox newest
                  WHERE newest.platform = outbox.platform)",
        )?;
        let mut party = transaction.prepare_cached(
            "INSERT OR REPLACE INTO conference_parties (call_id, party, peer, number, joined_at,
                 left_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut answered = transaction.prepare_cached(
            "UPDATE calls SET b_call_id = ?2, b_peer = ?3, answered_at = ?4 WHERE id = ?1",
        )?;
        let mut block = transaction.prepare_cached(
            "INSERT OR REPLACE INTO blocked_numbers (number, platform, reason, blocked_at,
                 expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut unblock =
            transaction.prepare_cached("DELETE FROM blocked_numbers WHERE number = ?1")?;
        for op in batch {
            match op {
                WriteOp::Started(r) | WriteOp::Ended(r, _) => {
                    upsert.execute(params![
                        r.id,
                        r.a_call_id,
                        r.b_call_id,
                        r.caller,
                        r.called,
                        r.a_peer,
                        r.b_peer,
                        r.started_at,
                        r.answered_at,
                        r.ended_at,
                        r.ended_by,
                        r.end_reason,
                        r.final_status,
                        r.rtp_a_to_b as i64,
                        r.rtp_b_to_a as i64,
                        r.rtp_dropped as i64,
                    ])?;
                }
                WriteOp::Answered {
                    id,
                    b_call_id,
                    b_peer,
                    answered_at,
                } => {
                    answered.execute(params![id, b_call_id, b_peer, answered_at])?;
                }
                WriteOp::Linkage(l) => {
                    linkage.execute(params![
                        l.id,
                        l.call_id,
                        l.from_platform,
                        l.from_peer,
                        l.to_platform,
                        l.to_peer,
                        l.target,
                        l.trigger,
                        l.requested_at,
                        l.ringing_at,
                        l.answered_at,
                        l.ended_at,
                        l.outcome,
                        l.sip_status,
                        l.kind,
                    ])?;
                }
                WriteOp::Events(events, _) => {
                    for e in events {
                        event.execute(params![
                            e.platform,
                            e.sequence as i64,
                            e.event_id,
                            e.call_id,
                            e.created_at,
                            e.body,
                        ])?;
                    }
                }
                WriteOp::Ack { platform, sequence } => {
                    ack.execute(params![platform, *sequence as i64])?;
                }
                WriteOp::Prune(before) => {
                    prune.execute(params![before])?;
                }
                WriteOp::ConferenceParty(p) => {
                    party.execute(params![
                        p.call_id,
                        p.party,
                        p.peer,
                        p.number,
                        p.joined_at,
                        p.left_at,
                    ])?;
                }
                WriteOp::Block(b) => {
                    block.execute(params![
                        b.number,
                        b.platform,
                        b.reason,
                        b.blocked_at,
                        b.expires_at,
                    ])?;
                }
                WriteOp::Unblock(number) => {
                    unblock.execute(params![number])?;
                }
                WriteOp::Flush(_) => {}
            }
        }
    }
    transaction.commit()
}

/// A read-only connection for readers beside the running gateway (WAL lets them read while it
/// writes).
fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    connection.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(connection)
}

/// The numbers blocked through the API that have not expired at `now` (Unix ms).
///
/// # Errors
/// [`StoreError::Open`] if the file does not exist or is no database of ours.
pub fn list_blocked(path: &Path, now: i64) -> Result<Vec<BlockedNumberRecord>, StoreError> {
    let connection = open_read_only(path)?;
    let mut statement = connection.prepare(
        "SELECT number, platform, reason, blocked_at, expires_at FROM blocked_numbers
         WHERE expires_at IS NULL OR expires_at > ?1 ORDER BY number",
    )?;
    let rows = statement.query_map(params![now], |row| {
        Ok(BlockedNumberRecord {
            number: row.get(0)?,
            platform: row.get(1)?,
            reason: row.get(2)?,
            blocked_at: row.get(3)?,
            expires_at: row.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// The newest `limit` calls, newest first, through a read-only connection.
///
/// # Errors
/// [`StoreError::Open`] if the file does not exist or is no database of ours.
pub fn list_calls(path: &Path, limit: usize) -> Result<Vec<CallRecord>, StoreError> {
    let connection = open_read_only(path)?;
    let mut statement = connection.prepare(
        "SELECT id, a_call_id, b_call_id, caller, called, a_peer, b_peer, started_at, answered_at,
                ended_at, ended_by, end_reason, final_status, rtp_a_to_b, rtp_b_to_a, rtp_dropped
         FROM calls ORDER BY started_at DESC, rowid DESC LIMIT ?1",
    )?;
    let rows = statement.query_map([limit as i64], |row| {
        Ok(CallRecord {
            id: row.get(0)?,
            a_call_id: row.get(1)?,
            b_call_id: row.get(2)?,
            caller: row.get(3)?,
            called: row.get(4)?,
            a_peer: row.get(5)?,
            b_peer: row.get(6)?,
            started_at: row.get(7)?,
            answered_at: row.get(8)?,
            ended_at: row.get(9)?,
            ended_by: row.get(10)?,
            end_reason: row.get(11)?,
            final_status: row.get(12)?,
            rtp_a_to_b: row.get::<_, i64>(13)?.max(0) as u64,
            rtp_b_to_a: row.get::<_, i64>(14)?.max(0) as u64,
            rtp_dropped: row.get::<_, i64>(15)?.max(0) as u64,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// The transfer attempts of one call (its gateway id), oldest first.
///
/// # Errors
/// [`StoreError::Open`] if the file does not exist or is no database of ours.
pub fn list_linkages(path: &Path, call_id: &str) -> Result<Vec<LinkageRecord>, StoreError> {
    let connection = open_read_only(path)?;
    let mut statement = connection.prepare(
        "SELECT id, call_id, from_platform, from_peer, to_platform, to_peer, target, trigger,
                requested_at, ringing_at, answered_at, ended_at, outcome, sip_status, kind
         FROM linkages WHERE call_id = ?1 ORDER BY requested_at, rowid",
    )?;
    let rows = statement.query_map([call_id], |row| {
        Ok(LinkageRecord {
            id: row.get(0)?,
            call_id: row.get(1)?,
            from_platform: row.get(2)?,
            from_peer: row.get(3)?,
            to_platform: row.get(4)?,
            to_peer: row.get(5)?,
            target: row.get(6)?,
            trigger: row.get(7)?,
            requested_at: row.get(8)?,
            ringing_at: row.get(9)?,
            answered_at: row.get(10)?,
            ended_at: row.get(11)?,
            outcome: row.get(12)?,
            sip_status: row.get(13)?,
            kind: row.get(14)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Closes what a previous run of the gateway left open (it was killed, or the machine went
/// down): calls not ended get `ended_by = 'gateway'`, `end_reason = 'gateway restart'` and
/// `ended_at = now` (200 if they were answered, else 503); transfers still under way fail
/// (503); conference parties still in leave. Returns how many calls were closed. Run once at
/// start, before any call of this run exists.
///
/// # Errors
/// [`StoreError`] naming the path.
pub fn close_interrupted(path: &Path, now: i64) -> Result<usize, StoreError> {
    let mut connection = Connection::open(path).map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    connection.busy_timeout(std::time::Duration::from_secs(5))?;
    let transaction = connection.transaction()?;
    let calls = transaction.execute(
        "UPDATE calls SET ended_at = ?1, ended_by = 'gateway', end_reason = 'gateway restart',
             final_status = COALESCE(final_status,
                 CASE WHEN answered_at IS NOT NULL THEN 200 ELSE 503 END)
         WHERE ended_at IS NULL",
        [now],
    )?;
    transaction.execute(
        "UPDATE linkages SET ended_at = ?1, outcome = 'failed', sip_status = 503
         WHERE ended_at IS NULL",
        [now],
    )?;
    transaction.execute(
        "UPDATE conference_parties SET left_at = ?1 WHERE left_at IS NULL",
        [now],
    )?;
    transaction.commit()?;
    Ok(calls)
}

/// Each platform's newest outbox sequence and the last one its client acknowledged.
///
/// # Errors
/// [`StoreError::Open`] if the file does not exist or is no database of ours.
pub fn outbox_positions(
    path: &Path,
) -> Result<std::collections::HashMap<String, (u64, u64)>, StoreError> {
    let connection = open_read_only(path)?;
    let mut positions = std::collections::HashMap::new();
    let mut statement =
        connection.prepare("SELECT platform, MAX(sequence) FROM outbox GROUP BY platform")?;
    let rows = statement.query_map([], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
    })?;
    for row in rows {
        let (platform, latest) = row?;
        positions.insert(platform, (latest as u64, 0));
    }
    let mut statement = connection.prepare("SELECT platform, sequence FROM outbox_acks")?;
    let rows = statement.query_map([], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
    })?;
    for row in rows {
        let (platform, acked) = row?;
        let entry = positions.entry(platform).or_insert((acked as u64, 0));
        entry.0 = entry.0.max(acked as u64);
        entry.1 = acked as u64;
    }
    Ok(positions)
}

/// A read-only connection that reads platforms' outboxes (one per connected client).
pub struct OutboxReader(Connection);

impl OutboxReader {
    /// # Errors
    /// [`StoreError::Open`] if the file does not exist or is no database of ours.
    pub fn open(path: &Path) -> Result<OutboxReader, StoreError> {
        open_read_only(path).map(OutboxReader)
    }

    /// Up to `limit` events of `platform`'s outbox after `after`, in order.
    ///
    /// # Errors
    /// [`StoreError`] if the query fails.
    pub fn read(
        &self,
        platform: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<OutboxRecord>, StoreError> {
        read_outbox(&self.0, platform, after, limit)
    }
}

fn read_outbox(
    connection: &Connection,
    platform: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<OutboxRecord>, StoreError> {
    let mut statement = connection.prepare_cached(
        "SELECT platform, sequence, event_id, call_id, created_at, body FROM outbox
         WHERE platform = ?1 AND sequence > ?2 ORDER BY sequence LIMIT ?3",
    )?;
    let rows = statement.query_map(params![platform, after as i64, limit as i64], |row| {
        Ok(OutboxRecord {
            platform: row.get(0)?,
            sequence: row.get::<_, i64>(1)? as u64,
            event_id: row.get(2)?,
            call_id: row.get(3)?,
            created_at: row.get(4)?,
            body: row.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// One linkage by its id.
///
/// # Errors
/// [`StoreError::Open`] if the file does not exist or is no database of ours.
pub fn find_linkage(path: &Path, linkage_id: &str) -> Result<Option<LinkageRecord>, StoreError> {
    let connection = open_read_only(path)?;
    let call_id: Option<String> = connection
        .query_row(
            "SELECT call_id FROM linkages WHERE id = ?1",
            [linkage_id],
            |row| row.get(0),
        )
        .optional()?;
    let Some(call_id) = call_id else {
        return Ok(None);
    };
    Ok(list_linkages(path, &call_id)?
        .into_iter()
        .find(|l| l.id == linkage_id))
}

/// The conference parties of one call (its gateway id): each stint of each party (a call may
/// hold more than one conference), in order of joining.
///
/// # Errors
/// [`StoreError::Open`] if the file does not exist or is no database of ours.
pub fn list_conference_parties(
    path: &Path,
    call_id: &str,
) -> Result<Vec<ConferencePartyRecord>, StoreError> {
    let connection = open_read_only(path)?;
    let mut statement = connection.prepare(
        "SELECT call_id, party, peer, number, joined_at, left_at
         FROM conference_parties WHERE call_id = ?1 ORDER BY joined_at, party",
    )?;
    let rows = statement.query_map([call_id], |row| {
        Ok(ConferencePartyRecord {
            call_id: row.get(0)?,
            party: row.get(1)?,
            peer: row.get(2)?,
            number: row.get(3)?,
            joined_at: row.get(4)?,
            left_at: row.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// A fixed-width table, one line per call, times in UTC.
pub fn format_calls_table(records: &[CallRecord]) -> String {
    let mut out = format!(
        "{:<23} {:<14} {:<8} {:<9} {:<9} {:>6} {:>7} {:<8} {:<18} {:>8} {:>8}\n",
        "started (UTC)",
        "caller",
        "called",
        "from",
        "to",
        "status",
        "secs",
        "ended_by",
        "reason",
        "rtp a>b",
        "rtp b>a"
    );
    for r in records {
        let seconds = match (r.answered_at, r.ended_at) {
            (Some(a), Some(e)) => format!("{:.1}", (e - a) as f64 / 1000.0),
            _ => "-".into(),
        };
        out.push_str(&format!(
            "{:<23} {:<14} {:<8} {:<9} {:<9} {:>6} {:>7} {:<8} {:<18} {:>8} {:>8}\n",
            format_time(r.started_at),
            r.caller,
            r.called,
            r.a_peer,
            r.b_peer.as_deref().unwrap_or("-"),
            r.final_status.map_or("-".to_string(), |s| s.to_string()),
            seconds,
            r.ended_by.as_deref().unwrap_or("(active)"),
            r.end_reason.as_deref().unwrap_or("-"),
            r.rtp_a_to_b,
            r.rtp_b_to_a,
        ));
    }
    out
}

/// Milliseconds since the Unix epoch.
pub fn unix_millis(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `YYYY-MM-DD HH:MM:SS.mmm` in UTC (civil-from-days, H. Hinnant's algorithm).
pub fn format_time(unix_ms: i64) -> String {
    let days = unix_ms.div_euclid(86_400_000);
    let ms_of_day = unix_ms.rem_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> CallRecord {
        CallRecord {
            id: id.into(),
            a_call_id: format!("a-{id}"),
            b_call_id: None,
            caller: "13800138000".into(),
            called: "12345".into(),
            a_peer: "carrier".into(),
            b_peer: None,
            started_at: 1_700_000_000_000,
            answered_at: None,
            ended_at: None,
            ended_by: None,
            end_reason: None,
            final_status: None,
            rtp_a_to_b: 0,
            rtp_b_to_a: 0,
            rtp_dropped: 0,
        }
    }

    fn directory() -> tempfile::TempDir {
        match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        }
    }

    #[tokio::test]
    async fn the_outbox_keeps_order_acknowledgements_and_its_retention() {
        let dir = directory();
        let path = dir.path().join("gateway.db");
        let store = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let event = |platform: &str, sequence: u64, created_at: i64| OutboxRecord {
            platform: platform.into(),
            sequence,
            event_id: format!("{platform}-{sequence}"),
            call_id: "c1".into(),
            created_at,
            body: vec![sequence as u8],
        };
        let events = vec![
            event("12345", 1, 100),
            event("12345", 2, 200),
            event("110", 1, 150),
            event("12345", 3, 300),
        ];
        store
            .append_events(events)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .committed()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        store
            .acknowledge("12345", 2)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // An older acknowledgement never moves it back.
        store
            .acknowledge("12345", 1)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        store.flush().await.unwrap_or_else(|e| panic!("{e}"));
        let positions = outbox_positions(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(positions.get("12345"), Some(&(3, 2)));
        assert_eq!(positions.get("110"), Some(&(1, 0)));
        let reader = OutboxReader::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let after_one: Vec<u64> = reader
            .read("12345", 1, 10)
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(|r| r.sequence)
            .collect();
        assert_eq!(after_one, vec![2, 3]);
        // Retention: events created before 250 go, but each platform's newest (its sequence
        // goes on from there).
        store
            .prune_outbox(250)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        store.flush().await.unwrap_or_else(|e| panic!("{e}"));
        let left: Vec<String> = reader
            .read("12345", 0, 10)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|r| r.event_id)
            .collect();
        assert_eq!(left, vec!["12345-3".to_string()]);
        let positions = outbox_positions(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(positions.get("110"), Some(&(1, 0)));
        assert_eq!(positions.get("12345"), Some(&(3, 2)));
    }

    #[tokio::test]
    async fn lifecycle_is_visible_to_readers() {
        let dir = directory();
        let path = dir.path().join("sub/gateway.db");
        let store = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
        store
            .call_started(record("1"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        store
            .call_answered("1", "b-1", "hotline", 1_700_000_001_000)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        store.flush().await.unwrap_or_else(|e| panic!("{e}"));
        let listed = list_calls(&path, 10).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(listed[0].b_peer.as_deref(), Some("hotline"));
        assert_eq!(listed[0].ended_at, None);
        let mut ended = listed[0].clone();
        ended.ended_at = Some(1_700_000_009_500);
        ended.ended_by = Some("caller".into());
        ended.final_status = Some(200);
        ended.rtp_a_to_b = 400;
        store
            .call_ended(ended.clone())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            list_calls(&path, 10).unwrap_or_else(|e| panic!("{e}")),
            vec![ended]
        );
        let table = format_calls_table(&list_calls(&path, 10).unwrap_or_default());
        assert!(table.contains("2023-11-14 22:13:20.000"), "{table}");
        assert!(table.contains("8.5") && table.contains("400"), "{table}");
        store.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
        // Reopening migrates nothing and keeps the data.
        let again = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(list_calls(&path, 10).map(|l| l.len()).ok(), Some(1));
        drop(again);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn thousands_of_concurrent_ends_are_all_committed() {
        let dir = directory();
        let path = dir.path().join("gateway.db");
        let store = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let mut tasks = Vec::new();
        for i in 0..5000 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut r = record(&i.to_string());
                r.ended_at = Some(1);
                store.call_ended(r).await
            }));
        }
        for task in tasks {
            assert!(matches!(task.await, Ok(Ok(Written::Committed))));
        }
        assert_eq!(list_calls(&path, 10_000).map(|l| l.len()).ok(), Some(5000));
    }

    /// Fills the database at `path` with a ballast table (as another program fills a shared
    /// disk) and returns its size in bytes.
    fn fill_with_ballast(path: &Path, bytes: u64) -> u64 {
        let other = Connection::open(path).unwrap_or_else(|e| panic!("{e}"));
        other
            .execute_batch("CREATE TABLE ballast (b BLOB)")
            .unwrap_or_else(|e| panic!("{e}"));
        let size = || -> u64 {
            other
                .query_row(
                    "SELECT page_count * page_size FROM pragma_page_count, pragma_page_size",
                    [],
                    |row| row.get::<_, i64>(0),
                )
                .map_or(0, |s| s as u64)
        };
        while size() < bytes {
            other
                .execute("INSERT INTO ballast VALUES (zeroblob(8192))", [])
                .unwrap_or_else(|e| panic!("{e}"));
        }
        size()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_disk_holds_records_until_there_is_space_again() {
        let dir = directory();
        let path = dir.path().join("gateway.db");
        drop(Store::open(&path).unwrap_or_else(|e| panic!("{e}")));
        let full = fill_with_ballast(&path, 256 * 1024);
        let metrics = Arc::new(Metrics::new());
        let store = Store::open_with(
            &path,
            StoreOptions {
                max_size_bytes: Some(full),
                metrics: Some(Arc::clone(&metrics)),
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        for i in 0..1000 {
            store
                .call_started(record(&i.to_string()))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let mut ended = record("999");
        ended.ended_at = Some(2);
        let written = store
            .call_ended(ended)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(written, Written::Held);
        // Nothing can be flushed now, and the alert is up.
        assert!(store.flush().await.is_err());
        let render = metrics.render();
        assert!(render.contains("hotline_store_degraded 1"), "{render}");
        assert!(!render.contains("hotline_store_held_records 0"), "{render}");

        // Space comes back (the ballast goes): the next attempt writes everything, in order.
        Connection::open(&path)
            .and_then(|c| c.execute_batch("DROP TABLE ballast"))
            .unwrap_or_else(|e| panic!("{e}"));
        store.flush().await.unwrap_or_else(|e| panic!("{e}"));
        let calls = list_calls(&path, 10_000).unwrap_or_default();
        assert_eq!(calls.len(), 1000);
        assert!(calls.iter().any(|c| c.id == "999" && c.ended_at == Some(2)));
        let render = metrics.render();
        assert!(render.contains("hotline_store_degraded 0"), "{render}");
        assert!(render.contains("hotline_store_held_records 0"), "{render}");
        assert!(
            render.contains("hotline_store_records_lost_total 0"),
            "{render}"
        );
    }

    #[tokio::test]
    async fn acknowledged_record_survives_without_shutdown() {
        let dir = directory();
        let path = dir.path().join("gateway.db");
        let store = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let mut r = record("crash");
        r.ended_at = Some(5);
        store.call_ended(r).await.unwrap_or_else(|e| panic!("{e}"));
        // No shutdown, no flush: as if the process were killed right here.
        std::mem::forget(store);
        let listed = list_calls(&path, 10).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].ended_at, Some(5));
    }

    #[tokio::test]
    async fn calls_left_open_by_a_crash_are_closed_at_the_next_start() {
        let dir = directory();
        let path = dir.path().join("gateway.db");
        let store = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let mut answered = record("answered");
        answered.answered_at = Some(2);
        store
            .call_started(answered)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        store
            .call_started(record("ringing"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut done = record("done");
        done.ended_at = Some(3);
        done.ended_by = Some("caller".into());
        store
            .call_ended(done)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        store.flush().await.unwrap_or_else(|e| panic!("{e}"));
        // The process dies here; the next one starts.
        std::mem::forget(store);
        let _next = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(close_interrupted(&path, 100).ok(), Some(2));
        let calls = list_calls(&path, 10).unwrap_or_else(|e| panic!("{e}"));
        let find = |id: &str| {
            calls
                .iter()
                .find(|c| c.id == id)
                .cloned()
                .unwrap_or_else(|| panic!("no record {id}"))
        };
        let answered = find("answered");
        assert_eq!(
            (
                answered.ended_at,
                answered.ended_by.as_deref(),
                answered.end_reason.as_deref(),
                answered.final_status
            ),
            (
                Some(100),
                Some("gateway"),
                Some("gateway restart"),
                Some(200)
            )
        );
        assert_eq!(find("ringing").final_status, Some(503));
        assert_eq!(
            find("done").ended_by.as_deref(),
            Some("caller"),
            "untouched"
        );
        assert_eq!(close_interrupted(&path, 200).ok(), Some(0), "once");
    }

    #[test]
    fn a_version_2_store_is_upgraded_and_keeps_its_linkages() {
        let dir = directory();
        let path = dir.path().join("gateway.db");
        let connection = Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
        // The tables as version 2 left them, with one transfer on record.
        let v2 = "CREATE TABLE schema_version (version INTEGER NOT NULL);
            INSERT INTO schema_version VALUES (1); INSERT INTO schema_version VALUES (2);
            CREATE TABLE calls (id TEXT PRIMARY KEY, a_call_id TEXT NOT NULL, b_call_id TEXT,
              caller TEXT NOT NULL, called TEXT NOT NULL, a_peer TEXT NOT NULL, b_peer TEXT,
              started_at INTEGER NOT NULL, answered_at INTEGER, ended_at INTEGER, ended_by TEXT,
              end_reason TEXT, final_status INTEGER, rtp_a_to_b INTEGER NOT NULL DEFAULT 0,
              rtp_b_to_a INTEGER NOT NULL DEFAULT 0, rtp_dropped INTEGER NOT NULL DEFAULT 0);
            CREATE TABLE linkages (id TEXT PRIMARY KEY, call_id TEXT NOT NULL, from_platform TEXT,
              from_peer TEXT NOT NULL, to_platform TEXT, to_peer TEXT, target TEXT NOT NULL,
              trigger TEXT NOT NULL, requested_at INTEGER NOT NULL, ringing_at INTEGER,
              answered_at INTEGER, ended_at INTEGER, outcome TEXT, sip_status INTEGER);
            INSERT INTO linkages (id, call_id, from_peer, target, trigger, requested_at)
              VALUES ('l1', 'c1', 'hotline', '110', 'refer', 1);";
        connection
            .execute_batch(v2)
            .unwrap_or_else(|e| panic!("{e}"));
        drop(connection);
        let store = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
        drop(store);
        let linkages = list_linkages(&path, "c1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(linkages.len(), 1);
        assert_eq!(linkages[0].kind, "transfer");
        assert_eq!(
            list_conference_parties(&path, "c1").map(|p| p.len()).ok(),
            Some(0)
        );
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = directory();
        let path = dir.path().join("gateway.db");
        let connection = Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let _ = connection.execute_batch("CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (9);");
        drop(connection);
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::SchemaTooNew {
                found: 9,
                supported: SCHEMA_VERSION
            })
        ));
    }

    #[test]
    fn civil_dates() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00.000");
        assert_eq!(format_time(951_782_400_000), "2000-02-29 00:00:00.000");
        assert_eq!(format_time(1_795_305_600_123), "2026-11-22 00:00:00.123");
    }

    #[test]
    fn listing_a_missing_file_names_it() {
        let error = list_calls(Path::new("/nonexistent/dir/x.db"), 1);
        assert!(matches!(error, Err(StoreError::Open { .. })));
    }
}
