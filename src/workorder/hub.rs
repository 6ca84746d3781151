//! The event hub: one task that numbers every platform's events, writes them to the store's
//! outbox in batches, and announces each platform's newest committed sequence to its streams.
//!
//! Why one task: sequences are per platform and without gaps, and the outbox is written in
//! that order, so the numbering, the write and the announcement must happen in one place. The
//! calls never wait for it ([`EventHub::emit`] only queues).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};

use super::{convert, CallEvent};
use crate::ids::IdGenerator;
use crate::metrics::{Counter, Metrics};
use crate::store::{unix_millis, OutboxRecord, Store};

enum Input {
    Event(Box<CallEvent>),
    Flush(oneshot::Sender<()>),
}

/// Events go in here; platforms' streams follow each platform's newest committed sequence.
pub struct EventHub {
    queue: mpsc::UnboundedSender<Input>,
    /// Per platform: the newest sequence committed to the outbox.
    committed: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// Per platform: the last sequence its client acknowledged.
    acknowledged: Mutex<HashMap<String, u64>>,
    store: Store,
    /// The `[[platform]]`s: events for platforms with no client configured are not kept.
    platforms: std::collections::HashSet<String>,
}

/// Most events written in one transaction.
const BATCH: usize = 512;

impl EventHub {
    /// Starts the hub's task, continuing each platform's sequence from `positions` (newest,
    /// acknowledged) as the store holds them.
    pub fn start(
        store: Store,
        positions: HashMap<String, (u64, u64)>,
        platforms: std::collections::HashSet<String>,
        ids: IdGenerator,
        metrics: Arc<Metrics>,
    ) -> Arc<EventHub> {
        let (queue, inputs) = mpsc::unbounded_channel();
        let committed = positions
            .iter()
            .map(|(platform, (latest, _))| (platform.clone(), watch::channel(*latest).0))
            .collect();
        let acknowledged = positions
            .iter()
            .map(|(platform, (_, acked))| (platform.clone(), *acked))
            .collect();
        let hub = Arc::new(EventHub {
            queue,
            committed: Mutex::new(committed),
            acknowledged: Mutex::new(acknowledged),
            store: store.clone(),
            platforms,
        });
        let next = positions
            .into_iter()
            .map(|(platform, (latest, _))| (platform, latest))
            .collect();
        tokio::spawn(run(Arc::downgrade(&hub), inputs, store, next, ids, metrics));
        hub
    }

    /// Queues an event for its platforms that have a `[[platform]]` (does not wait).
    pub fn emit(&self, mut event: CallEvent) {
        event.platforms.retain(|p| self.platforms.contains(p));
        if !event.platforms.is_empty() {
            let _ = self.queue.send(Input::Event(Box::new(event)));
        }
    }

    /// Waits until every event emitted before is committed (or could not be).
    pub async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.queue.send(Input::Flush(done)).is_ok() {
            let _ = flushed.await;
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

    /// The last sequence `platform`'s client acknowledged.
    pub fn acknowledged(&self, platform: &str) -> u64 {
        self.acknowledged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(platform)
            .copied()
            .unwrap_or(0)
    }

    /// `platform`'s client has every event up to `sequence`: it is not sent again on reconnect.
    pub async fn acknowledge(&self, platform: &str, sequence: u64) {
        let newer = {
            let mut acknowledged = self
                .acknowledged
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let entry = acknowledged.entry(platform.to_string()).or_insert(0);
            let newer = sequence > *entry;
            *entry = (*entry).max(sequence);
            newer
        };
        if newer {
            if let Err(error) = self.store.acknowledge(platform, sequence).await {
                tracing::error!(%error, platform, "acknowledgement not stored");
            }
        }
    }

    fn announce(&self, platform: &str, sequence: u64) {
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

async fn run(
    hub: std::sync::Weak<EventHub>,
    mut inputs: mpsc::UnboundedReceiver<Input>,
    store: Store,
    mut next: HashMap<String, u64>,
    mut ids: IdGenerator,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::new();
    while let Some(first) = inputs.recv().await {
        let mut flushes = Vec::new();
        let mut records: Vec<OutboxRecord> = Vec::new();
        batch.push(first);
        while batch.len() < BATCH {
            match inputs.try_recv() {
                Ok(input) => batch.push(input),
                Err(_) => break,
            }
        }
        for input in batch.drain(..) {
            let event = match input {
                Input::Event(event) => event,
                Input::Flush(done) => {
                    flushes.push(done);
                    continue;
                }
            };
            let mut platforms = event.platforms.clone();
            platforms.sort();
            platforms.dedup();
            for platform in platforms {
                let sequence = next.entry(platform.clone()).or_insert(0);
                *sequence += 1;
                let event_id = format!("{:016x}{:016x}", ids.next_u64(), ids.next_u64());
                let message = convert::event(&event, *sequence, &event_id);
                records.push(OutboxRecord {
                    platform,
                    sequence: *sequence,
                    event_id,
                    call_id: event.call_id.clone(),
                    created_at: if event.time > 0 {
                        event.time
                    } else {
                        unix_millis(std::time::SystemTime::now())
                    },
                    body: message.encode_to_vec(),
                });
            }
        }
        if !records.is_empty() {
            let written: Vec<(String, u64)> = records
                .iter()
                .map(|r| (r.platform.clone(), r.sequence))
                .collect();
            match store.append_events(records).await {
                // Waited for beside the hub: while the disk is full the store holds them and
                // the next ones are numbered meanwhile; they are announced once committed.
                Ok(commit) => {
                    let hub = hub.clone();
                    let metrics = Arc::clone(&metrics);
                    tokio::spawn(async move {
                        match commit.committed().await {
                            Ok(()) => {
                                metrics.add(Counter::WorkOrderEventsStored, written.len() as u64);
                                if let Some(hub) = hub.upgrade() {
                                    for (platform, sequence) in written {
                                        hub.announce(&platform, sequence);
                                    }
                                }
                            }
                            // The numbers stay taken: a gap tells the clients something was lost.
                            Err(error) => {
                                tracing::error!(%error, events = written.len(), "work-order events not stored");
                            }
                        }
                    });
                }
                Err(error) => {
                    tracing::error!(%error, events = written.len(), "work-order events not stored");
                }
            }
        }
        if !flushes.is_empty() {
            // Everything queued before is committed (or held, if the store cannot write).
            if let Err(error) = store.flush().await {
                tracing::warn!(%error, "work-order events not all committed");
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}
