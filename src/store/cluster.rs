//! A node's place in a cluster sharing one PostgreSQL store: its lease, what the other nodes
//! commit, and the nodes that die.
//!
//! - **Lease.** A row per node in `nodes`, claimed at start (waiting out a previous lease of
//!   the same name, so a second process with a name already in use is refused) and renewed
//!   every third of `lease`, by the database's clock (the nodes' clocks need not agree).
//! - **Listening.** `LISTEN` on the outbox, acknowledgement and blocklist channels: another
//!   node's commit advances this node's platform streams, its acknowledgements this node's
//!   positions, its blocklist changes this node's screening. After a lost connection the
//!   positions are read again, so nothing announced meanwhile is missed.
//! - **Dead nodes.** A node whose lease expired is lost: the first survivor to mark its row
//!   (`closed_at`, under the row's lock, so two never do it twice) closes its open calls,
//!   linkages and conference parties (`ended_by = gateway`, reason [`super::NODE_LOST`]) and
//!   sends their ending events, in the same transaction.
//!
//! One thread with its own connection does all three; the writer's connection is the writer's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;
use tokio::sync::{broadcast, oneshot};

use super::forwarding::{Forwarding, ANSWER_CHANNEL, FORWARD_CHANNEL, STALE};
use super::outbox::{Outbox, Recovery};
use super::postgres::{
    self as pg, DatabaseUrl, ACKS_CHANNEL, ARRIVALS_CHANNEL, BLOCKLIST_CHANNEL, OUTBOX_CHANNEL,
};
use super::{unix_millis, BlockedNumberRecord, StoreError};
use crate::metrics::{Counter, Metrics};

/// A change to the API's blocklist, made on any node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlocklistChange {
    Blocked(BlockedNumberRecord),
    Unblocked(String),
    /// The whole list as the store holds it: after a lost connection, changes may have been
    /// missed.
    Reloaded(Vec<BlockedNumberRecord>),
}

/// Who this node is in the cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `[cluster] node`: unique among the nodes sharing the store.
    pub node: String,
    /// How long a lease lasts unrenewed: after it, the others take this node for lost.
    pub lease: Duration,
}

/// How often the thread looks up from its notifications (stop, renewal).
const TICK: Duration = Duration::from_millis(200);

/// How long a lost connection waits before it is tried again.
const RECONNECT: Duration = Duration::from_secs(1);

/// This run's claim, told apart from an earlier run of the same name.
pub(super) fn incarnation() -> String {
    format!("{}-{}", std::process::id(), unix_millis(SystemTime::now()))
}

fn lease_ms(lease: Duration) -> f64 {
    lease.as_millis() as f64
}

