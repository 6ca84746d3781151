//! One serially forked outgoing INVITE (a B2BUA's §16.7-style serial forking): the route's peers
//! tried in order, the next one on no response within the response timeout, on ringing past
//! the ring timeout (CANCEL, then its 487 counts as 408), and on 408, 5xx or 6xx; a peer its
//! probes found down since the fork began is skipped. Sans-IO: the call builds each INVITE and
//! performs the CANCELs this type hands back.
//!
//! Leg B's setup, a blind transfer and every conference guest each own one [`Fork`]; the attempts
//! a fork gives up on go to [`Retired`], which keeps them for their late answers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::routing::desks::Seat;
use crate::routing::Peer;
use crate::sip::message::{self, Request};
use crate::sip::target::Target;

/// One INVITE towards a peer.
#[derive(Debug)]
pub(super) struct Attempt {
    pub(super) peer_index: usize,
    pub(super) invite: Request,
    pub(super) branch: String,
    pub(super) target: Target,
    /// A provisional response came: a CANCEL may be sent now (§9.1).
    provisional: bool,
    cancel_sent: bool,
    /// Set when we gave up on this attempt (ring timeout): its failure counts as 408.
    timed_out: bool,
    /// A final response (or a timeout, or our failover) ended this INVITE for the call.
    pub(super) settled: bool,
    /// A 2xx that came after we gave the attempt up was answered with BYE.
    pub(super) released: bool,
    /// This INVITE is the retry after a 422 (RFC 4028 §7.3): no second one.
    pub(super) session_retried: bool,
    /// Challenges (401/407) this INVITE's chain answered (§22.2): bounded, no loop.
    pub(super) auth_answers: u8,
    /// The call's place at the peer's desk (`max_calls`), held while the INVITE runs and
    /// then by the leg it made; given back when either ends.
    pub(super) seat: Option<Seat>,
}

impl Attempt {
    /// An INVITE just sent to the route's `peer_index`-th peer.
    pub(super) fn new(
        peer_index: usize,
        invite: Request,
        branch: String,
        target: Target,
    ) -> Attempt {
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
            auth_answers: 0,
            seat: None,
        }
    }

    /// §9.1: a CANCEL once a provisional response came and no final one, at most once.
    fn cancel(&mut self) -> Option<(Request, Target)> {
        if self.cancel_sent || self.settled || !self.provisional {
            return None;
        }
        self.cancel_sent = true;
        Some((message::cancel_for(&self.invite), self.target))
    }
}

/// Whether a failed INVITE moves on to the route's next peer: no answer (408), the peer's own
/// trouble (5xx) or a global refusal from that peer (6xx); a 4xx is about the call itself.
pub(super) fn fails_over(status: u16) -> bool {
    status == 408 || status >= 500
}

/// The response timeout and ring timeout a fork runs with.
#[derive(Debug, Clone, Copy)]
pub(super) struct ForkTimeouts {
    /// No response at all from a peer: it is down; move on.
    pub(super) response: Duration,
    /// A peer ringing this long is cancelled and counts as 408.
    pub(super) ring: Duration,
}

/// What a provisional response was to the fork.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Progress {
    /// 100 Trying, or a provisional response again.
    Trying,
    /// The current peer's first provisional response beyond 100: it rings.
    Ringing,
}

/// The current attempt failed: with `status` (408 if we gave it up) and the route's next
/// peer when the failure fails over and one is left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Failure {
    pub(super) status: u16,
    pub(super) reason: String,
    pub(super) next: Option<usize>,
}

impl Failure {
    /// Every peer left is at its `max_calls`: busy, said by the gateway for them.
    pub(super) fn desks_full() -> Failure {
        Failure {
            status: 486,
            reason: "Busy Here".to_string(),
            next: None,
        }
    }
}

/// A fork's timer that fired.
#[derive(Debug)]
pub(super) enum ForkTimeout {
    /// No response at all from the current peer: fail over as on 408 (its transaction keeps
    /// running until Timer B, but the call moves on).
    NoResponse(Failure),
    /// The current peer rang too long: send this CANCEL; its 487 fails the attempt as 408.
    RingedOut(Request, Target),
}

/// One serially forked INVITE: its route, the attempt under way and its timers.
#[derive(Debug)]
pub(super) struct Fork {
    route: Vec<Arc<Peer>>,
    timeouts: ForkTimeouts,
    attempt: Option<Attempt>,
    /// When the current peer counts as not responding.
    response_deadline: Option<Instant>,
    /// When the current peer has rung too long.
    ring_deadline: Option<Instant>,
    /// The current peer sent a provisional response beyond 100.
    ringing: bool,
    /// The seat [`Fork::claim`] took for the INVITE about to be sent.
    claimed: Option<Seat>,
}

