//! The B2BUA call: two legs, two independent dialogs, one bridge. Sans-IO.
//!
//! Call order: [`Call::new`] with the caller's INVITE, then feed [`Call::handle_sip`],
//! [`Call::handle_media_inactive`], [`Call::handle_shutdown`] and, when [`Call::poll_timeout`] is
//! due, [`Call::handle_timeout`]; after each, drain [`Call::poll_action`] until `None`. The call
//! never reads a clock or a socket; the task in `call::task` does the I/O.
//!
//! Leg A is the caller's (the carrier's INVITE to us, we are its UAS). Leg B is ours to the
//! route's peers (we are its UAC), tried in order: the next peer on no response within
//! `peer_response_timeout`, on ringing past `ring_timeout`, on 408, 5xx or 6xx (§16.7-style
//! serial forking done by a B2BUA). SDP is answered on each leg by the gateway itself with its
//! own address (media anchored), so re-INVITEs from one side never reach the other.
//!
//! Blind transfer ([`Call::transfer`], reached by REFER, hotkeys and the work-order API alike):
//! the gateway itself calls the target with the citizen's identity, on leg B's media port, while
//! citizen and agent go on talking. When the target answers, leg B is handed over to it (the
//! relay latches the new endpoint; the citizen's stream from us continues with the same SSRC)
//! and the agent's dialog is released; the citizen is never re-INVITEd. When the target fails,
//! nothing changes for the citizen. The agent follows progress through the NOTIFYs of the
//! REFER's implicit subscription (RFC 3515).
//!
//! Either leg may be the transferor: the agent is usually leg B (a citizen called the
//! hotline), but leg A when the agent placed the call (a call-back to a citizen, a 110 operator
//! calling out). The target then takes leg A over, as a dialog the gateway is the UAC of.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::ids::IdGenerator;
use crate::media::srtp::MasterKey;
use crate::media::{Leg, LegMedia, MediaCommand, Party};
use crate::routing::{Peer, Router};
use crate::sip::dialog::Dialog;
use crate::sip::message::{self, Headers, Host, Method, NameAddr, Request, Response, Uri};
use crate::sip::sdp::{
    self, Direction, MediaPolicy, Negotiated, Origin, SessionDescription, SrtpMode, SrtpTerms,
};
use crate::sip::session_timer::SessionTimerSettings;
use crate::sip::transaction::{via_for, DialogKey, ServerTransactionId, SipEvent};
use crate::sip::transport::{Flow, Target};

use super::directory::{DialogId, Directory, PeerDialog};
use super::hotkey::{self, Hotkey, HotkeyMatcher};
use super::transfer::{self, CallerIdentity, Trigger};
use crate::config::HotkeyAction;

/// Methods the gateway accepts inside a dialog (sent in Allow, §20.5).
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE, REFER";

/// Settings every call shares.
#[derive(Debug, Clone)]
pub struct CallSettings {
    /// Address in Via and Contact.
    pub local_sip: SocketAddr,
    /// The TLS port (`sip.tls_listen`), in Via and Contact of what goes over TLS.
    pub local_tls_port: Option<u16>,
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
}

impl CallSettings {
    /// Our address as a peer reached over `target` sees it (the TLS port for TLS).
    pub fn local_for(&self, target: Target) -> SocketAddr {
        match self.local_tls_port {
            Some(port) if target.is_secure() => SocketAddr::new(self.local_sip.ip(), port),
            _ => self.local_sip,
        }
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
    },
    /// Leg B's Call-ID and peer for the current attempt (for the call record).
    Attempt {
        b_call_id: String,
        b_peer: String,
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
    /// The call needs another media party (a conference guest's port pair): answer at once
    /// with [`Call::handle_party_opened`].
    OpenParty,
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

/// Why [`Call::transfer`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("the call is not answered")]
    NotAnswered,
    #[error("a transfer of this call is already under way")]
    InProgress,
    #[error("no route reaches {0}")]
    NoRoute(String),
    #[error("a conference is under way")]
    Conference,
    #[error("the conference holds its maximum of {0} parties")]
    ConferenceFull(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Leg B is being set up.
    Calling,
    Answered,
    /// Both legs are being torn down; waiting for the last answers.
    Ending,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// No response at all from the current peer.
    PeerResponse,
    /// The current peer rings too long.
    Ring,
    /// Give up waiting for answers to our BYE/CANCEL.
    Cleanup,
    /// No response at all from the transfer target's current peer.
    TransferResponse,
    /// The transfer target rings too long.
    TransferRing,
    /// Digits held by the hotkey matcher are due to the other party.
    HotkeyDigits,
    /// Leg A's session refresh, or its expiry (RFC 4028).
    SessionA,
    SessionB,
}

const TIMERS: [Timer; 8] = [
    Timer::SessionA,
    Timer::SessionB,
    Timer::HotkeyDigits,
    Timer::PeerResponse,
    Timer::Ring,
    Timer::Cleanup,
    Timer::TransferResponse,
    Timer::TransferRing,
];

/// How DTMF reached us, so that digits passed on go the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DigitTransport {
    /// SIP INFO with this content type.
    Info(Option<String>),
    /// RFC 4733 telephone-events in RTP.
    Rtp,
}

/// What differs between the INVITEs the gateway places for a call.
struct InviteTo<'a> {
    peer: &'a Peer,
    target: Target,
    branch: &'a str,
    number: &'a str,
    call_id: &'a str,
    tag: &'a str,
    offer: &'a SessionDescription,
    /// Who the call is placed for: the caller, or a transfer's transferee.
    identity: &'a CallerIdentity,
    /// Assert the number in P-Asserted-Identity when the caller sent none.
    assert: bool,
}

/// One INVITE towards a peer.
struct Attempt {
    peer_index: usize,
    invite: Request,
    branch: String,
    target: Target,
    provisional: bool,
    cancel_sent: bool,
    /// Set when we gave up on this attempt (ring timeout): its failure counts as 408.
    timed_out: bool,
    /// A final response (or a timeout) ended this INVITE transaction.
    settled: bool,
    /// A 2xx that came after we gave the attempt up was answered with BYE.
    released: bool,
    /// This INVITE is the retry after a 422 (RFC 4028 §7.3): no second one.
    session_retried: bool,
}

/// Attempts given up on that a call keeps for their late answers, beyond those still awaited.
const MAX_STALE: usize = 8;

/// Keeps an attempt given up on, for its late answers: a 2xx must still be ACKed and BYEd.
/// Attempts whose transaction is over (a final answer came) go first when more than
/// [`MAX_STALE`] are kept, so a call transferred again and again does not keep every INVITE it
/// ever sent; one still awaited (`abandoned`) is never dropped.
fn retire(stale: &mut Vec<Attempt>, abandoned: &HashSet<String>, attempt: Attempt) {
    stale.push(attempt);
    if stale.len() <= MAX_STALE {
        return;
    }
    stale.retain(|a| !a.settled || abandoned.contains(&a.branch));
    while stale.len() > MAX_STALE {
        let Some(position) = stale.iter().position(|a| !abandoned.contains(&a.branch)) else {
            break;
        };
        stale.remove(position);
    }
}

/// A blind transfer under way: our INVITE to the target, while citizen and agent still talk.
struct Transfer {
    /// The transferor's leg, which the target takes over; the other leg stays.
    from: Leg,
    linkage_id: String,
    number: String,
    route: Vec<Arc<Peer>>,
    /// The INVITE to `route[attempt.peer_index]`.
    attempt: Attempt,
    call_id: String,
    tag: String,
    origin: Origin,
    offer: SessionDescription,
    /// CSeq of the REFER whose implicit subscription gets our NOTIFYs; None for hotkeys and
    /// the API, or once the agent has left.
    refer_sequence: Option<u32>,
    referred_by: Option<String>,
    /// The current peer sent 180/183.
    ringing: bool,
    /// Attended transfer: the target's dialog (with the agent's consultation call) that our
    /// INVITE replaces (RFC 3891).
    replaces: Option<DialogId>,
    /// The citizen hears the target's early media (leg B's port took it over before answer).
    early_media: bool,
}

/// What a REFER adds to a transfer.
struct Refer {
    /// CSeq of the REFER: its implicit subscription's id (RFC 3515 §2.4.6).
    sequence: u32,
    /// RFC 3892: passed on to the target.
    referred_by: Option<String>,
    /// Attended transfer: the consultation call's dialog at the target, and its peer.
    consultation: Option<(DialogId, Arc<Peer>)>,
}

impl Attempt {
    /// An INVITE just sent to the route's `peer_index`-th peer.
    fn new(peer_index: usize, invite: Request, branch: String, target: Target) -> Attempt {
        Attempt {
            peer_index,
            invite,
            branch,
            target,
            provisional: false,
            cancel_sent: false,
            timed_out: false,
            settled: false,
            released: false,
            session_retried: false,
        }
    }
}

/// A conference guest (三方通话): a desk the gateway invited into the call beside legs A and B,
/// on a port pair of its own. Joined once it answered (its dialog is set).
struct Guest {
    /// The agent's leg that asked for it; the guest is shown the other leg's identity.
    from: Leg,
    linkage_id: String,
    number: String,
    route: Vec<Arc<Peer>>,
    /// Set when the task gave the guest its port pair.
    party: Option<Party>,
    media: Option<SocketAddr>,
    /// The INVITE to `route[attempt.peer_index]`, once sent.
    attempt: Option<Attempt>,
    call_id: String,
    tag: String,
    origin: Origin,
    offer: Option<SessionDescription>,
    local_sdp: Option<String>,
    dialog: Option<Dialog>,
    endpoint: Option<LegMedia>,
    ringing: bool,
}

impl Guest {
    fn peer(&self) -> Option<&Arc<Peer>> {
        self.attempt
            .as_ref()
            .and_then(|a| self.route.get(a.peer_index))
    }

    fn target(&self) -> Option<Target> {
        self.attempt.as_ref().map(|a| a.target)
    }

    fn key(&self) -> DialogKey {
        DialogKey {
            call_id: self.call_id.clone(),
            local_tag: self.tag.clone(),
        }
    }
}

struct LegA {
    invite: Request,
    server: ServerTransactionId,
    target: Target,
    /// Call-ID and our tag of the leg's dialog: the caller's INVITE's, or our INVITE's once a
    /// transfer target took the leg over.
    call_id: String,
    tag: String,
    dialog: Option<Dialog>,
    /// The party's peer: the caller's, then the transfer target's.
    peer: Arc<Peer>,
    /// Who the party is, as the other leg's transfer targets are shown.
    identity: CallerIdentity,
    /// Our INVITE that made the dialog when a transfer target took the leg over: a retransmitted
    /// 2xx is acknowledged again (§13.2.2.4).
    uac_invite: Option<Attempt>,
    /// The party's media as last negotiated.
    endpoint: Option<LegMedia>,
    /// Which of the relay's parties this leg is (a conference guest's once it took the leg).
    party: Party,
    origin: Origin,
    /// The SDP we send this leg (answer to its offer, or our offer if it sent none).
    local_sdp: Option<String>,
    /// Our offer when the INVITE had no SDP (answer expected in the ACK).
    pending_offer: Option<SessionDescription>,
    media: SocketAddr,
    /// A final response has gone to the caller's INVITE.
    finalized: bool,
}

struct LegB {
    dialog: Option<Dialog>,
    /// Who the party is: known by the number it was reached at.
    identity: CallerIdentity,
    /// The party's media as last negotiated (the agent's, to go back to after a transfer
    /// target's early media).
    endpoint: Option<LegMedia>,
    party: Party,
    origin: Origin,
    offer: SessionDescription,
    local_sdp: Option<String>,
    media: SocketAddr,
    call_id: String,
    tag: String,
    answered_invite_sequence: u32,
}

