//! The three-way call (三方通话) on the call model: guests invited beside legs A and B, each on a
//! port pair of its own and through a [`Fork`] of its own, mixed by the relay once three or
//! more parties are in.
//!
//! Order of events: [`Call::conference`] (the `*3` hotkey or the work-order API) asks the task
//! for a port pair ([`Action::OpenParty`]), [`Call::handle_party_opened`] sends the INVITE with
//! the citizen's identity; the guest's answer joins it to the audio ([`MediaCommand::Join`];
//! after its whisper, when one is set). Desks that are busy keep a guest from a route with a
//! queue waiting there (`queue.rs`).
//! When a leg's party leaves (the agent hangs up), the first guest takes that leg over, so the
//! two-party paths (transfer, hang-up, re-INVITE) keep working on it; nobody is re-INVITEd.

use std::net::SocketAddr;
use std::time::Instant;

use crate::media::{Leg, LegMedia, MediaCommand, Party};
use crate::sip::dialog::Dialog;
use crate::sip::message::Response;
use crate::sip::sdp::{self, Direction, Origin, SessionDescription};
use crate::sip::target::{InterfaceId, Target};
use crate::sip::transaction::DialogKey;

use super::challenge::outbound;
use super::dialogs::leg_media;
use super::fork::{Attempt, Failure, Fork, ForkTimeout, ForkTimeouts, Progress};
use super::invite::InviteTo;
use super::queue::Waiter;
use super::{Action, Call, ConferenceUpdate, LinkageKind, LinkageUpdate, State, TransferError};
use crate::call::transfer::Trigger;

/// A conference guest: a desk the gateway invited into the call beside legs A and B, on a port
/// pair of its own. Answered once its dialog is set (in the audio once its whisper, if any,
/// has played).
pub(super) struct Guest {
    /// The agent's leg that asked for it; the guest is shown the other leg's identity.
    from: Leg,
    linkage_id: String,
    pub(super) number: String,
    /// Our INVITE to the guest's route; its attempt stays once answered (for a retransmitted
    /// 2xx, §13.2.2.4).
    pub(super) fork: Fork,
    /// Set when the task gave the guest its port pair.
    pub(super) party: Option<Party>,
    pub(super) media: Option<SocketAddr>,
    pub(super) call_id: String,
    pub(super) tag: String,
    pub(super) origin: Origin,
    pub(super) offer: Option<SessionDescription>,
    pub(super) local_sdp: Option<String>,
    pub(super) dialog: Option<Dialog>,
    pub(super) endpoint: Option<LegMedia>,
    /// How the invitation waits when every desk of its route turns it away (the route's
    /// queue); None once it has waited there and given up.
    pub(super) queue: Option<crate::routing::QueuePolicy>,
}

impl Guest {
    pub(super) fn linkage_id(&self) -> &str {
        &self.linkage_id
    }

    /// The number invited.
    pub(super) fn number(&self) -> &str {
        &self.number
    }

    /// The agent's leg that invited it.
    pub(super) fn from(&self) -> Leg {
        self.from
    }

    pub(super) fn key(&self) -> DialogKey {
        DialogKey {
            call_id: self.call_id.clone(),
            local_tag: self.tag.clone(),
        }
    }

    /// The guest's dialog, once it answered and until it leaves.
    pub(super) fn dialog_mut(&mut self) -> Option<&mut Dialog> {
        self.dialog.as_mut()
    }
}

impl Call {
    /// Invites `number` into the call as a conference guest, on behalf of the party across from
    /// the agent's leg `from` (the citizen's identity, as a transfer would show it). The call
    /// goes on as it is until the guest answers; then all parties hear each other.
    ///
    /// # Errors
    /// [`TransferError`] when the call is not answered, a transfer or another invitation is
    /// under way, the conference is full, or no route reaches `number`.
    pub fn conference(
        &mut self,
        now: Instant,
        from: Leg,
        number: &str,
        trigger: Trigger,
    ) -> Result<(), TransferError> {
        let mut result = Err(TransferError::NotAnswered);
        self.step(now, |call| {
            result = call.start_conference(from, number, trigger)
        });
        result
    }

