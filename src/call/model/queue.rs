//! A route's queue (`[[route]] queue_secs`): a caller every desk of the route turned away (or
//! found at its `max_calls`) is answered and waits in the route's line, hearing the queue
//! announcement (or ringback), while leg B's setup is begun again over the route's desks: as
//! soon as a desk with `max_calls` frees a seat (first come, first served), and every `retry`
//! for desks whose busy answers are all the gateway knows. Each offer is a fresh fork, its
//! INVITE a new dialog. A desk that answers is bridged at once (the caller's leg was answered
//! when it was queued, so nothing goes to the caller); a caller who hangs up abandons the
//! queue; at the end of the wait (or at once when the line is full) the call overflows to the
//! route's overflow peers, and when there is none left the gateway plays the no-desk
//! announcement and hangs up.

use std::time::{Duration, Instant};

use crate::media::prompt::Announcement;
use crate::media::{Leg, MediaCommand};
use crate::routing::desks::{Place, WaitingLine};
use crate::sip::dialog::Dialog;

use super::fork::{Fork, ForkTimeouts};
use super::{Action, Call, EndedBy, QueueUpdate, State, Timer};

/// The shortest time between two offers of one queued call when desks free seats (a desk
/// that refuses at once would otherwise be offered the call in a loop).
const OFFER_SPACING: Duration = Duration::from_secs(1);

/// A caller waiting in the queue.
#[derive(Debug)]
pub(super) struct Queued {
    pub(super) since: Instant,
    pub(super) until: Instant,
    /// The last offer to the desks.
    offered: Instant,
    phase: Phase,
    /// Its place in the route's line (none once it overflowed, or if the line was full).
    place: Option<Place>,
}

/// Where a queued call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// In the route's line, offered to its desks.
    Waiting,
    /// Gone to the overflow peers.
    Overflowed,
    /// Given up: the caller hears the no-desk announcement, then the gateway's BYE.
    Farewell(&'static str),
}

impl Call {
    /// Whether the call is waiting in its route's queue (its caller answered, no desk yet).
    pub(super) fn is_queued(&self) -> bool {
        self.queued.is_some() && self.state == State::Calling
    }

    /// Whether the call waits in its route's line for a desk to free a seat (not overflowed,
    /// not hearing that no desk is left).
    pub(super) fn waits_in_line(&self) -> bool {
        self.is_queued()
            && self
                .queued
                .as_ref()
                .is_some_and(|q| q.phase == Phase::Waiting)
    }

    /// Callers waiting for a seat before this call in its route's line: all of them for a
    /// call not in it yet, none for one that left it (overflowed). One ringing a desk holds
    /// its seat already and is not counted.
    pub(super) fn ahead_in_line(&self) -> usize {
        match &self.queued {
            Some(queued) => queued.place.as_ref().map_or(0, Place::ahead),
            None => self
                .queue_policy
                .as_ref()
                .map_or(0, |p| p.line.waiting_for_seats()),
        }
    }

    /// Tells the line whether this caller rings a desk now, holding its seat.
    fn mark_offering(&self) {
        if let Some(place) = self.queued.as_ref().and_then(|q| q.place.as_ref()) {
            place.set_offering(self.setup.holds_seat());
        }
    }

    /// A desk freed a seat, or a caller left a line: a queued call with nobody before it who
    /// could take the seat is offered to the desks now (at most once per [`OFFER_SPACING`];
    /// sooner, the offer is due then).
    pub(super) fn desks_freed(&mut self, now: Instant) {
        let Some(queued) = self.queued.as_ref().filter(|_| self.is_queued()) else {
            return;
        };
        if queued.phase != Phase::Waiting || self.setup.is_unsettled() {
            return;
        }
        let ahead = queued.place.as_ref().map_or(0, Place::ahead);
        if !self.setup.has_room(ahead) {
            return;
        }
        let soonest = queued.offered + OFFER_SPACING;
        if now < soonest {
            let due = self
                .timer(Timer::QueueRetry)
                .map_or(soonest, |at| at.min(soonest));
            self.arm(Timer::QueueRetry, Some(due));
            return;
        }
        self.offer_again(now);
    }