/// The call state machine.
pub struct Call {
    id: String,
    settings: Arc<CallSettings>,
    ids: IdGenerator,
    state: State,
    caller_peer: Arc<Peer>,
    number: String,
    route: Vec<Arc<Peer>>,
    a: LegA,
    b: LegB,
    attempt: Option<Attempt>,
    /// Earlier attempts whose transactions may still answer (a late 2xx must be ACKed and BYEd).
    stale: Vec<Attempt>,
    cancelled: bool,
    /// Branches of our BYE/CANCEL transactions still awaiting a final response.
    pending: HashSet<String>,
    timers: [Option<Instant>; TIMERS.len()],
    last_failure: (u16, String),
    transfer: Option<Transfer>,
    /// Agents' dialogs handed over to a transfer target: their late BYE gets a 200.
    released: Vec<DialogKey>,
    /// The citizen was sent back to the number first called once already.
    fell_back: bool,
    /// Branches of transfer INVITEs given up when the call ended: a late answer must still be
    /// ACKed and released (or a late ringing cancelled) before the call finishes.
    abandoned: HashSet<String>,
    /// Leg and branch of the NOTIFY that told the agent its transfer failed, until the agent
    /// answers it: a BYE from the agent before then crossed the failure (it meant to leave).
    failure_notify: Option<(Leg, String)>,
    /// Our leg-A dialog as entered in the directory of bridged calls.
    bridged: Option<DialogId>,
    /// The leg that hears our ringback (the citizen, waiting for a target with no agent left).
    ringback: Option<Leg>,
    /// Hotkey matching of the agent's DTMF (leg B), made on the first digit.
    hotkeys: Option<HotkeyMatcher>,
    /// How the agent's last digit came: held digits are passed on the same way.
    digit_transport: DigitTransport,
    /// Conference guests: joined ones (answered), and at most one still being invited.
    guests: Vec<Guest>,
    /// Three or more parties are mixed.
    conferencing: bool,
    outcome: Option<Outcome>,
    /// Set when the cleanup timer must be armed at the next clock reading.
    pending_cleanup: bool,
    /// Legs A and B's session timers (RFC 4028).
    sessions: [session::LegSession; 2],
    /// The party whose re-INVITE without SDP we answered with an offer: its ACK answers it.
    offer_in_2xx: Option<Party>,
    actions: VecDeque<Action>,
}

impl Call {
    /// Starts a call from the caller's INVITE: answers its SDP offer (or fails with 488) and
    /// sends the first INVITE of leg B.
    pub fn new(now: Instant, settings: Arc<CallSettings>, new: NewCall) -> Call {
        let mut ids = new.ids;
        let a_tag = ids.tag();
        let b_tag = ids.tag();
        let local_ip = settings.local_sip.ip();
        let a_target = new.flow.response_target(new.source);
        let a_origin = Origin::new(new.media_a.ip(), ids.next_u64() >> 12);
        let b_origin = Origin::new(new.media_b.ip(), ids.next_u64() >> 12);
        let offer = sdp::offer(
            &settings.policy,
            new.media_b,
            &b_origin,
            Direction::SendRecv,
        );
        let b_call_id = ids.call_id(&local_ip.to_string());
        let mut call = Call {
            id: new.id,
            settings,
            ids,
            state: State::Calling,
            caller_peer: Arc::clone(&new.caller_peer),
            number: new.number.clone(),
            route: new.route,
            a: LegA {
                call_id: new.invite.call_id().to_string(),
                identity: CallerIdentity::of(&new.invite),
                invite: new.invite,
                server: new.server,
                target: a_target,
                tag: a_tag,
                dialog: None,
                peer: new.caller_peer,
                uac_invite: None,
                endpoint: None,
                party: Party::A,
                origin: a_origin,
                local_sdp: None,
                pending_offer: None,
                media: new.media_a,
                finalized: false,
            },
            b: LegB {
                dialog: None,
                identity: CallerIdentity::reached_at(&new.number),
                endpoint: None,
                party: Party::B,
                origin: b_origin,
                offer,
                local_sdp: None,
                media: new.media_b,
                call_id: b_call_id,
                tag: b_tag,
                answered_invite_sequence: 1,
            },
            attempt: None,
            stale: Vec::new(),
            cancelled: false,
            pending: HashSet::new(),
            timers: [None; TIMERS.len()],
            last_failure: (480, "Temporarily Unavailable".into()),
            transfer: None,
            released: Vec::new(),
            fell_back: false,
            abandoned: HashSet::new(),
            failure_notify: None,
            bridged: None,
            ringback: None,
            hotkeys: None,
            digit_transport: DigitTransport::Info(None),
            guests: Vec::new(),
            conferencing: false,
            outcome: None,
            pending_cleanup: false,
            sessions: Default::default(),
            offer_in_2xx: None,
            actions: VecDeque::new(),
        };
        call.start(now);
        call
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn is_answered(&self) -> bool {
        self.state == State::Answered
    }

    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.iter().flatten().min().copied()
    }

    fn timer(&self, timer: Timer) -> Option<Instant> {
        TIMERS
            .iter()
            .position(|t| *t == timer)
            .and_then(|index| self.timers[index])
    }

    fn arm(&mut self, timer: Timer, at: Option<Instant>) {
        if let Some(index) = TIMERS.iter().position(|t| *t == timer) {
            self.timers[index] = at;
        }
    }

    fn start(&mut self, now: Instant) {
        let a_key = DialogKey {
            call_id: self.a.call_id.clone(),
            local_tag: self.a.tag.clone(),
        };
        self.actions.push_back(Action::RegisterDialog(a_key));
        let offer = self.a.invite.sdp().map(sdp::parse);
        match offer {
            Some(Ok(offer)) => {
                let terms = SrtpTerms {
                    mode: self.a.peer.srtp,
                    key: None,
                };
                match sdp::answer(
                    &offer,
                    &self.settings.policy,
                    self.a.media,
                    &self.a.origin,
                    terms,
                ) {
                    Ok((answer, negotiated)) => {
                        self.a.local_sdp = Some(answer.to_string());
                        self.configure(Leg::A, &negotiated);
                    }
                    Err(error) => {
                        tracing::info!(call = %self.id, %error, "caller's offer not acceptable");
                        self.fail_caller(
                            488,
                            "Not Acceptable Here",
                            EndedBy::Gateway,
                            "no acceptable media",
                        );
                        return;
                    }
                }
            }
            Some(Err(error)) => {
                tracing::info!(call = %self.id, %error, "caller's SDP unparsable");
                self.fail_caller(400, "Bad SDP", EndedBy::Gateway, "malformed SDP");
                return;
            }
            None => {
                // Delayed offer (§13.2.1): we offer in the 200, the caller answers in the ACK.
                let mut offer = sdp::offer(
                    &self.settings.policy,
                    self.a.media,
                    &self.a.origin,
                    Direction::SendRecv,
                );
                sdp::set_offer_key(&mut offer, offer_key(&self.a.peer));
                self.a.local_sdp = Some(offer.to_string());
                self.a.pending_offer = Some(offer);
            }
        }
        let max_forwards = self.a.invite.max_forwards();
        if max_forwards == 0 {
            self.fail_caller(
                483,
                "Too Many Hops",
                EndedBy::Gateway,
                "max-forwards exhausted",
            );
            return;
        }
        if self.refuse_short_session() {
            return;
        }
        self.try_peer(now, 0);
    }

    fn configure(&mut self, leg: Leg, negotiated: &Negotiated) {
        let media = leg_media(negotiated);
        match leg {
            Leg::A => self.a.endpoint = Some(media),
            Leg::B => self.b.endpoint = Some(media),
        }
        self.actions
            .push_back(Action::Media(MediaCommand::Configure(
                self.party(leg),
                media,
            )));
    }

    /// Sends the INVITE of leg B to the route's `index`-th peer.
    fn try_peer(&mut self, now: Instant, index: usize) {
        let Some(peer) = self.route.get(index).cloned() else {
            let (status, reason) = self.last_failure.clone();
            self.fail_caller(status, &reason, EndedBy::Callee, "all peers failed");
            return;
        };
        if index > 0 {
            // A new attempt is a new dialog: fresh Call-ID and tag.
            self.b.call_id = self.ids.call_id(&self.settings.local_sip.ip().to_string());
            self.b.tag = self.ids.tag();
        }
        let target = Target::for_peer(&peer);
        let branch = self.ids.branch();
        sdp::set_offer_key(&mut self.b.offer, offer_key(&peer));
        let invite = self.build_b_invite(&peer, target, &branch);
        self.actions.push_back(Action::RegisterDialog(DialogKey {
            call_id: self.b.call_id.clone(),
            local_tag: self.b.tag.clone(),
        }));
        self.actions.push_back(Action::Attempt {
            b_call_id: self.b.call_id.clone(),
            b_peer: peer.name.clone(),
        });
        self.actions.push_back(Action::SendRequest {
            request: invite.clone(),
            target,
        });
        if let Some(previous) = self.attempt.take() {
            retire(&mut self.stale, &self.abandoned, previous);
        }
        self.attempt = Some(Attempt::new(index, invite, branch, target));
        self.arm(
            Timer::PeerResponse,
            Some(now + self.settings.peer_response_timeout),
        );
        self.arm(Timer::Ring, None);
    }

    fn contact(&self, target: Target) -> String {
        let local = self.settings.local_for(target);
        let host = Host::Ip(local.ip());
        format!("<sip:gw@{host}:{}{}>", local.port(), target.uri_transport())
    }

    fn build_b_invite(&mut self, peer: &Peer, target: Target, branch: &str) -> Request {
        let mut invite = self.build_invite(&InviteTo {
            peer,
            target,
            branch,
            number: &self.number,
            call_id: &self.b.call_id,
            tag: &self.b.tag,
            offer: &self.b.offer,
            identity: &self.a.identity,
            assert: false,
        });
        self.offer_session_timer(&mut invite.headers);
        invite
    }

    /// An INVITE to `to.peer` on behalf of `to.identity`, as RFC 3325 lets this peer see it,
    /// to `sip:<number>@<peer address>` (the contract), with our SDP offer.
    fn build_invite(&self, to: &InviteTo<'_>) -> Request {
        let local = Host::Ip(self.settings.local_sip.ip());
        let mut headers = Headers::new();
        headers.push(
            "Via",
            via_for(self.settings.local_for(to.target), to.target, to.branch),
        );
        headers.push(
            "Max-Forwards",
            self.a.invite.max_forwards().saturating_sub(1).to_string(),
        );
        let mut identity = Headers::new();
        let from = to
            .identity
            .present(to.peer, local, to.assert, &mut identity)
            .with_tag(to.tag);
        let uri = Uri::sip(
            Some(to.number),
            Host::Ip(to.peer.address.ip()),
            Some(to.peer.address.port()),
        );
        headers.push("From", from.to_string());
        headers.push("To", NameAddr::new(uri.clone()).to_string());
        headers.push("Call-ID", to.call_id);
        headers.push("CSeq", "1 INVITE");
        headers.push("Contact", self.contact(to.target));
        for header in identity.iter() {
            headers.push(&header.name, header.value.clone());
        }
        headers.push("Allow", ALLOW);
        if let Some(agent) = &self.settings.user_agent {
            headers.push("User-Agent", agent.clone());
        }
        headers.push("Content-Type", "application/sdp");
        Request {
            method: Method::Invite,
            uri,
            headers,
            body: Bytes::from(to.offer.to_string()),
        }
    }

