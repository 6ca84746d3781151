//! The work-order outbox: every platform's events, numbered per platform without gaps, in the
//! same transactions as the record changes they report.
//!
//! The writer numbers an event when it commits it (so numbers follow the commit order and an
//! event held while the disk is full takes its number when it lands), keeps the newest
//! committed events of each platform in memory ([`Outbox::recent`]), then tells the
//! platforms' streams ([`Outbox::subscribe`]) the newest committed sequence. A stream that
//! keeps up takes its events from memory; one that fell behind reads them back with its own
//! [`super::OutboxReader`]. Each platform's newest sequence has a row of its own
//! (`outbox_sequences`), so retention may prune any event.
//!
//! At start, before anything else writes, what a killed run left open is closed
//! ([`close_interrupted`]): calls, linkages and conference parties, with the ending events
//! that the work-order link makes of them for every platform that saw the call, numbered and
//! committed in the same transaction.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{params, Connection, Transaction};
use tokio::sync::watch;

use super::{CallRecord, ConferencePartyRecord, LinkageRecord, StoreError};

/// An event for one platform's outbox, not yet numbered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewEvent {
    pub platform: String,
    /// The same on every delivery (and for every platform the event is for).
    pub event_id: String,
    /// The gateway's id of the call it is about.
    pub call_id: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// The event as the platforms get it, without its sequence and id (the gateway's
    /// encoding; protobuf for the work-order link); shared by the platforms it is for.
    pub body: Arc<[u8]>,
}

/// One stored event, as read back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutboxRecord {
    pub platform: String,
    /// The platform stream's sequence, from 1.
    pub sequence: u64,
    pub event_id: String,
    pub call_id: String,
    /// Unix milliseconds.
    pub created_at: i64,
    pub body: Arc<[u8]>,
}

/// How many of a platform's newest committed events are kept in memory, and at most how many
/// bytes of them: a stream within that of the newest never reads the store.
const RECENT_EVENTS: usize = 4096;
const RECENT_BYTES: usize = 8 * 1024 * 1024;

/// What an acknowledgement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acknowledged {
    /// Newer than the last one: stored.
    Advanced,
    /// The same as the last one: nothing to do.
    Unchanged,
    /// Below the last one (`current`): ignored.
    Behind { current: u64 },
    /// Past the newest committed event (`latest`): refused, nothing acknowledged.
    PastNewest { latest: u64 },
}

/// Each platform's newest committed sequence (followed by its streams), its newest events,
/// and its last acknowledgement.
#[derive(Debug, Default)]
pub struct Outbox {
    committed: Mutex<HashMap<String, watch::Sender<u64>>>,
    recent: Mutex<HashMap<String, Recent>>,
    acknowledged: Mutex<HashMap<String, u64>>,
}

/// A platform's newest committed events, oldest first, without a gap.
#[derive(Debug, Default)]
struct Recent {
    events: VecDeque<OutboxRecord>,
    bytes: usize,
}

impl Outbox {
    pub(super) fn with_positions(positions: &HashMap<String, (u64, u64)>) -> Outbox {
        Outbox {
            committed: Mutex::new(
                positions
                    .iter()
                    .map(|(p, (latest, _))| (p.clone(), watch::channel(*latest).0))
                    .collect(),
            ),
            recent: Mutex::new(HashMap::new()),
            acknowledged: Mutex::new(
                positions
                    .iter()
                    .map(|(p, (_, acked))| (p.clone(), *acked))
                    .collect(),
            ),
        }
    }

