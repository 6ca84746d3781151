//! The event hub: which platforms keep events, each event's id and encoding, and what the
//! platforms' streams follow.
//!
//! It does not write: a call's task puts the hub's [`NewEvent`]s into the [`Changes`] of its
//! step, so the events and the record changes they report are committed together, and the
//! store numbers them per platform as it commits them (one writer, so numbers follow the
//! commit order without gaps). Events that belong to no call step (a reply on a linkage, a
//! blocked caller) are committed on their own by [`EventHub::emit`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use prost::Message;
use tokio::sync::watch;

use super::{convert, pb, CallEvent, MAX_MESSAGE_BYTES};
use crate::ids::IdGenerator;
use crate::store::{
    unix_millis, Acknowledged, Changes, NewEvent, OutboxRecord, Store, StoreError, Written,
};

/// Room left in a message for what the stream adds to a stored event (its sequence and id).
const STREAM_OVERHEAD: usize = 256;

/// Where events are made ready for the outbox, and where the streams follow it.
pub struct EventHub {
    store: Store,
    /// The `[[platform]]`s: events for platforms with no client configured are not kept.
    platforms: HashSet<String>,
    ids: Mutex<IdGenerator>,
}

impl EventHub {
    pub fn new(store: Store, platforms: HashSet<String>, ids: IdGenerator) -> Arc<EventHub> {
        Arc::new(EventHub {
            store,
            platforms,
            ids: Mutex::new(ids),
        })
    }

    /// `event` for the outbox of each of its platforms that has a `[[platform]]` (none if it
    /// has none): one id and one encoding for all of them.
    pub fn prepare(&self, event: &CallEvent) -> Vec<NewEvent> {
        self.prepare_with_id(event, None)
    }

    /// As [`EventHub::prepare`], with the event's id given (None: a fresh one).
    fn prepare_with_id(&self, event: &CallEvent, event_id: Option<String>) -> Vec<NewEvent> {
        let mut platforms: Vec<&String> = event
            .platforms
            .iter()
            .filter(|p| self.platforms.contains(*p))
            .collect();
        if platforms.is_empty() {
            return Vec::new();
        }
        platforms.sort();
        platforms.dedup();
        let event_id = event_id.unwrap_or_else(|| {
            let mut ids = self.ids.lock().unwrap_or_else(PoisonError::into_inner);
            format!("{:016x}{:016x}", ids.next_u64(), ids.next_u64())
        });
        let mut message = convert::event(event);
        fit(&mut message);
        let body: Arc<[u8]> = message.encode_to_vec().into();
        let created_at = match unix_millis(event.time) {
            0 => unix_millis(SystemTime::now()),
            ms => ms,
        };
        platforms
            .into_iter()
            .map(|platform| NewEvent {
                platform: platform.clone(),
                event_id: event_id.clone(),
                call_id: event.call_id.clone(),
                created_at,
                body: Arc::clone(&body),
            })
            .collect()
    }

    /// Commits `event` with `changes` (records it reports), before returning; `event_id` is
    /// its id when it must be the same on a repeat (None: a fresh one).
    ///
    /// # Errors
    /// As [`Store::write`].
    pub async fn emit(
        &self,
        event: &CallEvent,
        mut changes: Changes,
        event_id: Option<String>,
    ) -> Result<Written, StoreError> {
        changes.events(self.prepare_with_id(event, event_id));
        self.store.write(changes).await
    }

    /// Waits until everything queued for the store (acknowledgements included) is on disk.
    ///
    /// # Errors
    /// As [`Store::flush`].
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.store.flush().await
    }

    /// Follows `platform`'s newest committed sequence.
    pub fn subscribe(&self, platform: &str) -> watch::Receiver<u64> {
        self.store.outbox().subscribe(platform)
    }

    /// Up to `limit` of `platform`'s newest events after `after`, from memory (None: read
    /// the store).
    pub fn recent(&self, platform: &str, after: u64, limit: usize) -> Option<Vec<OutboxRecord>> {
        self.store.outbox().recent(platform, after, limit)
    }

    /// Takes `platform`'s position as the store holds it (another node's commits and
    /// acknowledgements not heard of yet).
    pub fn catch_up(&self, platform: &str, position: (u64, u64)) {
        self.store.outbox().catch_up(platform, position);
    }

    /// The last sequence `platform`'s client acknowledged.
    pub fn acknowledged(&self, platform: &str) -> u64 {
        self.store.outbox().acknowledged(platform)
    }

    /// `platform`'s client has every event up to `sequence`.
    ///
    /// # Errors
    /// [`StoreError::Closed`] if the store has stopped.
    pub async fn acknowledge(
        &self,
        platform: &str,
        sequence: u64,
    ) -> Result<Acknowledged, StoreError> {
        self.store.acknowledge(platform, sequence).await
    }
}

