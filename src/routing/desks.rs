//! How a route's callers wait ([`QueuePolicy`]), and what every call shares about the desks:
//! how many calls each peer carries against its capacity (`[[peer]] max_calls`, a [`Seat`]
//! per call it was sent), and each queued route's waiting line (`[[route]] queue_max`, a [`Place`] per queued caller, first come first
//! served). Both are released by dropping them, so a call that ends any way gives its seat and
//! its place back. Giving back a place, or a seat at a peer with `max_calls` that the call
//! was done with, raises the [`DeskSignal`] queued calls wait on; a seat given back because
//! the desk turned the call away does not (the desk said busy: waking every queued call to
//! offer it again would only hammer it).
//!
//! No I/O and no clock: atomics and one short lock, shared by the calls' tasks.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::Peer;

/// Raised whenever a seat or a place is given back: a queued call may go to a desk now.
#[derive(Debug)]
pub struct DeskSignal(tokio::sync::watch::Sender<u64>);

impl Default for DeskSignal {
    fn default() -> DeskSignal {
        DeskSignal(tokio::sync::watch::Sender::new(0))
    }
}

impl DeskSignal {
    fn raise(&self) {
        self.0
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    /// A receiver that sees every raise from now on (a raise is never lost between two
    /// waits: the receiver remembers it saw none).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// A peer's calls against its capacity.
#[derive(Debug, Default)]
pub struct Seats {
    /// `[[peer]] max_calls` (None: no limit, the calls only counted).
    max: Option<u32>,
    taken: AtomicU32,
    signal: Option<Arc<DeskSignal>>,
}

impl Seats {
    pub fn new(max: Option<u32>) -> Seats {
        Seats {
            max,
            ..Seats::default()
        }
    }

    pub(super) fn connect(&mut self, signal: &Arc<DeskSignal>) {
        self.signal = Some(Arc::clone(signal));
    }

    pub fn max(&self) -> Option<u32> {
        self.max
    }

    /// The calls the gateway has sent it that are not over.
    pub fn taken(&self) -> u32 {
        self.taken.load(Ordering::Relaxed)
    }

    /// Seats left (None: no limit).
    pub fn free(&self) -> Option<u32> {
        self.max.map(|max| max.saturating_sub(self.taken()))
    }
}

impl Clone for Seats {
    /// The configuration, not the count: a copy is a peer no call was sent to.
    fn clone(&self) -> Seats {
        Seats {
            max: self.max,
            taken: AtomicU32::new(0),
            signal: self.signal.clone(),
        }
    }
}

impl PartialEq for Seats {
    fn eq(&self, other: &Seats) -> bool {
        self.max == other.max
    }
}

impl Eq for Seats {}

/// One call sent to a peer, held until the call is done with it.
#[derive(Debug)]
pub struct Seat {
    peer: Arc<Peer>,
    /// Given back because the desk turned the call away: nobody is woken.
    turned_away: bool,
}

impl Seat {
    /// A seat at `peer`, unless it carries `max_calls` already.
    pub fn take(peer: &Arc<Peer>) -> Option<Seat> {
        let seats = &peer.seats;
        let max = seats.max.unwrap_or(u32::MAX);
        seats
            .taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
                (taken < max).then_some(taken + 1)
            })
            .ok()?;
        Some(Seat {
            peer: Arc::clone(peer),
            turned_away: false,
        })
    }

    pub fn peer(&self) -> &Arc<Peer> {
        &self.peer
    }

    /// Gives the seat back because the desk refused the call (busy, no answer): the count
    /// goes down, queued calls are not woken for it.
    pub fn turned_away(mut self) {
        self.turned_away = true;
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let seats = &self.peer.seats;
        seats.taken.fetch_sub(1, Ordering::AcqRel);
        if seats.max.is_some() && !self.turned_away {
            if let Some(signal) = &seats.signal {
                signal.raise();
            }
        }
    }
}

