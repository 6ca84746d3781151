//! A route's queue (`[[route]] queue_secs`): a caller every desk of the route turned away is
//! answered and waits, hearing the queue announcement (or ringback), while leg B's setup is
//! begun again over the route's desks every `retry`: leg B's fork starts afresh, its INVITE a
//! new dialog. A desk that answers is bridged at once (the caller's leg was answered when it
//! was queued, so nothing goes to the caller); a caller who hangs up abandons the queue; at
//! the end of the wait the gateway hangs up.

use std::time::Instant;

use crate::media::prompt::Announcement;
use crate::media::{Leg, MediaCommand};
use crate::sip::dialog::Dialog;

use super::fork::{Fork, ForkTimeouts};
use super::{Action, Call, EndedBy, QueueUpdate, State, Timer};

/// A caller waiting in the queue.
#[derive(Debug, Clone, Copy)]
pub(super) struct Queued {
    pub(super) since: Instant,
    pub(super) until: Instant,
    /// The wait is over and the call went to the overflow peers.
    pub(super) overflowed: bool,
}

impl Call {
    /// Whether the call is waiting in its route's queue (its caller answered, no desk yet).
    pub(super) fn is_queued(&self) -> bool {
        self.queued.is_some() && self.state == State::Calling
    }

    /// Every desk turned the caller away with `status`: queue it if the route has a queue,
    /// the caller's INVITE had an offer and the status is a desk's (not the caller's CANCEL).
    /// True if it waits now (or waits on).
    pub(super) fn queue_instead(&mut self, now: Instant, status: u16) -> bool {
        let Some(policy) = self.queue_policy.clone() else {
            return false;
        };
        // Busy, unavailable, declined, no answer, or the desk's server failing: a desk freeing
        // up may take it. A refusal that would not change (404, 403, 488...) fails at once.
        let busy =
            matches!(status, 408 | 480 | 486 | 487 | 600 | 603) || (500..600).contains(&status);
        if !busy || self.cancelled || self.caller.pending_offer.is_some() {
            return false;
        }
        if self.queued.is_some_and(|q| q.overflowed) {
            // The remote seats turned it away too.
            tracing::info!(call = %self.id, status, "overflow peers turned the caller away: hanging up");
            self.give_up_queue(Some(now));
            self.hang_up(None, EndedBy::Gateway, "no desk and no overflow peer");
            return true;
        }
        if let Some(queued) = self.queued {
            // Offered again and turned away again: the next offer, or the end of the wait.
            if now + policy.retry < queued.until {
                self.arm(Timer::QueueRetry, Some(now + policy.retry));
            } else {
                self.arm(Timer::QueueRetry, Some(queued.until));
            }
            return true;
        }
        if self.caller.finalized {
            return false;
        }
        // The caller is answered: from now on it hears the queue, not a ring.
        let mut ok = self.a_response(200, "OK", true);
        self.start_caller_session(now, &mut ok);
        self.actions.push_back(Action::SendResponse {
            server: self.caller.server,
            response: ok,
        });
        let local_sequence = self.ids.next_u64() as u32 & 0xffff;
        self.legs[Leg::A].dialog =
            Dialog::new_uas(&self.caller.invite, &self.legs[Leg::A].tag, local_sequence);
        let announcement = match &self.settings.queue_announcement {
            Some(prompt) => Announcement::Prompt(prompt.clone()),
            None => Announcement::Ringback,
        };
        self.actions.push_back(Action::Media(MediaCommand::Announce(
            self.legs[Leg::A].party,
            Some(announcement),
        )));
        // From now on a caller gone silent on both directions ends the call, as answered.
        self.actions
            .push_back(Action::Media(MediaCommand::Answered));
        self.queued = Some(Queued {
            since: now,
            until: now + policy.wait,
            overflowed: false,
        });
        tracing::info!(call = %self.id, status, wait = ?policy.wait, "queued: every desk turned the caller away");
        self.actions
            .push_back(Action::Queue(QueueUpdate::Queued { status }));
        self.arm(Timer::QueueRetry, Some(now + policy.retry));
        true
    }

