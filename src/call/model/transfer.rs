//! Blind and attended transfer (一键携号转接) on the call model: the one operation behind REFER,
//! hotkeys and the work-order API. The gateway calls the target through a
//! [`Fork`](super::fork::Fork) of its own, with the citizen's identity, on the transferor's
//! media port (or, for a target on another network, a port pair of its own there); the
//! answer hands the transferor's leg over, a failure leaves the citizen where
//! they are (or, with the agent gone, sends them back once to the number first called). A
//! REFER's implicit subscription gets NOTIFYs of the progress (`refer.rs`); a route with a
//! queue keeps a transfer its desks turn away waiting (`queue.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::media::{Leg, MediaCommand, Party};
use crate::routing::{Peer, QueuePolicy};
use crate::sip::message::{Host, Response};
use crate::sip::sdp::{self, Direction, Origin, SessionDescription};
use crate::sip::target::{InterfaceId, Target};
use crate::sip::transaction::DialogKey;

use super::challenge::outbound;
use super::dialogs::leg_media;
use super::fork::{Attempt, Failure, Fork, ForkTimeout, ForkTimeouts, Progress};
use super::invite::InviteTo;
use super::leg::Newcomer;
use super::queue::Waiter;
use super::refer::Refer;
use super::{Action, Call, EndedBy, LinkageKind, LinkageUpdate, State, TransferError};
use crate::call::directory::DialogId;
use crate::call::transfer::{self as refer, Trigger};

/// A transfer under way: our INVITE to the target, while citizen and agent still talk.
pub(super) struct Transfer {
    /// The transferor's leg, which the target takes over; the other leg stays.
    pub(super) from: Leg,
    linkage_id: String,
    number: String,
    pub(super) fork: Fork,
    /// Call-ID and tag of the current attempt's dialog (fresh for each peer).
    call_id: String,
    tag: String,
    origin: Origin,
    offer: SessionDescription,
    /// CSeq of the REFER whose implicit subscription gets our NOTIFYs; None for hotkeys and
    /// the API, or once the agent has left.
    pub(super) refer_sequence: Option<u32>,
    referred_by: Option<String>,
    /// Attended transfer: the target's dialog (with the agent's consultation call) that our
    /// INVITE replaces (RFC 3891).
    replaces: Option<DialogId>,
    /// The citizen hears the target's early media (the transferor's port took it over before
    /// answer).
    early_media: bool,
    /// The target's own party and port pair, on its network (`[[interface]]`) when that is
    /// not the transferor's leg's; None: the target gets the transferor's port.
    party: Option<(Party, SocketAddr)>,
    /// That party is asked for and not yet given: no INVITE has gone out.
    opening_party: bool,
    /// How the transfer waits when every desk of its route turns it away (the route's
    /// queue); None once it has waited there and given up.
    pub(super) queue: Option<QueuePolicy>,
}

impl Transfer {
    pub(super) fn linkage_id(&self) -> &str {
        &self.linkage_id
    }

    /// The number the agent transferred to.
    pub(super) fn number(&self) -> &str {
        &self.number
    }

    pub(super) fn key(&self) -> DialogKey {
        DialogKey {
            call_id: self.call_id.clone(),
            local_tag: self.tag.clone(),
        }
    }
}

