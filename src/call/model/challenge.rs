//! RFC 3261 §22.2: a request of ours that a peer we hold credentials for challenges (401 or
//! 407) is sent again with the answer: same Call-ID, tags and body, the next CSeq and a new
//! branch (§8.1.3.5); the transaction layer ACKs an INVITE's challenge. Once per request, twice
//! if the second challenge says only `stale=true` (RFC 7616 §3.3): a wrong password fails the
//! request as any 4xx, without a loop. The decision ([`answerable`]) and the answer
//! ([`Call::send_answered`]) are written once for every request:
//!
//! - the INVITEs of a [`Fork`] (leg B's setup, a transfer, each conference guest): CSeq + 1 of
//!   the attempt's INVITE;
//! - requests inside a dialog towards a peer with credentials ([`InDialog`]: BYE, a session
//!   refresh's re-INVITE or UPDATE, a DTMF INFO, a REFER's NOTIFY): the dialog's next CSeq, so
//!   later requests keep counting up (CSeq + 1 of the BYE once the dialog is gone). Whoever
//!   tracks the request by branch (the BYEs the ending call waits for, the refresh, the
//!   NOTIFY of a failed transfer) follows it to the new one in [`Call::rebranch`].

use std::sync::Arc;
use std::time::Instant;

use crate::media::Leg;
use crate::routing::credentials::OutboundCredentials;
use crate::routing::Peer;
use crate::sip::dialog::Dialog;
use crate::sip::digest_client::{self, Challenge};
use crate::sip::message::{Request, Response};
use crate::sip::target::Target;
use crate::sip::transaction::via_for;

use super::fork::{Attempt, Fork};
use super::{Action, Call, State};

/// Answers an attempt may send: the first challenge, and a stale nonce after it.
const MAX_ANSWERS: u8 = 2;

/// What answering a challenge to a fork's current attempt takes.
struct Challenged {
    index: usize,
    invite: Request,
    target: Target,
    answers: u8,
    session_retried: bool,
    credentials: OutboundCredentials,
    challenge: Challenge,
    header: &'static str,
}

/// The challenge `response` carries, if a request (and the chain it was sent again in) that
/// answered `answers` challenges already may answer it: the first, and a second that says
/// only `stale=true`.
fn answerable(answers: u8, response: &Response) -> Option<(Challenge, &'static str)> {
    if answers >= MAX_ANSWERS {
        return None;
    }
    let (challenge, header) = digest_client::challenge_of(response)?;
    (answers == 0 || challenge.stale).then_some((challenge, header))
}

/// The fork's current attempt, if `response` challenges it and it may be answered.
fn challenged(fork: &Fork, response: &Response) -> Option<Challenged> {
    let attempt = fork.attempt()?;
    let credentials = fork.peer_at(attempt.peer_index)?.outbound.clone()?;
    let answers = attempt.auth_answers;
    let (challenge, header) = answerable(answers, response)?;
    Some(Challenged {
        index: attempt.peer_index,
        invite: attempt.invite.clone(),
        target: attempt.target,
        answers,
        session_retried: attempt.session_retried,
        credentials,
        challenge,
        header,
    })
}

/// A request the gateway sent inside a dialog to a peer it holds credentials for, until its
/// final response: what sending it again takes.
#[derive(Debug)]
pub(super) struct InDialog {
    request: Request,
    target: Target,
    credentials: OutboundCredentials,
    /// Challenges this request's chain answered.
    answers: u8,
}

/// The credentials of `peer`, if any: what its in-dialog requests may be challenged for.
pub(super) fn outbound(peer: Option<&Arc<Peer>>) -> Option<OutboundCredentials> {
    peer.and_then(|p| p.outbound.clone())
}

impl Call {
    /// Leg B's INVITE challenged: answered (true), or the caller learns of the failure.
    pub(super) fn answer_setup_challenge(&mut self, now: Instant, response: &Response) -> bool {
        if self.state != State::Calling || self.cancelled {
            return false;
        }
        let Some(retry) = challenged(&self.setup, response).map(|c| self.authenticated(c)) else {
            return false;
        };
        if let Some(mut previous) = self.setup.sent(now, retry) {
            previous.settled = true;
            self.retired.retire(previous);
        }
        true
    }

    /// A transfer target's INVITE challenged: answered (true), or the transfer fails.
    pub(super) fn answer_transfer_challenge(&mut self, now: Instant, response: &Response) -> bool {
        let challenge = self
            .transfer
            .as_ref()
            .and_then(|t| challenged(&t.fork, response));
        let Some(retry) = challenge.map(|c| self.authenticated(c)) else {
            return false;
        };
        self.end_transfer_attempt_media();
        let previous = self.transfer.as_mut().and_then(|t| t.fork.sent(now, retry));
        if let Some(mut previous) = previous {
            previous.settled = true;
            self.retired.retire(previous);
        }
        true
    }

    /// Guest `index`'s INVITE challenged: answered (true), or the guest fails.
    pub(super) fn answer_guest_challenge(
        &mut self,
        now: Instant,
        index: usize,
        response: &Response,
    ) -> bool {
        let challenge = self
            .guests
            .get(index)
            .and_then(|g| challenged(&g.fork, response));
        let Some(retry) = challenge.map(|c| self.authenticated(c)) else {
            return false;
        };
        let previous = self
            .guests
            .get_mut(index)
            .and_then(|g| g.fork.sent(now, retry));
        if let Some(mut previous) = previous {
            previous.settled = true;
            self.retired.retire(previous);
        }
        true
    }

