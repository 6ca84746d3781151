//! Requests inside the legs' dialogs (§12.2.2): which leg (or guest) a request belongs to, its
//! CSeq order, BYE (which may leave a waiting citizen, a conference, or end the call), REFER,
//! INFO, OPTIONS; re-INVITE and UPDATE answered by the gateway itself (media anchored, RFC 3264
//! §8), and the ACKs that carry an answer to our offer.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;

use crate::media::{Leg, LegMedia, MediaCommand, Party};
use crate::routing::SrtpMode;
use crate::sip::message::{Headers, Method, Request, Response};
use crate::sip::sdp::{self, Direction, MediaPolicy, Negotiated, Origin, SrtpTerms};
use crate::sip::target::Target;
use crate::sip::transaction::ServerTransactionId;

use super::{Action, Call, EndedBy, State, ALLOW};

impl Call {
    pub(super) fn handle_request(
        &mut self,
        now: Instant,
        server: ServerTransactionId,
        request: Request,
    ) {
        if server == self.caller.server
            && request.method == Method::Invite
            && self.legs[Leg::A].dialog.is_none()
        {
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
        let leg = [Leg::A, Leg::B].into_iter().find(|leg| {
            let leg = &self.legs[*leg];
            leg.dialog.as_ref().is_some_and(|d| d.matches(&request))
                || (request.call_id() == leg.call_id && to_tag.as_deref() == Some(leg.tag.as_str()))
        });
        let Some(leg) = leg else {
            if let Some(index) = self.guest_of(&request) {
                self.handle_guest_request(index, server, &request);
            } else {
                // Another dialog of ours (a transfer target's early dialog): nothing to act on.
                let response = Response::for_request(&request, 481, None);
                self.actions
                    .push_back(Action::SendResponse { server, response });
            }
            return;
        };
        let in_order = self.legs[leg]
            .dialog
            .as_mut()
            .map(|d| d.accept_remote_sequence(&request));
        match in_order {
            None => {
                // Early dialog: BYE before answer from the caller ends the attempt (§15).
                if request.method == Method::Bye && leg == Leg::A && self.state == State::Calling {
                    self.respond(server, &request, 200);
                    self.handle_cancel();
                } else {
                    self.respond(server, &request, 481);
                }
            }
            Some(false) => self.respond(server, &request, 500),
            Some(true) => self.handle_in_dialog(now, leg, server, &request),
        }
    }

    /// A plain response to `request`, with Allow on a 405.
    pub(super) fn respond(&mut self, server: ServerTransactionId, request: &Request, status: u16) {
        let mut response = Response::for_request(request, status, None);
        if status == 405 {
            response.headers.push("Allow", ALLOW);
        }
        self.actions
            .push_back(Action::SendResponse { server, response });
    }

    /// An in-order request in `leg`'s confirmed dialog.
    fn handle_in_dialog(
        &mut self,
        now: Instant,
        leg: Leg,
        server: ServerTransactionId,
        request: &Request,
    ) {
        match request.method {
            Method::Bye => {
                self.respond(server, request, 200);
                self.handle_bye(now, leg);
            }
            Method::Refer => self.handle_refer(now, leg, server, request),
            Method::Invite | Method::Update => self.handle_offer(now, leg, server, request),
            Method::Info => {
                self.respond(server, request, 200);
                self.handle_info(now, leg, request);
            }
            Method::Options => self.respond(server, request, 200),
            _ => self.respond(server, request, 405),
        }
    }

    /// `leg`'s party hung up (answered 200 already).
    fn handle_bye(&mut self, now: Instant, leg: Leg) {
        if self.failure_notify.as_ref().is_some_and(|(l, _)| *l == leg) {
            // The agent left before it learnt that its transfer failed (blind-transfer phones
            // hang up right after the 202): keep the citizen, as if it had left while the
            // target rang.
            self.legs[leg].party_left();
            self.failure_notify = None;
            self.ringback(Some(leg.other()));
            self.fall_back(now, leg);
        } else if self.transfer.as_ref().is_some_and(|t| t.from == leg) {
            // The agent leaves while the target rings: the citizen waits for the target,
            // hearing ringback (or the transfer announcement).
            self.legs[leg].party_left();
            if let Some(transfer) = self.transfer.as_mut() {
                transfer.refer_sequence = None;
            }
            self.announce_transfer(Some(leg.other()));
        } else if self.invited_guest().is_some_and(|g| g.from() == leg) && !self.has_guests() {
            // The agent leaves while the guest it invited rings (or waits for a desk): the
            // citizen waits for it, hearing ringback, as for a transfer.
            self.legs[leg].party_left();
            self.actions
                .push_back(Action::Media(MediaCommand::Leave(self.legs[leg].party)));
            self.ringback(Some(leg.other()));
        } else if self.has_guests() && (leg == Leg::B || !self.settings.conference_ends_with_caller)
        {
            // A party leaves a conference: the others stay (a guest takes its leg).
            self.leg_left(leg);
        } else {
            let ended_by = if leg == Leg::A {
                EndedBy::Caller
            } else {
                EndedBy::Callee
            };
            self.abandon_queue(now, leg);
            self.hang_up(Some(leg), ended_by, "normal clearing");
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
            self.respond(server, request, 491);
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
        let mode = self.leg_peer(leg).map_or(SrtpMode::Optional, |p| p.srtp);
        let key = self.new_key();
        let policy = &self.settings.policy;
        let state = &mut self.legs[leg];
        let target = state.target;
        let answered = answer_reoffer(
            policy,
            state.media,
            request,
            &mut state.origin,
            &mut state.local_sdp,
            SrtpTerms {
                mode,
                key: Some(key),
            },
        );
        if answered.is_ok() {
            if let Some(dialog) = state.dialog.as_mut() {
                dialog.refresh_target(request.contact());
            }
        }
        // Only a 2xx makes it a refresh (RFC 4028 §10).
        let session = if answered.is_ok() {
            self.peer_refreshed(leg, session)
        } else {
            Headers::new()
        };
        let party = self.legs[leg].party;
        self.respond_reoffer(party, server, request, target, answered, session);
    }

    /// Answers a re-INVITE or UPDATE with what [`answer_reoffer`] made of it, and gives the
    /// relay `party`'s new media.
    pub(super) fn respond_reoffer(
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
                self.respond(server, request, status);
                return;
            }
        };
        let leg = self.legs.of_party(party);
        if let Some(negotiated) = negotiated {
            let media = leg_media(&negotiated);
            match leg {
                Some(leg) => self.legs[leg].endpoint = Some(media),
                None => self.set_guest_endpoint(party, media),
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
            if request.method == Method::Invite && request.sdp().is_none() && leg.is_some() {
                self.offer_in_2xx = Some(party);
            }
            response.headers.push("Content-Type", "application/sdp");
            response.body = Bytes::from(body);
        }
        self.actions
            .push_back(Action::SendResponse { server, response });
    }

    pub(super) fn handle_ack(&mut self, request: Request) {
        // A delayed-offer caller answers our offer in the ACK (§13.2.1); an answer we cannot
        // use (none, or plain RTP to our SRTP offer) ends the call with BYE.
        let caller = &self.legs[Leg::A];
        let from_caller = request.call_id() == caller.call_id
            && request
                .to()
                .and_then(|t| t.tag().map(str::to_string))
                .as_deref()
                == Some(caller.tag.as_str());
        if let Some(offer) = self.caller.pending_offer.take_if(|_| from_caller) {
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
        let Some(leg) = self
            .legs
            .of_party(party)
            .filter(|leg| request.call_id() == self.legs[*leg].call_id)
        else {
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
        let local = self.legs[leg].local_sdp.as_deref();
        let (Some(Ok(ours)), Ok(answer)) = (local.map(sdp::parse), sdp::parse(answer)) else {
            return;
        };
        let Ok(negotiated) = sdp::accept_answer(&ours, &answer, &self.settings.policy) else {
            return;
        };
        if self.legs[leg].endpoint != Some(leg_media(&negotiated)) {
            self.configure(leg, &negotiated);
        }
    }
}

/// What the relay needs of a leg's negotiated media.
pub(super) fn leg_media(negotiated: &Negotiated) -> LegMedia {
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
/// §8), and an SRTP key we gave the endpoint stays (`terms.key` is the fresh key for when we
/// had none). Errors are the status to answer: 488 for an offer we cannot take (a plain one
/// from a peer whose `srtp` is mandatory too), 400 for bad SDP.
pub(super) fn answer_reoffer(
    policy: &MediaPolicy,
    media: SocketAddr,
    request: &Request,
    origin: &mut Origin,
    local_sdp: &mut Option<String>,
    terms: SrtpTerms,
) -> Result<(Option<String>, Option<Negotiated>), u16> {
    let terms = SrtpTerms {
        key: local_sdp.as_deref().and_then(sdp::key_in).or(terms.key),
        ..terms
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
        // The same key again.
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

/// SDP text without its o= line, to tell whether a description changed (RFC 3264 §8).
fn strip_origin(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with("o="))
        .collect::<Vec<_>>()
        .join("\n")
}
