//! The work-order link (数据实时双向流转): events about calls go to the platforms' systems and
//! their commands come back, over gRPC (`proto/hotline/workorder/v1/workorder.proto`, package
//! `hotline.workorder.v1`).
//!
//! Data flow: a call's task turns its step into [`CallEvent`]s, which the [`hub::EventHub`]
//! encodes, once, for the platforms they are for; the task commits them in one transaction
//! with the step's record changes (the store numbers them per platform as it commits) and only
//! then lets the step be seen (its SIP messages, media, a command's result). The store tells
//! the platforms' streams ([`stream`]) the newest committed sequence; they read the events
//! back and send them. So an event is on disk before any client, or any SIP peer, sees what it
//! reports; a client that reconnects (or a gateway that restarted) resumes from the store; a
//! slow client only delays itself; and a run that was killed has its open calls ended on the
//! link at the next start ([`recovery`]). Commands go the other way: [`service`] checks who
//! may do what, [`commands`] makes a repeated command answer as the first one did, and the
//! call's task carries them out through the [`registry::CallRegistry`].
//!
//! | file | holds |
//! |---|---|
//! | `mod.rs` | the domain types the call tasks speak (events, tickets), and the limits |
//! | `hub.rs` | platforms kept, event ids, encoding; what the streams follow |
//! | `registry.rs` | the calls in progress: their command queues and what the platforms may see of them |
//! | `commands.rs` | each platform's recent commands: repeats answered from the first |
//! | `convert.rs` | domain types <-> protobuf |
//! | `service.rs` | the tonic service: authentication, commands, unary calls, serving |
//! | `stream.rs` | one platform's `Link` stream: events from the outbox, acks, commands in |
//! | `recovery.rs` | the ending events of calls a killed run left open |
//! | `tail.rs` | `hotline-gateway events`: an operator's view of a stream |

pub mod auth;
pub mod commands;
pub mod convert;
pub mod hub;
pub mod recovery;
pub mod registry;
pub mod service;
pub mod stream;
pub mod tail;

use std::time::{Duration, SystemTime};

/// The generated protobuf types and the tonic service and client.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("hotline.workorder.v1");

    /// The encoded descriptors of the proto (and the well-known types it imports), for gRPC
    /// server reflection.
    pub const DESCRIPTOR: &[u8] = tonic::include_file_descriptor_set!("workorder_descriptor");
}

/// Largest message either way, encoded: well under gRPC's usual 4 MiB default, so every
/// client's defaults take every event.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Largest ticket, encoded: an event carries at most one, with room to spare.
pub const MAX_TICKET_BYTES: usize = 256 * 1024;
/// Largest reply, encoded.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;
/// How long a command id is remembered.
pub const COMMAND_WINDOW: Duration = Duration::from_secs(600);
/// How many command ids a platform's window keeps at most (the oldest go first).
pub const COMMAND_WINDOW_ENTRIES: usize = 100_000;
/// How long a new stream may take to say Hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// A work order (工单) attached to a call: the proto's `Ticket`, checked for size. The gateway
/// reads only its number and version; the rest is the platforms'.
pub type Ticket = pb::Ticket;

/// One leg of a call as the platforms see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LegInfo {
    pub peer: String,
    pub platform: Option<String>,
    pub number: String,
}

/// What happened (the protobuf `EventType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    CallOffered,
    CallRinging,
    CallAnswered,
    CallEnded,
    TransferRequested,
    TransferRinging,
    TransferAnswered,
    TransferFailed,
    ConferenceRequested,
    ConferenceStarted,
    ConferenceEnded,
    PartyJoined,
    PartyLeft,
    HotkeyPressed,
    TicketAttached,
    TicketUpdated,
    PeerReply,
    CallBlocked,
    CallFlagged,
}

/// A conference party.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartyInfo {
    pub party: u8,
    pub peer: String,
    pub number: String,
}

/// An event about a call, for the platforms named in `platforms`.
#[derive(Debug, Clone, PartialEq)]
pub struct CallEvent {
    pub platforms: Vec<String>,
    pub kind: EventKind,
    pub time: SystemTime,
    pub call_id: String,
    pub linkage_id: Option<String>,
    pub citizen_number: String,
    pub called_number: String,
    pub caller_leg: LegInfo,
    pub called_leg: Option<LegInfo>,
    pub agent: Option<LegInfo>,
    pub target: Option<LegInfo>,
    pub sip_status: u16,
    pub ticket: Option<Ticket>,
    pub reply: Option<pb::Reply>,
    pub party: Option<PartyInfo>,
    pub hotkey: Option<String>,
    /// `caller`, `callee` or `gateway` (as the call record has it).
    pub ended_by: Option<String>,
    pub reason: Option<String>,
}

impl CallEvent {
    /// An event of `kind` about a call, with nothing optional set.
    pub fn new(kind: EventKind, call_id: &str, time: SystemTime) -> CallEvent {
        CallEvent {
            platforms: Vec::new(),
            kind,
            time,
            call_id: call_id.to_string(),
            linkage_id: None,
            citizen_number: String::new(),
            called_number: String::new(),
            caller_leg: LegInfo::default(),
            called_leg: None,
            agent: None,
            target: None,
            sip_status: 0,
            ticket: None,
            reply: None,
            party: None,
            hotkey: None,
            ended_by: None,
            reason: None,
        }
    }
}