impl Fork {
    pub(super) fn new(route: Vec<Arc<Peer>>, timeouts: ForkTimeouts) -> Fork {
        Fork {
            route,
            timeouts,
            attempt: None,
            response_deadline: None,
            ring_deadline: None,
            ringing: false,
            claimed: None,
        }
    }

    /// Takes a seat for the next INVITE at the first peer from `index` on (past `index`
    /// itself, one that is up) with room: a peer at its `max_calls` is passed over like one
    /// that answered busy, without an INVITE. At a peer with `max_calls`, the `ahead` callers
    /// waiting before this call in the route's line go first: it takes a seat only while
    /// more than `ahead` are free. None: every peer left is full.
    pub(super) fn claim(&mut self, index: usize, ahead: usize) -> Option<usize> {
        let free = self.free_seats();
        let (index, seat) = (index..self.route.len())
            .filter(|&i| i == index || self.route[i].is_up())
            .find_map(|i| {
                let peer = &self.route[i];
                if peer.seats.max().is_some() && free <= ahead {
                    return None;
                }
                Seat::take(peer).map(|seat| (i, seat))
            })?;
        self.claimed = Some(seat);
        Some(index)
    }

    /// Free seats at the route's peers that are up and have `max_calls`.
    fn free_seats(&self) -> usize {
        self.route
            .iter()
            .filter(|peer| peer.is_up())
            .filter_map(|peer| peer.seats.free())
            .map(|free| free as usize)
            .sum()
    }

    /// Whether a caller with `ahead` others before it in line would get a seat at one of the
    /// route's desks with `max_calls` now.
    pub(super) fn has_room(&self, ahead: usize) -> bool {
        self.free_seats() > ahead
    }

    /// Gives back every seat the fork holds (the call is over).
    pub(super) fn release_seats(&mut self) {
        self.claimed = None;
        if let Some(attempt) = self.attempt.as_mut() {
            attempt.seat = None;
        }
    }

    pub(super) fn route(&self) -> &[Arc<Peer>] {
        &self.route
    }

    pub(super) fn peer_at(&self, index: usize) -> Option<&Arc<Peer>> {
        self.route.get(index)
    }

    pub(super) fn attempt(&self) -> Option<&Attempt> {
        self.attempt.as_ref()
    }

    /// The peer of the attempt under way (or the one that answered).
    pub(super) fn peer(&self) -> Option<&Arc<Peer>> {
        self.attempt
            .as_ref()
            .and_then(|a| self.route.get(a.peer_index))
    }

    pub(super) fn target(&self) -> Option<Target> {
        self.attempt.as_ref().map(|a| a.target)
    }

    /// Whether `branch` is the current attempt's INVITE.
    pub(super) fn is_current(&self, branch: &str) -> bool {
        self.attempt.as_ref().is_some_and(|a| a.branch == branch)
    }

    /// The current attempt rings a desk holding a seat there.
    pub(super) fn holds_seat(&self) -> bool {
        self.attempt
            .as_ref()
            .is_some_and(|a| !a.settled && a.seat.is_some())
    }

    /// The current attempt still waits for its final response.
    pub(super) fn is_unsettled(&self) -> bool {
        self.attempt.as_ref().is_some_and(|a| !a.settled)
    }

    /// The INVITE `attempt` was just sent: it becomes the current one, with the response
    /// timeout running. Returns the attempt it replaces, for [`Retired::retire`].
    #[must_use]
    pub(super) fn sent(&mut self, now: Instant, mut attempt: Attempt) -> Option<Attempt> {
        self.response_deadline = Some(now + self.timeouts.response);
        self.ring_deadline = None;
        self.ringing = false;
        attempt.seat = self.claimed.take();
        let mut previous = self.attempt.take();
        if let Some(previous) = previous.as_mut() {
            // The same peer asked again (a challenge answered, a 422 retried): same seat.
            if attempt.seat.is_none() && previous.peer_index == attempt.peer_index {
                attempt.seat = previous.seat.take();
            }
        }
        self.attempt = Some(attempt);
        previous
    }

