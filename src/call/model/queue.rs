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
//!
//! A transfer or a conference guest to a route with a queue waits the same way (the same
//! line, offers, overflow), its fork in place of leg B's setup: the citizen stays with the
//! agent (or, the agent gone, hears the queue announcement for a transfer, ringback for a
//! guest), a REFER's NOTIFY says 182
//! Queued, and when no desk and no overflow peer is left it fails as any other does (the
//! citizen never dropped). A desk answering a transfer takes the agent's leg over (after the
//! whisper, when one is set).

use std::time::{Duration, Instant};

use crate::media::prompt::Announcement;
use crate::media::{Leg, MediaCommand};
use crate::routing::desks::{Place, WaitingLine};
use crate::routing::QueuePolicy;
use crate::sip::dialog::Dialog;

use super::fork::{Fork, ForkTimeouts};
use super::{Action, Call, EndedBy, QueueUpdate, State, Timer};

/// The shortest time between two offers of one queued call when desks free seats (a desk
/// that refuses at once would otherwise be offered the call in a loop).
const OFFER_SPACING: Duration = Duration::from_secs(1);

/// Whose INVITE waits for a desk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Waiter {
    /// Leg B's setup: a caller every desk turned away.
    Setup,
    /// The transfer under way: a citizen its agent sends to a route whose desks are busy.
    Transfer,
    /// The conference guest being invited, from a route whose desks are busy.
    Guest,
}

