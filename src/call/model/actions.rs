//! What the call model is given and what it hands back: its settings, the call it starts from,
//! the actions for its driver, and the records' vocabulary (outcome, linkage, conference).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::call::directory::{DialogId, Directory, PeerDialog};
use crate::call::hotkey::Hotkey;
use crate::call::hotkey::HotkeyAction;
use crate::call::transfer::Trigger;
use crate::ids::IdGenerator;
use crate::media::{MediaCommand, Party};
use crate::routing::{Peer, Router};
use crate::sip::message::{Request, Response};
use crate::sip::sdp::MediaPolicy;
use crate::sip::session_timer::SessionTimerSettings;
use crate::sip::target::{Flow, InterfaceId, LocalAddresses, Target};
use crate::sip::transaction::{DialogKey, ServerTransactionId};

/// Methods the gateway accepts inside a dialog (sent in Allow, §20.5).
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE, REFER";

/// Settings every call shares.
#[derive(Debug, Clone)]
pub struct CallSettings {
    /// Our SIP address on each interface, in Via and Contact (with the TLS port over TLS).
    pub local: LocalAddresses,
    pub policy: MediaPolicy,
    pub peer_response_timeout: Duration,
    pub ring_timeout: Duration,
    /// How long to wait for BYE/CANCEL answers before giving the call up (64*T1).
    pub cleanup_timeout: Duration,
    /// Server/User-Agent value; None sends none.
    pub user_agent: Option<String>,
    /// Transfer targets are routed with the same table as new calls.
    pub router: Arc<Router>,
    /// A transfer target ringing this long is given up (408).
    pub transfer_ring_timeout: Duration,
    /// Play a transfer target's early media (183 with SDP) to the citizen.
    pub transfer_early_media: bool,
    /// `[[hotkey]]`s, matched on agents' legs (leg B when its peer belongs to a platform).
    pub hotkeys: Arc<[Hotkey]>,
    pub hotkey_inter_digit: Duration,
    /// Bridged calls' dialogs, to resolve the `Replaces` of an attended transfer.
    pub directory: Arc<Directory>,
    /// Most parties in one conference, legs A and B included.
    pub conference_max_parties: usize,
    /// The caller leaving a conference ends it for everybody.
    pub conference_ends_with_caller: bool,
    /// RFC 4028 session timers on every answered leg (None: off).
    pub session_timers: Option<SessionTimerSettings>,
    /// `[announcements] transfer`: played to a citizen waiting for a transfer target with no
    /// agent left (None: the ringback tone).
    pub transfer_announcement: Option<crate::media::prompt::Prompt>,
    /// `[announcements] no_desk`: played once to a caller whose route has no desk left,
    /// before the failure (None: the failure at once).
    pub no_desk_announcement: Option<crate::media::prompt::Prompt>,
    /// `[announcements] queue`: played to a caller waiting in a route's queue (None: the
    /// ringback tone).
    pub queue_announcement: Option<crate::media::prompt::Prompt>,
    /// `[announcements.whisper]`: what an answering transfer target hears before the citizen.
    pub whispers: super::Whispers,
}

impl CallSettings {
    /// Our address as a peer reached over `target` sees it (the TLS port for TLS).
    pub fn local_for(&self, target: Target) -> SocketAddr {
        self.local.for_target(target)
    }
}

/// Everything the call starts from.
pub struct NewCall {
    pub id: String,
    pub invite: Request,
    pub server: ServerTransactionId,
    pub source: SocketAddr,
    pub flow: Flow,
    pub caller_peer: Arc<Peer>,
    pub number: String,
    pub route: Vec<Arc<Peer>>,
    /// How the caller waits when every peer of `route` turns it away (None: it does not).
    pub queue: Option<crate::routing::QueuePolicy>,
    /// Local RTP addresses of leg A and leg B.
    pub media_a: SocketAddr,
    pub media_b: SocketAddr,
    pub ids: IdGenerator,
}

/// Who ended a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedBy {
    Caller,
    Callee,
    Gateway,
}

impl EndedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            EndedBy::Caller => "caller",
            EndedBy::Callee => "callee",
            EndedBy::Gateway => "gateway",
        }
    }
}

/// How the call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub ended_by: EndedBy,
    pub reason: String,
    /// The final status of call setup: 200 if answered, else what the caller got.
    pub final_status: u16,
    pub answered: bool,
}