    /// A provisional response to the current attempt: the peer is alive (the response timeout
    /// stops) and the ring timeout runs from the attempt's first provisional response, again
    /// from its first one beyond 100 (the peer really rings).
    pub(super) fn handle_provisional(&mut self, now: Instant, status: u16) -> Progress {
        self.response_deadline = None;
        let first = self.attempt.as_mut().is_some_and(|attempt| {
            let first = !attempt.provisional;
            attempt.provisional = true;
            first
        });
        let rings = status > 100 && !self.ringing;
        if rings {
            self.ringing = true;
        }
        if first || rings {
            self.ring_deadline = Some(now + self.timeouts.ring);
        }
        if rings {
            Progress::Ringing
        } else {
            Progress::Trying
        }
    }

    /// The current attempt was answered 2xx: its timers stop.
    pub(super) fn handle_answered(&mut self) {
        self.stop_timers();
        if let Some(attempt) = self.attempt.as_mut() {
            attempt.settled = true;
        }
    }

    /// The current attempt failed with `status`: settled, and the route's next peer if the
    /// failure fails over.
    pub(super) fn handle_failure(&mut self, status: u16, reason: &str) -> Option<Failure> {
        let attempt = self.attempt.as_mut()?;
        attempt.settled = true;
        // The peer turned the call away: its desk is free of it, but said busy (nobody
        // queued is woken to offer it again).
        if let Some(seat) = attempt.seat.take() {
            seat.turned_away();
        }
        let (status, reason) = if attempt.timed_out {
            (408, "Request Timeout")
        } else {
            (status, reason)
        };
        // The next peer that is up: one found down since the fork began is skipped too.
        let next = (attempt.peer_index + 1..self.route.len()).find(|&i| self.route[i].is_up());
        let next = next.filter(|_| fails_over(status));
        self.ringing = false;
        if next.is_none() {
            self.stop_timers();
        }
        Some(Failure {
            status,
            reason: reason.to_string(),
            next,
        })
    }

    /// §9.1: CANCEL the attempt under way, once it had a provisional response (otherwise
    /// nothing yet: ask again when one comes).
    pub(super) fn cancel(&mut self) -> Option<(Request, Target)> {
        self.attempt.as_mut()?.cancel()
    }

    pub(super) fn stop_timers(&mut self) {
        self.response_deadline = None;
        self.ring_deadline = None;
    }

    /// The fork is given up (the call or the transfer ends): its timers stop, the attempt under
    /// way is cancelled if it may be, and handed back for [`Retired`].
    pub(super) fn abandon(&mut self) -> (Option<(Request, Target)>, Option<Attempt>) {
        self.stop_timers();
        let cancel = self.cancel();
        (cancel, self.attempt.take())
    }

    /// Takes the attempt out (it answered and its dialog is a leg's now).
    pub(super) fn take_attempt(&mut self) -> Option<Attempt> {
        self.stop_timers();
        self.attempt.take()
    }

    #[must_use]
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        [self.response_deadline, self.ring_deadline]
            .into_iter()
            .flatten()
            .min()
    }

    /// The fork's timer due at `now`, if any.
    pub(super) fn handle_timeout(&mut self, now: Instant) -> Option<ForkTimeout> {
        if self.response_deadline.is_some_and(|at| at <= now) {
            self.response_deadline = None;
            return self
                .handle_failure(408, "Request Timeout")
                .map(ForkTimeout::NoResponse);
        }
        if self.ring_deadline.is_some_and(|at| at <= now) {
            self.ring_deadline = None;
            let attempt = self.attempt.as_mut()?;
            attempt.timed_out = true;
            if attempt.settled || std::mem::replace(&mut attempt.cancel_sent, true) {
                // Cancelled already (the caller left): its 487 counts as 408 all the same.
                return None;
            }
            return Some(ForkTimeout::RingedOut(
                message::cancel_for(&attempt.invite),
                attempt.target,
            ));
        }
        None
    }
}

/// Attempts given up on that a call keeps for their late answers, beyond those still awaited.
pub(super) const MAX_STALE: usize = 8;

/// INVITEs the call gave up on (a peer failed over from, a transfer or guest that failed or
/// was abandoned with the call, a 422 retried): a late 2xx must still be ACKed and released
/// with BYE, a late ringing cancelled.
#[derive(Debug, Default)]
pub(super) struct Retired {
    stale: Vec<Attempt>,
    /// Branches of those the call must still hear from before it finishes (given up on while
    /// unsettled when the call or a transfer ended).
    abandoned: HashSet<String>,
}