    /// The INVITE to a transfer target or a conference guest: on behalf of the party across
    /// from the agent's leg `from` (`to.identity`, never the agent's), with the agent's line as
    /// the diverting party (RFC 7044/5806, as the peer reads it) and the linkage id.
    fn third_party_invite(&self, to: &InviteTo<'_>, from: Leg, linkage_id: &str) -> Request {
        let mut invite = self.build_invite(to);
        transfer::add_diversion(
            &mut invite.headers,
            to.peer,
            &self.identity(from).number,
            Host::Ip(self.settings.local_sip.ip()),
            &invite.uri,
        );
        invite
            .headers
            .push(transfer::LINKAGE_HEADER, linkage_id.to_string());
        invite
    }

    /// A response to the caller's INVITE.
    fn respond_a(&mut self, status: u16, reason: &str, with_sdp: bool) {
        let response = self.a_response(status, reason, with_sdp);
        self.actions.push_back(Action::SendResponse {
            server: self.a.server,
            response,
        });
    }

    fn a_response(&mut self, status: u16, reason: &str, with_sdp: bool) -> Response {
        let mut response = Response::for_request(&self.a.invite, status, Some(&self.a.tag));
        response.reason = reason.to_string();
        if (101..300).contains(&status) {
            response
                .headers
                .push("Contact", self.contact(self.a.target));
        }
        if status >= 200 {
            self.a.finalized = true;
        }
        if (200..300).contains(&status) {
            response.headers.push("Allow", ALLOW);
        }
        if let Some(agent) = &self.settings.user_agent {
            response.headers.push("Server", agent.clone());
        }
        if with_sdp {
            if let Some(sdp) = &self.a.local_sdp {
                response.headers.push("Content-Type", "application/sdp");
                response.body = Bytes::from(sdp.clone());
            }
        }
        response
    }

    /// The call fails before answer: final response to the caller, record, finish when leg B
    /// is settled.
    fn fail_caller(&mut self, status: u16, reason: &str, ended_by: EndedBy, why: &str) {
        if !self.a.finalized {
            self.respond_a(status, reason, false);
        }
        self.end(ended_by, why, status, false);
    }

    fn end(&mut self, ended_by: EndedBy, reason: &str, final_status: u16, answered: bool) {
        if self.outcome.is_some() {
            return;
        }
        let outcome = Outcome {
            ended_by,
            reason: reason.to_string(),
            final_status,
            answered,
        };
        self.outcome = Some(outcome.clone());
        self.actions.push_back(Action::Ended(outcome));
        self.state = State::Ending;
        self.arm(Timer::PeerResponse, None);
        self.arm(Timer::Ring, None);
        self.maybe_finish();
    }

    /// In `Ending`, finishes once leg B's INVITE has settled and our BYE/CANCELs are answered;
    /// until then the cleanup timer bounds the wait.
    fn maybe_finish(&mut self) {
        if self.state != State::Ending {
            return;
        }
        let waiting = !self.pending.is_empty()
            || !self.abandoned.is_empty()
            || self.attempt.as_ref().is_some_and(|a| !a.settled);
        if !waiting {
            self.finish();
        } else if self.timer(Timer::Cleanup).is_none() {
            self.pending_cleanup = true;
        }
    }

    /// Enters (or updates) this call's pair of dialogs in the directory of bridged calls.
    fn announce_bridge(&mut self) {
        let (Some(a), Some(b)) = (self.a.dialog.as_ref(), self.b.dialog.as_ref()) else {
            return;
        };
        let caller_side = DialogId::of(a);
        let peer_side = PeerDialog {
            dialog: DialogId::of(b),
            peer: self.b_peer().map(|p| p.name.clone()).unwrap_or_default(),
        };
        if let Some(previous) = self.bridged.replace(caller_side.clone()) {
            if previous != caller_side {
                // Leg A went to a transfer target: its old dialog is gone.
                self.actions.push_back(Action::Unbridged(previous));
            }
        }
        self.actions.push_back(Action::Bridged {
            caller_side,
            peer_side,
        });
    }

    fn finish(&mut self) {
        self.state = State::Done;
        for guest in std::mem::take(&mut self.guests) {
            self.actions
                .push_back(Action::UnregisterDialog(guest.key()));
        }
        if let Some(caller_side) = self.bridged.take() {
            self.actions.push_back(Action::Unbridged(caller_side));
        }
        self.timers = [None; TIMERS.len()];
        for key in std::mem::take(&mut self.released) {
            self.actions.push_back(Action::UnregisterDialog(key));
        }
        if let Some(transfer) = self.transfer.take() {
            self.actions.push_back(Action::UnregisterDialog(DialogKey {
                call_id: transfer.call_id,
                local_tag: transfer.tag,
            }));
        }
        self.actions.push_back(Action::UnregisterDialog(DialogKey {
            call_id: self.a.call_id.clone(),
            local_tag: self.a.tag.clone(),
        }));
        self.actions.push_back(Action::UnregisterDialog(DialogKey {
            call_id: self.b.call_id.clone(),
            local_tag: self.b.tag.clone(),
        }));
        self.actions.push_back(Action::Finished);
    }

    /// Arms the cleanup timer if an ending call still waits for answers.
    fn arm_cleanup(&mut self, now: Instant) {
        if std::mem::take(&mut self.pending_cleanup) && self.state == State::Ending {
            self.arm(Timer::Cleanup, Some(now + self.settings.cleanup_timeout));
        }
    }

    /// Feeds one event from the endpoint.
    pub fn handle_sip(&mut self, now: Instant, event: SipEvent) {
        if self.state == State::Done {
            return;
        }
        self.dispatch_sip(now, event);
        self.arm_cleanup(now);
    }

    fn dispatch_sip(&mut self, now: Instant, event: SipEvent) {
        match event {
            SipEvent::Request {
                server, request, ..
            } => self.handle_request(now, server, request),
            SipEvent::Ack { request } => self.handle_ack(request),
            SipEvent::Response { branch, response } => self.handle_response(now, &branch, response),
            SipEvent::Timeout { branch, method } => {
                self.handle_transaction_timeout(now, &branch, method)
            }
            SipEvent::Cancelled { server } => {
                if server == self.a.server {
                    self.handle_cancel(now);
                }
            }
            SipEvent::AckTimeout { server } => {
                if server == self.a.server && self.state == State::Answered {
                    self.hang_up(None, EndedBy::Gateway, "no ACK from caller");
                }
            }
        }
    }

    fn handle_request(&mut self, now: Instant, server: ServerTransactionId, request: Request) {
        if server == self.a.server && request.method == Method::Invite && self.a.dialog.is_none() {
            // The initial INVITE, handed over by the dispatcher: already processed in new().
            return;
        }
        let to_tag = request.to().and_then(|t| t.tag().map(str::to_string));
        if self.released.iter().any(|key| {
            key.call_id == request.call_id() && to_tag.as_deref() == Some(key.local_tag.as_str())
        }) {
            // An agent whose leg went to a transfer target hangs up (or asks more) late.
            let status = if request.method == Method::Bye {
                200
            } else {
                481
            };
            let response = Response::for_request(&request, status, None);
            self.actions
                .push_back(Action::SendResponse { server, response });
            return;
        }
        let leg = if self.a.dialog.as_ref().is_some_and(|d| d.matches(&request))
            || (request.call_id() == self.a.call_id
                && to_tag.as_deref() == Some(self.a.tag.as_str()))
        {
            Leg::A
        } else if self.b.dialog.as_ref().is_some_and(|d| d.matches(&request))
            || (request.call_id() == self.b.call_id
                && to_tag.as_deref() == Some(self.b.tag.as_str()))
        {
            Leg::B
        } else if let Some(index) = self.guest_of(&request) {
            self.handle_guest_request(now, index, server, &request);
            return;
        } else {
            // Another dialog of ours (a transfer target's early dialog): nothing to act on.
            let response = Response::for_request(&request, 481, None);
            self.actions
                .push_back(Action::SendResponse { server, response });
            return;
        };
        let in_order = match leg {
            Leg::A => self
                .a
                .dialog
                .as_mut()
                .map(|d| d.accept_remote_sequence(&request)),
            Leg::B => self
                .b
                .dialog
                .as_mut()
                .map(|d| d.accept_remote_sequence(&request)),
        };
        let respond = |call: &mut Call, status: u16| {
            let mut response = Response::for_request(&request, status, None);
            if status == 405 {
                response.headers.push("Allow", ALLOW);
            }
            call.actions
                .push_back(Action::SendResponse { server, response });
        };
        match in_order {
            None => {
                // Early dialog: BYE before answer from the caller ends the attempt (§15).
                if request.method == Method::Bye && leg == Leg::A && self.state == State::Calling {
                    respond(self, 200);
                    self.handle_cancel(now);
                } else {
                    respond(self, 481);
                }
                return;
            }
            Some(false) => {
                respond(self, 500);
                return;
            }
            Some(true) => {}
        }
        match request.method {
            Method::Bye if self.failure_notify.as_ref().is_some_and(|(l, _)| *l == leg) => {
                // The agent left before it learnt that its transfer failed (blind-transfer
                // phones hang up right after the 202): keep the citizen, as if it had left
                // while the target rang.
                respond(self, 200);
                *self.dialog_mut(leg) = None;
                self.failure_notify = None;
                self.ringback(Some(leg.other()));
                self.fall_back(now, leg);
            }
            Method::Bye if self.transfer.as_ref().is_some_and(|t| t.from == leg) => {
                // The agent leaves while the target rings: the citizen waits for the target,
                // hearing ringback.
                respond(self, 200);
                *self.dialog_mut(leg) = None;
                if let Some(transfer) = self.transfer.as_mut() {
                    transfer.refer_sequence = None;
                }
                self.ringback(Some(leg.other()));
            }
            Method::Bye if leg == Leg::B && self.inviting_guest() && !self.has_guests() => {
                // The agent leaves while the guest it invited rings: the citizen waits for it,
                // hearing ringback, as for a transfer.
                respond(self, 200);
                self.b.dialog = None;
                self.actions
                    .push_back(Action::Media(MediaCommand::Leave(self.b.party)));
                self.ringback(Some(Leg::A));
            }
            Method::Bye
                if self.has_guests()
                    && (leg == Leg::B || !self.settings.conference_ends_with_caller) =>
            {
                // A party leaves a conference: the others stay (a guest takes its leg).
                respond(self, 200);
                self.leg_left(leg);
            }
            Method::Refer => self.handle_refer(now, leg, server, &request),
            Method::Bye => {
                respond(self, 200);
                let ended_by = if leg == Leg::A {
                    EndedBy::Caller
                } else {
                    EndedBy::Callee
                };
                self.hang_up(Some(leg), ended_by, "normal clearing");
            }
            Method::Invite | Method::Update => self.handle_offer(now, leg, server, &request),
            Method::Info => {
                respond(self, 200);
                self.handle_info(now, leg, &request);
            }
            Method::Options => respond(self, 200),
            _ => respond(self, 405),
        }
    }