    /// The challenged INVITE again with its answer (any earlier one replaced), sent; the
    /// attempt to track it.
    fn authenticated(&mut self, c: Challenged) -> Attempt {
        let sequence = c.invite.cseq().map_or(1, |s| s.sequence) + 1;
        let (invite, branch) = self.send_answered(
            c.invite,
            sequence,
            c.target,
            &c.credentials,
            &c.challenge,
            c.header,
        );
        let mut retry = Attempt::new(c.index, invite, branch, c.target);
        retry.session_retried = c.session_retried;
        retry.auth_answers = c.answers + 1;
        retry
    }

    /// `request` again with CSeq `sequence`, the answer to `challenge` in `header` (any earlier
    /// answer replaced) and a new branch, sent to `target`; the request as sent and its branch.
    fn send_answered(
        &mut self,
        mut request: Request,
        sequence: u32,
        target: Target,
        credentials: &OutboundCredentials,
        challenge: &Challenge,
        header: &'static str,
    ) -> (Request, String) {
        let method = request.method.clone();
        request
            .headers
            .set("CSeq", format!("{sequence} {}", method.as_str()));
        let uri = request.uri.to_string();
        let cnonce = self.ids.cnonce();
        let value = digest_client::authorization(
            challenge,
            credentials,
            digest_client::Request {
                method: method.as_str(),
                uri: &uri,
                nc: self.nonce_counts.next(&challenge.nonce),
                cnonce: &cnonce,
            },
        );
        request.headers.remove("Authorization");
        request.headers.remove("Proxy-Authorization");
        request.headers.push(header, value);
        let branch = self.ids.branch();
        request.headers.set(
            "Via",
            via_for(self.settings.local_for(target), target, &branch),
        );
        tracing::info!(
            call = %self.id,
            method = method.as_str(),
            realm = %challenge.realm,
            algorithm = challenge.algorithm.name(),
            stale = challenge.stale,
            "peer challenged our request: sent again with credentials"
        );
        self.actions.push_back(Action::SendRequest {
            request: request.clone(),
            target,
        });
        (request, branch)
    }

    /// Sends `request` (complete with its Via) inside a dialog; kept until its final response
    /// when its peer has `credentials`, so a challenge can be answered.
    pub(super) fn send_in_dialog(
        &mut self,
        request: Request,
        target: Target,
        credentials: Option<OutboundCredentials>,
    ) {
        if let (Some(credentials), Some(branch)) = (credentials, branch_of(&request)) {
            self.in_dialog.insert(
                branch,
                InDialog {
                    request: request.clone(),
                    target,
                    credentials,
                    answers: 0,
                },
            );
        }
        self.actions
            .push_back(Action::SendRequest { request, target });
    }

    /// The credentials of `leg`'s peer.
    pub(super) fn leg_outbound(&self, leg: Leg) -> Option<OutboundCredentials> {
        outbound(self.legs[leg].peer())
    }

    /// A response to an in-dialog request of ours: a challenge it may answer is answered
    /// (true: nothing else is to be done with it); any other final response ends its record.
    pub(super) fn answer_in_dialog_challenge(&mut self, branch: &str, response: &Response) -> bool {
        if response.status < 200 {
            return false;
        }
        let Some(sent) = self.in_dialog.remove(branch) else {
            return false;
        };
        let Some((challenge, header)) = answerable(sent.answers, response) else {
            return false;
        };
        let request = sent.request;
        let from_tag = request.from().and_then(|f| f.tag().map(str::to_string));
        let next = from_tag.and_then(|tag| {
            self.dialog_mut(request.call_id(), &tag)
                .map(Dialog::next_sequence)
        });
        // A BYE's dialog is gone: nothing is sent in it after the BYE.
        let sequence = next.unwrap_or_else(|| request.cseq().map_or(1, |c| c.sequence) + 1);
        let (request, new_branch) = self.send_answered(
            request,
            sequence,
            sent.target,
            &sent.credentials,
            &challenge,
            header,
        );
        self.rebranch(branch, &new_branch, sequence);
        self.in_dialog.insert(
            new_branch,
            InDialog {
                request,
                answers: sent.answers + 1,
                ..sent
            },
        );
        true
    }

    /// The in-dialog request of `branch` timed out: its record ends.
    pub(super) fn forget_in_dialog(&mut self, branch: &str) {
        self.in_dialog.remove(branch);
    }

    /// The dialog of ours with `call_id` and our tag `local_tag`, if it is still up.
    fn dialog_mut(&mut self, call_id: &str, local_tag: &str) -> Option<&mut Dialog> {
        let matches = |d: &Dialog| d.call_id() == call_id && d.local_tag() == local_tag;
        let legs = self.legs.0.iter_mut().filter_map(|l| l.dialog.as_mut());
        let guests = self.guests.iter_mut().filter_map(|g| g.dialog_mut());
        legs.chain(guests).find(|d| matches(d))
    }

    /// The request of `old` was sent again as `new` with CSeq `sequence`: whoever waited for
    /// `old` waits for `new`.
    fn rebranch(&mut self, old: &str, new: &str, sequence: u32) {
        if self.pending.remove(old) {
            self.pending.insert(new.to_string());
        }
        if let Some((_, notify)) = self.failure_notify.as_mut().filter(|(_, n)| n == old) {
            *notify = new.to_string();
        }
        for leg in [Leg::A, Leg::B] {
            self.legs[leg].session.rebranch(old, new, sequence);
        }
    }
}

fn branch_of(request: &Request) -> Option<String> {
    request
        .top_via()
        .and_then(|v| v.branch().map(str::to_string))
}