/// A caller waiting in the queue.
#[derive(Debug)]
pub(super) struct Queued {
    waiter: Waiter,
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
        self.queued_as(Waiter::Setup) && self.state == State::Calling
    }

    /// Whether the transfer under way waits in its route's queue.
    pub(super) fn transfer_queued(&self) -> bool {
        self.queued_as(Waiter::Transfer) && self.transfer.is_some()
    }

    fn queued_as(&self, waiter: Waiter) -> bool {
        self.queued.as_ref().is_some_and(|q| q.waiter == waiter)
    }

    /// Whether the conference guest being invited waits in its route's queue.
    pub(super) fn guest_queued(&self) -> bool {
        self.queued_as(Waiter::Guest) && self.inviting_guest()
    }

    /// Who waits for a desk now, if anyone does.
    fn waiter(&self) -> Option<Waiter> {
        if self.is_queued() {
            Some(Waiter::Setup)
        } else if self.transfer_queued() {
            Some(Waiter::Transfer)
        } else if self.guest_queued() {
            Some(Waiter::Guest)
        } else {
            None
        }
    }

    /// The fork that offers the waiting call to the desks.
    fn waiting_fork(&self, waiter: Waiter) -> Option<&Fork> {
        match waiter {
            Waiter::Setup => Some(&self.setup),
            Waiter::Transfer => self.transfer.as_ref().map(|t| &t.fork),
            Waiter::Guest => self.invited_guest().map(|g| &g.fork),
        }
    }

    /// How `waiter` waits when every desk turns it away (its route's queue), if it does.
    fn waiting_policy(&self, waiter: Waiter) -> Option<&QueuePolicy> {
        match waiter {
            Waiter::Setup => self.queue_policy.as_ref(),
            Waiter::Transfer => self.transfer.as_ref().and_then(|t| t.queue.as_ref()),
            Waiter::Guest => self.invited_guest().and_then(|g| g.queue.as_ref()),
        }
    }

    /// The linkage (transfer or guest) that `waiter` is, if it is one.
    fn waiting_linkage(&self, waiter: Waiter) -> Option<String> {
        match waiter {
            Waiter::Setup => None,
            Waiter::Transfer => self.transfer.as_ref().map(|t| t.linkage_id().to_string()),
            Waiter::Guest => self.invited_guest().map(|g| g.linkage_id().to_string()),
        }
    }

    /// Whether the call waits in its route's line for a desk to free a seat (not overflowed,
    /// not hearing that no desk is left).
    pub(super) fn waits_in_line(&self) -> bool {
        self.waiter().is_some()
            && self
                .queued
                .as_ref()
                .is_some_and(|q| q.phase == Phase::Waiting)
    }

    /// Callers waiting for a seat before `waiter` in its route's line: all of them when it
    /// is not in it yet, none once it left it (overflowed). One ringing a desk holds its seat
    /// already and is not counted.
    pub(super) fn ahead_in_line(&self, waiter: Waiter) -> usize {
        match self.queued.as_ref().filter(|q| q.waiter == waiter) {
            Some(queued) => queued.place.as_ref().map_or(0, Place::ahead),
            None => self
                .waiting_policy(waiter)
                .map_or(0, |p| p.line.waiting_for_seats()),
        }
    }

    /// Tells the line whether this caller rings a desk now, holding its seat.
    fn mark_offering(&self) {
        let Some(queued) = self.queued.as_ref() else {
            return;
        };
        let holds = self
            .waiting_fork(queued.waiter)
            .is_some_and(Fork::holds_seat);
        if let Some(place) = queued.place.as_ref() {
            place.set_offering(holds);
        }
    }

    /// A desk freed a seat, or a caller left a line: a queued call with nobody before it who
    /// could take the seat is offered to the desks now (at most once per [`OFFER_SPACING`];
    /// sooner, the offer is due then).
    pub(super) fn desks_freed(&mut self, now: Instant) {
        let Some(waiter) = self.waiter() else {
            return;
        };
        let (Some(queued), Some(fork)) = (self.queued.as_ref(), self.waiting_fork(waiter)) else {
            return;
        };
        if queued.phase != Phase::Waiting || fork.is_unsettled() {
            return;
        }
        let ahead = queued.place.as_ref().map_or(0, Place::ahead);
        if !fork.has_room(ahead) {
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
        if !waits_on(status) || self.cancelled {
            return false;
        }
        if self.queued_as(Waiter::Setup) {
            return self.turned_away_again(now, status, &policy);
        }
        if self.caller.finalized {
            return false;
        }
        let Some(place) = self.join_line(Waiter::Setup, &policy, status) else {
            return false;
        };
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
        tracing::info!(call = %self.id, status, wait = ?policy.wait, full = place.is_none(), "queued: every desk turned the caller away");
        self.wait_for_desks(now, Waiter::Setup, &policy, place, status);
        true
    }

    /// The desks of a transfer's (`waiter` Transfer) or a conference guest's (Guest) route all
    /// turned it away with `status`: it waits in the route's queue if the route has one
    /// (true), or fails (false: its failure goes on).
    pub(super) fn queue_linkage_instead(
        &mut self,
        now: Instant,
        waiter: Waiter,
        status: u16,
    ) -> bool {
        let Some(policy) = self.waiting_policy(waiter).cloned() else {
            return false;
        };
        if !waits_on(status) || self.state != State::Answered {
            // A refusal that would not change (404, 488...): the wait, if any, ends with it.
            if self.queued_as(waiter) {
                self.stop_waiting(now, waiter);
            }
            return false;
        }
        if self.queued_as(waiter) {
            return self.turned_away_again(now, status, &policy);
        }
        if self.queued.is_some() {
            // One wait at a time.
            return false;
        }
        let Some(place) = self.join_line(waiter, &policy, status) else {
            return false;
        };
        tracing::info!(call = %self.id, ?waiter, status, wait = ?policy.wait, full = place.is_none(), "queued: every desk turned the linkage away");
        if waiter == Waiter::Transfer {
            self.notify_transfer_queued();
        }
        self.wait_for_desks(now, waiter, &policy, place, status);
        // The agent gone, the citizen hears the queue, not the transfer announcement.
        if let (true, Some(citizen)) = (self.transfer_queued(), self.ringback) {
            self.announce_transfer(Some(citizen));
        }
        true
    }

    /// A place in the line for a new waiter: Some(None) when the line is full but an overflow
    /// peer has room (it overflows at once); None when both are full (turned away, as by the
    /// desks: a surge's excess is refused, not answered and hung up).
    fn join_line(
        &self,
        waiter: Waiter,
        policy: &QueuePolicy,
        status: u16,
    ) -> Option<Option<Place>> {
        let place = WaitingLine::join(&policy.line);
        let overflow_free = self
            .overflow_peers(waiter)
            .iter()
            .any(|peer| peer.seats.free() != Some(0));
        if place.is_none() && !overflow_free {
            tracing::info!(call = %self.id, status, "queue full: turned away");
            return None;
        }
        Some(place)
    }

    /// `waiter` waits from now on: told to the platforms, offered again at the retry (or at
    /// once to the overflow peers when the line was full).
    fn wait_for_desks(
        &mut self,
        now: Instant,
        waiter: Waiter,
        policy: &QueuePolicy,
        place: Option<Place>,
        status: u16,
    ) {
        let full = place.is_none();
        self.queued = Some(Queued {
            waiter,
            since: now,
            until: now + policy.wait,
            offered: now,
            phase: Phase::Waiting,
            place,
        });
        let linkage_id = self.waiting_linkage(waiter);
        self.actions
            .push_back(Action::Queue(QueueUpdate::Queued { status, linkage_id }));
        if full {
            self.overflow(now);
        } else {
            let next = (now + policy.retry).min(now + policy.wait);
            self.arm(Timer::QueueRetry, Some(next));
        }
    }

    /// A waiting call offered again and turned away again (true: it waits on), or its
    /// overflow peers turned it away too (given up: false for a transfer, which then fails).
    fn turned_away_again(&mut self, now: Instant, status: u16, policy: &QueuePolicy) -> bool {
        let Some(queued) = &self.queued else {
            return false;
        };
        match queued.phase {
            Phase::Waiting => {
                // The next offer, or the end of the wait.
                self.mark_offering();
                let next = (now + policy.retry).min(queued.until);
                self.arm(Timer::QueueRetry, Some(next));
                true
            }
            Phase::Overflowed => {
                tracing::info!(call = %self.id, status, "overflow peers turned the call away");
                match queued.waiter {
                    Waiter::Setup => {
                        self.give_up(now, "no desk and no overflow peer");
                        true
                    }
                    waiter => {
                        self.stop_waiting(now, waiter);
                        false
                    }
                }
            }
            Phase::Farewell(_) => true,
        }
    }

    /// The queue's timer: offer the call to the route's desks again, or give up at the end
    /// of the wait.
    pub(super) fn queue_due(&mut self, now: Instant) {
        if self.waiter().is_none() {
            return;
        }
        let Some(queued) = self.queued.as_ref() else {
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
        let Some(waiter) = self.waiter() else {
            return;
        };
        let number = match waiter {
            Waiter::Setup => self.number.clone(),
            Waiter::Transfer => self
                .transfer
                .as_ref()
                .map(|t| t.number().to_string())
                .unwrap_or_default(),
            Waiter::Guest => self
                .invited_guest()
                .map(|g| g.number().to_string())
                .unwrap_or_default(),
        };
        let mut route = match self.route_to(&number) {
            Ok(route) => route,
            // Every desk down (or the route gone): wait on, offer again later.
            Err(_) => {
                if let Some(policy) = self.waiting_policy(waiter).cloned() {
                    self.turned_away_again(now, 503, &policy);
                }
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
        self.refork(now, waiter, route);
        self.mark_offering();
        if self.waiter() != Some(waiter) {
            return;
        }
        let (Some(queued), Some(fork)) = (self.queued.as_ref(), self.waiting_fork(waiter)) else {
            return;
        };
        if let (true, Some(peer)) = (fork.is_unsettled(), fork.peer()) {
            let offered = QueueUpdate::Offered {
                to_peer: peer.name.clone(),
                waited_ms: waited(queued.since, now),
            };
            let until = queued.until;
            self.actions.push_back(Action::Queue(offered));
            self.arm(Timer::QueueRetry, Some(until));
        }
    }

    /// The overflow peers of `waiter`'s route that are up.
    fn overflow_peers(&self, waiter: Waiter) -> Vec<std::sync::Arc<crate::routing::Peer>> {
        let names = self
            .waiting_policy(waiter)
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
        let Some(waiter) = self.queued.as_ref().map(|q| q.waiter) else {
            return;
        };
        let peers = self.overflow_peers(waiter);
        if peers.is_empty() {
            tracing::info!(call = %self.id, "queue wait over");
            match waiter {
                Waiter::Setup => self.give_up(now, "no desk within the queue wait"),
                waiter => self.linkage_wait_over(now, waiter),
            }
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
        self.refork(now, waiter, peers);
    }

    /// A desk answered the waiting call (a queued caller: it stops hearing the queue; a
    /// queued transfer or guest: its answer tells the citizen's side what to hear).
    pub(super) fn leave_queue(&mut self, now: Instant) {
        if let Some(queued) = self.queued.take() {
            self.arm(Timer::QueueRetry, None);
            if queued.waiter == Waiter::Setup {
                self.actions.push_back(Action::Media(MediaCommand::Announce(
                    self.legs[Leg::A].party,
                    None,
                )));
            }
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
            self.give_up_queue(now);
            self.hang_up(None, EndedBy::Gateway, reason);
            return;
        };
        self.give_up_queue(now);
        // No desk may answer while the caller hears that none is left.
        self.stop_offering(Waiter::Setup);
        tracing::info!(call = %self.id, reason, "queue given up: playing the no-desk announcement");
        let length = Duration::from_millis(prompt.duration_ms());
        self.actions.push_back(Action::Media(MediaCommand::Announce(
            self.legs[Leg::A].party,
            Some(Announcement::Prompt(prompt)),
        )));
        self.queued = Some(Queued {
            waiter: Waiter::Setup,
            since: now,
            until: now + length,
            offered: now,
            phase: Phase::Farewell(reason),
            place: None,
        });
        self.arm(Timer::QueueRetry, Some(now + length));
    }

    /// The gateway gives up on the waiting call (told before its hang-up, once).
    pub(super) fn give_up_queue(&mut self, now: Instant) {
        if let Some(queued) = self.queued.take() {
            self.arm(Timer::QueueRetry, None);
            if matches!(queued.phase, Phase::Farewell(_)) {
                return;
            }
            self.actions.push_back(Action::Queue(QueueUpdate::GaveUp {
                waited_ms: waited(queued.since, now),
            }));
        }
    }

    /// `waiter`'s fork begun afresh over `route`: the attempt under way (a desk that never
    /// answered, its INVITE still running) is retired, so a late answer of it is ACKed and
    /// released, never bridged.
    fn refork(
        &mut self,
        now: Instant,
        waiter: Waiter,
        route: Vec<std::sync::Arc<crate::routing::Peer>>,
    ) {
        let response = self.settings.peer_response_timeout;
        match waiter {
            Waiter::Setup => {
                let timeouts = ForkTimeouts {
                    response,
                    ring: self.settings.ring_timeout,
                };
                // Leg B's dialog so far stays routed to the call only if an INVITE went out
                // on it.
                let invited = self.setup.attempt().is_some();
                self.stop_offering(waiter);
                self.setup = Fork::new(route, timeouts);
                self.retry_setup(now, invited);
            }
            Waiter::Transfer => {
                let timeouts = ForkTimeouts {
                    response,
                    ring: self.settings.transfer_ring_timeout,
                };
                self.stop_offering(waiter);
                if let Some(transfer) = self.transfer.as_mut() {
                    transfer.fork = Fork::new(route, timeouts);
                }
                self.offer_transfer(now);
            }
            Waiter::Guest => {
                let timeouts = ForkTimeouts {
                    response,
                    ring: self.settings.transfer_ring_timeout,
                };
                self.stop_offering(waiter);
                self.offer_guest(now, Fork::new(route, timeouts));
            }
        }
    }

    /// The offer under way is given up: a desk still ringing is cancelled, a late answer of
    /// it released, never bridged.
    fn stop_offering(&mut self, waiter: Waiter) {
        let (cancel, attempt) = match waiter {
            Waiter::Setup => self.setup.abandon(),
            Waiter::Transfer => match self.transfer.as_mut() {
                Some(transfer) => transfer.fork.abandon(),
                None => return,
            },
            Waiter::Guest => match self.invited_guest_mut() {
                Some(guest) => guest.fork.abandon(),
                None => return,
            },
        };
        if let Some((request, target)) = cancel {
            self.actions
                .push_back(Action::SendRequest { request, target });
        }
        if let Some(attempt) = attempt {
            self.retired.abandon(attempt);
        }
    }

    /// A transfer's or guest's wait is over with no overflow peer: the desk still ringing is
    /// cancelled and it fails busy, as when its desks turn it away.
    fn linkage_wait_over(&mut self, now: Instant, waiter: Waiter) {
        self.stop_offering(waiter);
        self.stop_waiting(now, waiter);
        match waiter {
            Waiter::Transfer => self.transfer_failed_after_queue(now),
            Waiter::Guest => self.guest_failed_after_queue(now),
            Waiter::Setup => {}
        }
    }

    /// A transfer or guest waits no more (given up): told once, and its route's queue is
    /// not waited in again by it.
    fn stop_waiting(&mut self, now: Instant, waiter: Waiter) {
        self.give_up_queue(now);
        match waiter {
            Waiter::Transfer => {
                if let Some(transfer) = self.transfer.as_mut() {
                    transfer.queue = None;
                }
            }
            Waiter::Guest => {
                if let Some(guest) = self.invited_guest_mut() {
                    guest.queue = None;
                }
            }
            Waiter::Setup => {}
        }
    }

    /// `leg`'s party hung up: if it is the citizen waiting (the caller in a queue, or the
    /// citizen a queued transfer or guest was for), the wait is abandoned (told before the
    /// call's end).
    pub(super) fn abandon_queue(&mut self, now: Instant, leg: Leg) {
        let citizen = match self.waiter() {
            Some(Waiter::Setup) => Leg::A,
            Some(Waiter::Transfer) => match self.transfer.as_ref() {
                Some(transfer) => transfer.from.other(),
                None => return,
            },
            Some(Waiter::Guest) => match self.invited_guest() {
                Some(guest) => guest.from().other(),
                None => return,
            },
            None => return,
        };
        if leg != citizen {
            return;
        }
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

/// Busy, unavailable, declined, no answer, or the desk's server failing: a desk freeing up
/// may take the call. A refusal that would not change (404, 403, 488...) fails at once.
fn waits_on(status: u16) -> bool {
    matches!(status, 408 | 480 | 486 | 487 | 600 | 603) || (500..600).contains(&status)
}

fn waited(since: Instant, now: Instant) -> u64 {
    now.saturating_duration_since(since).as_millis() as u64
}