    /// A re-INVITE or UPDATE: the gateway answers it itself (the media is anchored here).
    fn handle_offer(
        &mut self,
        now: Instant,
        leg: Leg,
        server: ServerTransactionId,
        request: &Request,
    ) {
        if request.method == Method::Invite && self.refresh_invite_pending(leg) {
            // §14.2: our own re-INVITE is under way on this dialog.
            let response = Response::for_request(request, 491, None);
            self.actions
                .push_back(Action::SendResponse { server, response });
            return;
        }
        let session = match self.peer_refresh(now, leg, request) {
            Ok(timer) => timer,
            Err(min_se) => {
                // RFC 4028 §9: too short an interval for us.
                let mut response = Response::for_request(request, 422, None);
                response.reason = "Session Interval Too Small".into();
                response
                    .headers
                    .push("Min-SE", min_se.as_secs().to_string());
                self.actions
                    .push_back(Action::SendResponse { server, response });
                return;
            }
        };
        let target = self.leg_target(leg);
        let mode = self.leg_peer(leg).map_or(SrtpMode::Optional, |p| p.srtp);
        let policy = &self.settings.policy;
        let (media, origin, local_sdp) = match leg {
            Leg::A => (self.a.media, &mut self.a.origin, &mut self.a.local_sdp),
            Leg::B => (self.b.media, &mut self.b.origin, &mut self.b.local_sdp),
        };
        let answered = answer_reoffer(policy, media, request, origin, local_sdp, mode);
        let dialog = match leg {
            Leg::A => self.a.dialog.as_mut(),
            Leg::B => self.b.dialog.as_mut(),
        };
        if answered.is_ok() {
            if let Some(d) = dialog {
                d.refresh_target(request.contact());
            }
        }
        // Only a 2xx makes it a refresh (RFC 4028 §10).
        let session = if answered.is_ok() {
            self.peer_refreshed(leg, session)
        } else {
            Headers::new()
        };
        let party = self.party(leg);
        self.respond_reoffer(party, server, request, target, answered, session);
    }

    /// Answers a re-INVITE or UPDATE with what [`answer_reoffer`] made of it, and gives the
    /// relay `party`'s new media.
    fn respond_reoffer(
        &mut self,
        party: Party,
        server: ServerTransactionId,
        request: &Request,
        target: Target,
        answered: Result<(Option<String>, Option<Negotiated>), u16>,
        extra: Headers,
    ) {
        let (body, negotiated) = match answered {
            Ok(answer) => answer,
            Err(status) => {
                let response = Response::for_request(request, status, None);
                self.actions
                    .push_back(Action::SendResponse { server, response });
                return;
            }
        };
        if let Some(negotiated) = negotiated {
            let media = leg_media(&negotiated);
            if party == self.a.party {
                self.a.endpoint = Some(media);
            } else if party == self.b.party {
                self.b.endpoint = Some(media);
            } else if let Some(guest) = self.guests.iter_mut().find(|g| g.party == Some(party)) {
                guest.endpoint = Some(media);
            }
            self.actions
                .push_back(Action::Media(MediaCommand::Configure(party, media)));
        }
        let mut response = Response::for_request(request, 200, None);
        response.headers.push("Contact", self.contact(target));
        response.headers.push("Allow", ALLOW);
        for header in extra.iter() {
            response.headers.push(&header.name, header.value.clone());
        }
        if let Some(body) = body {
            // Legs A and B (a guest's answer in its ACK is not read).
            if request.method == Method::Invite
                && request.sdp().is_none()
                && (party == self.a.party || party == self.b.party)
            {
                self.offer_in_2xx = Some(party);
            }
            response.headers.push("Content-Type", "application/sdp");
            response.body = Bytes::from(body);
        }
        self.actions
            .push_back(Action::SendResponse { server, response });
    }

    fn handle_ack(&mut self, request: Request) {
        // A delayed-offer caller answers our offer in the ACK (§13.2.1); an answer we cannot
        // use (none, or plain RTP to our SRTP offer) ends the call with BYE.
        let from_caller = request.call_id() == self.a.call_id
            && request
                .to()
                .and_then(|t| t.tag().map(str::to_string))
                .as_deref()
                == Some(self.a.tag.as_str());
        if let Some(offer) = self.a.pending_offer.take_if(|_| from_caller) {
            let negotiated = match request.sdp().map(sdp::parse) {
                Some(Ok(answer)) => sdp::accept_answer(&offer, &answer, &self.settings.policy)
                    .map_err(|e| e.to_string()),
                Some(Err(error)) => Err(error.to_string()),
                None => Err("no answer in the ACK".into()),
            };
            match negotiated {
                Ok(negotiated) => self.configure(Leg::A, &negotiated),
                Err(error) => {
                    tracing::info!(call = %self.id, %error, "caller's answer not acceptable");
                    self.hang_up(None, EndedBy::Gateway, "caller answer not acceptable");
                }
            }
            return;
        }
        // The ACK answering the offer our 2xx to a re-INVITE without SDP made.
        let Some(party) = self.offer_in_2xx else {
            return;
        };
        let leg = if party == self.a.party && request.call_id() == self.a.call_id {
            Leg::A
        } else if party == self.b.party && request.call_id() == self.b.call_id {
            Leg::B
        } else {
            return;
        };
        self.offer_in_2xx = None;
        if let Some(answer) = request.sdp() {
            self.take_answer(leg, answer);
        }
    }

    /// The answer to an offer of ours inside `leg`'s dialog (our SDP again, in a refresh
    /// re-INVITE or a 2xx to a re-INVITE without SDP): the endpoint may have moved or taken a
    /// new SRTP key (RFC 4568 §7.1.4). One we cannot use leaves the media as it was.
    pub(super) fn take_answer(&mut self, leg: Leg, answer: &str) {
        let local = match leg {
            Leg::A => self.a.local_sdp.as_deref(),
            Leg::B => self.b.local_sdp.as_deref(),
        };
        let (Some(Ok(ours)), Ok(answer)) = (local.map(sdp::parse), sdp::parse(answer)) else {
            return;
        };
        let Ok(negotiated) = sdp::accept_answer(&ours, &answer, &self.settings.policy) else {
            return;
        };
        let current = match leg {
            Leg::A => self.a.endpoint,
            Leg::B => self.b.endpoint,
        };
        if current != Some(leg_media(&negotiated)) {
            self.configure(leg, &negotiated);
        }
    }

    fn handle_response(&mut self, now: Instant, branch: &str, response: Response) {
        if self.handle_refresh_response(now, branch, &response) {
            return;
        }
        let method = response.cseq().map(|c| c.method);
        if method != Some(Method::Invite) {
            if response.status >= 200 && self.is_failure_notify(branch) {
                self.failure_notify = None;
            }
            // BYE or CANCEL answers: only the final ones matter.
            if response.status >= 200 && self.pending.remove(branch) {
                self.maybe_finish();
            }
            return;
        }
        if self
            .transfer
            .as_ref()
            .is_some_and(|t| t.attempt.branch == branch)
        {
            self.handle_transfer_response(now, response);
            return;
        }
        if self
            .a
            .uac_invite
            .as_ref()
            .is_some_and(|a| a.branch == branch)
        {
            self.handle_a_answer_again(&response);
            return;
        }
        if self.handle_guest_response(now, branch, &response) {
            return;
        }
        let current = self.attempt.as_ref().is_some_and(|a| a.branch == branch);
        if !current {
            self.handle_stale_response(branch, &response);
            return;
        }
        match response.status {
            100 => {
                self.arm(Timer::PeerResponse, None);
                self.arm(Timer::Ring, Some(now + self.settings.ring_timeout));
            }
            101..=199 => self.handle_provisional(now, response),
            200..=299 => self.handle_answer(now, response),
            422 if self.retry_with_min_se(now, &response) => {}
            // A callee's 422 is about our interval, not the caller's: the caller learns only
            // that the call could not be set up (a 422 to it would need a Min-SE of its own).
            422 => self.handle_failure(now, 500, "Server Internal Error".into()),
            _ => self.handle_failure(now, response.status, response.reason.clone()),
        }
    }

    fn handle_provisional(&mut self, now: Instant, response: Response) {
        let Some(attempt) = self.attempt.as_mut() else {
            return;
        };
        let first = !attempt.provisional;
        attempt.provisional = true;
        self.arm(Timer::PeerResponse, None);
        if first {
            self.arm(Timer::Ring, Some(now + self.settings.ring_timeout));
            if self.state == State::Calling && !self.cancelled {
                self.actions.push_back(Action::Ringing);
            }
        }
        if self.cancelled {
            self.send_cancel();
            return;
        }
        if self.state != State::Calling || self.a.finalized {
            return;
        }
        // Early media: accept the callee's SDP and give the caller ours.
        let mut with_sdp = false;
        if let Some(Ok(answer)) = response.sdp().map(sdp::parse) {
            if let Ok(negotiated) =
                sdp::accept_answer(&self.b.offer, &answer, &self.settings.policy)
            {
                self.configure(Leg::B, &negotiated);
                with_sdp = self.a.pending_offer.is_none();
            }
        }
        let status = if response.status == 183 && !with_sdp {
            180
        } else {
            response.status
        };
        let reason = message::reason_phrase(status).to_string();
        self.respond_a(status, &reason, with_sdp);
    }

    fn handle_answer(&mut self, now: Instant, response: Response) {
        let Some(attempt) = self.attempt.as_ref() else {
            return;
        };
        let invite = attempt.invite.clone();
        let target = attempt.target;
        let Some(dialog) = Dialog::new_uac(&invite, &response) else {
            return;
        };
        let sequence = invite.cseq().map_or(1, |c| c.sequence);
        if let Some(existing_tag) = self.b.dialog.as_ref().map(|d| d.remote_tag().to_string()) {
            // A retransmitted 2xx gets the same ACK again (§13.2.2.4); a 2xx from another fork
            // is acknowledged and released.
            let ack = self.with_via(dialog.ack(sequence), target);
            self.actions.push_back(Action::SendRequest {
                request: ack,
                target,
            });
            if existing_tag != dialog.remote_tag() {
                self.bye_dialog(dialog, target, "forked answer not used");
            }
            return;
        }
        let ack = self.with_via(dialog.ack(sequence), target);
        self.actions.push_back(Action::SendRequest {
            request: ack,
            target,
        });
        if let Some(attempt) = self.attempt.as_mut() {
            attempt.settled = true;
        }
        self.b.dialog = Some(dialog);
        self.b.answered_invite_sequence = sequence;
        self.arm(Timer::PeerResponse, None);
        self.arm(Timer::Ring, None);
        if self.cancelled || self.state != State::Calling {
            // The caller left while the callee answered: release the callee (§15).
            if let Some(dialog) = self.b.dialog.take() {
                self.bye_dialog(dialog, target, "caller cancelled");
            }
            self.maybe_finish();
            return;
        }
        let negotiated = response
            .sdp()
            .map(sdp::parse)
            .and_then(Result::ok)
            .and_then(|answer| {
                sdp::accept_answer(&self.b.offer, &answer, &self.settings.policy).ok()
            });
        let Some(negotiated) = negotiated else {
            // §13.2.1: an unusable answer is acknowledged, then the session ended with BYE.
            if let Some(dialog) = self.b.dialog.take() {
                self.bye_dialog(dialog, target, "unacceptable answer");
            }
            self.fail_caller(
                488,
                "Not Acceptable Here",
                EndedBy::Gateway,
                "callee answer not acceptable",
            );
            return;
        };
        self.configure(Leg::B, &negotiated);
        self.b.local_sdp = Some(self.b.offer.to_string());
        self.start_callee_session(now, Leg::B, &response);
        let peer = self.b_peer().map(|p| p.name.clone()).unwrap_or_default();
        let mut ok = self.a_response(200, "OK", true);
        self.start_caller_session(now, &mut ok);
        self.actions.push_back(Action::SendResponse {
            server: self.a.server,
            response: ok,
        });
        self.a.dialog = Dialog::new_uas(
            &self.a.invite,
            &self.a.tag,
            self.ids.next_u64() as u32 & 0xffff,
        );
        self.state = State::Answered;
        self.actions
            .push_back(Action::Media(MediaCommand::Answered));
        self.detect_agent_digits();
        self.announce_bridge();
        self.actions.push_back(Action::Answered {
            b_call_id: self.b.call_id.clone(),
            b_peer: peer,
        });
    }