    pub(super) fn start_conference(
        &mut self,
        from: Leg,
        number: &str,
        trigger: Trigger,
    ) -> Result<(), TransferError> {
        if self.state != State::Answered || self.legs[from].dialog.is_none() {
            return Err(TransferError::NotAnswered);
        }
        // One at a time; and none while a new party hears its whisper.
        if self.transfer.is_some() || self.inviting_guest() || self.whispering.is_some() {
            return Err(TransferError::InProgress);
        }
        let max = self.settings.conference_max_parties;
        if 2 + self.guests.len() >= max {
            return Err(TransferError::ConferenceFull(max));
        }
        let route = self.route_to(number)?;
        // The guest's port pair is on its peer's network; the route's peers share one
        // interface (the configuration's checks).
        let interface = route
            .first()
            .map_or(InterfaceId::DEFAULT, |peer| peer.interface);
        let linkage_id =
            self.request_linkage(LinkageKind::Conference, from, number, trigger, &route);
        let router = &self.settings.router;
        let queue = router.queue_at(number, router.now_ms());
        tracing::info!(call = %self.id, linkage = %linkage_id, target = number, trigger = trigger.as_str(), "conference guest invited");
        let local_ip = route
            .first()
            .map(|peer| self.local_ip(peer).to_string())
            .unwrap_or_default();
        let timeouts = ForkTimeouts {
            response: self.settings.peer_response_timeout,
            ring: self.settings.transfer_ring_timeout,
        };
        self.guests.push(Guest {
            from,
            linkage_id,
            number: number.to_string(),
            fork: Fork::new(route, timeouts),
            party: None,
            media: None,
            call_id: self.ids.call_id(&local_ip),
            tag: self.ids.tag(),
            origin: Origin::new(self.legs[Leg::A].media.ip(), self.ids.next_u64() >> 12),
            offer: None,
            local_sdp: None,
            dialog: None,
            endpoint: None,
            queue,
        });
        self.actions.push_back(Action::OpenParty { interface });
        Ok(())
    }

    /// The task's answer to [`Action::OpenParty`]: the guest's party and local RTP address,
    /// or None when no port pair (or party) was left.
    pub fn handle_party_opened(&mut self, now: Instant, opened: Option<(Party, SocketAddr)>) {
        self.step(now, |call| call.party_opened(now, opened));
    }

    fn party_opened(&mut self, now: Instant, opened: Option<(Party, SocketAddr)>) {
        if self.transfer_opening_party() {
            self.transfer_party_opened(now, opened);
            return;
        }
        let Some(index) = self.inviting() else {
            return;
        };
        let Some((party, media)) = opened else {
            tracing::warn!(call = %self.id, "no media port for a conference guest");
            let guest = self.guests.remove(index);
            self.actions
                .push_back(Action::Linkage(LinkageUpdate::Failed {
                    linkage_id: guest.linkage_id,
                    status: 503,
                }));
            return;
        };
        let session = self.ids.next_u64() >> 12;
        let guest = &mut self.guests[index];
        guest.party = Some(party);
        guest.media = Some(media);
        guest.origin = Origin::new(media.ip(), session);
        guest.offer = Some(sdp::offer(
            &self.settings.policy,
            media,
            &guest.origin,
            Direction::SendRecv,
        ));
        self.actions.push_back(Action::RegisterDialog(guest.key()));
        self.guest_to_peer(now, index, 0);
    }

    /// The guest still being invited, if any.
    fn inviting(&self) -> Option<usize> {
        self.guests.iter().position(|g| g.dialog.is_none())
    }

    /// The guest still being invited.
    pub(super) fn invited_guest(&self) -> Option<&Guest> {
        self.inviting().map(|index| &self.guests[index])
    }

    pub(super) fn invited_guest_mut(&mut self) -> Option<&mut Guest> {
        let index = self.inviting()?;
        self.guests.get_mut(index)
    }

    /// The guest being invited, waiting in its route's queue, is offered to its desks again
    /// by `fork` (begun afresh): a new dialog, as for the next peer.
    pub(super) fn offer_guest(&mut self, now: Instant, fork: Fork) {
        let Some(index) = self.inviting() else {
            return;
        };
        let host = fork
            .peer_at(0)
            .map(|peer| self.local_ip(peer).to_string())
            .unwrap_or_default();
        let (call_id, tag) = (self.ids.call_id(&host), self.ids.tag());
        let guest = &mut self.guests[index];
        guest.fork = fork;
        let old = guest.key();
        guest.call_id = call_id;
        guest.tag = tag;
        let new = guest.key();
        self.actions.push_back(Action::UnregisterDialog(old));
        self.actions.push_back(Action::RegisterDialog(new));
        self.guest_to_peer(now, index, 0);
    }

    /// The queued guest found no desk and no overflow peer: the invitation fails busy.
    pub(super) fn guest_failed_after_queue(&mut self, now: Instant) {
        if let Some(index) = self.inviting() {
            self.guest_failure(
                now,
                index,
                Failure {
                    status: 486,
                    reason: String::new(),
                    next: None,
                },
            );
        }
    }

    /// A conference guest is being invited.
    pub(super) fn inviting_guest(&self) -> bool {
        self.inviting().is_some()
    }

