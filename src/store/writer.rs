//! The writer thread: owns the write connection, commits whatever is queued in one
//! transaction per batch, numbers the outbox's events as it commits them, and holds what a
//! full or read-only disk refuses until it can write again.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::outbox::{NewEvent, Outbox, OutboxRecord};
use super::{
    BlockedNumberRecord, CallRecord, ConferencePartyRecord, LinkageRecord, Written, HELD_LIMIT,
    RETRY,
};
use crate::metrics::{Counter, Gauge, Metrics};

pub(super) type Reply = oneshot::Sender<Result<Written, String>>;

/// A database the writer commits to: SQLite ([`super::sqlite`]) or PostgreSQL
/// ([`super::postgres`]).
pub(super) trait Engine: Send {
    /// Writes `batch` in one transaction, numbering its events after each platform's newest
    /// (`sequences`, which it advances to what was committed); returns the sequences its
    /// events got, in order.
    fn write_batch(
        &mut self,
        batch: &[WriteOp],
        sequences: &mut HashMap<String, u64>,
    ) -> Result<Vec<u64>, EngineError>;
}

/// A failed write, as the writer needs to know it.
#[derive(Debug)]
pub(super) struct EngineError {
    pub(super) message: String,
    /// Another attempt may succeed (no space, no permission, a lock, a lost connection): the
    /// operations are held and retried; otherwise only the ones that cause it are given up.
    pub(super) retry: bool,
    /// What an operator should look at first.
    pub(super) cause: &'static str,
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// One change to the records.
#[derive(Debug, Clone)]
pub(super) enum Change {
    Started(CallRecord),
    Answered {
        id: String,
        b_call_id: String,
        b_peer: String,
        b_interface: String,
        answered_at: i64,
    },
    Ended(CallRecord),
    Linkage(LinkageRecord),
    /// A platform's reply on a linkage.
    LinkageReply {
        linkage_id: String,
        incident_number: String,
        disposition: String,
        replied_at: i64,
    },
    ConferenceParty(ConferencePartyRecord),
    Block(BlockedNumberRecord),
    Unblock(String),
}

pub(super) enum WriteOp {
    /// Record changes and the events that report them, committed in one transaction; the
    /// reply goes once they are committed, or at once if they have to be held.
    Write {
        changes: Vec<Change>,
        events: Vec<NewEvent>,
        reply: Option<Reply>,
    },
    Ack {
        platform: String,
        sequence: u64,
    },
    /// Deletes outbox events older than this (Unix ms), but those of calls still open.
    Prune(i64),
    /// The reply goes once everything before it is committed.
    Flush(Reply),
    /// Answered once the batch it came in is dealt with: proof that the writer is not stuck
    /// (`/healthz`).
    Ping(oneshot::Sender<()>),
}

impl WriteOp {
    /// How many records it carries (for the hold's limit).
    fn records(&self) -> usize {
        match self {
            WriteOp::Write {
                changes, events, ..
            } => changes.len() + events.len(),
            WriteOp::Flush(_) | WriteOp::Ping(_) => 0,
            WriteOp::Ack { .. } | WriteOp::Prune(_) => 1,
        }
    }
}

/// The writer thread: owns the write connection and whatever it could not commit yet.
pub(super) struct Writer {
    pub(super) engine: Box<dyn Engine>,
    /// Where the store is, for the log (a file, or a database with its password left out).
    pub(super) path: PathBuf,
    pub(super) metrics: Arc<Metrics>,
    pub(super) outbox: Arc<Outbox>,
    /// Each platform's newest committed sequence.
    pub(super) sequences: HashMap<String, u64>,
    /// Operations whose commit failed, oldest first: retried, in order, before anything newer.
    pub(super) held: VecDeque<WriteOp>,
    pub(super) held_records: usize,
    /// Since when commits fail (None: the store is healthy).
    pub(super) failing_since: Option<Instant>,
    pub(super) last_attempt: Instant,
    pub(super) last_report: Instant,
}

/// Most operations taken from the queue at once.
const BATCH: usize = 4096;

/// Most operations in one transaction (a long hold is committed in several).
const CHUNK: usize = 8192;

/// While failing, how often the log says so again.
const REPORT: Duration = Duration::from_secs(60);

impl Writer {
    /// Batches whatever is queued into one transaction until every handle is dropped.
    pub(super) fn run(mut self, mut queue: mpsc::Receiver<WriteOp>) {
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
            let (pings, rest): (Vec<WriteOp>, Vec<WriteOp>) = batch
                .drain(..)
                .partition(|op| matches!(op, WriteOp::Ping(_)));
            batch = rest;
            let flush = batch.iter().any(|op| matches!(op, WriteOp::Flush(_)));
            if self.held.is_empty() || flush || closed || self.last_attempt.elapsed() >= RETRY {
                self.commit(&mut batch);
            } else {
                // Not yet time to try again: hold these behind the others.
                for op in batch.drain(..) {
                    self.hold(op);
                }
            }
            for ping in pings {
                if crate::faults::injected(crate::faults::Fault::StorePanic) {
                    panic!("injected fault: the store writer panics");
                }
                if let WriteOp::Ping(reply) = ping {
                    let _ = reply.send(());
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

    /// Writes `ops` in one transaction, numbering their events after the committed sequences;
    /// on success the new sequences are the committed ones, the events are kept among the
    /// newest, and their platforms' streams are told.
    fn write(&mut self, ops: &[WriteOp]) -> Result<(), EngineError> {
        let mut sequences = self.sequences.clone();
        let numbers = self.engine.write_batch(ops, &mut sequences)?;
        self.sequences = sequences;
        let events = ops.iter().flat_map(|op| match op {
            WriteOp::Write { events, .. } => events.as_slice(),
            _ => &[],
        });
        let mut stored = 0;
        let mut announce: Vec<&str> = Vec::new();
        for (event, sequence) in events.zip(numbers) {
            stored += 1;
            if !announce.contains(&event.platform.as_str()) {
                announce.push(&event.platform);
            }
            self.outbox.keep(OutboxRecord {
                platform: event.platform.clone(),
                sequence,
                event_id: event.event_id.clone(),
                call_id: event.call_id.clone(),
                created_at: event.created_at,
                body: Arc::clone(&event.body),
            });
        }
        self.metrics.add(Counter::WorkOrderEventsStored, stored);
        // Told at once: a stream may send what it finds, and its client acknowledge it.
        for platform in announce {
            let latest = self.sequences.get(platform).copied().unwrap_or(0);
            self.outbox.announce(platform, latest);
        }
        Ok(())
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
        // Replies go once the health is updated (the streams are told as each commit lands):
        // whoever hears of a commit sees it already.
        let mut replies: Vec<(WriteOp, Result<Written, String>)> = Vec::new();
        while !ops.is_empty() {
            let chunk: Vec<WriteOp> = ops.drain(..ops.len().min(CHUNK)).collect();
            match self.write(&chunk) {
                Ok(()) => {
                    replies.extend(chunk.into_iter().map(|op| (op, Ok(Written::Committed))));
                }
                Err(error) if error.retry => {
                    for (position, op) in chunk.into_iter().enumerate() {
                        ops.insert(position, op);
                    }
                    failure = Some(error);
                    break;
                }
                Err(error) => {
                    tracing::error!(path = %self.path.display(), %error,
                        "store refused a batch: committing it one by one");
                    let mut rest: VecDeque<WriteOp> = chunk.into();
                    while let Some(op) = rest.pop_front() {
                        match self.write(std::slice::from_ref(&op)) {
                            Ok(()) => replies.push((op, Ok(Written::Committed))),
                            // The disk filled meanwhile: this one and the rest are held, in
                            // order, like any chunk that may land later.
                            Err(error) if error.retry => {
                                rest.push_front(op);
                                while let Some(op) = rest.pop_back() {
                                    ops.push_front(op);
                                }
                                failure = Some(error);
                            }
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
                    if failure.is_some() {
                        break;
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
            tracing::error!(path = %self.path.display(), %error, cause = error.cause,
                "store cannot write: calls go on, their records are held in memory and retried every second");
        } else if now.duration_since(self.last_report) >= REPORT {
            self.last_report = now;
            tracing::error!(path = %self.path.display(), %error, records = self.held_records,
                "store still cannot write; records held in memory");
        }
    }

    /// Keeps `op` for the next attempt; a waiting writer is told it is held. Beyond
    /// [`HELD_LIMIT`] the oldest are given up.
    fn hold(&mut self, mut op: WriteOp) {
        let waiting = match &mut op {
            WriteOp::Write { reply, .. } => reply.take(),
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
        WriteOp::Write {
            reply: Some(done), ..
        }
        | WriteOp::Flush(done) => {
            let _ = done.send(result);
        }
        WriteOp::Ping(done) => {
            let _ = done.send(());
        }
        WriteOp::Write { reply: None, .. } | WriteOp::Ack { .. } | WriteOp::Prune(_) => {}
    }
}