impl Retired {
    /// Keeps an attempt given up on. Attempts whose transaction is over go first when more
    /// than [`MAX_STALE`] are kept, so a call transferred again and again does not keep every
    /// INVITE it ever sent; one still awaited is never dropped.
    pub(super) fn retire(&mut self, mut attempt: Attempt) {
        // Given up on: the desk is free of the call (a late answer is released).
        attempt.seat = None;
        self.stale.push(attempt);
        if self.stale.len() <= MAX_STALE {
            return;
        }
        let abandoned = &self.abandoned;
        self.stale
            .retain(|a| !a.settled || abandoned.contains(&a.branch));
        while self.stale.len() > MAX_STALE {
            let Some(position) = self
                .stale
                .iter()
                .position(|a| !abandoned.contains(&a.branch))
            else {
                break;
            };
            self.stale.remove(position);
        }
    }

    /// Keeps an attempt the call must hear from before it finishes if it is unsettled.
    pub(super) fn abandon(&mut self, attempt: Attempt) {
        if !attempt.settled {
            self.abandoned.insert(attempt.branch.clone());
        }
        self.retire(attempt);
    }

    pub(super) fn get_mut(&mut self, branch: &str) -> Option<&mut Attempt> {
        self.stale.iter_mut().find(|a| a.branch == branch)
    }

    /// The transaction of `branch` is over; true if the call was waiting for it.
    pub(super) fn settled(&mut self, branch: &str) -> bool {
        if let Some(attempt) = self.get_mut(branch) {
            attempt.settled = true;
        }
        self.abandoned.remove(branch)
    }