    /// The guest being invited whose current INVITE is `branch`.
    pub(super) fn inviting_guest_with(&self, branch: &str) -> Option<usize> {
        self.guests
            .iter()
            .position(|g| g.dialog.is_none() && g.fork.is_current(branch))
    }

    /// Sends guest `index`'s INVITE to the `peer_index`-th peer of its route.
    fn guest_to_peer(&mut self, now: Instant, index: usize, peer_index: usize) {
        let ahead = self.ahead_in_line(Waiter::Guest);
        let Some(peer_index) = self.guests[index].fork.claim(peer_index, ahead) else {
            tracing::info!(call = %self.id, "conference guest: every peer left is at its max_calls");
            self.guest_failure(now, index, Failure::desks_full());
            return;
        };
        let branch = self.ids.branch();
        if peer_index > 0 {
            // A new peer is a new dialog (§8.2.2.2: the same Call-ID, tag and CSeq towards an
            // SBC pair would be a merged request): fresh Call-ID and tag.
            let host = self.guests[index]
                .fork
                .peer_at(peer_index)
                .map(|peer| self.local_ip(peer).to_string())
                .unwrap_or_default();
            let call_id = self.ids.call_id(&host);
            let tag = self.ids.tag();
            let guest = &mut self.guests[index];
            let old = guest.key();
            guest.call_id = call_id;
            guest.tag = tag;
            let new = guest.key();
            self.actions.push_back(Action::UnregisterDialog(old));
            self.actions.push_back(Action::RegisterDialog(new));
        }
        let Some(peer) = self.guests[index].fork.peer_at(peer_index).cloned() else {
            return;
        };
        let key = self.offer_key(&peer);
        let guest = &mut self.guests[index];
        let Some(offer) = guest.offer.as_mut() else {
            return;
        };
        sdp::set_offer_key(offer, key);
        let guest = &self.guests[index];
        let Some(offer) = &guest.offer else {
            return;
        };
        let target = Target::for_peer(&peer);
        let invite = self.third_party_invite(
            &InviteTo {
                peer: &peer,
                target,
                branch: &branch,
                number: &guest.number,
                call_id: &guest.call_id,
                tag: &guest.tag,
                offer,
                identity: &self.legs[guest.from.other()].identity,
                assert: true,
            },
            guest.from,
            &guest.linkage_id,
        );
        if peer_index > 0 {
            self.actions
                .push_back(Action::Linkage(LinkageUpdate::Retried {
                    linkage_id: guest.linkage_id.clone(),
                    to_peer: peer.name.clone(),
                    to_platform: peer.platform.clone(),
                }));
        }
        self.actions.push_back(Action::SendRequest {
            request: invite.clone(),
            target,
        });
        let previous = self.guests[index]
            .fork
            .sent(now, Attempt::new(peer_index, invite, branch, target));
        if let Some(previous) = previous {
            self.retired.retire(previous);
        }
    }

    /// A response to an INVITE of ours to a guest; true if `branch` was one.
    pub(super) fn handle_guest_response(
        &mut self,
        now: Instant,
        branch: &str,
        response: &Response,
    ) -> bool {
        let Some(index) = self.guests.iter().position(|g| {
            g.fork
                .attempt()
                .is_some_and(|a| a.branch == branch && !(a.settled && g.dialog.is_none()))
        }) else {
            return false;
        };
        let guest = &self.guests[index];
        if let (Some(dialog), Some(attempt)) = (guest.dialog.as_ref(), guest.fork.attempt()) {
            // A joined guest's 2xx again: the same ACK; a 2xx from another fork is
            // acknowledged and released.
            let ours = dialog.remote_tag().to_string();
            let (invite, target) = (attempt.invite.clone(), attempt.target);
            let credentials = outbound(guest.fork.peer());
            self.answer_again(
                &invite,
                target,
                response,
                credentials,
                |d| d.remote_tag() == ours,
                "forked answer not used",
            );
            return true;
        }
        match response.status {
            100..=199 => {
                let guest = &mut self.guests[index];
                if guest.fork.handle_provisional(now, response.status) == Progress::Ringing {
                    let linkage_id = guest.linkage_id.clone();
                    self.actions
                        .push_back(Action::Linkage(LinkageUpdate::Ringing { linkage_id }));
                }
            }
            200..=299 => self.guest_answered(now, index, response),
            401 | 407 if self.answer_guest_challenge(now, index, response) => {}
            status => self.guest_failed(now, index, status),
        }
        true
    }

