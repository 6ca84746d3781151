//! Joined conference guests: requests in their dialogs (BYE, re-INVITE), a party hung up by
//! command, a guest taking over a leg whose party left, the conference's record as parties
//! come and go, digits passed to the others, and every guest released when the call ends.

use std::time::Instant;

use crate::media::{Leg, LegMedia, MediaCommand, Party};
use crate::routing::SrtpMode;
use crate::sip::message::{Headers, Method, Request, Response};
use crate::sip::sdp::SrtpTerms;
use crate::sip::transaction::ServerTransactionId;

use super::challenge::outbound;
use super::dialogs::answer_reoffer;
use super::leg::Newcomer;
use super::whisper::Whispering;
use super::{Action, Call, ConferenceUpdate, LinkageUpdate, Timer, TransferError};
use crate::call::hotkey;

impl Call {
    /// The guest whose dialog `request` belongs to.
    /// (The remote tag must match too: a late dialog from a peer failed over from is not it.)
    pub(super) fn guest_of(&self, request: &Request) -> Option<usize> {
        self.guests
            .iter()
            .position(|g| g.dialog.as_ref().is_some_and(|d| d.matches(request)))
    }

    /// The relay's new media for guest `party` (its re-INVITE).
    pub(super) fn set_guest_endpoint(&mut self, party: Party, media: LegMedia) {
        if let Some(guest) = self.guests.iter_mut().find(|g| g.party == Some(party)) {
            guest.endpoint = Some(media);
        }
    }

    /// A request in a joined guest's dialog.
    pub(super) fn handle_guest_request(
        &mut self,
        index: usize,
        server: ServerTransactionId,
        request: &Request,
    ) {
        let in_order = self.guests[index]
            .dialog
            .as_mut()
            .is_some_and(|d| d.accept_remote_sequence(request));
        if !in_order {
            self.respond(server, request, 500);
            return;
        }
        match request.method {
            Method::Bye => {
                self.respond(server, request, 200);
                self.guest_left(index);
            }
            Method::Invite | Method::Update => self.guest_reoffer(index, server, request),
            Method::Info => {
                self.respond(server, request, 200);
                if let (Some(digit), Some(party)) = (
                    hotkey::dtmf_of_info(request.content_type(), &request.body),
                    self.guests[index].party,
                ) {
                    self.send_digit_to_others(party, digit);
                }
            }
            Method::Options => self.respond(server, request, 200),
            Method::Refer => {
                let mut response = Response::for_request(request, 403, None);
                response.reason = "Transfer Not Possible From A Conference Guest".into();
                self.actions
                    .push_back(Action::SendResponse { server, response });
            }
            _ => self.respond(server, request, 405),
        }
    }

    /// A guest's re-INVITE or UPDATE, answered by the gateway as for the legs.
    fn guest_reoffer(&mut self, index: usize, server: ServerTransactionId, request: &Request) {
        let key = self.new_key();
        let guest = &mut self.guests[index];
        let (Some(media), Some(party), Some(target)) =
            (guest.media, guest.party, guest.fork.target())
        else {
            self.respond(server, request, 500);
            return;
        };
        let mode = guest.fork.peer().map_or(SrtpMode::Optional, |p| p.srtp);
        let answered = answer_reoffer(
            &self.settings.policy,
            media,
            request,
            &mut guest.origin,
            &mut guest.local_sdp,
            SrtpTerms {
                mode,
                key: Some(key),
            },
        );
        if answered.is_ok() {
            if let Some(dialog) = guest.dialog.as_mut() {
                dialog.refresh_target(request.contact());
            }
        }
        self.respond_reoffer(party, server, request, target, answered, Headers::new());
    }

    /// Hangs up one party (a platform's command): a guest gets a BYE and leaves; a leg's party
    /// gets a BYE and a guest takes the leg over, as when it hangs up itself. Outside a
    /// conference, or for the caller when the conference ends with the caller, the call ends.
    ///
    /// # Errors
    /// [`TransferError::NotAnswered`] when no such party is in the call.
    pub fn hang_up_party(&mut self, now: Instant, party: u32) -> Result<(), TransferError> {
        let party = self.audio_party(party).ok_or(TransferError::NotAnswered)?;
        self.step(now, |call| call.hang_up_audio_party(party));
        Ok(())
    }

    fn hang_up_audio_party(&mut self, party: Party) {
        const REASON: Option<&str> = Some("hung up by the work-order system");
        if let Some(index) = self
            .guests
            .iter()
            .position(|g| g.party == Some(party) && g.dialog.is_some())
        {
            let guest = &mut self.guests[index];
            let credentials = outbound(guest.fork.peer());
            if let (Some(dialog), Some(target)) = (guest.dialog.take(), guest.fork.target()) {
                self.bye_dialog_with_reason(dialog, target, credentials, REASON);
            }
            self.guest_left(index);
            return;
        }
        let leg = self.legs.of_party(party).unwrap_or(Leg::B);
        let ends =
            !self.has_guests() || (leg == Leg::A && self.settings.conference_ends_with_caller);
        if ends {
            self.hang_up(
                None,
                super::EndedBy::Gateway,
                "hung up by the work-order system",
            );
            return;
        }
        let target = self.legs[leg].target;
        let credentials = self.leg_outbound(leg);
        if let Some(dialog) = self.legs[leg].dialog.take() {
            self.bye_dialog_with_reason(dialog, target, credentials, REASON);
        }
        self.leg_left(leg);
    }