/// The id of an event that must come out the same when its cause repeats: from the platform
/// and the command's id.
pub fn event_id_of(platform: &str, command_id: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{platform}\n{command_id}"));
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Keeps an event within [`MAX_MESSAGE_BYTES`], so no client's default limit (nor ours)
/// ever refuses it, on this stream or at any reconnect: the commands' limits keep tickets and
/// replies well under, and what comes from SIP is bounded by `sip.max_message_size`; should
/// an event still be too large, its ticket's and reply's free-form contents go (their numbers
/// stay), then every text is cut short, and the log says so.
pub fn fit(event: &mut pb::Event) {
    if event.encoded_len() + STREAM_OVERHEAD <= MAX_MESSAGE_BYTES {
        return;
    }
    tracing::error!(
        call = %event.call_id,
        bytes = event.encoded_len(),
        "work-order event too large: its ticket and reply cut to their numbers"
    );
    if let Some(ticket) = &mut event.ticket {
        *ticket = pb::Ticket {
            number: std::mem::take(&mut ticket.number),
            version: ticket.version,
            ..pb::Ticket::default()
        };
    }
    if let Some(reply) = &mut event.reply {
        *reply = pb::Reply {
            linkage_id: std::mem::take(&mut reply.linkage_id),
            incident_number: std::mem::take(&mut reply.incident_number),
            ..pb::Reply::default()
        };
    }
    if event.encoded_len() + STREAM_OVERHEAD <= MAX_MESSAGE_BYTES {
        return;
    }
    let mut texts = vec![
        &mut event.call_id,
        &mut event.linkage_id,
        &mut event.reason,
        &mut event.hotkey,
        &mut event.citizen_number,
        &mut event.called_number,
    ];
    for leg in [
        &mut event.caller_leg,
        &mut event.called_leg,
        &mut event.agent,
        &mut event.target,
    ]
    .into_iter()
    .flatten()
    {
        texts.extend([&mut leg.peer, &mut leg.platform, &mut leg.number]);
    }
    if let Some(party) = &mut event.party {
        texts.extend([&mut party.peer, &mut party.number]);
    }
    if let Some(ticket) = &mut event.ticket {
        texts.push(&mut ticket.number);
    }
    if let Some(reply) = &mut event.reply {
        texts.extend([&mut reply.linkage_id, &mut reply.incident_number]);
    }
    for text in texts {
        cut(text, 256);
    }
}

/// Shortens `text` to at most `bytes`, at a character boundary.
fn cut(text: &mut String, bytes: usize) {
    if text.len() > bytes {
        let mut end = bytes;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_never_outgrows_a_message() {
        let mut event = pb::Event {
            call_id: "c1".into(),
            ticket: Some(pb::Ticket {
                number: "GD-1".into(),
                version: 3,
                summary: "x".repeat(MAX_MESSAGE_BYTES),
                ..pb::Ticket::default()
            }),
            ..pb::Event::default()
        };
        fit(&mut event);
        assert!(event.encoded_len() + STREAM_OVERHEAD <= MAX_MESSAGE_BYTES);
        let ticket = event.ticket.unwrap_or_default();
        assert_eq!((ticket.number.as_str(), ticket.version), ("GD-1", 3));
        // Whatever text is too long, it is cut.
        let mut event = pb::Event {
            target: Some(pb::Leg {
                number: "1".repeat(MAX_MESSAGE_BYTES),
                ..pb::Leg::default()
            }),
            ..pb::Event::default()
        };
        fit(&mut event);
        assert!(event.encoded_len() + STREAM_OVERHEAD <= MAX_MESSAGE_BYTES);
        assert_eq!(event_id_of("110", "c1"), event_id_of("110", "c1"));
        assert_ne!(event_id_of("110", "c1"), event_id_of("12345", "c1"));
        assert_eq!(event_id_of("110", "c1").len(), 32);
        let mut long = "市".repeat(100);
        cut(&mut long, 256);
        assert_eq!(long.len(), 255, "three bytes a character");
        let mut small = pb::Event {
            reason: "r".into(),
            ..pb::Event::default()
        };
        let before = small.clone();
        fit(&mut small);
        assert_eq!(small, before);
    }
}