    fn handle_failure(&mut self, now: Instant, status: u16, reason: String) {
        let Some(attempt) = self.attempt.as_ref() else {
            return;
        };
        let timed_out = attempt.timed_out;
        let next = attempt.peer_index + 1;
        let (status, reason) = if timed_out {
            (408, "Request Timeout".to_string())
        } else {
            (status, reason)
        };
        self.last_failure = (status, reason.clone());
        if let Some(a) = self.attempt.as_mut() {
            a.settled = true;
        }
        if self.cancelled || self.state != State::Calling {
            self.maybe_finish();
            return;
        }
        let failover = status == 408 || status >= 500;
        if failover && next < self.route.len() {
            tracing::info!(call = %self.id, status, "trying next peer");
            self.try_peer(now, next);
            return;
        }
        let ended_by = if status == 487 {
            EndedBy::Caller
        } else {
            EndedBy::Callee
        };
        self.fail_caller(status, &reason, ended_by, "call setup failed");
    }

    /// A 2xx retransmitted for our INVITE to the transfer target that took leg A over: the same
    /// ACK again (§13.2.2.4); a 2xx from another fork is acknowledged and released.
    fn handle_a_answer_again(&mut self, response: &Response) {
        let Some(attempt) = self.a.uac_invite.as_ref() else {
            return;
        };
        if !(200..300).contains(&response.status) {
            return;
        }
        let target = attempt.target;
        let sequence = attempt.invite.cseq().map_or(1, |c| c.sequence);
        let Some(dialog) = Dialog::new_uac(&attempt.invite, response) else {
            return;
        };
        let ack = self.with_via(dialog.ack(sequence), target);
        self.actions.push_back(Action::SendRequest {
            request: ack,
            target,
        });
        let ours = self
            .a
            .dialog
            .as_ref()
            .is_some_and(|d| d.remote_tag() == dialog.remote_tag());
        if !ours {
            self.bye_dialog(dialog, target, "forked answer not used");
        }
    }

    fn is_failure_notify(&self, branch: &str) -> bool {
        self.failure_notify
            .as_ref()
            .is_some_and(|(_, notify)| notify == branch)
    }

    fn dialog_mut(&mut self, leg: Leg) -> &mut Option<Dialog> {
        match leg {
            Leg::A => &mut self.a.dialog,
            Leg::B => &mut self.b.dialog,
        }
    }

    fn dialog(&self, leg: Leg) -> Option<&Dialog> {
        match leg {
            Leg::A => self.a.dialog.as_ref(),
            Leg::B => self.b.dialog.as_ref(),
        }
    }

    /// Where requests in `leg`'s dialog go.
    fn leg_target(&self, leg: Leg) -> Target {
        match leg {
            Leg::A => self.a.target,
            Leg::B => self.attempt.as_ref().map_or(self.a.target, |a| a.target),
        }
    }

    /// The peer of `leg`'s party.
    fn leg_peer(&self, leg: Leg) -> Option<&Arc<Peer>> {
        match leg {
            Leg::A => Some(&self.a.peer),
            Leg::B => self.b_peer(),
        }
    }

    /// Our RTP address on `leg`.
    fn local_media(&self, leg: Leg) -> SocketAddr {
        match leg {
            Leg::A => self.a.media,
            Leg::B => self.b.media,
        }
    }

    fn endpoint_media(&self, leg: Leg) -> Option<LegMedia> {
        match leg {
            Leg::A => self.a.endpoint,
            Leg::B => self.b.endpoint,
        }
    }

    /// The relay's party on `leg`.
    fn party(&self, leg: Leg) -> Party {
        match leg {
            Leg::A => self.a.party,
            Leg::B => self.b.party,
        }
    }

    fn identity(&self, leg: Leg) -> &CallerIdentity {
        match leg {
            Leg::A => &self.a.identity,
            Leg::B => &self.b.identity,
        }
    }

    fn handle_stale_response(&mut self, branch: &str, response: &Response) {
        let Some(position) = self.stale.iter().position(|a| a.branch == branch) else {
            return;
        };
        if (200..300).contains(&response.status) {
            let attempt = &self.stale[position];
            let target = attempt.target;
            let first = !attempt.released;
            if let Some(dialog) = Dialog::new_uac(&attempt.invite, response) {
                let sequence = attempt.invite.cseq().map_or(1, |c| c.sequence);
                let ack = self.with_via(dialog.ack(sequence), target);
                self.actions.push_back(Action::SendRequest {
                    request: ack,
                    target,
                });
                // A retransmitted 2xx gets its ACK again, but the dialog is released once.
                if first {
                    self.stale[position].released = true;
                    self.bye_dialog(dialog, target, "answer to an attempt given up");
                }
            }
        } else if (101..200).contains(&response.status) {
            // A peer we gave up on is ringing after all: cancel it.
            let attempt = &self.stale[position];
            let cancel = message::cancel_for(&attempt.invite);
            let target = attempt.target;
            self.actions.push_back(Action::SendRequest {
                request: cancel,
                target,
            });
        }
        if response.status >= 200 {
            self.stale[position].settled = true;
        }
        // Last: finishing the call here must come after the ACK and BYE above.
        if response.status >= 200 && self.abandoned.remove(branch) {
            self.maybe_finish();
        }
    }

    fn handle_transaction_timeout(&mut self, now: Instant, branch: &str, method: Method) {
        if self.handle_refresh_timeout(branch) {
            return;
        }
        if method != Method::Invite {
            if self.is_failure_notify(branch) {
                self.failure_notify = None;
            }
            if self.pending.remove(branch) {
                self.maybe_finish();
            }
            return;
        }
        if self.abandoned.remove(branch) {
            self.maybe_finish();
        }
        if self
            .transfer
            .as_ref()
            .is_some_and(|t| t.attempt.branch == branch)
        {
            self.transfer_failed(now, 408);
        } else if self
            .guests
            .iter()
            .any(|g| g.dialog.is_none() && g.attempt.as_ref().is_some_and(|a| a.branch == branch))
        {
            self.guest_failed(now, 408);
        } else if self.attempt.as_ref().is_some_and(|a| a.branch == branch) {
            self.handle_failure(now, 408, "Request Timeout".into());
        }
    }

    fn handle_cancel(&mut self, _now: Instant) {
        if self.state != State::Calling || self.a.finalized {
            return;
        }
        self.cancelled = true;
        self.respond_a(487, "Request Terminated", false);
        self.send_cancel();
        self.end(EndedBy::Caller, "cancelled", 487, false);
    }

    /// §9.1: CANCEL only once a provisional response arrived; otherwise it is sent when one
    /// does.
    fn send_cancel(&mut self) {
        let Some(attempt) = self.attempt.as_mut() else {
            return;
        };
        if attempt.cancel_sent || attempt.settled || !attempt.provisional {
            return;
        }
        attempt.cancel_sent = true;
        let cancel = message::cancel_for(&attempt.invite);
        let target = attempt.target;
        self.pending.insert(attempt.branch.clone());
        self.actions.push_back(Action::SendRequest {
            request: cancel,
            target,
        });
    }

    /// Ends an answered (or answering) call: BYE to every leg but `from`.
    fn hang_up(&mut self, from: Option<Leg>, ended_by: EndedBy, reason: &str) {
        self.abandon_transfer();
        let cause = (ended_by == EndedBy::Gateway).then_some(reason);
        self.release_guests(cause);
        if self.state == State::Calling {
            // Before answer: cancel leg B, fail leg A.
            self.cancelled = true;
            let status = if ended_by == EndedBy::Gateway {
                503
            } else {
                487
            };
            if !self.a.finalized {
                self.respond_a(status, message::reason_phrase(status), false);
            }
            self.send_cancel();
            self.end(ended_by, reason, status, false);
            return;
        }
        if self.state != State::Answered {
            return;
        }
        let cause = if ended_by == EndedBy::Gateway {
            Some(reason)
        } else {
            None
        };
        if from != Some(Leg::A) {
            if let Some(dialog) = self.a.dialog.take() {
                let target = self.a.target;
                self.bye_dialog_with_reason(dialog, target, cause);
            }
        }
        if from != Some(Leg::B) {
            if let Some(dialog) = self.b.dialog.take() {
                let target = self.attempt.as_ref().map_or(self.a.target, |a| a.target);
                self.bye_dialog_with_reason(dialog, target, cause);
            }
        }
        self.end(ended_by, reason, 200, true);
    }

    fn bye_dialog(&mut self, dialog: Dialog, target: Target, why: &str) {
        tracing::debug!(call = %self.id, why, "releasing dialog");
        self.bye_dialog_with_reason(dialog, target, None);
    }

    fn bye_dialog_with_reason(&mut self, mut dialog: Dialog, target: Target, reason: Option<&str>) {
        let mut bye = self.with_via(dialog.request(Method::Bye), target);
        if let Some(text) = reason {
            // RFC 3326: say why the gateway ended the call.
            bye.headers
                .push("Reason", format!("SIP;cause=200;text=\"{text}\""));
        }
        if let Some(branch) = bye.top_via().and_then(|v| v.branch().map(str::to_string)) {
            self.pending.insert(branch);
        }
        self.actions.push_back(Action::SendRequest {
            request: bye,
            target,
        });
    }

    fn with_via(&mut self, mut request: Request, target: Target) -> Request {
        let branch = self.ids.branch();
        request.headers.push_front(
            "Via",
            via_for(self.settings.local_for(target), target, &branch),
        );
        request
    }

    /// The relay saw no media for the inactivity timeout.
    pub fn handle_media_inactive(&mut self, now: Instant) {
        if self.state == State::Answered {
            self.hang_up(None, EndedBy::Gateway, "media timeout");
        }
        self.arm_cleanup(now);
    }