    /// Guest `index` hung up.
    fn guest_left(&mut self, index: usize) {
        let guest = self.guests.remove(index);
        if guest.party.is_some() && self.whispering == guest.party.map(Whispering::Guest) {
            // Gone during its whisper: nobody hears one now.
            self.whispering = None;
            self.arm(Timer::Whisper, None);
        }
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
        if self.whispering.is_some()
            && self.whispering == self.guests[index].party.map(Whispering::Guest)
        {
            // It takes the leg over during its whisper: it joins now, as the leg's party.
            self.arm(Timer::Whisper, None);
            self.whispered();
        }
        let party = self.legs[leg].party;
        self.actions
            .push_back(Action::Media(MediaCommand::Leave(party)));
        self.actions
            .push_back(Action::Conference(ConferenceUpdate::Left { party }));
        self.actions.push_back(Action::CloseParty(party));
        let mut guest = self.guests.remove(index);
        let peer = guest.fork.peer().cloned();
        let (Some(party), Some(media), Some(dialog), Some(attempt)) = (
            guest.party,
            guest.media,
            guest.dialog.take(),
            guest.fork.take_attempt(),
        ) else {
            return;
        };
        let newcomer = Newcomer {
            call_id: guest.call_id,
            tag: guest.tag,
            dialog,
            attempt,
            peer,
            number: guest.number,
            endpoint: guest.endpoint,
            offer: guest.offer,
            local_sdp: guest.local_sdp,
            origin: guest.origin,
            party: Some((party, media)),
        };
        let old = self.take_leg_over(leg, newcomer);
        // The guest's INVITE offered no session timer.
        self.end_session(leg);
        self.actions.push_back(Action::UnregisterDialog(old));
        self.announce_bridge();
        self.update_conference();
        tracing::info!(call = %self.id, leg = ?leg, party = party.index(), "conference guest took the leg over");
    }

    /// Parties whose audio is in the call.
    pub(super) fn audio_parties(&self) -> Vec<Party> {
        let mut parties = Vec::with_capacity(2 + self.guests.len());
        for leg in [Leg::A, Leg::B] {
            if self.legs[leg].dialog.is_some() {
                parties.push(self.legs[leg].party);
            }
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
        if !mixing {
            self.actions
                .push_back(Action::Conference(ConferenceUpdate::Ended));
            return;
        }
        self.actions
            .push_back(Action::Conference(ConferenceUpdate::Started));
        for leg in [Leg::A, Leg::B] {
            let peer = self
                .leg_peer(leg)
                .map(|p| p.name.clone())
                .unwrap_or_default();
            let number = self.legs[leg].identity.number.clone();
            self.actions
                .push_back(Action::Conference(ConferenceUpdate::Joined {
                    party: self.legs[leg].party,
                    peer,
                    number,
                }));
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
            let leg = self.legs.of_party(other);
            let events = match leg {
                Some(leg) => self.legs[leg].endpoint,
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
                let target = guest.fork.target();
                let credentials = outbound(guest.fork.peer());
                let info = guest.dialog.as_mut().map(|d| d.request(Method::Info));
                if let (Some(info), Some(target)) = (info, target) {
                    self.push_dtmf_info(info, target, credentials, digit, None);
                }
            }
        }
    }

    /// The call ends: BYE every joined guest, cancel an invitation under way.
    pub(super) fn release_guests(&mut self, reason: Option<&str>) {
        for mut guest in std::mem::take(&mut self.guests) {
            match guest.dialog.take() {
                Some(dialog) => {
                    if let Some(target) = guest.fork.target() {
                        let credentials = outbound(guest.fork.peer());
                        self.bye_dialog_with_reason(dialog, target, credentials, reason);
                    }
                }
                None => {
                    // Still being invited (ringing, or waiting for a desk with nothing sent):
                    // its linkage ends here.
                    let (cancel, attempt) = guest.fork.abandon();
                    if let Some((request, target)) = cancel {
                        self.actions
                            .push_back(Action::SendRequest { request, target });
                    }
                    self.actions
                        .push_back(Action::Linkage(LinkageUpdate::Failed {
                            linkage_id: guest.linkage_id().to_string(),
                            status: 487,
                        }));
                    if let Some(attempt) = attempt {
                        self.retired.abandon(attempt);
                    }
                }
            }
            self.actions
                .push_back(Action::UnregisterDialog(guest.key()));
        }
        if std::mem::take(&mut self.conferencing) {
            self.actions
                .push_back(Action::Conference(ConferenceUpdate::Ended));
        }
    }
}