    /// Every desk turned the caller away with `status`: queue it if the route has a queue
    /// and the status is a desk's (not the caller's CANCEL). A delayed-offer caller (§13.2.1)
    /// gets our offer in the queue's 200 and answers it in its ACK, as on a direct call.
    /// True if it waits now (or waits on).
    pub(super) fn queue_instead(&mut self, now: Instant, status: u16) -> bool {
        let Some(policy) = self.queue_policy.clone() else {
            return false;
        };
        // Busy, unavailable, declined, no answer, or the desk's server failing: a desk freeing
        // up may take it. A refusal that would not change (404, 403, 488...) fails at once.
        let busy =
            matches!(status, 408 | 480 | 486 | 487 | 600 | 603) || (500..600).contains(&status);
        if !busy || self.cancelled {
            return false;
        }
        if let Some(queued) = &self.queued {
            match queued.phase {
                Phase::Waiting => {
                    // Offered again and turned away again: the next offer, or the end of
                    // the wait.
                    self.mark_offering();
                    let next = (now + policy.retry).min(queued.until);
                    self.arm(Timer::QueueRetry, Some(next));
                }
                Phase::Overflowed => {
                    // The remote seats turned it away too.
                    tracing::info!(call = %self.id, status, "overflow peers turned the caller away");
                    self.give_up(now, "no desk and no overflow peer");
                }
                Phase::Farewell(_) => {}
            }
            return true;
        }
        if self.caller.finalized {
            return false;
        }
        let place = WaitingLine::join(&policy.line);
        let overflow_free = self
            .overflow_peers()
            .iter()
            .any(|peer| peer.seats.free() != Some(0));
        if place.is_none() && !overflow_free {
            // The line is full and no overflow peer has room: turned away as by the desks,
            // unanswered (a surge's excess is refused, not answered and hung up).
            tracing::info!(call = %self.id, status, "queue full: turning the caller away");
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
        let full = place.is_none();
        self.queued = Some(Queued {
            since: now,
            until: now + policy.wait,
            offered: now,
            phase: Phase::Waiting,
            place,
        });
        tracing::info!(call = %self.id, status, wait = ?policy.wait, full, "queued: every desk turned the caller away");
        self.actions
            .push_back(Action::Queue(QueueUpdate::Queued { status }));
        if full {
            self.overflow(now);
        } else {
            let next = (now + policy.retry).min(now + policy.wait);
            self.arm(Timer::QueueRetry, Some(next));
        }
        true
    }

    /// The queue's timer: offer the call to the route's desks again, or give up at the end
    /// of the wait.
    pub(super) fn queue_due(&mut self, now: Instant) {
        let Some(queued) = self.queued.as_ref().filter(|_| self.is_queued()) else {
            return;
        };
        match queued.phase {
            Phase::Farewell(reason) => {
                self.queued = None;
                self.hang_up(None, EndedBy::Gateway, reason);
            }
            Phase::Overflowed => {}
            Phase::Waiting if now >= queued.until => self.overflow(now),
            Phase::Waiting => self.offer_again(now),
        }
    }

    /// The route's desks offered the call once more, from the next desk on; told to the
    /// platforms when an INVITE went out. The end of the wait stays due while the desk rings.
    fn offer_again(&mut self, now: Instant) {
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
        if let Some(queued) = self.queued.as_mut() {
            queued.offered = now;
        }
        self.refork(now, route);
        self.mark_offering();
        let Some(queued) = self.queued.as_ref().filter(|_| self.is_queued()) else {
            return;
        };
        if let (true, Some(peer)) = (self.setup.is_unsettled(), self.setup.peer()) {
            let offered = QueueUpdate::Offered {
                to_peer: peer.name.clone(),
                waited_ms: waited(queued.since, now),
            };
            let until = queued.until;
            self.actions.push_back(Action::Queue(offered));
            self.arm(Timer::QueueRetry, Some(until));
        }
    }

    /// The route's overflow peers that are up.
    fn overflow_peers(&self) -> Vec<std::sync::Arc<crate::routing::Peer>> {
        let names = self
            .queue_policy
            .as_ref()
            .map(|p| p.overflow.as_slice())
            .unwrap_or_default();
        names
            .iter()
            .filter_map(|name| self.settings.router.peer_by_name(name))
            .filter(|peer| peer.is_up())
            .collect()
    }

    /// The wait is over (or the line full): the call leaves the line for the route's
    /// overflow peers that are up (another centre's remote seats), or the gateway gives up.
    fn overflow(&mut self, now: Instant) {
        let peers = self.overflow_peers();
        if peers.is_empty() {
            tracing::info!(call = %self.id, "queue wait over");
            self.give_up(now, "no desk within the queue wait");
            return;
        }
        if let Some(queued) = self.queued.as_mut() {
            queued.phase = Phase::Overflowed;
            queued.place = None;
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

    /// No desk and no overflow peer is left: the caller hears `[announcements] no_desk`
    /// (when there is one), then the gateway's BYE.
    fn give_up(&mut self, now: Instant, reason: &'static str) {
        let prompt = self.settings.no_desk_announcement.clone();
        let Some(prompt) = prompt.filter(|_| self.legs[Leg::A].dialog.is_some()) else {
            self.give_up_queue(Some(now));
            self.hang_up(None, EndedBy::Gateway, reason);
            return;
        };
        self.give_up_queue(Some(now));
        // No desk may answer while the caller hears that none is left.
        self.stop_offering();
        tracing::info!(call = %self.id, reason, "queue given up: playing the no-desk announcement");
        let length = Duration::from_millis(prompt.duration_ms());
        self.actions.push_back(Action::Media(MediaCommand::Announce(
            self.legs[Leg::A].party,
            Some(Announcement::Prompt(prompt)),
        )));
        self.queued = Some(Queued {
            since: now,
            until: now + length,
            offered: now,
            phase: Phase::Farewell(reason),
            place: None,
        });
        self.arm(Timer::QueueRetry, Some(now + length));
    }

    /// The gateway gives up on the queued call (told before its hang-up, once; `now`
    /// unknown: the wait is told as 0).
    pub(super) fn give_up_queue(&mut self, now: Option<Instant>) {
        if let Some(queued) = self.queued.take() {
            self.arm(Timer::QueueRetry, None);
            if matches!(queued.phase, Phase::Farewell(_)) {
                return;
            }
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
        // Leg B's dialog so far stays routed to the call only if an INVITE went out on it.
        let invited = self.setup.attempt().is_some();
        self.stop_offering();
        self.setup = Fork::new(route, timeouts);
        self.retry_setup(now, invited);
    }

    /// The offer under way is given up: a desk still ringing is cancelled, a late answer of
    /// it released, never bridged.
    fn stop_offering(&mut self) {
        let (cancel, attempt) = self.setup.abandon();
        if let Some((request, target)) = cancel {
            self.actions
                .push_back(Action::SendRequest { request, target });
        }
        if let Some(attempt) = attempt {
            self.retired.abandon(attempt);
        }
    }

    /// The caller hung up while queued: abandoned (told before the call's end).
    pub(super) fn abandon_queue(&mut self, now: Instant) {
        if let Some(queued) = self.queued.take() {
            self.arm(Timer::QueueRetry, None);
            if matches!(queued.phase, Phase::Farewell(_)) {
                // Given up already: the caller only left before the announcement ended.
                return;
            }
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