    /// The gateway is stopping: end the call cleanly.
    pub fn handle_shutdown(&mut self, now: Instant) {
        match self.state {
            State::Calling | State::Answered => {
                self.hang_up(None, EndedBy::Gateway, "gateway shutdown")
            }
            State::Ending | State::Done => {}
        }
        self.arm_cleanup(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        for (index, timer) in TIMERS.iter().enumerate() {
            let Some(at) = self.timers[index] else {
                continue;
            };
            if at > now {
                continue;
            }
            self.timers[index] = None;
            match timer {
                Timer::PeerResponse => {
                    // No response at all: the peer is down; its transaction keeps running
                    // (Timer B) but we move on.
                    tracing::info!(call = %self.id, "peer did not respond; failing over");
                    self.handle_failure(now, 408, "Request Timeout".into());
                }
                Timer::Ring => {
                    if let Some(attempt) = self.attempt.as_mut() {
                        attempt.timed_out = true;
                    }
                    let cancel = self
                        .attempt
                        .as_ref()
                        .map(|a| (message::cancel_for(&a.invite), a.target));
                    if let Some((cancel, target)) = cancel {
                        self.actions.push_back(Action::SendRequest {
                            request: cancel,
                            target,
                        });
                    }
                }
                Timer::Cleanup => {
                    if self.state == State::Ending {
                        self.pending.clear();
                        self.finish();
                    }
                }
                Timer::SessionA => self.session_due(Leg::A),
                Timer::SessionB => self.session_due(Leg::B),
                Timer::HotkeyDigits => {
                    let held = self
                        .hotkeys
                        .as_mut()
                        .map(|m| m.handle_timeout(now))
                        .unwrap_or_default();
                    self.pass_digits(Leg::B, &held);
                }
                Timer::TransferResponse if self.transfer.is_none() => {
                    tracing::info!(call = %self.id, "conference guest did not respond");
                    self.guest_failed(now, 408);
                }
                Timer::TransferRing if self.transfer.is_none() => self.guest_ring_timeout(),
                Timer::TransferResponse => {
                    tracing::info!(call = %self.id, "transfer target did not respond");
                    self.transfer_failed(now, 408);
                }
                Timer::TransferRing => {
                    let cancel = self.transfer.as_mut().map(|t| {
                        t.attempt.timed_out = true;
                        t.attempt.cancel_sent = true;
                        (message::cancel_for(&t.attempt.invite), t.attempt.target)
                    });
                    if let Some((request, target)) = cancel {
                        self.actions
                            .push_back(Action::SendRequest { request, target });
                    }
                }
            }
        }
        self.arm_cleanup(now);
    }

    /// Blind transfer of the party on the other side of `from` (the agent's leg) to `number`,
    /// with that party's identity: the one operation behind REFER, hotkeys and the work-order
    /// API. The citizen keeps talking to the agent until the target answers; if it fails,
    /// nothing changes for the citizen.
    ///
    /// # Errors
    /// [`TransferError`] when the call is not answered, a transfer is already under way, or no
    /// route reaches `number`.
    pub fn transfer(
        &mut self,
        now: Instant,
        from: Leg,
        number: &str,
        trigger: Trigger,
    ) -> Result<(), TransferError> {
        let result = self.start_transfer(now, from, number, trigger, None);
        self.arm_cleanup(now);
        result
    }

    fn start_transfer(
        &mut self,
        now: Instant,
        from: Leg,
        number: &str,
        trigger: Trigger,
        refer: Option<Refer>,
    ) -> Result<(), TransferError> {
        if self.state != State::Answered {
            return Err(TransferError::NotAnswered);
        }
        if self.transfer.is_some() || self.inviting_guest() {
            return Err(TransferError::InProgress);
        }
        if self.has_guests() {
            return Err(TransferError::Conference);
        }
        let (refer_sequence, referred_by, consultation) = match refer {
            Some(refer) => (Some(refer.sequence), refer.referred_by, refer.consultation),
            None => (None, None, None),
        };
        let (replaces, route) = match consultation {
            // Attended: the peer that holds the consultation dialog, nobody else.
            Some((dialog, peer)) => (Some(dialog), vec![peer]),
            None => (
                None,
                self.settings
                    .router
                    .route(number)
                    .filter(|peers| !peers.is_empty())
                    .ok_or_else(|| TransferError::NoRoute(number.to_string()))?
                    .to_vec(),
            ),
        };
        let linkage_id = self.new_linkage_id();
        // The target gets the transferor's port: the relay hands it over on answer.
        let port = self.local_media(from);
        let origin = Origin::new(port.ip(), self.ids.next_u64() >> 12);
        let offer = sdp::offer(&self.settings.policy, port, &origin, Direction::SendRecv);
        let from_peer = self
            .leg_peer(from)
            .map(|p| (p.name.clone(), p.platform.clone()))
            .unwrap_or_default();
        self.actions
            .push_back(Action::Linkage(LinkageUpdate::Requested {
                linkage_id: linkage_id.clone(),
                kind: LinkageKind::Transfer,
                target: number.to_string(),
                trigger,
                from_peer: from_peer.0,
                from_platform: from_peer.1,
                to_peer: route[0].name.clone(),
                to_platform: route[0].platform.clone(),
            }));
        tracing::info!(call = %self.id, linkage = %linkage_id, target = number, trigger = trigger.as_str(), from = ?from, "transfer requested");
        let placeholder = Attempt {
            peer_index: 0,
            invite: self.a.invite.clone(),
            branch: String::new(),
            target: self.a.target,
            provisional: false,
            cancel_sent: false,
            timed_out: false,
            settled: true,
            released: false,
            session_retried: false,
        };
        self.transfer = Some(Transfer {
            from,
            linkage_id,
            number: number.to_string(),
            route,
            attempt: placeholder,
            call_id: String::new(),
            tag: String::new(),
            origin,
            offer,
            refer_sequence,
            referred_by,
            ringing: false,
            replaces,
            early_media: false,
        });
        self.transfer_to_peer(now, 0);
        Ok(())
    }

    /// A fresh linkage id (a Call-ID's random part).
    fn new_linkage_id(&mut self) -> String {
        let id = self.ids.call_id("linkage");
        id.split('@').next().unwrap_or(&id).to_string()
    }

    /// Sends the transfer's INVITE to the `index`-th peer of the target's route.
    fn transfer_to_peer(&mut self, now: Instant, index: usize) {
        let local_ip = self.settings.local_sip.ip().to_string();
        let (call_id, tag, branch) = (
            self.ids.call_id(&local_ip),
            self.ids.tag(),
            self.ids.branch(),
        );
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        let Some(peer) = transfer.route.get(index).cloned() else {
            return;
        };
        sdp::set_offer_key(&mut transfer.offer, offer_key(&peer));
        let Some(transfer) = self.transfer.as_ref() else {
            return;
        };
        let target = Target::for_peer(&peer);
        let mut invite = self.third_party_invite(
            &InviteTo {
                peer: &peer,
                target,
                branch: &branch,
                number: &transfer.number,
                call_id: &call_id,
                tag: &tag,
                offer: &transfer.offer,
                identity: self.identity(transfer.from.other()),
                assert: true,
            },
            transfer.from,
            &transfer.linkage_id,
        );
        // RFC 3892: who asked for the transfer.
        if let Some(referred_by) = &transfer.referred_by {
            invite.headers.push("Referred-By", referred_by.clone());
        }
        if let Some(replaced) = &transfer.replaces {
            // RFC 3891 §4; Require, so a target that cannot replace says 420 instead of
            // ringing beside the consultation call.
            invite
                .headers
                .push("Replaces", replaced.replaces_for_remote());
            invite.headers.push("Require", "replaces");
        }
        // The target takes a leg over: its dialog gets a session timer like the leg's.
        self.offer_session_timer(&mut invite.headers);
        let linkage_id = transfer.linkage_id.clone();
        self.actions.push_back(Action::RegisterDialog(DialogKey {
            call_id: call_id.clone(),
            local_tag: tag.clone(),
        }));
        self.actions.push_back(Action::SendRequest {
            request: invite.clone(),
            target,
        });
        if index > 0 {
            self.actions
                .push_back(Action::Linkage(LinkageUpdate::Retried {
                    linkage_id,
                    to_peer: peer.name.clone(),
                    to_platform: peer.platform.clone(),
                }));
        }
        self.end_transfer_attempt_media();
        if let Some(transfer) = self.transfer.as_mut() {
            let previous = std::mem::replace(
                &mut transfer.attempt,
                Attempt::new(index, invite, branch, target),
            );
            if !previous.branch.is_empty() {
                retire(&mut self.stale, &self.abandoned, previous);
            }
            let old = (
                std::mem::replace(&mut transfer.call_id, call_id),
                std::mem::replace(&mut transfer.tag, tag),
            );
            if !old.0.is_empty() {
                self.actions.push_back(Action::UnregisterDialog(DialogKey {
                    call_id: old.0,
                    local_tag: old.1,
                }));
            }
        }
        self.arm(
            Timer::TransferResponse,
            Some(now + self.settings.peer_response_timeout),
        );
        self.arm(Timer::TransferRing, None);
    }

    /// An in-dialog REFER (RFC 3515): 202 and the transfer, or the error that says why not.
    fn handle_refer(
        &mut self,
        now: Instant,
        leg: Leg,
        server: ServerTransactionId,
        request: &Request,
    ) {
        let reject = |call: &mut Call, status: u16, reason: &str| {
            let mut response = Response::for_request(request, status, None);
            response.reason = reason.to_string();
            call.actions
                .push_back(Action::SendResponse { server, response });
        };
        let target = match transfer::refer_target(request) {
            Ok(target) => target,
            Err(error) => {
                tracing::info!(call = %self.id, %error, "REFER rejected");
                reject(self, 400, &format!("Bad Refer-To ({error})"));
                return;
            }
        };
        let consultation = match &target.replaces {
            None => None,
            Some(value) => {
                let peer_side = DialogId::from_replaces(value)
                    .and_then(|id| self.settings.directory.peer_side(&id));
                let peer = peer_side
                    .as_ref()
                    .and_then(|p| self.settings.router.peer_by_name(&p.peer));
                match (peer_side, peer) {
                    (Some(peer_side), Some(peer)) => Some((peer_side.dialog, peer)),
                    _ => {
                        // Not a call through this gateway: nothing we could replace.
                        reject(self, 403, "Consultation Call Unknown");
                        return;
                    }
                }
            }
        };
        if self.transfer.is_some() || self.inviting_guest() {
            reject(self, 491, "Request Pending");
            return;
        }
        if self.has_guests() {
            reject(self, 403, "Transfer Not Possible During A Conference");
            return;
        }
        if self.state != State::Answered {
            reject(self, 481, "Call Does Not Exist");
            return;
        }
        if consultation.is_none()
            && self
                .settings
                .router
                .route(&target.number)
                .is_none_or(|peers| peers.is_empty())
        {
            reject(self, 403, "No Route To Transfer Target");
            return;
        }
        let referred_by = request
            .headers
            .get("Referred-By")
            .map(str::to_string)
            .or_else(|| {
                request.from().map(|mut from| {
                    from.params.clear();
                    from.to_string()
                })
            });
        let mut accepted = Response::for_request(request, 202, None);
        accepted
            .headers
            .push("Contact", self.contact(self.leg_target(leg)));
        self.actions.push_back(Action::SendResponse {
            server,
            response: accepted,
        });
        let sequence = request.cseq().map_or(0, |c| c.sequence);
        let trigger = if consultation.is_some() {
            Trigger::Attended
        } else {
            Trigger::Refer
        };
        let refer = Refer {
            sequence,
            referred_by,
            consultation,
        };
        match self.start_transfer(now, leg, &target.number, trigger, Some(refer)) {
            Ok(()) => {
                self.notify_agent(leg, sequence, 100);
            }
            Err(error) => {
                // Checked above; kept for the invariant.
                tracing::warn!(call = %self.id, %error, "transfer not started");
                self.notify_agent(leg, sequence, 503);
            }
        }
    }

    /// A DTMF INFO (answered 200 already). From the agent's leg its digits go through the
    /// hotkey matcher; anything not taken by a hotkey reaches the other party unchanged.
    fn handle_info(&mut self, now: Instant, leg: Leg, request: &Request) {
        let Some(digit) = hotkey::dtmf_of_info(request.content_type(), &request.body) else {
            return;
        };
        let format = request.content_type().map(str::to_string);
        if leg == Leg::B && self.b_is_agent() {
            self.digit_transport = DigitTransport::Info(format);
            self.handle_agent_digit(now, digit);
        } else {
            self.send_dtmf_info(leg.other(), digit, format.as_deref());
        }
    }

    /// A conference guest is being invited.
    fn inviting_guest(&self) -> bool {
        self.guests.iter().any(|g| g.dialog.is_none())
    }

    /// The peer of leg B's current (or answered) attempt.
    fn b_peer(&self) -> Option<&Arc<Peer>> {
        self.attempt
            .as_ref()
            .and_then(|a| self.route.get(a.peer_index))
    }

    /// Whether leg B is an agent's: its peer belongs to a platform (12345, 110, ...).
    fn b_is_agent(&self) -> bool {
        self.b_peer().is_some_and(|p| p.platform.is_some())
    }

    /// One DTMF digit from the agent's leg, however it came (SIP INFO or RFC 4733).
    pub fn handle_agent_digit(&mut self, now: Instant, digit: char) {
        if self.state != State::Answered || self.settings.hotkeys.is_empty() {
            self.pass_digits(Leg::B, &digit.to_string());
            return;
        }
        let settings = Arc::clone(&self.settings);
        let matcher = self.hotkeys.get_or_insert_with(|| {
            HotkeyMatcher::new(Arc::clone(&settings.hotkeys), settings.hotkey_inter_digit)
        });
        let matched = matcher.handle_digit(now, digit);
        let deadline = matcher.poll_timeout();
        self.arm(Timer::HotkeyDigits, deadline);
        self.pass_digits(Leg::B, &matched.release);
        let Some(hotkey) = matched.hotkey else {
            return;
        };
        tracing::info!(call = %self.id, dtmf = %hotkey.dtmf, target = %hotkey.target, "hotkey");
        self.actions.push_back(Action::Hotkey {
            dtmf: hotkey.dtmf.clone(),
            action: hotkey.action,
            target: hotkey.target.clone(),
        });
        match hotkey.action {
            HotkeyAction::Transfer => {
                let result =
                    self.start_transfer(now, Leg::B, &hotkey.target, Trigger::Hotkey, None);
                if let Err(error) = result {
                    tracing::info!(call = %self.id, %error, "hotkey transfer refused");
                }
            }
            HotkeyAction::Conference => {
                if let Err(error) = self.start_conference(Leg::B, &hotkey.target, Trigger::Hotkey) {
                    tracing::info!(call = %self.id, %error, "hotkey conference refused");
                }
            }
        }
        self.arm_cleanup(now);
    }

    /// Digits from leg `from` that no hotkey took, to the other party, the way they came.
    fn pass_digits(&mut self, from: Leg, digits: &str) {
        if self.conferencing {
            let party = self.party(from);
            for digit in digits.chars() {
                self.send_digit_to_others(party, digit);
            }
            return;
        }
        let transport = self.digit_transport.clone();
        for digit in digits.chars() {
            match &transport {
                DigitTransport::Info(format) => {
                    self.send_dtmf_info(from.other(), digit, format.as_deref())
                }
                DigitTransport::Rtp => {
                    self.actions
                        .push_back(Action::Media(MediaCommand::SendDigit(
                            self.party(from.other()),
                            digit,
                        )))
                }
            }
        }
    }

    /// Whether the relay should take the agent's RFC 4733 digits out of the stream for the
    /// hotkey matcher (leg B is an agent's and hotkeys are configured).
    fn detect_agent_digits(&mut self) {
        let on = self.b_is_agent() && !self.settings.hotkeys.is_empty();
        self.actions
            .push_back(Action::Media(MediaCommand::DetectDigits(self.b.party, on)));
    }

    /// A digit the relay detected in `party`'s RFC 4733 telephone-events: the agent's go to
    /// the hotkey matcher; in a conference, anyone else's are played to the other parties.
    pub fn handle_media_digit(&mut self, now: Instant, party: Party, digit: char) {
        if party == self.b.party && (self.b_is_agent() || !self.conferencing) {
            self.digit_transport = DigitTransport::Rtp;
            self.handle_agent_digit(now, digit);
        } else if self.conferencing {
            self.send_digit_to_others(party, digit);
        }
        self.arm_cleanup(now);
    }

    /// A DTMF INFO on `leg`'s dialog, in `format` (`application/dtmf-relay` by default).
    fn send_dtmf_info(&mut self, leg: Leg, digit: char, format: Option<&str>) {
        let target = self.leg_target(leg);
        let Some(info) = self
            .dialog_mut(leg)
            .as_mut()
            .map(|d| d.request(Method::Info))
        else {
            return;
        };
        self.push_dtmf_info(info, target, digit, format);
    }

    /// Completes an INFO carrying `digit` (`application/dtmf` if `format` says so, else
    /// `application/dtmf-relay`) and sends it to `target`.
    fn push_dtmf_info(
        &mut self,
        mut info: Request,
        target: Target,
        digit: char,
        format: Option<&str>,
    ) {
        let contact = self.contact(target);
        info.headers.push("Contact", contact);
        let dtmf = format.is_some_and(|f| f.trim().eq_ignore_ascii_case("application/dtmf"));
        if dtmf {
            info.headers.push("Content-Type", "application/dtmf");
            info.body = Bytes::from(digit.to_string());
        } else {
            info.headers.push("Content-Type", "application/dtmf-relay");
            info.body = Bytes::from(format!("Signal={digit}\r\nDuration=160\r\n"));
        }
        let info = self.with_via(info, target);
        self.actions.push_back(Action::SendRequest {
            request: info,
            target,
        });
    }

    /// A NOTIFY of the REFER's subscription to the agent on `leg`, while its dialog lasts;
    /// returns the NOTIFY's branch.
    fn notify_agent(&mut self, leg: Leg, refer_sequence: u32, status: u16) -> Option<String> {
        let target = self.leg_target(leg);
        let contact = self.contact(target);
        // Long enough for every peer of the target's route to be tried (RFC 6665 §4.2.2: a
        // subscription that expired would need `terminated;reason=timeout`).
        let peers = self.transfer.as_ref().map_or(1, |t| t.route.len()) as u32;
        let per_peer = self.settings.peer_response_timeout + self.settings.transfer_ring_timeout;
        let expires = (per_peer * peers).as_secs() as u32 + 32;
        let dialog = self.dialog_mut(leg).as_mut()?;
        let mut notify = transfer::notify(dialog, refer_sequence, status, expires);
        notify.headers.push("Contact", contact);
        let notify = self.with_via(notify, target);
        let branch = notify
            .top_via()
            .and_then(|v| v.branch().map(str::to_string));
        self.actions.push_back(Action::SendRequest {
            request: notify,
            target,
        });
        branch
    }

    /// The transfer's progress to the agent, if it asked by REFER; returns the NOTIFY's branch.
    fn notify_transfer_progress(&mut self, status: u16) -> Option<String> {
        let transfer = self.transfer.as_ref()?;
        let (leg, sequence) = (transfer.from, transfer.refer_sequence?);
        self.notify_agent(leg, sequence, status)
    }

    /// A transfer attempt is over (failed over, or asked again after a 422): it no longer
    /// rings, and its early media ends with it: the transferring leg's endpoint is heard again.
    pub(super) fn end_transfer_attempt_media(&mut self) {
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        transfer.ringing = false;
        if !std::mem::take(&mut transfer.early_media) {
            return;
        }
        let (party, media) = match transfer.from {
            Leg::A => (self.a.party, self.a.endpoint),
            Leg::B => (self.b.party, self.b.endpoint),
        };
        if let Some(media) = media {
            self.actions
                .push_back(Action::Media(MediaCommand::Replace(party, media)));
        }
    }

    fn handle_transfer_response(&mut self, now: Instant, response: Response) {
        match response.status {
            100 => {
                self.arm(Timer::TransferResponse, None);
                if let Some(transfer) = self.transfer.as_mut() {
                    transfer.attempt.provisional = true;
                }
                if self.timer(Timer::TransferRing).is_none() {
                    self.arm(
                        Timer::TransferRing,
                        Some(now + self.settings.transfer_ring_timeout),
                    );
                }
            }
            101..=199 => {
                self.arm(Timer::TransferResponse, None);
                let Some(transfer) = self.transfer.as_mut() else {
                    return;
                };
                let first = !transfer.ringing;
                transfer.ringing = true;
                transfer.attempt.provisional = true;
                if self.settings.transfer_early_media && !transfer.early_media {
                    let early = response
                        .sdp()
                        .map(sdp::parse)
                        .and_then(Result::ok)
                        .and_then(|answer| {
                            sdp::accept_answer(&transfer.offer, &answer, &self.settings.policy).ok()
                        });
                    if let Some(negotiated) = early {
                        // The citizen hears the target's ringback or announcement (RFC 3960
                        // gateway model); the agent is no longer heard until it fails.
                        transfer.early_media = true;
                        let party = match transfer.from {
                            Leg::A => self.a.party,
                            Leg::B => self.b.party,
                        };
                        self.actions.push_back(Action::Media(MediaCommand::Replace(
                            party,
                            leg_media(&negotiated),
                        )));
                    }
                }
                let Some(transfer) = self.transfer.as_mut() else {
                    return;
                };
                if first {
                    let linkage_id = transfer.linkage_id.clone();
                    self.arm(
                        Timer::TransferRing,
                        Some(now + self.settings.transfer_ring_timeout),
                    );
                    self.actions
                        .push_back(Action::Linkage(LinkageUpdate::Ringing { linkage_id }));
                    self.notify_transfer_progress(180);
                }
            }
            200..=299 => self.transfer_answered(now, response),
            422 if self.retry_transfer_with_min_se(now, &response) => {}
            status => self.transfer_failed(now, status),
        }
    }

    fn transfer_answered(&mut self, now: Instant, response: Response) {
        let Some(transfer) = self.transfer.as_ref() else {
            return;
        };
        let attempt = &transfer.attempt;
        let Some(dialog) = Dialog::new_uac(&attempt.invite, &response) else {
            return;
        };
        let target = attempt.target;
        // The INVITE's own number: 2 after a 422 retry (§13.2.2.4).
        let sequence = attempt.invite.cseq().map_or(1, |c| c.sequence);
        let negotiated = response
            .sdp()
            .map(sdp::parse)
            .and_then(Result::ok)
            .and_then(|answer| {
                sdp::accept_answer(&transfer.offer, &answer, &self.settings.policy).ok()
            });
        let ack = self.with_via(dialog.ack(sequence), target);
        self.actions.push_back(Action::SendRequest {
            request: ack,
            target,
        });
        let Some(negotiated) = negotiated else {
            self.bye_dialog(dialog, target, "transfer target's answer not acceptable");
            if let Some(t) = self.transfer.as_mut() {
                t.attempt.settled = true;
            }
            self.transfer_failed(now, 488);
            return;
        };
        self.arm(Timer::TransferResponse, None);
        self.arm(Timer::TransferRing, None);
        self.notify_transfer_progress(200);
        let Some(mut transfer) = self.transfer.take() else {
            return;
        };
        transfer.attempt.settled = true;
        let from = transfer.from;
        // The agent's leg is released; the target takes it over.
        let agent_target = self.leg_target(from);
        if let Some(agent) = self.dialog_mut(from).take() {
            self.bye_dialog(agent, agent_target, "transferred");
        }
        let media = leg_media(&negotiated);
        let peer = transfer.route.get(transfer.attempt.peer_index).cloned();
        let identity = CallerIdentity::reached_at(&transfer.number);
        match from {
            Leg::B => {
                self.released.push(DialogKey {
                    call_id: std::mem::replace(&mut self.b.call_id, transfer.call_id.clone()),
                    local_tag: std::mem::replace(&mut self.b.tag, transfer.tag.clone()),
                });
                self.b.dialog = Some(dialog);
                self.start_callee_session(now, Leg::B, &response);
                self.b.endpoint = Some(media);
                self.b.identity = identity;
                self.b.local_sdp = Some(transfer.offer.to_string());
                self.b.offer = transfer.offer;
                self.b.origin = transfer.origin;
                self.b.answered_invite_sequence = 1;
                // The new party's digits start afresh.
                self.hotkeys = None;
                self.arm(Timer::HotkeyDigits, None);
                self.route = transfer.route;
                self.attempt = Some(transfer.attempt);
                self.detect_agent_digits();
                self.actions.push_back(Action::Attempt {
                    b_call_id: self.b.call_id.clone(),
                    b_peer: peer.map(|p| p.name.clone()).unwrap_or_default(),
                });
            }
            Leg::A => {
                self.released.push(DialogKey {
                    call_id: std::mem::replace(&mut self.a.call_id, transfer.call_id.clone()),
                    local_tag: std::mem::replace(&mut self.a.tag, transfer.tag.clone()),
                });
                self.a.dialog = Some(dialog);
                self.start_callee_session(now, Leg::A, &response);
                self.a.endpoint = Some(media);
                self.a.identity = identity;
                self.a.target = target;
                self.a.local_sdp = Some(transfer.offer.to_string());
                self.a.pending_offer = None;
                self.a.origin = transfer.origin;
                if let Some(peer) = peer {
                    self.a.peer = peer;
                }
                self.a.uac_invite = Some(transfer.attempt);
            }
        }
        self.actions.push_back(Action::Media(MediaCommand::Replace(
            self.party(from),
            media,
        )));
        self.ringback(None);
        self.announce_bridge();
        self.actions
            .push_back(Action::Linkage(LinkageUpdate::Answered {
                linkage_id: transfer.linkage_id.clone(),
            }));
        tracing::info!(call = %self.id, linkage = %transfer.linkage_id, from = ?from, "transfer answered");
    }

    /// The transfer's current INVITE failed with `status`: the next peer of the target's route
    /// on 408, 5xx or 6xx; otherwise the transfer ends and the citizen stays where they are.
    fn transfer_failed(&mut self, now: Instant, status: u16) {
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        transfer.attempt.settled = true;
        let status = if transfer.attempt.timed_out {
            408
        } else {
            status
        };
        let next = transfer.attempt.peer_index + 1;
        let failover = status == 408 || status >= 500;
        if failover && next < transfer.route.len() && self.state == State::Answered {
            tracing::info!(call = %self.id, status, "transfer: trying the target's next peer");
            self.transfer_to_peer(now, next);
            return;
        }
        self.arm(Timer::TransferResponse, None);
        self.arm(Timer::TransferRing, None);
        let notify = self.notify_transfer_progress(status);
        let Some(transfer) = self.transfer.take() else {
            return;
        };
        let from = transfer.from;
        self.failure_notify = notify.map(|branch| (from, branch));
        tracing::info!(call = %self.id, linkage = %transfer.linkage_id, status, "transfer failed");
        self.restore_agent_media(&transfer);
        self.actions
            .push_back(Action::Linkage(LinkageUpdate::Failed {
                linkage_id: transfer.linkage_id,
                status,
            }));
        self.actions.push_back(Action::UnregisterDialog(DialogKey {
            call_id: transfer.call_id,
            local_tag: transfer.tag,
        }));
        retire(&mut self.stale, &self.abandoned, transfer.attempt);
        if self.state == State::Answered && self.dialog(from).is_none() {
            self.fall_back(now, from);
        }
    }

    /// The agent on `from` left and the transfer failed: never drop the citizen; send them
    /// back, once, to the number they first called (leg A's citizen) or to the number that
    /// called them (leg B's). If that is impossible too, the call ends.
    fn fall_back(&mut self, now: Instant, from: Leg) {
        if self.state != State::Answered {
            return;
        }
        let number = match from {
            Leg::B => self.number.clone(),
            Leg::A => self.caller_number(),
        };
        let fallback = if self.fell_back {
            Err(TransferError::InProgress)
        } else {
            self.fell_back = true;
            self.start_transfer(now, from, &number, Trigger::Fallback, None)
        };
        if fallback.is_err() {
            self.hang_up(None, EndedBy::Gateway, "transfer failed");
        }
    }

    /// Ringback to the citizen (`to`) while it waits for a transfer target with no agent left;
    /// `None` stops it.
    fn ringback(&mut self, to: Option<Leg>) {
        if self.ringback == to {
            return;
        }
        if let Some(leg) = std::mem::replace(&mut self.ringback, to) {
            self.actions.push_back(Action::Media(MediaCommand::Ringback(
                self.party(leg),
                false,
            )));
        }
        if let Some(leg) = to {
            self.actions
                .push_back(Action::Media(MediaCommand::Ringback(self.party(leg), true)));
        }
    }

    /// After a target's early media, the citizen goes back to hearing the agent.
    fn restore_agent_media(&mut self, transfer: &Transfer) {
        if let (true, Some(media)) = (transfer.early_media, self.endpoint_media(transfer.from)) {
            self.actions.push_back(Action::Media(MediaCommand::Replace(
                self.party(transfer.from),
                media,
            )));
        }
    }

    /// The call ends while a transfer rings: cancel it (a late answer is ACKed and released
    /// through the stale attempts).
    fn abandon_transfer(&mut self) {
        // RFC 6665 §4.2.2: the subscription ends with a final NOTIFY.
        self.notify_transfer_progress(487);
        let Some(transfer) = self.transfer.take() else {
            return;
        };
        self.arm(Timer::TransferResponse, None);
        self.arm(Timer::TransferRing, None);
        let mut attempt = transfer.attempt;
        if attempt.provisional && !attempt.settled && !attempt.cancel_sent {
            attempt.cancel_sent = true;
            self.actions.push_back(Action::SendRequest {
                request: message::cancel_for(&attempt.invite),
                target: attempt.target,
            });
        }
        self.actions
            .push_back(Action::Linkage(LinkageUpdate::Failed {
                linkage_id: transfer.linkage_id,
                status: 487,
            }));
        self.actions.push_back(Action::UnregisterDialog(DialogKey {
            call_id: transfer.call_id,
            local_tag: transfer.tag,
        }));
        if !attempt.settled {
            self.abandoned.insert(attempt.branch.clone());
        }
        retire(&mut self.stale, &self.abandoned, attempt);
    }

    /// Ends the call for every party (a platform's command): BYE (or CANCEL and 503) to all.
    pub fn hang_up_all(&mut self, now: Instant) {
        self.hang_up(None, EndedBy::Gateway, "hung up by the work-order system");
        self.arm_cleanup(now);
    }

    /// Mutes or unmutes a conference party (the relay's party number). Muting lasts while the
    /// conference does: back to two parties, both are heard again.
    ///
    /// # Errors
    /// [`TransferError::NotAnswered`] when no conference is on or no such party is in it.
    pub fn mute(&mut self, party: u32, muted: bool) -> Result<(), TransferError> {
        let party = self
            .audio_party(party)
            .filter(|_| self.conferencing)
            .ok_or(TransferError::NotAnswered)?;
        self.actions
            .push_back(Action::Media(MediaCommand::Mute(party, muted)));
        Ok(())
    }

    /// The party numbered `party` (a platform's command), if the call is answered and it is in
    /// the call's audio.
    fn audio_party(&self, party: u32) -> Option<Party> {
        usize::try_from(party)
            .ok()
            .and_then(Party::from_index)
            .filter(|p| self.state == State::Answered && self.audio_parties().contains(p))
    }

    /// The leg whose party belongs to `platform` (leg B first), if any.
    pub fn leg_of_platform(&self, platform: &str) -> Option<Leg> {
        [Leg::B, Leg::A].into_iter().find(|leg| {
            self.dialog(*leg).is_some()
                && self.leg_peer(*leg).and_then(|p| p.platform.as_deref()) == Some(platform)
        })
    }

    /// The platform of leg B's peer (the current attempt's, or the answered one's).
    pub fn b_platform(&self) -> Option<String> {
        self.b_peer().and_then(|p| p.platform.clone())
    }

    /// The platform of the caller's peer.
    pub fn caller_platform(&self) -> Option<String> {
        self.caller_peer.platform.clone()
    }

    /// The caller's number as presented (From user part), for the record.
    pub fn caller_number(&self) -> String {
        self.a
            .invite
            .from()
            .and_then(|f| f.uri.number())
            .unwrap_or_default()
    }

    pub fn caller_peer(&self) -> &str {
        &self.caller_peer.name
    }

    pub fn number(&self) -> &str {
        &self.number
    }
}

/// What the relay needs of a leg's negotiated media.
fn leg_media(negotiated: &Negotiated) -> LegMedia {
    LegMedia {
        remote: negotiated.remote,
        codec: negotiated.codec,
        payload_type: negotiated.payload_type,
        telephone_event: negotiated.telephone_event,
        srtp: negotiated.srtp,
        receives: matches!(
            negotiated.direction,
            Direction::SendRecv | Direction::RecvOnly
        ),
    }
}

/// Our answer to a re-INVITE or UPDATE on a party whose local RTP address is `media`: the SDP
/// to send (None for an UPDATE without offer) and what was negotiated (None without offer).
/// An unchanged description keeps its o= version; a changed one gets a higher one (RFC 3264
/// §8), and an SRTP key we gave the endpoint stays. Errors are the status to answer: 488 for
/// an offer we cannot take (a plain one from a peer whose `srtp` is mandatory too), 400 for
/// bad SDP.
fn answer_reoffer(
    policy: &MediaPolicy,
    media: SocketAddr,
    request: &Request,
    origin: &mut Origin,
    local_sdp: &mut Option<String>,
    mode: SrtpMode,
) -> Result<(Option<String>, Option<Negotiated>), u16> {
    let terms = SrtpTerms {
        mode,
        key: local_sdp.as_deref().and_then(sdp::key_in),
    };
    let offer = match request.sdp().map(sdp::parse) {
        Some(Ok(offer)) => offer,
        Some(Err(_)) => return Err(400),
        // No offer: session refresh; answer with our current description as the offer (an
        // INVITE) or nothing (an UPDATE).
        None if request.method == Method::Invite => return Ok((local_sdp.clone(), None)),
        None => return Ok((None, None)),
    };
    let (answer, negotiated) =
        sdp::answer(&offer, policy, media, origin, terms).map_err(|_| 488u16)?;
    let mut text = answer.to_string();
    if local_sdp.as_deref().map(strip_origin) != Some(strip_origin(&text)) {
        origin.bump();
        // The same key again: a new one would only be generated when we had none.
        let terms = SrtpTerms {
            key: negotiated.srtp.map(|k| k.ours).or(terms.key),
            ..terms
        };
        if let Ok((answer, _)) = sdp::answer(&offer, policy, media, origin, terms) {
            text = answer.to_string();
        }
    } else if let Some(previous) = local_sdp.as_ref() {
        text = previous.clone();
    }
    *local_sdp = Some(text.clone());
    Ok((Some(text), Some(negotiated)))
}

/// A fresh key for an offer to `peer` if it must have SRTP (a key per peer tried: a peer
/// that failed never learns the key of the one that answered).
fn offer_key(peer: &Peer) -> Option<MasterKey> {
    (peer.srtp == SrtpMode::Mandatory)
        .then(MasterKey::generate)
        .flatten()
}

/// SDP text without its o= line, to tell whether a description changed (RFC 3264 §8).
fn strip_origin(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with("o="))
        .collect::<Vec<_>>()
        .join("\n")
}

mod conference;
mod session;
#[cfg(test)]
mod tests;
