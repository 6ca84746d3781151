//! The B2BUA call: two legs, two independent dialogs, one bridge. Sans-IO.
//!
//! Call order: [`Call::new`] with the caller's INVITE, then feed [`Call::handle_sip`],
//! [`Call::handle_media_inactive`], [`Call::handle_shutdown`] and, when [`Call::poll_timeout`] is
//! due, [`Call::handle_timeout`]; after each, drain [`Call::poll_action`] until `None`. The call
//! never reads a clock or a socket; the task in `gateway::driver` does the I/O.
//!
//! Leg A is the caller's (the carrier's INVITE to us, we are its UAS). Leg B is ours to the
//! route's peers (we are its UAC), tried in order by a [`fork::Fork`]: the next peer on no
//! response within `peer_response_timeout`, on ringing past `ring_timeout`, on 408, 5xx or 6xx
//! (§16.7-style serial forking done by a B2BUA). SDP is answered on each leg by the gateway
//! itself with its own address (media anchored), so re-INVITEs from one side never reach the
//! other.
//!
//! Blind transfer ([`Call::transfer`], reached by REFER, hotkeys and the work-order API alike):
//! the gateway itself calls the target with the citizen's identity, on the transferor's media
//! port, while citizen and agent go on talking. When the target answers, it takes the
//! transferor's leg over (the relay latches the new endpoint; the citizen's stream from us
//! continues with the same SSRC) and the agent's dialog is released; the citizen is never
//! re-INVITEd. When the target fails, nothing changes for the citizen. The agent follows
//! progress through the NOTIFYs of the REFER's implicit subscription (RFC 3515).
//!
//! Either leg may be the transferor: the agent is usually leg B (a citizen called the
//! hotline), but leg A when the agent placed the call (a call-back to a citizen, a 110 operator
//! calling out). The target then takes leg A over, as a dialog the gateway is the UAC of.
//!
//! The model is split by the state each part owns:
//!
//! | file | holds |
//! |---|---|
//! | `actions.rs` | settings, the new call, the actions out, outcome/linkage/conference updates |
//! | `leg.rs` | [`leg::CallLeg`] (either leg), a newcomer taking a leg over |
//! | `fork.rs` | one serially forked INVITE (leg B's setup, a transfer, each guest); retired attempts |
//! | `setup.rs` | the caller's INVITE and leg B's setup up to the answer |
//! | `invite.rs` | the INVITEs, BYEs and late-2xx ACKs the gateway sends |
//! | `challenge.rs` | a peer's 401/407 to our INVITEs and in-dialog requests answered with its outbound credentials |
//! | `dialogs.rs` | requests inside the legs' dialogs: BYE, re-INVITE/UPDATE, ACK, OPTIONS |
//! | `transfer.rs` | blind and attended transfer, the fallback |
//! | `refer.rs` | REFER and the NOTIFYs of its subscription |
//! | `waiting.rs` | ringback and the announcements a citizen with no agent left hears |
//! | `conference.rs` | inviting conference guests (the three-way call) |
//! | `guests.rs` | joined guests: their dialogs, leaving, the mixed call's record |
//! | `digits.rs` | DTMF in and out, the hotkey matcher |
//! | `session.rs` | RFC 4028 session timers per leg |
//! | `queue.rs` | a route's queue: waiting in its line, offers as desks free up, overflow |
//! | `whisper.rs` | the prompt a transfer target or a conference guest hears before it is bridged |
//! | `ending.rs` | hanging up, waiting for the last answers, finishing |

mod actions;
mod challenge;
mod conference;
mod dialogs;
mod digits;
mod ending;
mod fork;
mod guests;
mod invite;
mod leg;
mod queue;
mod refer;
mod session;
mod setup;
#[cfg(test)]
mod tests;
mod transfer;
mod waiting;
mod whisper;

pub use actions::{
    Action, CallSettings, ConferenceUpdate, EndedBy, LinkageKind, LinkageUpdate, NewCall, Outcome,
    QueueUpdate, TransferError, ALLOW,
};
pub use whisper::{UrgencyClass, Whispers};

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use crate::ids::IdGenerator;
use crate::media::srtp::MasterKey;
use crate::media::{Leg, Party};
use crate::routing::Peer;
use crate::routing::SrtpMode;
use crate::sip::message::{Method, Request, Response};
use crate::sip::sdp::{self, Direction, Origin, SessionDescription};
use crate::sip::transaction::{DialogKey, ServerTransactionId, SipEvent};

