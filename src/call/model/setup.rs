//! The caller's INVITE and leg B's setup: our answer to the caller's offer (or our offer in a
//! delayed-offer 200, §13.2.1), leg B's INVITE through its [`Fork`](super::fork::Fork), early
//! media, the caller's CANCEL (§9.2), and the answer that bridges the call.

use std::time::Instant;

use bytes::Bytes;

use crate::media::prompt::Announcement;
use crate::media::{Leg, MediaCommand};
use crate::sip::dialog::Dialog;
use crate::sip::message::{self, Response};
use crate::sip::sdp::{self, Direction, Negotiated, SrtpTerms};
use crate::sip::target::Target;

use super::challenge::outbound;
use super::dialogs::leg_media;
use super::fork::{Attempt, Failure, ForkTimeout, Progress};
use super::queue::Waiter;
use super::{Action, Call, EndedBy, State, Timer, ALLOW};

impl Call {
    pub(super) fn start(&mut self, now: Instant) {
        self.actions
            .push_back(Action::RegisterDialog(self.legs[Leg::A].key()));
        let offer = self.caller.invite.sdp().map(sdp::parse);
        let srtp = self.caller_peer.srtp;
        match offer {
            Some(Ok(offer)) => {
                let terms = SrtpTerms {
                    mode: srtp,
                    key: Some(self.new_key()),
                };
                let leg = &self.legs[Leg::A];
                match sdp::answer(&offer, &self.settings.policy, leg.media, &leg.origin, terms) {
                    Ok((answer, negotiated)) => {
                        self.legs[Leg::A].local_sdp = Some(answer.to_string());
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
                let leg = &self.legs[Leg::A];
                let mut offer = sdp::offer(
                    &self.settings.policy,
                    leg.media,
                    &leg.origin,
                    Direction::SendRecv,
                );
                let key = self.caller_peer_key();
                sdp::set_offer_key(&mut offer, key);
                self.legs[Leg::A].local_sdp = Some(offer.to_string());
                self.caller.pending_offer = Some(offer);
            }
        }
        if self.caller.invite.max_forwards() == 0 {
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

    fn caller_peer_key(&mut self) -> Option<crate::media::srtp::MasterKey> {
        let peer = std::sync::Arc::clone(&self.caller_peer);
        self.offer_key(&peer)
    }

    /// `leg`'s party negotiated `negotiated`: the relay sends it there.
    pub(super) fn configure(&mut self, leg: Leg, negotiated: &Negotiated) {
        let media = leg_media(negotiated);
        self.legs[leg].endpoint = Some(media);
        self.actions
            .push_back(Action::Media(MediaCommand::Configure(
                self.legs[leg].party,
                media,
            )));
    }

    /// Leg B's setup begun again (a queued call offered to the desks once more): a new
    /// dialog, as for the next peer. `invited`: an INVITE went out on the dialog so far (it
    /// stays routed to the call for a late answer; one that never did is forgotten, so a long
    /// wait at full desks keeps no key per offer).
    pub(super) fn retry_setup(&mut self, now: Instant, invited: bool) {
        let Some(peer) = self.setup.peer_at(0).cloned() else {
            return;
        };
        if invited {
            self.stale_dialogs.push(self.legs[Leg::B].key());
        }
        let host = self.local_ip(&peer).to_string();
        self.legs[Leg::B].call_id = self.ids.call_id(&host);
        self.legs[Leg::B].tag = self.ids.tag();
        self.try_peer(now, 0);
    }

    /// Sends the INVITE of leg B to the route's `index`-th peer (or the first after it with
    /// a free seat).
    fn try_peer(&mut self, now: Instant, index: usize) {
        let fresh_dialog = index > 0;
        if self.setup.peer_at(index).is_none() {
            let (status, reason) = self.last_failure.clone();
            self.fail_caller(status, &reason, EndedBy::Callee, "all peers failed");
            return;
        }
        let Some(index) = self.setup.claim(index, self.ahead_in_line(Waiter::Setup)) else {
            tracing::info!(call = %self.id, "every desk left is at its max_calls");
            if self.legs[Leg::B].peer.is_none() {
                // No desk was ever sent it: the record and the platform's stream still name
                // the desk the call is for (the full one). A queued call's later offers to
                // full desks change nothing there.
                if let Some(peer) = self.setup.peer_at(index).cloned() {
                    self.actions.push_back(Action::Attempt {
                        b_call_id: self.legs[Leg::B].call_id.clone(),
                        b_peer: peer.name.clone(),
                        b_interface: self.interface_name(&peer),
                    });
                    self.legs[Leg::B].peer = Some(peer);
                }
            }
            self.setup_failure(now, Failure::desks_full());
            return;
        };
        let Some(peer) = self.setup.peer_at(index).cloned() else {
            return;
        };
        if fresh_dialog {
            // A new attempt is a new dialog: fresh Call-ID and tag. The old one stays routed
            // to the call until it finishes: a 2xx after its transaction ended (Timer B) comes
            // by dialog and must still be ACKed and released.
            self.stale_dialogs.push(self.legs[Leg::B].key());
            let host = self.local_ip(&peer).to_string();
            self.legs[Leg::B].call_id = self.ids.call_id(&host);
            self.legs[Leg::B].tag = self.ids.tag();
        }
        let target = Target::for_peer(&peer);
        let branch = self.ids.branch();
        let key = self.offer_key(&peer);
        if let Some(offer) = self.legs[Leg::B].offer.as_mut() {
            sdp::set_offer_key(offer, key);
        }
        let Some(invite) = self.build_b_invite(&peer, target, &branch) else {
            return;
        };
        self.actions
            .push_back(Action::RegisterDialog(self.legs[Leg::B].key()));
        self.actions.push_back(Action::Attempt {
            b_call_id: self.legs[Leg::B].call_id.clone(),
            b_peer: peer.name.clone(),
            b_interface: self.interface_name(&peer),
        });
        self.actions.push_back(Action::SendRequest {
            request: invite.clone(),
            target,
        });
        let leg = &mut self.legs[Leg::B];
        leg.peer = Some(peer);
        leg.target = target;
        if let Some(previous) = self
            .setup
            .sent(now, Attempt::new(index, invite, branch, target))
        {
            self.retired.retire(previous);
        }
    }

    /// A response to the caller's INVITE.
    pub(super) fn respond_a(&mut self, status: u16, reason: &str, with_sdp: bool) {
        let response = self.a_response(status, reason, with_sdp);
        self.actions.push_back(Action::SendResponse {
            server: self.caller.server,
            response,
        });
    }

    pub(super) fn a_response(&mut self, status: u16, reason: &str, with_sdp: bool) -> Response {
        let leg = &self.legs[Leg::A];
        let mut response = Response::for_request(&self.caller.invite, status, Some(&leg.tag));
        response.reason = reason.to_string();
        if (101..300).contains(&status) {
            response.headers.push("Contact", self.contact(leg.target));
        }
        if status >= 200 {
            self.caller.finalized = true;
        }
        if (200..300).contains(&status) {
            response.headers.push("Allow", ALLOW);
        }
        if let Some(agent) = &self.settings.user_agent {
            response.headers.push("Server", agent.clone());
        }
        if with_sdp {
            if let Some(sdp) = &self.legs[Leg::A].local_sdp {
                response.headers.push("Content-Type", "application/sdp");
                response.body = Bytes::from(sdp.clone());
            }
        }
        response
    }

    /// The call fails before answer: final response to the caller, record, finish when leg B
    /// is settled.
    pub(super) fn fail_caller(&mut self, status: u16, reason: &str, ended_by: EndedBy, why: &str) {
        if self.is_queued() {
            // Answered while it waited: a BYE, not a final response.
            tracing::info!(call = %self.id, status, why, "queued call given up");
            self.give_up_queue(self.clock);
            self.hang_up(None, EndedBy::Gateway, why);
            return;
        }
        if !self.caller.finalized {
            self.respond_a(status, reason, false);
        }
        self.end(ended_by, why, status, false);
    }

    /// A response to leg B's current INVITE.
    pub(super) fn handle_setup_response(&mut self, now: Instant, response: Response) {
        match response.status {
            100..=199 => self.setup_provisional(now, response),
            200..=299 => self.setup_answered(now, response),
            422 if self.retry_with_min_se(now, &response) => {}
            401 | 407 if self.answer_setup_challenge(now, &response) => {}
            // A callee's 422 is about our interval, not the caller's: the caller learns only
            // that the call could not be set up (a 422 to it would need a Min-SE of its own).
            422 => self.setup_failed(now, 500, "Server Internal Error"),
            status => self.setup_failed(now, status, &response.reason),
        }
    }

    fn setup_provisional(&mut self, now: Instant, response: Response) {
        let progress = self.setup.handle_provisional(now, response.status);
        if progress == Progress::Ringing
            && self.state == State::Calling
            && !self.cancelled
            && !self.is_queued()
        {
            self.actions.push_back(Action::Ringing);
        }
        if self.cancelled {
            self.send_cancel();
            return;
        }
        if response.status == 100 || self.state != State::Calling || self.caller.finalized {
            return;
        }
        // Early media: accept the callee's SDP and give the caller ours.
        let mut with_sdp = false;
        if let (Some(Ok(answer)), Some(offer)) = (
            response.sdp().map(sdp::parse),
            self.legs[Leg::B].offer.as_ref(),
        ) {
            if let Ok(negotiated) = sdp::accept_answer(offer, &answer, &self.settings.policy) {
                self.configure(Leg::B, &negotiated);
                with_sdp = self.caller.pending_offer.is_none();
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

    fn setup_answered(&mut self, now: Instant, response: Response) {
        let Some(attempt) = self.setup.attempt() else {
            return;
        };
        let (invite, target) = (attempt.invite.clone(), attempt.target);
        let Some(dialog) = self.acknowledge(&invite, target, &response) else {
            return;
        };
        self.setup.handle_answered();
        if self.cancelled || self.state != State::Calling {
            // The caller left while the callee answered: release the callee (§15).
            let credentials = outbound(self.setup.peer());
            self.bye_dialog(dialog, target, credentials, "caller cancelled");
            return;
        }
        let negotiated = response
            .sdp()
            .map(sdp::parse)
            .and_then(Result::ok)
            .zip(self.legs[Leg::B].offer.as_ref())
            .and_then(|(answer, offer)| {
                sdp::accept_answer(offer, &answer, &self.settings.policy).ok()
            });
        let Some(negotiated) = negotiated else {
            // §13.2.1: an unusable answer is acknowledged, then the session ended with BYE.
            let credentials = outbound(self.setup.peer());
            self.bye_dialog(dialog, target, credentials, "unacceptable answer");
            self.fail_caller(
                488,
                "Not Acceptable Here",
                EndedBy::Gateway,
                "callee answer not acceptable",
            );
            return;
        };
        let leg = &mut self.legs[Leg::B];
        leg.dialog = Some(dialog);
        leg.uac_invite = self.setup.take_attempt();
        self.configure(Leg::B, &negotiated);
        self.legs[Leg::B].local_sdp = self.legs[Leg::B].offer.as_ref().map(|o| o.to_string());
        self.start_callee_session(now, Leg::B, &response);
        let (peer, b_interface) = self
            .b_peer()
            .map(|p| (p.name.clone(), self.interface_name(p)))
            .unwrap_or_default();
        if self.is_queued() {
            // The caller was answered when it was queued.
            self.leave_queue(now);
        } else {
            let mut ok = self.a_response(200, "OK", true);
            self.start_caller_session(now, &mut ok);
            self.actions.push_back(Action::SendResponse {
                server: self.caller.server,
                response: ok,
            });
            let local_sequence = self.ids.next_u64() as u32 & 0xffff;
            self.legs[Leg::A].dialog =
                Dialog::new_uas(&self.caller.invite, &self.legs[Leg::A].tag, local_sequence);
        }
        self.state = State::Answered;
        self.actions
            .push_back(Action::Media(MediaCommand::Answered));
        self.detect_agent_digits();
        self.announce_bridge();
        self.actions.push_back(Action::Answered {
            b_call_id: self.legs[Leg::B].call_id.clone(),
            b_peer: peer,
            b_interface,
        });
    }

    /// Leg B's current INVITE failed with `status`: the next peer, or the caller's failure.
    pub(super) fn setup_failed(&mut self, now: Instant, status: u16, reason: &str) {
        let Some(failure) = self.setup.handle_failure(status, reason) else {
            return;
        };
        self.setup_failure(now, failure);
    }

    fn setup_failure(&mut self, now: Instant, failure: Failure) {
        self.last_failure = (failure.status, failure.reason.clone());
        if self.cancelled || self.state != State::Calling {
            return;
        }
        if let Some(next) = failure.next {
            tracing::info!(call = %self.id, status = failure.status, "trying next peer");
            self.try_peer(now, next);
            return;
        }
        if self.queue_instead(now, failure.status) || self.announce_no_desk(now, &failure) {
            return;
        }
        self.fail_setup(failure.status, &failure.reason);
    }

    /// The route is exhausted: `status` to the caller.
    fn fail_setup(&mut self, status: u16, reason: &str) {
        let ended_by = if status == 487 {
            EndedBy::Caller
        } else {
            EndedBy::Callee
        };
        self.fail_caller(status, reason, ended_by, "call setup failed");
    }

    /// `[announcements] no_desk`: before the route's failure reaches the caller, the caller
    /// hears the announcement once as early media (183 with our SDP; the failure follows it,
    /// so nothing is answered or billed). Not for a caller whose INVITE had no offer (no
    /// early media without one) or who cancelled.
    fn announce_no_desk(&mut self, now: Instant, failure: &Failure) -> bool {
        let Some(prompt) = self.settings.no_desk_announcement.clone() else {
            return false;
        };
        if failure.status == 487 || self.caller.finalized || self.caller.pending_offer.is_some() {
            return false;
        }
        let length = std::time::Duration::from_millis(prompt.duration_ms());
        self.respond_a(183, "Session Progress", true);
        self.actions.push_back(Action::Media(MediaCommand::Announce(
            self.legs[Leg::A].party,
            Some(Announcement::Prompt(prompt)),
        )));
        self.no_desk = Some((failure.status, failure.reason.clone()));
        self.arm(Timer::Announcement, Some(now + length));
        true
    }

    /// The no-desk announcement has played: the route's failure goes to the caller.
    pub(super) fn no_desk_announced(&mut self) {
        let Some((status, reason)) = self.no_desk.take() else {
            return;
        };
        if self.state != State::Calling || self.caller.finalized {
            return;
        }
        self.actions.push_back(Action::Media(MediaCommand::Announce(
            self.legs[Leg::A].party,
            None,
        )));
        self.fail_setup(status, &reason);
    }

    pub(super) fn setup_timeout(&mut self, now: Instant, timeout: ForkTimeout) {
        match timeout {
            ForkTimeout::NoResponse(failure) => {
                // The peer is down; its transaction keeps running (Timer B) but we move on.
                tracing::info!(call = %self.id, "peer did not respond; failing over");
                self.setup_failure(now, failure);
            }
            ForkTimeout::RingedOut(request, target) => {
                self.actions
                    .push_back(Action::SendRequest { request, target });
            }
        }
    }

    /// The caller's CANCEL (§9.2; the endpoint answered it 200): 487 to its INVITE and CANCEL
    /// on leg B.
    pub(super) fn handle_cancel(&mut self) {
        if self.state != State::Calling || self.caller.finalized {
            return;
        }
        self.cancelled = true;
        self.respond_a(487, "Request Terminated", false);
        self.send_cancel();
        self.end(EndedBy::Caller, "cancelled", 487, false);
    }

    /// §9.1: CANCEL only once a provisional response arrived; otherwise it is sent when one
    /// does.
    pub(super) fn send_cancel(&mut self) {
        let Some((request, target)) = self.setup.cancel() else {
            return;
        };
        if let Some(attempt) = self.setup.attempt() {
            self.pending.insert(attempt.branch.clone());
        }
        self.actions
            .push_back(Action::SendRequest { request, target });
    }
}