    /// The queue's timer: offer the call to the route's desks again, or give up at the end
    /// of the wait.
    pub(super) fn queue_due(&mut self, now: Instant) {
        let Some(queued) = self.queued.filter(|_| self.is_queued()) else {
            return;
        };
        if now >= queued.until {
            self.overflow(now);
            return;
        }
        let _ = queued;
        let mut route = match self.route_to(&self.number.clone()) {
            Ok(route) => route,
            // Every desk down (or the route gone): wait on, offer again later.
            Err(_) => {
                let _ = self.queue_instead(now, 503);
                return;
            }
        };
        // A busy desk does not pass the call on (486 is its final word): each offer begins
        // at the next desk, so every desk of the route is offered it in turn.
        let turn = self.queue_offers % route.len().max(1);
        route.rotate_left(turn);
        self.queue_offers += 1;
        self.refork(now, route);
    }

    /// The wait is over: the call goes to the route's overflow peers that are up (another
    /// centre's remote seats), or the gateway hangs up.
    fn overflow(&mut self, now: Instant) {
        let names = self
            .queue_policy
            .as_ref()
            .map(|p| p.overflow.clone())
            .unwrap_or_default();
        let peers: Vec<_> = names
            .iter()
            .filter_map(|name| self.settings.router.peer_by_name(name))
            .filter(|peer| peer.is_up())
            .collect();
        if peers.is_empty() {
            tracing::info!(call = %self.id, "queue wait over: hanging up");
            self.give_up_queue(Some(now));
            self.hang_up(None, EndedBy::Gateway, "no desk within the queue wait");
            return;
        }
        if let Some(queued) = self.queued.as_mut() {
            queued.overflowed = true;
            let waited_ms = waited(queued.since, now);
            self.actions
                .push_back(Action::Queue(QueueUpdate::Overflowed {
                    to_peer: peers[0].name.clone(),
                    waited_ms,
                }));
        }
        tracing::info!(call = %self.id, to = %peers[0].name, "queue wait over: overflowing");
        self.refork(now, peers);
    }

    /// A desk answered a queued call: the caller, answered already, stops hearing the queue.
    pub(super) fn leave_queue(&mut self, now: Instant) {
        if let Some(queued) = self.queued.take() {
            self.arm(Timer::QueueRetry, None);
            self.actions.push_back(Action::Media(MediaCommand::Announce(
                self.legs[Leg::A].party,
                None,
            )));
            tracing::info!(call = %self.id, waited = ?now.saturating_duration_since(queued.since), "queued call answered");
            self.actions.push_back(Action::Queue(QueueUpdate::Answered {
                waited_ms: waited(queued.since, now),
            }));
        }
    }

    /// The gateway gives up on the queued call (told before its hang-up; `now` unknown:
    /// the wait is told as 0).
    pub(super) fn give_up_queue(&mut self, now: Option<Instant>) {
        if let Some(queued) = self.queued.take() {
            self.arm(Timer::QueueRetry, None);
            self.actions.push_back(Action::Queue(QueueUpdate::GaveUp {
                waited_ms: now.map_or(0, |now| waited(queued.since, now)),
            }));
        }
    }

    /// Leg B's fork begun afresh over `route`: the attempt under way (a desk that never
    /// answered, its INVITE still running) is retired, so a late answer of it is ACKed and
    /// released, never bridged.
    fn refork(&mut self, now: Instant, route: Vec<std::sync::Arc<crate::routing::Peer>>) {
        let timeouts = ForkTimeouts {
            response: self.settings.peer_response_timeout,
            ring: self.settings.ring_timeout,
        };
        let old = std::mem::replace(&mut self.setup, Fork::new(route, timeouts));
        let mut old = old;
        let (cancel, attempt) = old.abandon();
        if let Some((request, target)) = cancel {
            self.actions
                .push_back(Action::SendRequest { request, target });
        }
        if let Some(attempt) = attempt {
            self.retired.abandon(attempt);
        }
        self.retry_setup(now);
    }

    /// The caller hung up while queued: abandoned (told before the call's end).
    pub(super) fn abandon_queue(&mut self, now: Instant) {
        if let Some(queued) = self.queued.take() {
            self.arm(Timer::QueueRetry, None);
            self.actions
                .push_back(Action::Queue(QueueUpdate::Abandoned {
                    waited_ms: waited(queued.since, now),
                }));
        }
    }
}

fn waited(since: Instant, now: Instant) -> u64 {
    now.saturating_duration_since(since).as_millis() as u64
}
