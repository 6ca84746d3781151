//! The embedded store: one SQLite file (WAL mode) holding a record per call, one per linkage
//! (a transfer or conference attempt between platforms), one per conference party's stint,
//! the blocked numbers, and the work-order outbox.
//!
//! A dedicated writer thread ([`writer`]) owns the write connection and drains a bounded
//! queue, committing everything queued in one transaction per batch (how it keeps up with
//! thousands of calls per second). A [`Changes`] of a call's step (its record changes and the
//! outbox events that report them) is committed in one transaction; [`Store::write`] waits
//! for the COMMIT only when the changes hold events, a call's end or a blocklist change, so
//! such a step is on disk before anyone can see it; the rest is only queued. With WAL and `synchronous=NORMAL` a
//! committed transaction survives a crash of the process (`kill -9`); only a power loss can
//! take the last commits, which `synchronous=FULL` would also cover at the price of an fsync
//! per batch.
//!
//! Readers ([`reads`]: `hotline-gateway calls`, the work-order API, tests) open their own
//! read-only connection: WAL lets them read while the gateway writes.
//!
//! When the disk is full or read-only the calls go on: the writer holds what it could not
//! commit in memory (up to [`HELD_LIMIT`] records), tries again every [`RETRY`], raises
//! `hotline_store_degraded` and says so once in the log; the held records land, in order, as
//! soon as a commit succeeds. Work-order events are held the same way and numbered and sent
//! once committed, so the platforms get them late but complete (unless the hold overflows or
//! the gateway stops or dies meanwhile: then they are lost, and counted).
//!
//! | file | holds |
//! |---|---|
//! | `mod.rs` | the [`Store`] handle |
//! | `records.rs` | the records and a step's [`Changes`] |
//! | `location.rs` | where the store is, and reads that work on either engine |
//! | `schema.rs` | the tables and their migrations |
//! | `writer.rs` | the writer thread: batches, the hold, retries |
//! | `outbox.rs` | the outbox: numbering, positions, closing a killed run's calls |
//! | `reads.rs` | read-only queries beside the running gateway |
//! | `reader.rs` | the outbox's readers (one per connected client), on either engine |
//! | `sqlite.rs` | the embedded engine's writes |
//! | `postgres/` | the shared engine (`[store] url`): schema, writes, reads, closing a node |
//! | `cluster.rs` | a node's lease, the other nodes' commits, taking over a lost node |
//!
//! With `[store] url` the records live in a PostgreSQL database that several nodes share
//! (each with its own `[cluster] node`): the same records, one ordered stream of events per
//! platform across the nodes, and the open records of a node that dies closed by a survivor
//! (see `postgres/` and `cluster.rs`).

mod cluster;
mod database_tls;
mod forwarding;
mod location;
mod lock;
mod outbox;
mod postgres;
mod reader;
mod reads;
mod records;
mod schema;
mod sqlite;
mod writer;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rusqlite::{params, Connection};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;

pub use cluster::{BlocklistChange, ClusterOptions};
pub use database_tls::DatabaseCa;
pub use forwarding::{ForwardedRequest, Owner, RequestKind, ANSWER_TIMEOUT};
pub use location::StoreLocation;
pub use lock::{lock_path, StoreLock};
pub use outbox::{Acknowledged, Interrupted, NewEvent, Outbox, OutboxRecord, Recovery};
pub use postgres::DatabaseUrl;
pub use reader::OutboxReader;
pub use reads::{find_linkage, list_blocked, list_calls, list_conference_parties, list_linkages};
pub use records::{
    BlockedNumberRecord, CallDetail, CallRecord, CallStart, Changes, ConferencePartyRecord,
    LinkageRecord,
};
use writer::{WriteOp, Writer};

/// `store.synchronous`: SQLite's `PRAGMA synchronous` in WAL mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    Normal,
    #[default]
    Full,
}

/// What the end of a run's open records is called when the run is this node's previous one.
pub const GATEWAY_RESTART: &str = "gateway restart";

/// What the end of a lost node's open records is called (its lease expired).
pub const NODE_LOST: &str = "node lost";

/// Queue length between call tasks and the writer.
const QUEUE: usize = 16_384;

