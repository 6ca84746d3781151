//! The records the store keeps (a call, a linkage, a conference party's stint, a blocked
//! number) and the changes of one step of a call, committed together.

use super::outbox::NewEvent;
use super::writer::Change;

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
    /// The network interfaces (`[[interface]] name`, "default" for `[sip]`/`[media]`) leg A
    /// came in on and leg B went out on.
    pub a_interface: String,
    pub b_interface: Option<String>,
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
    /// The cluster node that carries (or carried) the call (`[cluster] node`); empty in an
    /// embedded store.
    pub node: String,
    /// The call's recording (the WAV file's path), when it was recorded.
    pub recording: Option<String>,
}

/// A call detail record (CDR): the call's record with its linkages (transfers and conference
/// guests) and, as read back from the store, its conference parties; oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallDetail {
    pub call: CallRecord,
    pub linkages: Vec<LinkageRecord>,
    pub conference_parties: Vec<ConferencePartyRecord>,
}

/// Who called whom on which call, through which peer: what a call's record holds as it starts.
#[derive(Debug, Clone, Copy)]
pub struct CallStart<'a> {
    pub id: &'a str,
    pub a_call_id: &'a str,
    pub caller: &'a str,
    pub called: &'a str,
    pub a_peer: &'a str,
    /// Unix milliseconds.
    pub started_at: i64,
}

impl CallRecord {
    /// A call's record as it starts: not answered, not ended, no media counted yet.
    pub fn started(start: CallStart<'_>) -> CallRecord {
        CallRecord {
            id: start.id.to_string(),
            a_call_id: start.a_call_id.to_string(),
            b_call_id: None,
            caller: start.caller.to_string(),
            called: start.called.to_string(),
            a_peer: start.a_peer.to_string(),
            b_peer: None,
            a_interface: "default".to_string(),
            b_interface: None,
            started_at: start.started_at,
            answered_at: None,
            ended_at: None,
            ended_by: None,
            end_reason: None,
            final_status: None,
            rtp_a_to_b: 0,
            rtp_b_to_a: 0,
            rtp_dropped: 0,
            node: String::new(),
            recording: None,
        }
    }
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
    /// The newest incident (or ticket) number the receiving platform replied with.
    pub incident_number: Option<String>,
    /// The newest disposition it replied with.
    pub disposition: Option<String>,
    /// When its newest reply came (Unix ms).
    pub replied_at: Option<i64>,
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

/// The record changes of one step of a call (or of one command) and the outbox events that
/// report them: committed together, in one transaction.
#[derive(Debug, Default)]
pub struct Changes {
    pub(super) changes: Vec<Change>,
    pub(super) events: Vec<NewEvent>,
    /// Something in it must be on disk before the step goes on.
    pub(super) durable: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.events.is_empty()
    }

    /// A new call's record: on disk before the call goes on (a call that was carried has a
    /// record, whatever happens to the process or the machine next).
    pub fn call_started(&mut self, record: CallRecord) {
        self.durable = true;
        self.changes.push(Change::Started(record));
    }

    /// A call's answer (its leg B and the time): on disk before the caller hears the answer.
    pub fn call_answered(&mut self, id: &str, b_call_id: &str, b_peer: &str, answered_at: i64) {
        self.call_answered_on(id, b_call_id, (b_peer, "default"), answered_at);
    }

    /// As [`Changes::call_answered`], with leg B's peer and its interface.
    pub fn call_answered_on(
        &mut self,
        id: &str,
        b_call_id: &str,
        (b_peer, b_interface): (&str, &str),
        answered_at: i64,
    ) {
        self.durable = true;
        self.changes.push(Change::Answered {
            id: id.to_string(),
            b_call_id: b_call_id.to_string(),
            b_peer: b_peer.to_string(),
            b_interface: b_interface.to_string(),
            answered_at,
        });
    }

    /// A call's final record: on disk before the call's last messages go out.
    pub fn call_ended(&mut self, record: CallRecord) {
        self.durable = true;
        self.changes.push(Change::Ended(record));
    }

    /// A linkage as it now stands (inserted or updated; a reply on it stays).
    pub fn linkage(&mut self, record: LinkageRecord) {
        self.changes.push(Change::Linkage(record));
    }

    /// A platform's reply on a linkage: its newest incident number and disposition (empty
    /// ones keep what was there).
    pub fn linkage_reply(
        &mut self,
        linkage_id: &str,
        incident_number: &str,
        disposition: &str,
        replied_at: i64,
    ) {
        self.changes.push(Change::LinkageReply {
            linkage_id: linkage_id.to_string(),
            incident_number: incident_number.to_string(),
            disposition: disposition.to_string(),
            replied_at,
        });
    }

    /// A conference party's record as it now stands (inserted or replaced).
    pub fn conference_party(&mut self, record: ConferencePartyRecord) {
        self.changes.push(Change::ConferenceParty(record));
    }

    /// A number on the API's blocklist (inserted or renewed).
    pub fn block_number(&mut self, record: BlockedNumberRecord) {
        self.durable = true;
        self.changes.push(Change::Block(record));
    }

    /// A number off the API's blocklist.
    pub fn unblock_number(&mut self, number: &str) {
        self.durable = true;
        self.changes.push(Change::Unblock(number.to_string()));
    }

    /// Events for the platforms' outboxes: committed before the step they report is seen.
    pub fn events(&mut self, events: impl IntoIterator<Item = NewEvent>) {
        let before = self.events.len();
        self.events.extend(events);
        self.durable |= self.events.len() > before;
    }
}