    fn guest_answered(&mut self, now: Instant, index: usize, response: &Response) {
        let Some(attempt) = self.guests[index].fork.attempt() else {
            return;
        };
        let (invite, target) = (attempt.invite.clone(), attempt.target);
        let Some(dialog) = self.acknowledge(&invite, target, response) else {
            return;
        };
        let guest = &mut self.guests[index];
        guest.fork.handle_answered();
        let negotiated = match (&guest.offer, response.sdp().map(sdp::parse)) {
            (Some(offer), Some(Ok(answer))) => {
                sdp::accept_answer(offer, &answer, &self.settings.policy).ok()
            }
            _ => None,
        };
        let (Some(negotiated), Some(party)) = (negotiated, guest.party) else {
            let credentials = outbound(self.guests[index].fork.peer());
            self.bye_dialog(dialog, target, credentials, "guest's answer not acceptable");
            self.guest_failed(now, index, 488);
            return;
        };
        let media = leg_media(&negotiated);
        if self.guest_queued() {
            self.leave_queue(now);
        }
        let guest = &mut self.guests[index];
        guest.dialog = Some(dialog);
        guest.endpoint = Some(media);
        guest.local_sdp = guest.offer.as_ref().map(|o| o.to_string());
        let (linkage_id, from) = (guest.linkage_id.clone(), guest.from);
        let platform = guest.fork.peer().and_then(|p| p.platform.clone());
        self.actions
            .push_back(Action::Media(MediaCommand::Configure(party, media)));
        self.actions
            .push_back(Action::Linkage(LinkageUpdate::Answered { linkage_id }));
        let agent_gone = self.legs[from].dialog.is_none() && self.state == State::Answered;
        // With the agent gone the guest takes its leg over and hears its whisper as a
        // transfer target does (below); otherwise it hears it before it joins.
        if agent_gone || !self.whisper_to_guest(now, party, platform.as_deref()) {
            self.guest_joined(party);
        }
        if agent_gone {
            // The agent left while it rang: the guest takes its place.
            self.leg_left(from);
            if !self.whisper(now, from) {
                self.ringback(None);
            }
        }
    }

    /// The answered guest on `party` joins the call's audio, and the conference's record.
    pub(super) fn guest_joined(&mut self, party: Party) {
        let Some(guest) = self.guests.iter().find(|g| g.party == Some(party)) else {
            return;
        };
        let number = guest.number.clone();
        let peer = guest
            .fork
            .peer()
            .map(|p| p.name.clone())
            .unwrap_or_default();
        self.actions
            .push_back(Action::Media(MediaCommand::Join(party)));
        self.update_conference();
        self.actions
            .push_back(Action::Conference(ConferenceUpdate::Joined {
                party,
                peer,
                number,
            }));
        tracing::info!(call = %self.id, party = party.index(), "conference guest joined");
    }

    /// Guest `index`'s current INVITE failed with `status`.
    pub(super) fn guest_failed(&mut self, now: Instant, index: usize, status: u16) {
        if let Some(failure) = self.guests[index].fork.handle_failure(status, "") {
            self.guest_failure(now, index, failure);
        }
    }

    pub(super) fn guest_timeout(&mut self, now: Instant, index: usize, timeout: ForkTimeout) {
        match timeout {
            ForkTimeout::NoResponse(failure) => {
                tracing::info!(call = %self.id, "conference guest did not respond");
                self.guest_failure(now, index, failure);
            }
            // Its 487 fails it as 408.
            ForkTimeout::RingedOut(request, target) => {
                self.actions
                    .push_back(Action::SendRequest { request, target });
            }
        }
    }

    /// Its route's next peer on 408, 5xx or 6xx; otherwise the invitation ends and the call
    /// goes on as it was.
    fn guest_failure(&mut self, now: Instant, index: usize, failure: Failure) {
        if let Some(next) = failure.next {
            self.guest_to_peer(now, index, next);
            return;
        }
        if self.queue_linkage_instead(now, Waiter::Guest, failure.status) {
            return;
        }
        let mut guest = self.guests.remove(index);
        tracing::info!(call = %self.id, linkage = %guest.linkage_id, status = failure.status, "conference guest failed");
        self.actions
            .push_back(Action::Linkage(LinkageUpdate::Failed {
                linkage_id: guest.linkage_id.clone(),
                status: failure.status,
            }));
        self.actions
            .push_back(Action::UnregisterDialog(guest.key()));
        if let Some(party) = guest.party {
            self.actions.push_back(Action::CloseParty(party));
        }
        if let Some(attempt) = guest.fork.take_attempt() {
            self.retired.retire(attempt);
        }
        if self.state == State::Answered && self.legs[guest.from].dialog.is_none() {
            // The agent had left: never drop the citizen (back to the number first called).
            self.fall_back(now, guest.from);
        }
    }
}