/// How a route's callers wait when every desk is busy (`[[route]] queue_secs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePolicy {
    /// The longest wait; then the call overflows, or the gateway hangs up.
    pub wait: std::time::Duration,
    /// How often the route's desks are offered the call again.
    pub retry: std::time::Duration,
    /// Peers (by name: another centre's remote seats) the call goes to, in order, once the
    /// wait is over or the line is full (`[[route]] overflow`).
    pub overflow: Vec<String>,
    /// The route's callers waiting now, in order (`[[route]] queue_max` at most), shared by
    /// every call of the route.
    pub line: Arc<WaitingLine>,
}

/// A route's queued callers in the order they came (`[[route]] queue_max` of them at most).
#[derive(Debug, Default)]
pub struct WaitingLine {
    max: Option<usize>,
    tickets: Mutex<VecDeque<Ticket>>,
    next: AtomicU64,
    signal: Option<Arc<DeskSignal>>,
}

impl WaitingLine {
    pub fn new(max: Option<usize>) -> WaitingLine {
        WaitingLine {
            max,
            ..WaitingLine::default()
        }
    }

    pub(super) fn connect(&mut self, signal: &Arc<DeskSignal>) {
        self.signal = Some(Arc::clone(signal));
    }

    pub fn max(&self) -> Option<usize> {
        self.max
    }