    /// Follows `platform`'s newest committed sequence.
    pub fn subscribe(&self, platform: &str) -> watch::Receiver<u64> {
        self.committed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(platform.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// `platform`'s newest committed sequence.
    pub fn latest(&self, platform: &str) -> u64 {
        self.committed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(platform)
            .map_or(0, |sender| *sender.borrow())
    }

    /// The last sequence `platform`'s client acknowledged.
    pub fn acknowledged(&self, platform: &str) -> u64 {
        self.acknowledged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(platform)
            .copied()
            .unwrap_or(0)
    }

    /// Takes `platform`'s acknowledgement of `sequence` in memory (the store keeps it after).
    pub(super) fn acknowledge(&self, platform: &str, sequence: u64) -> Acknowledged {
        let latest = self.latest(platform);
        if sequence > latest {
            return Acknowledged::PastNewest { latest };
        }
        let mut acknowledged = self
            .acknowledged
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = acknowledged.entry(platform.to_string()).or_insert(0);
        match sequence.cmp(current) {
            std::cmp::Ordering::Greater => {
                *current = sequence;
                Acknowledged::Advanced
            }
            std::cmp::Ordering::Equal => Acknowledged::Unchanged,
            std::cmp::Ordering::Less => Acknowledged::Behind { current: *current },
        }
    }

    /// `platform`'s position as the store holds it (read by a stream as it opens): what
    /// another node committed or was acknowledged and this one has not heard of yet is taken.
    pub fn catch_up(&self, platform: &str, (latest, acknowledged): (u64, u64)) {
        self.announce(platform, latest);
        self.acknowledged_elsewhere(platform, acknowledged);
    }

    /// Another node took `platform`'s acknowledgement of `sequence` (a shared store): this
    /// node's position moves up to it, never back.
    pub(super) fn acknowledged_elsewhere(&self, platform: &str, sequence: u64) {
        let mut acknowledged = self
            .acknowledged
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = acknowledged.entry(platform.to_string()).or_insert(0);
        *current = (*current).max(sequence);
    }

    /// Up to `limit` of `platform`'s events after `after`, from memory, none newer than the
    /// newest announced: None if memory does not reach back that far (read the store).
    pub fn recent(&self, platform: &str, after: u64, limit: usize) -> Option<Vec<OutboxRecord>> {
        let latest = self.latest(platform);
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let events = &recent.get(platform)?.events;
        let first = events.front()?.sequence;
        if after + 1 < first {
            return None;
        }
        let skip = (after + 1 - first) as usize;
        Some(
            events
                .iter()
                .skip(skip)
                .take_while(|e| e.sequence <= latest)
                .take(limit)
                .cloned()
                .collect(),
        )
    }

    /// Keeps `event`, just committed, among `platform`'s newest.
    pub(super) fn keep(&self, event: OutboxRecord) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let kept = recent.entry(event.platform.clone()).or_default();
        if kept
            .events
            .back()
            .is_some_and(|last| last.sequence + 1 != event.sequence)
        {
            // Not next to the newest kept (cannot happen with one writer): start again.
            kept.events.clear();
            kept.bytes = 0;
        }
        kept.bytes += event.body.len();
        kept.events.push_back(event);
        while kept.events.len() > RECENT_EVENTS || kept.bytes > RECENT_BYTES {
            let Some(oldest) = kept.events.pop_front() else {
                break;
            };
            kept.bytes -= oldest.body.len();
        }
    }

    /// `platform`'s events up to `sequence` are committed.
    pub(super) fn announce(&self, platform: &str, sequence: u64) {
        let mut committed = self
            .committed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let sender = committed
            .entry(platform.to_string())
            .or_insert_with(|| watch::channel(0).0);
        sender.send_if_modified(|latest| {
            let newer = sequence > *latest;
            *latest = (*latest).max(sequence);
            newer
        });
    }
}

/// Each platform's newest sequence and its last acknowledgement, as stored.
pub(super) fn positions(connection: &Connection) -> Result<Outbox, StoreError> {
    let mut positions: HashMap<String, (u64, u64)> = HashMap::new();
    let mut statement = connection.prepare("SELECT platform, latest FROM outbox_sequences")?;
    let rows = statement.query_map([], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
    })?;
    for row in rows {
        let (platform, latest) = row?;
        positions.insert(platform, (latest.max(0) as u64, 0));
    }
    let mut statement = connection.prepare("SELECT platform, sequence FROM outbox_acks")?;
    let rows = statement.query_map([], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
    })?;
    for row in rows {
        let (platform, acked) = row?;
        let acked = acked.max(0) as u64;
        let entry = positions.entry(platform).or_insert((acked, 0));
        entry.0 = entry.0.max(acked);
        entry.1 = acked;
    }
    Ok(Outbox::with_positions(&positions))
}