/// Claims `node`'s lease for this run: at once if it is free, expired or released, else once
/// the previous holder's lease expires (a node restarted after `kill -9`). A lease still
/// renewed after a whole lease's wait belongs to a live node of the same name.
pub(super) fn claim(
    client: &mut Client,
    options: &ClusterOptions,
    incarnation: &str,
) -> Result<(), StoreError> {
    let deadline = Instant::now() + options.lease + Duration::from_secs(1);
    let mut said = false;
    loop {
        let claimed = client.query_opt(
            "INSERT INTO nodes (name, incarnation, started_at, expires_at)
             VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond')
             ON CONFLICT (name) DO UPDATE SET incarnation = excluded.incarnation,
                 started_at = excluded.started_at, expires_at = excluded.expires_at,
                 closed_at = NULL, closed_by = NULL
             WHERE nodes.expires_at < now() OR nodes.closed_at IS NOT NULL
             RETURNING name",
            &[
                &options.node,
                &incarnation,
                &unix_millis(SystemTime::now()),
                &lease_ms(options.lease),
            ],
        )?;
        if claimed.is_some() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(StoreError::NodeTaken {
                node: options.node.clone(),
            });
        }
        if !said {
            said = true;
            tracing::warn!(node = %options.node,
                "waiting for this node's previous lease to expire (a restart after a crash, or another gateway with this name)");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The cluster thread: lease, listening, dead nodes.
pub(super) struct Cluster {
    pub(super) url: DatabaseUrl,
    pub(super) options: ClusterOptions,
    pub(super) incarnation: String,
    pub(super) outbox: Arc<Outbox>,
    pub(super) recovery: Option<Arc<Recovery>>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) blocklist: broadcast::Sender<BlocklistChange>,
    /// The callers of the other nodes' new calls.
    pub(super) arrivals: broadcast::Sender<String>,
    pub(super) forwarding: Arc<Forwarding>,
    pub(super) stop: Arc<AtomicBool>,
}

/// What the store holds of the cluster thread: tells it to stop, and hears that it has.
pub(super) struct ClusterHandle {
    pub(super) stop: Arc<AtomicBool>,
    pub(super) stopped: std::sync::Mutex<Option<oneshot::Receiver<()>>>,
}

impl Cluster {
    pub(super) fn run(self, stopped: oneshot::Sender<()>) {
        let mut client: Option<Client> = None;
        let mut next_renewal = Instant::now();
        // Since when this node has held its lease without a break: only a node that has been
        // renewing for a whole lease judges the others (after an outage of the database every
        // lease has lapsed, and the first node back must not take the others for lost).
        let mut renewing_since: Option<Instant> = None;
        let mut lease_held = true;
        let mut unreachable_since: Option<Instant> = None;
        while !self.stop.load(Ordering::Relaxed) {
            if client.as_ref().is_none_or(Client::is_closed) {
                client = None;
                match self.connect() {
                    Ok(connected) => {
                        if let Some(since) = unreachable_since.take() {
                            tracing::warn!(node = %self.options.node,
                                unreachable_secs = since.elapsed().as_secs(),
                                "cluster store reachable again");
                        }
                        client = Some(connected);
                        renewing_since = None;
                    }
                    Err(error) => {
                        if unreachable_since.is_none() {
                            unreachable_since = Some(Instant::now());
                            tracing::error!(node = %self.options.node, error = %pg::describe(&error),
                                "cluster store unreachable: this node's lease is not renewed");
                        }
                        self.pause(RECONNECT);
                        continue;
                    }
                }
            }
            let Some(connection) = client.as_mut() else {
                continue;
            };
            if Instant::now() >= next_renewal {
                next_renewal = Instant::now() + self.options.lease / 3;
                match self.renew(connection) {
                    Ok(held) => {
                        let since = *renewing_since.get_or_insert_with(Instant::now);
                        if !held {
                            renewing_since = Some(Instant::now());
                        }
                        if since.elapsed() >= self.options.lease {
                            if let Err(error) = self.take_over_lost(connection) {
                                tracing::error!(node = %self.options.node, %error,
                                    "lost nodes not closed (tried again at the next renewal)");
                            }
                        }
                        if held != lease_held {
                            lease_held = held;
                            if held {
                                tracing::warn!(node = %self.options.node, "lease held again");
                            }
                        }
                    }
                    Err(error) => {
                        tracing::error!(node = %self.options.node, %error, "lease not renewed");
                        client = None;
                        renewing_since = None;
                        continue;
                    }
                }
            }
            // Wait up to a tick for the first notification, then take what else is there
            // without waiting: each is handled as soon as it comes.
            let notifications: Vec<(String, String)> = {
                let mut notifications = connection.notifications();
                let mut taken = Vec::new();
                // A lost connection (an error) shows at the next look (is_closed).
                let first = notifications
                    .timeout_iter(TICK)
                    .next()
                    .ok()
                    .flatten()
                    .map(|n| (n.channel().to_string(), n.payload().to_string()));
                if let Some(first) = first {
                    taken.push(first);
                    let mut pending = notifications.iter();
                    while let Ok(Some(n)) = pending.next() {
                        taken.push((n.channel().to_string(), n.payload().to_string()));
                        if taken.len() >= 1024 {
                            break;
                        }
                    }
                }
                taken
            };
            for (channel, payload) in notifications {
                self.take(connection, &channel, &payload);
            }
        }
        if let Some(connection) = client.as_mut() {
            // A node that stopped with nothing open needs nobody to wait for its lease; one
            // that left calls open (still ending after the grace) leaves it to lapse, so a
            // survivor closes them.
            let _ = connection.execute(
                "UPDATE nodes SET expires_at = now(), closed_at = now(), closed_by = $1
                 WHERE name = $1 AND incarnation = $2 AND NOT EXISTS
                     (SELECT 1 FROM calls WHERE node = $1 AND ended_at IS NULL)",
                &[&self.options.node, &self.incarnation],
            );
        }
        let _ = stopped.send(());
    }

    /// Sleeps `wait` in ticks, up to a stop.
    fn pause(&self, wait: Duration) {
        let until = Instant::now() + wait;
        while Instant::now() < until && !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(TICK.min(until.saturating_duration_since(Instant::now())));
        }
    }

    /// A connection that listens, with the positions read again (what was announced while
    /// there was none).
    fn connect(&self) -> Result<Client, postgres::Error> {
        let mut client = self.url.connect()?;
        client.batch_execute(&format!(
            "LISTEN {OUTBOX_CHANNEL}; LISTEN {ACKS_CHANNEL}; LISTEN {BLOCKLIST_CHANNEL};
             LISTEN {FORWARD_CHANNEL}; LISTEN {ANSWER_CHANNEL}; LISTEN {ARRIVALS_CHANNEL};"
        ))?;
        match pg::positions(&mut client) {
            Ok(positions) => {
                for (platform, (latest, acked)) in positions {
                    self.outbox.announce(&platform, latest);
                    self.outbox.acknowledged_elsewhere(&platform, acked);
                }
            }
            Err(error) => tracing::error!(%error, "outbox positions not read"),
        }
        match pg::list_blocked(&mut client, unix_millis(SystemTime::now())) {
            Ok(list) => {
                // No receiver: nothing screens calls yet.
                let _ = self.blocklist.send(BlocklistChange::Reloaded(list));
            }
            Err(error) => tracing::error!(%error, "blocklist not read again"),
        }
        Ok(client)
    }

    /// Renews this run's lease; false when it had expired and been taken for lost meanwhile
    /// (it is held again, but the others closed this node's calls: said in the log).
    fn renew(&self, client: &mut Client) -> Result<bool, StoreError> {
        let row = client.query_opt(
            "UPDATE nodes SET expires_at = now() + $3 * interval '1 millisecond',
                 closed_at = NULL, closed_by = NULL
             FROM (SELECT closed_by FROM nodes WHERE name = $1 FOR UPDATE) old
             WHERE nodes.name = $1 AND nodes.incarnation = $2
             RETURNING old.closed_by",
            &[
                &self.options.node,
                &self.incarnation,
                &lease_ms(self.options.lease),
            ],
        )?;
        // Requests whose origin stopped waiting long ago.
        client.execute(
            &format!("DELETE FROM forwarded WHERE created_at < now() - interval '{STALE}'"),
            &[],
        )?;
        match row {
            Some(row) => match row.get::<_, Option<String>>(0) {
                None => Ok(true),
                Some(by) => {
                    tracing::error!(node = %self.options.node, closed_by = %by,
                        "this node's lease had expired: node {by} closed its open calls' records");
                    Ok(false)
                }
            },
            None => {
                tracing::error!(node = %self.options.node,
                    "this node's name was claimed by another run: two gateways share the name");
                Ok(false)
            }
        }
    }

    /// Closes the records of every other node whose lease expired, each in one transaction
    /// that first marks the node's row, so only one survivor does it.
    fn take_over_lost(&self, client: &mut Client) -> Result<(), StoreError> {
        let lost: Vec<String> = client
            .query(
                "SELECT name FROM nodes WHERE expires_at < now() AND closed_at IS NULL
                     AND name <> $1",
                &[&self.options.node],
            )?
            .iter()
            .map(|row| row.get(0))
            .collect();
        for node in lost {
            // A long takeover must not cost this node its own lease.
            self.renew(client)?;
            let mut transaction = client.transaction()?;
            let marked = transaction.execute(
                "UPDATE nodes SET closed_at = now(), closed_by = $2
                 WHERE name = $1 AND expires_at < now() AND closed_at IS NULL",
                &[&node, &self.options.node],
            )?;
            if marked != 1 {
                continue;
            }
            let closed = pg::close_node(
                &mut transaction,
                &node,
                unix_millis(SystemTime::now()),
                super::NODE_LOST,
                self.recovery.as_deref(),
            )?;
            transaction.commit()?;
            self.metrics.increment(Counter::ClusterNodesLost);
            self.metrics.add(Counter::ClusterCallsClosed, closed as u64);
            tracing::warn!(node = %self.options.node, lost = %node, calls = closed,
                "node lost (lease expired): its open calls, linkages and parties closed");
        }
        Ok(())
    }

    /// One notification from the database.
    fn take(&self, client: &mut Client, channel: &str, payload: &str) {
        match channel {
            FORWARD_CHANNEL => self.forwarding.take_request(client, payload),
            ARRIVALS_CHANNEL => {
                let mut lines = payload.lines();
                if lines.next().is_some_and(|node| node != self.options.node) {
                    for line in lines {
                        if let Some((_call, caller)) = line.split_once(' ') {
                            let _ = self.arrivals.send(caller.to_string());
                        }
                    }
                }
            }
            ANSWER_CHANNEL => self.forwarding.take_answer(client, payload),
            OUTBOX_CHANNEL | ACKS_CHANNEL => {
                let Some((sequence, platform)) = payload.split_once(' ') else {
                    return;
                };
                let Ok(sequence) = sequence.parse::<u64>() else {
                    return;
                };
                if channel == OUTBOX_CHANNEL {
                    self.outbox.announce(platform, sequence);
                } else {
                    self.outbox.acknowledged_elsewhere(platform, sequence);
                }
            }
            BLOCKLIST_CHANNEL => {
                // This node's own changes are in its blocklist already.
                let Some((node, number)) = payload.split_once(' ') else {
                    return;
                };
                if node == self.options.node {
                    return;
                }
                let change = match pg::blocked(client, number) {
                    Ok(Some(record)) => BlocklistChange::Blocked(record),
                    Ok(None) => BlocklistChange::Unblocked(number.to_string()),
                    Err(error) => {
                        tracing::error!(%error, "blocklist change not read");
                        return;
                    }
                };
                // No receiver: nothing screens calls yet.
                let _ = self.blocklist.send(change);
            }
            _ => {}
        }
    }
}
