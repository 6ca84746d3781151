//! The three-way call (三方通话) on the call model: guests invited beside legs A and B, each on a
//! port pair of its own, mixed by the relay once three or more parties are in.
//!
//! Order of events: [`Call::conference`] (the `*3` hotkey or the work-order API) asks the task
//! for a port pair ([`Action::OpenParty`]), [`Call::handle_party_opened`] sends the INVITE with
//! the citizen's identity; the guest's answer joins it to the audio ([`MediaCommand::Join`]).
//! When a leg's party leaves (the agent hangs up), the first guest takes that leg over, so the
//! two-party paths (transfer, hang-up, re-INVITE) keep working on it; nobody is re-INVITEd.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::{
    leg_media, Action, Attempt, Call, ConferenceUpdate, Guest, InviteTo, LinkageKind,
    LinkageUpdate, State, Timer, TransferError,
};
use crate::media::{Leg, MediaCommand, Party};
use crate::sip::dialog::Dialog;
use crate::sip::message::{self, Headers, Method, Request, Response};
use crate::sip::sdp::{self, Direction, Origin, SrtpMode};
use crate::sip::transaction::{DialogKey, ServerTransactionId};
use crate::sip::transport::Target;

use super::super::hotkey;
use super::super::transfer::{CallerIdentity, Trigger};

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
        let result = self.start_conference(from, number, trigger);
        self.arm_cleanup(now);
        result
    }

    pub(super) fn start_conference(
        &mut self,
        from: Leg,
        number: &str,
        trigger: Trigger,
    ) -> Result<(), TransferError> {
        if self.state != State::Answered || self.dialog(from).is_none() {
            return Err(TransferError::NotAnswered);
        }
        if self.transfer.is_some() || self.guests.iter().any(|g| g.dialog.is_none()) {
            return Err(TransferError::InProgress);
        }
        let max = self.settings.conference_max_parties;
        if 2 + self.guests.len() >= max {
            return Err(TransferError::ConferenceFull(max));
        }
        let route = self
            .settings
            .router
            .route(number)
            .filter(|peers| !peers.is_empty())
            .ok_or_else(|| TransferError::NoRoute(number.to_string()))?
            .to_vec();
        let linkage_id = self.new_linkage_id();
        let from_peer = self
            .leg_peer(from)
            .map(|p| (p.name.clone(), p.platform.clone()))
            .unwrap_or_default();
        self.actions
            .push_back(Action::Linkage(LinkageUpdate::Requested {
                linkage_id: linkage_id.clone(),
                kind: LinkageKind::Conference,
                target: number.to_string(),
                trigger,
                from_peer: from_peer.0,
                from_platform: from_peer.1,
                to_peer: route[0].name.clone(),
                to_platform: route[0].platform.clone(),
            }));
        tracing::info!(call = %self.id, linkage = %linkage_id, target = number, trigger = trigger.as_str(), "conference guest invited");
        let local_ip = self.settings.local_sip.ip().to_string();
        self.guests.push(Guest {
            from,
            linkage_id,
            number: number.to_string(),
            route,
            party: None,
            media: None,
            attempt: None,
            call_id: self.ids.call_id(&local_ip),
            tag: self.ids.tag(),
            origin: Origin::new(self.a.media.ip(), self.ids.next_u64() >> 12),
            offer: None,
            local_sdp: None,
            dialog: None,
            endpoint: None,
            ringing: false,
        });
        self.actions.push_back(Action::OpenParty);
        Ok(())
    }

    /// The task's answer to [`Action::OpenParty`]: the guest's party and local RTP address,
    /// or None when no port pair (or party) was left.
    pub fn handle_party_opened(&mut self, now: Instant, opened: Option<(Party, SocketAddr)>) {
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
        self.arm_cleanup(now);
    }

    /// The guest still being invited, if any.
    fn inviting(&self) -> Option<usize> {
        self.guests.iter().position(|g| g.dialog.is_none())
    }

    /// Sends guest `index`'s INVITE to the `peer_index`-th peer of its route.
    fn guest_to_peer(&mut self, now: Instant, index: usize, peer_index: usize) {
        let branch = self.ids.branch();
        if peer_index > 0 {
            // A new peer is a new dialog (§8.2.2.2: the same Call-ID, tag and CSeq towards an
            // SBC pair would be a merged request): fresh Call-ID and tag.
            let call_id = self.ids.call_id(&self.settings.local_sip.ip().to_string());
            let tag = self.ids.tag();
            let guest = &mut self.guests[index];
            let old = guest.key();
            guest.call_id = call_id;
            guest.tag = tag;
            let new = guest.key();
            self.actions.push_back(Action::UnregisterDialog(old));
            self.actions.push_back(Action::RegisterDialog(new));
        }
        let guest = &mut self.guests[index];
        let (Some(peer), Some(offer)) = (guest.route.get(peer_index).cloned(), &mut guest.offer)
        else {
            return;
        };
        sdp::set_offer_key(offer, super::offer_key(&peer));
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
                identity: self.identity(guest.from.other()),
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
        let guest = &mut self.guests[index];
        guest.ringing = false;
        if let Some(previous) = guest
            .attempt
            .replace(Attempt::new(peer_index, invite, branch, target))
        {
            super::retire(&mut self.stale, &self.abandoned, previous);
        }
        self.arm(
            Timer::TransferResponse,
            Some(now + self.settings.peer_response_timeout),
        );
        self.arm(Timer::TransferRing, None);
    }

    /// A response to an INVITE of ours to a guest; true if `branch` was one.
    pub(super) fn handle_guest_response(
        &mut self,
        now: Instant,
        branch: &str,
        response: &Response,
    ) -> bool {
        let Some(index) = self.guests.iter().position(|g| {
            g.attempt
                .as_ref()
                .is_some_and(|a| a.branch == branch && !(a.settled && g.dialog.is_none()))
        }) else {
            return false;
        };
        if self.guests[index].dialog.is_some() {
            // A joined guest's 2xx again: the same ACK (§13.2.2.4); a 2xx from another fork is
            // acknowledged and released.
            if (200..300).contains(&response.status) {
                if let Some(dialog) = self.ack_guest(index, response) {
                    let ours = self.guests[index]
                        .dialog
                        .as_ref()
                        .is_some_and(|d| d.remote_tag() == dialog.remote_tag());
                    if !ours {
                        let target = self.guests[index].target().unwrap_or(self.a.target);
                        self.bye_dialog(dialog, target, "forked answer not used");
                    }
                }
            }
            return true;
        }
        match response.status {
            100..=199 => {
                self.arm(Timer::TransferResponse, None);
                let guest = &mut self.guests[index];
                if let Some(attempt) = guest.attempt.as_mut() {
                    attempt.provisional = true;
                }
                if response.status > 100 && !guest.ringing {
                    guest.ringing = true;
                    let linkage_id = guest.linkage_id.clone();
                    self.actions
                        .push_back(Action::Linkage(LinkageUpdate::Ringing { linkage_id }));
                }
                if self.timer(Timer::TransferRing).is_none() {
                    self.arm(
                        Timer::TransferRing,
                        Some(now + self.settings.transfer_ring_timeout),
                    );
                }
            }
            200..=299 => self.guest_answered(now, index, response),
            status => self.guest_failed(now, status),
        }
        true
    }

    fn ack_guest(&mut self, index: usize, response: &Response) -> Option<Dialog> {
        let attempt = self.guests[index].attempt.as_ref()?;
        let target = attempt.target;
        let sequence = attempt.invite.cseq().map_or(1, |c| c.sequence);
        let dialog = Dialog::new_uac(&attempt.invite, response)?;
        let ack = self.with_via(dialog.ack(sequence), target);
        self.actions.push_back(Action::SendRequest {
            request: ack,
            target,
        });
        Some(dialog)
    }

    fn guest_answered(&mut self, now: Instant, index: usize, response: &Response) {
        let Some(dialog) = self.ack_guest(index, response) else {
            return;
        };
        if let Some(attempt) = self.guests[index].attempt.as_mut() {
            attempt.settled = true;
        }
        let guest = &self.guests[index];
        let negotiated = match (&guest.offer, response.sdp().map(sdp::parse)) {
            (Some(offer), Some(Ok(answer))) => {
                sdp::accept_answer(offer, &answer, &self.settings.policy).ok()
            }
            _ => None,
        };
        let (Some(negotiated), Some(party)) = (negotiated, guest.party) else {
            let target = guest.target().unwrap_or(self.a.target);
            self.bye_dialog(dialog, target, "guest's answer not acceptable");
            self.guest_failed(now, 488);
            return;
        };
        self.arm(Timer::TransferResponse, None);
        self.arm(Timer::TransferRing, None);
        let media = leg_media(&negotiated);
        let guest = &mut self.guests[index];
        guest.dialog = Some(dialog);
        guest.endpoint = Some(media);
        guest.local_sdp = guest.offer.as_ref().map(|o| o.to_string());
        let (linkage_id, number) = (guest.linkage_id.clone(), guest.number.clone());
        let peer = guest.peer().map(|p| p.name.clone()).unwrap_or_default();
        self.actions
            .push_back(Action::Media(MediaCommand::Configure(party, media)));
        self.actions
            .push_back(Action::Media(MediaCommand::Join(party)));
        self.actions
            .push_back(Action::Linkage(LinkageUpdate::Answered { linkage_id }));
        self.update_conference();
        self.actions
            .push_back(Action::Conference(ConferenceUpdate::Joined {
                party,
                peer,
                number,
            }));
        tracing::info!(call = %self.id, party = party.index(), "conference guest joined");
        if self.b.dialog.is_none() && self.state == State::Answered {
            // The agent left while it rang: the guest takes its place.
            self.ringback(None);
            self.leg_left(Leg::B);
        }
    }

    /// The guest being invited failed with `status`: its route's next peer on 408, 5xx or 6xx;
    /// otherwise the invitation ends and the call goes on as it was.
    pub(super) fn guest_failed(&mut self, now: Instant, status: u16) {
        let Some(index) = self.inviting() else {
            return;
        };
        let guest = &mut self.guests[index];
        let Some(attempt) = guest.attempt.as_mut() else {
            return;
        };
        attempt.settled = true;
        let status = if attempt.timed_out { 408 } else { status };
        let next = attempt.peer_index + 1;
        if (status == 408 || status >= 500) && next < guest.route.len() {
            self.guest_to_peer(now, index, next);
            return;
        }
        self.arm(Timer::TransferResponse, None);
        self.arm(Timer::TransferRing, None);
        let guest = self.guests.remove(index);
        tracing::info!(call = %self.id, linkage = %guest.linkage_id, status, "conference guest failed");
        self.actions
            .push_back(Action::Linkage(LinkageUpdate::Failed {
                linkage_id: guest.linkage_id.clone(),
                status,
            }));
        self.actions
            .push_back(Action::UnregisterDialog(guest.key()));
        if let Some(party) = guest.party {
            self.actions.push_back(Action::CloseParty(party));
        }
        if let Some(attempt) = guest.attempt {
            super::retire(&mut self.stale, &self.abandoned, attempt);
        }
        if self.state == State::Answered && self.b.dialog.is_none() {
            // The agent had left: never drop the citizen (back to the number first called).
            self.fall_back(now, Leg::B);
        }
    }

    /// The invitation rang too long: CANCEL it (its 487 fails it as 408).
    pub(super) fn guest_ring_timeout(&mut self) {
        let Some(index) = self.inviting() else {
            return;
        };
        let Some(attempt) = self.guests[index].attempt.as_mut() else {
            return;
        };
        attempt.timed_out = true;
        attempt.cancel_sent = true;
        let (request, target) = (message::cancel_for(&attempt.invite), attempt.target);
        self.actions
            .push_back(Action::SendRequest { request, target });
    }

    /// The guest whose dialog `request` belongs to.
    /// (The remote tag must match too: a late dialog from a peer failed over from is not it.)
    pub(super) fn guest_of(&self, request: &Request) -> Option<usize> {
        self.guests
            .iter()
            .position(|g| g.dialog.as_ref().is_some_and(|d| d.matches(request)))
    }

    /// A request in a joined guest's dialog.
    pub(super) fn handle_guest_request(
        &mut self,
        now: Instant,
        index: usize,
        server: ServerTransactionId,
        request: &Request,
    ) {
        let in_order = self.guests[index]
            .dialog
            .as_mut()
            .is_some_and(|d| d.accept_remote_sequence(request));
        let respond = |call: &mut Call, status: u16| {
            let mut response = Response::for_request(request, status, None);
            if status == 405 {
                response.headers.push("Allow", super::ALLOW);
            }
            call.actions
                .push_back(Action::SendResponse { server, response });
        };
        if !in_order {
            respond(self, 500);
            return;
        }
        match request.method {
            Method::Bye => {
                respond(self, 200);
                self.guest_left(index);
            }
            Method::Invite | Method::Update => {
                let guest = &mut self.guests[index];
                let (Some(media), Some(party), Some(target)) =
                    (guest.media, guest.party, guest.target())
                else {
                    respond(self, 500);
                    return;
                };
                let mode = guest.peer().map_or(SrtpMode::Optional, |p| p.srtp);
                let answered = super::answer_reoffer(
                    &self.settings.policy,
                    media,
                    request,
                    &mut guest.origin,
                    &mut guest.local_sdp,
                    mode,
                );
                if answered.is_ok() {
                    if let Some(dialog) = guest.dialog.as_mut() {
                        dialog.refresh_target(request.contact());
                    }
                }
                self.respond_reoffer(party, server, request, target, answered, Headers::new());
            }
            Method::Info => {
                respond(self, 200);
                if let (Some(digit), Some(party)) = (
                    hotkey::dtmf_of_info(request.content_type(), &request.body),
                    self.guests[index].party,
                ) {
                    self.send_digit_to_others(party, digit);
                }
            }
            Method::Options => respond(self, 200),
            Method::Refer => {
                let mut response = Response::for_request(request, 403, None);
                response.reason = "Transfer Not Possible From A Conference Guest".into();
                self.actions
                    .push_back(Action::SendResponse { server, response });
            }
            _ => respond(self, 405),
        }
        self.arm_cleanup(now);
    }

    /// Hangs up one party (a platform's command): a guest gets a BYE and leaves; a leg's party
    /// gets a BYE and a guest takes the leg over, as when it hangs up itself. Outside a
    /// conference, or for the caller when the conference ends with the caller, the call ends.
    ///
    /// # Errors
    /// [`TransferError::NotAnswered`] when no such party is in the call.
    pub fn hang_up_party(&mut self, now: Instant, party: u32) -> Result<(), TransferError> {
        let party = self.audio_party(party).ok_or(TransferError::NotAnswered)?;
        if let Some(index) = self
            .guests
            .iter()
            .position(|g| g.party == Some(party) && g.dialog.is_some())
        {
            let guest = &mut self.guests[index];
            if let (Some(dialog), Some(target)) = (guest.dialog.take(), guest.target()) {
                self.bye_dialog_with_reason(
                    dialog,
                    target,
                    Some("hung up by the work-order system"),
                );
            }
            self.guest_left(index);
        } else {
            let leg = if party == self.a.party {
                Leg::A
            } else {
                Leg::B
            };
            let ends =
                !self.has_guests() || (leg == Leg::A && self.settings.conference_ends_with_caller);
            if ends {
                self.hang_up_all(now);
                return Ok(());
            }
            let target = self.leg_target(leg);
            if let Some(dialog) = self.dialog_mut(leg).take() {
                self.bye_dialog_with_reason(
                    dialog,
                    target,
                    Some("hung up by the work-order system"),
                );
            }
            self.leg_left(leg);
        }
        self.arm_cleanup(now);
        Ok(())
    }

    /// Guest `index` hung up.
    fn guest_left(&mut self, index: usize) {
        let guest = self.guests.remove(index);
        self.actions
            .push_back(Action::UnregisterDialog(guest.key()));
        if let Some(party) = guest.party {
            self.actions
                .push_back(Action::Media(MediaCommand::Leave(party)));
            self.actions
                .push_back(Action::Conference(ConferenceUpdate::Left { party }));
            self.actions.push_back(Action::CloseParty(party));
        }
        self.update_conference();
    }

    /// Whether a guest has joined.
    pub(super) fn has_guests(&self) -> bool {
        self.guests.iter().any(|g| g.dialog.is_some())
    }

    /// `leg`'s party hung up (answered 200 already) while guests are in: the first guest takes
    /// the leg over, the others stay.
    pub(super) fn leg_left(&mut self, leg: Leg) {
        let Some(index) = self.guests.iter().position(|g| g.dialog.is_some()) else {
            return;
        };
        let party = self.party(leg);
        self.actions
            .push_back(Action::Media(MediaCommand::Leave(party)));
        self.actions
            .push_back(Action::Conference(ConferenceUpdate::Left { party }));
        self.actions.push_back(Action::CloseParty(party));
        let guest = self.guests.remove(index);
        let (Some(party), Some(media), Some(attempt)) = (guest.party, guest.media, guest.attempt)
        else {
            return;
        };
        let identity = CallerIdentity::reached_at(&guest.number);
        let peer = attempt.peer_index;
        let old = match leg {
            Leg::A => {
                let old = DialogKey {
                    call_id: std::mem::replace(&mut self.a.call_id, guest.call_id),
                    local_tag: std::mem::replace(&mut self.a.tag, guest.tag),
                };
                self.a.dialog = guest.dialog;
                self.end_session(Leg::A);
                self.a.target = attempt.target;
                self.a.party = party;
                self.a.media = media;
                self.a.local_sdp = guest.local_sdp;
                self.a.origin = guest.origin;
                self.a.pending_offer = None;
                self.a.endpoint = guest.endpoint;
                self.a.identity = identity;
                if let Some(peer) = guest.route.get(peer) {
                    self.a.peer = Arc::clone(peer);
                }
                self.a.uac_invite = Some(attempt);
                old
            }
            Leg::B => {
                let old = DialogKey {
                    call_id: std::mem::replace(&mut self.b.call_id, guest.call_id),
                    local_tag: std::mem::replace(&mut self.b.tag, guest.tag),
                };
                self.b.dialog = guest.dialog;
                self.end_session(Leg::B);
                self.b.party = party;
                self.b.media = media;
                self.b.local_sdp = guest.local_sdp;
                if let Some(offer) = guest.offer {
                    self.b.offer = offer;
                }
                self.b.origin = guest.origin;
                self.b.endpoint = guest.endpoint;
                self.b.identity = identity;
                self.b.answered_invite_sequence = 1;
                self.route = guest.route;
                if let Some(previous) = self.attempt.replace(attempt) {
                    super::retire(&mut self.stale, &self.abandoned, previous);
                }
                self.hotkeys = None;
                self.arm(Timer::HotkeyDigits, None);
                self.detect_agent_digits();
                self.actions.push_back(Action::Attempt {
                    b_call_id: self.b.call_id.clone(),
                    b_peer: self.b_peer().map(|p| p.name.clone()).unwrap_or_default(),
                });
                old
            }
        };
        self.actions.push_back(Action::UnregisterDialog(old));
        self.announce_bridge();
        self.update_conference();
        tracing::info!(call = %self.id, leg = ?leg, party = party.index(), "conference guest took the leg over");
    }

    /// Parties whose audio is in the call.
    pub(super) fn audio_parties(&self) -> Vec<Party> {
        let mut parties = Vec::with_capacity(2 + self.guests.len());
        if self.a.dialog.is_some() {
            parties.push(self.a.party);
        }
        if self.b.dialog.is_some() {
            parties.push(self.b.party);
        }
        parties.extend(
            self.guests
                .iter()
                .filter(|g| g.dialog.is_some())
                .filter_map(|g| g.party),
        );
        parties
    }

    /// Starts or ends the conference's record as the party count crosses three.
    pub(super) fn update_conference(&mut self) {
        let mixing = self.audio_parties().len() >= 3;
        if mixing == self.conferencing {
            return;
        }
        self.conferencing = mixing;
        if mixing {
            self.actions
                .push_back(Action::Conference(ConferenceUpdate::Started));
            for leg in [Leg::A, Leg::B] {
                let peer = self
                    .leg_peer(leg)
                    .map(|p| p.name.clone())
                    .unwrap_or_default();
                let number = self.identity(leg).number.clone();
                self.actions
                    .push_back(Action::Conference(ConferenceUpdate::Joined {
                        party: self.party(leg),
                        peer,
                        number,
                    }));
            }
        } else {
            self.actions
                .push_back(Action::Conference(ConferenceUpdate::Ended));
        }
    }

    /// In a conference, a digit from `party` is played to every other party (never mixed as
    /// audio): as an RFC 4733 event to those that negotiated telephone-event, as SIP INFO
    /// (`application/dtmf-relay`) to the others.
    pub(super) fn send_digit_to_others(&mut self, party: Party, digit: char) {
        for other in self.audio_parties() {
            if other == party {
                continue;
            }
            let leg = [Leg::A, Leg::B]
                .into_iter()
                .find(|leg| self.party(*leg) == other);
            let events = match leg {
                Some(leg) => self.endpoint_media(leg),
                None => self
                    .guests
                    .iter()
                    .find(|g| g.party == Some(other))
                    .and_then(|g| g.endpoint),
            }
            .is_some_and(|m| m.telephone_event.is_some());
            if events {
                self.actions
                    .push_back(Action::Media(MediaCommand::SendDigit(other, digit)));
            } else if let Some(leg) = leg {
                self.send_dtmf_info(leg, digit, None);
            } else if let Some(guest) = self.guests.iter_mut().find(|g| g.party == Some(other)) {
                let target = guest.target();
                let info = guest.dialog.as_mut().map(|d| d.request(Method::Info));
                if let (Some(info), Some(target)) = (info, target) {
                    self.push_dtmf_info(info, target, digit, None);
                }
            }
        }
    }

    /// The call ends: BYE every joined guest, cancel an invitation under way.
    pub(super) fn release_guests(&mut self, reason: Option<&str>) {
        for guest in std::mem::take(&mut self.guests) {
            match (guest.dialog, guest.attempt) {
                (Some(dialog), Some(attempt)) => {
                    self.bye_dialog_with_reason(dialog, attempt.target, reason);
                }
                (None, Some(mut attempt)) => {
                    if attempt.provisional && !attempt.settled && !attempt.cancel_sent {
                        attempt.cancel_sent = true;
                        self.actions.push_back(Action::SendRequest {
                            request: message::cancel_for(&attempt.invite),
                            target: attempt.target,
                        });
                    }
                    self.actions
                        .push_back(Action::Linkage(LinkageUpdate::Failed {
                            linkage_id: guest.linkage_id.clone(),
                            status: 487,
                        }));
                    if !attempt.settled {
                        self.abandoned.insert(attempt.branch.clone());
                    }
                    super::retire(&mut self.stale, &self.abandoned, attempt);
                }
                _ => {}
            }
            self.actions.push_back(Action::UnregisterDialog(DialogKey {
                call_id: guest.call_id,
                local_tag: guest.tag,
            }));
        }
        if std::mem::take(&mut self.conferencing) {
            self.actions
                .push_back(Action::Conference(ConferenceUpdate::Ended));
        }
    }
}