/// Numbers `events` after each platform's newest in `sequences` (which it advances) and
/// inserts them; each platform's newest is kept in `outbox_sequences` too. Returns the
/// numbers, in the order of `events`.
pub(super) fn insert_events<'a>(
    transaction: &Transaction<'_>,
    sequences: &mut HashMap<String, u64>,
    events: impl IntoIterator<Item = &'a NewEvent>,
) -> Result<Vec<u64>, rusqlite::Error> {
    let mut insert = transaction.prepare_cached(
        "INSERT INTO outbox (platform, sequence, event_id, call_id, created_at, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let mut touched: Vec<&str> = Vec::new();
    let mut numbers = Vec::new();
    for event in events {
        let sequence = sequences.entry(event.platform.clone()).or_insert(0);
        *sequence += 1;
        numbers.push(*sequence);
        insert.execute(params![
            event.platform,
            *sequence as i64,
            event.event_id,
            event.call_id,
            event.created_at,
            &*event.body,
        ])?;
        if !touched.contains(&event.platform.as_str()) {
            touched.push(&event.platform);
        }
    }
    let mut newest = transaction.prepare_cached(
        "INSERT INTO outbox_sequences (platform, latest) VALUES (?1, ?2)
         ON CONFLICT(platform) DO UPDATE SET latest = excluded.latest",
    )?;
    for platform in touched {
        let latest = sequences.get(platform).copied().unwrap_or(0);
        newest.execute(params![platform, latest as i64])?;
    }
    Ok(numbers)
}

/// A call that a killed run left open, as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interrupted {
    /// Its record, still open.
    pub call: CallRecord,
    /// Its linkages still under way.
    pub linkages: Vec<LinkageRecord>,
    /// Its conference parties still in.
    pub parties: Vec<ConferencePartyRecord>,
    /// Each platform that saw the call, with the body of the newest event it got about it.
    pub seen: Vec<(String, Vec<u8>)>,
    /// Why it is closed: "gateway restart" (this node's previous run), or [`super::NODE_LOST`]
    /// (another node of the cluster whose lease expired).
    pub reason: String,
}

/// What becomes of an interrupted call on the work-order link: its ending events (`now` in
/// Unix ms), for the platforms that saw it.
pub type Recovery = dyn Fn(&Interrupted, i64) -> Vec<NewEvent> + Send + Sync;

/// Closes what a previous run left open (it was killed, or the machine went down), in one
/// transaction: calls not ended get `ended_by = 'gateway'`, `end_reason = 'gateway
/// restart'` and `ended_at = now` (200 if they were answered, else 503); linkages still under
/// way fail (503) and conference parties still in leave, whatever their call's state (a
/// record the writer had to give up may have left one open under an ended call); and the
/// events `recovery` makes of each open call go to the outbox. The empty markers an upgrade
/// left of the platforms that saw an open call (schema 6) go once used. Returns how many
/// calls were closed.
pub(super) fn close_interrupted(
    connection: &mut Connection,
    now: i64,
    recovery: Option<&Recovery>,
) -> Result<usize, StoreError> {
    let transaction = connection.transaction()?;
    let calls = super::reads::open_calls(&transaction)?;
    let mut events = Vec::new();
    if let Some(recovery) = recovery {
        for call in &calls {
            let interrupted = Interrupted {
                linkages: super::reads::linkages_of(&transaction, &call.id)?
                    .into_iter()
                    .filter(|l| l.ended_at.is_none())
                    .collect(),
                parties: super::reads::parties_of(&transaction, &call.id)?
                    .into_iter()
                    .filter(|p| p.left_at.is_none())
                    .collect(),
                seen: seen(&transaction, &call.id)?,
                call: call.clone(),
                reason: super::GATEWAY_RESTART.to_string(),
            };
            events.extend(recovery(&interrupted, now));
        }
    }
    transaction.execute(
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
    transaction.execute("DELETE FROM outbox WHERE length(body) = 0", [])?;
    let mut sequences = stored_sequences(&transaction)?;
    insert_events(&transaction, &mut sequences, &events)?;
    transaction.commit()?;
    Ok(calls.len())
}

/// Each platform's newest sequence, as `outbox_sequences` holds it.
pub(super) fn stored_sequences(
    connection: &Connection,
) -> Result<HashMap<String, u64>, rusqlite::Error> {
    let mut statement = connection.prepare("SELECT platform, latest FROM outbox_sequences")?;
    let rows = statement.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, i64>(1)?.max(0) as u64,
        ))
    })?;
    rows.collect()
}

/// Each platform that has events of `call_id`, with the body of its newest.
fn seen(connection: &Connection, call_id: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let mut statement = connection.prepare_cached(
        "SELECT o.platform, o.body FROM outbox o
         WHERE o.call_id = ?1 AND o.sequence =
             (SELECT MAX(n.sequence) FROM outbox n WHERE n.platform = o.platform AND n.call_id = ?1)
         ORDER BY o.platform",
    )?;
    let rows = statement.query_map([call_id], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}