use super::directory::DialogId;
use super::hotkey::HotkeyMatcher;
use super::transfer::{CallerIdentity, Trigger};
use conference::Guest;
use digits::DigitTransport;
use fork::{Fork, ForkTimeouts, Retired};
use leg::{CallLeg, Legs};
use transfer::Transfer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Leg B is being set up.
    Calling,
    Answered,
    /// Both legs are being torn down; waiting for the last answers.
    Ending,
    Done,
}

/// The call's own timers; each fork (leg B's setup, a transfer, a guest) runs its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// Leg A's session refresh, or its expiry (RFC 4028).
    SessionA,
    SessionB,
    /// Digits held by the hotkey matcher are due to the other party.
    HotkeyDigits,
    /// Give up waiting for answers to our BYE/CANCEL.
    Cleanup,
    /// The no-desk announcement has played: the route's failure goes to the caller.
    Announcement,
    /// A queued call is offered to the route's desks again (or its wait is over).
    QueueRetry,
    /// The transfer target has heard its whisper: bridge it.
    Whisper,
}

const TIMERS: [Timer; 7] = [
    Timer::SessionA,
    Timer::SessionB,
    Timer::HotkeyDigits,
    Timer::Cleanup,
    Timer::Announcement,
    Timer::QueueRetry,
    Timer::Whisper,
];

/// The caller's INVITE transaction (leg A's first party, whoever holds the leg later).
struct CallerInvite {
    invite: Request,
    server: ServerTransactionId,
    /// A final response has gone to it.
    finalized: bool,
    /// Our offer when the INVITE had no SDP (answer expected in the ACK).
    pending_offer: Option<SessionDescription>,
}

/// The call state machine.
pub struct Call {
    id: String,
    settings: Arc<CallSettings>,
    ids: IdGenerator,
    state: State,
    caller: CallerInvite,
    caller_peer: Arc<Peer>,
    /// The number first called.
    number: String,
    legs: Legs,
    /// Leg B's INVITE to the route's peers, until one answers.
    setup: Fork,
    /// INVITEs given up on, kept for their late answers.
    retired: Retired,
    /// RFC 7616 §3.4: nonce counts of the challenges answered.
    nonce_counts: crate::sip::digest_client::NonceCounts,
    cancelled: bool,
    /// Branches of our BYE/CANCEL transactions still awaiting a final response.
    pending: HashSet<String>,
    /// In-dialog requests to peers with credentials, by branch, until their final response:
    /// a challenge to one is answered (`challenge.rs`).
    in_dialog: HashMap<String, challenge::InDialog>,
    timers: [Option<Instant>; TIMERS.len()],
    last_failure: (u16, String),
    transfer: Option<Transfer>,
    /// Agents' dialogs handed over to a transfer target: their late BYE gets a 200.
    released: Vec<DialogKey>,
    /// Dialogs of INVITEs failed over from, kept registered until the call finishes (a late
    /// 2xx after Timer B comes by dialog, not by transaction).
    stale_dialogs: Vec<DialogKey>,
    /// The citizen was sent back to the number first called once already.
    fell_back: bool,
    /// Leg and branch of the NOTIFY that told the agent its transfer failed, until the agent
    /// answers it: a BYE from the agent before then crossed the failure (it meant to leave).
    failure_notify: Option<(Leg, String)>,
    /// Our leg-A dialog as entered in the directory of bridged calls.
    bridged: Option<DialogId>,
    /// The leg that hears our ringback (the citizen, waiting for a target with no agent left).
    ringback: Option<Leg>,
    /// ... and it is the transfer announcement, not the tone.
    waiting_sound: waiting::WaitingSound,
    /// Hotkey matching of the agent's DTMF (leg B), made on the first digit.
    hotkeys: Option<HotkeyMatcher>,
    /// How the agent's last digit came: held digits are passed on the same way.
    digit_transport: DigitTransport,
    /// Conference guests: joined ones (answered), and at most one still being invited.
    guests: Vec<Guest>,
    /// Three or more parties are mixed.
    conferencing: bool,
    outcome: Option<Outcome>,
    /// The party whose re-INVITE without SDP we answered with an offer: its ACK answers it.
    offer_in_2xx: Option<Party>,
    /// The route's failure, held while the caller hears the no-desk announcement.
    no_desk: Option<(u16, String)>,
    /// How the caller waits when every desk turns it away (the route's queue), and since
    /// when it waits.
    queue_policy: Option<crate::routing::QueuePolicy>,
    queued: Option<queue::Queued>,
    /// Offers of the queued call so far (each begins at the next desk of the route).
    queue_offers: usize,
    /// The time of the input being handled (the call reads no clock).
    clock: Instant,
    /// The urgency class of the call's ticket (the whisper's choice).
    urgency: Option<UrgencyClass>,
    /// The leg whose new party hears its whisper before it is bridged.
    whispering: Option<whisper::Whispering>,
    actions: VecDeque<Action>,
}