    /// Callers waiting now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Callers waiting now for a seat: those not ringing a desk already.
    pub fn waiting_for_seats(&self) -> usize {
        self.lock().iter().filter(|t| !t.offering).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A place at the end of the line, unless `queue_max` callers wait already.
    pub fn join(line: &Arc<WaitingLine>) -> Option<Place> {
        let mut tickets = line.lock();
        if line.max.is_some_and(|max| tickets.len() >= max) {
            return None;
        }
        let ticket = line.next.fetch_add(1, Ordering::Relaxed);
        tickets.push_back(Ticket {
            number: ticket,
            offering: false,
        });
        Some(Place {
            line: Arc::clone(line),
            ticket,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Ticket>> {
        // A panic elsewhere while holding it left a plain list of numbers: still good.
        self.tickets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl PartialEq for WaitingLine {
    /// Lines compare by their configuration, not by who waits.
    fn eq(&self, other: &WaitingLine) -> bool {
        self.max == other.max
    }
}

impl Eq for WaitingLine {}

/// One caller's place in a route's line, given back when dropped.
#[derive(Debug)]
pub struct Place {
    line: Arc<WaitingLine>,
    ticket: u64,
}

impl Place {
    /// Callers ahead of this one who wait for a seat (one ringing a desk holds its seat
    /// already and does not hold this one back).
    pub fn ahead(&self) -> usize {
        let tickets = self.line.lock();
        tickets
            .iter()
            .take_while(|t| t.number != self.ticket)
            .filter(|t| !t.offering)
            .count()
    }

    /// Whether this caller rings a desk now, holding a seat there.
    pub fn set_offering(&self, offering: bool) {
        let mut tickets = self.line.lock();
        if let Some(ticket) = tickets.iter_mut().find(|t| t.number == self.ticket) {
            ticket.offering = offering;
        }
    }
}

/// A queued caller in a line.
#[derive(Debug)]
struct Ticket {
    number: u64,
    /// It rings a desk now (holding a seat there).
    offering: bool,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut tickets = self.line.lock();
        if let Some(position) = tickets.iter().position(|t| t.number == self.ticket) {
            tickets.remove(position);
        }
        drop(tickets);
        if let Some(signal) = &self.line.signal {
            signal.raise();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::routing::TransportKind;

    fn desk(max: Option<u32>, signal: &Arc<DeskSignal>) -> Arc<Peer> {
        let mut peer = Peer::new(
            "desk",
            SocketAddr::from(([127, 0, 0, 1], 5080)),
            None,
            TransportKind::Udp,
        );
        peer.seats = Seats::new(max);
        peer.seats.connect(signal);
        Arc::new(peer)
    }

    #[test]
    fn a_desk_takes_max_calls_and_a_seat_given_back_is_free_again() {
        let signal = Arc::new(DeskSignal::default());
        let mut raised = signal.subscribe();
        let peer = desk(Some(2), &signal);
        let first = Seat::take(&peer);
        let second = Seat::take(&peer);
        assert!(first.is_some() && second.is_some());
        assert!(Seat::take(&peer).is_none(), "two calls is its capacity");
        assert_eq!((peer.seats.taken(), peer.seats.free()), (2, Some(0)));
        assert!(!raised.has_changed().unwrap_or(true));
        drop(first);
        assert!(
            raised.has_changed().unwrap_or(false),
            "a freed desk is told"
        );
        raised.mark_unchanged();
        assert_eq!(peer.seats.free(), Some(1));
        assert!(Seat::take(&peer).is_some());
    }

    #[test]
    fn a_seat_a_desk_turned_away_is_free_again_and_wakes_nobody() {
        let signal = Arc::new(DeskSignal::default());
        let mut raised = signal.subscribe();
        let peer = desk(Some(1), &signal);
        if let Some(seat) = Seat::take(&peer) {
            seat.turned_away();
        }
        assert_eq!(peer.seats.free(), Some(1));
        assert!(!raised.has_changed().unwrap_or(true));
        raised.mark_unchanged();
    }

    #[test]
    fn a_caller_ringing_a_desk_is_not_counted_ahead() {
        let line = Arc::new(WaitingLine::new(None));
        let (first, second, third) = (
            WaitingLine::join(&line),
            WaitingLine::join(&line),
            WaitingLine::join(&line),
        );
        let (Some(first), Some(_second), Some(third)) = (first, second, third) else {
            panic!("an unbounded line took every caller");
        };
        assert_eq!((third.ahead(), line.waiting_for_seats()), (2, 3));
        first.set_offering(true);
        assert_eq!((third.ahead(), line.waiting_for_seats()), (1, 2));
        first.set_offering(false);
        assert_eq!(third.ahead(), 2);
    }

    #[test]
    fn a_desk_without_max_calls_is_counted_never_full() {
        let signal = Arc::new(DeskSignal::default());
        let mut raised = signal.subscribe();
        let peer = desk(None, &signal);
        let seats: Vec<_> = (0..100).filter_map(|_| Seat::take(&peer)).collect();
        assert_eq!((seats.len(), peer.seats.free()), (100, None));
        drop(seats);
        assert_eq!(peer.seats.taken(), 0);
        assert!(
            !raised.has_changed().unwrap_or(true),
            "nobody waits on a desk without a capacity"
        );
        raised.mark_unchanged();
    }

    #[test]
    fn a_line_keeps_the_order_callers_came_in_and_refuses_beyond_queue_max() {
        let signal = Arc::new(DeskSignal::default());
        let mut line = WaitingLine::new(Some(3));
        line.connect(&signal);
        let line = Arc::new(line);
        let first = WaitingLine::join(&line);
        let second = WaitingLine::join(&line);
        let third = WaitingLine::join(&line);
        assert!(WaitingLine::join(&line).is_none(), "queue_max = 3");
        let ahead = |place: &Option<Place>| place.as_ref().map(Place::ahead);
        assert_eq!(
            (ahead(&first), ahead(&second), ahead(&third)),
            (Some(0), Some(1), Some(2))
        );
        let mut raised = signal.subscribe();
        drop(second);
        assert!(raised.has_changed().unwrap_or(false));
        raised.mark_unchanged();
        assert_eq!((ahead(&first), ahead(&third)), (Some(0), Some(1)));
        assert_eq!(line.len(), 2);
        let fourth = WaitingLine::join(&line);
        assert_eq!(ahead(&fourth), Some(2), "a newcomer waits at the end");
    }
}
