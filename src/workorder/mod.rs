//! The work-order link (数据实时双向流转): events about calls go to the platforms' systems and
//! their commands come back, over gRPC (`proto/workorder.proto`, package
//! `hotline.workorder.v1`).
//!
//! Data flow: a call's task sends [`CallEvent`]s to the [`hub::EventHub`] (never waiting); the
//! hub's one task numbers them per platform, writes them to the store's outbox and, once they
//! are committed, tells the platforms' streams ([`service`]), which read them back from the
//! store and send them. So an event is on disk before any client sees it, a client that
//! reconnects (or a gateway that restarted) resumes from the store, and a slow client only
//! delays itself. Commands go the other way: [`service`] checks who may do what and hands
//! them to the call's task through the [`registry::CallRegistry`].
//!
//! | file | holds |
//! |---|---|
//! | `mod.rs` | the domain types the call tasks speak (events, tickets), free of gRPC |
//! | `hub.rs` | per-platform sequences, the outbox writes, the commit announcements |
//! | `registry.rs` | the calls in progress: their command queues and what the platforms may see of them |
//! | `convert.rs` | domain types <-> protobuf |
//! | `service.rs` | the tonic service: streams, authentication, commands, unary calls |

pub mod convert;
pub mod hub;
pub mod registry;
pub mod service;
pub mod tail;

use std::collections::BTreeMap;

/// The generated protobuf types and the tonic service and client.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("hotline.workorder.v1");

    /// The encoded descriptors of `proto/workorder.proto`, for gRPC server reflection.
    pub const DESCRIPTOR: &[u8] = tonic::include_file_descriptor_set!("workorder_descriptor");
}

/// The 12345 hotline's classes of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Category {
    #[default]
    Unspecified,
    /// Immediate.
    A,
    /// Within 5 working days.
    B,
    /// Important, needs a plan.
    C,
    /// Urgent: life or property at risk.
    D,
}

/// A work order (工单) attached to a call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ticket {
    pub number: String,
    pub category: Category,
    pub summary: String,
    pub address: String,
    /// Unix milliseconds; 0 for none.
    pub deadline: i64,
    pub fields: BTreeMap<String, String>,
}

/// A platform's answer on a linkage.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reply {
    pub linkage_id: String,
    pub incident_number: String,
    pub disposition: String,
    pub fields: BTreeMap<String, String>,
}

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallEvent {
    pub platforms: Vec<String>,
    pub kind: EventKind,
    /// Unix milliseconds.
    pub time: i64,
    pub call_id: String,
    pub linkage_id: Option<String>,
    pub citizen_number: String,
    pub called_number: String,
    pub a: LegInfo,
    pub b: Option<LegInfo>,
    pub agent: Option<LegInfo>,
    pub target: Option<LegInfo>,
    pub sip_status: u16,
    pub ticket: Option<Ticket>,
    pub reply: Option<Reply>,
    pub party: Option<PartyInfo>,
    pub hotkey: Option<String>,
    pub ended_by: Option<String>,
    pub reason: Option<String>,
}

impl CallEvent {
    /// An event of `kind` about a call, with nothing optional set.
    pub fn new(kind: EventKind, call_id: &str, time: i64) -> CallEvent {
        CallEvent {
            platforms: Vec::new(),
            kind,
            time,
            call_id: call_id.to_string(),
            linkage_id: None,
            citizen_number: String::new(),
            called_number: String::new(),
            a: LegInfo::default(),
            b: None,
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