impl Call {
    /// Starts a call from the caller's INVITE: answers its SDP offer (or fails with 488) and
    /// sends the first INVITE of leg B.
    pub fn new(now: Instant, settings: Arc<CallSettings>, new: NewCall) -> Call {
        let mut ids = new.ids;
        let a_tag = ids.tag();
        let b_tag = ids.tag();
        // Leg B's Call-ID names our address on the route's interface (its peers share one).
        let route_interface = new
            .route
            .first()
            .map_or(crate::routing::InterfaceId::DEFAULT, |peer| peer.interface);
        let local_ip = settings.local.of(route_interface).sip.ip();
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
        let leg_a = CallLeg {
            call_id: new.invite.call_id().to_string(),
            tag: a_tag,
            dialog: None,
            target: a_target,
            peer: Some(Arc::clone(&new.caller_peer)),
            identity: CallerIdentity::of(&new.invite),
            uac_invite: None,
            offer: None,
            endpoint: None,
            party: Party::A,
            origin: a_origin,
            local_sdp: None,
            media: new.media_a,
            session: Default::default(),
        };
        let leg_b = CallLeg {
            call_id: b_call_id,
            tag: b_tag,
            dialog: None,
            target: a_target,
            peer: None,
            identity: CallerIdentity::reached_at(&new.number),
            uac_invite: None,
            offer: Some(offer),
            endpoint: None,
            party: Party::B,
            origin: b_origin,
            local_sdp: None,
            media: new.media_b,
            session: Default::default(),
        };
        let timeouts = ForkTimeouts {
            response: settings.peer_response_timeout,
            ring: settings.ring_timeout,
        };
        let mut call = Call {
            id: new.id,
            ids,
            state: State::Calling,
            caller: CallerInvite {
                invite: new.invite,
                server: new.server,
                finalized: false,
                pending_offer: None,
            },
            caller_peer: new.caller_peer,
            number: new.number,
            legs: Legs([leg_a, leg_b]),
            setup: Fork::new(new.route, timeouts),
            retired: Retired::default(),
            nonce_counts: Default::default(),
            cancelled: false,
            pending: HashSet::new(),
            in_dialog: HashMap::new(),
            timers: [None; TIMERS.len()],
            last_failure: (480, "Temporarily Unavailable".into()),
            transfer: None,
            released: Vec::new(),
            stale_dialogs: Vec::new(),
            fell_back: false,
            failure_notify: None,
            bridged: None,
            ringback: None,
            waiting_sound: waiting::WaitingSound::Ringback,
            clock: now,
            hotkeys: None,
            digit_transport: DigitTransport::Info(None),
            guests: Vec::new(),
            conferencing: false,
            outcome: None,
            offer_in_2xx: None,
            no_desk: None,
            queue_policy: new.queue,
            queued: None,
            queue_offers: 1,
            urgency: None,
            whispering: None,
            actions: VecDeque::new(),
            settings,
        };
        call.step(now, |call| call.start(now));
        call
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The name of `peer`'s interface, for the call's record.
    fn interface_name(&self, peer: &Peer) -> String {
        self.settings
            .router
            .interface_name(peer.interface)
            .to_string()
    }

    /// Our IP on `peer`'s interface: the host of the Call-IDs and URIs it is sent.
    pub(super) fn local_ip(&self, peer: &Peer) -> std::net::IpAddr {
        self.settings.local.of(peer.interface).sip.ip()
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
        let forks = [
            self.setup.poll_timeout(),
            self.transfer.as_ref().and_then(|t| t.fork.poll_timeout()),
        ];
        let guests = self.guests.iter().filter_map(|g| g.fork.poll_timeout());
        self.timers
            .iter()
            .flatten()
            .copied()
            .chain(forks.into_iter().flatten())
            .chain(guests)
            .min()
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

    /// Every input goes through here: it is applied unless the call is over, then the call
    /// finishes if it ended and owes nobody an answer, or bounds its wait with the cleanup
    /// timer.
    fn step(&mut self, now: Instant, input: impl FnOnce(&mut Call)) {
        if self.state == State::Done {
            return;
        }
        self.clock = now;
        input(self);
        self.after(now);
    }

    /// Feeds one event from the endpoint.
    pub fn handle_sip(&mut self, now: Instant, event: SipEvent) {
        self.step(now, |call| call.dispatch_sip(now, event));
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
                if server == self.caller.server {
                    self.handle_cancel();
                }
            }
            SipEvent::AckTimeout { server } => {
                if server == self.caller.server
                    && (self.state == State::Answered || self.is_queued())
                {
                    self.hang_up(None, EndedBy::Gateway, "no ACK from caller");
                }
            }
        }
    }