    /// Some abandoned attempt still owes its final response.
    pub(super) fn is_waiting(&self) -> bool {
        !self.abandoned.is_empty()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.stale.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::sip::message::{Headers, Method, Uri};
    use crate::sip::target::Target;

    const TIMEOUTS: ForkTimeouts = ForkTimeouts {
        response: Duration::from_secs(2),
        ring: Duration::from_secs(30),
    };

    fn route(peers: usize) -> Vec<Arc<Peer>> {
        (0..peers)
            .map(|i| {
                let address = SocketAddr::from(([127, 0, 0, 1], 5080 + i as u16));
                Arc::new(Peer::new(
                    &format!("peer{i}"),
                    address,
                    None,
                    crate::routing::TransportKind::Udp,
                ))
            })
            .collect()
    }

    fn attempt(index: usize, branch: &str) -> Attempt {
        let mut headers = Headers::new();
        headers.push("Via", format!("SIP/2.0/UDP 127.0.0.1:5060;branch={branch}"));
        headers.push("From", "<sip:a@127.0.0.1>;tag=1");
        headers.push("To", "<sip:b@127.0.0.1>");
        headers.push("Call-ID", "fork-test");
        headers.push("CSeq", "1 INVITE");
        let invite = Request {
            method: Method::Invite,
            uri: Uri::sip(
                Some("12345"),
                message::Host::Ip([127, 0, 0, 1].into()),
                None,
            ),
            headers,
            body: bytes::Bytes::new(),
        };
        let target = Target::Udp(
            crate::routing::InterfaceId::DEFAULT,
            SocketAddr::from(([127, 0, 0, 1], 5080 + index as u16)),
        );
        Attempt::new(index, invite, branch.to_string(), target)
    }

    fn started(peers: usize, now: Instant) -> Fork {
        let mut fork = Fork::new(route(peers), TIMEOUTS);
        assert!(fork.sent(now, attempt(0, "z9hG4bK0")).is_none());
        fork
    }

    #[test]
    fn a_peer_that_never_responds_fails_over_after_the_response_timeout() {
        let now = Instant::now();
        let mut fork = started(2, now);
        assert_eq!(fork.poll_timeout(), Some(now + TIMEOUTS.response));
        assert!(fork.handle_timeout(now + Duration::from_secs(1)).is_none());
        match fork.handle_timeout(now + TIMEOUTS.response) {
            Some(ForkTimeout::NoResponse(failure)) => {
                assert_eq!(failure.status, 408);
                assert_eq!(failure.next, Some(1));
            }
            other => panic!("expected a failover, got {other:?}"),
        }
    }

    #[test]
    fn failover_skips_a_peer_found_down_since_the_fork_began() {
        let mut fork = started(3, Instant::now());
        if let Some(peer) = fork.peer_at(1) {
            peer.set_up(false);
        }
        let failure = fork.handle_failure(503, "Service Unavailable");
        assert_eq!(
            failure.map(|f| f.next),
            Some(Some(2)),
            "peer1 is down: peer2"
        );
        let mut fork = started(2, Instant::now());
        if let Some(peer) = fork.peer_at(1) {
            peer.set_up(false);
        }
        let failure = fork.handle_failure(408, "Request Timeout");
        assert_eq!(failure.map(|f| f.next), Some(None), "no peer up is left");
        assert_eq!(fork.poll_timeout(), None);
    }

    #[test]
    fn only_408_5xx_and_6xx_fail_over_and_never_past_the_last_peer() {
        for (status, next) in [
            (408, Some(1)),
            (503, Some(1)),
            (603, Some(1)),
            (486, None),
            (404, None),
        ] {
            let mut fork = started(2, Instant::now());
            let failure = fork.handle_failure(status, "x");
            assert_eq!(failure.map(|f| f.next), Some(next), "status {status}");
        }
        let now = Instant::now();
        let mut fork = started(2, now);
        let previous = fork.sent(now, attempt(1, "z9hG4bK1"));
        assert_eq!(previous.map(|p| p.branch), Some("z9hG4bK0".to_string()));
        let failure = fork.handle_failure(503, "Service Unavailable");
        assert_eq!(failure.map(|f| f.next), Some(None));
        assert_eq!(
            fork.poll_timeout(),
            None,
            "a fork with no peer left runs no timer"
        );
    }

    #[test]
    fn ringing_too_long_cancels_and_the_487_counts_as_408() {
        let now = Instant::now();
        let mut fork = started(2, now);
        assert_eq!(fork.handle_provisional(now, 100), Progress::Trying);
        let ringing = now + Duration::from_secs(1);
        assert_eq!(fork.handle_provisional(ringing, 180), Progress::Ringing);
        assert_eq!(fork.handle_provisional(ringing, 183), Progress::Trying);
        assert_eq!(fork.poll_timeout(), Some(ringing + TIMEOUTS.ring));
        match fork.handle_timeout(ringing + TIMEOUTS.ring) {
            Some(ForkTimeout::RingedOut(cancel, _)) => assert_eq!(cancel.method, Method::Cancel),
            other => panic!("expected a CANCEL, got {other:?}"),
        }
        assert!(fork.cancel().is_none(), "one CANCEL per attempt");
        let failure = fork.handle_failure(487, "Request Terminated");
        assert_eq!(failure.map(|f| (f.status, f.next)), Some((408, Some(1))));
    }

    #[test]
    fn ringing_again_after_the_ring_timeout_sends_no_second_cancel() {
        let now = Instant::now();
        let mut fork = started(2, now);
        fork.handle_provisional(now, 180);
        let out = now + TIMEOUTS.ring;
        assert!(matches!(
            fork.handle_timeout(out),
            Some(ForkTimeout::RingedOut(..))
        ));
        assert_eq!(fork.handle_provisional(out, 183), Progress::Trying);
        assert_eq!(fork.poll_timeout(), None, "no ring timer after the CANCEL");
        assert!(fork.handle_timeout(out + TIMEOUTS.ring).is_none());
        assert!(fork.cancel().is_none());
    }

    #[test]
    fn a_cancel_waits_for_a_provisional_response() {
        let now = Instant::now();
        let mut fork = started(1, now);
        assert!(
            fork.cancel().is_none(),
            "§9.1: no CANCEL before a provisional response"
        );
        fork.handle_provisional(now, 100);
        assert!(fork.cancel().is_some());
        assert!(fork.cancel().is_none());
    }

    #[test]
    fn an_answer_stops_the_timers_and_settles_the_attempt() {
        let now = Instant::now();
        let mut fork = started(2, now);
        fork.handle_provisional(now, 180);
        fork.handle_answered();
        assert_eq!(fork.poll_timeout(), None);
        assert!(!fork.is_unsettled());
        assert!(fork.cancel().is_none(), "no CANCEL after a final response");
    }

    #[test]
    fn retired_attempts_are_bounded_but_awaited_ones_are_kept() {
        let mut retired = Retired::default();
        let mut awaited = attempt(0, "awaited");
        awaited.provisional = true;
        retired.abandon(awaited);
        for i in 0..3 * MAX_STALE {
            let mut old = attempt(0, &format!("old{i}"));
            old.settled = true;
            retired.retire(old);
        }
        assert!(retired.len() <= MAX_STALE);
        assert!(retired.get_mut("awaited").is_some());
        assert!(retired.is_waiting());
        assert!(retired.settled("awaited"));
        assert!(!retired.is_waiting());
    }
}