/// What the call asks its driver to do.
#[derive(Debug)]
#[must_use]
pub enum Action {
    SendRequest {
        request: Request,
        target: Target,
    },
    SendResponse {
        server: ServerTransactionId,
        response: Response,
    },
    RegisterDialog(DialogKey),
    UnregisterDialog(DialogKey),
    Media(MediaCommand),
    /// Leg B answered (for the call record).
    Answered {
        b_call_id: String,
        b_peer: String,
        /// The peer's interface's name.
        b_interface: String,
    },
    /// Leg B's Call-ID and peer for the current attempt (for the call record).
    Attempt {
        b_call_id: String,
        b_peer: String,
        /// The peer's interface's name.
        b_interface: String,
    },
    /// A transfer attempt changed (for its linkage record and metrics).
    Linkage(LinkageUpdate),
    /// Leg B's peer rings (its first provisional response beyond 100).
    Ringing,
    /// The agent keyed a hotkey.
    Hotkey {
        dtmf: String,
        action: HotkeyAction,
        target: String,
    },
    /// The call needs another media party on `interface`, its peer's network (a conference
    /// guest's port pair, or a transfer target's on another network than the transferor's
    /// leg): answer at once with
    /// [`Call::handle_party_opened`](super::Call::handle_party_opened).
    OpenParty {
        interface: InterfaceId,
    },
    /// The call no longer uses this media party: its ports may go back.
    CloseParty(Party),
    /// A conference changed (for its record and metrics).
    Conference(ConferenceUpdate),
    /// The call bridges these two dialogs now (for attended transfers of other calls).
    Bridged {
        caller_side: DialogId,
        peer_side: PeerDialog,
    },
    /// The call no longer bridges the dialog it entered with [`Action::Bridged`].
    Unbridged(DialogId),
    /// The route's queue took, moved or lost the call.
    Queue(QueueUpdate),
    /// The call is over for both parties: write the record now.
    Ended(Outcome),
    /// Nothing more will happen: drop the call.
    Finished,
}

/// What a conference did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConferenceUpdate {
    /// Three or more parties hear each other now.
    Started,
    /// A party is in the conference (the two legs when it starts, then each guest).
    Joined {
        party: Party,
        peer: String,
        number: String,
    },
    Left {
        party: Party,
    },
    /// Two parties (or fewer) are left: they are relayed again.
    Ended,
}

/// What a route's queue did with the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueUpdate {
    /// Every desk turned the caller away with `status`: it waits. `linkage_id`: the transfer
    /// that waits (None: the call itself).
    Queued {
        status: u16,
        linkage_id: Option<String>,
    },
    /// A desk answered after `waited_ms` (the call's `Answered` follows).
    Answered { waited_ms: u64 },
    /// Offered to a desk of the route again (`to_peer`), `waited_ms` into the wait: a desk
    /// freed a seat, or the retry interval passed.
    Offered { to_peer: String, waited_ms: u64 },
    /// The wait is over, or the line was full (`waited_ms` 0): to the overflow peers,
    /// `to_peer` first.
    Overflowed { to_peer: String, waited_ms: u64 },
    /// The caller hung up while waiting.
    Abandoned { waited_ms: u64 },
    /// The gateway gave up on it (the wait over, no overflow; or the overflow failed).
    GaveUp { waited_ms: u64 },
}

/// Whether a linkage moves the call or adds a party to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkageKind {
    Transfer,
    Conference,
}

impl LinkageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkageKind::Transfer => "transfer",
            LinkageKind::Conference => "conference",
        }
    }
}

/// What happened to a transfer attempt, keyed by its linkage id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkageUpdate {
    /// A transfer was asked for; `to_peer` is the first peer tried.
    Requested {
        linkage_id: String,
        kind: LinkageKind,
        target: String,
        trigger: Trigger,
        from_peer: String,
        from_platform: Option<String>,
        to_peer: String,
        to_platform: Option<String>,
    },
    /// The next peer of the target's route is tried.
    Retried {
        linkage_id: String,
        to_peer: String,
        to_platform: Option<String>,
    },
    Ringing {
        linkage_id: String,
    },
    Answered {
        linkage_id: String,
    },
    Failed {
        linkage_id: String,
        status: u16,
    },
}

/// Why [`Call::transfer`](super::Call::transfer) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("the call is not answered")]
    NotAnswered,
    #[error("a transfer of this call is already under way")]
    InProgress,
    #[error("no route reaches {0}")]
    NoRoute(String),
    /// Every peer of the route is down (its OPTIONS probes go unanswered).
    #[error("every peer of the route to {0} is down")]
    PeersDown(String),
    #[error("a conference is under way")]
    Conference,
    #[error("the conference holds its maximum of {0} parties")]
    ConferenceFull(usize),
}