    /// A response to a request of ours, to whichever state sent it.
    fn handle_response(&mut self, now: Instant, branch: &str, response: Response) {
        if self.answer_in_dialog_challenge(branch, &response) {
            return;
        }
        if self.handle_refresh_response(now, branch, &response) {
            return;
        }
        let method = response.cseq().map(|c| c.method);
        if method != Some(Method::Invite) {
            if response.status >= 200 && self.is_failure_notify(branch) {
                self.failure_notify = None;
            }
            // BYE or CANCEL answers: only the final ones matter.
            if response.status >= 200 {
                self.pending.remove(branch);
            }
            return;
        }
        if self
            .transfer
            .as_ref()
            .is_some_and(|t| t.fork.is_current(branch))
        {
            self.handle_transfer_response(now, response);
        } else if let Some(leg) = [Leg::A, Leg::B].into_iter().find(|leg| {
            self.legs[*leg]
                .uac_invite
                .as_ref()
                .is_some_and(|a| a.branch == branch)
        }) {
            self.leg_answered_again(leg, &response);
        } else if self.handle_guest_response(now, branch, &response) {
        } else if self.setup.is_current(branch) {
            self.handle_setup_response(now, response);
        } else {
            self.handle_stale_response(branch, &response);
        }
    }

    fn handle_transaction_timeout(&mut self, now: Instant, branch: &str, method: Method) {
        self.forget_in_dialog(branch);
        if self.handle_refresh_timeout(branch) {
            return;
        }
        if method != Method::Invite {
            if self.is_failure_notify(branch) {
                self.failure_notify = None;
            }
            self.pending.remove(branch);
            return;
        }
        self.retired.settled(branch);
        if self
            .transfer
            .as_ref()
            .is_some_and(|t| t.fork.is_current(branch))
        {
            self.transfer_failed(now, 408);
        } else if let Some(index) = self.inviting_guest_with(branch) {
            self.guest_failed(now, index, 408);
        } else if self.setup.is_current(branch) {
            self.setup_failed(now, 408, "Request Timeout");
        }
    }

    /// The relay saw no media for the inactivity timeout.
    pub fn handle_media_inactive(&mut self, now: Instant) {
        self.step(now, |call| {
            if call.state == State::Answered || call.is_queued() {
                call.hang_up(None, EndedBy::Gateway, "media timeout");
            }
        });
    }

    /// A desk freed a seat (`[[peer]] max_calls`) or a queued caller left a line: a queued
    /// call may be offered now.
    pub fn handle_desks_freed(&mut self, now: Instant) {
        self.step(now, |call| call.desks_freed(now));
    }

    /// Whether the call waits in a queue (its task passes [`Call::handle_desks_freed`] on).
    pub fn waits_for_desks(&self) -> bool {
        self.waits_in_line()
    }

