//! RFC 3261 §22.2: an INVITE of ours that a peer we hold credentials for challenges (401 or
//! 407) is sent again with the answer: same Call-ID, From tag and body, CSeq + 1 and a new
//! branch (§8.1.3.5); the transaction layer ACKs the challenge. Once per request, twice if the
//! second challenge says only `stale=true` (RFC 7616 §3.3): a wrong password fails the
//! attempt as any 4xx, without a loop. One place for every [`Fork`]: leg B's setup, a
//! transfer, each conference guest.

use std::time::Instant;

use crate::routing::credentials::OutboundCredentials;
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

/// The fork's current attempt, if `response` challenges it and it may be answered.
fn challenged(fork: &Fork, response: &Response) -> Option<Challenged> {
    let attempt = fork.attempt()?;
    let credentials = fork.peer_at(attempt.peer_index)?.outbound.clone()?;
    let (challenge, header) = digest_client::challenge_of(response)?;
    let answers = attempt.auth_answers;
    if answers >= MAX_ANSWERS || (answers == 1 && !challenge.stale) {
        return None;
    }
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
        let mut invite = c.invite;
        let sequence = invite.cseq().map_or(1, |s| s.sequence) + 1;
        invite.headers.set("CSeq", format!("{sequence} INVITE"));
        let uri = invite.uri.to_string();
        let cnonce = self.ids.cnonce();
        let value = digest_client::authorization(
            &c.challenge,
            &c.credentials,
            digest_client::Request {
                method: "INVITE",
                uri: &uri,
                nc: self.nonce_counts.next(&c.challenge.nonce),
                cnonce: &cnonce,
            },
        );
        invite.headers.remove("Authorization");
        invite.headers.remove("Proxy-Authorization");
        invite.headers.push(c.header, value);
        let branch = self.ids.branch();
        invite.headers.set(
            "Via",
            via_for(self.settings.local_for(c.target), c.target, &branch),
        );
        tracing::info!(
            call = %self.id,
            realm = %c.challenge.realm,
            algorithm = c.challenge.algorithm.name(),
            stale = c.challenge.stale,
            "peer challenged our INVITE: sent again with credentials"
        );
        self.actions.push_back(Action::SendRequest {
            request: invite.clone(),
            target: c.target,
        });
        let mut retry = Attempt::new(c.index, invite, branch, c.target);
        retry.session_retried = c.session_retried;
        retry.auth_answers = c.answers + 1;
        retry
    }
}