impl Call {
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
        let mut result = Err(TransferError::NotAnswered);
        self.step(now, |call| {
            result = call.start_transfer(now, from, number, trigger, None);
        });
        result
    }

    /// Whether a transfer may start now, and the route to `number` it would take (the peer
    /// holding the consultation dialog alone, for an attended transfer).
    pub(super) fn transfer_route(
        &self,
        number: &str,
        consultation: Option<&Arc<Peer>>,
    ) -> Result<Vec<Arc<Peer>>, TransferError> {
        if self.state != State::Answered {
            return Err(TransferError::NotAnswered);
        }
        // One at a time; and none while a new party hears its whisper.
        if self.transfer.is_some() || self.inviting_guest() || self.whispering.is_some() {
            return Err(TransferError::InProgress);
        }
        if self.has_guests() {
            return Err(TransferError::Conference);
        }
        match consultation {
            Some(peer) => Ok(vec![Arc::clone(peer)]),
            None => self.route_to(number),
        }
    }

    pub(super) fn start_transfer(
        &mut self,
        now: Instant,
        from: Leg,
        number: &str,
        trigger: Trigger,
        refer: Option<Refer>,
    ) -> Result<(), TransferError> {
        let consultation = refer.as_ref().and_then(|r| r.consultation.as_ref());
        let route = self.transfer_route(number, consultation.map(|(_, peer)| peer))?;
        // The target is offered the transferor's port, bound on that leg's network; a target
        // on another network (`[[interface]]`) gets a port pair of its own there, which takes
        // the leg's place on answer. The route's peers share one interface.
        let interface = route
            .first()
            .map_or(InterfaceId::DEFAULT, |peer| peer.interface);
        let own_port = interface != self.legs[from].target.interface();
        let (refer_sequence, referred_by, replaces) = match refer {
            Some(refer) => (
                Some(refer.sequence),
                refer.referred_by,
                refer.consultation.map(|(dialog, _)| dialog),
            ),
            None => (None, None, None),
        };
        let linkage_id = self.request_linkage(LinkageKind::Transfer, from, number, trigger, &route);
        // A transfer to a route with a queue waits there when its desks are busy; not an
        // attended one (its one peer holds the consultation call).
        let router = &self.settings.router;
        let queue = replaces
            .is_none()
            .then(|| router.queue_at(number, router.now_ms()))
            .flatten();
        // The target gets the transferor's port: the relay hands it over on answer (or, with
        // a port of its own, the offer is made again once it is bound).
        let port = self.legs[from].media;
        let origin = Origin::new(port.ip(), self.ids.next_u64() >> 12);
        let offer = sdp::offer(&self.settings.policy, port, &origin, Direction::SendRecv);
        tracing::info!(call = %self.id, linkage = %linkage_id, target = number, trigger = trigger.as_str(), from = ?from, "transfer requested");
        let timeouts = ForkTimeouts {
            response: self.settings.peer_response_timeout,
            ring: self.settings.transfer_ring_timeout,
        };
        self.transfer = Some(Transfer {
            from,
            linkage_id,
            number: number.to_string(),
            fork: Fork::new(route, timeouts),
            call_id: String::new(),
            tag: String::new(),
            origin,
            offer,
            refer_sequence,
            referred_by,
            replaces,
            early_media: false,
            party: None,
            opening_party: own_port,
            queue,
        });
        // The subscription's first NOTIFY (RFC 3515 §2.4.5) goes before anything the first
        // INVITE may bring at once (a full desk, a queued wait).
        if let Some(sequence) = refer_sequence {
            self.notify_agent(from, sequence, 100);
        }
        if own_port {
            self.actions.push_back(Action::OpenParty { interface });
        } else {
            self.transfer_to_peer(now, 0);
        }
        Ok(())
    }

    /// Whether the transfer waits for the port pair it asked for ([`Action::OpenParty`]).
    pub(super) fn transfer_opening_party(&self) -> bool {
        self.transfer.as_ref().is_some_and(|t| t.opening_party)
    }

    /// The transfer target's own port pair on its network (or None: no port left there, the
    /// transfer fails 503 and the citizen stays); its INVITE goes out offering it.
    pub(super) fn transfer_party_opened(
        &mut self,
        now: Instant,
        opened: Option<(Party, SocketAddr)>,
    ) {
        let session = self.ids.next_u64() >> 12;
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        transfer.opening_party = false;
        let Some((party, media)) = opened else {
            tracing::warn!(call = %self.id, "no media port for the transfer target on its interface");
            self.transfer_failure(
                now,
                Failure {
                    status: 503,
                    reason: String::new(),
                    next: None,
                },
            );
            return;
        };
        transfer.party = Some((party, media));
        transfer.origin = Origin::new(media.ip(), session);
        transfer.offer = sdp::offer(
            &self.settings.policy,
            media,
            &transfer.origin,
            Direction::SendRecv,
        );
        self.transfer_to_peer(now, 0);
    }

    /// The transfer's fork (begun afresh: a queued transfer offered to the desks again)
    /// sends its INVITE to the route's first peer with room.
    pub(super) fn offer_transfer(&mut self, now: Instant) {
        self.transfer_to_peer(now, 0);
    }

    /// The queued transfer found no desk and no overflow peer: it fails busy.
    pub(super) fn transfer_failed_after_queue(&mut self, now: Instant) {
        self.transfer_failure(
            now,
            Failure {
                status: 486,
                reason: String::new(),
                next: None,
            },
        );
    }

    /// Sends the transfer's INVITE to the `index`-th peer of the target's route (or the first
    /// after it with a free seat; callers waiting in the route's line go first).
    fn transfer_to_peer(&mut self, now: Instant, index: usize) {
        let ahead = self.ahead_in_line(Waiter::Transfer);
        let Some(index) = self
            .transfer
            .as_mut()
            .and_then(|t| t.fork.claim(index, ahead))
        else {
            tracing::info!(call = %self.id, "transfer: every peer left is at its max_calls");
            self.transfer_failure(now, Failure::desks_full());
            return;
        };
        let Some(peer) = self
            .transfer
            .as_ref()
            .and_then(|t| t.fork.peer_at(index).cloned())
        else {
            return;
        };
        let local_ip = self.local_ip(&peer).to_string();
        let (call_id, tag, branch) = (
            self.ids.call_id(&local_ip),
            self.ids.tag(),
            self.ids.branch(),
        );
        let key = self.offer_key(&peer);
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        sdp::set_offer_key(&mut transfer.offer, key);
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
                identity: &self.legs[transfer.from.other()].identity,
                assert: true,
            },
            transfer.from,
            &transfer.linkage_id,
        );
        // RFC 3892: who asked for the transfer.
        if let Some(referred_by) = &transfer.referred_by {
            let local = Host::Ip(self.local_ip(&peer));
            invite
                .headers
                .push("Referred-By", refer::with_local_host(referred_by, &local));
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
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        let previous = transfer
            .fork
            .sent(now, Attempt::new(index, invite, branch, target));
        let old = (
            std::mem::replace(&mut transfer.call_id, call_id),
            std::mem::replace(&mut transfer.tag, tag),
        );
        if let Some(previous) = previous {
            self.retired.retire(previous);
        }
        if !old.0.is_empty() {
            self.actions.push_back(Action::UnregisterDialog(DialogKey {
                call_id: old.0,
                local_tag: old.1,
            }));
        }
    }

    /// A transfer attempt is over (failed over, or asked again after a 422): its early media
    /// ends with it: the transferring leg's endpoint is heard again.
    pub(super) fn end_transfer_attempt_media(&mut self) {
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        if !std::mem::take(&mut transfer.early_media) {
            return;
        }
        let leg = &self.legs[transfer.from];
        if let Some(media) = leg.endpoint {
            self.actions
                .push_back(Action::Media(MediaCommand::Replace(leg.party, media)));
        }
    }

    pub(super) fn handle_transfer_response(&mut self, now: Instant, response: Response) {
        match response.status {
            100..=199 => self.transfer_provisional(now, &response),
            200..=299 => self.transfer_answered(now, response),
            422 if self.retry_transfer_with_min_se(now, &response) => {}
            401 | 407 if self.answer_transfer_challenge(now, &response) => {}
            status => self.transfer_failed(now, status),
        }
    }

    fn transfer_provisional(&mut self, now: Instant, response: &Response) {
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        let progress = transfer.fork.handle_provisional(now, response.status);
        // Early media reaches the citizen through the transferor's port; a target with a port
        // of its own is heard from its answer.
        if response.status > 100
            && self.settings.transfer_early_media
            && !transfer.early_media
            && transfer.party.is_none()
        {
            let early = response
                .sdp()
                .map(sdp::parse)
                .and_then(Result::ok)
                .and_then(|answer| {
                    sdp::accept_answer(&transfer.offer, &answer, &self.settings.policy).ok()
                });
            if let Some(negotiated) = early {
                // The citizen hears the target's ringback or announcement (RFC 3960 gateway
                // model); the agent is no longer heard until it fails.
                transfer.early_media = true;
                let party = self.legs[transfer.from].party;
                self.actions.push_back(Action::Media(MediaCommand::Replace(
                    party,
                    leg_media(&negotiated),
                )));
            }
        }
        if progress == Progress::Ringing {
            let linkage_id = transfer.linkage_id.clone();
            self.actions
                .push_back(Action::Linkage(LinkageUpdate::Ringing { linkage_id }));
            self.notify_transfer_progress(180);
        }
    }

    fn transfer_answered(&mut self, now: Instant, response: Response) {
        let Some(transfer) = self.transfer.as_ref() else {
            return;
        };
        let Some(attempt) = transfer.fork.attempt() else {
            return;
        };
        let (invite, target) = (attempt.invite.clone(), attempt.target);
        let negotiated = response
            .sdp()
            .map(sdp::parse)
            .and_then(Result::ok)
            .and_then(|answer| {
                sdp::accept_answer(&transfer.offer, &answer, &self.settings.policy).ok()
            });
        let Some(dialog) = self.acknowledge(&invite, target, &response) else {
            return;
        };
        let Some(negotiated) = negotiated else {
            let credentials = outbound(self.transfer.as_ref().and_then(|t| t.fork.peer()));
            self.bye_dialog(
                dialog,
                target,
                credentials,
                "transfer target's answer not acceptable",
            );
            self.transfer_failed(now, 488);
            return;
        };
        if self.transfer_queued() {
            self.leave_queue(now);
        }
        self.notify_transfer_progress(200);
        let Some(mut transfer) = self.transfer.take() else {
            return;
        };
        let from = transfer.from;
        // The agent's leg is released; the target takes it over.
        if let Some(agent) = self.legs[from].dialog.take() {
            let agent_target = self.legs[from].target;
            let credentials = self.leg_outbound(from);
            self.bye_dialog(agent, agent_target, credentials, "transferred");
        }
        let media = leg_media(&negotiated);
        let peer = transfer.fork.peer().cloned();
        transfer.fork.handle_answered();
        let Some(attempt) = transfer.fork.take_attempt() else {
            return;
        };
        let local_sdp = Some(transfer.offer.to_string());
        let own_party = transfer.party;
        let old_party = self.legs[from].party;
        let newcomer = Newcomer {
            call_id: transfer.call_id,
            tag: transfer.tag,
            dialog,
            attempt,
            peer,
            number: transfer.number,
            endpoint: Some(media),
            offer: Some(transfer.offer),
            local_sdp,
            origin: transfer.origin,
            party: own_party,
        };
        let old = self.take_leg_over(from, newcomer);
        self.released.push(old);
        self.start_callee_session(now, from, &response);
        match own_party {
            None => self.actions.push_back(Action::Media(MediaCommand::Replace(
                self.legs[from].party,
                media,
            ))),
            // The target's own port takes the leg's place: the old port leaves the audio
            // (and goes back to its pool), the new one joins; two parties are relayed.
            Some((party, _)) => {
                self.actions
                    .push_back(Action::Media(MediaCommand::Leave(old_party)));
                self.actions.push_back(Action::CloseParty(old_party));
                self.actions
                    .push_back(Action::Media(MediaCommand::Configure(party, media)));
                self.actions
                    .push_back(Action::Media(MediaCommand::Join(party)));
            }
        }
        if !self.whisper(now, from) {
            self.ringback(None);
        }
        self.announce_bridge();
        self.actions
            .push_back(Action::Linkage(LinkageUpdate::Answered {
                linkage_id: transfer.linkage_id.clone(),
            }));
        tracing::info!(call = %self.id, linkage = %transfer.linkage_id, from = ?from, "transfer answered");
    }

    /// The transfer's current INVITE failed with `status`.
    pub(super) fn transfer_failed(&mut self, now: Instant, status: u16) {
        let failure = self
            .transfer
            .as_mut()
            .and_then(|t| t.fork.handle_failure(status, ""));
        if let Some(failure) = failure {
            self.transfer_failure(now, failure);
        }
    }

    pub(super) fn transfer_timeout(&mut self, now: Instant, timeout: ForkTimeout) {
        match timeout {
            ForkTimeout::NoResponse(failure) => {
                tracing::info!(call = %self.id, "transfer target did not respond");
                self.transfer_failure(now, failure);
            }
            ForkTimeout::RingedOut(request, target) => {
                self.actions
                    .push_back(Action::SendRequest { request, target });
            }
        }
    }

    /// The next peer of the target's route on 408, 5xx or 6xx; otherwise the transfer ends
    /// and the citizen stays where they are.
    fn transfer_failure(&mut self, now: Instant, failure: Failure) {
        let status = failure.status;
        if let (Some(next), State::Answered) = (failure.next, self.state) {
            tracing::info!(call = %self.id, status, "transfer: trying the target's next peer");
            self.transfer_to_peer(now, next);
            return;
        }
        if self.queue_linkage_instead(now, Waiter::Transfer, status) {
            // The refusing desk's early media ends with its attempt: the agent is heard.
            self.end_transfer_attempt_media();
            return;
        }
        let notify = self.notify_transfer_progress(status);
        let Some(mut transfer) = self.transfer.take() else {
            return;
        };
        let from = transfer.from;
        self.failure_notify = notify.map(|branch| (from, branch));
        tracing::info!(call = %self.id, linkage = %transfer.linkage_id, status, "transfer failed");
        if let Some((party, _)) = transfer.party {
            self.actions.push_back(Action::CloseParty(party));
        }
        self.restore_agent_media(&transfer);
        self.actions
            .push_back(Action::Linkage(LinkageUpdate::Failed {
                linkage_id: transfer.linkage_id.clone(),
                status,
            }));
        self.actions
            .push_back(Action::UnregisterDialog(transfer.key()));
        if let Some(attempt) = transfer.fork.take_attempt() {
            self.retired.retire(attempt);
        }
        if self.state == State::Answered && self.legs[from].dialog.is_none() {
            self.fall_back(now, from);
        }
    }

    /// The agent on `from` left and the transfer failed: never drop the citizen; send them
    /// back, once, to the number they first called (leg A's citizen) or to the number that
    /// called them (leg B's). If that is impossible too, the call ends.
    pub(super) fn fall_back(&mut self, now: Instant, from: Leg) {
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
            // Back to the number first called: the tone, not the announcement of the
            // transfer that failed.
            let waiting = self.ringback;
            self.play_to_waiting(waiting, false);
            self.start_transfer(now, from, &number, Trigger::Fallback, None)
        };
        if fallback.is_err() {
            self.hang_up(None, EndedBy::Gateway, "transfer failed");
        }
    }

    /// After a target's early media, the citizen goes back to hearing the agent.
    fn restore_agent_media(&mut self, transfer: &Transfer) {
        let leg = &self.legs[transfer.from];
        if let (true, Some(media)) = (transfer.early_media, leg.endpoint) {
            self.actions
                .push_back(Action::Media(MediaCommand::Replace(leg.party, media)));
        }
    }

    /// The call ends while a transfer rings: cancel it (a late answer is ACKed and released
    /// through the retired attempts).
    pub(super) fn abandon_transfer(&mut self) {
        if self.transfer_queued() {
            // The gateway ends the call while the transfer waits (the citizen leaving
            // abandoned the wait already).
            self.give_up_queue(self.clock);
        }
        // RFC 6665 §4.2.2: the subscription ends with a final NOTIFY.
        self.notify_transfer_progress(487);
        let Some(mut transfer) = self.transfer.take() else {
            return;
        };
        let (cancel, attempt) = transfer.fork.abandon();
        if let Some((request, target)) = cancel {
            self.actions
                .push_back(Action::SendRequest { request, target });
        }
        if let Some((party, _)) = transfer.party {
            self.actions.push_back(Action::CloseParty(party));
        }
        self.actions
            .push_back(Action::Linkage(LinkageUpdate::Failed {
                linkage_id: transfer.linkage_id.clone(),
                status: 487,
            }));
        self.actions
            .push_back(Action::UnregisterDialog(transfer.key()));
        if let Some(attempt) = attempt {
            self.retired.abandon(attempt);
        }
    }
}