    /// The signal [`Call::handle_desks_freed`] follows.
    pub fn desk_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.settings.router.desk_signal().subscribe()
    }

    /// The gateway is stopping: end the call cleanly.
    pub fn handle_shutdown(&mut self, now: Instant) {
        self.step(now, |call| match call.state {
            State::Calling | State::Answered => {
                call.hang_up(None, EndedBy::Gateway, "gateway shutdown")
            }
            State::Ending | State::Done => {}
        });
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.step(now, |call| call.timeouts(now));
    }

    fn timeouts(&mut self, now: Instant) {
        for (index, timer) in TIMERS.iter().enumerate() {
            let Some(at) = self.timers[index] else {
                continue;
            };
            if at > now {
                continue;
            }
            self.timers[index] = None;
            match timer {
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
                Timer::Cleanup => {
                    if self.state == State::Ending {
                        self.pending.clear();
                        self.finish();
                    }
                }
                Timer::Announcement => self.no_desk_announced(),
                Timer::QueueRetry => self.queue_due(now),
                Timer::Whisper => self.whispered(),
            }
        }
        if self.state == State::Done {
            return;
        }
        if let Some(timeout) = self.setup.handle_timeout(now) {
            self.setup_timeout(now, timeout);
        }
        if let Some(timeout) = self
            .transfer
            .as_mut()
            .and_then(|t| t.fork.handle_timeout(now))
        {
            self.transfer_timeout(now, timeout);
        }
        if let Some((index, timeout)) = self
            .guests
            .iter_mut()
            .enumerate()
            .find_map(|(i, g)| g.fork.handle_timeout(now).map(|t| (i, t)))
        {
            self.guest_timeout(now, index, timeout);
        }
    }

    /// Ends the call for every party (a platform's command): BYE (or CANCEL and 503) to all.
    pub fn hang_up_all(&mut self, now: Instant) {
        self.step(now, |call| {
            call.hang_up(None, EndedBy::Gateway, "hung up by the work-order system")
        });
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
            .push_back(Action::Media(crate::media::MediaCommand::Mute(
                party, muted,
            )));
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
            self.legs[*leg].dialog.is_some()
                && self.leg_peer(*leg).and_then(|p| p.platform.as_deref()) == Some(platform)
        })
    }

    /// The platform of leg B's peer (the current attempt's, or the answered one's).
    pub fn b_platform(&self) -> Option<String> {
        self.b_peer().and_then(|p| p.platform.clone())
    }

    /// The platform of the configured peer `name`.
    pub fn platform_of_peer(&self, name: &str) -> Option<String> {
        self.settings
            .router
            .peer_by_name(name)
            .and_then(|p| p.platform.clone())
    }

    /// The route a call to `number` at `unix_ms` takes, as configured (the figures' `route`).
    pub fn route_name(&self, number: &str, unix_ms: i64) -> Option<String> {
        self.settings.router.route_name_at(number, unix_ms)
    }

    /// The platform of the caller's peer.
    pub fn caller_platform(&self) -> Option<String> {
        self.caller_peer.platform.clone()
    }

    /// The caller's number as presented (From user part), for the record.
    pub fn caller_number(&self) -> String {
        self.caller
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

    fn is_failure_notify(&self, branch: &str) -> bool {
        self.failure_notify
            .as_ref()
            .is_some_and(|(_, notify)| notify == branch)
    }

    /// The peer of `leg`'s party.
    fn leg_peer(&self, leg: Leg) -> Option<&Arc<Peer>> {
        self.legs[leg].peer()
    }

    /// The peer of leg B's current (or answered) attempt.
    fn b_peer(&self) -> Option<&Arc<Peer>> {
        self.legs[Leg::B].peer()
    }

    /// Whether leg B is an agent's: its peer belongs to a platform (12345, 110, ...).
    fn b_is_agent(&self) -> bool {
        self.b_peer().is_some_and(|p| p.platform.is_some())
    }

    /// The route to a third party (a transfer target, a conference guest): the same table as
    /// new calls, its down peers left out.
    fn route_to(&self, number: &str) -> Result<Vec<Arc<Peer>>, TransferError> {
        let router = &self.settings.router;
        let at = router.now_ms();
        match router.available_at(number, at) {
            Some(peers) if !peers.is_empty() => Ok(peers),
            Some(_)
                if router
                    .route_at(number, at)
                    .is_some_and(|all| !all.is_empty()) =>
            {
                Err(TransferError::PeersDown(number.to_string()))
            }
            _ => Err(TransferError::NoRoute(number.to_string())),
        }
    }

    /// A linkage from `from`'s party to `number` (a transfer or a conference guest) starts:
    /// its fresh id (a Call-ID's random part), announced for its record with the first peer of
    /// `route`.
    fn request_linkage(
        &mut self,
        kind: LinkageKind,
        from: Leg,
        number: &str,
        trigger: Trigger,
        route: &[Arc<Peer>],
    ) -> String {
        let id = self.ids.call_id("linkage");
        let linkage_id = id.split('@').next().unwrap_or(&id).to_string();
        let (from_peer, from_platform) = self
            .leg_peer(from)
            .map(|p| (p.name.clone(), p.platform.clone()))
            .unwrap_or_default();
        let (to_peer, to_platform) = route
            .first()
            .map(|p| (p.name.clone(), p.platform.clone()))
            .unwrap_or_default();
        self.actions
            .push_back(Action::Linkage(LinkageUpdate::Requested {
                linkage_id: linkage_id.clone(),
                kind,
                target: number.to_string(),
                trigger,
                from_peer,
                from_platform,
                to_peer,
                to_platform,
            }));
        linkage_id
    }

    /// A fresh SRTP key for an offer to `peer` if it must have SRTP (a key per peer tried: a
    /// peer that failed never learns the key of the one that answered); from the call's
    /// keystream, never the OS.
    fn offer_key(&mut self, peer: &Peer) -> Option<MasterKey> {
        (peer.srtp == SrtpMode::Mandatory).then(|| self.new_key())
    }

    /// A fresh SRTP master key and salt.
    fn new_key(&mut self) -> MasterKey {
        MasterKey::from_ids(&mut self.ids)
    }
}