/// Records held in memory while the store cannot write; beyond, the oldest are given up (at
/// some hundred bytes each, about 100 MB; several minutes of calls at full load).
pub const HELD_LIMIT: usize = 500_000;

/// How often a failing store is tried again.
pub const RETRY: Duration = Duration::from_secs(1);

/// How the store is opened.
#[derive(Clone, Default)]
pub struct StoreOptions {
    /// Largest the database file may grow (SQLite `max_page_count`); at the cap writes fail
    /// as on a full disk (default: no cap but the disk's).
    pub max_size_bytes: Option<u64>,
    /// Where the writer reports its health (default: a private set nobody reads).
    pub metrics: Option<Arc<Metrics>>,
    /// The ending events of calls a killed run left open (default: none; their records are
    /// closed all the same).
    pub recovery: Option<Arc<Recovery>>,
    /// Whether each commit is synced to disk (default: yes, `FULL`).
    pub synchronous: Synchronous,
    /// This node's name and lease, for a store shared by a cluster (default: a node named
    /// after nothing, with a 10 s lease).
    pub cluster: Option<ClusterOptions>,
}

/// What became of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Committed,
    /// The store cannot write now: the changes are held in memory and retried.
    Held,
    /// Handed to the writer, not waited for (nothing in it had to be on disk first).
    Queued,
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
    #[error("database error: {}", postgres::describe(.0))]
    Postgres(#[from] ::postgres::Error),
    #[error("node {node} is held by another gateway whose lease is still renewed: one gateway per node name")]
    NodeTaken { node: String },
    #[error("node {node} did not answer within {} seconds", ANSWER_TIMEOUT.as_secs())]
    NoAnswer { node: String },
    #[error("schema version {found} is newer than this gateway knows ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("cannot write to {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("the store's writer has stopped")]
    Closed,
    #[error("{path} is held by another gateway (pid {holder}): one gateway per store")]
    Locked { path: PathBuf, holder: String },
    #[error("cannot lock the store with {path}: {source}")]
    LockFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The store handle; cheap to clone.
#[derive(Clone)]
pub struct Store {
    queue: mpsc::Sender<WriteOp>,
    location: StoreLocation,
    outbox: Arc<Outbox>,
    closed_at_start: usize,
    /// The API's blocklist changes other nodes make (a shared store).
    blocklist: Option<tokio::sync::broadcast::Sender<BlocklistChange>>,
    /// The callers of the other nodes' new calls (a shared store).
    arrivals: Option<tokio::sync::broadcast::Sender<String>>,
    cluster: Option<Arc<cluster::ClusterHandle>>,
    /// Requests for calls on other nodes (a shared store).
    forwarding: Option<Arc<forwarding::Forwarding>>,
}

impl Store {
    /// Opens (creating if needed) the database, migrates it, closes what a killed run left
    /// open, and starts the writer thread.
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
        let mut connection = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        // WAL with FULL: the log is synced at every commit; NORMAL: only at checkpoints.
        let synchronous = match options.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        connection.pragma_update(None, "synchronous", synchronous)?;
        connection.busy_timeout(Duration::from_secs(5))?;
        schema::migrate(&connection)?;
        let now = unix_millis(SystemTime::now());
        let closed_at_start =
            outbox::close_interrupted(&mut connection, now, options.recovery.as_deref())?;
        // Blocked numbers whose time is up are of no use any more (best effort: a full disk
        // must not keep the gateway from starting).
        if let Err(error) = connection.execute(
            "DELETE FROM blocked_numbers WHERE expires_at IS NOT NULL AND expires_at <= ?1",
            params![now],
        ) {
            tracing::warn!(path = %path.display(), %error, "expired blocked numbers not deleted");
        }
        if let Some(bytes) = options.max_size_bytes {
            let page_size: i64 = connection.query_row("PRAGMA page_size", [], |row| row.get(0))?;
            let pages = (bytes as i64 / page_size.max(1)).max(1);
            // SQLite keeps the current size if the cap is below it.
            connection.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
        }
        let outbox = Arc::new(outbox::positions(&connection)?);
        let sequences = outbox::stored_sequences(&connection)?;
        let queue = start_writer(
            Box::new(sqlite::SqliteEngine(connection)),
            path.to_path_buf(),
            options.metrics.unwrap_or_default(),
            Arc::clone(&outbox),
            sequences,
        )?;
        Ok(Store {
            queue,
            location: StoreLocation::File(path.to_path_buf()),
            outbox,
            closed_at_start,
            blocklist: None,
            arrivals: None,
            cluster: None,
            forwarding: None,
        })
    }

    /// Opens the store at `location`: the file as [`Store::open_with`], or the shared
    /// database: migrated (one node at a time), this node's lease claimed (waiting out its
    /// previous run's), what its previous run left open closed, and the writer and the
    /// cluster thread started.
    ///
    /// # Errors
    /// [`StoreError`] naming the file or the database.
    pub fn connect(location: &StoreLocation, options: StoreOptions) -> Result<Store, StoreError> {
        let url = match location {
            StoreLocation::File(path) => return Store::open_with(path, options),
            StoreLocation::Database(url) => url.clone(),
        };
        let cluster_options = options.cluster.clone().unwrap_or(ClusterOptions {
            node: String::new(),
            lease: Duration::from_secs(10),
        });
        let mut client = url.connect()?;
        postgres::migrate(&mut client)?;
        let incarnation = cluster::incarnation();
        cluster::claim(&mut client, &cluster_options, &incarnation)?;
        let now = unix_millis(SystemTime::now());
        let closed_at_start = {
            let mut transaction = client.transaction()?;
            let closed = postgres::close_node(
                &mut transaction,
                &cluster_options.node,
                now,
                GATEWAY_RESTART,
                options.recovery.as_deref(),
            )?;
            transaction.commit()?;
            closed
        };
        if let Err(error) = client.execute(
            "DELETE FROM blocked_numbers WHERE expires_at IS NOT NULL AND expires_at <= $1",
            &[&now],
        ) {
            tracing::warn!(store = %url, %error, "expired blocked numbers not deleted");
        }
        let positions = postgres::positions(&mut client)?;
        let outbox = Arc::new(Outbox::with_positions(&positions));
        let sequences = positions
            .iter()
            .map(|(platform, (latest, _))| (platform.clone(), *latest))
            .collect();
        let metrics = options.metrics.unwrap_or_default();
        let queue = start_writer(
            Box::new(postgres::PostgresEngine::new(
                url.clone(),
                cluster_options.node.clone(),
                client,
            )),
            PathBuf::from(url.to_string()),
            Arc::clone(&metrics),
            Arc::clone(&outbox),
            sequences,
        )?;
        let (blocklist, _) = tokio::sync::broadcast::channel(1024);
        let (arrivals, _) = tokio::sync::broadcast::channel(4096);
        let forwarding = Arc::new(forwarding::Forwarding::new(
            cluster_options.node.clone(),
            url.clone(),
            incarnation.clone(),
        ));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stopped_sender, stopped) = oneshot::channel();
        let thread = cluster::Cluster {
            url: url.clone(),
            options: cluster_options,
            incarnation,
            outbox: Arc::clone(&outbox),
            recovery: options.recovery,
            metrics,
            blocklist: blocklist.clone(),
            arrivals: arrivals.clone(),
            forwarding: Arc::clone(&forwarding),
            stop: Arc::clone(&stop),
        };
        std::thread::Builder::new()
            .name("store-cluster".into())
            .spawn(move || thread.run(stopped_sender))
            .map_err(|source| StoreError::CreateDir {
                path: PathBuf::from(url.to_string()),
                source,
            })?;
        Ok(Store {
            queue,
            location: location.clone(),
            outbox,
            closed_at_start,
            blocklist: Some(blocklist),
            arrivals: Some(arrivals),
            cluster: Some(Arc::new(cluster::ClusterHandle {
                stop,
                stopped: std::sync::Mutex::new(Some(stopped)),
            })),
            forwarding: Some(forwarding),
        })
    }

    /// Where the store is.
    pub fn location(&self) -> &StoreLocation {
        &self.location
    }

    /// The callers of the new calls other nodes of a shared store take (None for an embedded
    /// store).
    pub fn caller_arrivals(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        self.arrivals.as_ref().map(|sender| sender.subscribe())
    }

    /// Whether other nodes share the store (`[store] url`).
    pub fn is_shared(&self) -> bool {
        self.forwarding.is_some()
    }

    /// Where `call_id` is carried: [`Owner::Here`] for an embedded store's every call.
    ///
    /// # Errors
    /// [`StoreError`] if the shared store cannot be read.
    pub async fn owner_of(&self, call_id: &str) -> Result<Owner, StoreError> {
        match &self.forwarding {
            Some(forwarding) => forwarding.owner_of(call_id).await,
            None => Ok(Owner::Here),
        }
    }

    /// The other nodes whose lease is current (none for an embedded store).
    ///
    /// # Errors
    /// [`StoreError`] if the shared store cannot be read.
    pub async fn other_nodes(&self) -> Result<Vec<String>, StoreError> {
        match &self.forwarding {
            Some(forwarding) => forwarding.live_nodes().await,
            None => Ok(Vec::new()),
        }
    }

    /// Sends `body`, a request of `platform`'s client, to `node` and waits for its answer.
    ///
    /// # Errors
    /// [`StoreError::NoAnswer`] when none comes within [`ANSWER_TIMEOUT`]; [`StoreError::Closed`]
    /// for an embedded store.
    pub async fn forward(
        &self,
        node: &str,
        kind: RequestKind,
        platform: &str,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        match &self.forwarding {
            Some(forwarding) => forwarding.forward(node, kind, platform, body).await,
            None => Err(StoreError::Closed),
        }
    }

    /// The requests other nodes forward to this one, once (None: already taken, or an
    /// embedded store).
    pub fn forwarded_requests(&self) -> Option<mpsc::Receiver<ForwardedRequest>> {
        self.forwarding.as_ref().and_then(|forwarding| {
            forwarding
                .receiver
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
        })
    }

    /// Answers the forwarded request `key` with `body`.
    ///
    /// # Errors
    /// [`StoreError`] if the shared store cannot be written.
    pub async fn answer(&self, key: &str, body: Vec<u8>) -> Result<(), StoreError> {
        match &self.forwarding {
            Some(forwarding) => forwarding.answer(key, body).await,
            None => Err(StoreError::Closed),
        }
    }

    /// The API's blocklist changes made on other nodes (and this one) of a shared store; None
    /// for an embedded store, whose only writer is this gateway.
    pub fn blocklist_changes(&self) -> Option<tokio::sync::broadcast::Receiver<BlocklistChange>> {
        self.blocklist.as_ref().map(|sender| sender.subscribe())
    }

    /// Each platform's newest committed sequence and last acknowledgement.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// How many calls a killed run had left open (closed when this store opened).
    pub fn closed_at_start(&self) -> usize {
        self.closed_at_start
    }

    /// Writes `changes` in one transaction. Waits for the commit when they hold events, a
    /// call's start, answer or end, or a blocklist change (they must be on disk before anyone
    /// sees the step); otherwise only queues them ([`Written::Queued`]). [`Written::Held`]: the store cannot
    /// write now; they land, in order, when it recovers.
    ///
    /// # Errors
    /// [`StoreError::Closed`] if the writer stopped, [`StoreError::Write`] if the store refused
    /// them for good (not for a full or read-only disk: that holds them).
    pub async fn write(&self, changes: Changes) -> Result<Written, StoreError> {
        if changes.is_empty() {
            return Ok(Written::Queued);
        }
        let Changes {
            changes,
            events,
            durable,
        } = changes;
        if !durable {
            self.queue
                .send(WriteOp::Write {
                    changes,
                    events,
                    reply: None,
                })
                .await
                .map_err(|_| StoreError::Closed)?;
            return Ok(Written::Queued);
        }
        self.until_committed(|reply| WriteOp::Write {
            changes,
            events,
            reply: Some(reply),
        })
        .await
    }

    /// Inserts a new call; resolves once it is committed (or held).
    ///
    /// # Errors
    /// As [`Store::write`].
    pub async fn call_started(&self, record: CallRecord) -> Result<(), StoreError> {
        let mut changes = Changes::default();
        changes.call_started(record);
        self.write(changes).await.map(|_| ())
    }

    /// Writes the answer time of a call; resolves once it is committed (or held).
    ///
    /// # Errors
    /// As [`Store::write`].
    pub async fn call_answered(
        &self,
        id: &str,
        b_call_id: &str,
        b_peer: &str,
        answered_at: i64,
    ) -> Result<(), StoreError> {
        let mut changes = Changes::default();
        changes.call_answered(id, b_call_id, b_peer, answered_at);
        self.write(changes).await.map(|_| ())
    }

    /// Writes the final record; resolves once it is committed, or held in memory because the
    /// store cannot write now ([`Written::Held`]: it lands when the store recovers).
    ///
    /// # Errors
    /// As [`Store::write`].
    pub async fn call_ended(&self, record: CallRecord) -> Result<Written, StoreError> {
        let mut changes = Changes::default();
        changes.call_ended(record);
        self.write(changes).await
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
        operation: impl FnOnce(writer::Reply) -> WriteOp,
    ) -> Result<Written, StoreError> {
        let (done, committed) = oneshot::channel();
        self.queue
            .send(operation(done))
            .await
            .map_err(|_| StoreError::Closed)?;
        match committed.await {
            Ok(Ok(written)) => Ok(written),
            Ok(Err(reason)) => Err(StoreError::Write {
                path: PathBuf::from(self.location.to_string()),
                reason,
            }),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// `platform`'s client has every event up to `sequence`: it is not sent again on
    /// reconnect. Only an acknowledgement that moves forward, and not past the newest
    /// committed event, is taken (and queued for the disk, without waiting).
    ///
    /// # Errors
    /// [`StoreError::Closed`] if the writer has stopped.
    pub async fn acknowledge(
        &self,
        platform: &str,
        sequence: u64,
    ) -> Result<Acknowledged, StoreError> {
        let outcome = self.outbox.acknowledge(platform, sequence);
        if outcome == Acknowledged::Advanced {
            self.queue
                .send(WriteOp::Ack {
                    platform: platform.to_string(),
                    sequence,
                })
                .await
                .map_err(|_| StoreError::Closed)?;
        }
        Ok(outcome)
    }

    /// Resolves once the writer has dealt with what was queued before: an error if it has
    /// stopped. A writer stuck in a write never answers (`/healthz` times out).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(WriteOp::Ping(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)
    }

    /// Deletes outbox events created before `before` (Unix ms), acknowledged or not, but
    /// those of calls still open.
    ///
    /// # Errors
    /// [`StoreError::Closed`] if the writer has stopped.
    pub async fn prune_outbox(&self, before: i64) -> Result<(), StoreError> {
        self.queue
            .send(WriteOp::Prune(before))
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Flushes everything queued; the writer thread ends when the last handle is dropped. A
    /// node of a cluster then gives up its lease (nothing of it is left open for the others to
    /// close).
    ///
    /// # Errors
    /// The flush's error.
    pub async fn shutdown(self) -> Result<(), StoreError> {
        let flushed = self.flush().await;
        if let Some(cluster) = &self.cluster {
            cluster
                .stop
                .store(true, std::sync::atomic::Ordering::Relaxed);
            let stopped = cluster
                .stopped
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(stopped) = stopped {
                let _ = tokio::time::timeout(Duration::from_secs(3), stopped).await;
            }
        }
        flushed
    }
}

/// Starts the writer thread on `engine`; returns its queue.
fn start_writer(
    engine: Box<dyn writer::Engine>,
    path: PathBuf,
    metrics: Arc<Metrics>,
    outbox: Arc<Outbox>,
    sequences: std::collections::HashMap<String, u64>,
) -> Result<mpsc::Sender<WriteOp>, StoreError> {
    let (queue, receiver) = mpsc::channel(QUEUE);
    let writer = Writer {
        engine,
        path: path.clone(),
        metrics,
        outbox,
        sequences,
        held: VecDeque::new(),
        held_records: 0,
        failing_since: None,
        last_attempt: Instant::now(),
        last_report: Instant::now(),
    };
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || writer.run(receiver))
        .map_err(|source| StoreError::CreateDir { path, source })?;
    Ok(queue)
}

/// Milliseconds since the Unix epoch.
pub fn unix_millis(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `YYYY-MM-DD HH:MM:SS.mmm` in UTC.
pub fn format_time(unix_ms: i64) -> String {
    let days = unix_ms.div_euclid(86_400_000);
    let ms_of_day = unix_ms.rem_euclid(86_400_000);
    let (year, month, day) = crate::calendar::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000
    )
}

#[cfg(test)]
mod tests;
